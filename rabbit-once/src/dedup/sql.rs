//! The SQL both backends run, written once: the migration loop, and the statements that differ
//! only in how a bind parameter is written (`?` in SQLite, `$1` in PostgreSQL).

use super::{DEDUP_TABLE, RUNS_TABLE};
use sqlx::{ColumnIndex, Database, Decode, Encode, Executor, IntoArguments, Transaction, Type};

/// What the shared statements need to know about a backend's SQL.
pub(crate) trait Dialect: Database {
    /// The integer type `rabbit_once_schema.version` decodes to (`INTEGER` is 64 bits in
    /// SQLite, 32 in PostgreSQL).
    type Version: Into<i64> + Type<Self> + for<'r> Decode<'r, Self> + for<'q> Encode<'q, Self>;

    /// The `n`-th (1-based) bind parameter of a statement.
    fn param(n: usize) -> String;

    /// Schema version `n`, as bound into `rabbit_once_schema.version`.
    fn version(n: usize) -> Self::Version;
}

/// The table that records which migrations of the dedup tables ran.
pub(crate) const SCHEMA_TABLE: &str = "rabbit_once_schema";

/// Applies the migrations `tx` has not recorded yet, each a list of statements followed by the
/// row in `schema_table` that records it (each set of tables — dedup, outbox — keeps its own
/// versions). The caller begins `tx` (taking whatever lock keeps two processes from migrating
/// at once) and commits it.
pub(crate) async fn migrate<DB>(
    tx: &mut Transaction<'static, DB>,
    schema_table: &str,
    migrations: &[&[&str]],
) -> Result<(), sqlx::Error>
where
    DB: Dialect,
    DB::Version: Send + Unpin,
    for<'c> &'c mut DB::Connection: Executor<'c, Database = DB>,
    for<'q> DB::Arguments<'q>: IntoArguments<'q, DB>,
    usize: ColumnIndex<DB::Row>,
{
    sqlx::query(&format!(
        "CREATE TABLE IF NOT EXISTS {schema_table} (version INTEGER PRIMARY KEY)"
    ))
    .execute(&mut **tx)
    .await?;
    let done: DB::Version = sqlx::query_scalar(&format!(
        "SELECT COALESCE(MAX(version), 0) FROM {schema_table}"
    ))
    .fetch_one(&mut **tx)
    .await?;
    let done: i64 = done.into();
    if done > migrations.len() as i64 {
        // A newer rabbit-once has used this database: its tables may hold what this one
        // would not read (sealed dedup segments), so refuse rather than apply twice.
        return Err(sqlx::Error::Configuration(
            format!(
                "{schema_table} is at version {done}, newer than this rabbit-once knows ({}): \
                 a newer rabbit-once has used this database; run that version",
                migrations.len()
            )
            .into(),
        ));
    }
    let record = format!(
        "INSERT INTO {schema_table} (version) VALUES ({})",
        DB::param(1)
    );
    for (i, statements) in migrations.iter().enumerate().skip(done as usize) {
        for sql in *statements {
            sqlx::query(sql).execute(&mut **tx).await?;
        }
        sqlx::query(&record)
            .bind(DB::version(i + 1))
            .execute(&mut **tx)
            .await?;
    }
    Ok(())
}

/// [`Store::holds`](super::Store::holds): whether `tx` sees the dedup record `(group, id)`.
pub(crate) async fn holds<DB>(
    tx: &mut Transaction<'static, DB>,
    group: &str,
    id: &str,
) -> Result<bool, sqlx::Error>
where
    DB: Dialect,
    for<'c> &'c mut DB::Connection: Executor<'c, Database = DB>,
    for<'q> DB::Arguments<'q>: IntoArguments<'q, DB>,
    for<'q> &'q str: Encode<'q, DB> + Type<DB>,
    i64: Type<DB> + for<'r> Decode<'r, DB>,
    usize: ColumnIndex<DB::Row>,
{
    let n: i64 = sqlx::query_scalar(&format!(
        "SELECT COUNT(*) FROM {DEDUP_TABLE} WHERE consumer_group = {} AND message_id = {}",
        DB::param(1),
        DB::param(2)
    ))
    .bind(group)
    .bind(id)
    .fetch_one(&mut **tx)
    .await?;
    Ok(n == 1)
}

/// [`Store::forget_runs`](super::Store::forget_runs): deletes the counted runs of `(group, id)`
/// in `tx`.
pub(crate) async fn forget_runs<DB>(
    tx: &mut Transaction<'static, DB>,
    group: &str,
    id: &str,
) -> Result<(), sqlx::Error>
where
    DB: Dialect,
    for<'c> &'c mut DB::Connection: Executor<'c, Database = DB>,
    for<'q> DB::Arguments<'q>: IntoArguments<'q, DB>,
    for<'q> &'q str: Encode<'q, DB> + Type<DB>,
{
    sqlx::query(&format!(
        "DELETE FROM {RUNS_TABLE} WHERE consumer_group = {} AND message_id = {}",
        DB::param(1),
        DB::param(2)
    ))
    .bind(group)
    .bind(id)
    .execute(&mut **tx)
    .await
    .map(|_| ())
}
