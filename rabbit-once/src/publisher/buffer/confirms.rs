//! How verdicts settle buffered messages: the broker's acks and nacks matched by delivery tag,
//! returns matched by what the broker echoes, and the failures we give ourselves.

use super::entry::{Resolved, State};
use super::pending::Buffer;
use crate::error::Error;
use std::time::{Duration, Instant};

impl<R> Buffer<R> {
    /// The broker confirmed `tag` (and every earlier tag if `multiple`).
    pub(crate) fn ack(&mut self, tag: u64, multiple: bool, out: &mut Vec<Resolved<R>>) {
        self.settle(tag, multiple, out, |b, i, out| {
            let verdict = match b.entries[i].returned.take() {
                Some((reply_code, reply_text)) => Err(Error::Unroutable {
                    message_id: b.entries[i]
                        .msg()
                        .message_id()
                        .unwrap_or_default()
                        .to_string(),
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
                    message_id: e.msg().message_id().unwrap_or_default().to_string(),
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
            let seq = self.tag_seqs[(t - self.first_tag) as usize];
            if let Some(i) = self.index(seq)
                && self.entries[i].state == (State::InFlight { tag: t })
            {
                f(self, i, out);
            }
        }
        while let Some(&seq) = self.tag_seqs.front() {
            let live = self.index(seq).is_some_and(|i| {
                self.entries[i].state
                    == (State::InFlight {
                        tag: self.first_tag,
                    })
            });
            if live {
                break;
            }
            self.tag_seqs.pop_front();
            self.first_tag += 1;
        }
        self.pop_done();
    }

    fn leave_flight(&mut self, i: usize) {
        if matches!(self.entries[i].state, State::InFlight { .. }) {
            self.in_flight -= 1;
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
            accepted: e.accepted,
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
        for &seq in &self.tag_seqs {
            if let Some(i) = self.index(seq) {
                let e = &mut self.entries[i];
                if matches!(e.state, State::InFlight { .. })
                    && e.returned.is_none()
                    && e.msg().mandatory
                    && e.msg().message_id() == Some(message_id)
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
        if self.in_flight == 1 && self.suspects_in_flight == 1 {
            self.tag_seqs.iter().copied().find(|&seq| {
                self.entry(seq)
                    .is_some_and(|e| matches!(e.state, State::InFlight { .. }))
            })
        } else {
            None
        }
    }
}
