//! Dedup stores: the table of processed `(consumer_group, message_id)` pairs, written in the same
//! transaction as the handler's own writes.
//!
//! - this file: the [`Store`] trait every backend implements, and error classification;
//! - `sql`: the SQL both backends run, written once (the migration loop, statements that differ
//!   only in their bind parameters);
//! - [`sqlite`]: the embedded default (one file, WAL, busy timeout) — feature `sqlite`;
//!   `segments` (sealed, read-only parts of its table once it grows, each behind a `filter`,
//!   under `covers`: a tree of filters, so an id costs a few lookups however many segments);
//! - [`postgres`]: a pool, safe for many consumer processes at once — feature `postgres`.
//!
//! The unique key is the whole point: a second insert of the same pair is a duplicate. Under
//! PostgreSQL a concurrent insert of a pair another transaction holds waits for that transaction:
//! if it commits, this one sees a duplicate; if it rolls back, this one wins.

#[cfg(any(feature = "sqlite", feature = "postgres"))]
mod covers;
#[cfg(any(feature = "sqlite", feature = "postgres"))]
mod filter;
#[cfg(feature = "postgres")]
pub(crate) mod postgres;
#[cfg(any(feature = "sqlite", feature = "postgres"))]
mod segments;
#[cfg(any(feature = "sqlite", feature = "postgres"))]
pub(crate) mod sql;
#[cfg(feature = "sqlite")]
pub(crate) mod sqlite;

use std::future::Future;
use std::time::SystemTime;

/// The processed-messages table's name (the same in every backend).
pub const DEDUP_TABLE: &str = "rabbit_once_processed";

/// The table of unfinished handler runs of redelivered messages (the crash-loop bound).
pub const RUNS_TABLE: &str = "rabbit_once_runs";

/// How a failed database call should be treated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StoreFailure {
    /// The database is unreachable or went away: hold the work, ack nothing, try again later.
    Unavailable,
    /// A lock conflict (deadlock, busy): roll back and run the same work again now.
    Conflict,
    /// Anything else: a bug or bad data in this transaction.
    Other,
}

/// A dedup store. Implemented for SQLite and PostgreSQL; each call that writes takes the
/// caller's transaction, so the dedup record commits or rolls back with the handler's writes.
pub trait Store: Clone + Send + Sync + 'static {
    /// The sqlx database: the handler's transaction is a `sqlx::Transaction<'static, Db>`.
    type Db: sqlx::Database;

    /// Creates the table and index if missing (idempotent; safe from several processes).
    fn migrate(&self) -> impl Future<Output = Result<(), sqlx::Error>> + Send;

    /// Begins a transaction that will hold the dedup record and the handler's writes.
    fn begin(
        &self,
    ) -> impl Future<Output = Result<sqlx::Transaction<'static, Self::Db>, sqlx::Error>> + Send;

    /// Inserts `(group, id)` for each id (all distinct) in `tx`; returns which ids were new
    /// (`true`) and which were already recorded (`false`, duplicates), in the order given.
    fn claim<'a>(
        &'a self,
        tx: &'a mut sqlx::Transaction<'static, Self::Db>,
        group: &'a str,
        ids: &'a [&'a str],
    ) -> impl Future<Output = Result<Vec<bool>, sqlx::Error>> + Send + 'a;

    /// Whether `tx` still holds `(group, id)`: checked just before commit, so a transaction the
    /// database aborted behind the handler's back (PostgreSQL commits an aborted transaction as
    /// a rollback without an error) is never taken for a commit.
    fn holds<'a>(
        &'a self,
        tx: &'a mut sqlx::Transaction<'static, Self::Db>,
        group: &'a str,
        id: &'a str,
    ) -> impl Future<Output = Result<bool, sqlx::Error>> + Send + 'a;

    /// Counts one more handler run of a *redelivered* message, in a short transaction of its
    /// own that commits before the handler starts; returns the runs counted so far (1 the first
    /// time). A process that dies inside the handler every time leaves the count growing, so
    /// the consumer can dead-letter the message instead of crash-looping the fleet.
    fn count_run<'a>(
        &'a self,
        group: &'a str,
        id: &'a str,
    ) -> impl Future<Output = Result<u32, sqlx::Error>> + Send + 'a;

    /// Forgets the counted runs of `id`: in `tx` when the message commits, so the count and
    /// the effect go together.
    fn forget_runs<'a>(
        &'a self,
        tx: &'a mut sqlx::Transaction<'static, Self::Db>,
        group: &'a str,
        id: &'a str,
    ) -> impl Future<Output = Result<(), sqlx::Error>> + Send + 'a;

    /// Deletes up to `limit` records of `group` older than `before`; returns how many.
    fn purge(
        &self,
        group: &str,
        before: SystemTime,
        limit: u32,
    ) -> impl Future<Output = Result<u64, sqlx::Error>> + Send;

    /// Whether the database answers.
    fn ping(&self) -> impl Future<Output = Result<(), sqlx::Error>> + Send;

    /// How to treat an error from this backend.
    fn classify(e: &sqlx::Error) -> StoreFailure;

    /// A short name for logs ("sqlite", "postgres").
    fn backend(&self) -> &'static str;
}

/// Errors every backend shares: I/O and pool failures mean the database is not there.
#[cfg(any(feature = "sqlite", feature = "postgres"))]
pub(crate) fn classify_common(e: &sqlx::Error) -> Option<StoreFailure> {
    match e {
        sqlx::Error::Io(_)
        | sqlx::Error::Tls(_)
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::Protocol(_) => Some(StoreFailure::Unavailable),
        #[cfg(feature = "sqlite")]
        sqlx::Error::WorkerCrashed => Some(StoreFailure::Unavailable),
        _ => None,
    }
}

/// Seconds since the Unix epoch, as stored in `processed_at`.
#[cfg(any(feature = "sqlite", feature = "postgres"))]
pub(crate) fn unix_seconds(t: SystemTime) -> i64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or(std::time::Duration::ZERO)
        .as_secs() as i64
}

/// Finds a `sqlx::Error` in a handler's error chain, so a database failure inside a handler
/// can be told apart from a failure of the handler's own logic.
pub(crate) fn find_sqlx_error<'a>(
    e: &'a (dyn std::error::Error + 'static),
) -> Option<&'a sqlx::Error> {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = cur {
        if let Some(s) = err.downcast_ref::<sqlx::Error>() {
            return Some(s);
        }
        cur = err.source();
    }
    None
}
