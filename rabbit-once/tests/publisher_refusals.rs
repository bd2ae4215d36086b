//! What the broker or the library refuses, message by message and at start: unroutable
//! messages, a missing or deleted exchange, messages that would break the connection, bad
//! credentials or vhost, malformed URIs and names. Against the real broker on 5672.

mod support;

use rabbit_once::{
    Binding, Connection, ConnectionConfig, ConnectionState, Error, Exchange, ExchangeKind, Message,
    Publisher, PublisherConfig, Queue, Topology,
};
use std::collections::BTreeSet;
use std::time::Duration;
use support::*;

const GUARD: Duration = Duration::from_secs(60);

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
