//! The running hostile broker: it accepts connections, plays its scenario on each through a
//! session, and records what it received so tests can assert.

use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::net::TcpListener;
use tokio::sync::watch;

use super::scenario::Scenario;
use super::session::Session;

/// One method frame the broker received.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Received {
    /// Which connection it came on, counted from 1 in accept order.
    pub connection: u64,
    /// The channel it came on (0 for the connection's own methods).
    pub channel: u16,
    /// The AMQP class id (e.g. 60 for `basic`).
    pub class: u16,
    /// The method id within the class (e.g. 80 for `basic.ack`).
    pub method: u16,
    /// The delivery tag of `basic.ack`, `basic.nack` and `basic.reject`.
    pub delivery_tag: Option<u64>,
}

/// One message published to the broker (its content header arrived).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Published {
    /// Which connection it came on, counted from 1 in accept order.
    pub connection: u64,
    /// The channel it was published on.
    pub channel: u16,
    /// Its `message_id` as raw bytes, if it has one.
    pub message_id: Option<Vec<u8>>,
    /// Whether the broker acked it (or closed the connection over it instead).
    pub acked: bool,
}

#[derive(Debug)]
pub(super) struct Ctl {
    pub(super) scenario: Scenario,
    pub(super) connections: AtomicU64,
    pub(super) received: Mutex<Vec<Received>>,
    pub(super) published: Mutex<Vec<Published>>,
}

impl Ctl {
    pub(super) fn record(&self, r: Received) {
        self.received.lock().expect("received lock").push(r);
    }
}

/// A running hostile broker on `127.0.0.1`. Dropping it stops accepting and closes every
/// connection.
#[derive(Debug)]
pub struct HostileBroker {
    addr: SocketAddr,
    ctl: Arc<Ctl>,
    stop: watch::Sender<bool>,
    accept: tokio::task::JoinHandle<()>,
}

impl HostileBroker {
    /// Listens on a free port of 127.0.0.1 and plays `scenario` on every connection.
    pub async fn start(scenario: Scenario) -> io::Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let ctl = Arc::new(Ctl {
            scenario,
            connections: AtomicU64::new(0),
            received: Mutex::new(Vec::new()),
            published: Mutex::new(Vec::new()),
        });
        let (stop, _) = watch::channel(false);
        let accept = tokio::spawn(accept_loop(listener, ctl.clone(), stop.clone()));
        Ok(HostileBroker {
            addr,
            ctl,
            stop,
            accept,
        })
    }

    /// The address it listens on (127.0.0.1 and a free port).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The port it listens on.
    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// `amqp://guest:guest@127.0.0.1:<port>/%2f` (the broker accepts any credentials).
    pub fn uri(&self) -> String {
        self.uri_with("guest", "guest")
    }

    /// A URI with these credentials, e.g. to check that a password never shows in an error.
    pub fn uri_with(&self, user: &str, password: &str) -> String {
        format!("amqp://{user}:{password}@127.0.0.1:{}/%2f", self.port())
    }

    /// TCP connections accepted so far.
    pub fn connections(&self) -> u64 {
        self.ctl.connections.load(Ordering::SeqCst)
    }

    /// Every method frame received so far, in order.
    pub fn received(&self) -> Vec<Received> {
        self.ctl.received.lock().expect("received lock").clone()
    }

    /// Every message published so far (content header received), in order.
    pub fn published(&self) -> Vec<Published> {
        self.ctl.published.lock().expect("published lock").clone()
    }

    /// How many `class.method` frames were received (e.g. `(60, 20)` for `basic.consume`).
    pub fn count(&self, class: u16, method: u16) -> usize {
        self.received()
            .iter()
            .filter(|r| (r.class, r.method) == (class, method))
            .count()
    }

    /// Delivery tags of the `basic.ack`s received, in order.
    pub fn acks(&self) -> Vec<u64> {
        self.received()
            .iter()
            .filter(|r| (r.class, r.method) == (60, 80))
            .filter_map(|r| r.delivery_tag)
            .collect()
    }

    /// Waits until at least `n` connections were accepted, for at most `limit`.
    pub async fn wait_connections(&self, n: u64, limit: Duration) -> bool {
        self.wait_until(limit, || self.connections() >= n).await
    }

    /// Waits until at least `n` `class.method` frames were received, for at most `limit`.
    pub async fn wait_received(&self, class: u16, method: u16, n: usize, limit: Duration) -> bool {
        self.wait_until(limit, || self.count(class, method) >= n)
            .await
    }

    async fn wait_until(&self, limit: Duration, f: impl Fn() -> bool) -> bool {
        let end = Instant::now() + limit;
        while Instant::now() < end {
            if f() {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        f()
    }
}

impl Drop for HostileBroker {
    fn drop(&mut self) {
        self.stop.send_replace(true);
        self.accept.abort();
    }
}

async fn accept_loop(listener: TcpListener, ctl: Arc<Ctl>, stop: watch::Sender<bool>) {
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(e) => {
                // Out of file descriptors and the like: wait rather than spin.
                tracing::debug!(error = %e, "hostile broker accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let n = ctl.connections.fetch_add(1, Ordering::SeqCst) + 1;
        let session = Session::new(stream, ctl.clone(), n);
        let mut stopped = stop.subscribe();
        tokio::spawn(async move {
            tokio::select! {
                _ = stopped.wait_for(|s| *s) => {}
                r = session.run() => {
                    if let Err(e) = r {
                        tracing::debug!(connection = n, error = %e, "hostile broker connection ended");
                    }
                }
            }
        });
    }
}
