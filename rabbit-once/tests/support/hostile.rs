//! The harness of the hostile-broker tests (`hostile.rs`, `hostile_deliveries.rs`): each test
//! runs on a runtime of its own whose threads are watched for panics, against a fake broker.

use super::{config, unique};
use rabbit_once::{Connection, Delivery, Events, Subscription, SubscriptionConfig};
use rabbit_once_testkit::{HostileBroker, RawDelivery, Scenario};
use std::future::Future;
use std::sync::{Mutex, Once};
use std::time::Duration;

/// Bound of every single wait: a failing test fails instead of hanging.
pub const WAIT: Duration = Duration::from_secs(10);
/// How long a delivery may take to arrive.
pub const DELIVERY_WAIT: Duration = Duration::from_secs(5);
/// Bound of a whole test.
pub const GUARD: Duration = Duration::from_secs(60);

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
pub fn run<F: Future<Output = ()>>(name: &str, test: F) {
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

pub async fn broker(scenario: Scenario) -> HostileBroker {
    HostileBroker::start(scenario)
        .await
        .expect("the fake broker listens")
}

/// Connects to the fake broker and subscribes; the events are taken before subscribing, so none
/// of the subscription's is missed.
pub async fn subscribe(broker: &HostileBroker) -> (Connection, Subscription, Events) {
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
pub async fn next_delivery(sub: &mut Subscription, what: &str, broker: &HostileBroker) -> Delivery {
    match tokio::time::timeout(DELIVERY_WAIT, sub.recv()).await {
        Ok(Some(d)) => d,
        Ok(None) => panic!("{what}: the subscription ended"),
        Err(_) => panic!(
            "{what}: no delivery within {DELIVERY_WAIT:?} (the broker saw {} connections)",
            broker.connections()
        ),
    }
}

/// A well-formed delivery that must still arrive after a hostile one.
pub fn good(id: &str) -> RawDelivery {
    RawDelivery::new(format!("good {id}")).message_id(id)
}
