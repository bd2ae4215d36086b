//! Frames: splitting them off the read buffer, and writing method, content and heartbeat frames.

use super::method::{Method, put_basic_publish};
use super::properties::Properties;
use super::wire::{DecodeResult, ProtocolError, Reader};
use bytes::{Buf, BufMut, Bytes, BytesMut};

pub(crate) const PROTOCOL_HEADER: &[u8; 8] = b"AMQP\x00\x00\x09\x01";
pub(crate) const METHOD: u8 = 1;
pub(crate) const HEADER: u8 = 2;
pub(crate) const BODY: u8 = 3;
pub(crate) const HEARTBEAT: u8 = 8;
const FRAME_END: u8 = 0xCE;
/// Type (1) + channel (2) + size (4) + frame-end (1).
pub(crate) const FRAME_OVERHEAD: usize = 8;
/// The frame size every peer must accept before tuning (AMQP 0-9-1 §4.2.3).
pub(crate) const FRAME_MIN_SIZE: u32 = 4096;

/// The most [`parse_frame`] reserves ahead for a frame that has not fully arrived.
pub(crate) const RESERVE_AHEAD: usize = 1 << 20;

/// One frame as read: its type, channel and payload (a slice of the read buffer, not a copy).
#[derive(Debug)]
pub(crate) struct RawFrame {
    pub kind: u8,
    pub channel: u16,
    pub payload: Bytes,
}

/// Splits one whole frame off the front of `buf`, or returns `None` if more bytes are needed.
pub(crate) fn parse_frame(buf: &mut BytesMut, frame_max: u32) -> DecodeResult<Option<RawFrame>> {
    if buf.len() < 7 {
        return Ok(None);
    }
    let kind = buf[0];
    let channel = u16::from_be_bytes([buf[1], buf[2]]);
    let size = u32::from_be_bytes([buf[3], buf[4], buf[5], buf[6]]);
    // By the spec a whole frame fits in frame_max. RabbitMQ checks what it *receives* that way,
    // but passes on a content header of up to frame_max payload bytes (8 over) that it accepted
    // from a publisher: refusing that frame would drop the connection over a message the broker
    // redelivers first every time. So a payload of up to frame_max is read. (Compared in u64:
    // nothing here may overflow a 32-bit usize for a hostile size near 4 GiB.)
    let max_payload = u64::from(frame_max.max(FRAME_MIN_SIZE)).min(u64::from(u32::MAX) - 8);
    if u64::from(size) > max_payload {
        return Err(ProtocolError::new(format!(
            "frame of {size} bytes exceeds the negotiated frame_max {frame_max}"
        )));
    }
    // At most u32::MAX (checked above), so it fits a usize.
    let total = size as usize + FRAME_OVERHEAD;
    if buf.len() < total {
        // Room for the rest of the frame, but never more than RESERVE_AHEAD on the word of a
        // size field: with a large configured frame_max, 7 bytes claiming 4 GiB would
        // otherwise reserve 4 GiB. Past that the buffer grows with what actually arrives.
        buf.reserve((total - buf.len()).min(RESERVE_AHEAD));
        return Ok(None);
    }
    if buf[total - 1] != FRAME_END {
        return Err(ProtocolError::new("frame does not end with 0xCE"));
    }
    buf.advance(7);
    let payload = buf.split_to(size as usize).freeze();
    buf.advance(1);
    Ok(Some(RawFrame {
        kind,
        channel,
        payload,
    }))
}

/// Starts a frame; returns the offset to pass to [`end_frame`].
fn begin_frame(out: &mut BytesMut, kind: u8, channel: u16) -> usize {
    out.put_u8(kind);
    out.put_u16(channel);
    let at = out.len();
    out.put_u32(0);
    at
}

fn end_frame(out: &mut BytesMut, at: usize) {
    let size = (out.len() - at - 4) as u32;
    out[at..at + 4].copy_from_slice(&size.to_be_bytes());
    out.put_u8(FRAME_END);
}

pub(crate) fn put_method(out: &mut BytesMut, channel: u16, method: &Method) {
    let at = begin_frame(out, METHOD, channel);
    method.encode(out);
    end_frame(out, at);
}

pub(crate) fn put_heartbeat(out: &mut BytesMut) {
    out.put_slice(&[HEARTBEAT, 0, 0, 0, 0, 0, 0, FRAME_END]);
}

/// Borrowed parts of one `basic.publish`.
#[derive(Debug, Clone, Copy)]
pub(crate) struct PublishFrames<'a> {
    pub exchange: &'a str,
    pub routing_key: &'a str,
    pub mandatory: bool,
    pub properties: &'a Properties,
    pub body: &'a [u8],
}

/// Writes `basic.publish`, its content header and body frames (split at `frame_max`).
pub(crate) fn put_publish(out: &mut BytesMut, channel: u16, frame_max: u32, p: PublishFrames<'_>) {
    let chunk = frame_max as usize - FRAME_OVERHEAD;
    out.reserve(
        64 + p.exchange.len()
            + p.routing_key.len()
            + p.body.len()
            + FRAME_OVERHEAD * (2 + p.body.len() / chunk),
    );
    let at = begin_frame(out, METHOD, channel);
    put_basic_publish(out, p.exchange, p.routing_key, p.mandatory);
    end_frame(out, at);
    let at = begin_frame(out, HEADER, channel);
    out.put_u16(60);
    out.put_u16(0);
    out.put_u64(p.body.len() as u64);
    p.properties.encode(out);
    end_frame(out, at);
    for part in p.body.chunks(chunk) {
        let at = begin_frame(out, BODY, channel);
        out.put_slice(part);
        end_frame(out, at);
    }
}

/// The size of the content-header frame that carries `properties`: it must fit in one frame
/// (a larger one makes the broker close the whole connection with 501 FRAME_ERROR).
pub(crate) fn content_header_frame_size(properties: &Properties) -> usize {
    FRAME_OVERHEAD + 12 + properties.wire_size()
}

/// A content header: the body size to expect and the properties.
#[derive(Debug)]
pub(crate) struct ContentHeader {
    pub body_size: u64,
    pub properties: Properties,
    /// Why the properties could not be decoded (then `properties` is empty). Content the
    /// broker accepted from another client is not our protocol error: the message is handed up
    /// as malformed instead of ending the connection.
    pub malformed: Option<String>,
}

/// Decodes a content header. Only the fixed part (class, weight, body size) can fail: the
/// properties that follow were written by whoever published the message.
pub(crate) fn decode_content_header(payload: &[u8]) -> DecodeResult<ContentHeader> {
    let mut r = Reader::new(payload);
    let _class = r.u16()?;
    let _weight = r.u16()?;
    let body_size = r.u64()?;
    let (properties, malformed) = match Properties::decode(&mut r) {
        Ok(p) => (p, None),
        Err(e) => (
            Properties::default(),
            Some(format!("undecodable properties: {}", e.0)),
        ),
    };
    Ok(ContentHeader {
        body_size,
        properties,
        malformed,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frames(mut buf: BytesMut) -> Vec<RawFrame> {
        let mut out = Vec::new();
        while let Some(f) = parse_frame(&mut buf, 131072).unwrap() {
            out.push(f);
        }
        assert!(buf.is_empty());
        out
    }

    #[test]
    fn publish_splits_the_body_at_frame_max() {
        let props = Properties {
            message_id: Some("id-1".into()),
            delivery_mode: Some(2),
            ..Default::default()
        };
        let body = vec![7u8; 10_000];
        let mut out = BytesMut::new();
        put_publish(
            &mut out,
            3,
            4096,
            PublishFrames {
                exchange: "",
                routing_key: "q",
                mandatory: true,
                properties: &props,
                body: &body,
            },
        );
        let fs = frames(out);
        assert_eq!(fs.len(), 2 + 3, "method, header, three body frames");
        assert!(fs.iter().all(|f| f.channel == 3));
        assert_eq!(fs[0].kind, METHOD);
        assert!(matches!(
            Method::decode(&fs[0].payload).unwrap(),
            Method::BasicPublish {
                mandatory: true,
                ..
            }
        ));
        let h = decode_content_header(&fs[1].payload).unwrap();
        assert_eq!(h.body_size, 10_000);
        assert_eq!(h.properties, props);
        let joined: Vec<u8> = fs[2..].iter().flat_map(|f| f.payload.to_vec()).collect();
        assert_eq!(joined, body);
        assert!(
            fs[2..]
                .iter()
                .all(|f| f.payload.len() <= 4096 - FRAME_OVERHEAD)
        );
    }

    #[test]
    fn partial_frames_wait_for_more_bytes() {
        let mut whole = BytesMut::new();
        put_method(&mut whole, 0, &Method::ConnectionCloseOk);
        put_heartbeat(&mut whole);
        for cut in 0..whole.len() {
            let mut buf = BytesMut::from(&whole[..cut]);
            let mut n = 0;
            while parse_frame(&mut buf, 4096).unwrap().is_some() {
                n += 1;
            }
            assert!(n < 2);
        }
        assert_eq!(frames(whole).len(), 2);
    }

    #[test]
    fn oversized_or_corrupt_frames_are_protocol_errors() {
        let mut buf = BytesMut::from(&[1u8, 0, 0, 0, 1, 0, 0][..]);
        assert!(parse_frame(&mut buf, 4096).is_err());
        let mut buf = BytesMut::from(&[8u8, 0, 0, 0, 0, 0, 0, 0xAB][..]);
        assert!(parse_frame(&mut buf, 4096).is_err());
    }

    #[test]
    fn a_size_near_4_gib_neither_overflows_nor_reserves_4_gib() {
        // Size + overhead is computed in u64: as `usize` it overflowed on 32-bit targets.
        for size in [u32::MAX, u32::MAX - 7, u32::MAX - 8, 1 << 30] {
            let s = size.to_be_bytes();
            let mut buf = BytesMut::from(&[1u8, 0, 1, s[0], s[1], s[2], s[3]][..]);
            let r = parse_frame(&mut buf, u32::MAX);
            if size <= u32::MAX - 8 {
                // Allowed by a frame_max of u32::MAX: waits for the bytes, without reserving
                // what the size field claims.
                assert!(r.unwrap().is_none());
                assert!(buf.capacity() <= 2 * RESERVE_AHEAD, "{}", buf.capacity());
            } else {
                assert!(r.is_err());
            }
        }
    }
}
