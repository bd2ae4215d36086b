//! Settling a failed message: its retry copy or dead-letter copy is published and confirmed
//! before the original is acked; a copy the broker will never take is dead-lettered bare or held.

use super::key::Item;
use super::stats::ConsumerCounters;
use super::transaction::RunFailure;
use super::worker::Worker;
use crate::consumer::handler::Handler;
use crate::consumer::retry;
use crate::dedup::Store;
use crate::error::Error;
use crate::event::Event;
use crate::shutdown::stopped;
use std::time::Duration;

/// How publishing a retry or dead-letter copy ended.
enum CopyOutcome {
    Confirmed,
    /// The broker will never take this copy (see [`refused_for_good`]).
    Refused(Error),
    /// Not now (the publisher failed it for a reason that may clear): requeue it later.
    Failed,
    /// The original's channel is gone or the consumer is stopping: the broker redelivers it.
    Gone,
}

/// How long a failed message is held while the broker nacks its retry or dead-letter copy
/// before it is requeued (see `Worker::publish_copy`).
const COPY_HOLD: Duration = Duration::from_secs(30);

/// Publish failures that the same copy would meet again however often it is sent.
fn refused_for_good(e: &Error) -> bool {
    matches!(
        e,
        Error::InvalidMessage(_)
            | Error::MessageTooLarge { .. }
            | Error::ExchangeNotFound { .. }
            | Error::Refused { .. }
            | Error::Unroutable { .. }
    )
}

impl<S: Store, H: Handler<S::Db>> Worker<S, H> {
    pub(super) async fn settle_failure(&self, item: Item, f: RunFailure) {
        let attempt = item.d.attempt();
        let p = &self.config.retry;
        let (after, reason) = match f {
            RunFailure::Reject(reason) => return self.dead_letter(item, &reason, attempt).await,
            RunFailure::Retry { after, reason } => (after, reason),
            RunFailure::Error(reason) | RunFailure::Panic(reason) | RunFailure::Timeout(reason) => {
                (None, reason)
            }
        };
        if attempt >= p.max_attempts {
            let reason = format!("gave up after {attempt} attempts: {reason}");
            return self.dead_letter(item, &reason, attempt).await;
        }
        let delay = after.map_or_else(|| p.delay_after(attempt), |d| p.tier_for(d));
        let m = retry::retry_message(
            &item.d,
            &item.key,
            &self.config.queue,
            delay,
            attempt + 1,
            &reason,
        );
        match self.publish_copy(&item, m).await {
            CopyOutcome::Confirmed => {
                self.ack(item, "retried");
                ConsumerCounters::add(&self.counters.retried, 1);
            }
            // The broker will never take the retry copy (its queue is gone, …): retrying is
            // impossible, so the message is dead-lettered with both reasons.
            CopyOutcome::Refused(e) => {
                let reason = format!("{reason}; its retry copy was refused: {e}");
                self.dead_letter(item, &reason, attempt).await;
            }
            CopyOutcome::Failed => self.requeue_later(item).await,
            CopyOutcome::Gone => {}
        }
    }

    /// Dead-letters `item` with `reason`: the full copy, or — if the broker refuses that — a
    /// bare one (body, id, our headers). If even that is refused the message is held unacked
    /// with a loud error: never dropped, never requeued in a tight loop.
    pub(super) async fn dead_letter(&self, item: Item, reason: &str, attempts: u32) {
        self.dead_lettered(item, reason, attempts).await;
    }

    /// [`dead_letter`](Self::dead_letter), telling whether the copy was confirmed (and the
    /// original acked).
    pub(super) async fn dead_lettered(&self, item: Item, reason: &str, attempts: u32) -> bool {
        let c = &self.config;
        let copy = |reason: &str| {
            retry::dead_message(
                &item.d,
                &item.key,
                &c.dead_letter,
                &c.queue,
                &c.group,
                attempts,
                reason,
            )
        };
        let mut outcome = self.publish_copy(&item, copy(reason)).await;
        if let CopyOutcome::Refused(e) = &outcome {
            let reason = format!("{reason}; original properties dropped (full copy refused: {e})");
            outcome = self.publish_copy(&item, retry::bare(copy(&reason))).await;
        }
        let id = item.d.message_id().map(str::to_string);
        match outcome {
            CopyOutcome::Confirmed => {
                self.ack(item, "dead_lettered");
                ConsumerCounters::add(&self.counters.dead_lettered, 1);
                tracing::warn!(%reason, message_id = ?id, "dead-lettered");
                return true;
            }
            CopyOutcome::Refused(e) => {
                let why = format!("the dead-letter target refuses the message: {e}");
                tracing::error!(
                    queue = %c.queue,
                    message_id = ?id,
                    %reason,
                    error = %why,
                    "cannot dead-letter; holding the message unacked until the consumer stops"
                );
                self.conn.emit(Event::DeadLetterRefused {
                    queue: c.queue.clone(),
                    message_id: id,
                    reason: why,
                });
                ConsumerCounters::add(&self.counters.held, 1);
                self.held.lock().expect("held lock").push(item.d);
            }
            CopyOutcome::Failed => self.requeue_later(item).await,
            CopyOutcome::Gone => {}
        }
        false
    }

    /// Publishes a retry or dead-letter copy of `item` and waits for the broker's verdict. The
    /// original is acked by the caller only once the copy is confirmed.
    ///
    /// A copy the broker keeps nacking — its queue is full and refuses publishes
    /// (`x-overflow: reject-publish`, what quorum retry queues are declared with), after the
    /// publisher's own retries — is published again after a growing pause while the original
    /// stays held, unacked, on its live channel (a full queue makes room: a retry queue as
    /// its messages' TTLs run out). Requeueing the original at once would run its handler
    /// again, count a run against the crash-loop bound and a return against a quorum queue's
    /// delivery limit, for a refusal that is not the message's fault. Held, it holds up its
    /// batch slot (with `concurrency(1)`, the consumer), so after [`COPY_HOLD`] the original is
    /// requeued after all: a work queue that is full too could otherwise never drain into the
    /// consumer, nor the retry queue into the work queue.
    async fn publish_copy(&self, item: &Item, m: crate::message::Message) -> CopyOutcome {
        let mut stop = self.stop.clone();
        let mut nacked = 0u32;
        let held = std::time::Instant::now();
        loop {
            if !item.d.is_live() {
                ConsumerCounters::add(&self.counters.abandoned, 1);
                return CopyOutcome::Gone;
            }
            let r = tokio::select! {
                r = self.publisher.publish_confirmed(m.clone()) => r,
                _ = stopped(&mut stop) => return CopyOutcome::Gone,
            };
            match r {
                Ok(_) => return CopyOutcome::Confirmed,
                Err(e) if refused_for_good(&e.error) => return CopyOutcome::Refused(e.error),
                Err(e) if matches!(e.error, Error::Nacked { .. }) && held.elapsed() < COPY_HOLD => {
                    ConsumerCounters::add(&self.counters.copies_nacked, 1);
                    let pause = self.config.store_backoff.delay(nacked);
                    nacked = nacked.saturating_add(1);
                    tracing::warn!(
                        error = %e.error,
                        routing_key = %m.routing_key,
                        ?pause,
                        "the broker refuses the retry or dead-letter copy for now (a full queue?); \
                         holding the original and publishing the copy again"
                    );
                    tokio::select! {
                        _ = tokio::time::sleep(pause) => {}
                        _ = stopped(&mut stop) => return CopyOutcome::Gone,
                    }
                }
                Err(e) => {
                    tracing::error!(error = %e.error, "could not publish the retry or dead-letter copy; requeueing the original");
                    return CopyOutcome::Failed;
                }
            }
        }
    }

    /// Acks a settled original, its copy confirmed (`outcome`: `retried`, `dead_lettered`);
    /// records its ack lag.
    fn ack(&self, item: Item, outcome: &'static str) {
        crate::trace::ack_settled(item.d, &self.config.queue, outcome);
        self.counters
            .ack_lag_seconds
            .record(item.received.elapsed().as_secs_f64());
    }

    /// Puts the original back on the queue after a pause (not at once: that would spin). On
    /// shutdown it is left to the broker to redeliver.
    async fn requeue_later(&self, item: Item) {
        let mut stop = self.stop.clone();
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_secs(1)) => item.d.nack(true),
            _ = stopped(&mut stop) => {}
        }
    }
}
