//! The relay when what it stands on goes away: the broker (its connection refused and cut for a
//! while) and the database (the relay's PostgreSQL connections refused and cut). It waits, loses
//! nothing, and publishes every row once they are back.

use super::*;
use rabbit_once_testkit::FaultProxy;
use std::collections::BTreeSet;

const GUARD: Duration = Duration::from_secs(60);

/// The broker, straight or through `proxy`, declaring `queue`; fast reconnects.
async fn connect_via(queue: &str, proxy: Option<&FaultProxy>) -> Connection {
    let mut endpoint = crate::Endpoint::parse(&amqp_uri()).unwrap();
    if let Some(p) = proxy {
        endpoint = endpoint.with_address("127.0.0.1", p.port());
    }
    let config = ConnectionConfig::new(&endpoint.to_uri())
        .unwrap()
        .heartbeat(Duration::from_secs(1))
        .backoff(crate::Backoff::new(
            Duration::from_millis(20),
            Duration::from_millis(200),
            0.2,
        ))
        .topology(Topology::new().queue(Queue::new(queue)));
    let conn = Connection::start(config).unwrap();
    tokio::time::timeout(GUARD, conn.wait_connected())
        .await
        .expect("connected in time")
        .unwrap();
    conn
}

/// Messages `from..to` to `queue`, committed `per_tx` at a time.
fn batch(queue: &str, from: u64, to: u64) -> Vec<Message> {
    (from..to)
        .map(|n| Message::to_queue(queue, format!("{n}")).with_message_id(format!("{queue}-{n}")))
        .collect()
}

/// Reads `queue` until every id of `0..n` arrived (copies allowed); returns the deliveries.
async fn read_all(conn: &Connection, queue: &str, n: u64) -> usize {
    let want: BTreeSet<String> = (0..n).map(|i| format!("{queue}-{i}")).collect();
    let mut seen = BTreeSet::new();
    let mut deliveries = 0;
    let mut sub = Subscription::start(conn, SubscriptionConfig::new(queue).prefetch(500)).unwrap();
    while seen != want {
        let d = tokio::time::timeout(GUARD, sub.recv())
            .await
            .unwrap_or_else(|_| panic!("{} of {n} ids arrived", seen.len()))
            .expect("subscription open");
        seen.insert(d.message_id().unwrap_or_default().to_owned());
        deliveries += 1;
        d.ack();
    }
    sub.close(Duration::from_secs(5)).await;
    deliveries
}

/// The broker goes away for 3 s (connections cut, new ones refused) while the relay has rows in
/// flight and more are committed: every row is published once it is back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_relay_waits_out_a_broker_outage_and_publishes_everything_after() {
    let q = unique("ro-outbox-broker-down");
    let proxy = FaultProxy::start(
        crate::Endpoint::parse(&amqp_uri())
            .map(|e| format!("{}:{}", e.host(), e.port()))
            .unwrap(),
    )
    .await
    .unwrap();
    let relay_conn = connect_via(&q, Some(&proxy)).await;
    let db = Lite::new("ro-outbox-down").await;
    let (store, outbox) = (db.store.clone(), db.outbox.clone());
    let relay = Relay::start(&relay_conn, outbox.clone(), config()).unwrap();

    let commit = async |from, to| {
        let mut tx = store.begin().await.unwrap();
        outbox
            .enqueue_all(&mut tx, batch(&q, from, to))
            .await
            .unwrap();
        tx.commit().await.unwrap();
    };
    commit(0, 1000).await;
    tokio::time::sleep(Duration::from_millis(20)).await; // some in flight
    proxy.refuse_for(Duration::from_secs(3));
    proxy.cut_all();
    for k in 0..5 {
        commit(1000 + k * 100, 1100 + k * 100).await; // committed while the broker is away
    }
    let check = connect_via(&q, None).await;
    let deliveries = read_all(&check, &q, 1500).await;
    let end = tokio::time::Instant::now() + GUARD;
    while outbox.status().await.unwrap().pending > 0 {
        assert!(tokio::time::Instant::now() < end, "rows left in the outbox");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let stats = relay.close(Duration::from_secs(5)).await;
    assert_eq!(
        stats.relayed, 1500,
        "every row relayed and deleted once: {stats:?}"
    );
    assert!(deliveries >= 1500);
    assert!(
        proxy.cuts() >= 1 && proxy.refused() >= 1,
        "the outage happened"
    );
    check.delete_queue(&q).await.unwrap();
    check.close().await;
    relay_conn.close().await;
    store.pool().close().await;
}

/// The relay's database goes away for 3 s (its connections, the lock's session included, cut;
/// new ones refused) while another process goes on committing: the relay stops, waits, takes
/// the lock again and publishes every row, those committed during the outage included.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_relay_waits_out_a_database_outage_and_publishes_everything_after() {
    let q = unique("ro-outbox-db-down");
    let (store, _, schema) = postgres().await; // the writer's own, direct connection
    let writer = PostgresOutbox::new(store.pool().clone());
    let url = pg_url();
    let target = url
        .split('@')
        .nth(1)
        .and_then(|rest| rest.split('/').next())
        .unwrap_or("127.0.0.1:5432")
        .to_string();
    let proxy = FaultProxy::start(target.clone()).await.unwrap();
    let via = url.replacen(&target, &format!("127.0.0.1:{}", proxy.port()), 1);
    let relay_store = PostgresStore::connect_with(
        &via,
        PostgresOptions {
            schema: Some(schema.0.clone()),
            ..PostgresOptions::default()
        },
    )
    .await
    .unwrap();
    let relay_outbox = PostgresOutbox::new(relay_store.pool().clone());
    let conn = connect_via(&q, None).await;
    let relay = Relay::start(&conn, relay_outbox, config()).unwrap();

    let commit = async |from, to| {
        let mut tx = store.begin().await.unwrap();
        writer
            .enqueue_all(&mut tx, batch(&q, from, to))
            .await
            .unwrap();
        tx.commit().await.unwrap();
    };
    commit(0, 500).await;
    tokio::time::sleep(Duration::from_millis(20)).await;
    proxy.refuse_for(Duration::from_secs(3));
    proxy.cut_all();
    for k in 0..5 {
        commit(500 + k * 100, 600 + k * 100).await; // committed while the relay cannot read
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let deliveries = read_all(&conn, &q, 1000).await;
    let end = tokio::time::Instant::now() + GUARD;
    while writer.status().await.unwrap().pending > 0 {
        assert!(tokio::time::Instant::now() < end, "rows left in the outbox");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    relay.close(Duration::from_secs(5)).await;
    assert!(deliveries >= 1000);
    assert!(
        proxy.cuts() >= 1 && proxy.refused() >= 1,
        "the outage happened"
    );
    conn.delete_queue(&q).await.unwrap();
    conn.close().await;
    relay_store.pool().close().await;
    drop_schema(store, schema).await;
}
