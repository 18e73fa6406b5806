//! The redb tables opened for writing in one transaction, and the row operations the write
//! rules (`rules.rs`) run on them.

use nostr::prelude::Event;
use redb::{ReadableTable, ReadableTableMetadata, Table, WriteTransaction};

use super::references::{ReferenceChanges, ReferenceLimits};
use super::rules::{self, Coordinate, Rows, Tombstones};
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
        rules::insert(self, event)
    }
}

impl Tombstones for Tables<'_> {
    type Error = redb::Error;

    fn has_tombstone_id(&mut self, id: &Id, author: &Id) -> Result<bool, redb::Error> {
        Ok(self.tombstone_ids.get((*id, *author))?.is_some())
    }

    fn tombstone_until(&mut self, key: Coordinate<'_>) -> Result<Option<u64>, redb::Error> {
        Ok(self.tombstone_coordinates.get(key)?.map(|v| v.value()))
    }
}

/// The tombstone tables of a read transaction.
pub struct ReadTombstones<T, C>(pub T, pub C);

impl<T, C> Tombstones for ReadTombstones<T, C>
where
    T: ReadableTable<(Id, Id), ()>,
    C: ReadableTable<(u16, Id, &'static [u8]), u64>,
{
    type Error = redb::Error;

    fn has_tombstone_id(&mut self, id: &Id, author: &Id) -> Result<bool, redb::Error> {
        Ok(self.0.get((*id, *author))?.is_some())
    }

    fn tombstone_until(&mut self, key: Coordinate<'_>) -> Result<Option<u64>, redb::Error> {
        Ok(self.1.get(key)?.map(|v| v.value()))
    }
}

impl Rows for Tables<'_> {
    fn load(&mut self, id: &Id) -> Result<Option<Event>, redb::Error> {
        Tables::load(self, id)
    }

    fn is_served(&mut self, id: &Id) -> Result<bool, redb::Error> {
        Ok(self.events.get(id)?.is_some())
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

    fn remove_served_rows(&mut self, event: &Event) -> Result<(), redb::Error> {
        let id = event.id.to_bytes();
        let at = event.created_at.as_secs();
        self.events.remove(id)?;
        self.by_time.remove((at, id))?;
        self.by_kind.remove((event.kind.as_u16(), at, id))?;
        self.by_author.remove((event.pubkey.to_bytes(), at, id))?;
        for (letter, value) in tag_keys(event) {
            self.by_tag.remove((letter, value, at, id))?;
        }
        Ok(())
    }

    fn coordinate(&mut self, key: Coordinate<'_>) -> Result<Option<Id>, redb::Error> {
        Ok(self.by_coordinate.get(key)?.map(|v| v.value()))
    }

    fn set_coordinate(&mut self, key: Coordinate<'_>, id: &Id) -> Result<(), redb::Error> {
        self.by_coordinate.insert(key, id)?;
        Ok(())
    }

    fn remove_coordinate(&mut self, key: Coordinate<'_>) -> Result<(), redb::Error> {
        self.by_coordinate.remove(key)?;
        Ok(())
    }

    fn add_tombstone_id(&mut self, id: &Id, author: &Id) -> Result<(), redb::Error> {
        self.tombstone_ids.insert((*id, *author), ())?;
        Ok(())
    }

    fn set_tombstone_until(&mut self, key: Coordinate<'_>, until: u64) -> Result<(), redb::Error> {
        self.tombstone_coordinates.insert(key, until)?;
        Ok(())
    }

    fn forget_reference(&mut self, id: &Id) -> Result<bool, redb::Error> {
        let Some(age) = self.referenced.remove(id)?.map(|v| v.value()) else {
            return Ok(false);
        };
        self.referenced_by_age.remove(age)?;
        Ok(true)
    }

    fn add_newest_reference(&mut self, id: &Id) -> Result<(), redb::Error> {
        let age = match self.referenced_by_age.last()? {
            Some((newest, _)) => newest.value() + 1,
            None => 0,
        };
        self.referenced.insert(id, age)?;
        self.referenced_by_age.insert(age, id)?;
        Ok(())
    }

    fn evict_references(&mut self, capacity: usize) -> Result<u64, redb::Error> {
        let mut evicted = 0;
        while self.referenced.len()? > capacity as u64 {
            let Some((_, id)) = self.referenced_by_age.pop_first()? else {
                break;
            };
            let id = id.value();
            self.referenced.remove(id)?;
            evicted += 1;
        }
        Ok(evicted)
    }

    fn reference_entries(&mut self) -> Result<u64, redb::Error> {
        self.referenced.len().map_err(redb::Error::from)
    }

    fn reference_limits(&self) -> ReferenceLimits {
        self.reference_limits
    }

    fn reference_changes(&mut self) -> &mut ReferenceChanges {
        &mut self.reference_changes
    }

    fn waiting_json(&mut self, id: &Id) -> Result<Option<Vec<u8>>, redb::Error> {
        Ok(self.waiting.get(id)?.map(|entry| entry.value().2.to_vec()))
    }

    fn remove_waiting(&mut self, id: &Id) -> Result<bool, redb::Error> {
        Ok(self.waiting.remove(id)?.is_some())
    }
}
