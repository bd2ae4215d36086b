//! The publisher's buffer: every accepted message, in acceptance order, until the broker's
//! verdict. It belongs to the publisher, not to a channel, so a lost channel or connection
//! loses nothing: [`Buffer::channel_lost`] turns every in-flight message back into unsent, and
//! sending restarts from the oldest — so they go out first, in their original order.
//!
//! Confirms are matched by our own bookkeeping: on each channel, delivery tags count from 1 in
//! publish order, and `in_flight[i]` is the sequence number published with tag `first_tag + i`.
//! Pure logic: no I/O, tested with plain values.

use crate::error::Error;
use crate::message::Message;
use std::collections::VecDeque;
use std::time::{Duration, Instant};

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

#[derive(Debug)]
pub(crate) struct Entry<R> {
    pub seq: u64,
    /// Boxed: entries move through channels and queues; a pointer moves cheaper than a message.
    /// `None` only once resolved.
    msg: Option<Box<Message>>,
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
    pub verdict: Result<(), Error>,
}

#[derive(Debug)]
pub(crate) struct Buffer<R> {
    entries: VecDeque<Entry<R>>,
    /// Sequence number of `entries[0]`.
    base: u64,
    next_seq: u64,
    /// Index before which no entry is `Unsent`.
    cursor: usize,
    in_flight: VecDeque<u64>,
    first_tag: u64,
    next_tag: u64,
    inflight: usize,
    suspects_in_flight: usize,
    unresolved: usize,
    bytes: usize,
    /// Entries in `RetryAt`: when 0, nothing to scan for.
    retrying: usize,
    max_nacks: u32,
}

impl<R> Buffer<R> {
    pub(crate) fn new(max_nacks: u32) -> Self {
        Buffer {
            entries: VecDeque::new(),
            base: 0,
            next_seq: 0,
            cursor: 0,
            in_flight: VecDeque::new(),
            first_tag: 1,
            next_tag: 1,
            inflight: 0,
            suspects_in_flight: 0,
            unresolved: 0,
            bytes: 0,
            retrying: 0,
            max_nacks,
        }
    }

    /// Accepts a message; returns its sequence number.
    pub(crate) fn push(&mut self, msg: Box<Message>, size: usize, reply: R) -> u64 {
        let seq = self.next_seq;
        self.next_seq += 1;
        self.entries.push_back(Entry {
            seq,
            msg: Some(msg),
            reply: Some(reply),
            state: State::Unsent,
            publishes: 0,
            nacks: 0,
            returned: None,
            suspect: false,
            size,
        });
        self.unresolved += 1;
        self.bytes += size;
        seq
    }

    /// Messages without a verdict.
    pub(crate) fn len(&self) -> usize {
        self.unresolved
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.unresolved == 0
    }

    pub(crate) fn bytes(&self) -> usize {
        self.bytes
    }

    pub(crate) fn in_flight(&self) -> usize {
        self.inflight
    }

    pub(crate) fn suspect_in_flight(&self) -> bool {
        self.suspects_in_flight > 0
    }

    fn index(&self, seq: u64) -> Option<usize> {
        seq.checked_sub(self.base)
            .map(|i| i as usize)
            .filter(|&i| i < self.entries.len())
    }

    pub(crate) fn entry(&self, seq: u64) -> Option<&Entry<R>> {
        self.index(seq).map(|i| &self.entries[i])
    }

    /// The oldest message waiting to be sent, if any.
    pub(crate) fn next_unsent(&mut self) -> Option<&Entry<R>> {
        while self.cursor < self.entries.len() {
            if self.entries[self.cursor].state == State::Unsent {
                return Some(&self.entries[self.cursor]);
            }
            self.cursor += 1;
        }
        None
    }

    /// Records that the message at the cursor (from [`next_unsent`](Self::next_unsent)) was
    /// written on the current channel; returns its delivery tag.
    pub(crate) fn mark_sent(&mut self, seq: u64) -> u64 {
        let i = self.index(seq).expect("mark_sent of a buffered message");
        let tag = self.next_tag;
        self.next_tag += 1;
        let e = &mut self.entries[i];
        debug_assert_eq!(e.state, State::Unsent);
        e.state = State::InFlight { tag };
        e.publishes += 1;
        e.returned = None;
        if e.suspect {
            self.suspects_in_flight += 1;
        }
        self.in_flight.push_back(seq);
        self.inflight += 1;
        if self.cursor == i {
            self.cursor += 1;
        }
        tag
    }

    /// The broker confirmed `tag` (and every earlier tag if `multiple`).
    pub(crate) fn ack(&mut self, tag: u64, multiple: bool, out: &mut Vec<Resolved<R>>) {
        self.settle(tag, multiple, out, |b, i, out| {
            let verdict = match b.entries[i].returned.take() {
                Some((reply_code, reply_text)) => Err(Error::Unroutable {
                    message_id: b.entries[i].msg().id().unwrap_or_default().to_string(),
                    reply_code,
                    reply_text,
                }),
                None => Ok(()),
            };
            b.resolve(i, verdict, out);
        });
    }

    /// The broker nacked `tag` (and every earlier tag if `multiple`): retry later, or fail
    /// after `max_nacks` nacks.
    pub(crate) fn nack(
        &mut self,
        tag: u64,
        multiple: bool,
        now: Instant,
        backoff: impl Fn(u32) -> Duration,
        out: &mut Vec<Resolved<R>>,
    ) {
        self.settle(tag, multiple, out, |b, i, out| {
            let e = &mut b.entries[i];
            e.nacks += 1;
            if e.nacks > b.max_nacks {
                let err = Error::Nacked {
                    message_id: e.msg().id().unwrap_or_default().to_string(),
                    attempts: e.nacks,
                };
                b.resolve(i, Err(err), out);
            } else {
                let at = now + backoff(e.nacks);
                b.leave_flight(i);
                b.entries[i].state = State::RetryAt(at);
                b.retrying += 1;
            }
        });
    }

    fn settle(
        &mut self,
        tag: u64,
        multiple: bool,
        out: &mut Vec<Resolved<R>>,
        mut f: impl FnMut(&mut Self, usize, &mut Vec<Resolved<R>>),
    ) {
        if tag < self.first_tag || tag >= self.next_tag {
            tracing::warn!(tag, "confirm for an unknown delivery tag ignored");
            return;
        }
        let lo = if multiple { self.first_tag } else { tag };
        for t in lo..=tag {
            let seq = self.in_flight[(t - self.first_tag) as usize];
            if let Some(i) = self.index(seq)
                && self.entries[i].state == (State::InFlight { tag: t })
            {
                f(self, i, out);
            }
        }
        while let Some(&seq) = self.in_flight.front() {
            let live = self.index(seq).is_some_and(|i| {
                self.entries[i].state
                    == (State::InFlight {
                        tag: self.first_tag,
                    })
            });
            if live {
                break;
            }
            self.in_flight.pop_front();
            self.first_tag += 1;
        }
        self.pop_done();
    }

    fn leave_flight(&mut self, i: usize) {
        if matches!(self.entries[i].state, State::InFlight { .. }) {
            self.inflight -= 1;
            if self.entries[i].suspect {
                self.suspects_in_flight -= 1;
            }
        }
    }

    fn resolve(&mut self, i: usize, verdict: Result<(), Error>, out: &mut Vec<Resolved<R>>) {
        self.leave_flight(i);
        let e = &mut self.entries[i];
        if e.state == State::Done {
            return;
        }
        if matches!(e.state, State::RetryAt(_)) {
            self.retrying -= 1;
        }
        e.state = State::Done;
        e.suspect = false;
        self.unresolved -= 1;
        self.bytes -= e.size;
        out.push(Resolved {
            seq: e.seq,
            msg: e.take_msg(),
            reply: e.reply.take(),
            publishes: e.publishes,
            size: e.size,
            verdict,
        });
    }

    /// Gives a message its final error (exchange missing, refused by the broker, …).
    pub(crate) fn fail(&mut self, seq: u64, err: Error, out: &mut Vec<Resolved<R>>) {
        if let Some(i) = self.index(seq) {
            self.resolve(i, Err(err), out);
            self.pop_done();
        }
    }

    fn pop_done(&mut self) {
        while self.entries.front().is_some_and(|e| e.state == State::Done) {
            self.entries.pop_front();
            self.base += 1;
            self.cursor = self.cursor.saturating_sub(1);
        }
    }

    /// A `mandatory` message came back: marks the in-flight mandatory message with the lowest tag
    /// that has the same `message_id`, exchange and routing key and is not marked yet (matched by
    /// what the broker echoes, never by position). Its confirm, which follows, fails it. A message
    /// published without `mandatory` is never returned, so it is never marked.
    ///
    /// The broker returns in publish order on a channel, so when one id goes to several
    /// destinations, the destination tells the copies apart, and for copies to one destination
    /// the lowest unmarked tag is the one returned.
    pub(crate) fn returned(
        &mut self,
        message_id: &str,
        exchange: &str,
        routing_key: &str,
        code: u16,
        text: &str,
    ) -> bool {
        for &seq in &self.in_flight {
            if let Some(i) = self.index(seq) {
                let e = &mut self.entries[i];
                if matches!(e.state, State::InFlight { .. })
                    && e.returned.is_none()
                    && e.msg().mandatory
                    && e.msg().id() == Some(message_id)
                    && e.msg().exchange == exchange
                    && e.msg().routing_key == routing_key
                {
                    e.returned = Some((code, text.to_string()));
                    return true;
                }
            }
        }
        false
    }

    /// The single in-flight message while only suspects are being re-sent one by one: the
    /// message the broker refused if the channel closes now.
    pub(crate) fn lone_suspect(&self) -> Option<u64> {
        if self.inflight == 1 && self.suspects_in_flight == 1 {
            self.in_flight.iter().copied().find(|&seq| {
                self.entry(seq)
                    .is_some_and(|e| matches!(e.state, State::InFlight { .. }))
            })
        } else {
            None
        }
    }

    /// The channel is gone: every in-flight message is unsent again (to go out first, in order,
    /// on the next channel, whose tags start at 1). `suspect` marks them for one-by-one
    /// re-sending. Returns how many were in flight.
    pub(crate) fn channel_lost(&mut self, suspect: bool) -> usize {
        let n = self.inflight;
        for &seq in &self.in_flight {
            if let Some(i) = seq
                .checked_sub(self.base)
                .map(|i| i as usize)
                .filter(|&i| i < self.entries.len())
            {
                let e = &mut self.entries[i];
                if matches!(e.state, State::InFlight { .. }) {
                    e.state = State::Unsent;
                    e.suspect |= suspect;
                }
            }
        }
        self.in_flight.clear();
        self.first_tag = 1;
        self.next_tag = 1;
        self.inflight = 0;
        self.suspects_in_flight = 0;
        self.cursor = 0;
        n
    }

    /// When the next nacked message is due again.
    pub(crate) fn next_retry(&self) -> Option<Instant> {
        if self.retrying == 0 {
            return None;
        }
        self.entries
            .iter()
            .filter_map(|e| match e.state {
                State::RetryAt(t) => Some(t),
                _ => None,
            })
            .min()
    }

    /// Makes nacked messages whose time has come unsent again.
    pub(crate) fn wake_retries(&mut self, now: Instant) {
        for i in 0..self.entries.len() {
            if let State::RetryAt(t) = self.entries[i].state
                && t <= now
            {
                self.retrying -= 1;
                self.entries[i].state = State::Unsent;
                self.cursor = self.cursor.min(i);
            }
        }
    }

    /// Takes every message without a verdict, oldest first (for close and fatal errors).
    pub(crate) fn drain_unresolved(&mut self) -> Vec<Entry<R>> {
        let out: Vec<_> = self
            .entries
            .drain(..)
            .filter(|e| e.state != State::Done)
            .collect();
        self.base = self.next_seq;
        self.cursor = 0;
        self.in_flight.clear();
        self.first_tag = 1;
        self.next_tag = 1;
        self.inflight = 0;
        self.suspects_in_flight = 0;
        self.unresolved = 0;
        self.bytes = 0;
        self.retrying = 0;
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(i: u64) -> Message {
        Message::to_queue("q", format!("{i}")).message_id(format!("id-{i}"))
    }

    fn buffer(n: u64) -> Buffer<()> {
        let mut b = Buffer::new(2);
        for i in 0..n {
            b.push(Box::new(msg(i)), 1, ());
        }
        b
    }

    /// Sends up to `n` messages; returns (seq, tag) pairs.
    fn send(b: &mut Buffer<()>, n: usize) -> Vec<(u64, u64)> {
        let mut out = Vec::new();
        while out.len() < n {
            let Some(e) = b.next_unsent() else { break };
            let seq = e.seq;
            out.push((seq, b.mark_sent(seq)));
        }
        out
    }

    fn seqs(r: &[Resolved<()>]) -> Vec<u64> {
        r.iter().map(|r| r.seq).collect()
    }

    #[test]
    fn tags_follow_publish_order_and_multiple_acks_settle_a_prefix() {
        let mut b = buffer(5);
        assert_eq!(send(&mut b, 5), [(0, 1), (1, 2), (2, 3), (3, 4), (4, 5)]);
        let mut out = Vec::new();
        b.ack(3, true, &mut out);
        assert_eq!(seqs(&out), [0, 1, 2]);
        assert!(out.iter().all(|r| r.verdict.is_ok()));
        assert_eq!((b.len(), b.in_flight()), (2, 2));
        out.clear();
        b.ack(5, false, &mut out);
        assert_eq!(seqs(&out), [4]);
        b.ack(4, false, &mut out);
        assert_eq!(seqs(&out), [4, 3]);
        assert!(b.is_empty());
        assert_eq!(b.bytes(), 0);
    }

    #[test]
    fn out_of_order_single_acks_then_a_multiple_ack() {
        let mut b = buffer(4);
        send(&mut b, 4);
        let mut out = Vec::new();
        b.ack(2, false, &mut out);
        b.ack(4, true, &mut out);
        assert_eq!(seqs(&out), [1, 0, 2, 3]);
        assert!(b.is_empty());
    }

    #[test]
    fn a_lost_channel_resends_everything_unconfirmed_first_in_order() {
        let mut b = buffer(6);
        send(&mut b, 4); // 0..3 in flight on epoch 1
        let mut out = Vec::new();
        b.ack(2, false, &mut out); // seq 1 confirmed out of order
        assert_eq!(b.channel_lost(false), 3);
        // Tags restart at 1 on the new channel; the unconfirmed go first, oldest first,
        // then the never-sent ones.
        assert_eq!(send(&mut b, 10), [(0, 1), (2, 2), (3, 3), (4, 4), (5, 5)]);
        assert_eq!(b.entry(0).unwrap().publishes, 2);
        assert_eq!(b.entry(4).unwrap().publishes, 1);
        // A late ack of the old channel's tag 2 would now mean seq 2 — callers drop the old
        // channel's events; here the new channel acks everything.
        b.ack(5, true, &mut out);
        assert_eq!(seqs(&out), [1, 0, 2, 3, 4, 5]);
    }

    #[test]
    fn unknown_tags_are_ignored() {
        let mut b = buffer(2);
        send(&mut b, 1);
        let mut out = Vec::new();
        b.ack(7, true, &mut out);
        b.ack(0, false, &mut out);
        assert!(out.is_empty());
        assert_eq!(b.len(), 2);
    }

    #[test]
    fn returns_match_by_message_id_not_position() {
        let mut b: Buffer<()> = Buffer::new(2);
        for id in ["a", "b", "a"] {
            b.push(Box::new(Message::to_queue("q", "x").message_id(id)), 1, ());
        }
        send(&mut b, 3);
        assert!(b.returned("a", "", "q", 312, "NO_ROUTE"));
        assert!(b.returned("a", "", "q", 312, "NO_ROUTE"));
        assert!(
            !b.returned("a", "", "q", 312, "NO_ROUTE"),
            "both a's already marked"
        );
        assert!(!b.returned("zzz", "", "q", 312, "NO_ROUTE"));
        let mut out = Vec::new();
        b.ack(3, true, &mut out);
        let verdicts: Vec<_> = out.iter().map(|r| r.verdict.is_ok()).collect();
        assert_eq!(verdicts, [false, true, false]);
        assert!(matches!(
            out[0].verdict,
            Err(Error::Unroutable {
                reply_code: 312,
                ..
            })
        ));
    }

    #[test]
    fn a_return_marks_the_copy_sent_to_the_returned_destination() {
        // One business id fanned out to two queues; only the newer copy is unroutable.
        let mut b: Buffer<()> = Buffer::new(2);
        b.push(
            Box::new(Message::to_queue("routable", "x").message_id("e-1")),
            1,
            (),
        );
        b.push(
            Box::new(Message::to_queue("nowhere", "x").message_id("e-1")),
            1,
            (),
        );
        b.push(
            Box::new(Message::new("ex", "rk", "x").message_id("e-1")),
            1,
            (),
        );
        send(&mut b, 3);
        assert!(b.returned("e-1", "", "nowhere", 312, "NO_ROUTE"));
        assert!(!b.returned("e-1", "other", "nowhere", 312, "NO_ROUTE"));
        let mut out = Vec::new();
        b.ack(3, true, &mut out);
        let verdicts: Vec<_> = out.iter().map(|r| r.verdict.is_ok()).collect();
        assert_eq!(verdicts, [true, false, true]);
    }

    #[test]
    fn a_return_never_marks_a_copy_sent_without_mandatory() {
        // The same id to the same unroutable queue, first without mandatory (dropped and acked),
        // then with it (returned): the return is the second copy's even while the first one's
        // ack is still to come.
        let mut b: Buffer<()> = Buffer::new(2);
        for mandatory in [false, true] {
            let m = Message::to_queue("nowhere", "x")
                .message_id("e-1")
                .mandatory(mandatory);
            b.push(Box::new(m), 1, ());
        }
        send(&mut b, 2);
        assert!(b.returned("e-1", "", "nowhere", 312, "NO_ROUTE"));
        assert!(!b.returned("e-1", "", "nowhere", 312, "NO_ROUTE"));
        let mut out = Vec::new();
        b.ack(1, false, &mut out);
        b.ack(2, false, &mut out);
        let verdicts: Vec<_> = out.iter().map(|r| (r.seq, r.verdict.is_ok())).collect();
        assert_eq!(verdicts, [(0, true), (1, false)]);
    }

    #[test]
    fn nacks_retry_with_backoff_then_fail() {
        let mut b = buffer(2);
        let t0 = Instant::now();
        let backoff = |n: u32| Duration::from_millis(100 * n as u64);
        let mut out = Vec::new();
        send(&mut b, 2);
        b.nack(1, false, t0, backoff, &mut out);
        assert!(out.is_empty());
        assert_eq!(b.next_retry(), Some(t0 + Duration::from_millis(100)));
        assert!(b.next_unsent().is_none(), "not due yet");
        b.wake_retries(t0 + Duration::from_millis(100));
        assert_eq!(send(&mut b, 5), [(0, 3)]);
        b.nack(3, false, t0, backoff, &mut out);
        b.wake_retries(t0 + Duration::from_secs(1));
        send(&mut b, 5);
        b.nack(4, false, t0, backoff, &mut out);
        assert_eq!(seqs(&out), [0]);
        assert!(matches!(
            out[0].verdict,
            Err(Error::Nacked { attempts: 3, .. })
        ));
        b.ack(2, false, &mut out);
        assert!(b.is_empty());
    }

    #[test]
    fn suspects_are_found_one_at_a_time() {
        let mut b = buffer(3);
        send(&mut b, 3);
        b.channel_lost(true);
        assert_eq!(b.lone_suspect(), None);
        assert_eq!(send(&mut b, 1), [(0, 1)]);
        assert!(b.suspect_in_flight());
        assert_eq!(b.lone_suspect(), Some(0));
        let mut out = Vec::new();
        b.ack(1, false, &mut out);
        assert!(!b.suspect_in_flight());
        send(&mut b, 1);
        assert_eq!(b.lone_suspect(), Some(1));
        b.fail(1, Error::PublisherClosed, &mut out);
        assert_eq!(seqs(&out), [0, 1]);
        assert!(!b.suspect_in_flight());
        assert_eq!(b.len(), 1);
    }

    #[test]
    fn byte_count_follows_verdicts() {
        let mut b: Buffer<()> = Buffer::new(0);
        b.push(Box::new(msg(0)), 100, ());
        b.push(Box::new(msg(1)), 50, ());
        assert_eq!(b.bytes(), 150);
        send(&mut b, 2);
        let mut out = Vec::new();
        b.ack(1, false, &mut out);
        assert_eq!(b.bytes(), 50);
        let rest = b.drain_unresolved();
        assert_eq!(rest.len(), 1);
        assert_eq!(rest[0].seq, 1);
        assert_eq!((b.len(), b.bytes()), (0, 0));
    }
}

#[cfg(test)]
#[path = "buffer_model.rs"]
mod model;
