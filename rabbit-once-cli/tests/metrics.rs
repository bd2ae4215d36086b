//! `--metrics-addr`: the Prometheus endpoint of `publish` and `consume`, scraped over plain
//! HTTP, agrees with the commands' own ledger, and no label carries a message id.

mod common;
#[path = "../../rabbit-once/tests/support/mod.rs"]
mod support;

use common::{delete_queues, free_port, send};
use std::collections::BTreeMap;
use std::process::Stdio;
use std::time::Duration;
use support::*;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, BufReader};

const BIN: &str = env!("CARGO_BIN_EXE_rabbit-once");

/// One sample: name, labels, value.
#[derive(Debug)]
struct Sample {
    name: String,
    labels: BTreeMap<String, String>,
    value: f64,
}

/// What one scrape returned: the samples, and the families with a `# HELP` line.
struct Scraped {
    samples: Vec<Sample>,
    help: std::collections::BTreeSet<String>,
}

impl std::ops::Deref for Scraped {
    type Target = [Sample];
    fn deref(&self) -> &[Sample] {
        &self.samples
    }
}

impl Scraped {
    /// Every family scraped (a histogram's `_bucket`, `_sum` and `_count` are one) has its
    /// `# HELP` line.
    fn every_family_has_help(&self) {
        for s in &self.samples {
            let family = ["_bucket", "_sum", "_count"]
                .iter()
                .find_map(|suffix| {
                    s.name
                        .strip_suffix(suffix)
                        .filter(|f| self.help.contains(*f))
                })
                .unwrap_or(&s.name);
            assert!(self.help.contains(family), "no # HELP for {}", s.name);
        }
    }
}

/// GET on the endpoint: the samples of the Prometheus text format, and the `# HELP` lines.
async fn scrape(port: u16) -> Scraped {
    let raw = common::scrape(port).await;
    let samples = raw
        .lines()
        .filter(|l| l.starts_with("rabbit_once_"))
        .map(parse_sample)
        .collect();
    let help = raw
        .lines()
        .filter_map(|l| l.strip_prefix("# HELP rabbit_once_"))
        .filter(|rest| rest.contains(' ')) // a name and its text
        .map(|rest| format!("rabbit_once_{}", rest.split(' ').next().unwrap()))
        .collect();
    Scraped { samples, help }
}

/// `name{k="v",…} value` (label values as the exporter writes them: no `,` or `"` in ours).
fn parse_sample(line: &str) -> Sample {
    let (head, value) = line.rsplit_once(' ').expect("a value");
    let (name, labels) = match head.split_once('{') {
        Some((n, rest)) => (n, rest.strip_suffix('}').expect("closing brace")),
        None => (head, ""),
    };
    let labels = labels
        .split(',')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').expect("k=v");
            (k.to_string(), v.trim_matches('"').to_string())
        })
        .collect();
    Sample {
        name: name.to_string(),
        labels,
        value: value.parse().expect("a number"),
    }
}

/// The value of `name` whose labels include `with`; panics if there is not exactly one.
fn value(samples: &[Sample], name: &str, with: &[(&str, &str)]) -> f64 {
    let found: Vec<&Sample> = samples
        .iter()
        .filter(|s| {
            s.name == name
                && with
                    .iter()
                    .all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v))
        })
        .collect();
    assert_eq!(found.len(), 1, "{name} {with:?}: {found:?}");
    found[0].value
}

/// Sum of `name` over every series whose labels include `with` (0 when there is none).
fn sum(samples: &[Sample], name: &str, with: &[(&str, &str)]) -> f64 {
    samples
        .iter()
        .filter(|s| {
            s.name == name
                && with
                    .iter()
                    .all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v))
        })
        .map(|s| s.value)
        .sum()
}

/// Label keys are the documented ones, and no value looks like a message id (a UUID, or
/// anything of the test's own ids).
fn bounded_labels(samples: &[Sample]) {
    let uuid = |v: &str| {
        let parts: Vec<&str> = v.split('-').collect();
        parts.iter().map(|p| p.len()).collect::<Vec<_>>() == [8, 4, 4, 4, 12]
            && parts
                .iter()
                .all(|p| p.chars().all(|c| c.is_ascii_hexdigit()))
    };
    for s in samples {
        for (k, v) in &s.labels {
            assert!(
                [
                    "connection",
                    "publisher",
                    "queue",
                    "group",
                    "reason",
                    "le",
                    "quantile"
                ]
                .contains(&k.as_str()),
                "unexpected label {k} on {s:?}"
            );
            assert!(!uuid(v), "a message id as a label value: {s:?}");
        }
    }
}

/// Runs the binary with `args`, waits for its `--json` summary on stdout (the work is done; the
/// endpoint lingers), scrapes, then ends it with SIGTERM. Returns the summary and the samples.
async fn run_and_scrape(args: &[&str], port: u16) -> (serde_json::Value, Scraped) {
    let mut child = tokio::process::Command::new(BIN)
        .args(args)
        .args(["--json", "--metrics-addr", &format!("127.0.0.1:{port}")])
        .args(["--metrics-linger", "60"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let summary = tokio::time::timeout(Duration::from_secs(60), async {
        while let Some(l) = lines.next_line().await.unwrap() {
            if l.starts_with('{') {
                return serde_json::from_str::<serde_json::Value>(&l).unwrap();
            }
        }
        let mut err = String::new();
        let _ = child.stderr.take().unwrap().read_to_string(&mut err).await;
        panic!("{args:?} printed no summary: {err}");
    })
    .await
    .expect("the command finished its work");
    let samples = scrape(port).await;
    // SIGTERM ends the linger: the command exits with its own status.
    send("TERM", child.id().expect("still lingering"));
    let status = tokio::time::timeout(Duration::from_secs(30), child.wait())
        .await
        .expect("exits after SIGTERM")
        .unwrap();
    assert!(status.success(), "{args:?}: {status}");
    (summary, samples)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scraped_counters_equal_the_ledger() {
    const N: u64 = 500;
    let q = unique("cli-metrics");
    let db = TempDb::new();
    let store = format!("sqlite:{}", db.path.display());
    let uri = broker_uri();
    let n = N.to_string();

    let port = free_port();
    let (s, m) = run_and_scrape(
        &[
            "publish", "--queue", &q, "--count", &n, "--size", "64", "--uri", &uri,
        ],
        port,
    )
    .await;
    assert_eq!(s["confirmed"], N, "{s}");
    let app = [("publisher", "default")];
    assert_eq!(
        value(&m, "rabbit_once_publisher_accepted_total", &app),
        N as f64
    );
    assert_eq!(
        value(&m, "rabbit_once_publisher_confirmed_total", &app),
        N as f64
    );
    assert_eq!(sum(&m, "rabbit_once_publisher_failed_total", &app), 0.0);
    assert_eq!(
        value(&m, "rabbit_once_publisher_buffered_messages", &app),
        0.0
    );
    assert_eq!(
        value(&m, "rabbit_once_publisher_in_flight_messages", &app),
        0.0
    );
    assert_eq!(
        value(
            &m,
            "rabbit_once_publisher_confirm_duration_seconds_count",
            &app
        ),
        N as f64
    );
    // The command closed its connection before lingering: no session now, none lost on the way.
    assert_eq!(value(&m, "rabbit_once_connection_up", &[]), 0.0);
    assert_eq!(sum(&m, "rabbit_once_connection_reconnects_total", &[]), 0.0);
    bounded_labels(&m);
    m.every_family_has_help();

    let port = free_port();
    let (s, m) = run_and_scrape(
        &[
            "consume",
            "--queue",
            &q,
            "--store",
            &store,
            "--until-count",
            &n,
            "--batch",
            "50",
            "--uri",
            &uri,
        ],
        port,
    )
    .await;
    assert_eq!(
        (s["applied"].as_u64(), s["duplicates"].as_u64()),
        (Some(N), Some(0)),
        "{s}"
    );
    let mine = [("queue", q.as_str())];
    assert_eq!(
        value(&m, "rabbit_once_consumer_delivered_total", &mine),
        N as f64
    );
    assert_eq!(
        value(&m, "rabbit_once_consumer_applied_total", &mine),
        N as f64
    );
    assert_eq!(
        value(&m, "rabbit_once_consumer_duplicates_total", &mine),
        0.0
    );
    assert_eq!(
        value(&m, "rabbit_once_consumer_dead_lettered_total", &mine),
        0.0
    );
    assert_eq!(value(&m, "rabbit_once_consumer_retried_total", &mine), 0.0);
    // Every delivery went through a batch; every batch's transaction was timed.
    assert_eq!(
        value(&m, "rabbit_once_consumer_batch_size_sum", &mine),
        N as f64
    );
    let commits = value(&m, "rabbit_once_consumer_commits_total", &mine);
    assert!(commits >= 1.0);
    assert_eq!(
        value(
            &m,
            "rabbit_once_consumer_commit_duration_seconds_count",
            &mine
        ),
        commits
    );
    // Each committed batch's ack records its lag once (nothing was retried or dead-lettered).
    let lag = value(&m, "rabbit_once_consumer_ack_lag_seconds_count", &mine);
    assert_eq!(lag, commits);
    bounded_labels(&m);
    m.every_family_has_help();

    let conn = direct().await;
    delete_queues(&conn, &q).await;
    conn.close().await;
}

/// A port already taken is refused before anything is published (exit 2, named on stderr).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_taken_metrics_port_is_a_usage_error() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let q = unique("cli-metrics-taken");
    let out = tokio::process::Command::new(BIN)
        .args([
            "publish",
            "--queue",
            &q,
            "--count",
            "1",
            "--metrics-addr",
            &addr,
        ])
        .args(["--uri", &broker_uri()])
        .output()
        .await
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("--metrics-addr"), "{err}");
    drop(taken);
}

/// `relay` reports the outbox's backlog: a row the broker refuses stays in the table, and the
/// relay's count of it reaches `rabbit_once_outbox_pending_rows` (the rows it published are
/// gone from the count); every family has its help.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relay_reports_the_rows_left_in_the_outbox() {
    let q = unique("cli-metrics-relay");
    let db = TempDb::new();
    let spec = format!("sqlite:{}", db.path.display());
    let store = rabbit_once::SqliteStore::open(&db.path).await.unwrap();
    let outbox = rabbit_once::SqliteOutbox::new(store.pool().clone());
    outbox.migrate().await.unwrap();
    let conn = direct().await;
    conn.declare(&rabbit_once::Topology::new().queue(rabbit_once::Queue::new(&q)))
        .await
        .unwrap();
    let written = std::time::Instant::now();
    let mut tx = rabbit_once::Store::begin(&store).await.unwrap();
    let nowhere = rabbit_once::Message::new(format!("{q}-missing-exchange"), "k", "refused");
    outbox.enqueue(&mut tx, nowhere).await.unwrap();
    let good = (0..3).map(|i| rabbit_once::Message::to_queue(&q, format!("{i}")));
    outbox.enqueue_all(&mut tx, good).await.unwrap();
    tx.commit().await.unwrap();
    // The rows are at least 2 s old at every count (whole seconds: the age shows >= 1).
    tokio::time::sleep(Duration::from_secs(2)).await;

    let port = free_port();
    let mut child = tokio::process::Command::new(BIN)
        .args(["relay", "--outbox", &spec, "--uri", &broker_uri(), "--json"])
        .args([
            "--retry-after",
            "60",
            "--metrics-addr",
            &format!("127.0.0.1:{port}"),
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    // Counted every 5 s: the first count may still see the three rows it publishes.
    let mut last = None;
    for _ in 0..150 {
        tokio::time::sleep(Duration::from_millis(200)).await;
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            continue;
        }
        let m = scrape(port).await;
        let pending = sum(&m, "rabbit_once_outbox_pending_rows", &[]);
        let relayed = sum(&m, "rabbit_once_outbox_relayed_total", &[]);
        if pending == 1.0 && relayed == 3.0 {
            last = Some(m);
            break;
        }
    }
    let m = last.expect("the relay counted the one row left");
    let age = value(&m, "rabbit_once_outbox_oldest_pending_age_seconds", &[]);
    let elapsed = written.elapsed().as_secs_f64();
    assert!(
        (1.0..=elapsed + 1.0).contains(&age),
        "the refused row's age {age} s, written {elapsed} s ago"
    );
    bounded_labels(&m);
    m.every_family_has_help();
    send("TERM", child.id().unwrap());
    let status = tokio::time::timeout(Duration::from_secs(30), child.wait())
        .await
        .expect("exits after SIGTERM")
        .unwrap();
    assert!(status.success(), "{status}");
    store.pool().close().await;
    conn.delete_queue(&q).await.unwrap();
    conn.close().await;
}
