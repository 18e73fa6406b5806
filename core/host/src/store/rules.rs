//! What a write does, written once for every backend: serving an event with NIP-01
//! replacement, NIP-09 deletion and tombstones, the index of referenced ids, and the move
//! from purgatory to served. Each backend gives the row operations ([`Rows`]) inside one of
//! its write transactions; the rules decide which ones to run.

use std::path::Path;

use nostr::prelude::{Event, EventId};

use super::references::{ReferenceChanges, ReferenceLimits};
use super::schema::{coordinate_identifier, supersedes, Id};
use super::InsertOutcome;

/// `(kind, author, d)`: where one replaceable/addressable event is served.
pub type Coordinate<'a> = (u16, Id, &'a [u8]);

/// The deletion tombstones, readable inside or outside a write transaction.
pub trait Tombstones {
    type Error;
    /// Whether `author` asked (kind 5, by `e`) to delete the event `id`.
    fn has_tombstone_id(&mut self, id: &Id, author: &Id) -> Result<bool, Self::Error>;
    /// The newest deletion's `created_at` for a coordinate (kind 5, by `a`).
    fn tombstone_until(&mut self, coordinate: Coordinate<'_>) -> Result<Option<u64>, Self::Error>;
}

/// The row operations of one write transaction. Each does exactly what it says and nothing
/// else; the rules below keep the rows consistent.
pub trait Rows: Tombstones {
    fn load(&mut self, id: &Id) -> Result<Option<Event>, Self::Error>;
    fn is_served(&mut self, id: &Id) -> Result<bool, Self::Error>;
    /// Adds the event and its filter index entries (not its coordinate).
    fn add_served(&mut self, event: &Event) -> Result<(), Self::Error>;
    /// Removes the event and its filter index entries (not its coordinate).
    fn remove_served_rows(&mut self, event: &Event) -> Result<(), Self::Error>;
    fn coordinate(&mut self, coordinate: Coordinate<'_>) -> Result<Option<Id>, Self::Error>;
    fn set_coordinate(&mut self, coordinate: Coordinate<'_>, id: &Id) -> Result<(), Self::Error>;
    fn remove_coordinate(&mut self, coordinate: Coordinate<'_>) -> Result<(), Self::Error>;
    fn add_tombstone_id(&mut self, id: &Id, author: &Id) -> Result<(), Self::Error>;
    fn set_tombstone_until(
        &mut self,
        coordinate: Coordinate<'_>,
        until: u64,
    ) -> Result<(), Self::Error>;

    /// Removes `id` from the index of referenced ids; whether it was there.
    fn forget_reference(&mut self, id: &Id) -> Result<bool, Self::Error>;
    /// Adds `id` (absent) to the index of referenced ids as its newest entry.
    fn add_newest_reference(&mut self, id: &Id) -> Result<(), Self::Error>;
    /// Forgets the oldest entries until at most `capacity` are left; how many it forgot.
    fn evict_references(&mut self, capacity: usize) -> Result<u64, Self::Error>;
    fn reference_entries(&mut self) -> Result<u64, Self::Error>;
    fn reference_limits(&self) -> ReferenceLimits;
    fn reference_changes(&mut self) -> &mut ReferenceChanges;

    /// Purgatory: the stored JSON of a waiting event.
    fn waiting_json(&mut self, id: &Id) -> Result<Option<Vec<u8>>, Self::Error>;
    /// Purgatory: drops an entry; whether it was there.
    fn remove_waiting(&mut self, id: &Id) -> Result<bool, Self::Error>;
}

/// Stores `event` for serving, applying NIP-01 replacement and NIP-09 deletion.
pub fn insert<R: Rows>(rows: &mut R, event: &Event) -> Result<InsertOutcome, R::Error> {
    let id = event.id.to_bytes();
    if rows.is_served(&id)? {
        return Ok(InsertOutcome::Duplicate);
    }
    if tombstoned(rows, event)? {
        return Ok(InsertOutcome::Deleted);
    }
    let mut removed = Vec::new();
    if let Some(d) = coordinate_identifier(event) {
        let key = (event.kind.as_u16(), event.pubkey.to_bytes(), d.as_bytes());
        if let Some(current_id) = rows.coordinate(key)? {
            if let Some(current) = rows.load(&current_id)? {
                if !supersedes(event, &current) {
                    return Ok(InsertOutcome::Superseded { by: current.id });
                }
                remove_served(rows, &current)?;
                removed.push(current.id);
            }
        }
        rows.set_coordinate(key, &id)?;
    }
    rows.add_served(event)?;
    index_references(rows, event)?;
    if event.kind.as_u16() == 5 {
        removed.extend(apply_deletion(rows, event)?);
    }
    Ok(InsertOutcome::Stored { removed })
}

/// Removes a served event, its index entries and its coordinate if it holds it.
pub fn remove_served<R: Rows>(rows: &mut R, event: &Event) -> Result<(), R::Error> {
    let id = event.id.to_bytes();
    rows.remove_served_rows(event)?;
    if let Some(d) = coordinate_identifier(event) {
        let key = (event.kind.as_u16(), event.pubkey.to_bytes(), d.as_bytes());
        if rows.coordinate(key)? == Some(id) {
            rows.remove_coordinate(key)?;
        }
    }
    Ok(())
}

/// Removes the served event `id` (an operator's removal, not a deletion); whether it was
/// served.
pub fn remove_by_id<R: Rows>(rows: &mut R, id: &EventId) -> Result<bool, R::Error> {
    match rows.load(&id.to_bytes())? {
        Some(event) => {
            remove_served(rows, &event)?;
            Ok(true)
        }
        None => Ok(false),
    }
}

/// Moves a waiting event to the served ones; `None` when purgatory does not hold it (or its
/// entry cannot be decoded: logged, and left in place for the operator).
pub fn release<R: Rows>(
    rows: &mut R,
    id: &EventId,
    store: &Path,
) -> Result<Option<(Event, InsertOutcome)>, R::Error> {
    let Some(json) = rows.waiting_json(&id.to_bytes())? else {
        return Ok(None);
    };
    let event = match Event::from_json(&json) {
        Ok(event) => event,
        Err(error) => {
            tracing::error!(path = %store.display(), %id, %error, "a released event's purgatory entry cannot be decoded");
            return Ok(None);
        }
    };
    rows.remove_waiting(&id.to_bytes())?;
    let outcome = insert(rows, &event)?;
    Ok(Some((event, outcome)))
}

/// NIP-09: removes the served events the deletion names that its author wrote, and records
/// tombstones so they are refused if they come back. Deletions of deletions do nothing.
fn apply_deletion<R: Rows>(rows: &mut R, deletion: &Event) -> Result<Vec<EventId>, R::Error> {
    let author = deletion.pubkey.to_bytes();
    let mut removed = Vec::new();
    for tag in deletion.tags.iter() {
        let Some(value) = tag.content() else { continue };
        match tag.kind() {
            "e" => {
                let Ok(target) = EventId::from_hex(value) else {
                    continue;
                };
                rows.add_tombstone_id(&target.to_bytes(), &author)?;
                if let Some(event) = rows.load(&target.to_bytes())? {
                    if event.pubkey == deletion.pubkey && event.kind.as_u16() != 5 {
                        remove_served(rows, &event)?;
                        removed.push(event.id);
                    }
                }
            }
            "a" => {
                let Some((kind, pubkey_hex, d)) = split_coordinate(value) else {
                    continue;
                };
                if pubkey_hex != deletion.pubkey.to_hex() {
                    continue;
                }
                let until = deletion.created_at.as_secs();
                let key = (kind, author, d.as_bytes());
                if rows.tombstone_until(key)?.is_none_or(|p| p < until) {
                    rows.set_tombstone_until(key, until)?;
                }
                if let Some(current) = rows.coordinate(key)? {
                    if let Some(event) = rows.load(&current)? {
                        if event.created_at.as_secs() <= until {
                            remove_served(rows, &event)?;
                            removed.push(event.id);
                        }
                    }
                }
            }
            _ => {}
        }
    }
    Ok(removed)
}

/// Whether a stored kind 5 deletion covers `event`: by id, or by coordinate for versions
/// created at or before the deletion.
pub fn tombstoned<T: Tombstones>(tombstones: &mut T, event: &Event) -> Result<bool, T::Error> {
    let author = event.pubkey.to_bytes();
    if tombstones.has_tombstone_id(&event.id.to_bytes(), &author)? {
        return Ok(true);
    }
    if let Some(d) = coordinate_identifier(event) {
        let key = (event.kind.as_u16(), author, d.as_bytes());
        if let Some(until) = tombstones.tombstone_until(key)? {
            return Ok(event.created_at.as_secs() <= until);
        }
    }
    Ok(false)
}

/// Keeps the index of referenced ids true after `event` was served: it no longer waits to be
/// named, and the ids it names that are not served are remembered (moved to newest if
/// already there).
fn index_references<R: Rows>(rows: &mut R, event: &Event) -> Result<(), R::Error> {
    let limits = rows.reference_limits();
    let mut touched = rows.forget_reference(&event.id.to_bytes())?;
    let named = graspd_core::related::remembered_references(event, limits.per_event);
    for id in named {
        let id = id.to_bytes();
        if !rows.is_served(&id)? {
            rows.forget_reference(&id)?;
            rows.add_newest_reference(&id)?;
            touched = true;
        }
    }
    if touched {
        let evicted = rows.evict_references(limits.capacity)?;
        let entries = rows.reference_entries()?;
        let changes = rows.reference_changes();
        changes.evicted += evicted;
        changes.entries = Some(entries);
    }
    Ok(())
}

/// Splits `<kind>:<author hex>:<d>`; the `d` part may itself contain `:`.
fn split_coordinate(value: &str) -> Option<(u16, &str, &str)> {
    let mut parts = value.splitn(3, ':');
    let kind = parts.next()?.parse().ok()?;
    let pubkey = parts.next()?;
    let d = parts.next().unwrap_or("");
    Some((kind, pubkey, d))
}
