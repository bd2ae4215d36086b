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

/// The methods both outboxes share, for the database `$db`: the size limit, `enqueue`,
/// `enqueue_keyed`, `enqueue_all` (each calls the type's own `after_insert` in the caller's
/// transaction — PostgreSQL's `NOTIFY` — then wakes the relay in this process) and the tests'
/// `pending` and `remove`. A macro: the public methods keep one signature per database.
macro_rules! enqueue_methods {
    ($db:ty) => {
        /// Messages with a body over `bytes` are refused at enqueue (default 64 MiB: what the relay's
        /// default publisher takes, its `max_buffered_bytes`). Keep it no larger than the relay's
        /// publisher accepts, or such rows are refused by the relay on every try.
        pub fn max_message_size(mut self, bytes: usize) -> Self {
            self.max_message_size = bytes;
            self
        }

        /// Writes `message` into the caller's transaction: it is published if and only if the
        /// transaction commits. Gives it a UUIDv7 `message_id` unless it has one (returned; it
        /// never changes) and refuses, in the transaction, what the broker would refuse.
        pub async fn enqueue(
            &self,
            tx: &mut Transaction<'static, $db>,
            message: Message,
        ) -> Result<String, Error> {
            self.enqueue_with_key(tx, message, None).await
        }

        /// [`enqueue`](Self::enqueue) with an ordering key: rows of one key go out in the order
        /// they were written, and a row the broker refuses holds back the later rows of its key
        /// (and only those).
        pub async fn enqueue_keyed(
            &self,
            tx: &mut Transaction<'static, $db>,
            message: Message,
            ordering_key: &str,
        ) -> Result<String, Error> {
            self.enqueue_with_key(tx, message, Some(ordering_key)).await
        }

        async fn enqueue_with_key(
            &self,
            tx: &mut Transaction<'static, $db>,
            message: Message,
            ordering_key: Option<&str>,
        ) -> Result<String, Error> {
            let row = OutboxRow::new(message, ordering_key, self.max_message_size)?;
            store::insert(tx, std::slice::from_ref(&row))
                .await
                .map_err(store_error)?;
            self.after_insert(tx).await?;
            self.wake.notify_one();
            Ok(row.message_id)
        }

        /// Writes every message into the caller's transaction (one statement per 500 rows);
        /// returns their ids in order. Nothing is written if one of them is refused.
        pub async fn enqueue_all(
            &self,
            tx: &mut Transaction<'static, $db>,
            messages: impl IntoIterator<Item = Message>,
        ) -> Result<Vec<String>, Error> {
            let rows = messages
                .into_iter()
                .map(|m| OutboxRow::new(m, None, self.max_message_size))
                .collect::<Result<Vec<_>, _>>()?;
            store::insert(tx, &rows).await.map_err(store_error)?;
            self.after_insert(tx).await?;
            self.wake.notify_one();
            Ok(rows.into_iter().map(|r| r.message_id).collect())
        }

        /// Up to `limit` committed rows, in id order.
        #[cfg(test)]
        pub(crate) async fn pending(&self, limit: i64) -> Result<Vec<PendingRow>, Error> {
            let all = store::Filter {
                all: true,
                ..store::Filter::default()
            };
            store::pending(&self.pool, limit, &all).await
        }

        /// Deletes confirmed rows; returns how many there were.
        #[cfg(test)]
        pub(crate) async fn remove(&self, ids: &[i64]) -> Result<u64, Error> {
            store::remove(&self.pool, ids).await.map_err(store_error)
        }
    };
}

pub(crate) mod backend;
mod backlog;
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
