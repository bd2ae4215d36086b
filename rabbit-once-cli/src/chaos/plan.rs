//! The fault plan: the kinds of fault a chaos run injects, and the jittered wait between them.

use std::time::Duration;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub(super) enum Fault {
    Cut,
    Blackhole,
    BrokerRestart,
    BrokerKill9,
    ConsumerKill,
    PublisherKill,
}

pub(super) fn jitter(mean: f64) -> Duration {
    Duration::from_secs_f64(mean * (0.5 + fastrand::f64()))
}
