//! The fault loop: the plan's faults injected one after another, a jittered interval apart,
//! while children that exit are started again; and the record of what was injected when.

use super::args::Args;
use super::ledger::now_micros;
use super::plan::{Fault, Plan, jitter};
use super::pool::Pool;
use super::setup::Setup;
use super::timeline::Timeline;
use rabbit_once_testkit::Cluster;
use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

/// Bound of each wait on the cluster: for a new leader, for a node to rejoin.
const CLUSTER_WAIT: Duration = Duration::from_secs(90);
/// How long a killed leader node stays down before it is started again (its clients move to
/// other nodes meanwhile; starting it again takes ~10 s more).
const LEADER_DOWN: Duration = Duration::from_secs(2);

/// The faults injected: how many of each kind, and when the network and broker ones happened.
pub(super) struct FaultLog {
    started: Instant,
    counts: BTreeMap<Fault, u32>,
    /// Unix time in microseconds of each fault that [measures recovery](Fault::measures_recovery).
    pub(super) times: Vec<u128>,
    /// With `--cluster`: each kill of the work queue's leader node.
    pub(super) leader_kills: Vec<LeaderKill>,
    /// Where each fault is marked for the report (and counted for the metrics).
    timeline: Timeline,
}

/// A `kill -9` of the node leading the work queue (`--cluster`).
#[derive(Debug, Clone, serde::Serialize)]
pub struct LeaderKill {
    /// The node that led the work queue when it was killed.
    pub killed: String,
    /// The node that led it next.
    pub new_leader: String,
    /// From the kill to a new leader seen (`rabbitmqctl list_queues`, polled), ms.
    pub new_leader_after_ms: u64,
    /// From the kill to the node started again and running in the cluster, ms.
    pub rejoined_after_ms: u64,
}

impl FaultLog {
    /// An empty log; the run started at `started`; each fault also goes on `timeline`.
    pub(super) fn new(started: Instant, timeline: Timeline) -> FaultLog {
        FaultLog {
            started,
            counts: BTreeMap::new(),
            times: Vec::new(),
            leader_kills: Vec::new(),
            timeline,
        }
    }

    /// Fault `f`, injected at unix time `t` (microseconds); `detail` says where (or is empty).
    fn record(&mut self, f: Fault, t: u128, detail: &str, json: bool) {
        *self.counts.entry(f).or_default() += 1;
        if f.measures_recovery() {
            self.times.push(t);
        }
        self.timeline.fault(&name(f), t, detail);
        if !json {
            let detail = if detail.is_empty() {
                String::new()
            } else {
                format!(": {detail}")
            };
            println!(
                "  fault {:>2}: {f:?} at {:.1}s{detail}",
                self.counts.values().sum::<u32>(),
                self.started.elapsed().as_secs_f64()
            );
        }
    }

    /// The kinds of `planned` that never fired, by snake_case name.
    pub(super) fn not_fired(&self, planned: &BTreeSet<Fault>) -> Vec<String> {
        planned
            .iter()
            .filter(|f| !self.counts.contains_key(f))
            .map(|f| name(*f))
            .collect()
    }

    /// The counts by the fault's snake_case name, as the ledger shows them.
    pub(super) fn by_name(&self) -> BTreeMap<String, u32> {
        self.counts.iter().map(|(k, v)| (name(*k), *v)).collect()
    }
}

/// A fault kind's snake_case name, as the ledger shows it.
fn name(f: Fault) -> String {
    serde_json::to_value(f)
        .ok()
        .and_then(|v| v.as_str().map(String::from))
        .unwrap_or_default()
}

/// Injects the plan's faults in turn, restarting children that exit, until the plan is done and
/// the publishers have finished. Returns true if the deadline passed first.
pub(super) async fn inject_all(
    a: &Args,
    setup: &Setup,
    plan: &Plan,
    pool: &mut Pool,
    log: &mut FaultLog,
    deadline: Instant,
    say: &dyn Fn(String),
) -> anyhow::Result<bool> {
    let mut faults = plan.faults.iter().copied();
    let mut next_fault = Instant::now() + jitter(a.fault_interval);
    loop {
        // Children that ended: publishers done or crashed; consumers restarted.
        pool.reap_publishers(say)?;
        pool.restart_exited_consumers(say)?;
        pool.restart_exited_relays(say)?;
        let publishing = pool.publishing();
        if Instant::now() >= next_fault {
            let Some(f) = faults.next() else {
                if !publishing {
                    return Ok(false);
                }
                next_fault = Instant::now() + Duration::from_millis(200);
                continue;
            };
            let t = now_micros();
            if let Some(detail) = inject(f, setup, plan, pool, log, say).await? {
                log.record(f, t, &detail, a.json);
            }
            next_fault = Instant::now() + jitter(a.fault_interval);
        }
        if Instant::now() > deadline {
            say("  the run timed out".into());
            return Ok(true);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Injects one fault; `None` when it could not be (no publisher left to kill), else where it
/// hit (on a cluster: which node; may be empty).
async fn inject(
    f: Fault,
    setup: &Setup,
    plan: &Plan,
    pool: &mut Pool,
    log: &mut FaultLog,
    say: &dyn Fn(String),
) -> anyhow::Result<Option<String>> {
    let node = || setup.node.as_ref().expect("planned with a node");
    let cluster = || setup.cluster.as_ref().expect("planned with a cluster");
    // On a cluster, network faults hit one node's proxy.
    let target = fastrand::usize(..setup.endpoints());
    let on_target = || match &setup.cluster {
        Some(c) => format!("{}'s proxy", c.node(target).name()),
        None => String::new(),
    };
    match f {
        Fault::Cut => {
            setup.proxy(target).cut_all();
            return Ok(Some(on_target()));
        }
        Fault::Blackhole => {
            let proxy = setup.proxy(target);
            proxy.blackhole(true);
            tokio::time::sleep(plan.hole).await;
            proxy.blackhole(false);
            proxy.cut_all(); // what was stuck in the hole is dead by now on both sides
            return Ok(Some(on_target()));
        }
        Fault::BrokerRestart => {
            node().stop_app().await?;
            tokio::time::sleep(Duration::from_millis(500)).await;
            node().start_app().await?;
        }
        Fault::BrokerKill9 => node().kill9_and_restart().await?,
        Fault::LeaderKill9 => {
            let k = kill_leader(cluster(), &setup.queue, say).await?;
            let detail = format!(
                "leader {} killed; new leader {}; rejoined after {:.1}s",
                k.killed,
                k.new_leader,
                k.rejoined_after_ms as f64 / 1000.0
            );
            log.leader_kills.push(k);
            return Ok(Some(detail));
        }
        Fault::NodeStopApp => return Ok(Some(stop_app(cluster(), &setup.queue, say).await?)),
        Fault::ConsumerKill => pool.kill_consumer().await?,
        Fault::PublisherKill => return Ok(pool.kill_publisher(say).await?.then(String::new)),
        Fault::RelayKill => return Ok(pool.kill_relay().await?.then(String::new)),
    }
    Ok(Some(String::new()))
}

/// `kill -9` of the node that leads `queue`; once another node leads it (and [`LEADER_DOWN`]
/// later) the node is started again, and awaited until it runs in the cluster — so no second
/// node goes down while this one is: a majority stays up.
async fn kill_leader(c: &Cluster, queue: &str, say: &dyn Fn(String)) -> anyhow::Result<LeaderKill> {
    let leader = c.wait_leader(queue, None, CLUSTER_WAIT).await?;
    let killed = c.node(leader).name().to_string();
    let t0 = Instant::now();
    c.kill9(leader).await?;
    say(format!(
        "  kill -9 of {killed}, the leader of the work queue"
    ));
    let next = c.wait_leader(queue, Some(leader), CLUSTER_WAIT).await?;
    let new_leader = c.node(next).name().to_string();
    let new_leader_after = t0.elapsed();
    say(format!(
        "  new leader {new_leader} after {:.1}s",
        new_leader_after.as_secs_f64()
    ));
    tokio::time::sleep(LEADER_DOWN).await;
    c.restart(leader).await?;
    c.wait_all_running(CLUSTER_WAIT).await?;
    let rejoined_after = t0.elapsed();
    say(format!(
        "  {killed} started again; back in the cluster after {:.1}s",
        rejoined_after.as_secs_f64()
    ));
    Ok(LeaderKill {
        killed,
        new_leader,
        new_leader_after_ms: new_leader_after.as_millis() as u64,
        rejoined_after_ms: rejoined_after.as_millis() as u64,
    })
}

/// `stop_app` then `start_app` of a node that does not lead `queue` (a random one), awaited
/// until it runs in the cluster again; says which.
async fn stop_app(c: &Cluster, queue: &str, say: &dyn Fn(String)) -> anyhow::Result<String> {
    let leader = c.wait_leader(queue, None, CLUSTER_WAIT).await?;
    let followers: Vec<usize> = (0..c.len()).filter(|&i| i != leader).collect();
    let i = followers[fastrand::usize(..followers.len())];
    let name = c.node(i).name().to_string();
    let t0 = Instant::now();
    c.stop_app(i).await?;
    say(format!("  stop_app of {name} (a follower)"));
    tokio::time::sleep(Duration::from_millis(500)).await;
    c.start_app(i).await?;
    c.wait_all_running(CLUSTER_WAIT).await?;
    say(format!(
        "  start_app of {name}; back in the cluster after {:.1}s",
        t0.elapsed().as_secs_f64()
    ));
    Ok(format!("{name} (a follower) stopped and started"))
}
