//! One buffered message and where it stands ([`State`], [`Entry`]), and a message whose
//! verdict is in ([`Resolved`]).

use crate::error::Error;
use crate::message::Message;
use std::time::Instant;

/// Where a buffered message stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum State {
    /// Waiting to be written on the current channel.
    Unsent,
    /// Written on the current channel with this delivery tag; no verdict yet.
    InFlight { tag: u64 },
    /// Nacked; to be published again at this time.
    RetryAt(Instant),
    /// Verdict given; waiting to be popped off the front.
    Done,
}

/// One accepted message, from acceptance to its verdict; `R` is where its verdict goes.
#[derive(Debug)]
pub(crate) struct Entry<R> {
    pub seq: u64,
    /// Boxed: entries move through channels and queues; a pointer moves cheaper than a message.
    /// `None` only once resolved.
    pub(super) msg: Option<Box<Message>>,
    pub reply: Option<R>,
    pub state: State,
    /// How many times it was written to a channel.
    pub publishes: u32,
    pub nacks: u32,
    /// Set by `basic.return`; the verdict at its confirm is then `Unroutable`.
    pub returned: Option<(u16, String)>,
    /// In flight when a channel was closed by the broker for a reason we could not attribute:
    /// such messages are re-sent one at a time to find the one the broker refuses.
    pub suspect: bool,
    pub size: usize,
    /// When it was accepted (read once per batch of commands): its confirm latency starts here.
    pub accepted: Instant,
}

impl<R> Entry<R> {
    /// The message (always there while the entry is unresolved).
    pub(crate) fn msg(&self) -> &Message {
        self.msg
            .as_deref()
            .expect("an unresolved entry has its message")
    }

    pub(crate) fn take_msg(&mut self) -> Box<Message> {
        self.msg
            .take()
            .expect("an unresolved entry has its message")
    }

    pub(crate) fn take_reply(&mut self) -> Option<R> {
        self.reply.take()
    }
}

/// A message whose verdict is in: `Ok` confirmed, `Err` failed for good.
#[derive(Debug)]
pub(crate) struct Resolved<R> {
    pub seq: u64,
    pub msg: Box<Message>,
    pub reply: Option<R>,
    pub publishes: u32,
    pub size: usize,
    pub accepted: Instant,
    pub verdict: Result<(), Error>,
}
