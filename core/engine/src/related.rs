//! Events that carry no git data, accepted by their relation to what is hosted here, whatever
//! their kind (GRASP-01: a server MUST accept other events that tag, or are tagged by,
//! accepted repository announcements or accepted issues or patches). They are stored and
//! served at once, never held in purgatory.
//!
//! An event relates when
//! - it **tags** something accepted here: an `a`/`A` (or `q`/`Q` holding a coordinate) naming
//!   a served announcement `30617:<owner>:<d>`, or an `e`/`E`/`q`/`Q` naming a served event
//!   (an issue, patch, PR, comment, status, note... anything but a deletion, which anyone may
//!   publish without a relation and so anchors nothing); chains follow from this: a reaction
//!   to a comment on an issue on a hosted repository;
//! - it is **tagged by** something accepted here: an accepted issue, patch, PR, PR update or
//!   comment named its id by `e`/`E`/`q`/`Q` before it arrived (the host keeps a bounded index
//!   of those ids, fed by [`remembered_references`]);
//! - or it is a user grasp list (10317) whose author has a repository here.
//!
//! Git events (30617, 30618, 1618, 1619) and deletions (5) have their own rules in the engine
//! and never come here. Replaceable user kinds (0, 3, 10002) follow the same relation rules
//! and have no exception: a profile is served only when it tags, or is tagged by, something
//! hosted. Ephemeral kinds (20000-29999) are refused: this server keeps what it accepts.
//! Only the first `max_references` reference tags of an event are looked at (each one is a
//! store lookup), and only those are remembered.

use std::collections::BTreeSet;

use crate::acceptance::{RejectPrefix, Rejection};
use crate::events::{
    parse_event_id_hex, Coordinate, KIND_ANNOUNCEMENT, KIND_DELETION, KIND_PR, KIND_PR_UPDATE,
    KIND_STATE,
};
use crate::ids::{EventId, PublicKey, RepoKey};

pub const KIND_PATCH: u16 = 1617;
pub const KIND_ISSUE: u16 = 1621;
/// Statuses: open, applied/merged, closed, draft.
pub const KIND_STATUS: std::ops::RangeInclusive<u16> = 1630..=1633;
pub const KIND_COMMENT: u16 = 1111;
pub const KIND_USER_GRASP_LIST: u16 = 10317;
/// NIP-01: relays do not store these.
pub const KIND_EPHEMERAL: std::ops::RangeInclusive<u16> = 20_000..=29_999;

/// Whether an event of `kind` is decided here, by its relation to what is hosted; the others
/// (announcements, states, PRs, PR updates and deletions) are decided by the engine.
pub fn is_decided_by_relation(kind: u16) -> bool {
    !matches!(
        kind,
        KIND_ANNOUNCEMENT | KIND_STATE | KIND_PR | KIND_PR_UPDATE | KIND_DELETION
    )
}

/// What the store knows, asked by coordinate, event id and author.
pub trait KnownEvents {
    /// An announcement with this coordinate is accepted here (served).
    fn repo_accepted(&self, coordinate: &Coordinate) -> bool;
    /// The kind of the served event with this id, if one is served here.
    fn accepted_kind(&self, id: &EventId) -> Option<u16>;
    /// An accepted issue, patch, PR or comment named this id (see [`remembered_references`]).
    fn referenced_by_accepted(&self, id: &EventId) -> bool;
    /// `author` owns or maintains a repository accepted here.
    fn has_repo(&self, author: &PublicKey) -> bool;
}

/// One thing an event points at.
#[derive(Clone, PartialEq, Eq, Debug)]
pub enum Reference {
    /// A repository announcement, by coordinate.
    Repo(Coordinate),
    /// An event, by id.
    Event(EventId),
}

/// What `event`'s first `max_references` reference tags (`a`, `e`, `q` in either case) point
/// at, in tag order. Coordinates of kinds other than announcements and unparsable values are
/// skipped (they still count towards `max_references`).
pub fn references(
    event: &nostr::event::Event,
    max_references: usize,
) -> impl Iterator<Item = Reference> + '_ {
    event
        .tags
        .iter()
        .filter_map(|tag| match tag.as_slice() {
            [name, value, ..] if is_reference_tag(name) => Some((name.as_str(), value.as_str())),
            _ => None,
        })
        .take(max_references)
        .filter_map(|(name, value)| {
            let by_id = || parse_event_id_hex(value).map(Reference::Event);
            let by_coordinate = || {
                Coordinate::parse(value)
                    .ok()
                    .filter(|c| c.kind == KIND_ANNOUNCEMENT)
                    .map(Reference::Repo)
            };
            match name {
                "a" | "A" => by_coordinate(),
                "e" | "E" => by_id(),
                _ => by_id().or_else(by_coordinate),
            }
        })
}

fn is_reference_tag(name: &str) -> bool {
    matches!(name, "a" | "A" | "e" | "E" | "q" | "Q")
}

/// Whether an accepted event of `kind` vouches for the events that tag it. Deletions do not:
/// anyone may publish one, related or not.
fn anchors(kind: u16) -> bool {
    kind != KIND_DELETION
}

/// Accepts `event` (of a kind [`is_decided_by_relation`]) if it tags, or is tagged by,
/// something accepted here; see the module documentation.
pub fn accept_related(
    event: &nostr::event::Event,
    known: &impl KnownEvents,
    max_references: usize,
) -> Result<(), Rejection> {
    let kind = event.kind.as_u16();
    if KIND_EPHEMERAL.contains(&kind) {
        return Err(refused(format!(
            "kind {kind} is ephemeral (20000-29999) and this server only keeps what it stores"
        )));
    }
    if known.referenced_by_accepted(&event.id) {
        return Ok(());
    }
    if kind == KIND_USER_GRASP_LIST {
        return if known.has_repo(&event.pubkey) {
            Ok(())
        } else {
            Err(refused(
                "a user grasp list is kept only for people with a repository here".into(),
            ))
        };
    }
    let relates = references(event, max_references).any(|reference| match reference {
        Reference::Repo(coordinate) => known.repo_accepted(&coordinate),
        Reference::Event(id) => known.accepted_kind(&id).is_some_and(anchors),
    });
    if relates {
        return Ok(());
    }
    Err(refused(format!(
        "this kind {kind} event tags no repository, issue, patch, PR or comment hosted here \
         (by `a`, `e` or `q`) and nothing hosted here tags it; publish it to a relay of the \
         repository it belongs to"
    )))
}

/// The event ids an accepted `event` names that are themselves accepted when they arrive
/// ("tagged by"): the `e`/`E`/`q`/`Q` ids among the first `max_references` reference tags of
/// an issue, patch, PR, PR update or comment, in tag order, without duplicates or its own id. Other kinds
/// vouch for nothing they name, so a note cannot pull arbitrary events in.
pub fn remembered_references(event: &nostr::event::Event, max_references: usize) -> Vec<EventId> {
    let kind = event.kind.as_u16();
    if !matches!(
        kind,
        KIND_ISSUE | KIND_PATCH | KIND_PR | KIND_PR_UPDATE | KIND_COMMENT
    ) {
        return Vec::new();
    }
    let mut seen = BTreeSet::new();
    references(event, max_references)
        .filter_map(|reference| match reference {
            Reference::Event(id) if id != event.id && seen.insert(id) => Some(id),
            _ => None,
        })
        .collect()
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

fn refused(message: String) -> Rejection {
    Rejection {
        prefix: RejectPrefix::Blocked,
        message,
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::ids::Identifier;
    use crate::testkit;

    /// What is accepted here; `accept` adds an event the way the host does after accepting it.
    #[derive(Default)]
    struct Known {
        repos: BTreeSet<Coordinate>,
        events: BTreeMap<EventId, u16>,
        referenced: BTreeSet<EventId>,
        authors: BTreeSet<PublicKey>,
    }

    impl Known {
        fn accept(&mut self, event: &nostr::event::Event) {
            self.events.insert(event.id, event.kind.as_u16());
            self.referenced
                .extend(remembered_references(event, MAX_REFERENCES));
        }
    }

    impl KnownEvents for Known {
        fn repo_accepted(&self, c: &Coordinate) -> bool {
            self.repos.contains(c)
        }
        fn accepted_kind(&self, id: &EventId) -> Option<u16> {
            self.events.get(id).copied()
        }
        fn referenced_by_accepted(&self, id: &EventId) -> bool {
            self.referenced.contains(id)
        }
        fn has_repo(&self, author: &PublicKey) -> bool {
            self.authors.contains(author)
        }
    }

    const MAX_REFERENCES: usize = 64;

    fn repo(owner: u8, identifier: &str) -> Coordinate {
        Coordinate {
            kind: KIND_ANNOUNCEMENT,
            author: testkit::pk(owner),
            identifier: Identifier::new(identifier).unwrap(),
        }
    }

    /// A world hosting `demo` of key 1.
    fn hosting_demo() -> Known {
        Known {
            repos: [repo(1, "demo")].into(),
            authors: [testkit::pk(1)].into(),
            ..Known::default()
        }
    }

    fn decide(event: &nostr::event::Event, known: &Known) -> Result<(), String> {
        accept_related(event, known, MAX_REFERENCES).map_err(|r| r.to_string())
    }

    #[test]
    fn git_events_and_deletions_keep_their_own_path() {
        for kind in [
            KIND_ANNOUNCEMENT,
            KIND_STATE,
            KIND_PR,
            KIND_PR_UPDATE,
            KIND_DELETION,
        ] {
            assert!(!is_decided_by_relation(kind), "{kind}");
        }
        for kind in [
            0, 1, 3, 7, 1111, 1617, 1621, 1630, 1633, 9802, 10002, 10317, 30023,
        ] {
            assert!(is_decided_by_relation(kind), "{kind}");
        }
    }

    #[test]
    fn related_events_need_a_hosted_anchor() {
        let owner = testkit::keys(1);
        let stranger = testkit::keys(2);
        let demo = repo(1, "demo").to_string();
        let issue = testkit::sign(&stranger, KIND_ISSUE, 10, &[&["a", &demo]]);
        let mut known = hosting_demo();
        known.accept(&issue);
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
            assert_eq!(decide(event, &known).is_ok(), ok, "{what}");
            let refusal = decide(event, &Known::default()).unwrap_err();
            assert!(refusal.starts_with("blocked: "), "{what}: {refusal}");
        }
        assert_eq!(
            thread_root_repo(&issue),
            Some(RepoKey::new(
                owner.public_key(),
                Identifier::new("demo").unwrap()
            ))
        );
        assert_eq!(thread_root_repo(&comment), None);
    }

    #[test]
    fn any_kind_is_accepted_by_what_it_tags() {
        let user = testkit::keys(3);
        let demo = repo(1, "demo").to_string();
        let elsewhere = repo(2, "demo").to_string();
        let mut known = hosting_demo();
        let issue = testkit::sign(&testkit::keys(2), KIND_ISSUE, 10, &[&["a", &demo]]);
        known.accept(&issue);
        let anyone_deletes = testkit::sign(&user, KIND_DELETION, 11, &[&["e", &"0".repeat(64)]]);
        known.accept(&anyone_deletes);
        let issue_id = issue.id.to_hex();
        let accepted: &[(u16, &[&[&str]], &str)] = &[
            (1, &[&["q", &issue_id]], "note quoting an issue"),
            (1, &[&["e", &issue_id]], "note replying to an issue"),
            (1, &[&["Q", &issue_id]], "upper-case q"),
            (1, &[&["a", &demo]], "note tagging a repo"),
            (1, &[&["q", &demo]], "note quoting a repo by coordinate"),
            (7, &[&["e", &issue_id]], "reaction to an issue"),
            (9802, &[&["a", &demo]], "highlight in a repo"),
            (0, &[&["a", &demo]], "profile tagging a repo"),
            (
                1,
                &[&["t", "x"], &["e", "nothex"], &["a", &demo]],
                "junk first",
            ),
        ];
        for (kind, tags, what) in accepted {
            let event = testkit::sign(&user, *kind, 20, tags);
            assert_eq!(decide(&event, &known), Ok(()), "{what}");
        }
        let refused: &[(u16, &[&[&str]], &str)] = &[
            (1, &[&["t", "hello"]], "unrelated note"),
            (1, &[&["a", &elsewhere]], "note tagging a repo not hosted"),
            (
                1,
                &[&["e", &testkit::sign(&user, 1, 1, &[]).id.to_hex()]],
                "unknown id",
            ),
            (
                1,
                &[&["e", &anyone_deletes.id.to_hex()]],
                "note on a deletion",
            ),
            (
                1,
                &[&["p", &testkit::pk(1).to_hex()]],
                "note mentioning an owner",
            ),
            (
                1,
                &[&["a", &format!("30023:{}:demo", testkit::pk(1).to_hex())]],
                "other kind",
            ),
            (10002, &[], "relay list of nobody in particular"),
            (20001, &[&["a", &demo]], "ephemeral"),
        ];
        for (kind, tags, what) in refused {
            let event = testkit::sign(&user, *kind, 20, tags);
            let refusal = decide(&event, &known).unwrap_err();
            assert!(refusal.starts_with("blocked: "), "{what}: {refusal}");
        }
        let note = testkit::sign(&user, 1, 20, &[&["t", "hello"]]);
        assert_eq!(
            decide(&note, &known).unwrap_err(),
            "blocked: this kind 1 event tags no repository, issue, patch, PR or comment hosted \
             here (by `a`, `e` or `q`) and nothing hosted here tags it; publish it to a relay of \
             the repository it belongs to"
        );
    }

    #[test]
    fn chains_lead_back_to_a_hosted_repo() {
        let demo = repo(1, "demo").to_string();
        let issue = testkit::sign(&testkit::keys(2), KIND_ISSUE, 10, &[&["a", &demo]]);
        let comment = testkit::sign(
            &testkit::keys(1),
            KIND_COMMENT,
            11,
            &[&["E", &issue.id.to_hex()], &["e", &issue.id.to_hex()]],
        );
        let reaction = testkit::sign(&testkit::keys(3), 7, 12, &[&["e", &comment.id.to_hex()]]);
        let reply = testkit::sign(&testkit::keys(4), 1, 13, &[&["e", &reaction.id.to_hex()]]);
        let chain = [&issue, &comment, &reaction, &reply];
        let mut known = hosting_demo();
        for (n, link) in chain.iter().enumerate() {
            for later in &chain[n + 1..] {
                assert!(decide(later, &known).is_err(), "accepted before its anchor");
            }
            assert_eq!(decide(link, &known), Ok(()), "link {n}");
            known.accept(link);
        }
        // Without the hosted repository nothing in the chain is anchored.
        assert!(decide(&issue, &Known::default()).is_err());
    }

    #[test]
    fn events_tagged_by_accepted_threads_are_accepted_later() {
        let user = testkit::keys(3);
        let demo = repo(1, "demo").to_string();
        let by_e = testkit::sign(&user, 1, 1, &[]);
        let by_q = testkit::sign(&user, 30023, 2, &[&["d", "article"]]);
        let by_note = testkit::sign(&user, 1, 3, &[]);
        let issue = testkit::sign(
            &testkit::keys(2),
            KIND_ISSUE,
            10,
            &[
                &["a", &demo],
                &["e", &by_e.id.to_hex(), "", "mention"],
                &["q", &by_q.id.to_hex()],
                &["e", &by_e.id.to_hex()],
            ],
        );
        assert_eq!(
            remembered_references(&issue, MAX_REFERENCES),
            [by_e.id, by_q.id]
        );
        // A note vouches for nothing it names, so it cannot pull arbitrary events in.
        let note = testkit::sign(&user, 1, 11, &[&["a", &demo], &["e", &by_note.id.to_hex()]]);
        assert!(remembered_references(&note, MAX_REFERENCES).is_empty());
        for kind in [KIND_PATCH, KIND_PR, KIND_PR_UPDATE, KIND_COMMENT] {
            let thread = testkit::sign(&user, kind, 12, &[&["E", &by_e.id.to_hex()]]);
            assert_eq!(
                remembered_references(&thread, MAX_REFERENCES),
                [by_e.id],
                "{kind}"
            );
        }

        let mut known = hosting_demo();
        for event in [&by_e, &by_q, &by_note] {
            assert!(
                decide(event, &known).is_err(),
                "accepted before it was tagged"
            );
        }
        known.accept(&note);
        known.accept(&issue);
        assert_eq!(decide(&by_e, &known), Ok(()));
        assert_eq!(decide(&by_q, &known), Ok(()));
        assert!(decide(&by_note, &known).is_err());
    }

    #[test]
    fn only_the_first_references_are_looked_at() {
        let demo = repo(1, "demo").to_string();
        let junk = "f".repeat(64);
        let late = testkit::sign(
            &testkit::keys(2),
            KIND_ISSUE,
            10,
            &[
                &["e", &junk],
                &["t", "not a reference"],
                &["e", &junk],
                &["a", &demo],
            ],
        );
        let known = hosting_demo();
        assert!(accept_related(&late, &known, 2).is_err());
        assert_eq!(accept_related(&late, &known, 3), Ok(()));
        assert_eq!(remembered_references(&late, 1).len(), 1);
        assert!(remembered_references(&late, 0).is_empty());
    }
}
