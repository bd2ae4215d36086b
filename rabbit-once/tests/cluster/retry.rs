//! Scenario e: the idempotent consumer's retry and dead-letter path (quorum retry queues) across the loss of their leader.

use super::*;

/// Scenario e: the idempotent consumer of a quorum work queue (`queue_type(Quorum)`: its retry
/// and dead-letter queues are quorum queues that dead-letter at-least-once), connected to node
/// 1, every queue led by node 0. Messages that fail once are parked in the retry queue (a 5 s
/// TTL); node 0 — the retry queue's leader — is killed with `kill -9` while they wait there.
/// A new leader takes over, the TTL runs out, the messages come back to the work queue and are
/// applied exactly once; messages that always fail go through the retry queue twice and are
/// dead-lettered once each, with their headers. Then node 0 is restarted.
pub(super) async fn retry_path_across_a_node_loss(cluster: &Cluster) {
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
