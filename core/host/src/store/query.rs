//! Answering NIP-01 filters from the indexes.
//!
//! Each filter is served from its most selective index: `ids` (point lookups), else one tag
//! letter (the one with the fewest values), else `authors`, else `kinds`, else time alone.
//! Every index key ends in `(created_at, id)`, so for each value the scan walks one key range
//! bounded by `since`/`until` newest first and stops after `limit` matches; the other fields
//! of the filter are checked on the decoded event. A filter's answer is the newest `limit` of
//! the union of those per-value answers, and a query's is the union of its filters'.
//!
//! A query first collects only the ids of its answer (each candidate is decoded to be matched,
//! then dropped), so its memory is the ids, whatever the events' sizes; the events are then
//! read by id, in bounded chunks when they are streamed to a client ([`load_json`]).

use std::cmp::Reverse;
use std::collections::BTreeSet;

use nostr::prelude::MatchEventOptions;
use nostr::prelude::{Event, Filter};
use redb::{ReadOnlyTable, ReadTransaction, ReadableTable, StorageError};

use super::schema::*;

/// Newest first, then lowest id: the order results are returned in.
pub type Order = (Reverse<u64>, Id);

/// Which stored events a query may return at all (the operator's deny lists); the others
/// are skipped before they count toward a filter's limit.
pub type Visible<'a> = &'a (dyn Fn(&Event) -> bool + Sync);

pub fn run(
    txn: &ReadTransaction,
    filters: &[Filter],
    cap: usize,
    visible: Visible<'_>,
) -> Result<Vec<Event>, redb::Error> {
    let events = txn.open_table(EVENTS)?;
    let mut found = Vec::new();
    for id in run_ids(txn, filters, cap, visible)? {
        found.extend(load(&events, &id)?);
    }
    Ok(found)
}

/// The ids of [`run`]'s answer, in its order.
pub fn run_ids(
    txn: &ReadTransaction,
    filters: &[Filter],
    cap: usize,
    visible: Visible<'_>,
) -> Result<Vec<Id>, redb::Error> {
    Ok(run_orders(txn, filters, cap, visible)?
        .into_iter()
        .map(|(_, id)| id)
        .collect())
}

/// [`run`]'s answer as `(created_at, id)` pairs, in its order: what NIP-77 reconciles.
pub fn run_items(
    txn: &ReadTransaction,
    filters: &[Filter],
    cap: usize,
    visible: Visible<'_>,
) -> Result<Vec<(u64, Id)>, redb::Error> {
    Ok(run_orders(txn, filters, cap, visible)?
        .into_iter()
        .map(|(Reverse(created_at), id)| (created_at, id))
        .collect())
}

fn run_orders(
    txn: &ReadTransaction,
    filters: &[Filter],
    cap: usize,
    visible: Visible<'_>,
) -> Result<BTreeSet<Order>, redb::Error> {
    let events = txn.open_table(EVENTS)?;
    union(filters, cap, |filter, limit| {
        run_one(txn, &events, filter, limit, visible)
    })
}

/// A query's answer: the union of each filter's newest `min(limit, cap)` (`run_one`), skipping
/// filters that can match nothing.
pub fn union<E>(
    filters: &[Filter],
    cap: usize,
    mut run_one: impl FnMut(&Filter, usize) -> Result<BTreeSet<Order>, E>,
) -> Result<BTreeSet<Order>, E> {
    let mut found: BTreeSet<Order> = BTreeSet::new();
    for filter in filters {
        let limit = filter.limit.unwrap_or(cap).min(cap);
        if limit == 0 || matches_nothing(filter) {
            continue;
        }
        found.extend(run_one(filter, limit)?);
    }
    Ok(found)
}

/// The stored JSON of the events `ids` names, in order, skipping absent ones; stops after
/// the event that brings the total to `max_bytes` or more. Returns the texts and how many
/// of `ids` were consumed.
pub fn load_json(
    txn: &ReadTransaction,
    ids: &[Id],
    max_bytes: usize,
) -> Result<(Vec<String>, usize), redb::Error> {
    let events = txn.open_table(EVENTS)?;
    take_json(ids, max_bytes, |_, id| {
        let Some(json) = events.get(id)? else {
            return Ok(None);
        };
        // Written by `Event::as_json`, and decoded when the query matched it.
        match String::from_utf8(json.value().to_vec()) {
            Ok(text) => Ok(Some(text)),
            Err(_) => {
                tracing::error!(id = %crate::hex::encode(id), "stored event is not UTF-8; skipped");
                Ok(None)
            }
        }
    })
}

/// [`load_json`] over any backend: `get(n, id)` reads the `n`th id's text (called in order).
pub fn take_json<E>(
    ids: &[Id],
    max_bytes: usize,
    mut get: impl FnMut(usize, &Id) -> Result<Option<String>, E>,
) -> Result<(Vec<String>, usize), E> {
    let mut texts = Vec::new();
    let mut bytes = 0;
    for (n, id) in ids.iter().enumerate() {
        if bytes >= max_bytes {
            return Ok((texts, n));
        }
        if let Some(text) = get(n, id)? {
            bytes += text.len();
            texts.push(text);
        }
    }
    Ok((texts, ids.len()))
}

pub fn order(event: &Event) -> Order {
    (Reverse(event.created_at.as_secs()), event.id.to_bytes())
}

/// The newest `limit` events matching one filter, as their order keys.
fn run_one(
    txn: &ReadTransaction,
    events: &ReadOnlyTable<Id, &'static [u8]>,
    filter: &Filter,
    limit: usize,
    visible: Visible<'_>,
) -> Result<BTreeSet<Order>, redb::Error> {
    let since = filter.since.map_or(0, |t| t.as_secs());
    let until = filter.until.map_or(u64::MAX, |t| t.as_secs());
    if since > until {
        return Ok(BTreeSet::new());
    }
    let mut scan = Scan {
        events,
        filter,
        visible,
        limit,
        found: BTreeSet::new(),
    };
    const LOW: Id = [0; 32];
    const HIGH: Id = [0xff; 32];

    if let Some(ids) = filter.ids.as_ref().filter(|ids| !ids.is_empty()) {
        for id in ids {
            scan.consider(Ok(id.to_bytes()))?;
        }
    } else if let Some((letter, values)) = filter
        .generic_tags
        .iter()
        .min_by_key(|(_, values)| values.len())
    {
        let table = txn.open_table(BY_TAG)?;
        let letter = letter_byte(*letter);
        for value in values {
            let value = indexed_tag_value(value);
            let range = table.range((letter, value, since, LOW)..=(letter, value, until, HIGH))?;
            scan.take_newest(range.rev().map(|entry| entry.map(|(key, _)| key.value().3)))?;
        }
    } else if let Some(authors) = filter.authors.as_ref().filter(|a| !a.is_empty()) {
        let table = txn.open_table(BY_AUTHOR)?;
        for author in authors {
            let author = author.to_bytes();
            let range = table.range((author, since, LOW)..=(author, until, HIGH))?;
            scan.take_newest(range.rev().map(|entry| entry.map(|(key, _)| key.value().2)))?;
        }
    } else if let Some(kinds) = filter.kinds.as_ref().filter(|k| !k.is_empty()) {
        let table = txn.open_table(BY_KIND)?;
        for kind in kinds {
            let kind = kind.as_u16();
            let range = table.range((kind, since, LOW)..=(kind, until, HIGH))?;
            scan.take_newest(range.rev().map(|entry| entry.map(|(key, _)| key.value().2)))?;
        }
    } else {
        let table = txn.open_table(BY_TIME)?;
        let range = table.range((since, LOW)..=(until, HIGH))?;
        scan.take_newest(range.rev().map(|entry| entry.map(|(key, _)| key.value().1)))?;
    }
    Ok(scan.found)
}

/// Collects the newest `limit` matching events' keys from candidate ids.
struct Scan<'a> {
    events: &'a ReadOnlyTable<Id, &'static [u8]>,
    filter: &'a Filter,
    visible: Visible<'a>,
    limit: usize,
    /// Never more than `limit`: the oldest is dropped as a newer one comes.
    found: BTreeSet<Order>,
}

impl Scan<'_> {
    /// Takes up to `limit` matches from candidates that come newest first.
    fn take_newest(
        &mut self,
        candidates: impl Iterator<Item = Result<Id, StorageError>>,
    ) -> Result<(), redb::Error> {
        let mut taken = 0;
        for id in candidates {
            if self.consider(id)? {
                taken += 1;
                if taken >= self.limit {
                    break;
                }
            }
        }
        Ok(())
    }

    /// Keeps the candidate if it matches; returns whether it did.
    fn consider(&mut self, id: Result<Id, StorageError>) -> Result<bool, redb::Error> {
        let Some(event) = load(self.events, &id?)? else {
            return Ok(false);
        };
        let matches = admits(self.filter, self.visible, &event);
        if matches {
            self.found.insert(order(&event));
            if self.found.len() > self.limit {
                self.found.pop_last();
            }
        }
        Ok(matches)
    }
}

/// Reads and decodes one served event. A record that does not decode is logged and treated
/// as absent rather than failing every query that touches it.
pub fn load(
    events: &impl ReadableTable<Id, &'static [u8]>,
    id: &Id,
) -> Result<Option<Event>, redb::Error> {
    let Some(json) = events.get(id)? else {
        return Ok(None);
    };
    Ok(decode(id, json.value()))
}

/// Decodes a served event's stored JSON. A record that does not decode is logged and treated
/// as absent rather than failing every query that touches it.
pub fn decode(id: &Id, json: &[u8]) -> Option<Event> {
    match Event::from_json(json) {
        Ok(event) => Some(event),
        Err(error) => {
            tracing::error!(id = %crate::hex::encode(id), %error, "stored event does not decode; skipped");
            None
        }
    }
}

/// Whether a candidate a filter's index scan found belongs in the answer: it matches the
/// whole filter (the index narrowed on one field, and tag values are indexed truncated) and
/// clients may see it.
pub fn admits(filter: &Filter, visible: Visible<'_>, event: &Event) -> bool {
    // NIP-50 search is not offered; it is ignored rather than scanned for.
    filter.match_event(event, MatchEventOptions::new().nip50(false)) && visible(event)
}
