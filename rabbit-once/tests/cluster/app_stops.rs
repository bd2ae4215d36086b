//! Scenarios c and d: a minority node's app stopped while publishing through it; the majority down, then back.

use super::*;

/// Scenario c: a minority node's app is stopped (`stop_app`) and started again while a
/// publisher connected to it keeps publishing to a quorum queue led by another node: the
/// publisher moves to another node and goes on (a minority down keeps the queue available),
/// goes on while the node rejoins, and every message is confirmed and readable once.
pub(super) async fn minority_app_stopped_while_publishing(cluster: &Cluster) {
    let q = unique("cl-minority");
    let leader = 0;
    let victim = 2;
    step(format_args!(
        "c. stop_app of a non-leader node while publishing: queue {q}"
    ));
    let topo = Topology::new().queue(quorum(&q));
    let setup = Connection::connect(cluster_config(&[cluster.uri(leader)]).topology(topo.clone()))
        .await
        .unwrap();
    assert_eq!(cluster.wait_leader(&q, None, GUARD).await.unwrap(), leader);
    let conn =
        Connection::start(cluster_config(&cluster.proxy_uris_from(victim)).topology(topo)).unwrap();
    let flow = Flow::start(&conn, &q);
    flow.more(1000).await;
    cluster.stop_app(victim).await.unwrap();
    step(format_args!(
        "c. stopped the app of node {victim} with {} confirmed",
        flow.confirmed()
    ));
    assert!(
        eventually(GUARD, || conn.reconnects() >= 1).await,
        "the publisher moved off node {victim}"
    );
    flow.more(1000).await;
    step(format_args!(
        "c. 1000 more confirmed on another node, {} in all, with node {victim} down; members {:?}",
        flow.confirmed(),
        cluster.quorum_status(&q).await
    ));
    cluster.start_app(victim).await.unwrap();
    step(format_args!("c. started the app of node {victim} again"));
    flow.more(1000).await;
    let (n, out, stats) = flow.finish().await;
    assert!(
        out.failed.is_empty(),
        "failed: {:?}",
        &out.failed[..out.failed.len().min(3)]
    );
    let ids = out.ids;
    assert_eq!(ids.len() as u64, n, "every accepted message confirmed");
    step(format_args!(
        "c. all {n} confirmed: {} republished, {} nacks, reconnects {}",
        stats.republished,
        stats.nacks,
        conn.reconnects()
    ));
    conn.close().await;
    let got = drain(&setup, &q, n as usize, Duration::from_secs(5)).await;
    let mut seen = BTreeSet::new();
    for (id, b) in &got {
        let s = seq_of(b);
        assert_eq!(Some(id), ids.get(&s), "seq {s} read under its confirmed id");
        seen.insert(s);
    }
    assert_eq!(seen, (0..n).collect::<BTreeSet<_>>(), "every seq readable");
    assert!(got.len() as u64 - n <= stats.republished);
    step(format_args!(
        "c. read back {} messages, all {n} seqs",
        got.len()
    ));
    let _ = setup.delete_queue(&q).await;
    setup.close().await;
}

/// A publisher publishing without end (about 1,000 messages a second) until stopped,
/// counting confirmations and failures as they come.
struct Flow {
    publisher: Publisher,
    stop: Arc<std::sync::atomic::AtomicBool>,
    confirmed: Arc<AtomicU64>,
    failed: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<(u64, Outcome)>,
}

impl Flow {
    fn start(conn: &Connection, q: &str) -> Self {
        let publisher = Publisher::new(conn, PublisherConfig::default()).unwrap();
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (confirmed, failed) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
        let task = {
            let (p, q) = (publisher.clone(), q.to_string());
            let (stop, confirmed, failed) = (stop.clone(), confirmed.clone(), failed.clone());
            tokio::spawn(async move {
                let (tx, mut rx) =
                    tokio::sync::mpsc::unbounded_channel::<(u64, rabbit_once::Confirmation)>();
                let waiter = tokio::spawn(async move {
                    let mut out = Outcome::default();
                    while let Some((seq, c)) = rx.recv().await {
                        match tokio::time::timeout(GUARD, c).await {
                            Ok(Ok(ok)) => {
                                confirmed.fetch_add(1, Ordering::Relaxed);
                                out.ids.insert(seq, ok.message_id);
                            }
                            Ok(Err(e)) => {
                                failed.fetch_add(1, Ordering::Relaxed);
                                out.failed.push((seq, e.to_string()));
                            }
                            Err(_) => out
                                .failed
                                .push((seq, format!("unconfirmed after {GUARD:?}"))),
                        }
                    }
                    out
                });
                let mut i = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    tx.send((i, p.publish(seq_message(&q, i, SIZE)).await.unwrap()))
                        .unwrap();
                    i += 1;
                    if i.is_multiple_of(100) {
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                }
                drop(tx);
                (i, waiter.await.unwrap())
            })
        };
        Flow {
            publisher,
            stop,
            confirmed,
            failed,
            task,
        }
    }

    fn confirmed(&self) -> u64 {
        self.confirmed.load(Ordering::Relaxed)
    }

    fn failed(&self) -> u64 {
        self.failed.load(Ordering::Relaxed)
    }

    /// Waits until `n` more than now are confirmed.
    async fn more(&self, n: u64) {
        let from = self.confirmed();
        assert!(
            eventually(GUARD, || self.confirmed() >= from + n).await,
            "{n} more confirmed after {from}: {:?}",
            self.publisher.stats()
        );
    }

    /// Stops publishing and awaits every verdict: (messages published, outcome).
    async fn finish(self) -> (u64, Outcome, rabbit_once::PublisherStats) {
        self.stop.store(true, Ordering::Relaxed);
        let (n, out) = tokio::time::timeout(GUARD, self.task)
            .await
            .unwrap()
            .unwrap();
        let stats = self.publisher.stats();
        self.publisher.close(Duration::from_secs(5)).await;
        (n, out, stats)
    }
}

/// Scenario d: the majority of the cluster down. A publisher and a Subscription on node 0 (the
/// queue's leader); the apps of nodes 1 and 2 are stopped, one after the other: with one node
/// of three the quorum queue can neither confirm nor deliver — the publisher keeps accepting
/// (buffer, then back-pressure) and no message fails; the consumer idles. Both apps are
/// started again: every message is confirmed and received, none lost.
pub(super) async fn majority_down_then_back(cluster: &Cluster) {
    let q = unique("cl-majority");
    let leader = 0;
    step(format_args!("d. majority down, then back: queue {q}"));
    let topo = Topology::new().queue(quorum(&q));
    let conn = Connection::connect(
        cluster_config(&cluster.proxy_uris_from(leader)).topology(topo.clone()),
    )
    .await
    .unwrap();
    assert_eq!(cluster.wait_leader(&q, None, GUARD).await.unwrap(), leader);
    let sub_conn =
        Connection::connect(cluster_config(&cluster.proxy_uris_from(leader)).topology(topo))
            .await
            .unwrap();
    let sub = Recorder::start(sub_conn, &q);
    let flow = Flow::start(&conn, &q);
    flow.more(1000).await;
    cluster.stop_app(1).await.unwrap();
    flow.more(500).await;
    step(format_args!(
        "d. node 1 stopped, still confirming: {} confirmed",
        flow.confirmed()
    ));
    cluster.stop_app(2).await.unwrap();
    let (at_stop, received_at_stop) = (flow.confirmed(), sub.seqs().len());
    step(format_args!(
        "d. node 2 stopped too (majority down) with {at_stop} confirmed, {received_at_stop} received"
    ));
    // Let the outage last: the publisher must neither fail nor lose anything meanwhile.
    tokio::time::sleep(Duration::from_secs(8)).await;
    let stats = flow.publisher.stats();
    step(format_args!(
        "d. after 8 s without a majority: {} confirmed (+{}), {} failed, {} received (+{}); {stats:?}",
        flow.confirmed(),
        flow.confirmed() - at_stop,
        flow.failed(),
        sub.seqs().len(),
        sub.seqs().len() - received_at_stop
    ));
    assert_eq!(
        flow.failed(),
        0,
        "no message fails while the majority is down"
    );
    cluster.start_app(1).await.unwrap();
    cluster.start_app(2).await.unwrap();
    step("d. nodes 1 and 2 started again");
    flow.more(1000).await;
    let (n, out, stats) = flow.finish().await;
    assert!(
        out.failed.is_empty(),
        "failed: {:?}",
        &out.failed[..out.failed.len().min(3)]
    );
    assert_eq!(out.ids.len() as u64, n, "every accepted message confirmed");
    let all: BTreeSet<u64> = (0..n).collect();
    assert!(
        eventually(GUARD, || sub.seqs() == all).await,
        "the consumer received every seq: missing {:?}…",
        all.difference(&sub.seqs()).take(5).collect::<Vec<_>>()
    );
    let (sstats, dups) = sub.finish().await;
    step(format_args!(
        "d. all {n} confirmed ({} republished, {} nacks) and received ({dups} redelivered \
         copies, subscribed {} times)",
        stats.republished, stats.nacks, sstats.subscribed
    ));
    let _ = conn.delete_queue(&q).await;
    conn.close().await;
}
