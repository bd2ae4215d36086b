//! The publisher: accepted messages are kept until the broker confirms them, across any number
//! of lost channels and connections.
//!
//! Publishing awaits twice: `publisher.publish(msg).await?` returns once the message is
//! accepted into the publisher's bounded buffer (it waits while the buffer is full — that is
//! the back-pressure), and awaiting the returned [`Confirmation`] gives the broker's verdict.
//!
//! - this file: the cheap `Clone` handle [`Publisher`], its options, the confirmation future;
//! - [`buffer`]: the pending buffer and our own confirm bookkeeping (pure logic);
//! - [`task`]: the task that owns the channel: sends in order, matches confirms, returns and
//!   nacks, re-publishes after a loss, pauses while the broker blocks publishing.

mod buffer;
mod task;

use crate::backoff::Backoff;
use crate::connection::Connection;
use crate::error::Error;
use crate::message::Message;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::sync::{Semaphore, mpsc, oneshot};

/// Publisher options. The defaults suit most services.
#[derive(Debug, Clone)]
pub struct PublisherConfig {
    pub(crate) max_buffered: usize,
    pub(crate) max_buffered_bytes: usize,
    pub(crate) window: usize,
    pub(crate) max_message_size: usize,
    pub(crate) nack_retries: u32,
    pub(crate) nack_backoff: Backoff,
}

impl Default for PublisherConfig {
    fn default() -> Self {
        PublisherConfig {
            max_buffered: 10_000,
            max_buffered_bytes: 64 << 20,
            window: 1_000,
            max_message_size: 128 << 20,
            nack_retries: 5,
            nack_backoff: Backoff::new(Duration::from_millis(100), Duration::from_secs(5), 0.5),
        }
    }
}

impl PublisherConfig {
    /// Most messages the buffer holds (accepted, not yet confirmed). Default 10,000.
    pub fn max_buffered(mut self, n: usize) -> Self {
        self.max_buffered = n;
        self
    }

    /// Most body bytes the buffer holds. Default 64 MiB.
    pub fn max_buffered_bytes(mut self, n: usize) -> Self {
        self.max_buffered_bytes = n;
        self
    }

    /// Most messages in flight (sent, unconfirmed) on the channel. Default 1,000.
    pub fn window(mut self, n: usize) -> Self {
        self.window = n;
        self
    }

    /// Largest body accepted; larger ones are refused before they reach the wire.
    /// Default 128 MiB (RabbitMQ's default `max_message_size`).
    pub fn max_message_size(mut self, n: usize) -> Self {
        self.max_message_size = n;
        self
    }

    /// How many times a nacked message is published again before it fails. Default 5.
    pub fn nack_retries(mut self, n: u32) -> Self {
        self.nack_retries = n;
        self
    }

    pub fn nack_backoff(mut self, b: Backoff) -> Self {
        self.nack_backoff = b;
        self
    }

    fn validate(&self) -> Result<(), Error> {
        if self.max_buffered == 0 || self.window == 0 {
            return Err(Error::Config(
                "max_buffered and window must be at least 1".into(),
            ));
        }
        if self.max_buffered_bytes == 0 || self.max_buffered_bytes > u32::MAX as usize {
            return Err(Error::Config(
                "max_buffered_bytes must be between 1 and 4 GiB".into(),
            ));
        }
        self.nack_backoff.validate().map_err(Error::Config)
    }
}

/// The broker took responsibility for a message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Confirmed {
    pub message_id: String,
    /// Order of acceptance by this publisher, from 0.
    pub sequence: u64,
    /// How many times it was written to a channel (more than 1 after a loss or a nack).
    pub publishes: u32,
}

/// A message that was not accepted or not confirmed, with the message handed back.
#[derive(Debug, thiserror::Error)]
#[error("{error}")]
pub struct PublishError {
    pub error: Error,
    /// The message, for the caller to resend, log or park. `None` only if the publisher's task
    /// died, which is a bug.
    pub message: Option<Box<Message>>,
}

type Reply = oneshot::Sender<Result<Confirmed, PublishError>>;

/// The broker's verdict on one message; resolves once it is confirmed or has failed for good.
#[derive(Debug)]
#[must_use = "a confirmation does nothing unless awaited; dropping it does not cancel the publish"]
pub struct Confirmation {
    rx: oneshot::Receiver<Result<Confirmed, PublishError>>,
}

impl Future for Confirmation {
    type Output = Result<Confirmed, PublishError>;
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        Pin::new(&mut self.rx).poll(cx).map(|r| {
            r.unwrap_or_else(|_| {
                Err(PublishError {
                    error: Error::ConnectionLost("the publisher task ended unexpectedly".into()),
                    message: None,
                })
            })
        })
    }
}

/// Counters of a publisher, for progress and tests.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PublisherStats {
    /// Messages accepted into the buffer.
    pub accepted: u64,
    pub confirmed: u64,
    /// Messages that ended with an error (unroutable, nacked too often, …).
    pub failed: u64,
    /// Writes of a message that had been written before (after a lost channel or a nack).
    pub republished: u64,
    pub nacks: u64,
    pub returns: u64,
    /// Channels opened for publishing (1 + reopenings).
    pub channels: u64,
    /// Messages in the buffer now, and their body bytes.
    pub buffered: usize,
    pub buffered_bytes: usize,
    /// The most body bytes the buffer ever held.
    pub peak_buffered_bytes: usize,
}

#[derive(Debug, Default)]
pub(crate) struct Counters {
    accepted: AtomicU64,
    confirmed: AtomicU64,
    failed: AtomicU64,
    republished: AtomicU64,
    nacks: AtomicU64,
    returns: AtomicU64,
    channels: AtomicU64,
    buffered: AtomicUsize,
    buffered_bytes: AtomicUsize,
    peak_buffered_bytes: AtomicUsize,
}

#[derive(Debug)]
pub(crate) struct Shared {
    count: Semaphore,
    bytes: Semaphore,
    config: PublisherConfig,
    /// The frame size the connection asks for: a content header must fit in one frame (the
    /// broker may negotiate less; the task checks that per session).
    frame_max: u32,
    closed: AtomicBool,
    /// Why the publisher stopped for good, if the connection gave up.
    failure: OnceLock<Error>,
    counters: Counters,
}

impl Shared {
    /// Frees the buffer room a resolved message held.
    fn release(&self, size: usize) {
        self.count.add_permits(1);
        self.bytes.add_permits(size);
    }

    /// The connection gave up: refuse everything from now on with this reason.
    fn fail(&self, e: Error) {
        let _ = self.failure.set(e);
        self.close();
    }

    /// Refuses new messages and wakes everyone waiting for room.
    fn close(&self) {
        self.closed.store(true, Ordering::Release);
        self.count.close();
        self.bytes.close();
    }
}

// `Publish` carries the message inline: boxing it would cost an allocation per message.
#[allow(clippy::large_enum_variant)]
enum Cmd {
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
#[derive(Debug, Clone)]
pub struct Publisher {
    tx: mpsc::UnboundedSender<Cmd>,
    shared: Arc<Shared>,
}

impl Publisher {
    /// Starts a publisher on `conn`. It publishes whenever a session is up and waits otherwise.
    pub fn new(conn: &Connection, config: PublisherConfig) -> Result<Self, Error> {
        config.validate()?;
        let (tx, rx) = mpsc::unbounded_channel();
        let shared = Arc::new(Shared {
            count: Semaphore::new(config.max_buffered),
            bytes: Semaphore::new(config.max_buffered_bytes),
            config,
            frame_max: conn.config().frame_max,
            closed: AtomicBool::new(false),
            failure: OnceLock::new(),
            counters: Counters::default(),
        });
        tokio::spawn(task::run(conn.clone(), rx, shared.clone()));
        Ok(Publisher { tx, shared })
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

    fn send(&self, msg: Box<Message>, size: usize) -> Result<Confirmation, PublishError> {
        let (reply, rx) = oneshot::channel();
        match self.tx.send(Cmd::Publish { msg, size, reply }) {
            Ok(()) => Ok(Confirmation { rx }),
            Err(mpsc::error::SendError(cmd)) => {
                self.shared.release(size);
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
            accepted: c.accepted.load(Ordering::Relaxed),
            confirmed: c.confirmed.load(Ordering::Relaxed),
            failed: c.failed.load(Ordering::Relaxed),
            republished: c.republished.load(Ordering::Relaxed),
            nacks: c.nacks.load(Ordering::Relaxed),
            returns: c.returns.load(Ordering::Relaxed),
            channels: c.channels.load(Ordering::Relaxed),
            buffered: c.buffered.load(Ordering::Relaxed),
            buffered_bytes: c.buffered_bytes.load(Ordering::Relaxed),
            peak_buffered_bytes: c.peak_buffered_bytes.load(Ordering::Relaxed),
        }
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
