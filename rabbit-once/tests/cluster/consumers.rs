//! Scenario b: a `Subscription` and an idempotent `Consumer` on the leader's node and on a follower, through a leader change.

use super::*;

/// A `Subscription` that records how often it received each seq, acking every delivery.
pub(super) struct Recorder {
    conn: Connection,
    received: Arc<std::sync::Mutex<BTreeMap<u64, u32>>>,
    task: tokio::task::JoinHandle<Subscription>,
}

impl Recorder {
    pub(super) fn start(conn: Connection, q: &str) -> Self {
        let mut sub = Subscription::start(&conn, SubscriptionConfig::new(q).prefetch(200)).unwrap();
        let received = Arc::new(std::sync::Mutex::new(BTreeMap::<u64, u32>::new()));
        let task = {
            let received = received.clone();
            tokio::spawn(async move {
                while let Some(d) = sub.recv().await {
                    *received
                        .lock()
                        .unwrap()
                        .entry(seq_of(d.body()))
                        .or_default() += 1;
                    d.ack();
                }
                sub
            })
        };
        Recorder {
            conn,
            received,
            task,
        }
    }

    pub(super) fn seqs(&self) -> BTreeSet<u64> {
        self.received.lock().unwrap().keys().copied().collect()
    }

    /// Closes its connection (the stream ends); the subscription's counters and how many
    /// copies beyond one per seq it received.
    pub(super) async fn finish(self) -> (rabbit_once::SubscriptionStats, u32) {
        self.conn.close().await;
        let mut sub = tokio::time::timeout(GUARD, self.task)
            .await
            .unwrap()
            .unwrap();
        sub.close(Duration::from_secs(1)).await;
        let dups = self.received.lock().unwrap().values().map(|n| n - 1).sum();
        (sub.stats(), dups)
    }
}

/// An idempotent `Consumer` with a SQLite dedup store of its own, recording each application
/// (the `applied` table has no unique key: a message applied twice shows as two rows).
pub(super) struct Applier {
    pub(super) conn: Connection,
    pub(super) consumer: Consumer,
    pub(super) store: rabbit_once::SqliteStore,
    _db: TempDb,
}

impl Applier {
    pub(super) async fn start(conn: Connection, q: &str) -> Self {
        Self::with(conn, support::consumer::config(q), Ledger::default()).await
    }

    pub(super) async fn with(conn: Connection, config: ConsumerConfig, handler: Ledger) -> Self {
        let (store, db) = sqlite().await;
        let consumer = Consumer::start(&conn, store.clone(), handler, config)
            .await
            .unwrap();
        Applier {
            conn,
            consumer,
            store,
            _db: db,
        }
    }

    /// Closes it and checks that every id in `want` was applied exactly once.
    pub(super) async fn finish(self, want: &BTreeSet<String>) -> rabbit_once::ConsumerStats {
        let stats = self.consumer.close(Duration::from_secs(5)).await;
        let applied = self.store.applied().await;
        assert_eq!(
            &applied.keys().cloned().collect::<BTreeSet<_>>(),
            want,
            "every message applied"
        );
        let twice: Vec<_> = applied.iter().filter(|(_, n)| **n > 1).collect();
        assert!(twice.is_empty(), "applied twice: {twice:?}");
        self.conn.close().await;
        stats
    }
}

/// Scenario b: four consumers on four quorum queues, all led by node L: a `Subscription` and
/// an idempotent `Consumer` (SQLite dedup store) connected to L, and the same pair connected to
/// a follower F — every one given all three endpoints — while a publisher on the third node
/// keeps publishing to all four queues. L is killed with `kill -9`: the consumers on L lose
/// their connection and move to a surviving node; those on F see their queues' leader change
/// under them. While L is still down: both Subscriptions receive every seq, the Consumer on F
/// applies every message exactly once. The Consumer on L declared its retry and dead-letter
/// queues — classic queues — on L; until L is back its connection cannot declare them again
/// and waits (it must not give up); once L is back it applies every message exactly once too.
pub(super) async fn consumers_follow_a_leader_change(cluster: &Cluster) {
    const N: u64 = 2000;
    let leader = 1;
    let follower = other(cluster, leader);
    let publisher_node = other(cluster, follower);
    let [sl, sf, cl, cf] = ["cl-sub-l", "cl-sub-f", "cl-con-l", "cl-con-f"].map(unique);
    step(format_args!(
        "b. consumers follow a leader change: queues {sl} {sf} {cl} {cf}"
    ));
    let topo = [&sl, &sf, &cl, &cf]
        .into_iter()
        .fold(Topology::new(), |t, q| t.queue(quorum(q)));
    // Declared from node `leader` (client-local leader placement).
    let setup = Connection::connect(cluster_config(&[cluster.uri(leader)]).topology(topo.clone()))
        .await
        .unwrap();
    for q in [&sl, &sf, &cl, &cf] {
        assert_eq!(
            cluster.wait_leader(q, None, GUARD).await.unwrap(),
            leader,
            "{q} is led by the node that declared it"
        );
    }
    step(format_args!(
        "b. all led by node {leader}; consumers on nodes {leader} and {follower}, publisher on \
         node {publisher_node}"
    ));
    let on = |node: usize| {
        Connection::start(cluster_config(&cluster.proxy_uris_from(node)).topology(topo.clone()))
            .unwrap()
    };
    let sub_l = Recorder::start(on(leader), &sl);
    let sub_f = Recorder::start(on(follower), &sf);
    let con_l = Applier::start(on(leader), &cl).await;
    let con_f = Applier::start(on(follower), &cf).await;

    // A publisher on the third node, to all four queues.
    let pub_conn = on(publisher_node);
    let p = Publisher::new(&pub_conn, PublisherConfig::default()).unwrap();
    let published = Arc::new(AtomicU64::new(0));
    let publishing = {
        let (p, published) = (p.clone(), published.clone());
        let qs = [sl.clone(), sf.clone(), cl.clone(), cf.clone()];
        tokio::spawn(async move {
            let mut cs = Vec::new();
            for i in 0..N {
                for q in &qs {
                    let m = seq_message(q, i, SIZE).with_message_id(format!("{q}-{i}"));
                    cs.push((i, p.publish(m).await.unwrap()));
                }
                published.store(i + 1, Ordering::Relaxed);
                // Paced a little, so the consumers are mid-stream when the node dies.
                if i % 50 == 49 {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            }
            let mut failed = Vec::new();
            for (i, c) in cs {
                if let Err(e) = tokio::time::timeout(GUARD, c).await.unwrap() {
                    failed.push((i, e.to_string()));
                }
            }
            failed
        })
    };

    let progress = || {
        format!(
            "published {}, received {} (on L) {} (on F), applied {} (on L) {} (on F)",
            published.load(Ordering::Relaxed),
            sub_l.seqs().len(),
            sub_f.seqs().len(),
            con_l.consumer.stats().applied,
            con_f.consumer.stats().applied
        )
    };
    assert!(
        eventually(GUARD, || {
            let min = [
                sub_l.seqs().len() as u64,
                sub_f.seqs().len() as u64,
                con_l.consumer.stats().applied,
                con_f.consumer.stats().applied,
            ]
            .into_iter()
            .min();
            min >= Some(N / 4)
        })
        .await,
        "all four consume before the fault: {}",
        progress()
    );
    cluster.kill9(leader).await.unwrap();
    step(format_args!(
        "b. killed node {leader} (the leader): {}",
        progress()
    ));
    for q in [&sl, &sf, &cl, &cf] {
        let l = cluster.wait_leader(q, Some(leader), GUARD).await.unwrap();
        step(format_args!("b. {q}: new leader node {l}"));
    }
    let failed = tokio::time::timeout(GUARD, publishing)
        .await
        .unwrap()
        .unwrap();
    assert!(
        failed.is_empty(),
        "publishes failed: {:?}",
        &failed[..failed.len().min(3)]
    );
    step(format_args!("b. all {N} per queue published and confirmed"));

    let all: BTreeSet<u64> = (0..N).collect();
    let ids = |q: &str| (0..N).map(|i| format!("{q}-{i}")).collect::<BTreeSet<_>>();
    let done = eventually(GUARD, || {
        sub_l.seqs() == all && sub_f.seqs() == all && con_f.consumer.stats().applied >= N
    })
    .await;
    assert!(
        done,
        "with node {leader} down: {}; missing on L {:?}…, on F {:?}…",
        progress(),
        all.difference(&sub_l.seqs()).take(5).collect::<Vec<_>>(),
        all.difference(&sub_f.seqs()).take(5).collect::<Vec<_>>()
    );
    step(format_args!(
        "b. with node {leader} still down: {}; the Consumer on L: {:?}",
        progress(),
        con_l.conn.state()
    ));
    assert!(
        !matches!(con_l.conn.state(), rabbit_once::ConnectionState::Failed(_)),
        "the Consumer's connection on the dead node waits, never gives up"
    );
    let (ss_l, dups_l) = sub_l.finish().await;
    let (ss_f, dups_f) = sub_f.finish().await;
    let cs_f = con_f.finish(&ids(&cf)).await;
    step(format_args!(
        "b. Subscription on L: all {N} seqs, {dups_l} redelivered copies, subscribed {} times, \
         cancelled by the broker {} times",
        ss_l.subscribed, ss_l.cancelled_by_broker
    ));
    step(format_args!(
        "b. Subscription on F: all {N} seqs, {dups_f} redelivered copies, subscribed {} times, \
         cancelled by the broker {} times",
        ss_f.subscribed, ss_f.cancelled_by_broker
    ));
    step(format_args!(
        "b. Consumer on F: applied {} once each, {} duplicates skipped, {} delivered",
        cs_f.applied, cs_f.duplicates, cs_f.delivered
    ));

    cluster.restart(leader).await.unwrap();
    step(format_args!("b. node {leader} restarted"));
    assert!(
        eventually(GUARD, || con_l.consumer.stats().applied >= N).await,
        "the Consumer on L after its node came back: {:?}, {:?}",
        con_l.consumer.stats(),
        con_l.conn.state()
    );
    let reconnects = con_l.conn.reconnects();
    let cs_l = con_l.finish(&ids(&cl)).await;
    step(format_args!(
        "b. Consumer on L: applied {} once each, {} duplicates skipped, {} delivered, \
         {reconnects} reconnects",
        cs_l.applied, cs_l.duplicates, cs_l.delivered
    ));

    p.close(Duration::from_secs(5)).await;
    pub_conn.close().await;
    for q in [&sl, &sf]
        .into_iter()
        .cloned()
        .chain(support::consumer::config(&cl).queues())
        .chain(support::consumer::config(&cf).queues())
    {
        let _ = setup.delete_queue(&q).await;
    }
    setup.close().await;
    cluster
        .wait_all_running(GUARD)
        .await
        .unwrap_or_else(|e| panic!("node {leader} rejoins: {e}"));
}
