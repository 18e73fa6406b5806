//! GRASP-02 event sync, the deciding half: which relays to follow, with which subscriptions,
//! when to connect and when to back off. Sans-IO like the engine: every input carries `now`,
//! connections are commands with ids, their outcomes come back as inputs.
//!
//! The relays followed are the `relays` of every accepted announcement (and of its
//! maintainers' announcements, which the host adds the same way), minus this server, plus the
//! bootstrap relays from the configuration. Each relay is asked for announcements and states
//! with our identifiers (`#d`), events tagging our repositories (`#a`) and events tagging the
//! events we follow (`#e`, `#E`), in chunks, so many repositories are few subscriptions.
//!
//! With `FollowConfig::relay_leases` (several instances on one store) a relay is connected only
//! under its lease, so each relay is followed by one instance: the follower asks for the lease
//! ([`Command::AcquireLease`]) when it would connect, connects once [`Input::Leased`] comes,
//! disconnects at [`Input::LeaseLost`], and gives the lease back ([`Command::ReleaseLease`])
//! when nothing wants the relay any more, and while it backs off after a failed connection (so
//! an instance that cannot reach a relay does not keep the others from following it). What the holder receives reaches the others through
//! the shared store.
//!
//! What does not fit (a relay when `max_relays` are tracked, a value when a relay's
//! subscription budget is full) waits in a bounded list and is admitted, oldest refusal first,
//! when an input frees room: a relay forgotten, a repository or thread dropped. Never on a
//! timer, so nothing is retried in a loop.
//!
//! ```text
//! follower.handle_input(now, Input::Announcement(announcement));
//! while let Some(command) = follower.poll_command() { /* Connect / UpdateSubscriptions / Disconnect */ }
//! follower.handle_input(now, Input::Connected { id });
//! if let Some((at, _reason)) = follower.poll_timeout() { /* wake at `at`, then */ }
//! follower.handle_timeout(now);
//! ```

mod admission;
mod config;
mod filters;
pub mod reconcile;
pub mod relay_url;
mod timers;
mod waitlist;

#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::fmt;

use crate::acceptance::OwnService;
use crate::events::Announcement;
use crate::ids::{EventId, RepoKey};
use crate::replaceable::supersedes;
use crate::time::Time;

pub use config::{parse_relay_list, FollowConfig};
pub use filters::{Filter, SubKey, Subscription, TagFilter};
pub use timers::FollowTimer;

use filters::{Chunks, Inserted};
use timers::Timers;
use waitlist::{Remembered, Waitlist};

/// Correlates a `Connect` with the inputs reporting on that connection. A new connection to
/// the same relay gets a new id, so reports about an old one are ignored.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Debug)]
pub struct ConnectionId(pub u64);

impl fmt::Display for ConnectionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "relay-conn#{}", self.0)
    }
}

/// What the host tells the follower.
#[derive(Clone, Debug)]
pub enum Input {
    /// An announcement was accepted (stored or released), or a maintainer's announcement of an
    /// accepted repository was. Older versions and duplicates change nothing.
    Announcement(Announcement),
    /// The repository is no longer hosted (deleted, or expired without data).
    RepositoryRemoved(RepoKey),
    /// The repository's announcement is served now (released from purgatory, or accepted
    /// with its data here). What its relays sent while it was followed waiting (issues,
    /// comments, anything tagging it) was refused then, as tagging nothing hosted: the
    /// subscriptions covering it read their histories again, in the next update.
    RepositoryHosted(RepoKey),
    /// An accepted event tagging `repo` (PR, issue, patch): follow the events tagging it too.
    Thread { repo: RepoKey, root: EventId },
    /// The WebSocket handshake completed; the subscriptions of the `Connect` are being sent.
    Connected { id: ConnectionId },
    /// The connection could not be made, or broke with an error.
    Failed { id: ConnectionId, reason: String },
    /// The relay closed the connection (or the host did after a `Disconnect`).
    Closed { id: ConnectionId },
    /// One event arrived on the connection (counted; the host checks and stores it).
    EventReceived { id: ConnectionId },
    /// A subscription's stored history is complete (NIP-01 `EOSE`).
    Eose {
        id: ConnectionId,
        subscription: SubKey,
    },
    /// The relay's lease was acquired (after an [`Command::AcquireLease`]): connect to it.
    Leased { url: String },
    /// The relay's lease could not be renewed in time: another instance may follow it now.
    LeaseLost { url: String },
}

/// What the follower asks the host to do.
#[derive(Clone, PartialEq, Eq, Debug)]
pub enum Command {
    /// Open a WebSocket to `url` and, once connected, send these subscriptions.
    Connect {
        id: ConnectionId,
        url: String,
        subscriptions: Vec<Subscription>,
    },
    /// Replace or add the `open` subscriptions (same key: CLOSE the old REQ first) and CLOSE
    /// the `close` ones.
    UpdateSubscriptions {
        id: ConnectionId,
        open: Vec<Subscription>,
        close: Vec<SubKey>,
    },
    /// Close the connection; a `Closed` for it is neither needed nor harmful.
    Disconnect { id: ConnectionId },
    /// Acquire the relay's lease and keep trying (another instance may hold it) until it is
    /// given back; report [`Input::Leased`] and [`Input::LeaseLost`]. Only with
    /// `FollowConfig::relay_leases`.
    AcquireLease { url: String },
    /// Give the relay's lease back, held or still wanted.
    ReleaseLease { url: String },
}

/// A relay the follower starts or stops following, for the host's log. A relay is followed
/// while it is a bootstrap relay or a hosted repository or thread is followed on it (whether
/// or not a connection is up: that is the connection's own story).
#[derive(Clone, PartialEq, Eq, Debug)]
pub enum FollowChange {
    Started {
        url: String,
        bootstrap: bool,
        repositories: usize,
    },
    Stopped {
        url: String,
    },
}

/// Counters and gauges for metrics.
#[derive(Clone, Default, Debug, PartialEq, Eq)]
pub struct FollowStats {
    pub relays_tracked: usize,
    pub relays_connected: usize,
    pub relays_connecting: usize,
    pub repositories_followed: usize,
    pub threads_followed: usize,
    pub connects: u64,
    /// Connects to a relay that had been connected (or tried) before.
    pub reconnects: u64,
    pub failures: u64,
    pub events_received: u64,
    /// Values not followed because a relay's subscription budget was full (each refusal; the
    /// value then waits for room).
    pub values_over_budget: u64,
    /// Relays not followed because `max_relays` were tracked (each refusal; the relay then
    /// waits for room).
    pub relays_refused: u64,
    /// Relays waiting for a slot in the relay table now.
    pub relays_waiting: usize,
    /// Values waiting for room in a relay's subscription budget now.
    pub values_waiting: usize,
    /// Waiting relays admitted when a slot freed.
    pub relays_admitted_late: u64,
    /// Waiting values admitted when a subscription had room again.
    pub values_admitted_late: u64,
    /// Refusals not remembered because their waiting list was full (found again by a scan of
    /// the follower's own state when room frees).
    pub refusals_dropped: u64,
    /// `relays` values that are not followable URLs (or are this server).
    pub relay_urls_ignored: u64,
}

/// One relay as metrics see it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RelayStatus {
    pub url: String,
    /// Followed now: a bootstrap relay, or some repository or thread is followed on it.
    pub followed: bool,
    pub bootstrap: bool,
    pub connected: bool,
    pub consecutive_failures: u32,
    pub retry_at: Option<Time>,
    pub repositories: usize,
    pub threads: usize,
    /// Repositories and threads waiting for room in this relay's subscription budget.
    pub values_waiting: usize,
    pub events_received: u64,
    pub connects: u64,
    /// Followed, but its lease is held by another instance, which follows it.
    pub followed_elsewhere: bool,
}

/// One value a relay is asked about: a repository (`#d`/`#a`) or a followed event (`#e`).
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Debug)]
enum Value {
    Repo(RepoKey),
    Thread(EventId),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Link {
    Down,
    Connecting {
        id: ConnectionId,
    },
    Up {
        id: ConnectionId,
        since: Time,
        history_complete: bool,
    },
}

/// Where this follower stands on a relay's lease (only with `FollowConfig::relay_leases`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum RelayLease {
    /// Not asked for.
    None,
    /// Asked for; held elsewhere or not acquired yet.
    Wanted,
    /// Held: the relay may be connected.
    Held,
}

#[derive(Debug)]
struct Relay {
    bootstrap: bool,
    lease: RelayLease,
    repos: Chunks<RepoKey>,
    threads: Chunks<EventId>,
    link: Link,
    consecutive_failures: u32,
    /// While down: not before this time (`None`: whenever a connection slot is free).
    retry_at: Option<Time>,
    /// What the relay was last sent.
    sent: BTreeMap<SubKey, Subscription>,
    /// When the last subscription update went out (`None`: none on this connection yet, so
    /// the next change goes out at once).
    last_update: Option<Time>,
    /// Repositories or threads changed since `sent`.
    dirty: bool,
    /// Subscriptions sent unchanged whose histories are to be read again.
    reread: BTreeSet<SubKey>,
    /// Values refused for the subscription budget, waiting for room.
    waiting: Waitlist<Value>,
    events_received: u64,
    connects: u64,
    /// Whether its following was last reported started (`FollowChange`).
    reported_followed: bool,
}

impl Relay {
    fn new(bootstrap: bool, config: &FollowConfig) -> Relay {
        // At most what the relay could ever be asked at once.
        let cap = config
            .chunk_size
            .saturating_mul(config.max_subscriptions_per_relay)
            .max(1);
        Relay {
            bootstrap,
            lease: RelayLease::None,
            repos: Chunks::default(),
            threads: Chunks::default(),
            waiting: Waitlist::new(cap),
            link: Link::Down,
            consecutive_failures: 0,
            retry_at: None,
            sent: BTreeMap::new(),
            last_update: None,
            dirty: false,
            reread: BTreeSet::new(),
            events_received: 0,
            connects: 0,
            reported_followed: false,
        }
    }

    fn wanted(&self) -> bool {
        self.bootstrap || !self.repos.is_empty() || !self.threads.is_empty()
    }

    fn subscription_count(&self) -> usize {
        usize::from(self.bootstrap) + self.repos.chunk_count() + self.threads.chunk_count()
    }

    fn follows(&self, value: &Value) -> bool {
        match value {
            Value::Repo(key) => self.repos.contains(key),
            Value::Thread(id) => self.threads.contains(id),
        }
    }

    /// Inserts `value` within the subscription budget. On no room, packs both kinds into as
    /// few subscriptions as they fit (holes left by removals) and tries once more.
    fn insert(&mut self, value: &Value, size: usize, max_subs: usize) -> Inserted {
        let inserted = self.try_insert(value, size, max_subs);
        if inserted != Inserted::NoRoom {
            return inserted;
        }
        // Both, not short-circuited: either kind's holes may make room.
        let freed = self.repos.compact(size) | self.threads.compact(size);
        if !freed {
            return Inserted::NoRoom;
        }
        self.dirty = true;
        self.try_insert(value, size, max_subs)
    }

    fn try_insert(&mut self, value: &Value, size: usize, max_subs: usize) -> Inserted {
        let may_open = self.subscription_count() < max_subs;
        match value {
            Value::Repo(key) => self.repos.insert(key.clone(), size, may_open),
            Value::Thread(id) => self.threads.insert(*id, size, may_open),
        }
    }

    fn link_id(&self) -> Option<ConnectionId> {
        match self.link {
            Link::Down => None,
            Link::Connecting { id } | Link::Up { id, .. } => Some(id),
        }
    }

    fn desired(&self) -> BTreeMap<SubKey, Subscription> {
        let mut subs = BTreeMap::new();
        if self.bootstrap {
            subs.insert(SubKey::Discovery, filters::discovery());
        }
        for (i, chunk) in self.repos.iter() {
            subs.insert(SubKey::Repos(i), filters::repos(i, chunk));
        }
        for (i, chunk) in self.threads.iter() {
            subs.insert(SubKey::Threads(i), filters::threads(i, chunk));
        }
        subs
    }
}

#[derive(Debug)]
struct FollowedRepo {
    id: EventId,
    created_at: u64,
    /// Followable relays its announcement lists (normalised, not this server, at most
    /// `max_relays_per_announcement`).
    listed: BTreeSet<String>,
    /// The listed relays actually tracked for it; the others wait for room.
    relays: BTreeSet<String>,
}

/// The relay-following state machine. See the module documentation.
pub struct RelayFollower {
    config: FollowConfig,
    own: OwnService,
    now: Time,
    next_id: u64,
    bootstrap: BTreeSet<String>,
    repos: BTreeMap<RepoKey, FollowedRepo>,
    threads: BTreeMap<EventId, (RepoKey, u64)>,
    thread_order: BTreeMap<u64, EventId>,
    threads_by_repo: BTreeMap<RepoKey, BTreeSet<EventId>>,
    next_thread_seq: u64,
    relays: BTreeMap<String, Relay>,
    /// Repositories listing each relay (`FollowedRepo::listed`, inverted). A tracked relay is
    /// in the `relays` of every repository listing it.
    listers: BTreeMap<String, BTreeSet<RepoKey>>,
    /// Listed relays refused for `max_relays`, waiting for a slot (at most `max_relays`).
    waiting_relays: Waitlist<String>,
    /// A relay lost a value since the last reconcile, so it may be idle (a slot to reuse).
    slot_may_have_freed: bool,
    /// Relays that lost a value since the last reconcile: their waiting values may fit.
    budget_freed: BTreeSet<String>,
    connections: BTreeMap<ConnectionId, String>,
    timers: Timers,
    commands: VecDeque<Command>,
    /// Started/stopped following, not yet polled (at most `max_relays`: oldest dropped).
    changes: VecDeque<FollowChange>,
    needs_reconcile: bool,
    stats: FollowStats,
}

impl RelayFollower {
    /// A follower for the server at `own`; bootstrap relays are followed from the start.
    /// Call once at start-up, then feed it the stored announcements as
    /// [`Input::Announcement`]s and drain `poll_command`.
    pub fn new(config: FollowConfig, own: OwnService) -> RelayFollower {
        let mut follower = RelayFollower {
            own,
            now: Time::ZERO,
            next_id: 0,
            bootstrap: BTreeSet::new(),
            repos: BTreeMap::new(),
            threads: BTreeMap::new(),
            thread_order: BTreeMap::new(),
            threads_by_repo: BTreeMap::new(),
            next_thread_seq: 0,
            relays: BTreeMap::new(),
            listers: BTreeMap::new(),
            waiting_relays: Waitlist::new(config.max_relays),
            slot_may_have_freed: false,
            budget_freed: BTreeSet::new(),
            connections: BTreeMap::new(),
            timers: Timers::default(),
            commands: VecDeque::new(),
            changes: VecDeque::new(),
            needs_reconcile: true,
            stats: FollowStats::default(),
            config,
        };
        for raw in follower.config.bootstrap_relays.clone() {
            if let Some(url) = follower.followable(&raw) {
                if follower.bootstrap.len() < follower.config.max_relays {
                    follower.bootstrap.insert(url.clone());
                    let relay = Relay::new(true, &follower.config);
                    follower.relays.insert(url, relay);
                }
            }
        }
        follower
    }

    /// The configuration the follower was built with.
    pub fn config(&self) -> &FollowConfig {
        &self.config
    }

    /// Call when something it follows changed (an announcement or thread accepted, a
    /// repository removed) or a connection reports (connected, failed, closed, an event, EOSE).
    /// Drain `poll_command` afterwards and re-read `poll_timeout`.
    pub fn handle_input(&mut self, now: Time, input: Input) {
        self.advance(now);
        match input {
            Input::Announcement(a) => self.follow_announcement(a),
            Input::RepositoryRemoved(repo) => self.forget_repo(&repo),
            Input::RepositoryHosted(repo) => self.reread_repo(&repo),
            Input::Thread { repo, root } => self.follow_thread(repo, root),
            Input::Connected { id } => self.on_connected(id),
            Input::Failed { id, reason: _ } => {
                if let Some(url) = self.connections.get(&id).cloned() {
                    self.link_down(&url, true);
                }
            }
            Input::Closed { id } => {
                if let Some(url) = self.connections.get(&id).cloned() {
                    self.link_down(&url, false);
                }
            }
            Input::EventReceived { id } => {
                if let Some(relay) = self.relay_of(id) {
                    relay.events_received += 1;
                    self.stats.events_received += 1;
                }
            }
            Input::Leased { url } => self.leased(url),
            Input::LeaseLost { url } => self.lease_lost(&url),
            Input::Eose {
                id,
                subscription: _,
            } => {
                if let Some(relay) = self.relay_of(id) {
                    if let Link::Up {
                        history_complete, ..
                    } = &mut relay.link
                    {
                        *history_complete = true;
                    }
                }
            }
        }
    }

    /// Call when the instant `poll_timeout` named has come (early or late is harmless:
    /// everything due by `now` runs). Drain `poll_command` afterwards.
    pub fn handle_timeout(&mut self, now: Time) {
        self.advance(now);
        // Inputs since the last poll may have armed timers that are already due.
        self.reconcile();
        while let Some(reason) = self.timers.pop_due(now) {
            match reason {
                // The relay's `retry_at` has passed; the reconcile connects it if still wanted.
                FollowTimer::Reconnect(_) => self.needs_reconcile = true,
                FollowTimer::ConnectDeadline(id) => {
                    if let Some(url) = self.connections.get(&id).cloned() {
                        if matches!(self.relays[&url].link, Link::Connecting { .. }) {
                            self.commands.push_back(Command::Disconnect { id });
                            self.link_down(&url, true);
                        }
                    }
                }
                FollowTimer::Resubscribe(url) => self.resubscribe(&url),
            }
        }
    }

    /// The next command for the host, after acting on everything fed in so far, until `None`.
    /// Drain it after every `handle_input` and `handle_timeout`.
    #[must_use = "a command not run leaves a relay unconnected or its subscriptions stale"]
    pub fn poll_command(&mut self) -> Option<Command> {
        self.reconcile();
        self.commands.pop_front()
    }

    /// The next relay whose following started or stopped, after acting on everything fed in
    /// so far (for the host's log).
    #[must_use]
    pub fn poll_change(&mut self) -> Option<FollowChange> {
        self.reconcile();
        self.changes.pop_front()
    }

    /// When to call `handle_timeout` next, and why; `None` while nothing is timed. Read it
    /// again after every call that changes the follower.
    #[must_use]
    pub fn poll_timeout(&mut self) -> Option<(Time, FollowTimer)> {
        self.reconcile();
        self.timers.next().map(|(t, r)| (t, r.clone()))
    }

    /// Counts for metrics, read at each scrape.
    #[must_use]
    pub fn stats(&self) -> FollowStats {
        let mut stats = self.stats.clone();
        stats.relays_tracked = self.relays.len();
        stats.relays_connected = self
            .relays
            .values()
            .filter(|r| matches!(r.link, Link::Up { .. }))
            .count();
        stats.relays_connecting = self
            .relays
            .values()
            .filter(|r| matches!(r.link, Link::Connecting { .. }))
            .count();
        stats.repositories_followed = self.repos.len();
        stats.threads_followed = self.threads.len();
        stats.relays_waiting = self.waiting_relays.len();
        stats.values_waiting = self.relays.values().map(|r| r.waiting.len()).sum();
        stats
    }

    /// Every tracked relay, in URL order (for metrics and the operator).
    pub fn relay_statuses(&self) -> impl Iterator<Item = RelayStatus> + '_ {
        self.relays.iter().map(|(url, r)| RelayStatus {
            url: url.clone(),
            followed: r.wanted(),
            bootstrap: r.bootstrap,
            connected: matches!(r.link, Link::Up { .. }),
            consecutive_failures: r.consecutive_failures,
            retry_at: r.retry_at,
            repositories: r.repos.len(),
            threads: r.threads.len(),
            values_waiting: r.waiting.len(),
            events_received: r.events_received,
            connects: r.connects,
            followed_elsewhere: r.wanted() && r.lease == RelayLease::Wanted,
        })
    }

    /// The relay a connection belongs to, if it is still that relay's connection: the host
    /// asks before acting on what an old connection reports.
    #[must_use]
    pub fn connection_url(&self, id: ConnectionId) -> Option<&str> {
        self.connections.get(&id).map(String::as_str)
    }

    fn advance(&mut self, now: Time) {
        self.now = self.now.max(now);
    }

    fn relay_of(&mut self, id: ConnectionId) -> Option<&mut Relay> {
        let url = self.connections.get(&id)?;
        self.relays.get_mut(url)
    }

    /// The canonical URL if `raw` may be followed: a public ws(s) URL that is not this server.
    fn followable(&mut self, raw: &str) -> Option<String> {
        // Any URL on our own origin is us, whatever its path: never follow ourselves.
        let url = relay_url::followable(raw, self.config.allow_private_relays, &self.own).ok();
        if url.is_none() {
            self.stats.relay_urls_ignored += 1;
        }
        url
    }

    /// Marks the subscriptions covering `repo` on its connected relays to be read again.
    fn reread_repo(&mut self, repo: &RepoKey) {
        let Some(followed) = self.repos.get(repo) else {
            return;
        };
        for url in followed.relays.union(&self.bootstrap) {
            let Some(relay) = self.relays.get_mut(url) else {
                continue;
            };
            // A relay not up reads every history when it connects.
            if !matches!(relay.link, Link::Up { .. }) {
                continue;
            }
            if let Some(chunk) = relay.repos.chunk_of(repo) {
                relay.reread.insert(SubKey::Repos(chunk));
                relay.dirty = true;
                self.needs_reconcile = true;
            }
        }
    }

    fn follow_announcement(&mut self, a: Announcement) {
        let key = RepoKey::new(a.owner, a.identifier.clone());
        if let Some(old) = self.repos.get(&key) {
            if !supersedes((a.created_at, &a.id), (old.created_at, &old.id)) {
                return;
            }
        }
        let mut listed = BTreeSet::new();
        for raw in &a.relays {
            if listed.len() >= self.config.max_relays_per_announcement {
                break;
            }
            if let Some(url) = self.followable(raw) {
                listed.insert(url);
            }
        }
        let (old_listed, old_tracked) = match self.repos.get_mut(&key) {
            Some(entry) => {
                entry.id = a.id;
                entry.created_at = a.created_at;
                (
                    std::mem::take(&mut entry.listed),
                    std::mem::take(&mut entry.relays),
                )
            }
            None => {
                self.repos.insert(
                    key.clone(),
                    FollowedRepo {
                        id: a.id,
                        created_at: a.created_at,
                        listed: BTreeSet::new(),
                        relays: BTreeSet::new(),
                    },
                );
                // A new repository is followed on every bootstrap relay.
                for url in self.bootstrap.clone() {
                    self.attach(&key, &url);
                }
                (BTreeSet::new(), BTreeSet::new())
            }
        };
        for url in old_listed.difference(&listed) {
            self.unlist(&key, url);
        }
        for url in old_tracked.difference(&listed) {
            self.detach(&key, url);
        }
        for url in &listed {
            self.listers
                .entry(url.clone())
                .or_default()
                .insert(key.clone());
        }
        let entry = self.repos.get_mut(&key).expect("inserted above");
        entry.relays = old_tracked.intersection(&listed).cloned().collect();
        entry.listed = listed.clone();
        // Relays already tracked first: they need no slot, and once attached they are not
        // idle, so making room for the others cannot forget them (seed 11928).
        let (tracked, untracked): (Vec<String>, Vec<String>) = listed
            .into_iter()
            .partition(|url| self.relays.contains_key(url));
        for url in tracked {
            self.attach_listers(&url);
        }
        for url in untracked {
            if self.track(&url) {
                self.waiting_relays.remove(&url);
                self.attach_listers(&url);
            } else {
                self.stats.relays_refused += 1;
                if self.waiting_relays.remember(url) == Remembered::Dropped {
                    self.stats.refusals_dropped += 1;
                }
            }
        }
    }

    /// `key` no longer lists `url`; a relay nobody lists stops waiting for a slot.
    fn unlist(&mut self, key: &RepoKey, url: &str) {
        if let Some(keys) = self.listers.get_mut(url) {
            keys.remove(key);
            if keys.is_empty() {
                self.listers.remove(url);
                self.waiting_relays.remove(&url.to_owned());
            }
        }
    }

    /// Follows every repository listing `url` (now tracked) on it.
    fn attach_listers(&mut self, url: &str) {
        let keys: Vec<RepoKey> = self
            .listers
            .get(url)
            .map(|keys| keys.iter().cloned().collect())
            .unwrap_or_default();
        for key in keys {
            let Some(entry) = self.repos.get_mut(&key) else {
                continue;
            };
            if entry.relays.insert(url.to_owned()) {
                self.attach(&key, url);
            }
        }
    }

    fn forget_repo(&mut self, key: &RepoKey) {
        let Some(entry) = self.repos.remove(key) else {
            return;
        };
        for url in &entry.listed {
            self.unlist(key, url);
        }
        for id in self.threads_by_repo.remove(key).unwrap_or_default() {
            if let Some((_, seq)) = self.threads.remove(&id) {
                self.thread_order.remove(&seq);
            }
        }
        let urls: BTreeSet<String> = entry.relays.union(&self.bootstrap).cloned().collect();
        for url in &urls {
            self.remove_value(url, &Value::Repo(key.clone()));
        }
        // Threads were removed from the maps above; drop them from the relays too.
        for url in &urls {
            self.drop_stale_threads(url);
        }
        self.needs_reconcile = true;
    }

    /// Drops from `url` the threads no longer followed (forgotten in bulk).
    fn drop_stale_threads(&mut self, url: &str) {
        let Some(relay) = self.relays.get(url) else {
            return;
        };
        let stale: Vec<EventId> = relay
            .threads
            .iter()
            .flat_map(|(_, c)| c.iter().copied())
            .filter(|id| !self.threads.contains_key(id))
            .collect();
        for id in stale {
            self.remove_value(url, &Value::Thread(id));
        }
        let threads = &self.threads;
        if let Some(relay) = self.relays.get_mut(url) {
            relay.waiting.retain(|v| match v {
                Value::Thread(id) => threads.contains_key(id),
                Value::Repo(_) => true,
            });
        }
    }

    fn follow_thread(&mut self, repo: RepoKey, root: EventId) {
        if !self.repos.contains_key(&repo) || self.threads.contains_key(&root) {
            return;
        }
        if self.threads.len() >= self.config.max_threads {
            if let Some((_, oldest)) = self.thread_order.pop_first() {
                self.forget_thread(&oldest);
            }
        }
        let seq = self.next_thread_seq;
        self.next_thread_seq += 1;
        self.threads.insert(root, (repo.clone(), seq));
        self.thread_order.insert(seq, root);
        self.threads_by_repo
            .entry(repo.clone())
            .or_default()
            .insert(root);
        for url in self.relays_of(&repo) {
            self.insert_value(&url, Value::Thread(root));
        }
    }

    fn forget_thread(&mut self, root: &EventId) {
        let Some((repo, seq)) = self.threads.remove(root) else {
            return;
        };
        self.thread_order.remove(&seq);
        if let Some(set) = self.threads_by_repo.get_mut(&repo) {
            set.remove(root);
            if set.is_empty() {
                self.threads_by_repo.remove(&repo);
            }
        }
        for url in self.relays_of(&repo) {
            self.remove_value(&url, &Value::Thread(*root));
        }
        self.needs_reconcile = true;
    }

    /// Announced relays of `repo` plus the bootstrap relays.
    fn relays_of(&self, repo: &RepoKey) -> BTreeSet<String> {
        let mut urls = self.bootstrap.clone();
        if let Some(entry) = self.repos.get(repo) {
            urls.extend(entry.relays.iter().cloned());
        }
        urls
    }

    /// Makes sure `url` is tracked; false if `max_relays` are and none is idle. An idle relay
    /// (wanted by nothing, disconnected, listed by no repository) is forgotten to make room;
    /// a listed one never is, since it would be tracked afresh with its backoff reset.
    fn track(&mut self, url: &str) -> bool {
        if self.relays.contains_key(url) {
            return true;
        }
        if self.relays.len() >= self.config.max_relays {
            let idle = self
                .relays
                .iter()
                .find(|(u, r)| {
                    !r.wanted() && r.link == Link::Down && !self.listers.contains_key(*u)
                })
                .map(|(u, _)| u.clone());
            let Some(idle) = idle else {
                return false;
            };
            if let Some(forgotten) = self.relays.remove(&idle) {
                if forgotten.lease != RelayLease::None {
                    self.commands
                        .push_back(Command::ReleaseLease { url: idle.clone() });
                }
            }
            self.budget_freed.remove(&idle);
            self.timers.cancel(&FollowTimer::Reconnect(idle.clone()));
            self.timers.cancel(&FollowTimer::Resubscribe(idle));
        }
        let relay = Relay::new(false, &self.config);
        self.relays.insert(url.to_owned(), relay);
        true
    }

    /// Follows `repo` (and its threads) on `url`.
    fn attach(&mut self, repo: &RepoKey, url: &str) {
        let threads: Vec<EventId> = self
            .threads_by_repo
            .get(repo)
            .map(|s| s.iter().copied().collect())
            .unwrap_or_default();
        self.insert_value(url, Value::Repo(repo.clone()));
        for id in threads {
            self.insert_value(url, Value::Thread(id));
        }
    }

    /// Asks `url` about `value` if its subscription budget allows; otherwise the value waits
    /// for room on that relay.
    fn insert_value(&mut self, url: &str, value: Value) {
        let (size, max_subs) = (
            self.config.chunk_size,
            self.config.max_subscriptions_per_relay,
        );
        let Some(relay) = self.relays.get_mut(url) else {
            return;
        };
        match relay.insert(&value, size, max_subs) {
            Inserted::New => {
                relay.dirty = true;
                relay.waiting.remove(&value);
            }
            Inserted::AlreadyThere => {}
            Inserted::NoRoom => {
                self.stats.values_over_budget += 1;
                if relay.waiting.remember(value) == Remembered::Dropped {
                    self.stats.refusals_dropped += 1;
                }
            }
        }
        self.needs_reconcile = true;
    }

    /// Stops asking `url` about `value` (and stops it waiting there). Room freed on a relay
    /// is what lets waiting values and relays in, at the next reconcile.
    fn remove_value(&mut self, url: &str, value: &Value) {
        let Some(relay) = self.relays.get_mut(url) else {
            return;
        };
        relay.waiting.remove(value);
        let removed = match value {
            Value::Repo(key) => relay.repos.remove(key),
            Value::Thread(id) => relay.threads.remove(id),
        };
        if removed {
            relay.dirty = true;
            self.budget_freed.insert(url.to_owned());
            self.slot_may_have_freed = true;
        }
        self.needs_reconcile = true;
    }

    /// Stops following `repo` (and its threads) on `url`, unless `url` is a bootstrap relay,
    /// which follows every repository.
    fn detach(&mut self, repo: &RepoKey, url: &str) {
        if self.bootstrap.contains(url) {
            return;
        }
        let threads: Vec<EventId> = self
            .threads_by_repo
            .get(repo)
            .map(|s| s.iter().copied().collect())
            .unwrap_or_default();
        self.remove_value(url, &Value::Repo(repo.clone()));
        for id in threads {
            self.remove_value(url, &Value::Thread(id));
        }
    }

    fn on_connected(&mut self, id: ConnectionId) {
        let now = self.now;
        let Some(url) = self.connections.get(&id).cloned() else {
            return;
        };
        let relay = self
            .relays
            .get_mut(&url)
            .expect("connections index tracked relays");
        if relay.link != (Link::Connecting { id }) {
            return;
        }
        relay.link = Link::Up {
            id,
            since: now,
            history_complete: false,
        };
        self.timers.cancel(&FollowTimer::ConnectDeadline(id));
        self.needs_reconcile = true;
    }

    /// The connection of `url` ended; `failed` if it ended in an error. A connection that had
    /// been healthy resets the backoff; one that never was counts as another failure.
    fn link_down(&mut self, url: &str, failed: bool) {
        let now = self.now;
        let config = &self.config;
        let relay = self
            .relays
            .get_mut(url)
            .expect("connections index tracked relays");
        let healthy = match relay.link {
            Link::Up {
                since,
                history_complete,
                ..
            } => history_complete || now.saturating_since(since) >= config.stable_after,
            _ => false,
        };
        if let Some(id) = relay.link_id() {
            self.connections.remove(&id);
            self.timers.cancel(&FollowTimer::ConnectDeadline(id));
        }
        self.timers
            .cancel(&FollowTimer::Resubscribe(url.to_owned()));
        if healthy {
            relay.consecutive_failures = 0;
        }
        if failed || !healthy {
            relay.consecutive_failures = relay.consecutive_failures.saturating_add(1);
            self.stats.failures += 1;
        }
        let delay = match relay.consecutive_failures {
            0 => config.backoff_initial,
            n => config.backoff_delay(n),
        };
        relay.link = Link::Down;
        relay.sent.clear();
        relay.retry_at = Some(now + delay);
        // A failed connection gives the relay's lease back while this instance backs off:
        // another instance, which may reach the relay, can take it meanwhile. It is asked
        // for again when the backoff ends.
        if relay.consecutive_failures > 0 && relay.lease != RelayLease::None {
            relay.lease = RelayLease::None;
            self.commands.push_back(Command::ReleaseLease {
                url: url.to_owned(),
            });
        }
        self.timers
            .set(FollowTimer::Reconnect(url.to_owned()), now + delay);
        self.needs_reconcile = true;
    }

    fn resubscribe(&mut self, url: &str) {
        let now = self.now;
        let Some(relay) = self.relays.get_mut(url) else {
            return;
        };
        let Link::Up { id, .. } = relay.link else {
            return;
        };
        let desired = relay.desired();
        let reread = std::mem::take(&mut relay.reread);
        let open: Vec<Subscription> = desired
            .values()
            .filter(|s| relay.sent.get(&s.key) != Some(s) || reread.contains(&s.key))
            .cloned()
            .collect();
        let close: Vec<SubKey> = relay
            .sent
            .keys()
            .filter(|k| !desired.contains_key(k))
            .copied()
            .collect();
        relay.dirty = false;
        if open.is_empty() && close.is_empty() {
            return;
        }
        relay.sent = desired;
        relay.last_update = Some(now);
        self.commands
            .push_back(Command::UpdateSubscriptions { id, open, close });
    }

    /// Acts on everything that changed: disconnects relays nobody wants, admits what waited
    /// for the room that freed, schedules subscription updates, and connects the wanted relays
    /// that may connect, up to `max_connections`.
    fn reconcile(&mut self) {
        if !std::mem::take(&mut self.needs_reconcile) {
            return;
        }
        self.disconnect_unwanted();
        self.admit_waiting();
        let now = self.now;
        let mut open = 0;
        let mut candidates = Vec::new();
        let mut update_now = Vec::new();
        for (url, relay) in &mut self.relays {
            if relay.wanted() != relay.reported_followed {
                relay.reported_followed = relay.wanted();
                if self.changes.len() >= self.config.max_relays.max(1) {
                    self.changes.pop_front();
                }
                self.changes.push_back(if relay.reported_followed {
                    FollowChange::Started {
                        url: url.clone(),
                        bootstrap: relay.bootstrap,
                        repositories: relay.repos.len(),
                    }
                } else {
                    FollowChange::Stopped { url: url.clone() }
                });
            }
            match relay.link {
                Link::Connecting { .. } => open += 1,
                Link::Up { .. } => {
                    open += 1;
                    if relay.dirty {
                        // The first change after a quiet spell goes out at once; changes that
                        // follow it within the interval coalesce into one update.
                        match relay.last_update {
                            Some(last) if last + self.config.resubscribe_interval > now => {
                                self.timers.set_if_unarmed(
                                    FollowTimer::Resubscribe(url.clone()),
                                    last + self.config.resubscribe_interval,
                                );
                            }
                            _ => update_now.push(url.clone()),
                        }
                    }
                }
                Link::Down => {
                    if relay.wanted() && relay.retry_at.is_none_or(|t| t <= now) {
                        if self.config.relay_leases && relay.lease != RelayLease::Held {
                            if relay.lease == RelayLease::None {
                                relay.lease = RelayLease::Wanted;
                                self.commands
                                    .push_back(Command::AcquireLease { url: url.clone() });
                            }
                            continue;
                        }
                        candidates.push((
                            !relay.bootstrap,
                            std::cmp::Reverse(relay.repos.len()),
                            url.clone(),
                        ));
                    }
                }
            }
        }
        for url in update_now {
            self.timers.cancel(&FollowTimer::Resubscribe(url.clone()));
            self.resubscribe(&url);
        }
        candidates.sort();
        let free = self.config.max_connections.saturating_sub(open);
        for (_, _, url) in candidates.into_iter().take(free) {
            self.connect(&url);
        }
    }

    /// Closes the connections of relays nobody wants any more and gives their leases back;
    /// they become idle.
    fn disconnect_unwanted(&mut self) {
        for (url, relay) in &mut self.relays {
            if relay.wanted() {
                continue;
            }
            if relay.lease != RelayLease::None {
                relay.lease = RelayLease::None;
                self.commands
                    .push_back(Command::ReleaseLease { url: url.clone() });
            }
            let (Link::Connecting { id } | Link::Up { id, .. }) = relay.link else {
                continue;
            };
            self.commands.push_back(Command::Disconnect { id });
            self.connections.remove(&id);
            self.timers.cancel(&FollowTimer::ConnectDeadline(id));
            self.timers.cancel(&FollowTimer::Resubscribe(url.clone()));
            relay.link = Link::Down;
            relay.sent.clear();
            relay.retry_at = None;
            self.slot_may_have_freed = true;
        }
    }

    /// The host acquired `url`'s lease: connect it at the next reconcile. A lease nobody
    /// wants any more goes back at once.
    fn leased(&mut self, url: String) {
        match self.relays.get_mut(&url) {
            Some(relay) if relay.lease == RelayLease::Wanted => {
                relay.lease = RelayLease::Held;
                self.needs_reconcile = true;
            }
            Some(relay) if relay.lease == RelayLease::Held => {}
            _ => self.commands.push_back(Command::ReleaseLease { url }),
        }
    }

    /// The host could not renew `url`'s lease in time: another instance may follow the relay
    /// now, so its connection closes (not a failure: no backoff). The lease stays wanted while
    /// the relay is.
    fn lease_lost(&mut self, url: &str) {
        let Some(relay) = self.relays.get_mut(url) else {
            return;
        };
        if relay.lease != RelayLease::Held {
            return;
        }
        relay.lease = RelayLease::Wanted;
        if let Some(id) = relay.link_id() {
            self.commands.push_back(Command::Disconnect { id });
            self.connections.remove(&id);
            self.timers.cancel(&FollowTimer::ConnectDeadline(id));
            self.timers
                .cancel(&FollowTimer::Resubscribe(url.to_owned()));
            relay.link = Link::Down;
            relay.sent.clear();
            relay.retry_at = None;
        }
        self.needs_reconcile = true;
    }

    fn connect(&mut self, url: &str) {
        let now = self.now;
        let id = ConnectionId(self.next_id);
        self.next_id += 1;
        let relay = self.relays.get_mut(url).expect("candidates are tracked");
        let desired = relay.desired();
        if relay.connects > 0 {
            self.stats.reconnects += 1;
        }
        relay.connects += 1;
        relay.link = Link::Connecting { id };
        relay.retry_at = None;
        relay.dirty = false;
        relay.reread.clear();
        relay.last_update = None;
        relay.sent = desired.clone();
        self.stats.connects += 1;
        self.connections.insert(id, url.to_owned());
        self.timers.cancel(&FollowTimer::Reconnect(url.to_owned()));
        self.timers.set(
            FollowTimer::ConnectDeadline(id),
            now + self.config.connect_timeout,
        );
        self.commands.push_back(Command::Connect {
            id,
            url: url.to_owned(),
            subscriptions: desired.into_values().collect(),
        });
    }
}
