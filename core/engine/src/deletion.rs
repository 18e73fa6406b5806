//! NIP-09 deletion requests: which waiting events one removes, and which requests are taken
//! at all. Anyone may sign a deletion, so one is stored only if it deletes something its
//! author has here (served, which the host's store answers, or waiting), and only within
//! size bounds.

use crate::config::Config;
use crate::events::{Deletion, GitEvent};

/// The `OK` message for a deletion that deletes nothing of its author's held here.
pub const NOT_HELD: &str = "blocked: this deletion request deletes nothing held here; name your \
    own events that this server serves or holds in purgatory, by `e` id or by `a` coordinate \
    `<kind>:<your pubkey>:<d>`";

/// A deletion request's size against `max_deletion_content_bytes` and `max_deletion_tags`;
/// the error is the complete `OK` message.
pub fn check_size(event: &nostr::event::Event, config: &Config) -> Result<(), String> {
    let content = event.content.len();
    if content > config.max_deletion_content_bytes {
        return Err(format!(
            "blocked: a deletion request may carry at most {} bytes of content (a short \
             reason); this one has {content}",
            config.max_deletion_content_bytes
        ));
    }
    let tags = event.tags.len();
    if tags > config.max_deletion_tags {
        return Err(format!(
            "blocked: a deletion request may have at most {} tags; this one has {tags}: split \
             it into several requests",
            config.max_deletion_tags
        ));
    }
    Ok(())
}

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

    #[test]
    fn size_bounds() {
        let config = Config {
            max_deletion_content_bytes: 10,
            max_deletion_tags: 2,
            ..Config::default()
        };
        let e = ["e", &"ab".repeat(32)];
        let with = |content: &str, tags: &[&[&str]]| {
            let mut event = sign(&keys(1), KIND_DELETION, 10, tags);
            event.content = content.into();
            event
        };
        assert_eq!(check_size(&with("0123456789", &[&e, &e]), &config), Ok(()));
        let long = check_size(&with("0123456789x", &[&e]), &config).unwrap_err();
        assert!(
            long.starts_with("blocked: ") && long.contains("at most 10 bytes"),
            "{long}"
        );
        assert!(long.contains("this one has 11"), "{long}");
        let many = check_size(&with("", &[&e, &e, &e]), &config).unwrap_err();
        assert!(many.contains("at most 2 tags; this one has 3"), "{many}");
    }
}
