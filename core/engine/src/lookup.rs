//! [`LookupMap`]: a hash index for point lookups that cannot be iterated.
//!
//! The engine's largest maps (waiting events by id, per-repository work, accepted
//! announcements...) are only ever asked "what is stored under this key". An ordered B-tree
//! answers in O(log n) comparisons of 32-byte keys, each a likely cache miss once the map
//! outgrows the cache; a hash table answers in O(1). Iteration order of a hash table is the one
//! thing that could make the engine's outputs depend on hashing, so this type has no iteration
//! at all: a map that must be walked stays a `BTreeMap`. The hasher has a fixed seed (no
//! process randomness): the same inputs give the same table, and tests stay reproducible.

use std::borrow::Borrow;
use std::fmt;
use std::hash::{BuildHasher, Hash};

use foldhash::fast::FixedState;
use hashbrown::HashTable;

/// Seed of every lookup map's hasher. Keys are event ids, public keys and repository names,
/// which a client chooses; grinding collisions against a public seed would need many
/// signed events per colliding bucket, each of which purgatory caps and expires.
const SEED: u64 = 0x6772_6173_7064_0001;

/// A hash map with point operations only. See the module documentation.
pub struct LookupMap<K, V> {
    table: HashTable<(K, V)>,
    hasher: FixedState,
}

impl<K, V> Default for LookupMap<K, V> {
    fn default() -> Self {
        LookupMap {
            table: HashTable::new(),
            hasher: FixedState::with_seed(SEED),
        }
    }
}

impl<K, V> fmt::Debug for LookupMap<K, V> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // No entries: listing them would be iteration in hash order.
        write!(f, "LookupMap({} entries)", self.table.len())
    }
}

impl<K: Hash + Eq, V> LookupMap<K, V> {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn len(&self) -> usize {
        self.table.len()
    }

    #[cfg(test)]
    pub fn is_empty(&self) -> bool {
        self.table.is_empty()
    }

    fn hash<Q: Hash + ?Sized>(&self, key: &Q) -> u64 {
        self.hasher.hash_one(key)
    }

    pub fn get<Q>(&self, key: &Q) -> Option<&V>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        self.table
            .find(self.hash(key), |(k, _)| k.borrow() == key)
            .map(|(_, v)| v)
    }

    pub fn get_mut<Q>(&mut self, key: &Q) -> Option<&mut V>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        self.get_key_value_mut(key).map(|(_, v)| v)
    }

    /// The stored key and its value, for sharing the stored key.
    pub fn get_key_value_mut<Q>(&mut self, key: &Q) -> Option<(&K, &mut V)>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        let hash = self.hash(key);
        self.table
            .find_mut(hash, |(k, _)| k.borrow() == key)
            .map(|(k, v)| (&*k, v))
    }

    pub fn contains_key<Q>(&self, key: &Q) -> bool
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        self.get(key).is_some()
    }

    /// Stores `value` under `key`; returns the value it replaced.
    pub fn insert(&mut self, key: K, value: V) -> Option<V> {
        let hash = self.hash(&key);
        let hasher = &self.hasher;
        match self
            .table
            .entry(hash, |(k, _)| *k == key, |(k, _)| hasher.hash_one(k))
        {
            hashbrown::hash_table::Entry::Occupied(mut slot) => {
                Some(std::mem::replace(&mut slot.get_mut().1, value))
            }
            hashbrown::hash_table::Entry::Vacant(slot) => {
                slot.insert((key, value));
                None
            }
        }
    }

    pub fn remove<Q>(&mut self, key: &Q) -> Option<V>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        let hash = self.hash(key);
        let entry = self
            .table
            .find_entry(hash, |(k, _)| k.borrow() == key)
            .ok()?;
        let ((_, v), _) = entry.remove();
        Some(v)
    }

    /// The value under `key`, inserted with `make` if absent.
    pub fn get_or_insert_with(&mut self, key: K, make: impl FnOnce() -> V) -> &mut V {
        let hash = self.hash(&key);
        let hasher = &self.hasher;
        let entry = self
            .table
            .entry(hash, |(k, _)| *k == key, |(k, _)| hasher.hash_one(k));
        &mut entry.or_insert_with(|| (key, make())).into_mut().1
    }

    /// The value under `key`, inserted as `V::default()` if absent.
    pub fn get_or_default(&mut self, key: K) -> &mut V
    where
        V: Default,
    {
        self.get_or_insert_with(key, V::default)
    }
}

impl<K: Hash + Eq + Borrow<Q>, Q: Hash + Eq + ?Sized, V> std::ops::Index<&Q> for LookupMap<K, V> {
    type Output = V;

    fn index(&self, key: &Q) -> &V {
        self.get(key).expect("no entry for this key")
    }
}

/// A value that carries its own lookup key.
pub trait Keyed {
    type Key: Hash + Eq;
    fn key(&self) -> &Self::Key;
}

impl<V: Keyed> Keyed for Box<V> {
    type Key = V::Key;
    fn key(&self) -> &V::Key {
        (**self).key()
    }
}

/// A [`LookupMap`] from each value's own key to the value, for values that carry their key:
/// the key is not stored a second time beside it (32 bytes per waiting event, by event id).
/// Point operations only, like `LookupMap`.
pub struct LookupSet<V> {
    table: HashTable<V>,
    hasher: FixedState,
}

impl<V> Default for LookupSet<V> {
    fn default() -> Self {
        LookupSet {
            table: HashTable::new(),
            hasher: FixedState::with_seed(SEED),
        }
    }
}

impl<V> fmt::Debug for LookupSet<V> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "LookupSet({} entries)", self.table.len())
    }
}

impl<V: Keyed> LookupSet<V> {
    pub fn len(&self) -> usize {
        self.table.len()
    }

    pub fn get(&self, key: &V::Key) -> Option<&V> {
        self.table
            .find(self.hasher.hash_one(key), |v| v.key() == key)
    }

    pub fn contains_key(&self, key: &V::Key) -> bool {
        self.get(key).is_some()
    }

    /// Stores `value` under its key; returns the value it replaced.
    pub fn insert(&mut self, value: V) -> Option<V> {
        let hash = self.hasher.hash_one(value.key());
        let hasher = &self.hasher;
        match self.table.entry(
            hash,
            |v| v.key() == value.key(),
            |v| hasher.hash_one(v.key()),
        ) {
            hashbrown::hash_table::Entry::Occupied(mut slot) => {
                Some(std::mem::replace(slot.get_mut(), value))
            }
            hashbrown::hash_table::Entry::Vacant(slot) => {
                slot.insert(value);
                None
            }
        }
    }

    pub fn remove(&mut self, key: &V::Key) -> Option<V> {
        let hash = self.hasher.hash_one(key);
        let entry = self.table.find_entry(hash, |v| v.key() == key).ok()?;
        Some(entry.remove().0)
    }
}

impl<V: Keyed> std::ops::Index<&V::Key> for LookupSet<V> {
    type Output = V;

    fn index(&self, key: &V::Key) -> &V {
        self.get(key).expect("no entry for this key")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn point_operations() {
        let mut m: LookupMap<String, u32> = LookupMap::new();
        assert!(m.is_empty());
        assert_eq!(m.insert("a".into(), 1), None);
        assert_eq!(m.insert("a".into(), 2), Some(1));
        *m.get_or_default("b".into()) += 5;
        *m.get_or_insert_with("b".into(), || 100) += 1;
        assert_eq!(m.get("a"), Some(&2));
        assert_eq!(m["b"], 6);
        assert_eq!(m.len(), 2);
        assert_eq!(m.remove("a"), Some(2));
        assert_eq!(m.remove("a"), None);
        assert!(!m.contains_key("a"));
        if let Some(v) = m.get_mut("b") {
            *v = 7;
        }
        assert_eq!(m.get("b"), Some(&7));
    }

    struct Named(u64, &'static str);

    impl Keyed for Named {
        type Key = u64;
        fn key(&self) -> &u64 {
            &self.0
        }
    }

    #[test]
    fn a_set_finds_values_by_their_own_key() {
        let mut s: LookupSet<Box<Named>> = LookupSet::default();
        for i in 0..1_000 {
            assert!(s.insert(Box::new(Named(i, "first"))).is_none());
        }
        let replaced = s.insert(Box::new(Named(7, "second"))).expect("7 was there");
        assert_eq!(replaced.1, "first");
        assert_eq!(s[&7].1, "second");
        assert_eq!(s.len(), 1_000);
        for i in (0..1_000).step_by(2) {
            assert_eq!(s.remove(&i).map(|n| n.0), Some(i));
        }
        assert!(s.remove(&0).is_none());
        assert!(!s.contains_key(&998));
        assert!(s.contains_key(&999));
        assert_eq!(s.len(), 500);
    }

    #[test]
    fn survives_growth_and_churn() {
        let mut m: LookupMap<u64, u64> = LookupMap::new();
        for i in 0..10_000 {
            m.insert(i, i * 2);
        }
        for i in (0..10_000).step_by(2) {
            assert_eq!(m.remove(&i), Some(i * 2));
        }
        for i in 0..10_000 {
            assert_eq!(m.get(&i).copied(), (i % 2 == 1).then_some(i * 2));
        }
        assert_eq!(m.len(), 5_000);
    }
}
