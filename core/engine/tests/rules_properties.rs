//! Properties tying the rules together, through the public API only: aligning refs reaches the
//! state exactly, a push made of those edits is accepted, and replaceable ordering is total.

use std::collections::{BTreeMap, BTreeSet};

use graspd_core::events::{Announcement, RefName, RepoState};
use graspd_core::maintainers::{maintainer_set_capped, Announcements};
use graspd_core::push::{decide_push, RefDecision, RefUpdate};
use graspd_core::release::align_refs;
use graspd_core::replaceable::supersedes;
use graspd_core::{EventId, Identifier, Oid, PublicKey, RepoKey};
use quickcheck::{quickcheck, TestResult};

const REF_POOL: &[&str] = &[
    "refs/heads/main",
    "refs/heads/dev",
    "refs/heads/a/b",
    "refs/tags/v1",
    "refs/tags/v2",
    "refs/nostr/0000000000000000000000000000000000000000000000000000000000000001",
];

fn refs_from(pairs: &[(u8, u8)], allow_nostr: bool) -> BTreeMap<RefName, Oid> {
    let pool = if allow_nostr {
        REF_POOL.len()
    } else {
        REF_POOL.len() - 1
    };
    pairs
        .iter()
        .map(|(r, o)| {
            let name = REF_POOL[*r as usize % pool].to_owned();
            (name, Oid::from_bytes([o % 4 + 1; 20]))
        })
        .collect()
}

fn state_with(refs: BTreeMap<RefName, Oid>) -> RepoState {
    RepoState {
        id: EventId::from_slice(&[9; 32]).unwrap(),
        author: PublicKey::from_slice(&[2; 32]).unwrap(),
        created_at: 1,
        identifier: Identifier::new("r").unwrap(),
        refs: refs.into(),
        head: None,
        never_satisfiable: false,
    }
}

fn is_branch_or_tag(n: &str) -> bool {
    n.starts_with("refs/heads/") || n.starts_with("refs/tags/")
}

fn as_update(name: &str, expected: Option<Oid>, new: Option<Oid>) -> RefUpdate {
    RefUpdate {
        old: expected.unwrap_or(Oid::ZERO),
        new: new.unwrap_or(Oid::ZERO),
        name: name.to_owned(),
    }
}

#[test]
fn aligning_reaches_the_state_and_leaves_other_namespaces_alone() {
    fn prop(current: Vec<(u8, u8)>, wanted: Vec<(u8, u8)>) -> bool {
        let current = refs_from(&current, true);
        let state = state_with(refs_from(&wanted, false));
        let edits = align_refs(&current, &state);
        let mut repo = current.clone();
        for e in &edits {
            if repo.get(&e.name).copied() != e.expected || e.expected == e.new {
                return false;
            }
            match e.new {
                Some(n) => repo.insert(e.name.clone(), n),
                None => repo.remove(&e.name),
            };
        }
        let names: Vec<&RefName> = edits.iter().map(|e| &e.name).collect();
        let sorted_unique = names.windows(2).all(|w| w[0] < w[1]);
        let branches: BTreeMap<RefName, Oid> = repo
            .iter()
            .filter(|(n, _)| is_branch_or_tag(n))
            .map(|(n, o)| (n.clone(), *o))
            .collect();
        let others_kept = current
            .iter()
            .filter(|(n, _)| !is_branch_or_tag(n))
            .all(|(n, o)| repo.get(n) == Some(o));
        sorted_unique && state.refs == branches && others_kept
    }
    quickcheck(prop as fn(Vec<(u8, u8)>, Vec<(u8, u8)>) -> bool);
}

#[test]
fn a_push_of_the_aligning_edits_is_accepted_and_any_other_is_not() {
    fn prop(current: Vec<(u8, u8)>, wanted: Vec<(u8, u8)>, skip: u8) -> TestResult {
        let current = refs_from(&current, false);
        let state = state_with(refs_from(&wanted, false));
        let edits = align_refs(&current, &state);
        if edits.is_empty() {
            return TestResult::discard();
        }
        let updates: Vec<RefUpdate> = edits
            .iter()
            .map(|e| as_update(&e.name, e.expected, e.new))
            .collect();
        let all_accepted = decide_push(&current, &updates, &[&state], |_| None)
            .iter()
            .all(|d| *d == RefDecision::Accept);
        // Leaving one command out never matches the state; every branch/tag is refused.
        let mut partial = updates.clone();
        partial.remove(skip as usize % updates.len());
        let partial_refused = partial.is_empty()
            || decide_push(&current, &partial, &[&state], |_| None)
                .iter()
                .all(|d| matches!(d, RefDecision::Reject(_)));
        TestResult::from_bool(all_accepted && partial_refused)
    }
    quickcheck(prop as fn(Vec<(u8, u8)>, Vec<(u8, u8)>, u8) -> TestResult);
}

#[test]
fn supersedes_is_nip01s_strict_total_order() {
    fn prop(a: (u8, u8), b: (u8, u8), c: (u8, u8)) -> bool {
        let id = |n: u8| EventId::from_slice(&[n; 32]).unwrap();
        let (ia, ib, ic) = (id(a.1), id(b.1), id(c.1));
        let (x, y, z) = (
            (a.0 as u64 % 3, &ia),
            (b.0 as u64 % 3, &ib),
            (c.0 as u64 % 3, &ic),
        );
        let irreflexive = !supersedes(x, x);
        let total = x == y || supersedes(x, y) != supersedes(y, x);
        let transitive = !(supersedes(x, y) && supersedes(y, z)) || supersedes(x, z);
        // NIP-01: the later created_at wins; on a tie the lowest id wins, never the highest.
        let nip01 = x.0 == y.0 || supersedes(x, y) == (x.0 > y.0);
        let tie = x.0 != y.0 || supersedes(x, y) == (x.1 < y.1);
        irreflexive && total && transitive && nip01 && tie
    }
    quickcheck(prop as fn((u8, u8), (u8, u8), (u8, u8)) -> bool);
}

struct Graph(BTreeMap<RepoKey, Announcement>);

impl Announcements for Graph {
    fn announcement(&self, owner: &PublicKey, identifier: &Identifier) -> Option<&Announcement> {
        self.0.get(&RepoKey::new(*owner, identifier.clone()))
    }
}

#[test]
fn maintainer_set_contains_the_owner_is_capped_and_closed() {
    fn prop(edges: Vec<(u8, u8)>, owner: u8, cap: u8) -> bool {
        let key = |n: u8| PublicKey::from_slice(&[n % 8 + 1; 32]).unwrap();
        let id = Identifier::new("r").unwrap();
        let mut lists: BTreeMap<u8, Vec<PublicKey>> = BTreeMap::new();
        for (from, to) in edges {
            lists.entry(from % 8).or_default().push(key(to));
        }
        let graph = Graph(
            lists
                .into_iter()
                .map(|(from, maintainers)| {
                    let ann = Announcement {
                        id: EventId::from_slice(&[from; 32]).unwrap(),
                        owner: key(from),
                        created_at: 1,
                        identifier: id.clone(),
                        clone: vec![],
                        relays: vec![],
                        maintainers,
                    };
                    (RepoKey::new(key(from), id.clone()), ann)
                })
                .collect(),
        );
        let cap = cap as usize % 10;
        let set: BTreeSet<PublicKey> =
            maintainer_set_capped(&graph, &key(owner), &id, cap).to_set();
        let capped = set.len() <= cap.max(1);
        let closed = set.len() >= cap
            || set.iter().all(|p| {
                graph
                    .announcement(p, &id)
                    .is_none_or(|a| a.maintainers.iter().all(|m| set.contains(m)))
            });
        set.contains(&key(owner)) && capped && closed
    }
    quickcheck(prop as fn(Vec<(u8, u8)>, u8, u8) -> bool);
}
