//! Answering NIP-01 filters in SQL.
//!
//! A filter becomes one `WHERE` over `events` (ids, authors, kinds, since/until, and per tag
//! letter an `EXISTS` on `event_tags`), read newest first in pages by keyset. Each row is
//! re-checked against the whole filter and the visibility predicate (`../query.rs`'s
//! `admits`: long tag values are indexed truncated, and invisible events must not count
//! toward the limit), so the answer is exactly the redb store's.

use std::cmp::Reverse;
use std::collections::{BTreeSet, HashMap};

use nostr::prelude::{Event, Filter};
use postgres::types::ToSql;
use postgres::GenericClient;

use super::super::query::{admits, decode, order, Order, Visible};
use super::super::schema::{indexed_tag_value, letter_byte, Id};
use super::rows::timestamp;
use super::statements::Cached;

/// Rows read per round trip while scanning one filter.
const PAGE: usize = 256;

/// The newest `limit` events matching `filter`, as their order keys; the events themselves
/// go into `kept` if given. Reads at most `max_pages` pages (statements): `None` if the
/// answer needs more.
pub fn run_one(
    client: &mut Cached<'_, impl GenericClient>,
    filter: &Filter,
    limit: usize,
    visible: Visible<'_>,
    mut kept: Option<&mut HashMap<Id, Event>>,
    max_pages: usize,
) -> Result<Option<BTreeSet<Order>>, postgres::Error> {
    let since = timestamp(filter.since.map_or(0, |t| t.as_secs()));
    let until = timestamp(filter.until.map_or(u64::MAX, |t| t.as_secs()));
    let mut found = BTreeSet::new();
    if since > until {
        return Ok(Some(found));
    }
    let mut params: Vec<Box<dyn ToSql + Sync>> = vec![Box::new(since), Box::new(until)];
    let mut sql = String::from(
        "SELECT id, json, created_at FROM events e WHERE created_at BETWEEN $1 AND $2",
    );
    let mut bind = |sql: &mut String, clause: &str, value: Box<dyn ToSql + Sync>| {
        params.push(value);
        sql.push_str(&clause.replace('?', &format!("${}", params.len())));
    };
    if let Some(ids) = filter.ids.as_ref().filter(|ids| !ids.is_empty()) {
        let ids: Vec<Vec<u8>> = ids.iter().map(|id| id.to_bytes().to_vec()).collect();
        bind(&mut sql, " AND id = ANY(?)", Box::new(ids));
    }
    if let Some(authors) = filter.authors.as_ref().filter(|a| !a.is_empty()) {
        let authors: Vec<Vec<u8>> = authors.iter().map(|a| a.to_bytes().to_vec()).collect();
        bind(&mut sql, " AND pubkey = ANY(?)", Box::new(authors));
    }
    if let Some(kinds) = filter.kinds.as_ref().filter(|k| !k.is_empty()) {
        let kinds: Vec<i32> = kinds.iter().map(|k| i32::from(k.as_u16())).collect();
        bind(&mut sql, " AND kind = ANY(?)", Box::new(kinds));
    }
    for (letter, values) in &filter.generic_tags {
        let letter = i16::from(letter_byte(*letter));
        let values: Vec<Vec<u8>> = values
            .iter()
            .map(|v| indexed_tag_value(v).to_vec())
            .collect();
        params.push(Box::new(letter));
        params.push(Box::new(values));
        sql.push_str(&format!(
            " AND EXISTS (SELECT 1 FROM event_tags t WHERE t.id = e.id AND t.letter = ${} AND t.value = ANY(${}))",
            params.len() - 1,
            params.len()
        ));
    }
    // Keyset paging: after the last row read, in (created_at DESC, id ASC) order.
    let (at_param, id_param) = (params.len() + 1, params.len() + 2);
    let first_page = format!("{sql} ORDER BY created_at DESC, id ASC LIMIT {PAGE}");
    let next_page = format!(
        "{sql} AND (created_at < ${at_param} OR (created_at = ${at_param} AND id > ${id_param})) \
         ORDER BY created_at DESC, id ASC LIMIT {PAGE}"
    );
    let mut after: Option<(i64, Vec<u8>)> = None;
    for _ in 0..max_pages {
        let mut args: Vec<&(dyn ToSql + Sync)> = params.iter().map(|p| p.as_ref()).collect();
        let rows = match &after {
            None => client.query(first_page.as_str(), &args)?,
            Some((at, id)) => {
                args.push(at);
                args.push(id);
                client.query(next_page.as_str(), &args)?
            }
        };
        let complete = rows.len() < PAGE;
        for row in &rows {
            let id: &[u8] = row.get(0);
            let Ok(id) = Id::try_from(id) else { continue };
            let Some(event) = decode(&id, row.get::<_, &str>(1).as_bytes()) else {
                continue;
            };
            if admits(filter, visible, &event) {
                found.insert(order(&event));
                if let Some(kept) = kept.as_deref_mut() {
                    kept.insert(id, event);
                }
                if found.len() >= limit {
                    return Ok(Some(found));
                }
            }
        }
        match rows.last() {
            Some(last) if !complete => after = Some((last.get(2), last.get::<_, Vec<u8>>(0))),
            _ => return Ok(Some(found)),
        }
    }
    Ok(None)
}

/// The stored JSON of each of `ids` that is served, by id (one round trip).
pub fn json_by_id(
    client: &mut Cached<'_, impl GenericClient>,
    ids: &[Id],
) -> Result<HashMap<Id, String>, postgres::Error> {
    let keys: Vec<&[u8]> = ids.iter().map(|id| &id[..]).collect();
    let rows = client.query("SELECT id, json FROM events WHERE id = ANY($1)", &[&keys])?;
    Ok(rows
        .into_iter()
        .filter_map(|row| {
            let id = Id::try_from(row.get::<_, &[u8]>(0)).ok()?;
            Some((id, row.get::<_, String>(1)))
        })
        .collect())
}

/// `(created_at, id)` of an order key.
pub fn item((Reverse(created_at), id): Order) -> (u64, Id) {
    (created_at, id)
}
