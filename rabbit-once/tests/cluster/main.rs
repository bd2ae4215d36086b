//! A real 3-node RabbitMQ cluster (private nodes of our own, never the shared broker) and
//! quorum queues under node loss: (a) the leader killed with `kill -9` in the middle of a
//! publish burst, (b) consumers following a leader change, (c) a minority node's app stopped
//! while publishing through it, (d) the majority down, then back, (e) the idempotent consumer's
//! retry and dead-letter path (quorum retry queues) across the loss of their leader, (f) single
//! active consumer across the loss of the active consumer's node, (g) a client-side black hole
//! to one node under a publisher.
//!
//! One `#[tokio::test]` runs every scenario in sequence on ONE cluster: three VMs take ~17 s
//! to start and join on this 2-core machine, cargo runs a binary's tests in parallel, and a
//! cluster shared between tests through a `static` would never be dropped (statics are not),
//! so nodes would outlive a failed run. Owned by one test, the cluster is torn down by its
//! `Drop` however the test ends (panic included). Each scenario prints what it does as
//! `[cluster] …` (`cargo test --test cluster -- --nocapture`), so a failure says which step.
//! The binary's other test needs no cluster (the shared broker): it runs alongside.

#[path = "../support/mod.rs"]
mod support;

mod app_stops;
mod blackhole;
mod burst;
mod consumers;
mod retry;
mod sac;

use app_stops::{majority_down_then_back, minority_app_stopped_while_publishing};
use blackhole::a_black_holed_node_does_not_hold_a_publisher;
use burst::{Outcome, leader_killed_mid_burst};
use consumers::{Applier, Recorder, consumers_follow_a_leader_change};
use retry::retry_path_across_a_node_loss;
use sac::single_active_consumer_across_a_failover;

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
    single_active_consumer_across_a_failover(&cluster).await;
    a_black_holed_node_does_not_hold_a_publisher(&cluster).await;

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
