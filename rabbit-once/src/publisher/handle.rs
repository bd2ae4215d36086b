//! [`Publisher`], the cheap `Clone` handle: admits messages into the buffer's room and hands
//! them to the task in acceptance order.

use super::config::PublisherConfig;
use super::confirmation::{Confirmation, Confirmed, PublishError, Reply};
use super::shared::PublisherShared;
use super::stats::{PublisherCounters, PublisherStats};
use super::task;
use crate::connection::Connection;
use crate::error::Error;
use crate::health::ConnectionProbe;
use crate::health::{Health, NotReady};
use crate::message::Message;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;
use tokio::sync::{Semaphore, mpsc, oneshot};

/// What a handle asks of the task. `Publish` carries the message boxed: the one allocation per
/// message is made in `admit`, and from there the box moves, never the message itself, through
/// this channel into the buffer, and back to the caller in a `PublishError` if it fails. (So
/// the enum stays small without `#[allow(clippy::large_enum_variant)]`.)
pub(super) enum Cmd {
    Publish {
        msg: Box<Message>,
        size: usize,
        reply: Reply,
    },
    Close {
        timeout: Duration,
        reply: oneshot::Sender<Vec<Message>>,
    },
}

/// A handle to a publisher. Cheap to clone; all clones feed one buffer and one channel, and
/// messages are sent in the order `publish` accepted them.
///
/// Publishing awaits twice: `publish(msg).await?` returns once the message is in the buffer
/// (waiting while the buffer is full: that is the back-pressure), and awaiting the
/// [`Confirmation`] it returns gives the broker's verdict.
///
/// ```no_run
/// use rabbit_once::{Connection, Error, Message, Publisher, PublisherConfig};
/// use std::time::Duration;
///
/// # async fn run(conn: Connection) -> Result<(), Box<dyn std::error::Error>> {
/// let publisher = Publisher::new(&conn, PublisherConfig::default().max_buffered(50_000))?;
/// let message = Message::new("orders", "order.created", r#"{"id":42}"#)
///     .with_message_id("order-42-created") // a business id makes the consumer's dedup end to end
///     .with_content_type("application/json");
/// match publisher.publish(message).await?.await {
///     Ok(confirmed) => println!("{} is on the broker", confirmed.message_id),
///     Err(e) if matches!(e.error, Error::Unroutable { .. }) => eprintln!("no queue is bound: {e}"),
///     Err(e) => return Err(e.into()),
/// }
/// let handed_back = publisher.close(Duration::from_secs(5)).await; // unconfirmed ones, if any
/// # let _ = handed_back; Ok(()) }
/// ```
#[derive(Debug, Clone)]
pub struct Publisher {
    tx: mpsc::UnboundedSender<Cmd>,
    shared: Arc<PublisherShared>,
    conn: ConnectionProbe,
}

impl Publisher {
    /// Starts a publisher on `conn`. It publishes whenever a session is up and waits otherwise.
    pub fn new(conn: &Connection, config: PublisherConfig) -> Result<Self, Error> {
        config.validate()?;
        let (tx, rx) = mpsc::unbounded_channel();
        let counters = PublisherCounters::new(&conn.config().name, &config.name);
        let shared = Arc::new(PublisherShared {
            count: Semaphore::new(config.max_buffered),
            bytes: Semaphore::new(config.max_buffered_bytes),
            config,
            frame_max: conn.config().frame_max,
            closed: AtomicBool::new(false),
            failure: OnceLock::new(),
            counters,
        });
        tokio::spawn(task::run(conn.clone(), rx, shared.clone()));
        Ok(Publisher {
            tx,
            shared,
            conn: conn.probe(),
        })
    }

    /// Accepts `msg` into the buffer, waiting while the buffer is full. Await the returned
    /// [`Confirmation`] for the broker's verdict. The message gets a UUIDv7 `message_id` unless
    /// it has one; that id stays the same on every re-publish.
    ///
    /// Fails at once, handing the message back, if it is too large or malformed or the
    /// publisher is closed.
    pub async fn publish(&self, msg: Message) -> Result<Confirmation, PublishError> {
        let (msg, size) = self.admit(msg)?;
        let permits = match tokio::try_join!(
            self.shared.count.acquire(),
            self.shared.bytes.acquire_many(size as u32)
        ) {
            Ok(p) => p,
            Err(_) => return Err(self.refused(msg)),
        };
        permits.0.forget();
        permits.1.forget();
        self.send(msg, size)
    }

    /// Like [`publish`](Self::publish) but never waits: `Error::BufferFull` if there is no room.
    pub fn try_publish(&self, msg: Message) -> Result<Confirmation, PublishError> {
        let (msg, size) = self.admit(msg)?;
        let count = match self.shared.count.try_acquire() {
            Ok(p) => p,
            Err(tokio::sync::TryAcquireError::Closed) => return Err(self.refused(msg)),
            Err(_) => return Err(full(msg)),
        };
        let bytes = match self.shared.bytes.try_acquire_many(size as u32) {
            Ok(p) => p,
            Err(tokio::sync::TryAcquireError::Closed) => return Err(self.refused(msg)),
            Err(_) => return Err(full(msg)),
        };
        count.forget();
        bytes.forget();
        self.send(msg, size)
    }

    /// Publishes and waits for the broker's verdict.
    pub async fn publish_confirmed(&self, msg: Message) -> Result<Confirmed, PublishError> {
        self.publish(msg).await?.await
    }

    fn admit(&self, msg: Message) -> Result<(Box<Message>, usize), PublishError> {
        let mut msg = Box::new(msg);
        if self.shared.closed.load(Ordering::Acquire) {
            return Err(self.refused(msg));
        }
        let max = self
            .shared
            .config
            .max_message_size
            .min(self.shared.config.max_buffered_bytes);
        if let Err(error) = msg.prepare(max, self.shared.frame_max) {
            return Err(PublishError {
                error,
                message: Some(msg),
            });
        }
        let size = msg.body.len();
        Ok((msg, size))
    }

    fn send(&self, mut msg: Box<Message>, size: usize) -> Result<Confirmation, PublishError> {
        // Accepted: the trace context goes in now, so every re-publish carries the same.
        let trace = crate::trace::on_publish(&mut msg, self.shared.frame_max);
        let (reply, rx) = oneshot::channel();
        match self.tx.send(Cmd::Publish { msg, size, reply }) {
            Ok(()) => Ok(Confirmation { rx, trace }),
            Err(mpsc::error::SendError(cmd)) => {
                self.shared.release(1, size);
                let Cmd::Publish { msg, .. } = cmd else {
                    unreachable!()
                };
                Err(self.refused(msg))
            }
        }
    }

    fn refused(&self, msg: Box<Message>) -> PublishError {
        PublishError {
            error: self
                .shared
                .failure
                .get()
                .cloned()
                .unwrap_or(Error::PublisherClosed),
            message: Some(msg),
        }
    }

    /// Counters right now.
    pub fn stats(&self) -> PublisherStats {
        let c = &self.shared.counters;
        PublisherStats {
            accepted: c.accepted.get(),
            confirmed: c.confirmed.get(),
            failed: c.failed.get(),
            republished: c.republished.get(),
            nacks: c.nacks.get(),
            returns: c.returns.get(),
            channels: c.channels.get(),
            buffered: c.buffered.load(Ordering::Relaxed),
            buffered_bytes: c.buffered_bytes.load(Ordering::Relaxed),
            peak_buffered_bytes: c.peak_buffered_bytes.load(Ordering::Relaxed),
        }
    }

    /// Whether this publisher can take messages without waiting and send them now, and if not
    /// why: its connection has no session or the broker blocks publishing
    /// ([`Connection::health`]), the buffer has no room (no room for one more message, or no
    /// byte left: a message larger than the bytes left waits too, so compare `buffered_bytes`
    /// in [`stats`](Self::stats) with the limit for an earlier warning), or the publisher is
    /// closed. No I/O and no `await`; nothing is added to publishing.
    pub fn health(&self) -> Health {
        let mut health = Health::default();
        self.conn.check(&mut health.not_ready);
        let s = &self.shared;
        if s.closed.load(Ordering::Acquire) {
            let error = s.failure.get().cloned();
            health.not_ready.push(NotReady::PublisherClosed(error));
            return health;
        }
        let (rooms, bytes) = (s.count.available_permits(), s.bytes.available_permits());
        if rooms == 0 || bytes == 0 {
            let max = (s.config.max_buffered, s.config.max_buffered_bytes);
            health.not_ready.push(NotReady::BufferFull {
                buffered: max.0.saturating_sub(rooms),
                max_buffered: max.0,
                buffered_bytes: max.1.saturating_sub(bytes),
                max_buffered_bytes: max.1,
            });
        }
        health
    }

    /// Stops accepting messages, waits up to `timeout` for the broker to confirm the ones in
    /// the buffer, then hands back every message still unconfirmed (their confirmations fail
    /// with [`Error::HandedBack`]). Safe to call twice: later calls return nothing.
    pub async fn close(&self, timeout: Duration) -> Vec<Message> {
        self.shared.close();
        let (reply, rx) = oneshot::channel();
        if self.tx.send(Cmd::Close { timeout, reply }).is_err() {
            return Vec::new();
        }
        rx.await.unwrap_or_default()
    }
}

fn full(msg: Box<Message>) -> PublishError {
    PublishError {
        error: Error::BufferFull,
        message: Some(msg),
    }
}
