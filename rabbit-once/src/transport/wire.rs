//! AMQP 0-9-1 primitive types on the wire: integers, short/long strings, bits.
//!
//! Decoding reads from a borrowed slice through [`Reader`]; encoding appends to a `BytesMut`
//! in place, so publishing a message allocates nothing here.

pub(crate) use crate::error::ProtocolError;
use bytes::{BufMut, BytesMut};

pub(crate) type DecodeResult<T> = Result<T, ProtocolError>;

/// A cursor over a frame payload.
#[derive(Debug)]
pub(crate) struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    pub(crate) fn new(buf: &'a [u8]) -> Self {
        Self { buf, pos: 0 }
    }

    pub(crate) fn remaining(&self) -> usize {
        self.buf.len() - self.pos
    }

    pub(crate) fn bytes(&mut self, n: usize) -> DecodeResult<&'a [u8]> {
        if self.remaining() < n {
            return Err(ProtocolError::new(format!(
                "truncated field: wanted {n} bytes, {} left",
                self.remaining()
            )));
        }
        let s = &self.buf[self.pos..self.pos + n];
        self.pos += n;
        Ok(s)
    }

    pub(crate) fn u8(&mut self) -> DecodeResult<u8> {
        Ok(self.bytes(1)?[0])
    }

    pub(crate) fn u16(&mut self) -> DecodeResult<u16> {
        Ok(u16::from_be_bytes(
            self.bytes(2)?.try_into().expect("2 bytes"),
        ))
    }

    pub(crate) fn u32(&mut self) -> DecodeResult<u32> {
        Ok(u32::from_be_bytes(
            self.bytes(4)?.try_into().expect("4 bytes"),
        ))
    }

    pub(crate) fn u64(&mut self) -> DecodeResult<u64> {
        Ok(u64::from_be_bytes(
            self.bytes(8)?.try_into().expect("8 bytes"),
        ))
    }

    pub(crate) fn short_str_bytes(&mut self) -> DecodeResult<&'a [u8]> {
        let n = self.u8()? as usize;
        self.bytes(n)
    }

    /// A short string as text. AMQP short strings are octets and other clients send any
    /// bytes, so this never fails on content: UTF-8 comes back as it is, anything else as its
    /// lossless [`text_view`].
    pub(crate) fn short_str(&mut self) -> DecodeResult<String> {
        Ok(text_view(self.short_str_bytes()?))
    }

    pub(crate) fn long_str_bytes(&mut self) -> DecodeResult<&'a [u8]> {
        let n = self.u32()? as usize;
        self.bytes(n)
    }

    pub(crate) fn long_str(&mut self) -> DecodeResult<String> {
        let b = self.long_str_bytes()?;
        Ok(String::from_utf8_lossy(b).into_owned())
    }
}

/// Octets as text, losslessly: valid UTF-8 is returned unchanged; otherwise every byte that
/// is not part of a valid UTF-8 sequence is written `\xNN` and a backslash `\\`, so distinct
/// byte strings never share a view and [`from_text_view`] gives the bytes back. (A UTF-8
/// string that happens to read exactly like the view of some non-UTF-8 bytes is the one case
/// two inputs share a text; no peer produces that by accident.)
pub(crate) fn text_view(b: &[u8]) -> String {
    match std::str::from_utf8(b) {
        Ok(s) => s.to_owned(),
        Err(_) => escape_bytes(b),
    }
}

/// The text view of octets known not to be UTF-8 (see [`text_view`]).
pub(crate) fn escape_bytes(mut b: &[u8]) -> String {
    use std::fmt::Write as _;
    let push_valid = |out: &mut String, s: &str| {
        for c in s.chars() {
            if c == '\\' {
                out.push_str("\\\\");
            } else {
                out.push(c);
            }
        }
    };
    let mut out = String::with_capacity(b.len() * 2);
    loop {
        match std::str::from_utf8(b) {
            Ok(s) => {
                push_valid(&mut out, s);
                return out;
            }
            Err(e) => {
                let (ok, rest) = b.split_at(e.valid_up_to());
                push_valid(&mut out, std::str::from_utf8(ok).unwrap_or_default());
                let bad = e.error_len().unwrap_or(rest.len());
                for &x in &rest[..bad] {
                    let _ = write!(out, "\\x{x:02x}");
                }
                b = &rest[bad..];
            }
        }
    }
}

/// The bytes behind a [`text_view`] of non-UTF-8 octets (`None` if `s` is not such a view).
pub(crate) fn from_text_view(s: &str) -> Option<Vec<u8>> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] != b'\\' {
            out.push(b[i]);
            i += 1;
            continue;
        }
        match b.get(i + 1)? {
            b'\\' => {
                out.push(b'\\');
                i += 2;
            }
            b'x' => {
                let hex = std::str::from_utf8(b.get(i + 2..i + 4)?).ok()?;
                out.push(u8::from_str_radix(hex, 16).ok()?);
                i += 4;
            }
            _ => return None,
        }
    }
    std::str::from_utf8(&out).is_err().then_some(out)
}

/// The bytes a short string goes out as: the text itself, or — for a [`text_view`] longer
/// than a short string allows — the original octets it stands for, so a message that came in
/// with non-UTF-8 short strings can be published again (retry, dead-letter) as it was.
pub(crate) fn short_str_wire(s: &str) -> std::borrow::Cow<'_, [u8]> {
    if s.len() <= 255 {
        return s.as_bytes().into();
    }
    match from_text_view(s) {
        Some(b) if b.len() <= 255 => b.into(),
        _ => s.as_bytes().into(),
    }
}

/// Writes a short string. Everything written here was checked by [`check_short`] first; if an
/// unchecked string ever gets here it is cut at 255 bytes rather than panicking under the
/// connection's outbox lock.
pub(crate) fn put_short_str(out: &mut BytesMut, s: &str) {
    let b = short_str_wire(s);
    let b = if b.len() > 255 {
        tracing::error!(len = b.len(), "unchecked short string cut to 255 bytes");
        &b[..255]
    } else {
        &b[..]
    };
    out.put_u8(b.len() as u8);
    out.put_slice(b);
}

pub(crate) fn put_long_str(out: &mut BytesMut, s: &[u8]) {
    out.put_u32(s.len() as u32);
    out.put_slice(s);
}

/// Packs consecutive bit fields into one octet, lowest bit first (AMQP 0-9-1 §4.2.5.2).
pub(crate) fn bits(flags: &[bool]) -> u8 {
    flags
        .iter()
        .enumerate()
        .fold(0u8, |acc, (i, &b)| acc | (u8::from(b) << i))
}

pub(crate) fn bit(octet: u8, i: u8) -> bool {
    octet & (1 << i) != 0
}

/// Checks a name that goes into a short string (exchange, queue, routing key, …).
pub(crate) fn check_short(what: &str, s: &str) -> Result<(), String> {
    if short_str_wire(s).len() > 255 {
        Err(format!(
            "{what} is {} bytes long; AMQP allows at most 255",
            s.len()
        ))
    } else {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bits_pack_lowest_first() {
        assert_eq!(bits(&[true, false, true]), 0b101);
        assert!(bit(0b100, 2));
        assert!(!bit(0b100, 1));
    }

    #[test]
    fn reader_refuses_truncated_input() {
        let mut r = Reader::new(&[0, 5, b'a']);
        assert_eq!(r.u16().unwrap(), 5);
        assert!(r.bytes(5).is_err());
        let mut r = Reader::new(&[3, b'a', b'b']);
        assert!(r.short_str().is_err());
    }

    #[test]
    fn non_utf8_short_strings_get_a_lossless_view() {
        let mut r = Reader::new(&[4, 0xff, b'a', b'\\', 0xfe]);
        let view = r.short_str().unwrap();
        assert_eq!(view, "\\xffa\\\\\\xfe");
        assert_eq!(from_text_view(&view).unwrap(), [0xff, b'a', b'\\', 0xfe]);
        // UTF-8 is untouched, backslashes included, and is not taken for a view.
        assert_eq!(text_view("a\\xffé".as_bytes()), "a\\xffé");
        assert_eq!(from_text_view("plain"), None);
        assert_eq!(from_text_view("a\\q"), None);
        // Distinct invalid inputs, distinct views.
        let inputs: [&[u8]; 5] = [&[0xff], &[0xfe], &[0xff, 0xff], b"\\xff\xff", &[0xc3]];
        let views: std::collections::HashSet<_> = inputs.iter().map(|b| text_view(b)).collect();
        assert_eq!(views.len(), inputs.len());
        for b in inputs {
            if std::str::from_utf8(b).is_err() {
                assert_eq!(from_text_view(&text_view(b)).unwrap(), b);
            }
        }
    }

    #[test]
    fn strings_round_trip() {
        let mut out = BytesMut::new();
        put_short_str(&mut out, "queue");
        put_long_str(&mut out, b"body");
        let mut r = Reader::new(&out);
        assert_eq!(r.short_str().unwrap(), "queue");
        assert_eq!(r.long_str_bytes().unwrap(), b"body");
        assert_eq!(r.remaining(), 0);
    }
}
