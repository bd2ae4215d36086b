//! Scenario a: the quorum queue's leader killed with `kill -9` in the middle of a publish burst.

use super::*;

/// What a burst ended with: seq → message_id of every confirmed message, and the seqs whose
/// confirmation failed, with the error.
#[derive(Debug, Default)]
pub(super) struct Outcome {
    pub(super) ids: HashMap<u64, String>,
    pub(super) failed: Vec<(u64, String)>,
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
pub(super) async fn leader_killed_mid_burst(cluster: &Cluster) {
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
