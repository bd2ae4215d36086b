//! The outbox's SQL, written once for both databases ([`Dialect`] writes each one's bind
//! parameters).

use super::{CHUNK, OUTBOX_TABLE, OutboxRow, PARKED_TABLE, PendingRow};
use crate::dedup::sql::Dialect;
use crate::error::Error;
use sqlx::{ColumnIndex, Decode, Encode, Executor, IntoArguments, Row, Transaction, Type};

/// `(p1, p2, …), (…)`: `rows` groups of `per_row` bind parameters.
fn values<DB: Dialect>(rows: usize, per_row: usize) -> String {
    (0..rows)
        .map(|r| {
            let row: Vec<String> = (1..=per_row).map(|c| DB::param(r * per_row + c)).collect();
            format!("({})", row.join(", "))
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// Inserts `rows` in the caller's transaction: they become visible, and publishable, only if it
/// commits. One statement per [`CHUNK`] rows.
pub(crate) async fn insert<DB>(
    tx: &mut Transaction<'static, DB>,
    rows: &[OutboxRow],
) -> Result<(), sqlx::Error>
where
    DB: Dialect,
    for<'c> &'c mut DB::Connection: Executor<'c, Database = DB>,
    for<'q> DB::Arguments<'q>: IntoArguments<'q, DB>,
    for<'q> String: Encode<'q, DB> + Type<DB>,
    for<'q> Option<String>: Encode<'q, DB> + Type<DB>,
    for<'q> Vec<u8>: Encode<'q, DB> + Type<DB>,
    for<'q> bool: Encode<'q, DB> + Type<DB>,
{
    for chunk in rows.chunks(CHUNK) {
        let sql = format!(
            "INSERT INTO {OUTBOX_TABLE} \
             (message_id, ordering_key, exchange, routing_key, mandatory, properties, body) \
             VALUES {}",
            values::<DB>(chunk.len(), 7)
        );
        let mut q = sqlx::query::<DB>(&sql);
        for r in chunk {
            q = q
                .bind(r.message_id.clone())
                .bind(r.ordering_key.clone())
                .bind(r.exchange.clone())
                .bind(r.routing_key.clone())
                .bind(r.mandatory)
                .bind(r.properties.clone())
                .bind(r.body.to_vec());
        }
        q.execute(&mut **tx).await?;
    }
    Ok(())
}

/// Up to `limit` committed rows in id order, as `filter` says. The table holds only what is not
/// yet confirmed, so a row whose transaction committed after a later id was read is still here.
///
/// A normal read leaves out held rows (`retry_at` set: the broker refused them) and every row
/// whose ordering key has a held row; a retry read (`retry_due`) takes the held rows due by then,
/// only the lowest of each key.
///
/// Why this cannot skip a late row or reorder a key: the read is of every committed row still
/// in the table, in id order, less exactly the ids in `filter.skip` (the relay's rows in flight,
/// confirmed or being deleted: ranges built from those ids and nothing else, see [`ranges`]).
/// There is no lower bound, so a row whose transaction committed after higher ids were read
/// (PostgreSQL hands ids out at insert: id 7 can commit after id 8) is in the next read
/// whatever its id; and since `LIMIT` cuts from the top, a row is never returned while a
/// lower committed row of its key that nobody took is left behind (unless that one is held,
/// and then its whole key is — in strict mode the rows after it). No cursor is needed for speed: the ranges keep the statement
/// one prepared statement, and the scan passes over only the rows the relay holds and held
/// rows. (On SQLite a cursor would even be safe from late commits — one writer at a time, and a
/// writer's ids are allocated inside its write lock, so ids are committed in order — but the
/// same read serves both databases.)
pub(crate) async fn pending<'e, DB, E>(
    db: E,
    limit: i64,
    filter: &Filter<'_>,
) -> Result<Vec<PendingRow>, Error>
where
    DB: Dialect,
    E: Executor<'e, Database = DB>,
    for<'q> DB::Arguments<'q>: IntoArguments<'q, DB>,
    for<'q> i64: Encode<'q, DB> + Type<DB> + Decode<'q, DB>,
    for<'r> String: Decode<'r, DB> + Type<DB>,
    for<'r> Option<String>: Decode<'r, DB>,
    for<'r> Vec<u8>: Decode<'r, DB> + Type<DB>,
    for<'r> bool: Decode<'r, DB> + Type<DB>,
    for<'a> &'a str: ColumnIndex<DB::Row>,
{
    if filter.strict && filter.retry_due.is_none() && !filter.all {
        let (sql, binds) = strict_read::<DB>(filter);
        let mut q = sqlx::query::<DB>(&sql);
        for b in binds {
            q = q.bind(b.unwrap_or(limit));
        }
        let rows = q
            .fetch_all(db)
            .await
            .map_err(|e| Error::Store(std::sync::Arc::new(e)))?;
        return rows.into_iter().map(pending_row).collect();
    }
    let mut n = 0;
    let mut next = || {
        n += 1;
        DB::param(n)
    };
    let mut sql = format!("SELECT {COLUMNS} FROM {OUTBOX_TABLE} o WHERE ");
    // The held-key test is a plain `NOT EXISTS` (a keyless row matches no held row: `NULL = x`
    // is never true), so PostgreSQL plans it as an anti-join on the small partial index of held
    // rows. Written as `ordering_key IS NULL OR NOT EXISTS …` it became a per-row subplan whose
    // cost estimate switched PostgreSQL's JIT on for every read (~17 ms of compiling each time).
    if filter.all {
        sql += "1 = 1";
    } else if filter.retry_due.is_some() {
        sql += &format!(
            "o.retry_at IS NOT NULL AND o.retry_at <= {} AND NOT EXISTS \
             (SELECT 1 FROM {OUTBOX_TABLE} h WHERE h.ordering_key = o.ordering_key \
             AND h.retry_at IS NOT NULL AND h.id < o.id)",
            next()
        );
    } else {
        // (Strict key order reads apart, `strict_read`: there only the rows *after* a held row
        // of their key wait, so a row before it goes first — holding the whole key would
        // block it for good — and the held row's retry waits for it.)
        sql += &format!(
            "o.retry_at IS NULL AND NOT EXISTS \
             (SELECT 1 FROM {OUTBOX_TABLE} h WHERE h.ordering_key = o.ordering_key \
             AND h.retry_at IS NOT NULL)"
        );
    }
    // Strict key order's retry read: a held row only if no row of its key before it is left
    // in the table but the confirmed ones (`done`) — none in flight, none not taken yet.
    let done = padded(filter.done);
    if filter.strict {
        sql += &format!(
            " AND NOT EXISTS (SELECT 1 FROM {OUTBOX_TABLE} e WHERE \
             e.ordering_key = o.ordering_key AND e.retry_at IS NULL AND e.id < o.id"
        );
        for _ in &done {
            sql += &format!(" AND e.id NOT BETWEEN {} AND {}", next(), next());
        }
        sql += ")";
    }
    let skip = padded(filter.skip);
    for _ in &skip {
        sql += &format!(" AND o.id NOT BETWEEN {} AND {}", next(), next());
    }
    sql += &format!(" ORDER BY o.id LIMIT {}", next());
    let mut q = sqlx::query::<DB>(&sql);
    if let Some(now) = filter.retry_due {
        q = q.bind(now);
    }
    if filter.strict {
        for (low, high) in done {
            q = q.bind(low).bind(high);
        }
    }
    for (low, high) in skip {
        q = q.bind(low).bind(high);
    }
    let rows = q
        .bind(limit)
        .fetch_all(db)
        .await
        .map_err(|e| Error::Store(std::sync::Arc::new(e)))?;
    rows.into_iter().map(pending_row).collect()
}

/// The columns a read returns (of the outbox table as `o`).
const COLUMNS: &str = "o.id, o.ordering_key, o.exchange, o.routing_key, o.mandatory, \
                       o.properties, o.body, o.attempts, o.last_error";

/// Strict key order's normal read, as SQL and its binds in order (`None`: the limit): the
/// keyless rows in id order, and of each key only its *head* — its lowest row neither held nor
/// confirmed (`done`) — if that head is not in flight (`skip`) and no held row of its key comes
/// before it. Driven from the heads (one pass over the partial index of keyed rows not held,
/// grouped by key, then a lookup by id each), not by probing the key of every pending row: with
/// few keys, all in flight, that probe walked the whole backlog at every read.
fn strict_read<DB: Dialect>(filter: &Filter<'_>) -> (String, Vec<Option<i64>>) {
    let mut n = 0;
    let mut next = || {
        n += 1;
        DB::param(n)
    };
    let (skip, done) = (padded(filter.skip), padded(filter.done));
    let mut binds: Vec<Option<i64>> = Vec::new();
    let mut sql = format!(
        "SELECT * FROM (SELECT {COLUMNS} FROM {OUTBOX_TABLE} o \
         WHERE o.ordering_key IS NULL AND o.retry_at IS NULL"
    );
    for &(low, high) in &skip {
        sql += &format!(" AND o.id NOT BETWEEN {} AND {}", next(), next());
        binds.extend([Some(low), Some(high)]);
    }
    sql += &format!(" ORDER BY o.id LIMIT {}) k", next());
    binds.push(None);
    sql += &format!(
        " UNION ALL SELECT {COLUMNS} FROM (SELECT MIN(e.id) AS id FROM {OUTBOX_TABLE} e \
         WHERE e.ordering_key IS NOT NULL AND e.retry_at IS NULL"
    );
    for &(low, high) in &done {
        sql += &format!(" AND e.id NOT BETWEEN {} AND {}", next(), next());
        binds.extend([Some(low), Some(high)]);
    }
    sql += &format!(
        " GROUP BY e.ordering_key) heads JOIN {OUTBOX_TABLE} o ON o.id = heads.id \
         WHERE NOT EXISTS (SELECT 1 FROM {OUTBOX_TABLE} h WHERE h.ordering_key = o.ordering_key \
         AND h.retry_at IS NOT NULL AND h.id < o.id)"
    );
    for &(low, high) in &skip {
        sql += &format!(" AND o.id NOT BETWEEN {} AND {}", next(), next());
        binds.extend([Some(low), Some(high)]);
    }
    sql += &format!(" ORDER BY 1 LIMIT {}", next());
    binds.push(None);
    (sql, binds)
}

/// A row of a read.
fn pending_row<R>(r: R) -> Result<PendingRow, Error>
where
    R: Row,
    for<'a> &'a str: ColumnIndex<R>,
    for<'r> i64: Decode<'r, R::Database> + Type<R::Database>,
    for<'r> String: Decode<'r, R::Database> + Type<R::Database>,
    for<'r> Option<String>: Decode<'r, R::Database>,
    for<'r> Vec<u8>: Decode<'r, R::Database> + Type<R::Database>,
    for<'r> bool: Decode<'r, R::Database> + Type<R::Database>,
{
    let get = |e: sqlx::Error| Error::Store(std::sync::Arc::new(e));
    let properties: Vec<u8> = r.try_get("properties").map_err(get)?;
    Ok(PendingRow {
        id: r.try_get("id").map_err(get)?,
        ordering_key: r.try_get("ordering_key").map_err(get)?,
        message: PendingRow::message(
            r.try_get("exchange").map_err(get)?,
            r.try_get("routing_key").map_err(get)?,
            r.try_get("mandatory").map_err(get)?,
            &properties,
            r.try_get("body").map_err(get)?,
        )?,
        attempts: r.try_get("attempts").map_err(get)?,
        last_error: r.try_get("last_error").map_err(get)?,
    })
}

/// Which rows a read is for.
#[derive(Debug, Default)]
pub(crate) struct Filter<'a> {
    /// A retry read: the held rows due by this time (Unix ms). `None`: a normal read.
    pub retry_due: Option<i64>,
    /// Not these rows (in flight, or confirmed and waiting for their delete), as inclusive id
    /// ranges: the relay's ids come in runs, so a few ranges stand for hundreds of ids and the
    /// statement stays the same from read to read (a list of ids was a new statement, prepared
    /// again, for every count).
    pub skip: &'a [(i64, i64)],
    /// Every row, held ones included (status and tests).
    pub all: bool,
    /// Strict key order: only keyed rows with no row of their key before them left in the
    /// table but the ones in `done`.
    pub strict: bool,
    /// The relay's confirmed rows not deleted yet (a subset of `skip`), as ranges.
    pub done: &'a [(i64, i64)],
}

/// When the first held row is due again (Unix ms), if any row is held.
pub(crate) async fn next_retry<'e, DB, E>(db: E) -> Result<Option<i64>, sqlx::Error>
where
    DB: Dialect,
    E: Executor<'e, Database = DB>,
    for<'q> DB::Arguments<'q>: IntoArguments<'q, DB>,
    for<'r> Option<i64>: Decode<'r, DB> + Type<DB>,
    usize: ColumnIndex<DB::Row>,
{
    sqlx::query_scalar::<DB, Option<i64>>(&format!(
        "SELECT MIN(retry_at) FROM {OUTBOX_TABLE} WHERE retry_at IS NOT NULL"
    ))
    .fetch_one(db)
    .await
}

/// SQLite's "seconds since the oldest row was written" (`created_at` is Unix seconds there).
#[cfg(feature = "sqlite")]
pub(crate) const SQLITE_AGE_SECONDS: &str =
    "CAST(strftime('%s', 'now') AS INTEGER) - MIN(created_at)";

/// PostgreSQL's "seconds since the oldest row was written" (`created_at` is a timestamp there).
#[cfg(feature = "postgres")]
pub(crate) const POSTGRES_AGE_SECONDS: &str =
    "CAST(EXTRACT(EPOCH FROM now() - MIN(created_at)) AS BIGINT)";

/// The rows in the outbox and how old the oldest is in seconds (`age_seconds`: the database's
/// expression for it), for the relay's gauges: a `COUNT(*)`, and the age of the first row by
/// primary key (one index lookup, not a `MIN(created_at)` over the whole table; ids are given
/// in the order the rows are written, so it is the oldest but for rows committed out of order
/// within a moment).
pub(crate) async fn backlog<'e, DB, E>(
    db: E,
    age_seconds: &str,
) -> Result<(u64, Option<u64>), sqlx::Error>
where
    DB: Dialect,
    E: Executor<'e, Database = DB>,
    for<'q> DB::Arguments<'q>: IntoArguments<'q, DB>,
    for<'r> i64: Decode<'r, DB> + Type<DB>,
    for<'r> Option<i64>: Decode<'r, DB>,
    usize: ColumnIndex<DB::Row>,
{
    let row = sqlx::query::<DB>(&format!(
        "SELECT (SELECT COUNT(*) FROM {OUTBOX_TABLE}), (SELECT {age_seconds} FROM \
         (SELECT created_at FROM {OUTBOX_TABLE} ORDER BY id LIMIT 1) AS oldest)"
    ))
    .fetch_one(db)
    .await?;
    let rows: i64 = row.try_get(0)?;
    let age: Option<i64> = row.try_get(1)?;
    Ok((rows.max(0) as u64, age.map(|a| a.max(0) as u64)))
}

/// Deletes the rows `ids` (confirmed by the broker); returns how many were there. (The relay
/// deletes with [`remove_on`], on a connection it set up for it.)
#[cfg(test)]
pub(crate) async fn remove<'e, DB, E>(db: E, ids: &[i64]) -> Result<u64, sqlx::Error>
where
    DB: Dialect,
    E: Executor<'e, Database = DB> + Copy,
    for<'q> DB::Arguments<'q>: IntoArguments<'q, DB>,
    for<'q> i64: Encode<'q, DB> + Type<DB>,
    DB::QueryResult: RowsAffected,
{
    let mut n = 0;
    for (sql, chunk) in deletes::<DB>(ids) {
        let mut q = sqlx::query::<DB>(&sql);
        for (low, high) in chunk {
            q = q.bind(low).bind(high);
        }
        n += q.execute(db).await?.rows_affected();
    }
    Ok(n)
}

/// [`remove`] on one connection.
pub(crate) async fn remove_on<DB>(
    conn: &mut DB::Connection,
    ids: &[i64],
) -> Result<u64, sqlx::Error>
where
    DB: Dialect,
    for<'c> &'c mut DB::Connection: Executor<'c, Database = DB>,
    for<'q> DB::Arguments<'q>: IntoArguments<'q, DB>,
    for<'q> i64: Encode<'q, DB> + Type<DB>,
    DB::QueryResult: RowsAffected,
{
    let mut n = 0;
    for (sql, chunk) in deletes::<DB>(ids) {
        let mut q = sqlx::query::<DB>(&sql);
        for (low, high) in chunk {
            q = q.bind(low).bind(high);
        }
        n += q.execute(&mut *conn).await?.rows_affected();
    }
    Ok(n)
}

/// The DELETE statements for `ids`, with their ranges to bind (padded).
fn deletes<DB: Dialect>(ids: &[i64]) -> Vec<(String, Vec<(i64, i64)>)> {
    ranges(ids.iter().copied())
        .chunks(RANGES)
        .map(|chunk| {
            let chunk = padded(chunk);
            let list: Vec<String> = (0..chunk.len())
                .map(|i| {
                    format!(
                        "id BETWEEN {} AND {}",
                        DB::param(2 * i + 1),
                        DB::param(2 * i + 2)
                    )
                })
                .collect();
            let sql = format!("DELETE FROM {OUTBOX_TABLE} WHERE {}", list.join(" OR "));
            (sql, chunk)
        })
        .collect()
}

/// Ranges per DELETE statement.
const RANGES: usize = 256;

/// `ids` as inclusive ranges of consecutive ids, in order (duplicates merged). A range stands
/// for exactly the ids in it: ids are unique integers, so `id BETWEEN a AND b` over a range
/// built from ids `a..=b`, all of them given, matches those rows and no other.
pub(crate) fn ranges(ids: impl IntoIterator<Item = i64>) -> Vec<(i64, i64)> {
    let mut ids: Vec<i64> = ids.into_iter().collect();
    ids.sort_unstable();
    let mut out: Vec<(i64, i64)> = Vec::new();
    for id in ids {
        match out.last_mut() {
            Some((_, high)) if id <= high.saturating_add(1) => *high = (*high).max(id),
            _ => out.push((id, id)),
        }
    }
    out
}

/// `ranges` padded to a power of two by repeating the last one (the same rows): the number of
/// distinct statements stays small, so each one is prepared once per connection and cached.
fn padded(ranges: &[(i64, i64)]) -> Vec<(i64, i64)> {
    let mut out = ranges.to_vec();
    if let Some(&last) = ranges.last() {
        out.resize(ranges.len().next_power_of_two(), last);
    }
    out
}

/// `rows_affected` of a statement's result, for both databases.
pub(crate) trait RowsAffected {
    fn rows_affected(&self) -> u64;
}

#[cfg(feature = "sqlite")]
impl RowsAffected for sqlx::sqlite::SqliteQueryResult {
    fn rows_affected(&self) -> u64 {
        sqlx::sqlite::SqliteQueryResult::rows_affected(self)
    }
}

#[cfg(feature = "postgres")]
impl RowsAffected for sqlx::postgres::PgQueryResult {
    fn rows_affected(&self) -> u64 {
        sqlx::postgres::PgQueryResult::rows_affected(self)
    }
}

/// Records a failed publish of row `id`: one more attempt, why, and when to try again (Unix ms).
/// Until it goes through, the row is held and so are the later rows of its ordering key.
pub(crate) async fn record_failure<'e, DB, E>(
    db: E,
    id: i64,
    reason: &str,
    retry_at: i64,
) -> Result<(), sqlx::Error>
where
    DB: Dialect,
    E: Executor<'e, Database = DB>,
    for<'q> DB::Arguments<'q>: IntoArguments<'q, DB>,
    for<'q> i64: Encode<'q, DB> + Type<DB>,
    for<'q> &'q str: Encode<'q, DB> + Type<DB>,
{
    let sql = format!(
        "UPDATE {OUTBOX_TABLE} SET attempts = attempts + 1, last_error = {}, retry_at = {} \
         WHERE id = {}",
        DB::param(1),
        DB::param(2),
        DB::param(3)
    );
    sqlx::query::<DB>(&sql)
        .bind(reason)
        .bind(retry_at)
        .bind(id)
        .execute(db)
        .await
        .map(|_| ())
}

/// The columns a row keeps when it is parked or requeued.
pub(crate) const MESSAGE_COLUMNS: &str =
    "message_id, ordering_key, exchange, routing_key, mandatory, properties, body";

/// Moves row `id` to the parked table — one more attempt, `reason` — and out of the outbox, in
/// one transaction (it then holds back no row of its key).
pub(crate) async fn park<DB>(
    pool: &sqlx::Pool<DB>,
    id: i64,
    reason: &str,
) -> Result<(), sqlx::Error>
where
    DB: Dialect,
    for<'c> &'c mut DB::Connection: Executor<'c, Database = DB>,
    for<'q> DB::Arguments<'q>: IntoArguments<'q, DB>,
    for<'q> i64: Encode<'q, DB> + Type<DB>,
    for<'q> &'q str: Encode<'q, DB> + Type<DB>,
    DB::QueryResult: RowsAffected,
{
    let mut tx = pool.begin().await?;
    sqlx::query::<DB>(&format!(
        "INSERT INTO {PARKED_TABLE} ({MESSAGE_COLUMNS}, attempts, last_error, created_at) \
         SELECT {MESSAGE_COLUMNS}, attempts + 1, {}, created_at FROM {OUTBOX_TABLE} WHERE id = {}",
        DB::param(1),
        DB::param(2)
    ))
    .bind(reason)
    .bind(id)
    .execute(&mut *tx)
    .await?;
    let deleted = sqlx::query::<DB>(&format!(
        "DELETE FROM {OUTBOX_TABLE} WHERE id = {}",
        DB::param(1)
    ))
    .bind(id)
    .execute(&mut *tx)
    .await?
    .rows_affected();
    if deleted == 0 {
        // Discarded (or deleted) by someone else after the copy was read, before this delete
        // (PostgreSQL's READ COMMITTED): it stays gone, not parked.
        return tx.rollback().await;
    }
    tx.commit().await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_are_runs_of_consecutive_ids_and_padding_repeats_the_last() {
        assert_eq!(ranges([]), []);
        assert_eq!(
            ranges([8, 1, 3, 2, 3, 5, 7, i64::MAX]),
            [(1, 3), (5, 5), (7, 8), (i64::MAX, i64::MAX)]
        );
        assert_eq!(padded(&[]), []);
        assert_eq!(padded(&[(1, 3)]), [(1, 3)]);
        assert_eq!(
            padded(&[(1, 3), (5, 5), (7, 8)]),
            [(1, 3), (5, 5), (7, 8), (7, 8)]
        );
    }
}
