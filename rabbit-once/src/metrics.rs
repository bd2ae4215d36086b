//! The metrics rabbit-once reports through the [`metrics`](https://docs.rs/metrics) facade:
//! their names (listed with types and labels in `docs/metrics.md`) and the crate's own handles.
//!
//! The library records; the application chooses the exporter by installing a global recorder
//! (the `rabbit-once` CLI installs a Prometheus one for `--metrics-addr`). Install it **before**
//! starting connections, publishers, consumers and relays: each resolves its handles once, when
//! it starts, so what starts before a recorder exists records nothing. Without a recorder (or
//! with the `metrics` cargo feature off) every update is a no-op on a handle.
//!
//! Labels are bounded: `connection` (the [`ConnectionConfig::name`](crate::ConnectionConfig::name)),
//! `publisher` ([`PublisherConfig::name`](crate::PublisherConfig::name)), `queue` and `group`
//! (a consumer's), `reason` (a fixed set of words). Never a message id.

use crate::error::Error;
use std::sync::atomic::{AtomicU64, Ordering};

mod describe;
mod max_gauge;
#[cfg(all(test, feature = "metrics"))]
mod tests;

pub use describe::describe;
pub(crate) use max_gauge::MaxGauge;

// ---- publisher ----
/// Counter: messages accepted into a publisher's buffer.
pub const PUBLISHER_ACCEPTED: &str = "rabbit_once_publisher_accepted_total";
/// Counter: messages the broker confirmed (acked and not returned).
pub const PUBLISHER_CONFIRMED: &str = "rabbit_once_publisher_confirmed_total";
/// Counter, label `reason`: messages that ended without a confirm (the reason words are listed in docs/metrics.md).
pub const PUBLISHER_FAILED: &str = "rabbit_once_publisher_failed_total";
/// Counter: writes of a message written before (after a lost channel or a nack).
pub const PUBLISHER_REPUBLISHED: &str = "rabbit_once_publisher_republished_total";
/// Counter: `basic.nack` frames received.
pub const PUBLISHER_NACKS: &str = "rabbit_once_publisher_nacks_total";
/// Counter: `basic.return` frames received (unroutable mandatory messages).
pub const PUBLISHER_RETURNS: &str = "rabbit_once_publisher_returns_total";
/// Counter: publishing channels opened.
pub const PUBLISHER_CHANNELS: &str = "rabbit_once_publisher_channels_opened_total";
/// Gauge: messages in the buffer (accepted, no verdict yet).
pub const PUBLISHER_BUFFERED: &str = "rabbit_once_publisher_buffered_messages";
/// Gauge: body bytes of the messages in the buffer.
pub const PUBLISHER_BUFFERED_BYTES: &str = "rabbit_once_publisher_buffered_bytes";
/// Gauge: messages written on the current channel and not yet confirmed.
pub const PUBLISHER_IN_FLIGHT: &str = "rabbit_once_publisher_in_flight_messages";
/// Histogram: seconds from acceptance into the buffer to the broker's confirm.
pub const PUBLISHER_CONFIRM_SECONDS: &str = "rabbit_once_publisher_confirm_duration_seconds";
/// Gauge: seconds since the oldest message without a verdict was accepted (0 when none);
/// updated once per batch of commands, writes or verdicts.
pub const PUBLISHER_OLDEST_UNCONFIRMED_AGE: &str =
    "rabbit_once_publisher_oldest_unconfirmed_age_seconds";

// ---- connection ----
/// Gauge: 1 while a session is up, else 0.
pub const CONNECTION_UP: &str = "rabbit_once_connection_up";
/// Counter, label `reason`: sessions lost (each followed by reconnecting).
pub const CONNECTION_RECONNECTS: &str = "rabbit_once_connection_reconnects_total";
/// Counter, label `reason`: connection attempts that failed.
pub const CONNECTION_CONNECT_FAILURES: &str = "rabbit_once_connection_connect_failures_total";
/// Gauge: 1 while the broker blocks publishing on the session (`connection.blocked`), else 0.
pub const CONNECTION_BLOCKED: &str = "rabbit_once_connection_blocked";
/// Histogram: seconds each blocked spell lasted (its `_sum` is the total time blocked).
pub const CONNECTION_BLOCKED_SECONDS: &str = "rabbit_once_connection_blocked_duration_seconds";

// ---- idempotent consumer ----
/// Counter: deliveries received (duplicates and redeliveries included).
pub const CONSUMER_DELIVERED: &str = "rabbit_once_consumer_delivered_total";
/// Counter: messages whose handler committed.
pub const CONSUMER_APPLIED: &str = "rabbit_once_consumer_applied_total";
/// Counter: deliveries already recorded, acked without running the handler.
pub const CONSUMER_DUPLICATES: &str = "rabbit_once_consumer_duplicates_total";
/// Counter: messages sent to a retry queue.
pub const CONSUMER_RETRIED: &str = "rabbit_once_consumer_retried_total";
/// Counter: messages dead-lettered, whatever the reason.
pub const CONSUMER_DEAD_LETTERED: &str = "rabbit_once_consumer_dead_lettered_total";
/// Counter: deliveries without a usable `message_id` (dead-lettered).
pub const CONSUMER_MISSING_ID: &str = "rabbit_once_consumer_missing_id_total";
/// Counter: deliveries that could not be decoded in full (dead-lettered).
pub const CONSUMER_MALFORMED: &str = "rabbit_once_consumer_malformed_total";
/// Counter: transactions committed.
pub const CONSUMER_COMMITS: &str = "rabbit_once_consumer_commits_total";
/// Counter: batches rolled back and run again one message at a time.
pub const CONSUMER_SPLIT_BATCHES: &str = "rabbit_once_consumer_split_batches_total";
/// Counter, label `reason` (`error`, `panic`, `timeout`): handler runs that failed.
pub const CONSUMER_HANDLER_FAILURES: &str = "rabbit_once_consumer_handler_failures_total";
/// Counter: redelivered messages dead-lettered because their handler runs never finished.
pub const CONSUMER_CRASH_LOOPED: &str = "rabbit_once_consumer_crash_looped_total";
/// Counter: times the dedup store was found unreachable.
pub const CONSUMER_STORE_OUTAGES: &str = "rabbit_once_consumer_store_outages_total";
/// Counter: transactions rolled back over a lock conflict or timeout (run again).
pub const CONSUMER_STORE_CONFLICTS: &str = "rabbit_once_consumer_store_conflicts_total";
/// Counter: messages held unacked because the dead-letter target refused them.
pub const CONSUMER_HELD: &str = "rabbit_once_consumer_held_total";
/// Counter: deliveries dropped unacked because their channel died first (redelivered).
pub const CONSUMER_ABANDONED: &str = "rabbit_once_consumer_abandoned_total";
/// Counter: retry or dead-letter copies the broker nacked (published again).
pub const CONSUMER_COPIES_NACKED: &str = "rabbit_once_consumer_copies_nacked_total";
/// Counter: dedup records deleted by the retention job.
pub const CONSUMER_DEDUP_PURGED: &str = "rabbit_once_consumer_dedup_purged_total";
/// Histogram: deliveries per batch (one transaction's worth).
pub const CONSUMER_BATCH_SIZE: &str = "rabbit_once_consumer_batch_size";
/// Histogram: seconds one run of the handler over a batch took.
pub const CONSUMER_HANDLER_SECONDS: &str = "rabbit_once_consumer_handler_duration_seconds";
/// Histogram: seconds the database took to commit a batch's transaction.
pub const CONSUMER_COMMIT_SECONDS: &str = "rabbit_once_consumer_commit_duration_seconds";
/// Histogram: seconds from the worker taking a batch to its ack being sent (once per committed
/// batch; once per message acked after its retry or dead-letter copy was confirmed).
pub const CONSUMER_ACK_LAG_SECONDS: &str = "rabbit_once_consumer_ack_lag_seconds";

// ---- outbox relay ----
/// Counter: outbox rows confirmed by the broker and deleted.
pub const RELAY_RELAYED: &str = "rabbit_once_outbox_relayed_total";
/// Counter: failed publishes recorded on outbox rows.
pub const RELAY_FAILED: &str = "rabbit_once_outbox_failed_total";
/// Counter: rows parked after too many refusals.
pub const RELAY_PARKED: &str = "rabbit_once_outbox_parked_total";
/// Counter: reads of the pending set.
pub const RELAY_READS: &str = "rabbit_once_outbox_reads_total";
/// Gauge: rows the last read of the pending set returned.
pub const RELAY_READ_ROWS: &str = "rabbit_once_outbox_read_rows";
/// Gauge: rows published by the relay and not yet confirmed.
pub const RELAY_IN_FLIGHT: &str = "rabbit_once_outbox_in_flight_rows";
/// Gauge: rows in the outbox table (committed, not yet confirmed), counted by the relay that
/// publishes at most every few seconds, off its publishing path.
pub const RELAY_PENDING_ROWS: &str = "rabbit_once_outbox_pending_rows";
/// Gauge: seconds since the oldest pending row was written (0 when none), read with
/// [`RELAY_PENDING_ROWS`].
pub const RELAY_OLDEST_PENDING_AGE: &str = "rabbit_once_outbox_oldest_pending_age_seconds";

/// Every histogram whose unit is seconds: exporters may give them one set of buckets.
pub const SECONDS_HISTOGRAMS: &[&str] = &[
    PUBLISHER_CONFIRM_SECONDS,
    CONNECTION_BLOCKED_SECONDS,
    CONSUMER_HANDLER_SECONDS,
    CONSUMER_COMMIT_SECONDS,
    CONSUMER_ACK_LAG_SECONDS,
];

#[cfg(feature = "metrics")]
use ::metrics::Gauge as FacadeGauge;
#[cfg(feature = "metrics")]
pub(crate) use ::metrics::{Counter, Histogram};
#[cfg(not(feature = "metrics"))]
pub(crate) use noop::{Counter, Gauge as FacadeGauge, Histogram};

/// A gauge handle whose `set` adds its own change to the series instead of overwriting it.
/// Objects with the same name and labels share one series — two consumers' `copies`
/// publishers on one connection, two connections left with the default name — which is then
/// their sum; the facade's own `set` would let the last writer win (a connection down showing
/// `up` 1 because another of its name is up). Dropped, it takes its part back.
pub(crate) struct Gauge {
    gauge: FacadeGauge,
    /// The value this handle last set, as `f64` bits.
    last: AtomicU64,
}

impl Gauge {
    fn new(gauge: FacadeGauge) -> Self {
        Gauge {
            gauge,
            last: AtomicU64::new(0f64.to_bits()),
        }
    }

    /// This handle's part of the series is now `v`.
    #[inline]
    pub(crate) fn set(&self, v: f64) {
        let old = f64::from_bits(self.last.swap(v.to_bits(), Ordering::Relaxed));
        let change = v - old;
        if change > 0.0 {
            self.gauge.increment(change);
        } else if change < 0.0 {
            self.gauge.decrement(-change);
        }
    }
}

impl Clone for Gauge {
    /// Another part of the same series, starting at 0.
    fn clone(&self) -> Self {
        Gauge::new(self.gauge.clone())
    }
}

impl Drop for Gauge {
    fn drop(&mut self) {
        self.set(0.0);
    }
}

impl std::fmt::Debug for Gauge {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Gauge")
            .field("last", &f64::from_bits(self.last.load(Ordering::Relaxed)))
            .finish()
    }
}

/// The time from `from` to `to`, in seconds, as a histogram sample: computed only when a live
/// handle takes it (a handle with no recorder behind it never asks).
#[derive(Debug, Clone, Copy)]
#[cfg_attr(not(feature = "metrics"), allow(dead_code))]
pub(crate) struct Elapsed {
    pub(crate) from: std::time::Instant,
    pub(crate) to: std::time::Instant,
}

#[cfg(feature = "metrics")]
impl ::metrics::IntoF64 for Elapsed {
    #[inline]
    fn into_f64(self) -> f64 {
        self.to.saturating_duration_since(self.from).as_secs_f64()
    }
}

/// Label pairs; values are owned (queue and group names), keys are fixed words.
pub(crate) type Labels<'a> = &'a [(&'static str, &'a str)];

#[cfg(feature = "metrics")]
fn labels(l: Labels<'_>) -> Vec<::metrics::Label> {
    l.iter()
        .map(|(k, v)| ::metrics::Label::new(*k, (*v).to_owned()))
        .collect()
}

/// A counter handle, resolved once (registers it with the recorder, if any).
pub(crate) fn counter(name: &'static str, l: Labels<'_>) -> Counter {
    #[cfg(feature = "metrics")]
    return ::metrics::counter!(name, labels(l));
    #[cfg(not(feature = "metrics"))]
    {
        let _ = (name, l);
        Counter
    }
}

/// A gauge handle (the series is the sum of its handles' values), resolved once.
pub(crate) fn gauge(name: &'static str, l: Labels<'_>) -> Gauge {
    Gauge::new(facade_gauge(name, l))
}

/// The facade's gauge handle `name` with labels `l`, resolved once.
fn facade_gauge(name: &'static str, l: Labels<'_>) -> FacadeGauge {
    #[cfg(feature = "metrics")]
    return ::metrics::gauge!(name, labels(l));
    #[cfg(not(feature = "metrics"))]
    {
        let _ = (name, l);
        FacadeGauge
    }
}

/// An age gauge handle (the series is the largest of its handles' values), resolved once.
pub(crate) fn max_gauge(name: &'static str, l: Labels<'_>) -> MaxGauge {
    MaxGauge::new(name, l)
}

/// A histogram handle, resolved once.
pub(crate) fn histogram(name: &'static str, l: Labels<'_>) -> Histogram {
    #[cfg(feature = "metrics")]
    return ::metrics::histogram!(name, labels(l));
    #[cfg(not(feature = "metrics"))]
    {
        let _ = (name, l);
        Histogram
    }
}

/// A counter of the crate's own stats that is also a metric: `add` updates both (the atomic
/// that `stats()` reads, and the metric handle resolved at construction).
#[derive(Debug)]
pub(crate) struct Tally {
    value: AtomicU64,
    metric: Counter,
}

impl Default for Tally {
    fn default() -> Self {
        Tally::new(Counter::noop())
    }
}

impl Tally {
    pub(crate) fn new(metric: Counter) -> Self {
        Tally {
            value: AtomicU64::new(0),
            metric,
        }
    }

    /// Resolves the counter `name` with labels `l`.
    pub(crate) fn named(name: &'static str, l: Labels<'_>) -> Self {
        Tally::new(counter(name, l))
    }

    #[inline]
    pub(crate) fn add(&self, n: u64) {
        if n > 0 {
            self.value.fetch_add(n, Ordering::Relaxed);
            self.metric.increment(n);
        }
    }

    #[inline]
    pub(crate) fn get(&self) -> u64 {
        self.value.load(Ordering::Relaxed)
    }
}

/// The `reason` label for an error: one fixed word per kind (bounded cardinality; the details
/// are in the logs and the error itself).
pub(crate) fn reason(e: &Error) -> &'static str {
    match e {
        Error::InvalidUri { .. } | Error::Config(_) => "config",
        Error::AuthenticationFailed { .. } => "authentication",
        Error::VhostRefused { .. } => "vhost_refused",
        Error::Connect { .. } => "connect",
        Error::ConnectionLost(_) => "connection_lost",
        Error::ConnectionClosed { .. } => "closed_by_broker",
        Error::ChannelClosed { .. } => "channel_closed",
        Error::Protocol(_) => "protocol",
        Error::Topology(_) | Error::TopologyNotYet { .. } => "topology",
        Error::QueueNotFound { .. } => "queue_not_found",
        Error::Unroutable { .. } => "unroutable",
        Error::Nacked { .. } => "nacked",
        Error::ExchangeNotFound { .. } => "exchange_not_found",
        Error::Refused { .. } => "refused",
        Error::MessageTooLarge { .. } => "too_large",
        Error::InvalidMessage(_) => "invalid_message",
        Error::BufferFull => "buffer_full",
        Error::PublisherClosed => "publisher_closed",
        Error::HandedBack => "handed_back",
        Error::GaveUp { .. } => "gave_up",
        Error::Closed => "closed",
        Error::Timeout(_) => "timeout",
        Error::Store(_) => "store",
        #[allow(unreachable_patterns)]
        _ => "other",
    }
}

/// Every `reason` word (docs/metrics.md lists them): [`reason`]'s and the handler failures'.
pub(crate) const REASONS: [&str; 26] = [
    "unroutable",
    "nacked",
    "refused",
    "exchange_not_found",
    "too_large",
    "invalid_message",
    "handed_back",
    "gave_up",
    "closed",
    "publisher_closed",
    "buffer_full",
    "connection_lost",
    "closed_by_broker",
    "channel_closed",
    "connect",
    "authentication",
    "vhost_refused",
    "protocol",
    "topology",
    "queue_not_found",
    "timeout",
    "store",
    "config",
    "other",
    "error",
    "panic",
];

/// One counter per `reason` word, resolved on first use of each and kept: a failure storm
/// resolves nothing again. A word of [`REASONS`] has a slot of its own (no lock: a scan of the
/// words and a `OnceLock`); any other word goes to a list behind a mutex.
#[derive(Debug)]
pub(crate) struct ByReason {
    name: &'static str,
    labels: Vec<(&'static str, String)>,
    known: [std::sync::OnceLock<Counter>; REASONS.len()],
    others: std::sync::Mutex<Vec<(&'static str, Counter)>>,
}

impl ByReason {
    pub(crate) fn new(name: &'static str, l: Labels<'_>) -> Self {
        ByReason {
            name,
            labels: l.iter().map(|(k, v)| (*k, (*v).to_owned())).collect(),
            known: std::array::from_fn(|_| std::sync::OnceLock::new()),
            others: std::sync::Mutex::new(Vec::new()),
        }
    }

    /// Adds `n` to the counter of `reason`.
    pub(crate) fn add(&self, reason: &'static str, n: u64) {
        if n == 0 {
            return;
        }
        if let Some(i) = REASONS.iter().position(|r| *r == reason) {
            self.known[i]
                .get_or_init(|| self.resolve(reason))
                .increment(n);
            return;
        }
        let mut others = self.others.lock().expect("metrics lock");
        if let Some((_, c)) = others.iter().find(|(r, _)| *r == reason) {
            c.increment(n);
            return;
        }
        let c = self.resolve(reason);
        c.increment(n);
        others.push((reason, c));
    }

    /// The counter of `reason`, registered with the recorder.
    fn resolve(&self, reason: &'static str) -> Counter {
        let mut l: Vec<(&'static str, &str)> =
            self.labels.iter().map(|(k, v)| (*k, v.as_str())).collect();
        l.push(("reason", reason));
        counter(self.name, &l)
    }
}

/// An outbox relay's metrics, labelled with its connection's name.
#[cfg(feature = "dedup")]
#[derive(Debug, Clone)]
pub(crate) struct RelayMeters {
    pub(crate) relayed: Counter,
    pub(crate) failed: Counter,
    pub(crate) parked: Counter,
    pub(crate) reads: Counter,
    pub(crate) read_rows: Gauge,
    pub(crate) in_flight: Gauge,
}

#[cfg(feature = "dedup")]
impl RelayMeters {
    pub(crate) fn new(connection: &str) -> Self {
        let l: Labels<'_> = &[("connection", connection)];
        RelayMeters {
            relayed: counter(RELAY_RELAYED, l),
            failed: counter(RELAY_FAILED, l),
            parked: counter(RELAY_PARKED, l),
            reads: counter(RELAY_READS, l),
            read_rows: gauge(RELAY_READ_ROWS, l),
            in_flight: gauge(RELAY_IN_FLIGHT, l),
        }
    }
}

/// Stand-ins with the facade's API when the `metrics` feature is off.
#[cfg(not(feature = "metrics"))]
mod noop {
    /// Does nothing.
    #[derive(Debug, Clone, Default)]
    pub(crate) struct Counter;
    impl Counter {
        pub(crate) fn noop() -> Self {
            Counter
        }
        #[inline]
        pub(crate) fn increment(&self, _: u64) {}
    }
    /// Does nothing.
    #[derive(Debug, Clone, Default)]
    pub(crate) struct Gauge;
    impl Gauge {
        #[inline]
        pub(crate) fn increment(&self, _: f64) {}
        #[inline]
        pub(crate) fn decrement(&self, _: f64) {}
        #[inline]
        pub(crate) fn set(&self, _: f64) {}
    }
    /// Does nothing.
    #[derive(Debug, Clone, Default)]
    pub(crate) struct Histogram;
    impl Histogram {
        #[inline]
        pub(crate) fn record<T>(&self, _: T) {}
    }
}
