//! rabbit-once against a hostile fake broker (`rabbit_once_testkit::hostile`): deliveries a
//! real RabbitMQ never sends — non-UTF-8 short strings, every field type, headers nested 12,000
//! deep, a body over the cap — handed up (malformed if they cannot be decoded), never fatal.
//! Each test checks that no task of the client panicked (the harness is `support/hostile.rs`).
//!
//! No RabbitMQ is needed: the fake broker listens on a free port of 127.0.0.1.

mod support;

use rabbit_once::{Connection, Delivery, Subscription, SubscriptionConfig};
use rabbit_once_testkit::{FieldBytes, RawDelivery, Scenario, TableBytes};
use support::hostile::{WAIT, broker, good, next_delivery, run, subscribe};
use support::{config, unique};

// ---------------------------------------------------------------------------------------------
// Helpers.

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
