//! The idempotent consumer when handling fails: retries, dead letters, panics, messages
//! without an id, lock conflicts, retry and dead-letter copies the broker refuses. Against the
//! real broker, SQLite and PostgreSQL; every test has its own queue and database.

mod support;

use rabbit_once::headers::{ATTEMPTS_HEADER, GROUP_HEADER, REASON_HEADER};
use rabbit_once::sqlx::{self, Postgres, Transaction};
use rabbit_once::{
    Connection, Consumer, Delivery, Event, Handler, HandlerError, Message, MissingId, Outcome,
    Publisher, PublisherConfig, Queue, Subscription, SubscriptionConfig, Topology,
};
use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;
use support::consumer::{
    GUARD, Ledger, TestDb, cleanup, config, ids, postgres, publish, seq_or_null, sqlite, wait_for,
};
use support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failures_are_retried_then_dead_lettered_never_lost() {
    let (store, _f) = sqlite().await;
    let q = unique("con-retry");
    let conn = direct().await;
    conn.declare(&Topology::new().queue(Queue::new(&q)))
        .await
        .unwrap();
    let msgs = ids(0..500, &q);
    let flaky: HashMap<String, u32> = msgs
        .iter()
        .filter(|(_, i)| i % 10 == 0)
        .map(|(id, _)| (id.clone(), 3))
        .collect();
    let doomed: HashSet<String> = msgs
        .iter()
        .filter(|(_, i)| i % 50 == 7)
        .map(|(id, _)| id.clone())
        .collect();
    let rejected: HashSet<String> = [format!("{q}-499")].into();
    let handler = Ledger {
        fail_until: Arc::new(flaky.clone()),
        always_fail: Arc::new(doomed.clone()),
        reject: Arc::new(rejected.clone()),
        ..Default::default()
    };
    publish(&conn, &q, msgs.clone()).await;
    let consumer = Consumer::start(&conn, store.clone(), handler, config(&q))
        .await
        .unwrap();
    let want_applied = (500 - doomed.len() - rejected.len()) as u64;
    let want_dead = (doomed.len() + rejected.len()) as u64;
    let s = wait_for(&consumer, "applied and dead-lettered", |s| {
        s.applied >= want_applied && s.dead_lettered >= want_dead
    })
    .await;
    consumer.close(Duration::from_secs(5)).await;
    // Flaky ones fail attempts 1 and 2; doomed ones fail all 3: two retries each.
    assert_eq!(s.retried, 2 * (flaky.len() + doomed.len()) as u64, "{s:?}");
    assert_eq!(
        (s.applied, s.dead_lettered),
        (want_applied, want_dead),
        "{s:?}"
    );
    let applied = store.applied().await;
    assert_eq!(applied.len() as u64, want_applied);
    assert!(applied.values().all(|n| *n == 1));
    for id in flaky.keys() {
        assert_eq!(
            applied.get(id),
            Some(&1),
            "{id} applied once after two failures"
        );
    }
    for id in doomed.iter().chain(&rejected) {
        assert!(!applied.contains_key(id), "{id} must not be applied");
    }
    // Dead letters carry why, how often and for whom.
    let mut sub = Subscription::start(&conn, SubscriptionConfig::new(format!("{q}.dead"))).unwrap();
    let mut dead = HashMap::new();
    for _ in 0..want_dead {
        let d = tokio::time::timeout(GUARD, sub.recv())
            .await
            .unwrap()
            .unwrap();
        let reason = d
            .header(REASON_HEADER)
            .and_then(|v| v.as_str())
            .unwrap()
            .to_string();
        let attempts = d.header(ATTEMPTS_HEADER).and_then(|v| v.as_i64()).unwrap();
        assert_eq!(
            d.header(GROUP_HEADER).and_then(|v| v.as_str()),
            Some(q.as_str())
        );
        dead.insert(d.message_id().unwrap().to_string(), (reason, attempts));
        d.ack();
    }
    sub.close(Duration::from_secs(1)).await;
    for id in &doomed {
        let (reason, attempts) = &dead[id];
        assert_eq!(*attempts, 3);
        assert!(
            reason.contains("gave up after 3 attempts") && reason.contains("always fails"),
            "{reason}"
        );
    }
    let (reason, attempts) = &dead[&format!("{q}-499")];
    assert_eq!((reason.as_str(), *attempts), ("rejected by the test", 1));
    cleanup(&conn, &q).await;
    conn.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panicking_handler_is_retried_and_the_consumer_lives_on() {
    let (store, _f) = sqlite().await;
    let q = unique("con-panic");
    let conn = direct().await;
    conn.declare(&Topology::new().queue(Queue::new(&q)))
        .await
        .unwrap();
    let msgs = ids(0..100, &q);
    let panicky: HashMap<String, u32> = msgs
        .iter()
        .filter(|(_, i)| i % 25 == 3)
        .map(|(id, _)| (id.clone(), 2))
        .collect();
    let handler = Ledger {
        panic_until: Arc::new(panicky.clone()),
        ..Default::default()
    };
    publish(&conn, &q, msgs).await;
    let consumer = Consumer::start(&conn, store.clone(), handler, config(&q))
        .await
        .unwrap();
    let s = wait_for(&consumer, "all applied", |s| s.applied >= 100).await;
    assert!(s.handler_panics >= panicky.len() as u64, "{s:?}");
    assert_eq!(s.retried, panicky.len() as u64);
    // Still alive: new messages are applied.
    publish(&conn, &q, ids(100..110, &q)).await;
    wait_for(&consumer, "alive after panics", |s| s.applied >= 110).await;
    consumer.close(Duration::from_secs(5)).await;
    let applied = store.applied().await;
    assert_eq!(applied.len(), 110);
    assert!(applied.values().all(|n| *n == 1));
    cleanup(&conn, &q).await;
    conn.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_without_id_is_dead_lettered_with_a_reason_or_hashed_on_request() {
    let (store, _f) = sqlite().await;
    let q = unique("con-noid");
    let conn = direct().await;
    conn.declare(&Topology::new().queue(Queue::new(&q)))
        .await
        .unwrap();
    // The publisher always sets an id; a foreign producer may not: strip it with a raw publish.
    let raw = RawPublisher::new(&conn).await;
    raw.publish_without_id(&q, b"{\"seq\":1}").await;
    publish(&conn, &q, ids(2..3, &q)).await;
    let consumer = Consumer::start(&conn, store.clone(), Ledger::default(), config(&q))
        .await
        .unwrap();
    let s = wait_for(&consumer, "one applied, one dead", |s| {
        s.applied >= 1 && s.dead_lettered >= 1
    })
    .await;
    consumer.close(Duration::from_secs(5)).await;
    assert_eq!((s.missing_id, s.dead_lettered, s.applied), (1, 1, 1));
    let mut sub = Subscription::start(&conn, SubscriptionConfig::new(format!("{q}.dead"))).unwrap();
    let d = tokio::time::timeout(GUARD, sub.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        d.header(REASON_HEADER).and_then(|v| v.as_str()),
        Some("missing message_id")
    );
    assert_eq!(seq_of(d.body()), 1);
    d.ack();
    sub.close(Duration::from_secs(1)).await;

    // Opt-in: the key is a hash of routing key and body, so the same body twice applies once.
    raw.publish_without_id(&q, b"{\"seq\":7}").await;
    raw.publish_without_id(&q, b"{\"seq\":7}").await;
    let consumer = Consumer::start(
        &conn,
        store.clone(),
        Ledger::default(),
        config(&q).missing_id(MissingId::HashBody),
    )
    .await
    .unwrap();
    let s = wait_for(&consumer, "hashed", |s| s.applied + s.duplicates >= 2).await;
    consumer.close(Duration::from_secs(5)).await;
    assert_eq!((s.applied, s.duplicates, s.dead_lettered), (1, 1, 0));
    cleanup(&conn, &q).await;
    conn.close().await;
}

/// Publishes without a message id, the way a producer that is not rabbit-once might.
struct RawPublisher {
    p: Publisher,
}

impl RawPublisher {
    async fn new(conn: &Connection) -> Self {
        RawPublisher {
            p: Publisher::new(conn, PublisherConfig::default()).unwrap(),
        }
    }

    async fn publish_without_id(&self, queue: &str, body: &[u8]) {
        let m = Message::to_queue(queue, body.to_vec()).with_message_id("");
        self.p.publish_confirmed(m).await.unwrap();
    }
}

/// A handler that updates one hot row with a short lock timeout: while another transaction
/// holds that row, every attempt ends in 55P03 (lock not available).
#[derive(Clone)]
struct HotRow;

impl Handler<Postgres> for HotRow {
    async fn handle<'a>(
        &'a self,
        d: &'a Delivery,
        tx: &'a mut Transaction<'static, Postgres>,
    ) -> Result<Outcome, HandlerError> {
        sqlx::query("SET LOCAL lock_timeout = '50ms'")
            .execute(&mut **tx)
            .await?;
        sqlx::query("UPDATE hot SET n = n + 1 WHERE id = 1")
            .execute(&mut **tx)
            .await?;
        sqlx::query("INSERT INTO applied (message_id, seq) VALUES ($1, $2)")
            .bind(d.message_id().unwrap_or("<none>"))
            .bind(seq_or_null(d))
            .execute(&mut **tx)
            .await?;
        Ok(Outcome::Done)
    }
}

/// Lock conflicts and lock timeouts are the database's fault, not the message's: held and
/// run again until the lock is free — never retried through the retry queue, never
/// dead-lettered — however long the lock is held (here far longer than the old limit of ten
/// conflicts in a row).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lock_conflicts_are_held_and_never_count_as_a_failed_attempt() {
    let (store, _s) = postgres().await;
    sqlx::query("CREATE TABLE hot (id INT PRIMARY KEY, n BIGINT NOT NULL)")
        .execute(store.pool())
        .await
        .unwrap();
    sqlx::query("INSERT INTO hot VALUES (1, 0)")
        .execute(store.pool())
        .await
        .unwrap();
    let q = unique("con-locked");
    let conn = direct().await;
    conn.declare(&Topology::new().queue(Queue::new(&q)))
        .await
        .unwrap();

    // Another transaction holds the hot row for 6 s.
    let mut holder = store.pool().begin().await.unwrap();
    sqlx::query("SELECT n FROM hot WHERE id = 1 FOR UPDATE")
        .execute(&mut *holder)
        .await
        .unwrap();
    const N: u64 = 20;
    publish(&conn, &q, ids(0..N, &q)).await;
    let consumer = Consumer::start(
        &conn,
        store.clone(),
        HotRow,
        config(&q).group_commit(5, Duration::from_millis(1)),
    )
    .await
    .unwrap();
    wait_for(&consumer, "conflicts while the row is held", |s| {
        s.store_conflicts >= 15
    })
    .await;
    tokio::time::sleep(Duration::from_secs(4)).await;
    let held = consumer.stats();
    assert_eq!(held.applied, 0, "nothing can commit while the row is held");
    holder.commit().await.unwrap();

    let s = wait_for(&consumer, "all applied once the lock is free", |s| {
        s.applied >= N
    })
    .await;
    consumer.close(Duration::from_secs(5)).await;
    assert_eq!(
        (s.retried, s.dead_lettered, s.handler_errors),
        (0, 0, 0),
        "{s:?}"
    );
    let applied = store.applied().await;
    assert_eq!(applied.len() as u64, N);
    assert!(applied.values().all(|n| *n == 1));
    let n: i64 = sqlx::query_scalar("SELECT n FROM hot WHERE id = 1")
        .fetch_one(store.pool())
        .await
        .unwrap();
    assert_eq!(n as u64, N);
    cleanup(&conn, &q).await;
    conn.close().await;
}

/// Reads one message from `queue` and returns its reason header and its header count.
async fn one_dead_letter(conn: &Connection, queue: &str) -> (Delivery, String) {
    let mut sub = Subscription::start(conn, SubscriptionConfig::new(queue)).unwrap();
    let d = tokio::time::timeout(GUARD, sub.recv())
        .await
        .expect("a dead letter")
        .unwrap();
    let reason = d
        .header(REASON_HEADER)
        .and_then(|v| v.as_str())
        .unwrap_or_default()
        .to_string();
    sub.close(Duration::from_secs(1)).await;
    (d, reason)
}

/// A retry copy the broker will never take (its retry queue was deleted, so it is unroutable)
/// sends the message to the dead-letter queue with both reasons — no requeue loop.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_retry_copy_dead_letters_the_message() {
    let (store, _f) = sqlite().await;
    let q = unique("con-norety");
    let conn = direct().await;
    conn.declare(&Topology::new().queue(Queue::new(&q)))
        .await
        .unwrap();
    let msgs = ids(0..1, &q);
    let handler = Ledger {
        fail_until: Arc::new([(msgs[0].0.clone(), 5)].into()),
        ..Default::default()
    };
    let consumer = Consumer::start(&conn, store, handler.clone(), config(&q))
        .await
        .unwrap();
    // Once it consumes, its retry queues were declared: delete them behind its back.
    let subscribed = tokio::time::timeout(GUARD, async {
        while conn.queue_info(&q).await.unwrap().consumers == 0 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .is_ok();
    assert!(subscribed);
    for rq in config(&q).queues().iter().filter(|n| n.contains(".retry.")) {
        conn.delete_queue(rq).await.unwrap();
    }
    publish(&conn, &q, msgs.clone()).await;
    let s = wait_for(&consumer, "dead-lettered", |s| s.dead_lettered >= 1).await;
    consumer.close(Duration::from_secs(5)).await;
    assert_eq!((s.retried, s.dead_lettered, s.applied), (0, 1, 0), "{s:?}");
    assert_eq!(handler.calls.load(Ordering::Relaxed), 1);
    let (d, reason) = one_dead_letter(&conn, &format!("{q}.dead")).await;
    assert_eq!(d.message_id(), Some(msgs[0].0.as_str()));
    assert!(
        reason.contains("fails before attempt 5") && reason.contains("retry copy was refused"),
        "{reason}"
    );
    cleanup(&conn, &q).await;
    conn.close().await;
}

/// A message whose own headers nearly fill a frame: the dead-letter copy (ours added) no longer
/// fits, so a bare copy — body, id and our headers — is dead-lettered instead, saying so.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_letter_copy_too_large_for_a_frame_goes_bare() {
    let (store, _f) = sqlite().await;
    let q = unique("con-bare");
    let conn = direct().await;
    conn.declare(&Topology::new().queue(Queue::new(&q)))
        .await
        .unwrap();
    let id = format!("{q}-0");
    let p = Publisher::new(&conn, PublisherConfig::default()).unwrap();
    p.publish_confirmed(
        Message::to_queue(&q, body(0, 40))
            .with_message_id(&id)
            .with_header("fat", "f".repeat(130_900)),
    )
    .await
    .unwrap();
    p.close(Duration::from_secs(5)).await;
    let handler = Ledger {
        reject: Arc::new([id.clone()].into()),
        ..Default::default()
    };
    let consumer = Consumer::start(&conn, store, handler, config(&q))
        .await
        .unwrap();
    let s = wait_for(&consumer, "dead-lettered", |s| s.dead_lettered >= 1).await;
    consumer.close(Duration::from_secs(5)).await;
    assert_eq!((s.dead_lettered, s.held), (1, 0), "{s:?}");
    let (d, reason) = one_dead_letter(&conn, &format!("{q}.dead")).await;
    assert_eq!(d.message_id(), Some(id.as_str()));
    assert_eq!(seq_of(d.body()), 0, "the body is kept");
    assert!(d.header("fat").is_none());
    assert!(
        reason.contains("rejected by the test") && reason.contains("original properties dropped"),
        "{reason}"
    );
    cleanup(&conn, &q).await;
    conn.close().await;
}

/// A dead-letter target the broker refuses (an exchange nobody declared): the message is held
/// unacked with a loud event — not requeued every second, not dropped — and goes back to the
/// queue when the consumer stops.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_dead_letter_target_holds_the_message_and_says_so() {
    let (store, _f) = sqlite().await;
    let q = unique("con-nodlx");
    let conn = direct().await;
    conn.declare(&Topology::new().queue(Queue::new(&q)))
        .await
        .unwrap();
    let msgs = ids(0..3, &q);
    let handler = Ledger {
        reject: Arc::new([msgs[1].0.clone()].into()),
        ..Default::default()
    };
    let mut events = conn.events();
    let cfg = config(&q).dead_letter(rabbit_once::DeadLetter::Exchange {
        exchange: unique("con-nodlx-missing"),
        routing_key: "dead".into(),
    });
    let consumer = Consumer::start(&conn, store.clone(), handler.clone(), cfg)
        .await
        .unwrap();
    publish(&conn, &q, msgs.clone()).await;
    let ev = tokio::time::timeout(GUARD, async {
        loop {
            if let Some(Event::DeadLetterRefused {
                message_id, reason, ..
            }) = events.recv().await
            {
                return (message_id, reason);
            }
        }
    })
    .await
    .expect("the refusal is reported");
    assert_eq!(ev.0.as_deref(), Some(msgs[1].0.as_str()));
    assert!(ev.1.contains("does not exist"), "{}", ev.1);
    let s = wait_for(&consumer, "the others applied", |s| s.applied >= 2).await;
    let calls = handler.calls.load(Ordering::Relaxed);
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        handler.calls.load(Ordering::Relaxed),
        calls,
        "no requeue loop"
    );
    let s2 = consumer.stats();
    assert_eq!(
        (s2.held, s2.dead_lettered, s2.delivered),
        (1, 0, s.delivered)
    );
    consumer.close(Duration::from_secs(5)).await;
    assert_eq!(
        conn.queue_info(&q).await.unwrap().messages,
        1,
        "the held message is back on the queue"
    );
    assert_eq!(store.applied().await.len(), 2);
    cleanup(&conn, &q).await;
    conn.close().await;
}
