//! Plays the host of the GRASP-02 relay follower against a [`RelayWorld`] in virtual time.
//!
//! The simulator executes the follower's commands against the simulated relays, reports the
//! outcomes as inputs, and passes every event a relay sends through the host's checks: the
//! signature first (`verify_signature`), then a real engine with `Arrival::Synced`. An event
//! the synced engine takes is offered to a second engine, fed the same accepted events, as
//! `Arrival::Published`: the published path must take it too. Invariants are checked after
//! every step; liveness after the heal.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use graspd_core::events::{self, verify_signature};
use graspd_core::follow::{
    relay_url, Command, ConnectionId, FollowConfig, Input, RelayFollower, SubKey, Subscription,
};
use graspd_core::{Arrival, Config, Engine, EventId, PublicKey, RepoKey, Time, Verdict};
use nostr::event::Event;

use crate::relays::{own_service, Behaviour, RelayWorld};
use crate::runner::FailureKind;
use crate::trace;
use crate::trace::{Trace, TraceMode};
use crate::world::{nip01_prefers, OWN_ORIGIN};

/// Steps before a run is declared stuck (a timer re-arming at `now` forever).
const MAX_STEPS: u64 = 200_000;
/// Event ids the host remembers per run for the "accepted twice" check (bounded like the
/// host's recent-id cache; worlds hold far fewer).
const MAX_REMEMBERED: usize = 10_000;

/// What the simulated host does with relay events (`SkipVerify` proves the checks bite).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum HostChecks {
    Verify,
    SkipVerify,
}

#[derive(Clone, Debug)]
pub struct RelayFailure {
    pub kind: FailureKind,
    pub at: Time,
    pub message: String,
}

#[derive(Clone, Debug, Default)]
pub struct RelayStats {
    pub steps: u64,
    pub connects: u64,
    pub events_delivered: u64,
    pub bad_signatures: u64,
    pub accepted: u64,
    pub duplicates: u64,
    pub rejected: u64,
    /// Older announcement versions accepted again after a newer one (engine finding).
    pub superseded_reaccepted: u64,
    /// 1 if at the end everything wanted fit every budget, so each wanted relay had to be
    /// connected and covering each of its repositories and threads.
    pub full_liveness: u64,
    /// The follower's own counts at the end: relays refused for `max_relays`, values refused
    /// for the subscription budget.
    pub relays_refused: u64,
    pub values_over_budget: u64,
    /// Refused relays and values admitted later, when room freed.
    pub relays_admitted_late: u64,
    pub values_admitted_late: u64,
}

#[derive(Debug)]
pub struct RelayOutcome {
    pub hash: u64,
    pub lines: u64,
    pub stats: RelayStats,
    pub failure: Option<RelayFailure>,
    pub tail: Vec<String>,
}

/// Things scheduled in the world.
#[derive(Clone, Debug)]
enum Action {
    Publish(usize),
    Remove(usize),
    Handshake(ConnectionId),
    /// The relay sends `events` (indices into the world's held events; `forged` picks a lie)
    /// then EOSE for `eose`.
    Send {
        id: ConnectionId,
        event: Wire,
    },
    Eose(ConnectionId, SubKey),
    RelayCloses(ConnectionId),
    Replay(ConnectionId),
}

#[derive(Clone, Copy, Debug)]
enum Wire {
    Genuine(usize),
    Forged(usize, usize),
}

#[derive(Debug)]
struct Conn {
    url: String,
    issued_at: Time,
    up_since: Option<Time>,
    subs: BTreeMap<SubKey, Subscription>,
    eose_seen: bool,
}

/// The simulator's own view of a relay's backoff, kept from what it saw (not asked of the
/// follower): consecutive failures and the earliest allowed reconnect.
#[derive(Debug, Default, Clone, Copy)]
struct Backoff {
    failures: u32,
    earliest: Time,
}

struct Host<'w> {
    world: &'w RelayWorld,
    checks: HostChecks,
    now: Time,
    follower: RelayFollower,
    synced: Engine,
    published: Engine,
    agenda: BTreeMap<(Time, u64), Action>,
    seq: u64,
    conns: BTreeMap<ConnectionId, Conn>,
    backoff: BTreeMap<String, Backoff>,
    accepted: BTreeSet<EventId>,
    /// Every (id, signature) a key holder really produced.
    genuine: BTreeSet<(EventId, [u8; 64])>,
    hosted: BTreeMap<usize, usize>,
    /// Threads the follower was given and keeps (root -> hosted repository), mirrored from
    /// the `Thread` inputs: a thread of a repository not hosted then is ignored.
    threads: BTreeMap<EventId, usize>,
    /// Newest announcement version taken per (owner, identifier).
    newest: BTreeMap<(PublicKey, String), (u64, EventId)>,
    trace: Trace,
    stats: RelayStats,
}

fn engine_config() -> Config {
    Config {
        own_origin: Some(OWN_ORIGIN.to_owned()),
        ..Config::default()
    }
}

pub fn run(world: &RelayWorld, mode: TraceMode) -> RelayOutcome {
    run_with(world, mode, HostChecks::Verify)
}

pub fn run_with(world: &RelayWorld, mode: TraceMode, checks: HostChecks) -> RelayOutcome {
    let mut host = Host {
        world,
        checks,
        now: Time::ZERO,
        follower: RelayFollower::new(world.config.clone(), own_service()),
        synced: Engine::new(engine_config()),
        published: Engine::new(engine_config()),
        agenda: BTreeMap::new(),
        seq: 0,
        conns: BTreeMap::new(),
        backoff: BTreeMap::new(),
        accepted: BTreeSet::new(),
        genuine: world
            .held
            .iter()
            .map(|h| (h.genuine.id, h.genuine.sig.to_bytes()))
            .collect(),
        hosted: BTreeMap::new(),
        threads: BTreeMap::new(),
        newest: BTreeMap::new(),
        trace: Trace::new(mode),
        stats: RelayStats::default(),
    };
    let failure = host.run().err();
    RelayOutcome {
        hash: host.trace.hash(),
        lines: host.trace.line_count(),
        stats: host.stats,
        failure,
        tail: host.trace.tail().map(str::to_owned).collect(),
    }
}

type Step = Result<(), RelayFailure>;

impl Host<'_> {
    fn fail(&self, kind: FailureKind, message: String) -> RelayFailure {
        RelayFailure {
            kind,
            at: self.now,
            message,
        }
    }

    fn schedule(&mut self, at: Time, action: Action) {
        self.seq += 1;
        self.agenda.insert((at, self.seq), action);
    }

    fn run(&mut self) -> Step {
        let w = self.world;
        let c = &w.config;
        trace!(
            self.trace,
            self.now,
            "SEED={} scenario={} relays=[{}] junk={} repos={} max_connections={} max_relays={} \
             max_subs={} chunk={} private={} bootstrap={:?} heal={} end={}",
            w.seed,
            w.name,
            w.relays
                .iter()
                .map(|r| format!("{} {:?} {}ms", r.url, r.behaviour, r.latency.as_millis()))
                .collect::<Vec<_>>()
                .join(", "),
            w.junk.len(),
            w.publications.len(),
            c.max_connections,
            c.max_relays,
            c.max_subscriptions_per_relay,
            c.chunk_size,
            c.allow_private_relays,
            c.bootstrap_relays,
            w.heal_at,
            w.end_at
        );
        for (i, p) in w.publications.iter().enumerate() {
            self.schedule(p.at, Action::Publish(i));
        }
        for (at, repo) in &w.removals {
            self.schedule(*at, Action::Remove(*repo));
        }
        loop {
            self.stats.steps += 1;
            if self.stats.steps > MAX_STEPS {
                return Err(self.fail(
                    FailureKind::Liveness,
                    format!("no quiescence after {MAX_STEPS} steps"),
                ));
            }
            self.drain_commands()?;
            self.check_safety()?;
            let next_action = self.agenda.keys().next().map(|k| k.0);
            let next_timer = self.follower.poll_timeout().map(|t| t.0);
            let next = match (next_action, next_timer) {
                (Some(a), Some(t)) => a.min(t),
                (Some(a), None) => a,
                (None, Some(t)) => t,
                (None, None) => break,
            };
            if next > w.end_at {
                break;
            }
            self.now = self.now.max(next);
            if next_action == Some(next) {
                let (_, action) = self.agenda.pop_first().expect("peeked");
                self.act(action)?;
            } else {
                self.follower.handle_timeout(self.now);
            }
        }
        self.now = self.now.max(w.end_at);
        let fs = self.follower.stats();
        self.stats.relays_refused = fs.relays_refused;
        self.stats.values_over_budget = fs.values_over_budget;
        self.stats.relays_admitted_late = fs.relays_admitted_late;
        self.stats.values_admitted_late = fs.values_admitted_late;
        self.check_liveness()
    }

    fn healed(&self) -> bool {
        self.now >= self.world.heal_at
    }

    fn behaviour(&self, url: &str) -> Behaviour {
        if self.healed() {
            return Behaviour::Healthy;
        }
        self.world
            .relay(url)
            .map_or(Behaviour::Refuses, |r| r.behaviour)
    }

    fn act(&mut self, action: Action) -> Step {
        match action {
            Action::Publish(i) => {
                let p = &self.world.publications[i];
                trace!(
                    self.trace,
                    self.now,
                    "publish repo-{} {} relays={:?}",
                    p.repo,
                    p.event.id,
                    p.announcement.relays
                );
                // The store serves it (its data arrived): both engines know it, the follower
                // follows it.
                self.synced.restore_accepted(&p.event);
                self.published.restore_accepted(&p.event);
                self.accepted.insert(p.event.id);
                self.hosted.insert(p.repo, i);
                let event = p.event.clone();
                self.note_announcement(&event);
                self.follower
                    .handle_input(self.now, Input::Announcement(p.announcement.clone()));
            }
            Action::Remove(repo) => {
                if let Some(i) = self.hosted.remove(&repo) {
                    let a = &self.world.publications[i].announcement;
                    trace!(self.trace, self.now, "remove repo-{repo}");
                    self.threads.retain(|_, r| *r != repo);
                    self.follower.handle_input(
                        self.now,
                        Input::RepositoryRemoved(RepoKey::new(a.owner, a.identifier.clone())),
                    );
                }
            }
            Action::Handshake(id) => self.handshake(id),
            Action::Send { id, event } => self.deliver(id, event)?,
            Action::Eose(id, sub) => {
                if let Some(conn) = self.conns.get_mut(&id) {
                    if conn.subs.contains_key(&sub) {
                        conn.eose_seen = true;
                        self.follower.handle_input(
                            self.now,
                            Input::Eose {
                                id,
                                subscription: sub,
                            },
                        );
                    }
                }
            }
            Action::RelayCloses(id) => {
                if self.conns.contains_key(&id) {
                    trace!(self.trace, self.now, "{id} closed by relay");
                    self.connection_ended(id, false);
                    self.follower.handle_input(self.now, Input::Closed { id });
                }
            }
            Action::Replay(id) => {
                if self.conns.contains_key(&id) && !self.healed() {
                    if let Behaviour::Replays { every } = self.behaviour(&self.conns[&id].url) {
                        self.send_history(id, Duration::ZERO);
                        self.schedule(self.now + every, Action::Replay(id));
                    }
                }
            }
        }
        Ok(())
    }

    fn handshake(&mut self, id: ConnectionId) {
        let Some(conn) = self.conns.get(&id) else {
            return;
        };
        let url = conn.url.clone();
        let behaviour = self.behaviour(&url);
        let up = match behaviour {
            Behaviour::Refuses => false,
            Behaviour::Flaps { period } => {
                (self.now.as_millis() / period.as_millis() as u64).is_multiple_of(2)
            }
            _ => true,
        };
        if !up {
            trace!(self.trace, self.now, "{id} refused by {url}");
            self.connection_ended(id, true);
            self.follower.handle_input(
                self.now,
                Input::Failed {
                    id,
                    reason: "connection refused".into(),
                },
            );
            return;
        }
        trace!(self.trace, self.now, "{id} connected to {url}");
        self.conns.get_mut(&id).expect("checked").up_since = Some(self.now);
        self.follower
            .handle_input(self.now, Input::Connected { id });
        match behaviour {
            Behaviour::Disconnects { after } => {
                self.schedule(self.now + after, Action::RelayCloses(id));
            }
            Behaviour::Flaps { period } => {
                let p = period.as_millis() as u64;
                let end = (self.now.as_millis() / p + 1) * p;
                self.schedule(Time::from_millis(end), Action::RelayCloses(id));
            }
            Behaviour::Replays { every } => self.schedule(self.now + every, Action::Replay(id)),
            _ => {}
        }
        let subs: Vec<SubKey> = self.conns[&id].subs.keys().copied().collect();
        self.answer_subscriptions(id, &subs);
    }

    /// A relay answering new REQs: its stored events, then EOSE for each.
    fn answer_subscriptions(&mut self, id: ConnectionId, subs: &[SubKey]) {
        if subs.is_empty() {
            return;
        }
        let gap = self.send_history(id, Duration::from_millis(1));
        if let Behaviour::Floods { burst } = self.behaviour(&self.conns[&id].url) {
            let n = self.world.held.len();
            for k in 0..burst as usize {
                let event = if k % 3 == 0 {
                    Wire::Genuine(k % n)
                } else {
                    Wire::Forged(k % n, k % 2)
                };
                self.schedule(
                    self.now + gap + Duration::from_millis(k as u64 + 1),
                    Action::Send { id, event },
                );
            }
        }
        let after = self.now + gap + Duration::from_millis(1);
        for sub in subs {
            self.schedule(after, Action::Eose(id, *sub));
        }
    }

    /// Schedules every held event (liars: forged copies first); returns the time it takes.
    fn send_history(&mut self, id: ConnectionId, start: Duration) -> Duration {
        let lies = self.behaviour(&self.conns[&id].url) == Behaviour::Lies;
        let mut at = start;
        for i in 0..self.world.held.len() {
            if lies {
                for f in 0..self.world.held[i].forged.len() {
                    at += Duration::from_millis(1);
                    self.schedule(
                        self.now + at,
                        Action::Send {
                            id,
                            event: Wire::Forged(i, f),
                        },
                    );
                }
            }
            at += Duration::from_millis(1);
            self.schedule(
                self.now + at,
                Action::Send {
                    id,
                    event: Wire::Genuine(i),
                },
            );
        }
        at
    }

    fn deliver(&mut self, id: ConnectionId, wire: Wire) -> Step {
        if self.conns.get(&id).is_none_or(|c| c.up_since.is_none()) {
            return Ok(());
        }
        let event: &Event = match wire {
            Wire::Genuine(i) => &self.world.held[i].genuine,
            Wire::Forged(i, f) => &self.world.held[i].forged[f],
        };
        self.stats.events_delivered += 1;
        self.follower
            .handle_input(self.now, Input::EventReceived { id });
        if self.checks == HostChecks::Verify {
            if let Err(e) = verify_signature(event) {
                self.stats.bad_signatures += 1;
                trace!(self.trace, self.now, "{id} event {} dropped: {e}", event.id);
                return Ok(());
            }
        }
        let verdict = decide(&mut self.synced, self.now, event, Arrival::Synced);
        drain_engine(&mut self.synced);
        match verdict {
            Verdict::Rejected(r) | Verdict::Refused(_, r) => {
                self.stats.rejected += 1;
                trace!(
                    self.trace,
                    self.now,
                    "{id} event {} rejected: {r}",
                    event.id
                );
            }
            Verdict::Duplicate => self.stats.duplicates += 1,
            Verdict::Accepted(_) | Verdict::Waiting(_) => {
                self.stats.accepted += 1;
                trace!(self.trace, self.now, "{id} event {} {verdict:?}", event.id);
                if !self.genuine.contains(&(event.id, event.sig.to_bytes())) {
                    return Err(self.fail(
                        FailureKind::Safety,
                        format!(
                            "event {} from {} accepted ({verdict:?}) with a forged id or \
                             signature",
                            event.id, self.conns[&id].url
                        ),
                    ));
                }
                if self.superseded(event) {
                    // Engine finding (see README): an older version of an announcement already
                    // replaced is answered `Accepted` again on every replay (the engine's
                    // duplicate check compares with the current version only). Harmless to
                    // the engine's state; counted, not failed.
                    self.stats.superseded_reaccepted += 1;
                    trace!(
                        self.trace,
                        self.now,
                        "{id} superseded {} accepted again",
                        event.id
                    );
                    return Ok(());
                }
                self.note_announcement(event);
                if self.accepted.len() < MAX_REMEMBERED && !self.accepted.insert(event.id) {
                    return Err(self.fail(
                        FailureKind::Safety,
                        format!("event {} accepted a second time (replayed)", event.id),
                    ));
                }
                let published = decide(&mut self.published, self.now, event, Arrival::Published);
                drain_engine(&mut self.published);
                if let Verdict::Rejected(r) = published {
                    return Err(self.fail(
                        FailureKind::Safety,
                        format!(
                            "event {} accepted via sync ({verdict:?}) but the published path \
                             refuses it: {r}",
                            event.id
                        ),
                    ));
                }
                if let Ok(Some(events::GitEvent::Pr(pr))) = events::parse(event) {
                    for c in pr.repos {
                        let repo = RepoKey::new(c.author, c.identifier);
                        if let Some(index) = self.hosted_index(&repo) {
                            self.threads.entry(pr.id).or_insert(index);
                        }
                        self.follower
                            .handle_input(self.now, Input::Thread { repo, root: pr.id });
                    }
                }
            }
        }
        Ok(())
    }

    /// The hosted repository `key` names.
    fn hosted_index(&self, key: &RepoKey) -> Option<usize> {
        self.hosted.iter().find_map(|(repo, i)| {
            let a = &self.world.publications[*i].announcement;
            (a.owner == key.owner && a.identifier == key.identifier).then_some(*repo)
        })
    }

    /// An announcement older than the newest version taken (published or synced).
    fn superseded(&self, event: &Event) -> bool {
        let Ok(Some(events::GitEvent::Announcement(a))) = events::parse(event) else {
            return false;
        };
        self.newest
            .get(&(a.owner, a.identifier.to_string()))
            .is_some_and(|(at, id)| nip01_prefers((*at, id), (a.created_at, &a.id)))
    }

    /// Remembers the newest announcement version taken for its repository.
    fn note_announcement(&mut self, event: &Event) {
        if let Ok(Some(events::GitEvent::Announcement(a))) = events::parse(event) {
            let key = (a.owner, a.identifier.to_string());
            let newer = self
                .newest
                .get(&key)
                .is_none_or(|(at, id)| nip01_prefers((a.created_at, &a.id), (*at, id)));
            if newer {
                self.newest.insert(key, (a.created_at, a.id));
            }
        }
    }

    /// Updates the simulator's backoff view when a connection ends.
    fn connection_ended(&mut self, id: ConnectionId, failed: bool) {
        let Some(conn) = self.conns.remove(&id) else {
            return;
        };
        let c = &self.world.config;
        let healthy = conn.up_since.is_some_and(|since| {
            conn.eose_seen || self.now.saturating_since(since) >= c.stable_after
        });
        let b = self.backoff.entry(conn.url.clone()).or_default();
        if healthy {
            b.failures = 0;
        }
        if failed || !healthy {
            b.failures += 1;
        }
        let delay = match b.failures {
            0 => c.backoff_initial,
            n => expected_backoff(c, n),
        };
        b.earliest = self.now + delay;
    }

    fn drain_commands(&mut self) -> Step {
        while let Some(command) = self.follower.poll_command() {
            match command {
                Command::Connect {
                    id,
                    url,
                    subscriptions,
                } => {
                    self.stats.connects += 1;
                    trace!(
                        self.trace,
                        self.now,
                        "connect {id} {url} subs={}",
                        subscriptions.len()
                    );
                    self.check_connect_target(&url)?;
                    if let Some(b) = self.backoff.get(&url) {
                        if self.now < b.earliest {
                            return Err(self.fail(
                                FailureKind::Safety,
                                format!(
                                    "{url} reconnected at {} after {} consecutive failures, \
                                     before its backoff ends at {}",
                                    self.now, b.failures, b.earliest
                                ),
                            ));
                        }
                    }
                    let latency = self.world.relay(&url).map_or(Duration::ZERO, |r| r.latency);
                    let behaviour = self.behaviour(&url);
                    self.conns.insert(
                        id,
                        Conn {
                            url,
                            issued_at: self.now,
                            up_since: None,
                            subs: subscriptions.into_iter().map(|s| (s.key, s)).collect(),
                            eose_seen: false,
                        },
                    );
                    if behaviour != Behaviour::Hangs {
                        self.schedule(self.now + latency, Action::Handshake(id));
                    }
                }
                Command::UpdateSubscriptions { id, open, close } => {
                    trace!(
                        self.trace,
                        self.now,
                        "update {id} open={:?} close={close:?}",
                        open.iter().map(|s| s.key).collect::<Vec<_>>()
                    );
                    let Some(conn) = self.conns.get_mut(&id) else {
                        continue;
                    };
                    for k in &close {
                        conn.subs.remove(k);
                    }
                    let keys: Vec<SubKey> = open.iter().map(|s| s.key).collect();
                    for s in open {
                        conn.subs.insert(s.key, s);
                    }
                    if conn.up_since.is_some() {
                        self.answer_subscriptions(id, &keys);
                    }
                }
                Command::Disconnect { id } => {
                    trace!(self.trace, self.now, "disconnect {id}");
                    if let Some(conn) = self.conns.get(&id) {
                        let timed_out = conn.up_since.is_none()
                            && self.now >= conn.issued_at + self.world.config.connect_timeout;
                        let url = conn.url.clone();
                        if timed_out {
                            self.connection_ended(id, true);
                        } else {
                            // Not wanted any more: no backoff, failures kept.
                            self.conns.remove(&id);
                            if let Some(b) = self.backoff.get_mut(&url) {
                                b.earliest = self.now;
                            }
                        }
                    }
                }
            }
        }
        Ok(())
    }

    fn check_connect_target(&self, url: &str) -> Step {
        let own = own_service();
        if own.is_own_origin(url) {
            return Err(self.fail(
                FailureKind::Safety,
                format!("connect to our own origin: {url}"),
            ));
        }
        let c = &self.world.config;
        if relay_url::normalise(url, c.allow_private_relays).is_err() {
            return Err(self.fail(
                FailureKind::Safety,
                format!("connect to a URL that may not be followed (private?): {url}"),
            ));
        }
        if self.world.junk.iter().any(|j| {
            relay_url::normalise(j, true).is_ok_and(|n| n == url) && !c.allow_private_relays
        }) {
            return Err(self.fail(FailureKind::Safety, format!("connect to junk URL {url}")));
        }
        Ok(())
    }

    fn check_safety(&mut self) -> Step {
        let c = &self.world.config;
        if self.conns.len() > c.max_connections {
            return Err(self.fail(
                FailureKind::Safety,
                format!(
                    "{} connections open, max_connections is {}",
                    self.conns.len(),
                    c.max_connections
                ),
            ));
        }
        for (id, conn) in &self.conns {
            if conn.subs.len() > c.max_subscriptions_per_relay {
                return Err(self.fail(
                    FailureKind::Safety,
                    format!(
                        "{id} to {} has {} subscriptions, max is {}",
                        conn.url,
                        conn.subs.len(),
                        c.max_subscriptions_per_relay
                    ),
                ));
            }
            if conn.up_since.is_none() && self.now > conn.issued_at + c.connect_timeout {
                return Err(self.fail(
                    FailureKind::Safety,
                    format!(
                        "{id} to {} issued at {} neither answered nor timed out",
                        conn.url, conn.issued_at
                    ),
                ));
            }
        }
        let stats = self.follower.stats();
        if stats.relays_tracked > c.max_relays {
            return Err(self.fail(
                FailureKind::Safety,
                format!(
                    "{} relays tracked, max_relays is {}",
                    stats.relays_tracked, c.max_relays
                ),
            ));
        }
        if stats.threads_followed > c.max_threads {
            return Err(self.fail(
                FailureKind::Safety,
                format!("{} threads followed", stats.threads_followed),
            ));
        }
        // A relay the follower forgot starts afresh.
        let tracked: BTreeSet<String> = self.follower.relay_statuses().map(|s| s.url).collect();
        self.backoff.retain(|url, _| tracked.contains(url));
        Ok(())
    }

    /// After the heal every relay is healthy and the follower has had time to act on every
    /// freeing of room. What it must follow is computed here from the world, as the follower
    /// is documented to choose it (bootstrap relays, then each hosted announcement's first
    /// `max_relays_per_announcement` followable relays):
    /// - no relay stays connected that nothing wants;
    /// - relay slots: a wanted relay is untracked only if every `max_relays` slot holds a
    ///   wanted relay (a slot held by an unwanted relay is room: the waiting relay must have
    ///   taken it);
    /// - connections: every tracked wanted relay is connected, or `max_connections` are;
    /// - values: a connected relay whose repositories and threads fit its subscription budget
    ///   covers each (`#d`, `#a`, `#e`); one that does not fit uses its whole budget.
    fn check_liveness(&mut self) -> Step {
        let c = &self.world.config;
        let mut bootstrap: BTreeSet<String> = BTreeSet::new();
        for raw in &c.bootstrap_relays {
            if bootstrap.len() < c.max_relays {
                bootstrap.extend(followable(c, raw));
            }
        }
        // Wanted relay -> the hosted repositories it follows.
        let mut wanted: BTreeMap<String, BTreeSet<usize>> = BTreeMap::new();
        for b in &bootstrap {
            wanted.insert(b.clone(), self.hosted.keys().copied().collect());
        }
        for (repo, i) in &self.hosted {
            for url in listed(c, &self.world.publications[*i].announcement.relays) {
                wanted.entry(url).or_default().insert(*repo);
            }
        }
        let tracked: BTreeSet<String> = self.follower.relay_statuses().map(|s| s.url).collect();
        let connected: BTreeMap<&str, &Conn> = self
            .conns
            .values()
            .filter(|c| c.up_since.is_some())
            .map(|c| (c.url.as_str(), c))
            .collect();
        for url in connected.keys() {
            if !wanted.contains_key(*url) {
                return Err(self.fail(
                    FailureKind::Liveness,
                    format!("{url} still connected though no hosted repository lists it"),
                ));
            }
        }

        if let Some((url, repos)) = wanted.iter().find(|(u, _)| !tracked.contains(*u)) {
            let unwanted: Vec<&String> = tracked
                .iter()
                .filter(|u| !wanted.contains_key(*u))
                .collect();
            if tracked.len() < c.max_relays || !unwanted.is_empty() {
                return Err(self.fail(
                    FailureKind::Liveness,
                    format!(
                        "{url} (listed for {repos:?}) not tracked after the heal, though {} of \
                         max_relays {} slots are used and {unwanted:?} are no longer wanted; \
                         follower {:?}",
                        tracked.len(),
                        c.max_relays,
                        self.follower.stats()
                    ),
                ));
            }
        }

        let wanted_tracked: Vec<&String> = wanted.keys().filter(|u| tracked.contains(*u)).collect();
        if wanted_tracked.len() <= c.max_connections {
            if let Some(url) = wanted_tracked
                .iter()
                .find(|u| !connected.contains_key(u.as_str()))
            {
                return Err(self.fail(
                    FailureKind::Liveness,
                    format!(
                        "{url} (listed for {:?}) not connected after the heal; follower {:?}",
                        wanted[*url],
                        self.follower.relay_statuses().find(|s| &s.url == *url)
                    ),
                ));
            }
        } else if connected.len() < c.max_connections {
            return Err(self.fail(
                FailureKind::Liveness,
                format!(
                    "{} relays connected after the heal, {} wanted and tracked, \
                     max_connections {}",
                    connected.len(),
                    wanted_tracked.len(),
                    c.max_connections
                ),
            ));
        }

        let mut everything_followed =
            wanted_tracked.len() == wanted.len() && wanted.len() <= c.max_connections;
        for (url, conn) in &connected {
            let repos = &wanted[*url];
            let threads: Vec<EventId> = self
                .threads
                .iter()
                .filter(|(_, repo)| repos.contains(repo))
                .map(|(root, _)| *root)
                .collect();
            let boot = usize::from(bootstrap.contains(*url));
            let needed =
                boot + repos.len().div_ceil(c.chunk_size) + threads.len().div_ceil(c.chunk_size);
            if needed > c.max_subscriptions_per_relay {
                everything_followed = false;
                if conn.subs.len() < c.max_subscriptions_per_relay {
                    return Err(self.fail(
                        FailureKind::Liveness,
                        format!(
                            "{url} needs {needed} subscriptions for {repos:?} and {} threads \
                             but has {} of {} after the heal",
                            threads.len(),
                            conn.subs.len(),
                            c.max_subscriptions_per_relay
                        ),
                    ));
                }
                continue;
            }
            for repo in repos {
                let a = &self.world.publications[self.hosted[repo]].announcement;
                let coordinate = format!("30617:{}:{}", a.owner.to_hex(), a.identifier);
                if !covers(&conn.subs, a.identifier.as_str(), &coordinate) {
                    return Err(self.fail(
                        FailureKind::Liveness,
                        format!(
                            "{url} connected, its budget fits, but no subscription covers \
                             repo-{repo}; follower {:?}",
                            self.follower.relay_statuses().find(|s| s.url == **url)
                        ),
                    ));
                }
            }
            for root in &threads {
                if !covers_thread(&conn.subs, &root.to_hex()) {
                    return Err(self.fail(
                        FailureKind::Liveness,
                        format!(
                            "{url} connected, its budget fits, but no subscription covers \
                             thread {root}"
                        ),
                    ));
                }
            }
        }
        self.stats.full_liveness = u64::from(everything_followed);
        Ok(())
    }
}

/// The canonical URL of `raw` if the follower may follow it (as `RelayFollower` decides).
fn followable(c: &FollowConfig, raw: &str) -> Option<String> {
    let own = own_service();
    if own.is_own_origin(raw) || own.is_own_relay_url(raw) {
        return None;
    }
    relay_url::normalise(raw, c.allow_private_relays)
        .ok()
        .filter(|url| !own.is_own_origin(url))
}

/// The relays an announcement's `relays` values make the follower want: the first
/// `max_relays_per_announcement` followable ones.
fn listed(c: &FollowConfig, relays: &[String]) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for raw in relays {
        if out.len() >= c.max_relays_per_announcement {
            break;
        }
        out.extend(followable(c, raw));
    }
    out
}

/// The backoff the follower must respect after `failures` consecutive failures: 5 s doubling
/// to 1 h with the production configuration.
fn expected_backoff(c: &FollowConfig, failures: u32) -> Duration {
    let mut d = c.backoff_initial;
    for _ in 1..failures.min(40) {
        d = (d * 2).min(c.backoff_max);
    }
    d.min(c.backoff_max)
}

fn covers(subs: &BTreeMap<SubKey, Subscription>, identifier: &str, coordinate: &str) -> bool {
    let d = subs.values().flat_map(|s| &s.filters).any(|f| {
        f.kinds.contains(&events::KIND_STATE)
            && f.tag
                .as_ref()
                .is_some_and(|t| t.letter == 'd' && t.values.iter().any(|v| v == identifier))
    });
    let a = subs.values().flat_map(|s| &s.filters).any(|f| {
        f.tag
            .as_ref()
            .is_some_and(|t| t.letter == 'a' && t.values.iter().any(|v| v == coordinate))
    });
    d && a
}

fn covers_thread(subs: &BTreeMap<SubKey, Subscription>, root: &str) -> bool {
    subs.values().flat_map(|s| &s.filters).any(|f| {
        f.tag
            .as_ref()
            .is_some_and(|t| t.letter == 'e' && t.values.iter().any(|v| v == root))
    })
}

/// Hands `event` to `engine` and reports an admitted one durable at once (this world models
/// no store; the main simulator exercises delayed and failed writes).
fn decide(engine: &mut Engine, now: Time, event: &Event, arrival: Arrival) -> Verdict {
    let verdict = engine.handle_event(now, event.clone(), arrival);
    if let Verdict::Waiting(ticket) | Verdict::Accepted(ticket) = verdict {
        engine.handle_input(now, graspd_core::Input::Persisted { ticket });
    }
    verdict
}

fn drain_engine(engine: &mut Engine) {
    while engine.poll_command().is_some() {}
    while engine.poll_event().is_some() {}
}

/// A failure report: what broke, the last trace lines, how to reproduce.
pub fn report(world: &RelayWorld, outcome: &RelayOutcome) -> String {
    let mut out = String::new();
    if let Some(f) = &outcome.failure {
        out.push_str(&format!(
            "FAILED {:?} at {}: {}\n  last trace lines:\n",
            f.kind, f.at, f.message
        ));
        for line in &outcome.tail {
            out.push_str(&format!("    {line}\n"));
        }
        out.push_str(&format!("  reproduce: {}\n", repro(world)));
    }
    out
}

pub fn repro(world: &RelayWorld) -> String {
    if world.name == "random" {
        format!(
            "cargo run -p graspd-sim --release -- --relays --seed {}",
            world.seed
        )
    } else {
        format!(
            "cargo run -p graspd-sim --release -- --scenario {} --seed {}",
            world.name, world.seed
        )
    }
}

/// Runs `world` twice; the trace hashes must match.
pub fn check_determinism(world: &RelayWorld) -> Result<u64, String> {
    let a = run(world, TraceMode::Quiet);
    let b = run(world, TraceMode::Quiet);
    if a.hash == b.hash && a.lines == b.lines {
        Ok(a.hash)
    } else {
        Err(format!(
            "seed {} ({}): trace hashes differ: {:016x} ({} lines) vs {:016x} ({} lines)",
            world.seed, world.name, a.hash, a.lines, b.hash, b.lines
        ))
    }
}
