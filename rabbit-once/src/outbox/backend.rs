//! What the relay needs from an outbox table (`Backend`, implemented by `SqliteOutbox` and
//! `PostgresOutbox`), the right to publish (`Claim`: a lock file on SQLite, a session advisory
//! lock on PostgreSQL), and the sealed public `Outbox` trait.

use super::PendingRow;
use super::store::Filter;
use crate::error::Error;
use std::future::Future;
use std::sync::Arc;
#[cfg(feature = "postgres")]
use std::time::Duration;
use tokio::sync::{Notify, watch};

/// What the relay needs from an outbox table.
pub(crate) trait Backend: Clone + Send + Sync + 'static {
    /// Up to `limit` committed rows in id order, as `filter` says.
    fn pending(
        &self,
        limit: i64,
        filter: &Filter<'_>,
    ) -> impl Future<Output = Result<Vec<PendingRow>, Error>> + Send;
    /// Deletes confirmed rows.
    fn remove(&self, ids: &[i64]) -> impl Future<Output = Result<u64, Error>> + Send;
    /// Records a failed publish of a row and holds it until `retry_at` (Unix ms).
    fn record_failure(
        &self,
        id: i64,
        reason: &str,
        retry_at: i64,
    ) -> impl Future<Output = Result<(), Error>> + Send;
    /// When the first held row is due again (Unix ms).
    fn next_retry(&self) -> impl Future<Output = Result<Option<i64>, Error>> + Send;
    /// Moves a row refused once more (`reason`) to the parked table, in one transaction.
    fn park(&self, id: i64, reason: &str) -> impl Future<Output = Result<(), Error>> + Send;
    /// The rows in the table and the oldest one's age in seconds (the relay's gauges).
    fn backlog(&self) -> impl Future<Output = Result<(u64, Option<u64>), Error>> + Send;
    /// Signalled when this process enqueues.
    fn wake(&self) -> Arc<Notify>;
    /// Waits until this relay may publish, and returns the right to: on PostgreSQL a session
    /// advisory lock held on a connection of its own, so one relay at a time publishes and a
    /// standby takes over when the holder's session ends. The default: always (one process).
    fn claim(&self) -> impl Future<Output = Result<Claim, Error>> + Send {
        std::future::ready(Ok(Claim::Always))
    }

    /// Signals `wake` when another process commits rows (PostgreSQL: `LISTEN`), until
    /// `stop`. The default has no such signal: the relay's poll finds those rows.
    fn listen(
        &self,
        wake: Arc<Notify>,
        stop: watch::Receiver<bool>,
    ) -> impl Future<Output = ()> + Send {
        let _ = (wake, stop);
        std::future::ready(())
    }
}

/// The right to publish an outbox's rows.
pub(crate) enum Claim {
    /// No other relay can exist (an in-memory SQLite database: one process).
    Always,
    /// An exclusive lock on a file beside a SQLite database, held while this file stays open:
    /// the operating system releases it when the relay stops or its process dies.
    #[cfg(feature = "sqlite")]
    File(#[allow(dead_code)] std::fs::File),
    /// A PostgreSQL session that holds the outbox's advisory lock; the lock ends with it.
    #[cfg(feature = "postgres")]
    Session(sqlx::postgres::PgConnection),
}

impl std::fmt::Debug for Claim {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Claim::Always => f.write_str("Always"),
            #[cfg(feature = "sqlite")]
            Claim::File(_) => f.write_str("File"),
            #[cfg(feature = "postgres")]
            Claim::Session(_) => f.write_str("Session"),
        }
    }
}

impl Claim {
    /// Whether the right still holds (the lock's session answers). Checked before every read,
    /// so a relay whose session died stops publishing before a standby can have taken over
    /// (which needs that session to be gone, and then its own retry interval).
    pub(super) async fn holds(&mut self) -> bool {
        match self {
            Claim::Always => true,
            #[cfg(feature = "sqlite")]
            Claim::File(_) => true,
            #[cfg(feature = "postgres")]
            Claim::Session(c) => matches!(
                tokio::time::timeout(HOLDS_TIMEOUT, sqlx::Connection::ping(c)).await,
                Ok(Ok(()))
            ),
        }
    }
}

/// How long a check of the lock's session may take before the relay gives the right up (the
/// server ends a silent session only after ~25 s of keepalive probes: see `claim`).
#[cfg(feature = "postgres")]
const HOLDS_TIMEOUT: Duration = Duration::from_secs(5);

/// An outbox a [`Relay`](crate::Relay) publishes: [`SqliteOutbox`](crate::SqliteOutbox) or
/// [`PostgresOutbox`](crate::PostgresOutbox). Sealed: the relay relies on how each one reads,
/// locks and wakes.
#[allow(private_bounds)] // the sealed-trait idiom: `Backend` is the crate's own
pub trait Outbox: Backend {}

impl<T: Backend> Outbox for T {}
