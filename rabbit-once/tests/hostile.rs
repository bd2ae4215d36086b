//! rabbit-once against a hostile fake broker (`rabbit_once_testkit::hostile`), at the level of
//! the connection: things a real RabbitMQ never sends — a handshake cut short, garbage, a frame
//! on a channel nobody opened, truncated frames, a connection closed over one publish. Each test
//! names its scenario, asserts the documented outcome, and checks that no task of the client
//! panicked (an abort would take the whole test binary down, which shows too). Deliveries a real
//! broker never sends are in `hostile_deliveries.rs`; the harness is `support/hostile.rs`.
//!
//! No RabbitMQ is needed: the fake broker listens on a free port of 127.0.0.1.

mod support;

use rabbit_once::{
    Confirmation, Confirmed, Connection, Error, Event, Events, Message, PublishError, Publisher,
    PublisherConfig,
};
use rabbit_once_testkit::{HostileBroker, Scenario};
use std::time::Duration;
use support::config;
use support::hostile::{WAIT, broker, good, next_delivery, run, subscribe};

// ---------------------------------------------------------------------------------------------
// Helpers.

/// The next `Disconnected` event's reason.
async fn disconnected(events: &mut Events) -> Error {
    tokio::time::timeout(WAIT, async {
        loop {
            match events.recv().await {
                Some(Event::Disconnected { reason, .. }) => return reason,
                Some(_) => {}
                None => panic!("the event stream ended before a Disconnected event"),
            }
        }
    })
    .await
    .unwrap_or_else(|_| panic!("no Disconnected event within {WAIT:?}"))
}

// ---------------------------------------------------------------------------------------------
// The fake broker itself.

/// Baseline: with a well-behaved broker a consumer subscribes, receives, and its ack reaches
/// the broker with the right tag.
#[test]
fn polite_broker_delivers_and_sees_the_ack() {
    run("polite", async {
        let broker = broker(Scenario::Deliver(vec![good("one")])).await;
        let (conn, mut sub, _events) = subscribe(&broker).await;
        let d = next_delivery(&mut sub, "the delivery", &broker).await;
        assert_eq!(d.message_id(), Some("one"));
        assert_eq!(d.delivery_tag(), 1, "tags count from 1 on each channel");
        d.ack();
        assert!(
            broker.wait_received(60, 80, 1, WAIT).await,
            "the ack reaches the broker"
        );
        assert_eq!(broker.acks(), vec![1]);
        assert_eq!(broker.count(20, 10), 1, "one channel.open");
        assert_eq!(broker.count(60, 20), 1, "one basic.consume");
        assert_eq!(conn.reconnects(), 0);
    });
}

// ---------------------------------------------------------------------------------------------
// The handshake.

/// A clean EOF right after start-ok is a node shutting down or a load balancer that lost its
/// backend, not a refusal of the credentials: it is retried, and only giving up ends it.
#[test]
fn eof_after_start_ok_is_transient() {
    run("eof-after-start-ok", async {
        let broker = broker(Scenario::EofAfterStartOk).await;
        let cfg = config(&broker.uri()).max_attempts(Some(3));
        let r = tokio::time::timeout(WAIT, Connection::connect(cfg))
            .await
            .expect("connect returns in time");
        match r {
            Err(Error::GaveUp { attempts, last }) => {
                assert_eq!(attempts, 3);
                assert!(
                    matches!(*last, Error::Connect { .. } | Error::ConnectionLost(_)),
                    "the last error is transient, got {last:?}"
                );
            }
            other => panic!("expected GaveUp after 3 attempts, got {other:?}"),
        }
        assert_eq!(broker.connections(), 3, "three attempts reached the broker");
    });
}

/// connection.close 403 after start-ok is RabbitMQ refusing the credentials: fatal at once,
/// and the error never shows the password.
#[test]
fn close_403_after_start_ok_is_fatal_and_hides_the_password() {
    run("close-403", async {
        const PASSWORD: &str = "s3cret-hunter2";
        let broker = broker(Scenario::CloseAfterStartOk(
            403,
            "ACCESS_REFUSED - Login was refused using authentication mechanism PLAIN".into(),
        ))
        .await;
        let cfg = config(&broker.uri_with("alice", PASSWORD)).max_attempts(Some(5));
        let r = tokio::time::timeout(WAIT, Connection::connect(cfg))
            .await
            .expect("connect returns in time");
        let e = match r {
            Ok(_) => panic!("expected AuthenticationFailed, the connection came up"),
            Err(e) => e,
        };
        let auth = match &e {
            Error::GaveUp { last, .. } => &**last,
            e => e,
        };
        assert!(
            matches!(auth, Error::AuthenticationFailed { .. }),
            "expected AuthenticationFailed, got {e:?}"
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert_eq!(broker.connections(), 1, "no second attempt");
        let shown = format!("{e} / {e:?}");
        assert!(!shown.contains(PASSWORD), "the password leaks: {shown}");
    });
}

// ---------------------------------------------------------------------------------------------
// Broken framing.

/// Runs `scenario`, waits for the session to end, checks its reason with `is`, and that the
/// client connects again.
async fn ends_and_reconnects(scenario: Scenario, is: fn(&Error) -> bool, what: &str) {
    let broker = broker(scenario).await;
    let (_conn, _sub, mut events) = subscribe(&broker).await;
    let reason = disconnected(&mut events).await;
    assert!(is(&reason), "{what}, got {reason:?}");
    assert!(
        broker.wait_connections(2, WAIT).await,
        "the client reconnects"
    );
}

fn recoverable_protocol_error(e: &Error) -> bool {
    matches!(e, Error::Protocol(_)) && e.is_recoverable()
}

/// Bytes that are no AMQP frame (the size field reads ~4 GB) end the connection with a protocol
/// error; the client reconnects.
#[test]
fn garbage_is_a_protocol_error_and_the_client_reconnects() {
    run("garbage", async {
        let garbage = b"\xde\xad\xbe\xefnot AMQP at all, not even close".to_vec();
        ends_and_reconnects(
            Scenario::Garbage(garbage),
            recoverable_protocol_error,
            "a protocol error",
        )
        .await;
    });
}

/// A delivery on a channel the client never opened: no broker can send that, so the client
/// does not trust the connection any more.
#[test]
fn frame_on_unopened_channel_is_a_protocol_error_and_the_client_reconnects() {
    run("unopened-channel", async {
        ends_and_reconnects(
            Scenario::FrameOnUnopenedChannel,
            recoverable_protocol_error,
            "a protocol error",
        )
        .await;
    });
}

/// A frame cut short by EOF is a lost connection (transient); the client reconnects.
#[test]
fn truncated_frame_then_eof_is_transient_and_the_client_reconnects() {
    run("truncated-frame", async {
        ends_and_reconnects(
            Scenario::TruncatedFrame,
            Error::is_recoverable,
            "a transient error",
        )
        .await;
    });
}

/// A frame that ends in the wrong octet is a protocol error; the client reconnects.
#[test]
fn bad_frame_end_is_a_protocol_error_and_the_client_reconnects() {
    run("bad-frame-end", async {
        ends_and_reconnects(
            Scenario::BadFrameEnd,
            recoverable_protocol_error,
            "a recoverable protocol error",
        )
        .await;
    });
}

// ---------------------------------------------------------------------------------------------
// A message the broker closes the whole connection over.

/// How many messages the close-on-publish test publishes, one of them [`POISON`].
const COUNT: usize = 20;
/// The message_id over which the fake broker closes the connection.
const POISON: &str = "poison";

/// Publishes one message per id, in order, each accepted within [`WAIT`]; returns (id,
/// confirmation) in the same order.
async fn publish_each(publisher: &Publisher, ids: &[String]) -> Vec<(String, Confirmation)> {
    let mut confirmations = Vec::new();
    for id in ids {
        let msg = Message::to_queue("hostile", format!("body of {id}")).with_message_id(id.clone());
        let c = tokio::time::timeout(WAIT, publisher.publish(msg))
            .await
            .expect("publish accepts in time")
            .expect("the message is accepted");
        confirmations.push((id.clone(), c));
    }
    confirmations
}

/// [`POISON`] must fail alone with `Refused { code: 501 }` and be handed back; every other id
/// must be confirmed with its own id.
fn check_verdict(id: &str, verdict: Result<Confirmed, PublishError>) {
    if id == POISON {
        match verdict {
            Err(PublishError {
                error: Error::Refused {
                    code, message_id, ..
                },
                message,
            }) => {
                assert_eq!(code, 501, "the broker's code");
                assert_eq!(message_id, POISON);
                assert_eq!(
                    message.as_ref().and_then(|m| m.message_id()),
                    Some(POISON),
                    "the message is handed back"
                );
            }
            other => panic!("{id}: expected Refused {{ code: 501 }}, got {other:?}"),
        }
    } else {
        match verdict {
            Ok(c) => assert_eq!(c.message_id, id, "confirmed with its own id"),
            Err(e) => panic!("{id}: expected a confirm, got {e:?}"),
        }
    }
}

/// The fake broker closes the CONNECTION with 501 FRAME_ERROR whenever a publish carrying
/// message_id "poison" arrives (RabbitMQ does that over a frame it cannot take). The publisher
/// must not re-send it forever: the messages in flight at the close become suspects, re-sent one
/// at a time on the next connection, and the lone suspect in flight at the next such close —
/// "poison" — fails alone with `Refused { code: 501 }`. Everything else is confirmed, and the
/// broker sees few connections: the first, then the suspect hunt — no reconnect loop.
#[test]
fn a_message_that_makes_the_broker_close_the_connection_fails_alone() {
    run("close-on-publish", async {
        let broker = broker(Scenario::CloseOnPublish {
            message_id: POISON.as_bytes().to_vec(),
            code: 501,
            text: "FRAME_ERROR - the fake broker cannot take this message".into(),
        })
        .await;
        let conn = tokio::time::timeout(WAIT, Connection::connect(config(&broker.uri())))
            .await
            .expect("connect returns in time")
            .expect("the handshake succeeds");
        let publisher = Publisher::new(&conn, PublisherConfig::default()).expect("publisher");
        let ids: Vec<String> = (0..COUNT)
            .map(|i| {
                if i == COUNT / 2 {
                    POISON.to_string()
                } else {
                    format!("m-{i:02}")
                }
            })
            .collect();
        let confirmations = publish_each(&publisher, &ids).await;
        for (id, c) in confirmations {
            let verdict = tokio::time::timeout(WAIT, c).await.unwrap_or_else(|_| {
                panic!(
                    "{id}: no verdict within {WAIT:?}; the broker saw {} connections, \
                     publishes {:?}",
                    broker.connections(),
                    published_ids(&broker)
                )
            });
            check_verdict(&id, verdict);
        }
        // The counters are bumped just after the verdicts are sent: wait for them to catch up.
        let settled = support::eventually(WAIT, || {
            let s = publisher.stats();
            s.confirmed + s.failed >= COUNT as u64
        })
        .await;
        let stats = publisher.stats();
        assert!(settled, "the counters catch up: {stats:?}");
        assert_eq!(
            (stats.confirmed, stats.failed),
            ((COUNT - 1) as u64, 1),
            "{stats:?}"
        );
        let connections = broker.connections();
        assert!(
            connections <= 4,
            "no reconnect loop: the broker saw {connections} connections, publishes {:?}",
            published_ids(&broker)
        );
        // "poison" reached the broker exactly twice: in the first batch, then alone.
        let poison_sent = broker
            .published()
            .iter()
            .filter(|p| p.message_id.as_deref() == Some(POISON.as_bytes()))
            .count();
        assert_eq!(poison_sent, 2, "publishes {:?}", published_ids(&broker));
        // And the connection stays usable afterwards.
        let after = publisher
            .publish_confirmed(Message::to_queue("hostile", "after").with_message_id("after"))
            .await
            .expect("a later message is confirmed");
        assert_eq!(after.message_id, "after");
        assert_eq!(
            broker.connections(),
            connections,
            "no new connection for it"
        );
        publisher.close(Duration::from_secs(5)).await;
        conn.close().await;
    });
}

/// (connection, message_id, acked) of every publish the fake broker saw, for failure messages.
fn published_ids(broker: &HostileBroker) -> Vec<(u64, String, bool)> {
    broker
        .published()
        .into_iter()
        .map(|p| {
            let id = p
                .message_id
                .map(|b| String::from_utf8_lossy(&b).into_owned())
                .unwrap_or_default();
            (p.connection, id, p.acked)
        })
        .collect()
}
