//! Shared helpers for the integration tests: the real broker, unique names, reading a queue
//! back, sequence-numbered bodies. [`consumer`] holds the idempotent consumer's fixtures, [`hostile`]
//! the harness of the hostile-broker tests.
#![allow(dead_code)]

pub mod consumer;
pub mod hostile;

use rabbit_once::{
    Confirmation, Connection, ConnectionConfig, Message, Publisher, PublisherConfig, Subscription,
    SubscriptionConfig,
};
use std::collections::HashMap;
use std::time::Duration;

#[allow(unused_imports)]
pub use rabbit_once_testkit::{BrokerNode, FaultProxy, unique};

/// The shared broker (never stopped by a test). `RONCE_AMQP_URI` overrides.
pub fn broker_uri() -> String {
    std::env::var("RONCE_AMQP_URI")
        .unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".into())
}

/// `host:port` of the shared broker, for a proxy to forward to.
pub fn broker_addr() -> String {
    let uri = broker_uri();
    let rest = uri.split_once('@').map_or(uri.as_str(), |(_, r)| r);
    let rest = rest.trim_start_matches("amqp://");
    rest.split('/')
        .next()
        .unwrap_or("127.0.0.1:5672")
        .to_string()
}

/// A URI for the shared broker's credentials and vhost, through `127.0.0.1:port`.
pub fn uri_via(port: u16) -> String {
    format!("amqp://guest:guest@127.0.0.1:{port}/%2f")
}

/// A fast-reconnecting config (short backoff, short heartbeat) for tests.
pub fn config(uri: &str) -> ConnectionConfig {
    ConnectionConfig::new(uri)
        .unwrap()
        .name(unique("test"))
        .heartbeat(Duration::from_secs(2))
        .connect_timeout(Duration::from_secs(5))
        .backoff(rabbit_once::Backoff::new(
            Duration::from_millis(20),
            Duration::from_millis(500),
            0.5,
        ))
}

/// A direct connection to the shared broker, for setting up and reading back.
pub async fn direct() -> Connection {
    Connection::connect(config(&broker_uri())).await.unwrap()
}

/// A body that starts with `{"seq":i}`, padded with spaces to `size` bytes.
pub fn body(seq: u64, size: usize) -> Vec<u8> {
    let mut b = format!("{{\"seq\":{seq}}}").into_bytes();
    if b.len() < size {
        b.resize(size, b' ');
    }
    b
}

pub fn seq_message(queue: &str, seq: u64, size: usize) -> Message {
    Message::to_queue(queue, body(seq, size))
}

/// The `seq` of a body made by [`body`].
pub fn seq_of(body: &[u8]) -> u64 {
    let s = std::str::from_utf8(&body[..body.len().min(40)]).unwrap_or("");
    let digits: String = s
        .trim_start_matches("{\"seq\":")
        .chars()
        .take_while(|c| c.is_ascii_digit())
        .collect();
    digits
        .parse()
        .unwrap_or_else(|_| panic!("not a seq body: {s:?}"))
}

/// Reads every message of `queue` (acking them) until `idle` passes with nothing new, or
/// `expect` messages were read. Returns (message_id, body) in queue order.
pub async fn drain(
    conn: &Connection,
    queue: &str,
    expect: usize,
    idle: Duration,
) -> Vec<(String, bytes::Bytes)> {
    let mut sub = Subscription::start(conn, SubscriptionConfig::new(queue).prefetch(1000)).unwrap();
    let mut out = Vec::with_capacity(expect);
    loop {
        let wait = if out.len() >= expect {
            Duration::from_millis(300)
        } else {
            idle
        };
        match tokio::time::timeout(wait, sub.recv()).await {
            Ok(Some(d)) => {
                out.push((
                    d.message_id().unwrap_or_default().to_string(),
                    d.body().clone(),
                ));
                d.ack();
            }
            _ => break,
        }
    }
    sub.close(Duration::from_secs(5)).await;
    out
}

/// Waits until `f` is true, checking every 10 ms, for at most `limit` (a guard, not a timing
/// assertion). Returns whether it became true.
pub async fn eventually(limit: Duration, mut f: impl FnMut() -> bool) -> bool {
    let end = tokio::time::Instant::now() + limit;
    while tokio::time::Instant::now() < end {
        if f() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    f()
}

/// The shared PostgreSQL (`RONCE_PG_URL` overrides).
pub fn pg_url() -> String {
    std::env::var("RONCE_PG_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into())
}

/// `host:port` of the shared PostgreSQL, for a proxy to forward to.
pub fn pg_addr() -> String {
    let url = pg_url();
    let rest = url.split_once('@').map_or(url.as_str(), |(_, r)| r);
    rest.split('/')
        .next()
        .unwrap_or("127.0.0.1:5432")
        .to_string()
}

/// A PostgreSQL schema of the test's own, dropped (with everything in it) when this is dropped.
pub struct PgSchema {
    pub name: String,
}

impl PgSchema {
    pub fn new() -> Self {
        PgSchema {
            name: unique("ro_test").replace('-', "_"),
        }
    }
}

impl Drop for PgSchema {
    fn drop(&mut self) {
        let name = self.name.clone();
        // Drop runs inside the test's runtime: use a thread with a runtime of its own.
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async {
                if let Ok(pool) = rabbit_once::sqlx::PgPool::connect(&pg_url()).await {
                    let _ = rabbit_once::sqlx::query(&format!(
                        "DROP SCHEMA IF EXISTS \"{name}\" CASCADE"
                    ))
                    .execute(&pool)
                    .await;
                    pool.close().await;
                }
            });
        })
        .join();
    }
}

/// A temporary SQLite file path, removed (with its WAL files) when this is dropped.
pub struct TempDb {
    pub path: std::path::PathBuf,
}

impl TempDb {
    pub fn new() -> Self {
        TempDb {
            path: std::env::temp_dir().join(format!("{}.db", unique("ro-test"))),
        }
    }
}

impl Drop for TempDb {
    fn drop(&mut self) {
        for ext in ["", "-wal", "-shm", "-relay.lock"] {
            let _ = std::fs::remove_file(format!("{}{ext}", self.path.display()));
        }
    }
}

/// A fault proxy in front of the shared broker, and a connection through it (the fast
/// reconnecting [`config`], adjusted by `tune`).
pub async fn through_proxy(
    tune: impl FnOnce(ConnectionConfig) -> ConnectionConfig,
) -> (FaultProxy, Connection) {
    let proxy = FaultProxy::start(broker_addr()).await.unwrap();
    let conn = Connection::connect(tune(config(&uri_via(proxy.port()))))
        .await
        .unwrap();
    (proxy, conn)
}

/// [`through_proxy`] and a publisher with the default config on that connection.
pub async fn publisher_through_proxy(
    tune: impl FnOnce(ConnectionConfig) -> ConnectionConfig,
) -> (FaultProxy, Connection, Publisher) {
    let (proxy, conn) = through_proxy(tune).await;
    let p = Publisher::new(&conn, PublisherConfig::default()).unwrap();
    (proxy, conn, p)
}

/// Where [`confirm_all`] takes `(seq, confirmation)`.
pub type ConfirmTx = tokio::sync::mpsc::UnboundedSender<(u64, Confirmation)>;

/// Awaits confirmations on a task of its own, in the order they are sent: send `(seq,
/// confirmation)` as messages are accepted, drop the sender, then await the handle for
/// `seq → message_id`. Each must be confirmed (within `guard`); `on_confirmed(seq)` runs as
/// each one is.
pub fn confirm_all(
    guard: Duration,
    on_confirmed: impl Fn(u64) + Send + 'static,
) -> (ConfirmTx, tokio::task::JoinHandle<HashMap<u64, String>>) {
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<(u64, Confirmation)>();
    let done = tokio::spawn(async move {
        let mut ids = HashMap::new();
        while let Some((seq, c)) = rx.recv().await {
            let ok = tokio::time::timeout(guard, c)
                .await
                .unwrap_or_else(|_| panic!("seq {seq} unconfirmed after {guard:?}"))
                .unwrap_or_else(|e| panic!("seq {seq} failed: {e}"));
            on_confirmed(seq);
            ids.insert(seq, ok.message_id);
        }
        ids
    });
    (tx, done)
}

/// A port nothing listens on (bound, then released).
pub fn closed_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}
