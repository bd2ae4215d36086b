//! The relay: publishes committed outbox rows through a [`Publisher`] in id order and deletes
//! each row only after the broker confirmed it. A relay that dies between the confirm and the
//! delete publishes that row again on its next start: same `message_id`, so consumers skip it.
//!
//! It reads the pending set (never a cursor), wakes when this process enqueues (and, since the
//! wake comes before the caller's commit, reads again a few times over the next ~100 ms), and
//! polls as the safety net for other processes' writes. A row the broker refuses (unroutable,
//! missing exchange, …) is kept with its reason and attempt count and tried again later; the
//! rows behind it go on.

use super::PendingRow;
use super::store::Filter;
use crate::connection::Connection;
use crate::error::Error;
use crate::publisher::{Publisher, PublisherConfig};
use crate::shutdown::stopped;
use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use tokio::sync::{Notify, watch};
use tokio::time::Instant;

/// What the relay needs from an outbox table.
pub(crate) trait Backend: Clone + Send + Sync + 'static {
    /// Up to `limit` committed rows in id order, as `filter` says.
    fn pending(
        &self,
        limit: i64,
        filter: &Filter<'_>,
    ) -> impl Future<Output = Result<Vec<PendingRow>, Error>> + Send;
    /// Deletes confirmed rows.
    fn remove(&self, ids: &[i64]) -> impl Future<Output = Result<u64, Error>> + Send;
    /// Records a failed publish of a row.
    fn record_failure(
        &self,
        id: i64,
        reason: &str,
    ) -> impl Future<Output = Result<(), Error>> + Send;
    /// Signalled when this process enqueues.
    fn wake(&self) -> Arc<Notify>;
    /// Waits until this relay may publish, and returns the right to: on PostgreSQL a session
    /// advisory lock held on a connection of its own, so one relay at a time publishes and a
    /// standby takes over when the holder's session ends. The default: always (one process).
    fn claim(&self) -> impl Future<Output = Result<Claim, Error>> + Send {
        std::future::ready(Ok(Claim::Always))
    }

    /// Signals `wake` when another process commits rows (PostgreSQL: `LISTEN`), until
    /// `stop`. The default has no such signal: the relay's poll finds those rows.
    fn listen(
        &self,
        wake: Arc<Notify>,
        stop: watch::Receiver<bool>,
    ) -> impl Future<Output = ()> + Send {
        let _ = (wake, stop);
        std::future::ready(())
    }
}

/// The right to publish an outbox's rows.
pub(crate) enum Claim {
    /// No other relay can exist (SQLite: one process).
    Always,
    /// A PostgreSQL session that holds the outbox's advisory lock; the lock ends with it.
    #[cfg(feature = "postgres")]
    Session(sqlx::postgres::PgConnection),
}

impl std::fmt::Debug for Claim {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Claim::Always => f.write_str("Always"),
            #[cfg(feature = "postgres")]
            Claim::Session(_) => f.write_str("Session"),
        }
    }
}

impl Claim {
    /// Whether the right still holds (the lock's session answers). Checked before every read,
    /// so a relay whose session died stops publishing before a standby can have taken over
    /// (which needs that session to be gone, and then its own retry interval).
    async fn holds(&mut self) -> bool {
        match self {
            Claim::Always => true,
            #[cfg(feature = "postgres")]
            Claim::Session(c) => sqlx::Connection::ping(c).await.is_ok(),
        }
    }
}

/// An outbox a [`Relay`] publishes: [`SqliteOutbox`](crate::SqliteOutbox) or
/// [`PostgresOutbox`](crate::PostgresOutbox). Sealed: the relay relies on how each one reads,
/// locks and wakes.
#[allow(private_bounds)] // the sealed-trait idiom: `Backend` is the crate's own
pub trait Outbox: Backend {}

impl<T: Backend> Outbox for T {}

/// How the relay reads and retries. Owned builder; defaults in `Default`.
#[derive(Debug, Clone)]
pub struct RelayConfig {
    pub(crate) batch: i64,
    pub(crate) poll: Duration,
    pub(crate) retry_after: Duration,
    pub(crate) publisher: PublisherConfig,
}

impl RelayConfig {
    /// Rows read, and published before their confirms are awaited, at a time (default 500).
    pub fn batch(mut self, rows: u32) -> Self {
        self.batch = i64::from(rows.max(1));
        self
    }

    /// How often to read when nothing wakes the relay (default 1 s). On SQLite this is how soon
    /// rows written by *other processes* go out; this process's writes and, on PostgreSQL,
    /// every commit wake the relay at once.
    pub fn poll(mut self, every: Duration) -> Self {
        self.poll = every;
        self
    }

    /// How long a row the broker refused waits before it is tried again (default 5 s).
    pub fn retry_after(mut self, wait: Duration) -> Self {
        self.retry_after = wait;
        self
    }

    /// The settings of the relay's publisher (window, buffer, message size).
    pub fn publisher(mut self, config: PublisherConfig) -> Self {
        self.publisher = config;
        self
    }
}

impl Default for RelayConfig {
    fn default() -> Self {
        RelayConfig {
            batch: 500,
            poll: Duration::from_secs(1),
            retry_after: Duration::from_secs(5),
            publisher: PublisherConfig::default(),
        }
    }
}

/// Counters of a relay.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RelayStats {
    /// Rows confirmed by the broker and deleted.
    pub relayed: u64,
    /// Failed publishes recorded on their rows (a row can fail more than once).
    pub failed: u64,
    /// Reads of the pending set.
    pub reads: u64,
}

#[derive(Debug, Default)]
struct RelayCounters {
    relayed: AtomicU64,
    failed: AtomicU64,
    reads: AtomicU64,
}

impl RelayCounters {
    fn snapshot(&self) -> RelayStats {
        RelayStats {
            relayed: self.relayed.load(Ordering::Relaxed),
            failed: self.failed.load(Ordering::Relaxed),
            reads: self.reads.load(Ordering::Relaxed),
        }
    }
}

/// Publishes an outbox's committed rows through a [`Publisher`] and deletes each one once the
/// broker confirmed it. Stop it with [`close`](Self::close).
///
/// Rows go out in id order (the order they were written); a row the broker refuses is kept with
/// its reason, reported as [`Event::OutboxRowFailed`](crate::Event::OutboxRowFailed), tried
/// again after [`RelayConfig::retry_after`], and holds back the later rows of its ordering key
/// only. On PostgreSQL any number of relays may run: one publishes, the others stand by and take
/// over when its session ends. A relay that dies after a confirm and before the delete
/// publishes that row again: same `message_id`, so consumers skip it.
///
/// ```no_run
/// use rabbit_once::sqlx::{self, Sqlite};
/// use rabbit_once::{Connection, Message, Relay, RelayConfig, SqliteOutbox, SqliteStore, Store};
/// use std::time::Duration;
///
/// # async fn run(conn: Connection) -> Result<(), Box<dyn std::error::Error>> {
/// let store = SqliteStore::open("orders.db").await?;
/// let outbox = SqliteOutbox::new(store.pool().clone());
/// outbox.migrate().await?;
/// let relay = Relay::start(&conn, outbox.clone(), RelayConfig::default())?;
///
/// // The order and its message commit together, or neither does.
/// let mut tx = store.begin().await?;
/// sqlx::query("INSERT INTO orders (id) VALUES (?)").bind(42).execute(&mut *tx).await?;
/// outbox.enqueue(&mut tx, Message::to_queue("orders", r#"{"id":42}"#)).await?;
/// tx.commit().await?;
///
/// let stats = relay.close(Duration::from_secs(5)).await;
/// # let _ = stats; Ok(()) }
/// ```
#[derive(Debug)]
pub struct Relay {
    stop: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
    counters: Arc<RelayCounters>,
}

impl Relay {
    /// Starts relaying `outbox`'s rows over `conn` (it waits for a session like any
    /// publisher). Fails only on an invalid publisher configuration.
    pub fn start<O: Outbox>(
        conn: &Connection,
        outbox: O,
        config: RelayConfig,
    ) -> Result<Relay, Error> {
        let backend = outbox;
        let publisher = Publisher::new(conn, config.publisher.clone())?;
        let counters = Arc::new(RelayCounters::default());
        let (stop, stop_rx) = watch::channel(false);
        let task = tokio::spawn(
            Worker {
                backend,
                publisher,
                config,
                counters: counters.clone(),
                held: HashMap::new(),
                conn: conn.clone(),
                flying: std::collections::VecDeque::new(),
                cursor: 0,
                last_full: Instant::now(),
                confirmed: Vec::new(),
                last_check: Instant::now(),
            }
            .run(stop_rx),
        );
        Ok(Relay {
            stop,
            task,
            counters,
        })
    }

    /// Counters since the start.
    pub fn stats(&self) -> RelayStats {
        self.counters.snapshot()
    }

    /// Stops reading, lets the batch in hand finish (up to `timeout` for its confirms), and
    /// returns the final counters. Rows not deleted stay in the table for the next relay.
    pub async fn close(mut self, timeout: Duration) -> RelayStats {
        self.stop.send_replace(true);
        if tokio::time::timeout(timeout * 2, &mut self.task)
            .await
            .is_err()
        {
            self.task.abort();
        }
        self.counters.snapshot()
    }
}

struct Worker<B> {
    backend: B,
    publisher: Publisher,
    config: RelayConfig,
    counters: Arc<RelayCounters>,
    /// Rows the broker refused: when each may be tried again, and its ordering key (the later
    /// rows of that key wait behind it).
    held: HashMap<i64, (Instant, Option<String>)>,
    conn: Connection,
    /// Published rows awaiting their confirms, oldest first.
    flying: std::collections::VecDeque<Flight>,
    /// The highest id published: the next read while rows fly starts above it.
    cursor: i64,
    /// When the whole pending set was last read.
    last_full: Instant,
    /// Confirmed rows not deleted yet.
    confirmed: Vec<i64>,
    /// When the right to publish was last checked.
    last_check: Instant,
}

/// Confirmed rows are deleted once this many are in (or nothing else flies).
const DELETE_AT_LEAST: usize = 200;

/// A published row awaiting its confirm.
struct Flight {
    id: i64,
    key: Option<String>,
    message_id: String,
    confirmation: crate::publisher::Confirmation,
}

/// How often the relay reads the whole pending set even while rows fly (a row whose
/// transaction committed after higher ids were read is found by such a read).
const FULL_READ_EVERY: Duration = Duration::from_millis(100);

/// Reads again this long after a wake that found nothing (the enqueue wakes the relay before
/// the caller commits).
const RESCANS: [u64; 6] = [1, 3, 8, 20, 50, 100];

impl<B: Backend> Worker<B> {
    async fn run(mut self, mut stop: watch::Receiver<bool>) {
        let wake = self.backend.wake();
        let listener = tokio::spawn({
            let (backend, wake, stop) = (self.backend.clone(), wake.clone(), stop.clone());
            async move { backend.listen(wake, stop).await }
        });
        let mut rescans = RESCANS.len();
        let mut failures = 0u32;
        let mut claim: Option<Claim> = None;
        while !*stop.borrow() {
            // The right to publish: taken (or waited for), and checked whenever the pipeline is
            // empty and at least every FULL_READ_EVERY while it is not.
            let held = match claim.as_mut() {
                Some(_)
                    if !self.flying.is_empty() && self.last_check.elapsed() < FULL_READ_EVERY =>
                {
                    true
                }
                Some(c) => {
                    self.last_check = Instant::now();
                    c.holds().await
                }
                None => false,
            };
            if !held {
                if claim.take().is_some() {
                    tracing::warn!(
                        "outbox relay: lost the right to publish; waiting to take it again"
                    );
                }
                match self.backend.claim().await {
                    Ok(c) => {
                        tracing::info!("outbox relay: publishing");
                        claim = Some(c);
                    }
                    Err(e) => {
                        if !matches!(e, Error::Timeout(_)) {
                            tracing::debug!(error = %e, "outbox relay: could not take the right to publish");
                        }
                        tokio::select! {
                            _ = tokio::time::sleep(self.config.poll) => {}
                            _ = stopped(&mut stop) => break,
                        }
                        continue;
                    }
                }
            }
            // Registered before reading, so an enqueue during the read is not missed.
            let notified = wake.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let moved = match self.step().await {
                Ok(n) => {
                    failures = 0;
                    n
                }
                Err(e) => {
                    failures = failures.saturating_add(1);
                    tracing::warn!(error = %e, "outbox relay: reading or deleting failed; trying again");
                    let delay = crate::backoff::Backoff::default().delay(failures);
                    tokio::select! {
                        _ = tokio::time::sleep(delay) => {}
                        _ = stopped(&mut stop) => break,
                    }
                    continue;
                }
            };
            if moved > 0 {
                continue;
            }
            let wait = if rescans < RESCANS.len() {
                rescans += 1;
                Duration::from_millis(RESCANS[rescans - 1])
            } else {
                self.next_retry()
                    .unwrap_or(self.config.poll)
                    .min(self.config.poll)
            };
            tokio::select! {
                _ = &mut notified => rescans = 0,
                _ = tokio::time::sleep(wait) => {}
                _ = stopped(&mut stop) => break,
            }
        }
        listener.abort();
        self.publisher.close(self.config.poll).await;
    }

    /// How long until the first held row may be tried again.
    fn next_retry(&self) -> Option<Duration> {
        let now = Instant::now();
        self.held
            .values()
            .map(|(t, _)| t.saturating_duration_since(now))
            .min()
    }

    /// One step of the pipeline: tries the held rows that are due (each alone, while nothing
    /// else flies: the rows of its key wait for it), tops the window up with the next rows —
    /// above the last one read while earlier ones fly, the whole pending set (less what flies)
    /// when the pipeline is empty or a full read is due, so a row that committed late is never
    /// skipped — then settles the confirmations that are in and deletes the confirmed rows.
    /// Returns how many rows it published or settled.
    async fn step(&mut self) -> Result<usize, Error> {
        let mut progress = 0;
        let now = Instant::now();
        if self.flying.is_empty() {
            let due: Vec<i64> = self
                .held
                .iter()
                .filter(|(_, (t, _))| *t <= now)
                .map(|(id, _)| *id)
                .collect();
            if !due.is_empty() {
                let filter = Filter {
                    only_ids: Some(&due),
                    ..Filter::default()
                };
                let rows = self.backend.pending(due.len() as i64, &filter).await?;
                progress += self.launch(rows).await?;
                progress += self.settle(true).await?;
            }
        }
        let room = self.config.batch - self.flying.len() as i64;
        // Top up in chunks (half a window at least), not one row per confirm.
        if room > 0 && (self.flying.is_empty() || room * 2 >= self.config.batch) {
            let full = self.flying.is_empty() || self.last_full.elapsed() >= FULL_READ_EVERY;
            let mut skip_ids: Vec<i64> = self.held.keys().copied().collect();
            if full {
                // Neither what flies nor what is confirmed and waiting for its delete.
                skip_ids.extend(self.flying.iter().map(|f| f.id));
                skip_ids.extend(self.confirmed.iter().copied());
                self.last_full = Instant::now();
            }
            let mut skip_keys: Vec<String> =
                self.held.values().filter_map(|(_, k)| k.clone()).collect();
            skip_keys.sort_unstable();
            skip_keys.dedup();
            let filter = Filter {
                only_ids: None,
                after: (!full).then_some(self.cursor),
                skip_ids: &skip_ids,
                skip_keys: &skip_keys,
            };
            let rows = self.backend.pending(room, &filter).await?;
            self.counters.reads.fetch_add(1, Ordering::Relaxed);
            progress += self.launch(rows).await?;
        }
        progress += self.settle(false).await?;
        Ok(progress)
    }

    /// Publishes `rows` in order; they fly until their confirms are settled.
    async fn launch(&mut self, rows: Vec<PendingRow>) -> Result<usize, Error> {
        let n = rows.len();
        for row in rows {
            let message_id = row.message.message_id().unwrap_or_default().to_owned();
            self.cursor = self.cursor.max(row.id);
            match self.publisher.publish(row.message).await {
                Ok(confirmation) => self.flying.push_back(Flight {
                    id: row.id,
                    key: row.ordering_key,
                    message_id,
                    confirmation,
                }),
                Err(e) => {
                    self.failed(row.id, row.ordering_key, &message_id, &e.error)
                        .await?
                }
            }
        }
        Ok(n)
    }

    /// Awaits the oldest confirmation (all of them with `all`), takes every other one already
    /// in, deletes the confirmed rows and holds the refused ones. Returns how many it settled.
    async fn settle(&mut self, all: bool) -> Result<usize, Error> {
        use futures_util::FutureExt;
        let mut settled = 0;
        let mut wait = true;
        while let Some(front) = self.flying.front_mut() {
            let outcome = if wait || all {
                wait = false;
                (&mut front.confirmation).await
            } else {
                match (&mut front.confirmation).now_or_never() {
                    Some(outcome) => outcome,
                    None => break,
                }
            };
            let flight = self.flying.pop_front().expect("the front");
            settled += 1;
            match outcome {
                Ok(_) => self.confirmed.push(flight.id),
                Err(e) => {
                    self.failed(flight.id, flight.key, &flight.message_id, &e.error)
                        .await?
                }
            }
        }
        // Deleted in chunks (or when nothing else flies). If the delete fails the rows stay and
        // are published again: duplicates, never loss.
        if self.confirmed.len() >= DELETE_AT_LEAST
            || (self.flying.is_empty() && !self.confirmed.is_empty())
        {
            let confirmed = std::mem::take(&mut self.confirmed);
            if let Err(e) = self.backend.remove(&confirmed).await {
                self.confirmed = confirmed;
                return Err(e);
            }
            for id in &confirmed {
                self.held.remove(id);
            }
            self.counters
                .relayed
                .fetch_add(confirmed.len() as u64, Ordering::Relaxed);
        }
        Ok(settled)
    }

    async fn failed(
        &mut self,
        id: i64,
        key: Option<String>,
        message_id: &str,
        error: &Error,
    ) -> Result<(), Error> {
        self.counters.failed.fetch_add(1, Ordering::Relaxed);
        tracing::warn!(row = id, message_id, %error, "outbox relay: the broker refused a row; kept, tried again later");
        self.conn.emit(crate::event::Event::OutboxRowFailed {
            message_id: message_id.to_owned(),
            ordering_key: key.clone(),
            reason: error.to_string(),
        });
        self.held
            .insert(id, (Instant::now() + self.config.retry_after, key));
        self.backend.record_failure(id, &error.to_string()).await
    }
}
