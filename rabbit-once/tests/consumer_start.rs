//! `Consumer::start` and a work queue that does not exist: it fails with
//! `Error::QueueNotFound` rather than idling — unless its queue is declared (by its
//! connection, by the consumer itself, or by another client) or it is told to wait for it; and
//! started while no broker is reachable, it does not fail, and waits for its queue on the first
//! session.
//!
//! Needs the shared broker on 127.0.0.1:5672 (`RONCE_AMQP_URI` overrides).

mod support;

use rabbit_once::{
    Backoff, Connection, ConnectionConfig, Consumer, Error, Queue, QueueType, Topology,
};
use std::time::Duration;
use support::consumer::{Ledger, cleanup, config, ids, publish, sqlite, wait_for};
use support::*;

const GUARD: Duration = Duration::from_secs(30);

/// Publishes `n` messages to `q` through `via`, waits until `consumer` applied them all, closes
/// it and deletes its queues (through `via`).
async fn applies(consumer: Consumer, via: &Connection, q: &str, n: u64) {
    publish(via, q, ids(0..n, q)).await;
    wait_for(&consumer, &format!("{n} applied"), |s| s.applied == n).await;
    consumer.close(Duration::from_secs(5)).await;
    cleanup(via, q).await;
}

/// Fast, even retries.
fn fast(uri: &str) -> ConnectionConfig {
    ConnectionConfig::new(uri)
        .unwrap()
        .name(unique("cstart"))
        .backoff(Backoff::new(
            Duration::from_millis(50),
            Duration::from_millis(50),
            0.0,
        ))
}

#[tokio::test]
async fn a_consumer_on_a_queue_that_does_not_exist_fails_start_naming_it() {
    let q = unique("cstart-missing");
    let (store, _db) = sqlite().await;
    // Started, not connected: `start` waits out the connection's first attempt, then asks.
    let conn = Connection::start(support::config(&broker_uri())).unwrap();
    let e = Consumer::start(&conn, store, Ledger::default(), config(&q))
        .await
        .expect_err("the queue does not exist");
    match &e {
        Error::QueueNotFound { queue, vhost } => {
            assert_eq!(queue, &q);
            assert_eq!(vhost, "/");
        }
        other => panic!("expected QueueNotFound, got {other:?}"),
    }
    assert!(e.to_string().contains(&q), "{e}");
    assert!(!e.is_recoverable());
    // Nothing was declared for it: not its retry or dead-letter queues either.
    for name in config(&q).queues() {
        assert!(
            matches!(
                conn.queue_info(&name).await,
                Err(Error::QueueNotFound { .. })
            ),
            "{name} exists"
        );
    }
    assert!(conn.topology().is_empty());
    conn.close().await;
}

#[tokio::test]
async fn a_consumer_on_a_queue_its_connection_declares_starts() {
    let q = unique("cstart-declared");
    let (store, _db) = sqlite().await;
    let conn = Connection::start(
        support::config(&broker_uri()).topology(Topology::new().queue(Queue::new(&q))),
    )
    .unwrap();
    let consumer = Consumer::start(&conn, store, Ledger::default(), config(&q))
        .await
        .unwrap();
    applies(consumer, &conn, &q, 3).await;
    conn.close().await;
}

#[tokio::test]
async fn a_quorum_consumer_declares_its_own_queue_and_starts() {
    let q = unique("cstart-quorum");
    let (store, _db) = sqlite().await;
    let conn = direct().await;
    let consumer = Consumer::start(
        &conn,
        store,
        Ledger::default(),
        config(&q).queue_type(QueueType::Quorum),
    )
    .await
    .unwrap();
    applies(consumer, &conn, &q, 2).await;
    conn.close().await;
}

#[tokio::test]
async fn a_consumer_on_a_queue_another_client_declared_starts() {
    let q = unique("cstart-theirs");
    let (store, _db) = sqlite().await;
    let theirs = direct().await;
    theirs
        .declare(&Topology::new().queue(Queue::new(&q)))
        .await
        .unwrap();
    theirs.close().await;
    let conn = direct().await;
    assert!(conn.topology().is_empty(), "not declared by us");
    let consumer = Consumer::start(&conn, store, Ledger::default(), config(&q))
        .await
        .unwrap();
    applies(consumer, &conn, &q, 3).await;
    conn.close().await;
}

#[tokio::test]
async fn wait_for_queue_starts_on_a_missing_queue_and_consumes_once_it_exists() {
    let q = unique("cstart-later");
    let (store, _db) = sqlite().await;
    let conn = direct().await;
    let consumer = Consumer::start(
        &conn,
        store,
        Ledger::default(),
        config(&q).wait_for_queue(true),
    )
    .await
    .expect("told to wait for its queue");
    let other = direct().await;
    other
        .declare(&Topology::new().queue(Queue::new(&q)))
        .await
        .unwrap();
    publish(&other, &q, ids(0..3, &q)).await;
    wait_for(&consumer, "3 applied", |s| s.applied == 3).await;
    assert!(consumer.error().is_none());
    consumer.close(Duration::from_secs(5)).await;
    cleanup(&conn, &q).await;
    other.close().await;
    conn.close().await;
}

/// Started while no broker answers, `start` cannot fail; a missing work queue found on the first
/// session is then waited for (warned about), not a silent stop: services often start before
/// the one that declares their queue.
#[tokio::test]
async fn started_with_no_broker_reachable_a_consumer_waits_for_its_missing_queue_then_consumes() {
    let q = unique("cstart-offline");
    let (store, _db) = sqlite().await;
    let proxy = FaultProxy::start(broker_addr()).await.unwrap();
    proxy.refuse_for(Duration::from_secs(600));
    let conn = Connection::start(support::config(&uri_via(proxy.port()))).unwrap();
    let consumer = Consumer::start(&conn, store, Ledger::default(), config(&q))
        .await
        .expect("no broker to ask: start does not fail");
    assert!(!consumer.is_finished());
    assert!(!conn.state().is_connected());
    proxy.refuse_for(Duration::ZERO);
    let mut state = conn.watch_state();
    tokio::time::timeout(GUARD, state.wait_for(|s| s.is_connected()))
        .await
        .expect("connects once the proxy lets it")
        .unwrap();
    tokio::time::sleep(Duration::from_secs(1)).await; // the first checks find no queue
    assert!(!consumer.is_finished(), "waits for its queue");
    assert!(consumer.error().is_none(), "{:?}", consumer.error());
    let other = direct().await;
    other
        .declare(&Topology::new().queue(Queue::new(&q)))
        .await
        .unwrap();
    applies(consumer, &other, &q, 3).await;
    other.close().await;
    conn.close().await;
}

#[tokio::test]
async fn start_on_a_connection_that_gave_up_fails_with_its_error() {
    let q = unique("cstart-gaveup");
    let (store, _db) = sqlite().await;
    let uri = format!("amqp://guest:guest@127.0.0.1:{}/%2f", closed_port());
    let conn = Connection::start(fast(&uri).max_attempts(Some(2))).unwrap();
    let mut state = conn.watch_state();
    tokio::time::timeout(GUARD, state.wait_for(|s| s.terminal_error().is_some()))
        .await
        .expect("gives up after 2 attempts")
        .unwrap();
    let e = Consumer::start(&conn, store, Ledger::default(), config(&q))
        .await
        .expect_err("the connection gave up");
    assert!(matches!(e, Error::GaveUp { attempts: 2, .. }), "{e:?}");
}
