//! The crash-safe event store: served events with NIP-01 filter indexes, and purgatory.
//!
//! Two backends behind one [`Store`]: one redb file, `<data-dir>/graspd.redb`
//! ([`redb_store`], the default), or a PostgreSQL database (`--database-url`, [`pg`]). Every
//! write method commits a durable transaction before it returns, so the caller may answer
//! `OK` as soon as it gets `Ok(..)`: nothing acknowledged is lost on `kill -9` or power loss.
//! What a write does (replacement, deletion, the referenced-id index, releasing a waiting
//! event) is written once, over each backend's row operations (`rules.rs`); how filters are
//! combined is written once too (`query.rs`).
//!
//! Every method blocks on IO (a commit is an fsync or a database round trip): call them
//! from the runtime's blocking pool, not from an async task. [`Store`] is cheap to clone
//! (`Arc`s) and `Send + Sync`; writers are serialised, readers run alongside them.
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
//!
//! Why an enum and not a trait object: the call sites (driver, relay, sim, bench) keep one
//! concrete, cloneable `Store` type, with no generics or `dyn` spreading through them, and a
//! third backend is one more arm.

mod error;
mod group_commit;
pub mod pg;
mod query;
mod redb_store;
mod references;
mod rules;
mod schema;
mod write;

#[cfg(test)]
mod tests;

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use nostr::prelude::{Event, EventId, Filter};

pub use error::StoreError;
use group_commit::GroupCommit;
pub use group_commit::{GroupCommitStats, Leader};
pub use pg::notify::{Changed as ChangedId, ListenStats};
pub use pg::{PgSettings, PgStore};
pub use query::Visible;
pub use redb_store::{RedbStore, DEFAULT_CACHE_MIB, FILE_NAME};
pub use references::{
    ReferenceLimits, ReferenceStats, DEFAULT_MAX_EVENT_REFERENCES, DEFAULT_MAX_REFERENCED_IDS,
};
pub use schema::FORMAT_VERSION;

#[cfg(test)]
use schema::*;

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

/// A purgatory entry as stored, decoded; one that does not decode is logged and skipped (it
/// stays stored, for the operator).
fn decode_waiting(
    store: &Path,
    id: &[u8],
    code: u8,
    expires_at: u64,
    json: &[u8],
) -> Option<WaitingEvent> {
    let event = Event::from_json(json);
    match (event, arrival_from_code(code)) {
        (Ok(event), Some(arrival)) => Some(WaitingEvent {
            event,
            arrival,
            expires_at,
        }),
        (event, _) => {
            tracing::error!(
                path = %store.display(),
                id = %crate::hex::encode(id),
                error = ?event.err(),
                arrival_code = code,
                "skipping an undecodable purgatory entry"
            );
            None
        }
    }
}

/// An event another instance on the same database committed, as the store holds it now
/// ([`Store::changed_events`]).
#[derive(Clone, PartialEq, Eq, Debug)]
pub enum Changed {
    /// In purgatory.
    Waiting(WaitingEvent),
    /// Served.
    Served(Event),
    /// Dropped from purgatory unreleased (expired, deleted, withdrawn), and neither waiting
    /// nor served now.
    Gone(EventId),
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
    /// Size of the file (PostgreSQL: of graspd's tables, as every figure).
    pub file_bytes: u64,
    /// Pages in use.
    pub allocated_bytes: u64,
    /// Keys and values themselves.
    pub stored_bytes: u64,
    /// Unused space inside allocated pages.
    pub fragmented_bytes: u64,
}

/// Writes sharing one commit at most, by default: bounds how long a leader works for others.
pub const DEFAULT_MAX_WRITES_PER_COMMIT: usize = 256;

/// The event store. See the module documentation.
#[derive(Clone, Debug)]
pub enum Store {
    Redb(RedbStore),
    Postgres(PgStore),
}

/// Runs the same expression on whichever backend `store` is.
/// A store write queued for a group commit: its outcome once the commit holding it is
/// durable. If the write found nobody committing, it carries the duty to ([`Leader`]).
#[must_use = "a store write's outcome must be waited for"]
pub struct PendingWrite<T> {
    pending: group_commit::Pending<T>,
    /// The store file or database: what a failure names.
    store: Arc<std::path::PathBuf>,
}

impl<T> PendingWrite<T> {
    fn new(pending: group_commit::Pending<T>, store: Arc<std::path::PathBuf>) -> PendingWrite<T> {
        PendingWrite { pending, store }
    }

    /// The duty to commit, if this write found nobody committing: run it on a thread that may
    /// block (a task of its own), or this write and those queued behind it wait for it.
    pub fn take_leader(&mut self) -> Option<Leader> {
        self.pending.take_leader()
    }

    /// Waits on this thread (leading first if nobody was committing).
    pub fn wait(self) -> Result<T, StoreError> {
        let store = Arc::clone(&self.store);
        self.pending
            .wait()
            .map_err(|detail| failure(&store, detail))
    }

    /// Waits without holding a thread; a leader not taken runs on a thread of its own.
    pub async fn committed(self) -> Result<T, StoreError> {
        let store = Arc::clone(&self.store);
        self.pending
            .committed()
            .await
            .map_err(|detail| failure(&store, detail))
    }
}

fn failure(store: &Path, detail: String) -> StoreError {
    tracing::error!(store = %store.display(), error = %detail, "event store failure");
    StoreError::Io {
        path: store.to_owned(),
        detail,
    }
}

macro_rules! on_backend {
    ($store:expr, $backend:ident => $body:expr) => {
        match $store {
            Store::Redb($backend) => $body,
            Store::Postgres($backend) => $body,
        }
    };
}

impl Store {
    /// Opens (or creates) `<data_dir>/graspd.redb`, creating `data_dir` if needed.
    pub fn open_in(data_dir: &Path) -> Result<Store, StoreError> {
        RedbStore::open_in(data_dir).map(Store::Redb)
    }

    /// [`Store::open_in`] with a page cache of `cache_mib` MiB.
    pub fn open_in_with_cache(data_dir: &Path, cache_mib: usize) -> Result<Store, StoreError> {
        RedbStore::open_in_with_cache(data_dir, cache_mib).map(Store::Redb)
    }

    /// The store the server is configured with: the `database` (`--database-url`) if given,
    /// else `<data_dir>/graspd.redb` with a page cache of `cache_mib` MiB.
    pub fn open_configured(
        data_dir: &Path,
        database: Option<&PgSettings>,
        cache_mib: usize,
    ) -> Result<Store, StoreError> {
        match database {
            Some(database) => Store::open_postgres(database),
            None => Store::open_in_with_cache(data_dir, cache_mib),
        }
    }

    /// Opens the redb store file at `path` (see [`RedbStore::open`]).
    pub fn open(path: &Path) -> Result<Store, StoreError> {
        RedbStore::open(path).map(Store::Redb)
    }

    /// Opens the store on a redb storage backend instead of a file (see
    /// [`RedbStore::open_on`]).
    pub fn open_on(backend: impl redb::StorageBackend, label: &Path) -> Result<Store, StoreError> {
        RedbStore::open_on(backend, label).map(Store::Redb)
    }

    /// Connects to the PostgreSQL database and migrates its schema (see [`PgStore::open`]).
    pub fn open_postgres(settings: &PgSettings) -> Result<Store, StoreError> {
        PgStore::open(settings).map(Store::Postgres)
    }

    /// The store with other bounds for the index of referenced ids (defaults:
    /// [`ReferenceLimits::default`]). A smaller capacity than the index holds takes effect at
    /// the next write that touches it.
    pub fn with_reference_limits(mut self, limits: ReferenceLimits) -> Store {
        on_backend!(&mut self, s => s.reference_limits = limits);
        self
    }

    /// The store with another bound on writes sharing one commit (1: each its own). Call it
    /// before the first write.
    pub fn with_max_writes_per_commit(mut self, max: usize) -> Store {
        on_backend!(&mut self, s => s.commits = Arc::new(GroupCommit::new(max)));
        self
    }

    pub fn reference_limits(&self) -> ReferenceLimits {
        on_backend!(self, s => s.reference_limits)
    }

    /// The index of referenced ids: its size and evictions, for metrics.
    pub fn reference_stats(&self) -> ReferenceStats {
        on_backend!(self, s => s.reference_counters.stats())
    }

    /// Whether an accepted issue, patch, PR or comment names `id` and it is not served yet:
    /// such an event is accepted when it arrives (GRASP-01 "tagged by").
    pub fn is_referenced(&self, id: &EventId) -> Result<bool, StoreError> {
        on_backend!(self, s => s.is_referenced(id))
    }

    /// The store file, or the database's URL without its password: what logs and errors name.
    pub fn path(&self) -> &Path {
        on_backend!(self, s => s.path())
    }

    /// Stores `event` for serving, applying NIP-01 replacement and NIP-09 deletion. The
    /// caller has verified its signature and decided it may be served.
    pub fn insert(&self, event: &Event) -> Result<InsertOutcome, StoreError> {
        self.insert_queued(event).wait()
    }

    /// [`Store::insert`], queued for a group commit: waiting for it holds no thread.
    pub fn insert_queued(&self, event: &Event) -> PendingWrite<InsertOutcome> {
        on_backend!(self, s => s.insert(event))
    }

    /// Stores many events in one transaction: for bulk loads and syncs. Outcomes are in
    /// input order.
    pub fn insert_many(&self, events: &[Event]) -> Result<Vec<InsertOutcome>, StoreError> {
        on_backend!(self, s => s.insert_many(events))
    }

    /// Moves an event from purgatory to the served events, atomically (after a crash either
    /// both happened or neither did), and returns it with how it was stored; `None` when
    /// purgatory does not hold it (or its entry cannot be decoded: logged, and left in place
    /// for the operator).
    pub fn release_waiting(
        &self,
        id: &EventId,
    ) -> Result<Option<(Event, InsertOutcome)>, StoreError> {
        self.release_waiting_queued(id).wait()
    }

    /// [`Store::release_waiting`], queued for a group commit.
    pub fn release_waiting_queued(
        &self,
        id: &EventId,
    ) -> PendingWrite<Option<(Event, InsertOutcome)>> {
        on_backend!(self, s => s.release_waiting(id))
    }

    /// Removes a served event (for example on an operator's request). Returns whether it was
    /// there. Kind 5 deletions go through [`Store::insert`] instead.
    pub fn remove(&self, id: &EventId) -> Result<bool, StoreError> {
        on_backend!(self, s => s.remove(id))
    }

    /// Puts (or replaces) an event in purgatory.
    pub fn put_waiting(&self, waiting: &WaitingEvent) -> Result<(), StoreError> {
        self.put_waiting_queued(waiting).wait()
    }

    /// [`Store::put_waiting`], queued for a group commit.
    pub fn put_waiting_queued(&self, waiting: &WaitingEvent) -> PendingWrite<()> {
        on_backend!(self, s => s.put_waiting(waiting))
    }

    /// Drops an event from purgatory (expired, deleted, rejected). Returns whether it was there.
    pub fn remove_waiting(&self, id: &EventId) -> Result<bool, StoreError> {
        self.remove_waiting_queued(id).wait()
    }

    /// [`Store::remove_waiting`], queued for a group commit.
    pub fn remove_waiting_queued(&self, id: &EventId) -> PendingWrite<bool> {
        on_backend!(self, s => s.remove_waiting(id))
    }

    /// Whether a stored kind 5 deletion covers `event`, so it must never be served. The
    /// start-up restore drops such waiting events: a deletion is stored before the engine
    /// removes its waiting targets, and a crash can fall between the two.
    pub fn is_deleted(&self, event: &Event) -> Result<bool, StoreError> {
        on_backend!(self, s => s.is_deleted(event))
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
    /// skipped (they stay stored).
    pub fn waiting_page(
        &self,
        after: Option<&EventId>,
        max: usize,
    ) -> Result<WaitingPage, StoreError> {
        on_backend!(self, s => s.waiting_page(after, max))
    }

    /// A served event by id.
    pub fn get(&self, id: &EventId) -> Result<Option<Event>, StoreError> {
        on_backend!(self, s => s.get(id))
    }

    /// Served events matching any of `filters`, newest first (ties: lower id first), without
    /// duplicates. Each filter returns at most `min(filter.limit, cap)` events (`cap` when it
    /// has no limit). NIP-50 `search` is ignored.
    pub fn query(&self, filters: &[Filter], cap: usize) -> Result<Vec<Event>, StoreError> {
        self.query_visible(filters, cap, &|_| true)
    }

    /// [`Store::query`] over only the events `visible` lets through (what clients may be
    /// served now); the others do not count toward a filter's limit.
    pub fn query_visible(
        &self,
        filters: &[Filter],
        cap: usize,
        visible: Visible<'_>,
    ) -> Result<Vec<Event>, StoreError> {
        on_backend!(self, s => s.query_visible(filters, cap, visible))
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
        visible: Visible<'_>,
    ) -> Result<Vec<EventId>, StoreError> {
        on_backend!(self, s => s.query_ids_visible(filters, cap, visible))
    }

    /// `(created_at, id)` of what [`Store::query_visible`] would return, in the same order:
    /// the items of a NIP-77 reconciliation. Waiting events are never among them.
    pub fn query_items(
        &self,
        filters: &[Filter],
        cap: usize,
        visible: Visible<'_>,
    ) -> Result<Vec<(u64, EventId)>, StoreError> {
        on_backend!(self, s => s.query_items(filters, cap, visible))
    }

    /// The stored JSON text of served events, in the order of `ids` (absent ones skipped),
    /// stopping after the event that brings the total to `max_bytes` or more (so at least
    /// one). Returns the texts and how many of `ids` were consumed.
    pub fn load_json(
        &self,
        ids: &[EventId],
        max_bytes: usize,
    ) -> Result<(Vec<String>, usize), StoreError> {
        on_backend!(self, s => s.load_json(ids, max_bytes))
    }

    /// How many events are served.
    pub fn served_count(&self) -> Result<u64, StoreError> {
        on_backend!(self, s => s.served_count())
    }

    /// How many events wait in purgatory.
    pub fn waiting_count(&self) -> Result<u64, StoreError> {
        on_backend!(self, s => s.waiting_count())
    }

    /// Space use, for metrics and the bench.
    pub fn disk_usage(&self) -> Result<DiskUsage, StoreError> {
        on_backend!(self, s => s.disk_usage())
    }

    /// Writes sharing commits so far.
    pub fn group_commit_stats(&self) -> GroupCommitStats {
        on_backend!(self, s => s.group_commit_stats())
    }

    /// What the other instances sharing this store commit, as they commit it: a queue of
    /// their notifications' ids (at most `capacity` notifications queued). `None` for redb,
    /// which one process holds alone. See [`PgStore::listen`].
    pub fn listen(
        &self,
        capacity: usize,
    ) -> Option<std::io::Result<async_channel::Receiver<Vec<ChangedId>>>> {
        match self {
            Store::Redb(_) => None,
            Store::Postgres(s) => Some(s.listen(capacity)),
        }
    }

    /// Acquires or renews the sync leases of `repos` for `ttl` and returns those this
    /// instance holds ([`PgStore::hold_leases`]). On redb, the only instance holds them all.
    pub fn hold_leases(&self, repos: &[String], ttl: Duration) -> Result<Vec<String>, StoreError> {
        match self {
            Store::Redb(_) => Ok(repos.to_vec()),
            Store::Postgres(s) => s.hold_leases(repos, ttl),
        }
    }

    /// Gives back the sync leases of `repos` this instance holds.
    pub fn let_go_leases(&self, repos: &[String]) -> Result<(), StoreError> {
        match self {
            Store::Redb(_) => Ok(()),
            Store::Postgres(s) => s.let_go_leases(repos),
        }
    }

    /// The listener's counters (all zero for redb).
    pub fn listen_stats(&self) -> ListenStats {
        match self {
            Store::Redb(_) => ListenStats::default(),
            Store::Postgres(s) => s.listen_stats(),
        }
    }

    /// The events another instance's notification named, as the store holds them now, in
    /// order; what has moved or gone since is left out. See [`PgStore::changed_events`].
    pub fn changed_events(&self, changes: &[ChangedId]) -> Result<Vec<Changed>, StoreError> {
        match self {
            Store::Redb(_) => Ok(Vec::new()),
            Store::Postgres(s) => s.changed_events(changes),
        }
    }
}
