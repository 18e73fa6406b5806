//! The crash-safe event store: served events with NIP-01 filter indexes, and purgatory.
//!
//! One redb file, `<data-dir>/graspd.redb` ([`FILE_NAME`]). Every write method commits a
//! durable redb transaction before it returns, so the caller may answer `OK` as soon as it gets
//! `Ok(..)`: nothing acknowledged is lost on `kill -9` or power loss.
//!
//! Every method blocks on disk IO (a commit is an fsync): call them from the runtime's
//! blocking pool, not from an async task. [`Store`] is cheap to clone (an `Arc`) and `Send +
//! Sync`; redb serialises writers and lets readers run alongside them.
//!
//! ```text
//! served:    insert / insert_many -> InsertOutcome      query(filters, cap) -> events
//!            query_ids(filters, cap) + load_json(ids, max_bytes): the same, streamed
//!            query_items(filters, cap): the same as (created_at, id), for NIP-77
//! "tagged by": is_referenced(id): named by an accepted issue, patch, PR or comment, not served
//!            yet (kept by every insert; bounded, oldest forgotten first: references.rs)
//! purgatory: put_waiting / remove_waiting / waiting_all (start-up restore)
//!            release_waiting(id) = move it from purgatory to served, in one transaction
//! ```
//!
//! Start-up restore: `query(&[Filter::new().kinds([30617, 30618])], usize::MAX)` gives the
//! served announcements and states (`engine.restore_accepted`), and `waiting_all()` the
//! purgatory with each entry's unix deadline (`engine.restore_waiting` with the remaining
//! life).

mod error;
mod group_commit;
mod query;
mod references;
mod schema;
mod write;

#[cfg(test)]
mod tests;

use std::ops::Bound;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use nostr::prelude::{Event, EventId, Filter};
use redb::{Database, ReadableDatabase, ReadableTable, ReadableTableMetadata, TableError};

pub use error::StoreError;
pub use group_commit::GroupCommitStats;
pub use query::Visible;
pub use references::{
    ReferenceLimits, ReferenceStats, DEFAULT_MAX_EVENT_REFERENCES, DEFAULT_MAX_REFERENCED_IDS,
};
pub use schema::FORMAT_VERSION;

use group_commit::GroupCommit;
use schema::*;

use crate::hex::encode as hex;

/// The store's file name inside the data directory.
pub const FILE_NAME: &str = "graspd.redb";

/// redb's page cache, in MiB. Small next to redb's 1 GiB default: the server's working set
/// is the newest events and the indexes' upper levels, and the kernel's page cache keeps the
/// rest of the file close (a miss costs a `pread`, not a disk seek). Reading the purgatory
/// table at start-up fills it, so it counts in the memory a waiting event seems to cost.
pub const DEFAULT_CACHE_MIB: usize = 16;

/// How a waiting event reached us; the engine times its first fetch differently for each.
pub use graspd_core::Arrival;

// Codes on disk; part of the format. Free functions so `Arrival` can become a re-export of
// the engine's identical type without touching the encoding.
fn arrival_code(arrival: Arrival) -> u8 {
    match arrival {
        Arrival::Published => 1,
        Arrival::Synced => 2,
    }
}

fn arrival_from_code(code: u8) -> Option<Arrival> {
    match code {
        1 => Some(Arrival::Published),
        2 => Some(Arrival::Synced),
        _ => None,
    }
}

/// An event in purgatory as stored: acknowledged, not served, with its wall-clock deadline.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct WaitingEvent {
    pub event: Event,
    pub arrival: Arrival,
    /// Unix seconds after which it is discarded. At start-up the driver hands the engine
    /// `expires_at - now_unix` (zero if past) as the remaining life.
    pub expires_at: u64,
}

/// A page of the purgatory table ([`Store::waiting_page`]).
#[derive(Debug, Default)]
pub struct WaitingPage {
    pub events: Vec<WaitingEvent>,
    /// Where the next page starts (exclusive); `None` once the table is read to its end.
    pub resume_after: Option<EventId>,
}

/// What storing an event for serving did.
#[derive(Clone, PartialEq, Eq, Debug)]
pub enum InsertOutcome {
    /// Stored and served from now on. `removed` lists served events this one took away: the
    /// older version of a replaceable/addressable event, or the targets of a kind 5 deletion.
    Stored { removed: Vec<EventId> },
    /// Already stored; nothing changed.
    Duplicate,
    /// A preferred version of this replaceable/addressable event is already served (newer
    /// `created_at`, or the same `created_at` and a lower id); this one was not stored.
    Superseded { by: EventId },
    /// Its author deleted it (kind 5) earlier; it is not stored again.
    Deleted,
}

/// How much space the store uses.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct DiskUsage {
    /// Size of the file.
    pub file_bytes: u64,
    /// Pages in use.
    pub allocated_bytes: u64,
    /// Keys and values themselves.
    pub stored_bytes: u64,
    /// Unused space inside allocated pages.
    pub fragmented_bytes: u64,
}

/// The event store. See the module documentation.
#[derive(Clone)]
pub struct Store {
    db: Arc<Database>,
    path: Arc<PathBuf>,
    reference_limits: ReferenceLimits,
    reference_counters: Arc<references::ReferenceCounters>,
    commits: Arc<GroupCommit<Job>>,
}

/// A write queued for a group commit (see [`group_commit`]).
type Job = Box<dyn for<'t> Fn(&mut write::Tables<'t>) -> Result<(), redb::Error> + Send>;

/// Writes sharing one commit at most, by default: bounds how long a leader works for others.
pub const DEFAULT_MAX_WRITES_PER_COMMIT: usize = 256;

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store").field("path", &self.path).finish()
    }
}

impl Store {
    /// Opens (or creates) `<data_dir>/graspd.redb`, creating `data_dir` if needed.
    pub fn open_in(data_dir: &Path) -> Result<Store, StoreError> {
        Store::open_in_with_cache(data_dir, DEFAULT_CACHE_MIB)
    }

    /// [`Store::open_in`] with a page cache of `cache_mib` MiB.
    pub fn open_in_with_cache(data_dir: &Path, cache_mib: usize) -> Result<Store, StoreError> {
        std::fs::create_dir_all(data_dir).map_err(|e| StoreError::Io {
            path: data_dir.to_owned(),
            detail: format!("cannot create the data directory: {e}"),
        })?;
        Store::open_with_cache(&data_dir.join(FILE_NAME), cache_mib)
    }

    /// Opens the store file at `path`, creating it if it does not exist or is empty.
    ///
    /// A file that is not a redb database, is damaged (every page checksum is verified on
    /// open), or lacks graspd's format marker gives [`StoreError::Unreadable`]; one from a
    /// newer graspd gives [`StoreError::NewerFormat`]. The file is never modified in those
    /// cases.
    pub fn open(path: &Path) -> Result<Store, StoreError> {
        Store::open_with_cache(path, DEFAULT_CACHE_MIB)
    }

    fn open_with_cache(path: &Path, cache_mib: usize) -> Result<Store, StoreError> {
        let db = open_database(path, cache_mib.saturating_mul(1024 * 1024))?;
        let store = Store::on_database(db, path)?;
        tracing::info!(path = %path.display(), "event store open");
        Ok(store)
    }

    fn on_database(db: Database, path: &Path) -> Result<Store, StoreError> {
        let mut store = Store {
            db: Arc::new(db),
            path: Arc::new(path.to_owned()),
            reference_limits: ReferenceLimits::default(),
            reference_counters: Default::default(),
            commits: Arc::new(GroupCommit::new(DEFAULT_MAX_WRITES_PER_COMMIT)),
        };
        store.check_format()?;
        store.create_tables()?;
        let referenced = store.count(REFERENCED)?;
        store.reference_counters =
            Arc::new(references::ReferenceCounters::starting_with(referenced));
        Ok(store)
    }

    /// Opens (or creates) the store on a redb storage backend instead of a file: the
    /// simulator's disk, which loses unsynced writes when the simulated server crashes.
    /// `label` stands for the path in logs and errors.
    pub fn open_on(backend: impl redb::StorageBackend, label: &Path) -> Result<Store, StoreError> {
        let db = Database::builder()
            .create_with_backend(backend)
            .map_err(|error| StoreError::Unreadable {
                path: label.to_owned(),
                detail: error.to_string(),
            })?;
        Store::on_database(db, label)
    }

    /// The store with other bounds for the index of referenced ids (defaults:
    /// [`ReferenceLimits::default`]). A smaller capacity than the index holds takes effect at
    /// the next write that touches it.
    pub fn with_reference_limits(mut self, limits: ReferenceLimits) -> Store {
        self.reference_limits = limits;
        self
    }

    /// The store with another bound on writes sharing one commit (1: each its own). Call it
    /// before the first write.
    pub fn with_max_writes_per_commit(mut self, max: usize) -> Store {
        self.commits = Arc::new(GroupCommit::new(max));
        self
    }

    pub fn reference_limits(&self) -> ReferenceLimits {
        self.reference_limits
    }

    /// The index of referenced ids: its size and evictions, for metrics.
    pub fn reference_stats(&self) -> ReferenceStats {
        self.reference_counters.stats()
    }

    /// Whether an accepted issue, patch, PR or comment names `id` and it is not served yet:
    /// such an event is accepted when it arrives (GRASP-01 "tagged by").
    pub fn is_referenced(&self, id: &EventId) -> Result<bool, StoreError> {
        let result: Result<_, redb::Error> = (|| {
            let txn = self.db.begin_read()?;
            references::is_referenced(&txn, id)
        })();
        result.map_err(|e| self.io(e))
    }

    /// The store file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Stores `event` for serving, applying NIP-01 replacement and NIP-09 deletion. The
    /// caller has verified its signature and decided it may be served.
    pub fn insert(&self, event: &Event) -> Result<InsertOutcome, StoreError> {
        let event = event.clone();
        self.write_grouped(move |tables| tables.insert(&event))
    }

    /// Stores many events in one transaction (one fsync): for bulk loads and syncs.
    /// Outcomes are in input order.
    pub fn insert_many(&self, events: &[Event]) -> Result<Vec<InsertOutcome>, StoreError> {
        self.write(|tables| events.iter().map(|e| tables.insert(e)).collect())
    }

    /// Moves an event from purgatory to the served events, atomically (after a crash either
    /// both happened or neither did), and returns it with how it was stored; `None` when
    /// purgatory does not hold it (or its entry cannot be decoded: logged, and left in place
    /// for the operator).
    pub fn release_waiting(
        &self,
        id: &EventId,
    ) -> Result<Option<(Event, InsertOutcome)>, StoreError> {
        let path = self.path.clone();
        let id = *id;
        self.write_grouped(move |tables| {
            let json = match tables.waiting.get(id.to_bytes())? {
                Some(entry) => entry.value().2.to_vec(),
                None => return Ok(None),
            };
            let event = match Event::from_json(&json) {
                Ok(event) => event,
                Err(error) => {
                    tracing::error!(path = %path.display(), %id, %error, "a released event's purgatory entry cannot be decoded");
                    return Ok(None);
                }
            };
            tables.waiting.remove(id.to_bytes())?;
            let outcome = tables.insert(&event)?;
            Ok(Some((event, outcome)))
        })
    }

    /// Removes a served event (for example on an operator's request). Returns whether it was
    /// there. Kind 5 deletions go through [`Store::insert`] instead.
    pub fn remove(&self, id: &EventId) -> Result<bool, StoreError> {
        self.write(|tables| match tables.load(&id.to_bytes())? {
            Some(event) => {
                tables.remove_served(&event)?;
                Ok(true)
            }
            None => Ok(false),
        })
    }

    /// Puts (or replaces) an event in purgatory.
    pub fn put_waiting(&self, waiting: &WaitingEvent) -> Result<(), StoreError> {
        let json = waiting.event.as_json();
        let (id, arrival, expires_at) = (
            waiting.event.id.to_bytes(),
            arrival_code(waiting.arrival),
            waiting.expires_at,
        );
        self.write_grouped(move |tables| {
            tables
                .waiting
                .insert(id, (arrival, expires_at, json.as_bytes()))?;
            Ok(())
        })
    }

    /// Drops an event from purgatory (expired, deleted, rejected). Returns whether it was there.
    pub fn remove_waiting(&self, id: &EventId) -> Result<bool, StoreError> {
        let id = id.to_bytes();
        self.write_grouped(move |tables| Ok(tables.waiting.remove(id)?.is_some()))
    }

    /// Whether a stored kind 5 deletion covers `event`, so it must never be served. The
    /// start-up restore drops such waiting events: a deletion is stored before the engine
    /// removes its waiting targets, and a crash can fall between the two.
    pub fn is_deleted(&self, event: &Event) -> Result<bool, StoreError> {
        let result: Result<_, redb::Error> = (|| {
            let txn = self.db.begin_read()?;
            let ids = txn.open_table(TOMBSTONE_IDS)?;
            let coordinates = txn.open_table(TOMBSTONE_COORDINATES)?;
            write::tombstoned(&ids, &coordinates, event)
        })();
        result.map_err(|e| self.io(e))
    }

    /// Everything in purgatory, ordered by event id (see [`Store::waiting_page`]).
    pub fn waiting_all(&self) -> Result<Vec<WaitingEvent>, StoreError> {
        let mut all = Vec::new();
        let mut after = None;
        loop {
            let page = self.waiting_page(after.as_ref(), 1024)?;
            all.extend(page.events);
            match page.resume_after {
                Some(id) => after = Some(id),
                None => return Ok(all),
            }
        }
    }

    /// Up to `max` purgatory entries with ids above `after` (from the first without it), in
    /// id order: the start-up restore reads the table a page at a time, so it never holds
    /// every waiting event's JSON at once. Entries that cannot be decoded are logged and
    /// skipped (they stay in the file).
    pub fn waiting_page(
        &self,
        after: Option<&EventId>,
        max: usize,
    ) -> Result<WaitingPage, StoreError> {
        let result: Result<_, redb::Error> = (|| {
            let txn = self.db.begin_read()?;
            let table = txn.open_table(WAITING)?;
            let start = after.map(|id| id.to_bytes());
            let range = match &start {
                Some(key) => table.range::<&[u8; 32]>((Bound::Excluded(key), Bound::Unbounded))?,
                None => table.range::<&[u8; 32]>(..)?,
            };
            let mut page = WaitingPage::default();
            for (read, entry) in range.enumerate() {
                if read == max {
                    return Ok(page);
                }
                let (key, value) = entry?;
                let key = key.value();
                page.resume_after = Some(EventId::from_byte_array(key));
                let (code, expires_at, json) = value.value();
                let event = Event::from_json(json);
                match (event, arrival_from_code(code)) {
                    (Ok(event), Some(arrival)) => page.events.push(WaitingEvent {
                        event,
                        arrival,
                        expires_at,
                    }),
                    (event, _) => tracing::error!(
                        path = %self.path.display(),
                        id = %hex(&key),
                        error = ?event.err(),
                        arrival_code = code,
                        "skipping an undecodable purgatory entry"
                    ),
                }
            }
            // The table ended within this page.
            page.resume_after = None;
            Ok(page)
        })();
        result.map_err(|e| self.io(e))
    }

    /// A served event by id.
    pub fn get(&self, id: &EventId) -> Result<Option<Event>, StoreError> {
        let result: Result<_, redb::Error> = (|| {
            let txn = self.db.begin_read()?;
            let events = txn.open_table(EVENTS)?;
            query::load(&events, &id.to_bytes())
        })();
        result.map_err(|e| self.io(e))
    }

    /// Served events matching any of `filters`, newest first (ties: lower id first), without
    /// duplicates. Each filter returns at most `min(filter.limit, cap)` events (`cap` when it
    /// has no limit). NIP-50 `search` is ignored. Each filter reads its most selective index:
    /// `ids`, else one tag (the one with fewest values), else `authors`, else `kinds`, else time.
    pub fn query(&self, filters: &[Filter], cap: usize) -> Result<Vec<Event>, StoreError> {
        self.query_visible(filters, cap, &|_| true)
    }

    /// [`Store::query`] over only the events `visible` lets through (what clients may be
    /// served now); the others do not count toward a filter's limit.
    pub fn query_visible(
        &self,
        filters: &[Filter],
        cap: usize,
        visible: query::Visible<'_>,
    ) -> Result<Vec<Event>, StoreError> {
        let result: Result<_, redb::Error> = (|| {
            let txn = self.db.begin_read()?;
            query::run(&txn, filters, cap, visible)
        })();
        result.map_err(|e| self.io(e))
    }

    /// The ids of what [`Store::query`] would return, in the same order, without holding the
    /// events: for streaming large answers with [`Store::load_json`].
    pub fn query_ids(&self, filters: &[Filter], cap: usize) -> Result<Vec<EventId>, StoreError> {
        self.query_ids_visible(filters, cap, &|_| true)
    }

    /// [`Store::query_ids`] over only the events `visible` lets through.
    pub fn query_ids_visible(
        &self,
        filters: &[Filter],
        cap: usize,
        visible: query::Visible<'_>,
    ) -> Result<Vec<EventId>, StoreError> {
        let result: Result<_, redb::Error> = (|| {
            let txn = self.db.begin_read()?;
            query::run_ids(&txn, filters, cap, visible)
        })();
        let ids = result.map_err(|e| self.io(e))?;
        Ok(ids.into_iter().map(EventId::from_byte_array).collect())
    }

    /// `(created_at, id)` of what [`Store::query_visible`] would return, in the same order:
    /// the items of a NIP-77 reconciliation. Waiting events are never among them.
    pub fn query_items(
        &self,
        filters: &[Filter],
        cap: usize,
        visible: query::Visible<'_>,
    ) -> Result<Vec<(u64, EventId)>, StoreError> {
        let result: Result<_, redb::Error> = (|| {
            let txn = self.db.begin_read()?;
            query::run_items(&txn, filters, cap, visible)
        })();
        let items = result.map_err(|e| self.io(e))?;
        Ok(items
            .into_iter()
            .map(|(created_at, id)| (created_at, EventId::from_byte_array(id)))
            .collect())
    }

    /// The stored JSON text of served events, in the order of `ids` (absent ones skipped),
    /// stopping after the event that brings the total to `max_bytes` or more (so at least
    /// one). Returns the texts and how many of `ids` were consumed.
    pub fn load_json(
        &self,
        ids: &[EventId],
        max_bytes: usize,
    ) -> Result<(Vec<String>, usize), StoreError> {
        let ids: Vec<Id> = ids.iter().map(|id| id.to_bytes()).collect();
        let result: Result<_, redb::Error> = (|| {
            let txn = self.db.begin_read()?;
            query::load_json(&txn, &ids, max_bytes)
        })();
        result.map_err(|e| self.io(e))
    }

    /// How many events are served.
    pub fn served_count(&self) -> Result<u64, StoreError> {
        self.count(EVENTS)
    }

    /// How many events wait in purgatory.
    pub fn waiting_count(&self) -> Result<u64, StoreError> {
        self.count(WAITING)
    }

    /// Space use, for metrics and the bench.
    pub fn disk_usage(&self) -> Result<DiskUsage, StoreError> {
        let result: Result<_, redb::Error> = (|| {
            let txn = self.db.begin_write()?;
            let stats = txn.stats()?;
            txn.abort()?;
            Ok(stats)
        })();
        let stats = result.map_err(|e| self.io(e))?;
        let file_bytes = std::fs::metadata(self.path.as_ref())
            .map(|m| m.len())
            .unwrap_or(0);
        Ok(DiskUsage {
            file_bytes,
            allocated_bytes: stats.allocated_pages() * stats.page_size() as u64,
            stored_bytes: stats.stored_bytes(),
            fragmented_bytes: stats.fragmented_bytes(),
        })
    }

    fn count<K: redb::Key + 'static, V: redb::Value + 'static>(
        &self,
        table: redb::TableDefinition<K, V>,
    ) -> Result<u64, StoreError> {
        let result: Result<_, redb::Error> = (|| {
            let txn = self.db.begin_read()?;
            Ok(txn.open_table(table)?.len()?)
        })();
        result.map_err(|e| self.io(e))
    }

    /// Runs `body` in one write transaction and commits it durably; on error nothing is
    /// written.
    fn write<T>(
        &self,
        body: impl FnOnce(&mut write::Tables<'_>) -> Result<T, redb::Error>,
    ) -> Result<T, StoreError> {
        let result: Result<_, redb::Error> = (|| {
            let txn = self.db.begin_write()?;
            let (out, reference_changes) = {
                let mut tables = write::Tables::open(&txn, self.reference_limits)?;
                let out = body(&mut tables)?;
                (out, std::mem::take(&mut tables.reference_changes))
            };
            txn.commit()?;
            Ok((out, reference_changes))
        })();
        let (out, reference_changes) = result.map_err(|e| self.io(e))?;
        self.reference_counters
            .apply(reference_changes, &self.reference_limits, &self.path);
        Ok(out)
    }

    /// Like [`Store::write`] for the hot writes (events served, put in or taken out of
    /// purgatory): writes running at the same time share one durable commit, and each
    /// returns only after that commit.
    fn write_grouped<T: Send + 'static>(
        &self,
        body: impl Fn(&mut write::Tables<'_>) -> Result<T, redb::Error> + Send + 'static,
    ) -> Result<T, StoreError> {
        let slot = Arc::new(Mutex::new(None));
        let out = Arc::clone(&slot);
        let job: Job = Box::new(move |tables| {
            let value = body(tables)?;
            *out.lock().unwrap_or_else(|e| e.into_inner()) = Some(value);
            Ok(())
        });
        self.commits
            .write(&|jobs| self.commit_jobs(jobs), job)
            .map_err(|detail| self.io_detail(detail))?;
        let value = slot.lock().unwrap_or_else(|e| e.into_inner()).take();
        value.ok_or_else(|| self.io_detail("a committed write left no result".into()))
    }

    /// One transaction running `jobs` in order, committed durably.
    fn commit_jobs(&self, jobs: &[&Job]) -> Result<(), String> {
        let result: Result<_, redb::Error> = (|| {
            let txn = self.db.begin_write()?;
            let reference_changes = {
                let mut tables = write::Tables::open(&txn, self.reference_limits)?;
                for job in jobs {
                    job(&mut tables)?;
                }
                std::mem::take(&mut tables.reference_changes)
            };
            txn.commit()?;
            Ok(reference_changes)
        })();
        let reference_changes = result.map_err(|e| e.to_string())?;
        self.reference_counters
            .apply(reference_changes, &self.reference_limits, &self.path);
        Ok(())
    }

    /// Writes sharing commits so far.
    pub fn group_commit_stats(&self) -> GroupCommitStats {
        self.commits.stats()
    }

    fn io_detail(&self, detail: String) -> StoreError {
        tracing::error!(path = %self.path.display(), error = %detail, "event store failure");
        StoreError::Io {
            path: self.path.as_ref().clone(),
            detail,
        }
    }

    fn io(&self, e: redb::Error) -> StoreError {
        tracing::error!(path = %self.path.display(), error = %e, "event store failure");
        StoreError::Io {
            path: self.path.as_ref().clone(),
            detail: e.to_string(),
        }
    }

    /// Refuses files without graspd's format marker (unless brand new) and newer formats,
    /// before anything is written to them.
    fn check_format(&self) -> Result<(), StoreError> {
        let unreadable = |detail: String| StoreError::Unreadable {
            path: self.path.as_ref().clone(),
            detail,
        };
        let txn = self
            .db
            .begin_read()
            .map_err(|e| unreadable(e.to_string()))?;
        match txn.open_table(META) {
            Ok(meta) => {
                let found = meta
                    .get(META_FORMAT_KEY)
                    .map_err(|e| unreadable(e.to_string()))?
                    .map(|v| v.value());
                match found {
                    Some(found) if found > FORMAT_VERSION => Err(StoreError::NewerFormat {
                        path: self.path.as_ref().clone(),
                        found,
                        supported: FORMAT_VERSION,
                    }),
                    Some(_) => Ok(()),
                    None => Err(unreadable("its format marker is missing".into())),
                }
            }
            Err(TableError::TableDoesNotExist(_)) => {
                let has_tables = txn
                    .list_tables()
                    .map_err(|e| unreadable(e.to_string()))?
                    .next()
                    .is_some();
                if has_tables {
                    Err(unreadable(
                        "it is a redb database but not a graspd event store".into(),
                    ))
                } else {
                    Ok(())
                }
            }
            Err(e) => Err(unreadable(e.to_string())),
        }
    }

    /// Creates missing tables and writes the format marker of a new store.
    fn create_tables(&self) -> Result<(), StoreError> {
        self.write(|tables| {
            if tables.meta.get(META_FORMAT_KEY)?.is_none() {
                tables.meta.insert(META_FORMAT_KEY, FORMAT_VERSION)?;
            }
            Ok(())
        })
    }
}

/// Opens the redb file without ever re-initialising a non-empty one. redb may panic on a file
/// damaged outside it; that is turned into [`StoreError::Unreadable`] as well.
fn open_database(path: &Path, cache_bytes: usize) -> Result<Database, StoreError> {
    let exists_non_empty = std::fs::metadata(path)
        .map(|m| m.len() > 0)
        .unwrap_or(false);
    let mut builder = Database::builder();
    builder
        .set_cache_size(cache_bytes)
        .set_check_integrity_on_open(true);
    let attempt = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        if exists_non_empty {
            builder.open(path)
        } else {
            builder.create(path)
        }
    }));
    let unreadable = |detail: String| StoreError::Unreadable {
        path: path.to_owned(),
        detail,
    };
    match attempt {
        Ok(Ok(db)) => Ok(db),
        Ok(Err(redb::DatabaseError::DatabaseAlreadyOpen)) => Err(StoreError::InUse {
            path: path.to_owned(),
        }),
        Ok(Err(redb::DatabaseError::Storage(redb::StorageError::Io(e))))
            if !exists_non_empty || e.kind() != std::io::ErrorKind::InvalidData =>
        {
            Err(StoreError::Io {
                path: path.to_owned(),
                detail: format!("cannot open the file: {e}"),
            })
        }
        Ok(Err(e)) => Err(unreadable(e.to_string())),
        Err(_) => Err(unreadable(
            "the database library failed while reading it (the file is probably damaged)".into(),
        )),
    }
}
