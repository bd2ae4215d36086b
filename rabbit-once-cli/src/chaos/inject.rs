//! The fault loop: the plan's faults injected one after another, a jittered interval apart,
//! while children that exit are started again; and the record of what was injected when.

use super::args::Args;
use super::ledger::now_micros;
use super::plan::{Fault, Plan, jitter};
use super::pool::Pool;
use super::setup::Setup;
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

/// The faults injected: how many of each kind, and when the network and broker ones happened.
pub(super) struct FaultLog {
    started: Instant,
    counts: BTreeMap<Fault, u32>,
    /// Unix time in microseconds of each fault that [measures recovery](Fault::measures_recovery).
    pub(super) times: Vec<u128>,
}

impl FaultLog {
    /// An empty log; the run started at `started`.
    pub(super) fn new(started: Instant) -> FaultLog {
        FaultLog {
            started,
            counts: BTreeMap::new(),
            times: Vec::new(),
        }
    }

    /// Fault `f`, injected at unix time `t` (microseconds).
    fn record(&mut self, f: Fault, t: u128, json: bool) {
        *self.counts.entry(f).or_default() += 1;
        if f.measures_recovery() {
            self.times.push(t);
        }
        if !json {
            println!(
                "  fault {:>2}: {f:?} at {:.1}s",
                self.counts.values().sum::<u32>(),
                self.started.elapsed().as_secs_f64()
            );
        }
    }

    /// The counts by the fault's snake_case name, as the ledger shows them.
    pub(super) fn by_name(&self) -> BTreeMap<String, u32> {
        self.counts
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
            .collect()
    }
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
            if inject(f, setup, plan, pool, say).await? {
                log.record(f, t, a.json);
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

/// Injects one fault; false when it could not be (no publisher left to kill).
async fn inject(
    f: Fault,
    setup: &Setup,
    plan: &Plan,
    pool: &mut Pool,
    say: &dyn Fn(String),
) -> anyhow::Result<bool> {
    let node = || setup.node.as_ref().expect("planned with a node");
    match f {
        Fault::Cut => setup.proxy.cut_all(),
        Fault::Blackhole => {
            setup.proxy.blackhole(true);
            tokio::time::sleep(plan.hole).await;
            setup.proxy.blackhole(false);
            setup.proxy.cut_all(); // what was stuck in the hole is dead by now on both sides
        }
        Fault::BrokerRestart => {
            node().stop_app().await?;
            tokio::time::sleep(Duration::from_millis(500)).await;
            node().start_app().await?;
        }
        Fault::BrokerKill9 => node().kill9_and_restart().await?,
        Fault::ConsumerKill => pool.kill_consumer().await?,
        Fault::PublisherKill => return pool.kill_publisher(say).await,
        Fault::RelayKill => return pool.kill_relay().await,
    }
    Ok(true)
}
