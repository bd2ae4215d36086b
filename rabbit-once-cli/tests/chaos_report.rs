//! `chaos --report FILE.html` and `chaos --metrics-addr`: a short chaos run on the shared broker
//! (cuts, a black hole, a consumer and a publisher SIGKILLed) writes one self-contained page whose
//! fault markers and ledger are the run's own, and serves metrics that agree with its ledger;
//! the page is then rendered with headless Chromium (`scripts/render-report.sh`) and the
//! picture checked to be one. A run stopped by SIGTERM still writes its page.

mod common;

use common::free_port;
use std::collections::{BTreeMap, HashSet};
use std::process::Stdio;
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, BufReader};

const BIN: &str = env!("CARGO_BIN_EXE_rabbit-once");
const RENDER: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../scripts/render-report.sh");

/// The chaos run's metrics: `name{labels}` → value (comments skipped).
async fn scrape(port: u16) -> BTreeMap<String, f64> {
    let raw = common::scrape(port).await;
    raw.lines()
        .filter(|l| l.starts_with("rabbit_once_chaos_"))
        .map(|l| {
            let (k, v) = l.rsplit_once(' ').unwrap();
            (k.to_string(), v.parse().unwrap())
        })
        .collect()
}

/// The `data-value` of the ledger row `data-key="key"`.
fn ledger_cell(html: &str, key: &str) -> Option<String> {
    let row = html.find(&format!("<tr data-key=\"{key}\""))?;
    let rest = &html[row..];
    let at = rest.find("data-value=\"")? + "data-value=\"".len();
    let end = rest[at..].find('"')?;
    Some(rest[at..at + end].to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_chaos_report_shows_the_runs_faults_and_ledger_and_renders() {
    let dir = std::env::temp_dir().join(rabbit_once_testkit::unique("chaos-report"));
    std::fs::create_dir_all(&dir).unwrap();
    let page = dir.join("run.html");
    let port = free_port();
    let mut child = tokio::process::Command::new(BIN)
        .args([
            "chaos",
            "--messages",
            "1500",
            "--publishers",
            "2",
            "--consumers",
            "2",
            "--cuts",
            "2",
            "--blackholes",
            "1",
            "--restarts",
            "0",
            "--broker-kills",
            "0",
            "--consumer-kills",
            "1",
            "--publisher-kills",
            "1",
            "--heartbeat",
            "1",
            "--fault-interval",
            "0.8",
            "--timeout",
            "120",
            "--json",
            "--metrics-addr",
            &format!("127.0.0.1:{port}"),
            "--metrics-linger",
            "60",
        ])
        .arg("--report")
        .arg(&page)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut stderr = child.stderr.take().unwrap();
    let stderr = tokio::spawn(async move {
        let mut s = String::new();
        let _ = stderr.read_to_string(&mut s).await;
        s
    });
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    // The ledger is printed once the page is written and the run cleaned up; the metrics
    // endpoint lingers.
    let ledger: serde_json::Value = tokio::time::timeout(Duration::from_secs(180), async {
        while let Some(l) = lines.next_line().await.unwrap() {
            if l.starts_with('{') {
                return Some(serde_json::from_str(&l).unwrap());
            }
        }
        None
    })
    .await
    .expect("the chaos run ends")
    .unwrap_or_else(|| panic!("no ledger"));
    let metrics = scrape(port).await;
    let pid = child.id().expect("still lingering");
    std::process::Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .unwrap();
    let status = tokio::time::timeout(Duration::from_secs(30), child.wait())
        .await
        .expect("exits after SIGTERM")
        .unwrap();
    let stderr = stderr.await.unwrap();
    assert!(status.success(), "{ledger}\n{stderr}");
    assert_eq!(ledger["lost"], 0, "{ledger}");
    assert_eq!(ledger["applied_twice"], 0, "{ledger}");

    // The page: self-contained, with the run's faults and ledger.
    let html = std::fs::read_to_string(&page).unwrap();
    assert!(html.contains("<svg"), "{html}");
    for outside in ["<script", "src=", "href=", "url(", "@import"] {
        assert!(!html.contains(outside), "{outside} in the page");
    }
    assert!(html.contains(r#"id="verdict">PASS<"#));
    let faults = ledger["faults"].as_object().unwrap();
    let fired: u64 = faults.values().map(|n| n.as_u64().unwrap()).sum();
    assert!(fired >= 5, "{ledger}");
    for (kind, n) in faults {
        let marked = html
            .matches(&format!(r#"<g class="fault" data-kind="{kind}">"#))
            .count();
        assert_eq!(marked as u64, n.as_u64().unwrap(), "{kind} markers");
        assert_eq!(
            ledger_cell(&html, &format!("faults.{kind}")).as_deref(),
            Some(n.to_string().as_str())
        );
    }
    assert_eq!(
        html.matches(r#"<g class="fault" "#).count() as u64,
        fired,
        "a marker per fault, no more"
    );
    let mut compared = 0;
    for (key, v) in ledger.as_object().unwrap() {
        if let Some(n) = v.as_u64() {
            assert_eq!(
                ledger_cell(&html, key).as_deref(),
                Some(n.to_string().as_str()),
                "ledger row {key}"
            );
            compared += 1;
        }
    }
    assert!(compared >= 12, "{compared} ledger entries compared");
    // Restarts: the killed consumer and publisher were started again (each a mark).
    assert!(html.matches(r#"<polygon class="restart""#).count() >= 2);
    assert!(html.contains("published (confirmed) msg/s") && html.contains("applied msg/s"));

    // The metrics agree with the ledger.
    let m = |k: &str| {
        *metrics
            .get(k)
            .unwrap_or_else(|| panic!("{k} not served: {metrics:?}"))
    };
    for (kind, n) in faults {
        assert_eq!(
            m(&format!(
                "rabbit_once_chaos_faults_total{{kind=\"{kind}\"}}"
            )),
            n.as_f64().unwrap(),
            "{kind}"
        );
    }
    for entry in [
        "published",
        "confirmed",
        "applied_once",
        "applied_twice",
        "lost",
        "missing",
    ] {
        assert_eq!(
            m(&format!(
                "rabbit_once_chaos_ledger_messages{{entry=\"{entry}\"}}"
            )),
            ledger[entry].as_f64().unwrap(),
            "{entry}"
        );
    }
    assert_eq!(m("rabbit_once_chaos_passed"), 1.0);
    assert_eq!(
        m(r#"rabbit_once_chaos_processes_killed_total{role="consumer"}"#),
        faults["consumer_kill"].as_f64().unwrap()
    );
    assert_eq!(
        m(r#"rabbit_once_chaos_processes_killed_total{role="publisher"}"#),
        faults["publisher_kill"].as_f64().unwrap()
    );
    // Two consumers and two publishers, and each killed one started again.
    assert!(m(r#"rabbit_once_chaos_processes_started_total{role="consumer"}"#) >= 3.0);
    assert!(m(r#"rabbit_once_chaos_processes_started_total{role="publisher"}"#) >= 3.0);
    assert!(metrics.contains_key("rabbit_once_chaos_queue_ready_messages"));

    // The picture: Chromium renders the page into an image that is one (not blank, not one
    // colour), with the verdict's green badge in it.
    let png = dir.join("run.png");
    let out = std::process::Command::new(RENDER)
        .arg(&page)
        .arg(&png)
        .output()
        .expect("scripts/render-report.sh runs");
    assert!(
        out.status.success(),
        "rendering with chromium failed (is Debian's `chromium` installed?):\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let bytes = std::fs::read(&png).unwrap();
    assert!(bytes.len() > 20_000, "{} bytes", bytes.len());
    let decoder = png::Decoder::new(std::io::Cursor::new(&bytes));
    let mut reader = decoder.read_info().unwrap();
    let mut buf = vec![0; reader.output_buffer_size()];
    let info = reader.next_frame(&mut buf).unwrap();
    assert_eq!((info.width, info.height), (1200, 2200));
    assert_eq!(info.bit_depth, png::BitDepth::Eight);
    let channels = match info.color_type {
        png::ColorType::Rgba => 4,
        png::ColorType::Rgb => 3,
        other => panic!("{other:?}"),
    };
    let pixels: Vec<[u8; 3]> = buf[..info.buffer_size()]
        .chunks(channels)
        .map(|p| [p[0], p[1], p[2]])
        .collect();
    let colours: HashSet<[u8; 3]> = pixels.iter().copied().collect();
    assert!(colours.len() > 50, "{} colours", colours.len());
    let inked = pixels.iter().filter(|p| **p != [255, 255, 255]).count();
    assert!(
        inked * 50 > pixels.len(),
        "{inked} of {} pixels not white",
        pixels.len()
    );
    // #1e8e3e, give or take a colour profile.
    let near = |p: &[u8; 3], c: [u8; 3]| p.iter().zip(c).all(|(a, b)| a.abs_diff(b) <= 8);
    let badge = pixels
        .iter()
        .filter(|p| near(p, [0x1e, 0x8e, 0x3e]))
        .count();
    assert!(badge > 500, "{badge} pixels of the PASS badge");
    std::fs::remove_dir_all(&dir).unwrap();
}

/// A run stopped by SIGTERM (as by Ctrl-C) still writes its page: no ledger, but the faults
/// that fired until then, each marked once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_interrupted_chaos_run_still_writes_its_page() {
    let dir = std::env::temp_dir().join(rabbit_once_testkit::unique("chaos-report"));
    std::fs::create_dir_all(&dir).unwrap();
    let page = dir.join("run.html");
    let mut child = tokio::process::Command::new(BIN)
        .args([
            "chaos",
            "--messages",
            "100000",
            "--rate",
            "200",
            "--cuts",
            "20",
            "--blackholes",
            "0",
            "--consumer-kills",
            "0",
            "--publisher-kills",
            "0",
            "--heartbeat",
            "1",
            "--fault-interval",
            "0.5",
        ])
        .arg("--report")
        .arg(&page)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    // Two faults fired, then SIGTERM.
    let mut printed = 0;
    tokio::time::timeout(Duration::from_secs(60), async {
        while let Some(l) = lines.next_line().await.unwrap() {
            if l.trim_start().starts_with("fault ") {
                printed += 1;
                if printed == 2 {
                    return;
                }
            }
        }
        panic!("the run ended before two faults");
    })
    .await
    .expect("two faults fire");
    let pid = child.id().unwrap();
    std::process::Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .unwrap();
    // The rest of stdout: faults that fired before the signal was seen, and the report line.
    let rest = tokio::time::timeout(Duration::from_secs(60), async {
        let mut rest = Vec::new();
        while let Some(l) = lines.next_line().await.unwrap() {
            rest.push(l);
        }
        rest
    })
    .await
    .expect("the run stops");
    printed += rest
        .iter()
        .filter(|l| l.trim_start().starts_with("fault "))
        .count();
    let status = child.wait().await.unwrap();
    assert!(!status.success(), "an interrupted run does not pass");
    assert!(
        rest.iter().any(|l| l.contains("report written to")),
        "{rest:?}"
    );
    let html = std::fs::read_to_string(&page).unwrap();
    assert!(html.contains(r#"id="verdict">NO LEDGER<"#));
    assert!(html.contains("interrupted"));
    assert_eq!(
        html.matches(r#"<g class="fault" data-kind="cut">"#).count(),
        printed,
        "a marker per fault that fired"
    );
    assert!(html.contains("<svg") && !html.contains("<script"));
    std::fs::remove_dir_all(&dir).unwrap();
}
