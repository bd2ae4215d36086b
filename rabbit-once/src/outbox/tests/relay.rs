//! The relay against the real broker and databases: publish, delete, late commits, wake-ups,
//! a consumer emitting through the outbox.
use super::*;

/// Committed rows are published in order and deleted; a rolled-back one never is; rows
/// written while no relay ran go out when one starts; a row the broker refuses stays, with
/// its reason, and does not hold back the rows behind it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_relay_publishes_committed_rows_once_and_keeps_refused_ones() {
    let q = unique("ro-outbox-relay");
    let nowhere = unique("ro-outbox-nowhere");
    let conn = connect(&q).await;
    let db = Lite::new("ro-outbox").await;
    let (store, outbox) = (db.store.clone(), db.outbox.clone());

    // Written before any relay runs: one committed transaction, one rolled back.
    let mut tx = store.begin().await.unwrap();
    outbox
        .enqueue_all(&mut tx, (0..3).map(|n| to(&q, n)))
        .await
        .unwrap();
    tx.commit().await.unwrap();
    let mut tx = store.begin().await.unwrap();
    outbox.enqueue(&mut tx, to(&q, 99)).await.unwrap();
    tx.rollback().await.unwrap();

    let relay = Relay::start(&conn, outbox.clone(), config()).unwrap();
    // Then a refused row (no queue takes it) between two good ones.
    let mut tx = store.begin().await.unwrap();
    outbox.enqueue(&mut tx, to(&q, 3)).await.unwrap();
    outbox.enqueue(&mut tx, to(&nowhere, 0)).await.unwrap();
    outbox.enqueue(&mut tx, to(&q, 4)).await.unwrap();
    tx.commit().await.unwrap();

    let want: Vec<String> = (0..5).map(|n| format!("{q}-{n}")).collect();
    assert_eq!(
        read(&conn, &q, 5).await,
        want,
        "committed rows, in order, once"
    );
    // The refused row is kept with its reason and is tried again.
    let end = tokio::time::Instant::now() + GUARD;
    let kept = loop {
        let rows = outbox.pending(10).await.unwrap();
        if rows.len() == 1 && rows[0].attempts >= 2 {
            break rows;
        }
        assert!(tokio::time::Instant::now() < end, "{rows:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(
        kept[0].message.message_id(),
        Some(format!("{nowhere}-0").as_str())
    );
    assert!(
        kept[0]
            .last_error
            .as_deref()
            .unwrap_or("")
            .contains("unroutable"),
        "{:?}",
        kept[0].last_error
    );
    let stats = relay.close(Duration::from_secs(5)).await;
    assert_eq!(stats.relayed, 5, "{stats:?}");
    assert!(stats.failed >= 2, "{stats:?}");
    assert_eq!(
        conn.queue_info(&q).await.unwrap().messages,
        0,
        "nothing published twice"
    );

    conn.delete_queue(&q).await.unwrap();
    conn.close().await;
    store.pool().close().await;
}

/// The interleaving that loses messages in cursor-based relays, with a relay running: the
/// row that commits last but holds the lower id is published too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_relay_publishes_a_row_that_commits_after_a_later_id() {
    let q = unique("ro-outbox-late");
    let conn = connect(&q).await;
    let (store, outbox, schema) = postgres().await;
    let relay = Relay::start(&conn, outbox.clone(), config()).unwrap();

    let mut early = store.begin().await.unwrap();
    outbox.enqueue(&mut early, to(&q, 7)).await.unwrap();
    let mut late = store.begin().await.unwrap();
    outbox.enqueue(&mut late, to(&q, 8)).await.unwrap();
    late.commit().await.unwrap();
    assert_eq!(read(&conn, &q, 1).await, [format!("{q}-8")]);
    until_empty(&outbox).await;

    early.commit().await.unwrap(); // no enqueue wakes the relay now: its poll finds the row
    assert_eq!(read(&conn, &q, 1).await, [format!("{q}-7")]);
    until_empty(&outbox).await;
    let stats = relay.close(Duration::from_secs(5)).await;
    assert_eq!((stats.relayed, stats.failed), (2, 0), "{stats:?}");

    conn.delete_queue(&q).await.unwrap();
    conn.close().await;
    drop_schema(store, schema).await;
}

/// Another process's commit wakes the relay through `LISTEN/NOTIFY`: the writer here is a
/// second outbox handle (its in-process signal reaches no relay) and the relay's poll is
/// longer than the test's guard, so only the notification can deliver the row in time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_relay_wakes_on_another_writers_commit() {
    let q = unique("ro-outbox-notify");
    let conn = connect(&q).await;
    let (store, outbox, schema) = postgres().await;
    let relay = Relay::start(
        &conn,
        outbox.clone(),
        config().poll(Duration::from_secs(3600)),
    )
    .unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await; // the listener is up
    let other_process = PostgresOutbox::new(store.pool().clone()).max_message_size(1 << 20);
    for n in 0..3 {
        let mut tx = store.begin().await.unwrap();
        other_process.enqueue(&mut tx, to(&q, n)).await.unwrap();
        tx.commit().await.unwrap();
        assert_eq!(read(&conn, &q, 1).await, [format!("{q}-{n}")]);
    }
    until_empty(&outbox).await;
    let stats = relay.close(Duration::from_secs(5)).await;
    assert_eq!(stats.relayed, 3, "{stats:?}");
    conn.delete_queue(&q).await.unwrap();
    conn.close().await;
    drop_schema(store, schema).await;
}

/// Stage 1 consumes, and its handler emits a stage-2 message through the outbox in the very
/// transaction that records the stage-1 id: each stage-1 message yields exactly one stage-2
/// message, and a duplicate stage-1 delivery (the handler does not run) emits nothing. With
/// group commit on and off.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_consumer_emits_through_the_outbox_in_its_own_transaction() {
    for batch in [1usize, 50] {
        pipeline_case(batch).await;
    }
}

async fn pipeline_case(batch: usize) {
    use crate::{Consumer, ConsumerConfig, Outcome, Publisher, PublisherConfig, handler_fn};
    use sqlx::{Sqlite, Transaction};
    const N: u64 = 200;
    let stage1 = unique("ro-outbox-stage1");
    let stage2 = unique("ro-outbox-stage2");
    let conn = Connection::connect(
        ConnectionConfig::new(&amqp_uri()).unwrap().topology(
            Topology::new()
                .queue(Queue::new(&stage1))
                .queue(Queue::new(&stage2)),
        ),
    )
    .await
    .unwrap();
    let db = Lite::new("ro-outbox").await;
    let (store, outbox) = (db.store.clone(), db.outbox.clone());
    let relay = Relay::start(&conn, outbox.clone(), config()).unwrap();

    // Every stage-1 id published twice: the second copy is a duplicate.
    let p = Publisher::new(&conn, PublisherConfig::default()).unwrap();
    for _copy in 0..2 {
        for n in 0..N {
            p.publish_confirmed(to(&stage1, n)).await.unwrap();
        }
    }
    let emit = outbox.clone();
    let next = stage2.clone();
    let handler = handler_fn(move |msg, tx: &mut Transaction<'static, Sqlite>| {
        let (emit, next) = (emit.clone(), next.clone());
        Box::pin(async move {
            let id = msg.message_id().unwrap_or_default();
            let out =
                Message::to_queue(next, msg.body().clone()).with_message_id(format!("from-{id}"));
            emit.enqueue(tx, out).await?;
            Ok(Outcome::Done)
        })
    });
    let consumer = Consumer::start(
        &conn,
        store.clone(),
        handler,
        ConsumerConfig::new(&stage1).group_commit(batch, Duration::from_millis(2)),
    )
    .await
    .unwrap();
    let mut got = read(&conn, &stage2, N as usize).await;
    let end = tokio::time::Instant::now() + GUARD;
    while consumer.stats().applied + consumer.stats().duplicates < 2 * N {
        assert!(tokio::time::Instant::now() < end, "{:?}", consumer.stats());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    until_empty(&outbox).await;
    let stats = consumer.close(Duration::from_secs(5)).await;
    assert_eq!((stats.applied, stats.duplicates), (N, N), "{stats:?}");
    got.sort();
    let mut want: Vec<String> = (0..N).map(|n| format!("from-{stage1}-{n}")).collect();
    want.sort();
    assert_eq!(got, want, "one stage-2 message per stage-1 message");
    assert_eq!(
        conn.queue_info(&stage2).await.unwrap().messages,
        0,
        "no second copy of any stage-2 message"
    );
    relay.close(Duration::from_secs(5)).await;
    p.close(Duration::from_secs(5)).await;
    for q in ConsumerConfig::new(&stage1).queues() {
        let _ = conn.delete_queue(&q).await;
    }
    conn.delete_queue(&stage2).await.unwrap();
    conn.close().await;
    store.pool().close().await;
}

/// A row that commits late, with a low id, while the relay's pipeline is busy with a steady
/// stream of later rows: the periodic full read finds it, and every row goes out once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_a_late_row_is_found_while_the_pipeline_is_busy() {
    const N: u64 = 3000;
    let q = unique("ro-outbox-busy");
    let conn = connect(&q).await;
    let (store, outbox, schema) = postgres().await;
    let relay = Relay::start(&conn, outbox.clone(), config().batch(200)).unwrap();

    let mut early = store.begin().await.unwrap();
    outbox.enqueue(&mut early, to(&q, N)).await.unwrap(); // the lowest id of all
    let writer = {
        let (store, outbox, q) = (store.clone(), outbox.clone(), q.clone());
        tokio::spawn(async move {
            for chunk in (0..N).collect::<Vec<_>>().chunks(20) {
                let mut tx = store.begin().await.unwrap();
                outbox
                    .enqueue_all(&mut tx, chunk.iter().map(|n| to(&q, *n)))
                    .await
                    .unwrap();
                tx.commit().await.unwrap();
            }
        })
    };
    tokio::time::sleep(Duration::from_millis(150)).await;
    early.commit().await.unwrap(); // while the stream goes on
    writer.await.unwrap();

    let mut got = read(&conn, &q, N as usize + 1).await;
    until_empty(&outbox).await;
    got.sort();
    let mut want: Vec<String> = (0..=N).map(|n| format!("{q}-{n}")).collect();
    want.sort();
    assert_eq!(got, want, "every row, the late one included");
    let stats = relay.close(Duration::from_secs(5)).await;
    assert_eq!(stats.relayed, N + 1, "{stats:?}");
    assert_eq!(conn.queue_info(&q).await.unwrap().messages, 0, "none twice");
    conn.delete_queue(&q).await.unwrap();
    conn.close().await;
    drop_schema(store, schema).await;
}

/// Rows larger than a third of the publisher's buffer (reads take what fits beside the rows in
/// flight, `relay::fit`): every row still goes once, in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_rows_are_read_a_buffer_at_a_time() {
    let q = unique("ro-outbox-large");
    let conn = connect(&q).await;
    let db = Lite::new("ro-outbox-large").await;
    let body = vec![b'x'; 300 << 10];
    let mut tx = db.store.begin().await.unwrap();
    db.outbox
        .enqueue_all(
            &mut tx,
            (0..20)
                .map(|n| Message::to_queue(&q, body.clone()).with_message_id(format!("{q}-{n}"))),
        )
        .await
        .unwrap();
    tx.commit().await.unwrap();
    let config = config().publisher(crate::PublisherConfig::default().max_buffered_bytes(1 << 20));
    let relay = Relay::start(&conn, db.outbox.clone(), config).unwrap();
    let want: Vec<String> = (0..20).map(|n| format!("{q}-{n}")).collect();
    assert_eq!(read(&conn, &q, 20).await, want);
    until_empty(&db.outbox).await;
    let stats = relay.close(Duration::from_secs(5)).await;
    assert_eq!(stats.relayed, 20, "{stats:?}");
    conn.delete_queue(&q).await.unwrap();
    conn.close().await;
}
