//! [`Buffer`] itself: accepted messages in acceptance order, the send cursor, what a lost
//! channel turns back into unsent, nacked messages waiting for their retry, and the drain.

use super::entry::{Entry, State};
use crate::message::Message;
use std::collections::VecDeque;
use std::time::Instant;

/// Every accepted message in acceptance order until its verdict, with the current channel's
/// delivery tags; `R` is where each verdict goes (the task's reply sender).
#[derive(Debug)]
pub(crate) struct Buffer<R> {
    pub(super) entries: VecDeque<Entry<R>>,
    /// Sequence number of `entries[0]`.
    pub(super) base: u64,
    pub(super) next_seq: u64,
    /// Index before which no entry is `Unsent`.
    pub(super) cursor: usize,
    /// The sequence number published with each delivery tag of the current channel, from
    /// `first_tag` to `next_tag - 1`: `tag_seqs[i]` went out with tag `first_tag + i`. It keeps
    /// a settled tag until every tag before it is settled, so it may be longer than `in_flight`.
    pub(super) tag_seqs: VecDeque<u64>,
    pub(super) first_tag: u64,
    pub(super) next_tag: u64,
    /// Messages in `InFlight` (sent on the current channel, no verdict yet).
    pub(super) in_flight: usize,
    /// Of those, how many are suspects.
    pub(super) suspects_in_flight: usize,
    pub(super) unresolved: usize,
    pub(super) bytes: usize,
    /// Entries in `RetryAt`: when 0, nothing to scan for.
    pub(super) retrying: usize,
    pub(super) max_nacks: u32,
}

impl<R> Buffer<R> {
    pub(crate) fn new(max_nacks: u32) -> Self {
        Buffer {
            entries: VecDeque::new(),
            base: 0,
            next_seq: 0,
            cursor: 0,
            tag_seqs: VecDeque::new(),
            first_tag: 1,
            next_tag: 1,
            in_flight: 0,
            suspects_in_flight: 0,
            unresolved: 0,
            bytes: 0,
            retrying: 0,
            max_nacks,
        }
    }

    /// Accepts a message (at `accepted`); returns its sequence number.
    pub(crate) fn push(
        &mut self,
        msg: Box<Message>,
        size: usize,
        reply: R,
        accepted: Instant,
    ) -> u64 {
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
            accepted,
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
        self.in_flight
    }

    /// When the oldest message without a verdict was accepted (settled ones leave the front
    /// as they settle, so this looks at the first entry or few).
    pub(crate) fn oldest_accepted(&self) -> Option<Instant> {
        if self.unresolved == 0 {
            return None;
        }
        self.entries
            .iter()
            .find(|e| e.state != State::Done)
            .map(|e| e.accepted)
    }

    pub(crate) fn suspect_in_flight(&self) -> bool {
        self.suspects_in_flight > 0
    }

    pub(super) fn index(&self, seq: u64) -> Option<usize> {
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
        self.tag_seqs.push_back(seq);
        self.in_flight += 1;
        if self.cursor == i {
            self.cursor += 1;
        }
        tag
    }

    /// The channel is gone: every in-flight message is unsent again (to go out first, in order,
    /// on the next channel, whose tags start at 1). `suspect` marks them for one-by-one
    /// re-sending. Returns how many were in flight.
    pub(crate) fn channel_lost(&mut self, suspect: bool) -> usize {
        let n = self.in_flight;
        for &seq in &self.tag_seqs {
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
        self.tag_seqs.clear();
        self.first_tag = 1;
        self.next_tag = 1;
        self.in_flight = 0;
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
        self.tag_seqs.clear();
        self.first_tag = 1;
        self.next_tag = 1;
        self.in_flight = 0;
        self.suspects_in_flight = 0;
        self.unresolved = 0;
        self.bytes = 0;
        self.retrying = 0;
        out
    }
}
