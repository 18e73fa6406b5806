//! The recursive maintainer set of a repository: who may publish its state.
//!
//! The maintainer model is still argued over (role tags are appearing in newer clients), so this
//! is the one place that decides it; callers only ask "who is in the set".

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use crate::events::Announcement;
use crate::ids::{Identifier, PublicKey, RepoKey};
use crate::replaceable::precedence;

/// At most this many pubkeys are authorised for one repository; a chain longer than this is
/// cut (in breadth-first order, so the owner's direct maintainers always count).
pub const MAX_MAINTAINERS: usize = 256;

/// Where the maintainer walk looks up announcements: each pubkey's own 30617 with a `d` tag.
pub trait Announcements {
    fn announcement(&self, owner: &PublicKey, identifier: &Identifier) -> Option<&Announcement>;
}

impl Announcements for BTreeMap<RepoKey, Announcement> {
    fn announcement(&self, owner: &PublicKey, identifier: &Identifier) -> Option<&Announcement> {
        self.get(&RepoKey::new(*owner, identifier.clone()))
    }
}

impl Announcements for [Announcement] {
    fn announcement(&self, owner: &PublicKey, identifier: &Identifier) -> Option<&Announcement> {
        self.iter()
            .filter(|a| a.owner == *owner && a.identifier == *identifier)
            .max_by(|x, y| precedence((x.created_at, &x.id), (y.created_at, &y.id)))
    }
}

/// The pubkeys authorised for one repository. Most repositories have no co-maintainers, and
/// the set is computed on every event and attempt, so the owner-only set is held inline
/// rather than as a one-element B-tree (an allocation of a whole node).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MaintainerSet {
    Owner(PublicKey),
    Chain(BTreeSet<PublicKey>),
}

impl MaintainerSet {
    pub fn contains(&self, key: &PublicKey) -> bool {
        match self {
            MaintainerSet::Owner(owner) => owner == key,
            MaintainerSet::Chain(set) => set.contains(key),
        }
    }

    /// In ascending key order.
    pub fn iter(&self) -> impl Iterator<Item = &PublicKey> {
        let (one, many) = match self {
            MaintainerSet::Owner(owner) => (Some(owner), None),
            MaintainerSet::Chain(set) => (None, Some(set.iter())),
        };
        one.into_iter().chain(many.into_iter().flatten())
    }

    pub fn len(&self) -> usize {
        match self {
            MaintainerSet::Owner(_) => 1,
            MaintainerSet::Chain(set) => set.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        false
    }

    pub fn to_set(&self) -> BTreeSet<PublicKey> {
        self.iter().copied().collect()
    }
}

impl From<BTreeSet<PublicKey>> for MaintainerSet {
    fn from(set: BTreeSet<PublicKey>) -> MaintainerSet {
        match set.first() {
            Some(only) if set.len() == 1 => MaintainerSet::Owner(*only),
            _ => MaintainerSet::Chain(set),
        }
    }
}

/// Everyone authorised for `/<owner>/<identifier>.git`: the owner, the maintainers its
/// announcement lists, theirs in turn, and so on. Directional (A listing B gives B rights on A's
/// repository, not A on B's), cycle-safe, and capped at [`MAX_MAINTAINERS`].
pub fn maintainer_set(
    a: &(impl Announcements + ?Sized),
    owner: &PublicKey,
    identifier: &Identifier,
) -> MaintainerSet {
    maintainer_set_capped(a, owner, identifier, MAX_MAINTAINERS)
}

/// [`maintainer_set`] with an explicit cap (at least the owner is always included).
pub fn maintainer_set_capped(
    a: &(impl Announcements + ?Sized),
    owner: &PublicKey,
    identifier: &Identifier,
    cap: usize,
) -> MaintainerSet {
    // The common case without a walk: no announcement, or one listing nobody but the owner.
    let lists_others = a
        .announcement(owner, identifier)
        .is_some_and(|ann| ann.maintainers.iter().any(|m| m != owner));
    if !lists_others || cap <= 1 {
        return MaintainerSet::Owner(*owner);
    }
    let mut set = BTreeSet::from([*owner]);
    let mut queue = VecDeque::from([*owner]);
    while let Some(p) = queue.pop_front() {
        let Some(ann) = a.announcement(&p, identifier) else {
            continue;
        };
        for m in &ann.maintainers {
            if set.len() >= cap {
                return MaintainerSet::from(set);
            }
            if set.insert(*m) {
                queue.push_back(*m);
            }
        }
    }
    MaintainerSet::from(set)
}

/// Whether `author` may publish the state of `/<owner>/<identifier>.git`.
pub fn is_maintainer(
    a: &(impl Announcements + ?Sized),
    owner: &PublicKey,
    identifier: &Identifier,
    author: &PublicKey,
) -> bool {
    author == owner || maintainer_set(a, owner, identifier).contains(author)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testkit::{announcement, ident, pk};

    /// Announcements for identifier "r": each entry is (owner key, maintainer keys).
    fn world(entries: &[(u8, &[u8])]) -> BTreeMap<RepoKey, Announcement> {
        entries
            .iter()
            .map(|(o, ms)| {
                (
                    RepoKey::new(pk(*o), ident("r")),
                    announcement(*o, "r", ms, 1),
                )
            })
            .collect()
    }

    fn set_of(keys: &[u8]) -> BTreeSet<PublicKey> {
        keys.iter().map(|k| pk(*k)).collect()
    }

    #[test]
    fn table() {
        #[allow(clippy::type_complexity)]
        let cases: &[(&str, &[(u8, &[u8])], u8, &[u8])] = &[
            (
                "owner without announcement is still authorised",
                &[],
                1,
                &[1],
            ),
            ("owner alone", &[(1, &[])], 1, &[1]),
            ("direct maintainers", &[(1, &[2, 3])], 1, &[1, 2, 3]),
            ("chain A->B->C", &[(1, &[2]), (2, &[3])], 1, &[1, 2, 3]),
            (
                "multi-maintainer chain",
                &[(1, &[2, 3]), (3, &[4]), (4, &[5, 6])],
                1,
                &[1, 2, 3, 4, 5, 6],
            ),
            (
                "maintainer with no announcement still counts",
                &[(1, &[2]), (3, &[4])],
                1,
                &[1, 2],
            ),
            (
                "directional: B's set does not include A",
                &[(1, &[2])],
                2,
                &[2],
            ),
            (
                "directional down a chain",
                &[(1, &[2]), (2, &[3])],
                2,
                &[2, 3],
            ),
            ("two-cycle", &[(1, &[2]), (2, &[1])], 1, &[1, 2]),
            (
                "two-cycle seen from the other end",
                &[(1, &[2]), (2, &[1])],
                2,
                &[1, 2],
            ),
            (
                "three-cycle",
                &[(1, &[2]), (2, &[3]), (3, &[1])],
                3,
                &[1, 2, 3],
            ),
            ("self-listing", &[(1, &[1, 2])], 1, &[1, 2]),
        ];
        for (name, entries, owner, want) in cases {
            let got = maintainer_set(&world(entries), &pk(*owner), &ident("r"));
            assert_eq!(got.to_set(), set_of(want), "{name}");
            assert_eq!(got.len(), want.len(), "{name}");
            assert!(got.iter().is_sorted(), "{name}");
        }
    }

    #[test]
    fn other_identifiers_do_not_count() {
        let mut w = world(&[(1, &[2])]);
        let other = announcement(2, "other", &[3], 1);
        w.insert(RepoKey::new(pk(2), ident("other")), other);
        assert_eq!(
            maintainer_set(&w, &pk(1), &ident("r")).to_set(),
            set_of(&[1, 2])
        );
    }

    #[test]
    fn cap_bounds_the_set_breadth_first() {
        let w = world(&[(1, &[2, 3]), (2, &[4, 5]), (3, &[6])]);
        let capped = maintainer_set_capped(&w, &pk(1), &ident("r"), 3);
        assert_eq!(capped.to_set(), set_of(&[1, 2, 3]));
        assert_eq!(
            maintainer_set_capped(&w, &pk(1), &ident("r"), 0),
            MaintainerSet::Owner(pk(1))
        );
    }

    #[test]
    fn slice_lookup_takes_the_newest_announcement() {
        let old = announcement(1, "r", &[2], 1);
        let new = announcement(1, "r", &[3], 2);
        let list = [new, old];
        assert_eq!(
            maintainer_set(&list[..], &pk(1), &ident("r")).to_set(),
            set_of(&[1, 3])
        );
        assert!(is_maintainer(&list[..], &pk(1), &ident("r"), &pk(3)));
        assert!(!is_maintainer(&list[..], &pk(1), &ident("r"), &pk(2)));
    }
}
