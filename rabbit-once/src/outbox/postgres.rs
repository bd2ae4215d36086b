//! The outbox table in PostgreSQL. Ids are handed out at insert, not at commit: a transaction
//! holding id 7 can commit after one holding id 8, which is why the relay reads the pending set
//! and never a cursor.

use super::{OUTBOX_SCHEMA_TABLE, OutboxRow, PendingRow, store};
use crate::dedup::sql;
use crate::error::Error;
use crate::message::Message;
use sqlx::postgres::PgPool;
use sqlx::{Postgres, Transaction};

const MIGRATIONS: &[&[&str]] = &[
    &["CREATE TABLE IF NOT EXISTS rabbit_once_outbox (
        id           BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
        message_id   TEXT NOT NULL UNIQUE,
        ordering_key TEXT,
        exchange     TEXT NOT NULL,
        routing_key  TEXT NOT NULL,
        mandatory    BOOLEAN NOT NULL,
        properties   BYTEA NOT NULL,
        body         BYTEA NOT NULL,
        attempts     BIGINT NOT NULL DEFAULT 0,
        last_error   TEXT,
        retry_at     BIGINT,
        created_at   TIMESTAMPTZ NOT NULL DEFAULT now()
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
        id           BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
        message_id   TEXT NOT NULL,
        ordering_key TEXT,
        exchange     TEXT NOT NULL,
        routing_key  TEXT NOT NULL,
        mandatory    BOOLEAN NOT NULL,
        properties   BYTEA NOT NULL,
        body         BYTEA NOT NULL,
        attempts     BIGINT NOT NULL,
        last_error   TEXT,
        created_at   TIMESTAMPTZ NOT NULL,
        parked_at    TIMESTAMPTZ NOT NULL DEFAULT now()
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

/// Serializes the outbox's migrations across processes (the dedup tables use another lock).
const MIGRATION_LOCK: i64 = 0x7261_6262_6974_6f75;

/// The outbox in a PostgreSQL database (the pool of the [`PostgresStore`](crate::PostgresStore) whose
/// transactions enqueue).
#[derive(Debug, Clone)]
pub struct PostgresOutbox {
    pub(super) pool: PgPool,
    max_message_size: usize,
    /// Signalled on every enqueue in this process: the relay reads again.
    pub(super) wake: std::sync::Arc<tokio::sync::Notify>,
}

impl PostgresOutbox {
    /// An outbox on `pool` — the pool of the store whose transactions enqueue (e.g.
    /// [`PostgresStore::pool`](crate::PostgresStore::pool)).
    pub fn new(pool: PgPool) -> Self {
        PostgresOutbox {
            pool,
            max_message_size: 64 << 20,
            wake: std::sync::Arc::new(tokio::sync::Notify::new()),
        }
    }

    /// Creates the table if missing (idempotent; safe from several processes). The table goes
    /// in the pool's `search_path`: on a [`PostgresStore`](crate::PostgresStore)'s pool with a
    /// schema, migrate the store first (it creates the schema).
    pub async fn migrate(&self) -> Result<(), sqlx::Error> {
        let mut tx = self.pool.begin().await?;
        sqlx::query("SELECT pg_advisory_xact_lock($1)")
            .bind(MIGRATION_LOCK)
            .execute(&mut *tx)
            .await?;
        sql::migrate(&mut tx, OUTBOX_SCHEMA_TABLE, MIGRATIONS).await?;
        tx.commit().await
    }

    enqueue_methods!(Postgres);

    /// `NOTIFY` in the caller's transaction: relays in every process wake when it commits.
    async fn after_insert(&self, tx: &mut Transaction<'static, Postgres>) -> Result<(), Error> {
        notify(tx).await
    }
}

impl super::backend::Backend for PostgresOutbox {
    async fn pending(
        &self,
        limit: i64,
        filter: &store::Filter<'_>,
    ) -> Result<Vec<PendingRow>, Error> {
        store::pending(&self.pool, limit, filter).await
    }

    /// Deletes confirmed rows without waiting for the WAL flush (`synchronous_commit = off`,
    /// for this transaction only): a delete lost in a crash only brings confirmed rows back —
    /// published again, duplicates, never loss.
    async fn remove(&self, ids: &[i64]) -> Result<u64, Error> {
        let mut tx = self.pool.begin().await.map_err(store_error)?;
        sqlx::query("SET LOCAL synchronous_commit = off")
            .execute(&mut *tx)
            .await
            .map_err(store_error)?;
        let n = store::remove_on::<Postgres>(&mut tx, ids)
            .await
            .map_err(store_error)?;
        tx.commit().await.map_err(store_error)?;
        Ok(n)
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
        store::backlog(&self.pool, store::POSTGRES_AGE_SECONDS)
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

    /// One relay at a time per outbox table: `pg_try_advisory_lock` on a connection taken out
    /// of the pool (so the lock lives exactly as long as that session: it ends when the relay
    /// stops, dies, or loses the connection). Not through PgBouncer in transaction mode: a
    /// session lock needs a session. `Err(Timeout)` means another relay holds it.
    async fn claim(&self) -> Result<super::backend::Claim, Error> {
        let mut conn = self.pool.acquire().await.map_err(store_error)?;
        let got: bool =
            sqlx::query_scalar("SELECT pg_try_advisory_lock($1, hashtext(current_schema()))")
                .bind(RELAY_LOCK)
                .fetch_one(&mut *conn)
                .await
                .map_err(store_error)?;
        if got {
            // Out of the pool: the lock must end with this session, never be handed on.
            let mut conn = conn.detach();
            // The server notices a vanished relay host within ~25 s (keepalive probes), or 30 s
            // of unacknowledged data, and ends the session, which frees the lock for a standby.
            // The relay itself gives the right up sooner: when a check of this session gets no
            // answer within `Claim`'s 5 s (a standby cannot take over before the server ended
            // the session). Ignored on a Unix socket (no TCP).
            for set in [
                "SET tcp_keepalives_idle = 10",
                "SET tcp_keepalives_interval = 5",
                "SET tcp_keepalives_count = 3",
                "SET tcp_user_timeout = 30000",
            ] {
                sqlx::query(set)
                    .execute(&mut conn)
                    .await
                    .map_err(store_error)?;
            }
            Ok(super::backend::Claim::Session(conn))
        } else {
            Err(Error::Timeout("another relay publishes this outbox".into()))
        }
    }

    /// Wakes the relay on every commit that wrote rows, from any process. Notifications sent
    /// while the listener is reconnecting are lost, so every reconnect and error wakes it too
    /// (a full read), and the relay's poll stays as the safety net.
    async fn listen(
        &self,
        wake: std::sync::Arc<tokio::sync::Notify>,
        mut stop: tokio::sync::watch::Receiver<bool>,
    ) {
        // A pool of its own (one connection, the same options): a listener holds its connection
        // for as long as it listens, which must not take one of the application's.
        let own = sqlx::postgres::PgPoolOptions::new()
            .max_connections(1)
            .max_lifetime(None)
            .idle_timeout(None)
            .connect_lazy_with((*self.pool.connect_options()).clone());
        let mut failures = 0u32;
        loop {
            let session = async {
                let mut listener = sqlx::postgres::PgListener::connect_with(&own).await?;
                listener.listen(CHANNEL).await?;
                wake.notify_one(); // anything committed while nobody listened
                loop {
                    // `try_recv` (not `recv`): `None` means the connection was lost and is back.
                    if listener.try_recv().await?.is_none() {
                        tracing::debug!("outbox listener reconnected");
                    }
                    wake.notify_one();
                }
                #[allow(unreachable_code)]
                Ok::<(), sqlx::Error>(())
            };
            tokio::select! {
                r = session => if let Err(e) = r {
                    failures = failures.saturating_add(1);
                    tracing::debug!(error = %e, "outbox listener failed; polling until it is back");
                },
                _ = crate::shutdown::stopped(&mut stop) => return,
            }
            wake.notify_one();
            let delay = crate::backoff::Backoff::default().delay(failures);
            tokio::select! {
                _ = tokio::time::sleep(delay) => {}
                _ = crate::shutdown::stopped(&mut stop) => return,
            }
        }
    }
}

/// The advisory lock (with the schema's hash as its second key) that lets one relay at a time
/// publish an outbox table.
const RELAY_LOCK: i32 = 0x726f_6f62;

/// The channel relays `LISTEN` on.
pub(super) const CHANNEL: &str = "rabbit_once_outbox";

/// `NOTIFY` in the caller's transaction: PostgreSQL delivers it only if the transaction commits,
/// once per transaction however many rows it wrote.
async fn notify(tx: &mut Transaction<'static, Postgres>) -> Result<(), Error> {
    sqlx::query("SELECT pg_notify($1, '')")
        .bind(CHANNEL)
        .execute(&mut **tx)
        .await
        .map(|_| ())
        .map_err(store_error)
}

fn store_error(e: sqlx::Error) -> Error {
    Error::Store(std::sync::Arc::new(e))
}
