//! One relay at a time: two relays on one outbox (PostgreSQL's session lock, SQLite's lock
//! file), and what the PostgreSQL lock costs the application's pool.
use super::*;

/// Two relays on one outbox: one publishes, the other stands by (PostgreSQL: the session
/// advisory lock; SQLite: the lock file beside the database); when the active one stops at once
/// (no wait for confirms), the standby takes over. Each row once, in order. A macro: the two
/// outboxes share no trait for enqueueing.
macro_rules! two_relays_case {
    ($q:expr, $conn:expr, $store:expr, $outbox:expr) => {{
        let (q, conn, store, outbox) = (&$q, &$conn, &$store, &$outbox);
        let first = Relay::start(conn, outbox.clone(), config()).unwrap();
        // The first one holds the lock once it has read.
        let end = tokio::time::Instant::now() + GUARD;
        while first.stats().reads == 0 {
            assert!(
                tokio::time::Instant::now() < end,
                "the first relay never read"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let second = Relay::start(conn, outbox.clone(), config()).unwrap();
        let enqueue = async |from: u64, to_n: u64| {
            for n in from..to_n {
                let mut tx = store.begin().await.unwrap();
                outbox.enqueue(&mut tx, to(q, n)).await.unwrap();
                tx.commit().await.unwrap();
            }
        };
        enqueue(0, 100).await;
        let want: Vec<String> = (0..100).map(|n| format!("{q}-{n}")).collect();
        assert_eq!(read(conn, q, 100).await, want, "each row once, in order");
        until_empty(outbox).await;
        assert_eq!(second.stats().relayed, 0, "the standby published nothing");

        // The active relay stops at once (no wait for confirms); its lock goes with it.
        let a = first.close(Duration::ZERO).await;
        enqueue(100, 200).await;
        let want: Vec<String> = (100..200).map(|n| format!("{q}-{n}")).collect();
        assert_eq!(read(conn, q, 100).await, want, "the standby took over");
        until_empty(outbox).await;
        let b = second.close(Duration::from_secs(5)).await;
        assert_eq!((a.relayed, b.relayed), (100, 100), "{a:?} {b:?}");
        assert_eq!(
            conn.queue_info(q).await.unwrap().messages,
            0,
            "no row published twice"
        );
    }};
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_two_relays_publish_each_row_once_and_a_standby_takes_over() {
    let q = unique("ro-outbox-two");
    let conn = connect(&q).await;
    let (store, outbox, schema) = postgres().await;
    two_relays_case!(q, conn, store, outbox);
    conn.delete_queue(&q).await.unwrap();
    conn.close().await;
    drop_schema(store, schema).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_two_relays_publish_each_row_once_and_a_standby_takes_over() {
    let q = unique("ro-outbox-two-sqlite");
    let conn = connect(&q).await;
    let db = Lite::new("ro-outbox-two").await;
    let (store, outbox) = (db.store.clone(), db.outbox.clone());
    two_relays_case!(q, conn, store, outbox);
    conn.delete_queue(&q).await.unwrap();
    conn.close().await;
    store.pool().close().await;
}

/// A running relay keeps no connection of the application's pool for itself: its lock session
/// leaves the pool and its `LISTEN` has a connection of its own, so a pool of two still gives
/// the application two connections at once. The lock's session has TCP keepalives, so the
/// server frees the lock of a relay whose host vanished.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_relay_takes_no_pool_connection_and_its_lock_session_has_keepalives() {
    let q = unique("ro-outbox-pool");
    let conn = connect(&q).await;
    let schema = unique("ro_outbox");
    let store = PostgresStore::connect_with(
        &pg_url(),
        PostgresOptions {
            schema: Some(schema.clone()),
            max_connections: 2,
            acquire_timeout: Duration::from_secs(3),
            ..PostgresOptions::default()
        },
    )
    .await
    .unwrap();
    store.migrate().await.unwrap();
    let schema = Schema(schema);
    let outbox = PostgresOutbox::new(store.pool().clone()).max_message_size(1 << 20);
    outbox.migrate().await.unwrap();

    // The lock's session, as a relay gets it.
    let claim = crate::outbox::backend::Backend::claim(&outbox)
        .await
        .unwrap();
    let crate::outbox::backend::Claim::Session(mut lock) = claim else {
        panic!("{claim:?}")
    };
    for (setting, want) in [
        ("tcp_keepalives_idle", "10"),
        ("tcp_keepalives_interval", "5"),
        ("tcp_keepalives_count", "3"),
        ("tcp_user_timeout", "30000"),
    ] {
        let got: String = sqlx::query_scalar(&format!("SHOW {setting}"))
            .fetch_one(&mut lock)
            .await
            .unwrap();
        assert_eq!(got, want, "{setting}");
    }
    sqlx::Connection::close(lock).await.unwrap(); // frees the lock

    let relay = Relay::start(&conn, outbox.clone(), config()).unwrap();
    let mut tx = store.begin().await.unwrap();
    outbox.enqueue(&mut tx, to(&q, 0)).await.unwrap();
    tx.commit().await.unwrap();
    assert_eq!(read(&conn, &q, 1).await, [format!("{q}-0")]);
    until_empty(&outbox).await;
    tokio::time::sleep(Duration::from_millis(300)).await; // the listener is up
    let a = store.pool().acquire().await.expect("a first connection");
    let b = store.pool().acquire().await.expect("a second connection");
    drop((a, b));

    let stats = relay.close(Duration::from_secs(5)).await;
    assert_eq!(stats.relayed, 1, "{stats:?}");
    conn.delete_queue(&q).await.unwrap();
    conn.close().await;
    drop_schema(store, schema).await;
}
