//! The idempotent consumer: claim → handle → commit → ack, for every delivery.
//!
//! For a batch of deliveries (group commit: up to `batch_size`, or what arrived within
//! `batch_wait`), one transaction: insert every `(group, message_id)` into the dedup table;
//! those already there are duplicates (acked without running the handler); the handler applies
//! the new ones in the same transaction; commit; then ack (the subscription turns the acks into
//! one `multiple` ack). If the handler fails anywhere in a batch, the batch is rolled back and its
//! messages are run one at a time, so one bad message neither blocks nor duplicates the others.
//! A failing message is retried through a retry queue, then dead-lettered — never dropped.
//! If the database is unreachable, nothing is acked and no new work is taken until it is back.
//!
//! - [`config`]: [`ConsumerConfig`], its defaults and validation;
//! - [`stats`]: [`ConsumerStats`] and the counters behind them;
//! - [`handle`]: the [`Consumer`] handle — start, stats, close;
//! - [`worker`]: the task: receive, batch, take out malformed and id-less deliveries, count the
//!   runs of redeliveries (the crash-loop bound);
//! - [`prepare`]: before the first subscription, the consumer's own queues declared and its work
//!   queue checked — in `start` if a session is up, else on the first session;
//! - [`key`]: a delivery's dedup key (its message id, octets in hex, or a hash of the body);
//! - [`split`]: running a batch to the end, splitting it around the message that failed;
//! - [`transaction`]: one batch's transaction, held through outages and conflicts, and how its
//!   errors are classified;
//! - [`settle`]: a failed message's retry or dead-letter copy, confirmed before the ack;
//! - [`retention`]: deleting old dedup records.

mod config;
mod handle;
mod key;
mod prepare;
mod retention;
mod settle;
mod split;
mod stats;
mod transaction;
mod worker;

pub use config::ConsumerConfig;
pub use handle::Consumer;
pub use stats::ConsumerStats;
