//! Typed NIP-34 events: what the engine reasons about, parsed once from `nostr::event::Event`.
//!
//! Parsing and validation live in this module (`parse`); everything downstream takes these
//! types and never looks at raw tags again.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;

use crate::ids::{BadIdentifier, EventId, Identifier, Oid, PublicKey, RepoKey};

pub const KIND_DELETION: u16 = 5;
pub const KIND_PR: u16 = 1618;
pub const KIND_PR_UPDATE: u16 = 1619;
pub const KIND_ANNOUNCEMENT: u16 = 30617;
pub const KIND_STATE: u16 = 30618;

/// An addressable-event coordinate `<kind>:<author hex>:<identifier>`; the identifier is
/// everything after the second colon, so identifiers may themselves contain `:`.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Debug)]
pub struct Coordinate {
    pub kind: u16,
    pub author: PublicKey,
    pub identifier: Identifier,
}

/// A full git ref name as NIP-34 states carry it: `refs/heads/<b>` or `refs/tags/<t>`.
pub type RefName = String;

/// Kind 30617: a repository announcement.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct Announcement {
    pub id: EventId,
    pub owner: PublicKey,
    pub created_at: u64,
    pub identifier: Identifier,
    /// `clone` tag values, in tag order (one tag may hold several URLs).
    pub clone: Vec<String>,
    /// `relays` tag values, in tag order.
    pub relays: Vec<String>,
    /// `maintainers` tag values; the owner is not implicitly included here.
    pub maintainers: Vec<PublicKey>,
}

/// A state's branches and tags, sorted by name, each once. A sorted boxed slice rather than a
/// B-tree: states usually list a handful of refs, and a B-tree allocates a whole node (about
/// 500 bytes here) for even one, for every waiting state.
#[derive(Clone, PartialEq, Eq, Default, Debug)]
pub struct StateRefs(Box<[(RefName, Oid)]>);

impl StateRefs {
    fn position(&self, name: &str) -> Result<usize, usize> {
        self.0.binary_search_by(|(n, _)| n.as_str().cmp(name))
    }

    pub fn get(&self, name: &str) -> Option<&Oid> {
        self.position(name).ok().map(|i| &self.0[i].1)
    }

    pub fn contains_key(&self, name: &str) -> bool {
        self.position(name).is_ok()
    }

    /// `(name, object)` in name order.
    pub fn iter(&self) -> impl ExactSizeIterator<Item = (&RefName, &Oid)> {
        self.0.iter().map(|(n, o)| (n, o))
    }

    pub fn keys(&self) -> impl ExactSizeIterator<Item = &RefName> {
        self.0.iter().map(|(n, _)| n)
    }

    pub fn values(&self) -> impl ExactSizeIterator<Item = &Oid> {
        self.0.iter().map(|(_, o)| o)
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn to_map(&self) -> BTreeMap<RefName, Oid> {
        self.0.iter().cloned().collect()
    }
}

impl From<BTreeMap<RefName, Oid>> for StateRefs {
    fn from(map: BTreeMap<RefName, Oid>) -> StateRefs {
        StateRefs(map.into_iter().collect())
    }
}

/// Like `BTreeMap`'s: sorted by name, and a later pair replaces an earlier one of that name.
impl FromIterator<(RefName, Oid)> for StateRefs {
    fn from_iter<I: IntoIterator<Item = (RefName, Oid)>>(iter: I) -> StateRefs {
        StateRefs::from(iter.into_iter().collect::<BTreeMap<_, _>>())
    }
}

impl PartialEq<BTreeMap<RefName, Oid>> for StateRefs {
    fn eq(&self, other: &BTreeMap<RefName, Oid>) -> bool {
        self.len() == other.len() && self.iter().eq(other.iter())
    }
}

impl IntoIterator for StateRefs {
    type Item = (RefName, Oid);
    type IntoIter = std::vec::IntoIter<(RefName, Oid)>;

    fn into_iter(self) -> Self::IntoIter {
        self.0.into_vec().into_iter()
    }
}

impl<'a> IntoIterator for &'a StateRefs {
    type Item = (&'a RefName, &'a Oid);
    type IntoIter = std::iter::Map<
        std::slice::Iter<'a, (RefName, Oid)>,
        fn(&'a (RefName, Oid)) -> (&'a RefName, &'a Oid),
    >;

    fn into_iter(self) -> Self::IntoIter {
        self.0.iter().map(|(n, o)| (n, o))
    }
}

/// Kind 30618: the refs a maintainer says the repository must have.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct RepoState {
    pub id: EventId,
    pub author: PublicKey,
    pub created_at: u64,
    pub identifier: Identifier,
    /// Branches and tags (peeled `^{}` entries dropped). Empty is legal. Refs whose value
    /// is not a full object id are not here (see `never_satisfiable`).
    pub refs: StateRefs,
    /// `HEAD` target branch (`refs/heads/<b>`) from `["HEAD", "ref: refs/heads/<b>"]`, or
    /// the same written without the `ref: ` prefix.
    pub head: Option<RefName>,
    /// A branch or tag's value is not a full (40 lowercase hex) object id, e.g. an
    /// abbreviated one. Other servers take such a state into purgatory, where nothing can
    /// satisfy it, so it expires; so does this one. No repository can equal it: it is never
    /// inspected, fetched for, matched by a push, applied or served, but a deletion removes
    /// it like any waiting state.
    pub never_satisfiable: bool,
}

/// Kind 1618 (PR) or 1619 (PR update): a commit offered to one or more repositories.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct PullRequest {
    pub id: EventId,
    pub author: PublicKey,
    pub created_at: u64,
    /// `a` tags naming 30617 coordinates of the target repositories. Shared, like `clone`:
    /// a repository's waiting PRs all name the same list, and purgatory keeps one copy of
    /// each distinct list (`purgatory::Interned`).
    pub repos: Arc<[Coordinate]>,
    /// `c` tag: the tip commit.
    pub commit: Oid,
    /// `clone` tag values: where the tip can be fetched.
    pub clone: Arc<[String]>,
    /// `E` tag of a PR update (kind 1619): the PR it updates. `None` for kind 1618.
    pub updates: Option<EventId>,
    /// This server's GRASP-06 repository the PR names in `clone`
    /// (`/prs/<signer npub>/<identifier>.git`). Not parsed: the engine sets it on admission,
    /// when GRASP-06 is enabled, since only it knows this server's origin.
    /// Boxed: it is rare, and `PullRequest` is the largest event a waiting entry holds.
    pub prs_repo: Option<Box<RepoKey>>,
}

/// Kind 5: a deletion request by event id (`e`) and/or coordinate (`a`).
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct Deletion {
    pub id: EventId,
    pub author: PublicKey,
    pub created_at: u64,
    pub event_ids: Vec<EventId>,
    /// Its `a` coordinates of announcements and states (30617, 30618); those of other kinds
    /// name nothing the engine holds and are not kept.
    pub coordinates: Vec<Coordinate>,
}

/// The events whose handling depends on git data, plus deletions.
#[derive(Clone, PartialEq, Eq, Debug)]
pub enum GitEvent {
    Announcement(Announcement),
    State(RepoState),
    Pr(PullRequest),
    Deletion(Deletion),
}

/// Why an event was refused. `Display` gives the full NIP-01 `OK` message, starting with
/// `invalid: `, written for the person who published the event.
#[derive(Clone, PartialEq, Eq, Debug)]
pub enum InvalidEvent {
    /// A tag the kind requires is absent.
    MissingTag { kind: u16, tag: &'static str },
    /// The `d` tag (or a coordinate's identifier) cannot name a repository.
    BadIdentifier { value: String, why: BadIdentifier },
    /// A value that must be a 40-hex git object id is not one.
    BadOid { tag: String, value: String },
    /// A state's ref name is not a valid git ref name.
    BadRefName { name: String, why: &'static str },
    /// A state lists the same ref twice with different objects.
    ConflictingRef { name: RefName },
    /// A state's `HEAD` tag does not name a branch (`ref: refs/heads/<branch>`, or the same
    /// without `ref: `).
    BadHead { value: String },
    /// A value that must be a 64-hex public key is not one.
    BadPublicKey { tag: &'static str, value: String },
    /// A value that must be a 64-hex event id is not one.
    BadEventId { tag: &'static str, value: String },
    /// An `a` tag is not `<kind>:<author hex>:<identifier>`.
    BadCoordinate { value: String, why: &'static str },
    /// A PR or PR update has no `a` tag naming a repository announcement (30617).
    NoRepository,
    /// The event id is not the hash of the event's content.
    IdMismatch,
    /// The signature does not verify against the id and pubkey.
    BadSignature,
}

impl fmt::Display for InvalidEvent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("invalid: ")?;
        match self {
            InvalidEvent::MissingTag { kind, tag } => {
                write!(f, "a kind {kind} event needs a `{tag}` tag")
            }
            InvalidEvent::BadIdentifier { value, why } => {
                write!(f, "`d` tag {value:?} cannot name a repository: {why}")
            }
            InvalidEvent::BadOid { tag, value } => write!(
                f,
                "`{tag}` must hold a 40-character lowercase hex git object id, not {value:?}"
            ),
            InvalidEvent::BadRefName { name, why } => {
                write!(f, "{name:?} is not a valid git ref name: {why}")
            }
            InvalidEvent::ConflictingRef { name } => {
                write!(f, "{name} is listed twice with different objects")
            }
            InvalidEvent::BadHead { value } => write!(
                f,
                "`HEAD` tag must be \"ref: refs/heads/<branch>\", not {value:?}"
            ),
            InvalidEvent::BadPublicKey { tag, value } => write!(
                f,
                "`{tag}` must hold 64-character lowercase hex public keys, not {value:?}"
            ),
            InvalidEvent::BadEventId { tag, value } => write!(
                f,
                "`{tag}` must hold a 64-character lowercase hex event id, not {value:?}"
            ),
            InvalidEvent::BadCoordinate { value, why } => write!(
                f,
                "`a` tag {value:?} is not \"<kind>:<pubkey hex>:<identifier>\": {why}"
            ),
            InvalidEvent::NoRepository => f.write_str(
                "a PR needs an `a` tag \"30617:<owner pubkey hex>:<identifier>\" naming the repository",
            ),
            InvalidEvent::IdMismatch => f.write_str("the event id is not the hash of the event"),
            InvalidEvent::BadSignature => {
                f.write_str("the signature does not match the event id and pubkey")
            }
        }
    }
}

impl std::error::Error for InvalidEvent {}

impl GitEvent {
    pub fn id(&self) -> &EventId {
        match self {
            GitEvent::Announcement(a) => &a.id,
            GitEvent::State(s) => &s.id,
            GitEvent::Pr(p) => &p.id,
            GitEvent::Deletion(d) => &d.id,
        }
    }

    pub fn author(&self) -> &PublicKey {
        match self {
            GitEvent::Announcement(a) => &a.owner,
            GitEvent::State(s) => &s.author,
            GitEvent::Pr(p) => &p.author,
            GitEvent::Deletion(d) => &d.author,
        }
    }

    pub fn created_at(&self) -> u64 {
        match self {
            GitEvent::Announcement(a) => a.created_at,
            GitEvent::State(s) => s.created_at,
            GitEvent::Pr(p) => p.created_at,
            GitEvent::Deletion(d) => d.created_at,
        }
    }

    pub fn kind(&self) -> u16 {
        match self {
            GitEvent::Announcement(_) => KIND_ANNOUNCEMENT,
            GitEvent::State(_) => KIND_STATE,
            GitEvent::Pr(p) if p.updates.is_some() => KIND_PR_UPDATE,
            GitEvent::Pr(_) => KIND_PR,
            GitEvent::Deletion(_) => KIND_DELETION,
        }
    }

    /// The `<kind>:<author>:<identifier>` address of an addressable event (30617, 30618).
    pub fn coordinate(&self) -> Option<Coordinate> {
        let (kind, author, identifier) = match self {
            GitEvent::Announcement(a) => (KIND_ANNOUNCEMENT, a.owner, &a.identifier),
            GitEvent::State(s) => (KIND_STATE, s.author, &s.identifier),
            _ => return None,
        };
        Some(Coordinate {
            kind,
            author,
            identifier: identifier.clone(),
        })
    }
}

impl Coordinate {
    /// Parses `<kind>:<author hex>:<identifier>`, splitting at the first two colons only.
    pub fn parse(value: &str) -> Result<Coordinate, InvalidEvent> {
        let bad = |why| InvalidEvent::BadCoordinate {
            value: value.to_owned(),
            why,
        };
        let mut parts = value.splitn(3, ':');
        let (Some(kind), Some(author), Some(identifier)) =
            (parts.next(), parts.next(), parts.next())
        else {
            return Err(bad("it needs two colons"));
        };
        let kind = kind
            .parse::<u16>()
            .map_err(|_| bad("the kind is not a number"))?;
        let author =
            parse_public_key_hex(author).ok_or(bad("the pubkey is not 64 lowercase hex"))?;
        let identifier =
            Identifier::new(identifier).map_err(|why| InvalidEvent::BadIdentifier {
                value: identifier.to_owned(),
                why,
            })?;
        Ok(Coordinate {
            kind,
            author,
            identifier,
        })
    }
}

impl fmt::Display for Coordinate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}:{}:{}",
            self.kind,
            self.author.to_hex(),
            self.identifier
        )
    }
}

/// Parses the kinds the engine reasons about; `Ok(None)` for every other kind.
///
/// The signature is not checked here (the host does that with [`verify_signature`] before
/// the engine sees the event; the simulator does not sign).
pub fn parse(event: &nostr::event::Event) -> Result<Option<GitEvent>, InvalidEvent> {
    let tags = Tags::of(event);
    let id = event.id;
    let author = event.pubkey;
    let created_at = event.created_at.as_secs();
    let parsed = match event.kind.as_u16() {
        KIND_ANNOUNCEMENT => GitEvent::Announcement(Announcement {
            id,
            owner: author,
            created_at,
            identifier: tags.identifier(KIND_ANNOUNCEMENT)?,
            clone: tags.values("clone"),
            relays: tags.values("relays"),
            maintainers: tags
                .values("maintainers")
                .iter()
                .map(|v| {
                    parse_public_key_hex(v).ok_or_else(|| InvalidEvent::BadPublicKey {
                        tag: "maintainers",
                        value: v.clone(),
                    })
                })
                .collect::<Result<_, _>>()?,
        }),
        KIND_STATE => {
            let StateTags {
                refs,
                head,
                never_satisfiable,
            } = parse_state_refs(&tags)?;
            GitEvent::State(RepoState {
                id,
                author,
                created_at,
                identifier: tags.identifier(KIND_STATE)?,
                refs,
                head,
                never_satisfiable,
            })
        }
        kind @ (KIND_PR | KIND_PR_UPDATE) => {
            GitEvent::Pr(parse_pr(kind, id, author, created_at, &tags)?)
        }
        KIND_DELETION => GitEvent::Deletion(parse_deletion(id, author, created_at, &tags)?),
        _ => return Ok(None),
    };
    Ok(Some(parsed))
}

/// Checks the event id and signature (the host does, before the engine sees the event).
pub fn verify_signature(event: &nostr::event::Event) -> Result<(), InvalidEvent> {
    if !event.verify_id() {
        return Err(InvalidEvent::IdMismatch);
    }
    if !event.verify_signature() {
        return Err(InvalidEvent::BadSignature);
    }
    Ok(())
}

/// The tags of one event as string slices, looked up by name.
struct Tags<'a>(Vec<&'a [String]>);

impl<'a> Tags<'a> {
    fn of(event: &'a nostr::event::Event) -> Tags<'a> {
        Tags(event.tags.iter().map(|t| t.as_slice()).collect())
    }

    fn named(&self, name: &'a str) -> impl Iterator<Item = &'a [String]> + '_ {
        self.0
            .iter()
            .copied()
            .filter(move |t| t.first().is_some_and(|n| n == name))
    }

    /// The first value of the first tag with this name.
    fn first(&self, name: &'a str) -> Option<&'a str> {
        self.named(name).find_map(|t| t.get(1)).map(String::as_str)
    }

    /// Every non-empty value of every tag with this name, in order (one tag may hold several).
    fn values(&self, name: &'a str) -> Vec<String> {
        let mut values: Vec<String> = self
            .named(name)
            .flat_map(|t| t.iter().skip(1))
            .filter(|v| !v.is_empty())
            .cloned()
            .collect();
        // Kept by waiting events: no spare capacity.
        values.shrink_to_fit();
        values
    }

    fn identifier(&self, kind: u16) -> Result<Identifier, InvalidEvent> {
        let d = self
            .first("d")
            .ok_or(InvalidEvent::MissingTag { kind, tag: "d" })?;
        Identifier::new(d).map_err(|why| InvalidEvent::BadIdentifier {
            value: d.to_owned(),
            why,
        })
    }
}

/// What a state's tags say, before the event's other fields are attached.
struct StateTags {
    refs: StateRefs,
    head: Option<RefName>,
    never_satisfiable: bool,
}

fn parse_state_refs(tags: &Tags<'_>) -> Result<StateTags, InvalidEvent> {
    let mut refs = BTreeMap::new();
    let mut head = None;
    let mut never_satisfiable = false;
    for tag in &tags.0 {
        let (Some(name), value) = (tag.first(), tag.get(1)) else {
            continue;
        };
        if name == "HEAD" {
            let value = value.map(String::as_str).unwrap_or("");
            // `ref: refs/heads/<b>` is the symbolic ref as git writes it; some clients leave
            // the prefix out, which names the same branch.
            let branch = value.strip_prefix("ref: ").unwrap_or(value);
            if !branch.starts_with("refs/heads/") {
                return Err(InvalidEvent::BadHead {
                    value: value.to_owned(),
                });
            }
            check_ref_name(branch)?;
            head.get_or_insert_with(|| branch.to_owned());
            continue;
        }
        if !(name.starts_with("refs/heads/") || name.starts_with("refs/tags/")) {
            continue;
        }
        // Peeled entries repeat an annotated tag's target; the tag object is what counts.
        if name.ends_with("^{}") {
            continue;
        }
        check_ref_name(name)?;
        let Some(oid) = value.and_then(|v| Oid::from_hex(v).ok()) else {
            never_satisfiable = true;
            continue;
        };
        if refs.insert(name.clone(), oid).is_some_and(|old| old != oid) {
            return Err(InvalidEvent::ConflictingRef { name: name.clone() });
        }
    }
    Ok(StateTags {
        refs: StateRefs::from(refs),
        head,
        never_satisfiable,
    })
}

fn parse_pr(
    kind: u16,
    id: EventId,
    author: PublicKey,
    created_at: u64,
    tags: &Tags<'_>,
) -> Result<PullRequest, InvalidEvent> {
    let mut repos = Vec::new();
    for value in tags.named("a").filter_map(|t| t.get(1)) {
        // `a` tags may also point at other things (e.g. a 30618); only repositories count.
        if value.starts_with("30617:") {
            let coordinate = Coordinate::parse(value)?;
            if !repos.contains(&coordinate) {
                repos.push(coordinate);
            }
        }
    }
    if repos.is_empty() {
        return Err(InvalidEvent::NoRepository);
    }
    let commit = tags
        .first("c")
        .ok_or(InvalidEvent::MissingTag { kind, tag: "c" })?;
    let commit = Oid::from_hex(commit).map_err(|_| InvalidEvent::BadOid {
        tag: "c".to_owned(),
        value: commit.to_owned(),
    })?;
    let updates = if kind == KIND_PR_UPDATE {
        let pr = tags
            .first("E")
            .ok_or(InvalidEvent::MissingTag { kind, tag: "E" })?;
        Some(
            parse_event_id_hex(pr).ok_or_else(|| InvalidEvent::BadEventId {
                tag: "E",
                value: pr.to_owned(),
            })?,
        )
    } else {
        None
    };
    Ok(PullRequest {
        id,
        author,
        created_at,
        repos: repos.into(),
        commit,
        clone: tags.values("clone").into(),
        updates,
        prs_repo: None,
    })
}

fn parse_deletion(
    id: EventId,
    author: PublicKey,
    created_at: u64,
    tags: &Tags<'_>,
) -> Result<Deletion, InvalidEvent> {
    let mut event_ids = Vec::new();
    for value in tags.named("e").filter_map(|t| t.get(1)) {
        let target = parse_event_id_hex(value).ok_or_else(|| InvalidEvent::BadEventId {
            tag: "e",
            value: value.clone(),
        })?;
        event_ids.push(target);
    }
    let mut coordinates = Vec::new();
    for value in tags.named("a").filter_map(|t| t.get(1)) {
        // Coordinates of other kinds cannot match anything the engine holds, whatever their
        // shape (a replaceable kind's empty identifier, another kind's odd spelling); the
        // deletion still applies to the rest it names.
        let repository_kind = value.starts_with("30617:") || value.starts_with("30618:");
        match Coordinate::parse(value) {
            Ok(c) if repository_kind => coordinates.push(c),
            Ok(_) => {}
            Err(e) if repository_kind => return Err(e),
            Err(_) => {}
        }
    }
    Ok(Deletion {
        id,
        author,
        created_at,
        event_ids,
        coordinates,
    })
}

fn is_lower_hex(s: &str, len: usize) -> bool {
    s.len() == len
        && s.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// A 64-character lowercase hex public key, the only spelling NIP-01 tags use.
pub fn parse_public_key_hex(s: &str) -> Option<PublicKey> {
    is_lower_hex(s, 64)
        .then(|| PublicKey::from_hex(s).ok())
        .flatten()
}

/// A 64-character lowercase hex event id (also what `refs/nostr/<id>` must carry).
pub fn parse_event_id_hex(s: &str) -> Option<EventId> {
    is_lower_hex(s, 64)
        .then(|| EventId::from_hex(s).ok())
        .flatten()
}

/// The subset of `git check-ref-format` that matters for names a state event can carry: a ref
/// the server would be unable to create, or that could escape `refs/`, is refused up front.
pub fn check_ref_name(name: &str) -> Result<(), InvalidEvent> {
    let bad = |why| {
        Err(InvalidEvent::BadRefName {
            name: name.to_owned(),
            why,
        })
    };
    if name.len() > 1024 {
        return bad("longer than 1024 bytes");
    }
    if name.ends_with('/') || name.ends_with('.') {
        return bad("it may not end with '/' or '.'");
    }
    if name.contains("..") || name.contains("@{") || name.contains("//") {
        return bad("it may not contain '..', '@{' or '//'");
    }
    if let Some(c) = name
        .chars()
        .find(|&c| c.is_control() || matches!(c, ' ' | '~' | '^' | ':' | '?' | '*' | '[' | '\\'))
    {
        return bad(match c {
            ' ' => "it may not contain a space",
            c if c.is_control() => "it may not contain control characters",
            _ => "it may not contain any of ~ ^ : ? * [ \\",
        });
    }
    let components: Vec<&str> = name.split('/').collect();
    if components.len() < 3 {
        return bad("it needs a name after refs/heads/ or refs/tags/");
    }
    if components
        .iter()
        .any(|c| c.starts_with('.') || c.ends_with(".lock"))
    {
        return bad("no part may start with '.' or end with '.lock'");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testkit::{keys, oid, pk, sign};

    const C1: &str = "1111111111111111111111111111111111111111";
    const C2: &str = "2222222222222222222222222222222222222222";

    fn try_parse(kind: u16, tags: &[&[&str]]) -> Result<Option<GitEvent>, InvalidEvent> {
        parse(&sign(&keys(1), kind, 100, tags))
    }

    fn reason(kind: u16, tags: &[&[&str]]) -> String {
        try_parse(kind, tags).unwrap_err().to_string()
    }

    #[test]
    fn announcement_collects_multi_value_tags() {
        let m2 = pk(2).to_hex();
        let m3 = pk(3).to_hex();
        let e = sign(
            &keys(1),
            KIND_ANNOUNCEMENT,
            100,
            &[
                &["d", "repo"],
                &["clone", "https://a/x.git", "https://b/x.git"],
                &["clone", "https://c/x.git"],
                &["relays", "wss://a", "wss://b"],
                &["maintainers", &m2, &m3],
                &["name", "Repo"],
            ],
        );
        let GitEvent::Announcement(a) = parse(&e).unwrap().unwrap() else {
            panic!()
        };
        assert_eq!(a.id, e.id);
        assert_eq!(a.owner, pk(1));
        assert_eq!(a.created_at, 100);
        assert_eq!(a.identifier.as_str(), "repo");
        assert_eq!(
            a.clone,
            ["https://a/x.git", "https://b/x.git", "https://c/x.git"]
        );
        assert_eq!(a.relays, ["wss://a", "wss://b"]);
        assert_eq!(a.maintainers, [pk(2), pk(3)]);
    }

    #[test]
    fn state_parses_refs_head_and_drops_peeled_entries() {
        let s = match try_parse(
            KIND_STATE,
            &[
                &["d", "repo"],
                &["refs/heads/main", C1],
                &["refs/tags/v1", C2],
                &["refs/tags/v1^{}", C1],
                &["HEAD", "ref: refs/heads/main"],
                &["refs/remotes/origin/x", C1],
            ],
        ) {
            Ok(Some(GitEvent::State(s))) => s,
            other => panic!("{other:?}"),
        };
        assert_eq!(
            s.refs.into_iter().collect::<Vec<_>>(),
            vec![
                ("refs/heads/main".to_owned(), Oid::from_hex(C1).unwrap()),
                ("refs/tags/v1".to_owned(), Oid::from_hex(C2).unwrap()),
            ]
        );
        assert_eq!(s.head.as_deref(), Some("refs/heads/main"));
    }

    #[test]
    fn state_without_refs_is_legal() {
        let Ok(Some(GitEvent::State(s))) = try_parse(KIND_STATE, &[&["d", "repo"]]) else {
            panic!()
        };
        assert!(s.refs.is_empty());
        assert_eq!(s.head, None);
    }

    #[test]
    fn malformed_events_are_invalid_with_a_reason() {
        let cases: &[(u16, &[&[&str]], &str)] = &[
            (
                KIND_ANNOUNCEMENT,
                &[&["name", "x"]],
                "invalid: a kind 30617 event needs a `d` tag",
            ),
            (
                KIND_ANNOUNCEMENT,
                &[&["d", "a/b"]],
                "cannot name a repository",
            ),
            (
                KIND_ANNOUNCEMENT,
                &[&["d", ".."]],
                "cannot name a repository",
            ),
            (
                KIND_ANNOUNCEMENT,
                &[&["d", "r"], &["maintainers", "npub1xyz"]],
                "public keys",
            ),
            (KIND_STATE, &[&["refs/heads/main", C1]], "needs a `d` tag"),
            (
                KIND_STATE,
                &[&["d", "r"], &["refs/heads/a..b", C1]],
                "not a valid git ref name",
            ),
            (
                KIND_STATE,
                &[&["d", "r"], &["refs/heads/x.lock", C1]],
                "not a valid git ref name",
            ),
            (
                KIND_STATE,
                &[&["d", "r"], &["refs/heads/", C1]],
                "not a valid git ref name",
            ),
            (KIND_STATE, &[&["d", "r"], &["refs/heads/a b", C1]], "space"),
            (
                KIND_STATE,
                &[&["d", "r"], &["refs/heads/m", C1], &["refs/heads/m", C2]],
                "listed twice",
            ),
            (
                KIND_STATE,
                &[&["d", "r"], &["HEAD", "ref: refs/tags/v1"]],
                "`HEAD` tag must be",
            ),
            (
                KIND_STATE,
                &[&["d", "r"], &["HEAD", "main"]],
                "`HEAD` tag must be",
            ),
            (
                KIND_STATE,
                &[&["d", "r"], &["refs/heads/a..b", "abc123"]],
                "not a valid git ref name",
            ),
            (
                KIND_PR,
                &[
                    &["a", &format!("30617:{}:r", pk(2).to_hex())],
                    &["c", "abc123"],
                ],
                "git object id",
            ),
            (KIND_PR, &[&["c", C1]], "naming the repository"),
            (
                KIND_PR,
                &[&["a", "30618:00:r"], &["c", C1]],
                "naming the repository",
            ),
            (
                KIND_PR,
                &[&["a", "30617:zz:r"], &["c", C1]],
                "pubkey is not 64 lowercase hex",
            ),
            (KIND_PR, &[&["a", "30617:r"], &["c", C1]], "two colons"),
            (
                KIND_PR,
                &[&["a", &format!("30617:{}:r", pk(2).to_hex())]],
                "needs a `c` tag",
            ),
            (
                KIND_PR_UPDATE,
                &[&["a", &format!("30617:{}:r", pk(2).to_hex())], &["c", C1]],
                "a kind 1619 event needs a `E` tag",
            ),
            (KIND_DELETION, &[&["e", "nothex"]], "event id"),
            (KIND_DELETION, &[&["a", "30618:nothex:r"]], "pubkey"),
            (KIND_DELETION, &[&["a", "30617:ab:.."]], "pubkey"),
        ];
        for (kind, tags, want) in cases {
            let got = reason(*kind, tags);
            assert!(got.starts_with("invalid: "), "{got}");
            assert!(
                got.contains(want),
                "kind {kind} {tags:?}: {got:?} lacks {want:?}"
            );
        }
    }

    fn parse_state(tags: &[&[&str]]) -> RepoState {
        match try_parse(KIND_STATE, tags) {
            Ok(Some(GitEvent::State(s))) => s,
            other => panic!("{tags:?}: {other:?}"),
        }
    }

    #[test]
    fn a_ref_value_that_is_not_a_full_object_id_makes_the_state_never_satisfiable() {
        let upper = "AB".repeat(20);
        for value in [&["abc123"][..], &[upper.as_str()], &[], &[&C1[..39]]] {
            let mut tag = vec!["refs/heads/main"];
            tag.extend_from_slice(value);
            let s = parse_state(&[&["d", "r"], &["refs/heads/dev", C1], &tag]);
            assert!(s.never_satisfiable, "{tag:?}");
            assert_eq!(s.refs.keys().collect::<Vec<_>>(), ["refs/heads/dev"]);
        }
        let ok = parse_state(&[
            &["d", "r"],
            &["refs/heads/main", C1],
            &["refs/tags/v1^{}", "x"],
        ]);
        assert!(
            !ok.never_satisfiable,
            "a peeled entry's value is never read"
        );
        let other = parse_state(&[&["d", "r"], &["refs/remotes/x", "abc"]]);
        assert!(
            !other.never_satisfiable,
            "refs outside heads and tags are ignored"
        );
    }

    #[test]
    fn head_without_the_ref_prefix_is_the_same_symbolic_ref() {
        let bare = parse_state(&[&["d", "r"], &["HEAD", "refs/heads/develop"]]);
        let prefixed = parse_state(&[&["d", "r"], &["HEAD", "ref: refs/heads/develop"]]);
        assert_eq!(bare.head.as_deref(), Some("refs/heads/develop"));
        assert_eq!(bare.head, prefixed.head);
        assert!(!bare.never_satisfiable);
    }

    #[test]
    fn duplicate_identical_refs_are_accepted() {
        let r = try_parse(
            KIND_STATE,
            &[&["d", "r"], &["refs/heads/m", C1], &["refs/heads/m", C1]],
        );
        assert!(matches!(r, Ok(Some(GitEvent::State(_)))));
    }

    #[test]
    fn other_kinds_are_not_ours() {
        assert_eq!(try_parse(1, &[&["d", "x"]]), Ok(None));
        assert_eq!(try_parse(1617, &[]), Ok(None));
    }

    #[test]
    fn identifier_with_colons_round_trips_through_a_tags() {
        let owner = pk(2).to_hex();
        let a = format!("30617:{owner}:name:with:colons");
        let pr = match try_parse(
            KIND_PR,
            &[&["a", &a], &["c", C1], &["clone", "https://x/y.git"]],
        ) {
            Ok(Some(GitEvent::Pr(p))) => p,
            other => panic!("{other:?}"),
        };
        assert_eq!(pr.repos.len(), 1);
        assert_eq!(pr.repos[0].author, pk(2));
        assert_eq!(pr.repos[0].identifier.as_str(), "name:with:colons");
        assert_eq!(pr.repos[0].to_string(), a);
        assert_eq!(pr.commit, Oid::from_hex(C1).unwrap());
        assert_eq!(*pr.clone, ["https://x/y.git"]);
        assert_eq!(pr.updates, None);

        let Ok(Some(GitEvent::Announcement(ann))) =
            try_parse(KIND_ANNOUNCEMENT, &[&["d", "name:with:colons"]])
        else {
            panic!()
        };
        assert_eq!(ann.identifier, pr.repos[0].identifier);
    }

    #[test]
    fn pr_update_names_its_pr_and_ignores_other_a_tags() {
        let owner = pk(2).to_hex();
        let pr_id = "ab".repeat(32);
        let repo = format!("30617:{owner}:r");
        let other = format!("30618:{owner}:r");
        let e = sign(
            &keys(1),
            KIND_PR_UPDATE,
            5,
            &[
                &["a", &other],
                &["a", &repo],
                &["a", &repo],
                &["c", C2],
                &["E", &pr_id],
            ],
        );
        let g = parse(&e).unwrap().unwrap();
        assert_eq!(g.kind(), KIND_PR_UPDATE);
        let GitEvent::Pr(p) = g else { panic!() };
        assert_eq!(
            p.repos.len(),
            1,
            "duplicates and non-repository a tags dropped"
        );
        assert_eq!(p.updates, Some(EventId::from_hex(&pr_id).unwrap()));
        assert_eq!(p.commit, oid(0x22));
    }

    #[test]
    fn deletion_collects_ids_and_coordinates() {
        let target = "cd".repeat(32);
        let coord = format!("30618:{}:r:x", pk(1).to_hex());
        let note = format!("10317:{}:", pk(1).to_hex());
        let Ok(Some(GitEvent::Deletion(d))) = try_parse(
            KIND_DELETION,
            &[
                &["e", &target],
                &["a", &coord],
                &["a", &note],
                &["k", "30618"],
            ],
        ) else {
            panic!()
        };
        assert_eq!(d.event_ids, [EventId::from_hex(&target).unwrap()]);
        assert_eq!(
            d.coordinates.len(),
            1,
            "a replaceable-kind coordinate cannot match a repo"
        );
        let Ok(Some(GitEvent::Deletion(odd))) = try_parse(
            KIND_DELETION,
            &[
                &["e", &target],
                &["a", "30023:npub1xyz:post"],
                &["a", "garbage"],
            ],
        ) else {
            panic!("other kinds' coordinates, however spelt, are ignored")
        };
        assert_eq!((odd.event_ids.len(), odd.coordinates.len()), (1, 0));
        assert_eq!(d.coordinates[0].kind, KIND_STATE);
        assert_eq!(d.coordinates[0].identifier.as_str(), "r:x");
    }

    #[test]
    fn signatures_are_checked_separately() {
        let e = sign(&keys(1), KIND_STATE, 1, &[&["d", "r"]]);
        assert_eq!(verify_signature(&e), Ok(()));
        let forged =
            nostr::event::Event::new(e.id, pk(2), e.created_at, e.kind, e.tags.clone(), "", e.sig);
        assert_eq!(verify_signature(&forged), Err(InvalidEvent::IdMismatch));
        let other = sign(&keys(2), KIND_STATE, 1, &[&["d", "r"]]);
        let stolen_sig = nostr::event::Event::new(
            other.id,
            other.pubkey,
            other.created_at,
            other.kind,
            other.tags.clone(),
            "",
            e.sig,
        );
        assert_eq!(
            verify_signature(&stolen_sig).unwrap_err().to_string(),
            "invalid: the signature does not match the event id and pubkey"
        );
        let mut tampered = e.clone();
        tampered.content = "changed".into();
        assert_eq!(verify_signature(&tampered), Err(InvalidEvent::IdMismatch));
    }

    #[test]
    fn coordinates_of_addressable_events() {
        let Ok(Some(g)) = try_parse(KIND_STATE, &[&["d", "r"]]) else {
            panic!()
        };
        let c = g.coordinate().unwrap();
        assert_eq!(
            (c.kind, c.author, c.identifier.as_str()),
            (KIND_STATE, pk(1), "r")
        );
        assert_eq!(Coordinate::parse(&c.to_string()), Ok(c));
    }
}
