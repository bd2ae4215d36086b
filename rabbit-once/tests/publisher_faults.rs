//! The publisher through a fault proxy: connections cut mid-stream, a black hole noticed by
//! heartbeats, an outage that must not reorder, endpoints tried in turn, topology declared
//! again on every session. Against the real broker on 5672.

mod support;

use rabbit_once::{
    Connection, ConnectionState, Event, Publisher, PublisherConfig, Queue, Topology,
};
use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;
use support::*;

const GUARD: Duration = Duration::from_secs(60);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_cut_five_times_loses_nothing_and_keeps_order() {
    const N: u64 = 20_000;
    const CUTS: u64 = 6;
    let q = unique("pub-cuts");
    let setup = direct().await;
    setup
        .declare(&Topology::new().queue(Queue::new(&q)))
        .await
        .unwrap();
    let (proxy, conn, p) = publisher_through_proxy(|c| c).await;

    // A watcher records each confirmation as it resolves (in publish order).
    let confirmed: Arc<Vec<AtomicBool>> =
        Arc::new((0..N).map(|_| AtomicBool::new(false)).collect());
    let (tx, watcher) = {
        let confirmed = confirmed.clone();
        confirm_all(GUARD, move |seq| {
            confirmed[seq as usize].store(true, Ordering::SeqCst)
        })
    };

    let mut unconfirmed_at_cuts = BTreeSet::new();
    for i in 0..N {
        tx.send((i, p.publish(seq_message(&q, i, 200)).await.unwrap()))
            .unwrap();
        if i > 0 && i % (N / (CUTS + 1)) == 0 {
            for s in 0..=i {
                if !confirmed[s as usize].load(Ordering::SeqCst) {
                    unconfirmed_at_cuts.insert(s);
                }
            }
            let before = conn.reconnects();
            proxy.cut_all();
            assert!(
                eventually(GUARD, || conn.reconnects() > before).await,
                "reconnected after cut"
            );
        }
    }
    drop(tx);
    let ids = watcher.await.unwrap();
    assert_eq!(ids.len() as u64, N, "all confirmed");
    assert!(
        conn.reconnects() >= 5,
        "at least 5 cuts took effect: {}",
        conn.reconnects()
    );
    let stats = p.stats();
    assert_eq!((stats.confirmed, stats.failed), (N, 0));
    assert!(
        stats.republished > 0,
        "some messages were in flight at a cut"
    );

    let got = drain(&setup, &q, N as usize, Duration::from_secs(5)).await;
    let mut first = Vec::new();
    let mut seen = HashMap::<u64, usize>::new();
    for (id, b) in &got {
        let s = seq_of(b);
        assert_eq!(
            Some(id),
            ids.get(&s),
            "message_id unchanged by re-publishing"
        );
        let n = seen.entry(s).or_default();
        if *n == 0 {
            first.push(s);
        }
        *n += 1;
    }
    assert_eq!(
        first,
        (0..N).collect::<Vec<_>>(),
        "every seq, first appearances in publish order"
    );
    for (s, n) in &seen {
        if *n > 1 {
            assert!(
                unconfirmed_at_cuts.contains(s),
                "seq {s} duplicated but was confirmed before every cut"
            );
        }
    }
    let dups: usize = seen.values().map(|n| n - 1).sum();
    assert!(
        dups as u64 <= stats.republished,
        "{dups} duplicates, {} re-publishes",
        stats.republished
    );
    p.close(Duration::from_secs(5)).await;
    conn.close().await;
    setup.delete_queue(&q).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heartbeats_notice_a_black_hole_and_nothing_is_lost() {
    let q = unique("pub-hole");
    let setup = direct().await;
    setup
        .declare(&Topology::new().queue(Queue::new(&q)))
        .await
        .unwrap();
    let (proxy, conn, p) = publisher_through_proxy(|c| c.heartbeat(Duration::from_secs(1))).await;
    let mut events = conn.events();
    for i in 0..100 {
        p.publish_confirmed(seq_message(&q, i, 10)).await.unwrap();
    }
    proxy.blackhole(true);
    let mut cs = Vec::new();
    for i in 100..200 {
        cs.push(p.publish(seq_message(&q, i, 10)).await.unwrap());
    }
    let reason = tokio::time::timeout(GUARD, async {
        loop {
            if let Some(Event::Disconnected { reason, .. }) = events.recv().await {
                return reason;
            }
        }
    })
    .await
    .expect("the dead connection is noticed");
    assert!(reason.to_string().contains("heartbeat"), "{reason}");
    proxy.blackhole(false);
    for c in cs {
        c.await.unwrap();
    }
    let got = drain(&setup, &q, 200, Duration::from_secs(3)).await;
    let seqs: BTreeSet<u64> = got.iter().map(|(_, b)| seq_of(b)).collect();
    assert_eq!(seqs, (0..200).collect());
    p.close(Duration::from_secs(5)).await;
    conn.close().await;
    setup.delete_queue(&q).await.unwrap();
}

#[tokio::test]
async fn endpoints_are_tried_in_turn() {
    let dead = rabbit_once_testkit::free_port().unwrap();
    let cfg = rabbit_once::ConnectionConfig::from_uris([uri_via(dead), broker_uri()])
        .unwrap()
        .backoff(rabbit_once::Backoff::new(
            Duration::from_millis(10),
            Duration::from_millis(50),
            0.0,
        ));
    let conn = tokio::time::timeout(GUARD, Connection::connect(cfg))
        .await
        .unwrap()
        .unwrap();
    match conn.state() {
        ConnectionState::Connected { epoch, endpoint } => {
            assert_eq!(epoch, 1);
            assert!(!endpoint.contains(&format!(":{dead}/")), "{endpoint}");
        }
        other => panic!("{other:?}"),
    }
    conn.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn topology_is_declared_again_on_every_session() {
    let q = unique("pub-topo");
    let (proxy, conn) = through_proxy(|c| c.topology(Topology::new().queue(Queue::new(&q)))).await;
    let setup = direct().await;
    setup.delete_queue(&q).await.unwrap();
    assert!(setup.queue_info(&q).await.is_err(), "deleted");
    proxy.cut_all();
    assert!(
        eventually(GUARD, || conn.reconnects() >= 1
            && conn.state().is_connected())
        .await
    );
    // Publishing to it works again: the queue was declared before the session was announced.
    let p = Publisher::new(&conn, PublisherConfig::default()).unwrap();
    p.publish_confirmed(seq_message(&q, 0, 10)).await.unwrap();
    assert_eq!(setup.queue_info(&q).await.unwrap().messages, 1);
    p.close(Duration::from_secs(5)).await;
    conn.close().await;
    setup.delete_queue(&q).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_published_while_disconnected_go_after_the_unconfirmed_ones() {
    // A publish accepted during an outage must not overtake older unconfirmed messages.
    let q = unique("pub-outage-order");
    let (proxy, conn) = through_proxy(|c| c.topology(Topology::new().queue(Queue::new(&q)))).await;
    let p = Publisher::new(&conn, PublisherConfig::default()).unwrap();
    proxy.blackhole(true);
    let mut cs = Vec::new();
    for i in 0..100 {
        cs.push(p.publish(seq_message(&q, i, 10)).await.unwrap());
    }
    proxy.refuse_for(Duration::from_secs(3600));
    proxy.cut_all();
    proxy.blackhole(false);
    for i in 100..200 {
        cs.push(p.publish(seq_message(&q, i, 10)).await.unwrap());
    }
    proxy.refuse_for(Duration::ZERO);
    for c in cs {
        c.await.unwrap();
    }
    let got = drain(&conn, &q, 200, Duration::from_secs(3)).await;
    let mut first = Vec::new();
    let mut seen = BTreeSet::new();
    for (_, b) in &got {
        let s = seq_of(b);
        if seen.insert(s) {
            first.push(s);
        }
    }
    assert_eq!(first, (0..200).collect::<Vec<_>>());
    p.close(Duration::from_secs(5)).await;
    conn.delete_queue(&q).await.unwrap();
    conn.close().await;
}
