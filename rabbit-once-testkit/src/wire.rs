//! The AMQP 0-9-1 wire as the testkit speaks it, shared by the hostile fake broker
//! ([`crate::hostile`]) and the raw client ([`crate::raw_client`]): frames, short and long
//! strings, and messages and field tables described byte by byte ([`RawDelivery`],
//! [`TableBytes`], [`FieldBytes`]).
//!
//! Everything is encoded here byte by byte on purpose: the testkit does not depend on
//! rabbit-once, so a bug in the client's codec cannot hide itself by being shared with the
//! testkit's.

use std::io;

pub(crate) const METHOD: u8 = 1;
pub(crate) const HEADER: u8 = 2;
pub(crate) const BODY: u8 = 3;
pub(crate) const HEARTBEAT: u8 = 8;
pub(crate) const FRAME_END: u8 = 0xCE;
/// Type (1) + channel (2) + size (4) + frame-end (1).
pub(crate) const FRAME_OVERHEAD: usize = 8;

#[derive(Debug)]
pub(crate) struct Frame {
    pub(crate) kind: u8,
    pub(crate) channel: u16,
    pub(crate) payload: Vec<u8>,
}

impl Frame {
    pub(crate) fn ids(&self) -> Option<(u16, u16)> {
        (self.kind == METHOD && self.payload.len() >= 4).then(|| {
            (
                u16::from_be_bytes([self.payload[0], self.payload[1]]),
                u16::from_be_bytes([self.payload[2], self.payload[3]]),
            )
        })
    }

    /// The method's arguments (after class and method ids).
    pub(crate) fn args(&self) -> &[u8] {
        self.payload.get(4..).unwrap_or(&[])
    }
}

// ---------------------------------------------------------------------------------------------
// Frames and primitive types.

/// Splits one whole frame off the front of `buf`. A frame larger than `max` (payload) or one
/// that does not end in 0xCE is an error: a peer that sends one cannot be followed any more.
pub(crate) fn split_frame(buf: &mut Vec<u8>, max: u32) -> io::Result<Option<Frame>> {
    if buf.len() < 7 {
        return Ok(None);
    }
    let size = u32::from_be_bytes([buf[3], buf[4], buf[5], buf[6]]) as usize;
    if size > max as usize {
        return Err(io::Error::other(format!("a frame of {size} bytes")));
    }
    let total = size + FRAME_OVERHEAD;
    if buf.len() < total {
        return Ok(None);
    }
    if buf[total - 1] != FRAME_END {
        return Err(io::Error::other("a frame does not end with 0xCE"));
    }
    let f = Frame {
        kind: buf[0],
        channel: u16::from_be_bytes([buf[1], buf[2]]),
        payload: buf[7..total - 1].to_vec(),
    };
    buf.drain(..total);
    Ok(Some(f))
}

pub(crate) fn frame(kind: u8, channel: u16, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(payload.len() + FRAME_OVERHEAD);
    out.push(kind);
    out.extend_from_slice(&channel.to_be_bytes());
    out.extend_from_slice(&(payload.len() as u32).to_be_bytes());
    out.extend_from_slice(payload);
    out.push(FRAME_END);
    out
}

pub(crate) fn method_frame(channel: u16, class: u16, method: u16, args: &[u8]) -> Vec<u8> {
    let mut payload = Vec::with_capacity(4 + args.len());
    payload.extend_from_slice(&class.to_be_bytes());
    payload.extend_from_slice(&method.to_be_bytes());
    payload.extend_from_slice(args);
    frame(METHOD, channel, &payload)
}

/// A short string: length octet, then the bytes as they are (UTF-8 or not).
pub(crate) fn short(s: &[u8]) -> Vec<u8> {
    let len = u8::try_from(s.len()).expect("a short string holds at most 255 bytes");
    let mut out = vec![len];
    out.extend_from_slice(s);
    out
}

/// A long string: u32 length, then the bytes.
pub(crate) fn long(s: &[u8]) -> Vec<u8> {
    let mut out = (s.len() as u32).to_be_bytes().to_vec();
    out.extend_from_slice(s);
    out
}

/// The short string at `at` in `args`.
pub(crate) fn read_short(args: &[u8], at: usize) -> Option<Vec<u8>> {
    let len = *args.get(at)? as usize;
    args.get(at + 1..at + 1 + len).map(<[u8]>::to_vec)
}

/// The `message_id` property of a content header payload (class, weight, body size, property
/// flags, properties): `None` if the flags do not carry one or the header is cut short. Only
/// the properties before it are read — content_type, content_encoding (short strings),
/// headers (skipped by its length prefix), delivery_mode, priority (octets), correlation_id,
/// reply_to, expiration (short strings) — so its headers may be anything.
pub(crate) fn content_message_id(header: &[u8]) -> Option<Vec<u8>> {
    let flags = u16::from_be_bytes(header.get(12..14)?.try_into().ok()?);
    if flags & (1 << 7) == 0 {
        return None;
    }
    let mut at = 14;
    for bit in (8..=15).rev() {
        if flags & (1 << bit) == 0 {
            continue;
        }
        at += match bit {
            13 => 4 + u32::from_be_bytes(header.get(at..at + 4)?.try_into().ok()?) as usize,
            12 | 11 => 1,
            _ => 1 + *header.get(at)? as usize,
        };
    }
    read_short(header, at)
}

// ---------------------------------------------------------------------------------------------
// Deliveries and field tables, described byte by byte.

/// One delivery as bytes: every short string is raw bytes (so non-UTF-8 can be sent), the
/// headers are a pre-encoded field table (so any nesting or type can be sent), and the body
/// size the content header announces may differ from the body actually sent.
#[derive(Debug, Clone, Default)]
pub struct RawDelivery {
    pub(crate) delivery_tag: Option<u64>,
    pub(crate) redelivered: bool,
    pub(crate) exchange: Vec<u8>,
    pub(crate) routing_key: Vec<u8>,
    pub(crate) content_type: Option<Vec<u8>>,
    pub(crate) message_id: Option<Vec<u8>>,
    pub(crate) kind: Option<Vec<u8>>,
    pub(crate) app_id: Option<Vec<u8>>,
    pub(crate) headers: Option<Vec<u8>>,
    pub(crate) delivery_mode: Option<u8>,
    pub(crate) body: Vec<u8>,
    pub(crate) announced_size: Option<u64>,
}

impl RawDelivery {
    /// A delivery of `body` with no properties, routing key "hostile", the next delivery tag.
    pub fn new(body: impl Into<Vec<u8>>) -> Self {
        RawDelivery {
            routing_key: b"hostile".to_vec(),
            body: body.into(),
            ..Default::default()
        }
    }

    /// A fixed delivery tag (by default tags count from 1 on each connection).
    pub fn delivery_tag(mut self, tag: u64) -> Self {
        self.delivery_tag = Some(tag);
        self
    }

    /// The `redelivered` flag of `basic.deliver` (false by default).
    pub fn redelivered(mut self, yes: bool) -> Self {
        self.redelivered = yes;
        self
    }

    /// The exchange name as raw bytes (any bytes, UTF-8 or not).
    pub fn exchange(mut self, b: impl AsRef<[u8]>) -> Self {
        self.exchange = b.as_ref().to_vec();
        self
    }

    /// The routing key as raw bytes (any bytes, UTF-8 or not).
    pub fn routing_key(mut self, b: impl AsRef<[u8]>) -> Self {
        self.routing_key = b.as_ref().to_vec();
        self
    }

    /// The `content_type` property as raw bytes.
    pub fn content_type(mut self, b: impl AsRef<[u8]>) -> Self {
        self.content_type = Some(b.as_ref().to_vec());
        self
    }

    /// The `message_id` property as raw bytes (any bytes, UTF-8 or not).
    pub fn message_id(mut self, b: impl AsRef<[u8]>) -> Self {
        self.message_id = Some(b.as_ref().to_vec());
        self
    }

    /// The `type` property.
    pub fn kind(mut self, b: impl AsRef<[u8]>) -> Self {
        self.kind = Some(b.as_ref().to_vec());
        self
    }

    /// The `app_id` property as raw bytes.
    pub fn app_id(mut self, b: impl AsRef<[u8]>) -> Self {
        self.app_id = Some(b.as_ref().to_vec());
        self
    }

    /// Headers from a table built with [`TableBytes`].
    pub fn headers(self, t: &TableBytes) -> Self {
        self.raw_headers(t.encode())
    }

    /// Headers as raw bytes, length prefix included: sent as they are, right or wrong.
    pub fn raw_headers(mut self, bytes: impl Into<Vec<u8>>) -> Self {
        self.headers = Some(bytes.into());
        self
    }

    /// `delivery_mode`: 1 transient, 2 persistent (any octet is sent as it is).
    pub fn delivery_mode(mut self, mode: u8) -> Self {
        self.delivery_mode = Some(mode);
        self
    }

    /// The body size the content header announces (by default the body's real length).
    pub fn announced_size(mut self, n: u64) -> Self {
        self.announced_size = Some(n);
        self
    }

    /// The content header payload: class 60, weight 0, body size, property flags, properties
    /// in flag order.
    pub(crate) fn content_header(&self) -> Vec<u8> {
        let mut out = Vec::new();
        out.extend_from_slice(&60u16.to_be_bytes());
        out.extend_from_slice(&0u16.to_be_bytes());
        let size = self.announced_size.unwrap_or(self.body.len() as u64);
        out.extend_from_slice(&size.to_be_bytes());
        let mut flags = 0u16;
        let mut props = Vec::new();
        if let Some(v) = &self.content_type {
            flags |= 1 << 15;
            props.extend_from_slice(&short(v));
        }
        if let Some(h) = &self.headers {
            flags |= 1 << 13;
            props.extend_from_slice(h);
        }
        if let Some(m) = self.delivery_mode {
            flags |= 1 << 12;
            props.push(m);
        }
        if let Some(v) = &self.message_id {
            flags |= 1 << 7;
            props.extend_from_slice(&short(v));
        }
        if let Some(v) = &self.kind {
            flags |= 1 << 5;
            props.extend_from_slice(&short(v));
        }
        if let Some(v) = &self.app_id {
            flags |= 1 << 3;
            props.extend_from_slice(&short(v));
        }
        out.extend_from_slice(&flags.to_be_bytes());
        out.extend_from_slice(&props);
        out
    }
}

/// One encoded field value: its type tag and payload (RabbitMQ's tags).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldBytes(Vec<u8>);

impl FieldBytes {
    /// Any tag with any payload, e.g. an unknown tag.
    pub fn raw(tag: u8, payload: &[u8]) -> Self {
        let mut v = vec![tag];
        v.extend_from_slice(payload);
        FieldBytes(v)
    }

    /// `t`
    pub fn bool(v: bool) -> Self {
        Self::raw(b't', &[u8::from(v)])
    }

    /// `b`
    pub fn i8(v: i8) -> Self {
        Self::raw(b'b', &v.to_be_bytes())
    }

    /// `B`
    pub fn u8(v: u8) -> Self {
        Self::raw(b'B', &[v])
    }

    /// `s`
    pub fn i16(v: i16) -> Self {
        Self::raw(b's', &v.to_be_bytes())
    }

    /// `u`
    pub fn u16(v: u16) -> Self {
        Self::raw(b'u', &v.to_be_bytes())
    }

    /// `I`
    pub fn i32(v: i32) -> Self {
        Self::raw(b'I', &v.to_be_bytes())
    }

    /// `i` (unsigned, as RabbitMQ reads it)
    pub fn u32(v: u32) -> Self {
        Self::raw(b'i', &v.to_be_bytes())
    }

    /// `l`
    pub fn i64(v: i64) -> Self {
        Self::raw(b'l', &v.to_be_bytes())
    }

    /// `f`
    pub fn f32(v: f32) -> Self {
        Self::raw(b'f', &v.to_be_bytes())
    }

    /// `d`
    pub fn f64(v: f64) -> Self {
        Self::raw(b'd', &v.to_be_bytes())
    }

    /// `D`: scale, then the unscaled value.
    pub fn decimal(scale: u8, v: u32) -> Self {
        let mut p = vec![scale];
        p.extend_from_slice(&v.to_be_bytes());
        Self::raw(b'D', &p)
    }

    /// `S`
    pub fn long_string(v: impl AsRef<[u8]>) -> Self {
        Self::raw(b'S', &long(v.as_ref()))
    }

    /// `T`: seconds since the Unix epoch.
    pub fn timestamp(v: u64) -> Self {
        Self::raw(b'T', &v.to_be_bytes())
    }

    /// `F`
    pub fn table(t: &TableBytes) -> Self {
        Self::raw(b'F', &t.encode())
    }

    /// `A`
    pub fn array(items: &[FieldBytes]) -> Self {
        let body: Vec<u8> = items.iter().flat_map(|i| i.0.iter().copied()).collect();
        Self::raw(b'A', &long(&body))
    }

    /// `V`
    pub fn void() -> Self {
        Self::raw(b'V', &[])
    }

    /// `x`
    pub fn byte_array(v: impl AsRef<[u8]>) -> Self {
        Self::raw(b'x', &long(v.as_ref()))
    }

    /// A table holding a table holding … `depth` tables in all (each holds the next under key
    /// "n"; the innermost is empty). Written front to back in one pass: the lengths are known
    /// (each level adds 7 bytes), so 12,000 levels cost 84 KB and no quadratic copying.
    pub fn nested_tables(depth: usize) -> Self {
        let mut v = Vec::with_capacity(depth * 7);
        for level in (1..=depth).rev() {
            v.push(b'F');
            v.extend_from_slice(&(7 * (level as u32 - 1)).to_be_bytes());
            if level > 1 {
                v.extend_from_slice(&[1, b'n']);
            }
        }
        FieldBytes(v)
    }

    /// An array holding an array holding … `depth` arrays in all (the innermost is empty).
    pub fn nested_arrays(depth: usize) -> Self {
        let mut v = Vec::with_capacity(depth * 5);
        for level in (1..=depth).rev() {
            v.push(b'A');
            v.extend_from_slice(&(5 * (level as u32 - 1)).to_be_bytes());
        }
        FieldBytes(v)
    }

    /// The encoded value: its type tag, then its bytes.
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }
}

/// A field table as bytes: keys are raw bytes (so a key may be non-UTF-8), values are
/// [`FieldBytes`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TableBytes {
    entries: Vec<u8>,
}

impl TableBytes {
    /// An empty table.
    pub fn new() -> Self {
        Self::default()
    }

    /// Appends an entry (no check for duplicate keys: a hostile table may repeat one).
    pub fn entry(mut self, key: impl AsRef<[u8]>, value: FieldBytes) -> Self {
        self.entries.extend_from_slice(&short(key.as_ref()));
        self.entries.extend_from_slice(&value.0);
        self
    }

    /// The table as it goes on the wire: u32 length, then the entries.
    pub fn encode(&self) -> Vec<u8> {
        long(&self.entries)
    }

    /// One entry of every field type, keyed by type name: `bool` true, `i8` -3, `u8` 200,
    /// `i16` -300, `u16` 60000, `i32` -70000, `u32` 4000000000, `i64` -5000000000, `f32` 1.5,
    /// `f64` -2.25, `decimal` (2, 12345), `string` "héllo", `timestamp` 1700000000, `table`
    /// {`inner`: i32 7}, `array` [i32 1, "x"], `void`, `bytes` [0, 255].
    pub fn every_type() -> Self {
        TableBytes::new()
            .entry("bool", FieldBytes::bool(true))
            .entry("i8", FieldBytes::i8(-3))
            .entry("u8", FieldBytes::u8(200))
            .entry("i16", FieldBytes::i16(-300))
            .entry("u16", FieldBytes::u16(60000))
            .entry("i32", FieldBytes::i32(-70000))
            .entry("u32", FieldBytes::u32(4_000_000_000))
            .entry("i64", FieldBytes::i64(-5_000_000_000))
            .entry("f32", FieldBytes::f32(1.5))
            .entry("f64", FieldBytes::f64(-2.25))
            .entry("decimal", FieldBytes::decimal(2, 12345))
            .entry("string", FieldBytes::long_string("héllo"))
            .entry("timestamp", FieldBytes::timestamp(1_700_000_000))
            .entry(
                "table",
                FieldBytes::table(&TableBytes::new().entry("inner", FieldBytes::i32(7))),
            )
            .entry(
                "array",
                FieldBytes::array(&[FieldBytes::i32(1), FieldBytes::long_string("x")]),
            )
            .entry("void", FieldBytes::void())
            .entry("bytes", FieldBytes::byte_array([0, 255]))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Nested values written in one pass must equal the naive inside-out construction.
    #[test]
    fn nesting_matches_the_naive_encoding() {
        let mut table = FieldBytes::table(&TableBytes::new());
        let mut array = FieldBytes::array(&[]);
        for depth in 1..=20 {
            assert_eq!(
                FieldBytes::nested_tables(depth),
                table,
                "tables, depth {depth}"
            );
            assert_eq!(
                FieldBytes::nested_arrays(depth),
                array,
                "arrays, depth {depth}"
            );
            table = FieldBytes::table(&TableBytes::new().entry("n", table));
            array = FieldBytes::array(&[array]);
        }
    }

    #[test]
    fn content_header_puts_properties_in_flag_order() {
        let d = RawDelivery::new("body")
            .message_id([0xff])
            .app_id("a")
            .content_type("c")
            .announced_size(99);
        let h = d.content_header();
        assert_eq!(&h[4..12], &99u64.to_be_bytes());
        let flags = u16::from_be_bytes([h[12], h[13]]);
        assert_eq!(flags, (1 << 15) | (1 << 7) | (1 << 3));
        assert_eq!(&h[14..], &[1, b'c', 1, 0xff, 1, b'a']);
    }

    #[test]
    fn message_id_is_found_behind_every_property_before_it() {
        let plain = RawDelivery::new("b").message_id(b"poison");
        assert_eq!(
            content_message_id(&plain.content_header()),
            Some(b"poison".to_vec())
        );
        let deep = RawDelivery::new("b")
            .content_type("text/plain")
            .headers(&TableBytes::every_type().entry("deep", FieldBytes::nested_tables(300)))
            .delivery_mode(2)
            .message_id([0xff, 0xfe])
            .kind("k")
            .app_id("a");
        assert_eq!(
            content_message_id(&deep.content_header()),
            Some(vec![0xff, 0xfe])
        );
        let none = RawDelivery::new("b").content_type("c").app_id("a");
        assert_eq!(content_message_id(&none.content_header()), None);
        let cut = deep.content_header();
        assert_eq!(content_message_id(&cut[..40]), None, "cut short");
    }
}
