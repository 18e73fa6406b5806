//! The follower's tasks: one driver owning the [`RelayFollower`], one task per relay
//! connection, one task calling the event callback.

use std::collections::BTreeMap;
use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::pin::pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use async_channel::{Receiver, Sender};
use async_tungstenite::tungstenite::protocol::WebSocketConfig;
use async_tungstenite::tungstenite::Message;
use futures_util::future::{select, Either};
use futures_util::StreamExt;
use graspd_core::events::{verify_signature, Announcement};
use graspd_core::follow::reconcile::{NegentropySupport, ReconcileConfig};
use graspd_core::follow::{
    Command, ConnectionId, FollowChange, FollowConfig, FollowStats, Input, RelayFollower, SubKey,
    Subscription,
};
use graspd_core::{EventId, RepoKey};
use nostr::event::Event;
use nostr::types::url::{Host, Url};

use super::metrics::FollowMetrics;
use super::rate::TokenBucket;
use super::session::{ConnectionSession, HistoryLimits, HistoryMark, HistoryMarks, Output};
use crate::clock::Clock;
use crate::resolve::{resolve_checked, ResolveError};
use crate::runtime::{BoxFuture, Connection, Runtime};
use futures_rustls::pki_types::ServerName;
use futures_rustls::rustls::{ClientConfig, RootCertStore};
use futures_rustls::TlsConnector;

/// Bounds of the IO side (the core's [`FollowConfig`] bounds relays and subscriptions).
#[derive(Clone, Copy, Debug)]
pub struct ClientLimits {
    /// Largest WebSocket message (and frame) accepted from a relay.
    pub max_message_bytes: usize,
    /// Events per second taken from one relay; faster relays are read more slowly.
    pub events_per_second: u32,
    /// Verified events waiting for the callback; when full, connections wait.
    pub event_queue: usize,
    /// Connection reports waiting for the driver.
    pub report_queue: usize,
    /// Event ids remembered to drop the same event arriving from several relays.
    pub recent_ids: usize,
    /// History paging.
    pub history: HistoryLimits,
    /// History by NIP-77 negentropy, tried first where our own items can be read
    /// ([`FollowerHandle::set_local_items`]).
    pub reconcile: ReconcileConfig,
    /// A relay silent this long is pinged; silent for twice as long, the connection is dropped.
    pub ping_after: Duration,
}

impl Default for ClientLimits {
    fn default() -> ClientLimits {
        ClientLimits {
            max_message_bytes: 1 << 20,
            events_per_second: 100,
            event_queue: 1024,
            report_queue: 1024,
            recent_ids: 100_000,
            history: HistoryLimits::default(),
            reconcile: ReconcileConfig::default(),
            ping_after: Duration::from_secs(120),
        }
    }
}

/// Command-line options of the follower, for the runtime crates to flatten into theirs.
#[derive(clap::Args, Clone, Debug)]
pub struct FollowArgs {
    /// A relay to discover announcements that list this server from, and to follow every
    /// hosted repository on (repeatable).
    #[arg(
        long = "bootstrap-relay",
        value_name = "URL",
        env = "GRASPD_BOOTSTRAP_RELAYS",
        value_delimiter = ','
    )]
    pub bootstrap_relays: Vec<String>,
    /// Follow relays on loopback and private addresses (tests, private networks).
    #[arg(long, env = "GRASPD_ALLOW_PRIVATE_RELAYS")]
    pub allow_private_relays: bool,
    /// Events per second taken from one followed relay; a faster relay is read more slowly.
    #[arg(long, env = "GRASPD_FOLLOW_EVENTS_PER_SECOND", default_value_t = 100)]
    pub follow_events_per_second: u32,
    /// Largest WebSocket message accepted from a followed relay, in bytes.
    #[arg(long, env = "GRASPD_FOLLOW_MAX_MESSAGE_BYTES", default_value_t = 1 << 20)]
    pub follow_max_message_bytes: usize,
    /// Pages (of 500 events) of one subscription's history read by REQ before it is taken
    /// as complete.
    #[arg(long, env = "GRASPD_FOLLOW_HISTORY_PAGES", default_value_t = 200)]
    pub follow_history_pages: usize,
    /// Seconds a followed relay may take to answer a NEG-OPEN or NEG-MSG before its history
    /// is paged with REQ instead.
    #[arg(
        long,
        env = "GRASPD_FOLLOW_NEGENTROPY_TIMEOUT_SECS",
        default_value_t = 10
    )]
    pub follow_negentropy_timeout_secs: u64,
    /// Seconds a relay that could not reconcile is paged before negentropy is tried again.
    #[arg(
        long,
        env = "GRASPD_FOLLOW_NEGENTROPY_RETRY_SECS",
        default_value_t = 3600
    )]
    pub follow_negentropy_retry_secs: u64,
    /// Our own events offered in one reconciliation at most (held in memory during it), and
    /// missing events fetched by id after one at most; beyond either, the history is paged.
    #[arg(
        long,
        env = "GRASPD_FOLLOW_NEGENTROPY_MAX_ITEMS",
        default_value_t = 100_000
    )]
    pub follow_negentropy_max_items: usize,
}

impl FollowArgs {
    /// The IO side's bounds: the flags', the rest [`ClientLimits::default`].
    pub fn client_limits(&self) -> ClientLimits {
        let defaults = ClientLimits::default();
        ClientLimits {
            max_message_bytes: self.follow_max_message_bytes,
            events_per_second: self.follow_events_per_second.max(1),
            history: HistoryLimits {
                max_pages: self.follow_history_pages.max(1),
                ..defaults.history
            },
            reconcile: ReconcileConfig {
                answer_timeout: Duration::from_secs(self.follow_negentropy_timeout_secs.max(1)),
                retry_after: Duration::from_secs(self.follow_negentropy_retry_secs),
                max_items: self.follow_negentropy_max_items,
                max_missing: self.follow_negentropy_max_items,
                ..defaults.reconcile
            },
            ..defaults
        }
    }

    pub fn config(&self) -> FollowConfig {
        FollowConfig {
            bootstrap_relays: self
                .bootstrap_relays
                .iter()
                .flat_map(|r| graspd_core::follow::parse_relay_list(r))
                .collect(),
            allow_private_relays: self.allow_private_relays,
            ..FollowConfig::default()
        }
    }
}

/// Reads the `(created_at, id)` of our own served events matching a filter, at most `cap`
/// (the store's `query_items` on the blocking pool): the items a reconciliation offers.
pub type LocalItems = Arc<
    dyn Fn(
            nostr::filter::Filter,
            usize,
        ) -> BoxFuture<'static, Result<Vec<(u64, nostr::event::EventId)>, String>>
        + Send
        + Sync,
>;

/// Takes the follower's lease commands (`AcquireLease`, `ReleaseLease`), in the order the
/// follower gave them; the host's lease keeper reports back through
/// [`FollowerHandle::lease_report`].
pub type LeaseCommands = Arc<dyn Fn(&Command) + Send + Sync>;

/// Feeds the follower from anywhere (the acceptance path), and reads its metrics.
#[derive(Clone)]
pub struct FollowerHandle {
    shared: Arc<Shared>,
}

struct Shared {
    follower: Mutex<RelayFollower>,
    /// How far each relay's subscriptions were read, kept across reconnects (at most
    /// `max_relays` relays).
    marks: Mutex<BTreeMap<String, HistoryMarks>>,
    /// Whether each relay reconciles, kept across reconnects (at most `max_relays`).
    negentropy: Mutex<BTreeMap<String, NegentropySupport>>,
    local_items: std::sync::OnceLock<LocalItems>,
    lease_commands: std::sync::OnceLock<LeaseCommands>,
    max_relays: usize,
    tls: Arc<ClientConfig>,
    clock: Clock,
    wake_tx: Sender<()>,
    wake_rx: Receiver<()>,
    metrics: FollowMetrics,
    limits: ClientLimits,
    allow_private: bool,
}

impl Shared {
    fn follower(&self) -> MutexGuard<'_, RelayFollower> {
        self.follower.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn marks_of(&self, url: &str) -> HistoryMarks {
        let marks = self.marks.lock().unwrap_or_else(|e| e.into_inner());
        marks.get(url).cloned().unwrap_or_default()
    }

    fn negentropy_of(&self, url: &str) -> NegentropySupport {
        let support = self.negentropy.lock().unwrap_or_else(|e| e.into_inner());
        support.get(url).copied().unwrap_or_default()
    }

    fn update_negentropy(&self, url: &str, update: impl FnOnce(&mut NegentropySupport)) {
        let mut support = self.negentropy.lock().unwrap_or_else(|e| e.into_inner());
        if support.contains_key(url) || support.len() < self.max_relays {
            update(support.entry(url.to_owned()).or_default());
        }
    }

    /// Reconciliation's bounds: off unless our own items can be read.
    fn reconcile_config(&self) -> ReconcileConfig {
        ReconcileConfig {
            enabled: self.limits.reconcile.enabled && self.local_items.get().is_some(),
            ..self.limits.reconcile
        }
    }

    fn remember_mark(&self, url: &str, key: SubKey, mark: HistoryMark) {
        let mut marks = self.marks.lock().unwrap_or_else(|e| e.into_inner());
        if marks.contains_key(url) || marks.len() < self.max_relays {
            marks.entry(url.to_owned()).or_default().insert(key, mark);
        }
    }
}

/// TLS for `wss://` relays: the Mozilla roots shipped in `webpki-roots`, ring crypto.
pub fn default_tls_config() -> Arc<ClientConfig> {
    let mut roots = RootCertStore::empty();
    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    tls_config(roots)
}

/// A client TLS configuration trusting `roots` (tests add their own).
pub fn tls_config(roots: RootCertStore) -> Arc<ClientConfig> {
    let provider = Arc::new(futures_rustls::rustls::crypto::ring::default_provider());
    let config = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("ring supports the default TLS versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    Arc::new(config)
}

impl FollowerHandle {
    /// A follower whose clock is `runtime`'s (the one it is then spawned on).
    pub fn new(
        runtime: Arc<dyn Runtime>,
        follower: RelayFollower,
        limits: ClientLimits,
    ) -> FollowerHandle {
        FollowerHandle::with_tls(runtime, follower, limits, default_tls_config())
    }

    /// Like [`FollowerHandle::new`], with the TLS configuration for `wss://` relays given.
    pub fn with_tls(
        runtime: Arc<dyn Runtime>,
        follower: RelayFollower,
        limits: ClientLimits,
        tls: Arc<ClientConfig>,
    ) -> FollowerHandle {
        // One pending wake-up is enough: the driver polls everything when it wakes.
        let (wake_tx, wake_rx) = async_channel::bounded(1);
        let allow_private = follower.config().allow_private_relays;
        let max_relays = follower.config().max_relays;
        FollowerHandle {
            shared: Arc::new(Shared {
                follower: Mutex::new(follower),
                marks: Mutex::new(BTreeMap::new()),
                negentropy: Mutex::new(BTreeMap::new()),
                local_items: std::sync::OnceLock::new(),
                lease_commands: std::sync::OnceLock::new(),
                max_relays,
                tls,
                clock: Clock::new(runtime),
                wake_tx,
                wake_rx,
                metrics: FollowMetrics::new(max_relays),
                limits,
                allow_private,
            }),
        }
    }

    /// An announcement was accepted (stored or released), or a maintainer's announcement of
    /// an accepted repository was.
    pub fn announcement(&self, announcement: Announcement) {
        self.input(Input::Announcement(announcement));
    }

    /// The repository's announcement is served now: its histories are read again.
    pub fn repository_hosted(&self, repo: RepoKey) {
        self.input(Input::RepositoryHosted(repo));
    }

    /// The repository is no longer hosted.
    pub fn repository_removed(&self, repo: RepoKey) {
        self.input(Input::RepositoryRemoved(repo));
    }

    /// An accepted event tagging `repo`: follow the events that tag it.
    pub fn thread(&self, repo: RepoKey, root: EventId) {
        self.input(Input::Thread { repo, root });
    }

    /// How our own items are read, so histories can be reconciled (NIP-77) rather than
    /// paged. Without it every history is paged. Set once; later calls change nothing.
    pub fn set_local_items(&self, local_items: LocalItems) {
        let _ = self.shared.local_items.set(local_items);
    }

    /// Where the follower's lease commands go (with `FollowConfig::relay_leases`). Set once,
    /// before `spawn_follower`; later calls change nothing.
    pub fn set_lease_commands(&self, lease_commands: LeaseCommands) {
        let _ = self.shared.lease_commands.set(lease_commands);
    }

    /// A relay's lease was acquired or lost (`Input::Leased`, `Input::LeaseLost`).
    pub fn lease_report(&self, input: Input) {
        self.input(input);
    }

    pub fn stats(&self) -> FollowStats {
        self.shared.follower().stats()
    }

    pub fn relay_statuses(&self) -> Vec<graspd_core::follow::RelayStatus> {
        self.shared.follower().relay_statuses().collect()
    }

    pub fn metrics(&self) -> &FollowMetrics {
        &self.shared.metrics
    }

    fn input(&self, input: Input) {
        let now = self.shared.clock.now();
        self.shared.follower().handle_input(now, input);
        let _ = self.shared.wake_tx.try_send(());
    }
}

/// Starts the driver and the delivery task on `runtime`. `on_event` gets each event whose id
/// and signature are valid, once (the same event from several relays is passed on once), with
/// the URL of the relay it came from first; it should hand the event to the acceptance path
/// as synced (`Submission::synced_from`) and return quickly. Every event counts as taken.
pub fn spawn_follower<F>(runtime: Arc<dyn Runtime>, handle: FollowerHandle, on_event: F)
where
    F: Fn(Event, Arc<str>) + Send + Sync + 'static,
{
    spawn_follower_async(runtime, handle, move |event, relay| {
        on_event(event, relay);
        Box::pin(std::future::ready(true))
    });
}

/// Like [`spawn_follower`], for an acceptance path that is async: the next event waits until
/// the future of the previous one completed (so a slow store slows the relays down, through
/// the bounded queue, instead of piling events up). The future says whether the event was
/// taken (stored or waiting); one refused is not remembered as passed on, so it is decided
/// again when a relay sends it again: what it relates to may be hosted by then (an issue
/// read with the announcement it tags, before that announcement was released).
pub fn spawn_follower_async<F>(runtime: Arc<dyn Runtime>, handle: FollowerHandle, on_event: F)
where
    F: Fn(Event, Arc<str>) -> BoxFuture<'static, bool> + Send + Sync + 'static,
{
    let limits = handle.shared.limits;
    let (events_tx, events_rx) = async_channel::bounded(limits.event_queue.max(1));
    let (reports_tx, reports_rx) = async_channel::bounded(limits.report_queue.max(1));
    runtime.spawn(Box::pin(deliver(
        Arc::clone(&handle.shared),
        events_rx,
        on_event,
    )));
    let driver = Driver {
        runtime: Arc::clone(&runtime),
        shared: handle.shared,
        controls: BTreeMap::new(),
        reports_tx,
        reports_rx,
        events_tx,
    };
    runtime.spawn(Box::pin(driver.run()));
}

type Delivery = (Arc<str>, Box<Event>);

/// Drops events already passed on and taken, then calls `on_event`.
async fn deliver<F>(shared: Arc<Shared>, events: Receiver<Delivery>, on_event: F)
where
    F: Fn(Event, Arc<str>) -> BoxFuture<'static, bool>,
{
    let mut recent = RecentIds::new(shared.limits.recent_ids);
    let metrics = &shared.metrics;
    while let Ok((relay, event)) = events.recv().await {
        if !recent.insert(event.id) {
            FollowMetrics::add(&metrics.duplicates);
            metrics.relay(&relay, |c| c.duplicates += 1);
            continue;
        }
        FollowMetrics::add(&metrics.events_learned);
        metrics.relay(&relay, |c| c.learned += 1);
        let id = event.id;
        if !on_event(*event, relay).await {
            recent.forget(&id);
        }
    }
}

/// The last `capacity` event ids, oldest forgotten first. Each entry carries the sequence
/// number of its insertion, so an id forgotten early and seen again is not dropped from the
/// set when its old place in the order comes up.
struct RecentIds {
    set: HashMap<EventId, u64>,
    order: VecDeque<(EventId, u64)>,
    next: u64,
    capacity: usize,
}

impl RecentIds {
    fn new(capacity: usize) -> RecentIds {
        RecentIds {
            set: HashMap::new(),
            order: VecDeque::new(),
            next: 0,
            capacity: capacity.max(1),
        }
    }

    /// Forgets `id` (its place in the order stays until it would have been forgotten).
    fn forget(&mut self, id: &EventId) {
        self.set.remove(id);
    }

    /// False if `id` was seen recently.
    fn insert(&mut self, id: EventId) -> bool {
        if self.set.contains_key(&id) {
            return false;
        }
        self.next += 1;
        self.set.insert(id, self.next);
        self.order.push_back((id, self.next));
        if self.order.len() > self.capacity {
            if let Some((old, seq)) = self.order.pop_front() {
                if self.set.get(&old) == Some(&seq) {
                    self.set.remove(&old);
                }
            }
        }
        true
    }
}

/// What the driver tells a connection after `Connect`; closing the channel disconnects.
enum Control {
    Update {
        open: Vec<Subscription>,
        close: Vec<SubKey>,
    },
}

/// Subscription updates waiting for one connection (they come at most every few seconds).
const CONTROL_QUEUE: usize = 16;
/// Reports handled per lock of the follower.
const REPORT_BATCH: usize = 256;

struct Driver {
    runtime: Arc<dyn Runtime>,
    shared: Arc<Shared>,
    controls: BTreeMap<ConnectionId, Sender<Control>>,
    reports_tx: Sender<Input>,
    reports_rx: Receiver<Input>,
    events_tx: Sender<Delivery>,
}

impl Driver {
    async fn run(mut self) {
        loop {
            let (commands, changes, timeout) = {
                let mut follower = self.shared.follower();
                let commands: Vec<Command> =
                    std::iter::from_fn(|| follower.poll_command()).collect();
                let changes: Vec<FollowChange> =
                    std::iter::from_fn(|| follower.poll_change()).collect();
                (commands, changes, follower.poll_timeout())
            };
            for change in changes {
                log_change(&change);
            }
            let connects = commands
                .iter()
                .any(|c| matches!(c, Command::Connect { .. }));
            for command in commands {
                self.execute(command);
            }
            if connects {
                let reconnects = self.shared.follower().stats().reconnects;
                self.shared
                    .metrics
                    .reconnects
                    .store(reconnects, std::sync::atomic::Ordering::Relaxed);
            }
            let deadline = match timeout {
                Some((at, _)) => self.shared.clock.instant(at),
                None => self.shared.clock.after(Duration::from_secs(3600)),
            };
            let sleep = self.runtime.sleep_until(deadline);
            let wake = pin!(self.shared.wake_rx.recv());
            let report = pin!(self.reports_rx.recv());
            match select(select(wake, report), sleep).await {
                Either::Left((Either::Left(_), _)) => {} // inputs were fed by a handle
                Either::Left((Either::Right((Ok(first), _)), _)) => self.handle_reports(first),
                Either::Left((Either::Right((Err(_), _)), _)) => return,
                Either::Right(_) => {
                    let now = self.shared.clock.now();
                    self.shared.follower().handle_timeout(now);
                }
            }
        }
    }

    fn handle_reports(&mut self, first: Input) {
        let mut batch = vec![first];
        while batch.len() < REPORT_BATCH {
            match self.reports_rx.try_recv() {
                Ok(input) => batch.push(input),
                Err(_) => break,
            }
        }
        let now = self.shared.clock.now();
        let mut follower = self.shared.follower();
        for input in batch {
            if let Input::Closed { id } | Input::Failed { id, .. } = &input {
                self.controls.remove(id);
            }
            follower.handle_input(now, input);
        }
    }

    fn execute(&mut self, command: Command) {
        match command {
            Command::Connect {
                id,
                url,
                subscriptions,
            } => {
                let (control_tx, control_rx) = async_channel::bounded(CONTROL_QUEUE);
                self.controls.insert(id, control_tx);
                tracing::debug!(relay = %url, %id, subscriptions = subscriptions.len(), "connecting to relay");
                let connection = RelayConnection {
                    runtime: Arc::clone(&self.runtime),
                    shared: Arc::clone(&self.shared),
                    id,
                    url: Arc::from(url.as_str()),
                    control: control_rx,
                    reports: self.reports_tx.clone(),
                    events: self.events_tx.clone(),
                };
                self.runtime.spawn(Box::pin(connection.run(subscriptions)));
            }
            Command::UpdateSubscriptions { id, open, close } => {
                if let Some(control) = self.controls.get(&id) {
                    if control.try_send(Control::Update { open, close }).is_err() {
                        tracing::warn!(%id, "relay connection is not taking subscription updates; dropping it");
                        self.controls.remove(&id);
                    }
                }
            }
            Command::Disconnect { id } => {
                // Closing the control channel ends the connection task.
                self.controls.remove(&id);
            }
            Command::AcquireLease { .. } | Command::ReleaseLease { .. } => {
                match self.shared.lease_commands.get() {
                    Some(take) => take(&command),
                    None => {
                        tracing::error!(?command, "relay lease asked for without a lease keeper")
                    }
                }
            }
        }
    }
}

/// A follower filter as nostr-sdk's, for the store's query.
fn nostr_filter(filter: &graspd_core::follow::Filter) -> Result<nostr::filter::Filter, String> {
    let json = super::wire::filter_json(filter, super::wire::Window::default());
    serde_json::from_value(json).map_err(|e| format!("filter: {e}"))
}

/// One line per relay whose following started or stopped (connections log their own).
fn log_change(change: &FollowChange) {
    match change {
        FollowChange::Started {
            url,
            bootstrap,
            repositories,
        } => tracing::info!(relay = %url, bootstrap, repositories, "following relay"),
        FollowChange::Stopped { url } => tracing::info!(relay = %url, "stopped following relay"),
    }
}

struct RelayConnection {
    runtime: Arc<dyn Runtime>,
    shared: Arc<Shared>,
    id: ConnectionId,
    url: Arc<str>,
    control: Receiver<Control>,
    reports: Sender<Input>,
    events: Sender<Delivery>,
}

/// Decrements the connected-relays gauge however the connection ends.
struct ConnectedGuard<'a>(&'a FollowMetrics);

impl Drop for ConnectedGuard<'_> {
    fn drop(&mut self) {
        self.0
            .relays_connected
            .fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
    }
}

impl RelayConnection {
    async fn run(self, subscriptions: Vec<Subscription>) {
        let outcome = self.connect_and_follow(subscriptions).await;
        let id = self.id;
        let input = match outcome {
            Ok(()) => {
                tracing::debug!(relay = %self.url, %id, "relay connection closed");
                Input::Closed { id }
            }
            Err(reason) => {
                FollowMetrics::add(&self.shared.metrics.connect_failures);
                tracing::info!(relay = %self.url, %id, %reason, "relay connection failed");
                Input::Failed { id, reason }
            }
        };
        let _ = self.reports.send(input).await;
    }

    async fn connect_and_follow(&self, subscriptions: Vec<Subscription>) -> Result<(), String> {
        let limits = self.shared.limits;
        let url = Url::parse(&self.url).map_err(|e| format!("bad relay URL: {e}"))?;
        let addrs = self.resolve(&url).await?;
        let mut stream = self
            .until_disconnected(self.connect_any(&addrs))
            .await
            .ok_or("disconnected while connecting")??;
        if url.scheme() == "wss" {
            stream = self
                .until_disconnected(self.tls_handshake(&url, stream))
                .await
                .ok_or("disconnected during the TLS handshake")??;
        }
        let config = WebSocketConfig::default()
            .max_message_size(Some(limits.max_message_bytes))
            .max_frame_size(Some(limits.max_message_bytes));
        let handshake =
            async_tungstenite::client_async_with_config(self.url.to_string(), stream, Some(config));
        let (mut ws, _response) = self
            .until_disconnected(handshake)
            .await
            .ok_or("disconnected during the WebSocket handshake")?
            .map_err(|e| format!("WebSocket handshake failed: {e}"))?;

        let metrics = &self.shared.metrics;
        let clock = &self.shared.clock;
        metrics
            .relays_connected
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let _gauge = ConnectedGuard(metrics);
        metrics.relay(&self.url, |c| c.connects += 1);
        let _ = self.reports.send(Input::Connected { id: self.id }).await;
        tracing::info!(relay = %self.url, id = %self.id, "connected to relay");

        let reconcile = self.shared.reconcile_config();
        let method = self
            .shared
            .negentropy_of(&self.url)
            .method(&reconcile, clock.now());
        let mut session = ConnectionSession::reconciling(
            subscriptions,
            limits.history,
            self.shared.marks_of(&self.url),
            (reconcile, method),
            (clock.now(), clock.unix_now()),
        );
        let mut bucket = TokenBucket::new(limits.events_per_second, self.runtime.now());
        let mut last_heard = self.runtime.now();
        let mut pinged = false;
        loop {
            self.flush(&mut session, &mut ws, &mut bucket).await?;
            let silent_until = last_heard + limits.ping_after * if pinged { 2 } else { 1 };
            let wake_at = match session.poll_timeout() {
                Some(due) => silent_until.min(clock.instant(due)),
                None => silent_until,
            };
            let next = ws.next();
            let control = pin!(self.control.recv());
            let sleep = self.runtime.sleep_until(wake_at);
            match select(select(next, control), sleep).await {
                Either::Left((Either::Left((frame, _)), _)) => {
                    last_heard = self.runtime.now();
                    pinged = false;
                    session.set_now(clock.unix_now());
                    session.set_time(clock.now());
                    match frame {
                        Some(Ok(Message::Text(text))) => session.handle_text(text.as_str()),
                        Some(Ok(Message::Close(_))) | None => return Ok(()),
                        Some(Ok(_)) => {} // pings are answered by tungstenite; binary is not NIP-01
                        Some(Err(e)) => return Err(format!("connection broke: {e}")),
                    }
                }
                Either::Left((Either::Right((control, _)), _)) => match control {
                    Ok(Control::Update { open, close }) => {
                        session.set_now(clock.unix_now());
                        session.set_time(clock.now());
                        session.update(open, close);
                    }
                    Err(_) => {
                        let _ = ws.close(None).await;
                        return Ok(());
                    }
                },
                Either::Right(_) if self.runtime.now() < silent_until => {
                    session.handle_timeout(clock.now());
                }
                Either::Right(_) if pinged => {
                    return Err(format!(
                        "relay silent for {:?}, even to a ping",
                        limits.ping_after * 2
                    ))
                }
                Either::Right(_) => {
                    pinged = true;
                    ws.send(Message::Ping(Vec::new().into()))
                        .await
                        .map_err(|e| format!("ping failed: {e}"))?;
                }
            }
        }
    }

    /// Carries out what the session wants: frames out, events on, history reports.
    async fn flush<S>(
        &self,
        session: &mut ConnectionSession,
        ws: &mut async_tungstenite::WebSocketStream<S>,
        bucket: &mut TokenBucket,
    ) -> Result<(), String>
    where
        S: futures_util::io::AsyncRead + futures_util::io::AsyncWrite + Unpin,
    {
        let metrics = &self.shared.metrics;
        while let Some(output) = session.poll_output() {
            match output {
                Output::Send(text) => ws
                    .send(Message::text(text))
                    .await
                    .map_err(|e| format!("sending to the relay failed: {e}"))?,
                Output::Deliver(event) => {
                    FollowMetrics::add(&metrics.events_received);
                    let _ = self
                        .reports
                        .send(Input::EventReceived { id: self.id })
                        .await;
                    if let Err(why) = verify_signature(&event) {
                        FollowMetrics::add(&metrics.invalid_events);
                        metrics.relay(&self.url, |c| c.invalid += 1);
                        tracing::debug!(relay = %self.url, id = %event.id, %why, "relay sent an invalid event");
                        continue;
                    }
                    while let Err(wait) = bucket.take(self.runtime.now()) {
                        FollowMetrics::add(&metrics.rate_limited);
                        self.runtime.sleep(wait).await;
                    }
                    if self
                        .events
                        .send((Arc::clone(&self.url), event))
                        .await
                        .is_err()
                    {
                        return Err("the event consumer has stopped".into());
                    }
                }
                Output::HistoryComplete(subscription, mark) => {
                    self.shared.remember_mark(&self.url, subscription, mark);
                    let _ = self
                        .reports
                        .send(Input::Eose {
                            id: self.id,
                            subscription,
                        })
                        .await;
                }
                Output::Note(note) => tracing::debug!(relay = %self.url, "{note}"),
                Output::NeedItems { filter, cap } => {
                    let items = match (self.shared.local_items.get(), nostr_filter(&filter)) {
                        (Some(read), Ok(filter)) => read(filter, cap).await,
                        (None, _) => Err("our own items cannot be read".into()),
                        (_, Err(error)) => Err(error),
                    };
                    session.local_items(items);
                }
                Output::NegentropyFailed(reason) => {
                    let now = self.shared.clock.now();
                    let config = self.shared.limits.reconcile;
                    self.shared
                        .update_negentropy(&self.url, |s| s.fell_back(&config, now));
                    FollowMetrics::add(&metrics.reconcile_fallbacks);
                    tracing::info!(relay = %self.url, %reason, retry_after = ?config.retry_after, "relay cannot reconcile (NIP-77); paging its history");
                }
                Output::NegentropyWorked => {
                    FollowMetrics::add(&metrics.reconciled);
                    self.shared
                        .update_negentropy(&self.url, NegentropySupport::reconciled);
                }
            }
        }
        Ok(())
    }

    async fn tls_handshake(&self, url: &Url, stream: Connection) -> Result<Connection, String> {
        let name = match url.host() {
            Some(Host::Domain(d)) => ServerName::try_from(d.to_owned())
                .map_err(|e| format!("{d:?} is not a TLS server name: {e}"))?,
            Some(Host::Ipv4(ip)) => ServerName::from(std::net::IpAddr::from(ip)),
            Some(Host::Ipv6(ip)) => ServerName::from(std::net::IpAddr::from(ip)),
            None => return Err("relay URL has no host".into()),
        };
        let connector = TlsConnector::from(Arc::clone(&self.shared.tls));
        let tls = connector
            .connect(name, stream)
            .await
            .map_err(|e| format!("TLS handshake failed: {e}"))?;
        Ok(Box::new(tls))
    }

    /// The relay's addresses, every one checked: a name that resolves to any non-public
    /// address is refused unless private relays are allowed. Only these are connected to.
    async fn resolve(&self, url: &Url) -> Result<Vec<SocketAddr>, String> {
        let port = url.port_or_known_default().unwrap_or(80);
        let host = match url.host() {
            None => return Err("relay URL has no host".into()),
            Some(Host::Domain(domain)) => domain.to_owned(),
            Some(Host::Ipv4(ip)) => ip.to_string(),
            Some(Host::Ipv6(ip)) => ip.to_string(),
        };
        resolve_checked(&*self.runtime, &host, port, self.shared.allow_private)
            .await
            .map_err(|e| match e {
                ResolveError::NotPublic { .. } => format!("{e} (see --allow-private-relays)"),
                ResolveError::Dns(_) => e.to_string(),
            })
    }

    async fn connect_any(&self, addrs: &[SocketAddr]) -> Result<Connection, String> {
        let mut last = String::new();
        for addr in addrs {
            match self.runtime.connect_tcp(*addr).await {
                Ok(stream) => return Ok(stream),
                Err(e) => last = format!("connecting to {addr} failed: {e}"),
            }
        }
        Err(last)
    }

    /// Runs `work` unless the driver drops this connection first (`None` then).
    async fn until_disconnected<T>(&self, work: impl std::future::Future<Output = T>) -> Option<T> {
        let closed = pin!(async {
            // Updates only come after `Connected`; before it, only the channel closing matters.
            while self.control.recv().await.is_ok() {}
        });
        match select(pin!(work), closed).await {
            Either::Left((value, _)) => Some(value),
            Either::Right(_) => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        follow: FollowArgs,
    }

    #[test]
    fn bootstrap_relays_are_repeatable_and_comma_separated() {
        let cli = Cli::try_parse_from([
            "graspd",
            "--bootstrap-relay",
            "wss://a.example",
            "--bootstrap-relay",
            "wss://b.example,wss://c.example",
        ])
        .unwrap();
        let config = cli.follow.config();
        assert_eq!(
            config.bootstrap_relays,
            ["wss://a.example", "wss://b.example", "wss://c.example"]
        );
        assert!(!config.allow_private_relays);
    }

    #[test]
    fn recent_ids_forget_the_oldest() {
        let mut recent = RecentIds::new(2);
        let id = |n: u8| EventId::from_byte_array([n; 32]);
        assert!(recent.insert(id(1)) && recent.insert(id(2)));
        assert!(!recent.insert(id(1)));
        assert!(recent.insert(id(3)));
        assert!(recent.insert(id(1)), "1 was forgotten when 3 came");
        recent.forget(&id(3));
        assert!(recent.insert(id(3)), "3 was forgotten when refused");
        assert!(!recent.insert(id(3)));
    }
}
