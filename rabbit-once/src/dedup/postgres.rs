//! PostgreSQL dedup store: a pool shared by many consumer processes. Claims insert the ids of a
//! batch in sorted order, so two processes claiming overlapping batches take row locks in the
//! same order and never deadlock on each other.

use super::segments::SEGMENTS_TABLE;
use super::segments::{Segments, postgres as sealing};
use super::sql::{self, Dialect};
use super::{DEDUP_TABLE, RUNS_TABLE, Store, StoreFailure, classify_common, unix_seconds};
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};
use sqlx::{Postgres, Row, Transaction};
use std::collections::HashSet;
use std::str::FromStr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, SystemTime};

/// The dedup table that takes inserts: the first migration, and what a seal makes anew after it
/// has turned the table into a segment (a migration that changed this table would have to
/// change this too).
pub(crate) const HOT_TABLE: &[&str] = &[
    "CREATE TABLE IF NOT EXISTS rabbit_once_processed (
        consumer_group TEXT NOT NULL,
        message_id     TEXT NOT NULL,
        processed_at   TIMESTAMPTZ NOT NULL DEFAULT now(),
        PRIMARY KEY (consumer_group, message_id)
    )",
    "CREATE INDEX IF NOT EXISTS rabbit_once_processed_at ON rabbit_once_processed (consumer_group, processed_at)",
];

/// Each migration is a list of statements, applied in one transaction.
const MIGRATIONS: &[&[&str]] = &[
    HOT_TABLE,
    &["CREATE TABLE IF NOT EXISTS rabbit_once_runs (
        consumer_group TEXT NOT NULL,
        message_id     TEXT NOT NULL,
        runs           INTEGER NOT NULL,
        updated_at     TIMESTAMPTZ NOT NULL DEFAULT now(),
        PRIMARY KEY (consumer_group, message_id)
    )"],
    sealing::MIGRATION,
];

/// An arbitrary constant: the advisory lock that serializes migrations across processes.
const MIGRATION_LOCK: i64 = 0x7261_6262_6974_6f6e;

/// Options for [`PostgresStore`].
#[derive(Debug, Clone)]
pub struct PostgresOptions {
    /// Schema for the dedup table (and the `search_path` of every connection, so the
    /// application's unqualified tables land there too). Created if missing. Default: the
    /// server's `search_path` (usually `public`).
    pub schema: Option<String>,
    /// Connections in the pool, shared by the store and the handlers' transactions (default
    /// 8; at least 1).
    pub max_connections: u32,
    /// How long to wait for a connection before the database counts as unavailable (default
    /// 5 s).
    pub acquire_timeout: Duration,
    /// Seal the dedup table into a read-only segment each time it holds this many records
    /// (default 0: never): what keeps random message ids (UUIDv4 from foreign producers) cheap
    /// once the table holds millions of records, as
    /// [`SqliteOptions::segment_rows`](crate::SqliteOptions::segment_rows) does for SQLite —
    /// filters in memory (about 6 bytes a record at 10 million), a segment's table read only for
    /// the ids its filter cannot rule out. A seal moves the records in one transaction that waits
    /// for the claims in flight (at most a second; then it is tried again after 1 s, doubling to
    /// a minute) and holds new claims back while it builds the segment's filter (about 25 ms
    /// for 20,000 records, measured here: the table itself becomes the segment). Segments once sealed are always read, by every process of this version,
    /// whatever this option says; an older rabbit-once refuses the database at `migrate`, but one
    /// already running does not look again: turn this on only once every process sharing the
    /// database runs this version. A seal renames the table into the segment and creates a new
    /// one: the role the stores connect as must own the dedup table (the role that ran `migrate`
    /// does), and privileges granted to other roles on it are not carried to the new table.
    /// Each store counts the table again each time it has inserted
    /// a quarter of this many records itself: with several processes the table holds at most
    /// about this many plus a quarter for each other process before one of them seals it.
    /// docs/benchmarks.md has the figures.
    pub segment_rows: u64,
}

impl Default for PostgresOptions {
    fn default() -> Self {
        PostgresOptions {
            schema: None,
            max_connections: 8,
            acquire_timeout: Duration::from_secs(5),
            segment_rows: 0,
        }
    }
}

/// A dedup store in PostgreSQL. Cheap to clone (a pool handle).
///
/// For many consumer processes on one queue: a message two of them hold at once is applied by
/// one; the other finds it a duplicate.
///
/// ```no_run
/// use rabbit_once::{PostgresOptions, PostgresStore};
///
/// # async fn run() -> Result<(), rabbit_once::sqlx::Error> {
/// let options = PostgresOptions {
///     schema: Some("orders".into()), // the dedup table and the handler's unqualified tables
///     ..PostgresOptions::default()
/// };
/// let store = PostgresStore::connect_with("postgres://app@db/orders", options).await?;
/// # let _ = store; Ok(()) }
/// ```
#[derive(Debug, Clone)]
pub struct PostgresStore {
    pool: PgPool,
    schema: Option<String>,
    segments: Segments,
    /// The store's transactions are not READ COMMITTED (the database's or role's default, seen
    /// by `migrate`): claims' transactions begin with the lock ([`sealing::LOCK_FOR_CLAIM`]).
    lock_first: Arc<AtomicBool>,
}

pub(crate) fn quote_ident(s: &str) -> String {
    format!("\"{}\"", s.replace('"', "\"\""))
}

impl PostgresStore {
    /// A store for `url` (`postgres://user@host:port/db`) with default options. Like
    /// [`connect_with`](Self::connect_with), it connects at the first query, not here.
    pub async fn connect(url: &str) -> Result<Self, sqlx::Error> {
        Self::connect_with(url, PostgresOptions::default()).await
    }

    /// Prepares a pool for `url` with options `o`. Fails only on a malformed URL: nothing
    /// connects until the first query (a [`Store::migrate`], say).
    pub async fn connect_with(url: &str, o: PostgresOptions) -> Result<Self, sqlx::Error> {
        let mut opts = PgConnectOptions::from_str(url)?;
        if let Some(s) = &o.schema {
            opts = opts.options([("search_path", quote_ident(s))]);
        }
        let pool = PgPoolOptions::new()
            .max_connections(o.max_connections.max(1))
            .acquire_timeout(o.acquire_timeout)
            .connect_lazy_with(opts);
        Ok(PostgresStore {
            pool,
            schema: o.schema,
            segments: Segments::new(o.segment_rows),
            lock_first: Arc::default(),
        })
    }

    /// The pool, for the application's own queries.
    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// The schema of the dedup table, if one was set.
    pub fn schema(&self) -> Option<&str> {
        self.schema.as_deref()
    }

    /// Moves the dedup records of the table that takes inserts into a new sealed segment now
    /// (what [`PostgresOptions::segment_rows`] does on its own when the table reaches that
    /// size); returns how many records moved (0 when the table was empty). Waits at most a
    /// second for the claims in flight (then fails with a lock timeout). Needs the store's
    /// tables ([`Consumer::start`](crate::Consumer::start) creates them).
    pub async fn seal_segment(&self) -> Result<u64, sqlx::Error> {
        let rows = sealing::seal(&self.segments, &self.pool, 1).await;
        self.segments.forget_count();
        rows
    }

    /// Dedup records per consumer group (sealed or not), by group name; `None` when the dedup
    /// table does not exist (nothing is created by looking).
    pub async fn records_by_group(&self) -> Result<Option<Vec<(String, u64)>>, sqlx::Error> {
        sealing::records_by_group(&self.pool).await
    }
}

impl Dialect for Postgres {
    type Version = i32;

    fn param(n: usize) -> String {
        format!("${n}")
    }

    fn version(n: usize) -> i32 {
        n as i32
    }
}

impl Store for PostgresStore {
    type Db = Postgres;

    async fn migrate(&self) -> Result<(), sqlx::Error> {
        let mut tx = self.pool.begin().await?;
        sqlx::query("SELECT pg_advisory_xact_lock($1)")
            .bind(MIGRATION_LOCK)
            .execute(&mut *tx)
            .await?;
        if let Some(s) = &self.schema {
            sqlx::query(&format!("CREATE SCHEMA IF NOT EXISTS {}", quote_ident(s)))
                .execute(&mut *tx)
                .await?;
        }
        sql::migrate(&mut tx, sql::SCHEMA_TABLE, MIGRATIONS).await?;
        let isolation: String =
            sqlx::query_scalar("SELECT current_setting('transaction_isolation')")
                .fetch_one(&mut *tx)
                .await?;
        tx.commit().await?;
        self.lock_first
            .store(isolation != "read committed", Ordering::Relaxed);
        Ok(())
    }

    async fn begin(&self) -> Result<Transaction<'static, Postgres>, sqlx::Error> {
        if self.segments.take_cold() {
            // Best effort, before the transaction: the claim checks the list again under its
            // lock and loads what it lacks.
            if let Ok(mut conn) = self.pool.acquire().await
                && let Err(e) = Segments::warm::<Postgres>(&self.segments, &mut conn).await
            {
                tracing::debug!(error = %e, "loading the dedup segments before a claim failed; the claim loads them");
            }
        }
        sealing::seal_if_due(&self.segments, &self.pool).await;
        let mut tx = self.pool.begin().await?;
        if self.lock_first.load(Ordering::Relaxed) {
            // A statement of its own: if it fails, dropping `tx` rolls the transaction back.
            sqlx::query(sealing::LOCK_FOR_CLAIM)
                .execute(&mut *tx)
                .await?;
        }
        Ok(tx)
    }

    async fn claim<'a>(
        &'a self,
        tx: &'a mut Transaction<'static, Postgres>,
        group: &'a str,
        ids: &'a [&'a str],
    ) -> Result<Vec<bool>, sqlx::Error> {
        let mut sorted: Vec<&str> = ids.to_vec();
        sorted.sort_unstable();
        // The insert, and the segment list's fingerprint in the same statement (one snapshot,
        // taken under the lock that keeps seals out: see `segments::postgres`).
        let rows = sqlx::query(&format!(
            "INSERT INTO {DEDUP_TABLE} (consumer_group, message_id)
             SELECT $1, id FROM unnest($2::text[]) AS t(id) ORDER BY id
             ON CONFLICT DO NOTHING
             RETURNING message_id,
               (SELECT COALESCE(MAX(seq), 0) FROM {SEGMENTS_TABLE}),
               (SELECT COUNT(*) FROM {SEGMENTS_TABLE}),
               (SELECT current_setting('transaction_isolation'))"
        ))
        .bind(group)
        .bind(&sorted)
        .fetch_all(&mut **tx)
        .await?;
        let mut fresh: HashSet<String> = HashSet::with_capacity(rows.len());
        let mut fp = (0, 0);
        let mut isolation = String::new();
        for (i, row) in rows.iter().enumerate() {
            fresh.insert(row.try_get::<String, _>(0)?);
            if i == 0 {
                // The same in every row (evaluated once a statement).
                fp = (row.try_get(1)?, row.try_get(2)?);
                isolation = row.try_get(3)?;
            }
        }
        if fresh.is_empty() {
            // No new id: nothing a segment could make a duplicate.
            return Ok(vec![false; ids.len()]);
        }
        if isolation != "read committed" && !self.lock_first.load(Ordering::Relaxed) {
            // Its snapshot may predate a seal that emptied the table it inserted into: it could
            // take a sealed id for a new one. (`migrate` sees the isolation and makes `begin`
            // take the lock first.)
            return Err(sqlx::Error::Configuration(
                format!(
                    "a dedup claim in a {isolation} transaction needs a transaction from \
                     PostgresStore::begin of a store that ran migrate"
                )
                .into(),
            ));
        }
        // A new id a sealed segment holds is a duplicate: its insert is taken back.
        let new: Vec<&str> = sorted
            .iter()
            .copied()
            .filter(|id| fresh.contains(*id))
            .collect();
        let sealed = Segments::sealed::<Postgres>(&self.segments, tx, fp, group, &new).await?;
        if !sealed.is_empty() {
            let back: Vec<&str> = new.into_iter().filter(|id| sealed.contains(*id)).collect();
            sqlx::query(&format!(
                "DELETE FROM {DEDUP_TABLE} WHERE consumer_group = $1 AND message_id = ANY($2)"
            ))
            .bind(group)
            .bind(&back)
            .execute(&mut **tx)
            .await?;
            fresh.retain(|id| !sealed.contains(id));
        }
        self.segments.inserted(fresh.len() as u64);
        Ok(ids.iter().map(|id| fresh.contains(*id)).collect())
    }

    async fn holds<'a>(
        &'a self,
        tx: &'a mut Transaction<'static, Postgres>,
        group: &'a str,
        id: &'a str,
    ) -> Result<bool, sqlx::Error> {
        sql::holds(tx, group, id).await
    }

    async fn count_run<'a>(&'a self, group: &'a str, id: &'a str) -> Result<u32, sqlx::Error> {
        let runs: i32 = sqlx::query_scalar(&format!(
            "INSERT INTO {RUNS_TABLE} AS r (consumer_group, message_id, runs) VALUES ($1, $2, 1)
             ON CONFLICT (consumer_group, message_id)
             DO UPDATE SET runs = r.runs + 1, updated_at = now()
             RETURNING runs"
        ))
        .bind(group)
        .bind(id)
        .fetch_one(&self.pool)
        .await?;
        Ok(runs.max(0) as u32)
    }

    async fn forget_runs<'a>(
        &'a self,
        tx: &'a mut Transaction<'static, Postgres>,
        group: &'a str,
        id: &'a str,
    ) -> Result<(), sqlx::Error> {
        sql::forget_runs(tx, group, id).await
    }

    async fn purge(&self, group: &str, before: SystemTime, limit: u32) -> Result<u64, sqlx::Error> {
        let r = sqlx::query(&format!(
            "DELETE FROM {DEDUP_TABLE} WHERE ctid IN
               (SELECT ctid FROM {DEDUP_TABLE}
                 WHERE consumer_group = $1 AND processed_at < to_timestamp($2) LIMIT $3)"
        ))
        .bind(group)
        .bind(unix_seconds(before) as f64)
        .bind(limit as i64)
        .execute(&self.pool)
        .await?;
        let n = r.rows_affected();
        if n >= limit as u64 {
            return Ok(n);
        }
        let sealed = sealing::purge(&self.pool, group, before, limit - n as u32).await?;
        Ok(n + sealed)
    }

    async fn ping(&self) -> Result<(), sqlx::Error> {
        sqlx::query("SELECT 1")
            .execute(&self.pool)
            .await
            .map(|_| ())
    }

    fn classify(e: &sqlx::Error) -> StoreFailure {
        if let Some(f) = classify_common(e) {
            return f;
        }
        match e {
            sqlx::Error::Database(db) => {
                let code = db.code().unwrap_or_default();
                match code.as_ref() {
                    // deadlock, serialization, lock not available, statement timeout
                    "40P01" | "40001" | "55P03" | "57014" => StoreFailure::Conflict,
                    c if c.starts_with("08") => StoreFailure::Unavailable,
                    "57P01" | "57P02" | "57P03" | "53300" | "53100" | "53200" => {
                        StoreFailure::Unavailable
                    }
                    _ => StoreFailure::Other,
                }
            }
            _ => StoreFailure::Other,
        }
    }

    fn backend(&self) -> &'static str {
        "postgres"
    }
}
