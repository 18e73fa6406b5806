//! Typed NIP-34 events: what the engine reasons about, parsed once from `nostr::Event`.
//!
//! Parsing and validation live in this module (`parse`); everything downstream takes these
//! types and never looks at raw tags again.

use std::collections::BTreeMap;

use crate::ids::{EventId, Identifier, Oid, PublicKey};

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

/// Kind 30618: the refs a maintainer says the repository must have.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct RepoState {
    pub id: EventId,
    pub author: PublicKey,
    pub created_at: u64,
    pub identifier: Identifier,
    /// Branches and tags (peeled `^{}` entries dropped). Empty is legal.
    pub refs: BTreeMap<RefName, Oid>,
    /// `HEAD` target branch (`refs/heads/<b>`) from `["HEAD", "ref: refs/heads/<b>"]`.
    pub head: Option<RefName>,
}

/// Kind 1618 (PR) or 1619 (PR update): a commit offered to one or more repositories.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct PullRequest {
    pub id: EventId,
    pub author: PublicKey,
    pub created_at: u64,
    /// `a` tags naming 30617 coordinates of the target repositories.
    pub repos: Vec<Coordinate>,
    /// `c` tag: the tip commit.
    pub commit: Oid,
    /// `clone` tag values: where the tip can be fetched.
    pub clone: Vec<String>,
    /// `E` tag of a PR update (kind 1619): the PR it updates. `None` for kind 1618.
    pub updates: Option<EventId>,
}

/// Kind 5: a deletion request by event id (`e`) and/or coordinate (`a`).
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct Deletion {
    pub id: EventId,
    pub author: PublicKey,
    pub created_at: u64,
    pub event_ids: Vec<EventId>,
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
