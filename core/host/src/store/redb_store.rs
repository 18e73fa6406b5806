//! The store on redb: one file, `<data-dir>/graspd.redb` ([`FILE_NAME`]).

use std::ops::Bound;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use nostr::prelude::{Event, EventId, Filter};
use redb::{Database, ReadableDatabase, ReadableTable, ReadableTableMetadata, TableError};

use super::group_commit::{Commit, GroupCommit, GroupCommitStats};
use super::references::{self, ReferenceLimits};
use super::rules::{self, Rows};
use super::schema::*;
use super::PendingWrite;
use super::{
    arrival_code, decode_waiting, query, write, DiskUsage, InsertOutcome, StoreError, WaitingEvent,
    WaitingPage, DEFAULT_MAX_WRITES_PER_COMMIT,
};

/// The store's file name inside the data directory.
pub const FILE_NAME: &str = "graspd.redb";

/// redb's page cache, in MiB. Small next to redb's 1 GiB default: the server's working set
/// is the newest events and the indexes' upper levels, and the kernel's page cache keeps the
/// rest of the file close (a miss costs a `pread`, not a disk seek). Reading the purgatory
/// table at start-up fills it, so it counts in the memory a waiting event seems to cost.
pub const DEFAULT_CACHE_MIB: usize = 16;

/// The event store in one redb file. See the module documentation.
#[derive(Clone)]
pub struct RedbStore {
    db: Arc<Database>,
    path: Arc<PathBuf>,
    pub(super) reference_limits: ReferenceLimits,
    pub(super) reference_counters: Arc<references::ReferenceCounters>,
    pub(super) commits: Arc<GroupCommit<Job>>,
}

/// A write queued for a group commit (see [`group_commit`]).
type Job = Box<dyn for<'t> Fn(&mut write::Tables<'t>) -> Result<(), redb::Error> + Send>;

impl std::fmt::Debug for RedbStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedbStore")
            .field("path", &self.path)
            .finish()
    }
}

impl RedbStore {
    /// Opens (or creates) `<data_dir>/graspd.redb`, creating `data_dir` if needed.
    pub fn open_in(data_dir: &Path) -> Result<RedbStore, StoreError> {
        RedbStore::open_in_with_cache(data_dir, DEFAULT_CACHE_MIB)
    }

    /// [`RedbStore::open_in`] with a page cache of `cache_mib` MiB.
    pub fn open_in_with_cache(data_dir: &Path, cache_mib: usize) -> Result<RedbStore, StoreError> {
        std::fs::create_dir_all(data_dir).map_err(|e| StoreError::Io {
            path: data_dir.to_owned(),
            detail: format!("cannot create the data directory: {e}"),
        })?;
        RedbStore::open_with_cache(&data_dir.join(FILE_NAME), cache_mib)
    }

    /// Opens the store file at `path`, creating it if it does not exist or is empty.
    ///
    /// A file that is not a redb database, is damaged (every page checksum is verified on
    /// open), or lacks graspd's format marker gives [`StoreError::Unreadable`]; one from a
    /// newer graspd gives [`StoreError::NewerFormat`]. The file is never modified in those
    /// cases.
    pub fn open(path: &Path) -> Result<RedbStore, StoreError> {
        RedbStore::open_with_cache(path, DEFAULT_CACHE_MIB)
    }

    fn open_with_cache(path: &Path, cache_mib: usize) -> Result<RedbStore, StoreError> {
        let db = open_database(path, cache_mib.saturating_mul(1024 * 1024))?;
        let store = RedbStore::on_database(db, path)?;
        tracing::info!(path = %path.display(), "event store open");
        Ok(store)
    }

    fn on_database(db: Database, path: &Path) -> Result<RedbStore, StoreError> {
        let mut store = RedbStore {
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
    pub fn open_on(
        backend: impl redb::StorageBackend,
        label: &Path,
    ) -> Result<RedbStore, StoreError> {
        let db = Database::builder()
            .create_with_backend(backend)
            .map_err(|error| StoreError::Unreadable {
                path: label.to_owned(),
                detail: error.to_string(),
            })?;
        RedbStore::on_database(db, label)
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
    pub fn insert(&self, event: &Event) -> PendingWrite<InsertOutcome> {
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
    pub fn release_waiting(&self, id: &EventId) -> PendingWrite<Option<(Event, InsertOutcome)>> {
        let path = self.path.clone();
        let id = *id;
        self.write_grouped(move |tables| rules::release(tables, &id, &path))
    }

    /// Removes a served event (for example on an operator's request). Returns whether it was
    /// there. Kind 5 deletions go through [`Store::insert`] instead.
    pub fn remove(&self, id: &EventId) -> Result<bool, StoreError> {
        self.write(|tables| rules::remove_by_id(tables, id))
    }

    /// Puts (or replaces) an event in purgatory.
    pub fn put_waiting(&self, waiting: &WaitingEvent) -> PendingWrite<()> {
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
    pub fn remove_waiting(&self, id: &EventId) -> PendingWrite<bool> {
        let id = id.to_bytes();
        self.write_grouped(move |tables| tables.remove_waiting(&id))
    }

    /// Whether a stored kind 5 deletion covers `event`, so it must never be served. The
    /// start-up restore drops such waiting events: a deletion is stored before the engine
    /// removes its waiting targets, and a crash can fall between the two.
    pub fn is_deleted(&self, event: &Event) -> Result<bool, StoreError> {
        let result: Result<_, redb::Error> = (|| {
            let txn = self.db.begin_read()?;
            let ids = txn.open_table(TOMBSTONE_IDS)?;
            let coordinates = txn.open_table(TOMBSTONE_COORDINATES)?;
            rules::tombstoned(&mut write::ReadTombstones(ids, coordinates), event)
        })();
        result.map_err(|e| self.io(e))
    }

    /// Up to `max` purgatory entries with ids above `after`, in id order (see
    /// [`super::Store::waiting_page`]).
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
                page.events
                    .extend(decode_waiting(&self.path, &key, code, expires_at, json));
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

    /// [`Store::query`] over only the events `visible` lets through (what clients may be
    /// served now); the others do not count toward a filter's limit. Each filter reads its
    /// most selective index: `ids`, else one tag (the one with fewest values), else `authors`,
    /// else `kinds`, else time.
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
    /// purgatory), queued: writes running at the same time share one durable commit, and
    /// each is answered only after that commit.
    fn write_grouped<T: Send + 'static>(
        &self,
        body: impl Fn(&mut write::Tables<'_>) -> Result<T, redb::Error> + Send + 'static,
    ) -> PendingWrite<T> {
        let store = self.clone();
        let commit: Commit<Job> = Box::new(move |jobs| store.commit_jobs(jobs));
        let pending = self.commits.submit_returning(commit, |keep| -> Job {
            Box::new(move |tables| {
                keep(body(tables)?);
                Ok(())
            })
        });
        PendingWrite::new(pending, Arc::clone(&self.path))
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
