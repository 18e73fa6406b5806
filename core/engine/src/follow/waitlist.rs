//! What the follower refused for lack of room (a full relay table, a full subscription
//! budget), remembered so it is admitted when room frees: oldest refusal first, bounded.
//!
//! A refusal that finds the list full is not remembered but marks the list `overflowed`, so
//! the follower knows to look through its own state for what was lost when room frees.

use std::collections::BTreeMap;

/// Refused values in refusal order, at most `cap` of them.
#[derive(Clone, Debug)]
pub(super) struct Waitlist<T: Ord + Clone> {
    by_seq: BTreeMap<u64, T>,
    seq_of: BTreeMap<T, u64>,
    next_seq: u64,
    cap: usize,
    overflowed: bool,
}

/// What remembering a refusal did.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(super) enum Remembered {
    /// Queued behind the older refusals.
    Queued,
    /// Already waiting: it keeps its place.
    AlreadyWaiting,
    /// The list is full: not remembered (the list is now `overflowed`).
    Dropped,
}

impl<T: Ord + Clone> Waitlist<T> {
    pub fn new(cap: usize) -> Waitlist<T> {
        Waitlist {
            by_seq: BTreeMap::new(),
            seq_of: BTreeMap::new(),
            next_seq: 0,
            cap,
            overflowed: false,
        }
    }

    pub fn remember(&mut self, value: T) -> Remembered {
        if self.seq_of.contains_key(&value) {
            return Remembered::AlreadyWaiting;
        }
        if self.by_seq.len() >= self.cap {
            self.overflowed = true;
            return Remembered::Dropped;
        }
        let seq = self.next_seq;
        self.next_seq += 1;
        self.by_seq.insert(seq, value.clone());
        self.seq_of.insert(value, seq);
        Remembered::Queued
    }

    pub fn remove(&mut self, value: &T) -> bool {
        let Some(seq) = self.seq_of.remove(value) else {
            return false;
        };
        self.by_seq.remove(&seq);
        true
    }

    pub fn contains(&self, value: &T) -> bool {
        self.seq_of.contains_key(value)
    }

    pub fn len(&self) -> usize {
        self.by_seq.len()
    }

    /// A refusal was not remembered since the last `clear_overflow`.
    pub fn overflowed(&self) -> bool {
        self.overflowed
    }

    /// Called once everything lost has been found again (or nothing is left to find).
    pub fn clear_overflow(&mut self) {
        self.overflowed = false;
    }

    /// Waiting values, oldest refusal first (a snapshot, so the caller may admit as it goes).
    pub fn oldest_first(&self) -> Vec<T> {
        self.by_seq.values().cloned().collect()
    }

    /// Forgets values `keep` rejects.
    pub fn retain(&mut self, mut keep: impl FnMut(&T) -> bool) {
        let seq_of = &mut self.seq_of;
        self.by_seq.retain(|_, v| {
            let kept = keep(v);
            if !kept {
                seq_of.remove(v);
            }
            kept
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn oldest_refusal_first_bounded_and_overflow_noted() {
        let mut w = Waitlist::new(3);
        assert_eq!(w.remember("c"), Remembered::Queued);
        assert_eq!(w.remember("a"), Remembered::Queued);
        assert_eq!(w.remember("c"), Remembered::AlreadyWaiting);
        assert_eq!(w.remember("b"), Remembered::Queued);
        assert!(!w.overflowed());
        assert_eq!(w.remember("d"), Remembered::Dropped);
        assert!(w.overflowed() && w.len() == 3);
        assert_eq!(w.oldest_first(), ["c", "a", "b"]);
        assert!(w.remove(&"a") && !w.remove(&"a"));
        w.retain(|v| *v != "c");
        assert_eq!(w.oldest_first(), ["b"]);
        assert!(!w.contains(&"c") && w.len() == 1);
        // A value refused again later queues behind the older refusals.
        assert_eq!(w.remember("c"), Remembered::Queued);
        assert_eq!(w.oldest_first(), ["b", "c"]);
        w.clear_overflow();
        assert!(!w.overflowed());
    }
}
