//! The relay against the real broker and databases.
use super::*;
use crate::outbox::{Relay, RelayConfig};
use crate::{Connection, ConnectionConfig, Queue, Subscription, SubscriptionConfig, Topology};
use std::time::Duration;

const GUARD: Duration = Duration::from_secs(30);

fn amqp_uri() -> String {
    std::env::var("RONCE_AMQP_URI")
        .unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".into())
}

async fn connect(queue: &str) -> Connection {
    Connection::connect(
        ConnectionConfig::new(&amqp_uri())
            .unwrap()
            .topology(Topology::new().queue(Queue::new(queue))),
    )
    .await
    .unwrap()
}

fn config() -> RelayConfig {
    RelayConfig::default()
        .poll(Duration::from_millis(100))
        .retry_after(Duration::from_millis(200))
}

fn to(queue: &str, n: u64) -> Message {
    Message::to_queue(queue, format!("{n}")).with_message_id(format!("{queue}-{n}"))
}

/// The message ids on `queue`, in queue order, until `n` arrived (acked).
async fn read(conn: &Connection, queue: &str, n: usize) -> Vec<String> {
    let mut sub = Subscription::start(conn, SubscriptionConfig::new(queue)).unwrap();
    let mut ids = Vec::new();
    while ids.len() < n {
        let d = tokio::time::timeout(GUARD, sub.recv())
            .await
            .expect("a delivery in time")
            .expect("subscription open");
        ids.push(d.message_id().unwrap_or_default().to_owned());
        d.ack();
    }
    sub.close(Duration::from_secs(5)).await;
    ids
}

async fn until_empty<B: crate::outbox::relay::Backend>(backend: &B) {
    let end = tokio::time::Instant::now() + GUARD;
    while !backend
        .pending(
            1,
            &crate::outbox::store::Filter {
                all: true,
                ..Default::default()
            },
        )
        .await
        .unwrap()
        .is_empty()
    {
        assert!(tokio::time::Instant::now() < end, "rows left in the outbox");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Committed rows are published in order and deleted; a rolled-back one never is; rows
/// written while no relay ran go out when one starts; a row the broker refuses stays, with
/// its reason, and does not hold back the rows behind it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_relay_publishes_committed_rows_once_and_keeps_refused_ones() {
    let q = unique("ro-outbox-relay");
    let nowhere = unique("ro-outbox-nowhere");
    let conn = connect(&q).await;
    let path = std::env::temp_dir().join(format!("{}.db", unique("ro-outbox")));
    let store = SqliteStore::open(&path).await.unwrap();
    let outbox = SqliteOutbox::new(store.pool().clone()).max_message_size(1 << 20);
    outbox.migrate().await.unwrap();

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
    for ext in ["", "-wal", "-shm", "-relay.lock"] {
        let _ = std::fs::remove_file(format!("{}{ext}", path.display()));
    }
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
    let path = std::env::temp_dir().join(format!("{}.db", unique("ro-outbox")));
    let store = SqliteStore::open(&path).await.unwrap();
    let outbox = SqliteOutbox::new(store.pool().clone()).max_message_size(1 << 20);
    outbox.migrate().await.unwrap();
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
    for ext in ["", "-wal", "-shm", "-relay.lock"] {
        let _ = std::fs::remove_file(format!("{}{ext}", path.display()));
    }
}

/// Two relays on one outbox: one publishes, the other stands by (PostgreSQL: the session
/// advisory lock; SQLite: the lock file beside the database); when the active one stops at once
/// (no wait for confirms), the standby takes over. Each row once, in order. A macro: the two
/// outboxes share no trait for enqueueing.
macro_rules! two_relays_case {
    ($q:expr, $conn:expr, $store:expr, $outbox:expr) => {{
        let (q, conn, store, outbox) = (&$q, &$conn, &$store, &$outbox);
        let first = Relay::start(conn, outbox.clone(), config()).unwrap();
        tokio::time::sleep(Duration::from_millis(200)).await; // the first one holds the lock
        let second = Relay::start(conn, outbox.clone(), config()).unwrap();
        let enqueue = async |from: u64, to_n: u64| {
            for n in from..to_n {
                let mut tx = store.begin().await.unwrap();
                outbox.enqueue(&mut tx, to(q, n)).await.unwrap();
                tx.commit().await.unwrap();
            }
        };
        enqueue(0, 100).await;
        let want: Vec<String> = (0..100).map(|n| format!("{q}-{n}")).collect();
        assert_eq!(read(conn, q, 100).await, want, "each row once, in order");
        until_empty(outbox).await;
        assert_eq!(second.stats().relayed, 0, "the standby published nothing");

        // The active relay stops at once (no wait for confirms); its lock goes with it.
        let a = first.close(Duration::ZERO).await;
        enqueue(100, 200).await;
        let want: Vec<String> = (100..200).map(|n| format!("{q}-{n}")).collect();
        assert_eq!(read(conn, q, 100).await, want, "the standby took over");
        until_empty(outbox).await;
        let b = second.close(Duration::from_secs(5)).await;
        assert_eq!((a.relayed, b.relayed), (100, 100), "{a:?} {b:?}");
        assert_eq!(
            conn.queue_info(q).await.unwrap().messages,
            0,
            "no row published twice"
        );
    }};
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_two_relays_publish_each_row_once_and_a_standby_takes_over() {
    let q = unique("ro-outbox-two");
    let conn = connect(&q).await;
    let (store, outbox, schema) = postgres().await;
    two_relays_case!(q, conn, store, outbox);
    conn.delete_queue(&q).await.unwrap();
    conn.close().await;
    drop_schema(store, schema).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_two_relays_publish_each_row_once_and_a_standby_takes_over() {
    let q = unique("ro-outbox-two-sqlite");
    let conn = connect(&q).await;
    let path = std::env::temp_dir().join(format!("{}.db", unique("ro-outbox-two")));
    let store = SqliteStore::open(&path).await.unwrap();
    let outbox = SqliteOutbox::new(store.pool().clone());
    outbox.migrate().await.unwrap();
    two_relays_case!(q, conn, store, outbox);
    conn.delete_queue(&q).await.unwrap();
    conn.close().await;
    store.pool().close().await;
    for ext in ["", "-wal", "-shm", "-relay.lock"] {
        let _ = std::fs::remove_file(format!("{}{ext}", path.display()));
    }
}

/// A refused row holds back the later rows of its ordering key, not the others; once the
/// broker takes it (its queue now exists) it goes out, then the rows behind it, in order.
/// The failure is an event. (Rows of its key already in flight with it — the same read —
/// are not held: see docs/guarantees.md.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_row_holds_back_its_key_only() {
    let q = unique("ro-outbox-keys");
    let later = unique("ro-outbox-later");
    let conn = connect(&q).await;
    let mut events = conn.events();
    let path = std::env::temp_dir().join(format!("{}.db", unique("ro-outbox")));
    let store = SqliteStore::open(&path).await.unwrap();
    let outbox = SqliteOutbox::new(store.pool().clone()).max_message_size(1 << 20);
    outbox.migrate().await.unwrap();
    let relay = Relay::start(&conn, outbox.clone(), config()).unwrap();
    let mut tx = store.begin().await.unwrap();
    outbox
        .enqueue_keyed(&mut tx, to(&later, 0), "K")
        .await
        .unwrap();
    tx.commit().await.unwrap();
    let failed = tokio::time::timeout(GUARD, async {
        loop {
            if let Some(crate::Event::OutboxRowFailed {
                message_id,
                ordering_key,
                reason,
            }) = events.recv().await
            {
                break (message_id, ordering_key, reason);
            }
        }
    })
    .await
    .expect("the failure is an event");
    assert_eq!(failed.0, format!("{later}-0"));
    assert_eq!(failed.1.as_deref(), Some("K"));
    assert!(failed.2.contains("unroutable"), "{}", failed.2);

    let mut tx = store.begin().await.unwrap();
    outbox.enqueue_keyed(&mut tx, to(&q, 1), "K").await.unwrap();
    outbox.enqueue_keyed(&mut tx, to(&q, 2), "B").await.unwrap();
    outbox.enqueue(&mut tx, to(&q, 3)).await.unwrap();
    tx.commit().await.unwrap();
    assert_eq!(
        read(&conn, &q, 2).await,
        [format!("{q}-2"), format!("{q}-3")]
    );
    tokio::time::sleep(Duration::from_millis(500)).await; // several retries of the held row
    assert_eq!(
        conn.queue_info(&q).await.unwrap().messages,
        0,
        "K's next row waits"
    );
    assert_eq!(outbox.pending(10).await.unwrap().len(), 2);

    conn.declare(&Topology::new().queue(Queue::new(&later)))
        .await
        .unwrap();
    assert_eq!(read(&conn, &later, 1).await, [format!("{later}-0")]);
    assert_eq!(
        read(&conn, &q, 1).await,
        [format!("{q}-1")],
        "then the row behind it"
    );
    until_empty(&outbox).await;
    let stats = relay.close(Duration::from_secs(5)).await;
    assert_eq!(stats.relayed, 4, "{stats:?}");

    conn.delete_queue(&q).await.unwrap();
    conn.delete_queue(&later).await.unwrap();
    conn.close().await;
    store.pool().close().await;
    for ext in ["", "-wal", "-shm", "-relay.lock"] {
        let _ = std::fs::remove_file(format!("{}{ext}", path.display()));
    }
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

/// A held row removed by an operator frees its key; many refused keyless rows hold back
/// nothing; a clean `close` settles what is in flight, so the next relay publishes no row
/// again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn held_rows_removed_or_many_never_jam_and_close_duplicates_nothing() {
    let q = unique("ro-outbox-jam");
    let nowhere = unique("ro-outbox-void");
    let conn = connect(&q).await;
    let path = std::env::temp_dir().join(format!("{}.db", unique("ro-outbox")));
    let store = SqliteStore::open(&path).await.unwrap();
    let outbox = SqliteOutbox::new(store.pool().clone()).max_message_size(1 << 20);
    outbox.migrate().await.unwrap();
    let relay = Relay::start(&conn, outbox.clone(), config()).unwrap();

    let mut tx = store.begin().await.unwrap();
    outbox
        .enqueue_keyed(&mut tx, to(&nowhere, 0), "K")
        .await
        .unwrap();
    outbox
        .enqueue_all(&mut tx, (1..301).map(|n| to(&nowhere, n)))
        .await
        .unwrap();
    tx.commit().await.unwrap();
    // K's first row is held before its next row is written (a row of K in flight with it, read
    // in the same batch, would not be held: not promised, see docs/guarantees.md; under CPU
    // load the relay's first read could otherwise take both transactions).
    let end = tokio::time::Instant::now() + GUARD;
    while outbox
        .pending(1)
        .await
        .unwrap()
        .first()
        .is_none_or(|r| r.attempts == 0)
    {
        assert!(
            tokio::time::Instant::now() < end,
            "K's first row is refused"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let mut tx = store.begin().await.unwrap();
    outbox.enqueue_keyed(&mut tx, to(&q, 0), "K").await.unwrap();
    outbox
        .enqueue_all(&mut tx, (1..200).map(|n| to(&q, n)))
        .await
        .unwrap();
    tx.commit().await.unwrap();
    // The 199 keyless rows flow past 301 refused rows; K's row waits behind its held one.
    let got = read(&conn, &q, 199).await;
    assert_eq!(
        got,
        (1..200).map(|n| format!("{q}-{n}")).collect::<Vec<_>>()
    );
    // The operator removes the poison row: K's next row goes out.
    sqlx::query("DELETE FROM rabbit_once_outbox WHERE message_id = ?")
        .bind(format!("{nowhere}-0"))
        .execute(store.pool())
        .await
        .unwrap();
    assert_eq!(read(&conn, &q, 1).await, [format!("{q}-0")]);
    sqlx::query("DELETE FROM rabbit_once_outbox")
        .execute(store.pool())
        .await
        .unwrap();

    // Rows in flight at a clean close are settled and deleted by it.
    let mut tx = store.begin().await.unwrap();
    outbox
        .enqueue_all(&mut tx, (1000..3000).map(|n| to(&q, n)))
        .await
        .unwrap();
    tx.commit().await.unwrap();
    tokio::time::sleep(Duration::from_millis(30)).await;
    let first = relay.close(Duration::from_secs(5)).await;
    let second = Relay::start(&conn, outbox.clone(), config()).unwrap();
    until_empty(&outbox).await;
    let second = second.close(Duration::from_secs(5)).await;
    assert_eq!(read(&conn, &q, 2000).await.len(), 2000);
    assert_eq!(
        conn.queue_info(&q).await.unwrap().messages,
        0,
        "no row published twice across the close ({first:?}, {second:?})"
    );

    conn.delete_queue(&q).await.unwrap();
    conn.close().await;
    store.pool().close().await;
    for ext in ["", "-wal", "-shm", "-relay.lock"] {
        let _ = std::fs::remove_file(format!("{}{ext}", path.display()));
    }
}

/// The relay's reads leave out the rows it holds as id ranges and its deletes take ranges:
/// both are exact. A row inside the span of the ranges (between two runs of rows in flight,
/// or below them: a row that committed late) is read; a delete takes exactly the ids given.
/// `ids`: the ids of ten committed keyless rows, in order.
async fn ranges_are_exact<B: crate::outbox::relay::Backend>(backend: &B, ids: &[i64]) {
    use crate::outbox::store::{Filter, ranges};
    let read = |skip: Vec<(i64, i64)>, limit: i64| async move {
        let filter = Filter {
            skip: &skip,
            ..Default::default()
        };
        let rows = backend.pending(limit, &filter).await.unwrap();
        rows.into_iter().map(|r| r.id).collect::<Vec<_>>()
    };
    let flying = ranges([ids[1], ids[3], ids[2], ids[5], ids[6], ids[8]]);
    assert_eq!(flying.len(), 3, "{flying:?}");
    assert_eq!(
        read(flying.clone(), 100).await,
        [ids[0], ids[4], ids[7], ids[9]]
    );
    assert_eq!(read(flying.clone(), 2).await, [ids[0], ids[4]], "id order");
    assert_eq!(read(ranges(ids.iter().copied()), 100).await, [0i64; 0]);
    // Deleting 1, 2, 3 and 5 leaves the others, 4 between them included.
    assert_eq!(
        backend
            .remove(&[ids[5], ids[1], ids[2], ids[3]])
            .await
            .unwrap(),
        4
    );
    assert_eq!(
        read(Vec::new(), 100).await,
        [ids[0], ids[4], ids[6], ids[7], ids[8], ids[9]]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_reads_and_deletes_by_id_ranges_are_exact() {
    let path = std::env::temp_dir().join(format!("{}.db", unique("ro-outbox")));
    let store = SqliteStore::open(&path).await.unwrap();
    let outbox = SqliteOutbox::new(store.pool().clone()).max_message_size(1 << 20);
    outbox.migrate().await.unwrap();
    outbox.migrate().await.unwrap(); // idempotent, the second migration too
    let mut tx = store.begin().await.unwrap();
    outbox
        .enqueue_all(&mut tx, (0..10).map(|n| to("q", n)))
        .await
        .unwrap();
    tx.commit().await.unwrap();
    let ids: Vec<i64> = outbox
        .pending(100)
        .await
        .unwrap()
        .iter()
        .map(|r| r.id)
        .collect();
    ranges_are_exact(&outbox, &ids).await;
    store.pool().close().await;
    for ext in ["", "-wal", "-shm", "-relay.lock"] {
        let _ = std::fs::remove_file(format!("{}{ext}", path.display()));
    }
}

/// On PostgreSQL also with a row that commits late: its id is below every range left out,
/// and it is read once it committed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_reads_and_deletes_by_id_ranges_are_exact() {
    use crate::outbox::store::{Filter, ranges};
    let (store, outbox, schema) = postgres().await;
    let mut early = store.begin().await.unwrap();
    outbox.enqueue(&mut early, to("q", 99)).await.unwrap();
    let mut tx = store.begin().await.unwrap();
    outbox
        .enqueue_all(&mut tx, (0..10).map(|n| to("q", n)))
        .await
        .unwrap();
    tx.commit().await.unwrap();
    let ids: Vec<i64> = outbox
        .pending(100)
        .await
        .unwrap()
        .iter()
        .map(|r| r.id)
        .collect();
    assert_eq!(ids.len(), 10);
    let skip = ranges(ids.iter().copied());
    let filter = Filter {
        skip: &skip,
        ..Default::default()
    };
    let relay_read = || async {
        crate::outbox::relay::Backend::pending(&outbox, 100, &filter)
            .await
            .unwrap()
            .iter()
            .map(|r| r.id)
            .collect::<Vec<_>>()
    };
    assert!(relay_read().await.is_empty());
    early.commit().await.unwrap();
    let late = relay_read().await;
    assert_eq!(late.len(), 1);
    assert!(late[0] < ids[0], "the late row has the lowest id");
    outbox.remove(&late).await.unwrap();
    ranges_are_exact(&outbox, &ids).await;
    drop_schema(store, schema).await;
}

/// A running relay keeps no connection of the application's pool for itself: its lock session
/// leaves the pool and its `LISTEN` has a connection of its own, so a pool of two still gives
/// the application two connections at once. The lock's session has TCP keepalives, so the
/// server frees the lock of a relay whose host vanished.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_relay_takes_no_pool_connection_and_its_lock_session_has_keepalives() {
    let q = unique("ro-outbox-pool");
    let conn = connect(&q).await;
    let schema = unique("ro_outbox");
    let store = PostgresStore::connect_with(
        &pg_url(),
        PostgresOptions {
            schema: Some(schema.clone()),
            max_connections: 2,
            acquire_timeout: Duration::from_secs(3),
        },
    )
    .await
    .unwrap();
    store.migrate().await.unwrap();
    let schema = Schema(schema);
    let outbox = PostgresOutbox::new(store.pool().clone()).max_message_size(1 << 20);
    outbox.migrate().await.unwrap();

    // The lock's session, as a relay gets it.
    let claim = crate::outbox::relay::Backend::claim(&outbox).await.unwrap();
    let crate::outbox::relay::Claim::Session(mut lock) = claim else {
        panic!("{claim:?}")
    };
    for (setting, want) in [
        ("tcp_keepalives_idle", "10"),
        ("tcp_keepalives_interval", "5"),
        ("tcp_keepalives_count", "3"),
        ("tcp_user_timeout", "30000"),
    ] {
        let got: String = sqlx::query_scalar(&format!("SHOW {setting}"))
            .fetch_one(&mut lock)
            .await
            .unwrap();
        assert_eq!(got, want, "{setting}");
    }
    sqlx::Connection::close(lock).await.unwrap(); // frees the lock

    let relay = Relay::start(&conn, outbox.clone(), config()).unwrap();
    let mut tx = store.begin().await.unwrap();
    outbox.enqueue(&mut tx, to(&q, 0)).await.unwrap();
    tx.commit().await.unwrap();
    assert_eq!(read(&conn, &q, 1).await, [format!("{q}-0")]);
    until_empty(&outbox).await;
    tokio::time::sleep(Duration::from_millis(300)).await; // the listener is up
    let a = store.pool().acquire().await.expect("a first connection");
    let b = store.pool().acquire().await.expect("a second connection");
    drop((a, b));

    let stats = relay.close(Duration::from_secs(5)).await;
    assert_eq!(stats.relayed, 1, "{stats:?}");
    conn.delete_queue(&q).await.unwrap();
    conn.close().await;
    drop_schema(store, schema).await;
}

/// Rows of a held key interleaved with other rows (every other id): the others flow in order,
/// though the relay's rows in flight then make hundreds of id ranges; once the held row goes
/// out, its key's 500 rows follow it in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn interleaved_rows_of_a_held_key_wait_and_then_go_in_order() {
    let q = unique("ro-outbox-mixed");
    let nowhere = unique("ro-outbox-later");
    let conn = connect(&q).await;
    let path = std::env::temp_dir().join(format!("{}.db", unique("ro-outbox")));
    let store = SqliteStore::open(&path).await.unwrap();
    let outbox = SqliteOutbox::new(store.pool().clone()).max_message_size(1 << 20);
    outbox.migrate().await.unwrap();
    let relay = Relay::start(&conn, outbox.clone(), config()).unwrap();

    let mut tx = store.begin().await.unwrap();
    outbox
        .enqueue_keyed(&mut tx, to(&nowhere, 0), "K")
        .await
        .unwrap();
    tx.commit().await.unwrap();
    let end = tokio::time::Instant::now() + GUARD;
    while outbox
        .pending(1)
        .await
        .unwrap()
        .first()
        .is_none_or(|r| r.attempts == 0)
    {
        assert!(
            tokio::time::Instant::now() < end,
            "K's first row is refused"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let mut tx = store.begin().await.unwrap();
    for n in 0..1000 {
        if n % 2 == 0 {
            outbox.enqueue_keyed(&mut tx, to(&q, n), "K").await.unwrap();
        } else {
            outbox.enqueue(&mut tx, to(&q, n)).await.unwrap();
        }
    }
    tx.commit().await.unwrap();
    let odd: Vec<String> = (0..1000)
        .filter(|n| n % 2 == 1)
        .map(|n| format!("{q}-{n}"))
        .collect();
    assert_eq!(
        read(&conn, &q, 500).await,
        odd,
        "the keyless rows, in order"
    );
    tokio::time::sleep(Duration::from_millis(300)).await; // the held row is retried
    assert_eq!(conn.queue_info(&q).await.unwrap().messages, 0, "K waits");

    conn.declare(&Topology::new().queue(Queue::new(&nowhere)))
        .await
        .unwrap();
    assert_eq!(read(&conn, &nowhere, 1).await, [format!("{nowhere}-0")]);
    let even: Vec<String> = (0..1000)
        .filter(|n| n % 2 == 0)
        .map(|n| format!("{q}-{n}"))
        .collect();
    assert_eq!(read(&conn, &q, 500).await, even, "then K's rows, in order");
    until_empty(&outbox).await;
    let stats = relay.close(Duration::from_secs(5)).await;
    assert_eq!(stats.relayed, 1001, "{stats:?}");
    assert_eq!(conn.queue_info(&q).await.unwrap().messages, 0, "none twice");

    conn.delete_queue(&q).await.unwrap();
    conn.delete_queue(&nowhere).await.unwrap();
    conn.close().await;
    store.pool().close().await;
    for ext in ["", "-wal", "-shm", "-relay.lock"] {
        let _ = std::fs::remove_file(format!("{}{ext}", path.display()));
    }
}

/// The relay's deletes on SQLite do not wait for the disk, and leave every connection of the
/// pool as it was (`synchronous = FULL`, the store's setting) for the application's commits.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_deletes_leave_the_pools_connections_synced() {
    let q = unique("ro-outbox-sync");
    let conn = connect(&q).await;
    let path = std::env::temp_dir().join(format!("{}.db", unique("ro-outbox")));
    let store = SqliteStore::open(&path).await.unwrap();
    let outbox = SqliteOutbox::new(store.pool().clone()).max_message_size(1 << 20);
    outbox.migrate().await.unwrap();
    let relay = Relay::start(&conn, outbox.clone(), config()).unwrap();
    for chunk in 0..5u64 {
        let mut tx = store.begin().await.unwrap();
        outbox
            .enqueue_all(&mut tx, (chunk * 100..(chunk + 1) * 100).map(|n| to(&q, n)))
            .await
            .unwrap();
        tx.commit().await.unwrap();
    }
    assert_eq!(read(&conn, &q, 500).await.len(), 500);
    until_empty(&outbox).await;
    let stats = relay.close(Duration::from_secs(5)).await;
    assert_eq!(stats.relayed, 500, "{stats:?}");
    // Every connection the pool has (the store opens at most 4), all at once.
    let mut held = Vec::new();
    for _ in 0..4 {
        let mut c = store.pool().acquire().await.unwrap();
        let synchronous: i64 = sqlx::query_scalar("PRAGMA synchronous")
            .fetch_one(&mut *c)
            .await
            .unwrap();
        assert_eq!(synchronous, 2, "FULL");
        held.push(c);
    }
    drop(held);
    conn.delete_queue(&q).await.unwrap();
    conn.close().await;
    store.pool().close().await;
    for ext in ["", "-wal", "-shm", "-relay.lock"] {
        let _ = std::fs::remove_file(format!("{}{ext}", path.display()));
    }
}

/// With a rollback journal (not WAL) the relay's delete stays synced and still deletes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_deletes_with_a_rollback_journal_stay_synced() {
    use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions};
    let path = std::env::temp_dir().join(format!("{}.db", unique("ro-outbox")));
    let pool = SqlitePoolOptions::new()
        .max_connections(1)
        .connect_with(
            SqliteConnectOptions::new()
                .filename(&path)
                .create_if_missing(true)
                .journal_mode(SqliteJournalMode::Delete)
                .synchronous(sqlx::sqlite::SqliteSynchronous::Full),
        )
        .await
        .unwrap();
    let outbox = SqliteOutbox::new(pool.clone());
    outbox.migrate().await.unwrap();
    let mut tx = pool.begin().await.unwrap();
    outbox
        .enqueue_all(&mut tx, (0..3).map(|n| to("q", n)))
        .await
        .unwrap();
    tx.commit().await.unwrap();
    let ids: Vec<i64> = outbox
        .pending(10)
        .await
        .unwrap()
        .iter()
        .map(|r| r.id)
        .collect();
    let removed = crate::outbox::relay::Backend::remove(&outbox, &ids)
        .await
        .unwrap();
    assert_eq!(removed, 3);
    assert!(outbox.pending(10).await.unwrap().is_empty());
    let synchronous: i64 = sqlx::query_scalar("PRAGMA synchronous")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(synchronous, 2, "FULL");
    pool.close().await;
    for ext in ["", "-journal"] {
        let _ = std::fs::remove_file(format!("{}{ext}", path.display()));
    }
}
