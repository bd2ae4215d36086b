//! A plain consumer with manual acks that survives lost connections: on every new session (and
//! after the broker cancels it) it subscribes again; deliveries from a dead channel can no
//! longer be settled, so the broker redelivers them and nothing is acked on the wrong channel.

use super::acks::{AckFrame, AckTracker};
use super::delivery::{AckCmd, AckLink, Delivery, Settle};
use crate::connection::{Connection, Session};
use crate::error::Error;
use crate::event::Event;
use crate::transport::{Channel, ChannelEvent};
use crate::transport::{FieldTable, FieldValue};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

const DRAIN: usize = 1024;

/// What to consume and how.
#[derive(Debug, Clone)]
pub struct SubscriptionConfig {
    pub(crate) queue: String,
    pub(crate) prefetch: u16,
    pub(crate) exclusive: bool,
    pub(crate) arguments: FieldTable,
}

impl SubscriptionConfig {
    /// Consume `queue` with a prefetch of 100.
    pub fn new(queue: impl Into<String>) -> Self {
        SubscriptionConfig {
            queue: queue.into(),
            prefetch: 100,
            exclusive: false,
            arguments: FieldTable::new(),
        }
    }

    /// Most unacknowledged deliveries at a time (`basic.qos`), at least 1. (AMQP's 0, "no
    /// limit", is refused by [`Subscription::start`]: it would let the broker push a whole
    /// queue into memory.)
    pub fn prefetch(mut self, n: u16) -> Self {
        self.prefetch = n;
        self
    }

    /// Whether this must be the queue's only consumer (`basic.consume` exclusive; default false).
    pub fn exclusive(mut self, yes: bool) -> Self {
        self.exclusive = yes;
        self
    }

    /// A consumer argument, e.g. `x-priority`.
    pub fn argument(mut self, key: impl Into<String>, value: impl Into<FieldValue>) -> Self {
        self.arguments.insert(key, value);
        self
    }

    /// The queue it consumes from.
    pub fn queue(&self) -> &str {
        &self.queue
    }

    pub(crate) fn validate(&self) -> Result<(), Error> {
        crate::transport::check_short("queue name", &self.queue).map_err(Error::Config)?;
        if self.prefetch == 0 {
            return Err(Error::Config(
                "prefetch must be at least 1 (0 would mean no limit: the broker could push the \
                 whole queue into memory)"
                    .into(),
            ));
        }
        self.arguments
            .validate()
            .map_err(|e| Error::Config(format!("consumer arguments: {e}")))
    }
}

/// Counters of a subscription.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SubscriptionStats {
    /// Deliveries received from the broker.
    pub delivered: u64,
    /// Deliveries acknowledged (each counted once, though acks are coalesced on the wire).
    pub acked: u64,
    /// Deliveries negatively acknowledged, including those dropped unsettled (requeued).
    pub nacked: u64,
    /// Settles of deliveries from a channel that was gone (the broker redelivers those).
    pub stale: u64,
    /// Times `basic.consume` succeeded (1 + re-subscriptions).
    pub subscribed: u64,
    /// Times the broker cancelled the consumer (queue deleted, …).
    pub cancelled_by_broker: u64,
}

#[derive(Debug, Default)]
struct SubscriptionCounters {
    delivered: AtomicU64,
    acked: AtomicU64,
    nacked: AtomicU64,
    stale: AtomicU64,
    subscribed: AtomicU64,
    cancelled: AtomicU64,
}

/// A stream of deliveries from one queue, across reconnects. See [`Delivery`] for settling.
///
/// Receive with [`recv`](Self::recv), or use it as a [`Stream`](futures_util::Stream) of
/// [`Delivery`] (it ends once closed or once the connection gave up).
///
/// ```no_run
/// # async fn run() -> Result<(), rabbit_once::Error> {
/// use futures_util::StreamExt;
/// use rabbit_once::{Connection, ConnectionConfig, Subscription, SubscriptionConfig};
///
/// let conn = Connection::start(ConnectionConfig::new("amqp://guest:guest@127.0.0.1:5672/%2f")?)?;
/// let mut deliveries = Subscription::start(&conn, SubscriptionConfig::new("orders").prefetch(50))?;
/// while let Some(delivery) = deliveries.next().await {
///     println!("{} bytes", delivery.body().len());
///     delivery.ack();
/// }
/// # Ok(()) }
/// ```
#[derive(Debug)]
pub struct Subscription {
    rx: mpsc::UnboundedReceiver<Delivery>,
    close: mpsc::UnboundedSender<(Duration, oneshot::Sender<()>)>,
    counters: Arc<SubscriptionCounters>,
}

impl Subscription {
    /// Starts consuming; deliveries arrive once a session is up.
    pub fn start(conn: &Connection, config: SubscriptionConfig) -> Result<Self, Error> {
        config.validate()?;
        let (tx, rx) = mpsc::unbounded_channel();
        let (close, close_rx) = mpsc::unbounded_channel();
        let counters = Arc::new(SubscriptionCounters::default());
        let (acks_tx, acks_rx) = mpsc::unbounded_channel();
        let task = SubscriptionTask {
            conn: conn.clone(),
            config,
            tx,
            link: Arc::new(AckLink {
                tx: acks_tx,
                live: AtomicU64::new(u64::MAX),
            }),
            acks_rx,
            close_rx,
            counters: counters.clone(),
            generation: 0,
            frames: Vec::new(),
        };
        tokio::spawn(task.run());
        Ok(Subscription {
            rx,
            close,
            counters,
        })
    }

    /// The next delivery; `None` once closed or the connection gave up.
    pub async fn recv(&mut self) -> Option<Delivery> {
        self.rx.recv().await
    }

    /// The next delivery if one is waiting.
    pub fn try_recv(&mut self) -> Option<Delivery> {
        self.rx.try_recv().ok()
    }

    /// Deliveries waiting to be received.
    pub fn ready(&self) -> usize {
        self.rx.len()
    }

    /// Counters since the start.
    pub fn stats(&self) -> SubscriptionStats {
        let c = &self.counters;
        SubscriptionStats {
            delivered: c.delivered.load(Ordering::Relaxed),
            acked: c.acked.load(Ordering::Relaxed),
            nacked: c.nacked.load(Ordering::Relaxed),
            stale: c.stale.load(Ordering::Relaxed),
            subscribed: c.subscribed.load(Ordering::Relaxed),
            cancelled_by_broker: c.cancelled.load(Ordering::Relaxed),
        }
    }

    /// Stops consuming (`basic.cancel`), waits up to `timeout` for deliveries already handed out
    /// to be settled, sends their acks, and closes the channel; the broker requeues the rest.
    /// Safe to call twice.
    pub async fn close(&mut self, timeout: Duration) {
        self.rx.close();
        while let Ok(d) = self.rx.try_recv() {
            d.nack(true);
        }
        let (reply, done) = oneshot::channel();
        if self.close.send((timeout, reply)).is_ok() {
            let _ = done.await;
        }
    }
}

impl futures_util::Stream for Subscription {
    type Item = Delivery;

    fn poll_next(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Delivery>> {
        self.rx.poll_recv(cx)
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        (self.rx.len(), None)
    }
}

struct SubscriptionTask {
    conn: Connection,
    config: SubscriptionConfig,
    tx: mpsc::UnboundedSender<Delivery>,
    link: Arc<AckLink>,
    acks_rx: mpsc::UnboundedReceiver<AckCmd>,
    close_rx: mpsc::UnboundedReceiver<(Duration, oneshot::Sender<()>)>,
    counters: Arc<SubscriptionCounters>,
    generation: u64,
    frames: Vec<AckFrame>,
}

enum SubscriptionExit {
    Channel,
    Connection,
    Closed,
}

impl SubscriptionTask {
    async fn run(mut self) {
        let mut after = 0;
        let mut failures = 0u32;
        loop {
            let conn = self.conn.clone();
            let session = tokio::select! {
                s = conn.next_session(after) => s,
                c = self.close_rx.recv() => {
                    if let Some((_, reply)) = c { let _ = reply.send(()); }
                    return;
                }
            };
            let Ok(session) = session else {
                return; // The connection gave up: the stream ends.
            };
            after = session.epoch;
            loop {
                let (mut ch, tag) = match self.subscribe(&session).await {
                    Ok(x) => {
                        failures = 0;
                        x
                    }
                    Err(e) if e.is_connection_level() || session.link.is_closed() => break,
                    Err(e) => {
                        failures += 1;
                        tracing::warn!(queue = %self.config.queue, error = %e, "could not subscribe; retrying");
                        let delay = self.conn.config().backoff.delay(failures - 1);
                        if self.pause(delay).await {
                            return;
                        }
                        continue;
                    }
                };
                let exit = self.pump(&mut ch, &tag).await;
                self.link.live.store(u64::MAX, Ordering::Release);
                match exit {
                    SubscriptionExit::Closed => return,
                    SubscriptionExit::Connection => break,
                    SubscriptionExit::Channel => {
                        if self.pause(self.conn.config().backoff.delay(0)).await {
                            return;
                        }
                        // The queue may have been deleted: declare the topology again first.
                        let topo = self.conn.topology();
                        if let Err(e) = crate::topology::declare(
                            &session.link,
                            &topo,
                            crate::topology::When::Again,
                        )
                        .await
                        {
                            tracing::warn!(error = %e, "re-declaring topology failed");
                        }
                    }
                }
            }
        }
    }

    /// Sleeps, still answering close; `true` if closed meanwhile.
    async fn pause(&mut self, d: Duration) -> bool {
        tokio::select! {
            _ = tokio::time::sleep(d) => false,
            c = self.close_rx.recv() => {
                if let Some((_, reply)) = c { let _ = reply.send(()); }
                true
            }
        }
    }

    async fn subscribe(&mut self, session: &Session) -> Result<(Channel, String), Error> {
        let mut ch = session.link.open_channel().await?;
        if self.config.prefetch > 0 {
            ch.qos(self.config.prefetch).await?;
        }
        let tag = format!("rabbit-once-{}", crate::message::new_message_id());
        ch.consume(
            &self.config.queue,
            &tag,
            self.config.exclusive,
            self.config.arguments.clone(),
        )
        .await?;
        self.generation += 1;
        self.link.live.store(self.generation, Ordering::Release);
        self.counters.subscribed.fetch_add(1, Ordering::Relaxed);
        self.conn.emit(Event::Subscribed {
            queue: self.config.queue.clone(),
            epoch: session.epoch,
        });
        Ok((ch, tag))
    }

    async fn pump(&mut self, ch: &mut Channel, consumer_tag: &str) -> SubscriptionExit {
        let max_waiting = (self.config.prefetch as usize / 4).max(16);
        let mut tracker = AckTracker::new(max_waiting);
        loop {
            tokio::select! {
                biased;
                cmd = self.acks_rx.recv() => {
                    let cmd = cmd.expect("the task holds a sender");
                    self.settle(ch, &mut tracker, cmd);
                }
                ev = ch.recv() => {
                    if let Some(exit) = self.on_event(ev, &mut tracker) {
                        return exit;
                    }
                    for _ in 0..DRAIN {
                        let Some(ev) = ch.try_recv() else { break };
                        if let Some(exit) = self.on_event(Some(ev), &mut tracker) {
                            return exit;
                        }
                    }
                }
                c = self.close_rx.recv() => {
                    let (timeout, reply) = match c {
                        Some(c) => (c.0, Some(c.1)),
                        None => (Duration::ZERO, None),
                    };
                    self.finish(ch, consumer_tag, &mut tracker, timeout).await;
                    if let Some(reply) = reply { let _ = reply.send(()); }
                    return SubscriptionExit::Closed;
                }
            }
            if self.tx.is_closed() {
                self.finish(ch, consumer_tag, &mut tracker, Duration::ZERO)
                    .await;
                return SubscriptionExit::Closed;
            }
        }
    }

    /// Applies a batch of settle commands and writes the resulting frames at once.
    fn settle(&mut self, ch: &Channel, tracker: &mut AckTracker, first: AckCmd) {
        let mut next = Some(first);
        let mut nacks: Vec<(u64, bool)> = Vec::new();
        let (mut acked, mut nacked, mut stale) = (0u64, 0u64, 0u64);
        for n in 1..=DRAIN {
            let Some(cmd) = next.take() else { break };
            if cmd.generation != self.generation {
                stale += 1;
            } else {
                match cmd.how {
                    Settle::Ack => {
                        if tracker.ack(cmd.tag) {
                            acked += 1;
                        }
                    }
                    Settle::Nack { requeue } => {
                        if tracker.gone(cmd.tag) {
                            nacked += 1;
                            nacks.push((cmd.tag, requeue));
                        }
                    }
                }
            }
            if n < DRAIN {
                next = self.acks_rx.try_recv().ok();
            }
        }
        self.frames.clear();
        tracker.flush(&mut self.frames);
        if !self.frames.is_empty() || !nacks.is_empty() {
            let frames = &self.frames;
            // Nacks first: a `multiple` ack after them may span their tags harmlessly, but one
            // before them would ack the very messages we mean to give back.
            let _ = ch.write(|w| {
                for &(tag, requeue) in &nacks {
                    w.nack(tag, requeue);
                }
                for f in frames {
                    w.ack(f.tag, f.multiple);
                }
            });
        }
        let c = &self.counters;
        c.acked.fetch_add(acked, Ordering::Relaxed);
        c.nacked.fetch_add(nacked, Ordering::Relaxed);
        c.stale.fetch_add(stale, Ordering::Relaxed);
    }

    fn on_event(
        &mut self,
        ev: Option<ChannelEvent>,
        tracker: &mut AckTracker,
    ) -> Option<SubscriptionExit> {
        match ev {
            Some(ChannelEvent::Deliver(raw)) => {
                tracker.delivered(raw.delivery_tag);
                self.counters.delivered.fetch_add(1, Ordering::Relaxed);
                let d = Delivery {
                    raw,
                    generation: self.generation,
                    link: Some(self.link.clone()),
                };
                if let Err(mpsc::error::SendError(mut d)) = self.tx.send(d) {
                    // Nobody listens: the channel close requeues it; do not wait for it.
                    d.link = None;
                    tracker.gone(d.raw.delivery_tag);
                }
                None
            }
            Some(ChannelEvent::Cancelled { consumer_tag }) => {
                self.counters.cancelled.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(queue = %self.config.queue, %consumer_tag, "the broker cancelled the consumer; subscribing again");
                self.conn.emit(Event::ConsumerCancelled {
                    queue: self.config.queue.clone(),
                });
                Some(SubscriptionExit::Channel)
            }
            Some(ChannelEvent::Closed(e)) if e.is_connection_level() => {
                Some(SubscriptionExit::Connection)
            }
            Some(ChannelEvent::Closed(e)) => {
                tracing::warn!(queue = %self.config.queue, error = %e, "consumer channel closed by the broker");
                Some(SubscriptionExit::Channel)
            }
            None => Some(SubscriptionExit::Connection),
            Some(_) => None,
        }
    }

    /// Cancels the consumer, waits for outstanding settles (up to `timeout`), closes.
    async fn finish(
        &mut self,
        ch: &mut Channel,
        consumer_tag: &str,
        tracker: &mut AckTracker,
        timeout: Duration,
    ) {
        let _ = ch.cancel(consumer_tag).await;
        let deadline = Instant::now() + timeout;
        while tracker.open() > 0 && Instant::now() < deadline {
            tokio::select! {
                cmd = self.acks_rx.recv() => {
                    let cmd = cmd.expect("the task holds a sender");
                    self.settle(ch, tracker, cmd);
                }
                _ = tokio::time::sleep_until(deadline) => break,
            }
        }
        while let Ok(cmd) = self.acks_rx.try_recv() {
            self.settle(ch, tracker, cmd);
        }
        // Everything still open is requeued by the broker when the channel closes.
        self.generation += 1;
        let _ = ch.close().await;
    }
}
