//! Acknowledgement bookkeeping for one channel: deliveries are settled in any order, acks go
//! out as one `basic.ack multiple` for each run of settled tags. Pure logic.
//!
//! Tags on a channel count from 1 in delivery order. A settled tag waits for the ones before it
//! so one `multiple` ack covers the run; if too many settled tags wait behind a slow one, they
//! are acked singly so the prefetch window does not stall.

use std::collections::VecDeque;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Tag {
    /// Delivered, not settled.
    Open,
    /// Settled by an ack that is not on the wire yet.
    AckDue,
    /// Done: acked singly, or nacked/rejected (no longer outstanding on the broker).
    Gone,
}

/// What to put on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct AckFrame {
    /// The delivery tag to ack.
    pub tag: u64,
    /// Whether the ack covers every tag up to `tag` (`basic.ack multiple`).
    pub multiple: bool,
}

/// The settled and open delivery tags of one channel, and the acks they call for.
#[derive(Debug)]
pub(crate) struct AckTracker {
    /// Every tag up to here is settled.
    floor: u64,
    /// State of tag `floor + 1 + i`.
    tags: VecDeque<Tag>,
    /// Settled tags waiting behind an open one before we ack them singly.
    max_waiting: usize,
    /// Tags acked but not on the wire yet (`Tag::AckDue`).
    waiting: usize,
}

impl AckTracker {
    /// A tracker for a new channel; at most `max_waiting` (at least 1) settled tags wait
    /// behind an open one.
    pub(crate) fn new(max_waiting: usize) -> Self {
        AckTracker {
            floor: 0,
            tags: VecDeque::new(),
            max_waiting: max_waiting.max(1),
            waiting: 0,
        }
    }

    /// Records a delivery (tags must arrive in increasing order).
    pub(crate) fn delivered(&mut self, tag: u64) {
        while self.floor + (self.tags.len() as u64) < tag {
            self.tags.push_back(Tag::Open);
        }
    }

    /// Deliveries not settled yet.
    pub(crate) fn open(&self) -> usize {
        self.tags.iter().filter(|t| **t == Tag::Open).count()
    }

    fn slot(&mut self, tag: u64) -> Option<&mut Tag> {
        let i = tag.checked_sub(self.floor + 1)?;
        self.tags.get_mut(i as usize).filter(|t| **t == Tag::Open)
    }

    /// An ack for `tag`. Returns false for an unknown or already settled tag.
    pub(crate) fn ack(&mut self, tag: u64) -> bool {
        match self.slot(tag) {
            Some(t) => {
                *t = Tag::AckDue;
                self.waiting += 1;
                true
            }
            None => false,
        }
    }

    /// A nack/reject for `tag`, sent on the wire by the caller at once.
    pub(crate) fn gone(&mut self, tag: u64) -> bool {
        match self.slot(tag) {
            Some(t) => {
                *t = Tag::Gone;
                true
            }
            None => false,
        }
    }

    /// The ack frames due now, in order: one `multiple` for the settled prefix, then singles
    /// if too many settled tags wait behind an open one.
    pub(crate) fn flush(&mut self, out: &mut Vec<AckFrame>) {
        let mut ack_upto = None;
        while let Some(&t) = self.tags.front() {
            if t == Tag::Open {
                break;
            }
            self.tags.pop_front();
            self.floor += 1;
            if t == Tag::AckDue {
                self.waiting -= 1;
                ack_upto = Some(self.floor);
            }
        }
        if let Some(tag) = ack_upto {
            out.push(AckFrame {
                tag,
                multiple: true,
            });
        }
        if self.waiting >= self.max_waiting {
            for (i, t) in self.tags.iter_mut().enumerate() {
                if *t == Tag::AckDue {
                    *t = Tag::Gone;
                    out.push(AckFrame {
                        tag: self.floor + 1 + i as u64,
                        multiple: false,
                    });
                }
            }
            self.waiting = 0;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn flush(t: &mut AckTracker) -> Vec<(u64, bool)> {
        let mut out = Vec::new();
        t.flush(&mut out);
        out.into_iter().map(|f| (f.tag, f.multiple)).collect()
    }

    #[test]
    fn in_order_acks_become_one_multiple_ack() {
        let mut t = AckTracker::new(100);
        for tag in 1..=5 {
            t.delivered(tag);
        }
        for tag in 1..=4 {
            assert!(t.ack(tag));
        }
        assert_eq!(flush(&mut t), [(4, true)]);
        assert_eq!(flush(&mut t), []);
        assert_eq!(t.open(), 1);
        assert!(!t.ack(2), "already acked");
        assert!(t.ack(5));
        assert_eq!(flush(&mut t), [(5, true)]);
    }

    #[test]
    fn a_gap_holds_the_run_until_it_closes() {
        let mut t = AckTracker::new(100);
        for tag in 1..=4 {
            t.delivered(tag);
        }
        t.ack(2);
        t.ack(3);
        assert_eq!(flush(&mut t), []);
        t.ack(1);
        assert_eq!(flush(&mut t), [(3, true)]);
    }

    #[test]
    fn nacked_tags_do_not_block_and_are_not_acked() {
        let mut t = AckTracker::new(100);
        for tag in 1..=3 {
            t.delivered(tag);
        }
        assert!(t.gone(1));
        assert_eq!(flush(&mut t), [], "nothing to ack: tag 1 was nacked");
        t.ack(2);
        t.ack(3);
        assert_eq!(flush(&mut t), [(3, true)]);
        assert!(!t.ack(1));
    }

    #[test]
    fn too_many_waiting_behind_a_slow_one_are_acked_singly() {
        let mut t = AckTracker::new(2);
        for tag in 1..=4 {
            t.delivered(tag);
        }
        t.ack(2);
        assert_eq!(flush(&mut t), []);
        t.ack(4);
        assert_eq!(flush(&mut t), [(2, false), (4, false)]);
        t.ack(1);
        t.ack(3);
        assert_eq!(flush(&mut t), [(3, true)]);
        assert_eq!(t.open(), 0);
    }

    #[test]
    fn unknown_tags_are_refused() {
        let mut t = AckTracker::new(10);
        t.delivered(1);
        assert!(!t.ack(0));
        assert!(!t.ack(2));
        assert!(!t.gone(7));
    }
}
