//! The row operations of one PostgreSQL write transaction, for the write rules
//! (`../rules.rs`).
//!
//! Every statement is a round trip, and the writers' transactions take turns under one lock,
//! so the statements a batch of writes makes are what bounds the store's write rate. Two
//! things keep them few without changing what the rules see:
//! - the point reads a batch will make (is an event served, tombstoned by its author, in the
//!   index of referenced ids) are read for the whole batch in one statement
//!   ([`PgRows::read_ahead`]) and answered from memory, kept true by every write below;
//! - served events are inserted when the next statement runs or the transaction ends, all
//!   of them (and their tag rows) in one statement, so a run of inserts is one round trip.

use std::collections::HashMap;

use nostr::prelude::Event;
use postgres::{GenericClient, Transaction};

use super::super::query::decode;
use super::super::references::{ReferenceChanges, ReferenceLimits};
use super::super::rules::{Coordinate, Rows, Tombstones};
use super::super::schema::{tag_keys, Id};
use super::super::{arrival_code, InsertOutcome, WaitingEvent};
use super::statements::Cached;

/// Unix seconds as stored: `bigint` holds a `u64`'s bits.
pub fn seconds(value: u64) -> i64 {
    value as i64
}

/// `created_at` as stored and compared: clamped, so ordering stays that of the `u64`.
pub fn timestamp(value: u64) -> i64 {
    value.min(i64::MAX as u64) as i64
}

/// Served events held back at most before they are inserted.
const MAX_UNWRITTEN: usize = 1024;

/// A transaction's tables.
pub struct PgRows<'t, 'c> {
    /// Reached through [`PgRows::db`], which first inserts what is held back.
    db: Cached<'t, Transaction<'c>>,
    pub reference_limits: ReferenceLimits,
    pub reference_changes: ReferenceChanges,
    /// What this transaction put in purgatory, served or dropped from purgatory, in order: the
    /// other instances are notified of it when it commits (`notify.rs`).
    pub notes: Vec<super::notify::Changed>,
    known: Known,
    unwritten: Unwritten,
}

/// Answers of point reads, as the transaction's rows are now: read ahead, or written by it.
/// No other transaction writes while this one holds the write lock.
#[derive(Default)]
struct Known {
    served: HashMap<Id, bool>,
    /// By (event id, author).
    tombstoned: HashMap<(Id, Id), bool>,
    referenced: HashMap<Id, bool>,
}

/// Served events added but not inserted yet, as the insert's columns.
#[derive(Default)]
struct Unwritten {
    ids: Vec<Id>,
    pubkeys: Vec<Id>,
    kinds: Vec<i32>,
    created_at: Vec<i64>,
    json: Vec<String>,
    tag_letters: Vec<i16>,
    tag_values: Vec<Vec<u8>>,
    tag_created_at: Vec<i64>,
    tag_ids: Vec<Id>,
}

/// The (event id, author) pairs whose rows storing `event` reads: its own, and the ids it
/// names that the index of referenced ids may remember.
pub fn reads_of_insert(event: &Event, limits: &ReferenceLimits) -> Vec<(Id, Id)> {
    let author = event.pubkey.to_bytes();
    std::iter::once(event.id)
        .chain(graspd_core::related::remembered_references(
            event,
            limits.per_event,
        ))
        .map(|id| (id.to_bytes(), author))
        .collect()
}

impl<'t, 'c> PgRows<'t, 'c> {
    pub fn new(
        db: Cached<'t, Transaction<'c>>,
        reference_limits: ReferenceLimits,
    ) -> PgRows<'t, 'c> {
        PgRows {
            db,
            reference_limits,
            reference_changes: ReferenceChanges::default(),
            notes: Vec::new(),
            known: Known::default(),
            unwritten: Unwritten::default(),
        }
    }

    /// The transaction, with every served event added so far inserted.
    pub fn db(&mut self) -> Result<&mut Cached<'t, Transaction<'c>>, postgres::Error> {
        self.write_held_back()?;
        Ok(&mut self.db)
    }

    /// Inserts the served events held back, and their tag rows, in one statement.
    pub fn write_held_back(&mut self) -> Result<(), postgres::Error> {
        if self.unwritten.ids.is_empty() {
            return Ok(());
        }
        let unwritten = std::mem::take(&mut self.unwritten);
        let ids: Vec<&[u8]> = unwritten.ids.iter().map(|id| &id[..]).collect();
        let pubkeys: Vec<&[u8]> = unwritten.pubkeys.iter().map(|key| &key[..]).collect();
        let tag_ids: Vec<&[u8]> = unwritten.tag_ids.iter().map(|id| &id[..]).collect();
        // The tag rows' foreign key is checked at the end of the statement, when the events
        // are in.
        self.db.execute(
            "WITH served AS (
                INSERT INTO events (id, pubkey, kind, created_at, json)
                SELECT * FROM unnest($1::bytea[], $2::bytea[], $3::integer[], $4::bigint[],
                    $5::text[])
            )
            INSERT INTO event_tags (letter, value, created_at, id)
            SELECT * FROM unnest($6::smallint[], $7::bytea[], $8::bigint[], $9::bytea[])",
            &[
                &ids,
                &pubkeys,
                &unwritten.kinds,
                &unwritten.created_at,
                &unwritten.json,
                &unwritten.tag_letters,
                &unwritten.tag_values,
                &unwritten.tag_created_at,
                &tag_ids,
            ],
        )?;
        Ok(())
    }

    /// Reads in one statement whether each event of `keys` is served, tombstoned by the
    /// author paired with it, and in the index of referenced ids; the row operations below
    /// answer from that.
    pub fn read_ahead(&mut self, keys: &[(Id, Id)]) -> Result<(), postgres::Error> {
        if keys.is_empty() {
            return Ok(());
        }
        let ids: Vec<&[u8]> = keys.iter().map(|(id, _)| &id[..]).collect();
        let authors: Vec<&[u8]> = keys.iter().map(|(_, author)| &author[..]).collect();
        let rows = self.db()?.query(
            "SELECT k.id, k.author,
                EXISTS (SELECT 1 FROM events e WHERE e.id = k.id),
                EXISTS (SELECT 1 FROM tombstone_ids t WHERE t.id = k.id AND t.author = k.author),
                EXISTS (SELECT 1 FROM referenced r WHERE r.id = k.id)
             FROM unnest($1::bytea[], $2::bytea[]) AS k (id, author)",
            &[&ids, &authors],
        )?;
        for row in rows {
            let (Ok(id), Ok(author)) = (
                Id::try_from(row.get::<_, &[u8]>(0)),
                Id::try_from(row.get::<_, &[u8]>(1)),
            ) else {
                continue;
            };
            self.known.served.insert(id, row.get(2));
            self.known.tombstoned.insert((id, author), row.get(3));
            self.known.referenced.insert(id, row.get(4));
        }
        Ok(())
    }

    pub fn put_waiting(&mut self, waiting: &WaitingEvent) -> Result<(), postgres::Error> {
        let id = waiting.event.id.to_bytes();
        self.db()?.execute(
            "INSERT INTO waiting (id, arrival, expires_at, json) VALUES ($1, $2, $3, $4)
             ON CONFLICT (id) DO UPDATE SET arrival = $2, expires_at = $3, json = $4",
            &[
                &&id[..],
                &i16::from(arrival_code(waiting.arrival)),
                &seconds(waiting.expires_at),
                &waiting.event.as_json(),
            ],
        )?;
        self.notes
            .push(super::notify::Changed::Waiting(waiting.event.id));
        Ok(())
    }

    /// Notes that `event` is served if `outcome` stored it.
    pub fn note_served(&mut self, event: &Event, outcome: &InsertOutcome) {
        if matches!(outcome, InsertOutcome::Stored { .. }) {
            self.notes.push(super::notify::Changed::Served(event.id));
        }
    }
}

/// Tombstone reads on any connection or transaction.
pub struct PgTombstones<'a, 'c, C: GenericClient>(pub &'a mut Cached<'c, C>);

impl<C: GenericClient> Tombstones for PgTombstones<'_, '_, C> {
    type Error = postgres::Error;

    fn has_tombstone_id(&mut self, id: &Id, author: &Id) -> Result<bool, postgres::Error> {
        has_tombstone_id(self.0, id, author)
    }

    fn tombstone_until(&mut self, key: Coordinate<'_>) -> Result<Option<u64>, postgres::Error> {
        tombstone_until(self.0, key)
    }
}

fn has_tombstone_id(
    client: &mut Cached<'_, impl GenericClient>,
    id: &Id,
    author: &Id,
) -> Result<bool, postgres::Error> {
    Ok(client
        .query_opt(
            "SELECT 1 FROM tombstone_ids WHERE id = $1 AND author = $2",
            &[&&id[..], &&author[..]],
        )?
        .is_some())
}

fn tombstone_until(
    client: &mut Cached<'_, impl GenericClient>,
    (kind, author, d): Coordinate<'_>,
) -> Result<Option<u64>, postgres::Error> {
    let row = client.query_opt(
        "SELECT until FROM tombstone_coordinates WHERE kind = $1 AND author = $2 AND d = $3",
        &[&i32::from(kind), &&author[..], &d],
    )?;
    Ok(row.map(|row| row.get::<_, i64>(0) as u64))
}

impl Tombstones for PgRows<'_, '_> {
    type Error = postgres::Error;

    fn has_tombstone_id(&mut self, id: &Id, author: &Id) -> Result<bool, postgres::Error> {
        if let Some(known) = self.known.tombstoned.get(&(*id, *author)) {
            return Ok(*known);
        }
        let found = has_tombstone_id(self.db()?, id, author)?;
        self.known.tombstoned.insert((*id, *author), found);
        Ok(found)
    }

    fn tombstone_until(&mut self, key: Coordinate<'_>) -> Result<Option<u64>, postgres::Error> {
        tombstone_until(self.db()?, key)
    }
}

impl Rows for PgRows<'_, '_> {
    fn load(&mut self, id: &Id) -> Result<Option<Event>, postgres::Error> {
        let row = self
            .db()?
            .query_opt("SELECT json FROM events WHERE id = $1", &[&&id[..]])?;
        Ok(row.and_then(|row| decode(id, row.get::<_, &str>(0).as_bytes())))
    }

    fn is_served(&mut self, id: &Id) -> Result<bool, postgres::Error> {
        if let Some(known) = self.known.served.get(id) {
            return Ok(*known);
        }
        let found = self
            .db()?
            .query_opt("SELECT 1 FROM events WHERE id = $1", &[&&id[..]])?
            .is_some();
        self.known.served.insert(*id, found);
        Ok(found)
    }

    fn add_served(&mut self, event: &Event) -> Result<(), postgres::Error> {
        if self.unwritten.ids.len() >= MAX_UNWRITTEN {
            self.write_held_back()?;
        }
        let id = event.id.to_bytes();
        let at = timestamp(event.created_at.as_secs());
        let unwritten = &mut self.unwritten;
        unwritten.ids.push(id);
        unwritten.pubkeys.push(event.pubkey.to_bytes());
        unwritten.kinds.push(i32::from(event.kind.as_u16()));
        unwritten.created_at.push(at);
        unwritten.json.push(event.as_json());
        for (letter, value) in tag_keys(event) {
            unwritten.tag_letters.push(i16::from(letter));
            unwritten.tag_values.push(value.to_vec());
            unwritten.tag_created_at.push(at);
            unwritten.tag_ids.push(id);
        }
        self.known.served.insert(id, true);
        Ok(())
    }

    fn remove_served_rows(&mut self, event: &Event) -> Result<(), postgres::Error> {
        let id = event.id.to_bytes();
        // Its tag rows go with it (ON DELETE CASCADE).
        self.db()?
            .execute("DELETE FROM events WHERE id = $1", &[&&id[..]])?;
        self.known.served.insert(id, false);
        Ok(())
    }

    fn coordinate(
        &mut self,
        (kind, author, d): Coordinate<'_>,
    ) -> Result<Option<Id>, postgres::Error> {
        let row = self.db()?.query_opt(
            "SELECT id FROM coordinates WHERE kind = $1 AND pubkey = $2 AND d = $3",
            &[&i32::from(kind), &&author[..], &d],
        )?;
        Ok(row.and_then(|row| row.get::<_, &[u8]>(0).try_into().ok()))
    }

    fn set_coordinate(
        &mut self,
        (kind, author, d): Coordinate<'_>,
        id: &Id,
    ) -> Result<(), postgres::Error> {
        self.db()?.execute(
            "INSERT INTO coordinates (kind, pubkey, d, id) VALUES ($1, $2, $3, $4)
             ON CONFLICT (kind, pubkey, d) DO UPDATE SET id = $4",
            &[&i32::from(kind), &&author[..], &d, &&id[..]],
        )?;
        Ok(())
    }

    fn remove_coordinate(
        &mut self,
        (kind, author, d): Coordinate<'_>,
    ) -> Result<(), postgres::Error> {
        self.db()?.execute(
            "DELETE FROM coordinates WHERE kind = $1 AND pubkey = $2 AND d = $3",
            &[&i32::from(kind), &&author[..], &d],
        )?;
        Ok(())
    }

    fn add_tombstone_id(&mut self, id: &Id, author: &Id) -> Result<(), postgres::Error> {
        self.db()?.execute(
            "INSERT INTO tombstone_ids (id, author) VALUES ($1, $2) ON CONFLICT DO NOTHING",
            &[&&id[..], &&author[..]],
        )?;
        self.known.tombstoned.insert((*id, *author), true);
        Ok(())
    }

    fn set_tombstone_until(
        &mut self,
        (kind, author, d): Coordinate<'_>,
        until: u64,
    ) -> Result<(), postgres::Error> {
        self.db()?.execute(
            "INSERT INTO tombstone_coordinates (kind, author, d, until) VALUES ($1, $2, $3, $4)
             ON CONFLICT (kind, author, d) DO UPDATE SET until = $4",
            &[&i32::from(kind), &&author[..], &d, &seconds(until)],
        )?;
        Ok(())
    }

    fn forget_reference(&mut self, id: &Id) -> Result<bool, postgres::Error> {
        if self.known.referenced.get(id) == Some(&false) {
            return Ok(false);
        }
        let forgotten = self
            .db()?
            .execute("DELETE FROM referenced WHERE id = $1", &[&&id[..]])?
            > 0;
        self.known.referenced.insert(*id, false);
        Ok(forgotten)
    }

    fn add_newest_reference(&mut self, id: &Id) -> Result<(), postgres::Error> {
        self.db()?.execute(
            "INSERT INTO referenced (id, age)
             SELECT $1, coalesce(max(age) + 1, 0) FROM referenced",
            &[&&id[..]],
        )?;
        self.known.referenced.insert(*id, true);
        Ok(())
    }

    fn evict_references(&mut self, capacity: usize) -> Result<u64, postgres::Error> {
        let capacity = i64::try_from(capacity).unwrap_or(i64::MAX);
        let evicted = self.db()?.execute(
            "DELETE FROM referenced WHERE age IN (
                SELECT age FROM referenced ORDER BY age
                LIMIT greatest(0, (SELECT count(*) FROM referenced) - $1)
            )",
            &[&capacity],
        )?;
        if evicted > 0 {
            // Which ones is not known here.
            self.known.referenced.clear();
        }
        Ok(evicted)
    }

    fn reference_entries(&mut self) -> Result<u64, postgres::Error> {
        let count: i64 = self
            .db()?
            .query_one("SELECT count(*) FROM referenced", &[])?
            .get(0);
        Ok(count as u64)
    }

    fn reference_limits(&self) -> ReferenceLimits {
        self.reference_limits
    }

    fn reference_changes(&mut self) -> &mut ReferenceChanges {
        &mut self.reference_changes
    }

    fn waiting_json(&mut self, id: &Id) -> Result<Option<Vec<u8>>, postgres::Error> {
        let row = self
            .db()?
            .query_opt("SELECT json FROM waiting WHERE id = $1", &[&&id[..]])?;
        Ok(row.map(|row| row.get::<_, String>(0).into_bytes()))
    }

    fn remove_waiting(&mut self, id: &Id) -> Result<bool, postgres::Error> {
        Ok(self
            .db()?
            .execute("DELETE FROM waiting WHERE id = $1", &[&&id[..]])?
            > 0)
    }
}
