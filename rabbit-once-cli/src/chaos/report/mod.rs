//! The picture of a chaos run (`--report FILE.html`): one self-contained HTML page — inline SVG
//! and CSS, no script, nothing fetched — with throughput and consumer lag over time, each fault
//! a marked line, process restarts and consumer reconnects, the final ledger and the run's
//! parameters.
//!
//! - `mod.rs`: what the page shows ([`Report`]), and [`write`]: gathered from the run.
//! - `page.rs`: the page — pure rendering of a [`Report`]: header, charts, ledger, faults.
//! - `chart.rs`: the SVG charts — axes, series, fault lines, restart and reconnect lanes.

mod chart;
mod page;

use super::args::Args;
use super::ledger::Ledger;
use super::setup::Setup;
use super::timeline::{Counted, Happened, Timeline, commit_rates, count};
use page::render;
use std::path::Path;
use std::time::Duration;

/// A fault on the timeline.
#[derive(Debug, Clone)]
pub(super) struct Mark {
    /// Seconds on the timeline (from when the children start).
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

/// Writes the run's page to `path`: the parameters of `a`, what `tl` recorded, throughput and
/// lag [counted](count) from `setup`'s reports and store, and the ledger — or, when the run
/// ended without one (`Err`: an error, Ctrl-C), what it got to. Bounded: a store that does not
/// answer leaves the charts empty rather than the run hanging.
pub(super) async fn write(
    path: &Path,
    a: &Args,
    setup: &Setup,
    tl: &Timeline,
    outcome: Result<(&Ledger, bool), &anyhow::Error>,
) -> anyhow::Result<()> {
    let seconds = tl.now();
    let counted = tokio::time::timeout(Duration::from_secs(30), count(setup, tl, seconds))
        .await
        .unwrap_or(Counted {
            throughput: Vec::new(),
            lag: None,
            first_applied: Vec::new(),
        });
    let rec = tl.snapshot();
    let mut throughput = counted.throughput;
    let mode = match (a.cluster, a.own_broker) {
        (Some(n), _) => format!("private {n}-node cluster, quorum queues"),
        (None, true) => "private node".to_string(),
        (None, false) => "the given broker".to_string(),
    };
    let mode = [(a.outbox, " + outbox"), (a.pipeline, " + pipeline")]
        .iter()
        .filter(|(on, _)| *on)
        .fold(mode, |m, (_, s)| m + s);
    let mut params = vec![
        ("broker".to_string(), mode),
        ("messages".to_string(), a.messages.to_string()),
        ("publishers".to_string(), a.publishers.to_string()),
        ("consumers".to_string(), a.consumers().to_string()),
        (
            "store".to_string(),
            if setup.store.starts_with("sqlite") {
                "SQLite"
            } else {
                "PostgreSQL"
            }
            .to_string(),
        ),
        (
            "fault interval".to_string(),
            format!("{} s", a.fault_interval),
        ),
    ];
    params.extend(rec.params);
    params.push((
        "charted".to_string(),
        format!("{seconds:.1} s from the first child"),
    ));
    let (passed, headline, ledger) = match outcome {
        Ok((l, timed_out)) => {
            let (ok, line) = l.verdict(timed_out);
            (Some(ok), line.to_string(), Some(serde_json::to_value(l)?))
        }
        Err(e) => (None, format!("No ledger: {e:#}"), None),
    };
    let mut lag = Vec::new();
    if let Some(mut s) = counted.lag {
        s.area = true;
        lag.push(s);
    }
    // --outbox: commits counted once a second.
    let committed: Vec<(f64, u64)> = rec
        .samples
        .iter()
        .filter_map(|s| Some((s.t, s.committed?)))
        .collect();
    if a.outbox && !committed.is_empty() {
        let (rates, backlog) = commit_rates(&committed, &counted.first_applied);
        let mut s = Series::new("committed msg/s (sampled each second)", "#1f77b4", rates);
        s.wide = true;
        throughput.insert(0, s);
        let mut s = Series::new("committed, not yet applied", "#ff7f0e", backlog);
        s.area = true;
        lag.insert(0, s);
    }
    lag.push(Series::new(
        "ready in the work queue (sampled each second)",
        "#9467bd",
        rec.samples
            .iter()
            .map(|s| (s.t, s.queue_ready.map_or(f64::NAN, |n| n as f64)))
            .collect(),
    ));
    let reconnects = rec
        .samples
        .windows(2)
        .filter(|w| w[1].reconnects > w[0].reconnects)
        .map(|w| (w[1].t, w[1].reconnects - w[0].reconnects))
        .collect();
    let mut notes = vec![
        "Throughput and the confirmed-not-applied lag are counted from the publishers' confirm \
         times and each applied row's applied_at, per second; the queue's depth (ready \
         messages, not those delivered and unacked) is sampled once a second: a gap is a broker \
         that did not answer within 500 ms."
            .to_string(),
        "Reconnects are the consumer processes' own (from their reports, every 500 ms); the \
         publishers do not report theirs. Restarts are marked when the run starts a process \
         again: after a kill (also a fault line) or after it exited on its own."
            .to_string(),
    ];
    if a.outbox {
        notes.push(
            "--outbox: a commit is not timed; the `sent` rows are counted once a second, so \
             committed msg/s and the committed-not-applied lag are at that resolution."
                .to_string(),
        );
    }
    let page = render(&Report {
        title: format!("rabbit-once chaos run {}", setup.run_id),
        passed,
        headline,
        params,
        seconds,
        throughput,
        lag,
        faults: rec.faults,
        processes: rec.processes,
        reconnects,
        ledger,
        notes,
    });
    std::fs::write(path, page)?;
    Ok(())
}
