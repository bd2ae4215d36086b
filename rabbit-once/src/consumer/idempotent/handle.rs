//! [`Consumer`]: the handle of a running idempotent consumer — start it, read its counters,
//! close it.

use super::config::ConsumerConfig;
use super::prepare;
use super::stats::{ConsumerCounters, ConsumerStats};
use super::worker::Worker;
use crate::connection::Connection;
use crate::consumer::handler::Handler;
use crate::dedup::Store;
use crate::error::Error;
use crate::health::{ConnectionProbe, Health, NotReady};
use crate::publisher::{Publisher, PublisherConfig};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;
use tokio::sync::watch;

/// A running idempotent consumer. Stop it with [`close`](Self::close).
///
/// Each delivery's `message_id` is recorded in the store in the same transaction as the
/// [`Handler`](crate::Handler)'s writes; the delivery is acked only after that commits, and a
/// duplicate is acked without running the handler. Failures are retried through retry queues,
/// then dead-lettered.
///
/// ```no_run
/// use rabbit_once::{Connection, Consumer, ConsumerConfig, RetryPolicy, SqliteStore};
/// use std::time::Duration;
///
/// # async fn run<H: rabbit_once::Handler<rabbit_once::sqlx::Sqlite>>(conn: Connection, handler: H) -> Result<(), Box<dyn std::error::Error>> {
/// let store = SqliteStore::open("orders.db").await?;
/// let config = ConsumerConfig::new("orders")
///     .group("orders-service") // names the dedup records; defaults to the queue name
///     .prefetch(200)
///     .group_commit(50, Duration::from_millis(2))
///     .retry(RetryPolicy::new(5, vec![Duration::from_secs(1), Duration::from_secs(30)]));
/// let consumer = Consumer::start(&conn, store, handler, config).await?;
/// // … until the service stops:
/// let stats = consumer.close(Duration::from_secs(10)).await;
/// println!("applied {}, duplicates {}", stats.applied, stats.duplicates);
/// # Ok(()) }
/// ```
#[derive(Debug)]
pub struct Consumer {
    stop: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
    counters: Arc<ConsumerCounters>,
    close_timeout: Arc<AtomicU64>,
    failure: Arc<OnceLock<Error>>,
    conn: ConnectionProbe,
}

impl Consumer {
    /// Creates the dedup table if needed, declares the retry and dead-letter queues — and the
    /// work queue too if it is a [quorum](ConsumerConfig::queue_type) queue — (on every
    /// session from now on), checks that the work queue exists, and starts consuming.
    ///
    /// Fails if the store cannot be migrated, if the broker refuses the declarations for good
    /// ([`Error::Topology`]: a queue that exists with other arguments, …), if the work queue
    /// does not exist ([`Error::QueueNotFound`]; unless
    /// [`wait_for_queue`](ConsumerConfig::wait_for_queue)), or if the connection has ended.
    ///
    /// The broker is asked only if a session is up, or comes up on the connection attempt in
    /// progress (`start` waits for at most that one attempt). With no broker reachable, `start`
    /// does not fail: the consumer declares and checks on the first session, and stops there
    /// on a fatal answer — see [`error`](Self::error).
    pub async fn start<S, H>(
        conn: &Connection,
        store: S,
        handler: H,
        config: ConsumerConfig,
    ) -> Result<Consumer, Error>
    where
        S: Store,
        H: Handler<S::Db>,
    {
        config.validate()?;
        store
            .migrate()
            .await
            .map_err(|e| Error::Store(Arc::new(e)))?;
        let prepared = prepare::at_start(conn, &config).await?;
        let counters = Arc::new(ConsumerCounters::new(&config.queue, &config.group));
        let (stop, stop_rx) = watch::channel(false);
        let close_timeout = Arc::new(AtomicU64::new(5000));
        let failure = Arc::new(OnceLock::new());
        // Retry and dead-letter copies are as large as what the broker delivered: up to its own
        // hard maximum, whatever the default for an application's publisher is.
        let publisher = Publisher::new(
            conn,
            PublisherConfig::default()
                .window(256)
                .max_message_size(COPY_MAX)
                .max_buffered_bytes(COPY_MAX)
                .name("copies"),
        )?;
        let worker = Arc::new(Worker {
            conn: conn.clone(),
            store,
            handler,
            config,
            counters: counters.clone(),
            publisher,
            stop: stop_rx.clone(),
            close_timeout: close_timeout.clone(),
            held: std::sync::Mutex::new(Vec::new()),
            failure: failure.clone(),
        });
        let task = tokio::spawn(worker.run(stop_rx, prepared));
        Ok(Consumer {
            stop,
            task,
            counters,
            close_timeout,
            failure,
            conn: conn.probe(),
        })
    }

    /// Why the consumer stopped on its own, if it did ([`is_finished`](Self::is_finished)):
    /// the connection gave up, or — when `start` found no session to ask — the broker's first
    /// answer was fatal (the work queue does not exist, the topology contradicts the broker's).
    pub fn error(&self) -> Option<Error> {
        self.failure.get().cloned()
    }

    /// The counters right now.
    pub fn stats(&self) -> ConsumerStats {
        self.counters.snapshot()
    }

    /// Whether the consumer is working, and if not why: its connection has no session (or the
    /// broker blocks it: its acks and retry copies wait), the consumer stopped on its own
    /// ([`error`](Self::error)), or its dedup store was unreachable at the last transaction
    /// (messages held unacked until it answers). No I/O and no `await`: for a health endpoint.
    pub fn health(&self) -> Health {
        let mut health = Health::default();
        self.conn.check(&mut health.not_ready);
        if self.task.is_finished() {
            let error = self.failure.get().cloned();
            health.not_ready.push(NotReady::ConsumerStopped(error));
            return health;
        }
        let down = self.counters.store_down.lock().expect("store_down lock");
        if let Some(reason) = down.as_ref() {
            health.not_ready.push(NotReady::StoreUnavailable {
                reason: reason.clone(),
            });
        }
        drop(down);
        health
    }

    /// Whether the consumer stopped on its own: the connection gave up for good, or its first
    /// session gave a fatal answer (see [`error`](Self::error)).
    pub fn is_finished(&self) -> bool {
        self.task.is_finished()
    }

    /// Stops taking deliveries, lets the batch in hand finish (commit and ack, or roll back),
    /// waits up to `timeout` for acks to be written, and closes the channel; everything not
    /// acked is redelivered by the broker. Returns the final counters.
    pub async fn close(mut self, timeout: Duration) -> ConsumerStats {
        self.close_timeout
            .store(timeout.as_millis() as u64, Ordering::Relaxed);
        self.stop.send_replace(true);
        // The batch in hand gets `timeout` too, then closing gets it again.
        if tokio::time::timeout(timeout * 2 + Duration::from_secs(1), &mut self.task)
            .await
            .is_err()
        {
            tracing::warn!(
                "consumer did not stop in time; aborted (unacked messages are redelivered)"
            );
            self.task.abort();
        }
        self.counters.snapshot()
    }
}

/// The largest retry or dead-letter copy: RabbitMQ's hard maximum message size.
const COPY_MAX: usize = crate::config::DEFAULT_MAX_BODY_SIZE as usize;
