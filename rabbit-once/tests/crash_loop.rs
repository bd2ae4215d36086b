//! The consumer's last lines of defence against one message: a handler that takes the whole
//! process down every time (bounded by the crash-loop count), and a handler that never
//! returns (bounded by the handler timeout). Real broker, real SQLite file, real processes.

mod support;

use rabbit_once::headers::REASON_HEADER;
use rabbit_once::sqlx::{self, Sqlite, Transaction};
use rabbit_once::{
    Connection, Consumer, ConsumerConfig, Delivery, Handler, HandlerError, Outcome, Queue,
    RetryPolicy, SqliteStore, Store, Subscription, SubscriptionConfig, Topology,
};
use std::time::Duration;
use support::*;

const GUARD: Duration = Duration::from_secs(60);
const POISON: &str = "poison";
const CHILD_ENV: &str = "RONCE_CRASH_CHILD";

/// Applies a message by recording it, except the one whose body is `poison`: for that one it
/// aborts the whole process (as a segfault, an OOM kill or `kill -9` would end it), or hangs.
struct Fragile {
    hang: bool,
}

impl Handler<Sqlite> for Fragile {
    async fn handle<'a>(
        &'a self,
        d: &'a Delivery,
        tx: &'a mut Transaction<'static, Sqlite>,
    ) -> Result<Outcome, HandlerError> {
        if &d.body()[..] == POISON.as_bytes() {
            if self.hang {
                std::future::pending::<()>().await;
            }
            std::process::abort();
        }
        sqlx::query("INSERT INTO applied (message_id) VALUES (?)")
            .bind(d.message_id().unwrap_or_default())
            .execute(&mut **tx)
            .await?;
        Ok(Outcome::Done)
    }
}

fn consumer_config(queue: &str) -> ConsumerConfig {
    ConsumerConfig::new(queue).retry(RetryPolicy::new(
        3,
        vec![Duration::from_millis(100), Duration::from_millis(200)],
    ))
}

async fn store_at(path: &str) -> SqliteStore {
    let store = SqliteStore::open(path).await.unwrap();
    store.migrate().await.unwrap();
    sqlx::query("CREATE TABLE IF NOT EXISTS applied (message_id TEXT NOT NULL)")
        .execute(store.pool())
        .await
        .unwrap();
    store
}

/// Publishes `n` confirmed messages `<q>-<i>`, the one at `poison` with the poison body.
async fn publish_with_poison(conn: &Connection, q: &str, n: u64, poison: u64) {
    let p = rabbit_once::Publisher::new(conn, Default::default()).unwrap();
    for i in 0..n {
        let body = if i == poison {
            POISON.to_string()
        } else {
            format!("m{i}")
        };
        p.publish_confirmed(
            rabbit_once::Message::to_queue(q, body).with_message_id(format!("{q}-{i}")),
        )
        .await
        .unwrap();
    }
    p.close(Duration::from_secs(5)).await;
}

/// Takes the one message of `<q>.dead`: its id and reason.
async fn the_dead_letter(conn: &Connection, q: &str) -> (String, String) {
    let mut dead = Subscription::start(conn, SubscriptionConfig::new(format!("{q}.dead"))).unwrap();
    let d = tokio::time::timeout(GUARD, dead.recv())
        .await
        .unwrap()
        .unwrap();
    let id = d.message_id().unwrap_or_default().to_string();
    let reason = d
        .header(REASON_HEADER)
        .and_then(|v| v.as_str())
        .unwrap_or_default()
        .to_string();
    d.ack();
    dead.close(Duration::from_secs(1)).await;
    (id, reason)
}

/// Deletes the consumer's queues and closes `conn`.
async fn cleanup(conn: &Connection, q: &str) {
    for name in consumer_config(q).queues() {
        let _ = conn.delete_queue(&name).await;
    }
    conn.close().await;
}

/// The child process: consumes `RONCE_CRASH_CHILD=<queue>;<sqlite path>` until it has been idle
/// for a second, then exits 0 — unless the poison message aborts it first. Does nothing when
/// run as a normal test.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_child() {
    let Ok(spec) = std::env::var(CHILD_ENV) else {
        return;
    };
    let (queue, path) = spec.split_once(';').unwrap();
    let store = store_at(path).await;
    let conn = direct().await;
    let consumer = Consumer::start(
        &conn,
        store,
        Fragile { hang: false },
        consumer_config(queue),
    )
    .await
    .unwrap();
    let mut last = u64::MAX;
    loop {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let s = consumer.stats();
        let seen = s.delivered;
        if seen == last && seen > 0 {
            break;
        }
        last = seen;
    }
    consumer.close(Duration::from_secs(5)).await;
    conn.close().await;
}

/// A message whose handler kills the process every time: after `max_attempts` (3) process
/// deaths it is dead-lettered instead of being run a fourth time, and every other message is
/// applied once — on a classic queue, which counts no deliveries itself.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_that_kills_the_process_is_dead_lettered_after_max_attempts() {
    let q = unique("crash-loop");
    let db = TempDb::new();
    let conn = direct().await;
    conn.declare(&Topology::new().queue(Queue::new(&q)))
        .await
        .unwrap();
    let store = store_at(db.path.to_str().unwrap()).await;
    const N: u64 = 40;
    publish_with_poison(&conn, &q, N, 17).await;

    let exe = std::env::current_exe().unwrap();
    let mut aborted = 0;
    let mut clean = 0;
    for _ in 0..8 {
        let status = tokio::time::timeout(
            GUARD,
            tokio::process::Command::new(&exe)
                .args(["--exact", "crash_child", "--nocapture", "--test-threads=1"])
                .env(CHILD_ENV, format!("{q};{}", db.path.display()))
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .status(),
        )
        .await
        .expect("the child ends")
        .unwrap();
        if status.success() {
            clean += 1;
            break;
        }
        aborted += 1;
    }
    assert_eq!(
        (aborted, clean),
        (3, 1),
        "three runs die on the poison, the fourth dead-letters it"
    );

    let applied: Vec<(String, i64)> =
        sqlx::query_as("SELECT message_id, COUNT(*) FROM applied GROUP BY message_id")
            .fetch_all(store.pool())
            .await
            .unwrap();
    assert_eq!(applied.len() as u64, N - 1, "every other message applied");
    assert!(applied.iter().all(|(_, n)| *n == 1), "none twice");
    assert!(applied.iter().all(|(id, _)| *id != format!("{q}-17")));
    let runs: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM rabbit_once_runs")
        .fetch_one(store.pool())
        .await
        .unwrap();
    assert_eq!(
        runs, 0,
        "the run count goes with the dead letter: a replayed copy starts afresh"
    );

    let (id, reason) = the_dead_letter(&conn, &q).await;
    assert_eq!(id, format!("{q}-17"));
    assert!(reason.contains("never finished 3 runs"), "{reason}");
    assert_eq!(conn.queue_info(&q).await.unwrap().messages, 0);
    cleanup(&conn, &q).await;
}

/// A handler that never returns is cancelled after the handler timeout: its batch rolls back
/// and runs again one message at a time, the others are applied, and the hanging message fails
/// each attempt until it is dead-lettered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_handler_that_hangs_is_timed_out_retried_and_dead_lettered() {
    let q = unique("hang");
    let db = TempDb::new();
    let conn = direct().await;
    conn.declare(&Topology::new().queue(Queue::new(&q)))
        .await
        .unwrap();
    let store = store_at(db.path.to_str().unwrap()).await;
    publish_with_poison(&conn, &q, 20, 5).await;
    let consumer = Consumer::start(
        &conn,
        store.clone(),
        Fragile { hang: true },
        consumer_config(&q).handler_timeout(Duration::from_millis(300)),
    )
    .await
    .unwrap();
    let done = eventually(GUARD, || {
        let s = consumer.stats();
        s.applied >= 19 && s.dead_lettered >= 1
    })
    .await;
    let s = consumer.close(Duration::from_secs(5)).await;
    assert!(done, "{s:?}");
    assert_eq!((s.applied, s.dead_lettered, s.retried), (19, 1, 2), "{s:?}");
    assert!(s.handler_timeouts >= 3, "{s:?}");
    let (id, reason) = the_dead_letter(&conn, &q).await;
    assert_eq!(id, format!("{q}-5"));
    assert!(reason.contains("did not return within"), "{reason}");
    cleanup(&conn, &q).await;
}
