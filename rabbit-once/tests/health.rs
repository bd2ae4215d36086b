//! `Connection::health`, `Publisher::health` and `Consumer::health`: ready while connected,
//! unblocked, with room in the buffer and a store that answers; otherwise not ready, saying why.
//! The broker and the database go away through fault proxies, the buffer fills behind a
//! black-holed proxy, and a private node raises a memory alarm.

mod support;

use rabbit_once::{
    Connection, ConnectionState, Consumer, Event, NotReady, Publisher, PublisherConfig, Queue,
    Topology,
};
use std::time::Duration;
use support::consumer::{Ledger, cleanup, ids, postgres_via, publish, wait_for as applied};
use support::*;

const GUARD: Duration = Duration::from_secs(60);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connected_publisher_is_ready_and_names_its_broker() {
    let conn = direct().await;
    let p = Publisher::new(&conn, PublisherConfig::default()).unwrap();
    let (c, ph) = (conn.health(), p.health());
    assert!(c.is_ready() && c.is_connected(), "{c}");
    assert!(ph.is_ready(), "{ph}");
    assert_eq!(ph.reason(), None);
    assert_eq!(ph.to_string(), "ready");
    assert!(
        conn.server().is_some_and(|s| s.starts_with("RabbitMQ ")),
        "{:?}",
        conn.server()
    );
    p.close(Duration::from_secs(5)).await;
    let closed = p.health();
    assert!(
        matches!(closed.not_ready[..], [NotReady::PublisherClosed(None)]),
        "{closed:?}"
    );
    conn.close().await;
    let gone = conn.health();
    assert!(
        matches!(
            gone.not_ready[..],
            [NotReady::NotConnected(ConnectionState::Closed)]
        ),
        "{gone:?}"
    );
    assert_eq!(conn.server(), None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_out_of_reach_makes_it_not_ready_with_the_reason() {
    let proxy = FaultProxy::start(broker_addr()).await.unwrap();
    let conn = Connection::connect(config(&uri_via(proxy.port())))
        .await
        .unwrap();
    let p = Publisher::new(&conn, PublisherConfig::default()).unwrap();
    assert!(p.health().is_ready(), "{:?}", p.health());

    proxy.refuse_for(Duration::from_secs(3600));
    proxy.cut_all();
    assert!(
        eventually(GUARD, || !conn.health().is_connected()).await,
        "the cut is seen"
    );
    let h = p.health();
    assert!(!h.is_ready());
    assert!(
        matches!(h.not_ready[..], [NotReady::NotConnected(_)]),
        "only the connection: {h:?}"
    );
    let reason = h.reason().unwrap();
    assert!(reason.starts_with("not connected: "), "{reason}");
    assert!(!reason.contains("guest:guest"), "no password: {reason}");
    // Failed attempts follow; the reason then names the endpoint it cannot reach.
    assert!(
        eventually(GUARD, || conn
            .health()
            .reason()
            .is_some_and(|r| r.contains("cannot reach amqp://guest@127.0.0.1")))
        .await,
        "{}",
        conn.health()
    );

    proxy.refuse_for(Duration::ZERO);
    assert!(
        eventually(GUARD, || p.health().is_ready()).await,
        "ready again once the broker answers: {}",
        p.health()
    );
    p.close(Duration::from_secs(5)).await;
    conn.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_buffer_makes_the_publisher_not_ready() {
    let q = unique("health-full");
    let proxy = FaultProxy::start(broker_addr()).await.unwrap();
    // No heartbeat: the black hole below must not end the session.
    let conn = Connection::connect(
        config(&uri_via(proxy.port()))
            .heartbeat(Duration::ZERO)
            .topology(Topology::new().queue(Queue::new(&q))),
    )
    .await
    .unwrap();
    let by_count = Publisher::new(&conn, PublisherConfig::default().max_buffered(3)).unwrap();
    let by_bytes =
        Publisher::new(&conn, PublisherConfig::default().max_buffered_bytes(100)).unwrap();
    proxy.blackhole(true);

    let mut pending = Vec::new();
    for i in 0..2 {
        pending.push(by_count.try_publish(seq_message(&q, i, 10)).unwrap());
    }
    assert!(by_count.health().is_ready(), "room for one more");
    pending.push(by_count.try_publish(seq_message(&q, 2, 10)).unwrap());
    let h = by_count.health();
    assert!(
        matches!(
            h.not_ready[..],
            [NotReady::BufferFull {
                buffered: 3,
                max_buffered: 3,
                buffered_bytes: 30,
                ..
            }]
        ),
        "{h:?}"
    );
    assert!(h.is_connected());
    assert!(h.reason().unwrap().contains("buffer is full"), "{h}");
    assert!(conn.health().is_ready(), "the connection itself is fine");

    pending.push(by_bytes.try_publish(seq_message(&q, 3, 100)).unwrap());
    let h = by_bytes.health();
    assert!(
        matches!(
            h.not_ready[..],
            [NotReady::BufferFull {
                buffered: 1,
                buffered_bytes: 100,
                max_buffered_bytes: 100,
                ..
            }]
        ),
        "{h:?}"
    );

    proxy.blackhole(false);
    for c in pending {
        tokio::time::timeout(GUARD, c).await.unwrap().unwrap();
    }
    assert!(by_count.health().is_ready(), "{}", by_count.health());
    assert!(by_bytes.health().is_ready(), "{}", by_bytes.health());
    by_count.close(Duration::from_secs(5)).await;
    by_bytes.close(Duration::from_secs(5)).await;
    conn.delete_queue(&q).await.unwrap();
    conn.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_that_blocks_publishing_makes_it_not_ready() {
    assert!(
        BrokerNode::available(),
        "RabbitMQ's scripts are needed for private nodes"
    );
    let node = BrokerNode::start().await.expect("private node starts");
    let q = unique("health-blocked");
    let conn =
        Connection::connect(config(&node.uri()).topology(Topology::new().queue(Queue::new(&q))))
            .await
            .unwrap();
    let mut events = conn.events();
    let p = Publisher::new(&conn, PublisherConfig::default()).unwrap();
    assert!(p.health().is_ready(), "{:?}", p.health());

    node.rabbitmqctl(&["set_vm_memory_high_watermark", "0"])
        .await
        .unwrap();
    // The broker blocks a connection once it publishes.
    let c = p.publish(seq_message(&q, 1, 10)).await.unwrap();
    wait_for(&mut events, |e| matches!(e, Event::Blocked { .. })).await;
    let (ch, ph) = (conn.health(), p.health());
    assert!(ch.is_connected() && !ch.is_ready(), "{ch}");
    assert!(ch.blocked().is_some(), "{ch:?}");
    assert!(
        matches!(ph.not_ready[..], [NotReady::Blocked { .. }]),
        "{ph:?}"
    );
    assert!(
        ph.reason()
            .unwrap()
            .starts_with("the broker blocks publishing"),
        "{ph}"
    );

    node.rabbitmqctl(&["set_vm_memory_high_watermark", "0.4"])
        .await
        .unwrap();
    wait_for(&mut events, |e| matches!(e, Event::Unblocked)).await;
    tokio::time::timeout(GUARD, c).await.unwrap().unwrap();
    assert!(p.health().is_ready(), "{}", p.health());
    p.close(Duration::from_secs(5)).await;
    conn.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_consumer_is_not_ready_while_its_store_is_unreachable() {
    let pg_proxy = FaultProxy::start(pg_addr()).await.unwrap();
    let via = pg_url().replacen(&pg_addr(), &format!("127.0.0.1:{}", pg_proxy.port()), 1);
    let (store, _schema) = postgres_via(&via).await;
    let q = unique("health-store");
    let conn = direct().await;
    conn.declare(&Topology::new().queue(Queue::new(&q)))
        .await
        .unwrap();
    let consumer = Consumer::start(
        &conn,
        store.clone(),
        Ledger::default(),
        support::consumer::config(&q),
    )
    .await
    .unwrap();
    publish(&conn, &q, ids(0..5, &q)).await;
    applied(&consumer, "the first five", |s| s.applied == 5).await;
    assert!(consumer.health().is_ready(), "{}", consumer.health());

    pg_proxy.refuse_for(Duration::from_secs(3600));
    pg_proxy.cut_all();
    publish(&conn, &q, ids(5..10, &q)).await;
    assert!(
        eventually(GUARD, || !consumer.health().is_ready()).await,
        "the outage is seen"
    );
    let h = consumer.health();
    assert!(
        matches!(h.not_ready[..], [NotReady::StoreUnavailable { .. }]),
        "{h:?}"
    );
    assert!(h.is_connected());
    assert!(
        h.reason()
            .unwrap()
            .starts_with("the dedup store is unreachable: "),
        "{h}"
    );

    pg_proxy.refuse_for(Duration::ZERO);
    applied(&consumer, "the rest once the store is back", |s| {
        s.applied + s.duplicates >= 10
    })
    .await;
    assert!(
        eventually(GUARD, || consumer.health().is_ready()).await,
        "{}",
        consumer.health()
    );
    consumer.close(Duration::from_secs(5)).await;
    cleanup(&conn, &q).await;
    conn.close().await;
}

/// The first transaction after the outage is one whose handler rejects its message: the store
/// answered, so the consumer is ready again although nothing committed since.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_consumer_is_ready_again_when_the_first_answer_after_an_outage_is_a_failure() {
    let pg_proxy = FaultProxy::start(pg_addr()).await.unwrap();
    let via = pg_url().replacen(&pg_addr(), &format!("127.0.0.1:{}", pg_proxy.port()), 1);
    let (store, _schema) = postgres_via(&via).await;
    let q = unique("health-store-fail");
    let conn = direct().await;
    conn.declare(&Topology::new().queue(Queue::new(&q)))
        .await
        .unwrap();
    let bad = format!("{q}-bad");
    let ledger = Ledger {
        reject: std::sync::Arc::new([bad.clone()].into_iter().collect()),
        ..Ledger::default()
    };
    let consumer = Consumer::start(&conn, store.clone(), ledger, support::consumer::config(&q))
        .await
        .unwrap();
    publish(&conn, &q, ids(0..3, &q)).await;
    applied(&consumer, "the first three", |s| s.applied == 3).await;
    assert!(consumer.health().is_ready(), "{}", consumer.health());

    pg_proxy.refuse_for(Duration::from_secs(3600));
    pg_proxy.cut_all();
    publish(&conn, &q, [(bad, 3)]).await;
    assert!(
        eventually(GUARD, || !consumer.health().is_ready()).await,
        "the outage is seen"
    );

    pg_proxy.refuse_for(Duration::ZERO);
    let s = applied(&consumer, "the rejected one dead-lettered", |s| {
        s.dead_lettered == 1
    })
    .await;
    assert_eq!((s.applied, s.store_outages), (3, 1), "{s:?}");
    assert!(
        eventually(GUARD, || consumer.health().is_ready()).await,
        "{}",
        consumer.health()
    );
    consumer.close(Duration::from_secs(5)).await;
    cleanup(&conn, &q).await;
    conn.close().await;
}

async fn wait_for(events: &mut rabbit_once::Events, want: impl Fn(&Event) -> bool) {
    tokio::time::timeout(GUARD * 2, async {
        loop {
            match events.recv().await {
                Some(e) if want(&e) => return,
                Some(_) => {}
                None => panic!("event stream ended"),
            }
        }
    })
    .await
    .expect("event arrives")
}
