//! Sealed segments of a SQLite dedup table: what keeps random (UUIDv4) message ids cheap when the
//! table has grown to millions of records.
//!
//! A random id lands on a random leaf of the dedup table's B-tree; once the tree is much larger
//! than a group commit, every id dirties a page of its own (written to the WAL, copied back at
//! checkpoint). So the table that takes inserts is kept small: when it holds
//! [`SqliteOptions::segment_rows`](crate::SqliteOptions::segment_rows) records, they are moved in
//! one transaction, in key order, into a new *sealed segment* table that is never written again
//! (`rabbit_once_processed_<seq>`), listed in `rabbit_once_segments`, its Bloom filter and key
//! hashes in `rabbit_once_segment_filters`. A claim asks the filters (in memory, under covers:
//! `covers`) about each id and reads a segment's table only for the ids they cannot rule out;
//! retention deletes from segments and drops the ones it empties.
//!
//! Correctness rests on these, each tested:
//! - a claim reads the list inside its own `BEGIN IMMEDIATE` transaction (the write lock is
//!   held, so no seal or drop commits in between, from this process or another);
//! - the in-memory tree holds exactly the committed list it was checked against: the list's
//!   `(max seq, count)` is compared on every claim (seqs are never reused: `AUTOINCREMENT`), every
//!   listed segment the tree lacks is loaded (older ones too, rebuilding the tree in order), and
//!   a seal adds its own segment only when the tree was exactly the list before it;
//! - a filter never says no to a key it holds;
//! - segments are read whether or not this store seals: a file sealed by another process, or by
//!   an earlier run with the option on, is always read. (A rabbit-once older than segments
//!   would not read them: `migrate` refuses a schema newer than it knows.)

use super::covers::{Segment, Tree};
use super::filter::{Filter, key_hash};
use super::{DEDUP_TABLE, unix_seconds};
use futures_util::TryStreamExt;
use sqlx::{Row, Sqlite, SqliteConnection, SqlitePool};
use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

/// The list of sealed segments (small rows: read on every claim).
pub(crate) const SEGMENTS_TABLE: &str = "rabbit_once_segments";
/// Each segment's filter and key hashes (read once per segment and process).
const FILTERS_TABLE: &str = "rabbit_once_segment_filters";
/// The format byte at the start of a stored list of key hashes.
const HASHES_FORMAT: u8 = 1;

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

/// A segment's table: always made from its seq, never read from the file.
fn table(seq: i64) -> String {
    format!("{DEDUP_TABLE}_{seq}")
}

/// What a store knows of the sealed segments: shared by its clones.
#[derive(Debug, Default)]
struct Known {
    /// `(max seq, count)` of the committed list the tree equals; `(-1, -1)`: check again.
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

/// `(max seq, count)` of the committed list.
async fn fingerprint(conn: &mut SqliteConnection) -> Result<(i64, i64), sqlx::Error> {
    let row = sqlx::query(&format!(
        "SELECT COALESCE(MAX(seq), 0), COUNT(*) FROM {SEGMENTS_TABLE}"
    ))
    .fetch_one(&mut *conn)
    .await?;
    Ok((row.try_get(0)?, row.try_get(1)?))
}

/// A segment's filter, read from the file (`None` if unreadable: the table is always read).
async fn load(conn: &mut SqliteConnection, seq: i64) -> Result<Arc<Segment>, sqlx::Error> {
    let bytes: Option<Vec<u8>> =
        sqlx::query_scalar(&format!("SELECT filter FROM {FILTERS_TABLE} WHERE seq = ?"))
            .bind(seq)
            .fetch_optional(&mut *conn)
            .await?;
    let filter = bytes.as_deref().and_then(Filter::from_bytes);
    if filter.is_none() {
        tracing::warn!(segment = %table(seq), "unreadable dedup segment filter; its table is read for every id");
    }
    Ok(Arc::new(Segment {
        seq,
        table: table(seq),
        filter,
    }))
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
        let fp = fingerprint(conn).await?;
        let old = {
            let k = self.known();
            if k.fingerprint == fp && k.tree.next_to_cover().is_none() {
                return Ok(k.tree.clone());
            }
            k.tree.clone()
        };
        let listed: Vec<i64> =
            sqlx::query_scalar(&format!("SELECT seq FROM {SEGMENTS_TABLE} ORDER BY seq"))
                .fetch_all(&mut *conn)
                .await?;
        let mut tree = (*old).clone();
        let wanted: HashSet<i64> = listed.iter().copied().collect();
        tree.retain(|seq| wanted.contains(&seq));
        let held: HashMap<i64, Arc<Segment>> = tree
            .leaves()
            .into_iter()
            .map(|s| (s.seq, s.clone()))
            .collect();
        let last = tree.last_seq();
        if listed
            .iter()
            .any(|seq| *seq < last && !held.contains_key(seq))
        {
            // An older segment the tree never had: build it again in order, keeping the
            // filters already loaded.
            tree = Tree::default();
            for seq in &listed {
                let leaf = match held.get(seq) {
                    Some(s) => s.clone(),
                    None => load(conn, *seq).await?,
                };
                tree.push(leaf);
            }
        } else {
            for seq in listed.iter().filter(|seq| **seq > last) {
                tree.push(load(conn, *seq).await?);
            }
        }
        // Cover every FANOUT nodes of a level with one filter, from the leaves' key hashes.
        while let Some(range) = tree.next_to_cover() {
            let under = tree.seqs_under(range.clone());
            let filter = cover_filter(conn, &under).await?;
            tree.cover(range, filter);
        }
        let leaves = tree.leaves();
        if leaves.len() as i64 != fp.1 || leaves.last().map_or(0, |s| s.seq) != fp.0 {
            // Cannot happen: the list and the fingerprint were read in one transaction. (Not an
            // outage: a `Decode` error is a failure of this transaction, classed `Other`.)
            return Err(sqlx::Error::Decode(
                format!(
                    "dedup segments: {} loaded, the list says {} up to {}",
                    leaves.len(),
                    fp.1,
                    fp.0
                )
                .into(),
            ));
        }
        let tree = Arc::new(tree);
        let mut k = self.known();
        k.fingerprint = fp;
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
    /// its own, before a claim's transaction begins. A failure is logged; the table is counted
    /// again at the next claim.
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
            self.forget_count();
        }
    }

    /// Moves every record of the table that takes inserts into a new sealed segment, if it
    /// holds at least `min_rows`; returns the records moved (0: nothing sealed).
    pub(crate) async fn seal(&self, pool: &SqlitePool, min_rows: u64) -> Result<u64, sqlx::Error> {
        let mut tx = pool.begin_with("BEGIN IMMEDIATE").await?;
        let before = fingerprint(&mut tx).await?;
        let rows: i64 = sqlx::query_scalar(&format!("SELECT COUNT(*) FROM {DEDUP_TABLE}"))
            .fetch_one(&mut *tx)
            .await?;
        let rows = rows.max(0) as u64;
        if rows == 0 || rows < min_rows {
            tx.rollback().await?;
            self.known().hot_rows = Some(rows);
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
        let mut filter = Filter::with_capacity(rows as usize);
        let mut hashes: Vec<u8> = Vec::with_capacity(1 + rows as usize * 8);
        hashes.push(HASHES_FORMAT);
        let (mut min_at, mut max_at) = (i64::MAX, i64::MIN);
        {
            // Streamed: one row at a time in memory.
            let sql = format!("SELECT consumer_group, message_id, processed_at FROM {name}");
            let mut stream = sqlx::query(&sql).fetch(&mut *tx);
            while let Some(row) = stream.try_next().await? {
                let group: &str = row.try_get(0)?;
                let id: &str = row.try_get(1)?;
                let at: i64 = row.try_get(2)?;
                let h = key_hash(group, id);
                filter.insert(h);
                hashes.extend_from_slice(&h.to_le_bytes());
                min_at = min_at.min(at);
                max_at = max_at.max(at);
            }
        }
        sqlx::query(&format!(
            "UPDATE {SEGMENTS_TABLE} SET rows = ?, min_at = ?, max_at = ? WHERE seq = ?"
        ))
        .bind(rows as i64)
        .bind(min_at)
        .bind(max_at)
        .bind(seq)
        .execute(&mut *tx)
        .await?;
        sqlx::query(&format!(
            "INSERT INTO {FILTERS_TABLE} (seq, filter, hashes) VALUES (?, ?, ?)"
        ))
        .bind(seq)
        .bind(filter.to_bytes())
        .bind(hashes)
        .execute(&mut *tx)
        .await?;
        sqlx::query(&format!("DELETE FROM {DEDUP_TABLE}"))
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        tracing::debug!(segment = %name, rows, "sealed a dedup segment");
        let mut k = self.known();
        k.hot_rows = Some(0);
        if k.fingerprint == before && seq > k.tree.last_seq() {
            // The tree was the whole list before this seal: with this segment it is the whole
            // list after it (the next claim covers it if a cover is due).
            let mut tree = (*k.tree).clone();
            tree.push(Arc::new(Segment {
                seq,
                table: name,
                filter: Some(filter),
            }));
            k.tree = Arc::new(tree);
            k.fingerprint = (seq, before.1 + 1);
        } else {
            k.fingerprint = (-1, -1);
        }
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
                .fetch_optional(&mut *tx)
                .await?;
        let mut tables = vec![DEDUP_TABLE.to_string()];
        if listed.is_some() {
            let seqs: Vec<i64> =
                sqlx::query_scalar(&format!("SELECT seq FROM {SEGMENTS_TABLE} ORDER BY seq"))
                    .fetch_all(&mut *tx)
                    .await?;
            tables.extend(seqs.into_iter().map(table));
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

/// A filter over the keys of the segments `seqs`, from their stored key hashes (read one
/// segment at a time); `None` if one of them has none readable (the cover then always looks
/// below).
async fn cover_filter(
    conn: &mut SqliteConnection,
    seqs: &[i64],
) -> Result<Option<Filter>, sqlx::Error> {
    let mut keys = 0usize;
    for seq in seqs {
        let len: Option<i64> = sqlx::query_scalar(&format!(
            "SELECT length(hashes) FROM {FILTERS_TABLE} WHERE seq = ?"
        ))
        .bind(seq)
        .fetch_optional(&mut *conn)
        .await?;
        match len {
            Some(n) if n > 1 && (n - 1) % 8 == 0 => keys += (n as usize - 1) / 8,
            _ => return Ok(None),
        }
    }
    let mut filter = Filter::with_capacity(keys);
    for seq in seqs {
        let bytes: Vec<u8> =
            sqlx::query_scalar(&format!("SELECT hashes FROM {FILTERS_TABLE} WHERE seq = ?"))
                .bind(seq)
                .fetch_one(&mut *conn)
                .await?;
        match bytes.split_first() {
            Some((&HASHES_FORMAT, rest)) if rest.len() % 8 == 0 => {
                for h in rest.chunks_exact(8) {
                    filter.insert(u64::from_le_bytes(h.try_into().expect("8 bytes")));
                }
            }
            _ => return Ok(None),
        }
    }
    Ok(Some(filter))
}
