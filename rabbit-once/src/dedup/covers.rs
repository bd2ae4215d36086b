//! The sealed segments as a tree of filters, so that asking about an id costs a few filter
//! lookups however many segments there are.
//!
//! Each segment (a leaf) has a filter of its own. Every [`FANOUT`] consecutive nodes of one
//! level are covered by a node of the next level whose filter holds all of their keys (built
//! from the key hashes stored beside each segment), the way a binary counter carries: the roots
//! read oldest to newest as a few covers of the highest level, then fewer than `FANOUT` of each
//! lower level. An id is looked for in a leaf only if every filter on the way down may hold it:
//! with 500 segments, about 30 lookups instead of 500. Retention removes leaves; a cover keeps
//! its filter (bits of removed keys only cost a lookup) and goes when its last leaf does.
//!
//! Pure logic, tested with plain values; `segments` reads and writes the database.

use super::filter::Filter;
use std::sync::Arc;

/// Nodes a cover covers.
pub(crate) const FANOUT: usize = 16;

/// One sealed segment, as held in memory.
#[derive(Debug)]
pub(crate) struct Segment {
    pub(crate) seq: i64,
    pub(crate) table: String,
    /// `None` when the stored filter could not be read: every id is looked up in the table.
    pub(crate) filter: Option<Filter>,
}

/// A node of the tree.
#[derive(Debug, Clone)]
enum Node {
    Leaf(Arc<Segment>),
    Cover(Arc<Cover>),
}

/// A filter over the keys of every leaf below it.
#[derive(Debug)]
struct Cover {
    level: u32,
    /// `None` when a leaf's key hashes could not be read: always look below.
    filter: Option<Arc<Filter>>,
    children: Vec<Node>,
}

impl Node {
    fn level(&self) -> u32 {
        match self {
            Node::Leaf(_) => 0,
            Node::Cover(c) => c.level,
        }
    }

    fn leaves<'a>(&'a self, out: &mut Vec<&'a Arc<Segment>>) {
        match self {
            Node::Leaf(s) => out.push(s),
            Node::Cover(c) => c.children.iter().for_each(|n| n.leaves(out)),
        }
    }

    /// The node without the leaves `keep` refuses; `None` if nothing is left.
    fn retain(&self, keep: &impl Fn(i64) -> bool) -> Option<Node> {
        match self {
            Node::Leaf(s) => keep(s.seq).then(|| self.clone()),
            Node::Cover(c) => {
                let children: Vec<Node> =
                    c.children.iter().filter_map(|n| n.retain(keep)).collect();
                if children.is_empty() {
                    None
                } else if children.len() == c.children.len() {
                    Some(self.clone())
                } else {
                    Some(Node::Cover(Arc::new(Cover {
                        level: c.level,
                        filter: c.filter.clone(),
                        children,
                    })))
                }
            }
        }
    }

    fn candidates<'a>(&'a self, h: u64, out: &mut Vec<&'a Arc<Segment>>) {
        match self {
            Node::Leaf(s) => {
                if s.filter.as_ref().is_none_or(|f| f.may_contain(h)) {
                    out.push(s);
                }
            }
            Node::Cover(c) => {
                if c.filter.as_ref().is_none_or(|f| f.may_contain(h)) {
                    c.children.iter().for_each(|n| n.candidates(h, out));
                }
            }
        }
    }
}

/// The sealed segments, oldest first, under their covers.
#[derive(Debug, Clone, Default)]
pub(crate) struct Tree {
    roots: Vec<Node>,
}

impl Tree {
    /// Every leaf, oldest first.
    pub(crate) fn leaves(&self) -> Vec<&Arc<Segment>> {
        let mut out = Vec::new();
        self.roots.iter().for_each(|n| n.leaves(&mut out));
        out
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.roots.is_empty()
    }

    /// The newest leaf's seq (0 when empty).
    pub(crate) fn last_seq(&self) -> i64 {
        self.leaves().last().map_or(0, |s| s.seq)
    }

    /// Keeps only the leaves whose seq `keep` accepts.
    pub(crate) fn retain(&mut self, keep: impl Fn(i64) -> bool) {
        self.roots = self.roots.iter().filter_map(|n| n.retain(&keep)).collect();
    }

    /// Adds a segment newer than every other.
    pub(crate) fn push(&mut self, s: Arc<Segment>) {
        debug_assert!(s.seq > self.last_seq());
        self.roots.push(Node::Leaf(s));
    }

    /// The next roots to cover (a range of `FANOUT` roots of one level), if any.
    pub(crate) fn next_to_cover(&self) -> Option<std::ops::Range<usize>> {
        let mut start = 0;
        while start < self.roots.len() {
            let level = self.roots[start].level();
            let run = self.roots[start..]
                .iter()
                .take_while(|n| n.level() == level)
                .count();
            if run >= FANOUT {
                return Some(start..start + FANOUT);
            }
            start += run;
        }
        None
    }

    /// The seqs of the leaves under the roots `range`.
    pub(crate) fn seqs_under(&self, range: std::ops::Range<usize>) -> Vec<i64> {
        let mut out = Vec::new();
        self.roots[range].iter().for_each(|n| n.leaves(&mut out));
        out.into_iter().map(|s| s.seq).collect()
    }

    /// Replaces the roots `range` by one cover with `filter` (over all their keys).
    pub(crate) fn cover(&mut self, range: std::ops::Range<usize>, filter: Option<Filter>) {
        let level = self.roots[range.start].level() + 1;
        let children: Vec<Node> = self.roots.drain(range.clone()).collect();
        self.roots.insert(
            range.start,
            Node::Cover(Arc::new(Cover {
                level,
                filter: filter.map(Arc::new),
                children,
            })),
        );
    }

    /// The leaves that may hold the key hash `h`, oldest first.
    pub(crate) fn candidates<'a>(&'a self, h: u64, out: &mut Vec<&'a Arc<Segment>>) {
        self.roots.iter().for_each(|n| n.candidates(h, out));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dedup::filter::key_hash;

    fn key(seq: i64, i: u64) -> u64 {
        key_hash("g", &format!("{seq}-{i}"))
    }

    /// A leaf holding keys 0..10 of its seq.
    fn leaf(seq: i64) -> Arc<Segment> {
        let mut f = Filter::with_capacity(10);
        (0..10).for_each(|i| f.insert(key(seq, i)));
        Arc::new(Segment {
            seq,
            table: format!("t{seq}"),
            filter: Some(f),
        })
    }

    /// Pushes leaves `seqs` and covers as `segments` does, with filters from their keys.
    fn grow(t: &mut Tree, seqs: std::ops::RangeInclusive<i64>) {
        for seq in seqs {
            t.push(leaf(seq));
            while let Some(r) = t.next_to_cover() {
                let under = t.seqs_under(r.clone());
                let mut f = Filter::with_capacity(under.len() * 10);
                for s in under {
                    (0..10).for_each(|i| f.insert(key(s, i)));
                }
                t.cover(r, Some(f));
            }
        }
    }

    fn found(t: &Tree, h: u64) -> Vec<i64> {
        let mut out = Vec::new();
        t.candidates(h, &mut out);
        out.iter().map(|s| s.seq).collect()
    }

    #[test]
    fn covers_carry_like_a_counter_and_keep_every_leaf_in_order() {
        let mut t = Tree::default();
        grow(&mut t, 1..=(FANOUT * FANOUT + 3 * FANOUT + 5) as i64);
        let levels: Vec<u32> = t.roots.iter().map(Node::level).collect();
        assert_eq!(levels, [2, 1, 1, 1, 0, 0, 0, 0, 0]);
        let seqs: Vec<i64> = t.leaves().iter().map(|s| s.seq).collect();
        assert_eq!(
            seqs,
            (1..=(FANOUT * FANOUT + 3 * FANOUT + 5) as i64).collect::<Vec<_>>()
        );
    }

    #[test]
    fn a_key_is_found_in_its_leaf_and_few_others_are_asked() {
        let mut t = Tree::default();
        let n = (FANOUT * FANOUT + 7) as i64;
        grow(&mut t, 1..=n);
        for seq in [1, 17, 200, n] {
            for i in 0..10 {
                assert!(found(&t, key(seq, i)).contains(&seq), "{seq}-{i}");
            }
        }
        // Keys in no leaf: hardly any leaf is asked.
        let asked: usize = (0..2000).map(|i| found(&t, key(-1, i)).len()).sum();
        assert!(asked < 100, "{asked} leaves asked for 2000 absent keys");
    }

    #[test]
    fn removing_leaves_keeps_the_rest_findable_and_drops_empty_covers() {
        let mut t = Tree::default();
        grow(&mut t, 1..=40);
        // Retention: the oldest 20 go, and one in the middle.
        t.retain(|seq| seq > 20 && seq != 33);
        let seqs: Vec<i64> = t.leaves().iter().map(|s| s.seq).collect();
        assert_eq!(seqs, (21..=40).filter(|&s| s != 33).collect::<Vec<_>>());
        assert!(found(&t, key(5, 0)).is_empty());
        assert!(found(&t, key(33, 0)).is_empty());
        assert!(found(&t, key(34, 3)).contains(&34));
        assert!(found(&t, key(21, 9)).contains(&21));
        t.retain(|_| false);
        assert!(t.is_empty());
        assert_eq!(t.last_seq(), 0);
    }

    #[test]
    fn a_cover_or_leaf_without_a_filter_is_always_looked_below() {
        let mut t = Tree::default();
        for seq in 1..=FANOUT as i64 {
            t.push(leaf(seq));
        }
        let r = t.next_to_cover().unwrap();
        t.cover(r, None);
        assert!(found(&t, key(3, 1)).contains(&3));
        t.push(Arc::new(Segment {
            seq: 100,
            table: "t100".into(),
            filter: None,
        }));
        assert_eq!(found(&t, key(-5, 5)), [100]);
    }
}
