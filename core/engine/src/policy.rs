//! The operator's curation lists: authors and repositories this server refuses, when an
//! allow list is set, the only repositories it hosts, and the repositories it keeps as
//! read-only archive mirrors (GRASP-05). One pure decision per event, [`Policy::check`], made
//! before anything else decides the event, published or synced.
//!
//! Precedence: a denied author is refused whatever the event; then a denied repository; then,
//! for announcements, the allow list; then the archive list, whose announcements are taken
//! although they do not list this server ([`Policy::repo_mode`]); otherwise the event goes on
//! to the usual rules.
//!
//! The repositories an event is for: an announcement's or state's own `<author>/<d>`; for
//! every other kind but deletions, the repository announcements its `a` tags name (a PR, PR
//! update, issue, patch or comment about a denied repository is refused too). Deletions are
//! judged by their author only, so an owner can still delete what a denied repository left.
//!
//! The lists can change while the server runs (the engine takes a new [`Policy`] as an input).
//! What is already stored is then judged by the deny lists alone ([`Policy::serves`],
//! [`Policy::denies_repo`]): a denied author's or repository's events stop being served and
//! its git data stops being fetched, without anything being deleted, so lifting the deny
//! serves them again. An allow list only decides which announcements are taken in.

use std::borrow::Borrow;
use std::collections::BTreeSet;
use std::fmt;
use std::str::FromStr;
use std::sync::Arc;

use nostr::event::Event;
use nostr::nips::nip19::FromBech32;

use crate::events::{Coordinate, GitEvent, KIND_ANNOUNCEMENT, KIND_DELETION, KIND_STATE};
use crate::ids::{Identifier, PublicKey};

/// The reason a push to a read-only archive mirror is refused, per ref.
pub const READ_ONLY_ARCHIVE: &str = "blocked: read-only archive mirror: this server copies \
    the repository from the servers its announcement lists; push there";

/// How this server keeps a repository the lists let in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RepoMode {
    /// The usual rules: its announcement must list this server, and pushes are decided by
    /// its states.
    Hosted,
    /// Named by the archive list (`--archive-repo`): its announcement is taken whether or not
    /// it lists this server, its data is fetched from the servers it lists, and pushes are
    /// refused unless the operator allows them.
    Archive,
}

/// Why [`Policy::check`] refused an event; [`PolicyRefusal::message`] is the `OK` text.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PolicyRefusal {
    /// The event's author is denied (`--deny-author`).
    Author,
    /// The event is for a denied repository (`--deny-repo`).
    Repo,
    /// An announcement of a repository the allow list does not name (`--allow-repo`).
    NotAllowed,
}

impl PolicyRefusal {
    /// The complete `OK` message. Deny lists say no more than "not accepted here", so as not
    /// to advertise who or what is on them.
    pub fn message(self) -> &'static str {
        match self {
            PolicyRefusal::Author | PolicyRefusal::Repo => "blocked: not accepted here",
            PolicyRefusal::NotAllowed => "blocked: this server only hosts listed repositories",
        }
    }
}

/// One entry of `--deny-repo` / `--allow-repo`: `<npub>`, `<npub>/<identifier>` or
/// `<identifier>`.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum RepoEntry {
    /// Every repository of this owner.
    Owner(PublicKey),
    /// One repository.
    Repo(PublicKey, Identifier),
    /// Every repository with this identifier, whoever owns it.
    Identifier(Identifier),
}

impl FromStr for RepoEntry {
    type Err = String;

    /// A value starting with `npub1` must be a valid npub: a mistyped key silently taken as
    /// an identifier would leave its owner unlisted.
    fn from_str(value: &str) -> Result<RepoEntry, String> {
        if let Some((owner, identifier)) = value.split_once('/') {
            let owner = parse_npub(owner)?;
            let identifier = Identifier::new(identifier)
                .map_err(|why| format!("bad identifier {identifier:?}: {why}"))?;
            return Ok(RepoEntry::Repo(owner, identifier));
        }
        if value.starts_with("npub1") {
            return parse_npub(value).map(RepoEntry::Owner);
        }
        Identifier::new(value)
            .map(RepoEntry::Identifier)
            .map_err(|why| {
                format!(
                    "expected <npub>, <npub>/<identifier> or <identifier>: bad identifier ({why})"
                )
            })
    }
}

/// One entry of `--deny-author`: an npub.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct AuthorEntry(pub PublicKey);

impl FromStr for AuthorEntry {
    type Err = String;

    fn from_str(value: &str) -> Result<AuthorEntry, String> {
        parse_npub(value).map(AuthorEntry)
    }
}

fn parse_npub(value: &str) -> Result<PublicKey, String> {
    PublicKey::from_bech32(value).map_err(|_| format!("{value:?} is not an npub"))
}

/// A set of repository entries, matched by owner, by owner and identifier, or by identifier.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct RepoSet {
    owners: BTreeSet<PublicKey>,
    repos: BTreeSet<(PublicKey, Identifier)>,
    identifiers: BTreeSet<Identifier>,
}

impl RepoSet {
    fn new(entries: impl IntoIterator<Item = RepoEntry>) -> RepoSet {
        let mut set = RepoSet::default();
        for entry in entries {
            match entry {
                RepoEntry::Owner(owner) => {
                    set.owners.insert(owner);
                }
                RepoEntry::Repo(owner, identifier) => {
                    set.repos.insert((owner, identifier));
                }
                RepoEntry::Identifier(identifier) => {
                    set.identifiers.insert(identifier);
                }
            }
        }
        set
    }

    fn len(&self) -> usize {
        self.owners.len() + self.repos.len() + self.identifiers.len()
    }

    fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn matches(&self, owner: &PublicKey, identifier: &Identifier) -> bool {
        self.owners.contains(owner)
            || self.identifiers.contains(identifier)
            || self.repos.contains(&(*owner, identifier.clone()))
    }
}

/// The operator's curation lists (empty: every event goes on to the usual rules). Cheap to
/// clone: the lists are shared, and a new policy replaces them whole.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Policy {
    lists: Arc<Lists>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct Lists {
    denied_authors: BTreeSet<PublicKey>,
    denied_repos: RepoSet,
    allowed_repos: RepoSet,
    archived_repos: RepoSet,
}

/// How many entries each list of a [`Policy`] holds (for the reload log line).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PolicySizes {
    pub deny_authors: usize,
    pub deny_repos: usize,
    pub allow_repos: usize,
    pub archive_repos: usize,
}

impl Policy {
    pub fn new(
        denied_authors: impl IntoIterator<Item = AuthorEntry>,
        denied_repos: impl IntoIterator<Item = RepoEntry>,
        allowed_repos: impl IntoIterator<Item = RepoEntry>,
    ) -> Policy {
        let lists = Lists {
            denied_authors: denied_authors.into_iter().map(|a| a.0).collect(),
            denied_repos: RepoSet::new(denied_repos),
            allowed_repos: RepoSet::new(allowed_repos),
            archived_repos: RepoSet::default(),
        };
        Policy {
            lists: Arc::new(lists),
        }
    }

    /// These lists with `archived` as the archive list (`--archive-repo`).
    pub fn archiving(mut self, archived: impl IntoIterator<Item = RepoEntry>) -> Policy {
        Arc::make_mut(&mut self.lists).archived_repos = RepoSet::new(archived);
        self
    }

    /// Whether an archive list is set (GRASP-05 is offered).
    pub fn has_archive_list(&self) -> bool {
        !self.lists.archived_repos.is_empty()
    }

    /// Whether an allow list is set: only the repositories it names are hosted.
    pub fn has_allow_list(&self) -> bool {
        !self.lists.allowed_repos.is_empty()
    }

    /// Whether either deny list is set (otherwise everything stored may be served).
    pub fn has_deny_lists(&self) -> bool {
        !self.lists.denied_authors.is_empty() || !self.lists.denied_repos.is_empty()
    }

    pub fn sizes(&self) -> PolicySizes {
        PolicySizes {
            deny_authors: self.lists.denied_authors.len(),
            deny_repos: self.lists.denied_repos.len(),
            allow_repos: self.lists.allowed_repos.len(),
            archive_repos: self.lists.archived_repos.len(),
        }
    }

    /// Whether `event` may go on to the usual rules. Looks at no more than `max_tags` of its
    /// `a` tags.
    pub fn check(&self, event: &Event, max_tags: usize) -> Result<(), PolicyRefusal> {
        self.check_denied(event, max_tags)?;
        if event.kind.as_u16() == KIND_ANNOUNCEMENT {
            if let Some(identifier) = own_identifier(event) {
                self.repo_mode(&event.pubkey, &identifier)?;
            }
        }
        Ok(())
    }

    /// How the repository `owner/identifier` is kept, or why its announcement is refused, in
    /// the lists' precedence: author deny, repository deny, allow list, archive list, the
    /// usual rules.
    pub fn repo_mode(
        &self,
        owner: &PublicKey,
        identifier: &Identifier,
    ) -> Result<RepoMode, PolicyRefusal> {
        self.check_author(owner)?;
        self.check_repo(owner, identifier)?;
        self.check_allowed(owner, identifier)?;
        if self.lists.archived_repos.matches(owner, identifier) {
            return Ok(RepoMode::Archive);
        }
        Ok(RepoMode::Hosted)
    }

    /// Whether the repository `owner/identifier` is kept as an archive mirror.
    pub fn archives(&self, owner: &PublicKey, identifier: &Identifier) -> bool {
        self.repo_mode(owner, identifier) == Ok(RepoMode::Archive)
    }

    /// Whether a stored event may still be served: the deny lists only. An allow list
    /// decides which announcements are taken in, not whether what is hosted stays served.
    pub fn serves(&self, event: &Event, max_tags: usize) -> bool {
        self.check_denied(event, max_tags).is_ok()
    }

    /// [`Policy::check`] for an event already parsed (what the engine holds of a waiting
    /// one): its `a` tags are the coordinates the parser kept.
    pub fn check_git_event(&self, event: &GitEvent) -> Result<(), PolicyRefusal> {
        self.check_author(event.author())?;
        match event {
            GitEvent::Announcement(a) => self.repo_mode(&a.owner, &a.identifier).map(|_| ()),
            GitEvent::State(s) => self.check_repo(&s.author, &s.identifier),
            GitEvent::Pr(pr) => self.check_named(pr.repos.iter()),
            GitEvent::Deletion(_) => Ok(()),
        }
    }

    /// Whether git requests for the repository `owner/identifier` are refused: its owner is
    /// a denied author, or it is a denied repository. An allow list does not enter into it.
    pub fn denies_repo(&self, owner: &PublicKey, identifier: &Identifier) -> bool {
        self.check_author(owner).is_err() || self.check_repo(owner, identifier).is_err()
    }

    /// The deny lists, in their order: the author, then the repositories the event is for.
    fn check_denied(&self, event: &Event, max_tags: usize) -> Result<(), PolicyRefusal> {
        self.check_author(&event.pubkey)?;
        let kind = event.kind.as_u16();
        if kind == KIND_DELETION {
            return Ok(());
        }
        if kind == KIND_ANNOUNCEMENT || kind == KIND_STATE {
            // Unparseable identifiers are left to the usual rules, which refuse them.
            return match own_identifier(event) {
                Some(identifier) => self.check_repo(&event.pubkey, &identifier),
                None => Ok(()),
            };
        }
        if self.lists.denied_repos.is_empty() {
            return Ok(());
        }
        let named = event
            .tags
            .iter()
            .filter_map(|tag| match tag.as_slice() {
                [name, value, ..] if name == "a" => Some(value),
                _ => None,
            })
            .take(max_tags)
            .filter_map(|value| Coordinate::parse(value).ok());
        self.check_named(named)
    }

    fn check_author(&self, author: &PublicKey) -> Result<(), PolicyRefusal> {
        if self.lists.denied_authors.contains(author) {
            return Err(PolicyRefusal::Author);
        }
        Ok(())
    }

    fn check_repo(&self, owner: &PublicKey, identifier: &Identifier) -> Result<(), PolicyRefusal> {
        if self.lists.denied_repos.matches(owner, identifier) {
            return Err(PolicyRefusal::Repo);
        }
        Ok(())
    }

    /// The repositories an event's 30617 `a` coordinates name.
    fn check_named<C: Borrow<Coordinate>>(
        &self,
        coordinates: impl Iterator<Item = C>,
    ) -> Result<(), PolicyRefusal> {
        for coordinate in coordinates {
            let c = coordinate.borrow();
            if c.kind == KIND_ANNOUNCEMENT {
                self.check_repo(&c.author, &c.identifier)?;
            }
        }
        Ok(())
    }

    fn check_allowed(
        &self,
        owner: &PublicKey,
        identifier: &Identifier,
    ) -> Result<(), PolicyRefusal> {
        if self.has_allow_list() && !self.lists.allowed_repos.matches(owner, identifier) {
            return Err(PolicyRefusal::NotAllowed);
        }
        Ok(())
    }
}

/// An announcement's or state's own identifier (its `d` tag), if valid.
fn own_identifier(event: &Event) -> Option<Identifier> {
    event
        .tags
        .identifier()
        .as_deref()
        .and_then(|d| Identifier::new(d).ok())
}

impl fmt::Display for PolicyRefusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.message())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testkit::{keys, sign};
    use nostr::nips::nip19::ToBech32;

    fn npub(n: u8) -> String {
        keys(n).public_key().to_bech32().unwrap()
    }

    fn event(author: u8, kind: u16, tags: &[&[&str]]) -> Event {
        sign(&keys(author), kind, 1_700_000_000, tags)
    }

    fn announcement(author: u8, d: &str) -> Event {
        event(author, KIND_ANNOUNCEMENT, &[&["d", d]])
    }

    fn policy(deny_authors: &[String], deny: &[String], allow: &[String]) -> Policy {
        Policy::new(
            deny_authors.iter().map(|a| a.parse().unwrap()),
            deny.iter().map(|e| e.parse().unwrap()),
            allow.iter().map(|e| e.parse().unwrap()),
        )
    }

    const MAX: usize = 128;

    #[test]
    fn an_empty_policy_lets_everything_through() {
        let p = Policy::default();
        assert!(!p.has_allow_list());
        assert_eq!(p.check(&announcement(1, "x"), MAX), Ok(()));
        assert_eq!(p.check(&event(1, 1621, &[]), MAX), Ok(()));
    }

    #[test]
    fn a_denied_author_is_refused_for_every_kind() {
        let p = policy(&[npub(1)], &[], &[]);
        for kind in [
            KIND_ANNOUNCEMENT,
            KIND_STATE,
            1618,
            1619,
            1621,
            1111,
            KIND_DELETION,
            1,
        ] {
            let refused = p.check(&event(1, kind, &[&["d", "x"]]), MAX);
            assert_eq!(refused, Err(PolicyRefusal::Author), "kind {kind}");
        }
        assert_eq!(p.check(&announcement(2, "x"), MAX), Ok(()));
    }

    #[test]
    fn author_deny_wins_over_allow() {
        let p = policy(&[npub(1)], &[], &[npub(1)]);
        assert_eq!(
            p.check(&announcement(1, "x"), MAX),
            Err(PolicyRefusal::Author)
        );
    }

    #[test]
    fn each_repo_entry_form_matches_what_it_names() {
        let by_owner = policy(&[], &[npub(1)], &[]);
        assert_eq!(
            by_owner.check(&announcement(1, "a"), MAX),
            Err(PolicyRefusal::Repo)
        );
        assert_eq!(by_owner.check(&announcement(2, "a"), MAX), Ok(()));

        let one = policy(&[], &[format!("{}/a", npub(1))], &[]);
        assert_eq!(
            one.check(&announcement(1, "a"), MAX),
            Err(PolicyRefusal::Repo)
        );
        assert_eq!(one.check(&announcement(1, "b"), MAX), Ok(()));
        assert_eq!(one.check(&announcement(2, "a"), MAX), Ok(()));

        let by_identifier = policy(&[], &["a".into()], &[]);
        assert_eq!(
            by_identifier.check(&announcement(1, "a"), MAX),
            Err(PolicyRefusal::Repo)
        );
        assert_eq!(
            by_identifier.check(&announcement(2, "a"), MAX),
            Err(PolicyRefusal::Repo)
        );
        assert_eq!(by_identifier.check(&announcement(1, "b"), MAX), Ok(()));
    }

    #[test]
    fn states_and_events_naming_a_denied_repo_are_refused() {
        let p = policy(&[], &[format!("{}/a", npub(1))], &[]);
        let state = event(1, KIND_STATE, &[&["d", "a"]]);
        assert_eq!(p.check(&state, MAX), Err(PolicyRefusal::Repo));
        let coordinate = format!("30617:{}:a", keys(1).public_key().to_hex());
        for kind in [1618, 1619, 1621, 1617] {
            let about = event(2, kind, &[&["a", &coordinate]]);
            assert_eq!(
                p.check(&about, MAX),
                Err(PolicyRefusal::Repo),
                "kind {kind}"
            );
        }
        let other = format!("30617:{}:b", keys(1).public_key().to_hex());
        assert_eq!(p.check(&event(2, 1618, &[&["a", &other]]), MAX), Ok(()));
        // Deletions are judged by their author only.
        let deletion = event(1, KIND_DELETION, &[&["a", &coordinate]]);
        assert_eq!(p.check(&deletion, MAX), Ok(()));
    }

    #[test]
    fn only_the_first_max_tags_a_tags_are_looked_at() {
        let p = policy(&[], &["a".into()], &[]);
        let coordinate = format!("30617:{}:a", keys(1).public_key().to_hex());
        let filler = format!("30617:{}:z", keys(1).public_key().to_hex());
        let issue = event(2, 1621, &[&["a", &filler], &["a", &coordinate]]);
        assert_eq!(p.check(&issue, 1), Ok(()));
        assert_eq!(p.check(&issue, 2), Err(PolicyRefusal::Repo));
    }

    #[test]
    fn repo_deny_wins_over_allow() {
        let entry = format!("{}/a", npub(1));
        let entries = std::slice::from_ref(&entry);
        let p = policy(&[], entries, entries);
        assert_eq!(
            p.check(&announcement(1, "a"), MAX),
            Err(PolicyRefusal::Repo)
        );
    }

    #[test]
    fn an_allow_list_admits_only_announcements_it_names() {
        let p = policy(
            &[],
            &[],
            &[format!("{}/a", npub(1)), npub(3), "shared".into()],
        );
        assert!(p.has_allow_list());
        assert_eq!(p.check(&announcement(1, "a"), MAX), Ok(()));
        assert_eq!(
            p.check(&announcement(1, "b"), MAX),
            Err(PolicyRefusal::NotAllowed)
        );
        assert_eq!(p.check(&announcement(3, "anything"), MAX), Ok(()));
        assert_eq!(p.check(&announcement(2, "shared"), MAX), Ok(()));
        assert_eq!(
            p.check(&announcement(2, "b"), MAX),
            Err(PolicyRefusal::NotAllowed)
        );
        // Other kinds are left to the usual rules (which want a hosted announcement).
        assert_eq!(p.check(&event(2, KIND_STATE, &[&["d", "b"]]), MAX), Ok(()));
        assert_eq!(p.check(&event(2, 1621, &[]), MAX), Ok(()));
    }

    #[test]
    fn parsed_events_are_judged_as_their_raw_form() {
        let coordinate = format!("30617:{}:a", keys(1).public_key().to_hex());
        let events = [
            announcement(1, "a"),
            announcement(2, "b"),
            event(
                1,
                KIND_STATE,
                &[&["d", "a"], &["refs/heads/main", &"1".repeat(40)]],
            ),
            event(
                2,
                1618,
                &[
                    &["a", &coordinate],
                    &["c", &"2".repeat(40)],
                    &["clone", "x"],
                ],
            ),
        ];
        let policies = [
            Policy::default(),
            policy(&[npub(1)], &[], &[]),
            policy(&[], &[format!("{}/a", npub(1))], &[]),
            policy(&[], &["a".into()], &[npub(2)]),
            policy(&[npub(2)], &[], &[npub(2)]),
        ];
        for p in &policies {
            for e in &events {
                let parsed = crate::events::parse(e).unwrap().unwrap();
                assert_eq!(p.check_git_event(&parsed), p.check(e, MAX), "{p:?} {e:?}");
            }
        }
    }

    #[test]
    fn what_is_served_and_cloned_follows_the_deny_lists_only() {
        let coordinate = format!("30617:{}:a", keys(1).public_key().to_hex());
        let issue = event(2, 1621, &[&["a", &coordinate]]);
        let allow_only = policy(&[], &[], &[npub(3)]);
        assert!(allow_only.serves(&announcement(1, "a"), MAX));
        assert!(!allow_only.denies_repo(&keys(1).public_key(), &Identifier::new("a").unwrap()));
        assert!(!allow_only.has_deny_lists());

        let deny_repo = policy(&[], &[format!("{}/a", npub(1))], &[]);
        assert!(!deny_repo.serves(&announcement(1, "a"), MAX));
        assert!(!deny_repo.serves(&issue, MAX));
        assert!(deny_repo.serves(&announcement(1, "b"), MAX));
        let a = Identifier::new("a").unwrap();
        assert!(deny_repo.denies_repo(&keys(1).public_key(), &a));
        assert!(!deny_repo.denies_repo(&keys(2).public_key(), &a));

        let deny_author = policy(&[npub(1)], &[], &[]);
        assert!(!deny_author.serves(&event(1, 1, &[]), MAX));
        assert!(deny_author.serves(&issue, MAX));
        let b = Identifier::new("b").unwrap();
        assert!(deny_author.denies_repo(&keys(1).public_key(), &b));
        assert_eq!(
            deny_author.sizes(),
            PolicySizes {
                deny_authors: 1,
                deny_repos: 0,
                allow_repos: 0,
                archive_repos: 0,
            }
        );
    }

    #[test]
    fn archive_precedence_is_author_deny_repo_deny_allow_archive_default() {
        let (owner, a) = (keys(1).public_key(), Identifier::new("a").unwrap());
        let archive = |p: Policy| p.archiving([format!("{}/a", npub(1)).parse().unwrap()]);
        let archived = archive(Policy::default());
        assert!(archived.has_archive_list());
        assert_eq!(archived.repo_mode(&owner, &a), Ok(RepoMode::Archive));
        assert!(archived.archives(&owner, &a));
        // Other repositories keep the usual rules.
        let b = Identifier::new("b").unwrap();
        assert_eq!(archived.repo_mode(&owner, &b), Ok(RepoMode::Hosted));
        assert_eq!(archived.check(&announcement(1, "a"), MAX), Ok(()));

        let cases = [
            (policy(&[npub(1)], &[], &[]), Err(PolicyRefusal::Author)),
            (policy(&[], &[npub(1)], &[]), Err(PolicyRefusal::Repo)),
            (policy(&[], &[], &[npub(2)]), Err(PolicyRefusal::NotAllowed)),
            (policy(&[], &[], &[npub(1)]), Ok(RepoMode::Archive)),
        ];
        for (lists, want) in cases {
            let p = archive(lists);
            assert_eq!(p.repo_mode(&owner, &a), want, "{p:?}");
            assert_eq!(p.archives(&owner, &a), want == Ok(RepoMode::Archive));
            let parsed = crate::events::parse(&announcement(1, "a"))
                .unwrap()
                .unwrap();
            assert_eq!(p.check_git_event(&parsed), want.map(|_| ()));
        }
        assert_eq!(archived.sizes().archive_repos, 1);
    }

    #[test]
    fn refusal_messages_do_not_advertise_the_deny_lists() {
        assert_eq!(
            PolicyRefusal::Author.message(),
            "blocked: not accepted here"
        );
        assert_eq!(PolicyRefusal::Repo.message(), "blocked: not accepted here");
        assert!(PolicyRefusal::NotAllowed.message().starts_with("blocked: "));
    }

    #[test]
    fn entries_parse_in_each_form_and_bad_ones_say_why() {
        let owner = keys(1).public_key();
        assert_eq!(npub(1).parse(), Ok(RepoEntry::Owner(owner)));
        assert_eq!(
            format!("{}/a", npub(1)).parse(),
            Ok(RepoEntry::Repo(owner, Identifier::new("a").unwrap()))
        );
        assert_eq!(
            "a".parse(),
            Ok(RepoEntry::Identifier(Identifier::new("a").unwrap()))
        );
        assert_eq!(npub(1).parse(), Ok(AuthorEntry(owner)));
        for bad in ["npub1typo", "npub1typo/a", "nobody/a", "..", "", "a\u{7}"] {
            let error = bad.parse::<RepoEntry>().unwrap_err();
            assert!(!error.is_empty(), "{bad:?}");
        }
        assert!(format!("{}/..", npub(1)).parse::<RepoEntry>().is_err());
        assert!("a"
            .parse::<AuthorEntry>()
            .unwrap_err()
            .contains("not an npub"));
        assert!(owner.to_hex().parse::<AuthorEntry>().is_err());
    }
}
