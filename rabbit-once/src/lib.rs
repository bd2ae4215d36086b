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
//! Every public item is at the crate root (`rabbit_once::Publisher`, …): the modules are private,
//! so each type has one path. The exceptions are [`headers`] (the header names the consumer
//! writes on retried and dead-lettered copies), [`metrics`] (the metric names), [`sqlx`] (the
//! version this crate builds on) and, with the `opentelemetry` feature, `trace` (W3C trace
//! context across the broker).
//!
//! ## Layout
//! - `error.rs`: the one [`Error`] type;  `uri/`: `amqp://` parsing ([`Endpoint`]);
//!   `config.rs`: [`ConnectionConfig`];  `backoff.rs`: [`Backoff`];  `event.rs`: [`Event`]s;
//!   `message.rs`: outgoing [`Message`]s.
//! - `transport/`: the AMQP 0-9-1 seam — codec, the I/O tasks of one connection (`link/`),
//!   channels. Nothing above it knows how frames are made.
//! - `connection/`: the supervisor (the only reconnect loop) and the session watch;
//!   `health.rs`: [`Health`], the readiness of a connection or publisher for a health endpoint.
//! - `topology/`: exchanges, queues, bindings, declared on every session.
//! - `publisher/`: the handle, the pending buffer, the task that owns the channel.
//! - `consumer/`: subscriptions with manual acks across reconnects; the idempotent consumer.
//! - `dedup/`: the dedup [`Store`] trait, SQLite and PostgreSQL backends.
//! - `dlq/`: [`DeadLetters`] — list, replay and purge a consumer's dead-letter queue.
//! - `metrics.rs`: the names of the [`metrics`] reported through the `metrics` facade
//!   (feature `metrics`, on by default; `docs/metrics.md`).
//!
//! `docs/architecture.md` has the data flow and the conventions (naming, errors, where a new
//! feature goes).
//!
//! ## Example
//!
//! ```no_run
//! use rabbit_once::{Connection, ConnectionConfig, Message, Publisher, PublisherConfig, Queue, Topology};
//!
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! let config = ConnectionConfig::new("amqp://guest:guest@127.0.0.1:5672/%2f")?
//!     .name("orders")
//!     .topology(Topology::new().queue(Queue::new("orders"))); // declared again on every session
//! let conn = Connection::start(config)?; // reconnects on its own
//! let publisher = Publisher::new(&conn, PublisherConfig::default())?;
//! let confirmation = publisher.publish(Message::to_queue("orders", r#"{"id":1}"#)).await?; // accepted
//! let confirmed = confirmation.await?; // the broker's verdict
//! println!("stored as {}", confirmed.message_id);
//! # Ok(()) }
//! ```

#![deny(missing_docs)]
#![warn(unreachable_pub)]

mod backoff;
mod config;
mod connection;
mod consumer;
#[cfg(feature = "dedup")]
mod dedup;
#[cfg(feature = "dedup")]
mod dlq;
mod error;
mod event;
mod health;
mod message;
pub mod metrics;
#[cfg(feature = "dedup")]
mod outbox;
mod publisher;
mod shutdown;
mod topology;
/// Trace context across the broker (feature `opentelemetry`).
#[cfg(feature = "opentelemetry")]
pub mod trace;
#[cfg(not(feature = "opentelemetry"))]
mod trace;
mod transport;
mod uri;

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
pub use config::{ConnectionConfig, DEFAULT_MAX_BODY_SIZE};
pub use connection::{Connection, ConnectionState, QueueInfo};
#[cfg(feature = "test-util")]
pub use consumer::DeliveryBuilder;
#[cfg(feature = "dedup")]
pub use consumer::{
    Consumer, ConsumerConfig, ConsumerStats, DeadLetter, Handler, HandlerError, HandlerFn,
    HandlerFuture, MissingId, Outcome, RetryPolicy, handler_fn,
};
pub use consumer::{Delivery, Subscription, SubscriptionConfig, SubscriptionStats};
#[cfg(feature = "postgres")]
pub use dedup::postgres::{PostgresOptions, PostgresStore};
#[cfg(feature = "sqlite")]
pub use dedup::sqlite::{SqliteOptions, SqliteStore};
#[cfg(feature = "dedup")]
pub use dedup::{DEDUP_TABLE, RUNS_TABLE, Store, StoreFailure};
#[cfg(feature = "dedup")]
pub use dlq::{
    DeadLetterInfo, DeadLetterPreview, DeadLetterSelection, DeadLetters, PurgeReport,
    ReplayFailure, ReplayReport,
};
pub use error::{Error, ProtocolError, Result};
pub use event::{Event, Events};
pub use health::{Health, NotReady};
pub use message::{Message, new_message_id};
#[cfg(feature = "postgres")]
pub use outbox::PostgresOutbox;
#[cfg(feature = "sqlite")]
pub use outbox::SqliteOutbox;
#[cfg(feature = "dedup")]
pub use outbox::{
    FAILED_ROWS_SHOWN, FailedRow, Outbox, OutboxStatus, Relay, RelayConfig, RelayStats,
};
pub use publisher::{
    Confirmation, Confirmed, PublishError, Publisher, PublisherConfig, PublisherStats,
};
/// The `sqlx` this crate builds on, for handlers' transactions.
#[cfg(feature = "dedup")]
pub use sqlx;
pub use topology::{Binding, Exchange, ExchangeKind, Overflow, Queue, QueueType, Topology};
pub use transport::{FieldTable, FieldValue, Properties};
pub use uri::Endpoint;

/// The headers rabbit-once writes: the attempt number on every retried delivery, and on
/// dead-lettered copies why and where the message failed.
pub mod headers {
    pub use crate::consumer::ATTEMPT_HEADER;
    #[cfg(feature = "dedup")]
    pub use crate::consumer::retry::{
        ATTEMPTS_HEADER, DEAD_LETTERED_AT_HEADER, GROUP_HEADER, LAST_ERROR_HEADER,
        ORIGINAL_EXCHANGE_HEADER, ORIGINAL_ROUTING_KEY_HEADER, QUEUE_HEADER, REASON_HEADER,
    };
}
