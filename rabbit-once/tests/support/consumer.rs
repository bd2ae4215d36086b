//! The idempotent consumer's test fixtures, shared by `consumer.rs`, `consumer_failures.rs` and
//! `consumer_faults.rs`: the `Ledger` handler, SQLite and PostgreSQL stores, a fast-retry config.

use super::{PgSchema, TempDb, body, eventually, pg_url, seq_of};
use rabbit_once::sqlx::{self, Postgres, Sqlite, Transaction};
use rabbit_once::{
    Backoff, Connection, Consumer, ConsumerConfig, ConsumerStats, Delivery, Handler, HandlerError,
    Message, Outcome, PostgresOptions, PostgresStore, Publisher, PublisherConfig, RetryPolicy,
    SqliteStore, Store,
};
use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Bound of every wait in the consumer tests.
pub const GUARD: Duration = Duration::from_secs(90);

/// A handler that records each application in `applied` (no unique key), and fails, panics or
/// rejects chosen ids on purpose.
#[derive(Clone, Default)]
pub struct Ledger {
    /// id → the attempt from which it succeeds (it fails before).
    pub fail_until: Arc<HashMap<String, u32>>,
    /// id → the attempt from which it stops panicking.
    pub panic_until: Arc<HashMap<String, u32>>,
    pub always_fail: Arc<HashSet<String>>,
    pub reject: Arc<HashSet<String>>,
    pub calls: Arc<AtomicU64>,
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

pub fn seq_or_null(d: &Delivery) -> Option<i64> {
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

pub const CREATE_APPLIED: &str =
    "CREATE TABLE IF NOT EXISTS applied (message_id TEXT NOT NULL, seq BIGINT)";

/// What the tests need from a store besides the `Store` trait.
pub trait TestDb: Store {
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

pub async fn sqlite() -> (SqliteStore, TempDb) {
    let f = TempDb::new();
    let s = SqliteStore::open(&f.path).await.unwrap();
    s.migrate().await.unwrap();
    s.create_applied().await;
    (s, f)
}

pub async fn postgres_via(url: &str) -> (PostgresStore, PgSchema) {
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

pub async fn postgres() -> (PostgresStore, PgSchema) {
    postgres_via(&pg_url()).await
}

/// Fast retries for tests.
pub fn config(queue: &str) -> ConsumerConfig {
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
pub async fn publish(
    conn: &Connection,
    queue: &str,
    msgs: impl IntoIterator<Item = (String, u64)>,
) {
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

pub async fn wait_for(
    consumer: &Consumer,
    what: &str,
    f: impl Fn(&ConsumerStats) -> bool,
) -> ConsumerStats {
    let ok = eventually(GUARD, || f(&consumer.stats())).await;
    assert!(ok, "{what}: {:?}", consumer.stats());
    consumer.stats()
}

pub async fn cleanup(conn: &Connection, queue: &str) {
    for q in config(queue).queues() {
        let _ = conn.delete_queue(&q).await;
    }
}

pub fn ids(range: std::ops::Range<u64>, prefix: &str) -> Vec<(String, u64)> {
    range.map(|i| (format!("{prefix}-{i}"), i)).collect()
}
