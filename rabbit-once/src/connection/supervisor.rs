//! The supervisor: the only place that (re)connects. It tries the endpoints in turn with
//! backoff, declares the topology on each new connection, publishes the session with its epoch
//! and the state on watch channels, and emits events without ever blocking on a listener.

use super::Inner;
use super::outage::Outage;
use super::state::{ConnectionState, Session};
use crate::config::ConnectionConfig;
use crate::error::Error;
use crate::event::Event;
use crate::metrics::{self, ByReason, Gauge, Histogram, Labels};
use crate::shutdown::stopped;
use crate::topology;
use crate::transport::{self, ConnectParams};
use crate::uri::Endpoint;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

const CLOSE_TIMEOUT: Duration = Duration::from_secs(5);
/// A session that lived this long resets the backoff.
const STABLE: Duration = Duration::from_secs(5);

/// The reconnect loop, until shutdown or a fatal error; ends with state `Closed` or `Failed`.
pub(crate) async fn run(inner: Arc<Inner>) {
    let cfg = &inner.config;
    let params = connect_params(cfg);
    let mut shutdown = inner.shutdown.subscribe();
    let mut failures: u32 = 0;
    let mut epoch: u64 = 0;
    let mut next = 0usize;
    let mut outage = Outage::default();
    let meters = Meters::new(&cfg.name);
    let outcome: Option<Error> = loop {
        if *shutdown.borrow() {
            break None;
        }
        let ep = &cfg.endpoints[next % cfg.endpoints.len()];
        inner.state.send_replace(ConnectionState::Connecting {
            attempt: failures + 1,
            endpoint: ep.to_string(),
        });
        let opened = tokio::select! {
            r = open_session(&inner, ep, &params, epoch) => r,
            _ = stopped(&mut shutdown) => break None,
        };
        match opened {
            Ok(link) => {
                epoch += 1;
                let up_since = std::time::Instant::now();
                if epoch > 1 {
                    inner.reconnects.fetch_add(1, Ordering::Relaxed);
                }
                if let Some(r) = outage.recovered(up_since) {
                    tracing::info!(
                        endpoint = %ep,
                        failed_attempts = r.attempts,
                        down_for = ?r.down_for,
                        "connected again after failed attempts"
                    );
                }
                announce(&inner, ep, &link, epoch);
                meters.up.set(1.0);
                let lost = watch_session(&inner, &link, &mut shutdown, &meters).await;
                meters.up.set(0.0);
                inner.session.send_replace(None);
                let Some(reason) = lost else {
                    link.close(CLOSE_TIMEOUT).await;
                    break None;
                };
                tracing::warn!(epoch, %reason, "session lost");
                meters.reconnects.add(metrics::reason(&reason), 1);
                inner.state.send_replace(ConnectionState::Disconnected {
                    epoch,
                    reason: reason.clone(),
                });
                let _ = inner.events.send(Event::Disconnected { epoch, reason });
                // A session that dies at once (a broker accepting and dropping connections)
                // does not reset the backoff: flapping slows down like failing does.
                if up_since.elapsed() >= STABLE {
                    failures = 0;
                } else {
                    failures = failures.saturating_add(1);
                }
                if sleep_or_shutdown(cfg.backoff.delay(failures), &mut shutdown).await {
                    break None;
                }
            }
            Err(e) if !e.is_recoverable() && !rotating_certificate(epoch, ep, &e) => {
                tracing::error!(endpoint = %ep, error = %e, "fatal connection error; not retrying");
                meters.connect_failures.add(metrics::reason(&e), 1);
                let _ = inner.events.send(Event::ConnectFailed {
                    endpoint: ep.to_string(),
                    attempt: failures + 1,
                    reason: e.clone(),
                });
                break Some(e);
            }
            Err(e) => {
                failures += 1;
                tracing::debug!(endpoint = %ep, attempt = failures, error = %e, "connect failed");
                meters.connect_failures.add(metrics::reason(&e), 1);
                // Warned at once, then at a bounded rate; the endpoint shows no password.
                if let Some(w) = outage.failed(std::time::Instant::now()) {
                    tracing::warn!(
                        endpoint = %ep,
                        attempts = w.attempts,
                        total_attempts = w.total,
                        down_for = ?w.down_for,
                        error = %e,
                        "{}",
                        if w.first {
                            "cannot connect to the broker; retrying"
                        } else {
                            "still cannot connect to the broker; retrying"
                        }
                    );
                }
                let _ = inner.events.send(Event::ConnectFailed {
                    endpoint: ep.to_string(),
                    attempt: failures,
                    reason: e.clone(),
                });
                if cfg.max_attempts.is_some_and(|max| failures >= max) {
                    tracing::error!(endpoint = %ep, attempts = failures, error = %e, "gave up connecting (max attempts reached)");
                    break Some(Error::GaveUp {
                        attempts: failures,
                        last: Box::new(e),
                    });
                }
                next += 1;
                if sleep_or_shutdown(cfg.backoff.delay(failures - 1), &mut shutdown).await {
                    break None;
                }
            }
        }
    };
    inner.session.send_replace(None);
    match outcome {
        Some(e) => {
            let _ = inner.events.send(Event::GaveUp { reason: e.clone() });
            inner.state.send_replace(ConnectionState::Failed(e));
        }
        None => {
            inner.state.send_replace(ConnectionState::Closed);
        }
    }
}

/// The connection's metrics (`docs/metrics.md`), labelled with its name.
struct Meters {
    up: Gauge,
    reconnects: ByReason,
    connect_failures: ByReason,
    blocked: Gauge,
    blocked_seconds: Histogram,
}

impl Meters {
    fn new(name: &str) -> Self {
        let l: Labels<'_> = &[("connection", name)];
        let up = metrics::gauge(metrics::CONNECTION_UP, l);
        up.set(0.0);
        let blocked = metrics::gauge(metrics::CONNECTION_BLOCKED, l);
        blocked.set(0.0);
        Meters {
            up,
            reconnects: ByReason::new(metrics::CONNECTION_RECONNECTS, l),
            connect_failures: ByReason::new(metrics::CONNECTION_CONNECT_FAILURES, l),
            blocked,
            blocked_seconds: metrics::histogram(metrics::CONNECTION_BLOCKED_SECONDS, l),
        }
    }

    /// Records whether the broker blocks publishing now; `since` is when the current blocked
    /// spell began, if one is on.
    fn blocked(&self, since: &mut Option<Instant>, now_blocked: bool) {
        match (since.is_some(), now_blocked) {
            (false, true) => {
                *since = Some(Instant::now());
                self.blocked.set(1.0);
            }
            (true, false) => {
                let t = since.take().expect("checked");
                self.blocked_seconds.record(t.elapsed().as_secs_f64());
                self.blocked.set(0.0);
            }
            _ => {}
        }
    }
}

/// What each connection attempt asks the broker for.
fn connect_params(cfg: &ConnectionConfig) -> ConnectParams {
    ConnectParams {
        name: cfg.name.clone(),
        heartbeat: cfg.heartbeat,
        connect_timeout: cfg.connect_timeout,
        frame_max: cfg.frame_max,
        channel_max: cfg.channel_max,
        max_body_size: cfg.max_body_size,
    }
}

/// Hands the new session out, then says so: state `Connected` and `Event::Connected`.
fn announce(inner: &Inner, ep: &Endpoint, link: &transport::Link, epoch: u64) {
    let endpoint = ep.to_string();
    let server = super::server_name(link.server_properties());
    tracing::info!(%endpoint, epoch, %server, heartbeat = ?link.heartbeat(), "session up");
    inner.session.send_replace(Some(Session {
        epoch,
        link: link.clone(),
        vhost: ep.vhost().to_string(),
    }));
    inner.state.send_replace(ConnectionState::Connected {
        epoch,
        endpoint: endpoint.clone(),
    });
    let _ = inner.events.send(Event::Connected {
        epoch,
        endpoint,
        server,
    });
}

/// Connects and declares the topology (see [`topology::declare`] for which refusals are fatal).
async fn open_session(
    inner: &Inner,
    ep: &Endpoint,
    params: &ConnectParams,
    sessions_before: u64,
) -> Result<transport::Link, Error> {
    let link = transport::Link::open(ep, params).await?;
    // If this future is dropped (shutdown) before the session is handed over, the connection
    // must not live on: the guard kills it.
    let guard = KillOnDrop(Some(link.clone()));
    let topo = inner.topology.lock().expect("topology lock").clone();
    let when = if sessions_before == 0 {
        topology::When::First
    } else {
        topology::When::Again
    };
    if let Err(e) = topology::declare(&link, &topo, when).await {
        link.kill(e.clone());
        return Err(e);
    }
    guard.disarm();
    Ok(link)
}

struct KillOnDrop(Option<transport::Link>);

impl KillOnDrop {
    fn disarm(mut self) {
        self.0 = None;
    }
}

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        if let Some(c) = self.0.take() {
            c.kill(Error::Closed);
        }
    }
}

/// Waits for the session to end, forwarding blocked/unblocked. `None` means shutdown.
async fn watch_session(
    inner: &Inner,
    link: &transport::Link,
    shutdown: &mut tokio::sync::watch::Receiver<bool>,
    meters: &Meters,
) -> Option<Error> {
    let mut blocked = link.blocked();
    let mut since = None;
    let ended = loop {
        tokio::select! {
            reason = link.closed() => break Some(reason),
            _ = stopped(shutdown) => break None,
            changed = blocked.changed() => {
                if changed.is_err() {
                    break Some(link.closed().await);
                }
                let now = blocked.borrow_and_update().clone();
                meters.blocked(&mut since, now.is_some());
                let ev = match now {
                    Some(reason) => Event::Blocked { reason },
                    None => Event::Unblocked,
                };
                let _ = inner.events.send(ev);
            }
        }
    };
    // A session that ends blocked ends its blocked spell.
    meters.blocked(&mut since, false);
    ended
}

/// Sleeps; `true` if shutdown was asked for meanwhile.
async fn sleep_or_shutdown(d: Duration, shutdown: &mut tokio::sync::watch::Receiver<bool>) -> bool {
    tokio::select! {
        _ = tokio::time::sleep(d) => false,
        _ = stopped(shutdown) => true,
    }
}

/// Whether `e` may be a client certificate caught mid-rotation, so it is retried rather than
/// fatal: the endpoint presents a certificate, a session with it has worked before (`epoch` >
/// 0: the settings are right), and the error is one the certificate can cause — its files
/// unusable (a key written before its certificate, a half-written file) or the broker refusing
/// it (expired, and about to be renewed). Retried with the warnings of any failed attempt; the
/// files are read again at every attempt, so the renewed ones are taken as soon as they are
/// whole. On a first connect the same errors stay fatal: they are configuration mistakes.
fn rotating_certificate(epoch: u64, ep: &crate::uri::Endpoint, e: &Error) -> bool {
    epoch > 0
        && ep.cert_file.is_some()
        && matches!(e, Error::Config(_) | Error::AuthenticationFailed { .. })
}
