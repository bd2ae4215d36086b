//! The transactional outbox (issue 10, being built): a message becomes a row written in the
//! caller's own database transaction, so it is published if and only if that transaction
//! commits, and a relay publishes committed rows through the [`Publisher`](crate::Publisher).
//!
//! The table is the set of messages not yet confirmed by the broker (no cursor: a row whose
//! transaction commits late — id 7 after id 8 — is simply still there at the next read). A row is
//! deleted only after its confirm.
//!
//! - `row`: a [`Message`](crate::Message) as a row and back (properties kept as their AMQP
//!   encoding: lossless, headers and non-UTF-8 ids included);
//! - `store`: the SQL, written once for both databases (insert in the caller's transaction, read
//!   the pending set in id order, delete confirmed rows);
//! - `sqlite`, `postgres`: the table and its migrations per database;
//! - `status`: what an operator sees (pending, oldest age, refused rows) and `discard`;
//! - `backend`: what the relay needs of a table, the right to publish (`Claim`), the sealed
//!   `Outbox` trait; `config`: `RelayConfig` and `RelayStats`;
//! - `relay`: the task that publishes committed rows and deletes them once confirmed.
//!

pub(crate) mod backend;
mod config;
pub(crate) mod relay;
mod row;
mod status;
pub(crate) mod store;

#[cfg(feature = "postgres")]
mod postgres;
#[cfg(feature = "postgres")]
pub use postgres::PostgresOutbox;
#[cfg(feature = "sqlite")]
mod sqlite;
#[cfg(feature = "sqlite")]
pub use sqlite::SqliteOutbox;

pub use backend::Outbox;
pub use config::{RelayConfig, RelayStats};
pub use relay::Relay;
pub(crate) use row::{OutboxRow, PendingRow};
pub use status::{FAILED_ROWS_SHOWN, FailedRow, OutboxStatus};

/// The table of messages waiting for the broker's confirm.
pub(crate) const OUTBOX_TABLE: &str = "rabbit_once_outbox";

/// Rows the relay gave up on after `RelayConfig::park_after` refusals.
pub(crate) const PARKED_TABLE: &str = "rabbit_once_outbox_parked";

/// The table that records which migrations of the outbox table ran.
pub(crate) const OUTBOX_SCHEMA_TABLE: &str = "rabbit_once_outbox_schema";

/// Rows per INSERT statement (7 bound values each: well under both databases' limits).
const CHUNK: usize = 500;

#[cfg(all(test, feature = "sqlite", feature = "postgres"))]
mod tests;
