//! [`PublisherStats`], what a publisher reports, and the atomic counters behind it.

use crate::metrics::{self as m, ByReason, Gauge, Histogram, Labels, MaxGauge, Tally};
use std::sync::atomic::AtomicUsize;

/// Counters of a publisher, for progress and tests.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PublisherStats {
    /// Messages accepted into the buffer.
    pub accepted: u64,
    /// Messages the broker confirmed (acked, and not returned as unroutable).
    pub confirmed: u64,
    /// Messages that ended with an error (unroutable, nacked too often, …).
    pub failed: u64,
    /// Writes of a message that had been written before (after a lost channel or a nack).
    pub republished: u64,
    /// `basic.nack` frames received (one may cover several messages).
    pub nacks: u64,
    /// `basic.return` frames received (unroutable `mandatory` messages).
    pub returns: u64,
    /// Channels opened for publishing (1 + reopenings).
    pub channels: u64,
    /// Messages in the buffer now (accepted, no verdict yet).
    pub buffered: usize,
    /// Body bytes of the messages in the buffer now.
    pub buffered_bytes: usize,
    /// The most body bytes the buffer ever held.
    pub peak_buffered_bytes: usize,
}

/// The live counters behind [`PublisherStats`] and the publisher's metrics: the task updates
/// them (once per batch of commands or verdicts), `stats()` reads them.
#[derive(Debug)]
pub(crate) struct PublisherCounters {
    pub(super) accepted: Tally,
    pub(super) confirmed: Tally,
    /// All failures; `failed_by` splits them by reason for the metrics.
    pub(super) failed: Tally,
    pub(super) failed_by: ByReason,
    pub(super) republished: Tally,
    pub(super) nacks: Tally,
    pub(super) returns: Tally,
    pub(super) channels: Tally,
    pub(super) buffered: AtomicUsize,
    pub(super) buffered_bytes: AtomicUsize,
    pub(super) peak_buffered_bytes: AtomicUsize,
    pub(super) buffered_gauge: Gauge,
    pub(super) buffered_bytes_gauge: Gauge,
    pub(super) in_flight_gauge: Gauge,
    pub(super) oldest_unconfirmed_gauge: MaxGauge,
    pub(super) confirm_seconds: Histogram,
}

impl PublisherCounters {
    /// Resolves the metric handles for a publisher `name` on connection `connection`.
    pub(super) fn new(connection: &str, name: &str) -> Self {
        let l: Labels<'_> = &[("connection", connection), ("publisher", name)];
        PublisherCounters {
            accepted: Tally::named(m::PUBLISHER_ACCEPTED, l),
            confirmed: Tally::named(m::PUBLISHER_CONFIRMED, l),
            failed: Tally::default(),
            failed_by: ByReason::new(m::PUBLISHER_FAILED, l),
            republished: Tally::named(m::PUBLISHER_REPUBLISHED, l),
            nacks: Tally::named(m::PUBLISHER_NACKS, l),
            returns: Tally::named(m::PUBLISHER_RETURNS, l),
            channels: Tally::named(m::PUBLISHER_CHANNELS, l),
            buffered: AtomicUsize::new(0),
            buffered_bytes: AtomicUsize::new(0),
            peak_buffered_bytes: AtomicUsize::new(0),
            buffered_gauge: m::gauge(m::PUBLISHER_BUFFERED, l),
            buffered_bytes_gauge: m::gauge(m::PUBLISHER_BUFFERED_BYTES, l),
            in_flight_gauge: m::gauge(m::PUBLISHER_IN_FLIGHT, l),
            oldest_unconfirmed_gauge: m::max_gauge(m::PUBLISHER_OLDEST_UNCONFIRMED_AGE, l),
            confirm_seconds: m::histogram(m::PUBLISHER_CONFIRM_SECONDS, l),
        }
    }

    /// Counts `n` messages that failed for `reason`.
    pub(super) fn fail(&self, reason: &'static str, n: u64) {
        self.failed.add(n);
        self.failed_by.add(reason, n);
    }
}
