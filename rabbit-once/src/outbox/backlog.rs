//! The outbox's backlog as gauges: the rows in the table and the oldest one's age, counted
//! every [`EVERY`] by the relay that holds the right to publish, in a task of its own so the
//! pipeline never waits for the count (a `COUNT(*)` of a long table takes a while).

use super::backend::Backend;
use crate::metrics::{self as m, Gauge, MaxGauge};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::task::JoinHandle;
use tokio::time::Instant;

/// How often the rows are counted.
pub(super) const EVERY: Duration = Duration::from_secs(5);

/// The gauges and the count under way.
#[derive(Debug)]
pub(super) struct Backlog {
    shared: Arc<Shared>,
    task: Option<JoinHandle<()>>,
    /// When the last count began.
    last: Option<Instant>,
}

#[derive(Debug)]
struct Shared {
    rows: Gauge,
    /// The largest of the relays' of this connection name (ages do not add up).
    age: MaxGauge,
    /// False while the relay stands by or has stopped: a count that ends then is not shown.
    /// The gauges are set under this lock, so a count that ends as [`Backlog::clear`] runs
    /// cannot set them after it (a task being aborted may be running).
    active: Mutex<bool>,
}

impl Shared {
    /// Sets the gauges, unless the relay stands by or stopped (`only_active`).
    fn show(&self, rows: f64, age: f64, only_active: bool) {
        let active = self.active.lock().expect("backlog lock");
        if *active || !only_active {
            self.rows.set(rows);
            self.age.set(age);
        }
    }
}

impl Backlog {
    /// The gauges of a relay on the connection named `connection`.
    pub(super) fn new(connection: &str) -> Self {
        let l: m::Labels<'_> = &[("connection", connection)];
        Backlog {
            shared: Arc::new(Shared {
                rows: m::gauge(m::RELAY_PENDING_ROWS, l),
                age: m::max_gauge(m::RELAY_OLDEST_PENDING_AGE, l),
                active: Mutex::new(false),
            }),
            task: None,
            last: None,
        }
    }

    /// Called by the publishing relay as it goes round: starts a count once [`EVERY`] has
    /// passed since the last began and that one has ended. Returns at once.
    pub(super) fn tick<B: Backend>(&mut self, backend: &B) {
        if self.last.is_some_and(|t| t.elapsed() < EVERY)
            || self.task.as_ref().is_some_and(|t| !t.is_finished())
        {
            return;
        }
        self.last = Some(Instant::now());
        *self.shared.active.lock().expect("backlog lock") = true;
        let (backend, shared) = (backend.clone(), self.shared.clone());
        self.task = Some(tokio::spawn(async move {
            match backend.backlog().await {
                Ok((rows, age)) => shared.show(rows as f64, age.unwrap_or(0) as f64, true),
                Err(e) => {
                    // Not the last count's values, stale for as long as the database fails:
                    // 0 until a count succeeds again.
                    tracing::debug!(error = %e, "outbox relay: could not count the rows");
                    shared.show(0.0, 0.0, true);
                }
            }
        }));
    }

    /// The relay stands by or stops: no count under way, the gauges back to 0 (another relay's
    /// of the same name may be counting the same rows).
    pub(super) fn clear(&mut self) {
        *self.shared.active.lock().expect("backlog lock") = false;
        if let Some(t) = self.task.take() {
            t.abort();
        }
        self.last = None;
        self.shared.show(0.0, 0.0, false);
    }
}

impl Drop for Backlog {
    fn drop(&mut self) {
        self.clear();
    }
}
