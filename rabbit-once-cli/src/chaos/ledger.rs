//! The ledger: what the children reported and the database holds, counted into lost, applied
//! twice and missing.

use crate::consume::Summary as ConsumerSummary;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

/// What the run found. `lost` and `applied_twice` must be 0.
#[derive(Debug, Default, serde::Serialize)]
pub struct Ledger {
    pub messages: u64,
    /// Distinct messages some publisher process accepted.
    pub published: u64,
    /// Distinct messages the broker confirmed to some publisher process.
    pub confirmed: u64,
    /// Accepted but not yet confirmed by a publisher process when it was killed: handed back to
    /// the caller (the run resends them from a new process, with the same message_id).
    pub unconfirmed_at_crash: u64,
    /// Distinct messages applied exactly once.
    pub applied_once: u64,
    /// Messages applied more than once (rows beyond the first). Must be 0.
    pub applied_twice: u64,
    /// Confirmed but never applied. Must be 0.
    pub lost: u64,
    /// Messages neither confirmed nor applied (the run ran out of time).
    pub missing: u64,
    /// Deliveries acked without running the handler, by the consumers' last reports (a consumer
    /// killed with SIGKILL reports up to 500 ms before its death).
    pub duplicates_skipped: u64,
    pub retried: u64,
    pub dead_lettered: u64,
    pub reconnects: u64,
    pub faults: BTreeMap<String, u32>,
    pub recovery_p50_ms: Option<f64>,
    pub recovery_p99_ms: Option<f64>,
    pub seconds: f64,
}

pub(super) fn now_micros() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros())
        .unwrap_or(0)
}

/// Lines of a publisher report: accepted, confirmed (with time) seqs.
#[derive(Default)]
pub(super) struct PubReport {
    pub(super) accepted: HashSet<u64>,
    pub(super) confirmed: HashMap<u64, u128>,
}

pub(super) fn read_pub_report(path: &Path) -> PubReport {
    let mut r = PubReport::default();
    let text = std::fs::read_to_string(path).unwrap_or_default();
    for line in text.lines() {
        let mut it = line.split_whitespace();
        match (it.next(), it.next().and_then(|s| s.parse::<u64>().ok())) {
            (Some("a"), Some(seq)) => {
                r.accepted.insert(seq);
            }
            (Some("c"), Some(seq)) => {
                let t = it.next().and_then(|s| s.parse().ok()).unwrap_or(0);
                r.confirmed.insert(seq, t);
            }
            _ => {}
        }
    }
    r
}

pub(super) fn last_consumer_report(path: &Path) -> Option<ConsumerSummary> {
    let text = std::fs::read_to_string(path).ok()?;
    text.lines()
        .rev()
        .find_map(|l| serde_json::from_str(l).ok())
}

pub(super) fn print_ledger(l: &Ledger) {
    println!();
    println!("  messages               {:>8}", l.messages);
    println!("  published              {:>8}", l.published);
    println!("  confirmed              {:>8}", l.confirmed);
    println!(
        "  unconfirmed at crash   {:>8}   handed back by killed publishers; resent with the same id",
        l.unconfirmed_at_crash
    );
    println!("  applied once           {:>8}", l.applied_once);
    println!("  applied twice          {:>8}", l.applied_twice);
    println!(
        "  lost                   {:>8}   confirmed but never applied",
        l.lost
    );
    println!(
        "  missing                {:>8}   neither confirmed nor applied",
        l.missing
    );
    println!("  duplicates skipped     {:>8}", l.duplicates_skipped);
    println!("  retries                {:>8}", l.retried);
    println!("  dead-lettered          {:>8}", l.dead_lettered);
    println!("  consumer reconnects    {:>8}", l.reconnects);
    for (k, v) in &l.faults {
        println!("  fault {k:<16} {v:>8}");
    }
    if let (Some(p50), Some(p99)) = (l.recovery_p50_ms, l.recovery_p99_ms) {
        println!("  recovery to next confirm: p50 {p50:.0} ms, p99 {p99:.0} ms");
    }
    println!("  {:.1} s", l.seconds);
}
