//! The redb tables and how an event maps onto their keys.
//!
//! Format version 1. Any change to a table's key or value layout bumps [`FORMAT_VERSION`]; a
//! new table does not (older builds ignore it, newer ones create it when missing).

use nostr::prelude::{Event, Filter, SingleLetterTag};
use redb::TableDefinition;

/// The store format this build writes and reads.
pub const FORMAT_VERSION: u64 = 1;

pub type Id = [u8; 32];

/// `"format_version"` -> version number.
pub const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
pub const META_FORMAT_KEY: &str = "format_version";

/// Served events: id -> event JSON.
pub const EVENTS: TableDefinition<Id, &[u8]> = TableDefinition::new("events");
/// (created_at, id); iterated backwards for newest first.
pub const BY_TIME: TableDefinition<(u64, Id), ()> = TableDefinition::new("by_time");
/// (kind, created_at, id).
pub const BY_KIND: TableDefinition<(u16, u64, Id), ()> = TableDefinition::new("by_kind");
/// (author, created_at, id).
pub const BY_AUTHOR: TableDefinition<(Id, u64, Id), ()> = TableDefinition::new("by_author");
/// (tag letter, indexed value, created_at, id) for every single-letter tag with a value.
pub const BY_TAG: TableDefinition<(u8, &[u8], u64, Id), ()> = TableDefinition::new("by_tag");
/// (kind, author, `d` value) -> id of the one served replaceable/addressable event there.
pub const BY_COORDINATE: TableDefinition<(u16, Id, &[u8]), Id> =
    TableDefinition::new("by_coordinate");

/// Purgatory: id -> (arrival code, expires_at unix seconds, event JSON).
pub const WAITING: TableDefinition<Id, (u8, u64, &[u8])> = TableDefinition::new("waiting");

/// Tag values longer than this are indexed by their first bytes only; queries truncate the
/// same way and re-check the full event, so long values stay findable without bloating keys.
pub const MAX_INDEXED_TAG_VALUE: usize = 200;

pub fn indexed_tag_value(value: &str) -> &[u8] {
    let bytes = value.as_bytes();
    &bytes[..bytes.len().min(MAX_INDEXED_TAG_VALUE)]
}

/// The distinct (letter, indexed value) pairs an event is findable by, in order.
pub fn tag_keys(event: &Event) -> Vec<(u8, &[u8])> {
    let mut keys: Vec<(u8, &[u8])> = event
        .tags
        .iter()
        .filter_map(|tag| {
            let letter = tag.single_letter_tag()?;
            let value = tag.content()?;
            Some((letter_byte(letter), indexed_tag_value(value)))
        })
        .collect();
    keys.sort_unstable();
    keys.dedup();
    keys
}

pub fn letter_byte(letter: SingleLetterTag) -> u8 {
    letter.as_char() as u8
}

/// NIP-01: kinds 0, 3 and 10000-19999 keep one event per (kind, author).
pub fn is_replaceable(kind: u16) -> bool {
    kind == 0 || kind == 3 || (10_000..20_000).contains(&kind)
}

/// NIP-01: kinds 30000-39999 keep one event per (kind, author, `d`).
pub fn is_addressable(kind: u16) -> bool {
    (30_000..40_000).contains(&kind)
}

/// The `d` value that names an addressable event: the first `d` tag's value, else empty.
/// Replaceable events always have the empty identifier.
pub fn coordinate_identifier(event: &Event) -> Option<&str> {
    let kind = event.kind.as_u16();
    if is_replaceable(kind) {
        return Some("");
    }
    if !is_addressable(kind) {
        return None;
    }
    let d = event
        .tags
        .iter()
        .find(|tag| tag.kind() == "d")
        .and_then(|tag| tag.content())
        .unwrap_or("");
    Some(d)
}

/// Whether `a` is served in preference to `b` for the same coordinate (NIP-01, the engine's
/// rule: newer wins, a tie of `created_at` goes to the lowest id).
pub fn supersedes(a: &Event, b: &Event) -> bool {
    graspd_core::replaceable::supersedes(
        (a.created_at.as_secs(), &a.id),
        (b.created_at.as_secs(), &b.id),
    )
}

/// Whether a filter can match nothing at all (a tag or id list given but empty).
pub fn matches_nothing(filter: &Filter) -> bool {
    filter.generic_tags.values().any(|values| values.is_empty())
}

/// Deletion tombstones by id: (deleted event id, author who asked) -> (). An event whose
/// (id, author) is here is refused if it arrives again.
pub const TOMBSTONE_IDS: TableDefinition<(Id, Id), ()> = TableDefinition::new("tombstone_ids");
/// Deletion tombstones by coordinate: (kind, author, `d`) -> newest deletion's created_at.
/// Versions at that coordinate created at or before it are refused.
pub const TOMBSTONE_COORDINATES: TableDefinition<(u16, Id, &[u8]), u64> =
    TableDefinition::new("tombstone_coordinates");

/// Ids named by accepted issues, patches, PRs and comments and not served yet: id -> age (a
/// sequence number, higher is newer). See `references.rs`.
pub const REFERENCED: TableDefinition<Id, u64> = TableDefinition::new("referenced");
/// The same entries by age, for oldest-first eviction: age -> id.
pub const REFERENCED_BY_AGE: TableDefinition<u64, Id> = TableDefinition::new("referenced_by_age");
