//! The outbox table in SQLite. One writer at a time: ids are handed out in commit order here,
//! but nothing relies on it (the relay reads the pending set, not past a cursor).

use super::{OUTBOX_SCHEMA_TABLE, OutboxRow, PendingRow, store};
use crate::dedup::sql;
use crate::error::Error;
use crate::message::Message;
use sqlx::sqlite::SqlitePool;
use sqlx::{Sqlite, Transaction};

const MIGRATIONS: &[&[&str]] = &[
    &["CREATE TABLE IF NOT EXISTS rabbit_once_outbox (
        id           INTEGER PRIMARY KEY AUTOINCREMENT,
        message_id   TEXT NOT NULL UNIQUE,
        ordering_key TEXT,
        exchange     TEXT NOT NULL,
        routing_key  TEXT NOT NULL,
        mandatory    INTEGER NOT NULL,
        properties   BLOB NOT NULL,
        body         BLOB NOT NULL,
        attempts     INTEGER NOT NULL DEFAULT 0,
        last_error   TEXT,
        retry_at     BIGINT,
        created_at   INTEGER NOT NULL DEFAULT (CAST(strftime('%s', 'now') AS INTEGER))
    )"],
    // 2: the held rows, by key and by due time (partial: only held rows are in them, so the
    // writers' inserts never touch them). The relay's reads leave out the keys of held rows
    // with an anti-join on the first; `next_retry` and the retry read use the second.
    &[
        "CREATE INDEX IF NOT EXISTS rabbit_once_outbox_held_key
            ON rabbit_once_outbox (ordering_key, id) WHERE retry_at IS NOT NULL",
        "CREATE INDEX IF NOT EXISTS rabbit_once_outbox_held_at
            ON rabbit_once_outbox (retry_at) WHERE retry_at IS NOT NULL",
    ],
    // 3: rows refused `RelayConfig::park_after` times, out of the relay's way until an
    // operator requeues or discards them.
    // Not unique by message_id: a message with the id of a parked one may be enqueued, and
    // be parked too; both are kept (requeue takes the older first, discard takes both).
    &[
        "CREATE TABLE IF NOT EXISTS rabbit_once_outbox_parked (
        id           INTEGER PRIMARY KEY AUTOINCREMENT,
        message_id   TEXT NOT NULL,
        ordering_key TEXT,
        exchange     TEXT NOT NULL,
        routing_key  TEXT NOT NULL,
        mandatory    INTEGER NOT NULL,
        properties   BLOB NOT NULL,
        body         BLOB NOT NULL,
        attempts     INTEGER NOT NULL,
        last_error   TEXT,
        created_at   INTEGER NOT NULL,
        parked_at    INTEGER NOT NULL DEFAULT (CAST(strftime('%s', 'now') AS INTEGER))
    )",
        "CREATE INDEX IF NOT EXISTS rabbit_once_outbox_parked_message_id
            ON rabbit_once_outbox_parked (message_id)",
    ],
    // 4: the keyed rows that are not held, by key, for `RelayConfig::strict_key_order`'s read
    // (is a row of the key before this one left?). Partial: rows without a key never touch it,
    // and, not held rows only, it is of no use to the held-key test, whose plan stays on the
    // small index of held rows (with the held rows in it, SQLite took it for that test and
    // walked every row of the key: 70 msg/s with 100 keys).
    &["CREATE INDEX IF NOT EXISTS rabbit_once_outbox_key
            ON rabbit_once_outbox (ordering_key, id)
            WHERE ordering_key IS NOT NULL AND retry_at IS NULL"],
];

/// The outbox in a SQLite database (the pool of the [`SqliteStore`](crate::SqliteStore) whose
/// transactions enqueue).
#[derive(Debug, Clone)]
pub struct SqliteOutbox {
    pub(super) pool: SqlitePool,
    max_message_size: usize,
    /// Signalled on every enqueue in this process: the relay reads again.
    pub(super) wake: std::sync::Arc<tokio::sync::Notify>,
}

impl SqliteOutbox {
    /// An outbox on `pool` — the pool of the store whose transactions enqueue (e.g.
    /// [`SqliteStore::pool`](crate::SqliteStore::pool)).
    pub fn new(pool: SqlitePool) -> Self {
        SqliteOutbox {
            pool,
            max_message_size: 64 << 20,
            wake: std::sync::Arc::new(tokio::sync::Notify::new()),
        }
    }

    /// Creates the table if missing (idempotent; safe from several processes).
    pub async fn migrate(&self) -> Result<(), sqlx::Error> {
        let mut tx = self.pool.begin_with("BEGIN IMMEDIATE").await?;
        sql::migrate(&mut tx, OUTBOX_SCHEMA_TABLE, MIGRATIONS).await?;
        tx.commit().await
    }

    enqueue_methods!(Sqlite);

    /// Nothing to add to the caller's transaction: the relay in this process is woken.
    async fn after_insert(&self, _tx: &mut Transaction<'static, Sqlite>) -> Result<(), Error> {
        Ok(())
    }
}

impl super::backend::Backend for SqliteOutbox {
    async fn pending(
        &self,
        limit: i64,
        filter: &store::Filter<'_>,
    ) -> Result<Vec<PendingRow>, Error> {
        store::pending(&self.pool, limit, filter).await
    }

    /// Deletes confirmed rows without waiting for the disk, in WAL mode (`synchronous = NORMAL`
    /// for this statement: the commit is then not synced; the next synced commit or checkpoint
    /// makes it durable; with a rollback journal the delete stays synced). Losing such a delete
    /// in a power cut only brings confirmed rows back — published again, duplicates, never
    /// loss — and the relay holds SQLite's one write lock, which the callers' transactions wait
    /// for, for far less time. The connection's
    /// own setting is put back before it returns to the pool; if that fails (or the delete is
    /// dropped halfway), the connection is closed instead.
    async fn remove(&self, ids: &[i64]) -> Result<u64, Error> {
        /// Closes the connection instead of giving it back unless its setting was put back
        /// (also when the delete is dropped halfway).
        struct Unsynced(Option<sqlx::pool::PoolConnection<Sqlite>>);
        impl Drop for Unsynced {
            fn drop(&mut self) {
                if let Some(conn) = self.0.take() {
                    drop(conn.detach());
                }
            }
        }
        let mut conn = self.pool.acquire().await.map_err(store_error)?;
        // Only in WAL mode: with a rollback journal, `NORMAL` risks more than a lost delete.
        let journal: String = sqlx::query_scalar("PRAGMA journal_mode")
            .fetch_one(&mut *conn)
            .await
            .map_err(store_error)?;
        if !journal.eq_ignore_ascii_case("wal") {
            return store::remove_on::<Sqlite>(&mut conn, ids)
                .await
                .map_err(store_error);
        }
        let mut guard = Unsynced(Some(conn));
        let conn = guard.0.as_mut().expect("the connection");
        let before: i64 = sqlx::query_scalar("PRAGMA synchronous")
            .fetch_one(&mut **conn)
            .await
            .map_err(store_error)?;
        sqlx::query("PRAGMA synchronous = NORMAL")
            .execute(&mut **conn)
            .await
            .map_err(store_error)?;
        let removed = store::remove_on::<Sqlite>(conn, ids).await;
        sqlx::query(&format!("PRAGMA synchronous = {before}"))
            .execute(&mut **conn)
            .await
            .map_err(store_error)?;
        guard.0.take(); // back to the pool, as it came
        removed.map_err(store_error)
    }

    async fn record_failure(&self, id: i64, reason: &str, retry_at: i64) -> Result<(), Error> {
        store::record_failure(&self.pool, id, reason, retry_at)
            .await
            .map_err(store_error)
    }

    async fn next_retry(&self) -> Result<Option<i64>, Error> {
        store::next_retry(&self.pool).await.map_err(store_error)
    }

    async fn backlog(&self) -> Result<(u64, Option<u64>), Error> {
        store::backlog(&self.pool, store::SQLITE_AGE_SECONDS)
            .await
            .map_err(store_error)
    }

    async fn park(&self, id: i64, reason: &str) -> Result<(), Error> {
        store::park(&self.pool, id, reason)
            .await
            .map_err(store_error)
    }

    fn wake(&self) -> std::sync::Arc<tokio::sync::Notify> {
        self.wake.clone()
    }

    /// One relay at a time per database file, across processes: an exclusive lock on
    /// `<database>-relay.lock` (`flock`), kept while the relay runs and released by the
    /// operating system when it stops or its process dies — a standby takes over at its next
    /// try. `Err(Timeout)` means another relay holds it. An in-memory database has no file and
    /// no other process: always.
    async fn claim(&self) -> Result<super::backend::Claim, Error> {
        let db = self.pool.connect_options().get_filename().to_owned();
        let name = db.to_string_lossy();
        if name.is_empty() || name == ":memory:" || name.starts_with("file::memory:") {
            return Ok(super::backend::Claim::Always);
        }
        let mut lock = db.into_os_string();
        lock.push("-relay.lock");
        let lock = std::path::PathBuf::from(lock);
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock)
            .map_err(|e| Error::Store(std::sync::Arc::new(e)))?;
        match file.try_lock() {
            Ok(()) => Ok(super::backend::Claim::File(file)),
            Err(std::fs::TryLockError::WouldBlock) => {
                Err(Error::Timeout("another relay publishes this outbox".into()))
            }
            Err(std::fs::TryLockError::Error(e)) => Err(Error::Store(std::sync::Arc::new(e))),
        }
    }
}

fn store_error(e: sqlx::Error) -> Error {
    Error::Store(std::sync::Arc::new(e))
}
