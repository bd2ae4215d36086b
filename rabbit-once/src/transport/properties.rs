//! Basic content properties (the content header of a message): message id, delivery mode, headers…

use super::table::FieldTable;
use super::wire::{DecodeResult, Reader, check_short, put_short_str, short_str_wire};
use bytes::{BufMut, BytesMut};

/// AMQP basic properties of a message. `message_id` is managed by the publisher.
#[derive(Debug, Clone, Default, PartialEq)]
#[non_exhaustive]
pub struct Properties {
    /// MIME type of the body, e.g. `application/json`.
    pub content_type: Option<String>,
    /// Encoding of the body, e.g. `gzip`.
    pub content_encoding: Option<String>,
    /// Application headers.
    pub headers: Option<FieldTable>,
    /// 1 = transient, 2 = persistent.
    pub delivery_mode: Option<u8>,
    /// Higher is delivered first, on a queue declared with `x-max-priority`.
    pub priority: Option<u8>,
    /// Ties a reply to its request.
    pub correlation_id: Option<String>,
    /// The queue a reply should go to.
    pub reply_to: Option<String>,
    /// Per-message TTL in milliseconds, as a decimal string.
    pub expiration: Option<String>,
    /// The message's id: the publisher gives one (a UUIDv7) to every message without one, and
    /// it never changes, re-published or not.
    pub message_id: Option<String>,
    /// Seconds since the Unix epoch.
    pub timestamp: Option<u64>,
    /// The message type (`type` on the wire; `type` is a Rust keyword).
    pub kind: Option<String>,
    /// The publishing user; RabbitMQ refuses a value other than the connection's user.
    pub user_id: Option<String>,
    /// The publishing application.
    pub app_id: Option<String>,
    /// Deprecated in AMQP 0-9-1; carried as is.
    pub cluster_id: Option<String>,
    /// Set by the decoder when the `message_id` on the wire was not UTF-8: `message_id` then
    /// holds its lossless text view, and the octets go out again as they came.
    pub(crate) message_id_octets: bool,
}

const CONTENT_TYPE: u16 = 1 << 15;
const CONTENT_ENCODING: u16 = 1 << 14;
const HEADERS: u16 = 1 << 13;
const DELIVERY_MODE: u16 = 1 << 12;
const PRIORITY: u16 = 1 << 11;
const CORRELATION_ID: u16 = 1 << 10;
const REPLY_TO: u16 = 1 << 9;
const EXPIRATION: u16 = 1 << 8;
const MESSAGE_ID: u16 = 1 << 7;
const TIMESTAMP: u16 = 1 << 6;
const TYPE: u16 = 1 << 5;
const USER_ID: u16 = 1 << 4;
const APP_ID: u16 = 1 << 3;
const CLUSTER_ID: u16 = 1 << 2;

impl Properties {
    /// Checks everything the broker would otherwise answer by closing the channel.
    pub(crate) fn validate(&self) -> Result<(), String> {
        for (what, v) in [
            ("content_type", &self.content_type),
            ("content_encoding", &self.content_encoding),
            ("correlation_id", &self.correlation_id),
            ("reply_to", &self.reply_to),
            ("expiration", &self.expiration),
            ("message_id", &self.message_id),
            ("type", &self.kind),
            ("user_id", &self.user_id),
            ("app_id", &self.app_id),
            ("cluster_id", &self.cluster_id),
        ] {
            if let Some(v) = v {
                check_short(what, v)?;
            }
        }
        if let Some(e) = &self.expiration
            && e.parse::<u32>().is_err()
        {
            return Err(format!(
                "expiration {e:?} is not a non-negative number of milliseconds"
            ));
        }
        if let Some(m) = self.delivery_mode
            && !(1..=2).contains(&m)
        {
            return Err(format!("delivery_mode {m} (1 = transient, 2 = persistent)"));
        }
        if let Some(h) = &self.headers {
            h.validate()?;
        }
        Ok(())
    }

    /// How many bytes [`encode`](Self::encode) writes, without writing them.
    pub(crate) fn wire_size(&self) -> usize {
        let s = |v: &Option<String>| v.as_deref().map_or(0, |v| 1 + short_str_wire(v).len());
        let id = self.message_id_wire().map_or(0, |b| 1 + b.len());
        2 + s(&self.content_type)
            + s(&self.content_encoding)
            + self.headers.as_ref().map_or(0, FieldTable::wire_size)
            + self.delivery_mode.map_or(0, |_| 1)
            + self.priority.map_or(0, |_| 1)
            + s(&self.correlation_id)
            + s(&self.reply_to)
            + s(&self.expiration)
            + id
            + self.timestamp.map_or(0, |_| 8)
            + s(&self.kind)
            + s(&self.user_id)
            + s(&self.app_id)
            + s(&self.cluster_id)
    }

    pub(crate) fn encode(&self, out: &mut BytesMut) {
        let mut flags = 0u16;
        let at = out.len();
        out.put_u16(0);
        let s = |bit: u16, v: &Option<String>, out: &mut BytesMut, flags: &mut u16| {
            if let Some(v) = v {
                *flags |= bit;
                put_short_str(out, v);
            }
        };
        s(CONTENT_TYPE, &self.content_type, out, &mut flags);
        s(CONTENT_ENCODING, &self.content_encoding, out, &mut flags);
        if let Some(h) = &self.headers {
            flags |= HEADERS;
            h.encode(out);
        }
        if let Some(m) = self.delivery_mode {
            flags |= DELIVERY_MODE;
            out.put_u8(m);
        }
        if let Some(p) = self.priority {
            flags |= PRIORITY;
            out.put_u8(p);
        }
        s(CORRELATION_ID, &self.correlation_id, out, &mut flags);
        s(REPLY_TO, &self.reply_to, out, &mut flags);
        s(EXPIRATION, &self.expiration, out, &mut flags);
        if let Some(id) = self.message_id_wire() {
            flags |= MESSAGE_ID;
            out.put_u8(id.len().min(255) as u8);
            out.put_slice(&id[..id.len().min(255)]);
        }
        if let Some(t) = self.timestamp {
            flags |= TIMESTAMP;
            out.put_u64(t);
        }
        s(TYPE, &self.kind, out, &mut flags);
        s(USER_ID, &self.user_id, out, &mut flags);
        s(APP_ID, &self.app_id, out, &mut flags);
        s(CLUSTER_ID, &self.cluster_id, out, &mut flags);
        out[at..at + 2].copy_from_slice(&flags.to_be_bytes());
    }

    /// The property list as it goes on the wire (flags, then the fields set), for storing a
    /// message losslessly — headers and non-UTF-8 ids included (the outbox's rows).
    #[cfg_attr(not(feature = "dedup"), allow(dead_code))]
    pub(crate) fn to_bytes(&self) -> Vec<u8> {
        let mut out = BytesMut::with_capacity(self.wire_size());
        self.encode(&mut out);
        out.to_vec()
    }

    /// Reads back what [`to_bytes`](Self::to_bytes) wrote; refuses trailing bytes.
    #[cfg_attr(not(feature = "dedup"), allow(dead_code))]
    pub(crate) fn from_bytes(bytes: &[u8]) -> DecodeResult<Self> {
        let mut r = Reader::new(bytes);
        let p = Self::decode(&mut r)?;
        if r.remaining() != 0 {
            return Err(crate::error::ProtocolError::new(format!(
                "{} bytes after the property list",
                r.remaining()
            )));
        }
        Ok(p)
    }

    pub(crate) fn decode(r: &mut Reader<'_>) -> DecodeResult<Self> {
        let flags = r.u16()?;
        let mut p = Properties::default();
        let s = |bit: u16, r: &mut Reader<'_>| -> DecodeResult<Option<String>> {
            if flags & bit != 0 {
                r.short_str().map(Some)
            } else {
                Ok(None)
            }
        };
        p.content_type = s(CONTENT_TYPE, r)?;
        p.content_encoding = s(CONTENT_ENCODING, r)?;
        if flags & HEADERS != 0 {
            p.headers = Some(FieldTable::decode(r)?);
        }
        if flags & DELIVERY_MODE != 0 {
            p.delivery_mode = Some(r.u8()?);
        }
        if flags & PRIORITY != 0 {
            p.priority = Some(r.u8()?);
        }
        p.correlation_id = s(CORRELATION_ID, r)?;
        p.reply_to = s(REPLY_TO, r)?;
        p.expiration = s(EXPIRATION, r)?;
        if flags & MESSAGE_ID != 0 {
            // One UTF-8 check per id: it is on every delivery's path.
            let b = r.short_str_bytes()?;
            p.message_id = Some(match std::str::from_utf8(b) {
                Ok(s) => s.to_owned(),
                Err(_) => {
                    p.message_id_octets = true;
                    super::wire::escape_bytes(b)
                }
            });
        }
        if flags & TIMESTAMP != 0 {
            p.timestamp = Some(r.u64()?);
        }
        p.kind = s(TYPE, r)?;
        p.user_id = s(USER_ID, r)?;
        p.app_id = s(APP_ID, r)?;
        p.cluster_id = s(CLUSTER_ID, r)?;
        Ok(p)
    }

    /// The octets the message id goes out as: the producer's original octets for an id that
    /// came in as non-UTF-8, otherwise its text.
    pub(crate) fn message_id_wire(&self) -> Option<std::borrow::Cow<'_, [u8]>> {
        let id = self.message_id.as_deref()?;
        if self.message_id_octets
            && let Some(b) = super::wire::from_text_view(id)
        {
            return Some(b.into());
        }
        Some(short_str_wire(id))
    }

    /// Builder: sets a header.
    pub fn with_header(
        mut self,
        key: impl Into<String>,
        value: impl Into<super::table::FieldValue>,
    ) -> Self {
        self.headers
            .get_or_insert_with(FieldTable::new)
            .insert(key, value);
        self
    }

    /// A header's value, if present.
    pub fn header(&self, key: &str) -> Option<&super::table::FieldValue> {
        self.headers.as_ref()?.get(key)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn all_properties_round_trip() {
        let p = Properties {
            content_type: Some("application/json".into()),
            content_encoding: Some("gzip".into()),
            headers: Some(FieldTable::new().with("x-attempt", 2i32)),
            delivery_mode: Some(2),
            priority: Some(5),
            correlation_id: Some("c".into()),
            reply_to: Some("r".into()),
            expiration: Some("1000".into()),
            message_id: Some("0192-abc".into()),
            timestamp: Some(1_700_000_000),
            kind: Some("t".into()),
            user_id: Some("guest".into()),
            app_id: Some("app".into()),
            cluster_id: Some("cl".into()),
            message_id_octets: false,
        };
        let mut out = BytesMut::new();
        p.encode(&mut out);
        assert_eq!(p.wire_size(), out.len());
        let back = Properties::decode(&mut Reader::new(&out)).unwrap();
        assert_eq!(back, p);
    }

    #[test]
    fn a_non_utf8_message_id_goes_out_as_the_octets_it_came_as() {
        let mut wire = BytesMut::new();
        wire.put_u16(MESSAGE_ID);
        wire.put_u8(3);
        wire.put_slice(&[0xff, b'\\', 0xfe]);
        let p = Properties::decode(&mut Reader::new(&wire)).unwrap();
        assert!(p.message_id_octets);
        assert_eq!(p.message_id.as_deref(), Some("\\xff\\\\\\xfe"));
        let mut out = BytesMut::new();
        p.encode(&mut out);
        assert_eq!(&out[..], &wire[..]);
        assert_eq!(p.wire_size(), out.len());
        // The same text set by an application is its own (UTF-8) id.
        let mine = Properties {
            message_id: p.message_id.clone(),
            ..Default::default()
        };
        let mut out = BytesMut::new();
        mine.encode(&mut out);
        assert_eq!(&out[3..], p.message_id.as_deref().unwrap().as_bytes());
    }

    #[test]
    fn empty_properties_are_two_zero_bytes() {
        let mut out = BytesMut::new();
        Properties::default().encode(&mut out);
        assert_eq!(&out[..], &[0, 0]);
    }

    #[test]
    fn validation_names_the_field() {
        let p = Properties {
            expiration: Some("soon".into()),
            ..Default::default()
        };
        assert!(p.validate().unwrap_err().contains("expiration"));
        let p = Properties {
            message_id: Some("x".repeat(300)),
            ..Default::default()
        };
        assert!(p.validate().unwrap_err().contains("message_id"));
    }
}
