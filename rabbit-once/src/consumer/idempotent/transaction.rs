//! One batch's transaction — claim, handle, check, commit — run again through database outages
//! and lock conflicts, and how its errors are classified.

use super::key::Item;
use super::stats::ConsumerCounters;
use super::worker::Worker;
use crate::consumer::delivery::Delivery;
use crate::consumer::handler::{Handler, HandlerError, Outcome};
use crate::dedup::{Store, StoreFailure, find_sqlx_error};
use crate::event::Event;
use crate::shutdown::stopped;
use futures_util::FutureExt;
use std::collections::HashMap;
use std::panic::AssertUnwindSafe;
use std::time::{Duration, Instant};

/// A transaction of the store's backend, begun by [`Store::begin`].
type Tx<S> = sqlx::Transaction<'static, <S as Store>::Db>;

/// How one transaction over a batch ended: committed, or why not.
enum TxOutcome {
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
    Failed(RunFailure, Option<usize>),
}

/// Why a run of the handler over a batch failed, as the retry logic sees it.
pub(super) enum RunFailure {
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

/// Conflicts in a row on one batch before a warning is logged (it is retried regardless).
const CONFLICTS_BEFORE_WARNING: u32 = 10;

impl<S: Store, H: Handler<S::Db>> Worker<S, H> {
    /// Runs `items` in one transaction until it commits (then acks them and returns `None`) or
    /// the handler fails (returns the failure; nothing acked, `items` kept). Holds the items
    /// through database outages; drops those whose channel died (the broker redelivers them).
    pub(super) async fn commit_or_fail(
        &self,
        items: &mut Vec<Item>,
    ) -> Option<(RunFailure, Option<usize>)> {
        let mut outage: u32 = 0;
        let mut conflicts: u32 = 0;
        loop {
            let before = items.len();
            items.retain(|i| i.d.is_live());
            ConsumerCounters::add(&self.counters.abandoned, (before - items.len()) as u64);
            if items.is_empty() {
                return None;
            }
            let (queue, group) = (&self.config.queue, &self.config.group);
            let span = crate::trace::commit_span(queue, group, items.iter().map(|i| &i.d));
            let outcome = span.run(queue, self.run_transaction(items)).await;
            if !matches!(outcome, TxOutcome::Unavailable(_)) {
                // Whichever outcome and worker: the store answered, so the outage is over.
                self.counters.store_answered(|| {
                    tracing::info!("dedup store reachable again");
                    self.conn.emit(Event::StoreRecovered);
                });
            }
            let wait = match outcome {
                TxOutcome::Committed { fresh, duplicates } => {
                    let c = &self.counters;
                    ConsumerCounters::add(&c.applied, fresh as u64);
                    ConsumerCounters::add(&c.duplicates, duplicates as u64);
                    ConsumerCounters::add(&c.commits, 1);
                    // The items share their batch's clock (a split keeps it).
                    let oldest = items.first().map(|i| i.received);
                    span.ack(queue, group, items.drain(..).map(|i| i.d));
                    if let Some(t) = oldest {
                        c.ack_lag_seconds.record(t.elapsed().as_secs_f64());
                    }
                    return None;
                }
                TxOutcome::Failed(f, culprit) => return Some((f, culprit)),
                TxOutcome::Conflict => {
                    // Contention, not the messages' fault: never an attempt of theirs. Held and
                    // run again with a growing, jittered pause (up to ~0.6 s), said once loudly
                    // if it goes on.
                    ConsumerCounters::add(&self.counters.store_conflicts, 1);
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
                TxOutcome::Unavailable(reason) => {
                    // Every failure sets the reason (another worker may have just cleared it);
                    // the outage is counted and announced once, by the worker that starts it.
                    let held = items.len();
                    self.counters.store_unreachable(reason, |reason| {
                        ConsumerCounters::add(&self.counters.store_outages, 1);
                        tracing::warn!(%reason, held, "dedup store unreachable; holding messages unacked");
                        self.conn.emit(Event::StoreUnavailable {
                            reason: reason.to_string(),
                        });
                    });
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
                    ConsumerCounters::add(&self.counters.abandoned, items.len() as u64);
                    items.clear();
                    return None;
                }
            }
        }
    }

    /// One transaction over `items`: claim their keys, run the handler over the new ones, check
    /// the claim is still held, forget a redelivery's counted runs, commit.
    async fn run_transaction(&self, items: &[Item]) -> TxOutcome {
        let tx = match self.store.begin().await {
            Ok(tx) => tx,
            Err(e) => return self.store_trouble(&e, "begin").await,
        };
        let (mut tx, fresh_idx) = match self.claim(tx, items).await {
            Ok(claimed) => claimed,
            Err(outcome) => return outcome,
        };
        let fresh: Vec<&Delivery> = fresh_idx.iter().map(|&i| &items[i].d).collect();
        if !fresh.is_empty() {
            tx = match self.run_handler(tx, &fresh, &fresh_idx).await {
                Ok(tx) => tx,
                Err(outcome) => return outcome,
            };
            tx = match self.still_held(tx, fresh_idx_key(items, &fresh_idx)).await {
                Ok(tx) => tx,
                Err(outcome) => return outcome,
            };
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
        let started = Instant::now();
        let committed = tx.commit().await;
        self.counters
            .commit_seconds
            .record(started.elapsed().as_secs_f64());
        match committed {
            Ok(()) => TxOutcome::Committed {
                fresh: fresh.len(),
                duplicates: items.len() - fresh.len(),
            },
            // I/O trouble: the outcome is unknown; run the batch again — if it did commit,
            // every message is now a duplicate and is acked without running the handler.
            // An error the server answered with means nothing was committed.
            Err(e) => self.store_trouble(&e, "commit").await,
        }
    }

    /// Claims the keys of `items` in `tx`; returns `tx` and the index in `items` of each
    /// message that is new. Rolls `tx` back if the claim fails.
    async fn claim(&self, mut tx: Tx<S>, items: &[Item]) -> Result<(Tx<S>, Vec<usize>), TxOutcome> {
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
                return Err(self.store_trouble(&e, "claim").await);
            }
        };
        let fresh_idx: Vec<usize> = keys
            .iter()
            .zip(&claimed)
            .filter(|(_, new)| **new)
            .map(|(k, _)| first[k])
            .collect();
        Ok((tx, fresh_idx))
    }

    /// Runs the handler over `fresh` (the messages at `fresh_idx` of the batch) in `tx`, within
    /// the handler timeout and catching a panic. Returns `tx` if every message is `Done`;
    /// otherwise rolls it back and says why.
    async fn run_handler(
        &self,
        mut tx: Tx<S>,
        fresh: &[&Delivery],
        fresh_idx: &[usize],
    ) -> Result<Tx<S>, TxOutcome> {
        let run = AssertUnwindSafe(self.handler.handle_batch(fresh, &mut tx)).catch_unwind();
        let limit = self.config.handler_timeout;
        let started = Instant::now();
        let ran = tokio::time::timeout(limit, run).await;
        self.counters
            .handler_seconds
            .record(started.elapsed().as_secs_f64());
        let Ok(ran) = ran else {
            // Dropping the handler's future cancels whatever it awaited; the transaction
            // is rolled back like after any failure.
            let _ = tx.rollback().await;
            ConsumerCounters::add(&self.counters.handler_timeouts, 1);
            tracing::warn!(
                ?limit,
                messages = fresh.len(),
                "handler timed out; rolled back"
            );
            return Err(TxOutcome::Failed(
                RunFailure::Timeout(format!("the handler did not return within {limit:?}")),
                None,
            ));
        };
        let failure = match ran {
            Ok(Ok(outcomes)) => match outcomes.iter().position(|o| *o != Outcome::Done) {
                None if outcomes.len() == fresh.len() => None,
                None => Some((
                    RunFailure::Error(format!(
                        "handle_batch returned {} outcomes for {} messages",
                        outcomes.len(),
                        fresh.len()
                    )),
                    None,
                )),
                Some(k) => {
                    let f = match &outcomes[k] {
                        Outcome::Retry { after, reason } => RunFailure::Retry {
                            after: *after,
                            reason: reason.clone(),
                        },
                        Outcome::Reject { reason } => RunFailure::Reject(reason.clone()),
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
                    return Err(a);
                }
                ConsumerCounters::add(&self.counters.handler_errors, 1);
                return Err(TxOutcome::Failed(RunFailure::Error(e.to_string()), None));
            }
            Err(panic) => {
                let _ = tx.rollback().await;
                ConsumerCounters::add(&self.counters.handler_panics, 1);
                let msg = panic
                    .downcast_ref::<&str>()
                    .map(|s| s.to_string())
                    .or_else(|| panic.downcast_ref::<String>().cloned())
                    .unwrap_or_else(|| "handler panicked".into());
                tracing::warn!(panic = %msg, "handler panicked; rolled back");
                return Err(TxOutcome::Failed(
                    RunFailure::Panic(format!("handler panicked: {msg}")),
                    None,
                ));
            }
        };
        if let Some((f, culprit)) = failure {
            let _ = tx.rollback().await;
            return Err(TxOutcome::Failed(f, culprit));
        }
        Ok(tx)
    }

    /// Returns `tx` if it still holds the dedup record of `key`; otherwise rolls it back and
    /// says why. PostgreSQL turns the COMMIT of a transaction aborted by an error the handler
    /// ignored into a silent rollback, so this is checked just before committing.
    async fn still_held(&self, mut tx: Tx<S>, key: &str) -> Result<Tx<S>, TxOutcome> {
        match self.store.holds(&mut tx, &self.config.group, key).await {
            Ok(true) => Ok(tx),
            Ok(false) => {
                let _ = tx.rollback().await;
                Err(TxOutcome::Failed(
                    RunFailure::Error("the transaction lost its dedup record before commit".into()),
                    None,
                ))
            }
            Err(e) => {
                let _ = tx.rollback().await;
                Err(match S::classify(&e) {
                    StoreFailure::Unavailable => TxOutcome::Unavailable(e.to_string()),
                    StoreFailure::Conflict => TxOutcome::Conflict,
                    StoreFailure::Other => TxOutcome::Failed(
                        RunFailure::Error(format!(
                            "the database aborted the transaction (an error inside the handler was ignored?): {e}"
                        )),
                        None,
                    ),
                })
            }
        }
    }

    /// Classifies an error of the store's own statements (begin, claim, commit).
    async fn store_trouble(&self, e: &sqlx::Error, what: &str) -> TxOutcome {
        match S::classify(e) {
            StoreFailure::Conflict => TxOutcome::Conflict,
            StoreFailure::Unavailable => TxOutcome::Unavailable(format!("{what}: {e}")),
            // The database answered, with an error about this data (a bad id, a constraint
            // checked at commit): a failure of this batch, not an outage — if it answers a
            // ping too.
            StoreFailure::Other => match self.store.ping().await {
                Ok(()) => TxOutcome::Failed(RunFailure::Error(format!("{what} failed: {e}")), None),
                Err(ping) => TxOutcome::Unavailable(format!("{what}: {e}; ping: {ping}")),
            },
        }
    }

    /// Whether a handler error is really the database failing (outage or lock conflict).
    async fn database_trouble(&self, e: &HandlerError) -> Option<TxOutcome> {
        if let Some(sqlx_err) = find_sqlx_error(e.as_ref()) {
            match S::classify(sqlx_err) {
                StoreFailure::Unavailable => {
                    return Some(TxOutcome::Unavailable(sqlx_err.to_string()));
                }
                StoreFailure::Conflict => return Some(TxOutcome::Conflict),
                StoreFailure::Other => {}
            }
        }
        if let Err(ping) = self.store.ping().await {
            return Some(TxOutcome::Unavailable(ping.to_string()));
        }
        None
    }
}

fn fresh_idx_key<'a>(items: &'a [Item], fresh_idx: &[usize]) -> &'a str {
    &items[fresh_idx[0]].key
}
