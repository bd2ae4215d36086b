//! Before the first subscription: declare the consumer's own queues and check that its work
//! queue exists — in [`Consumer::start`](super::Consumer::start) when a session is up, else on
//! the first session, in the worker.

use super::config::ConsumerConfig;
use crate::connection::{Connection, ConnectionState};
use crate::error::Error;
use crate::shutdown::stopped;
use tokio::sync::watch;

/// Checks that the work queue exists — unless the consumer waits for it, or declares it itself
/// (a quorum work queue) — then declares the consumer's topology (from now on on every session
/// too). [`Error::QueueNotFound`] if the broker has no such queue: the connection's own topology
/// is declared on every session before the session is handed out, so nothing this process
/// declares would create it. Checking first leaves nothing declared by a consumer that fails.
async fn prepare(conn: &Connection, config: &ConsumerConfig) -> Result<(), Error> {
    let topo = config.topology();
    let declares_it = topo.queues.iter().any(|q| q.name() == config.queue);
    if !config.wait_for_queue && !declares_it {
        conn.queue_info(&config.queue).await?;
    }
    conn.declare(&topo).await
}

/// In `Consumer::start`: `true` once prepared on a session that is up — or that comes up on
/// the connection's first attempt in progress (so the wait is bounded by one attempt and the
/// short pause after it) — and a fatal
/// error fails `start`. `false` leaves it to [`on_first_session`]: no session (no broker
/// reachable, or backing off between attempts), the session lost meanwhile, or a refusal that
/// clears by itself. A connection that has ended gives its error.
pub(super) async fn at_start(conn: &Connection, config: &ConsumerConfig) -> Result<bool, Error> {
    let mut state = conn.watch_state();
    let connected = match state
        .wait_for(|s| !matches!(s, ConnectionState::Connecting { attempt: 1, .. }))
        .await
    {
        Err(_) => return Err(Error::Closed),
        Ok(s) => match s.terminal_error() {
            Some(e) => return Err(e),
            None => s.is_connected(),
        },
    };
    if !connected {
        return Ok(false);
    }
    let lost = async move {
        let _ = state.wait_for(|s| !s.is_connected()).await;
    };
    tokio::select! {
        r = prepare(conn, config) => match r {
            Ok(()) => Ok(true),
            Err(e) if e.is_recoverable() => {
                tracing::debug!(queue = %config.queue, error = %e, "consumer prepared later, on the next session");
                Ok(false)
            }
            Err(e) => Err(e),
        },
        () = lost => Ok(false),
    }
}

/// How often a consumer waiting for its work queue to appear says so again.
const MISSING_QUEUE_WARN_EVERY: std::time::Duration = std::time::Duration::from_secs(30);

/// In the worker, when `start` could not prepare: on the first session, retrying what clears by
/// itself with the connection's backoff. A work queue that does not exist is waited for here
/// (warned about at once, then every 30 s): `start` returned before any broker answered, so
/// nobody would see a failure, and the queue is often declared by another service that starts
/// at the same time. `Err(None)` if stopped meanwhile, `Err(Some(e))` on a fatal error (the
/// topology contradicts the broker's, the connection gave up).
pub(super) async fn on_first_session(
    conn: &Connection,
    config: &ConsumerConfig,
    stop: &mut watch::Receiver<bool>,
) -> Result<(), Option<Error>> {
    let mut failures = 0u32;
    let mut warned: Option<tokio::time::Instant> = None;
    loop {
        let r = tokio::select! {
            r = prepare(conn, config) => r,
            _ = stopped(stop) => return Err(None),
        };
        match r {
            Ok(()) => {
                if warned.is_some() {
                    tracing::info!(queue = %config.queue, "the consumer's work queue exists now; consuming");
                }
                return Ok(());
            }
            Err(e) if e.is_recoverable() || matches!(e, Error::QueueNotFound { .. }) => {
                if !matches!(e, Error::QueueNotFound { .. }) {
                    tracing::warn!(queue = %config.queue, error = %e, "could not declare or check the consumer's queues; retrying");
                } else if warned.is_none_or(|t| t.elapsed() >= MISSING_QUEUE_WARN_EVERY) {
                    warned = Some(tokio::time::Instant::now());
                    tracing::warn!(queue = %config.queue, error = %e, "the consumer's work queue does not exist; waiting for it to be declared");
                }
                let delay = conn.config().backoff.delay(failures);
                failures = failures.saturating_add(1);
                tokio::select! {
                    _ = tokio::time::sleep(delay) => {}
                    _ = stopped(stop) => return Err(None),
                }
            }
            Err(e) => return Err(Some(e)),
        }
    }
}
