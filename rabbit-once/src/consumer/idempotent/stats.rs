//! [`ConsumerStats`]: what a consumer has done so far, and the atomic counters behind it.

use std::sync::atomic::{AtomicU64, Ordering};

/// Counters of a consumer since it started: read them with
/// [`Consumer::stats`](crate::consumer::Consumer::stats), and the final ones come from
/// [`Consumer::close`](crate::Consumer::close).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ConsumerStats {
    /// Deliveries received (duplicates and redeliveries included).
    pub delivered: u64,
    /// Messages whose handler committed.
    pub applied: u64,
    /// Deliveries whose id was already recorded: acked without running the handler.
    pub duplicates: u64,
    /// Messages sent to a retry queue.
    pub retried: u64,
    /// Messages published to the dead-letter target and acked, whatever the reason (the last
    /// attempt failed, a `Reject`, no usable id, malformed, a crash loop…).
    pub dead_lettered: u64,
    /// Deliveries without a usable `message_id` (none or empty under
    /// [`MissingId::DeadLetter`](crate::consumer::MissingId::DeadLetter), or one with a NUL
    /// byte): dead-lettered, the handler never ran.
    pub missing_id: u64,
    /// Deliveries that could not be decoded in full (see
    /// [`Delivery::malformed`](crate::consumer::Delivery::malformed)):
    /// dead-lettered with the reason, the handler never ran.
    pub malformed: u64,
    /// Transactions committed.
    pub commits: u64,
    /// Batches rolled back and run again one message at a time.
    pub split_batches: u64,
    /// Handler runs that returned an error (the database's own failures excepted: those count
    /// as outages or conflicts).
    pub handler_errors: u64,
    /// Handler runs that panicked (caught and rolled back; the message is retried like any
    /// failure).
    pub handler_panics: u64,
    /// Handler runs that did not return within the handler timeout (rolled back, retried).
    pub handler_timeouts: u64,
    /// Redelivered messages dead-lettered because their handler runs never finished
    /// (the process died inside the handler `max_attempts` times).
    pub crash_looped: u64,
    /// Times the database was found unreachable (work held, nothing acked).
    pub store_outages: u64,
    /// Transactions rolled back by the database over a lock conflict, a serialization failure,
    /// a deadlock or a statement / lock timeout: run again after a pause, never counted as the
    /// messages' failure (the fault is the database's, not theirs).
    pub store_conflicts: u64,
    /// Messages held unacked because the dead-letter target refuses them (see
    /// [`Event::DeadLetterRefused`](crate::event::Event::DeadLetterRefused)).
    pub held: u64,
    /// Deliveries dropped unacked because their channel died first (the broker redelivers them).
    pub abandoned: u64,
    /// Times the broker nacked a retry or dead-letter copy after the publisher's own retries
    /// (its queue full, `reject-publish`): the original was held and the copy published again.
    pub copies_nacked: u64,
    /// Dedup records deleted by the retention job.
    pub purged: u64,
}

#[derive(Debug, Default)]
pub(super) struct ConsumerCounters {
    pub(super) delivered: AtomicU64,
    pub(super) applied: AtomicU64,
    pub(super) duplicates: AtomicU64,
    pub(super) retried: AtomicU64,
    pub(super) dead_lettered: AtomicU64,
    pub(super) missing_id: AtomicU64,
    pub(super) malformed: AtomicU64,
    pub(super) commits: AtomicU64,
    pub(super) split_batches: AtomicU64,
    pub(super) handler_errors: AtomicU64,
    pub(super) handler_panics: AtomicU64,
    pub(super) handler_timeouts: AtomicU64,
    pub(super) crash_looped: AtomicU64,
    pub(super) store_outages: AtomicU64,
    pub(super) store_conflicts: AtomicU64,
    pub(super) held: AtomicU64,
    pub(super) abandoned: AtomicU64,
    pub(super) copies_nacked: AtomicU64,
    pub(super) purged: AtomicU64,
}

impl ConsumerCounters {
    pub(super) fn add(c: &AtomicU64, n: u64) {
        if n > 0 {
            c.fetch_add(n, Ordering::Relaxed);
        }
    }

    pub(super) fn snapshot(&self) -> ConsumerStats {
        let g = |c: &AtomicU64| c.load(Ordering::Relaxed);
        ConsumerStats {
            delivered: g(&self.delivered),
            applied: g(&self.applied),
            duplicates: g(&self.duplicates),
            retried: g(&self.retried),
            dead_lettered: g(&self.dead_lettered),
            missing_id: g(&self.missing_id),
            malformed: g(&self.malformed),
            commits: g(&self.commits),
            split_batches: g(&self.split_batches),
            handler_errors: g(&self.handler_errors),
            handler_panics: g(&self.handler_panics),
            handler_timeouts: g(&self.handler_timeouts),
            crash_looped: g(&self.crash_looped),
            store_outages: g(&self.store_outages),
            store_conflicts: g(&self.store_conflicts),
            held: g(&self.held),
            abandoned: g(&self.abandoned),
            copies_nacked: g(&self.copies_nacked),
            purged: g(&self.purged),
        }
    }
}
