//! The idempotent consumer against the real broker, a real SQLite file and the real PostgreSQL:
//! each id applied once, duplicates skipped, group commit, concurrency, retention, start-up
//! checks. Every test has its own queue and its own database file or schema. Failures and
//! dead letters are in `consumer_failures.rs`; cut connections and a lost database in
//! `consumer_faults.rs`.

mod support;

use rabbit_once::sqlx;
use rabbit_once::{Consumer, Handler, Queue, Subscription, SubscriptionConfig, Topology};
use std::time::Duration;
use support::consumer::{
    Ledger, TestDb, cleanup, config, ids, postgres, publish, sqlite, wait_for,
};
use support::*;

/// 10,000 messages, 1,000 of their ids published a second time: applied once each.
async fn duplicates_case<S: TestDb>(store: S, batch: usize)
where
    Ledger: Handler<S::Db>,
{
    let q = unique("con-dups");
    let conn = direct().await;
    conn.declare(&Topology::new().queue(Queue::new(&q)))
        .await
        .unwrap();
    let mut msgs = ids(0..10_000, &q);
    msgs.extend(ids(0..1000, &q)); // the same ids again (a producer that re-sent them)
    publish(&conn, &q, msgs).await;
    let consumer = Consumer::start(
        &conn,
        store.clone(),
        Ledger::default(),
        config(&q).group_commit(batch, Duration::from_millis(2)),
    )
    .await
    .unwrap();
    let s = wait_for(&consumer, "all 11,000 deliveries settled", |s| {
        s.applied + s.duplicates >= 11_000
    })
    .await;
    let s2 = consumer.close(Duration::from_secs(5)).await;
    assert_eq!((s.applied, s.duplicates), (10_000, 1000), "{s:?}");
    assert_eq!(s2.applied + s2.duplicates, 11_000);
    let applied = store.applied().await;
    assert_eq!(applied.len(), 10_000, "one row per id");
    assert!(applied.values().all(|n| *n == 1), "no id applied twice");
    assert_eq!(
        conn.queue_info(&q).await.unwrap().messages,
        0,
        "everything acked"
    );
    cleanup(&conn, &q).await;
    conn.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_applies_each_id_once_and_skips_1000_duplicates() {
    let (store, _f) = sqlite().await;
    duplicates_case(store, 200).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_applies_each_id_once_and_skips_1000_duplicates() {
    let (store, _s) = postgres().await;
    duplicates_case(store, 200).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn group_commit_on_and_off_give_the_same_ledger() {
    // Off: one transaction per message. The duplicates case asserts the exact ledger.
    let (store, _f) = sqlite().await;
    duplicates_case(store, 1).await;
    let (store, _s) = postgres().await;
    duplicates_case(store, 1).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_handlers_apply_each_id_once() {
    let (store, _s) = postgres().await;
    let q = unique("con-conc");
    let conn = direct().await;
    conn.declare(&Topology::new().queue(Queue::new(&q)))
        .await
        .unwrap();
    let mut msgs = ids(0..3000, &q);
    msgs.extend(ids(0..300, &q));
    publish(&conn, &q, msgs).await;
    let consumer = Consumer::start(
        &conn,
        store.clone(),
        Ledger::default(),
        config(&q)
            .concurrency(4)
            .group_commit(25, Duration::from_millis(1)),
    )
    .await
    .unwrap();
    let s = wait_for(&consumer, "all", |s| s.applied + s.duplicates >= 3300).await;
    consumer.close(Duration::from_secs(5)).await;
    assert_eq!((s.applied, s.duplicates), (3000, 300));
    let applied = store.applied().await;
    assert_eq!(applied.len(), 3000);
    assert!(applied.values().all(|n| *n == 1));
    cleanup(&conn, &q).await;
    conn.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retention_deletes_old_dedup_records_in_batches() {
    let (store, _f) = sqlite().await;
    let q = unique("con-retain");
    let conn = direct().await;
    conn.declare(&Topology::new().queue(Queue::new(&q)))
        .await
        .unwrap();
    publish(&conn, &q, ids(0..2500, &q)).await;
    let consumer = Consumer::start(
        &conn,
        store.clone(),
        Ledger::default(),
        config(&q).retention(Duration::ZERO, Duration::from_millis(300)),
    )
    .await
    .unwrap();
    wait_for(&consumer, "applied", |s| s.applied >= 2500).await;
    tokio::time::sleep(Duration::from_millis(1100)).await; // records must be a second old
    let s = wait_for(&consumer, "purged", |s| s.purged >= 2500).await;
    consumer.close(Duration::from_secs(5)).await;
    assert_eq!(s.purged, 2500);
    let left: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM rabbit_once_processed")
        .fetch_one(store.pool())
        .await
        .unwrap();
    assert_eq!(left, 0);
    cleanup(&conn, &q).await;
    conn.close().await;
}

/// What the worker would only find out after `start` returned is refused by `start` itself.
#[tokio::test]
async fn start_refuses_what_the_worker_could_not_run() {
    let (store, _f) = sqlite().await;
    let conn = direct().await;
    let e = Consumer::start(
        &conn,
        store.clone(),
        Ledger::default(),
        config("q").prefetch(0),
    )
    .await
    .unwrap_err();
    assert!(e.to_string().contains("prefetch"), "{e}");
    let long = "q".repeat(250); // fits, but "<queue>.retry.100" does not
    let e = Consumer::start(&conn, store, Ledger::default(), config(&long))
        .await
        .unwrap_err();
    assert!(
        e.to_string().contains("retry and dead-letter queues"),
        "{e}"
    );
    let e = Subscription::start(&conn, SubscriptionConfig::new("q").prefetch(0)).unwrap_err();
    assert!(e.to_string().contains("prefetch"), "{e}");
    conn.close().await;
}
