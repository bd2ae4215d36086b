//! A supervised connection: one task reconnects, everything else watches its state.
//!
//! - [`state`]: [`ConnectionState`] (public, on a watch channel) and the internal `Session`
//!   (one live AMQP connection + its epoch) that publishers and consumers open channels on.
//! - [`supervisor`]: the reconnect loop — endpoints in turn, backoff with jitter, fatal errors
//!   end it at once, topology declared on every new session before the session is announced.
//! - [`outage`]: how failed attempts are logged — a `warn` at the first, then at most one per
//!   30 s, an `info` once connected again.
//!
//! [`Connection`] is the cheap `Clone` handle; when the last handle is dropped the
//! supervisor closes the connection.

mod outage;
mod state;
mod supervisor;

pub use state::ConnectionState;
pub(crate) use state::Session;

use crate::config::ConnectionConfig;
use crate::error::Error;
use crate::event::{Event, Events};
use crate::health::{ConnectionProbe, Health};
use crate::topology::Topology;
use crate::transport::QueueFlags;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use tokio::sync::{broadcast, watch};

pub(crate) struct Inner {
    pub(crate) config: ConnectionConfig,
    pub(crate) state: watch::Sender<ConnectionState>,
    pub(crate) session: watch::Sender<Option<Session>>,
    pub(crate) events: broadcast::Sender<Event>,
    pub(crate) topology: Mutex<Topology>,
    pub(crate) shutdown: watch::Sender<bool>,
    pub(crate) reconnects: AtomicU64,
}

/// Stops the supervisor when the last user handle goes away.
struct HandleGuard(Arc<Inner>);

impl Drop for HandleGuard {
    fn drop(&mut self) {
        self.0.shutdown.send_replace(true);
    }
}

/// A supervised, self-healing connection to RabbitMQ. Cheap to clone.
///
/// Publishers and consumers made from it survive any number of lost connections: they wait for
/// the next session and carry on. Use separate `Connection`s for publishing and consuming, so a
/// broker that blocks publishers (memory alarm) does not stall acknowledgements.
///
/// ```no_run
/// use rabbit_once::{Connection, ConnectionConfig, ConnectionState, Event};
///
/// # async fn run() -> Result<(), rabbit_once::Error> {
/// // Several endpoints (a cluster) are tried in turn; the URI's password never shows in logs.
/// let config = ConnectionConfig::from_uris([
///     "amqp://app:secret@rabbit-1:5672/orders",
///     "amqp://app:secret@rabbit-2:5672/orders",
/// ])?
/// .name("orders-service");
/// let conn = Connection::connect(config).await?; // waits for the first session (or a fatal error)
/// let mut events = conn.events();
/// tokio::spawn(async move {
///     while let Some(event) = events.recv().await {
///         if let Event::Disconnected { reason, .. } = event {
///             eprintln!("lost the broker ({reason}); reconnecting");
///         }
///     }
/// });
/// assert!(matches!(conn.state(), ConnectionState::Connected { .. }));
/// conn.close().await;
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct Connection {
    inner: Arc<Inner>,
    _guard: Arc<HandleGuard>,
}

/// What a passive `queue.declare` says about a queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QueueInfo {
    /// Messages ready for delivery (not counting unacknowledged ones).
    pub messages: u32,
    /// Consumers subscribed to the queue.
    pub consumers: u32,
}

impl std::fmt::Debug for Connection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connection")
            .field("name", &self.inner.config.name)
            .field("state", &*self.inner.state.borrow())
            .finish()
    }
}

impl Connection {
    /// Starts the supervisor and returns at once; the connection comes up in the background
    /// (publishing waits for it). Fails only on invalid configuration.
    ///
    /// While no broker can be reached it keeps trying (unless
    /// [`max_attempts`](ConnectionConfig::max_attempts) is set) and says so: a `warn` log naming
    /// the endpoint (never its password) at the first failed attempt, then at most one every
    /// 30 s with the number of attempts since; an `info` once connected again;
    /// [`Event::ConnectFailed`] for every attempt; [`state`](Self::state) reads
    /// `Connecting { attempt, .. }` with `attempt` above 1.
    pub fn start(config: ConnectionConfig) -> Result<Self, Error> {
        config.validate()?;
        let (state, _) = watch::channel(ConnectionState::Connecting {
            attempt: 1,
            endpoint: config.endpoints[0].to_string(),
        });
        let (session, _) = watch::channel(None);
        let (events, _) = broadcast::channel(1024);
        let (shutdown, _) = watch::channel(false);
        let inner = Arc::new(Inner {
            topology: Mutex::new(config.topology.clone()),
            config,
            state,
            session,
            events,
            shutdown,
            reconnects: AtomicU64::new(0),
        });
        tokio::spawn(supervisor::run(inner.clone()));
        Ok(Connection {
            _guard: Arc::new(HandleGuard(inner.clone())),
            inner,
        })
    }

    /// Starts the supervisor and waits for the first session (or a fatal error). While no broker
    /// is reachable it waits — for good unless [`max_attempts`](ConnectionConfig::max_attempts)
    /// is set (then [`Error::GaveUp`]) — so bound it with `tokio::time::timeout` if a caller
    /// must not wait.
    pub async fn connect(config: ConnectionConfig) -> Result<Self, Error> {
        let c = Self::start(config)?;
        c.wait_connected().await?;
        Ok(c)
    }

    /// Waits until a session is up; returns its epoch. Fails if the supervisor gave up.
    pub async fn wait_connected(&self) -> Result<u64, Error> {
        self.next_session(0).await.map(|s| s.epoch)
    }

    /// The current state.
    pub fn state(&self) -> ConnectionState {
        self.inner.state.borrow().clone()
    }

    /// A watch on the state, for those who want every change.
    pub fn watch_state(&self) -> watch::Receiver<ConnectionState> {
        self.inner.state.subscribe()
    }

    /// Events from now on: connected, disconnected + reason, blocked, unblocked, …
    pub fn events(&self) -> Events {
        Events {
            rx: self.inner.events.subscribe(),
        }
    }

    /// Whether the connection is ready for work, and if not why: no session (connecting,
    /// reconnecting, given up, closed — with the reason) or a broker that blocks publishing
    /// (memory or disk alarm). No I/O and no `await`: cheap enough for every probe of a health
    /// endpoint. [`Publisher::health`](crate::Publisher::health) adds the publisher's buffer.
    pub fn health(&self) -> Health {
        let mut health = Health::default();
        self.probe().check(&mut health.not_ready);
        health
    }

    /// The broker of the current session, as it announced itself ("RabbitMQ 3.10.8"); `None`
    /// while no session is up.
    pub fn server(&self) -> Option<String> {
        let session = self.inner.session.borrow();
        let s = session.as_ref().filter(|s| !s.link.is_closed())?;
        Some(server_name(s.link.server_properties()))
    }

    /// The connection's part of a [`Health`], without a handle that keeps it open.
    pub(crate) fn probe(&self) -> ConnectionProbe {
        ConnectionProbe(self.inner.clone())
    }

    /// Sessions started after the first one.
    pub fn reconnects(&self) -> u64 {
        self.inner.reconnects.load(Ordering::Relaxed)
    }

    /// The configuration this connection was started with.
    pub fn config(&self) -> &ConnectionConfig {
        &self.inner.config
    }

    /// Declares `t` now and, once the broker accepted it, on every later session too.
    pub async fn declare(&self, t: &Topology) -> Result<(), Error> {
        t.validate().map_err(Error::Config)?;
        let mut after = 0;
        loop {
            let s = self.next_session(after).await?;
            match crate::topology::declare(&s.link, t, crate::topology::When::First).await {
                Ok(()) => {
                    // Only what the broker accepted is declared again on later sessions.
                    {
                        let mut topo = self.inner.topology.lock().expect("topology lock");
                        *topo = std::mem::take(&mut *topo).merge(t);
                    }
                    // A session that started meanwhile declared the old topology: declare on
                    // it too.
                    let newer = self
                        .inner
                        .session
                        .borrow()
                        .as_ref()
                        .is_some_and(|n| n.epoch > s.epoch);
                    if !newer {
                        return Ok(());
                    }
                    after = s.epoch;
                }
                Err(e) if e.is_connection_level() => after = s.epoch,
                Err(e) => return Err(e),
            }
        }
    }

    /// The topology declared on every session.
    pub fn topology(&self) -> Topology {
        self.inner.topology.lock().expect("topology lock").clone()
    }

    /// Message and consumer counts of a queue (passive declare). Waits for a session.
    /// [`Error::QueueNotFound`] if the broker has no such queue.
    pub async fn queue_info(&self, queue: &str) -> Result<QueueInfo, Error> {
        let name = queue.to_string();
        let (_, messages, consumers) = self
            .with_channel(async move |ch| {
                ch.queue_declare(&name, QueueFlags::PASSIVE, Default::default())
                    .await
            })
            .await
            .map_err(|e| self.not_found(queue, e))?;
        Ok(QueueInfo {
            messages,
            consumers,
        })
    }

    /// Deletes a queue; returns how many messages it held.
    pub async fn delete_queue(&self, queue: &str) -> Result<u32, Error> {
        let queue = queue.to_string();
        self.with_channel(async move |ch| ch.queue_delete(&queue).await)
            .await
    }

    /// Removes every ready message from a queue; returns how many.
    pub async fn purge_queue(&self, queue: &str) -> Result<u32, Error> {
        let queue = queue.to_string();
        self.with_channel(async move |ch| ch.queue_purge(&queue).await)
            .await
    }

    /// Deletes an exchange (its bindings go with it).
    pub async fn delete_exchange(&self, exchange: &str) -> Result<(), Error> {
        let exchange = exchange.to_string();
        self.with_channel(async move |ch| ch.exchange_delete(&exchange).await)
            .await
    }

    /// The broker's definite "no queue" (404 to a passive declare, reply text `NOT_FOUND - no
    /// queue '…' in vhost '…'`) as [`Error::QueueNotFound`]. Another 404 — a durable queue whose
    /// home node is down or unreachable, in a cluster — stays what it is: it clears by itself.
    fn not_found(&self, queue: &str, e: Error) -> Error {
        match e {
            Error::ChannelClosed {
                code: 404,
                ref text,
            } if text.starts_with("NOT_FOUND - no queue") => {
                let vhost = match self.inner.session.borrow().as_ref() {
                    Some(s) => s.vhost.clone(),
                    None => self.inner.config.endpoints[0].vhost().to_string(),
                };
                Error::QueueNotFound {
                    queue: queue.to_string(),
                    vhost,
                }
            }
            e => e,
        }
    }

    /// Runs `f` on a fresh channel of the current session, then closes the channel; retried on
    /// a new session if the connection is lost meanwhile.
    async fn with_channel<T>(
        &self,
        f: impl AsyncFn(&mut crate::transport::Channel) -> Result<T, Error>,
    ) -> Result<T, Error> {
        let mut after = 0;
        loop {
            let s = self.next_session(after).await?;
            let r = match s.link.open_channel().await {
                Ok(mut ch) => {
                    let r = f(&mut ch).await;
                    let _ = ch.close().await;
                    r
                }
                Err(e) => Err(e),
            };
            match r {
                Err(e) if e.is_connection_level() && !matches!(e, Error::Closed) => {
                    after = s.epoch;
                }
                other => return other,
            }
        }
    }

    /// Closes: stops the supervisor and closes the AMQP connection gracefully. Safe twice.
    /// Close publishers first (`Publisher::close`) so their messages are drained.
    pub async fn close(&self) {
        self.inner.shutdown.send_replace(true);
        let mut st = self.inner.state.subscribe();
        let _ = st
            .wait_for(|s| matches!(s, ConnectionState::Closed | ConnectionState::Failed(_)))
            .await;
    }

    /// The first session with an epoch above `after`; an error if the supervisor has stopped.
    pub(crate) async fn next_session(&self, after: u64) -> Result<Session, Error> {
        let mut sessions = self.inner.session.subscribe();
        let mut state = self.inner.state.subscribe();
        loop {
            if let Some(s) = sessions.borrow_and_update().as_ref()
                && s.epoch > after
                && !s.link.is_closed()
            {
                return Ok(s.clone());
            }
            if let Some(e) = state.borrow_and_update().terminal_error() {
                return Err(e);
            }
            tokio::select! {
                r = sessions.changed() => if r.is_err() { return Err(Error::Closed) },
                r = state.changed() => if r.is_err() { return Err(Error::Closed) },
            }
        }
    }

    /// Sends an event to every listener (never blocks).
    pub(crate) fn emit(&self, e: Event) {
        let _ = self.inner.events.send(e);
    }
}

/// Product and version from a broker's server properties: "RabbitMQ 3.10.8".
pub(crate) fn server_name(props: &crate::transport::FieldTable) -> String {
    format!(
        "{} {}",
        props
            .get("product")
            .and_then(|v| v.as_str())
            .unwrap_or("AMQP broker"),
        props.get("version").and_then(|v| v.as_str()).unwrap_or("")
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Compiles only if the admin calls' futures are `Send`: an async closure given to
    /// `with_channel` must own what it captures (a borrowed `&str` makes them not `Send`).
    #[allow(dead_code)]
    fn admin_futures_are_send(c: &Connection) {
        fn is_send<T: Send>(_: T) {}
        is_send(c.queue_info("q"));
        is_send(c.delete_queue("q"));
        is_send(c.purge_queue("q"));
        is_send(c.delete_exchange("x"));
    }
}
