//! The outbox from the command line: `publish --outbox` (messages committed with a business row,
//! relayed in the same process, resumable after a kill), `relay` (a relay process) and
//! `outbox status` (what waits, what the broker refused).

pub mod publish;
pub mod relay;
pub mod status;

use crate::applied::Db;
use rabbit_once::sqlx::{self, Postgres, Sqlite, Transaction};
use rabbit_once::{
    Connection, Message, OutboxStatus, PostgresOutbox, PostgresStore, Relay, RelayConfig,
    SqliteOutbox, SqliteStore, Store,
};

/// Where an outbox lives, as the `--outbox` flag names it.
#[derive(clap::Args, Debug, Clone)]
pub struct OutboxArgs {
    /// The outbox's database: sqlite:PATH (or a path) or postgres://user@host:port/db.
    #[arg(long = "outbox")]
    pub spec: String,
    /// PostgreSQL schema of the outbox (and of the `sent` table; created if missing).
    #[arg(long)]
    pub schema: Option<String>,
}

/// An outbox with the store whose transactions write to it, migrated.
#[derive(Debug, Clone)]
pub enum OutboxDb {
    Sqlite(SqliteStore, SqliteOutbox),
    Postgres(PostgresStore, PostgresOutbox),
}

/// The stand-in for a caller's own write: one row per message, in the same transaction.
const CREATE_SENT: &str =
    "CREATE TABLE IF NOT EXISTS sent (seq BIGINT PRIMARY KEY, message_id TEXT NOT NULL)";

/// The advisory lock (an arbitrary constant) that serializes the creation of `sent`.
const SENT_LOCK: i64 = 0x7261_6262_6974_7365; // "rabbitse": beside the library's "rabbit…" keys

impl OutboxDb {
    /// Opens the database `args` names and creates the outbox table (and the schema) if missing.
    pub async fn open(args: &OutboxArgs) -> anyhow::Result<Self> {
        Ok(match Db::open(&args.spec, args.schema.clone()).await? {
            Db::Sqlite(s) => {
                let o = SqliteOutbox::new(s.pool().clone());
                o.migrate().await?;
                OutboxDb::Sqlite(s, o)
            }
            Db::Postgres(s) => {
                s.migrate().await?; // creates the schema the pool's search_path names
                let o = PostgresOutbox::new(s.pool().clone());
                o.migrate().await?;
                OutboxDb::Postgres(s, o)
            }
        })
    }

    /// Starts a relay of this outbox over `conn`.
    pub fn relay(&self, conn: &Connection, config: RelayConfig) -> anyhow::Result<Relay> {
        Ok(match self {
            OutboxDb::Sqlite(_, o) => Relay::start(conn, o.clone(), config)?,
            OutboxDb::Postgres(_, o) => Relay::start(conn, o.clone(), config)?,
        })
    }

    /// Opens an outbox that must exist already (for looking at it: a mistyped path or schema is
    /// an error, not a new empty outbox).
    pub async fn open_existing(args: &OutboxArgs) -> anyhow::Result<Self> {
        let is_pg = args.spec.starts_with("postgres://") || args.spec.starts_with("postgresql://");
        if !is_pg {
            let path = args
                .spec
                .strip_prefix("sqlite://")
                .or_else(|| args.spec.strip_prefix("sqlite:"))
                .unwrap_or(&args.spec);
            if !std::path::Path::new(path).exists() {
                return Err(crate::exit::store(format!("no outbox database at {path}")));
            }
        }
        let db = Db::open(&args.spec, args.schema.clone()).await?;
        let table: Option<String> = match &db {
            Db::Sqlite(s) => {
                sqlx::query_scalar(
                    "SELECT name FROM sqlite_master WHERE type = 'table' AND name = 'rabbit_once_outbox'",
                )
                .fetch_optional(s.pool())
                .await?
            }
            Db::Postgres(s) => {
                sqlx::query_scalar("SELECT to_regclass('rabbit_once_outbox')::text")
                    .fetch_one(s.pool())
                    .await?
            }
        };
        if table.is_none() {
            return Err(crate::exit::store(format!(
                "no outbox table (rabbit_once_outbox) in {}",
                match (&db, &args.schema) {
                    (Db::Postgres(_), Some(s)) => format!("schema {s}"),
                    (Db::Postgres(_), None) => "the database's search_path".to_string(),
                    (Db::Sqlite(_), _) => "that SQLite database".to_string(),
                }
            )));
        }
        // An outbox written by an older version gets the newer tables (the parked rows).
        Ok(match db {
            Db::Sqlite(s) => {
                let o = SqliteOutbox::new(s.pool().clone());
                o.migrate().await?;
                OutboxDb::Sqlite(s, o)
            }
            Db::Postgres(s) => {
                let o = PostgresOutbox::new(s.pool().clone());
                o.migrate().await?;
                OutboxDb::Postgres(s, o)
            }
        })
    }

    /// Pending rows, the oldest one's age, the refused ones.
    pub async fn status(&self) -> anyhow::Result<OutboxStatus> {
        Ok(match self {
            OutboxDb::Sqlite(_, o) => o.status().await?,
            OutboxDb::Postgres(_, o) => o.status().await?,
        })
    }

    /// Moves the parked rows of `id` back into the outbox; how many.
    pub async fn requeue(&self, id: &str) -> anyhow::Result<u64> {
        Ok(match self {
            OutboxDb::Sqlite(_, o) => o.requeue(id).await?,
            OutboxDb::Postgres(_, o) => o.requeue(id).await?,
        })
    }

    /// Deletes the rows of `id` (pending or parked); 1 if there were any, else 0.
    pub async fn discard(&self, id: &str) -> anyhow::Result<u64> {
        Ok(u64::from(match self {
            OutboxDb::Sqlite(_, o) => o.discard(id).await?,
            OutboxDb::Postgres(_, o) => o.discard(id).await?,
        }))
    }

    /// Creates the `sent` table if missing. On PostgreSQL under an advisory lock: publishers
    /// sharing a schema start together (`chaos`), and concurrent `CREATE TABLE IF NOT EXISTS`
    /// collide in the catalog (`pg_type_typname_nsp_index`), failing all but one of them.
    pub async fn create_sent(&self) -> anyhow::Result<()> {
        match self {
            OutboxDb::Sqlite(s, _) => {
                sqlx::query(CREATE_SENT).execute(s.pool()).await?;
            }
            OutboxDb::Postgres(s, _) => {
                let mut tx = s.pool().begin().await?;
                sqlx::query("SELECT pg_advisory_xact_lock($1)")
                    .bind(SENT_LOCK)
                    .execute(&mut *tx)
                    .await?;
                sqlx::query(CREATE_SENT).execute(&mut *tx).await?;
                tx.commit().await?;
            }
        }
        Ok(())
    }

    /// The highest `seq` in `lo..hi` committed in `sent`, if any (publishers of other ranges
    /// may share the table).
    pub async fn last_sent(&self, lo: u64, hi: u64) -> anyhow::Result<Option<u64>> {
        let max: Option<i64> = match self {
            OutboxDb::Sqlite(s, _) => {
                sqlx::query_scalar("SELECT MAX(seq) FROM sent WHERE seq >= ? AND seq < ?")
                    .bind(lo as i64)
                    .bind(hi as i64)
                    .fetch_one(s.pool())
                    .await?
            }
            OutboxDb::Postgres(s, _) => {
                sqlx::query_scalar("SELECT MAX(seq) FROM sent WHERE seq >= $1 AND seq < $2")
                    .bind(lo as i64)
                    .bind(hi as i64)
                    .fetch_one(s.pool())
                    .await?
            }
        };
        Ok(max.map(|m| m as u64))
    }

    /// How many seqs `sent` holds, and the seqs themselves.
    pub async fn sent_seqs(&self) -> anyhow::Result<Vec<i64>> {
        let sql = "SELECT seq FROM sent";
        Ok(match self {
            OutboxDb::Sqlite(s, _) => sqlx::query_scalar(sql).fetch_all(s.pool()).await?,
            OutboxDb::Postgres(s, _) => sqlx::query_scalar(sql).fetch_all(s.pool()).await?,
        })
    }

    /// Commits `messages` (their seqs in `seqs`) through the outbox in one transaction, with a
    /// `sent` row each: both or neither.
    pub async fn commit(&self, seqs: &[u64], messages: Vec<Message>) -> anyhow::Result<()> {
        match self {
            OutboxDb::Sqlite(s, o) => {
                let mut tx = s.begin().await?;
                let ids = o.enqueue_all(&mut tx, messages).await?;
                insert_sent_sqlite(&mut tx, seqs, &ids).await?;
                tx.commit().await?;
            }
            OutboxDb::Postgres(s, o) => {
                let mut tx = s.begin().await?;
                let ids = o.enqueue_all(&mut tx, messages).await?;
                insert_sent_postgres(&mut tx, seqs, &ids).await?;
                tx.commit().await?;
            }
        }
        Ok(())
    }

    /// Closes the database's pool.
    pub async fn close(&self) {
        match self {
            OutboxDb::Sqlite(s, _) => s.pool().close().await,
            OutboxDb::Postgres(s, _) => s.pool().close().await,
        }
    }
}

/// `INSERT INTO sent` one row per message, in the caller's transaction (for each database).
macro_rules! insert_sent {
    ($name:ident, $db:ty) => {
        async fn $name(
            tx: &mut Transaction<'static, $db>,
            seqs: &[u64],
            ids: &[String],
        ) -> anyhow::Result<()> {
            let rows: Vec<(&u64, &String)> = seqs.iter().zip(ids).collect();
            for chunk in rows.chunks(500) {
                let mut q = sqlx::QueryBuilder::<$db>::new("INSERT INTO sent (seq, message_id) ");
                q.push_values(chunk, |mut b, (seq, id)| {
                    b.push_bind(**seq as i64).push_bind((*id).clone());
                });
                q.build().execute(&mut **tx).await?;
            }
            Ok(())
        }
    };
}
insert_sent!(insert_sent_sqlite, Sqlite);
insert_sent!(insert_sent_postgres, Postgres);

/// Names the rows the broker refused and the parked ones, on stderr: id, attempts, why.
pub fn report_refused(status: &OutboxStatus) {
    for (what, row) in status
        .failed_rows
        .iter()
        .map(|r| ("refused", r))
        .chain(status.parked_rows.iter().map(|r| ("parked", r)))
    {
        eprintln!(
            "{what}: {} ({} attempts): {}",
            row.message_id,
            row.attempts,
            row.last_error.as_deref().unwrap_or("?")
        );
    }
}
