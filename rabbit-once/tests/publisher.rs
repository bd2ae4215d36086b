//! The publisher against the real broker on 5672: order, cuts through a fault proxy, back-
//! pressure, returns, bad input, close. (Tests that stop a broker live in `tests/broker_node.rs`.)

mod support;

use rabbit_once::{
    Binding, Connection, ConnectionConfig, ConnectionState, Error, Event, Exchange, ExchangeKind,
    Message, Publisher, PublisherConfig, Queue, Topology,
};
use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
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
async fn connection_cut_five_times_loses_nothing_and_keeps_order() {
    const N: u64 = 20_000;
    const CUTS: u64 = 6;
    let q = unique("pub-cuts");
    let setup = direct().await;
    setup
        .declare(&Topology::new().queue(Queue::new(&q)))
        .await
        .unwrap();
    let (proxy, conn, p) = publisher_through_proxy(|c| c).await;

    // A watcher records each confirmation as it resolves (in publish order).
    let confirmed: Arc<Vec<AtomicBool>> =
        Arc::new((0..N).map(|_| AtomicBool::new(false)).collect());
    let (tx, watcher) = {
        let confirmed = confirmed.clone();
        confirm_all(GUARD, move |seq| {
            confirmed[seq as usize].store(true, Ordering::SeqCst)
        })
    };

    let mut unconfirmed_at_cuts = BTreeSet::new();
    for i in 0..N {
        tx.send((i, p.publish(seq_message(&q, i, 200)).await.unwrap()))
            .unwrap();
        if i > 0 && i % (N / (CUTS + 1)) == 0 {
            for s in 0..=i {
                if !confirmed[s as usize].load(Ordering::SeqCst) {
                    unconfirmed_at_cuts.insert(s);
                }
            }
            let before = conn.reconnects();
            proxy.cut_all();
            assert!(
                eventually(GUARD, || conn.reconnects() > before).await,
                "reconnected after cut"
            );
        }
    }
    drop(tx);
    let ids = watcher.await.unwrap();
    assert_eq!(ids.len() as u64, N, "all confirmed");
    assert!(
        conn.reconnects() >= 5,
        "at least 5 cuts took effect: {}",
        conn.reconnects()
    );
    let stats = p.stats();
    assert_eq!((stats.confirmed, stats.failed), (N, 0));
    assert!(
        stats.republished > 0,
        "some messages were in flight at a cut"
    );

    let got = drain(&setup, &q, N as usize, Duration::from_secs(5)).await;
    let mut first = Vec::new();
    let mut seen = HashMap::<u64, usize>::new();
    for (id, b) in &got {
        let s = seq_of(b);
        assert_eq!(
            Some(id),
            ids.get(&s),
            "message_id unchanged by re-publishing"
        );
        let n = seen.entry(s).or_default();
        if *n == 0 {
            first.push(s);
        }
        *n += 1;
    }
    assert_eq!(
        first,
        (0..N).collect::<Vec<_>>(),
        "every seq, first appearances in publish order"
    );
    for (s, n) in &seen {
        if *n > 1 {
            assert!(
                unconfirmed_at_cuts.contains(s),
                "seq {s} duplicated but was confirmed before every cut"
            );
        }
    }
    let dups: usize = seen.values().map(|n| n - 1).sum();
    assert!(
        dups as u64 <= stats.republished,
        "{dups} duplicates, {} re-publishes",
        stats.republished
    );
    p.close(Duration::from_secs(5)).await;
    conn.close().await;
    setup.delete_queue(&q).await.unwrap();
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
async fn unroutable_messages_fail_alone_matched_by_id() {
    let q = unique("pub-route");
    let x = unique("pub-route-x");
    let topo = Topology::new()
        .exchange(Exchange::new(&x, ExchangeKind::Direct).auto_delete(true))
        .queue(Queue::new(&q))
        .binding(Binding::queue(&q, &x, "ok"));
    let conn = Connection::connect(config(&broker_uri()).topology(topo))
        .await
        .unwrap();
    let p = Publisher::new(&conn, PublisherConfig::default()).unwrap();
    let mut cs = Vec::new();
    for i in 0..100u64 {
        let key = if i % 10 == 3 { "nowhere" } else { "ok" };
        let m = Message::new(&x, key, body(i, 50)).with_message_id(format!("{q}-{i}"));
        cs.push((i, p.publish(m).await.unwrap()));
    }
    let mut unroutable = Vec::new();
    for (i, c) in cs {
        match c.await {
            Ok(ok) => assert_eq!(ok.message_id, format!("{q}-{i}")),
            Err(e) => match e.error {
                Error::Unroutable {
                    message_id,
                    reply_code,
                    ..
                } => {
                    assert_eq!(message_id, format!("{q}-{i}"));
                    assert_eq!(reply_code, 312);
                    assert_eq!(e.message.unwrap().message_id(), Some(message_id.as_str()));
                    unroutable.push(i);
                }
                other => panic!("unexpected {other}"),
            },
        }
    }
    assert_eq!(
        unroutable,
        (0..100).filter(|i| i % 10 == 3).collect::<Vec<_>>()
    );
    let stats = p.stats();
    assert_eq!((stats.confirmed, stats.failed, stats.returns), (90, 10, 10));
    assert_eq!(conn.queue_info(&q).await.unwrap().messages, 90);
    p.close(Duration::from_secs(5)).await;
    conn.delete_queue(&q).await.unwrap();
    conn.close().await;
}

/// One id sent to two destinations, the newer copy unroutable: each copy gets its own verdict
/// (a return is matched by id, exchange and routing key — not by id alone).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_id_to_two_destinations_gets_the_right_verdict_for_each() {
    let q = unique("pub-fanid");
    let conn =
        Connection::connect(config(&broker_uri()).topology(Topology::new().queue(Queue::new(&q))))
            .await
            .unwrap();
    let p = Publisher::new(&conn, PublisherConfig::default()).unwrap();
    let nowhere = unique("pub-fanid-nowhere");
    let mut pairs = Vec::new();
    for i in 0..20u64 {
        let id = format!("{q}-{i}");
        let routable = p
            .publish(Message::to_queue(&q, body(i, 20)).with_message_id(&id))
            .await
            .unwrap();
        let unroutable = p
            .publish(Message::to_queue(&nowhere, body(i, 20)).with_message_id(&id))
            .await
            .unwrap();
        pairs.push((id, routable, unroutable));
    }
    let mut right = 0;
    for (id, routable, unroutable) in pairs {
        let ok = routable.await.expect("the routable copy is confirmed");
        assert_eq!(ok.message_id, id);
        match unroutable.await {
            Err(e) => match e.error {
                Error::Unroutable { message_id, .. } => {
                    assert_eq!(message_id, id);
                    assert_eq!(e.message.unwrap().routing_key(), nowhere);
                    right += 1;
                }
                other => panic!("unexpected {other}"),
            },
            Ok(_) => panic!("the unroutable copy of {id} was reported confirmed"),
        }
    }
    assert_eq!(right, 20);
    assert_eq!(conn.queue_info(&q).await.unwrap().messages, 20);
    p.close(Duration::from_secs(5)).await;
    conn.delete_queue(&q).await.unwrap();
    conn.close().await;
}

#[tokio::test]
async fn wrong_password_is_a_clear_error_without_the_password() {
    let uri = broker_uri().replace("guest:guest", "guest:not-the-Password");
    let err = tokio::time::timeout(GUARD, Connection::connect(config(&uri)))
        .await
        .expect("fails fast instead of retrying")
        .unwrap_err();
    assert!(matches!(err, Error::AuthenticationFailed { .. }), "{err:?}");
    let shown = format!("{err} {err:?}");
    assert!(!shown.contains("not-the-Password"), "{shown}");
    assert!(!err.is_recoverable());

    // A publisher on such a connection fails its messages with the same reason.
    let conn = Connection::start(config(&uri)).unwrap();
    let p = Publisher::new(&conn, PublisherConfig::default()).unwrap();
    let r = tokio::time::timeout(GUARD, p.publish_confirmed(Message::to_queue("q", "x")))
        .await
        .unwrap();
    let e = r.unwrap_err();
    assert!(
        matches!(e.error, Error::AuthenticationFailed { .. }),
        "{:?}",
        e.error
    );
    assert!(e.message.is_some(), "the message is handed back");
    assert!(matches!(
        conn.state(),
        ConnectionState::Failed(Error::AuthenticationFailed { .. })
    ));
}

#[tokio::test]
async fn unknown_vhost_is_a_clear_error() {
    let uri = broker_uri().replace("%2f", "no-such-vhost-here");
    let err = tokio::time::timeout(GUARD, Connection::connect(config(&uri)))
        .await
        .unwrap()
        .unwrap_err();
    match err {
        Error::VhostRefused { vhost, .. } => assert_eq!(vhost, "no-such-vhost-here"),
        other => panic!("{other:?}"),
    }
}

#[test]
fn malformed_uris_name_the_bad_part() {
    for (uri, part) in [
        ("amqp//guest@localhost", "scheme"),
        ("amqp://guest:guest@localhost:notaport/%2f", "port"),
        ("amqp://guest:guest@/%2f", "host"),
        ("amqp://localhost/a/b", "vhost"),
    ] {
        match rabbit_once::ConnectionConfig::new(uri) {
            Err(Error::InvalidUri { part: p, .. }) => assert_eq!(p, part, "{uri}"),
            other => panic!("{uri}: {other:?}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_exchange_fails_that_message_and_the_rest_go_through() {
    let q = unique("pub-noex");
    let conn =
        Connection::connect(config(&broker_uri()).topology(Topology::new().queue(Queue::new(&q))))
            .await
            .unwrap();
    let p = Publisher::new(&conn, PublisherConfig::default()).unwrap();
    let missing = unique("no-such-exchange");
    let mut cs = Vec::new();
    for i in 0..50u64 {
        let m = if i == 20 {
            Message::new(&missing, "k", body(i, 10))
        } else {
            seq_message(&q, i, 10)
        };
        cs.push(p.publish(m).await.unwrap());
    }
    for (i, c) in cs.into_iter().enumerate() {
        match (i, c.await) {
            (20, Err(e)) => match e.error {
                Error::ExchangeNotFound { exchange, .. } => assert_eq!(exchange, missing),
                other => panic!("{other:?}"),
            },
            (20, Ok(_)) => panic!("a message to a missing exchange was confirmed"),
            (_, r) => {
                r.unwrap();
            }
        }
    }
    assert_eq!(conn.queue_info(&q).await.unwrap().messages, 49);
    p.close(Duration::from_secs(5)).await;
    conn.delete_queue(&q).await.unwrap();
    conn.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_exchange_deleted_mid_session_fails_only_its_messages() {
    // The first publish to the exchange checks it exists; then it is deleted behind our back,
    // so the broker closes the channel on the next publish to it. That message alone fails;
    // the channel is reopened and the others are confirmed.
    let q = unique("pub-gone");
    let x = unique("pub-gone-x");
    let setup = direct().await;
    setup
        .declare(
            &Topology::new()
                .exchange(Exchange::new(&x, ExchangeKind::Fanout))
                .queue(Queue::new(&q))
                .binding(Binding::queue(&q, &x, "")),
        )
        .await
        .unwrap();
    let conn = Connection::connect(config(&broker_uri())).await.unwrap();
    let p = Publisher::new(&conn, PublisherConfig::default()).unwrap();
    p.publish_confirmed(Message::new(&x, "", body(0, 10)))
        .await
        .unwrap();
    setup.delete_exchange(&x).await.unwrap();
    let mut cs = Vec::new();
    for i in 1..=40u64 {
        let m = if i == 20 {
            Message::new(&x, "", body(i, 10))
        } else {
            seq_message(&q, i, 10)
        };
        cs.push((i, p.publish(m).await.unwrap()));
    }
    for (i, c) in cs {
        let r = c.await;
        if i == 20 {
            let e = r.unwrap_err();
            assert!(
                matches!(e.error, Error::ExchangeNotFound { .. }),
                "{:?}",
                e.error
            );
        } else {
            r.unwrap_or_else(|e| panic!("message {i}: {}", e.error));
        }
    }
    let got = drain(&setup, &q, 40, Duration::from_secs(3)).await;
    let seqs: BTreeSet<u64> = got.iter().map(|(_, b)| seq_of(b)).collect();
    let want: BTreeSet<u64> = (0..=40).filter(|&i| i != 20).collect();
    assert_eq!(seqs, want);
    assert!(p.stats().channels >= 2, "the channel was reopened");
    p.close(Duration::from_secs(5)).await;
    conn.close().await;
    setup.delete_queue(&q).await.unwrap();
}

/// Messages the broker would answer by closing the whole connection (a content header larger
/// than a frame: 501; a key over 255 bytes inside an array: 541) are refused at `publish`, with
/// the field named, and the connection is never cut: the messages around them are confirmed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_that_would_break_the_connection_are_refused_at_publish() {
    let q = unique("pub-wedge");
    let conn =
        Connection::connect(config(&broker_uri()).topology(Topology::new().queue(Queue::new(&q))))
            .await
            .unwrap();
    let p = Publisher::new(&conn, PublisherConfig::default()).unwrap();
    let before = p.publish(Message::to_queue(&q, "before")).await.unwrap();

    // Headers of ~200 KB: more than one 128 KiB frame.
    let big = Message::to_queue(&q, "x").with_header("big", "h".repeat(200_000));
    let e = p.publish(big).await.unwrap_err();
    match &e.error {
        Error::InvalidMessage(why) => assert!(why.contains("frame_max"), "{why}"),
        other => panic!("unexpected {other:?}"),
    }
    assert!(e.message.is_some(), "handed back");

    let array_key = rabbit_once::FieldValue::Array(vec![rabbit_once::FieldValue::Table(
        rabbit_once::FieldTable::new().with("k".repeat(256), 1i32),
    )]);
    let e = p
        .publish(Message::to_queue(&q, "x").with_header("list", array_key))
        .await
        .unwrap_err();
    match &e.error {
        Error::InvalidMessage(why) => assert!(why.contains("256 bytes"), "{why}"),
        other => panic!("unexpected {other:?}"),
    }

    let after = p.publish(Message::to_queue(&q, "after")).await.unwrap();
    before.await.unwrap();
    after.await.unwrap();
    assert_eq!(conn.reconnects(), 0);
    assert_eq!(conn.queue_info(&q).await.unwrap().messages, 2);
    p.close(Duration::from_secs(5)).await;
    conn.delete_queue(&q).await.unwrap();
    conn.close().await;
}

/// Names the broker would refuse by closing the connection are configuration errors at start:
/// no panic, no attempt to send them.
#[test]
fn overlong_topology_names_and_sub_second_heartbeats_are_configuration_errors() {
    let long = "x".repeat(256);
    let cases = [
        Topology::new().binding(Binding::queue("q", &long, "rk")),
        Topology::new().binding(Binding::exchange(&long, "src", "rk")),
        Topology::new().exchange(Exchange::new("x", ExchangeKind::Custom(long.clone()))),
        Topology::new().queue(Queue::new("q").argument(long.clone(), 1i32)),
    ];
    for t in cases {
        let e = Connection::start(config(&broker_uri()).topology(t)).unwrap_err();
        assert!(matches!(e, Error::Config(_)), "{e:?}");
        assert!(e.to_string().contains("256"), "{e}");
    }
    let e =
        Connection::start(config(&broker_uri()).heartbeat(Duration::from_millis(500))).unwrap_err();
    assert!(e.to_string().contains("whole seconds"), "{e}");
    let vhost = format!("amqp://guest:guest@127.0.0.1:5672/{}", "v".repeat(300));
    let e = Connection::start(ConnectionConfig::new(&vhost).unwrap()).unwrap_err();
    assert!(matches!(e, Error::Config(_)), "{e:?}");
}

#[tokio::test]
async fn an_oversized_message_is_refused_before_the_wire() {
    let conn = Connection::start(config(&broker_uri())).unwrap();
    let p = Publisher::new(&conn, PublisherConfig::default().max_message_size(1000)).unwrap();
    let e = p
        .publish(Message::to_queue("anything", vec![0u8; 1001]))
        .await
        .unwrap_err();
    assert!(
        matches!(
            e.error,
            Error::MessageTooLarge {
                size: 1001,
                max: 1000
            }
        ),
        "{:?}",
        e.error
    );
    assert_eq!(e.message.unwrap().body().len(), 1001, "handed back");
    assert_eq!(p.stats().accepted, 0);
    let e = p
        .publish(
            Message::to_queue("q", "x")
                .with_expiration(Duration::from_secs(1))
                .with_header("k".repeat(300), 1i32),
        )
        .await
        .unwrap_err();
    assert!(matches!(e.error, Error::InvalidMessage(_)), "{:?}", e.error);
    conn.close().await;
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
async fn heartbeats_notice_a_black_hole_and_nothing_is_lost() {
    let q = unique("pub-hole");
    let setup = direct().await;
    setup
        .declare(&Topology::new().queue(Queue::new(&q)))
        .await
        .unwrap();
    let (proxy, conn, p) = publisher_through_proxy(|c| c.heartbeat(Duration::from_secs(1))).await;
    let mut events = conn.events();
    for i in 0..100 {
        p.publish_confirmed(seq_message(&q, i, 10)).await.unwrap();
    }
    proxy.blackhole(true);
    let mut cs = Vec::new();
    for i in 100..200 {
        cs.push(p.publish(seq_message(&q, i, 10)).await.unwrap());
    }
    let reason = tokio::time::timeout(GUARD, async {
        loop {
            if let Some(Event::Disconnected { reason, .. }) = events.recv().await {
                return reason;
            }
        }
    })
    .await
    .expect("the dead connection is noticed");
    assert!(reason.to_string().contains("heartbeat"), "{reason}");
    proxy.blackhole(false);
    for c in cs {
        c.await.unwrap();
    }
    let got = drain(&setup, &q, 200, Duration::from_secs(3)).await;
    let seqs: BTreeSet<u64> = got.iter().map(|(_, b)| seq_of(b)).collect();
    assert_eq!(seqs, (0..200).collect());
    p.close(Duration::from_secs(5)).await;
    conn.close().await;
    setup.delete_queue(&q).await.unwrap();
}

#[tokio::test]
async fn endpoints_are_tried_in_turn() {
    let dead = rabbit_once_testkit::free_port().unwrap();
    let cfg = rabbit_once::ConnectionConfig::from_uris([uri_via(dead), broker_uri()])
        .unwrap()
        .backoff(rabbit_once::Backoff::new(
            Duration::from_millis(10),
            Duration::from_millis(50),
            0.0,
        ));
    let conn = tokio::time::timeout(GUARD, Connection::connect(cfg))
        .await
        .unwrap()
        .unwrap();
    match conn.state() {
        ConnectionState::Connected { epoch, endpoint } => {
            assert_eq!(epoch, 1);
            assert!(!endpoint.contains(&format!(":{dead}/")), "{endpoint}");
        }
        other => panic!("{other:?}"),
    }
    conn.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn topology_is_declared_again_on_every_session() {
    let q = unique("pub-topo");
    let (proxy, conn) = through_proxy(|c| c.topology(Topology::new().queue(Queue::new(&q)))).await;
    let setup = direct().await;
    setup.delete_queue(&q).await.unwrap();
    assert!(setup.queue_info(&q).await.is_err(), "deleted");
    proxy.cut_all();
    assert!(
        eventually(GUARD, || conn.reconnects() >= 1
            && conn.state().is_connected())
        .await
    );
    // Publishing to it works again: the queue was declared before the session was announced.
    let p = Publisher::new(&conn, PublisherConfig::default()).unwrap();
    p.publish_confirmed(seq_message(&q, 0, 10)).await.unwrap();
    assert_eq!(setup.queue_info(&q).await.unwrap().messages, 1);
    p.close(Duration::from_secs(5)).await;
    conn.close().await;
    setup.delete_queue(&q).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_published_while_disconnected_go_after_the_unconfirmed_ones() {
    // A publish accepted during an outage must not overtake older unconfirmed messages.
    let q = unique("pub-outage-order");
    let (proxy, conn) = through_proxy(|c| c.topology(Topology::new().queue(Queue::new(&q)))).await;
    let p = Publisher::new(&conn, PublisherConfig::default()).unwrap();
    proxy.blackhole(true);
    let mut cs = Vec::new();
    for i in 0..100 {
        cs.push(p.publish(seq_message(&q, i, 10)).await.unwrap());
    }
    proxy.refuse_for(Duration::from_secs(3600));
    proxy.cut_all();
    proxy.blackhole(false);
    for i in 100..200 {
        cs.push(p.publish(seq_message(&q, i, 10)).await.unwrap());
    }
    proxy.refuse_for(Duration::ZERO);
    for c in cs {
        c.await.unwrap();
    }
    let got = drain(&conn, &q, 200, Duration::from_secs(3)).await;
    let mut first = Vec::new();
    let mut seen = BTreeSet::new();
    for (_, b) in &got {
        let s = seq_of(b);
        if seen.insert(s) {
            first.push(s);
        }
    }
    assert_eq!(first, (0..200).collect::<Vec<_>>());
    p.close(Duration::from_secs(5)).await;
    conn.delete_queue(&q).await.unwrap();
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
