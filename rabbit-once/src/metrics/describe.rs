//! What each metric is, for the exporter: its unit and one line of help (Prometheus's `# HELP`).
// Without the `metrics` feature the table is kept (the docs test reads it) but never used.
#![cfg_attr(not(feature = "metrics"), allow(dead_code))]

use super::*;

/// A metric's kind, which decides the `describe_…!` it gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Kind {
    Counter,
    Gauge,
    Histogram,
}

use Kind::{Counter as C, Gauge as G, Histogram as H};

/// Every metric the crate reports, with its kind and help; the unit follows from the name
/// (`_seconds`, `_bytes`, else a count). docs/metrics.md has the same rows (a test checks).
pub(super) const HELP: &[(&str, Kind, &str)] = &[
    (
        PUBLISHER_ACCEPTED,
        C,
        "Messages accepted into a publisher's buffer.",
    ),
    (
        PUBLISHER_CONFIRMED,
        C,
        "Messages the broker confirmed (acked, not returned).",
    ),
    (
        PUBLISHER_FAILED,
        C,
        "Messages that ended without a confirm, by reason.",
    ),
    (
        PUBLISHER_REPUBLISHED,
        C,
        "Writes of a message written before (after a lost channel or a nack).",
    ),
    (PUBLISHER_NACKS, C, "basic.nack frames received."),
    (
        PUBLISHER_RETURNS,
        C,
        "basic.return frames received (unroutable mandatory messages).",
    ),
    (
        PUBLISHER_CHANNELS,
        C,
        "Publishing channels opened (1 + reopenings).",
    ),
    (
        PUBLISHER_BUFFERED,
        G,
        "Messages in the buffer (accepted, no verdict yet).",
    ),
    (
        PUBLISHER_BUFFERED_BYTES,
        G,
        "Body bytes of the messages in the buffer.",
    ),
    (
        PUBLISHER_IN_FLIGHT,
        G,
        "Messages written on the current channel, not yet confirmed.",
    ),
    (
        PUBLISHER_CONFIRM_SECONDS,
        H,
        "From acceptance into the buffer to the broker's confirm.",
    ),
    (
        PUBLISHER_OLDEST_UNCONFIRMED_AGE,
        G,
        "Age of the oldest message without a verdict (0 when none).",
    ),
    (
        CONNECTION_UP,
        G,
        "1 while a session with the broker is up, else 0.",
    ),
    (
        CONNECTION_RECONNECTS,
        C,
        "Sessions lost (each followed by reconnecting), by reason.",
    ),
    (
        CONNECTION_CONNECT_FAILURES,
        C,
        "Connection attempts that failed, by reason.",
    ),
    (
        CONNECTION_BLOCKED,
        G,
        "1 while the broker blocks publishing (connection.blocked), else 0.",
    ),
    (
        CONNECTION_BLOCKED_SECONDS,
        H,
        "Each spell the broker blocked publishing; _sum is the total time.",
    ),
    (
        CONSUMER_DELIVERED,
        C,
        "Deliveries received (duplicates and redeliveries included).",
    ),
    (CONSUMER_APPLIED, C, "Messages whose handler committed."),
    (
        CONSUMER_DUPLICATES,
        C,
        "Deliveries already recorded, acked without running the handler.",
    ),
    (CONSUMER_RETRIED, C, "Messages sent to a retry queue."),
    (
        CONSUMER_DEAD_LETTERED,
        C,
        "Messages dead-lettered, whatever the reason.",
    ),
    (
        CONSUMER_MISSING_ID,
        C,
        "Deliveries without a usable message_id (dead-lettered).",
    ),
    (
        CONSUMER_MALFORMED,
        C,
        "Deliveries that could not be decoded in full (dead-lettered).",
    ),
    (
        CONSUMER_CRASH_LOOPED,
        C,
        "Redelivered messages dead-lettered because their handler runs never finished.",
    ),
    (
        CONSUMER_HANDLER_FAILURES,
        C,
        "Handler runs that failed (rolled back), by reason.",
    ),
    (CONSUMER_COMMITS, C, "Transactions committed."),
    (
        CONSUMER_SPLIT_BATCHES,
        C,
        "Batches rolled back and run again one message at a time.",
    ),
    (
        CONSUMER_STORE_OUTAGES,
        C,
        "Times the dedup store was found unreachable (work held).",
    ),
    (
        CONSUMER_STORE_CONFLICTS,
        C,
        "Transactions rolled back over a lock conflict or timeout (run again).",
    ),
    (
        CONSUMER_HELD,
        C,
        "Messages held unacked because the dead-letter target refused them.",
    ),
    (
        CONSUMER_ABANDONED,
        C,
        "Deliveries dropped unacked because their channel died (redelivered).",
    ),
    (
        CONSUMER_COPIES_NACKED,
        C,
        "Retry or dead-letter copies the broker nacked (published again).",
    ),
    (
        CONSUMER_DEDUP_PURGED,
        C,
        "Dedup records deleted by the retention job.",
    ),
    (
        CONSUMER_BATCH_SIZE,
        H,
        "Deliveries per batch (one transaction's worth).",
    ),
    (
        CONSUMER_HANDLER_SECONDS,
        H,
        "One run of the handler over a batch.",
    ),
    (
        CONSUMER_COMMIT_SECONDS,
        H,
        "The database's commit of a batch's transaction.",
    ),
    (
        CONSUMER_ACK_LAG_SECONDS,
        H,
        "From the consumer taking a batch off its subscription to its ack being sent.",
    ),
    (
        RELAY_RELAYED,
        C,
        "Outbox rows confirmed by the broker and deleted.",
    ),
    (RELAY_FAILED, C, "Failed publishes recorded on outbox rows."),
    (
        RELAY_PARKED,
        C,
        "Outbox rows parked after too many refusals.",
    ),
    (RELAY_READS, C, "Reads of the outbox's pending set."),
    (
        RELAY_READ_ROWS,
        G,
        "Rows the last read of the pending set returned (0: caught up).",
    ),
    (
        RELAY_IN_FLIGHT,
        G,
        "Outbox rows published and not yet confirmed.",
    ),
    (
        RELAY_PENDING_ROWS,
        G,
        "Rows in the outbox table, counted every few seconds by the publishing relay.",
    ),
    (
        RELAY_OLDEST_PENDING_AGE,
        G,
        "Age of the oldest row in the outbox table (0 when empty).",
    ),
];

/// Describes every rabbit-once metric to the installed recorder: its unit and a line of help
/// (what a Prometheus exporter prints as `# HELP`). Call it once, after installing the
/// recorder (before or after starting anything: a description needs no handle). Without a
/// recorder, or without the `metrics` feature, it does nothing.
pub fn describe() {
    #[cfg(feature = "metrics")]
    for &(name, kind, help) in HELP {
        let unit = if name.ends_with("_seconds") {
            ::metrics::Unit::Seconds
        } else if name.ends_with("_bytes") {
            ::metrics::Unit::Bytes
        } else {
            ::metrics::Unit::Count
        };
        match kind {
            Kind::Counter => ::metrics::describe_counter!(name, unit, help),
            Kind::Gauge => ::metrics::describe_gauge!(name, unit, help),
            Kind::Histogram => ::metrics::describe_histogram!(name, unit, help),
        }
    }
}
