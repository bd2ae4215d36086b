//! The idempotent consumer on a quorum work queue (`ConsumerConfig::queue_type(Quorum)`): its
//! quorum retry and dead-letter queues and their arguments, and a retry or dead-letter copy the
//! broker nacks (a full queue with `reject-publish`). Against the real (single-node) broker;
//! the same path across a node's death is scenario e of `tests/cluster`.

mod support;

use rabbit_once::headers::{ATTEMPTS_HEADER, GROUP_HEADER, REASON_HEADER};
use rabbit_once::{Binding, Consumer, Queue, QueueType, Subscription, SubscriptionConfig};
use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;
use support::consumer::{GUARD, Ledger, TestDb, cleanup, config, ids, publish, sqlite, wait_for};
use support::*;

/// A consumer of a quorum work queue (`queue_type(Quorum)`: it declares the work queue, its
/// retry queues and its dead-letter queue as quorum queues) retries failing messages through
/// its quorum retry queues — TTL, then dead-lettered back at-least-once — and dead-letters them
/// after `max_attempts` with their headers. The broker holds the declared arguments: the same
/// queues declared classic, or the work queue without its delivery limit, are refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_quorum_work_queue_retries_through_quorum_queues_and_dead_letters() {
    let (store, _f) = sqlite().await;
    let q = unique("con-quorum");
    let cfg = config(&q).queue_type(QueueType::Quorum);
    let conn = direct().await;
    // Declared as the consumer declares it, so messages can be published before it starts.
    conn.declare(&cfg.topology()).await.unwrap();
    let msgs = ids(0..60, &q);
    let pick = |f: fn(u64) -> bool| -> HashSet<String> {
        msgs.iter()
            .filter(|(_, i)| f(*i))
            .map(|(id, _)| id.clone())
            .collect()
    };
    let (flaky, doomed) = (pick(|i| i % 10 == 0), pick(|i| i % 20 == 7));
    let handler = Ledger {
        fail_until: Arc::new(flaky.iter().map(|id| (id.clone(), 3)).collect()),
        always_fail: Arc::new(doomed.clone()),
        ..Default::default()
    };
    publish(&conn, &q, msgs.clone()).await;
    let consumer = Consumer::start(&conn, store.clone(), handler, cfg.clone())
        .await
        .unwrap();
    let want_applied = (msgs.len() - doomed.len()) as u64;
    let s = wait_for(&consumer, "applied and dead-lettered", |s| {
        s.applied >= want_applied && s.dead_lettered >= doomed.len() as u64
    })
    .await;
    consumer.close(Duration::from_secs(5)).await;
    assert_eq!(s.retried, 2 * (flaky.len() + doomed.len()) as u64, "{s:?}");
    let applied = store.applied().await;
    assert_eq!(applied.len() as u64, want_applied);
    assert!(applied.values().all(|n| *n == 1), "each applied once");
    assert!(doomed.iter().all(|id| !applied.contains_key(id)));
    let mut sub = Subscription::start(&conn, SubscriptionConfig::new(format!("{q}.dead"))).unwrap();
    for _ in 0..doomed.len() {
        let d = tokio::time::timeout(GUARD, sub.recv())
            .await
            .unwrap()
            .unwrap();
        assert!(doomed.contains(d.message_id().unwrap()));
        let reason = d.header(REASON_HEADER).and_then(|v| v.as_str()).unwrap();
        assert!(reason.contains("gave up after 3 attempts"), "{reason}");
        assert_eq!(d.header(ATTEMPTS_HEADER).and_then(|v| v.as_i64()), Some(3));
        assert_eq!(
            d.header(GROUP_HEADER).and_then(|v| v.as_str()),
            Some(q.as_str())
        );
        d.ack();
    }
    sub.close(Duration::from_secs(1)).await;
    // What the broker holds (`rabbitmqctl list_queues` of the shared broker, read only).
    let out = std::process::Command::new("rabbitmqctl")
        .args([
            "-q",
            "list_queues",
            "--no-table-headers",
            "name",
            "type",
            "arguments",
        ])
        .output()
        .expect("rabbitmqctl of the shared broker");
    let listed = String::from_utf8_lossy(&out.stdout);
    let line = |name: &str| {
        listed
            .lines()
            .find(|l| l.split('\t').next() == Some(name))
            .unwrap_or_else(|| panic!("{name} listed: {listed}"))
            .to_string()
    };
    let at_least_once = [
        r#"{"x-dead-letter-strategy","at-least-once"}"#,
        r#"{"x-overflow","reject-publish"}"#,
    ];
    for name in cfg.queues() {
        let l = line(&name);
        assert!(l.contains("\tquorum\t"), "{l}");
        if name.contains(".retry.") {
            assert!(at_least_once.iter().all(|a| l.contains(a)), "{l}");
        }
    }
    let work = line(&q);
    assert!(work.contains(r#"{"x-delivery-limit",1003}"#), "{work}");
    assert!(at_least_once.iter().all(|a| work.contains(a)), "{work}");
    cleanup(&conn, &q).await;
    conn.close().await;
}

/// A dead-letter copy the broker nacks — its target is a full quorum queue with
/// `reject-publish` — is published again and again while the original stays held unacked:
/// the handler is not run again, nothing is acked, and once the target makes room the copy is
/// confirmed and the original acked. Nothing lost, nothing run twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_nacked_dead_letter_copy_holds_the_original_until_the_target_makes_room() {
    let (store, _f) = sqlite().await;
    let q = unique("con-qnack");
    let full = format!("{q}.full");
    let cfg =
        config(&q)
            .queue_type(QueueType::Quorum)
            .dead_letter(rabbit_once::DeadLetter::Exchange {
                exchange: "amq.direct".into(),
                routing_key: full.clone(),
            });
    let conn = direct().await;
    let target = Queue::new(&full)
        .queue_type(QueueType::Quorum)
        .max_length(1)
        .overflow(rabbit_once::Overflow::RejectPublish);
    conn.declare(
        &cfg.topology()
            .queue(target)
            .binding(Binding::queue(&full, "amq.direct", &full)),
    )
    .await
    .unwrap();
    // A quorum queue refuses publishes once it is *over* its limit, until it is below 80% of
    // it: two fillers make it refuse, and both must go before it takes more.
    publish(&conn, &full, ids(0..2, &format!("{q}-filler"))).await;
    let msgs = ids(0..3, &q);
    let handler = Ledger {
        reject: Arc::new([msgs[1].0.clone()].into()),
        ..Default::default()
    };
    let consumer = Consumer::start(&conn, store.clone(), handler.clone(), cfg)
        .await
        .unwrap();
    publish(&conn, &q, msgs.clone()).await;
    // Held, the original holds up the one batch slot: the message after it waits.
    let s = wait_for(&consumer, "the copy nacked", |s| s.copies_nacked >= 2).await;
    assert_eq!((s.dead_lettered, s.retried, s.held), (0, 0, 0), "{s:?}");
    let calls = handler.calls.load(Ordering::Relaxed);
    wait_for(&consumer, "nacked again", |s| s.copies_nacked >= 3).await;
    assert_eq!(
        handler.calls.load(Ordering::Relaxed),
        calls,
        "nothing runs again while the original is held"
    );
    // Make room: the held copy gets in, the original is acked.
    let mut sub = Subscription::start(&conn, SubscriptionConfig::new(&full).prefetch(1)).unwrap();
    for i in 0..2 {
        let filler = tokio::time::timeout(GUARD, sub.recv())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(
            filler.message_id(),
            Some(format!("{q}-filler-{i}").as_str())
        );
        filler.ack();
    }
    let dead = tokio::time::timeout(GUARD, sub.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(dead.message_id(), Some(msgs[1].0.as_str()));
    dead.ack();
    sub.close(Duration::from_secs(1)).await;
    let s = wait_for(&consumer, "dead-lettered, the rest applied", |s| {
        s.dead_lettered >= 1 && s.applied >= 2
    })
    .await;
    consumer.close(Duration::from_secs(5)).await;
    // Delivered once each: the original was never requeued.
    assert_eq!(
        (s.dead_lettered, s.applied, s.delivered),
        (1, 2, 3),
        "{s:?}"
    );
    assert!(store.applied().await.values().all(|n| *n == 1));
    assert_eq!(conn.queue_info(&q).await.unwrap().messages, 0);
    let _ = conn.delete_queue(&full).await;
    cleanup(&conn, &q).await;
    conn.close().await;
}
