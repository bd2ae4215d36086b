//! The reader task: frames split off a large read buffer without copying, content assembled
//! (within the body cap), and events routed to each channel's queue. Content another client
//! put on the broker never ends the connection (it goes up malformed); only frames the broker
//! itself could not have sent do.

use super::shared::LinkShared;
use super::{READ_CHUNK, ReadHalf};
use crate::error::{Error, ProtocolError};
use crate::shutdown::stopped;
use crate::transport::channel::{ChannelEvent, RawDelivery, Returned};
use crate::transport::frame::{
    self, ContentHeader, RawFrame, decode_content_header, parse_frame, put_method,
};
use crate::transport::method::Method;
use bytes::{Bytes, BytesMut};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use tokio::io::AsyncReadExt;
use tokio::sync::mpsc;

/// Content being assembled: the method that announced it, then its header, then body frames.
pub(super) struct Assembling {
    pub(super) method: Method,
    pub(super) header: Option<ContentHeader>,
    pub(super) body: BytesMut,
    pub(super) first: Option<Bytes>,
    /// Body bytes are counted but not kept: a return (we hold the message ourselves) or a body
    /// over the cap (the delivery goes up malformed).
    pub(super) discard: bool,
    pub(super) discarded: u64,
}

pub(super) struct Slot {
    pub(super) tx: mpsc::UnboundedSender<ChannelEvent>,
    pub(super) content: Option<Assembling>,
}

/// Ends the connection for every channel when the reader stops — also if it panics: each
/// channel gets `Closed` with the reason, and no channel can be opened any more.
pub(super) struct ReaderExit(Arc<LinkShared>);

impl Drop for ReaderExit {
    fn drop(&mut self) {
        let shared = &self.0;
        // After the broker's connection.close, the writer still has our close-ok to send and
        // stops by itself; otherwise stop everything now.
        let flushing = shared
            .out
            .lock()
            .map(|o| o.stop_after_flush)
            .unwrap_or(false);
        if !flushing {
            shared.fail(Error::ConnectionLost(
                "the connection's reader stopped".into(),
            ));
        }
        let reason = shared.reason();
        let slots: Vec<_> = match shared.table.lock() {
            Ok(mut t) => {
                t.closed = true;
                t.slots.drain(..).flatten().collect()
            }
            Err(_) => Vec::new(),
        };
        for tx in slots {
            let _ = tx.send(ChannelEvent::Closed(reason.clone()));
        }
        shared.blocked.send_if_modified(|b| b.take().is_some());
    }
}

pub(super) async fn reader(shared: Arc<LinkShared>, mut r: ReadHalf, mut buf: BytesMut) {
    let _exit = ReaderExit(shared.clone());
    let mut stop = shared.stop.subscribe();
    let mut cache: Vec<Option<Slot>> = Vec::new();
    let outcome: Result<(), Error> = 'run: loop {
        loop {
            match parse_frame(&mut buf, shared.frame_max) {
                Ok(Some(f)) => match handle_frame(&shared, &mut cache, f) {
                    Ok(true) => {}
                    Ok(false) => break 'run Ok(()),
                    Err(e) => break 'run Err(e),
                },
                Ok(None) => break,
                Err(e) => break 'run Err(e.into()),
            }
        }
        if buf.capacity() - buf.len() < READ_CHUNK / 4 {
            buf.reserve(READ_CHUNK);
        }
        let n = tokio::select! {
            biased;
            _ = stopped(&mut stop) => break Ok(()),
            n = r.read_buf(&mut buf) => n,
        };
        match n {
            Ok(0) => break Err(Error::ConnectionLost("the broker closed the socket".into())),
            Ok(_) => {
                shared.read_activity.fetch_add(1, Ordering::Relaxed);
            }
            Err(e) => break Err(Error::ConnectionLost(format!("read failed: {e}"))),
        }
    };
    if let Err(e) = outcome {
        tracing::debug!(endpoint = %shared.endpoint, error = %e, "connection lost");
        shared.fail(e);
    }
}

/// Handles one frame; `Ok(false)` ends the reader (the connection is closing).
pub(super) fn handle_frame(
    shared: &LinkShared,
    cache: &mut Vec<Option<Slot>>,
    f: RawFrame,
) -> Result<bool, Error> {
    if f.kind == frame::HEARTBEAT {
        return Ok(true);
    }
    if f.channel == 0 {
        if f.kind != frame::METHOD {
            return Err(proto("content frame on channel 0"));
        }
        return connection_method(shared, Method::decode(&f.payload)?);
    }
    let id = f.channel as usize;
    if cache.get(id).is_none_or(Option::is_none) && !cache_slot(shared, cache, id)? {
        return Ok(true);
    }
    match f.kind {
        frame::METHOD => channel_method(shared, cache, f)?,
        frame::HEADER => {
            let slot = cache[id].as_mut().expect("cached above");
            content_header(shared, slot, &f.payload)?
        }
        frame::BODY => {
            let slot = cache[id].as_mut().expect("cached above");
            content_body(slot, f.payload)?
        }
        other => return Err(proto(&format!("unknown frame type {other}"))),
    }
    Ok(true)
}

/// A method on channel 0; `Ok(false)` ends the reader (the connection is closing).
fn connection_method(shared: &LinkShared, m: Method) -> Result<bool, Error> {
    match m {
        Method::ConnectionClose(c) => {
            tracing::debug!(code = c.reply_code, text = %c.reply_text, "broker closed the connection");
            shared.record(Error::ConnectionClosed {
                code: c.reply_code,
                text: c.reply_text,
            });
            let _ = shared.write(|out| put_method(out, 0, &Method::ConnectionCloseOk));
            shared.out.lock().expect("outbox lock").stop_after_flush = true;
            shared.wake_writer.notify_one();
            Ok(false)
        }
        Method::ConnectionCloseOk => {
            shared.fail(Error::Closed);
            Ok(false)
        }
        Method::ConnectionBlocked { reason } => {
            tracing::info!(%reason, "broker blocked publishing");
            shared.blocked.send_replace(Some(reason));
            Ok(true)
        }
        Method::ConnectionUnblocked => {
            tracing::info!("broker unblocked publishing");
            shared.blocked.send_replace(None);
            Ok(true)
        }
        other => Err(proto(&format!(
            "unexpected method {:?} on channel 0",
            other.ids()
        ))),
    }
}

/// Caches channel `id`'s sender from the table; `Ok(false)` if the channel is closed (its
/// frames are ignored), an error if it was never opened.
fn cache_slot(
    shared: &LinkShared,
    cache: &mut Vec<Option<Slot>>,
    id: usize,
) -> Result<bool, Error> {
    let tx = shared
        .table
        .lock()
        .expect("table lock")
        .slots
        .get(id)
        .cloned()
        .flatten();
    match tx {
        Some(tx) => {
            if cache.len() <= id {
                cache.resize_with(id + 1, || None);
            }
            cache[id] = Some(Slot { tx, content: None });
            Ok(true)
        }
        None => {
            // Ids are handed out in turn from 1, so every id below the table's length was
            // opened once: a frame there is a late one for a channel we closed. An id
            // beyond it was never opened — no broker sends that.
            let ever_opened = id < shared.table.lock().expect("table lock").slots.len();
            if !ever_opened {
                return Err(proto(&format!(
                    "frame on channel {id}, which was never opened"
                )));
            }
            tracing::trace!(channel = id, "frame for a closed channel ignored");
            Ok(false)
        }
    }
}

/// A method on a channel whose slot is cached: content announced, a confirm, the broker
/// closing the channel, or anything else for the channel's owner.
fn channel_method(
    shared: &LinkShared,
    cache: &mut [Option<Slot>],
    f: RawFrame,
) -> Result<(), Error> {
    let id = f.channel as usize;
    let slot = cache[id].as_mut().expect("cached above");
    if slot.content.is_some() {
        return Err(proto("method frame while content was expected"));
    }
    let m = Method::decode(&f.payload)?;
    if let Method::BasicPublish { .. } = m {
        return Err(proto("basic.publish from the broker"));
    }
    if m.has_content() {
        let discard = matches!(m, Method::BasicReturn { .. });
        slot.content = Some(Assembling {
            method: m,
            header: None,
            body: BytesMut::new(),
            first: None,
            discard,
            discarded: 0,
        });
        return Ok(());
    }
    let ev = match m {
        Method::BasicAck {
            delivery_tag,
            multiple,
        } => ChannelEvent::Ack {
            tag: delivery_tag,
            multiple,
        },
        Method::BasicNack {
            delivery_tag,
            multiple,
            ..
        } => ChannelEvent::Nack {
            tag: delivery_tag,
            multiple,
        },
        Method::ChannelClose(c) => {
            // Answer, mark the channel closed for writers, free the id, and tell the
            // channel why — in that order, under the table lock, so a dropped handle
            // cannot send a second close and no frame follows our close-ok.
            let tx = {
                let mut t = shared.table.lock().expect("table lock");
                shared.answer_channel_close(f.channel);
                t.slots.get_mut(id).and_then(Option::take)
            };
            cache[id] = None;
            if let Some(tx) = tx {
                let _ = tx.send(ChannelEvent::Closed(Error::ChannelClosed {
                    code: c.reply_code,
                    text: c.reply_text,
                }));
            }
            return Ok(());
        }
        Method::ChannelCloseOk => {
            let _ = slot.tx.send(ChannelEvent::Method(Method::ChannelCloseOk));
            shared.release(f.channel);
            cache[id] = None;
            return Ok(());
        }
        Method::ChannelFlow { active } => {
            let _ =
                shared.write(|out| put_method(out, f.channel, &Method::ChannelFlowOk { active }));
            ChannelEvent::Method(Method::ChannelFlow { active })
        }
        Method::BasicCancel {
            consumer_tag,
            nowait,
        } => {
            if !nowait {
                let _ = shared.write(|out| {
                    put_method(
                        out,
                        f.channel,
                        &Method::BasicCancelOk {
                            consumer_tag: consumer_tag.clone(),
                        },
                    )
                });
            }
            ChannelEvent::Cancelled { consumer_tag }
        }
        other => ChannelEvent::Method(other),
    };
    let _ = slot.tx.send(ev);
    Ok(())
}

/// A content header: the body's size, checked against the cap (a body over it is counted,
/// not kept, and the delivery goes up malformed).
fn content_header(shared: &LinkShared, slot: &mut Slot, payload: &[u8]) -> Result<(), Error> {
    let a = slot
        .content
        .as_mut()
        .filter(|a| a.header.is_none())
        .ok_or_else(|| proto("content header without a content method"))?;
    let mut h = decode_content_header(payload)?;
    if h.body_size > shared.max_body_size {
        a.discard = true;
        if h.malformed.is_none() {
            h.malformed = Some(format!(
                "body of {} bytes is over the limit of {} bytes (not kept)",
                h.body_size, shared.max_body_size
            ));
        }
    }
    let empty = h.body_size == 0;
    a.header = Some(h);
    if empty {
        complete(slot);
    }
    Ok(())
}

/// A body frame: kept without a copy if it is the whole body, appended otherwise; the content
/// is complete once the header's size is reached.
fn content_body(slot: &mut Slot, payload: Bytes) -> Result<(), Error> {
    let a = slot
        .content
        .as_mut()
        .filter(|a| a.header.is_some())
        .ok_or_else(|| proto("body frame without a content header"))?;
    let want = a.header.as_ref().expect("checked").body_size;
    let have = a.discarded + a.body.len() as u64 + a.first.as_ref().map_or(0, |b| b.len() as u64);
    if have + payload.len() as u64 > want {
        return Err(proto("body longer than its header announced"));
    }
    if a.discard {
        a.discarded += payload.len() as u64;
        if a.discarded == want {
            complete(slot);
        }
        return Ok(());
    }
    if have == 0 && payload.len() as u64 == want {
        a.first = Some(payload);
    } else {
        if let Some(first) = a.first.take() {
            a.body.extend_from_slice(&first);
        }
        a.body.extend_from_slice(&payload);
    }
    let have = a.body.len() as u64 + a.first.as_ref().map_or(0, |b| b.len() as u64);
    if have == want {
        complete(slot);
    }
    Ok(())
}

pub(super) fn complete(slot: &mut Slot) {
    let a = slot.content.take().expect("content being assembled");
    let header = a.header.expect("header read");
    let body = a.first.unwrap_or_else(|| a.body.freeze());
    let ev = match a.method {
        Method::BasicDeliver {
            delivery_tag,
            redelivered,
            exchange,
            routing_key,
            ..
        } => ChannelEvent::Deliver(Box::new(RawDelivery {
            delivery_tag,
            redelivered,
            exchange,
            routing_key,
            properties: header.properties,
            body,
            malformed: header.malformed,
        })),
        Method::BasicReturn {
            reply_code,
            reply_text,
            exchange,
            routing_key,
        } => ChannelEvent::Return(Box::new(Returned {
            reply_code,
            reply_text,
            exchange,
            routing_key,
            properties: header.properties,
        })),
        _ => return, // only deliver and return are assembled (checked when they arrive)
    };
    let _ = slot.tx.send(ev);
}

pub(super) fn proto(what: &str) -> Error {
    Error::Protocol(ProtocolError::new(what))
}
