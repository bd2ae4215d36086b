//! [`LinkShared`], what a link's tasks and handles share: the outbox channels append frames
//! to, the table of open channels, the reason the connection died, and the activity counters
//! the heartbeat task watches.

use super::HIGH_WATER;
use crate::error::Error;
use crate::transport::channel::ChannelEvent;
use crate::transport::frame::put_method;
use crate::transport::method::Method;
use crate::transport::table::FieldTable;
use bytes::BytesMut;
use std::sync::Mutex;
use std::sync::atomic::AtomicU64;
use std::time::Duration;
use tokio::sync::{Notify, mpsc, watch};

/// The frames waiting for the writer, and which channels may still add to them.
pub(super) struct Outbox {
    pub(super) buf: BytesMut,
    /// No frame is accepted any more.
    pub(super) closed: bool,
    /// The writer stops after writing what is in `buf` (we answered `connection.close`).
    pub(super) stop_after_flush: bool,
    /// Channels the broker closed (we queued their close-ok): nothing more may be written on
    /// them, or the broker would close the whole connection (504 CHANNEL_ERROR).
    pub(super) closed_channels: Vec<bool>,
}

/// The open channels: where the reader routes each channel's events.
pub(super) struct ChannelTable {
    pub(super) slots: Vec<Option<mpsc::UnboundedSender<ChannelEvent>>>,
    /// Set by the reader as it exits: no channel can be opened on this connection any more.
    pub(super) closed: bool,
    /// Where to look for the next free id (ids are not reused at once).
    pub(super) next: u16,
}

/// What a link's reader, writer and heartbeat tasks and its [`Link`](super::Link) handles
/// share, behind one `Arc`.
pub(crate) struct LinkShared {
    pub(super) out: Mutex<Outbox>,
    pub(super) wake_writer: Notify,
    pub(super) drained: Notify,
    pub(super) table: Mutex<ChannelTable>,
    pub(crate) frame_max: u32,
    pub(super) channel_max: u16,
    pub(super) max_body_size: u64,
    pub(super) heartbeat: Duration,
    pub(super) endpoint: String,
    /// The first reason this connection died for.
    pub(super) reason: Mutex<Option<Error>>,
    /// `true` once dead; both tasks stop on it.
    pub(super) stop: watch::Sender<bool>,
    pub(super) blocked: watch::Sender<Option<String>>,
    /// Bumped by the reader on every read, by the writer on every write: the heartbeat task
    /// watches both.
    pub(super) read_activity: AtomicU64,
    pub(super) write_activity: AtomicU64,
    pub(super) server_properties: FieldTable,
}

impl LinkShared {
    /// Records why the connection died (the first reason wins) and stops both tasks.
    pub(super) fn fail(&self, e: Error) {
        self.record(e);
        self.out.lock().expect("outbox lock").closed = true;
        self.stop.send_replace(true);
        self.drained.notify_waiters();
    }

    pub(super) fn record(&self, e: Error) {
        let mut r = self.reason.lock().expect("reason lock");
        if r.is_none() {
            *r = Some(e);
        }
    }

    pub(super) fn reason(&self) -> Error {
        self.reason
            .lock()
            .expect("reason lock")
            .clone()
            .unwrap_or_else(|| Error::ConnectionLost("connection closed".into()))
    }

    /// Appends frames to the outbox; `Err` once the connection is dead.
    pub(crate) fn write<R>(&self, f: impl FnOnce(&mut BytesMut) -> R) -> Result<(R, bool), Error> {
        self.append(None, f)
    }

    /// Appends frames of channel `id`; refused once the broker closed that channel.
    pub(crate) fn write_channel<R>(
        &self,
        id: u16,
        f: impl FnOnce(&mut BytesMut) -> R,
    ) -> Result<(R, bool), Error> {
        self.append(Some(id), f)
    }

    /// The one path into the outbox: refused once the connection is dead or, for a
    /// `channel`, once the broker closed it; `true` beside the result means past [`HIGH_WATER`].
    fn append<R>(
        &self,
        channel: Option<u16>,
        f: impl FnOnce(&mut BytesMut) -> R,
    ) -> Result<(R, bool), Error> {
        let mut out = self.out.lock().expect("outbox lock");
        if out.closed {
            drop(out);
            return Err(self.reason());
        }
        if let Some(id) = channel
            && out
                .closed_channels
                .get(id as usize)
                .copied()
                .unwrap_or(false)
        {
            return Err(Error::ChannelClosed {
                code: 0,
                text: "the broker closed this channel".into(),
            });
        }
        let r = f(&mut out.buf);
        let full = out.buf.len() >= HIGH_WATER;
        drop(out);
        self.wake_writer.notify_one();
        Ok((r, full))
    }

    pub(super) fn mark_channel(&self, id: u16, closed: bool) {
        let mut out = self.out.lock().expect("outbox lock");
        mark(&mut out, id, closed);
    }

    /// Queues `channel.close-ok` and, under the same lock, refuses further frames on `id`.
    pub(super) fn answer_channel_close(&self, id: u16) {
        let mut out = self.out.lock().expect("outbox lock");
        if !out.closed {
            put_method(&mut out.buf, id, &Method::ChannelCloseOk);
        }
        mark(&mut out, id, true);
        drop(out);
        self.wake_writer.notify_one();
    }

    /// Removes a channel's slot. Called by the reader (after close / close-ok) and nobody else.
    pub(super) fn release(&self, id: u16) -> Option<mpsc::UnboundedSender<ChannelEvent>> {
        let mut t = self.table.lock().expect("table lock");
        t.slots.get_mut(id as usize).and_then(Option::take)
    }
}

pub(super) fn mark(out: &mut Outbox, id: u16, closed: bool) {
    let i = id as usize;
    if out.closed_channels.len() <= i {
        out.closed_channels.resize(i + 1, false);
    }
    out.closed_channels[i] = closed;
}
