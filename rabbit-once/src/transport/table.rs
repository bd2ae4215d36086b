//! Field tables: message headers and queue/exchange arguments, with RabbitMQ's type tags.

use super::wire::{DecodeResult, ProtocolError, Reader, put_long_str, put_short_str};
use bytes::{BufMut, BytesMut};
use std::fmt;

/// A value in a [`FieldTable`], with the type tags RabbitMQ uses.
#[derive(Clone, PartialEq)]
#[non_exhaustive]
pub enum FieldValue {
    /// `t`: a boolean.
    Bool(bool),
    /// `b`: a signed 8-bit integer.
    I8(i8),
    /// `B`: an unsigned 8-bit integer.
    U8(u8),
    /// `s`: a signed 16-bit integer.
    I16(i16),
    /// `u`: an unsigned 16-bit integer.
    U16(u16),
    /// `I`: a signed 32-bit integer.
    I32(i32),
    /// `i`: an unsigned 32-bit integer.
    U32(u32),
    /// `l`: a signed 64-bit integer.
    I64(i64),
    /// `f`: a 32-bit float.
    F32(f32),
    /// `d`: a 64-bit float.
    F64(f64),
    /// `D`: scale and unscaled value.
    Decimal(u8, u32),
    /// `S`: a long string: usually UTF-8 text, but AMQP allows any bytes.
    LongString(Vec<u8>),
    /// `T`: seconds since the Unix epoch.
    Timestamp(u64),
    /// `F`: a nested table.
    Table(FieldTable),
    /// `A`: an array of values of any type.
    Array(Vec<FieldValue>),
    /// `V`: no value.
    Void,
    /// `x`: raw bytes.
    ByteArray(Vec<u8>),
}

impl FieldValue {
    /// The value as text, for long strings that are UTF-8.
    pub fn as_str(&self) -> Option<&str> {
        match self {
            FieldValue::LongString(b) => std::str::from_utf8(b).ok(),
            _ => None,
        }
    }

    /// The value as a signed integer, for any integer type.
    pub fn as_i64(&self) -> Option<i64> {
        Some(match *self {
            FieldValue::I8(v) => v.into(),
            FieldValue::U8(v) => v.into(),
            FieldValue::I16(v) => v.into(),
            FieldValue::U16(v) => v.into(),
            FieldValue::I32(v) => v.into(),
            FieldValue::U32(v) => v.into(),
            FieldValue::I64(v) => v,
            FieldValue::Timestamp(v) => i64::try_from(v).ok()?,
            _ => return None,
        })
    }
}

impl fmt::Debug for FieldValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FieldValue::Bool(v) => write!(f, "{v}"),
            FieldValue::I8(v) => write!(f, "{v}i8"),
            FieldValue::U8(v) => write!(f, "{v}u8"),
            FieldValue::I16(v) => write!(f, "{v}i16"),
            FieldValue::U16(v) => write!(f, "{v}u16"),
            FieldValue::I32(v) => write!(f, "{v}i32"),
            FieldValue::U32(v) => write!(f, "{v}u32"),
            FieldValue::I64(v) => write!(f, "{v}"),
            FieldValue::F32(v) => write!(f, "{v}f32"),
            FieldValue::F64(v) => write!(f, "{v}f64"),
            FieldValue::Decimal(s, v) => write!(f, "decimal({v}e-{s})"),
            FieldValue::LongString(b) => match std::str::from_utf8(b) {
                Ok(s) => write!(f, "{s:?}"),
                Err(_) => write!(f, "bytes[{}]", b.len()),
            },
            FieldValue::Timestamp(v) => write!(f, "timestamp({v})"),
            FieldValue::Table(t) => t.fmt(f),
            FieldValue::Array(a) => f.debug_list().entries(a).finish(),
            FieldValue::Void => write!(f, "void"),
            FieldValue::ByteArray(b) => write!(f, "bytes[{}]", b.len()),
        }
    }
}

macro_rules! from_value {
    ($($t:ty => $v:ident),*) => {$(
        impl From<$t> for FieldValue {
            fn from(v: $t) -> Self { FieldValue::$v(v) }
        }
    )*};
}
from_value!(bool => Bool, i8 => I8, u8 => U8, i16 => I16, u16 => U16, i32 => I32, u32 => U32,
    i64 => I64, f32 => F32, f64 => F64, FieldTable => Table, Vec<FieldValue> => Array);

impl From<&str> for FieldValue {
    fn from(v: &str) -> Self {
        FieldValue::LongString(v.as_bytes().to_vec())
    }
}

impl From<String> for FieldValue {
    fn from(v: String) -> Self {
        FieldValue::LongString(v.into_bytes())
    }
}

/// An AMQP field table (headers, arguments). Keeps insertion order; keys are unique.
#[derive(Clone, Default, PartialEq)]
pub struct FieldTable(Vec<(String, FieldValue)>);

impl FieldTable {
    /// An empty table.
    pub fn new() -> Self {
        Self::default()
    }

    /// Sets `key` to `value`, replacing an earlier value for the same key.
    pub fn insert(&mut self, key: impl Into<String>, value: impl Into<FieldValue>) {
        let key = key.into();
        let value = value.into();
        match self.0.iter_mut().find(|(k, _)| *k == key) {
            Some(slot) => slot.1 = value,
            None => self.0.push((key, value)),
        }
    }

    /// Builder form of [`insert`](Self::insert).
    pub fn with(mut self, key: impl Into<String>, value: impl Into<FieldValue>) -> Self {
        self.insert(key, value);
        self
    }

    /// The value for `key`, if the table has one.
    pub fn get(&self, key: &str) -> Option<&FieldValue> {
        self.0.iter().find(|(k, _)| k == key).map(|(_, v)| v)
    }

    /// Takes `key` out of the table; returns its value, if it had one.
    pub fn remove(&mut self, key: &str) -> Option<FieldValue> {
        let i = self.0.iter().position(|(k, _)| k == key)?;
        Some(self.0.remove(i).1)
    }

    /// The entries, in insertion order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &FieldValue)> {
        self.0.iter().map(|(k, v)| (k.as_str(), v))
    }

    /// The number of entries.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether the table has no entries.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Checks what the encoder cannot, at every level (tables inside arrays too): keys must
    /// fit a short string, and nesting must stay within [`MAX_DEPTH`] (deeper would be
    /// refused by our own decoder, and by consumers that guard their stack).
    pub(crate) fn validate(&self) -> Result<(), String> {
        self.validate_at(1)
    }

    fn validate_at(&self, depth: usize) -> Result<(), String> {
        if depth > MAX_DEPTH {
            return Err(format!("headers nested deeper than {MAX_DEPTH} levels"));
        }
        for (k, v) in &self.0 {
            if super::wire::short_str_wire(k).len() > 255 {
                let shown: String = k.chars().take(40).collect();
                return Err(format!(
                    "header key {shown:?}… is {} bytes long; AMQP allows at most 255",
                    k.len()
                ));
            }
            validate_value(v, depth)?;
        }
        Ok(())
    }

    /// How many bytes [`encode`](Self::encode) writes (length prefix included), without
    /// writing them. Only meaningful for a table that passed [`validate`](Self::validate).
    pub(crate) fn wire_size(&self) -> usize {
        4 + self
            .0
            .iter()
            .map(|(k, v)| 1 + super::wire::short_str_wire(k).len() + value_size(v))
            .sum::<usize>()
    }

    pub(crate) fn encode(&self, out: &mut BytesMut) {
        let at = out.len();
        out.put_u32(0);
        for (k, v) in &self.0 {
            put_short_str(out, k);
            encode_value(v, out);
        }
        let len = (out.len() - at - 4) as u32;
        out[at..at + 4].copy_from_slice(&len.to_be_bytes());
    }

    pub(crate) fn decode(r: &mut Reader<'_>) -> DecodeResult<Self> {
        Self::decode_at(r, 1)
    }

    fn decode_at(r: &mut Reader<'_>, depth: usize) -> DecodeResult<Self> {
        if depth > MAX_DEPTH {
            return Err(too_deep());
        }
        let body = r.long_str_bytes()?;
        let mut r = Reader::new(body);
        let mut entries = Vec::new();
        while r.remaining() > 0 {
            let k = r.short_str()?;
            let v = decode_value(&mut r, depth)?;
            entries.push((k, v));
        }
        Ok(Self(entries))
    }
}

/// What the decoder checks (`transport::fuzzing`) need to see in a decoded table: how deep it
/// nests (1 for a table of scalars, counted as the decoder counts) and how many heap bytes it
/// holds (capacities, so what was really allocated).
#[cfg(any(test, feature = "fuzzing"))]
impl FieldTable {
    pub(crate) fn depth_and_heap(&self) -> (usize, usize) {
        self.stats_at(1)
    }

    fn stats_at(&self, depth: usize) -> (usize, usize) {
        let mut deepest = depth;
        let mut heap = self.0.capacity() * std::mem::size_of::<(String, FieldValue)>();
        for (k, v) in &self.0 {
            let (d, h) = value_stats(v, depth);
            deepest = deepest.max(d);
            heap += k.capacity() + h;
        }
        (deepest, heap)
    }
}

#[cfg(any(test, feature = "fuzzing"))]
fn value_stats(v: &FieldValue, depth: usize) -> (usize, usize) {
    match v {
        FieldValue::Table(t) => t.stats_at(depth + 1),
        FieldValue::Array(items) => {
            let mut deepest = depth + 1;
            let mut heap = items.capacity() * std::mem::size_of::<FieldValue>();
            for v in items {
                let (d, h) = value_stats(v, depth + 1);
                deepest = deepest.max(d);
                heap += h;
            }
            (deepest, heap)
        }
        FieldValue::LongString(b) | FieldValue::ByteArray(b) => (depth, b.capacity()),
        _ => (depth, 0),
    }
}

impl fmt::Debug for FieldTable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map()
            .entries(self.0.iter().map(|(k, v)| (k, v)))
            .finish()
    }
}

impl<K: Into<String>, V: Into<FieldValue>> FromIterator<(K, V)> for FieldTable {
    fn from_iter<I: IntoIterator<Item = (K, V)>>(iter: I) -> Self {
        let mut t = FieldTable::new();
        for (k, v) in iter {
            t.insert(k, v);
        }
        t
    }
}

/// How deep tables and arrays may nest, in a message's headers or in arguments. Decoding
/// recurses once per level, so without a bound a small message nested thousands of levels deep
/// would overflow the stack; no real header comes near this.
pub(crate) const MAX_DEPTH: usize = 128;

fn too_deep() -> ProtocolError {
    ProtocolError::new(format!(
        "field table or array nested deeper than {MAX_DEPTH} levels"
    ))
}

fn validate_value(v: &FieldValue, depth: usize) -> Result<(), String> {
    match v {
        FieldValue::Table(t) => t.validate_at(depth + 1),
        FieldValue::Array(items) => {
            if depth + 1 > MAX_DEPTH {
                return Err(format!("headers nested deeper than {MAX_DEPTH} levels"));
            }
            items.iter().try_for_each(|v| validate_value(v, depth + 1))
        }
        FieldValue::LongString(b) | FieldValue::ByteArray(b) if b.len() > u32::MAX as usize => {
            Err(format!("a header value of {} bytes", b.len()))
        }
        _ => Ok(()),
    }
}

/// Encoded size of a value, type tag included.
fn value_size(v: &FieldValue) -> usize {
    1 + match v {
        FieldValue::Bool(_) | FieldValue::I8(_) | FieldValue::U8(_) => 1,
        FieldValue::I16(_) | FieldValue::U16(_) => 2,
        FieldValue::I32(_) | FieldValue::U32(_) | FieldValue::F32(_) => 4,
        FieldValue::I64(_) | FieldValue::F64(_) | FieldValue::Timestamp(_) => 8,
        FieldValue::Decimal(..) => 5,
        FieldValue::LongString(b) | FieldValue::ByteArray(b) => 4 + b.len(),
        FieldValue::Table(t) => t.wire_size(),
        FieldValue::Array(a) => 4 + a.iter().map(value_size).sum::<usize>(),
        FieldValue::Void => 0,
    }
}

fn encode_value(v: &FieldValue, out: &mut BytesMut) {
    match v {
        FieldValue::Bool(b) => {
            out.put_u8(b't');
            out.put_u8(u8::from(*b));
        }
        FieldValue::I8(x) => {
            out.put_u8(b'b');
            out.put_i8(*x);
        }
        FieldValue::U8(x) => {
            out.put_u8(b'B');
            out.put_u8(*x);
        }
        FieldValue::I16(x) => {
            out.put_u8(b's');
            out.put_i16(*x);
        }
        FieldValue::U16(x) => {
            out.put_u8(b'u');
            out.put_u16(*x);
        }
        FieldValue::I32(x) => {
            out.put_u8(b'I');
            out.put_i32(*x);
        }
        FieldValue::U32(x) => {
            out.put_u8(b'i');
            out.put_u32(*x);
        }
        FieldValue::I64(x) => {
            out.put_u8(b'l');
            out.put_i64(*x);
        }
        FieldValue::F32(x) => {
            out.put_u8(b'f');
            out.put_f32(*x);
        }
        FieldValue::F64(x) => {
            out.put_u8(b'd');
            out.put_f64(*x);
        }
        FieldValue::Decimal(s, x) => {
            out.put_u8(b'D');
            out.put_u8(*s);
            out.put_u32(*x);
        }
        FieldValue::LongString(s) => {
            out.put_u8(b'S');
            put_long_str(out, s);
        }
        FieldValue::Timestamp(t) => {
            out.put_u8(b'T');
            out.put_u64(*t);
        }
        FieldValue::Table(t) => {
            out.put_u8(b'F');
            t.encode(out);
        }
        FieldValue::Array(a) => {
            out.put_u8(b'A');
            let at = out.len();
            out.put_u32(0);
            for v in a {
                encode_value(v, out);
            }
            let len = (out.len() - at - 4) as u32;
            out[at..at + 4].copy_from_slice(&len.to_be_bytes());
        }
        FieldValue::Void => out.put_u8(b'V'),
        FieldValue::ByteArray(b) => {
            out.put_u8(b'x');
            put_long_str(out, b);
        }
    }
}

fn decode_value(r: &mut Reader<'_>, depth: usize) -> DecodeResult<FieldValue> {
    let tag = r.u8()?;
    Ok(match tag {
        b't' => FieldValue::Bool(r.u8()? != 0),
        b'b' => FieldValue::I8(r.u8()? as i8),
        b'B' => FieldValue::U8(r.u8()?),
        b's' => FieldValue::I16(r.u16()? as i16),
        b'u' => FieldValue::U16(r.u16()?),
        b'I' => FieldValue::I32(r.u32()? as i32),
        b'i' => FieldValue::U32(r.u32()?),
        b'l' => FieldValue::I64(r.u64()? as i64),
        b'f' => FieldValue::F32(f32::from_bits(r.u32()?)),
        b'd' => FieldValue::F64(f64::from_bits(r.u64()?)),
        b'D' => FieldValue::Decimal(r.u8()?, r.u32()?),
        b'S' => FieldValue::LongString(r.long_str_bytes()?.to_vec()),
        b'T' => FieldValue::Timestamp(r.u64()?),
        b'F' => FieldValue::Table(FieldTable::decode_at(r, depth + 1)?),
        b'A' => {
            if depth + 1 > MAX_DEPTH {
                return Err(too_deep());
            }
            let body = r.long_str_bytes()?;
            let mut inner = Reader::new(body);
            let mut items = Vec::new();
            while inner.remaining() > 0 {
                items.push(decode_value(&mut inner, depth + 1)?);
            }
            FieldValue::Array(items)
        }
        b'V' => FieldValue::Void,
        b'x' => FieldValue::ByteArray(r.long_str_bytes()?.to_vec()),
        other => {
            return Err(ProtocolError::new(format!(
                "unknown field type tag {:?}",
                other as char
            )));
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_type_round_trips() {
        let nested = FieldTable::new().with("inner", 7i32);
        let t = FieldTable::new()
            .with("bool", true)
            .with("i8", -3i8)
            .with("u8", 200u8)
            .with("i16", -300i16)
            .with("u16", 60000u16)
            .with("i32", -70000i32)
            .with("u32", 4_000_000_000u32)
            .with("i64", -5_000_000_000i64)
            .with("f32", 1.5f32)
            .with("f64", -2.25f64)
            .with("dec", FieldValue::Decimal(2, 12345))
            .with("str", "héllo")
            .with("ts", FieldValue::Timestamp(1_700_000_000))
            .with("table", nested)
            .with("array", vec![FieldValue::from(1i32), FieldValue::from("x")])
            .with("void", FieldValue::Void)
            .with("bytes", FieldValue::ByteArray(vec![0, 255]));
        let mut out = BytesMut::new();
        t.encode(&mut out);
        assert_eq!(t.wire_size(), out.len());
        let mut r = Reader::new(&out);
        let back = FieldTable::decode(&mut r).unwrap();
        assert_eq!(back, t);
        assert_eq!(r.remaining(), 0);
        assert_eq!(back.get("str").unwrap().as_str(), Some("héllo"));
        assert_eq!(back.get("u32").unwrap().as_i64(), Some(4_000_000_000));
    }

    #[test]
    fn insert_replaces() {
        let mut t = FieldTable::new();
        t.insert("a", 1i32);
        t.insert("a", 2i32);
        assert_eq!(t.len(), 1);
        assert_eq!(t.get("a"), Some(&FieldValue::I32(2)));
        assert_eq!(t.remove("a"), Some(FieldValue::I32(2)));
        assert!(t.is_empty());
    }

    /// `levels` tables or arrays inside each other, innermost holding an integer.
    fn nested(levels: usize, arrays: bool) -> FieldTable {
        let mut v = FieldValue::I32(1);
        for _ in 1..levels {
            v = if arrays {
                FieldValue::Array(vec![v])
            } else {
                FieldValue::Table(FieldTable::new().with("k", v))
            };
        }
        FieldTable::new().with("k", v)
    }

    #[test]
    fn nesting_is_bounded_both_ways() {
        for arrays in [false, true] {
            let ok = nested(MAX_DEPTH, arrays);
            assert!(ok.validate().is_ok());
            let mut out = BytesMut::new();
            ok.encode(&mut out);
            assert_eq!(FieldTable::decode(&mut Reader::new(&out)).unwrap(), ok);

            let deep = nested(MAX_DEPTH + 1, arrays);
            assert!(deep.validate().unwrap_err().contains("nested"));
            let mut out = BytesMut::new();
            deep.encode(&mut out);
            let err = FieldTable::decode(&mut Reader::new(&out)).unwrap_err();
            assert!(err.0.contains("nested"), "{err}");
        }
    }

    #[test]
    fn twelve_thousand_levels_are_refused_without_overflowing_the_stack() {
        // Built by hand: an encoder recursing 12,000 deep would itself be the problem.
        let levels = 12_000;
        let mut v: Vec<u8> = vec![b'I', 0, 0, 0, 1];
        for _ in 0..levels {
            let mut outer = vec![b'A'];
            outer.extend_from_slice(&(v.len() as u32).to_be_bytes());
            outer.extend_from_slice(&v);
            v = outer;
        }
        let mut table = vec![1, b'k'];
        table.extend_from_slice(&v);
        let mut payload = (table.len() as u32).to_be_bytes().to_vec();
        payload.extend_from_slice(&table);
        let err = FieldTable::decode(&mut Reader::new(&payload)).unwrap_err();
        assert!(err.0.contains("nested"));
    }

    #[test]
    fn keys_inside_arrays_are_checked() {
        let inner = FieldTable::new().with("k".repeat(256), 1i32);
        let t = FieldTable::new().with("a", vec![FieldValue::Table(inner)]);
        assert!(t.validate().unwrap_err().contains("256 bytes"));
    }

    #[test]
    fn unknown_tag_is_a_protocol_error() {
        let payload = [0, 0, 0, 3, 1, b'k', b'?'];
        assert!(FieldTable::decode(&mut Reader::new(&payload)).is_err());
    }
}
