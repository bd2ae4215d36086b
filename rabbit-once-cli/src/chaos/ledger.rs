//! The ledger: what the children reported and the database holds, counted into lost, applied
//! twice and missing.

use super::inject::{FaultLog, LeaderKill};
use super::plan::Fault;
use super::pool::Pool;
use crate::applied::Db;
use crate::consume::Summary as ConsumerSummary;
use crate::outbox::{OutboxArgs, OutboxDb};
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::path::Path;
use std::process::ExitCode;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

/// What the run found. `lost` and `applied_twice` must be 0.
#[derive(Debug, Default, serde::Serialize)]
pub struct Ledger {
    /// Messages the run was asked to publish.
    pub messages: u64,
    /// Distinct messages some publisher process accepted.
    pub published: u64,
    /// Distinct messages the broker confirmed to some publisher process.
    pub confirmed: u64,
    /// Accepted but not yet confirmed by a publisher process when it was killed: handed back to
    /// the caller (the run resends them from a new process, with the same message_id). Not in
    /// an `--outbox` run: what a killed publisher committed stays in its outbox.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub unconfirmed_at_crash: Option<u64>,
    /// With `--outbox`: distinct messages committed (a `sent` row each); `published` and
    /// `confirmed` then count the committed rows and those that left the outbox.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub committed: Option<u64>,
    /// Distinct messages applied exactly once.
    pub applied_once: u64,
    /// Messages applied more than once (rows beyond the first). Must be 0.
    pub applied_twice: u64,
    /// Confirmed but never applied. Must be 0.
    pub lost: u64,
    /// Messages neither confirmed nor applied (the run ran out of time).
    pub missing: u64,
    /// With `--pipeline`: messages applied exactly once in stage 2.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stage2_applied_once: Option<u64>,
    /// With `--pipeline`: stage-2 rows beyond the first per message. Must be 0.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stage2_applied_twice: Option<u64>,
    /// With `--pipeline`: applied in stage 1, never in stage 2. Must be 0.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stage2_lost: Option<u64>,
    /// Deliveries acked without running the handler, by the consumers' last reports (a consumer
    /// killed with SIGKILL reports up to 500 ms before its death).
    pub duplicates_skipped: u64,
    /// Deliveries sent to the retry queue, by the consumers' last reports.
    pub retried: u64,
    /// Deliveries dead-lettered, by the consumers' last reports.
    pub dead_lettered: u64,
    /// Consumer reconnects, by the consumers' last reports.
    pub reconnects: u64,
    /// With `--outbox`: relay processes that exited on their own (a relay refused at every
    /// start would otherwise go unseen: the publishers' own relays deliver all the same).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub relay_exits: Option<u64>,
    /// Faults injected, by kind (`cut`, `blackhole`, `broker_restart`, `leader_kill9`, …).
    pub faults: BTreeMap<String, u32>,
    /// Kinds of fault planned that never fired (a publisher kill after every publisher
    /// finished, …). Must be empty: a run that did not inject what it planned proves less.
    pub faults_not_fired: Vec<String>,
    /// With `--cluster`: each kill of the work queue's leader node — which node led, which led
    /// next, how long until the killed node was back.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub leader_kills: Vec<LeaderKill>,
    /// From a network or broker fault to the next confirm anywhere, median (ms).
    pub recovery_p50_ms: Option<f64>,
    /// The same, 99th percentile (ms).
    pub recovery_p99_ms: Option<f64>,
    /// Length of the run so far.
    pub seconds: f64,
}

impl Ledger {
    /// Counts the ledger from the publishers' reports (`published`) or, with `--outbox`, from
    /// the outboxes (what must be applied is what was committed), the `applied` table, the
    /// consumers' last reports and the faults (against the kinds `planned`). Call once the
    /// consumers have stopped.
    #[allow(clippy::too_many_arguments)]
    pub(super) async fn count(
        messages: u64,
        db: &Db,
        published: &PubReport,
        outboxes: Option<&Outboxes>,
        pool: &Pool,
        faults: &FaultLog,
        planned: &BTreeSet<Fault>,
        started: Instant,
    ) -> anyhow::Result<Ledger> {
        let confirmed = &published.confirmed;
        let counts = db.seq_counts().await?;
        let applied: HashMap<u64, i64> = counts.iter().map(|(s, n)| (*s as u64, *n)).collect();
        // What had to be applied: the confirmed messages, or with --outbox the committed ones.
        let owed: HashSet<u64> = match outboxes {
            Some(o) => o.committed.clone(),
            None => confirmed.keys().copied().collect(),
        };
        let mut l = Ledger {
            messages,
            published: published.accepted.len() as u64,
            confirmed: confirmed.len() as u64,
            unconfirmed_at_crash: Some(pool.unconfirmed_at_crash),
            applied_once: applied.values().filter(|n| **n == 1).count() as u64,
            applied_twice: applied.values().map(|n| (*n - 1).max(0) as u64).sum(),
            lost: owed.iter().filter(|s| !applied.contains_key(s)).count() as u64,
            missing: (0..messages)
                .filter(|s| !owed.contains(s) && !applied.contains_key(s))
                .count() as u64,
            faults: faults.by_name(),
            faults_not_fired: faults.not_fired(planned),
            leader_kills: faults.leader_kills.clone(),
            seconds: started.elapsed().as_secs_f64(),
            ..Default::default()
        };
        if let Some(o) = outboxes {
            l.committed = Some(o.committed.len() as u64);
            l.published = o.committed.len() as u64;
            l.confirmed = (o.committed.len() as u64).saturating_sub(o.pending);
            l.unconfirmed_at_crash = None;
            l.relay_exits = Some(pool.relay_exits);
        }
        for r in pool.consumer_reports() {
            if let Some(s) = last_consumer_report(r) {
                l.duplicates_skipped += s.duplicates;
                l.retried += s.retried;
                l.dead_lettered += s.dead_lettered;
                l.reconnects += s.reconnects;
            }
        }
        if let Some((p50, p99)) = recovery_percentiles(&faults.times, confirmed) {
            l.recovery_p50_ms = Some(p50);
            l.recovery_p99_ms = Some(p99);
        }
        Ok(l)
    }

    /// Counts stage 2 of a `--pipeline` run: each message applied in stage 1 (`stage1`) must be
    /// applied exactly once in stage 2 (`stage2`).
    pub(super) async fn count_stage2(&mut self, stage1: &Db, stage2: &Db) -> anyhow::Result<()> {
        let first: HashSet<u64> = stage1
            .seq_counts()
            .await?
            .into_iter()
            .map(|(s, _)| s as u64)
            .collect();
        let second: HashMap<u64, i64> = stage2
            .seq_counts()
            .await?
            .into_iter()
            .map(|(s, n)| (s as u64, n))
            .collect();
        self.stage2_applied_once = Some(second.values().filter(|n| **n == 1).count() as u64);
        self.stage2_applied_twice = Some(second.values().map(|n| (*n - 1).max(0) as u64).sum());
        self.stage2_lost = Some(first.iter().filter(|s| !second.contains_key(s)).count() as u64);
        Ok(())
    }

    /// The verdict: passed only when nothing was lost, applied twice or missing, in time, and
    /// every kind of fault planned fired; and the line that says so.
    pub(super) fn verdict(&self, timed_out: bool) -> (bool, &'static str) {
        let balanced = self.lost == 0
            && self.applied_twice == 0
            && self.missing == 0
            && self.stage2_lost.unwrap_or(0) == 0
            && self.stage2_applied_twice.unwrap_or(0) == 0;
        if timed_out {
            (
                false,
                "FAILED: the run timed out before everything was applied",
            )
        } else if !balanced {
            (false, "FAILED: the ledger does not balance")
        } else if !self.faults_not_fired.is_empty() {
            (false, "FAILED: a kind of fault planned never fired")
        } else {
            (true, "OK: lost 0, applied twice 0")
        }
    }

    /// Sets the ledger gauges of `--metrics-addr` (docs/metrics.md): each count as
    /// `rabbit_once_chaos_ledger_messages{entry}`, and `rabbit_once_chaos_passed`.
    pub(super) fn set_gauges(&self, passed: bool) {
        let entries = [
            ("messages", Some(self.messages)),
            ("published", Some(self.published)),
            ("confirmed", Some(self.confirmed)),
            ("committed", self.committed),
            ("applied_once", Some(self.applied_once)),
            ("applied_twice", Some(self.applied_twice)),
            ("lost", Some(self.lost)),
            ("missing", Some(self.missing)),
            ("stage2_applied_once", self.stage2_applied_once),
            ("stage2_applied_twice", self.stage2_applied_twice),
            ("stage2_lost", self.stage2_lost),
        ];
        for (entry, n) in entries {
            if let Some(n) = n {
                metrics::gauge!("rabbit_once_chaos_ledger_messages", "entry" => entry)
                    .set(n as f64);
            }
        }
        metrics::gauge!("rabbit_once_chaos_passed").set(if passed { 1.0 } else { 0.0 });
    }

    /// Prints the ledger (as one JSON line with `json`) and the verdict; success only when it
    /// [passed](Self::verdict).
    pub(super) fn report(&self, json: bool, timed_out: bool) -> anyhow::Result<ExitCode> {
        let (ok, line) = self.verdict(timed_out);
        if json {
            println!("{}", serde_json::to_string(self)?);
        } else {
            self.print();
            println!("\n  {line}");
        }
        Ok(if ok {
            ExitCode::SUCCESS
        } else {
            ExitCode::FAILURE
        })
    }

    fn print(&self) {
        println!();
        println!("  messages               {:>8}", self.messages);
        println!("  published              {:>8}", self.published);
        println!("  confirmed              {:>8}", self.confirmed);
        if let Some(n) = self.committed {
            println!(
                "  committed              {n:>8}   through the outbox, with a `sent` row each"
            );
        }
        if let Some(n) = self.unconfirmed_at_crash {
            println!(
                "  unconfirmed at crash   {n:>8}   handed back by killed publishers; resent with the same id"
            );
        }
        println!("  applied once           {:>8}", self.applied_once);
        println!("  applied twice          {:>8}", self.applied_twice);
        println!(
            "  lost                   {:>8}   confirmed (--outbox: committed) but never applied",
            self.lost
        );
        println!(
            "  missing                {:>8}   neither confirmed nor applied",
            self.missing
        );
        if let (Some(once), Some(twice), Some(lost)) = (
            self.stage2_applied_once,
            self.stage2_applied_twice,
            self.stage2_lost,
        ) {
            println!("  stage 2 applied once   {once:>8}   emitted through the outbox by stage 1");
            println!("  stage 2 applied twice  {twice:>8}");
            println!("  stage 2 lost           {lost:>8}   applied in stage 1, never in stage 2");
        }
        println!("  duplicates skipped     {:>8}", self.duplicates_skipped);
        println!("  retries                {:>8}", self.retried);
        println!("  dead-lettered          {:>8}", self.dead_lettered);
        println!("  consumer reconnects    {:>8}", self.reconnects);
        for (k, v) in &self.faults {
            println!("  fault {k:<16} {v:>8}");
        }
        if !self.faults_not_fired.is_empty() {
            println!(
                "  planned, never fired    {}",
                self.faults_not_fired.join(", ")
            );
        }
        for k in &self.leader_kills {
            println!(
                "  leader {} killed: new leader {} after {:.1} s; back in the cluster after {:.1} s",
                k.killed,
                k.new_leader,
                k.new_leader_after_ms as f64 / 1000.0,
                k.rejoined_after_ms as f64 / 1000.0
            );
        }
        if let (Some(p50), Some(p99)) = (self.recovery_p50_ms, self.recovery_p99_ms) {
            println!("  recovery to next confirm: p50 {p50:.0} ms, p99 {p99:.0} ms");
        }
        println!("  {:.1} s", self.seconds);
    }
}

pub(super) fn now_micros() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros())
        .unwrap_or(0)
}

/// With `--outbox`: what the publishers committed (their `sent` tables) and what their
/// outboxes still hold.
pub(super) struct Outboxes {
    pub(super) committed: HashSet<u64>,
    /// Rows not yet confirmed, in every outbox together.
    pub(super) pending: u64,
}

impl Outboxes {
    /// Rows not yet confirmed in these outboxes together.
    pub(super) async fn pending(outboxes: &[OutboxArgs]) -> anyhow::Result<u64> {
        let mut n = 0;
        for args in outboxes {
            let db = OutboxDb::open(args).await?;
            n += db.status().await?.pending;
            db.close().await;
        }
        Ok(n)
    }

    /// Reads every outbox; `None` for a run without `--outbox`.
    pub(super) async fn read(outboxes: &[OutboxArgs]) -> anyhow::Result<Option<Outboxes>> {
        if outboxes.is_empty() {
            return Ok(None);
        }
        let mut o = Outboxes {
            committed: HashSet::new(),
            pending: 0,
        };
        for args in outboxes {
            let db = OutboxDb::open(args).await?;
            db.create_sent().await?; // a publisher killed before it made the table
            o.committed
                .extend(db.sent_seqs().await?.into_iter().map(|s| s as u64));
            o.pending += db.status().await?.pending;
            db.close().await;
        }
        Ok(Some(o))
    }
}

/// Lines of a publisher report: accepted, confirmed (with time) seqs.
#[derive(Default)]
pub(super) struct PubReport {
    pub(super) accepted: HashSet<u64>,
    /// Seq → unix time of its confirm, in microseconds.
    pub(super) confirmed: HashMap<u64, u128>,
}

impl PubReport {
    /// One report file; a missing or unreadable file is an empty report.
    pub(super) fn read(path: &Path) -> PubReport {
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

    /// All these reports together; a seq confirmed more than once keeps its first report's time.
    pub(super) fn read_all<'a>(paths: impl Iterator<Item = &'a Path>) -> PubReport {
        let mut all = PubReport::default();
        for p in paths {
            let r = PubReport::read(p);
            all.accepted.extend(r.accepted);
            for (s, t) in r.confirmed {
                all.confirmed.entry(s).or_insert(t);
            }
        }
        all
    }
}

/// The last summary line of a consumer report.
fn last_consumer_report(path: &Path) -> Option<ConsumerSummary> {
    let text = std::fs::read_to_string(path).ok()?;
    text.lines()
        .rev()
        .find_map(|l| serde_json::from_str(l).ok())
}

/// Recovery: from each network or broker fault (`fault_times`) to the next confirm anywhere,
/// the p50 and p99 in milliseconds; `None` when no fault was followed by a confirm.
fn recovery_percentiles(
    fault_times: &[u128],
    confirmed: &HashMap<u64, u128>,
) -> Option<(f64, f64)> {
    let mut confirm_times: Vec<u128> = confirmed.values().copied().collect();
    confirm_times.sort_unstable();
    let mut recovery: Vec<f64> = fault_times
        .iter()
        .filter_map(|t| {
            let i = confirm_times.partition_point(|c| c <= t);
            confirm_times.get(i).map(|c| (c - t) as f64 / 1000.0)
        })
        .collect();
    recovery.sort_by(|x, y| x.total_cmp(y));
    if recovery.is_empty() {
        return None;
    }
    let pct = |p: f64| recovery[((p / 100.0 * recovery.len() as f64).ceil() as usize).max(1) - 1];
    Some((pct(50.0), pct(99.0)))
}
