//! Dead letters you can act on: list without consuming, replay with the same ids (a duplicate is
//! skipped by the consumer), purge, a replay cut midway. Against the real broker, dead letters
//! made the real way (a consumer whose handler rejects), every test with its own queues.

mod support;

use rabbit_once::headers::{ATTEMPT_HEADER, REASON_HEADER};
use rabbit_once::{
    Connection, Consumer, DeadLetterSelection, DeadLetters, FieldValue, Message, Properties,
    Publisher, PublisherConfig, Queue, QueueType, Topology,
};
use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;
use support::consumer::{GUARD, Ledger, TestDb, cleanup, config, ids, publish, sqlite, wait_for};
use support::*;

/// The ids in a list, in queue order.
fn id_list(list: &[rabbit_once::DeadLetterInfo]) -> Vec<String> {
    list.iter()
        .map(|d| d.message_id.clone().unwrap_or_default())
        .collect()
}

async fn depth(conn: &Connection, q: &str) -> u32 {
    conn.queue_info(q).await.unwrap().messages
}

/// Publishes `msgs` straight into `queue` (a dead letter made by hand), confirmed.
async fn put(conn: &Connection, msgs: Vec<Message>) {
    let p = Publisher::new(conn, PublisherConfig::default()).unwrap();
    let mut cs = Vec::new();
    for m in msgs {
        cs.push(p.publish(m).await.unwrap());
    }
    for c in cs {
        c.await.unwrap();
    }
    p.close(Duration::from_secs(5)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn list_replay_one_then_all_skip_a_duplicate_and_purge() {
    let (store, _f) = sqlite().await;
    let q = unique("dlq-lib");
    let dead_q = format!("{q}.dead");
    let conn = direct().await;
    conn.declare(&Topology::new().queue(Queue::new(&q)))
        .await
        .unwrap();
    let msgs = ids(0..20, &q);
    let rejected: HashSet<String> = msgs
        .iter()
        .filter(|(_, i)| i % 4 == 3)
        .map(|(id, _)| id.clone())
        .collect();
    publish(&conn, &q, msgs.clone()).await;
    let buggy = Ledger {
        reject: Arc::new(rejected.clone()),
        ..Default::default()
    };
    let consumer = Consumer::start(&conn, store.clone(), buggy, config(&q))
        .await
        .unwrap();
    wait_for(&consumer, "15 applied, 5 dead-lettered", |s| {
        s.applied >= 15 && s.dead_lettered >= 5
    })
    .await;
    consumer.close(Duration::from_secs(5)).await;

    // List: exactly the rejected ids, with why, how often, when and from where; the queue
    // is as it was, in the same order.
    let dead = DeadLetters::new(&conn, &q);
    assert_eq!(dead.dead_queue_name(), dead_q);
    let list = dead.list().await.unwrap();
    let listed: HashSet<String> = id_list(&list).into_iter().collect();
    assert_eq!(listed, rejected);
    for (i, d) in list.iter().enumerate() {
        assert_eq!(d.position, i as u64);
        assert_eq!(d.reason.as_deref(), Some("rejected by the test"));
        assert_eq!(d.attempts, Some(1));
        assert_eq!(d.deaths, 0);
        assert_eq!(d.queue.as_deref(), Some(q.as_str()));
        assert_eq!(d.group.as_deref(), Some(q.as_str()));
        assert_eq!(d.original_exchange.as_deref(), Some(""));
        assert_eq!(d.original_routing_key.as_deref(), Some(q.as_str()));
        assert!(d.first_failure.is_some() && d.first_failure == d.last_failure);
        assert_eq!(d.malformed, None);
    }
    assert_eq!(depth(&conn, &dead_q).await, 5, "listing consumes nothing");
    let again = dead.list().await.unwrap();
    assert_eq!(id_list(&again), id_list(&list), "order kept");

    // The bug is fixed: a consumer that applies everything.
    let fixed = Consumer::start(&conn, store.clone(), Ledger::default(), config(&q))
        .await
        .unwrap();
    let first = list[1].message_id.clone().unwrap();
    let report = dead
        .replay(&DeadLetterSelection::ids([first.clone()]))
        .await
        .unwrap();
    assert!(report.is_complete(), "{report:?}");
    assert_eq!(id_list(&report.replayed), [first.as_str()]);
    assert_eq!(depth(&conn, &dead_q).await, 4, "exactly that one moved");
    wait_for(&fixed, "the replayed one applied", |s| s.applied >= 1).await;
    assert_eq!(store.applied().await.get(&first), Some(&1));

    // Everything else; an id that is not there is reported.
    let report = dead.replay(&DeadLetterSelection::All).await.unwrap();
    assert!(report.is_complete(), "{report:?}");
    assert_eq!(report.replayed.len(), 4);
    assert_eq!(depth(&conn, &dead_q).await, 0);
    wait_for(&fixed, "all five applied", |s| s.applied >= 5).await;
    let applied = store.applied().await;
    assert_eq!(applied.len(), 20, "every message applied");
    assert!(applied.values().all(|n| *n == 1), "once each: {applied:?}");
    let report = dead
        .replay(&DeadLetterSelection::ids(["no-such-id"]))
        .await
        .unwrap();
    assert!(!report.is_complete());
    assert_eq!(report.not_found, ["no-such-id"]);
    assert!(report.replayed.is_empty());

    // A dead letter whose message had in fact been applied (its ack was lost, say): replayed,
    // and skipped by the consumer as a duplicate. Its bookkeeping headers do not travel.
    let applied_one = format!("{q}-0");
    let stale = Message::to_queue(&dead_q, body(0, 40))
        .with_message_id(&applied_one)
        .with_properties(
            Properties::default()
                .with_header(ATTEMPT_HEADER, FieldValue::I64(3))
                .with_header(REASON_HEADER, "stale"),
        );
    put(&conn, vec![stale]).await;
    let before = fixed.stats().duplicates;
    let report = dead
        .replay(&DeadLetterSelection::ids([applied_one.clone()]))
        .await
        .unwrap();
    assert_eq!(id_list(&report.replayed), [applied_one.as_str()]);
    wait_for(&fixed, "the duplicate skipped", |s| s.duplicates > before).await;
    assert_eq!(store.applied().await.get(&applied_one), Some(&1));
    fixed.close(Duration::from_secs(5)).await;

    // Purge: one by id, then all; the others stay until then.
    put(
        &conn,
        (0..3)
            .map(|i| Message::to_queue(&dead_q, body(i, 10)).with_message_id(format!("p-{i}")))
            .collect(),
    )
    .await;
    let report = dead
        .purge(&DeadLetterSelection::ids(["p-1", "p-9"]))
        .await
        .unwrap();
    assert!(report.interrupted.is_none());
    assert_eq!(id_list(&report.removed), ["p-1"]);
    assert_eq!(report.not_found, ["p-9"]);
    assert_eq!(id_list(&dead.list().await.unwrap()), ["p-0", "p-2"]);
    let report = dead.purge(&DeadLetterSelection::All).await.unwrap();
    assert_eq!(id_list(&report.removed), ["p-0", "p-2"]);
    assert_eq!(depth(&conn, &dead_q).await, 0);
    assert!(dead.list().await.unwrap().is_empty());
    cleanup(&conn, &q).await;
    conn.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_quorum_dead_letter_queue_keeps_its_order_when_listed() {
    let q = unique("dlq-quorum");
    let dead_q = format!("{q}.dead");
    let conn = direct().await;
    let consumer = config(&q).queue_type(QueueType::Quorum);
    conn.declare(&consumer.topology()).await.unwrap();
    let names: Vec<String> = (0..30).map(|i| format!("{q}-{i}")).collect();
    put(
        &conn,
        names
            .iter()
            .map(|id| Message::to_queue(&dead_q, body(1, 10)).with_message_id(id))
            .collect(),
    )
    .await;
    let dead = DeadLetters::for_consumer(&conn, &consumer).unwrap();
    for round in 0..3 {
        let list = dead.list().await.unwrap();
        assert_eq!(id_list(&list), names, "round {round}");
        assert_eq!(depth(&conn, &dead_q).await, 30);
    }
    // Replaying one from the middle leaves the others in order.
    let report = dead
        .replay(&DeadLetterSelection::ids([names[10].clone()]))
        .await
        .unwrap();
    assert!(report.is_complete(), "{report:?}");
    let mut rest = names.clone();
    rest.remove(10);
    assert_eq!(id_list(&dead.list().await.unwrap()), rest);
    let work = drain(&conn, &q, 1, Duration::from_secs(5)).await;
    assert_eq!(work.len(), 1);
    assert_eq!(work[0].0, names[10]);
    cleanup(&conn, &q).await;
    conn.close().await;
}

/// The connection is cut in the middle of a replay: it stops and says so; nothing is lost (each
/// id is in the work queue or still dead, or both), and a second replay moves the rest.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replay_cut_midway_loses_nothing_and_a_second_one_finishes() {
    const N: usize = 3000;
    let q = unique("dlq-cut");
    let dead_q = format!("{q}.dead");
    let conn = direct().await;
    conn.declare(&config(&q).topology().queue(Queue::new(&q)))
        .await
        .unwrap();
    let names: Vec<String> = (0..N).map(|i| format!("{q}-{i}")).collect();
    put(
        &conn,
        names
            .iter()
            .enumerate()
            .map(|(i, id)| Message::to_queue(&dead_q, body(i as u64, 200)).with_message_id(id))
            .collect(),
    )
    .await;
    let (proxy, through) = through_proxy(|c| c).await;
    proxy.set_latency(Duration::from_millis(2));
    let dead = DeadLetters::new(&through, &q);
    let replay = tokio::spawn(async move { dead.replay(&DeadLetterSelection::All).await });
    // Cut once half the copies are in the work queue.
    let started = {
        let conn = conn.clone();
        let q = q.clone();
        eventually_async(GUARD, move || {
            let conn = conn.clone();
            let q = q.clone();
            async move { depth(&conn, &q).await as usize >= N / 2 }
        })
        .await
    };
    assert!(started, "the replay started");
    proxy.cut_all();
    let report = tokio::time::timeout(GUARD, replay)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert!(report.interrupted.is_some(), "{report:?}");
    assert!(report.replayed.len() < N, "cut midway");
    proxy.set_latency(Duration::ZERO);
    // The broker gives back what the cut connection held once it has noticed the cut.
    let gone = eventually_async(GUARD, || {
        let conn = conn.clone();
        let dead_q = dead_q.clone();
        async move { conn.queue_info(&dead_q).await.unwrap().consumers == 0 }
    })
    .await;
    assert!(gone, "the broker noticed the cut");
    // Nothing lost: every id is in the work queue or back in the dead-letter queue (copies
    // may be in both) — once the broker has put back what the cut connection held.
    let back = eventually_async(GUARD, || {
        let conn = conn.clone();
        let (q, dead_q) = (q.clone(), dead_q.clone());
        async move { depth(&conn, &q).await as usize + depth(&conn, &dead_q).await as usize >= N }
    })
    .await;
    assert!(
        back,
        "{} + {}",
        depth(&conn, &q).await,
        depth(&conn, &dead_q).await
    );

    // Nothing lost: every id is in the work queue or still in the dead-letter queue.
    let direct_dead = DeadLetters::new(&conn, &q);
    let still_dead: HashSet<String> = id_list(&direct_dead.list().await.unwrap())
        .into_iter()
        .collect();
    let mut work = drain(&conn, &q, N - still_dead.len(), Duration::from_secs(3)).await;
    let moved: HashSet<&String> = work.iter().map(|(id, _)| id).collect();
    for id in &names {
        assert!(
            moved.contains(id) || still_dead.contains(id),
            "{id} is neither in the work queue nor dead"
        );
    }

    // A second replay moves the rest; then every id has reached the work queue at least once,
    // and twice at most (a copy confirmed whose dead letter's removal was cut off).
    let second = direct_dead.replay(&DeadLetterSelection::All).await.unwrap();
    assert!(second.is_complete(), "{second:?}");
    assert_eq!(second.replayed.len(), still_dead.len());
    assert_eq!(depth(&conn, &dead_q).await, 0);
    work.extend(drain(&conn, &q, still_dead.len(), Duration::from_secs(3)).await);
    let mut count: HashMap<String, usize> = HashMap::new();
    for (id, _) in &work {
        *count.entry(id.clone()).or_default() += 1;
    }
    for id in &names {
        let n = count.get(id).copied().unwrap_or(0);
        assert!((1..=2).contains(&n), "{id} in the work queue {n} times");
    }
    let twice = count.values().filter(|n| **n == 2).count();
    println!(
        "first replay: {} replayed, {} in flight at the cut; second: {}; twice: {twice}",
        report.replayed.len(),
        report.in_flight,
        second.replayed.len()
    );
    assert_eq!(count.len(), N);
    assert!(
        twice <= report.in_flight + report.replayed.len(),
        "duplicates only of what was in flight or whose removal was cut off"
    );
    through.close().await;
    cleanup(&conn, &q).await;
    conn.close().await;
}

/// Like [`eventually`], for a check that must await.
async fn eventually_async<F, Fut>(limit: Duration, mut f: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let end = tokio::time::Instant::now() + limit;
    while tokio::time::Instant::now() < end {
        if f().await {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    false
}
