//! `connection.close` and `channel.close` share their arguments: who closed, and why.

use crate::transport::wire::{DecodeResult, Reader, put_short_str};
use bytes::{BufMut, BytesMut};

/// The arguments of `connection.close` and `channel.close`: who closed, why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Close {
    pub reply_code: u16,
    pub reply_text: String,
    pub class_id: u16,
    pub method_id: u16,
}

impl Close {
    pub(crate) fn normal() -> Self {
        Close {
            reply_code: 200,
            reply_text: "closed by rabbit-once".into(),
            class_id: 0,
            method_id: 0,
        }
    }
}

pub(super) fn put_close(out: &mut BytesMut, c: &Close) {
    out.put_u16(c.reply_code);
    put_short_str(out, &c.reply_text);
    out.put_u16(c.class_id);
    out.put_u16(c.method_id);
}

pub(super) fn read_close(r: &mut Reader<'_>) -> DecodeResult<Close> {
    Ok(Close {
        reply_code: r.u16()?,
        reply_text: r.short_str()?,
        class_id: r.u16()?,
        method_id: r.u16()?,
    })
}
