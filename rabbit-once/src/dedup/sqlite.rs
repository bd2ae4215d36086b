//! SQLite dedup store: the embedded default. One file, WAL journal, `synchronous=FULL`, a busy
//! timeout, and `BEGIN IMMEDIATE` transactions (the write lock is taken up front, so two
//! writers never deadlock on a lock upgrade).

use super::segments::{self, Segments, sqlite as sealing};
use super::sql::{self, Dialect};
use super::{DEDUP_TABLE, RUNS_TABLE, Store, StoreFailure, classify_common, unix_seconds};
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous,
};
use sqlx::{QueryBuilder, Row, Sqlite, Transaction};
use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

/// Rows per INSERT (3 bound values each; SQLite allows 32,766).
pub(super) const CHUNK: usize = 500;

/// Each migration is a list of statements, applied in one transaction.
const MIGRATIONS: &[&[&str]] = &[
    &[
        "CREATE TABLE IF NOT EXISTS rabbit_once_processed (
        consumer_group TEXT NOT NULL,
        message_id     TEXT NOT NULL,
        processed_at   INTEGER NOT NULL,
        PRIMARY KEY (consumer_group, message_id)
    ) WITHOUT ROWID",
        "CREATE INDEX IF NOT EXISTS rabbit_once_processed_at ON rabbit_once_processed (consumer_group, processed_at)",
    ],
    &["CREATE TABLE IF NOT EXISTS rabbit_once_runs (
        consumer_group TEXT NOT NULL,
        message_id     TEXT NOT NULL,
        runs           INTEGER NOT NULL,
        updated_at     INTEGER NOT NULL,
        PRIMARY KEY (consumer_group, message_id)
    ) WITHOUT ROWID"],
    sealing::MIGRATION,
];

/// Options for [`SqliteStore`].
#[derive(Debug, Clone)]
pub struct SqliteOptions {
    /// Connections in the pool (default 4; at least 1). Writers still take turns: SQLite has
    /// one writer at a time.
    pub max_connections: u32,
    /// How long a writer waits for the lock before `SQLITE_BUSY`, and how long to wait for a
    /// pooled connection (default 10 s).
    pub busy_timeout: Duration,
    /// `FULL` (default) syncs the WAL on every commit: a committed dedup record survives a
    /// power cut. `NORMAL` survives a process crash only.
    pub synchronous_full: bool,
    /// Seal the dedup table into a read-only segment each time it holds this many records
    /// (default 0: never). For message ids that are not time-ordered (random UUIDv4 from
    /// foreign producers) and tables that grow to millions of records: inserts then land in a
    /// table of at most this size, and the older records are only read, each segment behind a
    /// Bloom filter kept in memory (2 bytes a record for the segments' own filters, as much
    /// again for each level of filters covering 16, 256, … segments: about 6 bytes a record
    /// at 10 million). 20,000 measured well (docs/benchmarks.md, "What a grown dedup table
    /// costs"). Segments once sealed are always read, whatever this option says; a later
    /// rabbit-once than the one that wrote the file reads them, an earlier one refuses the file
    /// from this version on (versions before it had no such check: do not go back to one). A store opened on a file with many
    /// segments loads their filters in its first claim (about a second at 10 million records).
    /// Each store counts the table again each time it has inserted a quarter of this many
    /// records itself: with several processes on one file the table holds at most about this
    /// many plus a quarter for each other process before one of them seals it.
    pub segment_rows: u64,
}

impl Default for SqliteOptions {
    fn default() -> Self {
        SqliteOptions {
            max_connections: 4,
            busy_timeout: Duration::from_secs(10),
            synchronous_full: true,
            segment_rows: 0,
        }
    }
}

/// A dedup store in one SQLite file. Cheap to clone (a pool handle).
///
/// The embedded default, for one consumer process: the handler's tables live in the same file,
/// so its writes and the dedup record commit together.
///
/// ```no_run
/// use rabbit_once::{SqliteOptions, SqliteStore};
///
/// # async fn run() -> Result<(), rabbit_once::sqlx::Error> {
/// let store = SqliteStore::open_with("orders.db", SqliteOptions::default()).await?;
/// rabbit_once::sqlx::query("CREATE TABLE IF NOT EXISTS orders (id TEXT PRIMARY KEY)")
///     .execute(store.pool())
///     .await?;
/// # Ok(()) }
/// ```
#[derive(Debug, Clone)]
pub struct SqliteStore {
    pool: SqlitePool,
    path: PathBuf,
    segments: Segments,
}

impl SqliteStore {
    /// Opens (creating if missing) the database file with default options.
    pub async fn open(path: impl AsRef<Path>) -> Result<Self, sqlx::Error> {
        Self::open_with(path, SqliteOptions::default()).await
    }

    /// Opens (creating if missing) the database file with options `o`.
    pub async fn open_with(path: impl AsRef<Path>, o: SqliteOptions) -> Result<Self, sqlx::Error> {
        let path = path.as_ref().to_path_buf();
        let opts = SqliteConnectOptions::new()
            .filename(&path)
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(if o.synchronous_full {
                SqliteSynchronous::Full
            } else {
                SqliteSynchronous::Normal
            })
            .busy_timeout(o.busy_timeout);
        let pool = SqlitePoolOptions::new()
            .max_connections(o.max_connections.max(1))
            .acquire_timeout(o.busy_timeout)
            .connect_with(opts)
            .await?;
        Ok(SqliteStore {
            pool,
            path,
            segments: Segments::new(o.segment_rows),
        })
    }

    /// The pool, for the application's own queries (the `applied` table, reports…).
    pub fn pool(&self) -> &SqlitePool {
        &self.pool
    }

    /// The database file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Moves the dedup records of the table that takes inserts into a new sealed segment now
    /// (what [`SqliteOptions::segment_rows`] does on its own when the table reaches that size);
    /// returns how many records moved (0 when the table was empty). Needs the store's tables
    /// ([`Consumer::start`](crate::Consumer::start) creates them).
    pub async fn seal_segment(&self) -> Result<u64, sqlx::Error> {
        let rows = sealing::seal(&self.segments, &self.pool, 1).await;
        self.segments.forget_count();
        rows
    }

    /// Dedup records per consumer group (sealed or not), by group name. Creates nothing: the
    /// dedup table must exist.
    pub async fn records_by_group(&self) -> Result<Vec<(String, u64)>, sqlx::Error> {
        sealing::records_by_group(&self.pool).await
    }
}

impl Dialect for Sqlite {
    type Version = i64;

    fn param(_: usize) -> String {
        "?".into()
    }

    fn version(n: usize) -> i64 {
        n as i64
    }
}

impl Store for SqliteStore {
    type Db = Sqlite;

    async fn migrate(&self) -> Result<(), sqlx::Error> {
        let mut tx = self.pool.begin_with("BEGIN IMMEDIATE").await?;
        sql::migrate(&mut tx, sql::SCHEMA_TABLE, MIGRATIONS).await?;
        tx.commit().await
    }

    async fn begin(&self) -> Result<Transaction<'static, Sqlite>, sqlx::Error> {
        if self.segments.take_cold() {
            // Best effort, before the transaction: the claim checks the list again under its
            // lock and loads what it lacks.
            if let Ok(mut conn) = self.pool.acquire().await
                && let Err(e) = Segments::warm::<Sqlite>(&self.segments, &mut conn).await
            {
                tracing::debug!(error = %e, "loading the dedup segments before a claim failed; the claim loads them");
            }
        }
        sealing::seal_if_due(&self.segments, &self.pool).await;
        self.pool.begin_with("BEGIN IMMEDIATE").await
    }

    async fn claim<'a>(
        &'a self,
        tx: &'a mut Transaction<'static, Sqlite>,
        group: &'a str,
        ids: &'a [&'a str],
    ) -> Result<Vec<bool>, sqlx::Error> {
        let now = unix_seconds(SystemTime::now());
        let mut fresh: HashSet<String> = HashSet::with_capacity(ids.len());
        let mut sorted: Vec<&str> = ids.to_vec();
        sorted.sort_unstable();
        // Ids a sealed segment holds are duplicates; the rest go to the table that takes inserts.
        let fp = segments::fingerprint::<Sqlite>(tx).await?;
        let sealed = Segments::sealed::<Sqlite>(&self.segments, tx, fp, group, &sorted).await?;
        if !sealed.is_empty() {
            sorted.retain(|id| !sealed.contains(*id));
        }
        for chunk in sorted.chunks(CHUNK) {
            let mut q = QueryBuilder::<Sqlite>::new(format!(
                "INSERT INTO {DEDUP_TABLE} (consumer_group, message_id, processed_at) "
            ));
            q.push_values(chunk, |mut b, id| {
                b.push_bind(group).push_bind(*id).push_bind(now);
            });
            q.push(" ON CONFLICT DO NOTHING RETURNING message_id");
            for row in q.build().fetch_all(&mut **tx).await? {
                fresh.insert(row.try_get::<String, _>(0)?);
            }
        }
        self.segments.inserted(fresh.len() as u64);
        Ok(ids.iter().map(|id| fresh.contains(*id)).collect())
    }

    async fn holds<'a>(
        &'a self,
        tx: &'a mut Transaction<'static, Sqlite>,
        group: &'a str,
        id: &'a str,
    ) -> Result<bool, sqlx::Error> {
        sql::holds(tx, group, id).await
    }

    async fn count_run<'a>(&'a self, group: &'a str, id: &'a str) -> Result<u32, sqlx::Error> {
        let mut tx = self.begin().await?;
        let runs: i64 = sqlx::query_scalar(&format!(
            "INSERT INTO {RUNS_TABLE} (consumer_group, message_id, runs, updated_at)
             VALUES (?, ?, 1, ?)
             ON CONFLICT (consumer_group, message_id)
             DO UPDATE SET runs = runs + 1, updated_at = excluded.updated_at
             RETURNING runs"
        ))
        .bind(group)
        .bind(id)
        .bind(unix_seconds(SystemTime::now()))
        .fetch_one(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(runs.clamp(0, u32::MAX as i64) as u32)
    }

    async fn forget_runs<'a>(
        &'a self,
        tx: &'a mut Transaction<'static, Sqlite>,
        group: &'a str,
        id: &'a str,
    ) -> Result<(), sqlx::Error> {
        sql::forget_runs(tx, group, id).await
    }

    async fn purge(&self, group: &str, before: SystemTime, limit: u32) -> Result<u64, sqlx::Error> {
        let r = sqlx::query(&format!(
            "DELETE FROM {DEDUP_TABLE} WHERE consumer_group = ? AND message_id IN
               (SELECT message_id FROM {DEDUP_TABLE} WHERE consumer_group = ? AND processed_at < ? LIMIT ?)"
        ))
        .bind(group)
        .bind(group)
        .bind(unix_seconds(before))
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
                let code = db.code().and_then(|c| c.parse::<i32>().ok()).unwrap_or(0) & 0xff;
                match code {
                    5 | 6 => StoreFailure::Conflict,           // BUSY, LOCKED
                    10 | 13 | 14 => StoreFailure::Unavailable, // IOERR, FULL, CANTOPEN
                    _ => StoreFailure::Other,
                }
            }
            _ => StoreFailure::Other,
        }
    }

    fn backend(&self) -> &'static str {
        "sqlite"
    }
}
