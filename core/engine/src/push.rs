//! Whether to let a `git push` through, decided per ref before receive-pack runs. Reasons are
//! shown to the person pushing as `! [remote rejected] <ref> (<reason>)`.

use std::collections::BTreeMap;

use crate::events::{parse_event_id_hex, RefName, RepoState};
use crate::ids::{EventId, Oid};
use crate::replaceable::supersedes;

/// One receive-pack command `<old> <new> <ref>`; the zero oid means create (old) or delete (new).
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct RefUpdate {
    pub old: Oid,
    pub new: Oid,
    pub name: RefName,
}

#[derive(Clone, PartialEq, Eq, Debug)]
pub enum RefDecision {
    Accept,
    Reject(String),
}

fn is_branch_or_tag(name: &str) -> bool {
    name.starts_with("refs/heads/") || name.starts_with("refs/tags/")
}

fn as_option(oid: Oid) -> Option<Oid> {
    (!oid.is_zero()).then_some(oid)
}

fn short(id: &EventId) -> String {
    id.to_hex()[..12].to_owned()
}

/// The branches and tags the repository would have after `updates`.
fn proposed_refs(
    current: &BTreeMap<RefName, Oid>,
    updates: &[&RefUpdate],
) -> BTreeMap<RefName, Oid> {
    let mut refs: BTreeMap<RefName, Oid> = current
        .iter()
        .filter(|(n, _)| is_branch_or_tag(n))
        .map(|(n, o)| (n.clone(), *o))
        .collect();
    for u in updates {
        match as_option(u.new) {
            Some(new) => refs.insert(u.name.clone(), new),
            None => refs.remove(&u.name),
        };
    }
    refs
}

fn newest<'a>(states: impl Iterator<Item = &'a RepoState>) -> Option<&'a RepoState> {
    states.fold(None, |best: Option<&RepoState>, s| match best {
        Some(b) if !supersedes((s.created_at, &s.id), (b.created_at, &b.id)) => Some(b),
        _ => Some(s),
    })
}

/// The newest candidate state whose refs equal the repository's branches and tags after the
/// branch and tag commands in `updates`; the state a successful push will release. A state
/// that is never satisfiable equals nothing.
pub fn matching_state<'a>(
    current: &BTreeMap<RefName, Oid>,
    updates: &[RefUpdate],
    candidate_states: &[&'a RepoState],
) -> Option<&'a RepoState> {
    let ours: Vec<&RefUpdate> = updates
        .iter()
        .filter(|u| is_branch_or_tag(&u.name))
        .collect();
    let proposed = proposed_refs(current, &ours);
    newest(
        candidate_states
            .iter()
            .copied()
            .filter(|s| !s.never_satisfiable && s.refs == proposed),
    )
}

/// Whether every update of a push asks for what the repository already holds: each ref is
/// already at its new value (or absent, for a deletion) although the client saw it elsewhere.
/// That is a push that raced the server bringing its refs to the same state (a fetch from
/// another server, or an earlier identical push): it changes nothing, so it is answered `ok`
/// whatever its pack holds, with no state needed. No-op commands (`old == new`) and empty
/// pushes are not "already applied": they are answered by the no-op rule.
#[must_use]
pub fn already_applied(current: &BTreeMap<RefName, Oid>, updates: &[RefUpdate]) -> bool {
    !updates.is_empty()
        && updates
            .iter()
            .all(|u| u.old != u.new && current.get(&u.name).copied() == as_option(u.new))
}

/// Decides each command of a push (same order as `updates`).
///
/// `candidate_states` are the waiting states by authors in the owner's maintainer set;
/// `known_pr_commit` gives the `c` commit of a known PR or PR update event.
#[must_use = "a rejected update must be refused to the client"]
pub fn decide_push(
    current: &BTreeMap<RefName, Oid>,
    updates: &[RefUpdate],
    candidate_states: &[&RepoState],
    known_pr_commit: impl Fn(&EventId) -> Option<Oid>,
) -> Vec<RefDecision> {
    let branch_verdicts = decide_branches_and_tags(current, updates, candidate_states);
    updates
        .iter()
        .map(|u| {
            if u.name.starts_with("refs/heads/pr/") {
                RefDecision::Reject(
                    "send PRs over nostr: publish a PR event (kind 1618) and push its tip to \
                     refs/nostr/<event-id>"
                        .to_owned(),
                )
            } else if is_branch_or_tag(&u.name) {
                branch_verdicts
                    .get(&u.name)
                    .cloned()
                    .unwrap_or(RefDecision::Accept)
            } else if let Some(id) = u.name.strip_prefix("refs/nostr/") {
                decide_nostr_ref(id, u, current, &known_pr_commit)
            } else {
                RefDecision::Reject(format!(
                    "only refs/heads/*, refs/tags/* and refs/nostr/<event-id> can be pushed \
                     here, not {}",
                    u.name
                ))
            }
        })
        .collect()
}

/// Decides each command of a push to a GRASP-06 `/prs/` repository: only
/// `refs/nostr/<event-id>`, checked like on a hosted repository; nothing else lives there.
#[must_use = "a rejected update must be refused to the client"]
pub fn decide_prs_push(
    current: &BTreeMap<RefName, Oid>,
    updates: &[RefUpdate],
    known_pr_commit: impl Fn(&EventId) -> Option<Oid>,
) -> Vec<RefDecision> {
    updates
        .iter()
        .map(|u| match u.name.strip_prefix("refs/nostr/") {
            Some(id) => decide_nostr_ref(id, u, current, &known_pr_commit),
            None => RefDecision::Reject(format!(
                "only refs/nostr/<event-id> can be pushed to /prs/ (GRASP-06), not {}: push                  branches and tags to the repository itself",
                u.name
            )),
        })
        .collect()
}

/// Branches and tags are accepted or refused together: accepting some would leave the
/// repository matching no state at all.
fn decide_branches_and_tags(
    current: &BTreeMap<RefName, Oid>,
    updates: &[RefUpdate],
    candidate_states: &[&RepoState],
) -> BTreeMap<RefName, RefDecision> {
    let ours: Vec<&RefUpdate> = updates
        .iter()
        .filter(|u| is_branch_or_tag(&u.name) && !u.name.starts_with("refs/heads/pr/"))
        .collect();
    let all = |d: &dyn Fn(&RefUpdate) -> RefDecision| -> BTreeMap<RefName, RefDecision> {
        ours.iter().map(|u| (u.name.clone(), d(u))).collect()
    };
    if ours.iter().all(|u| u.old == u.new) {
        return all(&|_| RefDecision::Accept);
    }
    if let Some(stale) = ours
        .iter()
        .find(|u| current.get(&u.name).copied() != as_option(u.old))
    {
        let here = current
            .get(&stale.name)
            .map_or("absent".to_owned(), ToString::to_string);
        return all(&|u| {
            RefDecision::Reject(if u.name == stale.name {
                format!("fetch first: {} is {here} here", u.name)
            } else {
                format!("fetch first: {} is out of date", stale.name)
            })
        });
    }
    // A state that is never satisfiable is neither matched nor named as the one to push.
    let candidate_states: Vec<&RepoState> = candidate_states
        .iter()
        .copied()
        .filter(|s| !s.never_satisfiable)
        .collect();
    let proposed = proposed_refs(current, &ours);
    if candidate_states.iter().any(|s| s.refs == proposed) {
        return all(&|_| RefDecision::Accept);
    }
    let Some(newest) = newest(candidate_states.iter().copied()) else {
        return all(&|u| {
            RefDecision::Reject(match as_option(u.new) {
                Some(new) => format!(
                    "no state event in purgatory matches: announce a 30618 state with {}={new} \
                     first",
                    u.name
                ),
                None => format!(
                    "no state event in purgatory matches: announce a 30618 state without {} \
                     first",
                    u.name
                ),
            })
        });
    };
    // The first ref where this push and the newest waiting state disagree.
    let differing = proposed
        .keys()
        .chain(newest.refs.keys())
        .find(|n| proposed.get(*n) != newest.refs.get(n))
        .cloned()
        .unwrap_or_default();
    let state = short(&newest.id);
    let needs = |name: &str| match newest.refs.get(name) {
        Some(o) => format!("also needs {name}={o} in this push"),
        None => format!("has no {name}: delete it in this push"),
    };
    all(&|u| {
        RefDecision::Reject(match newest.refs.get(&u.name) {
            Some(o) if proposed.get(&u.name) != Some(o) => format!(
                "the newest waiting state ({state}) has {}={o}: push that, or announce a \
                 30618 state matching this push first",
                u.name
            ),
            None if proposed.contains_key(&u.name) => format!(
                "the newest waiting state ({state}) has no {}: push that deletion, or \
                 announce a 30618 state matching this push first",
                u.name
            ),
            _ => format!("the newest waiting state ({state}) {}", needs(&differing)),
        })
    })
}

fn decide_nostr_ref(
    id: &str,
    u: &RefUpdate,
    current: &BTreeMap<RefName, Oid>,
    known_pr_commit: &impl Fn(&EventId) -> Option<Oid>,
) -> RefDecision {
    let Some(event_id) = parse_event_id_hex(id) else {
        return RefDecision::Reject(
            "refs/nostr/<id> needs the 64-character lowercase hex id of a PR or PR update event"
                .to_owned(),
        );
    };
    if u.new.is_zero() {
        return RefDecision::Reject(
            "refs/nostr/* refs are kept by the server and cannot be deleted by a push".to_owned(),
        );
    }
    // Once set (by its push or its release), the ref names the event's commit for good: a new
    // tip is a new event (a PR update, kind 1619) with a ref of its own.
    if let Some(held) = current.get(&u.name).filter(|held| **held != u.new) {
        return RefDecision::Reject(format!(
            "{} already holds {held}: publish a PR update (kind 1619) for a new tip",
            u.name
        ));
    }
    match known_pr_commit(&event_id) {
        Some(c) if c != u.new => RefDecision::Reject(format!(
            "event {} says its tip is {c}, not {}",
            short(&event_id),
            u.new
        )),
        _ => RefDecision::Accept,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testkit::{oid, refs, state};

    fn upd(name: &str, old: u8, new: u8) -> RefUpdate {
        RefUpdate {
            old: Oid::from_bytes([old; 20]),
            new: Oid::from_bytes([new; 20]),
            name: name.to_owned(),
        }
    }

    const PR_ID: &str = "0f0f0f0f0f0f0f0f0f0f0f0f0f0f0f0f0f0f0f0f0f0f0f0f0f0f0f0f0f0f0f0f";

    #[test]
    fn a_push_whose_refs_are_already_here_is_already_applied() {
        let current = refs(&[("refs/heads/main", 3), ("refs/tags/v1", 9)]);
        let applied = |updates: &[RefUpdate]| already_applied(&current, updates);
        assert!(applied(&[upd("refs/heads/main", 1, 3)]));
        assert!(applied(&[
            upd("refs/heads/main", 0, 3),
            upd("refs/tags/v1", 0, 9)
        ]));
        // A deletion of a ref that is already gone.
        assert!(applied(&[upd("refs/heads/gone", 4, 0)]));
        // One ref still to move: the push must be decided.
        assert!(!applied(&[
            upd("refs/heads/main", 1, 3),
            upd("refs/heads/dev", 0, 2)
        ]));
        assert!(!applied(&[upd("refs/heads/main", 3, 4)]));
        // A deletion of a ref that is here.
        assert!(!applied(&[upd("refs/tags/v1", 9, 0)]));
        // No-ops and empty pushes are the no-op rule's.
        assert!(!applied(&[upd("refs/heads/main", 3, 3)]));
        assert!(!applied(&[]));
    }

    /// `Ok` = accept, `Err(text)` = reject with a reason containing `text`.
    type Want = Result<(), &'static str>;

    #[test]
    fn table() {
        let current = refs(&[
            ("refs/heads/main", 1),
            ("refs/heads/dev", 2),
            ("refs/tags/v1", 9),
        ]);
        // S1: main moves to 3. S2 (newer): main at 3 and dev deleted. Annotated tag v2 -> 0x77.
        let s1 = state(
            1,
            "r",
            10,
            &[
                ("refs/heads/main", 3),
                ("refs/heads/dev", 2),
                ("refs/tags/v1", 9),
            ],
            None,
        );
        let s2 = state(
            2,
            "r",
            20,
            &[("refs/heads/main", 3), ("refs/tags/v1", 9)],
            None,
        );
        let tagged = state(
            1,
            "r",
            30,
            &[
                ("refs/heads/main", 1),
                ("refs/heads/dev", 2),
                ("refs/tags/v1", 9),
                ("refs/tags/v2", 0x77),
            ],
            None,
        );
        let nostr_ref = format!("refs/nostr/{PR_ID}");
        let known = |id: &EventId| (id.to_hex() == PR_ID).then_some(oid(7));
        #[allow(clippy::type_complexity)]
        let cases: Vec<(&str, Vec<&RepoState>, Vec<RefUpdate>, Vec<Want>)> = vec![
            (
                "fast-forward to a waiting state",
                vec![&s1],
                vec![upd("refs/heads/main", 1, 3)],
                vec![Ok(())],
            ),
            (
                "update plus deleted branch",
                vec![&s1, &s2],
                vec![upd("refs/heads/main", 1, 3), upd("refs/heads/dev", 2, 0)],
                vec![Ok(()), Ok(())],
            ),
            (
                "partial push: the state also deletes dev",
                vec![&s2],
                vec![upd("refs/heads/main", 1, 3)],
                vec![Err("has no refs/heads/dev: delete it in this push")],
            ),
            (
                "wrong commit",
                vec![&s1],
                vec![upd("refs/heads/main", 1, 4)],
                vec![Err(
                    "has refs/heads/main=0303030303030303030303030303030303030303: push that",
                )],
            ),
            (
                "no state at all",
                vec![],
                vec![upd("refs/heads/main", 1, 4)],
                vec![Err(
                    "no state event in purgatory matches: announce a 30618 state with \
                     refs/heads/main=0404040404040404040404040404040404040404 first",
                )],
            ),
            (
                "deletion with no state",
                vec![],
                vec![upd("refs/heads/dev", 2, 0)],
                vec![Err("announce a 30618 state without refs/heads/dev first")],
            ),
            (
                "no-ops only",
                vec![],
                vec![upd("refs/heads/main", 1, 1)],
                vec![Ok(())],
            ),
            (
                "stale old value",
                vec![&s1],
                vec![upd("refs/heads/main", 5, 3)],
                vec![Err("fetch first: refs/heads/main is 0101")],
            ),
            (
                "stale create",
                vec![&s1],
                vec![upd("refs/heads/main", 0, 3)],
                vec![Err("fetch first")],
            ),
            (
                "annotated tag: the tag object",
                vec![&tagged],
                vec![upd("refs/tags/v2", 0, 0x77)],
                vec![Ok(())],
            ),
            (
                "branches and tags stand or fall together",
                vec![&s1],
                vec![upd("refs/heads/main", 1, 3), upd("refs/tags/v1", 9, 8)],
                vec![
                    Err("also needs refs/tags/v1=0909090909090909090909090909090909090909 in this push"),
                    Err("has refs/tags/v1=0909090909090909090909090909090909090909: push that"),
                ],
            ),
            (
                "pr branch",
                vec![&s1],
                vec![upd("refs/heads/pr/fix", 0, 7)],
                vec![Err("send PRs over nostr")],
            ),
            (
                "other namespace",
                vec![],
                vec![upd("refs/notes/commits", 0, 7)],
                vec![Err("only refs/heads/*")],
            ),
            (
                "PR pushed before its event",
                vec![],
                vec![upd(&format!("refs/nostr/{}", "ab".repeat(32)), 0, 7)],
                vec![Ok(())],
            ),
            (
                "PR pushed after its event",
                vec![],
                vec![upd(&nostr_ref, 0, 7)],
                vec![Ok(())],
            ),
            (
                "commit mismatch",
                vec![],
                vec![upd(&nostr_ref, 0, 8)],
                vec![Err(
                    "event 0f0f0f0f0f0f says its tip is 0707070707070707070707070707070707070707",
                )],
            ),
            (
                "bad event id",
                vec![],
                vec![upd(&format!("refs/nostr/{}", PR_ID.to_uppercase()), 0, 7)],
                vec![Err("64-character lowercase hex")],
            ),
            (
                "short event id",
                vec![],
                vec![upd("refs/nostr/abc", 0, 7)],
                vec![Err("64-character lowercase hex")],
            ),
            (
                "nostr ref deletion",
                vec![],
                vec![upd(&nostr_ref, 7, 0)],
                vec![Err("cannot be deleted")],
            ),
            (
                "refused branches do not block a PR ref",
                vec![],
                vec![upd("refs/heads/main", 1, 4), upd(&nostr_ref, 0, 7)],
                vec![Err("no state event"), Ok(())],
            ),
        ];
        for (name, candidates, updates, want) in cases {
            let got = decide_push(&current, &updates, &candidates, known);
            assert_eq!(got.len(), want.len(), "{name}");
            for (g, w) in got.iter().zip(&want) {
                match (g, w) {
                    (RefDecision::Accept, Ok(())) => {}
                    (RefDecision::Reject(r), Err(text)) if r.contains(text) => {}
                    _ => panic!("{name}: got {g:?}, want {w:?}"),
                }
            }
        }
    }

    #[test]
    fn first_push_into_an_empty_repo() {
        let s = state(
            1,
            "r",
            1,
            &[("refs/heads/main", 1)],
            Some("refs/heads/main"),
        );
        let got = decide_push(&refs(&[]), &[upd("refs/heads/main", 0, 1)], &[&s], |_| None);
        assert_eq!(got, vec![RefDecision::Accept]);
    }

    #[test]
    fn newest_matching_state_wins() {
        let current = refs(&[]);
        let push = [upd("refs/heads/main", 0, 1)];
        let old = state(1, "r", 1, &[("refs/heads/main", 1)], None);
        let new = state(2, "r", 2, &[("refs/heads/main", 1)], None);
        let other = state(3, "r", 3, &[("refs/heads/main", 2)], None);
        let got = matching_state(&current, &push, &[&old, &new, &other]).unwrap();
        assert_eq!(got.id, new.id);
        let got = matching_state(&current, &push, &[&new, &old]).unwrap();
        assert_eq!(got.id, new.id);
        // Equal timestamps: the lowest id.
        let a = state(1, "r", 5, &[("refs/heads/main", 1)], None);
        let b = state(2, "r", 5, &[("refs/heads/main", 1)], None);
        let lowest = if a.id < b.id { a.id } else { b.id };
        assert_eq!(
            matching_state(&current, &push, &[&a, &b]).unwrap().id,
            lowest
        );
        assert_eq!(
            matching_state(&current, &push, &[&b, &a]).unwrap().id,
            lowest
        );
        assert!(matching_state(&current, &push, &[&other]).is_none());
    }

    #[test]
    fn a_never_satisfiable_state_matches_no_push() {
        // Its parsed refs equal the push; the ref it could not read makes it unequal to any.
        let mut unreadable = state(1, "r", 9, &[("refs/heads/main", 1)], None);
        unreadable.never_satisfiable = true;
        let push = [upd("refs/heads/main", 0, 1)];
        assert!(matching_state(&refs(&[]), &push, &[&unreadable]).is_none());
        let got = decide_push(&refs(&[]), &push, &[&unreadable], |_| None);
        assert!(
            matches!(&got[..], [RefDecision::Reject(r)] if r.contains("no state event")),
            "{got:?}"
        );
        // It neither hides nor outranks an older state the push equals.
        let older = state(1, "r", 1, &[("refs/heads/main", 1)], None);
        let got = matching_state(&refs(&[]), &push, &[&unreadable, &older]).unwrap();
        assert_eq!(got.id, older.id);
    }
}
