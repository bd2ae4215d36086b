//! Unit tests of the buffer with plain values.

use super::{Buffer, Resolved};
use crate::error::Error;
use crate::message::Message;
use std::time::{Duration, Instant};

fn msg(i: u64) -> Message {
    Message::to_queue("q", format!("{i}")).with_message_id(format!("id-{i}"))
}

fn buffer(n: u64) -> Buffer<()> {
    let mut b = Buffer::new(2);
    for i in 0..n {
        b.push(Box::new(msg(i)), 1, (), Instant::now());
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
        b.push(
            Box::new(Message::to_queue("q", "x").with_message_id(id)),
            1,
            (),
            Instant::now(),
        );
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
        Box::new(Message::to_queue("routable", "x").with_message_id("e-1")),
        1,
        (),
        Instant::now(),
    );
    b.push(
        Box::new(Message::to_queue("nowhere", "x").with_message_id("e-1")),
        1,
        (),
        Instant::now(),
    );
    b.push(
        Box::new(Message::new("ex", "rk", "x").with_message_id("e-1")),
        1,
        (),
        Instant::now(),
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
            .with_message_id("e-1")
            .with_mandatory(mandatory);
        b.push(Box::new(m), 1, (), Instant::now());
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
    b.push(Box::new(msg(0)), 100, (), Instant::now());
    b.push(Box::new(msg(1)), 50, (), Instant::now());
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

#[test]
fn the_oldest_unconfirmed_is_the_first_without_a_verdict() {
    let t0 = Instant::now();
    let (t1, t2) = (t0 + Duration::from_secs(1), t0 + Duration::from_secs(2));
    let mut b: Buffer<()> = Buffer::new(0);
    assert_eq!(b.oldest_accepted(), None);
    for (i, t) in [t0, t1, t2].into_iter().enumerate() {
        b.push(Box::new(msg(i as u64)), 1, (), t);
    }
    send(&mut b, 3);
    let mut out = Vec::new();
    b.ack(2, false, &mut out); // the second settles first: the first is still the oldest
    assert_eq!(b.oldest_accepted(), Some(t0));
    b.ack(1, false, &mut out);
    assert_eq!(b.oldest_accepted(), Some(t2));
    b.ack(3, false, &mut out);
    assert_eq!(b.oldest_accepted(), None);
}
