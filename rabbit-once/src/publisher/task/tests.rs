//! The task's gauges while nothing happens: the oldest unconfirmed message's age keeps
//! moving with no broker to confirm it.

use crate::metrics::PUBLISHER_OLDEST_UNCONFIRMED_AGE;
use crate::{Connection, ConnectionConfig, Message, Publisher, PublisherConfig};
use ::metrics::{Counter, Gauge, Histogram, Key, KeyName, Metadata, Recorder, SharedString, Unit};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// A recorder that keeps the age gauge only.
#[derive(Default)]
struct Age(Arc<AtomicU64>);

impl Recorder for Age {
    fn describe_counter(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
    fn describe_gauge(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
    fn describe_histogram(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
    fn register_counter(&self, _: &Key, _: &Metadata<'_>) -> Counter {
        Counter::noop()
    }
    fn register_gauge(&self, key: &Key, _: &Metadata<'_>) -> Gauge {
        if key.name() == PUBLISHER_OLDEST_UNCONFIRMED_AGE {
            Gauge::from_arc(self.0.clone())
        } else {
            Gauge::noop()
        }
    }
    fn register_histogram(&self, _: &Key, _: &Metadata<'_>) -> Histogram {
        Histogram::noop()
    }
}

/// No broker (nothing listens on the port): the message waits in the buffer with no command,
/// write or verdict, and its age still reaches the gauge.
#[tokio::test]
async fn the_oldest_unconfirmed_age_moves_while_no_broker_confirms() {
    let rec = Age::default();
    let name = format!("age-test-{}", std::process::id());
    let (conn, publisher) = ::metrics::with_local_recorder(&rec, || {
        let config = ConnectionConfig::new("amqp://guest:guest@127.0.0.1:1/%2f")
            .unwrap()
            .name(name.as_str());
        let conn = Connection::start(config).unwrap();
        let publisher =
            Publisher::new(&conn, PublisherConfig::default().name(name.as_str())).unwrap();
        (conn, publisher)
    });
    let _waiting = publisher
        .try_publish(Message::to_queue("nowhere", "x").with_message_id("m-1"))
        .unwrap();
    let age = || f64::from_bits(rec.0.load(Ordering::Relaxed));
    let mut moved = false;
    for _ in 0..100 {
        if age() >= 1.0 {
            moved = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(moved, "the age stood at {} s", age());
    drop(publisher);
    conn.close().await;
}
