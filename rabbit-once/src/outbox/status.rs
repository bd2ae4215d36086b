//! What an operator sees of an outbox: how many rows wait, how old the oldest is, the rows the
//! broker refused and the rows parked after too many refusals, with their reasons — and the
//! repairs: requeue a parked row, discard a row.

use super::store::{MESSAGE_COLUMNS, RowsAffected};
use super::{OUTBOX_TABLE, PARKED_TABLE};
use crate::dedup::sql::Dialect;
use sqlx::{ColumnIndex, Decode, Encode, Executor, IntoArguments, Row, Type};
use std::time::Duration;

/// How many failed rows [`OutboxStatus::failed_rows`] lists (the oldest first).
pub const FAILED_ROWS_SHOWN: usize = 100;

/// An outbox's state: see [`SqliteOutbox::status`](crate::SqliteOutbox::status) and
/// [`PostgresOutbox::status`](crate::PostgresOutbox::status).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct OutboxStatus {
    /// Committed rows not yet confirmed by the broker (the failed ones included).
    pub pending: u64,
    /// How long ago the oldest pending row was written (whole seconds); `None` when empty.
    pub oldest_pending_age: Option<Duration>,
    /// Rows the broker refused at least once, held until their next try.
    pub failed: u64,
    /// The first [`FAILED_ROWS_SHOWN`] of them, in the order they were written.
    pub failed_rows: Vec<FailedRow>,
    /// When the first of them is tried again (Unix milliseconds).
    pub next_retry_unix_ms: Option<i64>,
    /// Pending rows held back behind a refused row of their ordering key.
    pub held_back: u64,
    /// Rows parked after [`RelayConfig::park_after`](crate::RelayConfig::park_after) refusals:
    /// out of the outbox, waiting for `requeue` or `discard`.
    pub parked: u64,
    /// The first [`FAILED_ROWS_SHOWN`] of them, in the order they were parked.
    pub parked_rows: Vec<FailedRow>,
}

/// A row the broker refused: in the outbox, kept, tried again, and holding back the later rows of
/// its ordering key until it goes through or is parked or discarded; or a parked row.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct FailedRow {
    /// The message's id (never changes).
    pub message_id: String,
    /// Its ordering key, if it has one.
    pub ordering_key: Option<String>,
    /// Where it is published to.
    pub exchange: String,
    /// Its routing key.
    pub routing_key: String,
    /// Failed publishes so far.
    pub attempts: u64,
    /// Why the last one failed.
    pub last_error: Option<String>,
    /// When it is tried again (Unix milliseconds); `None` for a parked row.
    pub retry_at_unix_ms: Option<i64>,
}

/// Reads the status; `age_seconds` is the database's expression for "seconds since
/// `MIN(created_at)`" (the column's type differs between the two).
pub(crate) async fn status<'e, DB, E>(db: E, age_seconds: &str) -> Result<OutboxStatus, sqlx::Error>
where
    DB: Dialect,
    E: Executor<'e, Database = DB> + Copy,
    for<'q> DB::Arguments<'q>: IntoArguments<'q, DB>,
    for<'q> i64: Encode<'q, DB> + Type<DB> + Decode<'q, DB>,
    for<'r> Option<i64>: Decode<'r, DB>,
    for<'r> String: Decode<'r, DB> + Type<DB>,
    for<'r> Option<String>: Decode<'r, DB>,
    for<'a> &'a str: ColumnIndex<DB::Row>,
{
    let counts = sqlx::query::<DB>(&format!(
        "SELECT COUNT(*) AS pending, COUNT(retry_at) AS failed, {age_seconds} AS age, \
         MIN(retry_at) AS next_retry, (SELECT COUNT(*) FROM {PARKED_TABLE}) AS parked, \
         (SELECT COUNT(*) FROM {OUTBOX_TABLE} o WHERE o.retry_at IS NULL AND EXISTS \
         (SELECT 1 FROM {OUTBOX_TABLE} h WHERE h.ordering_key = o.ordering_key \
         AND h.retry_at IS NOT NULL)) AS held_back FROM {OUTBOX_TABLE}"
    ))
    .fetch_one(db)
    .await?;
    let pending: i64 = counts.try_get("pending")?;
    let failed: i64 = counts.try_get("failed")?;
    let age: Option<i64> = counts.try_get("age")?;
    let parked: i64 = counts.try_get("parked")?;
    let next_retry: Option<i64> = counts.try_get("next_retry")?;
    let held_back: i64 = counts.try_get("held_back")?;
    let failed_rows = rows_of(
        db,
        &format!(
            "SELECT {FAILED_COLUMNS}, retry_at FROM {OUTBOX_TABLE} WHERE retry_at IS NOT NULL \
             ORDER BY id LIMIT {}",
            DB::param(1)
        ),
    )
    .await?;
    let parked_rows = rows_of(
        db,
        &format!(
            "SELECT {FAILED_COLUMNS}, NULL AS retry_at FROM {PARKED_TABLE} ORDER BY id LIMIT {}",
            DB::param(1)
        ),
    )
    .await?;
    Ok(OutboxStatus {
        pending: pending.max(0) as u64,
        oldest_pending_age: age.map(|s| Duration::from_secs(s.max(0) as u64)),
        failed: failed.max(0) as u64,
        failed_rows,
        next_retry_unix_ms: next_retry,
        held_back: held_back.max(0) as u64,
        parked: parked.max(0) as u64,
        parked_rows,
    })
}

/// The columns of a [`FailedRow`] (and `retry_at`).
const FAILED_COLUMNS: &str =
    "message_id, ordering_key, exchange, routing_key, attempts, last_error";

/// The first [`FAILED_ROWS_SHOWN`] rows `sql` selects, as [`FailedRow`]s.
async fn rows_of<'e, DB, E>(db: E, sql: &str) -> Result<Vec<FailedRow>, sqlx::Error>
where
    DB: Dialect,
    E: Executor<'e, Database = DB>,
    for<'q> DB::Arguments<'q>: IntoArguments<'q, DB>,
    for<'q> i64: Encode<'q, DB> + Type<DB> + Decode<'q, DB>,
    for<'r> Option<i64>: Decode<'r, DB>,
    for<'r> String: Decode<'r, DB> + Type<DB>,
    for<'r> Option<String>: Decode<'r, DB>,
    for<'a> &'a str: ColumnIndex<DB::Row>,
{
    let rows = sqlx::query::<DB>(sql)
        .bind(FAILED_ROWS_SHOWN as i64)
        .fetch_all(db)
        .await?;
    rows.into_iter()
        .map(|r| {
            Ok(FailedRow {
                message_id: r.try_get("message_id")?,
                ordering_key: r.try_get("ordering_key")?,
                exchange: r.try_get("exchange")?,
                routing_key: r.try_get("routing_key")?,
                attempts: r.try_get::<i64, _>("attempts")?.max(0) as u64,
                last_error: r.try_get("last_error")?,
                retry_at_unix_ms: r.try_get("retry_at")?,
            })
        })
        .collect()
}

/// Deletes the rows of `message_id` — pending or parked — without publishing them; how many.
pub(crate) async fn discard<DB>(pool: &sqlx::Pool<DB>, message_id: &str) -> Result<u64, sqlx::Error>
where
    DB: Dialect,
    for<'c> &'c mut DB::Connection: Executor<'c, Database = DB>,
    for<'q> DB::Arguments<'q>: IntoArguments<'q, DB>,
    for<'q> &'q str: Encode<'q, DB> + Type<DB>,
    DB::QueryResult: RowsAffected,
{
    let mut tx = pool.begin().await?;
    let mut n = 0;
    for table in [OUTBOX_TABLE, PARKED_TABLE] {
        let sql = format!("DELETE FROM {table} WHERE message_id = {}", DB::param(1));
        n += sqlx::query::<DB>(&sql)
            .bind(message_id)
            .execute(&mut *tx)
            .await?
            .rows_affected();
    }
    tx.commit().await?;
    Ok(n)
}

/// Moves the oldest parked row of `message_id` back into the outbox (a new id: it goes out after
/// the rows already there, attempts from zero); 1, or 0 when none is parked. The outbox holds one
/// row per id, so a second parked row of the same id waits for the next requeue.
pub(crate) async fn requeue<DB>(pool: &sqlx::Pool<DB>, message_id: &str) -> Result<u64, sqlx::Error>
where
    DB: Dialect,
    for<'c> &'c mut DB::Connection: Executor<'c, Database = DB>,
    for<'q> DB::Arguments<'q>: IntoArguments<'q, DB>,
    for<'q> &'q str: Encode<'q, DB> + Type<DB>,
    DB::QueryResult: RowsAffected,
{
    let oldest = format!(
        "(SELECT MIN(id) FROM {PARKED_TABLE} WHERE message_id = {})",
        DB::param(1)
    );
    let mut tx = pool.begin().await?;
    let n = sqlx::query::<DB>(&format!(
        "INSERT INTO {OUTBOX_TABLE} ({MESSAGE_COLUMNS}) SELECT {MESSAGE_COLUMNS} \
         FROM {PARKED_TABLE} WHERE id = {oldest}"
    ))
    .bind(message_id)
    .execute(&mut *tx)
    .await?
    .rows_affected();
    sqlx::query::<DB>(&format!("DELETE FROM {PARKED_TABLE} WHERE id = {oldest}"))
        .bind(message_id)
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;
    Ok(n)
}

fn store_error(e: sqlx::Error) -> crate::Error {
    crate::Error::Store(std::sync::Arc::new(e))
}

/// The operator's methods, the same on both outboxes.
macro_rules! operator_methods {
    ($age:expr, $after_requeue:expr) => {
        /// How many rows wait, how old the oldest is, the rows the broker refused and the rows
        /// parked after too many refusals, with their reasons (what `rabbit-once outbox status`
        /// prints).
        pub async fn status(&self) -> Result<OutboxStatus, crate::Error> {
            status(&self.pool, $age).await.map_err(store_error)
        }

        /// Deletes the rows of `message_id` — pending, held or parked — without publishing them:
        /// for a message the broker will never take (its exchange will not exist). A held row
        /// stops holding back the later rows of its ordering key. Returns whether there was
        /// such a row. The message is gone for good.
        pub async fn discard(&self, message_id: &str) -> Result<bool, crate::Error> {
            Ok(discard(&self.pool, message_id).await.map_err(store_error)? > 0)
        }

        /// Moves the parked row of `message_id` back into the outbox, once the cause of its
        /// refusals is fixed: it is published after the rows already there, under the same
        /// `message_id`, attempts from zero. Returns 1, or 0 when nothing is parked under that
        /// id (with two parked rows of one id, the older goes first: call again after it is
        /// published). Fails if a row with that id is pending in the outbox.
        pub async fn requeue(&self, message_id: &str) -> Result<u64, crate::Error> {
            let n = requeue(&self.pool, message_id).await.map_err(store_error)?;
            if n > 0 {
                #[allow(clippy::redundant_closure_call)]
                ($after_requeue)(self).await?;
            }
            Ok(n)
        }
    };
}

#[cfg(feature = "sqlite")]
impl super::SqliteOutbox {
    operator_methods!(
        super::store::SQLITE_AGE_SECONDS,
        async |o: &Self| -> Result<(), crate::Error> {
            o.wake.notify_one();
            Ok(())
        }
    );
}

#[cfg(feature = "postgres")]
impl super::PostgresOutbox {
    operator_methods!(
        super::store::POSTGRES_AGE_SECONDS,
        async |o: &Self| -> Result<(), crate::Error> {
            o.wake.notify_one();
            // Relays in other processes too.
            sqlx::query("SELECT pg_notify($1, '')")
                .bind(super::postgres::CHANNEL)
                .execute(&o.pool)
                .await
                .map_err(store_error)?;
            Ok(())
        }
    );
}
