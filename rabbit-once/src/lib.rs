//! # rabbit-once
//!
//! RabbitMQ (AMQP 0-9-1) messaging that loses nothing and applies nothing twice.
//!
//! - A [`Publisher`] keeps every accepted message until the broker confirms it — across lost
//!   channels and connections — and re-publishes the unconfirmed ones first, in their original
//!   order, on every new session. Every message carries a `message_id` that never changes.
//! - A [`Connection`] is supervised: one task reconnects with backoff and jitter over several
//!   endpoints, declares the [`Topology`] again on every session, and reports state and events.
//!
//! ## Layout
//! - [`error`]: the one error type;  [`uri`]: `amqp://` parsing;  [`config`]: connection
//!   settings;  [`backoff`]: delays between attempts;  [`event`]: connection events;
//!   [`message`]: outgoing messages.
//! - `transport/`: the AMQP 0-9-1 seam — codec, connection I/O tasks, channels. Nothing above
//!   it knows how frames are made.
//! - [`connection`]: the supervisor (the only reconnect loop) and the session watch.
//! - [`topology`]: exchanges, queues, bindings, declared on every session.
//! - [`publisher`]: handle, pending buffer, the task that owns the channel.
//! - [`consumer`]: subscriptions with manual acks across reconnects; the idempotent consumer.
//! - [`dedup`]: the dedup store trait, SQLite and PostgreSQL backends.

pub mod backoff;
pub mod config;
pub mod connection;
pub mod consumer;
#[cfg(feature = "dedup")]
pub mod dedup;
pub mod error;
pub mod event;
pub mod message;
pub mod publisher;
pub(crate) mod shutdown;
pub mod topology;
pub(crate) mod transport;
pub mod uri;

/// For the cargo-fuzz target in `fuzz/` only (feature `fuzzing`, off by default): not an API.
#[cfg(feature = "fuzzing")]
#[doc(hidden)]
pub mod fuzzing {
    /// Runs `parse_frame` and the payload decoder each frame calls for, then
    /// `FieldTable::decode` and `Properties::decode` on the raw bytes, discarding the results.
    /// Panics only if a decoder panics or breaks a check of `transport::fuzzing` (nesting
    /// beyond the limit, heap held out of proportion to the input, a frame split wrongly).
    pub fn decode_all(data: &[u8]) {
        let _ = crate::transport::fuzzing::decode_all(data);
    }
}

pub use backoff::Backoff;
pub use config::ConnectionConfig;
pub use connection::{Connection, ConnectionState, QueueInfo};
#[cfg(feature = "test-util")]
pub use consumer::DeliveryBuilder;
#[cfg(feature = "dedup")]
pub use consumer::{
    Consumer, ConsumerConfig, ConsumerStats, DeadLetter, Handler, HandlerError, HandlerFn,
    HandlerFuture, MissingId, Outcome, RetryPolicy, handler_fn,
};
pub use consumer::{Delivery, Subscription, SubscriptionConfig, SubscriptionStats};
#[cfg(feature = "dedup")]
pub use dedup::Store;
#[cfg(feature = "postgres")]
pub use dedup::postgres::{PostgresOptions, PostgresStore};
#[cfg(feature = "sqlite")]
pub use dedup::sqlite::{SqliteOptions, SqliteStore};
pub use error::{Error, Result};
pub use event::{Event, Events};
pub use message::{Message, new_message_id};
pub use publisher::{
    Confirmation, Confirmed, PublishError, Publisher, PublisherConfig, PublisherStats,
};
/// The `sqlx` this crate builds on, for handlers' transactions.
#[cfg(feature = "dedup")]
pub use sqlx;
pub use topology::{Binding, Exchange, ExchangeKind, Overflow, Queue, QueueType, Topology};
pub use transport::Properties;
pub use transport::{FieldTable, FieldValue};
