//! Scenario f: single active consumer on a quorum queue across the loss of the active
//! consumer's node (which also leads the queue).

use super::*;

/// Two idempotent `Consumer`s of one group, sharing one SQLite dedup store, on a quorum queue
/// with `x-single-active-consumer`: A on node L (the queue's leader), started first, is the
/// active one; B on a follower F stands by and receives nothing. The queue holds N messages
/// published before. L is killed with `kill -9` while A is mid-stream: the broker activates B,
/// which goes on from where A's commits ended (what A had in hand comes back first: applied by
/// B, or skipped as a duplicate if A's commit got through). Every message is applied exactly
/// once, and in queue order — which two consumers active at once could not keep.
pub(super) async fn single_active_consumer_across_a_failover(cluster: &Cluster) {
    const N: u64 = 20_000;
    let leader = 2;
    let follower = other(cluster, leader);
    let q = unique("cl-sac");
    step(format_args!(
        "f. single active consumer across a failover: queue {q}"
    ));
    let topo = Topology::new().queue(quorum(&q).single_active_consumer());
    let setup = Connection::connect(cluster_config(&[cluster.uri(leader)]).topology(topo.clone()))
        .await
        .unwrap();
    assert_eq!(
        cluster.wait_leader(&q, None, GUARD).await.unwrap(),
        leader,
        "{q} is led by the node that declared it"
    );
    let p = Publisher::new(&setup, PublisherConfig::default()).unwrap();
    let mut cs = Vec::new();
    for i in 0..N {
        let m = seq_message(&q, i, SIZE).with_message_id(format!("{q}-{i}"));
        cs.push(p.publish(m).await.unwrap());
    }
    for c in cs {
        tokio::time::timeout(GUARD, c).await.unwrap().unwrap();
    }
    p.close(Duration::from_secs(5)).await;
    step(format_args!("f. {N} messages in {q}, led by node {leader}"));

    let (store, _db) = sqlite().await;
    let on = |node: usize| {
        Connection::start(cluster_config(&cluster.proxy_uris_from(node)).topology(topo.clone()))
            .unwrap()
    };
    let config = || support::consumer::config(&q).prefetch(200);
    let (conn_a, conn_b) = (on(leader), on(follower));
    let a = Consumer::start(&conn_a, store.clone(), Ledger::default(), config())
        .await
        .unwrap();
    assert!(
        eventually(GUARD, || a.stats().applied > 0).await,
        "A, first, is active"
    );
    let b = Consumer::start(&conn_b, store.clone(), Ledger::default(), config())
        .await
        .unwrap();
    assert!(
        eventually(GUARD, || a.stats().applied >= N / 4).await,
        "A mid-stream: {:?}",
        a.stats()
    );
    assert_eq!(b.stats().delivered, 0, "B stands by while A is active");
    cluster.kill9(leader).await.unwrap();
    let before = a.stats().applied;
    step(format_args!(
        "f. killed node {leader} (A's node, the leader) after A applied {before}"
    ));
    let l = cluster.wait_leader(&q, Some(leader), GUARD).await.unwrap();
    step(format_args!("f. new leader node {l}"));
    let applied = || a.stats().applied + b.stats().applied;
    assert!(
        eventually(GUARD, || applied() >= N).await,
        "B takes over and finishes: A {:?}, B {:?}",
        a.stats(),
        b.stats()
    );
    let (sa, sb) = (a.stats(), b.stats());
    step(format_args!(
        "f. A applied {} ({} duplicates), B applied {} ({} duplicates)",
        sa.applied, sa.duplicates, sb.applied, sb.duplicates
    ));
    assert!(sb.applied > 0, "B took over: {sb:?}");

    // The order of first applications is the queue's: one consumer active at a time.
    let rows: Vec<(String, i64)> =
        sqlx::query_as("SELECT message_id, seq FROM applied ORDER BY rowid")
            .fetch_all(store.pool())
            .await
            .unwrap();
    let ids: BTreeSet<&str> = rows.iter().map(|(id, _)| id.as_str()).collect();
    assert_eq!(ids.len() as u64, N, "every message applied");
    assert_eq!(rows.len() as u64, N, "none twice");
    let out_of_order: Vec<_> = rows
        .windows(2)
        .filter(|w| w[1].1 <= w[0].1)
        .map(|w| (w[0].1, w[1].1))
        .take(5)
        .collect();
    assert!(
        out_of_order.is_empty(),
        "applied in queue order: {out_of_order:?}"
    );

    b.close(Duration::from_secs(5)).await;
    conn_b.close().await;
    cluster.restart(leader).await.unwrap();
    step(format_args!("f. node {leader} restarted"));
    a.close(Duration::from_secs(5)).await;
    conn_a.close().await;
    for name in std::iter::once(q.clone()).chain(config().queues()) {
        let _ = setup.delete_queue(&name).await;
    }
    setup.close().await;
    cluster
        .wait_all_running(GUARD)
        .await
        .unwrap_or_else(|e| panic!("node {leader} rejoins: {e}"));
}
