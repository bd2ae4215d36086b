//! One pass over a dead-letter queue: the messages it held when the pass began, read in queue
//! order and held unacknowledged on a channel of our own. Each is then acked (removed) or
//! given back; what is given back returns to its place, so the queue looks as it did.
//!
//! Nothing is consumed for good by reading: a message is only removed by [`Pass::ack`], and a
//! pass that dies (connection lost, process killed) leaves every unacked message to the
//! broker, which puts it back.

use crate::connection::Session;
use crate::error::Error;
use crate::transport::{Channel, ChannelEvent, RawDelivery};
use std::collections::BTreeSet;
use std::time::Duration;

/// How long the queue may stay silent before the pass asks the broker whether anything is
/// left to deliver (a message taken by another consumer, or expired, never comes to us).
const SILENCE: Duration = Duration::from_millis(500);

/// How long [`Pass::finish`] waits for the messages it gave back to be counted again.
const SETTLE: Duration = Duration::from_secs(5);

/// What [`Pass::next`] found.
pub(crate) enum Next {
    /// The next message of the snapshot and its position (from 0 at the head), held until
    /// acked or given back.
    Message(u64, Box<RawDelivery>),
    /// Nothing for a while: call [`Pass::check`].
    Silent,
    /// Every message of the snapshot has been read (or none is left to come).
    Drained,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Reading,
    /// The broker said nothing is ready any more: hand out what already arrived, then stop.
    Checked,
    Drained,
}

/// The pass's channel, the messages it has seen, and the ones it holds.
pub(crate) struct Pass {
    ch: Channel,
    queue: String,
    consumer_tag: Option<String>,
    /// Messages in the queue when the pass began: the pass reads no more than these.
    expected: u64,
    seen: u64,
    /// Delivery tags not acked (ascending: the order delivered), given back at the end.
    held: BTreeSet<u64>,
    state: State,
}

impl Pass {
    /// Opens a channel on `session` and starts reading `queue`, which held `expected` ready
    /// messages. `prefetch` `None` lets the broker send them all (for a pass that keeps most
    /// of them: a limit would stall it once that many are held); `Some(n)` for a pass that
    /// removes what it reads.
    pub(crate) async fn start(
        session: &Session,
        queue: &str,
        expected: u64,
        prefetch: Option<u16>,
    ) -> Result<Self, Error> {
        let mut ch = session.link.open_channel().await?;
        let mut consumer_tag = None;
        if expected > 0 {
            if let Some(n) = prefetch {
                ch.qos(n).await?;
            }
            let tag = format!("rabbit-once-dlq-{}", crate::message::new_message_id());
            consumer_tag = Some(ch.consume(queue, &tag, false, Default::default()).await?);
        }
        Ok(Pass {
            ch,
            queue: queue.to_string(),
            consumer_tag,
            expected,
            seen: 0,
            held: BTreeSet::new(),
            state: if expected == 0 {
                State::Drained
            } else {
                State::Reading
            },
        })
    }

    /// Whether every message of the snapshot has been read (or none is left to come).
    pub(crate) fn is_drained(&self) -> bool {
        self.state == State::Drained
    }

    /// The next message of the snapshot, [`Next::Silent`] after [`SILENCE`] with nothing, or
    /// [`Next::Drained`]. Cancel-safe: it only receives.
    pub(crate) async fn next(&mut self) -> Result<Next, Error> {
        loop {
            let ev = match self.state {
                State::Drained => return Ok(Next::Drained),
                State::Checked => match self.ch.try_recv() {
                    Some(ev) => Some(ev),
                    None => {
                        self.state = State::Drained;
                        return Ok(Next::Drained);
                    }
                },
                State::Reading => match tokio::time::timeout(SILENCE, self.ch.recv()).await {
                    Ok(ev) => ev,
                    Err(_) => return Ok(Next::Silent),
                },
            };
            match ev {
                Some(ChannelEvent::Deliver(d)) => {
                    self.held.insert(d.delivery_tag);
                    let position = self.seen;
                    self.seen += 1;
                    if self.seen >= self.expected {
                        self.state = State::Drained;
                    }
                    return Ok(Next::Message(position, d));
                }
                Some(ChannelEvent::Closed(e)) => return Err(e),
                Some(ChannelEvent::Cancelled { .. }) => {
                    return Err(Error::Topology(format!(
                        "the broker stopped our reading of {:?} (queue deleted?)",
                        self.queue
                    )));
                }
                None => return Err(Error::ConnectionLost("the channel is gone".into())),
                Some(_) => {}
            }
        }
    }

    /// After a silence: asks the broker how many messages are ready. None means every message
    /// the queue held went to a consumer (us or another): [`next`](Self::next) then hands out
    /// what already arrived (the broker sends a channel's deliveries before its answer) and
    /// reports the pass drained.
    pub(crate) async fn check(&mut self) -> Result<(), Error> {
        if self.state != State::Reading {
            return Ok(());
        }
        if self.ready().await? == 0 {
            self.state = State::Checked;
        }
        Ok(())
    }

    /// How many messages the queue holds ready (a passive `queue.declare`).
    async fn ready(&mut self) -> Result<u32, Error> {
        let (_, ready, _) = self
            .ch
            .queue_declare(
                &self.queue,
                crate::transport::QueueFlags::PASSIVE,
                Default::default(),
            )
            .await?;
        Ok(ready)
    }

    /// Removes a message from the queue (`basic.ack`; the broker has processed it once
    /// [`finish`](Self::finish) returns `Ok`).
    pub(crate) fn ack(&mut self, delivery_tag: u64) -> Result<(), Error> {
        self.ch.write(|w| w.ack(delivery_tag, false))?;
        self.held.remove(&delivery_tag);
        Ok(())
    }

    /// Stops reading, gives back every message still held (in the order they came, so each
    /// returns to its place), and closes the channel. `Ok` means the broker has processed every
    /// ack and give-back before (AMQP handles a channel's frames in order, and it answered the
    /// close).
    pub(crate) async fn finish(mut self) -> Result<(), Error> {
        if let Some(tag) = self.consumer_tag.take() {
            self.ch.cancel(&tag).await?;
        }
        // Deliveries past the snapshot, or sent before the cancel took effect.
        while let Some(ev) = self.ch.try_recv() {
            match ev {
                ChannelEvent::Deliver(d) => {
                    self.held.insert(d.delivery_tag);
                }
                ChannelEvent::Closed(e) => return Err(e),
                _ => {}
            }
        }
        let held = std::mem::take(&mut self.held);
        if !held.is_empty() {
            self.ch.write(|w| {
                for tag in &held {
                    w.nack(*tag, true);
                }
            })?;
        }
        self.settle_back(held.len() as u64).await?;
        self.ch.close().await
    }

    /// Waits (at most [`SETTLE`]) until the queue counts at least `given_back` ready messages
    /// again. The broker puts given-back messages back asynchronously (a quorum queue through
    /// its log): without this, an operation started right after — a listing after a replay —
    /// could take its snapshot before they are back and miss them. A queue that another
    /// consumer is reading may never get there: the wait then just ends.
    async fn settle_back(&mut self, given_back: u64) -> Result<(), Error> {
        if given_back == 0 {
            return Ok(());
        }
        let until = tokio::time::Instant::now() + SETTLE;
        loop {
            if u64::from(self.ready().await?) >= given_back || tokio::time::Instant::now() >= until
            {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}
