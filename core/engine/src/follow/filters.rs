//! What the follower asks relays for, batched: a subscription covers up to `chunk_size`
//! repositories (or followed events), so thousands of repositories are a handful of REQs.
//!
//! Values keep the chunk they were first put in (a new value fills the first chunk with room),
//! so adding one repository changes one subscription, not every one after it.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use crate::events::{KIND_ANNOUNCEMENT, KIND_STATE};
use crate::ids::{EventId, RepoKey};

/// One NIP-01 filter: `kinds` (empty = any kind) and at most one single-letter tag condition.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Debug)]
pub struct Filter {
    pub kinds: Vec<u16>,
    pub tag: Option<TagFilter>,
}

/// `#<letter>: [values]`.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Debug)]
pub struct TagFilter {
    pub letter: char,
    pub values: Vec<String>,
}

/// Names one subscription on one relay; `Display` is its NIP-01 subscription id.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Debug)]
pub enum SubKey {
    /// Every announcement (bootstrap relays only): finds repositories that list this server.
    Discovery,
    /// Announcements and states with these identifiers, and events tagging these repositories.
    Repos(u32),
    /// Events tagging these followed events (replies, status, PR updates).
    Threads(u32),
}

impl fmt::Display for SubKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SubKey::Discovery => f.write_str("graspd-discovery"),
            SubKey::Repos(i) => write!(f, "graspd-repos-{i}"),
            SubKey::Threads(i) => write!(f, "graspd-threads-{i}"),
        }
    }
}

/// One REQ: its id and its filters (matched as "any of").
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct Subscription {
    pub key: SubKey,
    pub filters: Vec<Filter>,
}

pub(super) fn discovery() -> Subscription {
    Subscription {
        key: SubKey::Discovery,
        filters: vec![Filter {
            kinds: vec![KIND_ANNOUNCEMENT],
            tag: None,
        }],
    }
}

pub(super) fn repos(index: u32, chunk: &BTreeSet<RepoKey>) -> Subscription {
    let identifiers: BTreeSet<String> = chunk.iter().map(|r| r.identifier.to_string()).collect();
    let coordinates: Vec<String> = chunk
        .iter()
        .map(|r| format!("{KIND_ANNOUNCEMENT}:{}:{}", r.owner.to_hex(), r.identifier))
        .collect();
    Subscription {
        key: SubKey::Repos(index),
        filters: vec![
            Filter {
                kinds: vec![KIND_ANNOUNCEMENT, KIND_STATE],
                tag: Some(TagFilter {
                    letter: 'd',
                    values: identifiers.into_iter().collect(),
                }),
            },
            Filter {
                kinds: Vec::new(),
                tag: Some(TagFilter {
                    letter: 'a',
                    values: coordinates,
                }),
            },
        ],
    }
}

pub(super) fn threads(index: u32, chunk: &BTreeSet<EventId>) -> Subscription {
    let ids: Vec<String> = chunk.iter().map(|e| e.to_hex()).collect();
    // NIP-22 comments and NIP-34 PR updates tag their root with `E`, replies and statuses `e`.
    let filters = ['e', 'E']
        .into_iter()
        .map(|letter| Filter {
            kinds: Vec::new(),
            tag: Some(TagFilter {
                letter,
                values: ids.clone(),
            }),
        })
        .collect();
    Subscription {
        key: SubKey::Threads(index),
        filters,
    }
}

/// Values in chunks of at most `size`, each value staying in its chunk.
#[derive(Clone, Debug)]
pub(super) struct Chunks<T: Ord + Clone> {
    chunks: Vec<BTreeSet<T>>,
    index: BTreeMap<T, usize>,
}

impl<T: Ord + Clone> Default for Chunks<T> {
    fn default() -> Self {
        Chunks {
            chunks: Vec::new(),
            index: BTreeMap::new(),
        }
    }
}

/// What inserting a value did.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(super) enum Inserted {
    New,
    AlreadyThere,
    /// Every chunk is full and no new chunk may be opened.
    NoRoom,
}

impl<T: Ord + Clone> Chunks<T> {
    /// Inserts `value` into the first chunk with room; opens a chunk only if `may_open`.
    pub fn insert(&mut self, value: T, size: usize, may_open: bool) -> Inserted {
        if self.index.contains_key(&value) {
            return Inserted::AlreadyThere;
        }
        let slot = match self.chunks.iter().position(|c| c.len() < size) {
            Some(i) => i,
            None if may_open => {
                self.chunks.push(BTreeSet::new());
                self.chunks.len() - 1
            }
            None => return Inserted::NoRoom,
        };
        self.chunks[slot].insert(value.clone());
        self.index.insert(value, slot);
        Inserted::New
    }

    pub fn remove(&mut self, value: &T) -> bool {
        let Some(slot) = self.index.remove(value) else {
            return false;
        };
        self.chunks[slot].remove(value);
        while self.chunks.last().is_some_and(BTreeSet::is_empty) {
            self.chunks.pop();
        }
        true
    }

    pub fn contains(&self, value: &T) -> bool {
        self.index.contains_key(value)
    }

    /// Moves values from the last chunk into earlier chunks with room, as long as that empties
    /// it, so the values use as few subscriptions as they can (`ceil(len / size)`). Done only
    /// when a value finds no room, since it changes the subscriptions it touches. True if a
    /// chunk was freed.
    pub fn compact(&mut self, size: usize) -> bool {
        let before = self.chunks.len();
        loop {
            while self.chunks.last().is_some_and(BTreeSet::is_empty) {
                self.chunks.pop();
            }
            let Some((last, earlier)) = self.chunks.split_last_mut() else {
                break;
            };
            let room: usize = earlier.iter().map(|c| size.saturating_sub(c.len())).sum();
            if room < last.len() {
                break;
            }
            while let Some(value) = last.pop_first() {
                let slot = earlier
                    .iter()
                    .position(|c| c.len() < size)
                    .expect("room was counted");
                earlier[slot].insert(value.clone());
                self.index.insert(value, slot);
            }
        }
        self.chunks.len() < before
    }

    pub fn len(&self) -> usize {
        self.index.len()
    }

    pub fn is_empty(&self) -> bool {
        self.index.is_empty()
    }

    /// Chunks in use (empty ones in the middle stay, keeping later indexes stable).
    pub fn chunk_count(&self) -> usize {
        self.chunks.len()
    }

    /// Non-empty chunks with their index.
    /// The index of the chunk holding `value`.
    pub fn chunk_of(&self, value: &T) -> Option<u32> {
        self.index.get(value).map(|i| *i as u32)
    }

    pub fn iter(&self) -> impl Iterator<Item = (u32, &BTreeSet<T>)> {
        self.chunks
            .iter()
            .enumerate()
            .filter(|(_, c)| !c.is_empty())
            .map(|(i, c)| (i as u32, c))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_fill_chunks_and_keep_their_place() {
        let mut c = Chunks::default();
        for v in 0..5 {
            assert_eq!(c.insert(v, 2, true), Inserted::New);
        }
        assert_eq!(c.chunk_count(), 3);
        assert_eq!(c.insert(3, 2, true), Inserted::AlreadyThere);
        assert!(c.remove(&0));
        // 0's chunk has room again; 1..=4 did not move.
        assert_eq!(c.insert(9, 2, false), Inserted::New);
        let chunks: Vec<Vec<i32>> = c.iter().map(|(_, s)| s.iter().copied().collect()).collect();
        assert_eq!(chunks, [vec![1, 9], vec![2, 3], vec![4]]);
        assert_eq!(c.insert(10, 2, false), Inserted::New);
        assert_eq!(c.insert(11, 2, false), Inserted::NoRoom);
        assert!(c.remove(&4) && c.remove(&10));
        assert_eq!(c.chunk_count(), 2);
    }

    #[test]
    fn compaction_empties_trailing_chunks_into_holes_only_when_it_frees_one() {
        let mut c = Chunks::default();
        for v in 0..7 {
            c.insert(v, 3, true);
        }
        // [0 1 2] [3 4 5] [6]: full but the last; nothing to gain.
        assert!(!c.compact(3));
        assert!(c.remove(&1) && c.remove(&4));
        // [0 2] [3 5] [6]: 6 moves into the first hole, its chunk goes.
        assert!(c.compact(3));
        let chunks: Vec<Vec<i32>> = c.iter().map(|(_, s)| s.iter().copied().collect()).collect();
        assert_eq!(chunks, [vec![0, 2, 6], vec![3, 5]]);
        assert_eq!(c.chunk_count(), 2);
        assert!(c.contains(&6) && c.remove(&6));
        // An empty chunk in the middle is a hole too.
        assert!(c.remove(&0) && c.remove(&2));
        assert_eq!(c.chunk_count(), 2);
        assert!(c.compact(3));
        assert_eq!(c.chunk_count(), 1);
        assert_eq!(c.len(), 2);
    }
}
