//! The publisher against the real broker on 5672: order, back-pressure, close, a subscription
//! as a stream. Cuts and heartbeats are in `publisher_faults.rs`, what the broker or the
//! library refuses in `publisher_refusals.rs`. (Tests that stop a broker live in
//! `tests/broker_node.rs`.)

mod support;

use rabbit_once::{Connection, Error, Publisher, PublisherConfig, Queue, Topology};
use std::collections::BTreeSet;
use std::time::Duration;
use support::*;

const GUARD: Duration = Duration::from_secs(60);

#[test]
fn public_handles_are_send_and_sync() {
    fn check<T: Send + Sync>() {}
    check::<Connection>();
    check::<Publisher>();
    check::<rabbit_once::Subscription>();
    check::<rabbit_once::Confirmation>();
    check::<Error>();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_messages_are_confirmed_and_queued_once_in_order() {
    let q = unique("pub-order");
    let conn =
        Connection::connect(config(&broker_uri()).topology(Topology::new().queue(Queue::new(&q))))
            .await
            .unwrap();
    let p = Publisher::new(&conn, PublisherConfig::default()).unwrap();
    let mut confirmations = Vec::new();
    for i in 0..10_000 {
        confirmations.push(p.publish(seq_message(&q, i, 100)).await.unwrap());
    }
    let mut ids = Vec::new();
    for (i, c) in confirmations.into_iter().enumerate() {
        let ok = c.await.unwrap();
        assert_eq!(ok.sequence, i as u64);
        assert_eq!(ok.publishes, 1);
        ids.push(ok.message_id);
    }
    let stats = p.stats();
    assert_eq!(
        (stats.accepted, stats.confirmed, stats.failed),
        (10_000, 10_000, 0)
    );
    assert_eq!((stats.buffered, stats.buffered_bytes), (0, 0));

    let got = drain(&conn, &q, 10_000, Duration::from_secs(5)).await;
    let seqs: Vec<u64> = got.iter().map(|(_, b)| seq_of(b)).collect();
    assert_eq!(
        seqs,
        (0..10_000).collect::<Vec<_>>(),
        "every seq once, in order"
    );
    let got_ids: Vec<&str> = got.iter().map(|(id, _)| id.as_str()).collect();
    assert_eq!(got_ids, ids.iter().map(String::as_str).collect::<Vec<_>>());
    assert_eq!(
        ids.iter().collect::<BTreeSet<_>>().len(),
        10_000,
        "ids are unique"
    );
    assert!(p.close(Duration::from_secs(5)).await.is_empty());
    conn.delete_queue(&q).await.unwrap();
    conn.close().await;
}

/// A durable classic queue of storage version 2 (the faster persistent path, see
/// docs/benchmarks.md) takes persistent messages like version 1: every one, once, in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn persistent_messages_into_a_version_2_classic_queue_arrive_in_order() {
    let q = unique("pub-cqv2");
    let topo = Topology::new().queue(Queue::new(&q).durable(true).classic_version(2));
    let conn = Connection::connect(config(&broker_uri()).topology(topo))
        .await
        .unwrap();
    let p = Publisher::new(&conn, PublisherConfig::default()).unwrap();
    let mut confirmations = Vec::new();
    for i in 0..2_000 {
        confirmations.push(p.publish(seq_message(&q, i, 512)).await.unwrap());
    }
    for c in confirmations {
        c.await.unwrap();
    }
    assert_eq!(conn.queue_info(&q).await.unwrap().messages, 2_000);
    let got = drain(&conn, &q, 2_000, Duration::from_secs(5)).await;
    let seqs: Vec<u64> = got.iter().map(|(_, b)| seq_of(b)).collect();
    assert_eq!(seqs, (0..2_000).collect::<Vec<_>>());
    assert!(p.close(Duration::from_secs(5)).await.is_empty());
    conn.delete_queue(&q).await.unwrap();
    conn.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_buffer_makes_publish_wait_and_bounds_memory() {
    let q = unique("pub-full");
    let setup = direct().await;
    setup
        .declare(&Topology::new().queue(Queue::new(&q)))
        .await
        .unwrap();
    let (proxy, conn) = through_proxy(|c| c).await;
    const MAX_BYTES: usize = 256 << 10;
    const SIZE: usize = 4096;
    let p = Publisher::new(
        &conn,
        PublisherConfig::default()
            .max_buffered_bytes(MAX_BYTES)
            .max_buffered(100_000),
    )
    .unwrap();

    proxy.refuse_for(Duration::from_secs(3600));
    proxy.cut_all();
    assert!(eventually(GUARD, || !conn.state().is_connected()).await);

    let publishing = {
        let p = p.clone();
        let q = q.clone();
        tokio::spawn(async move {
            let mut cs = Vec::new();
            for i in 0..500 {
                cs.push(p.publish(seq_message(&q, i, SIZE)).await.unwrap());
            }
            cs
        })
    };
    let capacity = (MAX_BYTES / SIZE) as u64;
    assert!(
        eventually(GUARD, || p.stats().accepted == capacity).await,
        "{:?}",
        p.stats()
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    let stats = p.stats();
    assert_eq!(
        stats.accepted, capacity,
        "publish waits while the buffer is full"
    );
    assert!(!publishing.is_finished());
    assert!(stats.buffered_bytes <= MAX_BYTES);
    assert_eq!(stats.confirmed, 0);

    proxy.refuse_for(Duration::ZERO);
    let cs = tokio::time::timeout(GUARD, publishing)
        .await
        .unwrap()
        .unwrap();
    for c in cs {
        c.await.unwrap();
    }
    let stats = p.stats();
    assert_eq!((stats.confirmed, stats.failed), (500, 0));
    assert!(
        stats.peak_buffered_bytes <= MAX_BYTES,
        "peak {} bytes",
        stats.peak_buffered_bytes
    );
    assert_eq!(setup.queue_info(&q).await.unwrap().messages, 500);
    p.close(Duration::from_secs(5)).await;
    conn.close().await;
    setup.delete_queue(&q).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn close_hands_back_what_is_unconfirmed() {
    let q = unique("pub-close");
    let (proxy, conn, p) = publisher_through_proxy(|c| c).await;
    proxy.blackhole(true);
    let mut cs = Vec::new();
    for i in 0..10 {
        cs.push(p.publish(seq_message(&q, i, 10)).await.unwrap());
    }
    let back = p.close(Duration::from_millis(300)).await;
    assert_eq!(
        back.iter().map(|m| seq_of(m.body())).collect::<Vec<_>>(),
        (0..10).collect::<Vec<_>>()
    );
    for c in cs {
        let e = c.await.unwrap_err();
        assert!(matches!(e.error, Error::HandedBack));
    }
    let e = p.publish(seq_message(&q, 99, 10)).await.unwrap_err();
    assert!(matches!(e.error, Error::PublisherClosed));
    assert_eq!(seq_of(e.message.unwrap().body()), 99);
    assert!(
        p.close(Duration::from_millis(10)).await.is_empty(),
        "closing twice is fine"
    );
    proxy.blackhole(false);
    conn.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscription_is_a_stream_of_deliveries_that_ends_when_closed() {
    use futures_util::StreamExt;
    let q = unique("sub-stream");
    let conn = direct().await;
    conn.declare(&Topology::new().queue(Queue::new(&q)))
        .await
        .unwrap();
    let p = Publisher::new(&conn, PublisherConfig::default()).unwrap();
    for i in 0..3 {
        p.publish_confirmed(seq_message(&q, i, 10)).await.unwrap();
    }
    let mut sub = rabbit_once::Subscription::start(
        &conn,
        rabbit_once::SubscriptionConfig::new(&q).prefetch(10),
    )
    .unwrap();
    let mut seqs = Vec::new();
    while seqs.len() < 3 {
        let d = tokio::time::timeout(GUARD, sub.next())
            .await
            .expect("a delivery")
            .expect("the stream is open");
        seqs.push(seq_of(d.body()));
        d.ack();
    }
    assert_eq!(seqs, [0, 1, 2]);
    sub.close(Duration::from_secs(5)).await;
    assert!(
        sub.next().await.is_none(),
        "a closed subscription's stream ends"
    );
    assert_eq!(sub.stats().acked, 3);
    p.close(Duration::from_secs(5)).await;
    conn.delete_queue(&q).await.unwrap();
    conn.close().await;
}
