//! A real 3-node RabbitMQ cluster (private nodes of our own, never the shared broker) and
//! quorum queues under node loss: (a) the leader killed with `kill -9` in the middle of a
//! publish burst, (b) consumers following a leader change, (c) a minority node's app stopped
//! while publishing through it, (d) the majority down, then back, (e) the idempotent consumer's
//! retry and dead-letter path (quorum retry queues) across the loss of their leader.
//!
//! One `#[tokio::test]` runs every scenario in sequence on ONE cluster: three VMs take ~17 s
//! to start and join on this 2-core machine, cargo runs a binary's tests in parallel, and a
//! cluster shared between tests through a `static` would never be dropped (statics are not),
//! so nodes would outlive a failed run. Owned by one test, the cluster is torn down by its
//! `Drop` however the test ends (panic included). Each scenario prints what it does as
//! `[cluster] …` (`cargo test --test cluster -- --nocapture`), so a failure says which step.
//! The binary's other test needs no cluster (the shared broker): it runs alongside.

mod support;

use rabbit_once::headers::{ATTEMPTS_HEADER, REASON_HEADER};
use rabbit_once::{
    Connection, ConnectionConfig, Consumer, ConsumerConfig, Publisher, PublisherConfig, Queue,
    QueueType, RetryPolicy, Subscription, SubscriptionConfig, Topology,
};
use rabbit_once_testkit::Cluster;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use support::consumer::{Ledger, TestDb, sqlite};
use support::*;

/// Bound of every wait (a guard against hanging, never a timing assertion).
const GUARD: Duration = Duration::from_secs(90);
/// Body size of the test messages.
const SIZE: usize = 200;

fn step(what: impl std::fmt::Display) {
    eprintln!("[cluster] {what}");
}

/// The fast-reconnecting test config, given every endpoint (tried in this order).
fn cluster_config(uris: &[String]) -> ConnectionConfig {
    ConnectionConfig::from_uris(uris)
        .unwrap()
        .name(unique("cluster-test"))
        .heartbeat(Duration::from_secs(2))
        .connect_timeout(Duration::from_secs(5))
        .backoff(rabbit_once::Backoff::new(
            Duration::from_millis(20),
            Duration::from_millis(500),
            0.5,
        ))
}

fn quorum(q: &str) -> Queue {
    Queue::new(q).queue_type(QueueType::Quorum)
}

/// A node of the cluster other than `not` (the next one round).
fn other(cluster: &Cluster, not: usize) -> usize {
    (not + 1) % cluster.len()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quorum_queues_on_a_three_node_cluster_lose_nothing_when_nodes_fail() {
    assert!(
        BrokerNode::available(),
        "RabbitMQ's scripts are needed for private nodes"
    );
    let started = std::time::Instant::now();
    let cluster = Cluster::start(3).await.expect("a 3-node cluster starts");
    step(format_args!(
        "3 nodes joined in {:?}: {:?}",
        started.elapsed(),
        cluster.nodes().iter().map(|n| n.name()).collect::<Vec<_>>()
    ));

    leader_killed_mid_burst(&cluster).await;
    consumers_follow_a_leader_change(&cluster).await;
    minority_app_stopped_while_publishing(&cluster).await;
    majority_down_then_back(&cluster).await;
    retry_path_across_a_node_loss(&cluster).await;

    step(format_args!(
        "all scenarios done in {:?}",
        started.elapsed()
    ));
}

/// The single-node side of the publisher's answer to a stuck channel (scenario a), on the
/// shared broker: a queue that holds one message and refuses more (`reject-publish`) nacks the
/// rest; each nacked message goes out again on a fresh channel, and every one is confirmed
/// once the queue makes room — read back, each seq under its confirmed id.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nacked_messages_go_out_again_on_a_fresh_channel() {
    let q = unique("cl-nack");
    let conn = Connection::connect(
        support::config(&broker_uri()).topology(
            Topology::new().queue(
                Queue::new(&q)
                    .max_length(1)
                    .overflow(rabbit_once::Overflow::RejectPublish),
            ),
        ),
    )
    .await
    .unwrap();
    let p = Publisher::new(
        &conn,
        PublisherConfig::default()
            .nack_retries(1000)
            .nack_backoff(rabbit_once::Backoff::new(
                Duration::from_millis(20),
                Duration::from_millis(100),
                0.5,
            )),
    )
    .unwrap();
    let first = p.publish_confirmed(seq_message(&q, 0, 10)).await.unwrap();
    let mut cs = Vec::new();
    for i in 1..6 {
        cs.push((i, p.publish(seq_message(&q, i, 10)).await.unwrap()));
    }
    assert!(
        eventually(GUARD, || p.stats().nacks >= 2 && p.stats().channels >= 2).await,
        "the full queue nacks, the publisher takes a fresh channel: {:?}",
        p.stats()
    );
    // Make room one message at a time: each nacked message gets in when its turn comes.
    let mut got = Vec::new();
    let mut sub = Subscription::start(&conn, SubscriptionConfig::new(&q).prefetch(1)).unwrap();
    while got.len() < 6 {
        let d = tokio::time::timeout(GUARD, sub.recv())
            .await
            .unwrap()
            .unwrap();
        got.push((
            d.message_id().unwrap_or_default().to_string(),
            seq_of(d.body()),
        ));
        d.ack();
    }
    let mut ids = HashMap::from([(0, first.message_id)]);
    for (i, c) in cs {
        ids.insert(
            i,
            tokio::time::timeout(GUARD, c)
                .await
                .unwrap()
                .unwrap()
                .message_id,
        );
    }
    sub.close(Duration::from_secs(1)).await;
    let seqs: BTreeSet<u64> = got.iter().map(|(_, s)| *s).collect();
    assert_eq!(
        seqs,
        (0..6).collect::<BTreeSet<_>>(),
        "every seq, once: {got:?}"
    );
    for (id, s) in &got {
        assert_eq!(Some(id), ids.get(s), "seq {s} under its confirmed id");
    }
    let stats = p.stats();
    assert_eq!((stats.confirmed, stats.failed), (6, 0), "{stats:?}");
    p.close(Duration::from_secs(5)).await;
    let _ = conn.delete_queue(&q).await;
    conn.close().await;
}

/// What a burst ended with: seq → message_id of every confirmed message, and the seqs whose
/// confirmation failed, with the error.
#[derive(Debug, Default)]
struct Outcome {
    ids: HashMap<u64, String>,
    failed: Vec<(u64, String)>,
}

/// Publishes `n` messages with seqs `from..from + n` as fast as the publisher takes them,
/// and awaits every confirmation (each within [`GUARD`]).
fn burst(
    p: &Publisher,
    q: &str,
    from: u64,
    n: u64,
    confirmed: Arc<AtomicU64>,
) -> tokio::task::JoinHandle<Outcome> {
    let (p, q) = (p.clone(), q.to_string());
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
                    Ok(Err(e)) => out.failed.push((seq, e.to_string())),
                    Err(_) => out
                        .failed
                        .push((seq, format!("unconfirmed after {GUARD:?}"))),
                }
            }
            out
        });
        for i in from..from + n {
            let c: rabbit_once::Confirmation = p.publish(seq_message(&q, i, SIZE)).await.unwrap();
            tx.send((i, c)).unwrap();
        }
        drop(tx);
        waiter.await.unwrap()
    })
}

/// Scenario a: two publishers — one connected to the queue's leader node, one to a follower,
/// both given every node's endpoint — publish a burst of persistent messages to a quorum
/// queue; the leader node is killed with `kill -9` mid-burst. Every message either publisher
/// reports confirmed is read back through a third connection on a surviving node, under the
/// message_id it was confirmed with; no seq is missing. Then the node is started again and
/// rejoins.
async fn leader_killed_mid_burst(cluster: &Cluster) {
    const N: u64 = 3000;
    let q = unique("cl-burst");
    step(format_args!("a. leader killed mid-burst: queue {q}"));
    let topo = Topology::new().queue(quorum(&q));
    // Declared from node 0: with the default leader locator (client-local) node 0 leads.
    let setup = Connection::connect(cluster_config(&cluster.proxy_uris()).topology(topo.clone()))
        .await
        .unwrap();
    let leader = cluster
        .wait_leader(&q, None, GUARD)
        .await
        .expect("the new quorum queue has a leader");
    let follower = other(cluster, leader);
    step(format_args!(
        "a. leader is node {leader}, members {:?}",
        cluster.quorum_status(&q).await.unwrap()
    ));

    let on_leader =
        Connection::start(cluster_config(&cluster.proxy_uris_from(leader)).topology(topo.clone()))
            .unwrap();
    let on_follower = Connection::start(
        cluster_config(&cluster.proxy_uris_from(follower)).topology(topo.clone()),
    )
    .unwrap();
    let pa = Publisher::new(&on_leader, PublisherConfig::default()).unwrap();
    let pb = Publisher::new(&on_follower, PublisherConfig::default()).unwrap();
    let confirmed = Arc::new(AtomicU64::new(0));
    let a = burst(&pa, &q, 0, N, confirmed.clone());
    let b = burst(&pb, &q, N, N, confirmed.clone());

    assert!(
        eventually(GUARD, || confirmed.load(Ordering::Relaxed) >= N / 2).await,
        "the burst gets going"
    );
    let at_kill = confirmed.load(Ordering::Relaxed);
    cluster.kill9(leader).await.unwrap();
    let killed = std::time::Instant::now();
    step(format_args!(
        "a. killed node {leader} (the leader) with {at_kill} of {} confirmed",
        2 * N
    ));
    let new_leader = cluster
        .wait_leader(&q, Some(leader), GUARD)
        .await
        .expect("a new leader is elected");
    step(format_args!(
        "a. new leader: node {new_leader}, seen {:?} after the kill; {:?}",
        killed.elapsed(),
        cluster.quorum_status(&q).await
    ));

    let oa = tokio::time::timeout(GUARD, a).await.unwrap().unwrap();
    let ob = tokio::time::timeout(GUARD, b).await.unwrap().unwrap();
    let (sa, sb) = (pa.stats(), pb.stats());
    step(format_args!(
        "a. {} + {} confirmed, {} + {} failed; publisher on the leader: {sa:?}, reconnects {}; \
         on a follower: {sb:?}, reconnects {}",
        oa.ids.len(),
        ob.ids.len(),
        oa.failed.len(),
        ob.failed.len(),
        on_leader.reconnects(),
        on_follower.reconnects()
    ));
    assert!(
        oa.failed.is_empty() && ob.failed.is_empty(),
        "failed: {:?} {:?}",
        &oa.failed[..oa.failed.len().min(3)],
        &ob.failed[..ob.failed.len().min(3)]
    );
    let mut ids = oa.ids;
    ids.extend(ob.ids);
    assert_eq!(ids.len() as u64, 2 * N, "every accepted message confirmed");
    assert!(
        on_leader.reconnects() >= 1,
        "the publisher on the killed node moved to another node"
    );
    pa.close(Duration::from_secs(5)).await;
    pb.close(Duration::from_secs(5)).await;
    on_leader.close().await;
    on_follower.close().await;

    // Read back through a surviving node, direct (not through any proxy).
    let reader = Connection::connect(cluster_config(&[cluster.uri(new_leader)]))
        .await
        .unwrap();
    let got = drain(&reader, &q, ids.len(), Duration::from_secs(5)).await;
    let mut seen = BTreeSet::new();
    for (id, body) in &got {
        let s = seq_of(body);
        assert_eq!(Some(id), ids.get(&s), "seq {s} read under its confirmed id");
        seen.insert(s);
    }
    assert_eq!(
        seen,
        (0..2 * N).collect::<BTreeSet<_>>(),
        "every confirmed message is readable after the leader's death"
    );
    let dups = got.len() as u64 - 2 * N;
    assert!(
        dups <= sa.republished + sb.republished,
        "copies beyond one per seq ({dups}) come from re-publishes only"
    );
    step(format_args!(
        "a. read back {} messages through node {new_leader}: all {} seqs, {dups} duplicate copies \
         (re-publishes of unconfirmed messages)",
        got.len(),
        2 * N
    ));
    let _ = reader.delete_queue(&q).await;
    reader.close().await;
    setup.close().await;

    cluster.restart(leader).await.unwrap();
    cluster
        .wait_all_running(GUARD)
        .await
        .unwrap_or_else(|e| panic!("node {leader} rejoins: {e}"));
    step(format_args!("a. node {leader} restarted and rejoined"));
}

/// A `Subscription` that records how often it received each seq, acking every delivery.
struct Recorder {
    conn: Connection,
    received: Arc<std::sync::Mutex<BTreeMap<u64, u32>>>,
    task: tokio::task::JoinHandle<Subscription>,
}

impl Recorder {
    fn start(conn: Connection, q: &str) -> Self {
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

    fn seqs(&self) -> BTreeSet<u64> {
        self.received.lock().unwrap().keys().copied().collect()
    }

    /// Closes its connection (the stream ends); the subscription's counters and how many
    /// copies beyond one per seq it received.
    async fn finish(self) -> (rabbit_once::SubscriptionStats, u32) {
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
struct Applier {
    conn: Connection,
    consumer: Consumer,
    store: rabbit_once::SqliteStore,
    _db: TempDb,
}

impl Applier {
    async fn start(conn: Connection, q: &str) -> Self {
        Self::with(conn, support::consumer::config(q), Ledger::default()).await
    }

    async fn with(conn: Connection, config: ConsumerConfig, handler: Ledger) -> Self {
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
    async fn finish(self, want: &BTreeSet<String>) -> rabbit_once::ConsumerStats {
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
async fn consumers_follow_a_leader_change(cluster: &Cluster) {
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

/// Scenario c: a minority node's app is stopped (`stop_app`) and started again while a
/// publisher connected to it keeps publishing to a quorum queue led by another node: the
/// publisher moves to another node and goes on (a minority down keeps the queue available),
/// goes on while the node rejoins, and every message is confirmed and readable once.
async fn minority_app_stopped_while_publishing(cluster: &Cluster) {
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
async fn majority_down_then_back(cluster: &Cluster) {
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

/// Scenario e: the idempotent consumer of a quorum work queue (`queue_type(Quorum)`: its retry
/// and dead-letter queues are quorum queues that dead-letter at-least-once), connected to node
/// 1, every queue led by node 0. Messages that fail once are parked in the retry queue (a 5 s
/// TTL); node 0 — the retry queue's leader — is killed with `kill -9` while they wait there.
/// A new leader takes over, the TTL runs out, the messages come back to the work queue and are
/// applied exactly once; messages that always fail go through the retry queue twice and are
/// dead-lettered once each, with their headers. Then node 0 is restarted.
async fn retry_path_across_a_node_loss(cluster: &Cluster) {
    const N: u64 = 200;
    let q = unique("cl-retry");
    let (leader, consumer_node) = (0, 1);
    step(format_args!("e. retry path across a node loss: queue {q}"));
    let cfg = ConsumerConfig::new(&q)
        .queue_type(QueueType::Quorum)
        .retry(RetryPolicy::new(3, vec![Duration::from_secs(5)]))
        .store_backoff(rabbit_once::Backoff::new(
            Duration::from_millis(50),
            Duration::from_millis(300),
            0.2,
        ));
    let retry_q = format!("{q}.retry.5000");
    // Declared from node 0: it leads them all (client-local placement).
    let setup =
        Connection::connect(cluster_config(&[cluster.uri(leader)]).topology(cfg.topology()))
            .await
            .unwrap();
    for name in cfg.queues() {
        assert_eq!(
            cluster.wait_leader(&name, None, GUARD).await.unwrap(),
            leader,
            "{name} is led by node {leader}"
        );
    }
    let ids: Vec<String> = (0..N).map(|i| format!("{q}-{i}")).collect();
    let flaky: BTreeSet<String> = ids.iter().step_by(10).cloned().collect();
    let doomed: BTreeSet<String> = ids.iter().skip(5).step_by(100).cloned().collect();
    let handler = Ledger {
        fail_until: Arc::new(flaky.iter().map(|id| (id.clone(), 2)).collect()),
        always_fail: Arc::new(doomed.iter().cloned().collect()),
        ..Default::default()
    };
    let con = Applier::with(
        Connection::start(cluster_config(&cluster.proxy_uris_from(consumer_node))).unwrap(),
        cfg.clone(),
        handler,
    )
    .await;
    support::consumer::publish(&setup, &q, (0..N).map(|i| (ids[i as usize].clone(), i))).await;
    let failing = (flaky.len() + doomed.len()) as u64;
    assert!(
        eventually(GUARD, || {
            let s = con.consumer.stats();
            s.retried >= failing && s.applied >= N - failing
        })
        .await,
        "each message applied or parked for a retry: {:?}",
        con.consumer.stats()
    );
    let parked = setup.queue_info(&retry_q).await.unwrap().messages;
    let at_kill = con.consumer.stats();
    assert_eq!(
        (parked as u64, at_kill.applied),
        (failing, N - failing),
        "the failed ones wait in the retry queue: {at_kill:?}"
    );
    setup.close().await;
    cluster.kill9(leader).await.unwrap();
    step(format_args!(
        "e. killed node {leader} (leader of every queue) with {parked} messages in {retry_q}"
    ));
    let new_leader = cluster
        .wait_leader(&retry_q, Some(leader), GUARD)
        .await
        .unwrap();
    step(format_args!("e. {retry_q}: new leader node {new_leader}"));
    let done = eventually(GUARD, || {
        let s = con.consumer.stats();
        s.applied >= N - doomed.len() as u64 && s.dead_lettered >= doomed.len() as u64
    })
    .await;
    assert!(done, "after the leader's death: {:?}", con.consumer.stats());
    let want: BTreeSet<String> = ids
        .iter()
        .filter(|id| !doomed.contains(*id))
        .cloned()
        .collect();
    let stats = con.finish(&want).await;
    assert_eq!(stats.dead_lettered, doomed.len() as u64, "{stats:?}");
    assert_eq!(
        stats.retried,
        (flaky.len() + 2 * doomed.len()) as u64,
        "{stats:?}"
    );
    step(format_args!(
        "e. with node {leader} down: {} applied once each ({} after a retry through the new \
         leader), {} dead-lettered; {stats:?}",
        stats.applied,
        flaky.len(),
        stats.dead_lettered
    ));

    // The dead letters, read through a surviving node: each doomed id once, with its headers.
    let reader = Connection::connect(cluster_config(&[cluster.uri(new_leader)]))
        .await
        .unwrap();
    let mut sub =
        Subscription::start(&reader, SubscriptionConfig::new(format!("{q}.dead"))).unwrap();
    let mut dead = BTreeSet::new();
    while dead.len() < doomed.len() {
        let d = tokio::time::timeout(GUARD, sub.recv())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(d.header(ATTEMPTS_HEADER).and_then(|v| v.as_i64()), Some(3));
        let reason = d.header(REASON_HEADER).and_then(|v| v.as_str()).unwrap();
        assert!(reason.contains("always fails"), "{reason}");
        assert!(
            dead.insert(d.message_id().unwrap().to_string()),
            "dead-lettered once"
        );
        d.ack();
    }
    assert_eq!(dead, doomed);
    sub.close(Duration::from_secs(1)).await;
    for name in cfg.queues() {
        let _ = reader.delete_queue(&name).await;
    }
    reader.close().await;
    cluster.restart(leader).await.unwrap();
    cluster
        .wait_all_running(GUARD)
        .await
        .unwrap_or_else(|e| panic!("node {leader} rejoins: {e}"));
    step(format_args!("e. node {leader} restarted and rejoined"));
}
