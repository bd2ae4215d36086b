//! Sealing, retention and counting of a PostgreSQL store's segments.
//!
//! Many processes claim at once, so the list is guarded by a table lock rather than a write
//! lock: every claim's transaction holds `ROW EXCLUSIVE` on the table that takes inserts from
//! its insert (or, when its isolation is not READ COMMITTED, its first statement,
//! [`LOCK_FOR_CLAIM`]) to its end; a seal, or the drop of a segment retention
//! emptied, takes `ACCESS EXCLUSIVE` on it, so it commits only between claims, and a claim's
//! snapshot (taken after its lock) always sees the list as the seal left it. The seal waits at
//! most a second for the claims in flight (claims meanwhile queue behind it): a seal that
//! cannot get the lock gives up and is tried again later.

use super::{
    FILTERS_TABLE, SEGMENTS_TABLE, Segments, count_by_group, fingerprint, listed as listed_seqs,
    record_segment, table,
};
use crate::dedup::{DEDUP_TABLE, unix_seconds};
use sqlx::{PgPool, Postgres};
use std::time::SystemTime;

/// The migration that creates the segment tables.
pub(crate) const MIGRATION: &[&str] = &[
    "CREATE TABLE IF NOT EXISTS rabbit_once_segments (
        seq    BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
        rows   BIGINT NOT NULL,
        min_at BIGINT NOT NULL,
        max_at BIGINT NOT NULL
    )",
    "CREATE TABLE IF NOT EXISTS rabbit_once_segment_filters (
        seq    BIGINT PRIMARY KEY,
        filter BYTEA NOT NULL,
        hashes BYTEA NOT NULL
    )",
];

/// What a claim's transaction runs first when the store's transactions are not READ COMMITTED:
/// the lock before any query, so that no seal or drop commits while it runs and its snapshot
/// (taken at its first query) comes after the last one that did. (Under READ COMMITTED the
/// claim's insert takes the lock and reads the list in one statement, whose snapshot is taken
/// after the lock: nothing to run first.)
pub(crate) const LOCK_FOR_CLAIM: &str = "LOCK TABLE rabbit_once_processed IN ROW EXCLUSIVE MODE";

/// How the seal's, retention's and counting's own transactions begin: whatever the database's
/// default, each statement sees what committed before it (a lock waited for, then a look).
const BEGIN_READ_COMMITTED: &str = "BEGIN ISOLATION LEVEL READ COMMITTED";

/// Takes the lock that keeps claims out (and, for a drop, the segment's table), waiting at most
/// a second; the transaction's other lock waits are bounded the same way.
async fn lock_out_claims(
    tx: &mut sqlx::PgConnection,
    also: Option<&str>,
) -> Result<(), sqlx::Error> {
    let tables = match also {
        Some(t) => format!("{DEDUP_TABLE}, {t}"),
        None => DEDUP_TABLE.to_string(),
    };
    for sql in [
        "SET LOCAL lock_timeout = '1s'".to_string(),
        format!("LOCK TABLE {tables} IN ACCESS EXCLUSIVE MODE"),
    ] {
        sqlx::query(&sql).execute(&mut *tx).await?;
    }
    Ok(())
}

/// Seals the table that takes inserts if it has reached the threshold: in a transaction of its
/// own, before a claim's transaction begins (see [`Segments::seal_if_due`]).
pub(crate) async fn seal_if_due(segments: &Segments, pool: &PgPool) {
    segments
        .seal_if_due(|min_rows| seal(segments, pool, min_rows))
        .await;
}

/// Moves every record of the table that takes inserts into a new sealed segment, if it holds
/// at least `min_rows`; returns the records moved (0: nothing sealed).
pub(crate) async fn seal(
    segments: &Segments,
    pool: &PgPool,
    min_rows: u64,
) -> Result<u64, sqlx::Error> {
    let count = format!("SELECT COUNT(*) FROM {DEDUP_TABLE}");
    // Counted without the lock first: a seal that is not due must not stall the claims.
    let rows: i64 = sqlx::query_scalar(&count).fetch_one(pool).await?;
    if rows <= 0 || (rows as u64) < min_rows {
        segments.counted(rows.max(0) as u64);
        return Ok(0);
    }
    let started = std::time::Instant::now();
    let mut tx = pool.begin_with(BEGIN_READ_COMMITTED).await?;
    lock_out_claims(&mut tx, None).await?;
    let waited = started.elapsed();
    let before = fingerprint::<Postgres>(&mut tx).await?;
    let rows: i64 = sqlx::query_scalar(&count).fetch_one(&mut *tx).await?;
    let rows = rows.max(0) as u64;
    if rows == 0 || rows < min_rows {
        tx.rollback().await?;
        segments.counted(rows);
        return Ok(0);
    }
    // An identity: never a seq used before, even by a seal that rolled back.
    let seq: i64 = sqlx::query_scalar(&format!(
        "INSERT INTO {SEGMENTS_TABLE} (rows, min_at, max_at) VALUES (0, 0, 0) RETURNING seq"
    ))
    .fetch_one(&mut *tx)
    .await?;
    let name = table(seq);
    let records = format!(
        "SELECT consumer_group, message_id, CAST(FLOOR(EXTRACT(EPOCH FROM processed_at)) AS BIGINT) \
         FROM {DEDUP_TABLE}"
    );
    let sealing = record_segment::<Postgres>(&mut tx, seq, rows, &records).await?;
    // Everything below in the schema the table is in (the first schema on the search path that
    // exists may be another one).
    let schema: String = sqlx::query_scalar(&format!(
        "SELECT n.nspname::text FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
         WHERE c.oid = '{DEDUP_TABLE}'::regclass"
    ))
    .fetch_one(&mut *tx)
    .await?;
    sqlx::query(&format!(
        "SET LOCAL search_path TO {}",
        crate::dedup::postgres::quote_ident(&schema)
    ))
    .execute(&mut *tx)
    .await?;
    // The table becomes the segment as it is, keys and all (nothing copied: the claims wait only
    // for the filter to be built), and a new, empty one of the same make takes the inserts.
    // Claims waiting for the lock find the new table by its name once they have it.
    for sql in [
        format!("ALTER TABLE {DEDUP_TABLE} RENAME TO {name}"),
        format!("ALTER INDEX IF EXISTS {DEDUP_TABLE}_pkey RENAME TO {name}_pkey"),
        format!("ALTER INDEX IF EXISTS {DEDUP_TABLE}_at RENAME TO {name}_at"),
    ] {
        sqlx::query(&sql).execute(&mut *tx).await?;
    }
    for sql in crate::dedup::postgres::HOT_TABLE {
        sqlx::query(sql).execute(&mut *tx).await?;
    }
    tx.commit().await?;
    tracing::debug!(segment = %name, rows, ?waited, took = ?started.elapsed(), "sealed a dedup segment");
    segments.sealed_one(before, seq, sealing);
    Ok(rows)
}

/// An arbitrary constant: the advisory lock that lets one retention pass at a time work on the
/// segments (two deleting from one segment, then one dropping it, would deadlock).
const PURGE_LOCK: i64 = 0x7261_6262_6974_7067;

/// Deletes up to `limit` records of `group` older than `before` from the sealed segments,
/// oldest segment first; drops the segments left empty. Returns how many were deleted.
pub(crate) async fn purge(
    pool: &PgPool,
    group: &str,
    before: SystemTime,
    limit: u32,
) -> Result<u64, sqlx::Error> {
    let before = unix_seconds(before);
    let candidates: Vec<i64> = sqlx::query_scalar(&format!(
        "SELECT seq FROM {SEGMENTS_TABLE} WHERE min_at < $1 ORDER BY seq"
    ))
    .bind(before)
    .fetch_all(pool)
    .await?;
    let mut deleted = 0u64;
    for seq in candidates {
        let left = limit as u64 - deleted;
        if left == 0 {
            break;
        }
        let mut tx = pool.begin_with(BEGIN_READ_COMMITTED).await?;
        sqlx::query("SELECT pg_advisory_xact_lock($1)")
            .bind(PURGE_LOCK)
            .execute(&mut *tx)
            .await?;
        // Read again under the lock: another process may have dropped it meanwhile.
        let max_at: Option<i64> = sqlx::query_scalar(&format!(
            "SELECT max_at FROM {SEGMENTS_TABLE} WHERE seq = $1"
        ))
        .bind(seq)
        .fetch_optional(&mut *tx)
        .await?;
        let Some(max_at) = max_at else {
            tx.rollback().await?;
            continue;
        };
        let name = table(seq);
        // A segment wholly older than the cutoff: the group's records; else only the ones
        // older than the cutoff.
        let older = if max_at < before {
            ""
        } else {
            "AND processed_at < to_timestamp($3)"
        };
        let sql = format!(
            "DELETE FROM {name} WHERE ctid IN
               (SELECT ctid FROM {name} WHERE consumer_group = $1 {older} LIMIT $2)"
        );
        let mut q = sqlx::query(&sql).bind(group).bind(left as i64);
        if !older.is_empty() {
            q = q.bind(before as f64);
        }
        let n = q.execute(&mut *tx).await?.rows_affected();
        deleted += n;
        let empty: Option<i32> = sqlx::query_scalar(&format!("SELECT 1 FROM {name} LIMIT 1"))
            .fetch_optional(&mut *tx)
            .await?;
        if empty.is_none() {
            // No claim may be reading it when it goes.
            lock_out_claims(&mut tx, Some(&name)).await?;
            sqlx::query(&format!("DROP TABLE {name}"))
                .execute(&mut *tx)
                .await?;
            for t in [SEGMENTS_TABLE, FILTERS_TABLE] {
                sqlx::query(&format!("DELETE FROM {t} WHERE seq = $1"))
                    .bind(seq)
                    .execute(&mut *tx)
                    .await?;
            }
        } else if n > 0 {
            // What is left may all be younger than the cutoff: the next pass skips it then. (A
            // pass that deleted nothing leaves it: another group's records hold `min_at`.)
            sqlx::query(&format!(
                "UPDATE {SEGMENTS_TABLE} SET min_at = (SELECT CAST(FLOOR(EXTRACT(EPOCH FROM \
                 MIN(processed_at))) AS BIGINT) FROM {name}) WHERE seq = $1"
            ))
            .bind(seq)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
    }
    Ok(deleted)
}

/// Dedup records per consumer group, in the table that takes inserts and in every sealed
/// segment, by group name. `None` when the dedup table does not exist (nothing is created by
/// looking).
pub(crate) async fn records_by_group(
    pool: &PgPool,
) -> Result<Option<Vec<(String, u64)>>, sqlx::Error> {
    let mut tx = pool.begin_with(BEGIN_READ_COMMITTED).await?;
    let exists = |t: &str| {
        sqlx::query_scalar::<_, Option<String>>("SELECT to_regclass($1)::text").bind(t.to_string())
    };
    if exists(DEDUP_TABLE).fetch_one(&mut *tx).await?.is_none() {
        tx.rollback().await?;
        return Ok(None);
    }
    // Neither a seal nor a drop commits between reading the list and counting the tables.
    sqlx::query(&format!("LOCK TABLE {DEDUP_TABLE} IN ACCESS SHARE MODE"))
        .execute(&mut *tx)
        .await?;
    let seqs = match exists(SEGMENTS_TABLE).fetch_one(&mut *tx).await? {
        Some(_) => listed_seqs::<Postgres>(&mut tx).await?,
        None => Vec::new(),
    };
    let rows: Vec<(String, i64)> = sqlx::query_as(&count_by_group(&seqs))
        .fetch_all(&mut *tx)
        .await?;
    tx.rollback().await?;
    Ok(Some(
        rows.into_iter()
            .map(|(g, n)| (g, n.max(0) as u64))
            .collect(),
    ))
}
