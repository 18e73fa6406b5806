//! The rules at the sizes a busy server sees: states with tens of thousands of refs, maintainer
//! chains at the cap. Checks results, not time (the engine has no clock); timed by hand with
//! `cargo test --release --test rules_scale`.

use std::collections::BTreeMap;

use graspd_core::events::{Announcement, GitEvent, RefName, RepoState};
use graspd_core::maintainers::{maintainer_set, MaintainerSet, MAX_MAINTAINERS};
use graspd_core::push::{decide_push, RefDecision, RefUpdate};
use graspd_core::release::{align_refs, plan_release, Target};
use graspd_core::{EventId, Identifier, Oid, PublicKey, RepoKey};

const REFS: u32 = 20_000;

fn oid(n: u32, salt: u8) -> Oid {
    let mut b = [salt; 20];
    b[..4].copy_from_slice(&n.to_be_bytes());
    Oid::from_bytes(b)
}

fn key(n: u32) -> PublicKey {
    let mut b = [7u8; 32];
    b[..4].copy_from_slice(&n.to_be_bytes());
    PublicKey::from_slice(&b).unwrap()
}

fn refs(salt: u8) -> BTreeMap<RefName, Oid> {
    (0..REFS)
        .map(|i| {
            let name = if i % 2 == 0 {
                format!("refs/heads/b{i}")
            } else {
                format!("refs/tags/t{i}")
            };
            (name, oid(i, if i % 10 == 0 { salt } else { 0 }))
        })
        .collect()
}

fn state(salt: u8) -> RepoState {
    RepoState {
        id: EventId::from_slice(&[salt; 32]).unwrap(),
        author: key(0),
        created_at: u64::from(salt),
        identifier: Identifier::new("big").unwrap(),
        refs: refs(salt).into(),
        head: Some("refs/heads/b0".into()),
        never_satisfiable: false,
    }
}

#[test]
fn twenty_thousand_refs_align_push_and_plan() {
    let current = refs(1);
    let next = state(2);
    let edits = align_refs(&current, &next);
    assert_eq!(edits.len(), (REFS / 10) as usize, "every tenth ref moved");

    let updates: Vec<RefUpdate> = edits
        .iter()
        .map(|e| RefUpdate {
            old: e.expected.unwrap_or(Oid::ZERO),
            new: e.new.unwrap_or(Oid::ZERO),
            name: e.name.clone(),
        })
        .collect();
    let decoys: Vec<RepoState> = (3..40).map(state).collect();
    let mut candidates: Vec<&RepoState> = decoys.iter().collect();
    candidates.push(&next);
    let decisions = decide_push(&current, &updates, &candidates, |_| None);
    assert!(decisions.iter().all(|d| *d == RefDecision::Accept));

    let owner = RepoKey::new(key(0), Identifier::new("big").unwrap());
    let sets: Vec<MaintainerSet> = (0..50).map(|n| MaintainerSet::Owner(key(n))).collect();
    let targets: Vec<Target<'_>> = (0..50)
        .map(|n| Target {
            repo: RepoKey::new(key(n), owner.identifier.clone()),
            refs: &current,
            applied_state: None,
            maintainers: &sets[n as usize],
            waiting_announcement: None,
        })
        .collect();
    let plan = plan_release(&GitEvent::State(next), &owner, &targets, |repo, _| {
        *repo == owner
    })
    .unwrap();
    assert_eq!(
        plan.updates.len(),
        1,
        "only the author's own repository authorises them"
    );
    assert_eq!(plan.updates[0].edits.len(), (REFS / 10) as usize);
}

#[test]
fn maintainer_chain_far_beyond_the_cap_stops_at_the_cap() {
    let id = Identifier::new("r").unwrap();
    // A chain of 10 000 announcements, each listing the next and a fan of 3 others.
    let anns: BTreeMap<RepoKey, Announcement> = (0..10_000u32)
        .map(|n| {
            let ann = Announcement {
                id: EventId::from_slice(&[1; 32]).unwrap(),
                owner: key(n),
                created_at: 1,
                identifier: id.clone(),
                clone: vec![],
                relays: vec![],
                maintainers: vec![key(n + 1), key(n + 20_000), key(n + 30_000), key(0)],
            };
            (RepoKey::new(key(n), id.clone()), ann)
        })
        .collect();
    let set = maintainer_set(&anns, &key(0), &id);
    assert_eq!(set.len(), MAX_MAINTAINERS);
    assert!(set.contains(&key(0)) && set.contains(&key(1)));
}
