//! The relay's reads and deletes by id ranges are exact, and its unsynced deletes leave the
//! pool's connections as they were.
use super::*;

/// The relay's reads leave out the rows it holds as id ranges and its deletes take ranges:
/// both are exact. A row inside the span of the ranges (between two runs of rows in flight,
/// or below them: a row that committed late) is read; a delete takes exactly the ids given.
/// `ids`: the ids of ten committed keyless rows, in order.
async fn ranges_are_exact<B: crate::outbox::backend::Backend>(backend: &B, ids: &[i64]) {
    use crate::outbox::store::{Filter, ranges};
    let read = |skip: Vec<(i64, i64)>, limit: i64| async move {
        let filter = Filter {
            skip: &skip,
            ..Default::default()
        };
        let rows = backend.pending(limit, &filter).await.unwrap();
        rows.into_iter().map(|r| r.id).collect::<Vec<_>>()
    };
    let flying = ranges([ids[1], ids[3], ids[2], ids[5], ids[6], ids[8]]);
    assert_eq!(flying.len(), 3, "{flying:?}");
    assert_eq!(
        read(flying.clone(), 100).await,
        [ids[0], ids[4], ids[7], ids[9]]
    );
    assert_eq!(read(flying.clone(), 2).await, [ids[0], ids[4]], "id order");
    assert_eq!(read(ranges(ids.iter().copied()), 100).await, [0i64; 0]);
    // Deleting 1, 2, 3 and 5 leaves the others, 4 between them included.
    assert_eq!(
        backend
            .remove(&[ids[5], ids[1], ids[2], ids[3]])
            .await
            .unwrap(),
        4
    );
    assert_eq!(
        read(Vec::new(), 100).await,
        [ids[0], ids[4], ids[6], ids[7], ids[8], ids[9]]
    );
}

/// The relay's backlog count (its gauges): the rows left and the first row's age (just
/// written: under a minute); none left, no age.
async fn backlog_is_counted<B: crate::outbox::backend::Backend>(backend: &B) {
    use crate::outbox::store::Filter;
    let left: Vec<i64> = backend
        .pending(100, &Filter::default())
        .await
        .unwrap()
        .iter()
        .map(|r| r.id)
        .collect();
    let (rows, age) = backend.backlog().await.unwrap();
    assert_eq!(rows, left.len() as u64);
    assert!(age.is_some_and(|a| a < 60), "{age:?}");
    backend.remove(&left).await.unwrap();
    assert_eq!(backend.backlog().await.unwrap(), (0, None));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_reads_and_deletes_by_id_ranges_are_exact() {
    let db = Lite::new("ro-outbox").await;
    let (store, outbox) = (db.store.clone(), db.outbox.clone());
    outbox.migrate().await.unwrap(); // idempotent, the second migration too
    let mut tx = store.begin().await.unwrap();
    outbox
        .enqueue_all(&mut tx, (0..10).map(|n| to("q", n)))
        .await
        .unwrap();
    tx.commit().await.unwrap();
    let ids: Vec<i64> = outbox
        .pending(100)
        .await
        .unwrap()
        .iter()
        .map(|r| r.id)
        .collect();
    ranges_are_exact(&outbox, &ids).await;
    backlog_is_counted(&outbox).await;
    store.pool().close().await;
}

/// On PostgreSQL also with a row that commits late: its id is below every range left out,
/// and it is read once it committed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_reads_and_deletes_by_id_ranges_are_exact() {
    use crate::outbox::store::{Filter, ranges};
    let (store, outbox, schema) = postgres().await;
    let mut early = store.begin().await.unwrap();
    outbox.enqueue(&mut early, to("q", 99)).await.unwrap();
    let mut tx = store.begin().await.unwrap();
    outbox
        .enqueue_all(&mut tx, (0..10).map(|n| to("q", n)))
        .await
        .unwrap();
    tx.commit().await.unwrap();
    let ids: Vec<i64> = outbox
        .pending(100)
        .await
        .unwrap()
        .iter()
        .map(|r| r.id)
        .collect();
    assert_eq!(ids.len(), 10);
    let skip = ranges(ids.iter().copied());
    let filter = Filter {
        skip: &skip,
        ..Default::default()
    };
    let relay_read = || async {
        crate::outbox::backend::Backend::pending(&outbox, 100, &filter)
            .await
            .unwrap()
            .iter()
            .map(|r| r.id)
            .collect::<Vec<_>>()
    };
    assert!(relay_read().await.is_empty());
    early.commit().await.unwrap();
    let late = relay_read().await;
    assert_eq!(late.len(), 1);
    assert!(late[0] < ids[0], "the late row has the lowest id");
    outbox.remove(&late).await.unwrap();
    ranges_are_exact(&outbox, &ids).await;
    backlog_is_counted(&outbox).await;
    drop_schema(store, schema).await;
}

/// The relay's deletes on SQLite do not wait for the disk, and leave every connection of the
/// pool as it was (`synchronous = FULL`, the store's setting) for the application's commits.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_deletes_leave_the_pools_connections_synced() {
    let q = unique("ro-outbox-sync");
    let conn = connect(&q).await;
    let db = Lite::new("ro-outbox").await;
    let (store, outbox) = (db.store.clone(), db.outbox.clone());
    let relay = Relay::start(&conn, outbox.clone(), config()).unwrap();
    for chunk in 0..5u64 {
        let mut tx = store.begin().await.unwrap();
        outbox
            .enqueue_all(&mut tx, (chunk * 100..(chunk + 1) * 100).map(|n| to(&q, n)))
            .await
            .unwrap();
        tx.commit().await.unwrap();
    }
    assert_eq!(read(&conn, &q, 500).await.len(), 500);
    until_empty(&outbox).await;
    let stats = relay.close(Duration::from_secs(5)).await;
    assert_eq!(stats.relayed, 500, "{stats:?}");
    // Every connection the pool has (the store opens at most 4), all at once.
    let mut held = Vec::new();
    for _ in 0..4 {
        let mut c = store.pool().acquire().await.unwrap();
        let synchronous: i64 = sqlx::query_scalar("PRAGMA synchronous")
            .fetch_one(&mut *c)
            .await
            .unwrap();
        assert_eq!(synchronous, 2, "FULL");
        held.push(c);
    }
    drop(held);
    conn.delete_queue(&q).await.unwrap();
    conn.close().await;
    store.pool().close().await;
}

/// With a rollback journal (not WAL) the relay's delete stays synced and still deletes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_deletes_with_a_rollback_journal_stay_synced() {
    use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions};
    let path = std::env::temp_dir().join(format!("{}.db", unique("ro-outbox")));
    let pool = SqlitePoolOptions::new()
        .max_connections(1)
        .connect_with(
            SqliteConnectOptions::new()
                .filename(&path)
                .create_if_missing(true)
                .journal_mode(SqliteJournalMode::Delete)
                .synchronous(sqlx::sqlite::SqliteSynchronous::Full),
        )
        .await
        .unwrap();
    let outbox = SqliteOutbox::new(pool.clone());
    outbox.migrate().await.unwrap();
    let mut tx = pool.begin().await.unwrap();
    outbox
        .enqueue_all(&mut tx, (0..3).map(|n| to("q", n)))
        .await
        .unwrap();
    tx.commit().await.unwrap();
    let ids: Vec<i64> = outbox
        .pending(10)
        .await
        .unwrap()
        .iter()
        .map(|r| r.id)
        .collect();
    let removed = crate::outbox::backend::Backend::remove(&outbox, &ids)
        .await
        .unwrap();
    assert_eq!(removed, 3);
    assert!(outbox.pending(10).await.unwrap().is_empty());
    let synchronous: i64 = sqlx::query_scalar("PRAGMA synchronous")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(synchronous, 2, "FULL");
    pool.close().await;
    for ext in ["", "-journal"] {
        let _ = std::fs::remove_file(format!("{}{ext}", path.display()));
    }
}
