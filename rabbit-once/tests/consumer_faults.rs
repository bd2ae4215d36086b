//! The idempotent consumer when its connections fail: the broker connection cut mid-stream,
//! the consumer cancelled by the broker, the database going away. Against the real broker and
//! PostgreSQL (through fault proxies), or SQLite; every test has its own queue and database.

mod support;

use rabbit_once::{Connection, Consumer, Event, Handler, Queue, Topology};
use std::time::Duration;
use support::consumer::{
    GUARD, Ledger, TestDb, cleanup, config, ids, postgres, postgres_via, publish, sqlite, wait_for,
};
use support::*;

/// A queue of `n` published messages, and an idempotent consumer on `store` (group commit of
/// 50, `prefetch`) through a fault proxy: (queue, a direct connection, proxy, its connection,
/// consumer).
async fn cut_case<S: TestDb>(
    store: &S,
    prefix: &str,
    n: u64,
    prefetch: u16,
) -> (String, Connection, FaultProxy, Connection, Consumer)
where
    Ledger: Handler<S::Db>,
{
    let q = unique(prefix);
    let setup = direct().await;
    setup
        .declare(&Topology::new().queue(Queue::new(&q)))
        .await
        .unwrap();
    publish(&setup, &q, ids(0..n, &q)).await;
    let (proxy, conn) = through_proxy(|c| c).await;
    let consumer = Consumer::start(
        &conn,
        store.clone(),
        Ledger::default(),
        config(&q)
            .prefetch(prefetch)
            .group_commit(50, Duration::from_millis(1)),
    )
    .await
    .unwrap();
    (q, setup, proxy, conn, consumer)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consumer_connection_cut_five_times_applies_every_id_once() {
    let (store, _s) = postgres().await;
    const N: u64 = 10_000;
    let (q, setup, proxy, conn, consumer) = cut_case(&store, "con-cuts", N, 200).await;
    for k in 1..=6u64 {
        wait_for(&consumer, "progress", |s| s.applied >= k * N / 8).await;
        let before = conn.reconnects();
        proxy.cut_all();
        assert!(eventually(GUARD, || conn.reconnects() > before).await);
    }
    let s = wait_for(&consumer, "all applied", |s| s.applied >= N).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let s2 = consumer.close(Duration::from_secs(5)).await;
    assert!(conn.reconnects() >= 5);
    assert_eq!(s.applied, N);
    assert_eq!(s2.applied, N, "nothing applied twice after the last count");
    let applied = store.applied().await;
    assert_eq!(applied.len() as u64, N);
    assert!(applied.values().all(|n| *n == 1), "no id applied twice");
    // Every delivery is accounted for: applied once, acked as a duplicate, or dropped unacked
    // because its channel died (the broker delivered it again).
    assert_eq!(
        s2.delivered,
        s2.applied + s2.duplicates + s2.abandoned,
        "{s2:?}"
    );
    assert_eq!(
        (s2.retried, s2.dead_lettered, s2.missing_id),
        (0, 0, 0),
        "{s2:?}"
    );
    // Six cuts with 200 deliveries in flight: some were caught by a cut and came again.
    assert!(s2.delivered > N, "{s2:?}");
    assert_eq!(setup.queue_info(&q).await.unwrap().messages, 0);
    conn.close().await;
    cleanup(&setup, &q).await;
}

/// Cuts in quick succession while a window of redelivered messages waits in the prefetch
/// buffer: those never started a run, so the crash-loop bound must not count them (it once
/// did, and dead-lettered them after `max_attempts` cuts).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cuts_while_redeliveries_wait_never_count_as_crash_loops() {
    let (store, _db) = sqlite().await;
    const N: u64 = 4_000;
    let (q, setup, proxy, conn, consumer) = cut_case(&store, "con-recuts", N, 500).await;
    wait_for(&consumer, "progress", |s| s.applied >= 300).await;
    for _ in 0..5 {
        let before = conn.reconnects();
        proxy.cut_all();
        assert!(eventually(GUARD, || conn.reconnects() > before).await);
        // Long enough for the next window to arrive, far too short to work through it.
        tokio::time::sleep(Duration::from_millis(150)).await;
    }
    let s = wait_for(&consumer, "all settled", |s| {
        s.applied + s.dead_lettered >= N
    })
    .await;
    let s2 = consumer.close(Duration::from_secs(5)).await;
    assert_eq!(
        (s.crash_looped, s.dead_lettered, s.applied),
        (0, 0, N),
        "{s:?}"
    );
    assert_eq!(s2.applied, N, "{s2:?}");
    let applied = store.applied().await;
    assert_eq!(applied.len() as u64, N);
    assert!(applied.values().all(|n| *n == 1), "no id applied twice");
    conn.close().await;
    cleanup(&setup, &q).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_database_going_away_holds_work_unacked_and_loses_nothing() {
    let pg_proxy = FaultProxy::start(pg_addr()).await.unwrap();
    let via = pg_url().replacen(&pg_addr(), &format!("127.0.0.1:{}", pg_proxy.port()), 1);
    let (store, _s) = postgres_via(&via).await;
    let q = unique("con-dbgone");
    let conn = direct().await;
    conn.declare(&Topology::new().queue(Queue::new(&q)))
        .await
        .unwrap();
    let mut events = conn.events();
    const N: u64 = 3000;
    let consumer = Consumer::start(
        &conn,
        store.clone(),
        Ledger::default(),
        config(&q)
            .prefetch(100)
            .group_commit(20, Duration::from_millis(1)),
    )
    .await
    .unwrap();
    publish(&conn, &q, ids(0..N / 2, &q)).await;
    wait_for(&consumer, "some applied", |s| s.applied >= 200).await;

    // The database goes away: existing connections reset, new ones refused.
    pg_proxy.refuse_for(Duration::from_secs(3600));
    pg_proxy.cut_all();
    publish(&conn, &q, ids(N / 2..N, &q)).await;
    tokio::time::timeout(GUARD, async {
        while !matches!(events.recv().await, Some(Event::StoreUnavailable { .. })) {}
    })
    .await
    .expect("the outage is reported");
    let held = consumer.stats();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let still = consumer.stats();
    assert_eq!(
        (still.applied, still.duplicates),
        (held.applied, held.duplicates),
        "no commit, so no progress"
    );
    let on_broker = conn.queue_info(&q).await.unwrap();
    assert!(
        on_broker.messages as u64 >= N - held.applied - 100,
        "unapplied messages stay on the broker (ready {} + at most prefetch unacked)",
        on_broker.messages
    );

    pg_proxy.refuse_for(Duration::ZERO);
    // A commit whose reply the cut lost is in doubt: the batch runs again and finds its
    // messages applied, so they count as duplicates. The ledger below is the proof.
    let s = wait_for(&consumer, "all applied after the database is back", |s| {
        s.applied + s.duplicates >= N
    })
    .await;
    consumer.close(Duration::from_secs(5)).await;
    assert!(s.store_outages >= 1);
    let applied = store.applied().await;
    assert_eq!(applied.len() as u64, N, "nothing lost");
    assert!(applied.values().all(|n| *n == 1), "nothing applied twice");
    cleanup(&conn, &q).await;
    conn.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_consumer_cancelled_by_the_broker_subscribes_again() {
    let (store, _f) = sqlite().await;
    let q = unique("con-cancel");
    let conn = Connection::connect(
        support::config(&broker_uri()).topology(Topology::new().queue(Queue::new(&q))),
    )
    .await
    .unwrap();
    let mut events = conn.events();
    publish(&conn, &q, ids(0..100, &q)).await;
    let consumer = Consumer::start(&conn, store.clone(), Ledger::default(), config(&q))
        .await
        .unwrap();
    wait_for(&consumer, "first batch", |s| s.applied >= 100).await;
    let other = direct().await;
    other.delete_queue(&q).await.unwrap(); // the broker cancels our consumer
    tokio::time::timeout(GUARD, async {
        while !matches!(events.recv().await, Some(Event::ConsumerCancelled { .. })) {}
    })
    .await
    .unwrap();
    tokio::time::timeout(GUARD, async {
        while !matches!(events.recv().await, Some(Event::Subscribed { .. })) {}
    })
    .await
    .expect("subscribed again (the queue was declared again)");
    publish(&conn, &q, ids(100..200, &q)).await;
    wait_for(&consumer, "second batch", |s| s.applied >= 200).await;
    consumer.close(Duration::from_secs(5)).await;
    assert_eq!(store.applied().await.len(), 200);
    cleanup(&conn, &q).await;
    other.close().await;
    conn.close().await;
}
