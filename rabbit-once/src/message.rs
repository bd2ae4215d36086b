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

    /// Sets the id the consumer deduplicates on. It never changes on re-publish.
    pub fn message_id(mut self, id: impl Into<String>) -> Self {
        self.properties.message_id = Some(id.into());
        self.properties.message_id_octets = false;
        self
    }

    /// Delivery mode 1: the broker may lose it on restart (faster).
    pub fn transient(mut self) -> Self {
        self.properties.delivery_mode = Some(1);
        self
    }

    pub fn persistent(mut self) -> Self {
        self.properties.delivery_mode = Some(2);
        self
    }

    /// Whether the broker must return the message if no queue takes it (default true:
    /// the publisher then reports [`Error::Unroutable`] for it).
    pub fn mandatory(mut self, yes: bool) -> Self {
        self.mandatory = yes;
        self
    }

    pub fn header(mut self, key: impl Into<String>, value: impl Into<FieldValue>) -> Self {
        self.properties = self.properties.with_header(key, value);
        self
    }

    pub fn content_type(mut self, ct: impl Into<String>) -> Self {
        self.properties.content_type = Some(ct.into());
        self
    }

    /// Per-message TTL.
    pub fn expiration(mut self, ttl: Duration) -> Self {
        self.properties.expiration = Some(ttl.as_millis().to_string());
        self
    }

    pub fn priority(mut self, p: u8) -> Self {
        self.properties.priority = Some(p);
        self
    }

    /// Replaces all properties (the message id is kept if the new ones have none).
    pub fn properties(mut self, mut p: Properties) -> Self {
        if p.message_id.is_none() {
            p.message_id = self.properties.message_id.take();
        }
        self.properties = p;
        self
    }

    pub fn exchange_name(&self) -> &str {
        &self.exchange
    }

    pub fn routing_key(&self) -> &str {
        &self.routing_key
    }

    pub fn body(&self) -> &Bytes {
        &self.body
    }

    pub fn props(&self) -> &Properties {
        &self.properties
    }

    /// The message id, once set (by the caller or by `publish`).
    pub fn id(&self) -> Option<&str> {
        self.properties.message_id.as_deref()
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
        let mut m = Message::to_queue("q", "x").message_id("mine");
        m.prepare(10, 131_072).unwrap();
        assert_eq!(m.id(), Some("mine"));
        let mut m = Message::to_queue("q", vec![0u8; 11]);
        assert!(matches!(
            m.prepare(10, 131_072),
            Err(Error::MessageTooLarge { size: 11, max: 10 })
        ));
        let mut m = Message::to_queue("q", "x");
        m.prepare(10, 131_072).unwrap();
        assert!(m.id().is_some());
        assert_eq!(m.props().delivery_mode, Some(2));
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
}
