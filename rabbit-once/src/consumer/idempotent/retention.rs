//! Retention: this group's dedup records older than the retention window are deleted, in small
//! batches, every retention interval.

use super::stats::ConsumerCounters;
use super::worker::Worker;
use crate::consumer::handler::Handler;
use crate::dedup::Store;
use crate::shutdown::stopped;
use std::sync::Arc;
use std::time::SystemTime;
use tokio::sync::watch;

impl<S: Store, H: Handler<S::Db>> Worker<S, H> {
    /// Deletes this group's dedup records older than the retention window, in small batches.
    pub(super) async fn retention(self: Arc<Self>, mut stop: watch::Receiver<bool>) {
        const BATCH: u32 = 1000;
        loop {
            tokio::select! {
                _ = tokio::time::sleep(self.config.retention_interval) => {}
                _ = stopped(&mut stop) => return,
            }
            let before = SystemTime::now() - self.config.retention;
            loop {
                match self.store.purge(&self.config.group, before, BATCH).await {
                    Ok(n) => {
                        ConsumerCounters::add(&self.counters.purged, n);
                        if n < BATCH as u64 {
                            break;
                        }
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "retention purge failed; will try again");
                        break;
                    }
                }
                tokio::task::yield_now().await;
            }
        }
    }
}
