//! The page: pure rendering of a [`Report`] — the verdict, the parameters, the two charts, the
//! ledger (each entry with its raw value in `data-value`, what must be 0 in green or red) and
//! the faults, in order.

use super::Report;
use super::chart::{chart, fault_color, legend};
use std::fmt::Write;

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

/// `n` with thousands separators.
pub(super) fn group(n: u64) -> String {
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
    use super::super::{Happened, Mark, ProcessMark, Series};
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
