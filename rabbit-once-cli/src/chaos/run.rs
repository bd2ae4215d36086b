//! The chaos run: broker, proxy and store; the children; the fault loop; the reconciliation.

use super::args::Args;
use super::ledger::{Ledger, last_consumer_report, now_micros, print_ledger, read_pub_report};
use super::plan::{Fault, jitter};
use super::pool::{ConsumerSlot, PublisherSlot, first_unconfirmed, kill9, reap_publishers, term};
use crate::applied::Db;
use rabbit_once::uri::Endpoint;
use rabbit_once::{Connection, ConnectionConfig};
use rabbit_once_testkit::{BrokerNode, FaultProxy};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::PathBuf;
use std::process::{ExitCode, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::process::Command;

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
