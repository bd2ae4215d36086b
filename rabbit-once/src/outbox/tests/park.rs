//! Parking: a row the broker refuses `park_after` times leaves the outbox for the parked table
//! (an event says so), its key's later rows go on, and an operator requeues it once the cause
//! is fixed — or discards it.

use super::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_a_row_refused_park_after_times_is_parked_frees_its_key_and_can_be_requeued() {
    let q = unique("ro-outbox-park");
    let missing = unique("ro-outbox-park-missing"); // no such queue yet: unroutable
    let conn = connect(&q).await;
    let mut events = conn.events();
    let db = Lite::new("ro-outbox-park").await;
    let (store, outbox) = (db.store.clone(), db.outbox.clone());
    let relay = Relay::start(&conn, outbox.clone(), config().park_after(2)).unwrap();

    let mut tx = store.begin().await.unwrap();
    outbox
        .enqueue_keyed(&mut tx, to(&missing, 0), "K")
        .await
        .unwrap();
    tx.commit().await.unwrap();
    // Once it is held, K's next row waits behind it; a keyless row does not.
    let end = tokio::time::Instant::now() + GUARD;
    while outbox.status().await.unwrap().failed == 0 {
        assert!(
            tokio::time::Instant::now() < end,
            "the row was never refused"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let mut tx = store.begin().await.unwrap();
    outbox.enqueue_keyed(&mut tx, to(&q, 1), "K").await.unwrap();
    outbox.enqueue(&mut tx, to(&q, 2)).await.unwrap();
    tx.commit().await.unwrap();

    let parked = tokio::time::timeout(GUARD, async {
        loop {
            if let Some(crate::Event::OutboxRowParked {
                message_id,
                ordering_key,
                reason,
                attempts,
            }) = events.recv().await
            {
                break (message_id, ordering_key, reason, attempts);
            }
        }
    })
    .await
    .expect("the parking is an event");
    assert_eq!(parked.0, format!("{missing}-0"));
    assert_eq!((parked.1.as_deref(), parked.3), (Some("K"), 2));
    assert_eq!(
        read(&conn, &q, 2).await,
        [format!("{q}-2"), format!("{q}-1")],
        "the keyless row at once; K's next row once K's refused row is parked (never without)"
    );
    until_empty(&outbox).await;

    let s = outbox.status().await.unwrap();
    assert_eq!((s.pending, s.failed, s.parked), (0, 0, 1));
    let row = &s.parked_rows[0];
    assert_eq!(
        (row.message_id.as_str(), row.attempts),
        (parked.0.as_str(), 2)
    );
    assert_eq!(
        (row.retry_at_unix_ms, row.last_error.as_deref()),
        (None, Some(parked.2.as_str()))
    );

    // The cause is fixed (the queue exists now): requeued, it goes out under the same id.
    conn.declare(&Topology::new().queue(Queue::new(&missing)))
        .await
        .unwrap();
    assert_eq!(outbox.requeue(&parked.0).await.unwrap(), 1);
    assert_eq!(
        read(&conn, &missing, 1).await,
        std::slice::from_ref(&parked.0)
    );
    until_empty(&outbox).await;
    assert_eq!(outbox.status().await.unwrap().parked, 0);
    assert_eq!(
        outbox.requeue(&parked.0).await.unwrap(),
        0,
        "nothing parked any more"
    );
    let stats = relay.close(Duration::from_secs(5)).await;
    assert_eq!(
        (stats.parked, stats.relayed, stats.failed),
        (1, 3, 2),
        "{stats:?}"
    );

    for name in [&q, &missing] {
        conn.delete_queue(name).await.unwrap();
    }
    conn.close().await;
    store.pool().close().await;
}

/// The parked table on PostgreSQL: park moves a row out of the outbox in one transaction, status
/// lists it, requeue brings it back (a new id, attempts from zero), discard removes a parked row.
#[tokio::test]
async fn postgres_park_requeue_and_discard() {
    let (store, outbox, schema) = postgres().await;
    let mut tx = store.begin().await.unwrap();
    outbox.enqueue_keyed(&mut tx, order(1), "K").await.unwrap();
    outbox.enqueue(&mut tx, order(2)).await.unwrap();
    tx.commit().await.unwrap();
    let rows = outbox.pending(10).await.unwrap();
    super::super::store::park(store.pool(), rows[0].id, "refused")
        .await
        .unwrap();
    super::super::store::park(store.pool(), rows[1].id, "refused")
        .await
        .unwrap();
    let s = outbox.status().await.unwrap();
    assert_eq!((s.pending, s.parked), (0, 2));
    assert_eq!(s.parked_rows[0].ordering_key.as_deref(), Some("K"));
    assert_eq!(s.parked_rows[0].attempts, 1);

    assert_eq!(outbox.requeue("order-1").await.unwrap(), 1);
    let back = outbox.pending(10).await.unwrap();
    assert_eq!(back.len(), 1);
    assert_eq!(back[0].message, order(1), "every property comes back");
    assert!(
        back[0].id > rows[1].id,
        "a new id: it goes out after what is there"
    );
    assert_eq!(
        (back[0].attempts, back[0].ordering_key.as_deref()),
        (0, Some("K"))
    );

    assert!(outbox.discard("order-2").await.unwrap(), "a parked row");
    assert!(outbox.discard("order-1").await.unwrap(), "a pending row");
    let s = outbox.status().await.unwrap();
    assert_eq!((s.pending, s.parked), (0, 0));
    drop_schema(store, schema).await;
}
