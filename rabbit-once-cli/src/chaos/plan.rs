//! The fault plan: which faults a chaos run injects, in what order and how far apart, and the
//! publishing rate that spreads the messages over them.

use super::args::Args;
use std::time::Duration;

/// One kind of fault.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub(super) enum Fault {
    Cut,
    Blackhole,
    BrokerRestart,
    BrokerKill9,
    ConsumerKill,
    PublisherKill,
    RelayKill,
    /// `--cluster`: `kill -9` of the node leading the work queue, then its restart.
    LeaderKill9,
    /// `--cluster`: `stop_app`, then `start_app`, of a node not leading the work queue.
    NodeStopApp,
}

impl Fault {
    /// A network or broker fault: the time to the next confirm after it is the recovery time.
    pub(super) fn measures_recovery(self) -> bool {
        matches!(
            self,
            Fault::Cut
                | Fault::Blackhole
                | Fault::BrokerRestart
                | Fault::BrokerKill9
                | Fault::LeaderKill9
                | Fault::NodeStopApp
        )
    }
}

/// The faults in the order they will be injected, and the settings that follow from them.
pub(super) struct Plan {
    pub(super) faults: Vec<Fault>,
    /// The children's heartbeat, in seconds (at least 1).
    pub(super) heartbeat: u64,
    /// How long a black hole lasts: long enough for both sides' heartbeats to time out.
    pub(super) hole: Duration,
    /// Messages per second, all publishers together.
    pub(super) rate: f64,
}

impl Plan {
    /// Shuffles the requested faults (broker restarts and kills only with a node or a cluster
    /// of our own — on a cluster, of a follower and of the leader —, relay kills only with relay
    /// processes), with the publisher and relay kills early, and picks a rate that lasts the
    /// whole schedule.
    pub(super) fn new(
        a: &Args,
        own_node: bool,
        cluster: bool,
        relays: bool,
        say: &dyn Fn(String),
    ) -> Plan {
        let mut plan = Vec::new();
        plan.extend(std::iter::repeat_n(Fault::Cut, a.cuts as usize));
        plan.extend(std::iter::repeat_n(Fault::Blackhole, a.blackholes as usize));
        plan.extend(std::iter::repeat_n(
            Fault::ConsumerKill,
            a.consumer_kills as usize,
        ));
        if cluster {
            plan.extend(std::iter::repeat_n(Fault::NodeStopApp, a.restarts as usize));
            plan.extend(std::iter::repeat_n(
                Fault::LeaderKill9,
                a.broker_kills as usize,
            ));
        } else if own_node {
            plan.extend(std::iter::repeat_n(
                Fault::BrokerRestart,
                a.restarts as usize,
            ));
            plan.extend(std::iter::repeat_n(
                Fault::BrokerKill9,
                a.broker_kills as usize,
            ));
        } else if a.restarts + a.broker_kills > 0 {
            say("  (broker restarts and kills need --own-broker or --cluster; skipped)".into());
        }
        fastrand::shuffle(&mut plan);
        // Publisher kills go early, while the publishers certainly still run.
        for i in 0..a.publisher_kills as usize {
            let at = (i * 2 + 1).min(plan.len());
            plan.insert(at, Fault::PublisherKill);
        }
        // Relay kills too, while rows are still being committed and relayed.
        if relays {
            for i in 0..a.relay_kills as usize {
                let at = (i * 2 + 2).min(plan.len());
                plan.insert(at, Fault::RelayKill);
            }
        } else if a.outbox && a.relay_kills > 0 {
            say(
                "  (relay processes run on a PostgreSQL outbox only; relay kills skipped — a \
                 publisher kill kills its relay)"
                    .into(),
            );
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
                        // Until a new leader is elected, the node is back and has rejoined.
                        Fault::LeaderKill9 => 25.0,
                        Fault::NodeStopApp => 8.0,
                        _ => 0.0,
                    }
            })
            .sum();
        let rate = a
            .rate
            .unwrap_or_else(|| (a.messages as f64 / (plan_secs * 1.2).max(5.0)).max(50.0));
        Plan {
            faults: plan,
            heartbeat,
            hole,
            rate,
        }
    }

    /// The kinds of fault planned.
    pub(super) fn kinds(&self) -> std::collections::BTreeSet<Fault> {
        self.faults.iter().copied().collect()
    }

    /// Messages per second for each of `publishers` processes (at least 1).
    pub(super) fn per_publisher_rate(&self, publishers: u64) -> f64 {
        (self.rate / publishers as f64).max(1.0)
    }
}

/// A wait of `mean` seconds, ±50%.
pub(super) fn jitter(mean: f64) -> Duration {
    Duration::from_secs_f64(mean * (0.5 + fastrand::f64()))
}
