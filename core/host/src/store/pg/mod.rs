//! The store on PostgreSQL (`--database-url`): the same semantics as the redb store, in a
//! database several graspd instances can share.
//!
//! Writes: each write transaction first takes one transaction-scoped advisory lock
//! ([`schema::WRITE_LOCK`]), so writers are serialised across every instance as redb
//! serialises them in one process, and the write rules (`../rules.rs`) see the rows they
//! read unchanged until they commit. The hot writes share transactions through the same group
//! commit as redb (`../group_commit.rs`); a batch's statements are few whatever its size
//! (`rows.rs`), since the lock is held for their round trips. Reads run in a read-only
//! repeatable-read transaction when they take more than one statement, so an answer is one
//! snapshot.
//!
//! Connections come from a small bounded pool (`pool.rs`, `--database-connections`), each
//! with the statements prepared on it (`statements.rs`).

mod leases;
pub mod notify;
mod pool;
mod query;
pub mod repo_locks;
mod rows;
mod schema;
mod statements;

use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use nostr::prelude::{Event, EventId, Filter};
use postgres::{IsolationLevel, Transaction};

use super::group_commit::{Commit, GroupCommit, GroupCommitStats};
use super::query::Order;
use super::references::{ReferenceCounters, ReferenceLimits};
use super::rules::{self, Rows};
use super::schema::Id;
use super::PendingWrite;
use super::{
    decode_waiting, DiskUsage, InsertOutcome, StoreError, Visible, WaitingEvent, WaitingPage,
    DEFAULT_MAX_WRITES_PER_COMMIT,
};
use pool::Pool;
use rows::{PgRows, PgTombstones};
use statements::Cached;

pub use schema::MIGRATIONS;

/// Default of `--database-connections`.
pub const DEFAULT_CONNECTIONS: usize = 8;

/// Where the database is and how many connections to it at most.
#[derive(Clone, Debug)]
pub struct PgSettings {
    /// A `postgres://` URL or `key=value` connection string.
    pub url: String,
    pub connections: usize,
}

/// The event store in a PostgreSQL database. See the module documentation.
#[derive(Clone)]
pub struct PgStore {
    pool: Arc<Pool>,
    /// The URL without its password: what logs and errors name.
    label: Arc<PathBuf>,
    pub(super) reference_limits: ReferenceLimits,
    pub(super) reference_counters: Arc<ReferenceCounters>,
    pub(super) commits: Arc<GroupCommit<Job>>,
    /// Names this process in its notifications, so its listener skips its own.
    token: Arc<str>,
    /// How the listener connects (outside the pool).
    config: Arc<postgres::Config>,
    listen_counters: Arc<notify::ListenCounters>,
}

/// A write queued for a group commit.
pub(super) struct Job {
    /// The (event id, author) pairs whose rows it reads, read ahead for the whole batch
    /// ([`PgRows::read_ahead`]).
    reads: Vec<(Id, Id)>,
    run: Box<RunJob>,
}

type RunJob = dyn for<'t, 'c> Fn(&mut PgRows<'t, 'c>) -> Result<(), postgres::Error> + Send;

impl std::fmt::Debug for PgStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgStore")
            .field("database", &self.label)
            .finish()
    }
}

/// `postgres://user@host:port/dbname` from a connection string, never with its password.
pub fn redacted(config: &postgres::Config) -> String {
    let hosts: Vec<String> = config
        .get_hosts()
        .iter()
        .enumerate()
        .map(|(n, host)| {
            let host = match host {
                postgres::config::Host::Tcp(name) => name.clone(),
                #[cfg(unix)]
                postgres::config::Host::Unix(path) => path.display().to_string(),
            };
            match config.get_ports().get(n).or(config.get_ports().first()) {
                Some(port) => format!("{host}:{port}"),
                None => host,
            }
        })
        .collect();
    let user = config
        .get_user()
        .map(|u| format!("{u}@"))
        .unwrap_or_default();
    let dbname = config.get_dbname().unwrap_or("");
    format!("postgres://{user}{}/{dbname}", hosts.join(","))
}

impl PgStore {
    /// Connects, applies the schema's missing migrations, and checks the database is one this
    /// graspd understands. A database that cannot be reached is
    /// [`StoreError::Database`] naming the URL (without its password).
    pub fn open(settings: &PgSettings) -> Result<PgStore, StoreError> {
        let config: postgres::Config =
            settings.url.parse().map_err(|error| StoreError::Database {
                url: "the --database-url".into(),
                detail: format!("it is not a PostgreSQL connection URL: {error}"),
            })?;
        let label = redacted(&config);
        let mut config = config;
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(std::time::Duration::from_secs(10));
        }
        let unusable = |detail: String| StoreError::Database {
            url: label.clone(),
            detail,
        };
        let pool = Pool::new(config.clone(), settings.connections);
        let found = {
            let mut client = pool.get().map_err(&unusable)?;
            schema::migrate(&mut client).map_err(|e| unusable(e.to_string()))?
        };
        if let Err(found) = found {
            return Err(StoreError::NewerSchema {
                url: label,
                found,
                supported: MIGRATIONS.len() as u64,
            });
        }
        let mut store = PgStore {
            pool: Arc::new(pool),
            label: Arc::new(PathBuf::from(&label)),
            reference_limits: ReferenceLimits::default(),
            reference_counters: Default::default(),
            commits: Arc::new(GroupCommit::new(DEFAULT_MAX_WRITES_PER_COMMIT)),
            token: notify::instance_token().into(),
            config: Arc::new(config),
            listen_counters: Default::default(),
        };
        let referenced = store.count("referenced")?;
        store.reference_counters = Arc::new(ReferenceCounters::starting_with(referenced));
        tracing::info!(database = %label, connections = settings.connections, "event store open");
        Ok(store)
    }

    /// The database's URL without its password.
    pub fn path(&self) -> &Path {
        &self.label
    }

    pub fn is_referenced(&self, id: &EventId) -> Result<bool, StoreError> {
        self.read_prepared(|client| {
            let row = client.query_opt(
                "SELECT 1 FROM referenced WHERE id = $1",
                &[&&id.to_bytes()[..]],
            )?;
            Ok(row.is_some())
        })
    }

    pub fn insert(&self, event: &Event) -> PendingWrite<InsertOutcome> {
        let event = event.clone();
        let reads = rows::reads_of_insert(&event, &self.reference_limits);
        self.write_grouped(reads, move |rows| {
            let outcome = rules::insert(rows, &event)?;
            rows.note_served(&event, &outcome);
            Ok(outcome)
        })
    }

    pub fn insert_many(&self, events: &[Event]) -> Result<Vec<InsertOutcome>, StoreError> {
        self.write(|rows| {
            let reads: Vec<(Id, Id)> = events
                .iter()
                .flat_map(|event| rows::reads_of_insert(event, &self.reference_limits))
                .collect();
            rows.read_ahead(&reads)?;
            let mut outcomes = Vec::with_capacity(events.len());
            for event in events {
                let outcome = rules::insert(rows, event)?;
                rows.note_served(event, &outcome);
                outcomes.push(outcome);
            }
            Ok(outcomes)
        })
    }

    pub fn release_waiting(&self, id: &EventId) -> PendingWrite<Option<(Event, InsertOutcome)>> {
        let (id, label) = (*id, Arc::clone(&self.label));
        self.write_grouped(Vec::new(), move |rows| {
            let released = rules::release(rows, &id, &label)?;
            if let Some((event, outcome)) = &released {
                rows.note_served(event, outcome);
            }
            Ok(released)
        })
    }

    pub fn remove(&self, id: &EventId) -> Result<bool, StoreError> {
        self.write(|rows| rules::remove_by_id(rows, id))
    }

    pub fn put_waiting(&self, waiting: &WaitingEvent) -> PendingWrite<()> {
        let waiting = waiting.clone();
        self.write_grouped(Vec::new(), move |rows| rows.put_waiting(&waiting))
    }

    pub fn remove_waiting(&self, id: &EventId) -> PendingWrite<bool> {
        let id = id.to_bytes();
        self.write_grouped(Vec::new(), move |rows| {
            let removed = rows.remove_waiting(&id)?;
            if removed {
                rows.notes
                    .push(notify::Changed::Gone(EventId::from_byte_array(id)));
            }
            Ok(removed)
        })
    }

    pub fn is_deleted(&self, event: &Event) -> Result<bool, StoreError> {
        self.read_prepared(|client| rules::tombstoned(&mut PgTombstones(client), event))
    }

    pub fn waiting_page(
        &self,
        after: Option<&EventId>,
        max: usize,
    ) -> Result<WaitingPage, StoreError> {
        let after = after.map(|id| id.to_bytes().to_vec()).unwrap_or_default();
        // One more than a page: whether the table goes on.
        let fetch = i64::try_from(max).unwrap_or(i64::MAX).saturating_add(1);
        let rows = self.read_prepared(|client| {
            client.query(
                "SELECT id, arrival, expires_at, json FROM waiting WHERE id > $1
                 ORDER BY id LIMIT $2",
                &[&after, &fetch],
            )
        })?;
        let mut page = WaitingPage::default();
        for (read, row) in rows.iter().enumerate() {
            if read == max {
                return Ok(page);
            }
            let (id, code, expires_at, json): (&[u8], i16, i64, &str) =
                (row.get(0), row.get(1), row.get(2), row.get(3));
            if let Ok(id) = Id::try_from(id) {
                page.resume_after = Some(EventId::from_byte_array(id));
            }
            let code = u8::try_from(code).unwrap_or(0);
            page.events.extend(decode_waiting(
                &self.label,
                id,
                code,
                expires_at as u64,
                json.as_bytes(),
            ));
        }
        // The table ended within this page.
        page.resume_after = None;
        Ok(page)
    }

    pub fn get(&self, id: &EventId) -> Result<Option<Event>, StoreError> {
        let id = id.to_bytes();
        let json = self.read_prepared(|client| query::json_by_id(client, &[id]))?;
        Ok(json
            .get(&id)
            .and_then(|text| super::query::decode(&id, text.as_bytes())))
    }

    pub fn query_visible(
        &self,
        filters: &[Filter],
        cap: usize,
        visible: Visible<'_>,
    ) -> Result<Vec<Event>, StoreError> {
        let (found, mut events) = self.answer(filters, cap, visible, true)?;
        Ok(found
            .into_iter()
            .filter_map(|(_, id)| events.remove(&id))
            .collect())
    }

    pub fn query_ids_visible(
        &self,
        filters: &[Filter],
        cap: usize,
        visible: Visible<'_>,
    ) -> Result<Vec<EventId>, StoreError> {
        let (found, _) = self.answer(filters, cap, visible, false)?;
        Ok(found
            .into_iter()
            .map(|(_, id)| EventId::from_byte_array(id))
            .collect())
    }

    pub fn query_items(
        &self,
        filters: &[Filter],
        cap: usize,
        visible: Visible<'_>,
    ) -> Result<Vec<(u64, EventId)>, StoreError> {
        let (found, _) = self.answer(filters, cap, visible, false)?;
        Ok(found
            .into_iter()
            .map(query::item)
            .map(|(created_at, id)| (created_at, EventId::from_byte_array(id)))
            .collect())
    }

    /// A query's answer as order keys (`../query.rs`'s union over [`query::run_one`]), with
    /// the events themselves if `keep`. One statement is a snapshot of its own: a single
    /// filter answered by its first page is read outside a transaction; anything longer is
    /// read in one read-only repeatable-read transaction.
    fn answer(
        &self,
        filters: &[Filter],
        cap: usize,
        visible: Visible<'_>,
        keep: bool,
    ) -> Result<(BTreeSet<Order>, HashMap<Id, Event>), StoreError> {
        if let [_] = filters {
            let mut kept = HashMap::new();
            let answered = self.read_prepared(|db| {
                let mut complete = true;
                let found = super::query::union(filters, cap, |filter, limit| {
                    let found =
                        query::run_one(db, filter, limit, visible, keep.then_some(&mut kept), 1)?;
                    complete &= found.is_some();
                    Ok(found.unwrap_or_default())
                })?;
                Ok(complete.then_some(found))
            })?;
            if let Some(found) = answered {
                return Ok((found, kept));
            }
        }
        self.snapshot(|txn| {
            let mut kept = HashMap::new();
            let found = super::query::union(filters, cap, |filter, limit| {
                let found = query::run_one(
                    txn,
                    filter,
                    limit,
                    visible,
                    keep.then_some(&mut kept),
                    usize::MAX,
                )?;
                Ok(found.unwrap_or_default())
            })?;
            Ok((found, kept))
        })
    }

    pub fn load_json(
        &self,
        ids: &[EventId],
        max_bytes: usize,
    ) -> Result<(Vec<String>, usize), StoreError> {
        /// Ids read per round trip.
        const WINDOW: usize = 64;
        let ids: Vec<Id> = ids.iter().map(|id| id.to_bytes()).collect();
        self.snapshot(|txn| {
            let mut fetched = HashMap::new();
            let mut fetched_until = 0;
            super::query::take_json(&ids, max_bytes, |n, id| {
                if n >= fetched_until {
                    fetched_until = (n + WINDOW).min(ids.len());
                    fetched = query::json_by_id(txn, &ids[n..fetched_until])?;
                }
                Ok(fetched.remove(id))
            })
        })
    }

    pub fn served_count(&self) -> Result<u64, StoreError> {
        self.count("events")
    }

    pub fn waiting_count(&self) -> Result<u64, StoreError> {
        self.count("waiting")
    }

    /// The graspd tables' total size (with indexes and TOAST) as every figure: PostgreSQL
    /// does not split it the way redb does.
    pub fn disk_usage(&self) -> Result<DiskUsage, StoreError> {
        let bytes: i64 = self.read(|client| {
            Ok(client
                .query_one(
                    "SELECT coalesce(sum(pg_total_relation_size(c.oid)), 0)::bigint
                     FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
                     WHERE n.nspname = current_schema() AND c.relkind = 'r'
                       AND c.relname IN ('events', 'event_tags', 'coordinates', 'waiting',
                           'tombstone_ids', 'tombstone_coordinates', 'referenced')",
                    &[],
                )?
                .get(0))
        })?;
        let bytes = bytes as u64;
        Ok(DiskUsage {
            file_bytes: bytes,
            allocated_bytes: bytes,
            stored_bytes: bytes,
            fragmented_bytes: 0,
        })
    }

    pub fn group_commit_stats(&self) -> GroupCommitStats {
        self.commits.stats()
    }

    /// Starts listening (`notify.rs`) for what the other instances on this database commit:
    /// each notification's entries arrive on the returned queue, which holds at most
    /// `capacity` notifications (the rest are dropped and counted). Dropping the receiver
    /// stops the listener.
    pub fn listen(
        &self,
        capacity: usize,
    ) -> std::io::Result<async_channel::Receiver<Vec<notify::Changed>>> {
        let (queue, heard) = async_channel::bounded(capacity.max(1));
        notify::spawn_listener(
            self.config.as_ref().clone(),
            self.label.display().to_string(),
            self.token.to_string(),
            queue,
            Arc::clone(&self.listen_counters),
        )?;
        Ok(heard)
    }

    pub fn listen_stats(&self) -> notify::ListenStats {
        self.listen_counters.stats()
    }

    /// What `changes` name as the database holds it now, in their order: a waiting event
    /// still in purgatory, a served event still served. What has moved or gone since is left
    /// out (a later notification names where it went, or nothing is left of it).
    pub fn changed_events(
        &self,
        changes: &[notify::Changed],
    ) -> Result<Vec<super::Changed>, StoreError> {
        // A gone one is looked up in both: if it is back (waiting or served), a later
        // notification says so, and it is not gone.
        let waiting_ids: Vec<Id> = changes
            .iter()
            .filter_map(|c| match c {
                notify::Changed::Waiting(id) | notify::Changed::Gone(id) => Some(id.to_bytes()),
                notify::Changed::Served(_) => None,
            })
            .collect();
        let served_ids: Vec<Id> = changes
            .iter()
            .filter_map(|c| match c {
                notify::Changed::Served(id) | notify::Changed::Gone(id) => Some(id.to_bytes()),
                notify::Changed::Waiting(_) => None,
            })
            .collect();
        let (mut waiting, mut served) = self.snapshot(|txn| {
            let keys: Vec<&[u8]> = waiting_ids.iter().map(|id| &id[..]).collect();
            let rows = txn.query(
                "SELECT id, arrival, expires_at, json FROM waiting WHERE id = ANY($1)",
                &[&keys],
            )?;
            let waiting: HashMap<Id, WaitingEvent> = rows
                .iter()
                .filter_map(|row| {
                    let (id, code, expires_at, json): (&[u8], i16, i64, &str) =
                        (row.get(0), row.get(1), row.get(2), row.get(3));
                    let code = u8::try_from(code).unwrap_or(0);
                    let decoded =
                        decode_waiting(&self.label, id, code, expires_at as u64, json.as_bytes())?;
                    Some((Id::try_from(id).ok()?, decoded))
                })
                .collect();
            Ok((waiting, query::json_by_id(txn, &served_ids)?))
        })?;
        Ok(changes
            .iter()
            .filter_map(|change| match change {
                notify::Changed::Waiting(id) => {
                    waiting.remove(&id.to_bytes()).map(super::Changed::Waiting)
                }
                notify::Changed::Served(id) => {
                    let id = id.to_bytes();
                    let json = served.remove(&id)?;
                    super::query::decode(&id, json.as_bytes()).map(super::Changed::Served)
                }
                notify::Changed::Gone(id) => {
                    let key = id.to_bytes();
                    let back = waiting.contains_key(&key) || served.contains_key(&key);
                    (!back).then_some(super::Changed::Gone(*id))
                }
            })
            .collect())
    }

    fn count(&self, table: &'static str) -> Result<u64, StoreError> {
        let count: i64 = self.read(|client| {
            Ok(client
                .query_one(&format!("SELECT count(*) FROM {table}"), &[])?
                .get(0))
        })?;
        Ok(count as u64)
    }

    /// One or more statements on a pooled connection, outside a transaction.
    fn read<T>(
        &self,
        body: impl FnOnce(&mut postgres::Client) -> Result<T, postgres::Error>,
    ) -> Result<T, StoreError> {
        let mut client = self.pool.get().map_err(|e| self.failure(e))?;
        body(&mut client).map_err(|e| self.failure(e.to_string()))
    }

    /// [`PgStore::read`] through the connection's prepared statements (`statements.rs`).
    fn read_prepared<T>(
        &self,
        body: impl FnOnce(&mut Cached<'_, postgres::Client>) -> Result<T, postgres::Error>,
    ) -> Result<T, StoreError> {
        let mut pooled = self.pool.get().map_err(|e| self.failure(e))?;
        let (client, statements) = pooled.with_statements();
        body(&mut Cached::new(client, statements)).map_err(|e| self.failure(e.to_string()))
    }

    /// Statements that must see one snapshot: a read-only repeatable-read transaction.
    fn snapshot<T>(
        &self,
        body: impl FnOnce(&mut Cached<'_, Transaction<'_>>) -> Result<T, postgres::Error>,
    ) -> Result<T, StoreError> {
        let mut pooled = self.pool.get().map_err(|e| self.failure(e))?;
        let (client, statements) = pooled.with_statements();
        let result = (|| {
            let mut txn = client
                .build_transaction()
                .isolation_level(IsolationLevel::RepeatableRead)
                .read_only(true)
                .start()?;
            let out = body(&mut Cached::new(&mut txn, statements))?;
            txn.commit()?;
            Ok(out)
        })();
        result.map_err(|e: postgres::Error| self.failure(e.to_string()))
    }

    /// Runs `body` in one write transaction and commits it; on error nothing is written.
    fn write<T>(
        &self,
        body: impl FnOnce(&mut PgRows<'_, '_>) -> Result<T, postgres::Error>,
    ) -> Result<T, StoreError> {
        self.transact(body).map_err(|detail| self.failure(detail))
    }

    /// Like [`PgStore::write`] for the hot writes, queued: writes running at the same time
    /// share one transaction, and each is answered only after that transaction committed.
    /// `reads` are the (event id, author) pairs whose rows `body` reads.
    fn write_grouped<T: Send + 'static>(
        &self,
        reads: Vec<(Id, Id)>,
        body: impl Fn(&mut PgRows<'_, '_>) -> Result<T, postgres::Error> + Send + 'static,
    ) -> PendingWrite<T> {
        let store = self.clone();
        let commit: Commit<Job> = Box::new(move |jobs| {
            store.transact(|rows| {
                let reads: Vec<(Id, Id)> = jobs
                    .iter()
                    .flat_map(|job| job.reads.iter().copied())
                    .collect();
                rows.read_ahead(&reads)?;
                jobs.iter().try_for_each(|job| (job.run)(rows))
            })
        });
        let pending = self.commits.submit_returning(commit, |keep| Job {
            reads,
            run: Box::new(move |rows| {
                keep(body(rows)?);
                Ok(())
            }),
        });
        PendingWrite::new(pending, Arc::clone(&self.label))
    }

    /// `body` in a write transaction holding the write lock, committed; the index of
    /// referenced ids' counters follow what it committed.
    fn transact<T>(
        &self,
        body: impl FnOnce(&mut PgRows<'_, '_>) -> Result<T, postgres::Error>,
    ) -> Result<T, String> {
        let mut pooled = self.pool.get()?;
        let (client, statements) = pooled.with_statements();
        let result = (|| {
            let mut txn = client.transaction()?;
            let mut rows = PgRows::new(Cached::new(&mut txn, statements), self.reference_limits);
            rows.db()?
                .execute("SELECT pg_advisory_xact_lock($1)", &[&schema::WRITE_LOCK])?;
            let out = body(&mut rows)?;
            let changes = std::mem::take(&mut rows.reference_changes);
            let notes = std::mem::take(&mut rows.notes);
            rows.write_held_back()?;
            // Delivered by PostgreSQL when (and only if) this transaction commits.
            for payload in notify::payloads(&self.token, &notes) {
                rows.db()?
                    .execute("SELECT pg_notify($1, $2)", &[&notify::CHANNEL, &payload])?;
            }
            drop(rows);
            txn.commit()?;
            Ok((out, changes))
        })();
        let (out, changes) = result.map_err(|e: postgres::Error| e.to_string())?;
        self.reference_counters
            .apply(changes, &self.reference_limits, &self.label);
        Ok(out)
    }

    fn failure(&self, detail: String) -> StoreError {
        tracing::error!(database = %self.label.display(), error = %detail, "event store failure");
        StoreError::Io {
            path: self.label.as_ref().clone(),
            detail,
        }
    }
}
