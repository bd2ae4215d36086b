//! The reference model and the simulated broker channel it drives a [`Buffer`] through.

use crate::error::Error;
use crate::message::Message;
use crate::publisher::buffer::entry::State;
use crate::publisher::buffer::{Buffer, Resolved};
use proptest::prelude::*;
use proptest::test_runner::TestCaseError;
use std::collections::VecDeque;
use std::time::{Duration, Instant};

pub(super) const IDS: [&str; 3] = ["a", "b", "c"];
/// (exchange, routing key). The last exchange does not exist: the task's passive declare fails
/// such a message before it is sent.
const DESTS: [(&str, &str); 4] = [("", "q1"), ("", "q2"), ("ex", "k"), ("gone", "k")];
pub(super) const GONE: usize = 3;
const NO_ROUTE: (u16, &str) = (312, "NO_ROUTE");
const REFUSED: (u16, &str) = (406, "PRECONDITION_FAILED");

fn backoff(n: u32) -> Duration {
    Duration::from_millis(10 * u64::from(n))
}

#[derive(Debug, Clone)]
pub(super) enum Op {
    Push {
        id: usize,
        dest: usize,
        mandatory: bool,
        size: usize,
    },
    /// The task's `send_ready`, for at most this many messages.
    Send(usize),
    /// The client reads at most this many events off the wire.
    Read(usize),
    /// The broker confirms one of its unconfirmed tags (picked by index).
    Confirm {
        pick: usize,
        multiple: bool,
        nack: bool,
    },
    /// The connection dies: unread events are lost.
    ConnectionLost,
    /// The broker closes the channel: the client reads what precedes the close, then hunts
    /// suspects as the task does.
    ChannelClosed,
    /// Time passes (milliseconds), then nacked messages that are due wake up.
    Advance(u64),
    /// A confirm for a tag never used on this channel (ignored).
    UnknownAck(u64),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ev {
    Return { tag: u64 },
    Ack { tag: u64, multiple: bool },
    Nack { tag: u64, multiple: bool },
}

/// What the broker knows of one tag on the current channel.
#[derive(Debug)]
struct Published {
    seq: u64,
    returned: bool,
    /// Not routed (returned, or dropped if not mandatory): the broker can only ack it.
    unroutable: bool,
    confirmed: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Verdict {
    Ok,
    Unroutable(&'static str),
    Nacked(&'static str, u32),
    Refused(&'static str),
    ExchangeNotFound(&'static str),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum MState {
    Unsent,
    InFlight(u64),
    RetryAt(Instant),
    Done,
}

#[derive(Debug)]
struct MMsg {
    id: &'static str,
    dest: usize,
    mandatory: bool,
    size: usize,
    state: MState,
    publishes: u32,
    nacks: u32,
    suspect: bool,
    /// Ever given a verdict (checked to happen once).
    verdicts: u32,
}

/// How often the random cases reach each outcome (so the generator keeps exercising them).
#[derive(Debug, Default, Clone, Copy)]
pub(super) struct Stats {
    pub(super) ok: usize,
    pub(super) unroutable: usize,
    pub(super) nacked: usize,
    pub(super) refused: usize,
    pub(super) not_found: usize,
    pub(super) retried: usize,
    /// Messages sent again after their channel was lost.
    pub(super) resent: usize,
    /// Same id, same exchange, another routing key in flight when a return was read.
    pub(super) ambiguous_returns: usize,
    pub(super) drained: usize,
}

pub(super) struct Model {
    buf: Buffer<u64>,
    pub(super) stats: Stats,
    /// Indexed by sequence number.
    msgs: Vec<MMsg>,
    routable: [bool; 3],
    window: usize,
    max_nacks: u32,
    now: Instant,
    /// The broker's side of the current channel: `chan[tag - 1]`.
    chan: Vec<Published>,
    /// Sent by the broker, not read by the client yet.
    wire: VecDeque<Ev>,
    resolved: usize,
    out: Vec<Resolved<u64>>,
    expected: Vec<(u64, Verdict)>,
}

type Check = Result<(), TestCaseError>;

impl Model {
    pub(super) fn new(routable: [bool; 3], window: usize, max_nacks: u32) -> Self {
        Model {
            buf: Buffer::new(max_nacks),
            max_nacks,
            stats: Stats::default(),
            msgs: Vec::new(),
            routable,
            window,
            now: Instant::now(),
            chan: Vec::new(),
            wire: VecDeque::new(),
            resolved: 0,
            out: Vec::new(),
            expected: Vec::new(),
        }
    }

    pub(super) fn step(&mut self, op: &Op) -> Check {
        match *op {
            Op::Push {
                id,
                dest,
                mandatory,
                size,
            } => {
                let (exchange, key) = DESTS[dest];
                let msg = Message::new(exchange, key, "x")
                    .with_message_id(IDS[id])
                    .with_mandatory(mandatory);
                let seq = self.msgs.len() as u64;
                prop_assert_eq!(self.buf.push(Box::new(msg), size, seq, Instant::now()), seq);
                self.msgs.push(MMsg {
                    id: IDS[id],
                    dest,
                    mandatory,
                    size,
                    state: MState::Unsent,
                    publishes: 0,
                    nacks: 0,
                    suspect: false,
                    verdicts: 0,
                });
            }
            Op::Send(k) => self.send(k)?,
            Op::Read(n) => {
                for _ in 0..n {
                    let Some(ev) = self.wire.pop_front() else {
                        break;
                    };
                    self.read(ev)?;
                }
            }
            Op::Confirm {
                pick,
                multiple,
                nack,
            } => self.confirm(pick, multiple, nack),
            Op::ConnectionLost => {
                self.wire.clear();
                self.lose_channel(false)?;
            }
            Op::ChannelClosed => {
                while let Some(ev) = self.wire.pop_front() {
                    self.read(ev)?;
                }
                let flying: Vec<u64> = self.seqs(|m| matches!(m.state, MState::InFlight(_)));
                let lone = match flying[..] {
                    [seq] if self.msgs[seq as usize].suspect => Some(seq),
                    _ => None,
                };
                prop_assert_eq!(self.buf.lone_suspect(), lone);
                if let Some(seq) = lone {
                    // The message the broker refuses, found: it fails alone.
                    let err = Error::Refused {
                        message_id: self.msgs[seq as usize].id.to_string(),
                        code: REFUSED.0,
                        text: REFUSED.1.to_string(),
                    };
                    self.buf.fail(seq, err, &mut self.out);
                    self.expect(seq, Verdict::Refused(self.msgs[seq as usize].id));
                    self.lose_channel(false)?;
                } else {
                    self.lose_channel(true)?;
                }
            }
            Op::Advance(ms) => {
                self.now += Duration::from_millis(ms);
                self.buf.wake_retries(self.now);
                for m in &mut self.msgs {
                    if let MState::RetryAt(t) = m.state
                        && t <= self.now
                    {
                        m.state = MState::Unsent;
                        self.stats.retried += 1;
                    }
                }
            }
            Op::UnknownAck(extra) => {
                let tag = self.chan.len() as u64 + 1 + extra;
                self.buf.ack(tag, true, &mut self.out);
                self.buf.ack(0, false, &mut self.out);
            }
        }
        self.check()
    }

    fn seqs(&self, f: impl Fn(&MMsg) -> bool) -> Vec<u64> {
        (0..self.msgs.len() as u64)
            .filter(|&s| f(&self.msgs[s as usize]))
            .collect()
    }

    fn expect(&mut self, seq: u64, v: Verdict) {
        let m = &mut self.msgs[seq as usize];
        m.state = MState::Done;
        m.verdicts += 1;
        let s = &mut self.stats;
        match v {
            Verdict::Ok => s.ok += 1,
            Verdict::Unroutable(_) => s.unroutable += 1,
            Verdict::Nacked(..) => s.nacked += 1,
            Verdict::Refused(_) => s.refused += 1,
            Verdict::ExchangeNotFound(_) => s.not_found += 1,
        }
        self.expected.push((seq, v));
    }

    /// As the task's `send_ready`.
    fn send(&mut self, k: usize) -> Check {
        let mut sent = 0;
        while sent < k {
            if self.buf.in_flight() >= self.window || self.buf.suspect_in_flight() {
                break;
            }
            let in_flight = self.buf.in_flight();
            let want = self.seqs(|m| m.state == MState::Unsent).first().copied();
            let Some(e) = self.buf.next_unsent() else {
                prop_assert_eq!(want, None, "next_unsent missed an unsent message");
                break;
            };
            let (seq, suspect) = (e.seq, e.suspect);
            // The oldest unsent goes first: after a loss, the unconfirmed ones in their
            // original order, then the never-sent ones.
            prop_assert_eq!(Some(seq), want, "next_unsent is not the oldest unsent");
            let m = &self.msgs[seq as usize];
            prop_assert_eq!(suspect, m.suspect);
            if suspect && in_flight > 0 {
                break;
            }
            if m.dest == GONE {
                let err = Error::ExchangeNotFound {
                    message_id: m.id.to_string(),
                    exchange: DESTS[GONE].0.to_string(),
                };
                let id = m.id;
                self.buf.fail(seq, err, &mut self.out);
                self.expect(seq, Verdict::ExchangeNotFound(id));
                continue;
            }
            let tag = self.buf.mark_sent(seq);
            // Tags count from 1 on each channel.
            prop_assert_eq!(tag, self.chan.len() as u64 + 1, "delivery tag");
            let m = &mut self.msgs[seq as usize];
            if m.publishes > m.nacks {
                self.stats.resent += 1;
            }
            m.state = MState::InFlight(tag);
            m.publishes += 1;
            sent += 1;
            // The broker routes it now; an unroutable mandatory message comes back at once.
            let unroutable = !self.routable[m.dest];
            let returned = unroutable && m.mandatory;
            if returned {
                self.wire.push_back(Ev::Return { tag });
            }
            self.chan.push(Published {
                seq,
                returned,
                unroutable,
                confirmed: false,
            });
        }
        Ok(())
    }

    /// The broker confirms the `pick`th of its unconfirmed tags (with every earlier unconfirmed
    /// one if `multiple`). Unroutable messages are only ever acked.
    fn confirm(&mut self, pick: usize, multiple: bool, nack: bool) {
        let open: Vec<usize> = (0..self.chan.len())
            .filter(|&i| !self.chan[i].confirmed)
            .collect();
        if open.is_empty() {
            return;
        }
        let i = open[pick % open.len()];
        let covered: Vec<usize> = if multiple {
            open.iter().copied().filter(|&j| j <= i).collect()
        } else {
            vec![i]
        };
        let nack = nack && covered.iter().all(|&j| !self.chan[j].unroutable);
        for &j in &covered {
            self.chan[j].confirmed = true;
        }
        let tag = i as u64 + 1;
        self.wire.push_back(if nack {
            Ev::Nack { tag, multiple }
        } else {
            Ev::Ack { tag, multiple }
        });
    }

    /// The client reads one event, as the task's `on_event`.
    fn read(&mut self, ev: Ev) -> Check {
        match ev {
            Ev::Return { tag } => {
                let seq = self.chan[tag as usize - 1].seq;
                let m = &self.msgs[seq as usize];
                prop_assert_eq!(m.state, MState::InFlight(tag), "return before its confirm");
                let (exchange, key) = DESTS[m.dest];
                if self.msgs.iter().any(|o| {
                    matches!(o.state, MState::InFlight(_))
                        && o.id == m.id
                        && DESTS[o.dest].0 == exchange
                        && DESTS[o.dest].1 != key
                }) {
                    self.stats.ambiguous_returns += 1;
                }
                let marked = self
                    .buf
                    .returned(m.id, exchange, key, NO_ROUTE.0, NO_ROUTE.1);
                prop_assert!(marked, "a return for an in-flight message");
            }
            Ev::Ack { tag, multiple } | Ev::Nack { tag, multiple } => {
                let is_nack = matches!(ev, Ev::Nack { .. });
                let lo = if multiple { 1 } else { tag };
                for t in lo..=tag {
                    let p = &self.chan[t as usize - 1];
                    let (seq, returned) = (p.seq, p.returned);
                    let m = &mut self.msgs[seq as usize];
                    if m.state != MState::InFlight(t) {
                        continue;
                    }
                    let id = m.id;
                    if !is_nack {
                        let v = if returned {
                            Verdict::Unroutable(id)
                        } else {
                            Verdict::Ok
                        };
                        self.expect(seq, v);
                    } else {
                        m.nacks += 1;
                        if m.nacks > self.max_nacks {
                            let n = m.nacks;
                            self.expect(seq, Verdict::Nacked(id, n));
                        } else {
                            m.state = MState::RetryAt(self.now + backoff(m.nacks));
                        }
                    }
                }
                if is_nack {
                    self.buf
                        .nack(tag, multiple, self.now, backoff, &mut self.out);
                } else {
                    self.buf.ack(tag, multiple, &mut self.out);
                }
            }
        }
        Ok(())
    }

    fn lose_channel(&mut self, suspect: bool) -> Check {
        let mut n = 0;
        for m in &mut self.msgs {
            if let MState::InFlight(_) = m.state {
                m.state = MState::Unsent;
                m.suspect |= suspect;
                n += 1;
            }
        }
        self.chan.clear();
        prop_assert_eq!(self.buf.channel_lost(suspect), n);
        Ok(())
    }

    /// After every step: the verdicts given are exactly the expected ones, and the counters
    /// and every message's state agree with the model.
    pub(super) fn check(&mut self) -> Check {
        self.check_verdicts()?;
        self.check_states()
    }

    /// The verdicts the buffer gave in this step are exactly the expected ones, each with its
    /// message, reply, size and publish count.
    fn check_verdicts(&mut self) -> Check {
        let mut got: Vec<(u64, Verdict)> = Vec::new();
        for r in self.out.drain(..) {
            let m = &self.msgs[r.seq as usize];
            prop_assert_eq!(r.reply, Some(r.seq), "the reply travels with its message");
            prop_assert_eq!(r.msg.message_id(), Some(m.id));
            prop_assert_eq!(
                (r.msg.exchange.as_str(), r.msg.routing_key.as_str()),
                DESTS[m.dest]
            );
            prop_assert_eq!(r.size, m.size);
            prop_assert_eq!(r.publishes, m.publishes, "publishes of {}", r.seq);
            let v = match r.verdict {
                Ok(()) => Verdict::Ok,
                Err(Error::Unroutable {
                    message_id,
                    reply_code,
                    reply_text,
                }) => {
                    prop_assert_eq!((reply_code, reply_text.as_str()), NO_ROUTE);
                    prop_assert_eq!(message_id.as_str(), m.id);
                    Verdict::Unroutable(m.id)
                }
                Err(Error::Nacked {
                    message_id,
                    attempts,
                }) => {
                    prop_assert_eq!(message_id.as_str(), m.id);
                    Verdict::Nacked(m.id, attempts)
                }
                Err(Error::Refused {
                    message_id,
                    code,
                    text,
                }) => {
                    prop_assert_eq!((code, text.as_str()), REFUSED);
                    prop_assert_eq!(message_id.as_str(), m.id);
                    Verdict::Refused(m.id)
                }
                Err(Error::ExchangeNotFound {
                    message_id,
                    exchange,
                }) => {
                    prop_assert_eq!(exchange.as_str(), DESTS[GONE].0);
                    prop_assert_eq!(message_id.as_str(), m.id);
                    Verdict::ExchangeNotFound(m.id)
                }
                Err(e) => return Err(TestCaseError::fail(format!("unexpected verdict {e}"))),
            };
            got.push((r.seq, v));
        }
        let mut want = std::mem::take(&mut self.expected);
        got.sort_by_key(|g| g.0);
        want.sort_by_key(|w| w.0);
        prop_assert_eq!(&got, &want, "verdicts given in this step");
        self.resolved += got.len();
        Ok(())
    }

    /// No message got two verdicts, and the buffer's counters and every message's state agree
    /// with the model.
    fn check_states(&mut self) -> Check {
        for (seq, m) in self.msgs.iter().enumerate() {
            prop_assert!(
                m.verdicts <= 1,
                "message {} got {} verdicts",
                seq,
                m.verdicts
            );
        }
        let live: Vec<&MMsg> = self
            .msgs
            .iter()
            .filter(|m| m.state != MState::Done)
            .collect();
        prop_assert_eq!(self.buf.len(), live.len(), "len");
        prop_assert_eq!(self.buf.is_empty(), live.is_empty());
        prop_assert_eq!(
            self.buf.bytes(),
            live.iter().map(|m| m.size).sum::<usize>(),
            "bytes"
        );
        let flying: Vec<&&MMsg> = live
            .iter()
            .filter(|m| matches!(m.state, MState::InFlight(_)))
            .collect();
        prop_assert_eq!(self.buf.in_flight(), flying.len(), "in_flight");
        prop_assert_eq!(
            self.buf.suspect_in_flight(),
            flying.iter().any(|m| m.suspect),
            "suspect_in_flight"
        );
        let next_retry = live
            .iter()
            .filter_map(|m| match m.state {
                MState::RetryAt(t) => Some(t),
                _ => None,
            })
            .min();
        prop_assert_eq!(self.buf.next_retry(), next_retry, "next_retry");
        for (seq, m) in self.msgs.iter().enumerate() {
            let seq = seq as u64;
            match (self.buf.entry(seq), m.state) {
                (None, MState::Done) => {}
                (Some(e), MState::Done) => prop_assert_eq!(e.state, State::Done),
                (None, _) => {
                    return Err(TestCaseError::fail(format!("message {seq} lost")));
                }
                (Some(e), s) => {
                    let want = match s {
                        MState::Unsent => State::Unsent,
                        MState::InFlight(tag) => State::InFlight { tag },
                        MState::RetryAt(t) => State::RetryAt(t),
                        MState::Done => unreachable!(),
                    };
                    prop_assert_eq!(e.state, want, "state of {}", seq);
                    prop_assert_eq!(
                        (e.publishes, e.nacks, e.suspect),
                        (m.publishes, m.nacks, m.suspect),
                        "counts of {}",
                        seq
                    );
                }
            }
        }
        let oldest = self.seqs(|m| m.state == MState::Unsent).first().copied();
        prop_assert_eq!(self.buf.next_unsent().map(|e| e.seq), oldest, "next_unsent");
        Ok(())
    }

    /// Close: whatever has no verdict is handed back, oldest first; nothing is lost or
    /// settled twice; the buffer is usable (and empty) afterwards.
    pub(super) fn finish(&mut self) -> Check {
        let want = self.seqs(|m| m.state != MState::Done);
        let left: Vec<u64> = self.buf.drain_unresolved().iter().map(|e| e.seq).collect();
        prop_assert_eq!(&left, &want, "drained");
        self.stats.drained += left.len();
        prop_assert_eq!(
            self.resolved + left.len(),
            self.msgs.len(),
            "resolved + drained"
        );
        prop_assert_eq!(
            (self.buf.len(), self.buf.bytes(), self.buf.in_flight()),
            (0, 0, 0)
        );
        prop_assert_eq!(self.buf.next_retry(), None);
        prop_assert!(self.buf.next_unsent().is_none());
        let seq = self.msgs.len() as u64;
        let msg = Message::to_queue("q1", "x").with_message_id("z");
        prop_assert_eq!(self.buf.push(Box::new(msg), 1, seq, Instant::now()), seq);
        prop_assert_eq!(self.buf.next_unsent().map(|e| e.seq), Some(seq));
        prop_assert_eq!(self.buf.mark_sent(seq), 1, "tags restart at 1");
        Ok(())
    }
}
