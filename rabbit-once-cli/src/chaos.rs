//! `rabbit-once chaos`: P publisher and C consumer *processes* (this binary's `publish` and
//! `consume`) through a fault proxy, while a fault schedule cuts connections, black-holes the
//! network, restarts or kills the broker, and SIGKILLs consumers and publishers. At the end the
//! ledger is reconciled from the publishers' reports and the `applied` table.

use crate::applied::Db;
use crate::common::Conn;
use crate::consume::Summary as ConsumerSummary;
use rabbit_once::uri::Endpoint;
use rabbit_once::{Connection, ConnectionConfig};
use rabbit_once_testkit::{BrokerNode, FaultProxy};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::process::{ExitCode, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tokio::process::{Child, Command};

#[derive(clap::Args, Debug, Clone)]
pub struct Args {
    #[command(flatten)]
    pub conn: Conn,
    /// Start a private RabbitMQ node for the run (needed for broker restarts and kills).
    #[arg(long)]
    pub own_broker: bool,
    /// Messages in all (split between the publishers).
    #[arg(long, default_value_t = 20_000)]
    pub messages: u64,
    #[arg(long, default_value_t = 256)]
    pub size: usize,
    #[arg(long, default_value_t = 2)]
    pub publishers: u64,
    #[arg(long, default_value_t = 2)]
    pub consumers: u64,
    /// Dedup store: sqlite:PATH or postgres://… (default: a SQLite file in the work directory).
    #[arg(long)]
    pub store: Option<String>,
    /// PostgreSQL schema (default: a fresh one per run, dropped at the end).
    #[arg(long)]
    pub schema: Option<String>,
    /// Messages per second, all publishers together (default: spread over the fault schedule).
    #[arg(long)]
    pub rate: Option<f64>,
    /// Connection cuts (every connection through the proxy reset at once).
    #[arg(long, default_value_t = 10)]
    pub cuts: u32,
    /// Black holes (nothing forwarded, nothing closed) longer than the heartbeat timeout.
    #[arg(long, default_value_t = 1)]
    pub blackholes: u32,
    /// Broker restarts with stop_app/start_app (--own-broker only).
    #[arg(long, default_value_t = 1)]
    pub restarts: u32,
    /// Broker kill -9 and start again (--own-broker only).
    #[arg(long, default_value_t = 1)]
    pub broker_kills: u32,
    /// Consumer processes killed with SIGKILL (and started again).
    #[arg(long, default_value_t = 2)]
    pub consumer_kills: u32,
    /// Publisher processes killed with SIGKILL (and started again from their first unconfirmed message).
    #[arg(long, default_value_t = 1)]
    pub publisher_kills: u32,
    /// Mean seconds between faults (each interval is jittered ±50%).
    #[arg(long, default_value_t = 1.5)]
    pub fault_interval: f64,
    /// Give up after this many seconds.
    #[arg(long, default_value_t = 600)]
    pub timeout: u64,
    /// Print the ledger as one JSON object on stdout.
    #[arg(long)]
    pub json: bool,
    /// Keep the work directory (reports, SQLite file) for inspection.
    #[arg(long)]
    pub keep: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
#[serde(rename_all = "snake_case")]
enum Fault {
    Cut,
    Blackhole,
    BrokerRestart,
    BrokerKill9,
    ConsumerKill,
    PublisherKill,
}

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

struct PublisherSlot {
    lo: u64,
    hi: u64,
    child: Option<Child>,
    report: PathBuf,
    generation: u32,
    done: bool,
    reports: Vec<PathBuf>,
}

struct ConsumerSlot {
    child: Option<Child>,
    report: PathBuf,
    generation: u32,
    reports: Vec<PathBuf>,
}

fn now_micros() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros())
        .unwrap_or(0)
}

/// Lines of a publisher report: accepted, confirmed (with time) seqs.
#[derive(Default)]
struct PubReport {
    accepted: HashSet<u64>,
    confirmed: HashMap<u64, u128>,
}

fn read_pub_report(path: &Path) -> PubReport {
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

fn last_consumer_report(path: &Path) -> Option<ConsumerSummary> {
    let text = std::fs::read_to_string(path).ok()?;
    text.lines()
        .rev()
        .find_map(|l| serde_json::from_str(l).ok())
}

fn kill9(child: &Child) {
    if let Some(pid) = child.id() {
        let _ = std::process::Command::new("kill")
            .args(["-9", &pid.to_string()])
            .status();
    }
}

fn term(child: &Child) {
    if let Some(pid) = child.id() {
        let _ = std::process::Command::new("kill")
            .args(["-TERM", &pid.to_string()])
            .status();
    }
}

pub async fn run(a: Args) -> anyhow::Result<ExitCode> {
    let started = Instant::now();
    let deadline = started + Duration::from_secs(a.timeout);
    let exe = std::env::current_exe()?;
    let run_id = rabbit_once_testkit::unique("chaos");
    let work = std::env::temp_dir().join(&run_id);
    std::fs::create_dir_all(&work)?;
    let say = |s: String| {
        if !a.json {
            println!("{s}");
        } else {
            eprintln!("{s}");
        }
    };

    // --- broker, proxy, store -----------------------------------------------------------------
    let node = if a.own_broker {
        say("starting a private RabbitMQ node…".into());
        Some(Arc::new(BrokerNode::start().await?))
    } else {
        None
    };
    let direct_uri = match &node {
        Some(n) => n.uri(),
        None => a.conn.uris[0].clone(),
    };
    let target = Endpoint::parse(&direct_uri)?;
    let proxy = FaultProxy::start(format!("{}:{}", target.host(), target.port())).await?;
    let via = target
        .clone()
        .with_address("127.0.0.1", proxy.port())
        .to_string();
    // Endpoint's Display hides the password: rebuild the URI with it for the children.
    let via_uri = direct_uri.replacen(
        &format!("{}:{}", target.host(), target.port()),
        &format!("127.0.0.1:{}", proxy.port()),
        1,
    );
    let store = a
        .store
        .clone()
        .unwrap_or_else(|| format!("sqlite:{}", work.join("chaos.db").display()));
    let own_schema = store.starts_with("postgres") && a.schema.is_none();
    let schema = a
        .schema
        .clone()
        .or_else(|| own_schema.then(|| run_id.replace('-', "_")));
    let db = Db::open(&store, schema.clone()).await?;
    db.prepare().await?;
    let queue = run_id.clone();
    say(format!(
        "chaos run {run_id}: {} messages, {} publishers, {} consumers, via {via}, store {}",
        a.messages,
        a.publishers,
        a.consumers,
        if store.starts_with("sqlite") {
            "SQLite"
        } else {
            "PostgreSQL"
        }
    ));

    // --- fault plan -------------------------------------------------------------------------------
    let mut plan = Vec::new();
    plan.extend(std::iter::repeat_n(Fault::Cut, a.cuts as usize));
    plan.extend(std::iter::repeat_n(Fault::Blackhole, a.blackholes as usize));
    plan.extend(std::iter::repeat_n(
        Fault::ConsumerKill,
        a.consumer_kills as usize,
    ));
    if node.is_some() {
        plan.extend(std::iter::repeat_n(
            Fault::BrokerRestart,
            a.restarts as usize,
        ));
        plan.extend(std::iter::repeat_n(
            Fault::BrokerKill9,
            a.broker_kills as usize,
        ));
    } else if a.restarts + a.broker_kills > 0 {
        say("  (broker restarts and kills need --own-broker; skipped)".into());
    }
    fastrand::shuffle(&mut plan);
    // Publisher kills go early, while the publishers certainly still run.
    for i in 0..a.publisher_kills as usize {
        let at = (i * 2 + 1).min(plan.len());
        plan.insert(at, Fault::PublisherKill);
    }
    let heartbeat = a.conn.heartbeat.max(1);
    let hole = Duration::from_secs(heartbeat * 2 + 2);
    let plan_secs: f64 = plan
        .iter()
        .map(|f| {
            a.fault_interval
                + match f {
                    Fault::Blackhole => hole.as_secs_f64(),
                    Fault::BrokerRestart => 3.0,
                    Fault::BrokerKill9 => 8.0,
                    _ => 0.0,
                }
        })
        .sum();
    let rate = a
        .rate
        .unwrap_or_else(|| (a.messages as f64 / (plan_secs * 1.2).max(5.0)).max(50.0));
    let per_pub_rate = (rate / a.publishers as f64).max(1.0);

    // --- children -----------------------------------------------------------------------------------
    let spawn_publisher = |slot: &mut PublisherSlot, from: u64| -> anyhow::Result<()> {
        slot.generation += 1;
        slot.report = work.join(format!("pub-{}-{}.log", slot.lo, slot.generation));
        slot.reports.push(slot.report.clone());
        let child = Command::new(&exe)
            .args(["publish", "--uri", &via_uri, "--queue", &queue])
            .args([
                "--start",
                &from.to_string(),
                "--count",
                &(slot.hi - from).to_string(),
            ])
            .args([
                "--size",
                &a.size.to_string(),
                "--rate",
                &(per_pub_rate as u64).max(1).to_string(),
            ])
            .args([
                "--id-prefix",
                &run_id,
                "--heartbeat",
                &heartbeat.to_string(),
                "--json",
            ])
            .arg("--report")
            .arg(&slot.report)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()?;
        slot.child = Some(child);
        Ok(())
    };
    let spawn_consumer = |slot: &mut ConsumerSlot, j: u64| -> anyhow::Result<()> {
        slot.generation += 1;
        slot.report = work.join(format!("con-{j}-{}.log", slot.generation));
        slot.reports.push(slot.report.clone());
        let mut cmd = Command::new(&exe);
        cmd.args([
            "consume", "--uri", &via_uri, "--queue", &queue, "--store", &store,
        ])
        .args(["--heartbeat", &heartbeat.to_string(), "--json"])
        .arg("--report")
        .arg(&slot.report)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true);
        if let Some(s) = &schema {
            cmd.args(["--schema", s]);
        }
        slot.child = Some(cmd.spawn()?);
        Ok(())
    };
    let mut consumers: Vec<ConsumerSlot> = (0..a.consumers)
        .map(|_| ConsumerSlot {
            child: None,
            report: PathBuf::new(),
            generation: 0,
            reports: Vec::new(),
        })
        .collect();
    for (j, slot) in consumers.iter_mut().enumerate() {
        spawn_consumer(slot, j as u64)?;
    }
    let per = a.messages.div_ceil(a.publishers);
    let mut publishers: Vec<PublisherSlot> = (0..a.publishers)
        .map(|i| PublisherSlot {
            lo: i * per,
            hi: ((i + 1) * per).min(a.messages),
            child: None,
            report: PathBuf::new(),
            generation: 0,
            done: false,
            reports: Vec::new(),
        })
        .filter(|s| s.lo < s.hi)
        .collect();
    for slot in publishers.iter_mut() {
        let lo = slot.lo;
        spawn_publisher(slot, lo)?;
    }
    say(format!(
        "  {} faults planned, publishing at {rate:.0} msg/s; heartbeat {heartbeat}s, black holes {}s",
        plan.len(),
        hole.as_secs()
    ));

    // --- the fault loop, with supervision of the children ----------------------------------------
    let mut faults: BTreeMap<Fault, u32> = BTreeMap::new();
    let mut fault_times: Vec<u128> = Vec::new();
    let mut unconfirmed_at_crash = 0u64;
    let mut plan = plan.into_iter();
    let mut next_fault = Instant::now() + jitter(a.fault_interval);
    let mut timed_out = false;
    loop {
        // Children that ended: publishers done or crashed; consumers restarted.
        reap_publishers(&mut publishers, &spawn_publisher, &say)?;
        for (j, slot) in consumers.iter_mut().enumerate() {
            if let Some(status) = slot
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                say(format!("  consumer {j} exited with {status}; restarting"));
                spawn_consumer(slot, j as u64)?;
            }
        }
        let publishing = publishers.iter().any(|s| !s.done);
        if Instant::now() >= next_fault {
            let Some(f) = plan.next() else {
                if !publishing {
                    break;
                }
                next_fault = Instant::now() + Duration::from_millis(200);
                continue;
            };
            let t = now_micros();
            let done = match f {
                Fault::Cut => {
                    proxy.cut_all();
                    true
                }
                Fault::Blackhole => {
                    proxy.blackhole(true);
                    tokio::time::sleep(hole).await;
                    proxy.blackhole(false);
                    proxy.cut_all(); // what was stuck in the hole is dead by now on both sides
                    true
                }
                Fault::BrokerRestart => {
                    let n = node.as_ref().expect("planned with a node");
                    n.stop_app().await?;
                    tokio::time::sleep(Duration::from_millis(500)).await;
                    n.start_app().await?;
                    true
                }
                Fault::BrokerKill9 => {
                    node.as_ref()
                        .expect("planned with a node")
                        .kill9_and_restart()
                        .await?;
                    true
                }
                Fault::ConsumerKill => {
                    let j = fastrand::usize(..consumers.len());
                    if let Some(c) = consumers[j].child.take() {
                        kill9(&c);
                        let _ = c.wait_with_output().await;
                    }
                    spawn_consumer(&mut consumers[j], j as u64)?;
                    true
                }
                Fault::PublisherKill => {
                    let live: Vec<usize> = (0..publishers.len())
                        .filter(|&i| !publishers[i].done)
                        .collect();
                    if live.is_empty() {
                        false
                    } else {
                        let slot = &mut publishers[live[fastrand::usize(..live.len())]];
                        if let Some(c) = slot.child.take() {
                            kill9(&c);
                            let _ = c.wait_with_output().await;
                        }
                        let r = read_pub_report(&slot.report);
                        let lost_here = r
                            .accepted
                            .iter()
                            .filter(|s| !r.confirmed.contains_key(s))
                            .count() as u64;
                        unconfirmed_at_crash += lost_here;
                        let from = first_unconfirmed(slot);
                        say(format!(
                            "  publisher for {}..{} SIGKILLed with {lost_here} accepted but unconfirmed; the caller resends from {from}",
                            slot.lo, slot.hi
                        ));
                        spawn_publisher(slot, from)?;
                        true
                    }
                }
            };
            if done {
                *faults.entry(f).or_default() += 1;
                if matches!(
                    f,
                    Fault::Cut | Fault::Blackhole | Fault::BrokerRestart | Fault::BrokerKill9
                ) {
                    fault_times.push(t);
                }
                if !a.json {
                    println!(
                        "  fault {:>2}: {f:?} at {:.1}s",
                        faults.values().sum::<u32>(),
                        started.elapsed().as_secs_f64()
                    );
                }
            }
            next_fault = Instant::now() + jitter(a.fault_interval);
        }
        if Instant::now() > deadline {
            timed_out = true;
            say("  the run timed out".into());
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Publishers finish on their own; wait for them.
    while !timed_out && publishers.iter().any(|s| !s.done) {
        reap_publishers(&mut publishers, &spawn_publisher, &say)?;
        if Instant::now() > deadline {
            timed_out = true;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // --- reconcile: publisher reports ------------------------------------------------------------------
    let mut accepted = HashSet::new();
    let mut confirmed: HashMap<u64, u128> = HashMap::new();
    for slot in &publishers {
        for p in &slot.reports {
            let r = read_pub_report(p);
            accepted.extend(r.accepted);
            for (s, t) in r.confirmed {
                confirmed.entry(s).or_insert(t);
            }
        }
    }
    // Consumers: wait until every confirmed message is applied and the queue is empty.
    let check =
        Connection::connect(ConnectionConfig::new(&direct_uri)?.name("rabbit-once chaos check"))
            .await?;
    loop {
        let counts = db.seq_counts().await?;
        let applied: HashSet<u64> = counts.iter().map(|(s, _)| *s as u64).collect();
        let ready = check
            .queue_info(&queue)
            .await
            .map(|i| i.messages)
            .unwrap_or(1);
        if confirmed.keys().all(|s| applied.contains(s)) && ready == 0 {
            break;
        }
        if Instant::now() > deadline {
            timed_out = true;
            break;
        }
        for (j, slot) in consumers.iter_mut().enumerate() {
            if let Some(_status) = slot
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                spawn_consumer(slot, j as u64)?;
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await; // redeliveries in flight land
    for slot in consumers.iter_mut() {
        if let Some(c) = slot.child.take() {
            term(&c);
            let _ = tokio::time::timeout(Duration::from_secs(20), c.wait_with_output()).await;
        }
    }
    let counts = db.seq_counts().await?;
    let applied: HashMap<u64, i64> = counts.iter().map(|(s, n)| (*s as u64, *n)).collect();
    let mut l = Ledger {
        messages: a.messages,
        published: accepted.len() as u64,
        confirmed: confirmed.len() as u64,
        unconfirmed_at_crash,
        applied_once: applied.values().filter(|n| **n == 1).count() as u64,
        applied_twice: applied.values().map(|n| (*n - 1).max(0) as u64).sum(),
        lost: confirmed
            .keys()
            .filter(|s| !applied.contains_key(s))
            .count() as u64,
        missing: (0..a.messages)
            .filter(|s| !confirmed.contains_key(s) && !applied.contains_key(s))
            .count() as u64,
        faults: faults
            .iter()
            .map(|(k, v)| {
                (
                    serde_json::to_value(k)
                        .ok()
                        .and_then(|v| v.as_str().map(String::from))
                        .unwrap_or_default(),
                    *v,
                )
            })
            .collect(),
        seconds: started.elapsed().as_secs_f64(),
        ..Default::default()
    };
    for slot in &consumers {
        for r in &slot.reports {
            if let Some(s) = last_consumer_report(r) {
                l.duplicates_skipped += s.duplicates;
                l.retried += s.retried;
                l.dead_lettered += s.dead_lettered;
                l.reconnects += s.reconnects;
            }
        }
    }
    // Recovery: from each network or broker fault to the next confirm anywhere.
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
    if !recovery.is_empty() {
        let pct =
            |p: f64| recovery[((p / 100.0 * recovery.len() as f64).ceil() as usize).max(1) - 1];
        l.recovery_p50_ms = Some(pct(50.0));
        l.recovery_p99_ms = Some(pct(99.0));
    }

    // --- clean up ---------------------------------------------------------------------------------------
    // The children run `consume` with its default retry policy.
    let queues = rabbit_once::ConsumerConfig::new(&queue)
        .retry(crate::consume::retry_policy(5))
        .queues();
    for q in &queues {
        let _ = check.delete_queue(q).await;
    }
    check.close().await;
    if own_schema && let (Db::Postgres(s), Some(name)) = (&db, &schema) {
        let _ = rabbit_once::sqlx::query(&format!("DROP SCHEMA IF EXISTS \"{name}\" CASCADE"))
            .execute(s.pool())
            .await;
    }
    if a.keep {
        say(format!("  work directory kept: {}", work.display()));
    } else {
        let _ = std::fs::remove_dir_all(&work);
    }
    drop(node);

    let ok = l.lost == 0 && l.applied_twice == 0 && l.missing == 0 && !timed_out;
    if a.json {
        println!("{}", serde_json::to_string(&l)?);
    } else {
        print_ledger(&l);
        println!(
            "\n  {}",
            if ok {
                "OK: lost 0, applied twice 0"
            } else if timed_out {
                "FAILED: the run timed out before everything was applied"
            } else {
                "FAILED: the ledger does not balance"
            }
        );
    }
    Ok(if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// Publishers that exited: done if they succeeded, else started again from their first message
/// not yet confirmed.
fn reap_publishers(
    publishers: &mut [PublisherSlot],
    spawn: &dyn Fn(&mut PublisherSlot, u64) -> anyhow::Result<()>,
    say: &dyn Fn(String),
) -> anyhow::Result<()> {
    for slot in publishers.iter_mut().filter(|s| !s.done) {
        if let Some(status) = slot
            .child
            .as_mut()
            .and_then(|c| c.try_wait().ok().flatten())
        {
            slot.child = None;
            if status.success() {
                slot.done = true;
            } else {
                let from = first_unconfirmed(slot);
                say(format!(
                    "  publisher for {}..{} exited with {status}; restarting from {from}",
                    slot.lo, slot.hi
                ));
                spawn(slot, from)?;
            }
        }
    }
    Ok(())
}

fn jitter(mean: f64) -> Duration {
    Duration::from_secs_f64(mean * (0.5 + fastrand::f64()))
}

/// The first seq of the slot's range that no process of this slot has had confirmed.
fn first_unconfirmed(slot: &PublisherSlot) -> u64 {
    let mut confirmed = HashSet::new();
    for p in &slot.reports {
        confirmed.extend(read_pub_report(p).confirmed.into_keys());
    }
    (slot.lo..slot.hi)
        .find(|s| !confirmed.contains(s))
        .unwrap_or(slot.hi.saturating_sub(1))
}

fn print_ledger(l: &Ledger) {
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
