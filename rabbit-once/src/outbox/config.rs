//! How a relay reads, retries and parks (`RelayConfig`), and what it counts (`RelayStats`).

use crate::publisher::PublisherConfig;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// How the relay reads and retries. Owned builder; defaults in `Default`.
#[derive(Debug, Clone)]
pub struct RelayConfig {
    pub(crate) batch: i64,
    pub(crate) poll: Duration,
    pub(crate) retry_after: Duration,
    pub(crate) park_after: u32,
    pub(crate) strict_key_order: bool,
    pub(crate) publisher: PublisherConfig,
}

impl RelayConfig {
    /// Rows in hand at a time: read, published (the publisher's window puts on the wire what it
    /// allows, the rest waits in its buffer) and not yet confirmed (default 2,000). The relay
    /// reads again once half of them are settled, so twice the publisher's window (1,000 by
    /// default) keeps the wire full while the next read runs: at the publisher's window the
    /// rows on the wire fell to half between reads (measured: 0.74× of direct publishing at
    /// 500, 0.8–0.9× at 2,000; docs/benchmarks.md).
    pub fn batch(mut self, rows: u32) -> Self {
        self.batch = i64::from(rows.max(1));
        self
    }

    /// How often to read when nothing wakes the relay (default 1 s). On SQLite this is how soon
    /// rows written by *other processes* go out; this process's writes and, on PostgreSQL,
    /// every commit wake the relay at once.
    pub fn poll(mut self, every: Duration) -> Self {
        self.poll = every;
        self
    }

    /// How long a row the broker refused waits before it is tried again (default 5 s).
    pub fn retry_after(mut self, wait: Duration) -> Self {
        self.retry_after = wait;
        self
    }

    /// After how many refusals a row is *parked* (default 20: with the default `retry_after`,
    /// after ~100 s of retrying). Only the broker's verdicts on the message park it
    /// (unroutable, no such exchange, refused, too large); pushback that clears by itself
    /// (nacks from a full queue, a closing publisher) is retried and never parks. A parked row leaves the outbox for the table
    /// `rabbit_once_outbox_parked`, with its reason and attempts, and an
    /// [`Event::OutboxRowParked`](crate::Event::OutboxRowParked): it no longer holds back the
    /// later rows of its ordering key (they go on without it) and waits there — never dropped —
    /// for an operator to `requeue` it (once the cause is fixed) or `discard` it. `0`: never
    /// park; a refused row is retried for ever and holds its key for ever (strict order).
    pub fn park_after(mut self, attempts: u32) -> Self {
        self.park_after = attempts;
        self
    }

    /// At most one row of each ordering key in flight (default off): a keyed row is published
    /// only once the row of its key before it is confirmed, so no later row of a key ever
    /// reaches the broker before a refused one. Without it a key's rows are pipelined like any
    /// others, and the rows of a key already in flight when one of them is refused go out
    /// ahead of it (the refused row is held, and so are the rows of its key read after).
    ///
    /// The price is one broker round trip per row *of each key*: a single busy key moves at
    /// the speed of one confirm at a time, many keys move in parallel (see docs/benchmarks.md).
    /// Rows without a key are not affected.
    pub fn strict_key_order(mut self, on: bool) -> Self {
        self.strict_key_order = on;
        self
    }

    /// The settings of the relay's publisher (window, buffer, message size).
    pub fn publisher(mut self, config: PublisherConfig) -> Self {
        self.publisher = config;
        self
    }
}

impl Default for RelayConfig {
    fn default() -> Self {
        RelayConfig {
            batch: 2_000,
            poll: Duration::from_secs(1),
            retry_after: Duration::from_secs(5),
            park_after: 20,
            strict_key_order: false,
            publisher: PublisherConfig::default(),
        }
    }
}

/// Counters of a relay.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RelayStats {
    /// Rows confirmed by the broker and deleted.
    pub relayed: u64,
    /// Failed publishes recorded on their rows (a row can fail more than once).
    pub failed: u64,
    /// Reads of the pending set.
    pub reads: u64,
    /// Rows parked after `park_after` refusals.
    pub parked: u64,
}

#[derive(Debug, Default)]
pub(super) struct RelayCounters {
    pub(super) relayed: AtomicU64,
    pub(super) failed: AtomicU64,
    pub(super) reads: AtomicU64,
    pub(super) parked: AtomicU64,
}

impl RelayCounters {
    pub(super) fn snapshot(&self) -> RelayStats {
        RelayStats {
            relayed: self.relayed.load(Ordering::Relaxed),
            failed: self.failed.load(Ordering::Relaxed),
            reads: self.reads.load(Ordering::Relaxed),
            parked: self.parked.load(Ordering::Relaxed),
        }
    }
}
