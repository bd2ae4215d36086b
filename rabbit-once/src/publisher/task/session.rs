//! The task's session loop: wait for a session, open a channel on it, and pump — send, read
//! the channel's events and the handles' commands — until the channel or connection is lost.

use super::close::{Closing, HandedBack, sleep_until_some};
use crate::connection::{Connection, Session};
use crate::error::Error;
use crate::publisher::buffer::{Buffer, Resolved};
use crate::publisher::confirmation::Reply;
use crate::publisher::handle::Cmd;
use crate::publisher::shared::PublisherShared;
use crate::transport::Channel;
use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;
use tokio::time::Instant;

/// How many commands or events to take in one go before looking at the other side.
pub(super) const DRAIN: usize = 512;

/// How often the buffer's gauges are refreshed while it holds messages and nothing else
/// happens (the oldest unconfirmed message's age).
const GAUGES_EVERY: Duration = Duration::from_secs(1);

/// The publisher's task, started by [`Publisher::new`](crate::Publisher::new): runs until the
/// publisher is closed, or every handle is gone and the buffer is empty.
pub(in crate::publisher) async fn run(
    connection: Connection,
    rx: mpsc::UnboundedReceiver<Cmd>,
    shared: Arc<PublisherShared>,
) {
    let max_nacks = shared.config.nack_retries;
    Task {
        connection,
        rx,
        rx_open: true,
        shared,
        buf: Buffer::new(max_nacks),
        resolved: Vec::new(),
        closing: None,
        verified: HashSet::new(),
        probe: None,
        batch: Vec::new(),
        recycle: false,
    }
    .run()
    .await;
}

/// Why `pump` returned.
pub(super) enum Exit {
    /// The channel is gone but the connection may live: open another one.
    Channel,
    /// The connection is gone: wait for the next session.
    Connection,
    /// Closed (drained or handed back), or every handle dropped and the buffer empty.
    Done,
}

/// The task's state: the buffer, the handles' command channel, and what the current session
/// knows (verified exchanges, the probe channel).
pub(super) struct Task {
    /// The connection handle the sessions come from (each session has its own link,
    /// `session.link`).
    pub(super) connection: Connection,
    pub(super) rx: mpsc::UnboundedReceiver<Cmd>,
    pub(super) rx_open: bool,
    pub(super) shared: Arc<PublisherShared>,
    pub(super) buf: Buffer<Reply>,
    pub(super) resolved: Vec<Resolved<Reply>>,
    pub(super) closing: Option<Closing>,
    /// Exchanges known to exist in this session (checked with a passive declare).
    pub(super) verified: HashSet<String>,
    /// A channel for passive declares, so a missing exchange never closes the publishing one.
    pub(super) probe: Option<Channel>,
    pub(super) batch: Vec<u64>,
    /// The channel nacked a message: send nothing more on it, and once everything in flight on
    /// it is settled, close it and go on with a fresh one. RabbitMQ 3.10 keeps nacking every
    /// publish to a quorum queue on a channel that first published to it while the queue's
    /// leader was being replaced, long after a new leader took over; a new channel is fine.
    pub(super) recycle: bool,
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
                let opened = match self
                    .unless_close_deadline(async |t| t.open_channel(&session).await)
                    .await
                {
                    Ok(opened) => opened,
                    Err(HandedBack) => return,
                };
                let mut ch = match opened {
                    Ok(ch) => ch,
                    Err(e) if e.is_connection_level() || session.link.is_closed() => break,
                    Err(e) => {
                        tracing::warn!(error = %e, "could not open a publishing channel; retrying");
                        let pause = async |_: &mut Self| {
                            tokio::time::sleep(Duration::from_millis(200)).await;
                        };
                        if let Err(HandedBack) = self.unless_close_deadline(pause).await {
                            return;
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
        for e in self.connection.topology().exchanges {
            self.verified.insert(e.name);
        }
    }

    async fn open_channel(&mut self, session: &Session) -> Result<Channel, Error> {
        let mut ch = session.link.open_channel().await?;
        ch.confirm_select().await?;
        self.recycle = false;
        self.shared.counters.channels.add(1);
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
        let connection = self.connection.clone();
        let next = connection.next_session(after);
        tokio::pin!(next);
        let mut gauges_due = None;
        loop {
            self.complete();
            if self.try_finish() {
                return None;
            }
            let due = self.gauges_due(&mut gauges_due);
            let woke = self
                .unless_close_deadline(async |t| {
                    tokio::select! {
                        s = &mut next => Some(s),
                        cmd = t.rx.recv(), if t.rx_open => {
                            t.on_cmd(cmd);
                            None
                        }
                        _ = sleep_until_some(due) => {
                            gauges_due = None;
                            t.gauges();
                            None
                        }
                    }
                })
                .await;
            match woke {
                Ok(Some(session)) => return Some(session),
                Ok(None) => {}
                Err(HandedBack) => return None,
            }
        }
    }

    /// When the buffer's gauges are next refreshed with no other event (`due`, armed
    /// [`GAUGES_EVERY`] ahead while the buffer holds messages): the oldest message's age keeps
    /// moving while the broker confirms nothing or the connection is down.
    fn gauges_due(&self, due: &mut Option<Instant>) -> Option<Instant> {
        if self.buf.is_empty() {
            *due = None;
        } else if due.is_none() {
            *due = Some(Instant::now() + GAUGES_EVERY);
        }
        *due
    }

    /// Sends and settles on one channel until it or its connection is lost, or we are done.
    async fn pump(&mut self, ch: &mut Channel, session: &Session) -> Exit {
        let mut blocked = session.link.blocked();
        let mut outbox_full = false;
        let mut gauges_due = None;
        loop {
            if self.recycle {
                if self.buf.in_flight() == 0 {
                    // Nothing in flight: no confirm is lost with the channel.
                    self.buf.channel_lost(false);
                    let _ = tokio::time::timeout(Duration::from_secs(5), ch.close()).await;
                    return Exit::Channel;
                }
            } else if blocked.borrow().is_none() && !outbox_full {
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
            let due = self.gauges_due(&mut gauges_due);
            let woke = self
                .unless_close_deadline(async |t| {
                    tokio::select! {
                        biased;
                        ev = ch.recv() => {
                            if let Some(exit) = t.on_event(ev) {
                                return Some(exit);
                            }
                            for _ in 0..DRAIN {
                                let Some(ev) = ch.try_recv() else { break };
                                if let Some(exit) = t.on_event(Some(ev)) {
                                    return Some(exit);
                                }
                            }
                        }
                        cmd = t.rx.recv(), if t.rx_open => t.on_cmd(cmd),
                        r = blocked.changed() => {
                            if r.is_err() {
                                // The connection's tasks are gone; its Closed event
                                // follows on `ch`.
                                blocked = tokio::sync::watch::channel(None).1;
                            }
                        }
                        _ = session.link.writable(), if outbox_full => outbox_full = false,
                        _ = sleep_until_some(retry) => {
                            t.buf.wake_retries(std::time::Instant::now());
                        }
                        _ = sleep_until_some(due) => {
                            gauges_due = None;
                            t.gauges();
                        }
                    }
                    None
                })
                .await;
            match woke {
                Ok(Some(exit)) => return exit,
                Ok(None) => {}
                Err(HandedBack) => return Exit::Done,
            }
        }
    }
}
