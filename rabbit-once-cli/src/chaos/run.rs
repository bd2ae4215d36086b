//! The chaos run, step by step.

use super::args::Args;
use super::inject::{FaultLog, inject_all};
use super::ledger::{Ledger, Outboxes, PubReport};
use super::plan::Plan;
use super::pool::{Launcher, Pool};
use super::setup::Setup;
use super::timeline::{Sampler, Timeline};
use rabbit_once::Connection;
use std::collections::HashSet;
use std::process::ExitCode;
use std::time::{Duration, Instant};

/// Runs the chaos test and prints its ledger; success only if it balances. With `--report`,
/// writes the run's page however it ends; with `--metrics-addr`, serves the run's metrics.
pub async fn run(a: Args) -> anyhow::Result<ExitCode> {
    // A report that cannot be written fails now (exit 2), not after the run.
    if let Some(path) = &a.report {
        std::fs::File::create(path).map_err(|e| {
            crate::exit::usage(format!("cannot write the report {}: {e}", path.display()))
        })?;
    }
    a.metrics.start()?;
    let started = Instant::now();
    let deadline = started + Duration::from_secs(a.timeout);
    let say = |s: String| {
        if !a.json {
            println!("{s}");
        } else {
            eprintln!("{s}");
        }
    };
    let say: &dyn Fn(String) = &say;

    // 1. The broker (a node or a cluster), fault proxies in front of it, the store; and, for
    //    the report or the metrics, a sampler of what is only seen live (the queue's depth).
    let setup = Setup::start(&a, say).await?;
    // The report's time axis starts here, with the children.
    let timeline = Timeline::new();
    timeline.param("setup", format!("{:.1} s", started.elapsed().as_secs_f64()));
    // Not fatal: an error here must not skip the clean-up below.
    let sampler = if a.report.is_some() || a.metrics.metrics_addr.is_some() {
        Sampler::start(&setup, timeline.clone(), a.outbox)
            .inspect_err(|e| {
                eprintln!("warning: no sampler (queue depth and lag not recorded): {e:#}")
            })
            .ok()
    } else {
        None
    };
    // 2–7, then 8 however they end (an error, Ctrl-C, SIGTERM): children killed, queues,
    // schema, work directory and nodes removed.
    let mut check = None;
    let ledger = tokio::select! {
        l = drive(&a, &setup, &mut check, &timeline, started, deadline, say) => l,
        _ = crate::common::stop_signal() => {
            say("  interrupted: stopping the children and removing what the run made…".into());
            Err(anyhow::anyhow!("the chaos run was interrupted"))
        }
    };
    if let Some(s) = sampler {
        s.stop().await;
    }
    if let Ok((l, timed_out)) = &ledger {
        l.set_gauges(l.verdict(*timed_out).0);
    }
    // The page, before the clean-up: it reads the reports and the store.
    if let Some(path) = &a.report {
        let outcome = match &ledger {
            Ok((l, timed_out)) => Ok((l, *timed_out)),
            Err(e) => Err(e),
        };
        match super::report::write(path, &a, &setup, &timeline, outcome).await {
            Ok(()) => say(format!("  report written to {}", path.display())),
            Err(e) => eprintln!("could not write the report {}: {e:#}", path.display()),
        }
    }
    setup.clean_up(a.keep, check, say).await;
    let (ledger, timed_out) = ledger?;
    // The verdict.
    let code = ledger.report(a.json, timed_out);
    a.metrics.linger().await;
    code
}

/// Steps 2 to 7 of the run on `setup`: the plan, the children, the faults, the drain and the
/// ledger (and whether the deadline passed). The check connection is left in `check` for the
/// clean-up.
async fn drive(
    a: &Args,
    setup: &Setup,
    check: &mut Option<Connection>,
    timeline: &Timeline,
    started: Instant,
    deadline: Instant,
    say: &dyn Fn(String),
) -> anyhow::Result<(Ledger, bool)> {
    // 2. The fault plan, and a publishing rate that spreads the messages over it.
    let relays = a.outbox && setup.store.starts_with("postgres") && a.relays > 0;
    let plan = Plan::new(
        a,
        setup.node.is_some(),
        setup.cluster.is_some(),
        relays,
        say,
    );
    // 3. The children, all through the proxies: consumers, then publishers.
    timeline.param("faults planned", plan.faults.len());
    timeline.param("rate", format!("{:.0} msg/s", plan.rate));
    timeline.param("heartbeat", format!("{} s", plan.heartbeat));
    let mut pool = Pool::start(Launcher::new(a, setup, &plan, timeline.clone())?, a)?;
    say(format!(
        "  {} faults planned, publishing at {:.0} msg/s; heartbeat {}s, black holes {}s",
        plan.faults.len(),
        plan.rate,
        plan.heartbeat,
        plan.hole.as_secs()
    ));
    // 4. The faults, one after another, while children that exit are started again.
    let mut faults = FaultLog::new(started, timeline.clone());
    let mut timed_out = inject_all(a, setup, &plan, &mut pool, &mut faults, deadline, say).await?;
    // 5. The publishers finish on their own.
    if !timed_out {
        timed_out = pool.wait_for_publishers(deadline, say).await?;
    }
    // 6. The consumers apply every confirmed message (with --outbox: every committed one) and
    //    empty the queue.
    let published = PubReport::read_all(pool.publisher_reports());
    let outboxes = Outboxes::read(&pool.outboxes()).await?;
    let must_apply: HashSet<u64> = match &outboxes {
        Some(o) => o.committed.clone(),
        None => published.confirmed.keys().copied().collect(),
    };
    let conn = check.insert(setup.check_connection().await?);
    timed_out |= wait_until_applied(setup, conn, &must_apply, &mut pool, deadline).await?;
    tokio::time::sleep(Duration::from_millis(500)).await; // redeliveries in flight land
    pool.stop_consumers().await;
    pool.stop_relays().await;
    // What the outboxes still hold now (stage-1 consumers of a PostgreSQL pipeline emit into
    // the same table, so the count taken before the drain included their copies).
    let outboxes = match outboxes {
        Some(mut o) => {
            o.pending = Outboxes::pending(&pool.outboxes()).await?;
            Some(o)
        }
        None => None,
    };
    // 7. The ledger, from the reports (or the outboxes) and the database.
    let mut ledger = Ledger::count(
        a.messages,
        &setup.db,
        &published,
        outboxes.as_ref(),
        &pool,
        &faults,
        &plan.kinds(),
        started,
    )
    .await?;
    if let Some(stage2) = &setup.stage2 {
        ledger.count_stage2(&setup.db, &stage2.db).await?;
    }
    Ok((ledger, timed_out))
}

/// Waits until every message of `must_apply` is in the `applied` table and the queue is empty
/// (with `--pipeline`: in stage 2's too, and its queue empty), restarting consumers and relays
/// that exit; true if the deadline passed first.
async fn wait_until_applied(
    setup: &Setup,
    check: &Connection,
    must_apply: &HashSet<u64>,
    pool: &mut Pool,
    deadline: Instant,
) -> anyhow::Result<bool> {
    loop {
        let counts = setup.db.seq_counts().await?;
        let applied: HashSet<u64> = counts.iter().map(|(s, _)| *s as u64).collect();
        let ready = check
            .queue_info(&setup.queue)
            .await
            .map(|i| i.messages)
            .unwrap_or(1);
        let mut done = must_apply.iter().all(|s| applied.contains(s)) && ready == 0;
        if let Some(stage2) = setup.stage2.as_ref().filter(|_| done) {
            let counts = stage2.db.seq_counts().await?;
            let applied: HashSet<u64> = counts.iter().map(|(s, _)| *s as u64).collect();
            let ready = check
                .queue_info(&stage2.queue)
                .await
                .map(|i| i.messages)
                .unwrap_or(1);
            done = must_apply.iter().all(|s| applied.contains(s)) && ready == 0;
        }
        if done {
            return Ok(false);
        }
        if Instant::now() > deadline {
            return Ok(true);
        }
        pool.restart_exited_consumers(&|_| {})?;
        pool.restart_exited_relays(&|_| {})?;
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
