//! PostgreSQL dedup store: a pool shared by many consumer processes. Claims insert the ids of a
//! batch in sorted order, so two processes claiming overlapping batches take row locks in the
//! same order and never deadlock on each other.

use super::sql::{self, Dialect};
use super::{DEDUP_TABLE, RUNS_TABLE, Store, StoreFailure, classify_common, unix_seconds};
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};
use sqlx::{Postgres, Row, Transaction};
use std::collections::HashSet;
use std::str::FromStr;
use std::time::{Duration, SystemTime};

/// Each migration is a list of statements, applied in one transaction.
const MIGRATIONS: &[&[&str]] = &[
    &[
        "CREATE TABLE IF NOT EXISTS rabbit_once_processed (
        consumer_group TEXT NOT NULL,
        message_id     TEXT NOT NULL,
        processed_at   TIMESTAMPTZ NOT NULL DEFAULT now(),
        PRIMARY KEY (consumer_group, message_id)
    )",
        "CREATE INDEX IF NOT EXISTS rabbit_once_processed_at ON rabbit_once_processed (consumer_group, processed_at)",
    ],
    &["CREATE TABLE IF NOT EXISTS rabbit_once_runs (
        consumer_group TEXT NOT NULL,
        message_id     TEXT NOT NULL,
        runs           INTEGER NOT NULL,
        updated_at     TIMESTAMPTZ NOT NULL DEFAULT now(),
        PRIMARY KEY (consumer_group, message_id)
    )"],
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
}

impl Default for PostgresOptions {
    fn default() -> Self {
        PostgresOptions {
            schema: None,
            max_connections: 8,
            acquire_timeout: Duration::from_secs(5),
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
}

fn quote_ident(s: &str) -> String {
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
        tx.commit().await
    }

    async fn begin(&self) -> Result<Transaction<'static, Postgres>, sqlx::Error> {
        self.pool.begin().await
    }

    async fn claim<'a>(
        &'a self,
        tx: &'a mut Transaction<'static, Postgres>,
        group: &'a str,
        ids: &'a [&'a str],
    ) -> Result<Vec<bool>, sqlx::Error> {
        let mut sorted: Vec<&str> = ids.to_vec();
        sorted.sort_unstable();
        let rows = sqlx::query(&format!(
            "INSERT INTO {DEDUP_TABLE} (consumer_group, message_id)
             SELECT $1, id FROM unnest($2::text[]) AS t(id) ORDER BY id
             ON CONFLICT DO NOTHING RETURNING message_id"
        ))
        .bind(group)
        .bind(&sorted)
        .fetch_all(&mut **tx)
        .await?;
        let mut fresh: HashSet<String> = HashSet::with_capacity(rows.len());
        for row in rows {
            fresh.insert(row.try_get::<String, _>(0)?);
        }
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
        Ok(r.rows_affected())
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
