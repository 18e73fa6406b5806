//! When an event's git data has arrived: a state needs every branch and tag object it lists, a
//! PR or PR update its `c` commit. Announcements and deletions need nothing (an announcement
//! is released with its repository's first satisfiable state, see `release`).

use std::collections::BTreeSet;

use crate::events::GitEvent;
use crate::ids::Oid;

/// The objects that must be present before `event` can be released, sorted, without repeats.
pub fn required_objects(event: &GitEvent) -> Vec<Oid> {
    match event {
        GitEvent::State(s) => s
            .refs
            .values()
            .copied()
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect(),
        GitEvent::Pr(p) => vec![p.commit],
        GitEvent::Announcement(_) | GitEvent::Deletion(_) => Vec::new(),
    }
}

/// The required objects that are not `present` yet; empty means the event is satisfiable.
pub fn missing(event: &GitEvent, present: impl Fn(&Oid) -> bool) -> Vec<Oid> {
    required_objects(event)
        .into_iter()
        .filter(|oid| !present(oid))
        .collect()
}

#[cfg(test)]
fn is_satisfied(event: &GitEvent, present: impl Fn(&Oid) -> bool) -> bool {
    required_objects(event).iter().all(present)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testkit::{announcement, keys, oid, parsed, pk, sign, state};

    fn pr(commit: u8) -> GitEvent {
        let a = format!("30617:{}:r", pk(1).to_hex());
        let c = oid(commit).to_string();
        parsed(&sign(
            &keys(2),
            crate::events::KIND_PR,
            1,
            &[&["a", &a], &["c", &c]],
        ))
    }

    #[test]
    fn table() {
        let annotated = state(
            1,
            "r",
            1,
            &[
                ("refs/heads/main", 1),
                ("refs/tags/v1", 2),
                ("refs/heads/dev", 1),
            ],
            Some("refs/heads/main"),
        );
        let cases: &[(&str, GitEvent, &[u8], &[u8])] = &[
            (
                "state: nothing present",
                GitEvent::State(annotated.clone()),
                &[],
                &[1, 2],
            ),
            (
                "state: tag object missing",
                GitEvent::State(annotated.clone()),
                &[1],
                &[2],
            ),
            (
                "state: all present",
                GitEvent::State(annotated),
                &[1, 2],
                &[],
            ),
            (
                "empty state is satisfied",
                GitEvent::State(state(1, "r", 1, &[], None)),
                &[],
                &[],
            ),
            ("pr before its commit", pr(7), &[1], &[7]),
            ("pr after its commit", pr(7), &[7], &[]),
            (
                "announcement needs nothing",
                GitEvent::Announcement(announcement(1, "r", &[], 1)),
                &[],
                &[],
            ),
        ];
        for (name, event, present, want) in cases {
            let present: Vec<Oid> = present.iter().map(|n| oid(*n)).collect();
            let got = missing(event, |o| present.contains(o));
            let want: Vec<Oid> = want.iter().map(|n| oid(*n)).collect();
            assert_eq!(got, want, "{name}");
            assert_eq!(
                is_satisfied(event, |o| present.contains(o)),
                want.is_empty(),
                "{name}"
            );
        }
    }

    #[test]
    fn required_objects_are_deduplicated() {
        let s = state(1, "r", 1, &[("refs/heads/a", 3), ("refs/heads/b", 3)], None);
        assert_eq!(required_objects(&GitEvent::State(s)), vec![oid(3)]);
    }
}
