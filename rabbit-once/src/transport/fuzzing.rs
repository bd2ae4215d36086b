//! Every decoder on arbitrary bytes, with what must hold whatever the bytes are. Shared by the
//! in-suite robustness test (`decode_robustness`) and the cargo-fuzz target (through
//! `rabbit_once::fuzzing`, feature `fuzzing`).
//!
//! Beyond "returns `Ok` or `Err`, never panics", this checks:
//! - `parse_frame` consumes exactly one frame (8 bytes + payload, within frame_max) or nothing,
//!   and reserves no more than one frame of frame_max (and never more than
//!   [`frame::RESERVE_AHEAD`]) for a frame that has not fully arrived;
//! - no decoded table nests deeper than [`MAX_DEPTH`];
//! - what a decoded table holds on the heap is at most [`HEAP_PER_BYTE`] × the input's length
//!   plus [`HEAP_SLACK`]: no length prefix is trusted for an allocation.

use super::frame::{self, FRAME_MIN_SIZE, FRAME_OVERHEAD, decode_content_header, parse_frame};
use super::method::Method;
use super::properties::Properties;
use super::table::{FieldTable, FieldValue, MAX_DEPTH};
use super::wire::Reader;
use bytes::BytesMut;

/// The frame_max the checks use: the one the handshake reads with, and RabbitMQ's default.
pub(crate) const FRAME_MAX: u32 = 131_072;

/// Heap bytes a decoded table may hold per input byte. The densest encoding is an array of
/// voids: one byte per `FieldValue` (32 bytes), and a `Vec` may hold up to twice what it uses.
pub(crate) const HEAP_PER_BYTE: usize = 2 * std::mem::size_of::<FieldValue>();
/// Plus this much whatever the input (a `Vec`'s first allocation holds four entries).
pub(crate) const HEAP_SLACK: usize = 4096;

/// What the decoders made of one input (the robustness test checks the mutations reach them).
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct DecodeTally {
    pub frames: usize,
    pub methods_ok: usize,
    pub methods_err: usize,
    pub headers_ok: usize,
    /// Content headers whose fixed part decoded but whose properties did not.
    pub headers_malformed: usize,
    pub headers_err: usize,
    pub tables_ok: usize,
    pub properties_ok: usize,
}

impl std::ops::AddAssign for DecodeTally {
    fn add_assign(&mut self, o: Self) {
        self.frames += o.frames;
        self.methods_ok += o.methods_ok;
        self.methods_err += o.methods_err;
        self.headers_ok += o.headers_ok;
        self.headers_malformed += o.headers_malformed;
        self.headers_err += o.headers_err;
        self.tables_ok += o.tables_ok;
        self.properties_ok += o.properties_ok;
    }
}

/// Splits `data` into frames as the reader task would and decodes each payload with the
/// decoder its frame type calls for; then runs the table and properties decoders on the raw
/// bytes too, so they also see inputs no frame wraps. Panics only if a check above fails.
pub(crate) fn decode_all(data: &[u8]) -> DecodeTally {
    let mut out = DecodeTally::default();
    decode_stream(data, FRAME_MAX, &mut out);
    decode_table(data, &mut out);
    decode_properties(data, &mut out);
    out
}

/// `parse_frame` until it wants more bytes or refuses, decoding every frame it splits off.
pub(crate) fn decode_stream(data: &[u8], frame_max: u32, out: &mut DecodeTally) {
    let limit = frame_max.max(FRAME_MIN_SIZE) as usize;
    let mut buf = BytesMut::from(data);
    loop {
        let before = buf.len();
        match parse_frame(&mut buf, frame_max) {
            Ok(Some(f)) => {
                out.frames += 1;
                assert_eq!(
                    before - buf.len(),
                    f.payload.len() + FRAME_OVERHEAD,
                    "parse_frame consumed more or less than one frame"
                );
                assert!(f.payload.len() + FRAME_OVERHEAD <= limit);
                decode_payload(f.kind, &f.payload, out);
            }
            Ok(None) => {
                assert_eq!(
                    buf.len(),
                    before,
                    "parse_frame consumed an incomplete frame"
                );
                // Room for one whole frame at most, not what a length prefix claims.
                assert!(
                    buf.capacity() <= (2 * data.len()).max(2 * limit.min(frame::RESERVE_AHEAD)),
                    "parse_frame reserved {} bytes for {} bytes of input",
                    buf.capacity(),
                    data.len()
                );
                return;
            }
            Err(_) => return,
        }
    }
}

/// The decoder the reader task calls for a frame of type `kind`.
pub(crate) fn decode_payload(kind: u8, payload: &[u8], out: &mut DecodeTally) {
    match kind {
        frame::METHOD => decode_method(payload, out),
        frame::HEADER => decode_header(payload, out),
        _ => {}
    }
}

pub(crate) fn decode_method(payload: &[u8], out: &mut DecodeTally) {
    match Method::decode(payload) {
        Ok(m) => {
            out.methods_ok += 1;
            if let Some(t) = method_table(&m) {
                check_table(t, payload.len());
            }
        }
        Err(_) => out.methods_err += 1,
    }
}

pub(crate) fn decode_header(payload: &[u8], out: &mut DecodeTally) {
    match decode_content_header(payload) {
        Ok(h) => {
            out.headers_ok += 1;
            if h.malformed.is_some() {
                out.headers_malformed += 1;
                assert_eq!(h.properties, Properties::default());
            }
            check_properties(&h.properties, payload.len());
        }
        Err(_) => out.headers_err += 1,
    }
}

pub(crate) fn decode_table(data: &[u8], out: &mut DecodeTally) {
    if let Ok(t) = FieldTable::decode(&mut Reader::new(data)) {
        out.tables_ok += 1;
        check_table(&t, data.len());
    }
}

pub(crate) fn decode_properties(data: &[u8], out: &mut DecodeTally) {
    if let Ok(p) = Properties::decode(&mut Reader::new(data)) {
        out.properties_ok += 1;
        check_properties(&p, data.len());
    }
}

fn check_properties(p: &Properties, input_len: usize) {
    if let Some(h) = &p.headers {
        check_table(h, input_len);
    }
}

/// A decoded table nests at most [`MAX_DEPTH`] deep and holds at most
/// `HEAP_PER_BYTE * input_len + HEAP_SLACK` heap bytes.
fn check_table(t: &FieldTable, input_len: usize) {
    let (depth, heap) = t.depth_and_heap();
    assert!(depth <= MAX_DEPTH, "decoded a table nested {depth} deep");
    assert!(
        heap <= HEAP_PER_BYTE * input_len + HEAP_SLACK,
        "a table decoded from {input_len} bytes holds {heap} heap bytes"
    );
}

/// The field table a method carries, if any.
fn method_table(m: &Method) -> Option<&FieldTable> {
    match m {
        Method::ConnectionStart {
            server_properties, ..
        } => Some(server_properties),
        Method::ConnectionStartOk {
            client_properties, ..
        } => Some(client_properties),
        Method::ExchangeDeclare { arguments, .. }
        | Method::ExchangeBind { arguments, .. }
        | Method::QueueDeclare { arguments, .. }
        | Method::QueueBind { arguments, .. }
        | Method::QueueUnbind { arguments, .. }
        | Method::BasicConsume { arguments, .. } => Some(arguments),
        _ => None,
    }
}
