//! The task that owns the publishing channel.
//!
//! Per session: (1) open a channel, (2) `confirm.select`, (3) re-publish every unconfirmed
//! message, oldest first, (4) then newer ones — all through one path, since the buffer keeps
//! acceptance order and a lost channel turns in-flight messages back into unsent ones.
//! Confirms, nacks and returns settle messages; a channel closed by the broker over a message
//! we cannot name makes the in-flight messages suspects, re-sent one at a time until the one
//! the broker refuses is found and failed alone.

use super::buffer::{Buffer, Resolved};
use super::confirmation::{Confirmed, PublishError, Reply};
use super::handle::Cmd;
use super::shared::Shared;
use crate::connection::{Connection, Session};
use crate::error::Error;
use crate::message::Message;
use crate::transport::publish_frames;
use crate::transport::{Channel, ChannelEvent, ExchangeFlags};
use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

/// How many commands or events to take in one go before looking at the other side.
const DRAIN: usize = 512;

pub(super) async fn run(conn: Connection, rx: mpsc::UnboundedReceiver<Cmd>, shared: Arc<Shared>) {
    let max_nacks = shared.config.nack_retries;
    Task {
        conn,
        rx,
        rx_open: true,
        shared,
        buf: Buffer::new(max_nacks),
        resolved: Vec::new(),
        closing: None,
        verified: HashSet::new(),
        probe: None,
        batch: Vec::new(),
    }
    .run()
    .await;
}

/// Why `pump` returned.
enum Exit {
    /// The channel is gone but the connection may live: open another one.
    Channel,
    /// The connection is gone: wait for the next session.
    Connection,
    /// Closed (drained or handed back), or every handle dropped and the buffer empty.
    Done,
}

struct Closing {
    deadline: Instant,
    replies: Vec<oneshot::Sender<Vec<Message>>>,
}

struct Task {
    conn: Connection,
    rx: mpsc::UnboundedReceiver<Cmd>,
    rx_open: bool,
    shared: Arc<Shared>,
    buf: Buffer<Reply>,
    resolved: Vec<Resolved<Reply>>,
    closing: Option<Closing>,
    /// Exchanges known to exist in this session (checked with a passive declare).
    verified: HashSet<String>,
    /// A channel for passive declares, so a missing exchange never closes the publishing one.
    probe: Option<Channel>,
    batch: Vec<u64>,
}

impl Task {
    async fn run(mut self) {
        let mut after = 0u64;
        loop {
            let session = match self.wait_session(after).await {
                Some(Ok(s)) => s,
                Some(Err(fatal)) => return self.fail_everything(fatal).await,
                None => return,
            };
            after = session.epoch;
            self.probe = None;
            loop {
                self.reset_verified();
                let deadline = self.close_deadline();
                let opened = tokio::select! {
                    r = self.open_channel(&session) => r,
                    _ = tokio::time::sleep_until(deadline), if self.closing.is_some() => {
                        self.hand_back();
                        return;
                    }
                };
                let mut ch = match opened {
                    Ok(ch) => ch,
                    Err(e) if e.is_connection_level() || session.conn.is_closed() => break,
                    Err(e) => {
                        tracing::warn!(error = %e, "could not open a publishing channel; retrying");
                        tokio::select! {
                            _ = tokio::time::sleep(Duration::from_millis(200)) => {}
                            _ = tokio::time::sleep_until(deadline), if self.closing.is_some() => {
                                self.hand_back();
                                return;
                            }
                        }
                        continue;
                    }
                };
                match self.pump(&mut ch, &session).await {
                    Exit::Done => {
                        let _ = tokio::time::timeout(Duration::from_secs(5), ch.close()).await;
                        return;
                    }
                    Exit::Channel => continue,
                    Exit::Connection => break,
                }
            }
        }
    }

    /// Exchanges in the declared topology exist on every session; others are checked once per
    /// channel with a passive declare.
    fn reset_verified(&mut self) {
        self.verified.clear();
        for e in self.conn.topology().exchanges {
            self.verified.insert(e.name);
        }
    }

    async fn open_channel(&mut self, session: &Session) -> Result<Channel, Error> {
        let mut ch = session.conn.open_channel().await?;
        ch.confirm_select().await?;
        self.shared
            .counters
            .channels
            .fetch_add(1, Ordering::Relaxed);
        let n = self.buf.len();
        if n > 0 {
            tracing::debug!(
                epoch = session.epoch,
                unconfirmed = n,
                "publishing channel open; re-publishing first"
            );
        }
        Ok(ch)
    }

    /// Waits for a session after `after`, still accepting messages. `None`: the task is done.
    async fn wait_session(&mut self, after: u64) -> Option<Result<Session, Error>> {
        let conn = self.conn.clone();
        let next = conn.next_session(after);
        tokio::pin!(next);
        loop {
            self.complete();
            if self.try_finish() {
                return None;
            }
            let deadline = self.close_deadline();
            tokio::select! {
                s = &mut next => return Some(s),
                cmd = self.rx.recv(), if self.rx_open => self.on_cmd(cmd),
                _ = tokio::time::sleep_until(deadline), if self.closing.is_some() => {
                    self.hand_back();
                    return None;
                }
            }
        }
    }

    /// Sends and settles on one channel until it or its connection is lost, or we are done.
    async fn pump(&mut self, ch: &mut Channel, session: &Session) -> Exit {
        let mut blocked = session.conn.blocked();
        let mut outbox_full = false;
        loop {
            if blocked.borrow().is_none() && !outbox_full {
                match self.send_ready(ch, session).await {
                    Ok(full) => outbox_full = full,
                    Err(exit) => return exit,
                }
            }
            self.complete();
            if self.try_finish() {
                return Exit::Done;
            }
            let retry = self.buf.next_retry().map(Instant::from_std);
            let deadline = self.close_deadline();
            tokio::select! {
                biased;
                ev = ch.recv() => {
                    if let Some(exit) = self.on_event(ev) {
                        return exit;
                    }
                    for _ in 0..DRAIN {
                        let Some(ev) = ch.try_recv() else { break };
                        if let Some(exit) = self.on_event(Some(ev)) {
                            return exit;
                        }
                    }
                }
                cmd = self.rx.recv(), if self.rx_open => self.on_cmd(cmd),
                r = blocked.changed() => {
                    if r.is_err() {
                        // The connection's tasks are gone; its Closed event follows on `ch`.
                        blocked = tokio::sync::watch::channel(None).1;
                    }
                }
                _ = session.conn.writable(), if outbox_full => outbox_full = false,
                _ = tokio::time::sleep_until(retry.unwrap_or(deadline)), if retry.is_some() => {
                    self.buf.wake_retries(std::time::Instant::now());
                }
                _ = tokio::time::sleep_until(deadline), if self.closing.is_some() => {
                    self.hand_back();
                    return Exit::Done;
                }
            }
        }
    }

    /// Writes every message the window allows, oldest first, in one outbox append per run of
    /// messages to verified exchanges. `Ok(true)`: the outbox is full, wait before more.
    async fn send_ready(&mut self, ch: &mut Channel, session: &Session) -> Result<bool, Exit> {
        let window = self.shared.config.window;
        let mut full = false;
        self.batch.clear();
        loop {
            if self.buf.in_flight() >= window || self.buf.suspect_in_flight() {
                break;
            }
            let in_flight = self.buf.in_flight();
            let Some(e) = self.buf.next_unsent() else {
                break;
            };
            if e.suspect && in_flight > 0 {
                break;
            }
            let seq = e.seq;
            if !(e.msg().exchange.is_empty() || self.verified.contains(&e.msg().exchange)) {
                let name = e.msg().exchange.clone();
                let id = e.msg().id().unwrap_or_default().to_string();
                full |= self.write_batch(ch);
                match self.verify(session, &name).await {
                    Ok(true) => {
                        self.verified.insert(name);
                    }
                    Ok(false) => {
                        let err = Error::ExchangeNotFound {
                            message_id: id,
                            exchange: name,
                        };
                        self.buf.fail(seq, err, &mut self.resolved);
                    }
                    Err(Exit::Done) => return Err(Exit::Done),
                    Err(exit) => {
                        // Take the confirms already received before calling the channel lost,
                        // so confirmed messages are not published again.
                        while let Some(ev) = ch.try_recv() {
                            if let Some(exit) = self.on_event(Some(ev)) {
                                return Err(exit);
                            }
                        }
                        self.buf.channel_lost(false);
                        return Err(exit);
                    }
                }
                continue;
            }
            // The broker may have negotiated a smaller frame than the publisher checked
            // against when it accepted the message: a header that does not fit would make it
            // close the whole connection, so it is this message's failure instead.
            let frame_max = session.conn.frame_max();
            if frame_max < self.shared.frame_max
                && let Err(why) = e.msg().check_header_fits(frame_max)
            {
                let id = e.msg().id().unwrap_or_default().to_string();
                let err = Error::InvalidMessage(format!("message {id}: {why}"));
                self.buf.fail(seq, err, &mut self.resolved);
                continue;
            }
            self.buf.mark_sent(seq);
            self.batch.push(seq);
        }
        full |= self.write_batch(ch);
        Ok(full)
    }

    /// Encodes the batch into the outbox under one lock. A failed write means the channel or
    /// connection is gone; its `Closed` event (next on the channel) settles that.
    fn write_batch(&mut self, ch: &Channel) -> bool {
        if self.batch.is_empty() {
            return false;
        }
        let mut republished = 0u64;
        let buf = &self.buf;
        let batch = &self.batch;
        let r = ch.write(|w| {
            for &seq in batch {
                let e = buf.entry(seq).expect("batched message is buffered");
                if e.publishes > 1 {
                    republished += 1;
                }
                let m = e.msg();
                w.publish(publish_frames(
                    &m.exchange,
                    &m.routing_key,
                    m.mandatory,
                    &m.properties,
                    &m.body,
                ));
            }
        });
        if republished > 0 {
            self.shared
                .counters
                .republished
                .fetch_add(republished, Ordering::Relaxed);
        }
        self.batch.clear();
        matches!(r, Ok((_, true)))
    }

    /// Whether `exchange` exists: passive declare on the probe channel. `Err` if the connection
    /// died meanwhile.
    async fn verify(&mut self, session: &Session, exchange: &str) -> Result<bool, Exit> {
        let deadline = self.close_deadline();
        let closing = self.closing.is_some();
        if self.probe.is_none() {
            let opened = tokio::select! {
                r = session.conn.open_channel() => r,
                _ = tokio::time::sleep_until(deadline), if closing => {
                    self.hand_back();
                    return Err(Exit::Done);
                }
            };
            match opened {
                Ok(c) => self.probe = Some(c),
                Err(_) if session.conn.is_closed() => return Err(Exit::Connection),
                Err(e) => {
                    // Cannot look (no channel to spare): let the publish itself find out.
                    tracing::debug!(error = %e, "no probe channel; publishing unchecked");
                    return Ok(true);
                }
            }
        }
        let probe = self.probe.as_mut().expect("opened above");
        let declared = tokio::select! {
            r = probe.exchange_declare(exchange, "direct", ExchangeFlags::PASSIVE, Default::default()) => r,
            _ = tokio::time::sleep_until(deadline), if closing => {
                self.hand_back();
                return Err(Exit::Done);
            }
        };
        match declared {
            Ok(()) => Ok(true),
            Err(Error::ChannelClosed { code: 404, .. }) => {
                self.probe = None;
                Ok(false)
            }
            Err(Error::ChannelClosed { code, text }) => {
                // Not ours to judge (e.g. no permission to look): let the publish itself
                // find out, one message at a time if the broker refuses it.
                tracing::debug!(exchange, code, %text, "passive declare refused");
                self.probe = None;
                Ok(true)
            }
            Err(_) if session.conn.is_closed() => {
                self.probe = None;
                Err(Exit::Connection)
            }
            Err(e) => {
                tracing::debug!(exchange, error = %e, "passive declare failed; publishing unchecked");
                self.probe = None;
                Ok(true)
            }
        }
    }

    fn on_event(&mut self, ev: Option<ChannelEvent>) -> Option<Exit> {
        match ev {
            Some(ChannelEvent::Ack { tag, multiple }) => {
                self.buf.ack(tag, multiple, &mut self.resolved);
            }
            Some(ChannelEvent::Nack { tag, multiple }) => {
                self.shared.counters.nacks.fetch_add(1, Ordering::Relaxed);
                let backoff = self.shared.config.nack_backoff;
                self.buf.nack(
                    tag,
                    multiple,
                    std::time::Instant::now(),
                    |n| backoff.delay(n.saturating_sub(1)),
                    &mut self.resolved,
                );
            }
            Some(ChannelEvent::Return(r)) => {
                self.shared.counters.returns.fetch_add(1, Ordering::Relaxed);
                match r.properties.message_id.as_deref() {
                    Some(id)
                        if self.buf.returned(
                            id,
                            &r.exchange,
                            &r.routing_key,
                            r.reply_code,
                            &r.reply_text,
                        ) => {}
                    id => tracing::warn!(
                        ?id,
                        code = r.reply_code,
                        exchange = %r.exchange,
                        routing_key = %r.routing_key,
                        "basic.return for no in-flight message"
                    ),
                }
            }
            Some(ChannelEvent::Closed(e)) if e.is_connection_level() && !frame_fault(&e) => {
                let n = self.buf.channel_lost(false);
                tracing::debug!(error = %e, unconfirmed = n, "publishing connection lost");
                return Some(Exit::Connection);
            }
            Some(ChannelEvent::Closed(e)) => {
                // A channel the broker closed, or a connection it closed over a frame it could
                // not take (a message it refused that badly): either way the in-flight messages
                // are suspects, re-sent one at a time, so one message can never wedge the
                // channel or the connection — the lone suspect in flight at the next close is
                // the culprit.
                let exit = if e.is_connection_level() {
                    Exit::Connection
                } else {
                    Exit::Channel
                };
                let (code, text) = match &e {
                    Error::ChannelClosed { code, text }
                    | Error::ConnectionClosed { code, text } => (*code, text.clone()),
                    other => (0, other.to_string()),
                };
                if let Some(seq) = self.buf.lone_suspect() {
                    let entry = self.buf.entry(seq).expect("suspect is buffered");
                    let message_id = entry.msg().id().unwrap_or_default().to_string();
                    let err = if code == 404 && text.contains("no exchange") {
                        Error::ExchangeNotFound {
                            message_id,
                            exchange: entry.msg().exchange.clone(),
                        }
                    } else {
                        Error::Refused {
                            message_id,
                            code,
                            text: text.clone(),
                        }
                    };
                    tracing::warn!(code, %text, "broker refused a message; failing it alone");
                    self.buf.fail(seq, err, &mut self.resolved);
                    self.buf.channel_lost(false);
                } else {
                    let n = self.buf.channel_lost(true);
                    tracing::warn!(code, %text, suspects = n, "publishing channel closed by the broker; re-sending one by one");
                }
                return Some(exit);
            }
            Some(
                ChannelEvent::Method(_) | ChannelEvent::Deliver(_) | ChannelEvent::Cancelled { .. },
            ) => {}
            None => {
                self.buf.channel_lost(false);
                return Some(Exit::Connection);
            }
        }
        None
    }

    fn on_cmd(&mut self, cmd: Option<Cmd>) {
        let mut next = cmd;
        let mut accepted = 0u64;
        for n in 1..=DRAIN {
            match next {
                None => {
                    self.rx_open = false;
                    break;
                }
                Some(Cmd::Publish { msg, size, reply }) => {
                    self.buf.push(msg, size, reply);
                    accepted += 1;
                }
                Some(Cmd::Close { timeout, reply }) => {
                    let deadline = Instant::now() + timeout;
                    let c = self.closing.get_or_insert(Closing {
                        deadline,
                        replies: Vec::new(),
                    });
                    c.deadline = c.deadline.min(deadline);
                    c.replies.push(reply);
                }
            }
            if n == DRAIN {
                break;
            }
            next = match self.rx.try_recv() {
                Ok(c) => Some(c),
                Err(mpsc::error::TryRecvError::Empty) => break,
                Err(mpsc::error::TryRecvError::Disconnected) => None,
            };
        }
        let c = &self.shared.counters;
        c.accepted.fetch_add(accepted, Ordering::Relaxed);
        self.gauges();
    }

    fn gauges(&self) {
        let c = &self.shared.counters;
        c.buffered.store(self.buf.len(), Ordering::Relaxed);
        let bytes = self.buf.bytes();
        c.buffered_bytes.store(bytes, Ordering::Relaxed);
        c.peak_buffered_bytes.fetch_max(bytes, Ordering::Relaxed);
    }

    /// Delivers verdicts and frees buffer room. Counters and room are updated first, so a
    /// caller that has its verdict never sees stats or room from before it.
    fn complete(&mut self) {
        if self.resolved.is_empty() {
            return;
        }
        let (mut ok, mut bytes) = (0u64, 0usize);
        for r in &self.resolved {
            ok += u64::from(r.verdict.is_ok());
            bytes += r.size;
        }
        let count = self.resolved.len();
        let c = &self.shared.counters;
        c.confirmed.fetch_add(ok, Ordering::Relaxed);
        c.failed.fetch_add(count as u64 - ok, Ordering::Relaxed);
        self.shared.count.add_permits(count);
        self.shared.bytes.add_permits(bytes);
        for mut r in self.resolved.drain(..) {
            let result = match r.verdict {
                Ok(()) => Ok(Confirmed {
                    message_id: r.msg.properties.message_id.take().unwrap_or_default(),
                    sequence: r.seq,
                    publishes: r.publishes,
                }),
                Err(error) => {
                    tracing::debug!(%error, "message failed");
                    Err(PublishError {
                        error,
                        message: Some(r.msg),
                    })
                }
            };
            if let Some(reply) = r.reply.take() {
                let _ = reply.send(result);
            }
        }
        self.gauges();
    }

    fn close_deadline(&self) -> Instant {
        self.closing.as_ref().map_or_else(
            || Instant::now() + Duration::from_secs(86_400),
            |c| c.deadline,
        )
    }

    /// Closing (or abandoned by every handle) and nothing left to confirm: refuses anything
    /// new, takes in what was accepted meanwhile, and finishes if that is nothing.
    fn try_finish(&mut self) -> bool {
        if !self.buf.is_empty() || (self.closing.is_none() && self.rx_open) {
            return false;
        }
        self.rx.close();
        while let Ok(cmd) = self.rx.try_recv() {
            self.on_cmd(Some(cmd));
        }
        if !self.buf.is_empty() {
            return false;
        }
        self.finish_close();
        true
    }

    fn finish_close(&mut self) {
        self.shared.close();
        if let Some(c) = self.closing.take() {
            for r in c.replies {
                let _ = r.send(Vec::new());
            }
        }
    }

    /// The close timeout passed: every unconfirmed message goes back to the caller.
    fn hand_back(&mut self) {
        self.shared.close();
        // Accept what was already let in, so it is handed back too; refuse the rest.
        self.rx.close();
        while let Ok(cmd) = self.rx.try_recv() {
            self.on_cmd(Some(cmd));
        }
        let left = self.buf.drain_unresolved();
        let mut msgs = Vec::with_capacity(left.len());
        let (count, bytes) = (left.len(), left.iter().map(|e| e.size).sum::<usize>());
        for mut e in left {
            let msg = e.take_msg();
            msgs.push((*msg).clone());
            if let Some(reply) = e.take_reply() {
                let _ = reply.send(Err(PublishError {
                    error: Error::HandedBack,
                    message: Some(msg),
                }));
            }
        }
        tracing::info!(
            handed_back = msgs.len(),
            "publisher closed with unconfirmed messages"
        );
        self.shared.count.add_permits(count);
        self.shared.bytes.add_permits(bytes);
        self.shared
            .counters
            .failed
            .fetch_add(count as u64, Ordering::Relaxed);
        self.gauges();
        if let Some(c) = self.closing.take() {
            let mut replies = c.replies.into_iter();
            if let Some(first) = replies.next() {
                let _ = first.send(msgs);
            }
            for r in replies {
                let _ = r.send(Vec::new());
            }
        }
    }

    /// The connection gave up for good: every message fails with that reason, and so does
    /// every later one.
    async fn fail_everything(mut self, fatal: Error) {
        tracing::error!(error = %fatal, "publisher stopping: the connection gave up");
        self.shared.fail(fatal.clone());
        loop {
            let left = self.buf.drain_unresolved();
            let count = left.len();
            let bytes = left.iter().map(|e| e.size).sum::<usize>();
            for mut e in left {
                let msg = e.take_msg();
                if let Some(reply) = e.take_reply() {
                    let _ = reply.send(Err(PublishError {
                        error: fatal.clone(),
                        message: Some(msg),
                    }));
                }
            }
            self.shared
                .counters
                .failed
                .fetch_add(count as u64, Ordering::Relaxed);
            self.shared.count.add_permits(count);
            self.shared.bytes.add_permits(bytes);
            self.gauges();
            if let Some(c) = self.closing.take() {
                for r in c.replies {
                    let _ = r.send(Vec::new());
                }
            }
            if !self.rx_open {
                return;
            }
            let cmd = self.rx.recv().await;
            self.on_cmd(cmd);
        }
    }
}

/// A connection the broker closed over a frame it could not accept (501 FRAME_ERROR,
/// 502 SYNTAX_ERROR, 505 UNEXPECTED_FRAME, 541 INTERNAL_ERROR): what we just wrote may be the
/// cause, so the in-flight messages are treated as suspects, not simply re-sent.
fn frame_fault(e: &Error) -> bool {
    matches!(
        e,
        Error::ConnectionClosed {
            code: 501 | 502 | 505 | 541,
            ..
        }
    )
}
