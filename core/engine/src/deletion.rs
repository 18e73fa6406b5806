//! NIP-09 deletion requests against events waiting in purgatory.

use crate::events::{Deletion, GitEvent};

/// Whether `deletion` removes `event`: only its own author's events, by id, or by coordinate
/// for addressable events (30617, 30618) published no later than the deletion (NIP-09: a
/// coordinate deletes every version up to the request's `created_at`). Deletions themselves
/// cannot be deleted.
pub fn deletion_matches(deletion: &Deletion, event: &GitEvent) -> bool {
    if matches!(event, GitEvent::Deletion(_)) || deletion.author != *event.author() {
        return false;
    }
    if deletion.event_ids.contains(event.id()) {
        return true;
    }
    event.coordinate().is_some_and(|c| {
        event.created_at() <= deletion.created_at && deletion.coordinates.contains(&c)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::events::KIND_DELETION;
    use crate::testkit::{announcement, keys, oid, parsed, pk, sign, state};

    fn deletion(author: u8, created_at: u64, tags: &[(&str, String)]) -> Deletion {
        let tags: Vec<[&str; 2]> = tags.iter().map(|(k, v)| [*k, v.as_str()]).collect();
        let tags: Vec<&[&str]> = tags.iter().map(|t| &t[..]).collect();
        match parsed(&sign(&keys(author), KIND_DELETION, created_at, &tags)) {
            GitEvent::Deletion(d) => d,
            _ => unreachable!(),
        }
    }

    #[test]
    fn table() {
        let st = GitEvent::State(state(1, "r:x", 10, &[("refs/heads/main", 1)], None));
        let ann = GitEvent::Announcement(announcement(1, "r:x", &[], 10));
        let pr = {
            let a = format!("30617:{}:r:x", pk(1).to_hex());
            parsed(&sign(
                &keys(1),
                crate::events::KIND_PR,
                10,
                &[&["a", &a], &["c", &oid(1).to_string()]],
            ))
        };
        let state_coord = format!("30618:{}:r:x", pk(1).to_hex());
        let ann_coord = format!("30617:{}:r:x", pk(1).to_hex());
        let id = |e: &GitEvent| e.id().to_hex();
        let cases: Vec<(&str, Deletion, &GitEvent, bool)> = vec![
            ("by id", deletion(1, 20, &[("e", id(&st))]), &st, true),
            ("pr by id", deletion(1, 20, &[("e", id(&pr))]), &pr, true),
            (
                "by id, other author",
                deletion(2, 20, &[("e", id(&st))]),
                &st,
                false,
            ),
            ("other id", deletion(1, 20, &[("e", id(&ann))]), &st, false),
            (
                "state by coordinate",
                deletion(1, 20, &[("a", state_coord.clone())]),
                &st,
                true,
            ),
            (
                "announcement by coordinate",
                deletion(1, 20, &[("a", ann_coord.clone())]),
                &ann,
                true,
            ),
            (
                "coordinate of the other kind",
                deletion(1, 20, &[("a", ann_coord.clone())]),
                &st,
                false,
            ),
            (
                "coordinate, same second",
                deletion(1, 10, &[("a", state_coord.clone())]),
                &st,
                true,
            ),
            (
                "coordinate, event newer than deletion",
                deletion(1, 9, &[("a", state_coord.clone())]),
                &st,
                false,
            ),
            (
                "coordinate naming another author",
                deletion(2, 20, &[("a", format!("30618:{}:r:x", pk(2).to_hex()))]),
                &st,
                false,
            ),
            (
                "coordinate, other identifier",
                deletion(1, 20, &[("a", format!("30618:{}:r", pk(1).to_hex()))]),
                &st,
                false,
            ),
            (
                "PRs have no coordinate",
                deletion(1, 20, &[("a", ann_coord.clone())]),
                &pr,
                false,
            ),
        ];
        for (name, d, event, want) in cases {
            assert_eq!(deletion_matches(&d, event), want, "{name}");
        }
        let d = deletion(1, 20, &[]);
        let dd = GitEvent::Deletion(deletion(1, 30, &[("e", d.id.to_hex())]));
        let GitEvent::Deletion(dd_inner) = &dd else {
            unreachable!()
        };
        assert!(
            !deletion_matches(dd_inner, &GitEvent::Deletion(d)),
            "deletions are final"
        );
    }
}
