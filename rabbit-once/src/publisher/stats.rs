//! [`PublisherStats`], what a publisher reports, and the atomic counters behind it.

use std::sync::atomic::{AtomicU64, AtomicUsize};

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

/// The live counters behind [`PublisherStats`]: the task updates them, `stats()` reads them.
#[derive(Debug, Default)]
pub(crate) struct PublisherCounters {
    pub(super) accepted: AtomicU64,
    pub(super) confirmed: AtomicU64,
    pub(super) failed: AtomicU64,
    pub(super) republished: AtomicU64,
    pub(super) nacks: AtomicU64,
    pub(super) returns: AtomicU64,
    pub(super) channels: AtomicU64,
    pub(super) buffered: AtomicUsize,
    pub(super) buffered_bytes: AtomicUsize,
    pub(super) peak_buffered_bytes: AtomicUsize,
}
