//! Events that carry no git data but belong to hosted repositories (GRASP-01: events that tag,
//! or are tagged by, accepted announcements, issues or patches): patches, issues, statuses,
//! comments and user grasp lists. They are stored and served at once, never held in purgatory.

use crate::acceptance::{RejectPrefix, Rejection};
use crate::events::{Coordinate, KIND_ANNOUNCEMENT};
use crate::ids::{EventId, PublicKey, RepoKey};

pub const KIND_PATCH: u16 = 1617;
pub const KIND_ISSUE: u16 = 1621;
/// Statuses: open, applied/merged, closed, draft.
pub const KIND_STATUS: std::ops::RangeInclusive<u16> = 1630..=1633;
pub const KIND_COMMENT: u16 = 1111;
pub const KIND_USER_GRASP_LIST: u16 = 10317;

/// Whether `kind` is one this module decides.
pub fn is_related_kind(kind: u16) -> bool {
    matches!(
        kind,
        KIND_PATCH | KIND_ISSUE | KIND_COMMENT | KIND_USER_GRASP_LIST
    ) || KIND_STATUS.contains(&kind)
}

/// What the store and engine know, asked by coordinate, event id and author.
pub trait KnownEvents {
    /// An announcement with this coordinate is accepted here (served).
    fn repo_accepted(&self, coordinate: &Coordinate) -> bool;
    /// An event with this id is stored and served here.
    fn event_accepted(&self, id: &EventId) -> bool;
    /// `author` owns or maintains a repository accepted here.
    fn has_repo(&self, author: &PublicKey) -> bool;
}

/// Accepts a related event if it tags an accepted repository (`a`/`A`) or an accepted event
/// (`e`/`E`/`q`), or, for a user grasp list, if its author has a repository here.
pub fn accept_related(
    event: &nostr::event::Event,
    known: &impl KnownEvents,
) -> Result<(), Rejection> {
    let kind = event.kind.as_u16();
    if kind == KIND_USER_GRASP_LIST {
        return if known.has_repo(&event.pubkey) {
            Ok(())
        } else {
            Err(refused(
                "a user grasp list is kept only for people with a repository here",
            ))
        };
    }
    for tag in event.tags.iter() {
        let values = tag.as_slice();
        let (Some(name), Some(value)) = (values.first(), values.get(1)) else {
            continue;
        };
        let tags_known = match name.as_str() {
            "a" | "A" => Coordinate::parse(value)
                .ok()
                .filter(|c| c.kind == KIND_ANNOUNCEMENT)
                .is_some_and(|c| known.repo_accepted(&c)),
            "e" | "E" | "q" => {
                crate::events::parse_event_id_hex(value).is_some_and(|id| known.event_accepted(&id))
            }
            _ => false,
        };
        if tags_known {
            return Ok(());
        }
    }
    Err(refused(
        "this event tags no repository, issue, patch or PR hosted here; publish it to a relay \
         of the repository it belongs to",
    ))
}

/// The repository a patch or issue opens a thread in (its first `a` tag naming an
/// announcement), so the events that answer it can be followed.
pub fn thread_root_repo(event: &nostr::event::Event) -> Option<RepoKey> {
    if !matches!(event.kind.as_u16(), KIND_PATCH | KIND_ISSUE) {
        return None;
    }
    event.tags.iter().find_map(|tag| match tag.as_slice() {
        [name, value, ..] if name == "a" => Coordinate::parse(value)
            .ok()
            .filter(|c| c.kind == KIND_ANNOUNCEMENT)
            .map(|c| RepoKey::new(c.author, c.identifier)),
        _ => None,
    })
}

fn refused(message: &str) -> Rejection {
    Rejection {
        prefix: RejectPrefix::Blocked,
        message: message.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;
    use crate::ids::Identifier;
    use crate::testkit;

    struct Known {
        repos: BTreeSet<Coordinate>,
        events: BTreeSet<EventId>,
        authors: BTreeSet<PublicKey>,
    }

    impl KnownEvents for Known {
        fn repo_accepted(&self, c: &Coordinate) -> bool {
            self.repos.contains(c)
        }
        fn event_accepted(&self, id: &EventId) -> bool {
            self.events.contains(id)
        }
        fn has_repo(&self, author: &PublicKey) -> bool {
            self.authors.contains(author)
        }
    }

    #[test]
    fn related_events_need_a_hosted_anchor() {
        let owner = testkit::keys(1);
        let stranger = testkit::keys(2);
        let repo = Coordinate {
            kind: KIND_ANNOUNCEMENT,
            author: owner.public_key(),
            identifier: Identifier::new("demo").unwrap(),
        };
        let issue = testkit::sign(&stranger, KIND_ISSUE, 10, &[&["a", &repo.to_string()]]);
        let known = Known {
            repos: [repo.clone()].into(),
            events: [issue.id].into(),
            authors: [owner.public_key()].into(),
        };
        let empty = Known {
            repos: BTreeSet::new(),
            events: BTreeSet::new(),
            authors: BTreeSet::new(),
        };
        let comment = testkit::sign(&stranger, KIND_COMMENT, 11, &[&["E", &issue.id.to_hex()]]);
        let status = testkit::sign(&owner, 1632, 12, &[&["e", &issue.id.to_hex()]]);
        let list = testkit::sign(&owner, KIND_USER_GRASP_LIST, 13, &[]);
        let stray = testkit::sign(&stranger, KIND_PATCH, 14, &[&["t", "root"]]);
        let cases = [
            (&issue, true, "issue tagging a hosted repo"),
            (&comment, true, "comment on a hosted issue"),
            (&status, true, "status of a hosted issue"),
            (&list, true, "grasp list of an owner"),
            (&stray, false, "patch tagging nothing hosted"),
        ];
        for (event, ok, what) in cases {
            assert!(is_related_kind(event.kind.as_u16()), "{what}");
            assert_eq!(accept_related(event, &known).is_ok(), ok, "{what}");
            let refusal = accept_related(event, &empty).unwrap_err().to_string();
            assert!(refusal.starts_with("blocked: "), "{what}: {refusal}");
        }
        assert_eq!(
            thread_root_repo(&issue),
            Some(RepoKey::new(owner.public_key(), repo.identifier.clone()))
        );
        assert_eq!(thread_root_repo(&comment), None);
        assert!(!is_related_kind(1));
        assert!(!is_related_kind(30618));
    }
}
