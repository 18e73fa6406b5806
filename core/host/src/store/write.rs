//! Writes inside one transaction: serving an event (with its index entries), NIP-01
//! replacement, NIP-09 deletion and tombstones.

use nostr::prelude::{Event, EventId};
use redb::{ReadableTable, Table, WriteTransaction};

use super::references::{ReferenceChanges, ReferenceLimits};
use super::schema::*;
use super::InsertOutcome;

/// Every table, opened for writing in one transaction.
pub struct Tables<'txn> {
    pub meta: Table<'txn, &'static str, u64>,
    pub events: Table<'txn, Id, &'static [u8]>,
    pub by_time: Table<'txn, (u64, Id), ()>,
    pub by_kind: Table<'txn, (u16, u64, Id), ()>,
    pub by_author: Table<'txn, (Id, u64, Id), ()>,
    pub by_tag: Table<'txn, (u8, &'static [u8], u64, Id), ()>,
    pub by_coordinate: Table<'txn, (u16, Id, &'static [u8]), Id>,
    pub waiting: Table<'txn, Id, (u8, u64, &'static [u8])>,
    pub tombstone_ids: Table<'txn, (Id, Id), ()>,
    pub tombstone_coordinates: Table<'txn, (u16, Id, &'static [u8]), u64>,
    pub referenced: Table<'txn, Id, u64>,
    pub referenced_by_age: Table<'txn, u64, Id>,
    pub reference_limits: ReferenceLimits,
    pub reference_changes: ReferenceChanges,
}

impl<'txn> Tables<'txn> {
    pub fn open(
        txn: &'txn WriteTransaction,
        reference_limits: ReferenceLimits,
    ) -> Result<Tables<'txn>, redb::Error> {
        Ok(Tables {
            meta: txn.open_table(META)?,
            events: txn.open_table(EVENTS)?,
            by_time: txn.open_table(BY_TIME)?,
            by_kind: txn.open_table(BY_KIND)?,
            by_author: txn.open_table(BY_AUTHOR)?,
            by_tag: txn.open_table(BY_TAG)?,
            by_coordinate: txn.open_table(BY_COORDINATE)?,
            waiting: txn.open_table(WAITING)?,
            tombstone_ids: txn.open_table(TOMBSTONE_IDS)?,
            tombstone_coordinates: txn.open_table(TOMBSTONE_COORDINATES)?,
            referenced: txn.open_table(REFERENCED)?,
            referenced_by_age: txn.open_table(REFERENCED_BY_AGE)?,
            reference_limits,
            reference_changes: ReferenceChanges::default(),
        })
    }

    pub fn load(&self, id: &Id) -> Result<Option<Event>, redb::Error> {
        super::query::load(&self.events, id)
    }

    pub fn insert(&mut self, event: &Event) -> Result<InsertOutcome, redb::Error> {
        let id = event.id.to_bytes();
        if self.events.get(id)?.is_some() {
            return Ok(InsertOutcome::Duplicate);
        }
        if self.is_tombstoned(event)? {
            return Ok(InsertOutcome::Deleted);
        }
        let mut removed = Vec::new();
        if let Some(d) = coordinate_identifier(event) {
            let key = (event.kind.as_u16(), event.pubkey.to_bytes(), d.as_bytes());
            let current = self.by_coordinate.get(key)?.map(|v| v.value());
            if let Some(current_id) = current {
                if let Some(current) = self.load(&current_id)? {
                    if !supersedes(event, &current) {
                        return Ok(InsertOutcome::Superseded { by: current.id });
                    }
                    self.remove_served(&current)?;
                    removed.push(current.id);
                }
            }
            self.by_coordinate.insert(key, id)?;
        }
        self.add_served(event)?;
        self.index_references(event)?;
        if event.kind.as_u16() == 5 {
            removed.extend(self.apply_deletion(event)?);
        }
        Ok(InsertOutcome::Stored { removed })
    }

    fn add_served(&mut self, event: &Event) -> Result<(), redb::Error> {
        let id = event.id.to_bytes();
        let at = event.created_at.as_secs();
        self.events.insert(id, event.as_json().as_bytes())?;
        self.by_time.insert((at, id), ())?;
        self.by_kind.insert((event.kind.as_u16(), at, id), ())?;
        self.by_author
            .insert((event.pubkey.to_bytes(), at, id), ())?;
        for (letter, value) in tag_keys(event) {
            self.by_tag.insert((letter, value, at, id), ())?;
        }
        Ok(())
    }

    /// Removes a served event and all its index entries.
    pub fn remove_served(&mut self, event: &Event) -> Result<(), redb::Error> {
        let id = event.id.to_bytes();
        let at = event.created_at.as_secs();
        self.events.remove(id)?;
        self.by_time.remove((at, id))?;
        self.by_kind.remove((event.kind.as_u16(), at, id))?;
        self.by_author.remove((event.pubkey.to_bytes(), at, id))?;
        for (letter, value) in tag_keys(event) {
            self.by_tag.remove((letter, value, at, id))?;
        }
        if let Some(d) = coordinate_identifier(event) {
            let key = (event.kind.as_u16(), event.pubkey.to_bytes(), d.as_bytes());
            let points_here = self.by_coordinate.get(key)?.map(|v| v.value()) == Some(id);
            if points_here {
                self.by_coordinate.remove(key)?;
            }
        }
        Ok(())
    }

    /// NIP-09: removes the served events the deletion names that its author wrote, and
    /// records tombstones so they are refused if they come back. Deletions of deletions do
    /// nothing.
    fn apply_deletion(&mut self, deletion: &Event) -> Result<Vec<EventId>, redb::Error> {
        let author = deletion.pubkey.to_bytes();
        let mut removed = Vec::new();
        for tag in deletion.tags.iter() {
            let Some(value) = tag.content() else { continue };
            match tag.kind() {
                "e" => {
                    let Ok(target) = EventId::from_hex(value) else {
                        continue;
                    };
                    self.tombstone_ids.insert((target.to_bytes(), author), ())?;
                    if let Some(event) = self.load(&target.to_bytes())? {
                        if event.pubkey == deletion.pubkey && event.kind.as_u16() != 5 {
                            self.remove_served(&event)?;
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
                    let previous = self.tombstone_coordinates.get(key)?.map(|v| v.value());
                    if previous.is_none_or(|p| p < until) {
                        self.tombstone_coordinates.insert(key, until)?;
                    }
                    let current = self.by_coordinate.get(key)?.map(|v| v.value());
                    if let Some(current) = current {
                        if let Some(event) = self.load(&current)? {
                            if event.created_at.as_secs() <= until {
                                self.remove_served(&event)?;
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

    fn is_tombstoned(&self, event: &Event) -> Result<bool, redb::Error> {
        tombstoned(&self.tombstone_ids, &self.tombstone_coordinates, event)
    }
}

/// Whether a stored kind 5 deletion covers `event`: by id, or by coordinate for versions
/// created at or before the deletion.
pub fn tombstoned(
    ids: &impl ReadableTable<(Id, Id), ()>,
    coordinates: &impl ReadableTable<(u16, Id, &'static [u8]), u64>,
    event: &Event,
) -> Result<bool, redb::Error> {
    let author = event.pubkey.to_bytes();
    if ids.get((event.id.to_bytes(), author))?.is_some() {
        return Ok(true);
    }
    if let Some(d) = coordinate_identifier(event) {
        let key = (event.kind.as_u16(), author, d.as_bytes());
        if let Some(until) = coordinates.get(key)? {
            return Ok(event.created_at.as_secs() <= until.value());
        }
    }
    Ok(false)
}

/// Splits `<kind>:<author hex>:<d>`; the `d` part may itself contain `:`.
fn split_coordinate(value: &str) -> Option<(u16, &str, &str)> {
    let mut parts = value.splitn(3, ':');
    let kind = parts.next()?.parse().ok()?;
    let pubkey = parts.next()?;
    let d = parts.next().unwrap_or("");
    Some((kind, pubkey, d))
}
