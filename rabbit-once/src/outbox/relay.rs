//! The relay: publishes committed outbox rows through a [`Publisher`] in id order and deletes
//! each row only after the broker confirmed it. A relay that dies between the confirm and the
//! delete publishes that row again on its next start: same `message_id`, so consumers skip it.
//!
//! It reads the pending set (never a cursor), wakes when this process enqueues (and, since the
//! wake comes before the caller's commit, reads again a few times over the next ~100 ms), and
//! polls as the safety net for other processes' writes. A row the broker refuses (unroutable,
//! missing exchange, …) is kept with its reason and attempt count and tried again later; the
//! rows behind it go on.
//!
//! Confirmed rows are deleted in large batches (1,000 rows, or 100 ms after the oldest confirm,
//! or 5 ms after the pipeline went quiet) by a task of their own, so the pipeline never waits for
//! a delete, and on SQLite the callers' transactions meet the relay on the write lock ~10 times
//! a second instead of after every few rows. Until their delete has committed, those rows stay
//! out of every read.

use super::PendingRow;
use super::backend::{Backend, Claim, Outbox};
use super::backlog::Backlog;
use super::config::{RelayConfig, RelayCounters, RelayStats};
use super::store::Filter;
use crate::connection::Connection;
use crate::error::Error;
use crate::metrics::RelayMeters;
use crate::publisher::Publisher;
use crate::shutdown::stopped;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use tokio::sync::{Notify, watch};
use tokio::time::Instant;

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
    close_timeout: Arc<AtomicU64>,
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
        let mut publisher_config = config.publisher.clone();
        if publisher_config.name == "default" {
            publisher_config = publisher_config.name("outbox");
        }
        let publisher = Publisher::new(conn, publisher_config)?;
        let counters = Arc::new(RelayCounters::default());
        let close_timeout = Arc::new(AtomicU64::new(5_000));
        let (stop, stop_rx) = watch::channel(false);
        let task = tokio::spawn(
            Worker {
                backend,
                publisher,
                config,
                counters: counters.clone(),
                meters: RelayMeters::new(&conn.config().name),
                backlog: Backlog::new(&conn.config().name),
                conn: conn.clone(),
                close_timeout: close_timeout.clone(),
                flying: std::collections::VecDeque::new(),
                last_retry: Instant::now(),
                confirmed: Vec::new(),
                confirmed_since: None,
                deleting: None,
                deleted: Arc::new(Notify::new()),
                last_moved: Instant::now(),
                last_check: Instant::now(),
                flying_bytes: 0,
                row_bytes: 0,
            }
            .run(stop_rx),
        );
        Ok(Relay {
            stop,
            task,
            counters,
            close_timeout,
        })
    }

    /// Counters since the start.
    pub fn stats(&self) -> RelayStats {
        self.counters.snapshot()
    }

    /// Stops reading, lets the batch in hand finish (up to `timeout` for its confirms), and
    /// returns the final counters. Rows not deleted stay in the table for the next relay.
    pub async fn close(mut self, timeout: Duration) -> RelayStats {
        self.close_timeout.store(
            timeout.as_millis().min(u64::MAX as u128) as u64,
            Ordering::Relaxed,
        );
        self.stop.send_replace(true);
        let limit = timeout
            .saturating_mul(2)
            .saturating_add(Duration::from_secs(1));
        if tokio::time::timeout(limit, &mut self.task).await.is_err() {
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
    /// The same counts as metrics (`docs/metrics.md`), and the relay's gauges.
    meters: RelayMeters,
    /// The rows in the table, counted every few seconds while this relay publishes.
    backlog: Backlog,
    conn: Connection,
    /// How long a clean stop waits for the confirms in hand (ms), set by `close`.
    close_timeout: Arc<AtomicU64>,
    /// Published rows awaiting their confirms, oldest first.
    flying: std::collections::VecDeque<Flight>,
    /// When held rows were last looked for.
    last_retry: Instant,
    /// Confirmed rows not deleted yet (nor being deleted).
    confirmed: Vec<i64>,
    /// When the oldest of `confirmed` was confirmed.
    confirmed_since: Option<Instant>,
    /// The delete under way, if any (one at a time, off the pipeline's path).
    deleting: Option<Deleting>,
    /// Signalled when that delete ended.
    deleted: Arc<Notify>,
    /// When rows were last read, published or settled.
    last_moved: Instant,
    /// When the right to publish was last checked.
    last_check: Instant,
    /// The bodies' bytes of the rows in `flying`.
    flying_bytes: usize,
    /// The mean body size of the rows last read (0: nothing read yet).
    row_bytes: usize,
}

/// Confirmed rows are deleted once this many are in, …
const DELETE_AT_LEAST: usize = 1000;
/// … or once the oldest of them waited this long, …
const DELETE_AFTER: Duration = Duration::from_millis(100);
/// … or once nothing moved for this long. Fewer, larger deletes: on SQLite every delete takes
/// the one write lock the callers' transactions need, and a caller that finds it taken sleeps in
/// SQLite's busy handler (1, 2, 5, 10, … ms), which is where the latency tail came from.
const DELETE_WHEN_IDLE: Duration = Duration::from_millis(5);
/// … or once they make more than this many id ranges.
const SCATTERED: usize = 64;

/// A delete of confirmed rows, running in a task of its own so the pipeline goes on meanwhile.
/// Its rows stay out of every read until it finished (and go back to `confirmed` if it failed).
struct Deleting {
    ids: Vec<i64>,
    task: tokio::task::JoinHandle<Result<(), Error>>,
}

/// A published row awaiting its confirm.
struct Flight {
    id: i64,
    key: Option<String>,
    message_id: String,
    /// Failed publishes of the row before this one.
    attempts: i64,
    /// Its body's size.
    bytes: usize,
    confirmation: crate::publisher::Confirmation,
}

/// A verdict about the message itself (unroutable, no such exchange, refused, too large): only
/// these park a row. Pushback that clears by itself — nacks from a full queue, a publisher
/// closing, a timeout — is retried for ever and never parks.
fn refused_by_the_broker(e: &Error) -> bool {
    matches!(
        e,
        Error::Unroutable { .. }
            | Error::ExchangeNotFound { .. }
            | Error::Refused { .. }
            | Error::MessageTooLarge { .. }
            | Error::InvalidMessage(_)
    )
}

/// A row whose publish failed, as `Worker::failed` needs it.
struct Failure<'a> {
    id: i64,
    key: Option<String>,
    message_id: &'a str,
    /// Failed publishes before this one.
    attempts: i64,
}

/// Milliseconds since the Unix epoch (the clock `retry_at` is kept in).
fn unix_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// How often the relay looks for held rows that are due while rows fly, and checks the
/// PostgreSQL lock.
const CHECK_EVERY: Duration = Duration::from_millis(100);

/// Reads again this long after a wake that found nothing (the enqueue wakes the relay before
/// the caller commits).
const RESCANS: [u64; 6] = [1, 3, 8, 20, 50, 100];

/// How many of `room` rows to read: as many as fit in `budget` bytes beside the `flying` bytes
/// in flight, judged by the mean body size of the rows last read (`each`; 0: nothing read yet,
/// then 64 rows). A read holds its rows in memory at once: 2,000 rows of 1 MiB would be 2 GiB.
/// At least one row when nothing flies, so a row larger than the budget still goes.
fn fit(room: i64, budget: usize, flying: usize, each: usize, idle: bool) -> i64 {
    let rows = match each {
        0 => 64,
        each => (budget.saturating_sub(flying) / each).min(i64::MAX as usize) as i64,
    };
    room.min(rows.max(i64::from(idle)))
}

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
            // empty and at least every CHECK_EVERY while it is not.
            let held = match claim.as_mut() {
                Some(_) if !self.flying.is_empty() && self.last_check.elapsed() < CHECK_EVERY => {
                    true
                }
                Some(c) => {
                    self.last_check = Instant::now();
                    c.holds().await
                }
                None => false,
            };
            if !held {
                self.backlog.clear();
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
                    self.backlog.tick(&self.backend);
                    n
                }
                Err(e) => {
                    failures = failures.saturating_add(1);
                    tracing::warn!(error = %e, "outbox relay: reading or deleting failed; trying again");
                    // Counted still: a count that fails too shows 0, not the last values.
                    self.backlog.tick(&self.backend);
                    let delay = crate::backoff::Backoff::default().delay(failures);
                    tokio::select! {
                        _ = tokio::time::sleep(delay) => {}
                        _ = stopped(&mut stop) => break,
                    }
                    continue;
                }
            };
            // Rows in flight whose confirms did not come within CHECK_EVERY (the broker is slow
            // or away): go round again — the lock is checked, a stop is seen — and wait anew.
            if moved > 0 || !self.flying.is_empty() {
                continue;
            }
            let wait = if rescans < RESCANS.len() {
                rescans += 1;
                Duration::from_millis(RESCANS[rescans - 1])
            } else {
                self.next_retry()
                    .await
                    .unwrap_or(self.config.poll)
                    .min(self.config.poll)
            };
            let wait = self.delete_due().map_or(wait, |due| due.min(wait));
            let deleted = self.deleted.clone();
            tokio::select! {
                _ = &mut notified => rescans = 0,
                // The delete under way ended: take it in.
                _ = deleted.notified() => {}
                _ = tokio::time::sleep(wait) => {}
                _ = stopped(&mut stop) => break,
            }
        }
        listener.abort();
        self.backlog.clear();
        // A clean stop settles what is in hand and deletes the confirmed rows, so the next
        // relay publishes none of them again.
        let timeout = Duration::from_millis(self.close_timeout.load(Ordering::Relaxed));
        let _ = tokio::time::timeout(timeout, self.settle(true)).await;
        self.publisher.close(timeout).await;
    }

    /// How long until the first held row may be tried again (at least 10 ms).
    async fn next_retry(&self) -> Option<Duration> {
        let at = self.backend.next_retry().await.ok()??;
        Some(Duration::from_millis((at - unix_ms()).max(10) as u64))
    }

    /// One step of the pipeline: tries the held rows that are due (the lowest of each key),
    /// tops the window up with the next rows of the pending set — every read is of the whole
    /// set, less what flies or awaits its delete, less the held rows and the rows behind them of
    /// the same key, so a row that committed late is found at the next read and a key's rows go
    /// out in id order — then settles the confirmations that are in and deletes the confirmed
    /// rows. Returns how many rows it published or settled.
    async fn step(&mut self) -> Result<usize, Error> {
        let mut progress = 0;
        let room = self.config.batch - self.flying.len() as i64;
        // Top up in chunks (half a window at least), not one row per confirm.
        if room > 0 && (self.flying.is_empty() || room * 2 >= self.config.batch) {
            if self.flying.is_empty() || self.last_retry.elapsed() >= CHECK_EVERY {
                self.last_retry = Instant::now();
                let (skip, done) = (self.skip(), self.done());
                let filter = Filter {
                    retry_due: Some(unix_ms()),
                    skip: &skip,
                    all: false,
                    strict: self.config.strict_key_order,
                    done: &done,
                };
                let rows = self.backend.pending(self.fit(room), &filter).await?;
                self.meters.read_rows.set(rows.len() as f64);
                progress += self.launch(rows).await?;
            }
            let room = self.fit(self.config.batch - self.flying.len() as i64);
            if room > 0 {
                let (skip, done) = (self.skip(), self.done());
                let filter = Filter {
                    retry_due: None,
                    skip: &skip,
                    all: false,
                    strict: self.config.strict_key_order,
                    done: &done,
                };
                let rows = self.backend.pending(room, &filter).await?;
                self.counters.reads.fetch_add(1, Ordering::Relaxed);
                self.meters.reads.increment(1);
                self.meters.read_rows.set(rows.len() as f64);
                progress += self.launch(rows).await?;
            }
        }
        progress += self.settle(false).await?;
        self.meters.in_flight.set(self.flying.len() as f64);
        if progress > 0 {
            self.last_moved = Instant::now();
        }
        self.delete(false).await?;
        Ok(progress)
    }

    /// `room` rows, fewer if their bodies would not fit in the publisher's buffer beside the
    /// rows in flight (see [`fit`]).
    fn fit(&self, room: i64) -> i64 {
        fit(
            room,
            self.config.publisher.max_buffered_bytes,
            self.flying_bytes,
            self.row_bytes,
            self.flying.is_empty(),
        )
    }

    /// The rows no read may return: in flight, confirmed and not deleted yet, being deleted.
    fn skip(&self) -> Vec<(i64, i64)> {
        super::store::ranges(
            self.flying
                .iter()
                .map(|f| f.id)
                .chain(self.confirmed.iter().copied())
                .chain(self.deleting.iter().flat_map(|d| d.ids.iter().copied())),
        )
    }

    /// The confirmed rows not deleted yet (confirmed, being deleted), for strict key order's
    /// read; empty when that is off.
    fn done(&self) -> Vec<(i64, i64)> {
        if !self.config.strict_key_order {
            return Vec::new();
        }
        super::store::ranges(
            self.confirmed
                .iter()
                .copied()
                .chain(self.deleting.iter().flat_map(|d| d.ids.iter().copied())),
        )
    }

    /// How long until the confirmed rows are to be deleted, if any wait.
    /// (None while a delete runs: its end wakes the relay.)
    fn delete_due(&self) -> Option<Duration> {
        if self.deleting.is_some() {
            return None;
        }
        let since = self.confirmed_since?;
        let due = DELETE_AFTER
            .saturating_sub(since.elapsed())
            .min(DELETE_WHEN_IDLE.saturating_sub(self.last_moved.elapsed()));
        Some(due.max(Duration::from_millis(1)))
    }

    /// Takes in the delete under way if it finished, and starts the next one if it is due. With
    /// `all` (a clean stop) deletes every confirmed row and waits for it. A failed delete puts
    /// its rows back: they are deleted later, or published again by the next relay —
    /// duplicates, never loss.
    async fn delete(&mut self, all: bool) -> Result<(), Error> {
        self.reap(all).await?;
        if self.deleting.is_some() || self.confirmed.is_empty() {
            return Ok(());
        }
        let due = all
            || self.confirmed.len() >= DELETE_AT_LEAST
            || self
                .confirmed_since
                .is_some_and(|t| t.elapsed() >= DELETE_AFTER)
            || (self.flying.is_empty() && self.last_moved.elapsed() >= DELETE_WHEN_IDLE)
            // Scattered ids (rows of held keys between them) make many ranges, and every range
            // is one more test per row a read passes: keep them few.
            || (self.confirmed.len() > SCATTERED
                && super::store::ranges(self.confirmed.iter().copied()).len() > SCATTERED);
        if !due {
            return Ok(());
        }
        let ids = std::mem::take(&mut self.confirmed);
        self.confirmed_since = None;
        let task = tokio::spawn({
            let (backend, counters) = (self.backend.clone(), self.counters.clone());
            let (ids, deleted) = (ids.clone(), self.deleted.clone());
            let relayed = self.meters.relayed.clone();
            async move {
                let done = backend.remove(&ids).await.map(|_| {
                    counters
                        .relayed
                        .fetch_add(ids.len() as u64, Ordering::Relaxed);
                    relayed.increment(ids.len() as u64);
                });
                deleted.notify_one();
                done
            }
        });
        self.deleting = Some(Deleting { ids, task });
        if all {
            self.reap(true).await?;
        }
        Ok(())
    }

    /// Takes in the delete under way if it finished (waits for it with `wait`).
    async fn reap(&mut self, wait: bool) -> Result<(), Error> {
        let Some(d) = self.deleting.take_if(|d| wait || d.task.is_finished()) else {
            return Ok(());
        };
        let done = d.task.await.unwrap_or_else(|e| {
            Err(Error::Store(Arc::new(sqlx::Error::Protocol(format!(
                "the delete task failed: {e}"
            )))))
        });
        if done.is_err() {
            self.confirmed.extend(d.ids);
            self.confirmed_since.get_or_insert_with(Instant::now);
        }
        done
    }

    /// Publishes `rows` in order; they fly until their confirms are settled.
    async fn launch(&mut self, rows: Vec<PendingRow>) -> Result<usize, Error> {
        let n = rows.len();
        let total: usize = rows.iter().map(|r| r.message.body().len()).sum();
        if let Some(each) = total.checked_div(n) {
            self.row_bytes = each.max(1);
        }
        for row in rows {
            let message_id = row.message.message_id().unwrap_or_default().to_owned();
            let bytes = row.message.body().len();
            match self.publisher.publish(row.message).await {
                Ok(confirmation) => {
                    self.flying_bytes += bytes;
                    self.flying.push_back(Flight {
                        id: row.id,
                        key: row.ordering_key,
                        message_id,
                        attempts: row.attempts,
                        bytes,
                        confirmation,
                    })
                }
                Err(e) => {
                    let f = Failure {
                        id: row.id,
                        key: row.ordering_key,
                        message_id: &message_id,
                        attempts: row.attempts,
                    };
                    self.failed(f, &e.error).await?
                }
            }
        }
        Ok(n)
    }

    /// Awaits the oldest confirmation (for at most `CHECK_EVERY`; all of them with `all`), takes every other one already
    /// in, and holds the refused ones (with `all`, deletes every confirmed row and waits for
    /// it). Returns how many it settled.
    async fn settle(&mut self, all: bool) -> Result<usize, Error> {
        use futures_util::FutureExt;
        let mut settled = 0;
        let mut wait = true;
        while let Some(front) = self.flying.front_mut() {
            let outcome = if all {
                (&mut front.confirmation).await
            } else if wait {
                wait = false;
                // At most CHECK_EVERY: a relay waiting on a broker that is away still checks
                // its right to publish (PostgreSQL) and sees a stop.
                match tokio::time::timeout(CHECK_EVERY, &mut front.confirmation).await {
                    Ok(outcome) => outcome,
                    Err(_) => break,
                }
            } else {
                match (&mut front.confirmation).now_or_never() {
                    Some(outcome) => outcome,
                    None => break,
                }
            };
            let flight = self.flying.pop_front().expect("the front");
            self.flying_bytes -= flight.bytes;
            settled += 1;
            match outcome {
                Ok(_) => {
                    self.confirmed.push(flight.id);
                    self.confirmed_since.get_or_insert_with(Instant::now);
                }
                Err(e) => {
                    let f = Failure {
                        id: flight.id,
                        key: flight.key,
                        message_id: &flight.message_id,
                        attempts: flight.attempts,
                    };
                    self.failed(f, &e.error).await?
                }
            }
        }
        if all {
            self.delete(true).await?;
        }
        Ok(settled)
    }

    /// A row the broker refused: held and tried again after `retry_after`, or, once refused
    /// `park_after` times, parked (moved out of the outbox, freeing its key).
    async fn failed(&mut self, f: Failure<'_>, error: &Error) -> Result<(), Error> {
        self.counters.failed.fetch_add(1, Ordering::Relaxed);
        self.meters.failed.increment(1);
        let reason = error.to_string();
        let attempts = f.attempts.saturating_add(1);
        let park_after = i64::from(self.config.park_after);
        if park_after > 0 && attempts >= park_after && refused_by_the_broker(error) {
            tracing::error!(row = f.id, message_id = f.message_id, attempts, %error, "outbox relay: the broker refused a row again and again; parked for an operator (requeue or discard)");
            self.backend.park(f.id, &reason).await?;
            self.counters.parked.fetch_add(1, Ordering::Relaxed);
            self.meters.parked.increment(1);
            self.conn.emit(crate::event::Event::OutboxRowParked {
                message_id: f.message_id.to_owned(),
                ordering_key: f.key,
                reason,
                attempts: attempts as u64,
            });
            return Ok(());
        }
        tracing::warn!(row = f.id, message_id = f.message_id, %error, "outbox relay: the broker refused a row; kept, tried again later");
        self.conn.emit(crate::event::Event::OutboxRowFailed {
            message_id: f.message_id.to_owned(),
            ordering_key: f.key,
            reason: reason.clone(),
        });
        let retry_at = unix_ms() + self.config.retry_after.as_millis() as i64;
        self.backend.record_failure(f.id, &reason, retry_at).await
    }
}

#[cfg(test)]
mod fit_tests {
    use super::fit;

    #[test]
    fn reads_what_fits_in_the_buffer() {
        const MIB: usize = 1 << 20;
        assert_eq!(fit(2000, 64 * MIB, 0, 0, true), 64, "size unknown yet");
        assert_eq!(
            fit(2000, 64 * MIB, 0, 512, true),
            2000,
            "small rows: the room"
        );
        assert_eq!(fit(2000, 64 * MIB, 0, MIB, true), 64, "1 MiB rows: 64");
        assert_eq!(
            fit(2000, 64 * MIB, 60 * MIB, MIB, false),
            4,
            "beside those in flight"
        );
        assert_eq!(fit(2000, 64 * MIB, 64 * MIB, MIB, false), 0, "full: none");
        assert_eq!(
            fit(2000, MIB, 0, 8 * MIB, true),
            1,
            "one too large row still goes"
        );
        assert_eq!(fit(3, 64 * MIB, 0, 1, true), 3);
    }
}
