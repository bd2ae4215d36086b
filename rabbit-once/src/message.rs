//! An outgoing message: where it goes, its body and properties. Persistent and mandatory by
//! default; the publisher gives it a UUIDv7 `message_id` unless the caller set one.

use crate::error::Error;
use crate::transport::FieldValue;
use crate::transport::Properties;
use bytes::Bytes;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// A message to publish.
#[derive(Debug, Clone, PartialEq)]
pub struct Message {
    pub(crate) exchange: String,
    pub(crate) routing_key: String,
    pub(crate) body: Bytes,
    pub(crate) properties: Properties,
    pub(crate) mandatory: bool,
}

impl Message {
    /// A persistent, mandatory message to `exchange` with `routing_key`.
    pub fn new(
        exchange: impl Into<String>,
        routing_key: impl Into<String>,
        body: impl Into<Bytes>,
    ) -> Self {
        Message {
            exchange: exchange.into(),
            routing_key: routing_key.into(),
            body: body.into(),
            properties: Properties {
                delivery_mode: Some(2),
                ..Default::default()
            },
            mandatory: true,
        }
    }

    /// A message straight to `queue` through the default exchange.
    pub fn to_queue(queue: impl Into<String>, body: impl Into<Bytes>) -> Self {
        Self::new("", queue, body)
    }

    /// Sets the id the consumer deduplicates on. It never changes on re-publish. Without
    /// one, [`Publisher::publish`](crate::Publisher::publish) assigns a UUIDv7.
    pub fn with_message_id(mut self, id: impl Into<String>) -> Self {
        self.properties.message_id = Some(id.into());
        self.properties.message_id_octets = false;
        self
    }

    /// Delivery mode 2 (the default): a durable queue keeps the message across a broker
    /// restart.
    pub fn persistent(mut self) -> Self {
        self.properties.delivery_mode = Some(2);
        self
    }

    /// Delivery mode 1: the broker may lose it on restart (faster).
    pub fn transient(mut self) -> Self {
        self.properties.delivery_mode = Some(1);
        self
    }

    /// Whether the broker must return the message if no queue takes it (default `true`:
    /// the publisher then reports [`Error::Unroutable`] for it).
    pub fn with_mandatory(mut self, yes: bool) -> Self {
        self.mandatory = yes;
        self
    }

    /// Adds (or replaces) one application header.
    pub fn with_header(mut self, key: impl Into<String>, value: impl Into<FieldValue>) -> Self {
        self.properties = self.properties.with_header(key, value);
        self
    }

    /// The MIME type of the body, e.g. `application/json`.
    pub fn with_content_type(mut self, content_type: impl Into<String>) -> Self {
        self.properties.content_type = Some(content_type.into());
        self
    }

    /// The encoding of the body, e.g. `gzip`.
    pub fn with_content_encoding(mut self, encoding: impl Into<String>) -> Self {
        self.properties.content_encoding = Some(encoding.into());
        self
    }

    /// Correlates a reply with its request (RPC), or a message with a business key.
    pub fn with_correlation_id(mut self, id: impl Into<String>) -> Self {
        self.properties.correlation_id = Some(id.into());
        self
    }

    /// The queue a reply should be sent to (RPC).
    pub fn with_reply_to(mut self, queue: impl Into<String>) -> Self {
        self.properties.reply_to = Some(queue.into());
        self
    }

    /// Per-message TTL: the broker drops (or dead-letters) the message once it has waited
    /// this long in a queue. Sent in whole milliseconds, rounded down: under 1 ms is 0, which
    /// means "deliver now or drop". At most `u32::MAX` ms (~49.7 days); more is refused at
    /// `publish` with [`Error::InvalidMessage`].
    pub fn with_expiration(mut self, ttl: Duration) -> Self {
        self.properties.expiration = Some(ttl.as_millis().to_string());
        self
    }

    /// Priority 0–255; only priority queues (`x-max-priority`) use it.
    pub fn with_priority(mut self, priority: u8) -> Self {
        self.properties.priority = Some(priority);
        self
    }

    /// The AMQP `type` property: an application-defined message type name.
    pub fn with_message_type(mut self, kind: impl Into<String>) -> Self {
        self.properties.kind = Some(kind.into());
        self
    }

    /// The AMQP `user_id` property. RabbitMQ refuses a message whose `user_id` is not the
    /// connection's user.
    pub fn with_user_id(mut self, user: impl Into<String>) -> Self {
        self.properties.user_id = Some(user.into());
        self
    }

    /// The AMQP `app_id` property: the name of the producing application.
    pub fn with_app_id(mut self, app: impl Into<String>) -> Self {
        self.properties.app_id = Some(app.into());
        self
    }

    /// The AMQP `timestamp` property, sent in whole seconds since the Unix epoch (a time before
    /// the epoch is sent as 0).
    pub fn with_timestamp(mut self, at: SystemTime) -> Self {
        self.properties.timestamp = Some(at.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs()));
        self
    }

    /// Replaces every property set so far (headers, content type, …) with `properties`. Only
    /// the message id and the delivery mode carry over when `properties` leaves them `None`, so
    /// a `Properties::default()` neither drops the id nor silently makes the message transient.
    ///
    /// ```
    /// use rabbit_once::{Message, Properties};
    ///
    /// let mut p = Properties::default(); // `Properties` is non-exhaustive: set fields one by one
    /// p.app_id = Some("billing".into());
    /// let m = Message::to_queue("orders", "{}").with_message_id("o-1").with_properties(p);
    /// assert_eq!((m.message_id(), m.is_persistent()), (Some("o-1"), true));
    /// ```
    pub fn with_properties(mut self, mut properties: Properties) -> Self {
        if properties.message_id.is_none() {
            properties.message_id = self.properties.message_id.take();
            properties.message_id_octets = self.properties.message_id_octets;
        }
        if properties.delivery_mode.is_none() {
            properties.delivery_mode = self.properties.delivery_mode;
        }
        self.properties = properties;
        self
    }

    /// The exchange it is published to (`""` is the default exchange).
    pub fn exchange(&self) -> &str {
        &self.exchange
    }

    /// The routing key (the queue name, through the default exchange).
    pub fn routing_key(&self) -> &str {
        &self.routing_key
    }

    /// The body.
    pub fn body(&self) -> &Bytes {
        &self.body
    }

    /// All AMQP properties.
    pub fn properties(&self) -> &Properties {
        &self.properties
    }

    /// One application header, if set.
    pub fn header(&self, key: &str) -> Option<&FieldValue> {
        self.properties.header(key)
    }

    /// The message id, once set (by the caller or by `publish`).
    pub fn message_id(&self) -> Option<&str> {
        self.properties.message_id.as_deref()
    }

    /// Whether the broker returns the message when no queue takes it.
    pub fn is_mandatory(&self) -> bool {
        self.mandatory
    }

    /// Whether it is sent with delivery mode 2.
    pub fn is_persistent(&self) -> bool {
        self.properties.delivery_mode == Some(2)
    }

    /// Gives the message an id unless it has one; checks everything the broker would refuse,
    /// including a content header (properties and headers) that does not fit in one frame of
    /// `frame_max` bytes.
    pub(crate) fn prepare(&mut self, max_size: usize, frame_max: u32) -> Result<(), Error> {
        if self.body.len() > max_size {
            return Err(Error::MessageTooLarge {
                size: self.body.len(),
                max: max_size,
            });
        }
        if self.properties.message_id.is_none() {
            self.properties.message_id = Some(new_message_id());
        }
        crate::transport::check_short("exchange name", &self.exchange)
            .and_then(|_| crate::transport::check_short("routing key", &self.routing_key))
            .and_then(|_| self.properties.validate())
            .and_then(|_| self.check_header_fits(frame_max))
            .map_err(Error::InvalidMessage)
    }

    /// Whether the content header fits in one frame of `frame_max` bytes.
    pub(crate) fn check_header_fits(&self, frame_max: u32) -> Result<(), String> {
        let size = crate::transport::content_header_frame_size(&self.properties);
        if size > frame_max as usize {
            Err(format!(
                "properties and headers take {size} bytes, more than one frame of {frame_max} \
                 bytes (frame_max) can carry"
            ))
        } else {
            Ok(())
        }
    }
}

/// A new UUIDv7 (time-ordered) as text. Randomness from a thread-local generator seeded once:
/// no system call per message.
pub fn new_message_id() -> String {
    let ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0);
    let rand: [u8; 10] = fastrand::u128(..).to_le_bytes()[..10]
        .try_into()
        .expect("10 bytes");
    let id = uuid::Builder::from_unix_timestamp_millis(ms, &rand).into_uuid();
    let mut buf = [0u8; uuid::fmt::Hyphenated::LENGTH];
    id.hyphenated().encode_lower(&mut buf).to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_uuid_v7_and_distinct() {
        let a = new_message_id();
        let b = new_message_id();
        assert_ne!(a, b);
        let u = uuid::Uuid::parse_str(&a).unwrap();
        assert_eq!(u.get_version_num(), 7);
        assert_eq!(a.len(), 36);
    }

    #[test]
    fn prepare_keeps_a_caller_id_and_refuses_oversize() {
        let mut m = Message::to_queue("q", "x").with_message_id("mine");
        m.prepare(10, 131_072).unwrap();
        assert_eq!(m.message_id(), Some("mine"));
        let mut m = Message::to_queue("q", vec![0u8; 11]);
        assert!(matches!(
            m.prepare(10, 131_072),
            Err(Error::MessageTooLarge { size: 11, max: 10 })
        ));
        let mut m = Message::to_queue("q", "x");
        m.prepare(10, 131_072).unwrap();
        assert!(m.message_id().is_some());
        assert!(m.is_persistent());
        assert!(m.mandatory);
    }

    #[test]
    fn prepare_refuses_what_the_broker_would() {
        let mut m = Message::to_queue("q".repeat(300), "x");
        assert!(matches!(
            m.prepare(10, 131_072),
            Err(Error::InvalidMessage(_))
        ));
    }

    #[test]
    fn builders_set_each_property_and_never_reset_the_delivery_mode() {
        let at = UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let m = Message::new("ex", "rk", "b")
            .with_message_id("id-1")
            .with_content_type("application/json")
            .with_content_encoding("gzip")
            .with_correlation_id("c-1")
            .with_reply_to("replies")
            .with_expiration(Duration::from_millis(1500))
            .with_priority(7)
            .with_message_type("order.created")
            .with_user_id("guest")
            .with_app_id("orders")
            .with_timestamp(at)
            .with_header("tenant", "t1")
            .with_mandatory(false);
        let p = m.properties();
        assert_eq!(p.content_type.as_deref(), Some("application/json"));
        assert_eq!(p.content_encoding.as_deref(), Some("gzip"));
        assert_eq!(p.correlation_id.as_deref(), Some("c-1"));
        assert_eq!(p.reply_to.as_deref(), Some("replies"));
        assert_eq!(p.expiration.as_deref(), Some("1500"));
        assert_eq!(p.priority, Some(7));
        assert_eq!(p.kind.as_deref(), Some("order.created"));
        assert_eq!(p.user_id.as_deref(), Some("guest"));
        assert_eq!(p.app_id.as_deref(), Some("orders"));
        assert_eq!(p.timestamp, Some(1_700_000_000));
        assert_eq!(m.header("tenant"), Some(&FieldValue::from("t1")));
        assert_eq!(m.message_id(), Some("id-1"));
        assert!(m.is_persistent());
        assert!(!m.is_mandatory());
        assert_eq!((m.exchange(), m.routing_key()), ("ex", "rk"));

        // Replacing the properties keeps the id and the delivery mode unless they are given.
        let fresh = Properties {
            app_id: Some("other".into()),
            ..Properties::default()
        };
        let m = m.with_properties(fresh);
        assert_eq!(m.message_id(), Some("id-1"));
        assert!(m.is_persistent());
        assert_eq!(m.properties().app_id.as_deref(), Some("other"));
        let transient = Properties {
            delivery_mode: Some(1),
            ..Properties::default()
        };
        assert!(!m.with_properties(transient).is_persistent());
        assert!(!Message::to_queue("q", "x").transient().is_persistent());
    }
}
