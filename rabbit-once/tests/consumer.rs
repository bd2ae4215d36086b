//! The idempotent consumer against the real broker, a real SQLite file and the real PostgreSQL:
//! every test has its own queue and its own database file or schema.

mod support;

use rabbit_once::headers::{ATTEMPTS_HEADER, GROUP_HEADER, REASON_HEADER};
use rabbit_once::sqlx::{self, Postgres, Sqlite, Transaction};
use rabbit_once::{
    Backoff, Connection, Consumer, ConsumerConfig, ConsumerStats, Delivery, Event, Handler,
    HandlerError, Message, MissingId, Outcome, PostgresOptions, PostgresStore, Publisher,
    PublisherConfig, Queue, RetryPolicy, SqliteStore, Store, Subscription, SubscriptionConfig,
    Topology,
};
use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use support::*;

const GUARD: Duration = Duration::from_secs(90);

/// A handler that records each application in `applied` (no unique key), and fails, panics or
/// rejects chosen ids on purpose.
#[derive(Clone, Default)]
struct Ledger {
    /// id → the attempt from which it succeeds (it fails before).
    fail_until: Arc<HashMap<String, u32>>,
    /// id → the attempt from which it stops panicking.
    panic_until: Arc<HashMap<String, u32>>,
    always_fail: Arc<HashSet<String>>,
    reject: Arc<HashSet<String>>,
    calls: Arc<AtomicU64>,
}

impl Ledger {
    fn verdict(&self, d: &Delivery) -> Result<Option<Outcome>, HandlerError> {
        self.calls.fetch_add(1, Ordering::Relaxed);
        let id = d.message_id().unwrap_or_default();
        let attempt = d.attempt();
        if self.reject.contains(id) {
            return Ok(Some(Outcome::reject("rejected by the test")));
        }
        if self.panic_until.get(id).is_some_and(|n| attempt < *n) {
            panic!("test panic for {id} at attempt {attempt}");
        }
        if self.always_fail.contains(id) {
            return Err("this message always fails".into());
        }
        if let Some(n) = self.fail_until.get(id)
            && attempt < *n
        {
            return Err(format!("fails before attempt {n}").into());
        }
        Ok(None)
    }
}

fn seq_or_null(d: &Delivery) -> Option<i64> {
    std::str::from_utf8(d.body())
        .ok()
        .filter(|s| s.starts_with("{\"seq\":"))
        .map(|_| seq_of(d.body()) as i64)
}

macro_rules! ledger_handler {
    ($db:ty, $sql:expr) => {
        impl Handler<$db> for Ledger {
            async fn handle<'a>(
                &'a self,
                d: &'a Delivery,
                tx: &'a mut Transaction<'static, $db>,
            ) -> Result<Outcome, HandlerError> {
                if let Some(o) = self.verdict(d)? {
                    return Ok(o);
                }
                sqlx::query($sql)
                    .bind(d.message_id().unwrap_or("<none>"))
                    .bind(seq_or_null(d))
                    .execute(&mut **tx)
                    .await?;
                Ok(Outcome::Done)
            }
        }
    };
}
ledger_handler!(
    Sqlite,
    "INSERT INTO applied (message_id, seq) VALUES (?, ?)"
);
ledger_handler!(
    Postgres,
    "INSERT INTO applied (message_id, seq) VALUES ($1, $2)"
);

const CREATE_APPLIED: &str =
    "CREATE TABLE IF NOT EXISTS applied (message_id TEXT NOT NULL, seq BIGINT)";

/// What the tests need from a store besides the `Store` trait.
trait TestDb: Store {
    async fn create_applied(&self);
    async fn applied(&self) -> HashMap<String, u64>;
}

macro_rules! test_db {
    ($store:ty) => {
        impl TestDb for $store {
            async fn create_applied(&self) {
                sqlx::query(CREATE_APPLIED)
                    .execute(self.pool())
                    .await
                    .unwrap();
            }
            async fn applied(&self) -> HashMap<String, u64> {
                let rows: Vec<(String, i64)> =
                    sqlx::query_as("SELECT message_id, COUNT(*) FROM applied GROUP BY message_id")
                        .fetch_all(self.pool())
                        .await
                        .unwrap();
                rows.into_iter().map(|(k, n)| (k, n as u64)).collect()
            }
        }
    };
}
test_db!(SqliteStore);
test_db!(PostgresStore);

async fn sqlite() -> (SqliteStore, TempDb) {
    let f = TempDb::new();
    let s = SqliteStore::open(&f.path).await.unwrap();
    s.migrate().await.unwrap();
    s.create_applied().await;
    (s, f)
}

async fn postgres_via(url: &str) -> (PostgresStore, PgSchema) {
    let schema = PgSchema::new();
    let s = PostgresStore::connect_with(
        url,
        PostgresOptions {
            schema: Some(schema.name.clone()),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    s.migrate().await.unwrap();
    s.create_applied().await;
    (s, schema)
}

async fn postgres() -> (PostgresStore, PgSchema) {
    postgres_via(&pg_url()).await
}

/// Fast retries for tests.
fn config(queue: &str) -> ConsumerConfig {
    ConsumerConfig::new(queue)
        .retry(RetryPolicy::new(
            3,
            vec![Duration::from_millis(100), Duration::from_millis(200)],
        ))
        .store_backoff(Backoff::new(
            Duration::from_millis(50),
            Duration::from_millis(300),
            0.2,
        ))
}

/// Publishes `(id, seq)` messages and waits for every confirm.
async fn publish(conn: &Connection, queue: &str, msgs: impl IntoIterator<Item = (String, u64)>) {
    let p = Publisher::new(conn, PublisherConfig::default()).unwrap();
    let mut cs = Vec::new();
    for (id, seq) in msgs {
        cs.push(
            p.publish(Message::to_queue(queue, body(seq, 40)).with_message_id(id))
                .await
                .unwrap(),
        );
    }
    for c in cs {
        c.await.unwrap();
    }
    p.close(Duration::from_secs(5)).await;
}

async fn wait_for(
    consumer: &Consumer,
    what: &str,
    f: impl Fn(&ConsumerStats) -> bool,
) -> ConsumerStats {
    let ok = eventually(GUARD, || f(&consumer.stats())).await;
    assert!(ok, "{what}: {:?}", consumer.stats());
    consumer.stats()
}

async fn cleanup(conn: &Connection, queue: &str) {
    for q in config(queue).queues() {
        let _ = conn.delete_queue(&q).await;
    }
}

fn ids(range: std::ops::Range<u64>, prefix: &str) -> Vec<(String, u64)> {
    range.map(|i| (format!("{prefix}-{i}"), i)).collect()
}

/// 10,000 messages, 1,000 of their ids published a second time: applied once each.
async fn duplicates_case<S: TestDb>(store: S, batch: usize)
where
    Ledger: Handler<S::Db>,
{
    let q = unique("con-dups");
    let conn = direct().await;
    conn.declare(&Topology::new().queue(Queue::new(&q)))
        .await
        .unwrap();
    let mut msgs = ids(0..10_000, &q);
    msgs.extend(ids(0..1000, &q)); // the same ids again (a producer that re-sent them)
    publish(&conn, &q, msgs).await;
    let consumer = Consumer::start(
        &conn,
        store.clone(),
        Ledger::default(),
        config(&q).group_commit(batch, Duration::from_millis(2)),
    )
    .await
    .unwrap();
    let s = wait_for(&consumer, "all 11,000 deliveries settled", |s| {
        s.applied + s.duplicates >= 11_000
    })
    .await;
    let s2 = consumer.close(Duration::from_secs(5)).await;
    assert_eq!((s.applied, s.duplicates), (10_000, 1000), "{s:?}");
    assert_eq!(s2.applied + s2.duplicates, 11_000);
    let applied = store.applied().await;
    assert_eq!(applied.len(), 10_000, "one row per id");
    assert!(applied.values().all(|n| *n == 1), "no id applied twice");
    assert_eq!(
        conn.queue_info(&q).await.unwrap().messages,
        0,
        "everything acked"
    );
    cleanup(&conn, &q).await;
    conn.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_applies_each_id_once_and_skips_1000_duplicates() {
    let (store, _f) = sqlite().await;
    duplicates_case(store, 200).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_applies_each_id_once_and_skips_1000_duplicates() {
    let (store, _s) = postgres().await;
    duplicates_case(store, 200).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn group_commit_on_and_off_give_the_same_ledger() {
    // Off: one transaction per message. The duplicates case asserts the exact ledger.
    let (store, _f) = sqlite().await;
    duplicates_case(store, 1).await;
    let (store, _s) = postgres().await;
    duplicates_case(store, 1).await;
}

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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consumer_connection_cut_five_times_applies_every_id_once() {
    let (store, _s) = postgres().await;
    let q = unique("con-cuts");
    let setup = direct().await;
    setup
        .declare(&Topology::new().queue(Queue::new(&q)))
        .await
        .unwrap();
    const N: u64 = 10_000;
    publish(&setup, &q, ids(0..N, &q)).await;
    let (proxy, conn) = through_proxy(|c| c).await;
    let consumer = Consumer::start(
        &conn,
        store.clone(),
        Ledger::default(),
        config(&q)
            .prefetch(200)
            .group_commit(50, Duration::from_millis(1)),
    )
    .await
    .unwrap();
    for k in 1..=6u64 {
        wait_for(&consumer, "progress", |s| s.applied >= k * N / 8).await;
        let before = conn.reconnects();
        proxy.cut_all();
        assert!(eventually(GUARD, || conn.reconnects() > before).await);
    }
    let s = wait_for(&consumer, "all applied", |s| s.applied >= N).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let s2 = consumer.close(Duration::from_secs(5)).await;
    assert!(conn.reconnects() >= 5);
    assert_eq!(s.applied, N);
    assert_eq!(s2.applied, N, "nothing applied twice after the last count");
    let applied = store.applied().await;
    assert_eq!(applied.len() as u64, N);
    assert!(applied.values().all(|n| *n == 1), "no id applied twice");
    // Every delivery is accounted for: applied once, acked as a duplicate, or dropped unacked
    // because its channel died (the broker delivered it again).
    assert_eq!(
        s2.delivered,
        s2.applied + s2.duplicates + s2.abandoned,
        "{s2:?}"
    );
    assert_eq!(
        (s2.retried, s2.dead_lettered, s2.missing_id),
        (0, 0, 0),
        "{s2:?}"
    );
    // Six cuts with 200 deliveries in flight: some were caught by a cut and came again.
    assert!(s2.delivered > N, "{s2:?}");
    assert_eq!(setup.queue_info(&q).await.unwrap().messages, 0);
    conn.close().await;
    cleanup(&setup, &q).await;
}

/// Cuts in quick succession while a window of redelivered messages waits in the prefetch
/// buffer: those never started a run, so the crash-loop bound must not count them (it once
/// did, and dead-lettered them after `max_attempts` cuts).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cuts_while_redeliveries_wait_never_count_as_crash_loops() {
    let (store, _db) = sqlite().await;
    let q = unique("con-recuts");
    let setup = direct().await;
    setup
        .declare(&Topology::new().queue(Queue::new(&q)))
        .await
        .unwrap();
    const N: u64 = 4_000;
    publish(&setup, &q, ids(0..N, &q)).await;
    let (proxy, conn) = through_proxy(|c| c).await;
    let consumer = Consumer::start(
        &conn,
        store.clone(),
        Ledger::default(),
        config(&q)
            .prefetch(500)
            .group_commit(50, Duration::from_millis(1)),
    )
    .await
    .unwrap();
    wait_for(&consumer, "progress", |s| s.applied >= 300).await;
    for _ in 0..5 {
        let before = conn.reconnects();
        proxy.cut_all();
        assert!(eventually(GUARD, || conn.reconnects() > before).await);
        // Long enough for the next window to arrive, far too short to work through it.
        tokio::time::sleep(Duration::from_millis(150)).await;
    }
    let s = wait_for(&consumer, "all settled", |s| {
        s.applied + s.dead_lettered >= N
    })
    .await;
    let s2 = consumer.close(Duration::from_secs(5)).await;
    assert_eq!(
        (s.crash_looped, s.dead_lettered, s.applied),
        (0, 0, N),
        "{s:?}"
    );
    assert_eq!(s2.applied, N, "{s2:?}");
    let applied = store.applied().await;
    assert_eq!(applied.len() as u64, N);
    assert!(applied.values().all(|n| *n == 1), "no id applied twice");
    conn.close().await;
    cleanup(&setup, &q).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_database_going_away_holds_work_unacked_and_loses_nothing() {
    let pg_proxy = FaultProxy::start(pg_addr()).await.unwrap();
    let via = pg_url().replacen(&pg_addr(), &format!("127.0.0.1:{}", pg_proxy.port()), 1);
    let (store, _s) = postgres_via(&via).await;
    let q = unique("con-dbgone");
    let conn = direct().await;
    conn.declare(&Topology::new().queue(Queue::new(&q)))
        .await
        .unwrap();
    let mut events = conn.events();
    const N: u64 = 3000;
    let consumer = Consumer::start(
        &conn,
        store.clone(),
        Ledger::default(),
        config(&q)
            .prefetch(100)
            .group_commit(20, Duration::from_millis(1)),
    )
    .await
    .unwrap();
    publish(&conn, &q, ids(0..N / 2, &q)).await;
    wait_for(&consumer, "some applied", |s| s.applied >= 200).await;

    // The database goes away: existing connections reset, new ones refused.
    pg_proxy.refuse_for(Duration::from_secs(3600));
    pg_proxy.cut_all();
    publish(&conn, &q, ids(N / 2..N, &q)).await;
    tokio::time::timeout(GUARD, async {
        while !matches!(events.recv().await, Some(Event::StoreUnavailable { .. })) {}
    })
    .await
    .expect("the outage is reported");
    let held = consumer.stats();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let still = consumer.stats();
    assert_eq!(
        (still.applied, still.duplicates),
        (held.applied, held.duplicates),
        "no commit, so no progress"
    );
    let on_broker = conn.queue_info(&q).await.unwrap();
    assert!(
        on_broker.messages as u64 >= N - held.applied - 100,
        "unapplied messages stay on the broker (ready {} + at most prefetch unacked)",
        on_broker.messages
    );

    pg_proxy.refuse_for(Duration::ZERO);
    // A commit whose reply the cut lost is in doubt: the batch runs again and finds its
    // messages applied, so they count as duplicates. The ledger below is the proof.
    let s = wait_for(&consumer, "all applied after the database is back", |s| {
        s.applied + s.duplicates >= N
    })
    .await;
    consumer.close(Duration::from_secs(5)).await;
    assert!(s.store_outages >= 1);
    let applied = store.applied().await;
    assert_eq!(applied.len() as u64, N, "nothing lost");
    assert!(applied.values().all(|n| *n == 1), "nothing applied twice");
    cleanup(&conn, &q).await;
    conn.close().await;
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_handlers_apply_each_id_once() {
    let (store, _s) = postgres().await;
    let q = unique("con-conc");
    let conn = direct().await;
    conn.declare(&Topology::new().queue(Queue::new(&q)))
        .await
        .unwrap();
    let mut msgs = ids(0..3000, &q);
    msgs.extend(ids(0..300, &q));
    publish(&conn, &q, msgs).await;
    let consumer = Consumer::start(
        &conn,
        store.clone(),
        Ledger::default(),
        config(&q)
            .concurrency(4)
            .group_commit(25, Duration::from_millis(1)),
    )
    .await
    .unwrap();
    let s = wait_for(&consumer, "all", |s| s.applied + s.duplicates >= 3300).await;
    consumer.close(Duration::from_secs(5)).await;
    assert_eq!((s.applied, s.duplicates), (3000, 300));
    let applied = store.applied().await;
    assert_eq!(applied.len(), 3000);
    assert!(applied.values().all(|n| *n == 1));
    cleanup(&conn, &q).await;
    conn.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_consumer_cancelled_by_the_broker_subscribes_again() {
    let (store, _f) = sqlite().await;
    let q = unique("con-cancel");
    let conn = Connection::connect(
        support::config(&broker_uri()).topology(Topology::new().queue(Queue::new(&q))),
    )
    .await
    .unwrap();
    let mut events = conn.events();
    publish(&conn, &q, ids(0..100, &q)).await;
    let consumer = Consumer::start(&conn, store.clone(), Ledger::default(), config(&q))
        .await
        .unwrap();
    wait_for(&consumer, "first batch", |s| s.applied >= 100).await;
    let other = direct().await;
    other.delete_queue(&q).await.unwrap(); // the broker cancels our consumer
    tokio::time::timeout(GUARD, async {
        while !matches!(events.recv().await, Some(Event::ConsumerCancelled { .. })) {}
    })
    .await
    .unwrap();
    tokio::time::timeout(GUARD, async {
        while !matches!(events.recv().await, Some(Event::Subscribed { .. })) {}
    })
    .await
    .expect("subscribed again (the queue was declared again)");
    publish(&conn, &q, ids(100..200, &q)).await;
    wait_for(&consumer, "second batch", |s| s.applied >= 200).await;
    consumer.close(Duration::from_secs(5)).await;
    assert_eq!(store.applied().await.len(), 200);
    cleanup(&conn, &q).await;
    other.close().await;
    conn.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retention_deletes_old_dedup_records_in_batches() {
    let (store, _f) = sqlite().await;
    let q = unique("con-retain");
    let conn = direct().await;
    conn.declare(&Topology::new().queue(Queue::new(&q)))
        .await
        .unwrap();
    publish(&conn, &q, ids(0..2500, &q)).await;
    let consumer = Consumer::start(
        &conn,
        store.clone(),
        Ledger::default(),
        config(&q).retention(Duration::ZERO, Duration::from_millis(300)),
    )
    .await
    .unwrap();
    wait_for(&consumer, "applied", |s| s.applied >= 2500).await;
    tokio::time::sleep(Duration::from_millis(1100)).await; // records must be a second old
    let s = wait_for(&consumer, "purged", |s| s.purged >= 2500).await;
    consumer.close(Duration::from_secs(5)).await;
    assert_eq!(s.purged, 2500);
    let left: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM rabbit_once_processed")
        .fetch_one(store.pool())
        .await
        .unwrap();
    assert_eq!(left, 0);
    cleanup(&conn, &q).await;
    conn.close().await;
}

/// What the worker would only find out after `start` returned is refused by `start` itself.
#[tokio::test]
async fn start_refuses_what_the_worker_could_not_run() {
    let (store, _f) = sqlite().await;
    let conn = direct().await;
    let e = Consumer::start(
        &conn,
        store.clone(),
        Ledger::default(),
        config("q").prefetch(0),
    )
    .await
    .unwrap_err();
    assert!(e.to_string().contains("prefetch"), "{e}");
    let long = "q".repeat(250); // fits, but "<queue>.retry.100" does not
    let e = Consumer::start(&conn, store, Ledger::default(), config(&long))
        .await
        .unwrap_err();
    assert!(
        e.to_string().contains("retry and dead-letter queues"),
        "{e}"
    );
    let e = Subscription::start(&conn, SubscriptionConfig::new("q").prefetch(0)).unwrap_err();
    assert!(e.to_string().contains("prefetch"), "{e}");
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
