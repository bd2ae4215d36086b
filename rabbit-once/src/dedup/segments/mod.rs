//! Sealed segments of a dedup table: what keeps random (UUIDv4) message ids cheap when the table
//! has grown to millions of records, in SQLite and in PostgreSQL.
//!
//! A random id lands on a random leaf of the dedup table's B-tree; once the tree is much larger
//! than a group commit, every id dirties a page of its own (written to the WAL — on PostgreSQL as
//! a full-page image after each checkpoint — and written back later). So the table that takes
//! inserts is kept small: when it holds `segment_rows` records
//! ([`SqliteOptions`](crate::SqliteOptions), [`PostgresOptions`](crate::PostgresOptions)), they
//! are moved in one transaction, in key order, into a new *sealed segment* table that is never
//! written again (`rabbit_once_processed_<seq>`), listed in `rabbit_once_segments`, its Bloom
//! filter and key hashes in `rabbit_once_segment_filters`. A claim asks the filters (in memory,
//! under covers: `covers`) about each id and reads a segment's table only for the ids they
//! cannot rule out; retention deletes from segments and drops the ones it empties.
//!
//! - this file: what both backends share — the in-memory tree kept equal to the committed list,
//!   the lookups, the filter a seal builds;
//! - `sqlite`, `postgres`: sealing, retention and counting, which take each backend's locks.
//!
//! Correctness rests on these, each tested:
//! - a claim reads the list while no seal or drop can commit until it does: under SQLite's
//!   write lock (`BEGIN IMMEDIATE`); on PostgreSQL under the `ROW EXCLUSIVE` lock on the table
//!   that takes inserts, taken by the claim's transaction before its first query (so even a
//!   `REPEATABLE READ` snapshot is taken after it), against which a seal or drop takes
//!   `ACCESS EXCLUSIVE`;
//! - the in-memory tree holds exactly the committed list it was checked against: the list's
//!   `(max seq, count)` is compared on every claim (seqs are never reused), every listed segment
//!   the tree lacks is loaded (older ones too, rebuilding the tree in order), and a seal adds its
//!   own segment only when the tree was exactly the list before it;
//! - a filter never says no to a key it holds;
//! - segments are read whether or not this store seals: a database sealed by another process, or
//!   by an earlier run with the option on, is always read. (A rabbit-once older than segments
//!   would not read them: `migrate` refuses a schema newer than it knows.)

#[cfg(feature = "postgres")]
pub(crate) mod postgres;
#[cfg(feature = "sqlite")]
pub(crate) mod sqlite;

use super::DEDUP_TABLE;
use super::covers::{Segment, Tree};
use super::filter::{Filter, key_hash};
use super::sql::Dialect;
use sqlx::{ColumnIndex, Decode, Encode, Executor, IntoArguments, Row, Type};
use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};

/// The list of sealed segments (small rows: read on every claim).
pub(crate) const SEGMENTS_TABLE: &str = "rabbit_once_segments";
/// Each segment's filter and key hashes (read once per segment and process).
pub(crate) const FILTERS_TABLE: &str = "rabbit_once_segment_filters";
/// The format byte at the start of a stored list of key hashes.
const HASHES_FORMAT: u8 = 1;
/// Bound values per lookup statement (SQLite allows 32,766, PostgreSQL 65,535).
const LOOKUP_BINDS: usize = 2_000;
/// Segments asked in one lookup statement (SQLite allows 500 terms in a compound SELECT).
const LOOKUP_PARTS: usize = 250;

/// A segment's table: always made from its seq, never read from the database.
pub(crate) fn table(seq: i64) -> String {
    format!("{DEDUP_TABLE}_{seq}")
}

/// The query counting dedup records per group (group, count: BIGINT), by group name, in the
/// table that takes inserts and the segments `seqs`.
pub(crate) fn count_by_group(seqs: &[i64]) -> String {
    let parts: Vec<String> = std::iter::once(DEDUP_TABLE.to_string())
        .chain(seqs.iter().map(|s| table(*s)))
        .map(|t| format!("SELECT consumer_group, COUNT(*) AS n FROM {t} GROUP BY consumer_group"))
        .collect();
    format!(
        "SELECT consumer_group, CAST(SUM(n) AS BIGINT) FROM ({}) AS parts \
         GROUP BY consumer_group ORDER BY consumer_group",
        parts.join(" UNION ALL ")
    )
}

/// The bounds the shared queries need of a backend (written once, for both).
macro_rules! segment_db {
    ($(#[$m:meta])* $v:vis async fn $name:ident<$DB:ident>($($arg:ident : $ty:ty),* $(,)?) -> $ret:ty $body:block) => {
        $(#[$m])*
        $v async fn $name<$DB>($($arg: $ty),*) -> $ret
        where
            $DB: Dialect + sqlx::database::HasStatementCache,
            for<'c> &'c mut $DB::Connection: Executor<'c, Database = $DB>,
            for<'q> $DB::Arguments<'q>: IntoArguments<'q, $DB> + Default,
            for<'q> &'q str: Encode<'q, $DB> + Type<$DB>,
            for<'q> i64: Encode<'q, $DB>,
            i64: Type<$DB> + for<'r> Decode<'r, $DB>,
            Vec<u8>: Type<$DB> + for<'r> Decode<'r, $DB>,
            String: Type<$DB> + for<'r> Decode<'r, $DB>,
            for<'r> &'r str: Decode<'r, $DB>,
            for<'q> Vec<u8>: Encode<'q, $DB>,
            usize: ColumnIndex<$DB::Row>,
        $body
    };
}

segment_db! {
    /// `(max seq, count)` of the committed list.
    pub(crate) async fn fingerprint<DB>(conn: &mut DB::Connection) -> Result<(i64, i64), sqlx::Error> {
        let row = sqlx::query(&format!(
            "SELECT COALESCE(MAX(seq), 0), COUNT(*) FROM {SEGMENTS_TABLE}"
        ))
        .fetch_one(&mut *conn)
        .await?;
        Ok((row.try_get(0)?, row.try_get(1)?))
    }
}

segment_db! {
    /// The listed seqs, oldest first.
    pub(crate) async fn listed<DB>(conn: &mut DB::Connection) -> Result<Vec<i64>, sqlx::Error> {
        sqlx::query_scalar(&format!("SELECT seq FROM {SEGMENTS_TABLE} ORDER BY seq"))
            .fetch_all(&mut *conn)
            .await
    }
}

segment_db! {
    /// A segment's stored `filter` or `hashes` column.
    async fn filter_column<DB>(conn: &mut DB::Connection, column: &str, seq: i64) -> Result<Option<Vec<u8>>, sqlx::Error> {
        sqlx::query_scalar(&format!(
            "SELECT {column} FROM {FILTERS_TABLE} WHERE seq = {}",
            DB::param(1)
        ))
        .bind(seq)
        .fetch_optional(&mut *conn)
        .await
    }
}

segment_db! {
    /// How many key hashes segment `seq` has stored (`None`: none readable).
    async fn hash_count<DB>(conn: &mut DB::Connection, seq: i64) -> Result<Option<usize>, sqlx::Error> {
        let len: Option<i64> = sqlx::query_scalar(&format!(
            "SELECT CAST(length(hashes) AS BIGINT) FROM {FILTERS_TABLE} WHERE seq = {}",
            DB::param(1)
        ))
        .bind(seq)
        .fetch_optional(&mut *conn)
        .await?;
        Ok(match len {
            Some(n) if n > 1 && (n - 1) % 8 == 0 => Some((n as usize - 1) / 8),
            _ => None,
        })
    }
}

segment_db! {
    /// Which of the ids asked of each table (`asks`: a table, the ids it may hold) it holds for
    /// `group`: all tables in one statement (one round trip a claim, not one a segment), split
    /// only past [`LOOKUP_BINDS`] bound values or [`LOOKUP_PARTS`] tables.
    async fn holding<DB>(conn: &mut DB::Connection, group: &str, asks: &[(&str, Vec<&str>)], found: &mut HashSet<String>) -> Result<(), sqlx::Error> {
        let mut parts: Vec<String> = Vec::new();
        let mut binds: Vec<&str> = Vec::new();
        let mut pairs: Vec<(&str, &[&str])> = Vec::new();
        for (table, ids) in asks {
            for chunk in ids.chunks(LOOKUP_BINDS - 1) {
                pairs.push((table, chunk));
            }
        }
        for (k, &(table, chunk)) in pairs.iter().enumerate() {
            let first = binds.len() + 1;
            let list: Vec<String> = (0..chunk.len()).map(|i| DB::param(first + 1 + i)).collect();
            parts.push(format!(
                "SELECT message_id FROM {table} WHERE consumer_group = {} AND message_id IN ({})",
                DB::param(first),
                list.join(", ")
            ));
            binds.push(group);
            binds.extend_from_slice(chunk);
            let full = parts.len() >= LOOKUP_PARTS
                || pairs
                    .get(k + 1)
                    .is_none_or(|(_, next)| binds.len() + 1 + next.len() > LOOKUP_BINDS);
            if full {
                // Not kept prepared: the statement differs with every set of tables and ids,
                // and would crowd the connection's statement cache.
                let sql = parts.join(" UNION ALL ");
                let mut q = sqlx::query(&sql).persistent(false);
                for b in binds.drain(..) {
                    q = q.bind(b);
                }
                for row in q.fetch_all(&mut *conn).await? {
                    found.insert(row.try_get::<String, _>(0)?);
                }
                parts.clear();
            }
        }
        Ok(())
    }
}

segment_db! {
    /// A segment's filter, read from the database (`None` if unreadable: the table is always
    /// read).
    async fn load<DB>(conn: &mut DB::Connection, seq: i64) -> Result<Arc<Segment>, sqlx::Error> {
        let bytes = filter_column::<DB>(conn, "filter", seq).await?;
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
}

segment_db! {
    /// A filter over the keys of the segments `seqs`, from their stored key hashes (read one
    /// segment at a time); `None` if one of them has none readable (the cover then always looks
    /// below).
    async fn cover_filter<DB>(conn: &mut DB::Connection, seqs: &[i64]) -> Result<Option<Filter>, sqlx::Error> {
        let mut keys = 0usize;
        for seq in seqs {
            match hash_count::<DB>(conn, *seq).await? {
                Some(n) => keys += n,
                None => return Ok(None),
            }
        }
        let mut filter = Filter::with_capacity(keys);
        for seq in seqs {
            let bytes = filter_column::<DB>(conn, "hashes", *seq).await?.unwrap_or_default();
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
}

segment_db! {
    /// The sealing part both backends share: reads every record of the table to seal through
    /// `records` (a query of `consumer_group, message_id, processed_at` as Unix seconds), one
    /// row at a time, into the segment's filter and key hashes, and records both and the
    /// segment's size and age span in the list (row `seq`, already inserted).
    pub(crate) async fn record_segment<DB>(conn: &mut DB::Connection, seq: i64, rows: u64, records: &str) -> Result<Sealing, sqlx::Error> {
        let mut sealing = Sealing::new(rows);
        {
            let mut stream = sqlx::query(records).fetch(&mut *conn);
            while let Some(row) = futures_util::TryStreamExt::try_next(&mut stream).await? {
                sealing.add(row.try_get(0)?, row.try_get(1)?, row.try_get(2)?);
            }
        }
        let (p1, p2, p3, p4) = (DB::param(1), DB::param(2), DB::param(3), DB::param(4));
        sqlx::query(&format!(
            "UPDATE {SEGMENTS_TABLE} SET rows = {p1}, min_at = {p2}, max_at = {p3} WHERE seq = {p4}"
        ))
        .bind(rows as i64)
        .bind(sealing.min_at)
        .bind(sealing.max_at)
        .bind(seq)
        .execute(&mut *conn)
        .await?;
        let (filter, hashes) = sealing.bytes();
        sqlx::query(&format!(
            "INSERT INTO {FILTERS_TABLE} (seq, filter, hashes) VALUES ({p1}, {p2}, {p3})"
        ))
        .bind(seq)
        .bind(filter)
        .bind(hashes.to_vec())
        .execute(&mut *conn)
        .await?;
        Ok(sealing)
    }
}

/// What a store knows of the sealed segments: shared by its clones.
#[derive(Debug, Default)]
struct Known {
    /// `(max seq, count)` of the committed list the tree equals; `(-1, -1)`: check again.
    fingerprint: (i64, i64),
    tree: Arc<Tree>,
    /// Records in the table that takes inserts, as far as this store knows (`None`: count it).
    hot_rows: Option<u64>,
    /// Records this store inserted since it last counted the table: other processes insert
    /// too, so it counts again after a quarter of the threshold.
    since_count: u64,
    /// A seal of this store is under way (one at a time per store and its clones).
    sealing: bool,
    /// After a failed seal: not before this, and how long the last wait was.
    retry: Option<(std::time::Instant, std::time::Duration)>,
    /// The segments were loaded once outside a transaction (or that was tried).
    warmed: bool,
}

/// A store's sealed segments: the list, the filters, and when to seal.
#[derive(Debug, Clone, Default)]
pub(crate) struct Segments {
    /// Seal when the table that takes inserts holds this many records (0: never).
    seal_at: u64,
    known: Arc<Mutex<Known>>,
}

/// A segment being sealed: its filter and key hashes, built one record at a time.
pub(crate) struct Sealing {
    filter: Filter,
    hashes: Vec<u8>,
    pub(crate) min_at: i64,
    pub(crate) max_at: i64,
}

impl Sealing {
    /// For a segment of `rows` records.
    pub(crate) fn new(rows: u64) -> Self {
        let mut hashes = Vec::with_capacity(1 + rows as usize * 8);
        hashes.push(HASHES_FORMAT);
        Sealing {
            filter: Filter::with_capacity(rows as usize),
            hashes,
            min_at: i64::MAX,
            max_at: i64::MIN,
        }
    }

    /// Adds a record (`at`: processed at, Unix seconds).
    pub(crate) fn add(&mut self, group: &str, id: &str, at: i64) {
        let h = key_hash(group, id);
        self.filter.insert(h);
        self.hashes.extend_from_slice(&h.to_le_bytes());
        self.min_at = self.min_at.min(at);
        self.max_at = self.max_at.max(at);
    }

    /// The stored filter and key hashes.
    pub(crate) fn bytes(&self) -> (Vec<u8>, &[u8]) {
        (self.filter.to_bytes(), &self.hashes)
    }
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

    /// Seals with `seal` (which moves the records if the table holds at least the threshold) if
    /// one is due: the table that takes inserts holds `segment_rows` records as far as this
    /// store counted, or it has not counted yet, or this store inserted a quarter of
    /// `segment_rows` since it last counted (other processes insert too); no other seal of this store is under way; and
    /// the last failure's wait is over (1 s, doubling up to a minute: a seal that cannot get its
    /// lock must not be tried again on every transaction). A failure is logged.
    pub(crate) async fn seal_if_due<F, Fut>(&self, seal: F)
    where
        F: FnOnce(u64) -> Fut,
        Fut: std::future::Future<Output = Result<u64, sqlx::Error>>,
    {
        {
            let mut k = self.known();
            let due = self.seal_at > 0
                && !k.sealing
                && k.retry
                    .is_none_or(|(at, _)| std::time::Instant::now() >= at)
                && (k.hot_rows.is_none_or(|rows| rows >= self.seal_at)
                    || k.since_count >= (self.seal_at / 4).max(1));
            if !due {
                return;
            }
            k.sealing = true;
        }
        // Cleared however the seal ends, also when the caller's future is dropped mid-seal (a
        // consumer aborted on close, a timeout around `begin`): that counts as a failure.
        struct SealGuard<'a>(&'a Segments, bool);
        impl Drop for SealGuard<'_> {
            fn drop(&mut self) {
                let mut k = self.0.known();
                k.sealing = false;
                if self.1 {
                    k.retry = None;
                } else {
                    let wait = k.retry.map_or(std::time::Duration::from_secs(1), |(_, w)| {
                        (w * 2).min(std::time::Duration::from_secs(60))
                    });
                    k.retry = Some((std::time::Instant::now() + wait, wait));
                }
            }
        }
        let mut guard = SealGuard(self, false);
        let result = seal(self.seal_at).await;
        guard.1 = result.is_ok();
        drop(guard);
        match result {
            Ok(_) => {}
            Err(e) => {
                let wait = self.known().retry.map(|(_, w)| w);
                let busy =
                    matches!(&e, sqlx::Error::Database(d) if d.code().as_deref() == Some("55P03"));
                if busy {
                    tracing::debug!(
                        ?wait,
                        "sealing a dedup segment waited too long for the claims in flight; will try again"
                    );
                } else {
                    tracing::warn!(error = %e, ?wait, "sealing a dedup segment failed; will try again");
                }
            }
        }
    }

    /// Forgets how many records the table that takes inserts holds: counted at the next claim
    /// (after records were sealed by hand).
    pub(crate) fn forget_count(&self) {
        self.known().hot_rows = None;
    }

    /// The table that takes inserts was just counted: `rows` records.
    pub(crate) fn counted(&self, rows: u64) {
        let mut k = self.known();
        k.hot_rows = Some(rows);
        k.since_count = 0;
    }

    /// Counts `n` records just inserted into the table that takes inserts.
    pub(crate) fn inserted(&self, n: u64) {
        let mut k = self.known();
        k.since_count += n;
        if let Some(rows) = k.hot_rows.as_mut() {
            *rows += n;
        }
    }

    /// After a seal committed segment `seq` (with `sealing`'s filter): the tree takes it if it
    /// was exactly the list `before` the seal (read in the seal's transaction); else the next
    /// claim reads the list again.
    pub(crate) fn sealed_one(&self, before: (i64, i64), seq: i64, sealing: Sealing) {
        let mut k = self.known();
        k.hot_rows = Some(0);
        k.since_count = 0;
        if k.fingerprint == before && seq > k.tree.last_seq() {
            // The tree was the whole list before this seal: with this segment it is the whole
            // list after it (the next claim covers it if a cover is due).
            let mut tree = (*k.tree).clone();
            tree.push(Arc::new(Segment {
                seq,
                table: table(seq),
                filter: Some(sealing.filter),
            }));
            k.tree = Arc::new(tree);
            k.fingerprint = (seq, before.1 + 1);
        } else {
            k.fingerprint = (-1, -1);
        }
    }

    segment_db! {
        /// The committed segments, whose list's fingerprint `fp` the caller read in its
        /// transaction (while no seal or drop can commit); read again if the list changed since
        /// the last look.
        async fn current<DB>(self_: &Self, conn: &mut DB::Connection, fp: (i64, i64)) -> Result<Arc<Tree>, sqlx::Error> {
            let old = {
                let k = self_.known();
                if k.fingerprint == fp && k.tree.next_to_cover().is_none() {
                    return Ok(k.tree.clone());
                }
                k.tree.clone()
            };
            let listed = listed::<DB>(conn).await?;
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
                        None => load::<DB>(conn, *seq).await?,
                    };
                    tree.push(leaf);
                }
            } else {
                for seq in listed.iter().filter(|seq| **seq > last) {
                    tree.push(load::<DB>(conn, *seq).await?);
                }
            }
            // Cover every FANOUT nodes of a level with one filter, from the leaves' key hashes.
            while let Some(range) = tree.next_to_cover() {
                let under = tree.seqs_under(range.clone());
                let filter = cover_filter::<DB>(conn, &under).await?;
                tree.cover(range, filter);
            }
            let leaves = tree.leaves();
            if leaves.len() as i64 != fp.1 || leaves.last().map_or(0, |s| s.seq) != fp.0 {
                // Cannot happen: the list and the fingerprint were read while no seal or drop
                // could commit. (Not an outage: a `Decode` error is a failure of this
                // transaction, classed `Other`.)
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
            let mut k = self_.known();
            k.fingerprint = fp;
            k.tree = tree.clone();
            Ok(tree)
        }
    }

    /// Whether this store has yet to load the segments once outside a transaction (true once:
    /// the caller then calls [`Segments::warm`]).
    pub(crate) fn take_cold(&self) -> bool {
        !std::mem::replace(&mut self.known().warmed, true)
    }

    segment_db! {
        /// Loads the listed segments (filters and covers) outside any transaction: a store opened
        /// on a database with many segments pays for that here (about a second at 10 million
        /// records), not inside its first claim's transaction (under SQLite's write lock, or
        /// holding a PostgreSQL seal back). The claim still checks the list under its lock: if the
        /// list changed meanwhile (or this fails), it loads what changed.
        pub(crate) async fn warm<DB>(self_: &Self, conn: &mut DB::Connection) -> Result<(), sqlx::Error> {
            let fp = fingerprint::<DB>(conn).await?;
            let tree = Segments::current::<DB>(self_, conn, fp).await?;
            if tree.leaves().iter().any(|s| s.filter.is_none()) {
                // A filter not read (unreadable, or its segment dropped between the reads): left
                // to the claim, which reads the list again under its lock, from scratch.
                let mut k = self_.known();
                k.tree = Arc::default();
                k.fingerprint = (-1, -1);
            }
            Ok(())
        }
    }

    segment_db! {
        /// Which of `ids` (sorted, distinct) a sealed segment holds for `group`; `fp` is the
        /// list's fingerprint, read in the caller's transaction (see [`Segments::current`]).
        pub(crate) async fn sealed<DB>(self_: &Self, conn: &mut DB::Connection, fp: (i64, i64), group: &str, ids: &[&str]) -> Result<HashSet<String>, sqlx::Error> {
            let tree = Segments::current::<DB>(self_, conn, fp).await?;
            let mut found = HashSet::new();
            if tree.is_empty() || ids.is_empty() {
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
            let asks: Vec<(&str, Vec<&str>)> =
                asks.into_iter().map(|(s, ids)| (s.table.as_str(), ids)).collect();
            holding::<DB>(conn, group, &asks, &mut found).await?;
            Ok(found)
        }
    }
}
