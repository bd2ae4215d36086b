//! AMQP 0-9-1 primitive types on the wire: integers, short/long strings, bits.
//!
//! Decoding reads from a borrowed slice through [`Reader`]; encoding appends to a `BytesMut`
//! in place, so publishing a message allocates nothing here.

use bytes::{BufMut, BytesMut};

/// A malformed frame from the peer. The connection cannot continue after one.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("AMQP protocol error: {0}")]
pub struct ProtocolError(pub String);

impl ProtocolError {
    pub(crate) fn new(what: impl Into<String>) -> Self {
        Self(what.into())
    }
}

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

    pub(crate) fn short_str(&mut self) -> DecodeResult<String> {
        let b = self.short_str_bytes()?;
        std::str::from_utf8(b)
            .map(str::to_owned)
            .map_err(|_| ProtocolError::new("short string is not UTF-8"))
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

pub(crate) fn put_short_str(out: &mut BytesMut, s: &str) {
    debug_assert!(
        s.len() <= 255,
        "short strings are validated before encoding"
    );
    out.put_u8(s.len() as u8);
    out.put_slice(s.as_bytes());
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
    if s.len() > 255 {
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
