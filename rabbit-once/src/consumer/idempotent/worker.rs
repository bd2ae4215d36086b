//! The consumer's task: receive deliveries, gather them into batches, set aside malformed and
//! id-less ones, count the runs of redeliveries (the crash-loop bound), and run the rest.

use super::config::ConsumerConfig;
use super::key::{Item, key_of};
use super::prepare;
use super::stats::ConsumerCounters;
use crate::connection::Connection;
use crate::consumer::delivery::Delivery;
use crate::consumer::handler::Handler;
use crate::consumer::subscription::{Subscription, SubscriptionConfig};
use crate::dedup::Store;
use crate::error::Error;
use crate::publisher::Publisher;
use crate::shutdown::stopped;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};
use tokio::sync::{Semaphore, watch};
use tokio::task::JoinSet;

pub(super) struct Worker<S: Store, H> {
    pub(super) conn: Connection,
    pub(super) store: S,
    pub(super) handler: H,
    pub(super) config: ConsumerConfig,
    pub(super) counters: Arc<ConsumerCounters>,
    pub(super) publisher: Publisher,
    pub(super) stop: watch::Receiver<bool>,
    pub(super) close_timeout: Arc<AtomicU64>,
    /// Deliveries the dead-letter target refuses: held unacked until the worker stops.
    pub(super) held: std::sync::Mutex<Vec<Delivery>>,
    /// Why it stopped on its own, if it did.
    pub(super) failure: Arc<OnceLock<Error>>,
}

impl<S: Store, H: Handler<S::Db>> Worker<S, H> {
    /// Runs until stopped or the connection gave up. `prepared`: `start` has declared the
    /// consumer's queues and checked the work queue; if not, that is done on the first session.
    pub(super) async fn run(self: Arc<Self>, mut stop: watch::Receiver<bool>, prepared: bool) {
        let c = &self.config;
        if !prepared {
            match prepare::on_first_session(&self.conn, c, &mut stop).await {
                Ok(()) => {}
                Err(None) => return,
                Err(Some(e)) => {
                    tracing::error!(queue = %c.queue, error = %e, "consumer stopped");
                    let _ = self.failure.set(e);
                    return;
                }
            }
        }
        let retention = tokio::spawn(self.clone().retention(stop.clone()));
        let mut sub = match Subscription::start(
            &self.conn,
            SubscriptionConfig::new(&c.queue).prefetch(c.prefetch),
        ) {
            Ok(s) => s,
            Err(e) => {
                tracing::error!(error = %e, "could not subscribe; consumer stopped");
                return;
            }
        };
        let slots = Arc::new(Semaphore::new(c.concurrency));
        let mut running = JoinSet::new();
        loop {
            let first = tokio::select! {
                biased;
                _ = stopped(&mut stop) => break,
                d = sub.recv() => d,
            };
            let Some(first) = first else {
                let e = self.conn.state().terminal_error().unwrap_or(Error::Closed);
                if matches!(e, Error::Closed) {
                    tracing::warn!(queue = %c.queue, "the connection was closed; consumer stopped");
                } else {
                    tracing::error!(queue = %c.queue, error = %e, "the connection gave up; consumer stopped");
                }
                let _ = self.failure.set(e);
                break;
            };
            // The batch's clock: its ack lag starts here (one clock read per batch).
            let received = Instant::now();
            let mut batch = vec![first];
            if c.batch_size > 1 {
                let deadline = tokio::time::Instant::now() + c.batch_wait;
                while batch.len() < c.batch_size {
                    if let Some(d) = sub.try_recv() {
                        batch.push(d);
                        continue;
                    }
                    match tokio::time::timeout_at(deadline, sub.recv()).await {
                        Ok(Some(d)) => batch.push(d),
                        _ => break,
                    }
                }
            }
            ConsumerCounters::add(&self.counters.delivered, batch.len() as u64);
            self.counters.batch_size.record(batch.len() as f64);
            if c.concurrency == 1 {
                self.process(batch, received).await;
            } else {
                let permit = slots.clone().acquire_owned().await.expect("never closed");
                let me = self.clone();
                running.spawn(async move {
                    me.process(batch, received).await;
                    drop(permit);
                });
                while running.try_join_next().is_some() {}
            }
        }
        while running.join_next().await.is_some() {}
        // Held messages go back to the broker (dropping a delivery requeues it).
        drop(std::mem::take(&mut *self.held.lock().expect("held lock")));
        let timeout = Duration::from_millis(self.close_timeout.load(Ordering::Relaxed));
        sub.close(timeout).await;
        self.publisher.close(timeout).await;
        retention.abort();
    }

    async fn process(&self, batch: Vec<Delivery>, received: Instant) {
        let mut items = Vec::with_capacity(batch.len());
        let mut again = Vec::new();
        for d in batch {
            if let Some(why) = d.malformed() {
                ConsumerCounters::add(&self.counters.malformed, 1);
                let reason = format!("malformed delivery: {why}");
                // Its dead-letter copy needs an id of its own if it came without one.
                let key = d
                    .message_id()
                    .filter(|id| !id.is_empty())
                    .map_or_else(crate::message::new_message_id, str::to_string);
                self.dead_letter(Item { d, key, received }, &reason, 1)
                    .await;
                continue;
            }
            match key_of(&d, self.config.missing_id) {
                Ok(key) if d.redelivered() => again.push(Item { d, key, received }),
                Ok(key) => items.push(Item { d, key, received }),
                Err(reason) => {
                    ConsumerCounters::add(&self.counters.missing_id, 1);
                    let item = Item {
                        d,
                        key: String::new(),
                        received,
                    };
                    self.dead_letter(item, reason, 1).await;
                }
            }
        }
        // Redeliveries first (they are older), each alone and counted before its handler runs.
        for item in again {
            // One whose channel died while it waited in the prefetch buffer is not a run: the
            // broker delivers it again. Counting it would charge every connection cut to the
            // messages that happened to be waiting, and dead-letter them as crash loops. (A cut
            // during the count's own short transaction still charges that one message a run.)
            if !item.d.is_live() {
                ConsumerCounters::add(&self.counters.abandoned, 1);
                continue;
            }
            if let Some(item) = self.count_run(item).await {
                self.run_work(vec![vec![item]]).await;
            }
        }
        if !items.is_empty() {
            self.run_work(vec![items]).await;
        }
    }

    /// The crash-loop bound. A redelivered message may be one whose handler took the process
    /// down: its run is counted in a committed row before the handler starts (the count is
    /// forgotten in the transaction that commits its effect), and once `max_attempts` runs never
    /// finished it is dead-lettered without running the handler again. Only redeliveries pay for
    /// this (one short transaction, and they run one at a time so a crash counts against the
    /// message that caused it, not its batch). Returns the item if it should run.
    /// Deletes the run count of `key` in a transaction of its own (a failure only leaves the
    /// count: a replayed copy would then be dead-lettered at its first redelivery, not lost).
    async fn forget_runs(&self, key: &str) {
        let forgot = async {
            let mut tx = self.store.begin().await?;
            self.store
                .forget_runs(&mut tx, &self.config.group, key)
                .await?;
            tx.commit().await
        };
        if let Err(e) = forgot.await {
            tracing::warn!(error = %e, "could not forget the run count of a dead-lettered message");
        }
    }

    async fn count_run(&self, item: Item) -> Option<Item> {
        let max = self.config.retry.max_attempts;
        match self.store.count_run(&self.config.group, &item.key).await {
            // `runs` counts this redelivery and the earlier ones; with the first delivery's
            // (uncounted) run, `runs` runs have already started and never finished.
            Ok(runs) if runs >= max => {
                ConsumerCounters::add(&self.counters.crash_looped, 1);
                let reason = format!(
                    "the handler never finished {runs} runs: the process died (or lost the \
                     broker) while handling this message every time"
                );
                let key = item.key.clone();
                if self.dead_lettered(item, &reason, runs).await {
                    // Its count goes with it: a replayed copy (`DeadLetters::replay`) starts
                    // afresh, instead of being dead-lettered again at its first redelivery.
                    self.forget_runs(&key).await;
                }
                None
            }
            Ok(_) => Some(item),
            Err(e) => {
                // Not counted this time; the run itself will find out whether the database is
                // there (and hold the message if it is not).
                tracing::debug!(error = %e, "could not count the run of a redelivered message");
                Some(item)
            }
        }
    }
}
