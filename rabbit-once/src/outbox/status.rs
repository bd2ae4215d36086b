//! What an operator sees of an outbox: how many rows wait, how old the oldest is, and the rows
//! the broker refused, with their reasons — and the one repair there is, discarding a row.

use super::OUTBOX_TABLE;
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
}

/// A row the broker refused: kept, tried again, and holding back the later rows of its ordering
/// key until it goes through or an operator discards it.
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
    /// When it is tried again (Unix milliseconds).
    pub retry_at_unix_ms: i64,
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
        "SELECT COUNT(*) AS pending, COUNT(retry_at) AS failed, {age_seconds} AS age \
         FROM {OUTBOX_TABLE}"
    ))
    .fetch_one(db)
    .await?;
    let pending: i64 = counts.try_get("pending")?;
    let failed: i64 = counts.try_get("failed")?;
    let age: Option<i64> = counts.try_get("age")?;
    let rows = sqlx::query::<DB>(&format!(
        "SELECT message_id, ordering_key, exchange, routing_key, attempts, last_error, retry_at \
         FROM {OUTBOX_TABLE} WHERE retry_at IS NOT NULL ORDER BY id LIMIT {}",
        DB::param(1)
    ))
    .bind(FAILED_ROWS_SHOWN as i64)
    .fetch_all(db)
    .await?;
    let failed_rows = rows
        .into_iter()
        .map(|r| {
            Ok(FailedRow {
                message_id: r.try_get("message_id")?,
                ordering_key: r.try_get("ordering_key")?,
                exchange: r.try_get("exchange")?,
                routing_key: r.try_get("routing_key")?,
                attempts: r.try_get::<i64, _>("attempts")?.max(0) as u64,
                last_error: r.try_get("last_error")?,
                retry_at_unix_ms: r.try_get::<Option<i64>, _>("retry_at")?.unwrap_or(0),
            })
        })
        .collect::<Result<Vec<_>, sqlx::Error>>()?;
    Ok(OutboxStatus {
        pending: pending.max(0) as u64,
        oldest_pending_age: age.map(|s| Duration::from_secs(s.max(0) as u64)),
        failed: failed.max(0) as u64,
        failed_rows,
    })
}

/// Deletes the row of `message_id` without publishing it; whether there was one.
pub(crate) async fn discard<'e, DB, E>(db: E, message_id: &str) -> Result<bool, sqlx::Error>
where
    DB: Dialect,
    E: Executor<'e, Database = DB>,
    for<'q> DB::Arguments<'q>: IntoArguments<'q, DB>,
    for<'q> &'q str: Encode<'q, DB> + Type<DB>,
    DB::QueryResult: super::store::RowsAffected,
{
    use super::store::RowsAffected;
    let sql = format!(
        "DELETE FROM {OUTBOX_TABLE} WHERE message_id = {}",
        DB::param(1)
    );
    Ok(sqlx::query::<DB>(&sql)
        .bind(message_id)
        .execute(db)
        .await?
        .rows_affected()
        > 0)
}

fn store_error(e: sqlx::Error) -> crate::Error {
    crate::Error::Store(std::sync::Arc::new(e))
}

#[cfg(feature = "sqlite")]
impl super::SqliteOutbox {
    /// How many rows wait, how old the oldest is, and the rows the broker refused, with their
    /// reasons (what `rabbit-once outbox status` prints).
    pub async fn status(&self) -> Result<OutboxStatus, crate::Error> {
        status(
            &self.pool,
            "CAST(strftime('%s', 'now') AS INTEGER) - MIN(created_at)",
        )
        .await
        .map_err(store_error)
    }

    /// Deletes the row of `message_id` without publishing it — for a row the broker will never
    /// take (its exchange will not exist): it stops holding back the later rows of its ordering
    /// key. Returns whether there was such a row. The message is gone for good.
    pub async fn discard(&self, message_id: &str) -> Result<bool, crate::Error> {
        discard(&self.pool, message_id).await.map_err(store_error)
    }
}

#[cfg(feature = "postgres")]
impl super::PostgresOutbox {
    /// How many rows wait, how old the oldest is, and the rows the broker refused, with their
    /// reasons (what `rabbit-once outbox status` prints).
    pub async fn status(&self) -> Result<OutboxStatus, crate::Error> {
        status(
            &self.pool,
            "CAST(EXTRACT(EPOCH FROM now() - MIN(created_at)) AS BIGINT)",
        )
        .await
        .map_err(store_error)
    }

    /// Deletes the row of `message_id` without publishing it — for a row the broker will never
    /// take (its exchange will not exist): it stops holding back the later rows of its ordering
    /// key. Returns whether there was such a row. The message is gone for good.
    pub async fn discard(&self, message_id: &str) -> Result<bool, crate::Error> {
        discard(&self.pool, message_id).await.map_err(store_error)
    }
}
