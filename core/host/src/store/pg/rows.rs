//! The row operations of one PostgreSQL write transaction, for the write rules
//! (`../rules.rs`).

use nostr::prelude::Event;
use postgres::Transaction;

use super::super::query::decode;
use super::super::references::{ReferenceChanges, ReferenceLimits};
use super::super::rules::{Coordinate, Rows, Tombstones};
use super::super::schema::{tag_keys, Id};
use super::super::{arrival_code, InsertOutcome, WaitingEvent};

/// Unix seconds as stored: `bigint` holds a `u64`'s bits.
pub fn seconds(value: u64) -> i64 {
    value as i64
}

/// `created_at` as stored and compared: clamped, so ordering stays that of the `u64`.
pub fn timestamp(value: u64) -> i64 {
    value.min(i64::MAX as u64) as i64
}

/// A transaction's tables.
pub struct PgRows<'t, 'c> {
    pub txn: &'t mut Transaction<'c>,
    pub reference_limits: ReferenceLimits,
    pub reference_changes: ReferenceChanges,
    /// What this transaction put in purgatory, served or dropped from purgatory, in order: the
    /// other instances are notified of it when it commits (`notify.rs`).
    pub notes: Vec<super::notify::Changed>,
}

impl PgRows<'_, '_> {
    pub fn put_waiting(&mut self, waiting: &WaitingEvent) -> Result<(), postgres::Error> {
        let id = waiting.event.id.to_bytes();
        self.txn.execute(
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
pub struct PgTombstones<'a, C: postgres::GenericClient>(pub &'a mut C);

impl<C: postgres::GenericClient> Tombstones for PgTombstones<'_, C> {
    type Error = postgres::Error;

    fn has_tombstone_id(&mut self, id: &Id, author: &Id) -> Result<bool, postgres::Error> {
        has_tombstone_id(self.0, id, author)
    }

    fn tombstone_until(&mut self, key: Coordinate<'_>) -> Result<Option<u64>, postgres::Error> {
        tombstone_until(self.0, key)
    }
}

fn has_tombstone_id(
    client: &mut impl postgres::GenericClient,
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
    client: &mut impl postgres::GenericClient,
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
        has_tombstone_id(self.txn, id, author)
    }

    fn tombstone_until(&mut self, key: Coordinate<'_>) -> Result<Option<u64>, postgres::Error> {
        tombstone_until(self.txn, key)
    }
}

impl Rows for PgRows<'_, '_> {
    fn load(&mut self, id: &Id) -> Result<Option<Event>, postgres::Error> {
        let row = self
            .txn
            .query_opt("SELECT json FROM events WHERE id = $1", &[&&id[..]])?;
        Ok(row.and_then(|row| decode(id, row.get::<_, &str>(0).as_bytes())))
    }

    fn is_served(&mut self, id: &Id) -> Result<bool, postgres::Error> {
        Ok(self
            .txn
            .query_opt("SELECT 1 FROM events WHERE id = $1", &[&&id[..]])?
            .is_some())
    }

    fn add_served(&mut self, event: &Event) -> Result<(), postgres::Error> {
        let id = event.id.to_bytes();
        let at = timestamp(event.created_at.as_secs());
        self.txn.execute(
            "INSERT INTO events (id, pubkey, kind, created_at, json) VALUES ($1, $2, $3, $4, $5)",
            &[
                &&id[..],
                &&event.pubkey.to_bytes()[..],
                &i32::from(event.kind.as_u16()),
                &at,
                &event.as_json(),
            ],
        )?;
        let keys = tag_keys(event);
        if !keys.is_empty() {
            let letters: Vec<i16> = keys.iter().map(|(l, _)| i16::from(*l)).collect();
            let values: Vec<&[u8]> = keys.iter().map(|(_, v)| *v).collect();
            self.txn.execute(
                "INSERT INTO event_tags (letter, value, created_at, id)
                 SELECT letter, value, $3, $4 FROM unnest($1::smallint[], $2::bytea[]) AS t (letter, value)",
                &[&letters, &values, &at, &&id[..]],
            )?;
        }
        Ok(())
    }

    fn remove_served_rows(&mut self, event: &Event) -> Result<(), postgres::Error> {
        // Its tag rows go with it (ON DELETE CASCADE).
        self.txn.execute(
            "DELETE FROM events WHERE id = $1",
            &[&&event.id.to_bytes()[..]],
        )?;
        Ok(())
    }

    fn coordinate(
        &mut self,
        (kind, author, d): Coordinate<'_>,
    ) -> Result<Option<Id>, postgres::Error> {
        let row = self.txn.query_opt(
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
        self.txn.execute(
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
        self.txn.execute(
            "DELETE FROM coordinates WHERE kind = $1 AND pubkey = $2 AND d = $3",
            &[&i32::from(kind), &&author[..], &d],
        )?;
        Ok(())
    }

    fn add_tombstone_id(&mut self, id: &Id, author: &Id) -> Result<(), postgres::Error> {
        self.txn.execute(
            "INSERT INTO tombstone_ids (id, author) VALUES ($1, $2) ON CONFLICT DO NOTHING",
            &[&&id[..], &&author[..]],
        )?;
        Ok(())
    }

    fn set_tombstone_until(
        &mut self,
        (kind, author, d): Coordinate<'_>,
        until: u64,
    ) -> Result<(), postgres::Error> {
        self.txn.execute(
            "INSERT INTO tombstone_coordinates (kind, author, d, until) VALUES ($1, $2, $3, $4)
             ON CONFLICT (kind, author, d) DO UPDATE SET until = $4",
            &[&i32::from(kind), &&author[..], &d, &seconds(until)],
        )?;
        Ok(())
    }

    fn forget_reference(&mut self, id: &Id) -> Result<bool, postgres::Error> {
        Ok(self
            .txn
            .execute("DELETE FROM referenced WHERE id = $1", &[&&id[..]])?
            > 0)
    }

    fn add_newest_reference(&mut self, id: &Id) -> Result<(), postgres::Error> {
        self.txn.execute(
            "INSERT INTO referenced (id, age)
             SELECT $1, coalesce(max(age) + 1, 0) FROM referenced",
            &[&&id[..]],
        )?;
        Ok(())
    }

    fn evict_references(&mut self, capacity: usize) -> Result<u64, postgres::Error> {
        let capacity = i64::try_from(capacity).unwrap_or(i64::MAX);
        self.txn.execute(
            "DELETE FROM referenced WHERE age IN (
                SELECT age FROM referenced ORDER BY age
                LIMIT greatest(0, (SELECT count(*) FROM referenced) - $1)
            )",
            &[&capacity],
        )
    }

    fn reference_entries(&mut self) -> Result<u64, postgres::Error> {
        let count: i64 = self
            .txn
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
            .txn
            .query_opt("SELECT json FROM waiting WHERE id = $1", &[&&id[..]])?;
        Ok(row.map(|row| row.get::<_, String>(0).into_bytes()))
    }

    fn remove_waiting(&mut self, id: &Id) -> Result<bool, postgres::Error> {
        Ok(self
            .txn
            .execute("DELETE FROM waiting WHERE id = $1", &[&&id[..]])?
            > 0)
    }
}
