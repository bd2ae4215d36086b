//! [`ConsumerStats`]: what a consumer has done so far, and the atomic counters behind it.

use crate::metrics::{self as m, Histogram, Labels, Tally};
use std::sync::atomic::{AtomicBool, Ordering};

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

/// The counters behind [`ConsumerStats`], each also a metric labelled with the consumer's
/// queue and group, and the consumer's histograms: handles resolved once, at start.
#[derive(Debug)]
pub(super) struct ConsumerCounters {
    pub(super) delivered: Tally,
    pub(super) applied: Tally,
    pub(super) duplicates: Tally,
    pub(super) retried: Tally,
    pub(super) dead_lettered: Tally,
    pub(super) missing_id: Tally,
    pub(super) malformed: Tally,
    pub(super) commits: Tally,
    pub(super) split_batches: Tally,
    pub(super) handler_errors: Tally,
    pub(super) handler_panics: Tally,
    pub(super) handler_timeouts: Tally,
    pub(super) crash_looped: Tally,
    pub(super) store_outages: Tally,
    pub(super) store_conflicts: Tally,
    pub(super) held: Tally,
    pub(super) abandoned: Tally,
    pub(super) copies_nacked: Tally,
    pub(super) purged: Tally,
    pub(super) batch_size: Histogram,
    pub(super) handler_seconds: Histogram,
    pub(super) commit_seconds: Histogram,
    /// Why the dedup store is unreachable, while it is (as the last transaction found it):
    /// set by every transaction that finds it unreachable, cleared by the first one of any
    /// worker that it answers; read by `Consumer::health`. Written only under the lock, together
    /// with `store_is_down`.
    pub(super) store_down: std::sync::Mutex<Option<String>>,
    /// Whether `store_down` is set: the one atomic load a transaction that reached the store
    /// pays, so the lock is taken only on the way into and out of an outage.
    store_is_down: AtomicBool,
    pub(super) ack_lag_seconds: Histogram,
}

impl ConsumerCounters {
    /// Resolves the handles for the consumer of `queue` in `group`.
    pub(super) fn new(queue: &str, group: &str) -> Self {
        let l: Labels<'_> = &[("queue", queue), ("group", group)];
        let failure = |reason| {
            Tally::named(
                m::CONSUMER_HANDLER_FAILURES,
                &[("queue", queue), ("group", group), ("reason", reason)],
            )
        };
        ConsumerCounters {
            delivered: Tally::named(m::CONSUMER_DELIVERED, l),
            applied: Tally::named(m::CONSUMER_APPLIED, l),
            duplicates: Tally::named(m::CONSUMER_DUPLICATES, l),
            retried: Tally::named(m::CONSUMER_RETRIED, l),
            dead_lettered: Tally::named(m::CONSUMER_DEAD_LETTERED, l),
            missing_id: Tally::named(m::CONSUMER_MISSING_ID, l),
            malformed: Tally::named(m::CONSUMER_MALFORMED, l),
            commits: Tally::named(m::CONSUMER_COMMITS, l),
            split_batches: Tally::named(m::CONSUMER_SPLIT_BATCHES, l),
            crash_looped: Tally::named(m::CONSUMER_CRASH_LOOPED, l),
            store_outages: Tally::named(m::CONSUMER_STORE_OUTAGES, l),
            store_conflicts: Tally::named(m::CONSUMER_STORE_CONFLICTS, l),
            held: Tally::named(m::CONSUMER_HELD, l),
            abandoned: Tally::named(m::CONSUMER_ABANDONED, l),
            copies_nacked: Tally::named(m::CONSUMER_COPIES_NACKED, l),
            purged: Tally::named(m::CONSUMER_DEDUP_PURGED, l),
            handler_errors: failure("error"),
            handler_panics: failure("panic"),
            handler_timeouts: failure("timeout"),
            batch_size: m::histogram(m::CONSUMER_BATCH_SIZE, l),
            handler_seconds: m::histogram(m::CONSUMER_HANDLER_SECONDS, l),
            commit_seconds: m::histogram(m::CONSUMER_COMMIT_SECONDS, l),
            store_down: std::sync::Mutex::new(None),
            store_is_down: AtomicBool::new(false),
            ack_lag_seconds: m::histogram(m::CONSUMER_ACK_LAG_SECONDS, l),
        }
    }

    pub(super) fn add(c: &Tally, n: u64) {
        c.add(n);
    }

    /// Records that a transaction found the dedup store unreachable for `reason`; if this
    /// starts the outage (no transaction of this consumer found it down before), runs
    /// `started` — under the lock, so the announcements of an outage's start and end keep
    /// their order whichever workers make them.
    pub(super) fn store_unreachable(&self, reason: String, started: impl FnOnce(&str)) {
        let mut down = self.store_down.lock().expect("store_down lock");
        if !self.store_is_down.swap(true, Ordering::AcqRel) {
            started(&reason);
        }
        *down = Some(reason);
    }

    /// Records that a transaction got an answer from the dedup store (it committed, conflicted,
    /// or its handler failed); if this ends an outage, runs `ended` under the lock. One atomic
    /// load when there is none.
    pub(super) fn store_answered(&self, ended: impl FnOnce()) {
        if !self.store_is_down.load(Ordering::Acquire) {
            return;
        }
        let mut down = self.store_down.lock().expect("store_down lock");
        if self.store_is_down.swap(false, Ordering::AcqRel) {
            *down = None;
            ended();
        }
    }

    pub(super) fn snapshot(&self) -> ConsumerStats {
        let g = Tally::get;
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
