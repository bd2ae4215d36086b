//! Sealing, retention and counting of a SQLite store's segments. Each runs in a transaction of
//! its own that takes the write lock (`BEGIN IMMEDIATE`), so no claim runs meanwhile, in this
//! process or another.

use super::{
    FILTERS_TABLE, SEGMENTS_TABLE, Segments, count_by_group, fingerprint, listed as listed_seqs,
    record_segment, table,
};
use crate::dedup::{DEDUP_TABLE, unix_seconds};
use sqlx::{Sqlite, SqlitePool};
use std::time::SystemTime;

/// The migration that creates the segment tables.
pub(crate) const MIGRATION: &[&str] = &[
    "CREATE TABLE IF NOT EXISTS rabbit_once_segments (
        seq    INTEGER PRIMARY KEY AUTOINCREMENT,
        rows   INTEGER NOT NULL,
        min_at INTEGER NOT NULL,
        max_at INTEGER NOT NULL
    )",
    "CREATE TABLE IF NOT EXISTS rabbit_once_segment_filters (
        seq    INTEGER PRIMARY KEY,
        filter BLOB NOT NULL,
        hashes BLOB NOT NULL
    )",
];

/// Seals the table that takes inserts if it has reached the threshold: in a transaction of its
/// own, before a claim's transaction begins (see [`Segments::seal_if_due`]).
pub(crate) async fn seal_if_due(segments: &Segments, pool: &SqlitePool) {
    segments
        .seal_if_due(|min_rows| seal(segments, pool, min_rows))
        .await;
}

/// Moves every record of the table that takes inserts into a new sealed segment, if it holds
/// at least `min_rows`; returns the records moved (0: nothing sealed).
pub(crate) async fn seal(
    segments: &Segments,
    pool: &SqlitePool,
    min_rows: u64,
) -> Result<u64, sqlx::Error> {
    let mut tx = pool.begin_with("BEGIN IMMEDIATE").await?;
    let before = fingerprint::<Sqlite>(&mut tx).await?;
    let rows: i64 = sqlx::query_scalar(&format!("SELECT COUNT(*) FROM {DEDUP_TABLE}"))
        .fetch_one(&mut *tx)
        .await?;
    let rows = rows.max(0) as u64;
    if rows == 0 || rows < min_rows {
        tx.rollback().await?;
        segments.counted(rows);
        return Ok(0);
    }
    // The seq AUTOINCREMENT gives this row: never one used before, even if rolled back.
    sqlx::query(&format!(
        "INSERT INTO {SEGMENTS_TABLE} (rows, min_at, max_at) VALUES (0, 0, 0)"
    ))
    .execute(&mut *tx)
    .await?;
    let seq: i64 = sqlx::query_scalar("SELECT last_insert_rowid()")
        .fetch_one(&mut *tx)
        .await?;
    let name = table(seq);
    sqlx::query(&format!(
        "CREATE TABLE {name} (
            consumer_group TEXT NOT NULL,
            message_id     TEXT NOT NULL,
            processed_at   INTEGER NOT NULL,
            PRIMARY KEY (consumer_group, message_id)
        ) WITHOUT ROWID"
    ))
    .execute(&mut *tx)
    .await?;
    sqlx::query(&format!(
        "INSERT INTO {name} SELECT consumer_group, message_id, processed_at FROM {DEDUP_TABLE} \
         ORDER BY consumer_group, message_id"
    ))
    .execute(&mut *tx)
    .await?;
    let records = format!("SELECT consumer_group, message_id, processed_at FROM {name}");
    let sealing = record_segment::<Sqlite>(&mut tx, seq, rows, &records).await?;
    sqlx::query(&format!("DELETE FROM {DEDUP_TABLE}"))
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;
    tracing::debug!(segment = %name, rows, "sealed a dedup segment");
    segments.sealed_one(before, seq, sealing);
    Ok(rows)
}

/// Deletes up to `limit` records of `group` older than `before` from the sealed segments,
/// oldest segment first; drops the segments left empty. Returns how many were deleted.
pub(crate) async fn purge(
    pool: &SqlitePool,
    group: &str,
    before: SystemTime,
    limit: u32,
) -> Result<u64, sqlx::Error> {
    let before = unix_seconds(before);
    let candidates: Vec<i64> = sqlx::query_scalar(&format!(
        "SELECT seq FROM {SEGMENTS_TABLE} WHERE min_at < ? ORDER BY seq"
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
        let mut tx = pool.begin_with("BEGIN IMMEDIATE").await?;
        // Read again under the lock: another process may have dropped it meanwhile.
        let max_at: Option<i64> = sqlx::query_scalar(&format!(
            "SELECT max_at FROM {SEGMENTS_TABLE} WHERE seq = ?"
        ))
        .bind(seq)
        .fetch_optional(&mut *tx)
        .await?;
        let Some(max_at) = max_at else {
            tx.rollback().await?;
            continue;
        };
        let name = table(seq);
        // A segment wholly older than the cutoff: the group's records in key order (a range
        // of the primary key); else only the ones older than the cutoff.
        let older = if max_at < before {
            ""
        } else {
            "AND processed_at < ?"
        };
        let sql = format!(
            "DELETE FROM {name} WHERE consumer_group = ? AND message_id IN
               (SELECT message_id FROM {name} WHERE consumer_group = ? {older} LIMIT ?)"
        );
        let mut q = sqlx::query(&sql).bind(group).bind(group);
        if !older.is_empty() {
            q = q.bind(before);
        }
        let n = q.bind(left as i64).execute(&mut *tx).await?.rows_affected();
        deleted += n;
        let empty: Option<i64> = sqlx::query_scalar(&format!("SELECT 1 FROM {name} LIMIT 1"))
            .fetch_optional(&mut *tx)
            .await?;
        if empty.is_none() {
            sqlx::query(&format!("DROP TABLE {name}"))
                .execute(&mut *tx)
                .await?;
            for t in [SEGMENTS_TABLE, FILTERS_TABLE] {
                sqlx::query(&format!("DELETE FROM {t} WHERE seq = ?"))
                    .bind(seq)
                    .execute(&mut *tx)
                    .await?;
            }
        } else if n > 0 {
            // What is left may all be younger than the cutoff: the next pass skips it then. (A
            // pass that deleted nothing leaves it: another group's records hold `min_at`.)
            sqlx::query(&format!(
                "UPDATE {SEGMENTS_TABLE} SET min_at = (SELECT MIN(processed_at) FROM {name}) \
                 WHERE seq = ?"
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
/// segment, by group name.
pub(crate) async fn records_by_group(pool: &SqlitePool) -> Result<Vec<(String, u64)>, sqlx::Error> {
    // One read transaction: the list and the tables it names are one snapshot (a segment
    // sealed or dropped meanwhile is not half seen).
    let mut tx = pool.begin().await?;
    // A file from before segments existed has no list (nothing is created by looking).
    let listed: Option<String> =
        sqlx::query_scalar("SELECT name FROM sqlite_master WHERE type = 'table' AND name = ?")
            .bind(SEGMENTS_TABLE)
            .fetch_optional(&mut *tx)
            .await?;
    let seqs: Vec<i64> = match listed {
        Some(_) => listed_seqs::<Sqlite>(&mut tx).await?,
        None => Vec::new(),
    };
    let rows: Vec<(String, i64)> = sqlx::query_as(&count_by_group(&seqs))
        .fetch_all(&mut *tx)
        .await?;
    tx.rollback().await?;
    Ok(rows
        .into_iter()
        .map(|(g, n)| (g, n.max(0) as u64))
        .collect())
}
