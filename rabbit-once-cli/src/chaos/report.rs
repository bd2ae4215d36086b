//! The picture of a chaos run (`--report FILE.html`): one self-contained HTML page — inline SVG
//! and CSS, no script, nothing fetched — with throughput and consumer lag over time, each fault
//! a marked line, process restarts and consumer reconnects, the final ledger and the run's
//! parameters. Pure rendering: [`render`] turns a [`Report`] into the page.

use super::timeline::Happened;
use std::fmt::Write;

/// A fault on the timeline.
#[derive(Debug, Clone)]
pub(super) struct Mark {
    /// Seconds since the run started.
    pub(super) t: f64,
    /// How long it lasted (0 for an instant one: a cut, a kill).
    pub(super) seconds: f64,
    /// The fault's kind, as the ledger names it (`cut`, `blackhole`, …).
    pub(super) kind: String,
    /// Where it hit (a node's proxy, the leader), or empty.
    pub(super) detail: String,
}

/// A child process restarted, killed or exited, on the timeline.
#[derive(Debug, Clone)]
pub(super) struct ProcessMark {
    pub(super) t: f64,
    /// `publisher`, `consumer` or `relay`.
    pub(super) role: &'static str,
    /// Which one (`consumer 1`, `publisher 0..5000`).
    pub(super) slot: String,
    pub(super) happened: Happened,
}

/// A line of a chart: `(seconds, value)` points; a NaN value is a gap.
#[derive(Debug, Clone)]
pub(super) struct Series {
    pub(super) name: String,
    pub(super) color: &'static str,
    pub(super) points: Vec<(f64, f64)>,
    /// Filled down to zero under the line.
    pub(super) area: bool,
    /// Drawn wide and light, under the others (a line another often covers).
    pub(super) wide: bool,
}

impl Series {
    pub(super) fn new(name: &str, color: &'static str, points: Vec<(f64, f64)>) -> Series {
        Series {
            name: name.to_string(),
            color,
            points,
            area: false,
            wide: false,
        }
    }
}

/// Everything the page shows.
pub(super) struct Report {
    pub(super) title: String,
    /// `Some(true)` passed, `Some(false)` failed, `None` no ledger (interrupted, or an error).
    pub(super) passed: Option<bool>,
    /// One line under the verdict: why it passed or failed.
    pub(super) headline: String,
    pub(super) params: Vec<(String, String)>,
    /// Length of the x axis.
    pub(super) seconds: f64,
    pub(super) throughput: Vec<Series>,
    pub(super) lag: Vec<Series>,
    pub(super) faults: Vec<Mark>,
    pub(super) processes: Vec<ProcessMark>,
    /// `(seconds, n)`: n more consumer reconnects seen by this sample.
    pub(super) reconnects: Vec<(f64, u64)>,
    /// The ledger, as `--json` prints it.
    pub(super) ledger: Option<serde_json::Value>,
    pub(super) notes: Vec<String>,
}

/// `s` safe in HTML text and in a quoted attribute.
pub(super) fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

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

/// `n` with thousands separators.
fn group(n: u64) -> String {
    let s = n.to_string();
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// A tick label: grouped integers, or one decimal for steps below 1.
fn tick_label(v: f64, step: f64) -> String {
    if step < 1.0 {
        format!("{v:.1}")
    } else {
        group(v.round() as u64)
    }
}

/// The colour of a fault kind's line.
fn fault_color(kind: &str) -> &'static str {
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
fn chart(out: &mut String, r: &Report, series: &[Series], unit: &str, primary: bool) {
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
fn legend(out: &mut String, r: &Report, series: &[Series], primary: bool) {
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

/// The ledger's entries in reading order (others follow, as serialized), with their labels.
const LEDGER_ORDER: &[(&str, &str)] = &[
    ("messages", "messages"),
    ("published", "published"),
    ("confirmed", "confirmed"),
    ("committed", "committed (outbox)"),
    ("unconfirmed_at_crash", "unconfirmed at crash (resent)"),
    ("applied_once", "applied once"),
    ("applied_twice", "applied twice"),
    ("lost", "lost"),
    ("missing", "missing"),
    ("stage2_applied_once", "stage 2 applied once"),
    ("stage2_applied_twice", "stage 2 applied twice"),
    ("stage2_lost", "stage 2 lost"),
    ("duplicates_skipped", "duplicates skipped"),
    ("retried", "retries"),
    ("dead_lettered", "dead-lettered"),
    ("reconnects", "consumer reconnects"),
    ("faults", "faults"),
    ("faults_not_fired", "planned, never fired"),
    ("leader_kills", "leader kills"),
    ("recovery_p50_ms", "recovery to next confirm p50 (ms)"),
    ("recovery_p99_ms", "recovery to next confirm p99 (ms)"),
    ("seconds", "seconds"),
];

/// Entries that must be 0 (or empty).
const MUST_BE_ZERO: &[&str] = &[
    "applied_twice",
    "lost",
    "missing",
    "stage2_applied_twice",
    "stage2_lost",
    "faults_not_fired",
];

fn ledger_row(out: &mut String, key: &str, label: &str, v: &serde_json::Value) {
    use serde_json::Value;
    let zero = match v {
        Value::Number(n) => n.as_f64() == Some(0.0),
        Value::Array(a) => a.is_empty(),
        _ => true,
    };
    let class = if !MUST_BE_ZERO.contains(&key) {
        ""
    } else if zero {
        " class=\"good\""
    } else {
        " class=\"bad\""
    };
    let (raw, shown) = match v {
        Value::Number(n) => match n.as_u64() {
            Some(u) => (u.to_string(), group(u)),
            None => (n.to_string(), format!("{:.1}", n.as_f64().unwrap_or(0.0))),
        },
        Value::Array(a) if a.is_empty() => (String::new(), "none".into()),
        Value::Array(a) => {
            let items: Vec<String> = a
                .iter()
                .map(|x| match x {
                    Value::String(s) => s.clone(),
                    Value::Object(o) => leader_kill(o).unwrap_or_else(|| {
                        o.iter()
                            .map(|(k, v)| format!("{k} {v}"))
                            .collect::<Vec<_>>()
                            .join(", ")
                    }),
                    x => x.to_string(),
                })
                .collect();
            (items.join("; "), items.join("; "))
        }
        Value::Null => (String::new(), "—".into()),
        x => (x.to_string(), x.to_string()),
    };
    let cell = if matches!(v, Value::Array(a) if !a.is_empty()) {
        "text"
    } else {
        "num"
    };
    let _ = write!(
        out,
        r#"<tr data-key="{}"{class}><td>{}</td><td class="{cell}" data-value="{}">{}</td></tr>"#,
        esc(key),
        esc(label),
        esc(&raw),
        esc(&shown)
    );
}

/// A `--cluster` leader kill as one line, if `o` is one.
fn leader_kill(o: &serde_json::Map<String, serde_json::Value>) -> Option<String> {
    let secs = |k: &str| o.get(k)?.as_f64().map(|ms| ms / 1000.0);
    Some(format!(
        "{} killed; new leader {} after {:.1} s; back in the cluster after {:.1} s",
        o.get("killed")?.as_str()?,
        o.get("new_leader")?.as_str()?,
        secs("new_leader_after_ms")?,
        secs("rejoined_after_ms")?
    ))
}

fn ledger_table(out: &mut String, ledger: &serde_json::Value) {
    let Some(obj) = ledger.as_object() else {
        return;
    };
    out.push_str(r#"<table class="ledger"><tbody>"#);
    let known = LEDGER_ORDER.iter().map(|(k, l)| (*k, *l));
    let others = obj
        .keys()
        .filter(|k| !LEDGER_ORDER.iter().any(|(o, _)| o == k))
        .map(|k| (k.as_str(), k.as_str()));
    for (key, label) in known.chain(others) {
        let Some(v) = obj.get(key) else { continue };
        if let Some(faults) = v.as_object() {
            for (kind, n) in faults {
                ledger_row(out, &format!("{key}.{kind}"), &format!("fault: {kind}"), n);
            }
        } else {
            ledger_row(out, key, label, v);
        }
    }
    out.push_str("</tbody></table>");
}

const CSS: &str = "
body{font:14px/1.45 system-ui,-apple-system,'Segoe UI',Roboto,'DejaVu Sans',sans-serif;color:#1d1d27;background:#fff;margin:24px auto;max-width:1100px;padding:0 12px}
h1{font-size:22px;margin:0 0 4px}h2{font-size:16px;margin:26px 0 6px}
.verdict{display:flex;align-items:center;gap:14px;margin:10px 0 14px}
.badge{font-weight:700;font-size:20px;padding:6px 18px;border-radius:6px;color:#fff;letter-spacing:.06em}
.pass{background:#1e8e3e}.fail{background:#c5221f}.none{background:#6b6b78}
.params{display:flex;flex-wrap:wrap;gap:6px 18px;color:#3b3b48}.params b{color:#1d1d27}
svg{display:block;max-width:100%;height:auto}
svg text{font-family:inherit}.tick{font-size:11px;fill:#555}.unit{font-size:12px;fill:#333;font-weight:600}
.flabel{font-size:10.5px;font-weight:600;paint-order:stroke;stroke:#fff;stroke-width:3px}
.lane{font-size:11px;fill:#555}.empty{font-size:16px;fill:#999}
.legend{display:flex;flex-wrap:wrap;gap:4px 18px;font-size:12.5px;color:#333;margin:2px 0 0 70px}
.legend i{display:inline-block;width:18px;height:3px;vertical-align:middle;margin-right:6px}
.legend i.dash{height:0;border-top:2px dashed;background:none}.legend b{margin-right:5px}
.cols{display:flex;gap:28px;align-items:flex-start;flex-wrap:wrap}
table{border-collapse:collapse;font-size:13px}td,th{padding:3px 10px;border-bottom:1px solid #e6e6ee;text-align:left}
th{background:#f3f3f7}td.num{text-align:right;font-variant-numeric:tabular-nums}td.text{max-width:340px}
tr.bad td{background:#fde7e7;color:#a50e0e;font-weight:700}tr.good td.num{color:#1e8e3e;font-weight:700}
.notes{color:#555;font-size:12.5px}
";

/// The page.
pub(super) fn render(r: &Report) -> String {
    let mut out = String::with_capacity(64 * 1024);
    let _ = write!(
        out,
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>{}</title><style>{CSS}</style></head><body>",
        esc(&r.title)
    );
    let _ = write!(out, "<h1>{}</h1>", esc(&r.title));
    let (class, word) = match r.passed {
        Some(true) => ("pass", "PASS"),
        Some(false) => ("fail", "FAIL"),
        None => ("none", "NO LEDGER"),
    };
    let _ = write!(
        out,
        r#"<div class="verdict"><span class="badge {class}" id="verdict">{word}</span><span>{}</span></div>"#,
        esc(&r.headline)
    );
    out.push_str(r#"<div class="params">"#);
    for (k, v) in &r.params {
        let _ = write!(out, "<span>{}: <b>{}</b></span>", esc(k), esc(v));
    }
    out.push_str("</div>");
    out.push_str("<h2>Throughput</h2>");
    chart(&mut out, r, &r.throughput, "messages per second", true);
    legend(&mut out, r, &r.throughput, true);
    out.push_str("<h2>Consumer lag</h2>");
    chart(&mut out, r, &r.lag, "messages", false);
    legend(&mut out, r, &r.lag, false);
    out.push_str(r#"<div class="cols"><div><h2>Ledger</h2>"#);
    match &r.ledger {
        Some(l) => ledger_table(&mut out, l),
        None => out.push_str("<p>No ledger: the run did not get that far.</p>"),
    }
    out.push_str("</div><div><h2>Faults</h2>");
    out.push_str("<table class=\"faults\"><thead><tr><th>#</th><th>at</th><th>kind</th><th>lasted</th><th>where</th></tr></thead><tbody>");
    for (i, m) in r.faults.iter().enumerate() {
        let _ = write!(
            out,
            r#"<tr class="fault-row" data-kind="{}"><td>{}</td><td class="num">{:.1} s</td><td><b style="color:{}">{}</b></td><td class="num">{}</td><td>{}</td></tr>"#,
            esc(&m.kind),
            i + 1,
            m.t,
            fault_color(&m.kind),
            esc(&m.kind),
            if m.seconds >= 0.3 {
                format!("{:.1} s", m.seconds)
            } else {
                String::new()
            },
            esc(&m.detail)
        );
    }
    if r.faults.is_empty() {
        out.push_str("<tr><td colspan=\"5\">none</td></tr>");
    }
    out.push_str("</tbody></table></div></div>");
    if !r.notes.is_empty() {
        out.push_str("<h2>Notes</h2><ul class=\"notes\">");
        for n in &r.notes {
            let _ = write!(out, "<li>{}</li>", esc(n));
        }
        out.push_str("</ul>");
    }
    out.push_str("</body></html>\n");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report() -> Report {
        Report {
            title: "chaos run <x>".into(),
            passed: Some(true),
            headline: "lost 0, applied twice 0".into(),
            params: vec![("messages".into(), "1000".into())],
            seconds: 12.0,
            throughput: vec![Series::new(
                "applied msg/s",
                "#2ca02c",
                vec![(0.5, 10.0), (1.5, 20.0)],
            )],
            lag: vec![],
            faults: vec![
                Mark {
                    t: 2.0,
                    seconds: 0.0,
                    kind: "cut".into(),
                    detail: "n1's proxy <&>".into(),
                },
                Mark {
                    t: 4.0,
                    seconds: 3.0,
                    kind: "blackhole".into(),
                    detail: String::new(),
                },
            ],
            processes: vec![ProcessMark {
                t: 5.0,
                role: "consumer",
                slot: "consumer 1".into(),
                happened: Happened::Restarted,
            }],
            reconnects: vec![(6.0, 2)],
            ledger: Some(serde_json::json!({
                "messages": 1000, "lost": 0, "applied_twice": 1, "faults": {"cut": 1, "blackhole": 1},
                "faults_not_fired": [], "seconds": 12.34
            })),
            notes: vec!["a <note>".into()],
        }
    }

    #[test]
    fn labels_are_escaped() {
        assert_eq!(
            esc(r#"<a href="x">'&'</a>"#),
            "&lt;a href=&quot;x&quot;&gt;&#39;&amp;&#39;&lt;/a&gt;"
        );
        let html = render(&report());
        assert!(html.contains("chaos run &lt;x&gt;"));
        assert!(html.contains("n1&#39;s proxy &lt;&amp;&gt;"));
        assert!(html.contains("a &lt;note&gt;"));
        assert!(!html.contains("<x>") && !html.contains("<note>"));
    }

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
    }

    #[test]
    fn each_fault_has_one_marker_and_the_ledger_its_values() {
        let html = render(&report());
        assert_eq!(html.matches(r#"class="fault" data-kind="cut""#).count(), 1);
        assert_eq!(
            html.matches(r#"class="fault" data-kind="blackhole""#)
                .count(),
            1
        );
        assert_eq!(html.matches(r#"class="fault-echo""#).count(), 2);
        assert_eq!(html.matches(r#"class="restart""#).count(), 1);
        assert_eq!(html.matches(r#"class="reconnect""#).count(), 1);
        assert!(html.contains(
            r#"<tr data-key="lost" class="good"><td>lost</td><td class="num" data-value="0">0</td>"#
        ));
        assert!(html.contains(r#"<tr data-key="applied_twice" class="bad">"#));
        assert!(html.contains(r#"data-key="faults.cut""#));
        assert!(html.contains(r#"data-value="12.34">12.3<"#));
        assert!(html.contains(r#"id="verdict">PASS<"#));
        // Self-contained: nothing fetched, no script.
        assert!(!html.contains("<script") && !html.contains("src=") && !html.contains("href="));
    }

    #[test]
    fn a_leader_kill_reads_as_a_sentence() {
        let mut r = report();
        r.ledger = Some(
            serde_json::json!({"leader_kills": [{"killed": "n1", "new_leader": "n2",
            "new_leader_after_ms": 900, "rejoined_after_ms": 20243}]}),
        );
        let html = render(&r);
        assert!(html.contains(
            "n1 killed; new leader n2 after 0.9 s; back in the cluster after 20.2 s</td>"
        ));
    }

    #[test]
    fn empty_series_and_no_ledger_still_render() {
        let mut r = report();
        r.throughput.clear();
        r.faults.clear();
        r.processes.clear();
        r.reconnects.clear();
        r.ledger = None;
        r.passed = None;
        r.seconds = 0.0;
        let html = render(&r);
        assert_eq!(html.matches("no data").count(), 2);
        assert!(html.contains("NO LEDGER"));
        assert!(!html.contains("NaN") && !html.contains("inf"));
        // A gap (NaN) splits a line in two.
        let mut r = report();
        r.lag = vec![Series::new(
            "queue",
            "#000",
            vec![(0.0, 1.0), (1.0, f64::NAN), (2.0, 3.0), (3.0, 4.0)],
        )];
        let html = render(&r);
        assert_eq!(html.matches(r##"stroke="#000""##).count(), 2);
        assert!(!html.contains("NaN"));
    }
}
