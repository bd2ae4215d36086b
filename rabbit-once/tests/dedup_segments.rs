//! Sealed dedup segments on SQLite (`SqliteOptions::segment_rows`): a record moved out of the
//! table that takes inserts is still a duplicate — for this store, for another store on the same
//! file, after a reopen, with an unreadable filter — and retention deletes from segments and
//! drops the ones it empties without touching another group's records. Real SQLite files; the
//! last test runs a consumer against the real broker.

mod support;

use rabbit_once::sqlx::{self, Row};
use rabbit_once::{Consumer, Queue, SqliteOptions, SqliteStore, Store, Topology};
use std::time::{Duration, SystemTime};
use support::consumer::{Ledger, TestDb, cleanup, config, ids, publish, wait_for};
use support::*;

async fn open(f: &TempDb, segment_rows: u64) -> SqliteStore {
    let s = SqliteStore::open_with(
        &f.path,
        SqliteOptions {
            segment_rows,
            ..SqliteOptions::default()
        },
    )
    .await
    .unwrap();
    s.migrate().await.unwrap();
    s
}

/// Claims `ids` in one committed transaction; which were new.
async fn claim(s: &SqliteStore, group: &str, ids: &[String]) -> Vec<bool> {
    let mut tx = s.begin().await.unwrap();
    let refs: Vec<&str> = ids.iter().map(String::as_str).collect();
    let fresh = s.claim(&mut tx, group, &refs).await.unwrap();
    tx.commit().await.unwrap();
    fresh
}

fn keys(prefix: &str, range: std::ops::Range<u32>) -> Vec<String> {
    // Not in order: the ids a foreign producer sends.
    range
        .map(|i| format!("{prefix}-{:08x}", i.wrapping_mul(2_654_435_761)))
        .collect()
}

async fn segments(s: &SqliteStore) -> Vec<(i64, i64)> {
    sqlx::query("SELECT seq, rows FROM rabbit_once_segments ORDER BY seq")
        .fetch_all(s.pool())
        .await
        .unwrap()
        .into_iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect()
}

async fn tables(s: &SqliteStore) -> usize {
    let n: i64 = sqlx::query_scalar(
        "SELECT COUNT(*) FROM sqlite_master WHERE type = 'table' AND name LIKE 'rabbit_once_processed_%'",
    )
    .fetch_one(s.pool())
    .await
    .unwrap();
    n as usize
}

#[tokio::test]
async fn a_record_in_a_sealed_segment_is_still_a_duplicate() {
    let f = TempDb::new();
    let s = open(&f, 100).await;
    let all = keys("a", 0..1000);
    for batch in all.chunks(50) {
        assert!(
            claim(&s, "g", batch).await.iter().all(|&n| n),
            "first claims are new"
        );
    }
    let segs = segments(&s).await;
    assert!(segs.len() >= 8, "sealed every 100 records: {segs:?}");
    assert_eq!(tables(&s).await, segs.len());
    let hot: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM rabbit_once_processed")
        .fetch_one(s.pool())
        .await
        .unwrap();
    let sealed: i64 = segs.iter().map(|(_, rows)| rows).sum();
    assert_eq!(sealed + hot, 1000, "every record once, sealed or not");
    assert!(hot < 100 + 50);

    // Every id again, in batches that span segments and the hot table: all duplicates.
    for batch in all.chunks(333) {
        assert!(
            claim(&s, "g", batch).await.iter().all(|&n| !n),
            "all duplicates"
        );
    }
    // A mixed batch: answers in the order given.
    let mixed = vec![
        all[5].clone(),
        "new-1".to_string(),
        all[999].clone(),
        "new-2".to_string(),
    ];
    assert_eq!(claim(&s, "g", &mixed).await, [false, true, false, true]);
    // The same ids in another group are new there.
    assert!(claim(&s, "other", &all[..200]).await.iter().all(|&n| n));
    // Counted per group, sealed or not (what `rabbit-once status` shows).
    assert_eq!(
        s.records_by_group().await.unwrap(),
        [("g".to_string(), 1002), ("other".to_string(), 200)]
    );
}

#[tokio::test]
async fn another_store_on_the_file_and_a_reopened_one_see_the_segments() {
    let f = TempDb::new();
    let a = open(&f, 100).await;
    let first = keys("x", 0..500);
    for batch in first.chunks(100) {
        claim(&a, "g", batch).await;
    }
    assert!(!segments(&a).await.is_empty());
    // A second store on the same file that never seals (another process, or the option off).
    let b = open(&f, 0).await;
    assert!(claim(&b, "g", &first).await.iter().all(|&n| !n));
    let second = keys("y", 0..300);
    assert!(claim(&b, "g", &second).await.iter().all(|&n| n));
    // `a` seals what `b` inserted, and `b` sees that segment on its next claim.
    assert!(a.seal_segment().await.unwrap() >= 300);
    assert!(claim(&b, "g", &second).await.iter().all(|&n| !n));
    assert!(claim(&a, "g", &second).await.iter().all(|&n| !n));
    drop((a, b));
    // Reopened: the filters come back from the file.
    let c = open(&f, 100).await;
    assert!(claim(&c, "g", &first).await.iter().all(|&n| !n));
    assert!(claim(&c, "g", &second).await.iter().all(|&n| !n));
}

#[tokio::test]
async fn a_rolled_back_claim_and_an_unreadable_filter_lose_nothing() {
    let f = TempDb::new();
    let s = open(&f, 0).await;
    let old = keys("r", 0..200);
    claim(&s, "g", &old).await;
    assert_eq!(s.seal_segment().await.unwrap(), 200);
    // Rolled back: neither the record nor a seal behind it remains.
    let fresh = keys("n", 0..10);
    let mut tx = s.begin().await.unwrap();
    let refs: Vec<&str> = fresh.iter().map(String::as_str).collect();
    assert!(
        s.claim(&mut tx, "g", &refs)
            .await
            .unwrap()
            .iter()
            .all(|&n| n)
    );
    tx.rollback().await.unwrap();
    assert!(claim(&s, "g", &fresh).await.iter().all(|&n| n));
    // A filter that cannot be read: the segment's table is read for every id.
    sqlx::query("UPDATE rabbit_once_segment_filters SET filter = x'00'")
        .execute(s.pool())
        .await
        .unwrap();
    let t = open(&f, 0).await;
    assert!(claim(&t, "g", &old).await.iter().all(|&n| !n));
    assert!(claim(&t, "g", &keys("z", 0..10)).await.iter().all(|&n| n));
}

#[tokio::test]
async fn retention_deletes_from_segments_and_drops_the_empty_ones() {
    let f = TempDb::new();
    let s = open(&f, 0).await;
    let a = keys("a", 0..300);
    let b = keys("b", 0..100);
    claim(&s, "ga", &a[..150]).await;
    claim(&s, "gb", &b).await;
    s.seal_segment().await.unwrap(); // ga 150 + gb 100
    claim(&s, "ga", &a[150..]).await;
    s.seal_segment().await.unwrap(); // ga 150
    claim(&s, "ga", &keys("hot", 0..20)).await; // not sealed
    assert_eq!(segments(&s).await.len(), 2);
    // Everything of `ga` is older than an hour from now.
    let later = SystemTime::now() + Duration::from_secs(3600);
    let mut purged = 0;
    loop {
        let n = s.purge("ga", later, 64).await.unwrap();
        assert!(n <= 64);
        purged += n;
        if n < 64 {
            break;
        }
    }
    assert_eq!(purged, 320, "300 sealed and 20 not");
    // The segment that held only `ga` is gone; the one shared with `gb` stays for `gb`.
    let left = segments(&s).await;
    assert_eq!(left.len(), 1, "{left:?}");
    assert_eq!(tables(&s).await, 1);
    assert!(claim(&s, "gb", &b).await.iter().all(|&n| !n), "gb's kept");
    assert!(
        claim(&s, "ga", &a).await.iter().all(|&n| n),
        "ga's forgotten"
    );
    // Nothing older than now: nothing purged.
    assert_eq!(
        s.purge("gb", SystemTime::now() - Duration::from_secs(3600), 64)
            .await
            .unwrap(),
        0
    );
}

#[tokio::test]
async fn hundreds_of_segments_under_covers_still_find_every_duplicate() {
    let f = TempDb::new();
    let s = open(&f, 0).await;
    let all = keys("m", 0..1500);
    for (i, batch) in all.chunks(5).enumerate() {
        assert!(claim(&s, "g", batch).await.iter().all(|&n| n));
        s.seal_segment().await.unwrap();
        if i % 50 == 0 {
            // Asked as the tree grows: covers are built as the segments come.
            assert!(
                claim(&s, "g", &all[..(i + 1) * 5])
                    .await
                    .iter()
                    .all(|&n| !n)
            );
        }
    }
    assert_eq!(segments(&s).await.len(), 300);
    assert!(claim(&s, "g", &all).await.iter().all(|&n| !n));
    // Loaded afresh from the file, covers rebuilt from the stored key hashes.
    let t = open(&f, 0).await;
    assert!(claim(&t, "g", &all).await.iter().all(|&n| !n));
    let fresh = keys("n", 0..200);
    assert!(claim(&t, "g", &fresh).await.iter().all(|&n| n));
    // Retention removes the oldest 100 segments' records: those ids are new again, the rest
    // still duplicates (covers over removed segments stay correct).
    let mut purged = 0;
    for seq in 1..=100 {
        sqlx::query(&format!(
            "UPDATE rabbit_once_processed_{seq} SET processed_at = 0"
        ))
        .execute(s.pool())
        .await
        .unwrap();
        sqlx::query("UPDATE rabbit_once_segments SET min_at = 0, max_at = 0 WHERE seq = ?")
            .bind(seq)
            .execute(s.pool())
            .await
            .unwrap();
    }
    loop {
        let n = s
            .purge("g", SystemTime::now() - Duration::from_secs(3600), 200)
            .await
            .unwrap();
        purged += n;
        if n < 200 {
            break;
        }
    }
    assert_eq!(purged, 500);
    assert_eq!(segments(&s).await.len(), 200);
    assert!(claim(&t, "g", &all[500..]).await.iter().all(|&n| !n));
    assert!(claim(&s, "g", &all[..500]).await.iter().all(|&n| n));
    assert!(claim(&t, "g", &all[..500]).await.iter().all(|&n| !n));
}

/// A store opened on a file whose table already holds `segment_rows` records seals in its first
/// `begin()`: it must still read the segments sealed before it (found by a review: it once
/// added its own segment to an empty tree and never loaded the older ones).
#[tokio::test]
async fn a_reopened_store_that_seals_first_still_reads_the_older_segments() {
    let f = TempDb::new();
    let a = open(&f, 0).await;
    let old = keys("old", 0..10);
    assert!(claim(&a, "g", &old).await.iter().all(|&n| n));
    assert_eq!(a.seal_segment().await.unwrap(), 10);
    assert!(claim(&a, "g", &keys("hot", 0..5)).await.iter().all(|&n| n));
    drop(a);
    let b = open(&f, 5).await;
    assert!(claim(&b, "g", &old).await.iter().all(|&n| !n));
    assert_eq!(
        segments(&b).await.len(),
        2,
        "b sealed the 5 on its first claim"
    );
    assert!(claim(&b, "g", &keys("hot", 0..5)).await.iter().all(|&n| !n));
}

/// Two stores on one file that both seal: the one whose tree predates the other's seal still
/// reads that segment after sealing one of its own.
#[tokio::test]
async fn a_store_that_seals_after_another_sealed_still_reads_that_segment() {
    let f = TempDb::new();
    let a = open(&f, 0).await;
    let b = open(&f, 3).await;
    assert!(claim(&b, "g", &keys("b", 0..3)).await.iter().all(|&n| n));
    let old = keys("old", 0..10);
    assert!(claim(&a, "g", &old).await.iter().all(|&n| n));
    a.seal_segment().await.unwrap();
    assert!(claim(&a, "g", &keys("c", 0..3)).await.iter().all(|&n| n));
    // b's begin() seals the 3 (its count says 3), then its claim must see a's segment too.
    assert!(claim(&b, "g", &old).await.iter().all(|&n| !n));
    assert_eq!(segments(&b).await.len(), 2);
    assert!(claim(&a, "g", &keys("c", 0..3)).await.iter().all(|&n| !n));
}

/// Two retention loops on one file: one drops a segment the other listed; neither fails.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_purges_on_one_file_never_fail_on_a_dropped_segment() {
    let f = TempDb::new();
    let a = open(&f, 0).await;
    for i in 0..200 {
        claim(&a, "g", &keys(&format!("s{i}"), 0..3)).await;
        a.seal_segment().await.unwrap();
    }
    let b = open(&f, 0).await;
    let later = SystemTime::now() + Duration::from_secs(3600);
    let purge = |s: SqliteStore| async move {
        let (mut n, mut errors) = (0, Vec::new());
        for _ in 0..150 {
            match s.purge("g", later, 3).await {
                Ok(k) => n += k,
                Err(e) => errors.push(e.to_string()),
            }
        }
        (n, errors)
    };
    let ((na, ea), (nb, eb)) = tokio::join!(purge(a.clone()), purge(b.clone()));
    assert!(ea.is_empty() && eb.is_empty(), "{ea:?} {eb:?}");
    assert_eq!(na + nb, 600, "every record deleted once");
    assert!(segments(&a).await.is_empty());
}

/// A rabbit-once older than a database's schema refuses it (it would not read what the newer
/// one sealed, and would apply those ids again).
#[tokio::test]
async fn a_schema_newer_than_this_version_is_refused() {
    let f = TempDb::new();
    let s = open(&f, 0).await;
    sqlx::query("INSERT INTO rabbit_once_schema (version) VALUES (99)")
        .execute(s.pool())
        .await
        .unwrap();
    let e = s.migrate().await.unwrap_err().to_string();
    assert!(
        e.contains("version 99, newer than this rabbit-once knows"),
        "{e}"
    );
}

/// A consumer whose store seals every 50 records: ids sent again after they were sealed are
/// skipped as duplicates, each applied once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_consumer_skips_ids_sent_again_after_they_were_sealed() {
    let f = TempDb::new();
    let store = open(&f, 50).await;
    store.create_applied().await;
    let q = unique("seg-dups");
    let conn = direct().await;
    conn.declare(&Topology::new().queue(Queue::new(&q)))
        .await
        .unwrap();
    publish(&conn, &q, ids(0..600, &q)).await;
    let consumer = Consumer::start(
        &conn,
        store.clone(),
        Ledger::default(),
        config(&q).group_commit(40, Duration::from_millis(2)),
    )
    .await
    .unwrap();
    wait_for(&consumer, "600 applied", |s| s.applied >= 600).await;
    assert!(
        segments(&store).await.len() >= 5,
        "sealed as the consumer went"
    );
    // The same ids again: by now most of them are in sealed segments.
    publish(&conn, &q, ids(0..600, &q)).await;
    let s = wait_for(&consumer, "600 duplicates", |s| {
        s.applied + s.duplicates >= 1200
    })
    .await;
    consumer.close(Duration::from_secs(5)).await;
    assert_eq!((s.applied, s.duplicates), (600, 600), "{s:?}");
    let applied = store.applied().await;
    assert_eq!(applied.len(), 600, "one row per id");
    assert!(applied.values().all(|n| *n == 1), "no id applied twice");
    cleanup(&conn, &q).await;
    conn.close().await;
}

/// Retention over a segment only partly older than the cutoff: the old records go, and the
/// segment's `min_at` moves to what is left, so later passes do not scan it again.
#[tokio::test]
async fn a_segment_partly_past_retention_is_not_scanned_again() {
    let f = TempDb::new();
    let s = open(&f, 0).await;
    let all = keys("p", 0..100);
    claim(&s, "g", &all).await;
    // Half of them a day old.
    sqlx::query(
        "UPDATE rabbit_once_processed SET processed_at = processed_at - 86400 \
         WHERE message_id IN (SELECT message_id FROM rabbit_once_processed LIMIT 50)",
    )
    .execute(s.pool())
    .await
    .unwrap();
    assert_eq!(s.seal_segment().await.unwrap(), 100);
    let cutoff = SystemTime::now() - Duration::from_secs(3600);
    assert_eq!(s.purge("g", cutoff, 1000).await.unwrap(), 50);
    let min_at: i64 = sqlx::query_scalar("SELECT min_at FROM rabbit_once_segments")
        .fetch_one(s.pool())
        .await
        .unwrap();
    let cutoff_s = cutoff
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    assert!(
        min_at >= cutoff_s,
        "min_at {min_at} moved past the cutoff {cutoff_s}"
    );
    assert_eq!(s.purge("g", cutoff, 1000).await.unwrap(), 0);
    assert_eq!(
        claim(&s, "g", &all).await.iter().filter(|&&n| n).count(),
        50
    );
}

/// One claim whose ids the filters send to more segments than one SQL statement may name
/// (SQLite allows 500 terms in a compound SELECT): asked in several statements, all found.
#[tokio::test]
async fn a_claim_asking_more_segments_than_one_statement_may_name() {
    let f = TempDb::new();
    // 600 seals: without a sync on each commit (what is tested is the lookup).
    let s = SqliteStore::open_with(
        &f.path,
        SqliteOptions {
            synchronous_full: false,
            ..SqliteOptions::default()
        },
    )
    .await
    .unwrap();
    s.migrate().await.unwrap();
    let all = keys("u", 0..600);
    for id in all.chunks(1) {
        claim(&s, "g", id).await;
        s.seal_segment().await.unwrap();
    }
    assert_eq!(segments(&s).await.len(), 600);
    // Every id in a segment of its own: 600 segments asked by one claim.
    assert!(claim(&s, "g", &all).await.iter().all(|&n| !n));
}
