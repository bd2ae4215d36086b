//! A channel: synchronous calls (declare, qos, consume…), fire-and-forget frames (publish,
//! ack), and the stream of events the reader routes to it (confirms, returns, deliveries).
//!
//! A channel is owned by one task. Events that arrive while that task waits for a reply are
//! kept in order in a backlog and handed out by the next `recv`.

use super::frame::{PublishFrames, put_method, put_publish};
use super::link::{Link, unexpected};
use super::method::{Close, Method};
use super::properties::Properties;
use super::table::FieldTable;
use crate::error::Error;
use bytes::{Bytes, BytesMut};
use std::collections::VecDeque;
use tokio::sync::mpsc;

/// A message the broker delivered (`basic.deliver` or `basic.get-ok`).
#[derive(Debug, Clone)]
pub(crate) struct RawDelivery {
    pub delivery_tag: u64,
    pub redelivered: bool,
    pub exchange: String,
    pub routing_key: String,
    pub properties: Properties,
    pub body: Bytes,
    /// Why this delivery could not be decoded in full (the message is still acked or nacked
    /// like any other; the idempotent consumer dead-letters it with this reason).
    pub malformed: Option<String>,
}

/// A `mandatory` message the broker could not route (`basic.return`).
#[derive(Debug, Clone)]
pub(crate) struct Returned {
    pub reply_code: u16,
    pub reply_text: String,
    pub exchange: String,
    pub routing_key: String,
    pub properties: Properties,
}

/// What the reader routes to a channel.
#[derive(Debug)]
pub(crate) enum ChannelEvent {
    /// A method: a reply to a call, or one the broker started (`basic.cancel`, `channel.flow`).
    Method(Method),
    /// Publisher confirm: the broker took responsibility for `tag` (and all before, if multiple).
    Ack {
        tag: u64,
        multiple: bool,
    },
    /// Publisher confirm: the broker could not take the message(s).
    Nack {
        tag: u64,
        multiple: bool,
    },
    Return(Box<Returned>),
    /// The broker cancelled a consumer of this channel (`basic.cancel`, already answered):
    /// its queue was deleted, or a quorum queue's leader moved.
    Cancelled {
        consumer_tag: String,
    },
    /// Boxed: a delivery is large (properties) and travels through two queues.
    Deliver(Box<RawDelivery>),
    /// The channel is gone: closed by the broker, or its connection died. Always the last event.
    Closed(Error),
}

/// The flags of `queue.declare`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct QueueFlags {
    /// Only check that the queue exists (404 if not); the other flags are ignored.
    pub passive: bool,
    pub durable: bool,
    pub exclusive: bool,
    pub auto_delete: bool,
}

impl QueueFlags {
    /// A check that the queue exists, declaring nothing.
    pub(crate) const PASSIVE: QueueFlags = QueueFlags {
        passive: true,
        durable: false,
        exclusive: false,
        auto_delete: false,
    };
}

/// The flags of `exchange.declare`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct ExchangeFlags {
    /// Only check that the exchange exists (404 if not); the other flags are ignored.
    pub passive: bool,
    pub durable: bool,
    pub auto_delete: bool,
    pub internal: bool,
}

impl ExchangeFlags {
    /// A check that the exchange exists, declaring nothing.
    pub(crate) const PASSIVE: ExchangeFlags = ExchangeFlags {
        passive: true,
        durable: false,
        auto_delete: false,
        internal: false,
    };
}

/// Frames for one channel, appended to the connection's outbox in one go.
#[derive(Debug)]
pub(crate) struct FrameWriter<'a> {
    out: &'a mut BytesMut,
    channel: u16,
    frame_max: u32,
}

impl FrameWriter<'_> {
    pub(crate) fn publish(&mut self, p: PublishFrames<'_>) {
        put_publish(self.out, self.channel, self.frame_max, p);
    }

    pub(crate) fn method(&mut self, m: &Method) {
        put_method(self.out, self.channel, m);
    }

    /// Acknowledges a delivery (and every earlier one with `multiple`).
    pub(crate) fn ack(&mut self, delivery_tag: u64, multiple: bool) {
        self.method(&Method::BasicAck {
            delivery_tag,
            multiple,
        });
    }

    /// Gives a delivery back: requeued, or dropped / dead-lettered by the queue's policy.
    pub(crate) fn nack(&mut self, delivery_tag: u64, requeue: bool) {
        self.method(&Method::BasicNack {
            delivery_tag,
            multiple: false,
            requeue,
        });
    }
}

#[derive(Debug)]
pub(crate) struct Channel {
    id: u16,
    link: Link,
    rx: mpsc::UnboundedReceiver<ChannelEvent>,
    backlog: VecDeque<ChannelEvent>,
    closed: Option<Error>,
}

impl Channel {
    pub(crate) fn new(id: u16, link: Link, rx: mpsc::UnboundedReceiver<ChannelEvent>) -> Self {
        Channel {
            id,
            link,
            rx,
            backlog: VecDeque::new(),
            closed: None,
        }
    }

    /// Appends frames for this channel to the outbox. `Ok(true)` means the outbox is past its
    /// high-water mark: await [`Link::writable`] before writing much more.
    pub(crate) fn write<R>(
        &self,
        f: impl FnOnce(&mut FrameWriter<'_>) -> R,
    ) -> Result<(R, bool), Error> {
        if let Some(e) = &self.closed {
            return Err(e.clone());
        }
        let (channel, frame_max) = (self.id, self.link.frame_max());
        self.link.shared().write_channel(channel, |out| {
            f(&mut FrameWriter {
                out,
                channel,
                frame_max,
            })
        })
    }

    pub(crate) fn send(&self, m: &Method) -> Result<(), Error> {
        self.write(|w| w.method(m)).map(|_| ())
    }

    /// Sends a method and waits for its reply. Other events that arrive meanwhile are kept.
    pub(crate) async fn call(&mut self, m: Method) -> Result<Method, Error> {
        self.send(&m)?;
        let mut skipped = VecDeque::new();
        let reply = loop {
            match self.rx.recv().await {
                Some(ChannelEvent::Method(m @ Method::ChannelFlow { .. })) => {
                    skipped.push_back(ChannelEvent::Method(m))
                }
                Some(ChannelEvent::Method(reply)) => break Ok(reply),
                Some(ChannelEvent::Closed(e)) => {
                    self.closed = Some(e.clone());
                    skipped.push_back(ChannelEvent::Closed(e.clone()));
                    break Err(e);
                }
                Some(other) => skipped.push_back(other),
                None => {
                    let e = Error::ConnectionLost("channel dropped by the connection".into());
                    self.closed = Some(e.clone());
                    break Err(e);
                }
            }
        };
        self.backlog.extend(skipped);
        reply
    }

    /// The next event; `None` after `Closed` has been handed out.
    pub(crate) async fn recv(&mut self) -> Option<ChannelEvent> {
        if let Some(ev) = self.backlog.pop_front() {
            return Some(self.note(ev));
        }
        let ev = self.rx.recv().await?;
        Some(self.note(ev))
    }

    /// The next event if one is ready.
    pub(crate) fn try_recv(&mut self) -> Option<ChannelEvent> {
        if let Some(ev) = self.backlog.pop_front() {
            return Some(self.note(ev));
        }
        let ev = self.rx.try_recv().ok()?;
        Some(self.note(ev))
    }

    fn note(&mut self, ev: ChannelEvent) -> ChannelEvent {
        if let ChannelEvent::Closed(e) = &ev {
            self.closed = Some(e.clone());
        }
        ev
    }

    /// Closes the channel (`channel.close`, wait for close-ok).
    pub(crate) async fn close(&mut self) -> Result<(), Error> {
        if self.closed.is_some() {
            return Ok(());
        }
        let r = self.call(Method::ChannelClose(Close::normal())).await;
        self.closed = Some(Error::Closed);
        match r {
            Ok(Method::ChannelCloseOk) => Ok(()),
            Ok(other) => Err(unexpected("channel.close-ok", &other)),
            Err(e) => Err(e),
        }
    }

    // --- Calls ------------------------------------------------------------------------------

    pub(crate) async fn confirm_select(&mut self) -> Result<(), Error> {
        match self.call(Method::ConfirmSelect).await? {
            Method::ConfirmSelectOk => Ok(()),
            other => Err(unexpected("confirm.select-ok", &other)),
        }
    }

    pub(crate) async fn qos(&mut self, prefetch_count: u16) -> Result<(), Error> {
        match self
            .call(Method::BasicQos {
                prefetch_count,
                global: false,
            })
            .await?
        {
            Method::BasicQosOk => Ok(()),
            other => Err(unexpected("basic.qos-ok", &other)),
        }
    }

    /// Declares (or, with `passive`, checks) a queue; returns (name, message count, consumer
    /// count).
    pub(crate) async fn queue_declare(
        &mut self,
        queue: &str,
        flags: QueueFlags,
        arguments: FieldTable,
    ) -> Result<(String, u32, u32), Error> {
        let QueueFlags {
            passive,
            durable,
            exclusive,
            auto_delete,
        } = flags;
        match self
            .call(Method::QueueDeclare {
                queue: queue.into(),
                passive,
                durable,
                exclusive,
                auto_delete,
                arguments,
            })
            .await?
        {
            Method::QueueDeclareOk {
                queue,
                message_count,
                consumer_count,
            } => Ok((queue, message_count, consumer_count)),
            other => Err(unexpected("queue.declare-ok", &other)),
        }
    }

    /// Declares (or, with `passive`, checks) an exchange of type `kind`.
    pub(crate) async fn exchange_declare(
        &mut self,
        exchange: &str,
        kind: &str,
        flags: ExchangeFlags,
        arguments: FieldTable,
    ) -> Result<(), Error> {
        let ExchangeFlags {
            passive,
            durable,
            auto_delete,
            internal,
        } = flags;
        match self
            .call(Method::ExchangeDeclare {
                exchange: exchange.into(),
                kind: kind.into(),
                passive,
                durable,
                auto_delete,
                internal,
                arguments,
            })
            .await?
        {
            Method::ExchangeDeclareOk => Ok(()),
            other => Err(unexpected("exchange.declare-ok", &other)),
        }
    }

    pub(crate) async fn exchange_delete(&mut self, exchange: &str) -> Result<(), Error> {
        match self
            .call(Method::ExchangeDelete {
                exchange: exchange.into(),
                if_unused: false,
            })
            .await?
        {
            Method::ExchangeDeleteOk => Ok(()),
            other => Err(unexpected("exchange.delete-ok", &other)),
        }
    }

    pub(crate) async fn queue_bind(
        &mut self,
        queue: &str,
        exchange: &str,
        routing_key: &str,
        arguments: FieldTable,
    ) -> Result<(), Error> {
        match self
            .call(Method::QueueBind {
                queue: queue.into(),
                exchange: exchange.into(),
                routing_key: routing_key.into(),
                arguments,
            })
            .await?
        {
            Method::QueueBindOk => Ok(()),
            other => Err(unexpected("queue.bind-ok", &other)),
        }
    }

    pub(crate) async fn exchange_bind(
        &mut self,
        destination: &str,
        source: &str,
        routing_key: &str,
        arguments: FieldTable,
    ) -> Result<(), Error> {
        match self
            .call(Method::ExchangeBind {
                destination: destination.into(),
                source: source.into(),
                routing_key: routing_key.into(),
                arguments,
            })
            .await?
        {
            Method::ExchangeBindOk => Ok(()),
            other => Err(unexpected("exchange.bind-ok", &other)),
        }
    }

    pub(crate) async fn queue_delete(&mut self, queue: &str) -> Result<u32, Error> {
        match self
            .call(Method::QueueDelete {
                queue: queue.into(),
                if_unused: false,
                if_empty: false,
            })
            .await?
        {
            Method::QueueDeleteOk { message_count } => Ok(message_count),
            other => Err(unexpected("queue.delete-ok", &other)),
        }
    }

    pub(crate) async fn queue_purge(&mut self, queue: &str) -> Result<u32, Error> {
        match self
            .call(Method::QueuePurge {
                queue: queue.into(),
            })
            .await?
        {
            Method::QueuePurgeOk { message_count } => Ok(message_count),
            other => Err(unexpected("queue.purge-ok", &other)),
        }
    }

    pub(crate) async fn consume(
        &mut self,
        queue: &str,
        consumer_tag: &str,
        exclusive: bool,
        arguments: FieldTable,
    ) -> Result<String, Error> {
        match self
            .call(Method::BasicConsume {
                queue: queue.into(),
                consumer_tag: consumer_tag.into(),
                no_ack: false,
                exclusive,
                arguments,
            })
            .await?
        {
            Method::BasicConsumeOk { consumer_tag } => Ok(consumer_tag),
            other => Err(unexpected("basic.consume-ok", &other)),
        }
    }

    pub(crate) async fn cancel(&mut self, consumer_tag: &str) -> Result<(), Error> {
        match self
            .call(Method::BasicCancel {
                consumer_tag: consumer_tag.into(),
                nowait: false,
            })
            .await?
        {
            Method::BasicCancelOk { .. } => Ok(()),
            other => Err(unexpected("basic.cancel-ok", &other)),
        }
    }
}

impl Drop for Channel {
    fn drop(&mut self) {
        if self.closed.is_none() {
            self.link.abandon_channel(self.id);
        }
    }
}

/// Borrowed message parts for [`FrameWriter::publish`].
pub(crate) fn publish_frames<'a>(
    exchange: &'a str,
    routing_key: &'a str,
    mandatory: bool,
    properties: &'a Properties,
    body: &'a [u8],
) -> PublishFrames<'a> {
    PublishFrames {
        exchange,
        routing_key,
        mandatory,
        properties,
        body,
    }
}
