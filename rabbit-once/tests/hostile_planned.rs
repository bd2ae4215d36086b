//! Hostile-broker tests of PLANNED API: `Delivery::malformed()` and
//! `ConnectionConfig::max_body_size()`. This file does not compile until that API lands; the
//! rest of the hostile tests are in `hostile.rs`.
//!
//! A delivery the client cannot fully decode (headers nested absurdly deep, a body larger than
//! the configured cap) must neither take the process down (stack overflow, allocation of
//! whatever size the broker announces) nor the connection: it arrives marked malformed, so the
//! application can dead-letter it, and the next delivery arrives as usual.

mod support;

use rabbit_once::{Connection, ConnectionConfig, Delivery, Subscription, SubscriptionConfig};
use rabbit_once_testkit::{FieldBytes, HostileBroker, RawDelivery, Scenario, TableBytes};
use std::future::Future;
use std::sync::{Mutex, Once};
use std::time::Duration;
use support::{config, unique};

const WAIT: Duration = Duration::from_secs(10);
const DELIVERY_WAIT: Duration = Duration::from_secs(5);
const GUARD: Duration = Duration::from_secs(60);
/// Deep enough to overflow any stack a recursive decoder runs on.
const DEPTH: usize = 12_000;

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

/// Runs `test` on a runtime of its own and fails if any of its worker threads (where the
/// client's tasks run) panicked.
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

async fn next_delivery(sub: &mut Subscription, what: &str) -> Delivery {
    tokio::time::timeout(DELIVERY_WAIT, sub.recv())
        .await
        .unwrap_or_else(|_| panic!("{what}: no delivery within {DELIVERY_WAIT:?}"))
        .unwrap_or_else(|| panic!("{what}: the subscription ended"))
}

/// Like [`survives_delivery_any_body`], and the hostile delivery's body reads "hostile".
async fn survives_delivery(
    bad: RawDelivery,
    cfg: impl FnOnce(ConnectionConfig) -> ConnectionConfig,
) -> Delivery {
    let first = survives_delivery_any_body(bad, cfg).await;
    assert_eq!(
        &first.body()[..],
        b"hostile",
        "the hostile delivery comes first"
    );
    first
}

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
        let d = survives_delivery(bad, |c| c).await;
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
        let d = survives_delivery(bad, |c| c).await;
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
        let d = survives_delivery_any_body(bad, |c| c.max_body_size(1024)).await;
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
        let d = survives_delivery(bad, |c| c).await;
        assert_eq!(d.malformed().map(|r| r.to_string()), None);
        assert_eq!(d.header("i32").and_then(|v| v.as_i64()), Some(-70000));
    });
}

/// Sends `bad` then a good delivery over a connection made with `cfg`; both must arrive on
/// the first session. Returns `bad` as the client saw it (its body is not checked: a capped
/// body may arrive empty or cut).
async fn survives_delivery_any_body(
    bad: RawDelivery,
    cfg: impl FnOnce(ConnectionConfig) -> ConnectionConfig,
) -> Delivery {
    let good = RawDelivery::new("good").message_id("after");
    let broker = HostileBroker::start(Scenario::Deliver(vec![bad, good]))
        .await
        .expect("the fake broker listens");
    let conn = tokio::time::timeout(WAIT, Connection::connect(cfg(config(&broker.uri()))))
        .await
        .expect("connect returns in time")
        .expect("the handshake succeeds");
    let mut sub = Subscription::start(&conn, SubscriptionConfig::new(unique("hostile")))
        .expect("subscription starts");
    let first = next_delivery(&mut sub, "the hostile delivery").await;
    let second = next_delivery(&mut sub, "the good delivery after it").await;
    assert_eq!(second.message_id(), Some("after"));
    assert!(second.malformed().is_none(), "the good delivery is whole");
    assert_eq!(conn.reconnects(), 0, "no reconnect");
    assert_eq!(broker.connections(), 1, "one connection");
    first
}
