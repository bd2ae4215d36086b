//! rabbit-once against a hostile fake broker (`rabbit_once_testkit::hostile`): things a real
//! RabbitMQ never sends — a handshake cut short, non-UTF-8 short strings, every field type,
//! garbage, a frame on a channel nobody opened, truncated frames, headers nested 12,000 deep, a
//! body over the cap, a connection closed over one publish. Each test names its scenario,
//! asserts the documented outcome, and checks that no task of the client panicked (an abort
//! would take the whole test binary down, which shows too).
//!
//! No RabbitMQ is needed: the fake broker listens on a free port of 127.0.0.1.

mod support;

use rabbit_once::{
    Connection, Delivery, Error, Event, Events, Message, PublishError, Publisher, PublisherConfig,
    Subscription, SubscriptionConfig,
};
use rabbit_once_testkit::{FieldBytes, HostileBroker, RawDelivery, Scenario, TableBytes};
use std::future::Future;
use std::sync::{Mutex, Once};
use std::time::Duration;
use support::{config, unique};

/// Bound of every single wait: a failing test fails instead of hanging.
const WAIT: Duration = Duration::from_secs(10);
/// How long a delivery may take to arrive.
const DELIVERY_WAIT: Duration = Duration::from_secs(5);
/// Bound of a whole test.
const GUARD: Duration = Duration::from_secs(60);

// ---------------------------------------------------------------------------------------------
// Running a test on a runtime of its own, watching its threads for panics.

/// (thread name, panic message) of every panic in the process.
static PANICS: Mutex<Vec<(String, String)>> = Mutex::new(Vec::new());

fn record_panics() {
    static HOOK: Once = Once::new();
    HOOK.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            let thread = std::thread::current().name().unwrap_or("").to_string();
            if let Ok(mut p) = PANICS.lock() {
                p.push((thread, info.to_string()));
            }
            previous(info);
        }));
    });
}

/// Runs `test` on a runtime whose worker threads carry a name of their own, then fails if any
/// of them panicked: the client's reader, writer and supervisor tasks run there, and a panic in
/// one of them would otherwise only show as a lost connection.
fn run<F: Future<Output = ()>>(name: &str, test: F) {
    record_panics();
    let threads = unique(name);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name(threads.clone())
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        tokio::time::timeout(GUARD, test)
            .await
            .expect("the test finished within its guard")
    });
    rt.shutdown_timeout(Duration::from_secs(5));
    let panics: Vec<_> = PANICS
        .lock()
        .expect("panics lock")
        .iter()
        .filter(|(t, _)| *t == threads)
        .map(|(_, m)| m.clone())
        .collect();
    assert!(panics.is_empty(), "client tasks panicked: {panics:?}");
}

// ---------------------------------------------------------------------------------------------
// Helpers.

async fn broker(scenario: Scenario) -> HostileBroker {
    HostileBroker::start(scenario)
        .await
        .expect("the fake broker listens")
}

/// Connects to the fake broker and subscribes; the events are taken before subscribing, so none
/// of the subscription's is missed.
async fn subscribe(broker: &HostileBroker) -> (Connection, Subscription, Events) {
    let conn = tokio::time::timeout(WAIT, Connection::connect(config(&broker.uri())))
        .await
        .expect("connect returns in time")
        .expect("the handshake succeeds");
    let events = conn.events();
    let sub = Subscription::start(&conn, SubscriptionConfig::new(unique("hostile")))
        .expect("subscription starts");
    (conn, sub, events)
}

/// The next delivery; a failure says how many connections the broker saw meanwhile (a client
/// that dropped the connection over the delivery shows as more than one).
async fn next_delivery(sub: &mut Subscription, what: &str, broker: &HostileBroker) -> Delivery {
    match tokio::time::timeout(DELIVERY_WAIT, sub.recv()).await {
        Ok(Some(d)) => d,
        Ok(None) => panic!("{what}: the subscription ended"),
        Err(_) => panic!(
            "{what}: no delivery within {DELIVERY_WAIT:?} (the broker saw {} connections)",
            broker.connections()
        ),
    }
}

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

/// A well-formed delivery that must still arrive after a hostile one.
fn good(id: &str) -> RawDelivery {
    RawDelivery::new(format!("good {id}")).message_id(id)
}

/// Sends `bad` then a good delivery; both must arrive on the first session. Returns `bad` as
/// the client saw it.
async fn survives_delivery(bad: RawDelivery) -> Delivery {
    let broker = broker(Scenario::Deliver(vec![bad, good("after")])).await;
    let (conn, mut sub, _events) = subscribe(&broker).await;
    let first = next_delivery(&mut sub, "the hostile delivery", &broker).await;
    assert_eq!(
        &first.body()[..],
        b"hostile",
        "the hostile delivery comes first"
    );
    let second = next_delivery(&mut sub, "the good delivery after it", &broker).await;
    assert_eq!(second.message_id(), Some("after"));
    assert!(second.malformed().is_none(), "the good delivery is whole");
    assert_eq!(conn.reconnects(), 0, "no reconnect");
    assert_eq!(broker.connections(), 1, "one connection");
    first
}

/// Like [`survives_delivery`] over a connection whose body cap is `max_body_size`; the
/// hostile delivery's body is not checked (a capped body arrives empty).
async fn survives_capped(bad: RawDelivery, max_body_size: u64) -> Delivery {
    let broker = broker(Scenario::Deliver(vec![bad, good("after")])).await;
    let conn = tokio::time::timeout(
        WAIT,
        Connection::connect(config(&broker.uri()).max_body_size(max_body_size)),
    )
    .await
    .expect("connect returns in time")
    .expect("the handshake succeeds");
    let mut sub = Subscription::start(&conn, SubscriptionConfig::new(unique("hostile")))
        .expect("subscription starts");
    let first = next_delivery(&mut sub, "the hostile delivery", &broker).await;
    let second = next_delivery(&mut sub, "the good delivery after it", &broker).await;
    assert_eq!(second.message_id(), Some("after"));
    assert!(second.malformed().is_none(), "the good delivery is whole");
    assert_eq!(conn.reconnects(), 0, "no reconnect");
    assert_eq!(broker.connections(), 1, "one connection");
    first
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
// Non-UTF-8 short strings in a delivery.

const NOT_UTF8: [u8; 3] = [0xff, 0xfe, b'a'];

fn hostile() -> RawDelivery {
    RawDelivery::new("hostile")
}

#[test]
fn non_utf8_message_id_is_delivered() {
    run("non-utf8-message-id", async {
        let d = survives_delivery(hostile().message_id(NOT_UTF8)).await;
        assert!(d.message_id().is_some(), "message_id has a text view");
    });
}

#[test]
fn non_utf8_type_is_delivered() {
    run("non-utf8-type", async {
        let d = survives_delivery(hostile().kind(NOT_UTF8)).await;
        assert!(d.properties().kind.is_some(), "type has a text view");
    });
}

#[test]
fn non_utf8_app_id_is_delivered() {
    run("non-utf8-app-id", async {
        let d = survives_delivery(hostile().app_id(NOT_UTF8)).await;
        assert!(d.properties().app_id.is_some(), "app_id has a text view");
    });
}

#[test]
fn non_utf8_header_key_is_delivered() {
    run("non-utf8-header-key", async {
        let headers = TableBytes::new()
            .entry(NOT_UTF8, FieldBytes::i32(1))
            .entry("ok", FieldBytes::long_string("yes"));
        let d = survives_delivery(hostile().headers(&headers)).await;
        assert_eq!(
            d.header("ok").and_then(|v| v.as_str()),
            Some("yes"),
            "the well-formed header next to it is kept"
        );
    });
}

#[test]
fn non_utf8_routing_key_is_delivered() {
    run("non-utf8-routing-key", async {
        let d = survives_delivery(hostile().routing_key(NOT_UTF8)).await;
        assert!(
            !d.routing_key().is_empty(),
            "the routing key has a text view"
        );
    });
}

/// The text view of a non-UTF-8 message_id must be usable as a dedup key: the same bytes give
/// the same text, and different bytes different texts (a lossy conversion would merge
/// [ff fe 61] and [fe ff 61], and the second message would be dropped as a duplicate).
#[test]
fn non_utf8_message_ids_map_to_stable_distinct_texts() {
    run("non-utf8-ids-stable", async {
        let other: [u8; 3] = [0xfe, 0xff, b'a'];
        let broker = broker(Scenario::Deliver(vec![
            hostile().message_id(NOT_UTF8),
            hostile().message_id(NOT_UTF8),
            hostile().message_id(other),
            good("after"),
        ]))
        .await;
        let (conn, mut sub, _events) = subscribe(&broker).await;
        let mut ids = Vec::new();
        for i in 0..3 {
            let d = next_delivery(&mut sub, &format!("hostile delivery {i}"), &broker).await;
            ids.push(d.message_id().map(str::to_owned));
        }
        assert!(
            ids.iter().all(Option::is_some),
            "every id has a text: {ids:?}"
        );
        assert_eq!(ids[0], ids[1], "same bytes, same text");
        assert_ne!(ids[0], ids[2], "different bytes, different texts");
        let after = next_delivery(&mut sub, "the good delivery", &broker).await;
        assert_eq!(after.message_id(), Some("after"));
        assert_eq!(conn.reconnects(), 0);
    });
}

// ---------------------------------------------------------------------------------------------
// Field tables.

/// Every field type RabbitMQ uses (t b B s u I i l f d D S T F A V x) decodes.
#[test]
fn every_field_type_in_headers_is_decoded() {
    run("every-field-type", async {
        let d = survives_delivery(hostile().headers(&TableBytes::every_type())).await;
        let h = |k: &str| {
            d.header(k)
                .unwrap_or_else(|| panic!("header {k:?} is missing"))
                .clone()
        };
        assert_eq!(d.properties().headers.as_ref().map(|t| t.len()), Some(17));
        assert_eq!(h("bool"), rabbit_once::FieldValue::Bool(true));
        assert_eq!(h("i8").as_i64(), Some(-3));
        assert_eq!(h("u8").as_i64(), Some(200));
        assert_eq!(h("i16").as_i64(), Some(-300));
        assert_eq!(h("u16").as_i64(), Some(60000));
        assert_eq!(h("i32").as_i64(), Some(-70000));
        assert_eq!(h("u32").as_i64(), Some(4_000_000_000));
        assert_eq!(h("i64").as_i64(), Some(-5_000_000_000));
        assert_eq!(h("f64"), rabbit_once::FieldValue::F64(-2.25));
        assert_eq!(h("string").as_str(), Some("héllo"));
        assert_eq!(h("timestamp").as_i64(), Some(1_700_000_000));
        assert_eq!(h("void"), rabbit_once::FieldValue::Void);
        assert_eq!(h("bytes"), rabbit_once::FieldValue::ByteArray(vec![0, 255]));
        match h("table") {
            rabbit_once::FieldValue::Table(t) => {
                assert_eq!(t.get("inner").and_then(|v| v.as_i64()), Some(7))
            }
            other => panic!("table decoded as {other:?}"),
        }
        match h("array") {
            rabbit_once::FieldValue::Array(a) => assert_eq!(a.len(), 2),
            other => panic!("array decoded as {other:?}"),
        }
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
// Deliveries that cannot be decoded in full: handed up malformed, never fatal.

/// Deep enough to overflow any stack a recursive decoder runs on.
const DEPTH: usize = 12_000;

fn malformed_reason(d: &Delivery) -> String {
    d.malformed()
        .map(|r| r.to_string())
        .unwrap_or_else(|| panic!("the delivery is not marked malformed"))
}

fn mentions_depth(reason: &str) -> bool {
    let r = reason.to_lowercase();
    r.contains("nest") || r.contains("depth") || r.contains("deep")
}

#[test]
fn headers_nested_12000_tables_deep_are_malformed_not_fatal() {
    run("deep-tables", async {
        let headers = TableBytes::new().entry("deep", FieldBytes::nested_tables(DEPTH));
        let bad = RawDelivery::new("hostile").headers(&headers);
        let d = survives_delivery(bad).await;
        let reason = malformed_reason(&d);
        assert!(
            mentions_depth(&reason),
            "the reason names the nesting: {reason}"
        );
    });
}

#[test]
fn headers_nested_12000_arrays_deep_are_malformed_not_fatal() {
    run("deep-arrays", async {
        let headers = TableBytes::new().entry("deep", FieldBytes::nested_arrays(DEPTH));
        let bad = RawDelivery::new("hostile").headers(&headers);
        let d = survives_delivery(bad).await;
        let reason = malformed_reason(&d);
        assert!(
            mentions_depth(&reason),
            "the reason names the nesting: {reason}"
        );
    });
}

/// A body announced (and sent) larger than `max_body_size` is not buffered: the delivery
/// arrives malformed, and the connection carries on.
#[test]
fn body_larger_than_max_body_size_is_malformed_not_fatal() {
    run("body-too-large", async {
        let mut body = b"hostile".to_vec();
        body.resize(4096, b'.');
        let bad = RawDelivery::new(body);
        let d = survives_capped(bad, 1024).await;
        let reason = malformed_reason(&d);
        assert!(
            reason.contains("size") || reason.contains("large") || reason.contains("1024"),
            "the reason names the size: {reason}"
        );
    });
}

/// Every field type decodes, and such a delivery is not malformed.
#[test]
fn every_field_type_in_headers_is_not_malformed() {
    run("every-type-not-malformed", async {
        let bad = RawDelivery::new("hostile").headers(&TableBytes::every_type());
        let d = survives_delivery(bad).await;
        assert_eq!(d.malformed().map(|r| r.to_string()), None);
        assert_eq!(d.header("i32").and_then(|v| v.as_i64()), Some(-70000));
    });
}

// ---------------------------------------------------------------------------------------------
// A message the broker closes the whole connection over.

/// The fake broker closes the CONNECTION with 501 FRAME_ERROR whenever a publish carrying
/// message_id "poison" arrives (RabbitMQ does that over a frame it cannot take). The publisher
/// must not re-send it forever: the messages in flight at the close become suspects, re-sent one
/// at a time on the next connection, and the lone suspect in flight at the next such close —
/// "poison" — fails alone with `Refused { code: 501 }`. Everything else is confirmed, and the
/// broker sees few connections: the first, then the suspect hunt — no reconnect loop.
#[test]
fn a_message_that_makes_the_broker_close_the_connection_fails_alone() {
    run("close-on-publish", async {
        const COUNT: usize = 20;
        const POISON: &str = "poison";
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
        let mut confirmations = Vec::new();
        for id in &ids {
            let msg =
                Message::to_queue("hostile", format!("body of {id}")).with_message_id(id.clone());
            let c = tokio::time::timeout(WAIT, publisher.publish(msg))
                .await
                .expect("publish accepts in time")
                .expect("the message is accepted");
            confirmations.push((id.clone(), c));
        }
        for (id, c) in confirmations {
            let verdict = tokio::time::timeout(WAIT, c).await.unwrap_or_else(|_| {
                panic!(
                    "{id}: no verdict within {WAIT:?}; the broker saw {} connections, \
                     publishes {:?}",
                    broker.connections(),
                    published_ids(&broker)
                )
            });
            if id == POISON {
                match verdict {
                    Err(PublishError {
                        error:
                            Error::Refused {
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
