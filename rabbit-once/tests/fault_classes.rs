//! Fault classification against the real broker: refusals that clear by themselves are retried
//! with backoff (the session comes up once they clear), mistakes are reported at once. The
//! whole table is on `Error::is_recoverable` and in `docs/guarantees.md`; handshake rows that
//! need a misbehaving broker are in `tests/hostile.rs`.

mod support;

use rabbit_once::{
    Binding, Connection, Error, Exchange, ExchangeKind, Message, Publisher, PublisherConfig, Queue,
    Topology,
};
use std::time::Duration;
use support::*;

const GUARD: Duration = Duration::from_secs(30);

/// The reason of the next failed connection attempt.
async fn next_failed_attempt(events: &mut rabbit_once::Events) -> Error {
    loop {
        let ev = tokio::time::timeout(GUARD, events.recv())
            .await
            .expect("attempts go on")
            .expect("events");
        if let rabbit_once::Event::ConnectFailed { reason, .. } = ev {
            return reason;
        }
    }
}

/// An exclusive queue held by another connection (as our own half-open previous connection
/// holds it until the broker notices it is gone) refuses the declare with 405: the session is
/// tried again, comes up as soon as the holder leaves, and publishes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_405_resource_locked_clears_when_the_holder_leaves() {
    let q = unique("cls-405");
    let holder = direct().await;
    holder
        .declare(&Topology::new().queue(Queue::new(&q).exclusive(true).durable(false)))
        .await
        .unwrap();

    let topo = Topology::new().queue(Queue::new(&q).exclusive(true).durable(false));
    let conn = Connection::start(config(&broker_uri()).topology(topo)).unwrap();
    let mut events = conn.events();
    // At least two refused attempts while the holder is there.
    for _ in 0..2 {
        let reason = next_failed_attempt(&mut events).await;
        assert!(
            matches!(reason, Error::TopologyNotYet { code: 405, .. }),
            "{reason:?}"
        );
        assert!(reason.is_recoverable());
    }
    assert!(
        !matches!(conn.state(), rabbit_once::ConnectionState::Failed(_)),
        "405 is not fatal"
    );
    holder.close().await;

    tokio::time::timeout(GUARD, conn.wait_connected())
        .await
        .expect("the session comes up once the holder left")
        .unwrap();
    let p = Publisher::new(&conn, PublisherConfig::default()).unwrap();
    p.publish_confirmed(Message::to_queue(&q, "after the lock").transient())
        .await
        .unwrap();
    assert_eq!(conn.queue_info(&q).await.unwrap().messages, 1);
    p.close(Duration::from_secs(5)).await;
    conn.close().await;
}

/// A binding to an exchange that another service deleted (or has not declared yet): on the
/// first session that is a mistake to report at once; when declaring again on a later session
/// it is retried until the exchange is back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_404_on_a_binding_is_fatal_first_and_transient_when_declaring_again() {
    let q = unique("cls-404");
    let x = unique("cls-404-x");
    let binding = Topology::new()
        .queue(Queue::new(&q).auto_delete(true).durable(false))
        .binding(Binding::queue(&q, &x, "rk"));

    // First session, no such exchange: fatal, said at once.
    let e = Connection::connect(config(&broker_uri()).topology(binding.clone()))
        .await
        .unwrap_err();
    assert!(
        matches!(e, Error::Topology(ref t) if t.contains("404")),
        "{e:?}"
    );

    // The other service's exchange exists; we connect through a proxy and bind.
    let other = direct().await;
    let xt = Topology::new().exchange(Exchange::new(&x, ExchangeKind::Direct).durable(false));
    other.declare(&xt).await.unwrap();
    let (proxy, conn) = through_proxy(|c| c.topology(binding)).await;
    let mut events = conn.events();

    // It goes away, our connection is cut: declaring again meets a 404, retried.
    other.delete_exchange(&x).await.unwrap();
    proxy.cut_all();
    let reason = next_failed_attempt(&mut events).await;
    assert!(
        matches!(reason, Error::TopologyNotYet { code: 404, .. }),
        "{reason:?}"
    );
    assert!(!matches!(
        conn.state(),
        rabbit_once::ConnectionState::Failed(_)
    ));

    // The exchange is declared again: the session comes up and the binding routes.
    other.declare(&xt).await.unwrap();
    let epoch = tokio::time::timeout(GUARD, async {
        loop {
            if let Ok(e) = conn.wait_connected().await
                && e > 1
            {
                return e;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await
    .expect("the session comes back");
    assert!(epoch >= 2);
    let p = Publisher::new(&conn, PublisherConfig::default()).unwrap();
    p.publish_confirmed(Message::new(&x, "rk", "routed").transient())
        .await
        .unwrap();
    assert_eq!(conn.queue_info(&q).await.unwrap().messages, 1);
    p.close(Duration::from_secs(5)).await;
    conn.delete_queue(&q).await.unwrap();
    conn.close().await;
    other.delete_exchange(&x).await.unwrap();
    other.close().await;
}
