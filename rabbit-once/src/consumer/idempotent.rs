//! The idempotent consumer: claim → handle → commit → ack, for every delivery.
//!
//! For a batch of deliveries (group commit: up to `batch_size`, or what arrived within
//! `batch_wait`), one transaction: insert every `(group, message_id)` into the dedup table;
//! those already there are duplicates (acked without running the handler); the handler applies
//! the new ones in the same transaction; commit; then ack (the subscription turns the acks into
//! one `multiple` ack). If the handler fails anywhere in a batch, the batch is rolled back and its
//! messages are run one at a time, so one bad message neither blocks nor duplicates the others.
//! A failing message is retried through a retry queue, then dead-lettered — never dropped.
//! If the database is unreachable, nothing is acked and no new work is taken until it is back.

use super::delivery::Delivery;
use super::handler::{Handler, HandlerError, Outcome};
use super::retry::{self, DeadLetter, MissingId, RetryPolicy};
use super::subscription::{Subscription, SubscriptionConfig};
use crate::backoff::Backoff;
use crate::connection::Connection;
use crate::dedup::{Failure, Store, find_sqlx_error};
use crate::error::Error;
use crate::event::Event;
use crate::publisher::{Publisher, PublisherConfig};
use crate::shutdown::stopped;
use futures_util::FutureExt;
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime};
use tokio::sync::{Semaphore, watch};
use tokio::task::JoinSet;

/// Options of an idempotent consumer.
#[derive(Debug, Clone)]
pub struct ConsumerConfig {
    pub(crate) queue: String,
    pub(crate) group: String,
    pub(crate) prefetch: u16,
    pub(crate) concurrency: usize,
    pub(crate) batch_size: usize,
    pub(crate) batch_wait: Duration,
    pub(crate) retry: RetryPolicy,
    pub(crate) dead_letter: DeadLetter,
    pub(crate) missing_id: MissingId,
    pub(crate) retention: Duration,
    pub(crate) retention_interval: Duration,
    pub(crate) store_backoff: Backoff,
    pub(crate) handler_timeout: Duration,
}

impl ConsumerConfig {
    /// Consume `queue` in consumer group `queue`, prefetch 500, one handler at a time, group
    /// commit of up to 200 messages, 5 attempts, dead letters to `<queue>.dead`.
    pub fn new(queue: impl Into<String>) -> Self {
        let queue = queue.into();
        ConsumerConfig {
            group: queue.clone(),
            dead_letter: DeadLetter::Queue(format!("{queue}.dead")),
            queue,
            prefetch: 500,
            concurrency: 1,
            batch_size: 200,
            batch_wait: Duration::from_millis(1),
            retry: RetryPolicy::default(),
            missing_id: MissingId::DeadLetter,
            retention: Duration::from_secs(7 * 24 * 3600),
            retention_interval: Duration::from_secs(3600),
            store_backoff: Backoff::new(Duration::from_millis(100), Duration::from_secs(5), 0.5),
            handler_timeout: Duration::from_secs(300),
        }
    }

    /// How long one run of the handler over a batch may take (default 5 minutes, well under
    /// RabbitMQ's 30-minute `consumer_timeout`, past which the broker would close the
    /// channel). A run that takes longer is cancelled and rolled back; the batch is run again
    /// one message at a time, and the message that hangs fails that attempt (retried, then
    /// dead-lettered like any failure).
    pub fn handler_timeout(mut self, d: Duration) -> Self {
        self.handler_timeout = d;
        self
    }

    /// The consumer group: consumers of one group apply each message once between them.
    pub fn group(mut self, g: impl Into<String>) -> Self {
        self.group = g.into();
        self
    }

    /// Most unacknowledged deliveries at a time (default 500; at least the batch size, and at
    /// least 1).
    pub fn prefetch(mut self, n: u16) -> Self {
        self.prefetch = n;
        self
    }

    /// Batches handled at once. 1 (the default) keeps strict queue order.
    pub fn concurrency(mut self, n: usize) -> Self {
        self.concurrency = n;
        self
    }

    /// Group commit: up to `size` deliveries per transaction, waiting at most `wait` for the
    /// batch to fill. `size` 1 turns it off (one transaction per message).
    pub fn group_commit(mut self, size: usize, wait: Duration) -> Self {
        self.batch_size = size;
        self.batch_wait = wait;
        self
    }

    pub fn retry(mut self, p: RetryPolicy) -> Self {
        self.retry = p;
        self
    }

    pub fn dead_letter(mut self, d: DeadLetter) -> Self {
        self.dead_letter = d;
        self
    }

    pub fn missing_id(mut self, m: MissingId) -> Self {
        self.missing_id = m;
        self
    }

    /// Dedup records older than this are deleted (default 7 days), every `interval`, in
    /// batches of 1,000. A duplicate arriving later than that is applied again.
    pub fn retention(mut self, keep: Duration, interval: Duration) -> Self {
        self.retention = keep;
        self.retention_interval = interval;
        self
    }

    /// Delay between attempts while the database is unreachable.
    pub fn store_backoff(mut self, b: Backoff) -> Self {
        self.store_backoff = b;
        self
    }

    pub fn queue(&self) -> &str {
        &self.queue
    }

    /// Every queue this consumer uses: the work queue, its retry queues and (if it is a queue)
    /// the dead-letter target — for tools that clean up after themselves.
    pub fn queues(&self) -> Vec<String> {
        let extra = retry::topology(&self.queue, &self.retry, &self.dead_letter);
        std::iter::once(self.queue.clone())
            .chain(extra.queues.iter().map(|q| q.name().to_string()))
            .collect()
    }

    fn validate(&self) -> Result<(), Error> {
        crate::transport::check_short("queue name", &self.queue).map_err(Error::Config)?;
        if self.group.is_empty() {
            return Err(Error::Config("the consumer group needs a name".into()));
        }
        if self.concurrency == 0 || self.batch_size == 0 {
            return Err(Error::Config(
                "concurrency and batch size must be at least 1".into(),
            ));
        }
        // Everything the worker would otherwise only find out after `start` returned.
        SubscriptionConfig::new(&self.queue)
            .prefetch(self.prefetch)
            .validate()?;
        retry::topology(&self.queue, &self.retry, &self.dead_letter)
            .validate()
            .map_err(|e| Error::Config(format!("retry and dead-letter queues: {e}")))?;
        if (self.prefetch as usize) < self.batch_size {
            return Err(Error::Config(format!(
                "prefetch {} is smaller than the group-commit batch size {}",
                self.prefetch, self.batch_size
            )));
        }
        if self.handler_timeout.is_zero() {
            return Err(Error::Config(
                "handler timeout must be more than zero".into(),
            ));
        }
        if self.retention_interval.is_zero() {
            return Err(Error::Config(
                "retention interval must be more than zero".into(),
            ));
        }
        self.retry.validate().map_err(Error::Config)?;
        self.store_backoff.validate().map_err(Error::Config)
    }
}

/// Counters of a consumer.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ConsumerStats {
    /// Deliveries received (duplicates and redeliveries included).
    pub delivered: u64,
    /// Messages whose handler committed.
    pub applied: u64,
    /// Deliveries whose id was already recorded: acked without running the handler.
    pub duplicates: u64,
    /// Messages sent to a retry queue.
    pub retried: u64,
    pub dead_lettered: u64,
    pub missing_id: u64,
    /// Deliveries that could not be decoded in full (see [`Delivery::malformed`]):
    /// dead-lettered with the reason, the handler never ran.
    pub malformed: u64,
    /// Transactions committed.
    pub commits: u64,
    /// Batches rolled back and run again one message at a time.
    pub split_batches: u64,
    pub handler_errors: u64,
    pub handler_panics: u64,
    /// Handler runs that did not return within the handler timeout (rolled back, retried).
    pub handler_timeouts: u64,
    /// Redelivered messages dead-lettered because their handler runs never finished
    /// (the process died inside the handler `max_attempts` times).
    pub crash_looped: u64,
    /// Times the database was found unreachable (work held, nothing acked).
    pub store_outages: u64,
    /// Transactions rolled back by the database over a lock conflict, a serialization failure,
    /// a deadlock or a statement / lock timeout: run again after a pause, never counted as the
    /// messages' failure (the fault is the database's, not theirs).
    pub store_conflicts: u64,
    /// Messages held unacked because the dead-letter target refuses them (see
    /// [`Event::DeadLetterRefused`]).
    pub held: u64,
    /// Deliveries dropped unacked because their channel died first (the broker redelivers them).
    pub abandoned: u64,
    /// Dedup records deleted by the retention job.
    pub purged: u64,
}

#[derive(Debug, Default)]
struct Counters {
    delivered: AtomicU64,
    applied: AtomicU64,
    duplicates: AtomicU64,
    retried: AtomicU64,
    dead_lettered: AtomicU64,
    missing_id: AtomicU64,
    malformed: AtomicU64,
    commits: AtomicU64,
    split_batches: AtomicU64,
    handler_errors: AtomicU64,
    handler_panics: AtomicU64,
    handler_timeouts: AtomicU64,
    crash_looped: AtomicU64,
    store_outages: AtomicU64,
    store_conflicts: AtomicU64,
    held: AtomicU64,
    abandoned: AtomicU64,
    purged: AtomicU64,
}

impl Counters {
    fn add(c: &AtomicU64, n: u64) {
        if n > 0 {
            c.fetch_add(n, Ordering::Relaxed);
        }
    }

    fn snapshot(&self) -> ConsumerStats {
        let g = |c: &AtomicU64| c.load(Ordering::Relaxed);
        ConsumerStats {
            delivered: g(&self.delivered),
            applied: g(&self.applied),
            duplicates: g(&self.duplicates),
            retried: g(&self.retried),
            dead_lettered: g(&self.dead_lettered),
            missing_id: g(&self.missing_id),
            malformed: g(&self.malformed),
            commits: g(&self.commits),
            split_batches: g(&self.split_batches),
            handler_errors: g(&self.handler_errors),
            handler_panics: g(&self.handler_panics),
            handler_timeouts: g(&self.handler_timeouts),
            crash_looped: g(&self.crash_looped),
            store_outages: g(&self.store_outages),
            store_conflicts: g(&self.store_conflicts),
            held: g(&self.held),
            abandoned: g(&self.abandoned),
            purged: g(&self.purged),
        }
    }
}

/// A running idempotent consumer. Stop it with [`shutdown`](Self::shutdown).
#[derive(Debug)]
pub struct Consumer {
    stop: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
    counters: Arc<Counters>,
    close_timeout: Arc<AtomicU64>,
}

impl Consumer {
    /// Creates the dedup table if needed, declares the retry and dead-letter queues (on every
    /// session from now on) and starts consuming. Fails if the store cannot be migrated.
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
        let counters = Arc::new(Counters::default());
        let (stop, stop_rx) = watch::channel(false);
        let close_timeout = Arc::new(AtomicU64::new(5000));
        // Retry and dead-letter copies are as large as what the broker delivered: up to its own
        // hard maximum, whatever the default for an application's publisher is.
        let publisher = Publisher::new(
            conn,
            PublisherConfig::default()
                .window(256)
                .max_message_size(COPY_MAX)
                .max_buffered_bytes(COPY_MAX),
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
        });
        let task = tokio::spawn(worker.run(stop_rx));
        Ok(Consumer {
            stop,
            task,
            counters,
            close_timeout,
        })
    }

    pub fn stats(&self) -> ConsumerStats {
        self.counters.snapshot()
    }

    /// Whether the consumer stopped on its own (the connection gave up for good).
    pub fn is_finished(&self) -> bool {
        self.task.is_finished()
    }

    /// Stops taking deliveries, lets the batch in hand finish (commit and ack, or roll back),
    /// waits up to `timeout` for acks to be written, and closes the channel; everything not
    /// acked is redelivered by the broker. Returns the final counters.
    pub async fn shutdown(mut self, timeout: Duration) -> ConsumerStats {
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

/// The dedup key of a message id that is not UTF-8: its octets in hex behind a prefix, padded
/// past 255 bytes. A UTF-8 id is a short string (at most 255 bytes) and is its own key, so the
/// two kinds can never share a key — not even a UTF-8 id that reads like the text view of
/// those octets.
fn octets_key(octets: &[u8]) -> String {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut k = String::with_capacity(300);
    k.push_str("octets:");
    for b in octets {
        k.push(HEX[(b >> 4) as usize] as char);
        k.push(HEX[(b & 15) as usize] as char);
    }
    k.push(':');
    while k.len() < 256 {
        k.push('.');
    }
    k
}

/// How publishing a retry or dead-letter copy ended.
enum Copy {
    Confirmed,
    /// The broker will never take this copy (see [`refused_for_good`]).
    Refused(Error),
    /// Not now (connection trouble, nacks): try again later.
    Failed,
    /// The original's channel is gone or the consumer is stopping: the broker redelivers it.
    Gone,
}

/// Publish failures that the same copy would meet again however often it is sent.
fn refused_for_good(e: &Error) -> bool {
    matches!(
        e,
        Error::InvalidMessage(_)
            | Error::MessageTooLarge { .. }
            | Error::ExchangeNotFound { .. }
            | Error::Refused { .. }
            | Error::Unroutable { .. }
    )
}

/// One delivery with its dedup key.
struct Item {
    d: Delivery,
    key: String,
}

/// Why a transaction did not commit.
enum Attempt {
    Committed {
        fresh: usize,
        duplicates: usize,
    },
    /// Lock conflict: run the same batch again.
    Conflict,
    /// The database is unreachable: hold the batch.
    Unavailable(String),
    /// The handler (or the data it wrote) failed; `Some(i)` when it is known that the message
    /// at index `i` of the batch gave that outcome.
    Failed(Failure_, Option<usize>),
}

/// A handler's failure, as the retry logic sees it.
enum Failure_ {
    Retry {
        after: Option<Duration>,
        reason: String,
    },
    Reject(String),
    Error(String),
    Panic(String),
    /// The handler did not return within `handler_timeout`; which message hung is unknown.
    Timeout(String),
}

/// The largest retry or dead-letter copy: RabbitMQ's hard maximum message size.
const COPY_MAX: usize = crate::config::DEFAULT_MAX_BODY_SIZE as usize;

/// Conflicts in a row on one batch before a warning is logged (it is retried regardless).
const CONFLICTS_BEFORE_WARNING: u32 = 10;

struct Worker<S: Store, H> {
    conn: Connection,
    store: S,
    handler: H,
    config: ConsumerConfig,
    counters: Arc<Counters>,
    publisher: Publisher,
    stop: watch::Receiver<bool>,
    close_timeout: Arc<AtomicU64>,
    /// Deliveries the dead-letter target refuses: held unacked until the worker stops.
    held: std::sync::Mutex<Vec<Delivery>>,
}

impl<S: Store, H: Handler<S::Db>> Worker<S, H> {
    async fn run(self: Arc<Self>, mut stop: watch::Receiver<bool>) {
        let c = &self.config;
        let topo = retry::topology(&c.queue, &c.retry, &c.dead_letter);
        tokio::select! {
            r = self.conn.declare(&topo) => if let Err(e) = r {
                tracing::error!(error = %e, "could not declare the retry and dead-letter queues; consumer stopped");
                return;
            },
            _ = stopped(&mut stop) => return,
        }
        let retention = tokio::spawn(self.clone().retention(stop.clone()));
        let mut sub = match Subscription::start(
            &self.conn,
            SubscriptionConfig::new(&c.queue).prefetch(c.prefetch),
        ) {
            Ok(s) => s,
            Err(e) => {
                tracing::error!(error = %e, "could not subscribe; consumer stopped");
                return;
            }
        };
        let slots = Arc::new(Semaphore::new(c.concurrency));
        let mut running = JoinSet::new();
        loop {
            let first = tokio::select! {
                biased;
                _ = stopped(&mut stop) => break,
                d = sub.recv() => d,
            };
            let Some(first) = first else {
                tracing::warn!("subscription ended (the connection gave up); consumer stopped");
                break;
            };
            let mut batch = vec![first];
            if c.batch_size > 1 {
                let deadline = tokio::time::Instant::now() + c.batch_wait;
                while batch.len() < c.batch_size {
                    if let Some(d) = sub.try_recv() {
                        batch.push(d);
                        continue;
                    }
                    match tokio::time::timeout_at(deadline, sub.recv()).await {
                        Ok(Some(d)) => batch.push(d),
                        _ => break,
                    }
                }
            }
            Counters::add(&self.counters.delivered, batch.len() as u64);
            if c.concurrency == 1 {
                self.process(batch).await;
            } else {
                let permit = slots.clone().acquire_owned().await.expect("never closed");
                let me = self.clone();
                running.spawn(async move {
                    me.process(batch).await;
                    drop(permit);
                });
                while running.try_join_next().is_some() {}
            }
        }
        while running.join_next().await.is_some() {}
        // Held messages go back to the broker (dropping a delivery requeues it).
        drop(std::mem::take(&mut *self.held.lock().expect("held lock")));
        let timeout = Duration::from_millis(self.close_timeout.load(Ordering::Relaxed));
        sub.close(timeout).await;
        self.publisher.close(timeout).await;
        retention.abort();
    }

    async fn process(&self, batch: Vec<Delivery>) {
        let mut items = Vec::with_capacity(batch.len());
        let mut again = Vec::new();
        for d in batch {
            if let Some(why) = d.malformed() {
                Counters::add(&self.counters.malformed, 1);
                let reason = format!("malformed delivery: {why}");
                // Its dead-letter copy needs an id of its own if it came without one.
                let key = d
                    .message_id()
                    .filter(|id| !id.is_empty())
                    .map_or_else(crate::message::new_message_id, str::to_string);
                self.dead_letter(Item { d, key }, &reason, 1).await;
                continue;
            }
            match self.key_of(&d) {
                Ok(key) if d.redelivered() => again.push(Item { d, key }),
                Ok(key) => items.push(Item { d, key }),
                Err(reason) => {
                    Counters::add(&self.counters.missing_id, 1);
                    let item = Item {
                        d,
                        key: String::new(),
                    };
                    self.dead_letter(item, reason, 1).await;
                }
            }
        }
        // Redeliveries first (they are older), each alone and counted before its handler runs.
        for item in again {
            if let Some(item) = self.count_run(item).await {
                self.run_work(vec![vec![item]]).await;
            }
        }
        if !items.is_empty() {
            self.run_work(vec![items]).await;
        }
    }

    /// The crash-loop bound. A redelivered message may be one whose handler took the process
    /// down: its run is counted in a committed row before the handler starts (the count is
    /// forgotten in the transaction that commits its effect), and once `max_attempts` runs never
    /// finished it is dead-lettered without running the handler again. Only redeliveries pay for
    /// this (one short transaction, and they run one at a time so a crash counts against the
    /// message that caused it, not its batch). Returns the item if it should run.
    async fn count_run(&self, item: Item) -> Option<Item> {
        let max = self.config.retry.max_attempts;
        match self.store.count_run(&self.config.group, &item.key).await {
            // `runs` counts this redelivery and the earlier ones; with the first delivery's
            // (uncounted) run, `runs` runs have already started and never finished.
            Ok(runs) if runs >= max => {
                Counters::add(&self.counters.crash_looped, 1);
                let reason = format!(
                    "the handler never finished {runs} runs: the process died (or lost the \
                     broker) while handling this message every time"
                );
                self.dead_letter(item, &reason, runs).await;
                None
            }
            Ok(_) => Some(item),
            Err(e) => {
                // Not counted this time; the run itself will find out whether the database is
                // there (and hold the message if it is not).
                tracing::debug!(error = %e, "could not count the run of a redelivered message");
                Some(item)
            }
        }
    }

    /// Runs a work list of batches to the end. A failed batch is split — around the message
    /// that failed if that is known, in halves if not, into single messages after a timeout —
    /// so one bad message neither blocks nor duplicates the others, and every verdict on a
    /// message comes from a run of that message alone.
    async fn run_work(&self, mut work: Vec<Vec<Item>>) {
        let mut split = false;
        while let Some(mut batch) = work.pop() {
            let Some((failure, culprit)) = self.commit_or_fail(&mut batch).await else {
                continue;
            };
            if batch.len() == 1 {
                let item = batch.pop().expect("one item");
                self.settle_failure(item, failure).await;
                continue;
            }
            if !split {
                split = true;
                Counters::add(&self.counters.split_batches, 1);
            }
            // A batch that timed out is run one message at a time: bisecting would wait out
            // the timeout once per halving.
            if matches!(failure, Failure_::Timeout(_)) {
                work.extend(batch.into_iter().rev().map(|item| vec![item]));
                continue;
            }
            match culprit {
                Some(i) => {
                    let tail = batch.split_off(i + 1);
                    let bad = batch.pop().expect("the culprit");
                    if !tail.is_empty() {
                        work.push(tail);
                    }
                    work.push(vec![bad]);
                    if !batch.is_empty() {
                        work.push(batch);
                    }
                }
                None => {
                    let tail = batch.split_off(batch.len() / 2);
                    work.push(tail);
                    work.push(batch);
                }
            }
        }
    }

    /// The dedup key: the message id, or (by policy) a hash of routing key and body.
    fn key_of(&self, d: &Delivery) -> Result<String, &'static str> {
        if let Some(id) = d.message_id().filter(|id| !id.is_empty()) {
            if !d.message_id_is_utf8() {
                return Ok(octets_key(&d.message_id_bytes().unwrap_or_default()));
            }
            if id.contains('\0') {
                return Err("invalid message_id (contains a NUL byte)");
            }
            return Ok(id.to_string());
        }
        match self.config.missing_id {
            MissingId::DeadLetter => Err("missing message_id"),
            MissingId::HashBody => {
                const HEX: &[u8; 16] = b"0123456789abcdef";
                let mut h = Sha256::new();
                h.update(d.routing_key().as_bytes());
                h.update([0u8]);
                h.update(d.body());
                let mut s = String::with_capacity(7 + 64);
                s.push_str("sha256:");
                for b in h.finalize() {
                    s.push(HEX[(b >> 4) as usize] as char);
                    s.push(HEX[(b & 15) as usize] as char);
                }
                Ok(s)
            }
        }
    }

    /// Runs `items` in one transaction until it commits (then acks them and returns `None`) or
    /// the handler fails (returns the failure; nothing acked, `items` kept). Holds the items
    /// through database outages; drops those whose channel died (the broker redelivers them).
    async fn commit_or_fail(&self, items: &mut Vec<Item>) -> Option<(Failure_, Option<usize>)> {
        let mut outage: u32 = 0;
        let mut conflicts: u32 = 0;
        loop {
            let before = items.len();
            items.retain(|i| i.d.is_live());
            Counters::add(&self.counters.abandoned, (before - items.len()) as u64);
            if items.is_empty() {
                return None;
            }
            let wait = match self.attempt(items).await {
                Attempt::Committed { fresh, duplicates } => {
                    if outage > 0 {
                        tracing::info!("dedup store reachable again");
                        self.conn.emit(Event::StoreRecovered);
                    }
                    let c = &self.counters;
                    Counters::add(&c.applied, fresh as u64);
                    Counters::add(&c.duplicates, duplicates as u64);
                    Counters::add(&c.commits, 1);
                    for item in items.drain(..) {
                        item.d.ack();
                    }
                    return None;
                }
                Attempt::Failed(f, culprit) => return Some((f, culprit)),
                Attempt::Conflict => {
                    // Contention, not the messages' fault: never an attempt of theirs. Held and
                    // run again with a growing, jittered pause (up to ~0.6 s), said once loudly
                    // if it goes on.
                    Counters::add(&self.counters.store_conflicts, 1);
                    conflicts = conflicts.saturating_add(1);
                    if conflicts == CONFLICTS_BEFORE_WARNING {
                        tracing::warn!(
                            conflicts,
                            held = items.len(),
                            "database lock conflicts or timeouts keep rolling this batch back; \
                             holding it and trying again"
                        );
                    }
                    let ms = fastrand::u64(1..10) << conflicts.min(6);
                    Duration::from_millis(ms)
                }
                Attempt::Unavailable(reason) => {
                    if outage == 0 {
                        Counters::add(&self.counters.store_outages, 1);
                        tracing::warn!(%reason, held = items.len(), "dedup store unreachable; holding messages unacked");
                        self.conn.emit(Event::StoreUnavailable { reason });
                    }
                    let delay = self.config.store_backoff.delay(outage);
                    outage = outage.saturating_add(1);
                    delay
                }
            };
            let mut stop = self.stop.clone();
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = stopped(&mut stop) => {
                    // Shutting down: leave them unacked; the broker redelivers them.
                    Counters::add(&self.counters.abandoned, items.len() as u64);
                    items.clear();
                    return None;
                }
            }
        }
    }

    async fn attempt(&self, items: &[Item]) -> Attempt {
        let mut tx = match self.store.begin().await {
            Ok(tx) => tx,
            Err(e) => return self.store_trouble(&e, "begin").await,
        };
        // The first occurrence of a key in the batch is the candidate; later ones are
        // duplicates of it within this very transaction.
        let mut first: HashMap<&str, usize> = HashMap::with_capacity(items.len());
        let mut keys: Vec<&str> = Vec::with_capacity(items.len());
        for (i, item) in items.iter().enumerate() {
            if let std::collections::hash_map::Entry::Vacant(v) = first.entry(item.key.as_str()) {
                v.insert(i);
                keys.push(item.key.as_str());
            }
        }
        let claimed = match self.store.claim(&mut tx, &self.config.group, &keys).await {
            Ok(c) => c,
            Err(e) => {
                let _ = tx.rollback().await;
                return self.store_trouble(&e, "claim").await;
            }
        };
        let fresh_idx: Vec<usize> = keys
            .iter()
            .zip(&claimed)
            .filter(|(_, new)| **new)
            .map(|(k, _)| first[k])
            .collect();
        let fresh: Vec<&Delivery> = fresh_idx.iter().map(|&i| &items[i].d).collect();
        if !fresh.is_empty() {
            let run = AssertUnwindSafe(self.handler.handle_batch(&fresh, &mut tx)).catch_unwind();
            let limit = self.config.handler_timeout;
            let Ok(ran) = tokio::time::timeout(limit, run).await else {
                // Dropping the handler's future cancels whatever it awaited; the transaction
                // is rolled back like after any failure.
                let _ = tx.rollback().await;
                Counters::add(&self.counters.handler_timeouts, 1);
                tracing::warn!(
                    ?limit,
                    messages = fresh.len(),
                    "handler timed out; rolled back"
                );
                return Attempt::Failed(
                    Failure_::Timeout(format!("the handler did not return within {limit:?}")),
                    None,
                );
            };
            let failure = match ran {
                Ok(Ok(outcomes)) => match outcomes.iter().position(|o| *o != Outcome::Done) {
                    None if outcomes.len() == fresh.len() => None,
                    None => Some((
                        Failure_::Error(format!(
                            "handle_batch returned {} outcomes for {} messages",
                            outcomes.len(),
                            fresh.len()
                        )),
                        None,
                    )),
                    Some(k) => {
                        let f = match &outcomes[k] {
                            Outcome::Retry { after, reason } => Failure_::Retry {
                                after: *after,
                                reason: reason.clone(),
                            },
                            Outcome::Reject { reason } => Failure_::Reject(reason.clone()),
                            Outcome::Done => unreachable!("position found a non-Done outcome"),
                        };
                        Some((f, Some(fresh_idx[k])))
                    }
                },
                Ok(Err(e)) => {
                    // Roll back first: the transaction holds a pooled connection the checks
                    // below may need.
                    let _ = tx.rollback().await;
                    if let Some(a) = self.database_trouble(&e).await {
                        return a;
                    }
                    Counters::add(&self.counters.handler_errors, 1);
                    return Attempt::Failed(Failure_::Error(e.to_string()), None);
                }
                Err(panic) => {
                    let _ = tx.rollback().await;
                    Counters::add(&self.counters.handler_panics, 1);
                    let msg = panic
                        .downcast_ref::<&str>()
                        .map(|s| s.to_string())
                        .or_else(|| panic.downcast_ref::<String>().cloned())
                        .unwrap_or_else(|| "handler panicked".into());
                    tracing::warn!(panic = %msg, "handler panicked; rolled back");
                    return Attempt::Failed(
                        Failure_::Panic(format!("handler panicked: {msg}")),
                        None,
                    );
                }
            };
            if let Some((f, culprit)) = failure {
                let _ = tx.rollback().await;
                return Attempt::Failed(f, culprit);
            }
            // The transaction must still hold our dedup record: PostgreSQL turns the COMMIT of
            // a transaction aborted by an error the handler ignored into a silent rollback.
            match self
                .store
                .holds(
                    &mut tx,
                    &self.config.group,
                    fresh_idx_key(items, &fresh_idx),
                )
                .await
            {
                Ok(true) => {}
                Ok(false) => {
                    let _ = tx.rollback().await;
                    return Attempt::Failed(
                        Failure_::Error(
                            "the transaction lost its dedup record before commit".into(),
                        ),
                        None,
                    );
                }
                Err(e) => {
                    let _ = tx.rollback().await;
                    return match S::classify(&e) {
                        Failure::Unavailable => Attempt::Unavailable(e.to_string()),
                        Failure::Conflict => Attempt::Conflict,
                        Failure::Other => Attempt::Failed(
                            Failure_::Error(format!(
                                "the database aborted the transaction (an error inside the handler was ignored?): {e}"
                            )),
                            None,
                        ),
                    };
                }
            }
        }
        if let [only] = items
            && only.d.redelivered()
            && let Err(e) = self
                .store
                .forget_runs(&mut tx, &self.config.group, &only.key)
                .await
        {
            let _ = tx.rollback().await;
            return self.store_trouble(&e, "forget runs").await;
        }
        match tx.commit().await {
            Ok(()) => Attempt::Committed {
                fresh: fresh.len(),
                duplicates: items.len() - fresh.len(),
            },
            // I/O trouble: the outcome is unknown; run the batch again — if it did commit,
            // every message is now a duplicate and is acked without running the handler.
            // An error the server answered with means nothing was committed.
            Err(e) => self.store_trouble(&e, "commit").await,
        }
    }

    /// Classifies an error of the store's own statements (begin, claim, commit).
    async fn store_trouble(&self, e: &sqlx::Error, what: &str) -> Attempt {
        match S::classify(e) {
            Failure::Conflict => Attempt::Conflict,
            Failure::Unavailable => Attempt::Unavailable(format!("{what}: {e}")),
            // The database answered, with an error about this data (a bad id, a constraint
            // checked at commit): a failure of this batch, not an outage — if it answers a
            // ping too.
            Failure::Other => match self.store.ping().await {
                Ok(()) => Attempt::Failed(Failure_::Error(format!("{what} failed: {e}")), None),
                Err(ping) => Attempt::Unavailable(format!("{what}: {e}; ping: {ping}")),
            },
        }
    }

    /// Whether a handler error is really the database failing (outage or lock conflict).
    async fn database_trouble(&self, e: &HandlerError) -> Option<Attempt> {
        if let Some(sqlx_err) = find_sqlx_error(e.as_ref()) {
            match S::classify(sqlx_err) {
                Failure::Unavailable => return Some(Attempt::Unavailable(sqlx_err.to_string())),
                Failure::Conflict => return Some(Attempt::Conflict),
                Failure::Other => {}
            }
        }
        if let Err(ping) = self.store.ping().await {
            return Some(Attempt::Unavailable(ping.to_string()));
        }
        None
    }

    async fn settle_failure(&self, item: Item, f: Failure_) {
        let attempt = item.d.attempt();
        let p = &self.config.retry;
        let (after, reason) = match f {
            Failure_::Reject(reason) => return self.dead_letter(item, &reason, attempt).await,
            Failure_::Retry { after, reason } => (after, reason),
            Failure_::Error(reason) | Failure_::Panic(reason) | Failure_::Timeout(reason) => {
                (None, reason)
            }
        };
        if attempt >= p.max_attempts {
            let reason = format!("gave up after {attempt} attempts: {reason}");
            return self.dead_letter(item, &reason, attempt).await;
        }
        let delay = after.map_or_else(|| p.delay_after(attempt), |d| p.tier_for(d));
        let m = retry::retry_message(
            &item.d,
            &item.key,
            &self.config.queue,
            delay,
            attempt + 1,
            &reason,
        );
        match self.publish_copy(&item, m).await {
            Copy::Confirmed => {
                item.d.ack();
                Counters::add(&self.counters.retried, 1);
            }
            // The broker will never take the retry copy (its queue is gone, …): retrying is
            // impossible, so the message is dead-lettered with both reasons.
            Copy::Refused(e) => {
                let reason = format!("{reason}; its retry copy was refused: {e}");
                self.dead_letter(item, &reason, attempt).await;
            }
            Copy::Failed => self.requeue_later(item).await,
            Copy::Gone => {}
        }
    }

    /// Dead-letters `item` with `reason`: the full copy, or — if the broker refuses that — a
    /// bare one (body, id, our headers). If even that is refused the message is held unacked
    /// with a loud error: never dropped, never requeued in a tight loop.
    async fn dead_letter(&self, item: Item, reason: &str, attempts: u32) {
        let c = &self.config;
        let copy = |reason: &str| {
            retry::dead_message(
                &item.d,
                &item.key,
                &c.dead_letter,
                &c.queue,
                &c.group,
                attempts,
                reason,
            )
        };
        let mut outcome = self.publish_copy(&item, copy(reason)).await;
        if let Copy::Refused(e) = &outcome {
            let reason = format!("{reason}; original properties dropped (full copy refused: {e})");
            outcome = self.publish_copy(&item, retry::bare(copy(&reason))).await;
        }
        let id = item.d.message_id().map(str::to_string);
        match outcome {
            Copy::Confirmed => {
                item.d.ack();
                Counters::add(&self.counters.dead_lettered, 1);
                tracing::warn!(%reason, message_id = ?id, "dead-lettered");
            }
            Copy::Refused(e) => {
                let why = format!("the dead-letter target refuses the message: {e}");
                tracing::error!(
                    queue = %c.queue,
                    message_id = ?id,
                    %reason,
                    error = %why,
                    "cannot dead-letter; holding the message unacked until the consumer stops"
                );
                self.conn.emit(Event::DeadLetterRefused {
                    queue: c.queue.clone(),
                    message_id: id,
                    reason: why,
                });
                Counters::add(&self.counters.held, 1);
                self.held.lock().expect("held lock").push(item.d);
            }
            Copy::Failed => self.requeue_later(item).await,
            Copy::Gone => {}
        }
    }

    /// Publishes a retry or dead-letter copy of `item` and waits for the broker's verdict. The
    /// original is acked by the caller only once the copy is confirmed.
    async fn publish_copy(&self, item: &Item, m: crate::message::Message) -> Copy {
        if !item.d.is_live() {
            Counters::add(&self.counters.abandoned, 1);
            return Copy::Gone;
        }
        let mut stop = self.stop.clone();
        let r = tokio::select! {
            r = self.publisher.publish_confirmed(m) => r,
            _ = stopped(&mut stop) => return Copy::Gone,
        };
        match r {
            Ok(_) => Copy::Confirmed,
            Err(e) if refused_for_good(&e.error) => Copy::Refused(e.error),
            Err(e) => {
                tracing::error!(error = %e.error, "could not publish the retry or dead-letter copy; requeueing the original");
                Copy::Failed
            }
        }
    }

    /// Puts the original back on the queue after a pause (not at once: that would spin). On
    /// shutdown it is left to the broker to redeliver.
    async fn requeue_later(&self, item: Item) {
        let mut stop = self.stop.clone();
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_secs(1)) => item.d.nack(true),
            _ = stopped(&mut stop) => {}
        }
    }

    /// Deletes this group's dedup records older than the retention window, in small batches.
    async fn retention(self: Arc<Self>, mut stop: watch::Receiver<bool>) {
        const BATCH: u32 = 1000;
        loop {
            tokio::select! {
                _ = tokio::time::sleep(self.config.retention_interval) => {}
                _ = stopped(&mut stop) => return,
            }
            let before = SystemTime::now() - self.config.retention;
            loop {
                match self.store.purge(&self.config.group, before, BATCH).await {
                    Ok(n) => {
                        Counters::add(&self.counters.purged, n);
                        if n < BATCH as u64 {
                            break;
                        }
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "retention purge failed; will try again");
                        break;
                    }
                }
                tokio::task::yield_now().await;
            }
        }
    }
}

fn fresh_idx_key<'a>(items: &'a [Item], fresh_idx: &[usize]) -> &'a str {
    &items[fresh_idx[0]].key
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queues_are_the_work_queue_its_retry_queues_and_the_dead_letter_queue() {
        let c = ConsumerConfig::new("work").retry(RetryPolicy::new(
            3,
            vec![Duration::from_millis(200), Duration::from_secs(1)],
        ));
        assert_eq!(
            c.queues(),
            ["work", "work.retry.200", "work.retry.1000", "work.dead"]
        );
        let c = c.dead_letter(DeadLetter::Exchange {
            exchange: "dlx".into(),
            routing_key: "k".into(),
        });
        assert_eq!(c.queues(), ["work", "work.retry.200", "work.retry.1000"]);
    }
}
