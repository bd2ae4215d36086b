//! Sealed dedup segments on PostgreSQL (`PostgresOptions::segment_rows`): a record moved out of
//! the table that takes inserts is still a duplicate — for this store, for other stores on the
//! same schema (other processes), after a reopen — also while several stores claim overlapping
//! ids and seal at the same time, under READ COMMITTED and REPEATABLE READ; retention deletes
//! from segments and drops the ones it empties. The real PostgreSQL; the last test runs a
//! consumer against the real broker.

mod support;

use rabbit_once::sqlx::{self, Row};
use rabbit_once::{Consumer, PostgresOptions, PostgresStore, Queue, Store, StoreFailure, Topology};
use std::collections::HashMap;
use std::time::{Duration, SystemTime};
use support::consumer::{Ledger, TestDb, cleanup, config, ids, publish, wait_for};
use support::*;

async fn open_url(url: &str, schema: &PgSchema, segment_rows: u64) -> PostgresStore {
    let s = PostgresStore::connect_with(
        url,
        PostgresOptions {
            schema: Some(schema.name.clone()),
            segment_rows,
            ..PostgresOptions::default()
        },
    )
    .await
    .unwrap();
    s.migrate().await.unwrap();
    s
}

async fn open(schema: &PgSchema, segment_rows: u64) -> PostgresStore {
    open_url(&pg_url(), schema, segment_rows).await
}

/// Claims `ids` in one committed transaction; which were new.
async fn claim(s: &PostgresStore, group: &str, ids: &[String]) -> Vec<bool> {
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

async fn segments(s: &PostgresStore) -> Vec<(i64, i64)> {
    sqlx::query("SELECT seq, rows FROM rabbit_once_segments ORDER BY seq")
        .fetch_all(s.pool())
        .await
        .unwrap()
        .into_iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect()
}

async fn tables(s: &PostgresStore) -> usize {
    let n: i64 = sqlx::query_scalar(
        "SELECT COUNT(*) FROM pg_tables WHERE schemaname = current_schema() \
         AND tablename LIKE 'rabbit_once_processed_%'",
    )
    .fetch_one(s.pool())
    .await
    .unwrap();
    n as usize
}

async fn hot(s: &PostgresStore) -> i64 {
    sqlx::query_scalar("SELECT COUNT(*) FROM rabbit_once_processed")
        .fetch_one(s.pool())
        .await
        .unwrap()
}

#[tokio::test]
async fn a_record_in_a_sealed_segment_is_still_a_duplicate() {
    let schema = PgSchema::new();
    let s = open(&schema, 100).await;
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
    let sealed: i64 = segs.iter().map(|(_, rows)| rows).sum();
    let unsealed = hot(&s).await;
    assert_eq!(sealed + unsealed, 1000, "every record once, sealed or not");
    assert!(unsealed < 100 + 50);

    // Every id again, in batches that span segments and the hot table: all duplicates, and
    // none of them left behind in the table that takes inserts.
    for batch in all.chunks(333) {
        assert!(
            claim(&s, "g", batch).await.iter().all(|&n| !n),
            "all duplicates"
        );
    }
    let sealed: i64 = segments(&s).await.iter().map(|(_, rows)| rows).sum();
    assert_eq!(
        sealed + hot(&s).await,
        1000,
        "a sealed duplicate's insert is taken back"
    );
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
        Some(vec![("g".to_string(), 1002), ("other".to_string(), 200)])
    );
}

/// Other processes on the schema: one that never seals sees the segments another sealed, a
/// store that seals after another sealed still reads that segment, and a reopened store loads
/// the filters back.
#[tokio::test]
async fn other_stores_on_the_schema_and_a_reopened_one_see_the_segments() {
    let schema = PgSchema::new();
    let a = open(&schema, 100).await;
    let first = keys("x", 0..500);
    for batch in first.chunks(100) {
        claim(&a, "g", batch).await;
    }
    assert!(!segments(&a).await.is_empty());
    let b = open(&schema, 0).await;
    assert!(claim(&b, "g", &first).await.iter().all(|&n| !n));
    let second = keys("y", 0..300);
    assert!(claim(&b, "g", &second).await.iter().all(|&n| n));
    // `a` seals what `b` inserted, and `b` sees that segment on its next claim.
    assert!(a.seal_segment().await.unwrap() >= 300);
    assert!(claim(&b, "g", &second).await.iter().all(|&n| !n));
    assert!(claim(&a, "g", &second).await.iter().all(|&n| !n));
    // `c` counts 3 records of its own, then `a` seals (them too) behind `c`'s back and `b`
    // inserts 10 more: `c`'s next begin() seals those 10 with a tree that predates `a`'s seal,
    // and must still read `a`'s segment.
    let c = open(&schema, 3).await;
    assert!(claim(&c, "g", &keys("c", 0..3)).await.iter().all(|&n| n));
    let third = keys("z", 0..10);
    assert!(claim(&a, "g", &third).await.iter().all(|&n| n));
    let before = segments(&a).await.len();
    assert_eq!(a.seal_segment().await.unwrap(), 13);
    let fourth = keys("w", 0..10);
    assert!(claim(&b, "g", &fourth).await.iter().all(|&n| n));
    assert!(claim(&c, "g", &third).await.iter().all(|&n| !n));
    assert_eq!(segments(&c).await.len(), before + 2, "a's seal and c's");
    assert_eq!(hot(&c).await, 0, "c sealed b's 10");
    assert!(claim(&c, "g", &fourth).await.iter().all(|&n| !n));
    assert!(claim(&c, "g", &keys("c", 0..3)).await.iter().all(|&n| !n));
    drop((a, b, c));
    // Reopened: the filters come back from the database.
    let d = open(&schema, 100).await;
    for ids in [&first, &second, &third, &fourth] {
        assert!(claim(&d, "g", ids).await.iter().all(|&n| !n));
    }
}

/// Several stores (each its own pool, as processes) claim overlapping random ids at once while
/// they seal every few dozen records: every id is new exactly once. Run under READ COMMITTED
/// and under REPEATABLE READ (a snapshot taken at the claim's first statement must come after
/// the last seal: the lock the claim's transaction begins with).
async fn concurrent_claims_while_sealing(url: &str, isolation: &str) {
    let schema = PgSchema::new();
    let stores = [
        open_url(url, &schema, 40).await,
        open_url(url, &schema, 40).await,
        open_url(url, &schema, 40).await,
        open_url(url, &schema, 0).await,
    ];
    let mut tx = stores[0].begin().await.unwrap();
    let level: String = sqlx::query_scalar("SELECT current_setting('transaction_isolation')")
        .fetch_one(&mut *tx)
        .await
        .unwrap();
    tx.rollback().await.unwrap();
    assert_eq!(level, isolation);
    let all = keys("c", 0..2000);
    let mut tasks = Vec::new();
    for (w, s) in stores.iter().enumerate() {
        let s = s.clone();
        let all = all.clone();
        tasks.push(tokio::spawn(async move {
            let mut new: Vec<String> = Vec::new();
            let mut conflicts = 0;
            // Each worker walks all ids in batches of 25, a batch behind the one before it: a
            // batch is claimed again just after it was, often across a seal.
            for b in 0..80 {
                let start = ((b + w) % 80) * 25;
                let batch: Vec<&str> = all[start..start + 25].iter().map(String::as_str).collect();
                loop {
                    let claimed = async {
                        let mut tx = s.begin().await?;
                        let fresh = s.claim(&mut tx, "g", &batch).await?;
                        tx.commit().await?;
                        Ok::<_, sqlx::Error>(fresh)
                    }
                    .await;
                    match claimed {
                        Ok(fresh) => {
                            new.extend(
                                batch
                                    .iter()
                                    .zip(fresh)
                                    .filter(|(_, n)| *n)
                                    .map(|(id, _)| id.to_string()),
                            );
                            break;
                        }
                        Err(e) if PostgresStore::classify(&e) == StoreFailure::Conflict => {
                            // REPEATABLE READ: two claims of one id, the later one refused.
                            conflicts += 1;
                            assert!(conflicts < 1000, "worker {w}: conflicts without end: {e}");
                        }
                        Err(e) => panic!("worker {w}: {e}"),
                    }
                }
                if w == 3 && b % 10 == 0 {
                    // The store that never seals on its own seals by hand now and then (a
                    // lock not had within a second is a conflict, tried at the next turn).
                    if let Err(e) = s.seal_segment().await {
                        assert_eq!(PostgresStore::classify(&e), StoreFailure::Conflict, "{e}");
                    }
                }
            }
            new
        }));
    }
    let mut times: HashMap<String, u32> = HashMap::new();
    for t in tasks {
        let new = t.await.unwrap();
        for id in new {
            *times.entry(id).or_default() += 1;
        }
    }
    let twice: Vec<_> = times.iter().filter(|(_, n)| **n > 1).collect();
    assert!(
        twice.is_empty(),
        "{} ids claimed as new more than once, e.g. {:?}",
        twice.len(),
        &twice[..twice.len().min(5)]
    );
    assert_eq!(times.len(), 2000, "every id new once");
    let s = &stores[0];
    assert!(
        segments(s).await.len() >= 3,
        "sealed while claiming: {:?}",
        segments(s).await.len()
    );
    assert_eq!(
        s.records_by_group().await.unwrap(),
        Some(vec![("g".to_string(), 2000)]),
        "one record per id, sealed or not"
    );
    // Nothing was written into a segment after it was sealed (its filter would not know it).
    for (seq, rows) in segments(s).await {
        let n: i64 =
            sqlx::query_scalar(&format!("SELECT COUNT(*) FROM rabbit_once_processed_{seq}"))
                .fetch_one(s.pool())
                .await
                .unwrap();
        assert_eq!(n, rows, "segment {seq}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_claims_while_sealing_count_every_id_once() {
    concurrent_claims_while_sealing(&pg_url(), "read committed").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_claims_while_sealing_count_every_id_once_under_repeatable_read() {
    let url = pg_url();
    let sep = if url.contains('?') { '&' } else { '?' };
    concurrent_claims_while_sealing(
        &format!("{url}{sep}options=-c%20default_transaction_isolation%3Drepeatable%5C%20read"),
        "repeatable read",
    )
    .await;
}

#[tokio::test]
async fn retention_deletes_from_segments_and_drops_the_empty_ones() {
    let schema = PgSchema::new();
    let s = open(&schema, 0).await;
    let a = keys("a", 0..300);
    let b = keys("b", 0..100);
    claim(&s, "ga", &a[..150]).await;
    claim(&s, "gb", &b).await;
    s.seal_segment().await.unwrap(); // ga 150 + gb 100
    claim(&s, "ga", &a[150..]).await;
    s.seal_segment().await.unwrap(); // ga 150
    claim(&s, "ga", &keys("hot", 0..20)).await; // not sealed
    assert_eq!(segments(&s).await.len(), 2);
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
    assert_eq!(
        s.purge("gb", SystemTime::now() - Duration::from_secs(3600), 64)
            .await
            .unwrap(),
        0
    );
}

/// Two retention loops on one schema while a third store claims: one drops a segment the other
/// listed; neither fails, every record is deleted once, and the claims never fail on a dropped
/// segment.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_purges_and_claims_on_one_schema_never_fail_on_a_dropped_segment() {
    let schema = PgSchema::new();
    let a = open(&schema, 0).await;
    for i in 0..60 {
        claim(&a, "g", &keys(&format!("s{i}"), 0..3)).await;
        a.seal_segment().await.unwrap();
    }
    let b = open(&schema, 0).await;
    let c = open(&schema, 0).await;
    let later = SystemTime::now() + Duration::from_secs(3600);
    let purge = |s: PostgresStore| async move {
        let (mut n, mut errors) = (0, Vec::new());
        for _ in 0..45 {
            match s.purge("g", later, 3).await {
                Ok(k) => n += k,
                Err(e) => errors.push(e.to_string()),
            }
        }
        (n, errors)
    };
    let claims = async {
        for i in 0..60 {
            // Another group's ids: asked of every segment's filter, never deleted.
            assert!(
                claim(&c, "other", &keys(&format!("o{i}"), 0..3))
                    .await
                    .iter()
                    .all(|&n| n)
            );
        }
    };
    let ((na, ea), (nb, eb), ()) = tokio::join!(purge(a.clone()), purge(b.clone()), claims);
    assert!(ea.is_empty() && eb.is_empty(), "{ea:?} {eb:?}");
    assert_eq!(na + nb, 180, "every record deleted once");
    assert!(segments(&a).await.is_empty());
    assert_eq!(tables(&a).await, 0);
}

/// A consumer whose store seals every 50 records: ids sent again after they were sealed are
/// skipped as duplicates, each applied once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_consumer_skips_ids_sent_again_after_they_were_sealed() {
    let schema = PgSchema::new();
    let store = open(&schema, 50).await;
    store.create_applied().await;
    let q = unique("seg-pg-dups");
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
    let schema = PgSchema::new();
    let s = open(&schema, 0).await;
    let all = keys("p", 0..100);
    claim(&s, "g", &all).await;
    sqlx::query(
        "UPDATE rabbit_once_processed SET processed_at = processed_at - interval '1 day' \
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

/// Two processes inserting in turn: each counts the table again after a quarter of
/// `segment_rows` of its own inserts, so the table is sealed near `segment_rows` records, not
/// once one process alone has inserted that many.
#[tokio::test]
async fn two_stores_inserting_in_turn_seal_near_the_threshold() {
    let schema = PgSchema::new();
    let a = open(&schema, 100).await;
    let b = open(&schema, 100).await;
    let mut most = 0;
    for round in 0..10u32 {
        for (name, s) in [("a", &a), ("b", &b)] {
            let ids = keys(&format!("{name}{round}"), 0..10);
            assert!(claim(s, "g", &ids).await.iter().all(|&n| n));
            most = most.max(hot(s).await);
        }
    }
    // 200 records, 100 from each store: sealed once the table held about 100, not 200.
    assert!(!segments(&a).await.is_empty(), "sealed while inserting");
    assert!(
        most <= 100 + 25 + 10,
        "the table grew to {most} records before a seal"
    );
}
