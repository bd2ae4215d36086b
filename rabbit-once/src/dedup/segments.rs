//! Sealed segments of a SQLite dedup table: what keeps random (UUIDv4) message ids cheap when the
//! table has grown to millions of records.
//!
//! A random id lands on a random leaf of the dedup table's B-tree; once the tree is much larger
//! than a group commit, every id dirties a page of its own (written to the WAL, copied back at
//! checkpoint). So the table that takes inserts is kept small: when it holds
//! [`SqliteOptions::segment_rows`](crate::SqliteOptions::segment_rows) records, they are moved in
//! one transaction, in key order, into a new *sealed segment* table that is never written again
//! (`rabbit_once_processed_<seq>`), listed in `rabbit_once_segments` with a Bloom filter of its
//! keys ([`Filter`]). A claim asks each segment's filter (in memory) about each id and reads a
//! segment's table only for the ids its filter cannot rule out; retention deletes from segments
//! and drops the ones it empties.
//!
//! Correctness rests on three things, each tested: a claim lists the segments inside its own
//! `BEGIN IMMEDIATE` transaction (the write lock is held, so no seal can commit in between, from
//! this process or another); the in-memory list only ever holds committed segments (a seal
//! updates it after its commit; any other change is found by comparing `(max seq, count)`, and
//! seqs are never reused — `AUTOINCREMENT`); and a filter never says no to a key it holds.
//! Segments are probed whether or not this store seals: a file sealed by another process, or by
//! an earlier run with the option on, is always read.

use super::covers::{Segment, Tree};
use super::filter::{Filter, key_hash};
use super::{DEDUP_TABLE, unix_seconds};
use sqlx::{Row, Sqlite, SqliteConnection, SqlitePool};
use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

/// The list of sealed segments.
pub(crate) const SEGMENTS_TABLE: &str = "rabbit_once_segments";

/// The migration that creates [`SEGMENTS_TABLE`].
pub(crate) const MIGRATION: &[&str] = &["CREATE TABLE IF NOT EXISTS rabbit_once_segments (
        seq        INTEGER PRIMARY KEY AUTOINCREMENT,
        table_name TEXT NOT NULL,
        rows       INTEGER NOT NULL,
        min_at     INTEGER NOT NULL,
        max_at     INTEGER NOT NULL,
        filter     BLOB NOT NULL,
        hashes     BLOB NOT NULL
    )"];

/// What a store knows of the sealed segments: shared by its clones.
#[derive(Debug, Default)]
struct Known {
    /// `(max seq, count)` of the list these segments were read from.
    fingerprint: (i64, i64),
    tree: Arc<Tree>,
    /// Records in the table that takes inserts, as far as this store knows (`None`: count it).
    hot_rows: Option<u64>,
}

/// A SQLite store's sealed segments: the list, the filters, and when to seal.
#[derive(Debug, Clone, Default)]
pub(crate) struct Segments {
    /// Seal when the table that takes inserts holds this many records (0: never).
    seal_at: u64,
    known: Arc<Mutex<Known>>,
}

impl Segments {
    pub(crate) fn new(seal_at: u64) -> Self {
        Segments {
            seal_at,
            known: Arc::default(),
        }
    }

    fn known(&self) -> std::sync::MutexGuard<'_, Known> {
        self.known.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The committed segments, read again if the list changed since the last look. Called in
    /// the claim's transaction (the write lock held).
    async fn current(&self, conn: &mut SqliteConnection) -> Result<Arc<Tree>, sqlx::Error> {
        let row = sqlx::query(&format!(
            "SELECT COALESCE(MAX(seq), 0), COUNT(*) FROM {SEGMENTS_TABLE}"
        ))
        .fetch_one(&mut *conn)
        .await?;
        let fingerprint: (i64, i64) = (row.try_get(0)?, row.try_get(1)?);
        let mut tree = {
            let k = self.known();
            if k.fingerprint == fingerprint {
                return Ok(k.tree.clone());
            }
            (*k.tree).clone()
        };
        // Keep what is loaded; drop what is gone; read only the new segments' filters.
        let listed: Vec<(i64, String)> = sqlx::query_as(&format!(
            "SELECT seq, table_name FROM {SEGMENTS_TABLE} ORDER BY seq"
        ))
        .fetch_all(&mut *conn)
        .await?;
        let seqs: HashSet<i64> = listed.iter().map(|(seq, _)| *seq).collect();
        tree.retain(|seq| seqs.contains(&seq));
        let last = tree.last_seq();
        for (seq, table) in listed.into_iter().filter(|(seq, _)| *seq > last) {
            let bytes: Vec<u8> = sqlx::query_scalar(&format!(
                "SELECT filter FROM {SEGMENTS_TABLE} WHERE seq = ?"
            ))
            .bind(seq)
            .fetch_one(&mut *conn)
            .await?;
            let filter = Filter::from_bytes(&bytes);
            if filter.is_none() {
                tracing::warn!(segment = %table, "unreadable dedup segment filter; its table is read for every id");
            }
            tree.push(Arc::new(Segment { seq, table, filter }));
        }
        // Cover every FANOUT nodes of a level with one filter, from the leaves' key hashes.
        while let Some(range) = tree.next_to_cover() {
            let under = tree.seqs_under(range.clone());
            let filter = cover_filter(conn, &under).await?;
            tree.cover(range, filter);
        }
        let tree = Arc::new(tree);
        let mut k = self.known();
        k.fingerprint = fingerprint;
        k.tree = tree.clone();
        Ok(tree)
    }

    /// Which of `ids` (sorted, distinct) a sealed segment holds for `group`.
    pub(crate) async fn sealed(
        &self,
        conn: &mut SqliteConnection,
        group: &str,
        ids: &[&str],
    ) -> Result<HashSet<String>, sqlx::Error> {
        let tree = self.current(conn).await?;
        let mut found = HashSet::new();
        if tree.is_empty() {
            return Ok(found);
        }
        // The ids each segment may hold, by the filters on the way down to it.
        let mut asks: Vec<(&Arc<Segment>, Vec<&str>)> = Vec::new();
        let mut candidates = Vec::new();
        for id in ids {
            candidates.clear();
            tree.candidates(key_hash(group, id), &mut candidates);
            for s in &candidates {
                match asks.iter_mut().find(|(t, _)| Arc::ptr_eq(t, s)) {
                    Some((_, list)) => list.push(id),
                    None => asks.push((s, vec![id])),
                }
            }
        }
        for (s, maybe) in asks {
            for chunk in maybe.chunks(super::sqlite::CHUNK) {
                let mut q = sqlx::QueryBuilder::<Sqlite>::new(format!(
                    "SELECT message_id FROM {} WHERE consumer_group = ",
                    s.table
                ));
                q.push_bind(group).push(" AND message_id IN (");
                let mut sep = q.separated(", ");
                for id in chunk {
                    sep.push_bind(*id);
                }
                q.push(")");
                for row in q.build().fetch_all(&mut *conn).await? {
                    found.insert(row.try_get::<String, _>(0)?);
                }
            }
        }
        Ok(found)
    }

    /// Forgets how many records the table that takes inserts holds: counted at the next claim
    /// (after records were written behind this store's back, or sealed by hand).
    pub(crate) fn forget_count(&self) {
        self.known().hot_rows = None;
    }

    /// Counts `n` records just inserted into the table that takes inserts.
    pub(crate) fn inserted(&self, n: u64) {
        if let Some(rows) = self.known().hot_rows.as_mut() {
            *rows += n;
        }
    }

    /// Seals the table that takes inserts if it has reached the threshold: in a transaction of
    /// its own, before a claim's transaction begins. A failure is logged and left for the next
    /// time (the table only grows meanwhile).
    pub(crate) async fn seal_if_due(&self, pool: &SqlitePool) {
        if self.seal_at == 0 {
            return;
        }
        let due = match self.known().hot_rows {
            Some(rows) => rows >= self.seal_at,
            None => true, // count it (in seal)
        };
        if !due {
            return;
        }
        if let Err(e) = self.seal(pool, self.seal_at).await {
            tracing::warn!(error = %e, "sealing a dedup segment failed; will try again");
            // Count again next time rather than retrying on every claim.
            self.known().hot_rows = Some(0);
        }
    }

    /// Moves every record of the table that takes inserts into a new sealed segment, if it
    /// holds at least `min_rows`; returns the records moved (0: nothing sealed).
    pub(crate) async fn seal(&self, pool: &SqlitePool, min_rows: u64) -> Result<u64, sqlx::Error> {
        let mut tx = pool.begin_with("BEGIN IMMEDIATE").await?;
        let rows: i64 = sqlx::query_scalar(&format!("SELECT COUNT(*) FROM {DEDUP_TABLE}"))
            .fetch_one(&mut *tx)
            .await?;
        let rows = rows.max(0) as u64;
        if rows == 0 || rows < min_rows {
            tx.rollback().await?;
            self.known().hot_rows = Some(rows);
            return Ok(0);
        }
        // The seq AUTOINCREMENT will give this row: never one used before, even if rolled back.
        sqlx::query(&format!(
            "INSERT INTO {SEGMENTS_TABLE} (table_name, rows, min_at, max_at, filter, hashes) \
             VALUES ('', 0, 0, 0, x'', x'')"
        ))
        .execute(&mut *tx)
        .await?;
        let seq: i64 = sqlx::query_scalar("SELECT last_insert_rowid()")
            .fetch_one(&mut *tx)
            .await?;
        let table = format!("{DEDUP_TABLE}_{seq}");
        sqlx::query(&format!(
            "CREATE TABLE {table} (
                consumer_group TEXT NOT NULL,
                message_id     TEXT NOT NULL,
                processed_at   INTEGER NOT NULL,
                PRIMARY KEY (consumer_group, message_id)
            ) WITHOUT ROWID"
        ))
        .execute(&mut *tx)
        .await?;
        sqlx::query(&format!(
            "INSERT INTO {table} SELECT consumer_group, message_id, processed_at FROM {DEDUP_TABLE} \
             ORDER BY consumer_group, message_id"
        ))
        .execute(&mut *tx)
        .await?;
        let mut filter = Filter::with_capacity(rows as usize);
        let mut hashes: Vec<u8> = Vec::with_capacity(rows as usize * 8);
        let (mut min_at, mut max_at) = (i64::MAX, i64::MIN);
        for row in sqlx::query(&format!(
            "SELECT consumer_group, message_id, processed_at FROM {table}"
        ))
        .fetch_all(&mut *tx)
        .await?
        {
            let group: &str = row.try_get(0)?;
            let id: &str = row.try_get(1)?;
            let at: i64 = row.try_get(2)?;
            let h = key_hash(group, id);
            filter.insert(h);
            hashes.extend_from_slice(&h.to_le_bytes());
            min_at = min_at.min(at);
            max_at = max_at.max(at);
        }
        sqlx::query(&format!(
            "UPDATE {SEGMENTS_TABLE} SET table_name = ?, rows = ?, min_at = ?, max_at = ?, filter = ?, \
             hashes = ? WHERE seq = ?"
        ))
        .bind(&table)
        .bind(rows as i64)
        .bind(min_at)
        .bind(max_at)
        .bind(filter.to_bytes())
        .bind(hashes)
        .bind(seq)
        .execute(&mut *tx)
        .await?;
        sqlx::query(&format!("DELETE FROM {DEDUP_TABLE}"))
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        tracing::debug!(segment = %table, rows, "sealed a dedup segment");
        // Known only once committed; the next claim reads the list again and keeps this filter
        // if it is there.
        let mut k = self.known();
        k.hot_rows = Some(0);
        if seq > k.tree.last_seq() {
            let mut tree = (*k.tree).clone();
            tree.push(Arc::new(Segment {
                seq,
                table,
                filter: Some(filter),
            }));
            k.tree = Arc::new(tree);
        }
        // No fingerprint can match: the next claim reads the list again, keeps the filters
        // of the segments it finds there (this one without reading it back) and covers them.
        k.fingerprint = (-1, -1);
        Ok(rows)
    }

    /// Deletes up to `limit` records of `group` older than `before` from the sealed segments,
    /// oldest segment first; drops the segments left empty. Returns how many were deleted.
    pub(crate) async fn purge(
        &self,
        pool: &SqlitePool,
        group: &str,
        before: SystemTime,
        limit: u32,
    ) -> Result<u64, sqlx::Error> {
        let before = unix_seconds(before);
        let candidates: Vec<(i64, String, i64)> = sqlx::query_as(&format!(
            "SELECT seq, table_name, max_at FROM {SEGMENTS_TABLE} WHERE min_at < ? ORDER BY seq"
        ))
        .bind(before)
        .fetch_all(pool)
        .await?;
        let mut deleted = 0u64;
        for (seq, table, max_at) in candidates {
            let left = limit as u64 - deleted;
            if left == 0 {
                break;
            }
            let mut tx = pool.begin_with("BEGIN IMMEDIATE").await?;
            // A segment wholly older than the cutoff: the group's records in key order (a range
            // of the primary key); else only the ones older than the cutoff.
            let older = if max_at < before {
                ""
            } else {
                "AND processed_at < ?"
            };
            let sql = format!(
                "DELETE FROM {table} WHERE consumer_group = ? AND message_id IN
                   (SELECT message_id FROM {table} WHERE consumer_group = ? {older} LIMIT ?)"
            );
            let mut q = sqlx::query(&sql).bind(group).bind(group);
            if !older.is_empty() {
                q = q.bind(before);
            }
            let n = q.bind(left as i64).execute(&mut *tx).await?.rows_affected();
            deleted += n;
            let empty: Option<i64> = sqlx::query_scalar(&format!("SELECT 1 FROM {table} LIMIT 1"))
                .fetch_optional(&mut *tx)
                .await?;
            if empty.is_none() {
                sqlx::query(&format!("DROP TABLE {table}"))
                    .execute(&mut *tx)
                    .await?;
                sqlx::query(&format!("DELETE FROM {SEGMENTS_TABLE} WHERE seq = ?"))
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
    pub(crate) async fn records_by_group(
        pool: &SqlitePool,
    ) -> Result<Vec<(String, u64)>, sqlx::Error> {
        // One read transaction: the list and the tables it names are one snapshot (a segment
        // sealed or dropped meanwhile is not half seen).
        let mut tx = pool.begin().await?;
        // A file from before segments existed has no list (nothing is created by looking).
        let listed: Option<String> =
            sqlx::query_scalar("SELECT name FROM sqlite_master WHERE type = 'table' AND name = ?")
                .bind(SEGMENTS_TABLE)
                .fetch_optional(pool)
                .await?;
        let mut tables = vec![DEDUP_TABLE.to_string()];
        if listed.is_some() {
            tables.extend(
                sqlx::query_scalar::<_, String>(&format!(
                    "SELECT table_name FROM {SEGMENTS_TABLE} ORDER BY seq"
                ))
                .fetch_all(&mut *tx)
                .await?,
            );
        }
        let parts: Vec<String> = tables
            .iter()
            .map(|t| {
                format!("SELECT consumer_group, COUNT(*) AS n FROM {t} GROUP BY consumer_group")
            })
            .collect();
        let rows: Vec<(String, i64)> = sqlx::query_as(&format!(
            "SELECT consumer_group, SUM(n) FROM ({}) GROUP BY consumer_group ORDER BY consumer_group",
            parts.join(" UNION ALL ")
        ))
        .fetch_all(&mut *tx)
        .await?;
        tx.rollback().await?;
        Ok(rows
            .into_iter()
            .map(|(g, n)| (g, n.max(0) as u64))
            .collect())
    }
}

/// A filter over the keys of the segments `seqs`, from their stored key hashes; `None` if one
/// of them has none readable (the cover then always looks below).
async fn cover_filter(
    conn: &mut SqliteConnection,
    seqs: &[i64],
) -> Result<Option<Filter>, sqlx::Error> {
    let mut all: Vec<Vec<u8>> = Vec::with_capacity(seqs.len());
    for seq in seqs {
        let bytes: Option<Vec<u8>> = sqlx::query_scalar(&format!(
            "SELECT hashes FROM {SEGMENTS_TABLE} WHERE seq = ?"
        ))
        .bind(seq)
        .fetch_optional(&mut *conn)
        .await?;
        match bytes {
            Some(b) if !b.is_empty() && b.len() % 8 == 0 => all.push(b),
            _ => return Ok(None),
        }
    }
    let keys = all.iter().map(|b| b.len() / 8).sum();
    let mut filter = Filter::with_capacity(keys);
    for b in &all {
        for h in b.chunks_exact(8) {
            filter.insert(u64::from_le_bytes(h.try_into().expect("8 bytes")));
        }
    }
    Ok(Some(filter))
}
