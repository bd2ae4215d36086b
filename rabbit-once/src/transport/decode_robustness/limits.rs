//! The limits, one by one: nesting beyond `MAX_DEPTH` and length prefixes claiming 4 GiB are
//! refused, in a frame as on their own, without allocating for what they claim.

use super::feed;
use crate::transport::frame;
use crate::transport::fuzzing::FRAME_MAX;
use crate::transport::method::Method;
use crate::transport::table::{FieldTable, MAX_DEPTH};
use crate::transport::wire::Reader;
use bytes::BytesMut;

/// `levels` tables and arrays, alternating, nested inside the top-level table (which counts as
/// the first level, as the decoder counts), built byte by byte.
pub(super) fn nested_table(levels: usize) -> Vec<u8> {
    let mut v = vec![b'I', 0, 0, 0, 1];
    for level in (2..=levels).rev() {
        let mut outer = Vec::with_capacity(v.len() + 8);
        if level % 2 == 0 {
            outer.push(b'A');
            outer.extend_from_slice(&(v.len() as u32).to_be_bytes());
        } else {
            outer.push(b'F');
            outer.extend_from_slice(&(v.len() as u32 + 2).to_be_bytes());
            outer.extend_from_slice(&[1, b'k']);
        }
        outer.extend_from_slice(&v);
        v = outer;
    }
    let mut t = (v.len() as u32 + 2).to_be_bytes().to_vec();
    t.extend_from_slice(&[1, b'k']);
    t.extend_from_slice(&v);
    t
}

fn frame_of(kind: u8, payload: &[u8]) -> Vec<u8> {
    let mut f = vec![kind, 0, 1];
    f.extend_from_slice(&(payload.len() as u32).to_be_bytes());
    f.extend_from_slice(payload);
    f.push(0xCE);
    f
}

/// The nesting limit holds for a table that arrives in a frame: in a message's headers (the
/// message is handed up as malformed) and in a method's arguments (a protocol error).
#[test]
fn nesting_limit_holds_inside_frames() {
    for (levels, ok) in [(MAX_DEPTH, true), (MAX_DEPTH + 1, false)] {
        let table = nested_table(levels);
        let (depth, _) = FieldTable::decode(&mut Reader::new(&table))
            .map(|t| t.depth_and_heap())
            .unwrap_or_default();
        assert_eq!(depth, if ok { MAX_DEPTH } else { 0 });

        // A content header with those headers.
        let mut header = vec![0, 60, 0, 0];
        header.extend_from_slice(&0u64.to_be_bytes());
        header.extend_from_slice(&(1u16 << 13).to_be_bytes());
        header.extend_from_slice(&table);
        let mut buf = BytesMut::from(&frame_of(frame::HEADER, &header)[..]);
        let f = frame::parse_frame(&mut buf, FRAME_MAX).unwrap().unwrap();
        let h = frame::decode_content_header(&f.payload).unwrap();
        assert_eq!(
            h.malformed.is_none(),
            ok,
            "{levels} levels: {:?}",
            h.malformed
        );
        assert_eq!(h.properties.headers.is_some(), ok);
        if !ok {
            assert!(h.malformed.unwrap().contains("nested"));
        }

        // queue.declare with those arguments.
        let mut declare = vec![0, 50, 0, 10, 0, 0, 1, b'q', 0b10];
        declare.extend_from_slice(&table);
        let mut buf = BytesMut::from(&frame_of(frame::METHOD, &declare)[..]);
        let f = frame::parse_frame(&mut buf, FRAME_MAX).unwrap().unwrap();
        match Method::decode(&f.payload) {
            Ok(Method::QueueDeclare { arguments, .. }) => {
                assert!(ok);
                assert_eq!(arguments.depth_and_heap().0, MAX_DEPTH);
            }
            Err(e) => assert!(!ok && e.0.contains("nested"), "{e}"),
            other => panic!("{other:?}"),
        }
        feed(&frame_of(frame::HEADER, &header));
        feed(&frame_of(frame::METHOD, &declare));
    }
}

/// Length prefixes claiming up to 4 GiB, at every level: refused without allocating for them.
#[test]
fn lengths_claiming_4_gib_are_refused_without_allocating() {
    let huge = u32::MAX.to_be_bytes();
    // A frame whose size is over frame_max: refused before any reserve.
    let mut buf = BytesMut::from(&[1, 0, 1, 0xff, 0xff, 0xff, 0xf7][..]);
    assert!(frame::parse_frame(&mut buf, FRAME_MAX).is_err());
    assert!(buf.capacity() < 64);
    // The largest frame frame_max allows, not arrived yet: room for it, no more.
    let size = (FRAME_MAX - 8).to_be_bytes();
    let mut buf = BytesMut::from(&[1, 0, 1, size[0], size[1], size[2], size[3]][..]);
    assert!(frame::parse_frame(&mut buf, FRAME_MAX).unwrap().is_none());
    assert!(buf.capacity() <= 2 * FRAME_MAX as usize);

    let mut cases: Vec<Vec<u8>> = Vec::new();
    // A table, a long string in a table, an array, a byte array.
    cases.push([&huge[..], &b"\x01k"[..]].concat());
    for tag in [b'S', b'A', b'x', b'F'] {
        let body = [&[1, b'k', tag][..], &huge[..], &b"abc"[..]].concat();
        cases.push([&(body.len() as u32).to_be_bytes()[..], &body].concat());
    }
    for table in cases.clone() {
        assert!(FieldTable::decode(&mut Reader::new(&table)).is_err());
        // As a message's headers: the message is malformed, the connection goes on.
        let header = [&[0, 60, 0, 0][..], &[0; 8][..], &[0x20, 0][..], &table[..]].concat();
        let h = frame::decode_content_header(&header).unwrap();
        assert!(h.malformed.is_some());
        cases.push(frame_of(frame::HEADER, &header));
        // As connection.start's server properties.
        let start = [&[0, 10, 0, 10, 0, 9][..], &table[..]].concat();
        assert!(Method::decode(&start).is_err());
        cases.push(frame_of(frame::METHOD, &start));
    }
    // connection.start's mechanisms and start-ok's response as long strings of 4 GiB.
    let start = [
        &[0, 10, 0, 10, 0, 9][..],
        &[0; 4][..],
        &huge[..],
        &b"PLAIN"[..],
    ]
    .concat();
    assert!(Method::decode(&start).is_err());
    let start_ok = [
        &[0, 10, 0, 11][..],
        &[0; 4][..],
        &b"\x05PLAIN"[..],
        &huge[..],
    ]
    .concat();
    assert!(Method::decode(&start_ok).is_err());
    cases.extend([start, start_ok]);
    for c in &cases {
        feed(c);
    }
}
