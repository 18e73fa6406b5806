//! The driver: owns the one [`Engine`], feeds it inputs stamped with `now`, runs the commands it
//! emits, persists and serves what it releases, and sleeps until its next deadline.
//!
//! Every path that changes the engine (an EVENT, a push, an IO completion, a timer) does so
//! under one short mutex and then calls [`Node::dispatch`], which spawns the engine's queued
//! commands and events as tasks. The timer task only sleeps until `poll_timeout()` or until
//! woken because the deadline may have moved; nothing polls on a fixed interval.

mod accept;
mod execute;
mod handlers;
mod leases;
mod peers;
mod reload;
mod write_slots;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use graspd_core::events::GitEvent;
use graspd_core::events::{KIND_ANNOUNCEMENT, KIND_STATE};
use graspd_core::policy::Policy;
use graspd_core::{Command, Engine, Input, RepoKey};
use nostr::event::Kind;
use nostr::filter::Filter;
use tracing::{info, info_span, warn, Instrument};

pub use crate::clock::Clock;
pub use handlers::{handlers, serve_relay};

use crate::config::Config;
use crate::follow::FollowerHandle;
use crate::git::GitOps;
use crate::metrics::Metrics;
use crate::relay::{Hub, RelayLimits};
use crate::runtime::Runtime;
use crate::store::{Store, StoreError};

/// What the driver needs from the configuration.
#[derive(Clone, Debug)]
pub struct Settings {
    pub purgatory_expiry: Duration,
    pub max_fetch_bytes: u64,
    pub allow_private_remotes: bool,
    pub relay_limits: RelayLimits,
    /// Refusals by the connection and rate limits, shared with the HTTP origin.
    pub refusals: Arc<crate::refusals::Refusals>,
    /// The NIP-11 document's fixed parts; whether an allow list is set comes from the
    /// current policy at each request.
    pub relay_info: crate::nip11::RelayInfo,
    /// Store writes running at once (see [`write_slots`]); `--max-writes-per-commit`.
    pub store_writers: usize,
    /// How long a sync lease lasts unrenewed (`--sync-lease-secs`; used with a shared store).
    pub sync_lease: Duration,
}

/// One running graspd: engine, store, repositories, live subscribers.
pub struct Node {
    runtime: Arc<dyn Runtime>,
    engine: Mutex<Engine>,
    clock: Clock,
    store: Store,
    git: Arc<dyn GitOps>,
    hub: Hub,
    metrics: Metrics,
    settings: Settings,
    wake: async_channel::Sender<()>,
    woken: async_channel::Receiver<()>,
    /// The GRASP-02 relay follower: told about every hosted repository and thread.
    follower: FollowerHandle,
    /// EVENT rate per client address, over all its connections.
    address_rates: crate::event_rate::AddressRates,
    /// Store writes running at once.
    writers: write_slots::WriteSlots,
    /// What the other instances sharing the store commit (PostgreSQL only), queued.
    peers: Option<async_channel::Receiver<Vec<crate::store::ChangedId>>>,
    /// The sync leases this instance wants (a shared store only).
    leases: leases::LeaseKeeper,
}

/// A span per command, so every log line of its execution names the command and repository.
fn command_span(command: &Command) -> tracing::Span {
    match command {
        Command::Fetch { id, into, url, .. } => {
            info_span!("fetch", %id, repo = %into, %url)
        }
        Command::Inspect { id, repo, .. } => info_span!("inspect", %id, %repo),
        Command::Apply { id, plan } => info_span!("apply", %id, repo = %plan.repo),
        Command::CreateRepo { repo } => info_span!("create_repo", %repo),
        Command::RemoveRepo { repo } => info_span!("remove_repo", %repo),
        Command::AcquireLease { repo } => info_span!("acquire_lease", %repo),
        Command::ReleaseLease { repo } => info_span!("release_lease", %repo),
    }
}

/// How often the memory trimmer looks whether a burst of writes is over.
const TRIM_TICK: Duration = Duration::from_secs(1);

/// Store writes since the last trim that make the next quiet tick trim the heap.
const TRIM_AFTER_WRITES: u64 = 1024;

/// How long the timer task sleeps when the engine has no deadline at all.
const IDLE_SLEEP: Duration = Duration::from_secs(3600);

impl Node {
    /// Opens the store (in `config.data_dir`, or the `config.database_url` database), then [`Node::start_with`], with `policy` (the
    /// flags' lists and the `--config` file's) as the curation lists.
    pub async fn start(
        runtime: Arc<dyn Runtime>,
        config: &Config,
        policy: Policy,
        git: Arc<dyn GitOps>,
        settings: Settings,
        follower: FollowerHandle,
    ) -> Result<Arc<Node>, StoreError> {
        let data_dir = config.data_dir.clone();
        let database = config.database();
        let reference_limits = config.reference_limits();
        let max_writes_per_commit = config.max_writes_per_commit;
        let cache_mib = config.store_cache_mib;
        let store = crate::runtime::unblock(&*runtime, move || {
            Store::open_configured(&data_dir, database.as_ref(), cache_mib).map(|store| {
                store
                    .with_reference_limits(reference_limits)
                    .with_max_writes_per_commit(max_writes_per_commit)
            })
        })
        .await
        .map_err(|error| StoreError::Io {
            path: config.data_dir.clone(),
            detail: error.to_string(),
        })??;
        let engine = graspd_core::Config {
            policy,
            ..config.engine_config()
        };
        Node::start_with(runtime, engine, store, git, settings, follower).await
    }

    /// Restores the engine from `store` (stored announcements and states, then every waiting
    /// event with its remaining life, then `refs/nostr` placeholders) and starts the timer
    /// task.
    pub async fn start_with(
        runtime: Arc<dyn Runtime>,
        engine: graspd_core::Config,
        store: Store,
        git: Arc<dyn GitOps>,
        settings: Settings,
        follower: FollowerHandle,
    ) -> Result<Arc<Node>, StoreError> {
        let (wake, woken) = async_channel::bounded(1);
        let address_rates =
            crate::event_rate::AddressRates::new(settings.relay_limits.events_per_address);
        let settings_writers = settings.store_writers;
        let peers = peers::listen(&store);
        let node = Arc::new(Node {
            engine: Mutex::new(Engine::new(engine)),
            clock: Clock::new(Arc::clone(&runtime)),
            store,
            git,
            hub: Hub::new(),
            metrics: Metrics::new(),
            settings,
            wake,
            woken,
            address_rates,
            writers: write_slots::WriteSlots::new(settings_writers),
            runtime,
            follower,
            peers,
            leases: leases::LeaseKeeper::new(),
        });
        let restorer = Arc::clone(&node);
        crate::runtime::unblock(&*node.runtime, move || restorer.restore())
            .await
            .map_err(|error| StoreError::Io {
                path: node.store.path().to_owned(),
                detail: error.to_string(),
            })??;
        node.restore_placeholders().await;
        if let Some(heard) = node.peers.clone() {
            node.spawn_peer_feed(heard);
        }
        if node
            .engine
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .config()
            .sync_leases
        {
            node.spawn_lease_keeper();
        }
        let timers = Arc::clone(&node);
        node.runtime
            .spawn(Box::pin(async move { timers.run_timers().await }));
        let trimmer = Arc::clone(&node);
        node.runtime
            .spawn(Box::pin(async move { trimmer.trim_after_bursts().await }));
        node.dispatch();
        Ok(node)
    }

    fn restore(&self) -> Result<(), StoreError> {
        /// Waiting events read from the store per page at start-up.
        const RESTORE_PAGE: usize = 1024;
        let filter = Filter::new().kinds([Kind::from(KIND_ANNOUNCEMENT), Kind::from(KIND_STATE)]);
        let mut accepted = self.store.query(&[filter], usize::MAX)?;
        // Announcements first: a state's authority comes from them.
        accepted.sort_by_key(|e| (e.kind.as_u16() != KIND_ANNOUNCEMENT, e.created_at));
        let now = self.clock.now();
        let unix_now = self.clock.unix_now();
        let max_tags = self.store.reference_limits().per_event;
        let mut engine = self.engine.lock().unwrap_or_else(|e| e.into_inner());
        for event in &accepted {
            engine.restore_accepted(event);
            self.follow(event);
        }
        let resumed_stored = accepted.len();
        let (mut resumed, mut dropped) = (0usize, 0usize);
        // Restored events are durable already (the store is where they come from), so the
        // engine may act on them at once; no admission is pending at start-up.
        // A page at a time: the JSON of every waiting event is never held at once.
        let mut after = None;
        loop {
            let page = self.store.waiting_page(after.as_ref(), RESTORE_PAGE)?;
            for w in page.events {
                let already_served = self.store.get(&w.event.id)?.is_some();
                // Its deletion was stored, and a crash came before it left the purgatory table.
                let deleted = self.store.is_deleted(&w.event)?;
                // Denied since it was acknowledged: no push may satisfy it, so it never goes live.
                let refused = engine.config().policy.check(&w.event, max_tags).is_err();
                if already_served || deleted || refused || w.expires_at <= unix_now {
                    self.store.remove_waiting(&w.event.id)?;
                    dropped += 1;
                    continue;
                }
                let remaining = Duration::from_secs(w.expires_at - unix_now);
                self.follow_waiting(&w.event);
                engine.restore_waiting(now, w.event, w.arrival, remaining);
                resumed += 1;
            }
            match page.resume_after {
                Some(id) => after = Some(id),
                None => break,
            }
        }
        drop(engine);
        drop(accepted);
        crate::heap::release_free_memory();
        info!(
            stored = resumed_stored,
            waiting = resumed,
            dropped,
            "restored from the store"
        );
        Ok(())
    }

    /// Start-up: every `refs/nostr/<id>` ref whose event is not served is a placeholder again,
    /// so it is still deleted if its event never comes. Push times are not stored, so each
    /// gets a full placeholder life from now.
    async fn restore_placeholders(self: &Arc<Self>) {
        let repos = match self.git.hosted_repos().await {
            Ok(repos) => repos,
            Err(error) => {
                warn!(%error, "listing repositories for placeholders failed");
                return;
            }
        };
        let life = self.settings.purgatory_expiry;
        let mut restored = 0usize;
        for repo in repos {
            let refs = match self.git.inspect(&repo, &[]).await {
                Ok(inspection) => inspection.refs,
                Err(error) => {
                    warn!(%repo, %error, "reading refs for placeholders failed");
                    continue;
                }
            };
            for (name, oid) in refs {
                let Some(id) = name
                    .strip_prefix("refs/nostr/")
                    .and_then(graspd_core::events::parse_event_id_hex)
                else {
                    continue;
                };
                if self.store.get(&id).is_ok_and(|served| served.is_some()) {
                    continue;
                }
                let mut engine = self.engine.lock().unwrap_or_else(|e| e.into_inner());
                engine.restore_placeholder(self.clock.now(), repo.clone(), id, oid, life);
                restored += 1;
            }
        }
        if restored > 0 {
            info!(placeholders = restored, "restored refs/nostr placeholders");
        }
    }

    /// The operator's curation lists in force now (the engine's; a cheap shared copy).
    pub fn policy(&self) -> Policy {
        let engine = self.engine.lock().unwrap_or_else(|e| e.into_inner());
        engine.config().policy.clone()
    }

    /// Replaces the operator's curation lists (a reload): the engine judges new events and
    /// pushes by them and withdraws the waiting events they refuse; queries, live
    /// subscriptions and git fetches read the current lists each time.
    pub fn set_policy(self: &Arc<Self>, policy: Policy) {
        self.input(Input::PolicyChanged { policy });
    }

    /// Whether a stored event may be served now (the deny lists).
    fn serves(&self, policy: &Policy, event: &nostr::event::Event) -> bool {
        policy.serves(event, self.store.reference_limits().per_event)
    }

    /// Hands a newly served event to live subscribers, unless the lists in force now deny
    /// it (they may have changed since it was accepted).
    fn publish_live(&self, event: nostr::event::Event) {
        if self.serves(&self.policy(), &event) {
            self.hub.publish(event);
        }
    }

    /// Feeds an IO outcome to the engine and runs what follows.
    pub fn input(self: &Arc<Self>, input: Input) {
        {
            let mut engine = self.engine.lock().unwrap_or_else(|e| e.into_inner());
            engine.handle_input(self.clock.now(), input);
        }
        self.dispatch();
    }

    /// Spawns every command and event the engine has queued as tasks, then lets the timer task
    /// recompute its deadline. Called after every change to the engine.
    pub fn dispatch(self: &Arc<Self>) {
        self.spawn_queued();
        let _ = self.wake.try_send(());
    }

    fn spawn_queued(self: &Arc<Self>) {
        let (commands, events) = {
            let mut engine = self.engine.lock().unwrap_or_else(|e| e.into_inner());
            // Lease commands take effect here, under the engine's lock, in its order.
            let commands: Vec<_> = std::iter::from_fn(|| engine.poll_command())
                .filter(|command| !self.leases.take(command))
                .collect();
            let events: Vec<_> = std::iter::from_fn(|| engine.poll_event()).collect();
            (commands, events)
        };
        for command in commands {
            let node = Arc::clone(self);
            let span = command_span(&command);
            self.runtime
                .spawn(Box::pin(node.execute(command).instrument(span)));
        }
        if !events.is_empty() {
            // In order: an announcement is stored before the state released with it.
            let node = Arc::clone(self);
            self.runtime.spawn(Box::pin(async move {
                for event in events {
                    Arc::clone(&node).on_engine_event(event).await;
                }
            }));
        }
    }

    /// Hands the memory a burst of EVENTs freed back to the kernel once the burst is over:
    /// glibc keeps it in its arenas otherwise, and a server that took 100,000 events in a
    /// minute would keep that peak resident for its whole life.
    async fn trim_after_bursts(self: Arc<Self>) {
        let mut trim = crate::heap::BurstTrim::new(TRIM_AFTER_WRITES);
        loop {
            self.runtime.sleep(TRIM_TICK).await;
            if trim.tick(self.store.group_commit_stats().writes) {
                let _ =
                    crate::runtime::unblock(&*self.runtime, crate::heap::release_free_memory).await;
            }
        }
    }

    async fn run_timers(self: Arc<Self>) {
        loop {
            let next = self
                .engine
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .poll_timeout();
            let deadline = match next {
                Some((time, _reason)) => self.clock.instant(time),
                None => self.clock.after(IDLE_SLEEP),
            };
            let sleep = self.runtime.sleep_until(deadline);
            let woken = self.woken.recv();
            futures_lite::future::or(sleep, async {
                if woken.await.is_err() {
                    // The sender lives in `self`; it cannot close while we run.
                    warn!("timer wake channel closed");
                }
            })
            .await;
            {
                let mut engine = self.engine.lock().unwrap_or_else(|e| e.into_inner());
                engine.handle_timeout(self.clock.now());
            }
            self.spawn_queued();
        }
    }

    /// Tells the relay follower about an event waiting in purgatory. Only an announcement
    /// matters: its repository's relays may hold the state or data it waits for. A waiting
    /// PR's thread is followed once the PR is released (its replies are read then), so the
    /// follower holds nothing per waiting PR.
    fn follow_waiting(&self, event: &nostr::event::Event) {
        if event.kind.as_u16() == KIND_ANNOUNCEMENT {
            self.follow(event);
        }
    }

    /// Tells the relay follower about an event that is now served here: an announcement's
    /// repository is followed on its relays, a PR, patch or issue's thread on the relays of
    /// the repository it tags.
    fn follow(&self, event: &nostr::event::Event) {
        match graspd_core::events::parse(event) {
            Ok(Some(GitEvent::Announcement(a))) => self.follower.announcement(a),
            Ok(Some(GitEvent::Pr(pr))) => {
                if let Some(c) = pr.repos.first() {
                    let repo = RepoKey::new(c.author, c.identifier.clone());
                    self.follower.thread(repo, pr.id);
                }
            }
            _ => {
                if let Some(repo) = graspd_core::related::thread_root_repo(event) {
                    self.follower.thread(repo, event.id);
                }
            }
        }
    }

    /// An announcement released from purgatory makes its repository hosted: what its relays
    /// sent while it waited and that tagged it (issues, comments) was refused then, so the
    /// follower reads those histories again.
    fn reread_if_announcement(&self, event: &nostr::event::Event) {
        if let Ok(Some(GitEvent::Announcement(a))) = graspd_core::events::parse(event) {
            self.follower
                .repository_hosted(RepoKey::new(a.owner, a.identifier));
        }
    }

    /// Prometheus text for `/metrics`.
    pub fn render_metrics(&self) -> String {
        let stats = self
            .engine
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .stats();
        self.metrics.referenced(self.store.reference_stats());
        self.metrics.group_commits(self.store.group_commit_stats());
        self.metrics
            .followed_relays(&self.follower.relay_statuses());
        self.metrics.prunes(self.git.prune_counts());
        self.metrics.peers(
            self.store.listen_stats(),
            self.peers.as_ref().map_or(0, async_channel::Receiver::len),
        );
        let connections = crate::metrics::Connections {
            refusals: &self.settings.refusals,
            websockets_open: self.hub.connections(),
        };
        self.metrics.render(
            &stats,
            self.follower.metrics(),
            &self.follower.stats(),
            &connections,
        )
    }

    pub fn hub(&self) -> &Hub {
        &self.hub
    }

    /// Reads the `(created_at, id)` of our served events matching a filter on the blocking
    /// pool: what the follower offers a relay to reconcile (NIP-77).
    pub fn local_items(self: &Arc<Self>) -> crate::follow::LocalItems {
        let node = Arc::clone(self);
        Arc::new(move |filter: Filter, cap: usize| {
            let node = Arc::clone(&node);
            Box::pin(async move {
                let store = node.store.clone();
                let items = crate::runtime::unblock(&*node.runtime, move || {
                    store.query_items(&[filter], cap, &|_| true)
                });
                match items.await {
                    Ok(Ok(items)) => Ok(items),
                    Ok(Err(error)) => Err(error.to_string()),
                    Err(error) => Err(error.to_string()),
                }
            })
        })
    }

    /// The event store (the simulator reads it to check what acknowledged events became).
    pub fn store(&self) -> &Store {
        &self.store
    }
}
