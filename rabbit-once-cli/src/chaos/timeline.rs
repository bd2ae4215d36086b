//! The run's timeline: what happened when (faults, processes started, killed or exited), a
//! sample each second of what can only be seen while it happens (the work queue's depth, the
//! consumers' reconnects), and — at the end — throughput and lag counted from the exact times
//! the children record anyway (a publisher's confirm times, each `applied` row's `applied_at`).
//! Nothing here is on a child's path: the sampler is one task of the chaos process.

use super::committed::Committed;
use super::ledger::{PubReport, now_micros};
use super::report::{Mark, ProcessMark, Series};
use super::setup::Setup;
use crate::applied::Db;
use crate::consume::Summary as ConsumerSummary;
use std::collections::HashMap;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// A child process's role, as the timeline and the metrics name it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Role {
    Publisher,
    Consumer,
    Relay,
}

impl Role {
    pub(super) fn name(self) -> &'static str {
        match self {
            Role::Publisher => "publisher",
            Role::Consumer => "consumer",
            Role::Relay => "relay",
        }
    }
}

/// What happened to a child process.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Happened {
    /// Started for the first time.
    Started,
    /// Started again (after a kill, or after it exited with a failure).
    Restarted,
    /// SIGKILLed by the run (a fault).
    Killed,
    /// Exited on its own with a failure.
    Exited,
}

/// One sample of what is only seen live.
#[derive(Debug, Clone, Copy)]
pub(super) struct Sample {
    /// Seconds on the timeline (from its zero, when the children start).
    pub(super) t: f64,
    /// Messages ready in the work queue (`None`: the broker did not answer in time).
    pub(super) queue_ready: Option<u64>,
    /// Consumer reconnects so far, every consumer process together (by their reports).
    pub(super) reconnects: u64,
    /// With `--outbox`: messages committed so far (`None`: not read).
    pub(super) committed: Option<u64>,
}

#[derive(Default)]
struct Data {
    faults: Vec<Mark>,
    processes: Vec<ProcessMark>,
    samples: Vec<Sample>,
    params: Vec<(String, String)>,
}

/// A cheap handle on the run's timeline, shared by the fault log, the process pool and the
/// sampler. Everything it records is rare (a fault, a process, a sample a second): one lock
/// each, never per message.
#[derive(Clone)]
pub(super) struct Timeline {
    /// Unix time of the timeline's zero, in microseconds: the x axis's zero (the run makes the
    /// timeline once its setup is done, as the children start).
    started_us: u128,
    data: Arc<Mutex<Data>>,
}

impl Timeline {
    /// A timeline whose zero is now.
    pub(super) fn new() -> Timeline {
        Timeline {
            started_us: now_micros(),
            data: Arc::default(),
        }
    }

    /// Seconds from the timeline's zero to unix time `us` (microseconds).
    pub(super) fn secs(&self, us: u128) -> f64 {
        us.saturating_sub(self.started_us) as f64 / 1e6
    }

    /// Seconds since the timeline's zero.
    pub(super) fn now(&self) -> f64 {
        self.secs(now_micros())
    }

    fn with<R>(&self, f: impl FnOnce(&mut Data) -> R) -> R {
        f(&mut self.data.lock().unwrap_or_else(|e| e.into_inner()))
    }

    /// A parameter of the run, shown at the top of the report.
    pub(super) fn param(&self, name: &str, value: impl ToString) {
        let value = value.to_string();
        self.with(|d| d.params.push((name.to_string(), value)));
    }

    /// Fault `kind` injected from unix time `t_us` until now; `detail` says where.
    pub(super) fn fault(&self, kind: &str, t_us: u128, detail: &str) {
        let t = self.secs(t_us);
        let until = self.now();
        metrics::counter!("rabbit_once_chaos_faults_total", "kind" => kind.to_string())
            .increment(1);
        self.with(|d| {
            d.faults.push(Mark {
                t,
                seconds: (until - t).max(0.0),
                kind: kind.to_string(),
                detail: detail.to_string(),
            })
        });
    }

    /// Child process `role` (slot `slot`, e.g. `consumer 1`) `happened`.
    pub(super) fn process(&self, role: Role, slot: String, happened: Happened) {
        let t = self.now();
        let r = role.name();
        match happened {
            Happened::Started | Happened::Restarted => {
                metrics::counter!("rabbit_once_chaos_processes_started_total", "role" => r)
                    .increment(1)
            }
            Happened::Killed => {
                metrics::counter!("rabbit_once_chaos_processes_killed_total", "role" => r)
                    .increment(1)
            }
            Happened::Exited => {
                metrics::counter!("rabbit_once_chaos_processes_exited_total", "role" => r)
                    .increment(1)
            }
        }
        if happened == Happened::Started {
            return; // the first start of every child: at the beginning, not worth a mark
        }
        self.with(|d| {
            d.processes.push(ProcessMark {
                t,
                role: r,
                slot,
                happened,
            })
        });
    }

    fn sample(&self, s: Sample) {
        if let Some(n) = s.queue_ready {
            metrics::gauge!("rabbit_once_chaos_queue_ready_messages").set(n as f64);
        }
        metrics::gauge!("rabbit_once_chaos_consumer_reconnects").set(s.reconnects as f64);
        if let Some(n) = s.committed {
            metrics::gauge!("rabbit_once_chaos_committed_messages").set(n as f64);
        }
        self.with(|d| d.samples.push(s));
    }

    /// What was recorded: parameters, faults, process marks, samples.
    pub(super) fn snapshot(&self) -> Recorded {
        self.with(|d| Recorded {
            params: d.params.clone(),
            faults: d.faults.clone(),
            processes: d.processes.clone(),
            samples: d.samples.clone(),
        })
    }
}

/// A copy of what the timeline recorded.
pub(super) struct Recorded {
    pub(super) params: Vec<(String, String)>,
    pub(super) faults: Vec<Mark>,
    pub(super) processes: Vec<ProcessMark>,
    pub(super) samples: Vec<Sample>,
}

/// The sampling task: once a second, the work queue's depth (over a connection of its own,
/// straight to the broker; a broker that does not answer within 500 ms leaves a gap), the
/// consumers' reconnects (the tails of their reports) and, with `--outbox`, the messages
/// committed so far.
pub(super) struct Sampler {
    stop: tokio::sync::oneshot::Sender<()>,
    task: tokio::task::JoinHandle<()>,
}

impl Sampler {
    /// Starts sampling `setup`'s work queue and work directory (`outbox`: and its outboxes)
    /// into `timeline`.
    pub(super) fn start(
        setup: &Setup,
        timeline: Timeline,
        outbox: bool,
    ) -> anyhow::Result<Sampler> {
        let conn = setup.sampler_connection()?;
        let mut committed = outbox.then(|| Committed::new(&setup.db, setup.work.clone()));
        let queue = setup.queue.clone();
        let work = setup.work.clone();
        let (stop, mut stopped) = tokio::sync::oneshot::channel();
        let task = tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let mut tails = ReportTails::default();
            loop {
                tokio::select! {
                    _ = tick.tick() => {}
                    _ = &mut stopped => break,
                }
                let t = timeline.now();
                let queue_ready =
                    tokio::time::timeout(Duration::from_millis(500), conn.queue_info(&queue))
                        .await
                        .ok()
                        .and_then(Result::ok)
                        .map(|i| i.messages as u64);
                let reconnects = tails.reconnects(&work);
                let committed = match committed.as_mut() {
                    Some(c) => c.count().await,
                    None => None,
                };
                timeline.sample(Sample {
                    t,
                    queue_ready,
                    reconnects,
                    committed,
                });
            }
            if let Some(c) = committed {
                c.close().await;
            }
            let _ = tokio::time::timeout(Duration::from_secs(2), conn.close()).await;
        });
        Ok(Sampler { stop, task })
    }

    /// Stops sampling (and closes its connection).
    pub(super) async fn stop(self) {
        let _ = self.stop.send(());
        let _ = self.task.await;
    }
}

/// The consumers' reports (`con-*.log`, a JSON line each 500 ms), read from where the last read
/// stopped: their latest `reconnects` each.
#[derive(Default)]
struct ReportTails {
    /// Report → (bytes read so far, its latest reconnects).
    files: HashMap<PathBuf, (u64, u64)>,
}

impl ReportTails {
    /// Reconnects of every consumer process so far, by the latest line of each report.
    fn reconnects(&mut self, work: &Path) -> u64 {
        if let Ok(dir) = std::fs::read_dir(work) {
            for entry in dir.flatten() {
                let name = entry.file_name();
                let name = name.to_string_lossy();
                if name.starts_with("con-") && name.ends_with(".log") {
                    let (read, last) = self.files.entry(entry.path()).or_default();
                    tail(&entry.path(), read, last);
                }
            }
        }
        self.files.values().map(|(_, n)| n).sum()
    }
}

/// Reads `path` from byte `read` to its last complete line, moving `read` on; `last` becomes
/// the `reconnects` of the last complete summary line, if there is one.
fn tail(path: &Path, read: &mut u64, last: &mut u64) {
    let Ok(mut f) = std::fs::File::open(path) else {
        return;
    };
    let mut buf = Vec::new();
    if f.seek(SeekFrom::Start(*read)).is_err() || f.read_to_end(&mut buf).is_err() {
        return;
    }
    let Some(end) = buf.iter().rposition(|b| *b == b'\n') else {
        return;
    };
    *read += end as u64 + 1;
    if let Some(s) = String::from_utf8_lossy(&buf[..end])
        .lines()
        .rev()
        .find_map(|l| serde_json::from_str::<ConsumerSummary>(l).ok())
    {
        *last = s.reconnects;
    }
}

/// Throughput and lag, per second of the run, from what the children recorded: the confirm
/// times in the publishers' reports (none with `--outbox`: a commit is not timed) and
/// `applied_at` of each row of the `applied` table (and of stage 2's with `--pipeline`).
pub(super) struct Counted {
    /// Series of the throughput chart (msg/s).
    pub(super) throughput: Vec<Series>,
    /// Confirmed and not yet applied (messages), when confirms are timed.
    pub(super) lag: Option<Series>,
    /// When each message was first applied (seconds into the run), in order.
    pub(super) first_applied: Vec<f64>,
}

/// Counts [`Counted`] for a run of `seconds` seconds.
pub(super) async fn count(setup: &Setup, tl: &Timeline, seconds: f64) -> Counted {
    let buckets = seconds.max(0.0).ceil() as usize + 1;
    let bucket = |us: u128| ((tl.secs(us)) as usize).min(buckets - 1);
    let mut throughput = Vec::new();
    // Confirms: every publisher process's report in the work directory.
    let mut reports: Vec<PathBuf> = std::fs::read_dir(&setup.work)
        .map(|d| {
            d.flatten()
                .map(|e| e.path())
                .filter(|p| {
                    p.file_name()
                        .is_some_and(|n| n.to_string_lossy().starts_with("pub-"))
                })
                .collect()
        })
        .unwrap_or_default();
    reports.sort();
    let confirmed = PubReport::read_all(reports.iter().map(PathBuf::as_path)).confirmed;
    let mut confirmed_per_s = vec![0u64; buckets];
    for t in confirmed.values() {
        confirmed_per_s[bucket(*t)] += 1;
    }
    // Applications: every row (a message applied twice counts twice), and the first of each
    // message for the lag.
    let rows = applied_times(&setup.db).await;
    let mut applied_per_s = vec![0u64; buckets];
    let mut first: HashMap<i64, u128> = HashMap::with_capacity(rows.len());
    for (seq, t) in &rows {
        applied_per_s[bucket(*t)] += 1;
        if let Some(seq) = seq {
            let e = first.entry(*seq).or_insert(*t);
            *e = (*e).min(*t);
        }
    }
    let mut first_applied_per_s = vec![0u64; buckets];
    for t in first.values() {
        first_applied_per_s[bucket(*t)] += 1;
    }
    let per_second = |v: &[u64]| rates(v, seconds);
    let timed_confirms = !confirmed.is_empty();
    if timed_confirms {
        let mut s = Series::new(
            "published (confirmed) msg/s",
            "#1f77b4",
            per_second(&confirmed_per_s),
        );
        s.wide = true;
        throughput.push(s);
    }
    throughput.push(Series::new(
        "applied msg/s",
        "#2ca02c",
        per_second(&applied_per_s),
    ));
    if let Some(stage2) = &setup.stage2 {
        let mut per_s = vec![0u64; buckets];
        for (_, t) in applied_times(&stage2.db).await {
            per_s[bucket(t)] += 1;
        }
        throughput.push(Series::new(
            "stage 2 applied msg/s",
            "#17becf",
            per_second(&per_s),
        ));
    }
    let lag = timed_confirms.then(|| {
        Series::new(
            "confirmed, not yet applied",
            "#ff7f0e",
            backlog(&confirmed_per_s, &first_applied_per_s, seconds),
        )
    });
    let mut first_applied: Vec<f64> = first.values().map(|t| tl.secs(*t)).collect();
    first_applied.sort_by(f64::total_cmp);
    Counted {
        throughput,
        lag,
        first_applied,
    }
}

/// Messages per second from counts per second of a run of `seconds`: a point mid-bucket each;
/// the last, partial second as the rate over its length (at least a quarter of a second, so a
/// few stragglers do not look like a burst).
fn rates(per_s: &[u64], seconds: f64) -> Vec<(f64, f64)> {
    per_s
        .iter()
        .enumerate()
        .filter_map(|(i, n)| {
            let width = (seconds - i as f64).min(1.0);
            (width > 0.0).then(|| (i as f64 + width / 2.0, *n as f64 / width.max(0.25)))
        })
        .collect()
}

/// Confirmed and not yet applied at the end of each second (and at the end of the run): the
/// running difference of the two counts per second, never below 0 (a message can be applied
/// before its confirm reaches the publisher).
fn backlog(confirmed: &[u64], applied: &[u64], seconds: f64) -> Vec<(f64, f64)> {
    let (mut c, mut a) = (0i64, 0i64);
    let mut points = vec![(0.0, 0.0)];
    for (i, (dc, da)) in confirmed.iter().zip(applied).enumerate() {
        let end = (i as f64 + 1.0).min(seconds);
        if end <= i as f64 {
            break;
        }
        c += *dc as i64;
        a += *da as i64;
        points.push((end, (c - a).max(0) as f64));
    }
    points
}

/// `(seconds, value)` points of a series.
type Points = Vec<(f64, f64)>;

/// With `--outbox`, from the samples of what was committed (`(seconds, committed)`) and when
/// each message was first applied (`first_applied`, in order): committed msg/s between samples,
/// and committed but not yet applied at each sample.
pub(super) fn commit_rates(samples: &[(f64, u64)], first_applied: &[f64]) -> (Points, Points) {
    let rates = samples
        .windows(2)
        .filter(|w| w[1].0 > w[0].0)
        .map(|w| {
            let dn = w[1].1.saturating_sub(w[0].1) as f64;
            ((w[0].0 + w[1].0) / 2.0, dn / (w[1].0 - w[0].0))
        })
        .collect();
    let lag = samples
        .iter()
        .map(|(t, n)| {
            let applied = first_applied.partition_point(|a| a <= t) as u64;
            (*t, n.saturating_sub(applied) as f64)
        })
        .collect();
    (rates, lag)
}

/// `(seq, applied_at)` of every row of `db`'s `applied` table (empty if it cannot be read).
async fn applied_times(db: &Db) -> Vec<(Option<i64>, u128)> {
    use rabbit_once::sqlx;
    let sql = "SELECT seq, applied_at FROM applied";
    let rows: Result<Vec<(Option<i64>, i64)>, _> = match db {
        Db::Sqlite(s) => sqlx::query_as(sql).fetch_all(s.pool()).await,
        Db::Postgres(s) => sqlx::query_as(sql).fetch_all(s.pool()).await,
    };
    rows.unwrap_or_default()
        .into_iter()
        .map(|(s, t)| (s, t.max(0) as u128))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_report_tail_reads_complete_lines_only_and_keeps_the_last() {
        let dir = std::env::temp_dir().join(rabbit_once_testkit::unique("tail"));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join("con-0-1.log");
        let line = |n: u64| {
            format!(
                "{}\n",
                serde_json::to_string(&ConsumerSummary {
                    reconnects: n,
                    ..Default::default()
                })
                .unwrap()
            )
        };
        std::fs::write(&p, format!("{}{}{{\"deliv", line(1), line(2))).unwrap();
        let mut tails = ReportTails::default();
        assert_eq!(tails.reconnects(&dir), 2);
        // The half-written line is read again once it is complete.
        let mut text = std::fs::read_to_string(&p).unwrap();
        text.truncate(text.len() - "{\"deliv".len());
        text.push_str(&line(3));
        std::fs::write(&p, &text).unwrap();
        assert_eq!(tails.reconnects(&dir), 3);
        std::fs::write(dir.join("con-1-1.log"), line(4)).unwrap();
        std::fs::write(dir.join("pub-0-1.log"), "a 1\n").unwrap();
        assert_eq!(tails.reconnects(&dir), 7);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn rates_are_per_second_and_the_last_partial_second_is_scaled() {
        assert_eq!(
            rates(&[10, 20, 5], 2.5),
            vec![(0.5, 10.0), (1.5, 20.0), (2.25, 10.0)]
        );
        // A sliver of a second counts as a quarter of one.
        assert_eq!(rates(&[10, 2], 1.1), vec![(0.5, 10.0), (1.05, 8.0)]);
        assert_eq!(rates(&[7, 0], 1.0), vec![(0.5, 7.0)]);
        assert!(rates(&[], 3.0).is_empty());
        assert_eq!(
            backlog(&[10, 5, 0], &[4, 8, 3], 2.5),
            vec![(0.0, 0.0), (1.0, 6.0), (2.0, 3.0), (2.5, 0.0)]
        );
        assert_eq!(backlog(&[0, 0], &[3, 0], 1.0), vec![(0.0, 0.0), (1.0, 0.0)]);
    }

    #[test]
    fn commits_sampled_give_a_rate_and_a_lag() {
        let (rates, lag) = commit_rates(
            &[(0.0, 0), (1.0, 100), (2.0, 300), (3.0, 300)],
            &[0.5, 0.9, 1.5, 2.5, 2.5],
        );
        assert_eq!(rates, vec![(0.5, 100.0), (1.5, 200.0), (2.5, 0.0)]);
        assert_eq!(
            lag,
            vec![(0.0, 0.0), (1.0, 98.0), (2.0, 297.0), (3.0, 295.0)]
        );
        assert_eq!(commit_rates(&[], &[1.0]), (vec![], vec![]));
    }

    #[test]
    fn faults_are_placed_from_their_unix_time_and_last_until_recorded() {
        let tl = Timeline::new();
        let t = tl.started_us + 1_500_000;
        tl.fault("cut", t, "n1's proxy");
        tl.process(Role::Consumer, "consumer 0".into(), Happened::Started);
        tl.process(Role::Consumer, "consumer 0".into(), Happened::Restarted);
        let r = tl.snapshot();
        assert_eq!(r.faults.len(), 1);
        assert_eq!(r.faults[0].kind, "cut");
        assert!((r.faults[0].t - 1.5).abs() < 1e-9);
        assert_eq!(
            r.faults[0].seconds, 0.0,
            "recorded before it happened: no length"
        );
        assert_eq!(r.processes.len(), 1, "a first start is not marked");
        assert_eq!(r.processes[0].happened, Happened::Restarted);
    }
}
