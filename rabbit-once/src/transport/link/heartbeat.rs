//! The heartbeat task, on its own so a writer stuck on a full socket cannot hide a dead peer.

use super::shared::LinkShared;
use crate::error::Error;
use crate::shutdown::stopped;
use crate::transport::frame::put_heartbeat;
use std::sync::Arc;
use std::sync::atomic::Ordering;

/// Heartbeats, on their own so a writer stuck on a full socket cannot hide a dead peer:
/// every half interval, send one if nothing was written, and declare the connection dead after
/// two intervals without a byte from the broker.
pub(super) async fn heartbeats(shared: Arc<LinkShared>) {
    let mut stop = shared.stop.subscribe();
    let hb = shared.heartbeat;
    let mut tick = tokio::time::interval(hb / 2);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;
    let (mut last_read, mut last_write) = (0u64, 0u64);
    let mut silent_ticks = 0u32;
    loop {
        tokio::select! {
            _ = stopped(&mut stop) => return,
            _ = tick.tick() => {}
        }
        let read = shared.read_activity.load(Ordering::Relaxed);
        if read == last_read {
            silent_ticks += 1;
            // Ticks are heartbeat/2 apart: four silent ticks = two missed heartbeats.
            if silent_ticks >= 4 {
                shared.fail(Error::ConnectionLost(format!(
                    "no data or heartbeat from the broker for {:?}",
                    hb * 2
                )));
                return;
            }
        } else {
            silent_ticks = 0;
            last_read = read;
        }
        let wrote = shared.write_activity.load(Ordering::Relaxed);
        if wrote == last_write {
            let _ = shared.write(put_heartbeat);
        }
        last_write = wrote;
    }
}
