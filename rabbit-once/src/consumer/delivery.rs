//! A delivered message and the handle that settles it on the channel it came from.

use crate::transport::FieldValue;
use crate::transport::Properties;
use crate::transport::RawDelivery;
use bytes::Bytes;
use tokio::sync::mpsc;

/// Header carrying the delivery attempt (1 for the first), set when a message is retried.
pub const ATTEMPT_HEADER: &str = "x-rabbit-once-attempt";

/// How a delivery was settled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Settle {
    Ack,
    Nack { requeue: bool },
}

/// What deliveries share with their subscription: where settles go, and which channel is live.
#[derive(Debug)]
pub(crate) struct AckLink {
    pub tx: mpsc::UnboundedSender<AckCmd>,
    /// The generation of the live channel (`u64::MAX` while there is none).
    pub live: std::sync::atomic::AtomicU64,
}

#[derive(Debug)]
pub(crate) struct AckCmd {
    pub generation: u64,
    pub tag: u64,
    pub how: Settle,
}

/// A message from the broker. Settle it with [`ack`](Self::ack) or [`nack`](Self::nack);
/// dropping it unsettled requeues it.
///
/// Settling is bound to the channel the message came on: after that channel is gone, settling
/// does nothing (the broker redelivers the message on a new channel instead).
#[derive(Debug)]
pub struct Delivery {
    pub(crate) raw: Box<RawDelivery>,
    pub(crate) generation: u64,
    pub(crate) link: Option<std::sync::Arc<AckLink>>,
}

impl Delivery {
    /// The body.
    pub fn body(&self) -> &Bytes {
        &self.raw.body
    }

    /// The producer's `message_id`, if it set one, as text. AMQP ids are octets and other
    /// clients may send any; an id that is not UTF-8 comes as a lossless text view (each
    /// stray byte as `\xNN`, a backslash as `\\`), stable for the same bytes and distinct for
    /// different ones. [`message_id_bytes`](Self::message_id_bytes) gives the octets, and
    /// [`message_id_is_utf8`](Self::message_id_is_utf8) tells the two kinds apart (the
    /// idempotent consumer keys them apart, so a UTF-8 id that merely reads like a view is never
    /// taken for a duplicate of those octets).
    pub fn message_id(&self) -> Option<&str> {
        self.raw.properties.message_id.as_deref()
    }

    /// The `message_id` as the octets the producer sent (see [`message_id`](Self::message_id)).
    pub fn message_id_bytes(&self) -> Option<std::borrow::Cow<'_, [u8]>> {
        self.raw.properties.message_id_wire()
    }

    /// Whether the `message_id` arrived as UTF-8 (`false` when it is a text view of other octets).
    pub fn message_id_is_utf8(&self) -> bool {
        !self.raw.properties.message_id_octets
    }

    /// Why this delivery could not be decoded in full, if it could not: properties that do not
    /// parse (for example headers nested deeper than the limit) or a body over
    /// [`ConnectionConfig::max_body_size`](crate::ConnectionConfig::max_body_size) (then the
    /// body is empty). Such a delivery reached us without ending the connection; settle it like
    /// any other. The idempotent consumer dead-letters it with this reason.
    pub fn malformed(&self) -> Option<&str> {
        self.raw.malformed.as_deref()
    }

    /// All AMQP properties.
    pub fn properties(&self) -> &Properties {
        &self.raw.properties
    }

    /// One application header, if present.
    pub fn header(&self, key: &str) -> Option<&FieldValue> {
        self.raw.properties.header(key)
    }

    /// Whether the broker delivered this message before (to this or another consumer).
    pub fn redelivered(&self) -> bool {
        self.raw.redelivered
    }

    /// The attempt number: 1 at first, +1 for each retry through the retry queue.
    pub fn attempt(&self) -> u32 {
        self.header(ATTEMPT_HEADER)
            .and_then(FieldValue::as_i64)
            .map_or(1, |a| a.clamp(1, u32::MAX as i64) as u32)
    }

    /// The exchange it was published to (`""`: the default exchange).
    pub fn exchange(&self) -> &str {
        &self.raw.exchange
    }

    /// The routing key it was published with.
    pub fn routing_key(&self) -> &str {
        &self.raw.routing_key
    }

    /// The broker's delivery tag on the channel it came on.
    pub fn delivery_tag(&self) -> u64 {
        self.raw.delivery_tag
    }

    /// Which channel (counted per subscription) the message came on.
    pub fn channel_generation(&self) -> u64 {
        self.generation
    }

    /// Whether the channel it came on is still open, i.e. settling it still means something.
    /// Once it is not, the broker will deliver the message again.
    pub fn is_live(&self) -> bool {
        self.link
            .as_ref()
            .is_some_and(|l| l.live.load(std::sync::atomic::Ordering::Acquire) == self.generation)
    }

    /// Acknowledges: the broker forgets the message. Acks are coalesced into `multiple` acks.
    pub fn ack(mut self) {
        self.settle(Settle::Ack);
    }

    /// Negative acknowledgement: requeue it, or (with `requeue = false`) drop or dead-letter
    /// it per the queue's policy.
    pub fn nack(mut self, requeue: bool) {
        self.settle(Settle::Nack { requeue });
    }

    fn settle(&mut self, how: Settle) {
        if let Some(link) = self.link.take() {
            let _ = link.tx.send(AckCmd {
                generation: self.generation,
                tag: self.raw.delivery_tag,
                how,
            });
        }
    }
}

/// Builds a [`Delivery`] that did not come from a broker, to unit-test a handler (feature
/// `test-util`). Settling it does nothing, and [`Delivery::is_live`] is `false`.
///
/// ```
/// use rabbit_once::Delivery;
///
/// let d = Delivery::builder(r#"{"order":1}"#)
///     .message_id("order-1")
///     .routing_key("orders")
///     .header("tenant", "t1")
///     .attempt(2)
///     .build();
/// assert_eq!(d.message_id(), Some("order-1"));
/// assert_eq!(d.attempt(), 2);
/// assert!(!d.is_live());
/// d.ack(); // does nothing
/// ```
#[cfg(feature = "test-util")]
#[derive(Debug)]
pub struct DeliveryBuilder {
    raw: RawDelivery,
}

#[cfg(feature = "test-util")]
impl Delivery {
    /// A builder for a delivery with `body`, persistent, from the default exchange, delivery
    /// tag 1, not redelivered (feature `test-util`).
    pub fn builder(body: impl Into<Bytes>) -> DeliveryBuilder {
        DeliveryBuilder {
            raw: RawDelivery {
                delivery_tag: 1,
                redelivered: false,
                exchange: String::new(),
                routing_key: String::new(),
                properties: Properties {
                    delivery_mode: Some(2),
                    ..Properties::default()
                },
                body: body.into(),
                malformed: None,
            },
        }
    }
}

#[cfg(feature = "test-util")]
impl DeliveryBuilder {
    /// The producer's `message_id`.
    pub fn message_id(mut self, id: impl Into<String>) -> Self {
        self.raw.properties.message_id = Some(id.into());
        self.raw.properties.message_id_octets = false;
        self
    }

    /// Adds one application header.
    pub fn header(mut self, key: impl Into<String>, value: impl Into<FieldValue>) -> Self {
        self.raw.properties = self.raw.properties.with_header(key, value);
        self
    }

    /// Replaces all properties (the message id and headers included).
    pub fn properties(mut self, properties: Properties) -> Self {
        self.raw.properties = properties;
        self
    }

    /// The exchange it was published to.
    pub fn exchange(mut self, exchange: impl Into<String>) -> Self {
        self.raw.exchange = exchange.into();
        self
    }

    /// The routing key it was published with.
    pub fn routing_key(mut self, routing_key: impl Into<String>) -> Self {
        self.raw.routing_key = routing_key.into();
        self
    }

    /// Whether the broker had delivered it before.
    pub fn redelivered(mut self, yes: bool) -> Self {
        self.raw.redelivered = yes;
        self
    }

    /// The delivery tag.
    pub fn delivery_tag(mut self, tag: u64) -> Self {
        self.raw.delivery_tag = tag;
        self
    }

    /// The attempt number [`Delivery::attempt`] reports (as the retry path sets it).
    pub fn attempt(self, attempt: u32) -> Self {
        self.header(ATTEMPT_HEADER, i64::from(attempt))
    }

    /// Marks it as a delivery that could not be decoded in full, with `reason`.
    pub fn malformed(mut self, reason: impl Into<String>) -> Self {
        self.raw.malformed = Some(reason.into());
        self
    }

    /// The delivery.
    pub fn build(self) -> Delivery {
        Delivery {
            raw: Box::new(self.raw),
            generation: 0,
            link: None,
        }
    }
}

impl Drop for Delivery {
    fn drop(&mut self) {
        self.settle(Settle::Nack { requeue: true });
    }
}
