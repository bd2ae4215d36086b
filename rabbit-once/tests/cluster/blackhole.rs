//! Scenario g: a node that is up (and still in the cluster) but that the client can no longer
//! reach — its fault proxy black-holes the traffic, nothing is closed — must not hold a
//! publisher: heartbeats find the silence, and it moves to the next endpoint.

use super::*;

/// A publisher connected through node X's proxy; the proxy stops forwarding in both directions
/// without closing anything (a client-side black hole: node X itself is fine). The heartbeat
/// (2 s) notices, the connection moves on to node X+1's proxy (a new connection through X's
/// would hang in its handshake: the connect timeout ends that), and every message — those
/// unconfirmed at the black hole and those published during it — is confirmed and readable.
pub(super) async fn a_black_holed_node_does_not_hold_a_publisher(cluster: &Cluster) {
    const N: u64 = 3000;
    let x = 0;
    let q = unique("cl-blackhole");
    step(format_args!(
        "g. a black hole to node {x} under a publisher: queue {q}"
    ));
    let topo = Topology::new().queue(quorum(&q));
    let conn =
        Connection::start(cluster_config(&cluster.proxy_uris_from(x)).topology(topo.clone()))
            .unwrap();
    let p = Publisher::new(&conn, PublisherConfig::default()).unwrap();
    let publish = |from: u64, to: u64| {
        let p = p.clone();
        let q = q.clone();
        async move {
            let mut cs = Vec::new();
            for i in from..to {
                let m = seq_message(&q, i, SIZE).with_message_id(format!("{q}-{i}"));
                cs.push(p.publish(m).await.unwrap());
            }
            cs
        }
    };
    for c in publish(0, N / 3).await {
        tokio::time::timeout(GUARD, c).await.unwrap().unwrap();
    }
    let accepted_next = cluster.proxy(other(cluster, x)).accepted();
    assert!(cluster.proxy(x).live() >= 1, "connected through node {x}");
    assert_eq!(conn.reconnects(), 0);

    cluster.proxy(x).blackhole(true);
    step(format_args!("g. node {x}'s proxy black-holed"));
    let rest = publish(N / 3, N).await;
    for c in rest {
        tokio::time::timeout(GUARD, c)
            .await
            .expect("not held by the black hole")
            .unwrap();
    }
    assert!(conn.reconnects() >= 1, "moved to another endpoint");
    assert!(
        cluster.proxy(other(cluster, x)).accepted() > accepted_next,
        "through node {}'s proxy",
        other(cluster, x)
    );
    step(format_args!(
        "g. all {N} confirmed after {} reconnect(s), through node {}",
        conn.reconnects(),
        other(cluster, x)
    ));
    cluster.proxy(x).blackhole(false);

    // Every seq readable, through another node.
    let reader = Connection::connect(cluster_config(&[cluster.uri(other(cluster, x))]))
        .await
        .unwrap();
    let mut sub = Subscription::start(&reader, SubscriptionConfig::new(&q).prefetch(500)).unwrap();
    let mut seen = BTreeSet::new();
    while (seen.len() as u64) < N {
        let d = tokio::time::timeout(GUARD, sub.recv())
            .await
            .expect("every seq readable")
            .unwrap();
        seen.insert(seq_of(d.body()));
        d.ack();
    }
    assert_eq!(seen, (0..N).collect::<BTreeSet<_>>());
    sub.close(Duration::from_secs(1)).await;
    p.close(Duration::from_secs(5)).await;
    conn.close().await;
    let _ = reader.delete_queue(&q).await;
    reader.close().await;
}
