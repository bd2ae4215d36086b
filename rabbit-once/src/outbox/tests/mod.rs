//! The outbox table against the real databases: a row exists if and only if its transaction
//! committed, every property survives, and the pending set finds a row that committed late.

use super::{PostgresOutbox, SqliteOutbox};
use crate::dedup::Store;
use crate::message::Message;
use crate::outbox::{Relay, RelayConfig};
use crate::{
    Connection, ConnectionConfig, PostgresOptions, PostgresStore, Queue, SqliteStore, Subscription,
    SubscriptionConfig, Topology,
};
use std::time::Duration;

fn pg_url() -> String {
    std::env::var("RONCE_PG_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into())
}

fn unique(prefix: &str) -> String {
    format!("{prefix}_{}_{}", std::process::id(), fastrand::u64(..))
}

/// A test's own PostgreSQL schema: dropped by `drop_schema`, or by `Drop` when a test fails
/// before it gets there.
struct Schema(String);

impl Drop for Schema {
    fn drop(&mut self) {
        let name = std::mem::take(&mut self.0);
        if name.is_empty() {
            return;
        }
        // Drop runs inside the test's runtime: use a thread with a runtime of its own.
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async {
                if let Ok(pool) = sqlx::PgPool::connect(&pg_url()).await {
                    let _ = sqlx::query(&format!("DROP SCHEMA IF EXISTS \"{name}\" CASCADE"))
                        .execute(&pool)
                        .await;
                    pool.close().await;
                }
            });
        })
        .join();
    }
}

/// A fresh PostgreSQL schema (the pool's search_path), dropped by `drop_schema`.
async fn postgres() -> (PostgresStore, PostgresOutbox, Schema) {
    let schema = unique("ro_outbox");
    let store = PostgresStore::connect_with(
        &pg_url(),
        PostgresOptions {
            schema: Some(schema.clone()),
            ..PostgresOptions::default()
        },
    )
    .await
    .unwrap();
    store.migrate().await.unwrap(); // creates the schema
    let outbox = PostgresOutbox::new(store.pool().clone()).max_message_size(1 << 20);
    outbox.migrate().await.unwrap();
    outbox.migrate().await.unwrap(); // idempotent
    (store, outbox, Schema(schema))
}

/// A test's own SQLite outbox on a fresh file (migrated, messages up to 1 MiB); `Drop` removes
/// the file and its WAL, shared memory and relay lock, also when a test fails.
struct Lite {
    path: std::path::PathBuf,
    store: SqliteStore,
    outbox: SqliteOutbox,
}

impl Lite {
    async fn new(prefix: &str) -> Lite {
        let path = std::env::temp_dir().join(format!("{}.db", unique(prefix)));
        let store = SqliteStore::open(&path).await.unwrap();
        let outbox = SqliteOutbox::new(store.pool().clone()).max_message_size(1 << 20);
        outbox.migrate().await.unwrap();
        Lite {
            path,
            store,
            outbox,
        }
    }
}

impl Drop for Lite {
    fn drop(&mut self) {
        for ext in ["", "-wal", "-shm", "-relay.lock"] {
            let _ = std::fs::remove_file(format!("{}{ext}", self.path.display()));
        }
    }
}

async fn drop_schema(store: PostgresStore, mut schema: Schema) {
    let name = std::mem::take(&mut schema.0);
    sqlx::query(&format!("DROP SCHEMA \"{name}\" CASCADE"))
        .execute(store.pool())
        .await
        .unwrap();
    store.pool().close().await;
}

fn order(n: u64) -> Message {
    Message::to_queue("orders", format!("{{\"order\":{n}}}"))
        .with_message_id(format!("order-{n}"))
        .with_header("n", n as i64)
}

#[tokio::test]
async fn sqlite_rows_exist_only_for_committed_transactions_and_keep_every_property() {
    let db = Lite::new("ro-outbox").await;
    let (store, outbox) = (db.store.clone(), db.outbox.clone());
    outbox.migrate().await.unwrap();

    let mut tx = store.begin().await.unwrap();
    outbox.enqueue(&mut tx, order(1)).await.unwrap();
    tx.rollback().await.unwrap();
    assert!(
        outbox.pending(10).await.unwrap().is_empty(),
        "rolled back: no row"
    );

    let mut tx = store.begin().await.unwrap();
    let id = outbox
        .enqueue_keyed(&mut tx, order(2), "customer-9")
        .await
        .unwrap();
    let ids = outbox
        .enqueue_all(&mut tx, (3..1203).map(order))
        .await
        .unwrap();
    assert_eq!(
        outbox.pending(10).await.unwrap().len(),
        0,
        "not visible before commit"
    );
    tx.commit().await.unwrap();
    assert_eq!((id.as_str(), ids.len()), ("order-2", 1200));

    let rows = outbox.pending(5000).await.unwrap();
    assert_eq!(rows.len(), 1201);
    assert_eq!(rows[0].message, order(2), "every property comes back");
    assert_eq!(rows[0].ordering_key.as_deref(), Some("customer-9"));
    let names: Vec<&str> = rows
        .iter()
        .map(|r| r.message.message_id().unwrap())
        .collect();
    let want: Vec<String> = (2..1203).map(|n| format!("order-{n}")).collect();
    assert_eq!(names, want, "id order is insert order");
    assert!(
        rows.iter()
            .all(|r| r.attempts == 0 && r.last_error.is_none())
    );

    let first: Vec<i64> = rows[..1000].iter().map(|r| r.id).collect();
    assert_eq!(outbox.remove(&first).await.unwrap(), 1000);
    assert_eq!(
        outbox.remove(&first).await.unwrap(),
        0,
        "removing twice is harmless"
    );
    assert_eq!(outbox.pending(5000).await.unwrap().len(), 201);

    // A message the broker would refuse is refused in the caller's transaction.
    let mut tx = store.begin().await.unwrap();
    let big = Message::to_queue("orders", vec![0u8; (1 << 20) + 1]);
    assert!(matches!(
        outbox.enqueue(&mut tx, big).await,
        Err(crate::Error::MessageTooLarge { .. })
    ));
    tx.rollback().await.unwrap();
    store.pool().close().await;
}

/// Ids are allocated at insert, not at commit: the transaction holding the lower id commits
/// last. A relay that kept a cursor "above the last id it saw" would skip it; the pending set
/// still holds it.
#[tokio::test]
async fn postgres_a_row_that_commits_after_a_later_id_is_not_skipped() {
    let (store, outbox, schema) = postgres().await;

    let mut early = store.begin().await.unwrap(); // will hold the lower id…
    outbox.enqueue(&mut early, order(7)).await.unwrap();
    let mut late = store.begin().await.unwrap();
    outbox.enqueue(&mut late, order(8)).await.unwrap();
    late.commit().await.unwrap(); // …but commits second

    let seen = outbox.pending(100).await.unwrap();
    assert_eq!(seen.len(), 1, "only the committed row is visible");
    assert_eq!(seen[0].message.message_id(), Some("order-8"));
    // The relay publishes it and removes it once confirmed.
    assert_eq!(outbox.remove(&[seen[0].id]).await.unwrap(), 1);

    early.commit().await.unwrap();
    let seen_later = outbox.pending(100).await.unwrap();
    assert_eq!(seen_later.len(), 1, "the late committer is still found");
    assert_eq!(seen_later[0].message, order(7));
    assert!(
        seen_later[0].id < seen[0].id,
        "its id is lower than one already handled"
    );

    let mut rolled_back = store.begin().await.unwrap();
    outbox.enqueue(&mut rolled_back, order(9)).await.unwrap();
    rolled_back.rollback().await.unwrap();
    assert_eq!(
        outbox.pending(100).await.unwrap().len(),
        1,
        "a rollback leaves no row"
    );

    drop_schema(store, schema).await;
}

const REFUSED: &str = "NOT_FOUND - no exchange 'gone'";

/// The status of an empty outbox, then of three rows (the first keyed) with the first refused
/// twice; discarding that row removes it and only it. A macro: the two outboxes share no trait.
macro_rules! status_and_discard {
    ($store:expr, $outbox:expr) => {{
        let (store, outbox) = (&$store, &$outbox);
        let empty = outbox.status().await.unwrap();
        assert_eq!(
            (empty.pending, empty.failed, empty.oldest_pending_age),
            (0, 0, None)
        );
        let mut tx = store.begin().await.unwrap();
        outbox
            .enqueue_keyed(&mut tx, order(1), "customer-1")
            .await
            .unwrap();
        outbox
            .enqueue_all(&mut tx, [order(2), order(3)])
            .await
            .unwrap();
        tx.commit().await.unwrap();
        let s = outbox.status().await.unwrap();
        assert_eq!((s.pending, s.failed, s.failed_rows.len()), (3, 0, 0));
        assert!(s.oldest_pending_age.is_some());

        let id = outbox.pending(1).await.unwrap()[0].id;
        for _ in 0..2 {
            super::store::record_failure(store.pool(), id, REFUSED, 1)
                .await
                .unwrap();
        }
        let s = outbox.status().await.unwrap();
        assert_eq!((s.pending, s.failed, s.failed_rows.len()), (3, 1, 1));
        let row = &s.failed_rows[0];
        assert_eq!(row.message_id, "order-1");
        assert_eq!(row.ordering_key.as_deref(), Some("customer-1"));
        assert_eq!(
            (row.exchange.as_str(), row.routing_key.as_str()),
            ("", "orders")
        );
        assert_eq!(
            (row.attempts, row.last_error.as_deref()),
            (2, Some(REFUSED))
        );
        assert!(row.retry_at_unix_ms.is_some_and(|t| t > 0));

        assert!(
            outbox.discard("order-1").await.unwrap(),
            "the row was there"
        );
        assert!(!outbox.discard("order-1").await.unwrap(), "and is gone");
        let s = outbox.status().await.unwrap();
        assert_eq!((s.pending, s.failed), (2, 0));
    }};
}

/// What an operator sees: pending rows, the oldest one's age, the refused rows with their
/// reasons; discarding a row removes it and only it.
#[tokio::test]
async fn sqlite_status_lists_refused_rows_and_discard_removes_one() {
    let db = Lite::new("ro-outbox-status").await;
    let (store, outbox) = (db.store.clone(), db.outbox.clone());
    status_and_discard!(store, outbox);
    store.pool().close().await;
}

#[tokio::test]
async fn postgres_status_lists_refused_rows_and_discard_removes_one() {
    let (store, outbox, schema) = postgres().await;
    status_and_discard!(store, outbox);
    drop_schema(store, schema).await;
}

mod faults;
mod keys;
mod locks;
mod park;
mod relay;
mod storage;

// The relay tests' harness.

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

/// Fast polls and retries; never parks (tests of parking ask for it).
fn config() -> RelayConfig {
    RelayConfig::default()
        .poll(Duration::from_millis(100))
        .retry_after(Duration::from_millis(200))
        .park_after(0)
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

async fn until_empty<B: crate::outbox::backend::Backend>(backend: &B) {
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
