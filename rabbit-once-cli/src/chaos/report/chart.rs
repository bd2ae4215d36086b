//! The SVG charts of the page: round axes, the series, every fault a dashed line (shaded for as
//! long as it lasted, numbered and labelled on the first chart), and under the first chart a
//! lane of process restarts and one of consumer reconnects; and the legends.

use super::page::{esc, group};
use super::{Happened, Report, Series};
use std::fmt::Write;

/// An axis from 0 to at least `max` in about five round steps (1, 2, 2.5 or 5 × 10ⁿ): `(top,
/// step)`. Nothing to show (0, negative, NaN) is an axis from 0 to 1.
pub(super) fn nice_scale(max: f64) -> (f64, f64) {
    let max = if max.is_finite() && max > 0.0 {
        max
    } else {
        1.0
    };
    let raw = max / 5.0;
    let mag = 10f64.powf(raw.log10().floor());
    let norm = raw / mag;
    let step = mag
        * if norm <= 1.0 {
            1.0
        } else if norm <= 2.0 {
            2.0
        } else if norm <= 2.5 {
            2.5
        } else if norm <= 5.0 {
            5.0
        } else {
            10.0
        };
    ((max / step - 1e-9).ceil().max(1.0) * step, step)
}

/// A tick label: grouped integers for a whole step, else as many decimals as the step has
/// (2.5 → one, 0.25 → two; at most three).
fn tick_label(v: f64, step: f64) -> String {
    let whole = |x: f64| (x - x.round()).abs() < 1e-6 * x.abs().max(1.0);
    let decimals = (0..3).find(|&d| whole(step * 10f64.powi(d))).unwrap_or(3) as usize;
    if decimals == 0 {
        group(v.round() as u64)
    } else {
        format!("{v:.decimals$}")
    }
}

/// The colour of a fault kind's line.
pub(super) fn fault_color(kind: &str) -> &'static str {
    match kind {
        "cut" => "#d62728",
        "blackhole" => "#9467bd",
        "broker_restart" | "node_stop_app" => "#8c564b",
        "broker_kill9" | "leader_kill9" => "#111111",
        "consumer_kill" => "#ff7f0e",
        "publisher_kill" => "#e377c2",
        "relay_kill" => "#bcbd22",
        _ => "#7f7f7f",
    }
}

/// The colour of a process role's restart marks.
fn role_color(role: &str) -> &'static str {
    match role {
        "publisher" => "#1f77b4",
        "consumer" => "#2ca02c",
        _ => "#bcbd22",
    }
}

const WIDTH: f64 = 1080.0;
const LEFT: f64 = 70.0;
const RIGHT: f64 = 20.0;

/// Where a chart's plot area is and what its axes span.
struct Frame {
    top: f64,
    height: f64,
    seconds: f64,
    ymax: f64,
}

impl Frame {
    fn x(&self, t: f64) -> f64 {
        LEFT + (t / self.seconds).clamp(0.0, 1.0) * (WIDTH - LEFT - RIGHT)
    }
    fn y(&self, v: f64) -> f64 {
        self.top + self.height - (v / self.ymax).clamp(0.0, 1.0) * self.height
    }
    fn bottom(&self) -> f64 {
        self.top + self.height
    }
}

/// One chart. The first (`primary`) carries the faults' labels above the plot, and lanes for
/// process restarts and consumer reconnects below it; both draw every fault's line.
pub(super) fn chart(out: &mut String, r: &Report, series: &[Series], unit: &str, primary: bool) {
    let seconds = r.seconds.max(1.0);
    let ymax_data = series
        .iter()
        .flat_map(|s| s.points.iter().map(|p| p.1))
        .filter(|v| v.is_finite())
        .fold(0.0, f64::max);
    // Counts: at least 0..5 in whole steps.
    let (ymax, ystep) = nice_scale(ymax_data.max(5.0));
    let top = if primary { 128.0 } else { 24.0 };
    let below = if primary { 76.0 } else { 34.0 };
    let f = Frame {
        top,
        height: 220.0,
        seconds,
        ymax,
    };
    let height = top + f.height + below;
    let _ = write!(
        out,
        r##"<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {WIDTH} {height}" width="{WIDTH}" height="{height}" role="img" aria-label="{}">"##,
        esc(unit)
    );
    let _ = write!(
        out,
        r##"<rect x="{LEFT}" y="{top}" width="{}" height="{}" fill="#fbfbfd" stroke="#c8c8d0"/>"##,
        WIDTH - LEFT - RIGHT,
        f.height
    );
    // Y grid and labels, and the unit.
    let mut v = 0.0;
    while v <= ymax + ystep * 1e-6 {
        let y = f.y(v);
        let _ = write!(
            out,
            r##"<line x1="{LEFT}" y1="{y:.1}" x2="{:.1}" y2="{y:.1}" stroke="#e3e3ea"/><text x="{:.1}" y="{:.1}" class="tick" text-anchor="end">{}</text>"##,
            WIDTH - RIGHT,
            LEFT - 6.0,
            y + 4.0,
            tick_label(v, ystep)
        );
        v += ystep;
    }
    let _ = write!(
        out,
        r##"<text transform="translate(14,{:.1}) rotate(-90)" class="unit" text-anchor="middle">{}</text>"##,
        top + f.height / 2.0,
        esc(unit)
    );
    // X ticks.
    let (_, xstep) = nice_scale(seconds);
    // Whole seconds (2.5 → 2).
    let xstep = xstep.floor().max(1.0);
    let mut t = 0.0;
    while t <= seconds + 1e-6 {
        let x = f.x(t);
        let _ = write!(
            out,
            r##"<line x1="{x:.1}" y1="{:.1}" x2="{x:.1}" y2="{:.1}" stroke="#c8c8d0"/><text x="{x:.1}" y="{:.1}" class="tick" text-anchor="middle">{} s</text>"##,
            f.bottom(),
            f.bottom() + 4.0,
            f.bottom() + 16.0,
            t.round() as u64
        );
        t += xstep;
    }
    // Faults that last: a shaded band.
    for m in r.faults.iter().filter(|m| m.seconds >= 0.3) {
        let (x0, x1) = (f.x(m.t), f.x(m.t + m.seconds));
        let _ = write!(
            out,
            r##"<rect x="{x0:.1}" y="{top}" width="{:.1}" height="{}" fill="{}" fill-opacity="0.10"/>"##,
            (x1 - x0).max(1.0),
            f.height,
            fault_color(&m.kind)
        );
    }
    // The series.
    if series.iter().all(|s| s.points.is_empty()) {
        let _ = write!(
            out,
            r##"<text x="{:.1}" y="{:.1}" class="empty" text-anchor="middle">no data</text>"##,
            LEFT + (WIDTH - LEFT - RIGHT) / 2.0,
            top + f.height / 2.0
        );
    }
    for s in series {
        for run in s
            .points
            .split(|p| !p.1.is_finite())
            .filter(|r| !r.is_empty())
        {
            let pts: String = run
                .iter()
                .map(|(t, v)| format!("{:.1},{:.1} ", f.x(*t), f.y(*v)))
                .collect();
            if s.area {
                let (first, last) = (run[0].0, run[run.len() - 1].0);
                let _ = write!(
                    out,
                    r##"<polygon points="{:.1},{:.1} {pts}{:.1},{:.1}" fill="{}" fill-opacity="0.18" stroke="none"/>"##,
                    f.x(first),
                    f.bottom(),
                    f.x(last),
                    f.bottom(),
                    s.color
                );
            }
            let (width, opacity) = if s.wide { (4.5, 0.45) } else { (1.8, 1.0) };
            let _ = write!(
                out,
                r##"<polyline points="{pts}" fill="none" stroke="{}" stroke-width="{width}" stroke-opacity="{opacity}" stroke-linejoin="round"/>"##,
                s.color
            );
        }
    }
    // Every fault: a dashed line; on the primary chart, numbered and labelled above the plot
    // (a label pushed right of the one before when they would overlap, with a leader line).
    let mut label_x = f64::MIN;
    for (i, m) in r.faults.iter().enumerate() {
        let x = f.x(m.t);
        let color = fault_color(&m.kind);
        let class = if primary { "fault" } else { "fault-echo" };
        let title = if m.detail.is_empty() {
            format!("#{} {} at {:.1} s", i + 1, m.kind, m.t)
        } else {
            format!("#{} {} at {:.1} s: {}", i + 1, m.kind, m.t, m.detail)
        };
        let _ = write!(
            out,
            r##"<g class="{class}" data-kind="{}"><title>{}</title><line x1="{x:.1}" y1="{:.1}" x2="{x:.1}" y2="{:.1}" stroke="{color}" stroke-width="1.4" stroke-dasharray="5 3"/>"##,
            esc(&m.kind),
            esc(&title),
            top,
            f.bottom()
        );
        if primary {
            label_x = x.max(label_x + 13.0);
            let _ = write!(
                out,
                r##"<line x1="{x:.1}" y1="{top:.1}" x2="{label_x:.1}" y2="{:.1}" stroke="{color}" stroke-width="1"/><text transform="translate({:.1},{:.1}) rotate(-90)" class="flabel" fill="{color}">#{} {}</text>"##,
                top - 9.0,
                label_x + 3.5,
                top - 11.0,
                i + 1,
                esc(&m.kind)
            );
        }
        out.push_str("</g>");
    }
    if primary {
        lanes(out, r, &f);
    }
    out.push_str("</svg>");
}

/// Below the primary chart: a lane of process restarts (a triangle each, coloured by role;
/// outlined in red when the process had exited on its own) and a lane of consumer reconnects.
fn lanes(out: &mut String, r: &Report, f: &Frame) {
    let restarts_y = f.bottom() + 38.0;
    let reconnects_y = f.bottom() + 60.0;
    for (y, name) in [(restarts_y, "restarts"), (reconnects_y, "reconnects")] {
        let _ = write!(
            out,
            r##"<text x="{:.1}" y="{:.1}" class="lane" text-anchor="end">{name}</text><line x1="{LEFT}" y1="{y:.1}" x2="{:.1}" y2="{y:.1}" stroke="#ececf2"/>"##,
            LEFT - 6.0,
            y + 4.0,
            WIDTH - RIGHT
        );
    }
    for p in &r.processes {
        let x = f.x(p.t);
        let y = restarts_y;
        let color = role_color(p.role);
        let (what, shape) = match p.happened {
            Happened::Exited => (
                "exited on its own",
                format!(
                    r##"fill="none" stroke="#d62728" stroke-width="1.6" points="{:.1},{:.1} {:.1},{:.1} {:.1},{:.1}""##,
                    x,
                    y - 10.0,
                    x - 8.0,
                    y + 6.0,
                    x + 8.0,
                    y + 6.0
                ),
            ),
            Happened::Restarted => (
                "restarted",
                format!(
                    r##"fill="{color}" points="{:.1},{:.1} {:.1},{:.1} {:.1},{:.1}""##,
                    x,
                    y - 6.0,
                    x - 5.0,
                    y + 4.0,
                    x + 5.0,
                    y + 4.0
                ),
            ),
            _ => continue,
        };
        let class = if p.happened == Happened::Exited {
            "exited"
        } else {
            "restart"
        };
        let _ = write!(
            out,
            r##"<polygon class="{class}" {shape}><title>{} {what} at {:.1} s</title></polygon>"##,
            esc(&p.slot),
            p.t
        );
    }
    for (t, n) in &r.reconnects {
        let x = f.x(*t);
        let radius = (2.5 + (*n as f64).sqrt()).min(8.0);
        let _ = write!(
            out,
            r##"<circle class="reconnect" cx="{x:.1}" cy="{reconnects_y:.1}" r="{radius:.1}" fill="#17becf" fill-opacity="0.75"><title>{n} consumer reconnect(s) by {t:.0} s</title></circle>"##
        );
    }
}

/// The legend under a chart: its series, and the kinds of fault it marks.
pub(super) fn legend(out: &mut String, r: &Report, series: &[Series], primary: bool) {
    out.push_str(r#"<div class="legend">"#);
    for s in series {
        let style = if s.wide { "height:6px;opacity:.5;" } else { "" };
        let _ = write!(
            out,
            r#"<span><i style="{style}background:{}"></i>{}</span>"#,
            s.color,
            esc(&s.name)
        );
    }
    let mut kinds: Vec<&str> = r.faults.iter().map(|m| m.kind.as_str()).collect();
    kinds.sort_unstable();
    kinds.dedup();
    for k in kinds {
        let n = r.faults.iter().filter(|m| m.kind == k).count();
        let _ = write!(
            out,
            r#"<span><i class="dash" style="border-color:{}"></i>{} ×{n}</span>"#,
            fault_color(k),
            esc(k)
        );
    }
    if primary {
        for role in ["publisher", "consumer", "relay"] {
            if r.processes.iter().any(|p| p.role == role) {
                let _ = write!(
                    out,
                    r#"<span><b style="color:{}">▲</b>{role} restarted</span>"#,
                    role_color(role)
                );
            }
        }
        if r.processes.iter().any(|p| p.happened == Happened::Exited) {
            out.push_str(r#"<span><b style="color:#d62728">△</b>had exited on its own</span>"#);
        }
        out.push_str(
            r#"<span><b style="color:#17becf">●</b>consumer reconnects (bigger: more)</span>"#,
        );
    }
    out.push_str("</div>");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scales_are_round_and_cover_the_data() {
        assert_eq!(nice_scale(0.0), (1.0, 0.2));
        assert_eq!(nice_scale(f64::NAN), (1.0, 0.2));
        assert_eq!(nice_scale(-3.0), (1.0, 0.2));
        assert_eq!(nice_scale(97.0), (100.0, 20.0));
        assert_eq!(nice_scale(100.0), (100.0, 20.0));
        assert_eq!(nice_scale(101.0), (125.0, 25.0));
        assert_eq!(nice_scale(1234.0), (1250.0, 250.0));
        assert_eq!(nice_scale(7.0), (8.0, 2.0));
        for m in [0.3, 3.0, 42.0, 999.0, 12_345.0, 1e6] {
            let (top, step) = nice_scale(m);
            assert!(top >= m && top < m + step + 1e-9, "{m}: {top} {step}");
        }
        assert_eq!(group(1_234_567), "1,234,567");
        assert_eq!(group(999), "999");
        assert_eq!(tick_label(0.4, 0.2), "0.4");
        assert_eq!(tick_label(2500.0, 500.0), "2,500");
        assert_eq!(tick_label(2.5, 2.5), "2.5");
        assert_eq!(tick_label(7.5, 2.5), "7.5");
        assert_eq!(tick_label(10.0, 2.5), "10.0");
        assert_eq!(tick_label(0.75, 0.25), "0.75");
        assert_eq!(tick_label(50.0, 25.0), "50");
    }
}
