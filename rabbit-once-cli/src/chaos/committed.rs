//! With `--outbox`: how many messages the publishers have committed so far (their `sent` rows),
//! counted by the timeline's sampler once a second — a commit is not timed, so this is what the
//! report draws as committed msg/s and the committed-not-applied lag.

use crate::applied::Db;
use rabbit_once::sqlx;
use std::collections::HashMap;
use std::path::PathBuf;
use std::time::Duration;

/// Where the `sent` rows are.
pub(super) enum Committed {
    /// PostgreSQL: one `sent` table in the run's schema, on the store's search path.
    Postgres(sqlx::PgPool),
    /// SQLite: a file per publisher in the work directory (`outbox-*.db`), each opened read-only
    /// once it exists (WAL: the reader does not hold the publisher's writes up), with the last
    /// count read from it.
    Sqlite {
        work: PathBuf,
        files: HashMap<PathBuf, (Option<sqlx::SqlitePool>, u64)>,
    },
}

/// A count that does not answer in this long is skipped (a gap, or the last count of the file).
const WAIT: Duration = Duration::from_millis(500);

impl Committed {
    /// For a run on `store` (`db`) with its outboxes in `work`.
    pub(super) fn new(db: &Db, work: PathBuf) -> Committed {
        match db {
            Db::Postgres(s) => Committed::Postgres(s.pool().clone()),
            Db::Sqlite(_) => Committed::Sqlite {
                work,
                files: HashMap::new(),
            },
        }
    }

    /// Messages committed so far, every outbox together; `None` when it could not be read.
    pub(super) async fn count(&mut self) -> Option<u64> {
        let sql = "SELECT COUNT(*) FROM sent";
        match self {
            Committed::Postgres(pool) => {
                let n: i64 = tokio::time::timeout(WAIT, sqlx::query_scalar(sql).fetch_one(&*pool))
                    .await
                    .ok()?
                    .ok()?;
                Some(n.max(0) as u64)
            }
            Committed::Sqlite { work, files } => {
                if let Ok(dir) = std::fs::read_dir(&*work) {
                    for e in dir.flatten() {
                        let name = e.file_name().to_string_lossy().into_owned();
                        if name.starts_with("outbox-") && name.ends_with(".db") {
                            files.entry(e.path()).or_default();
                        }
                    }
                }
                for (path, (pool, last)) in files.iter_mut() {
                    if pool.is_none() {
                        let opts = sqlx::sqlite::SqliteConnectOptions::new()
                            .filename(path)
                            .read_only(true);
                        *pool = tokio::time::timeout(
                            WAIT,
                            sqlx::sqlite::SqlitePoolOptions::new()
                                .max_connections(1)
                                .connect_with(opts),
                        )
                        .await
                        .ok()
                        .and_then(Result::ok);
                    }
                    if let Some(p) = pool.as_ref()
                        && let Ok(Ok(n)) = tokio::time::timeout(
                            WAIT,
                            sqlx::query_scalar::<_, i64>(sql).fetch_one(p),
                        )
                        .await
                    {
                        *last = (*last).max(n.max(0) as u64);
                    }
                }
                Some(files.values().map(|(_, n)| n).sum())
            }
        }
    }

    /// Closes the read-only pools.
    pub(super) async fn close(self) {
        if let Committed::Sqlite { files, .. } = self {
            for p in files.into_values().filter_map(|(p, _)| p) {
                p.close().await;
            }
        }
    }
}
