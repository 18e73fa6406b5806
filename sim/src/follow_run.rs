//! Plays the host of the GRASP-02 relay follower against a [`RelayWorld`] in virtual time.
//!
//! The simulator executes the follower's commands against the simulated relays, reports the
//! outcomes as inputs, and passes every event a relay sends through the host's checks: the
//! signature first (`verify_signature`), then a real engine with `Arrival::Synced`. An event
//! the synced engine takes is offered to a second engine, fed the same accepted events, as
//! `Arrival::Published`: the published path must take it too. Invariants are checked after
//! every step; liveness after the heal.
//!
//! Each connection's histories are read by the host's own sans-IO session
//! (`graspd_host::follow::ConnectionSession`): NIP-77 negentropy first, paged REQ when the
//! relay cannot reconcile. The simulated relays answer its frames, honestly or not; the
//! session's bounds (messages per exchange, frame size, ids asked for, how long an
//! unanswered exchange stays open) are checked on every frame.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use graspd_core::events::{self, verify_signature};
use graspd_core::follow::reconcile::NegentropySupport;
use graspd_core::follow::{
    relay_url, Command, ConnectionId, FollowConfig, Input, RelayFollower, SubKey, Subscription,
};
use graspd_core::{Arrival, Config, Engine, EventId, PublicKey, RepoKey, Time, Verdict};
use graspd_host::follow::{ConnectionSession, HistoryMarks, Output};
use graspd_host::relay::negentropy::negentropy_over;
use negentropy::{Negentropy, NegentropyStorageVector};
use nostr::event::Event;
use serde_json::{json, Value};

use crate::relay_wire::{self, matches, matches_filter};
use crate::relays::{own_service, Abort, Behaviour, Nip77, RelayWorld, EPOCH_SECS};
use crate::runner::FailureKind;
use crate::trace;
use crate::trace::{Trace, TraceMode};
use crate::world::{nip01_prefers, OWN_ORIGIN};

/// Steps before a run is declared stuck (a timer re-arming at `now` forever).
const MAX_STEPS: u64 = 200_000;
/// Event ids the host remembers per run for the "accepted twice" check (bounded like the
/// host's recent-id cache; worlds hold far fewer).
const MAX_REMEMBERED: usize = 10_000;
/// Largest frame a relay commonly takes (128 KiB); negentropy frames must fit.
const MAX_FRAME_CHARS: usize = 128 * 1024;
/// Largest negentropy message the simulated relays send (the protocol's smallest), so that
/// exchanges take several rounds.
const RELAY_FRAME_BYTES: u64 = 4096;

/// What the simulated host does with relay events (`SkipVerify` proves the checks bite;
/// `UnboundedRounds` lifts the session's bound on messages per exchange, which a relay that
/// never agrees must then be caught holding open).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum HostChecks {
    Verify,
    SkipVerify,
    UnboundedRounds,
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
    /// NIP-77: exchanges opened, completed (the session said it worked), given up for the
    /// paged REQ (the relay blamed), histories read by REQ pages, events fetched by id.
    pub neg_opened: u64,
    pub neg_worked: u64,
    pub neg_fallbacks: u64,
    pub pages: u64,
    pub fetched_by_id: u64,
    /// Genuine events the relays hold that arrived (verified) at least once.
    pub arrived: u64,
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
    /// A text frame from the relay reaches the connection.
    Frame {
        id: ConnectionId,
        text: String,
    },
    RelayCloses(ConnectionId),
    Replay(ConnectionId),
    /// Every fault stops; relays that misbehaved restart (their connections close).
    Heal,
}

/// One event on the wire: held genuine event `i`, or its `f`th forgery.
#[derive(Clone, Copy, Debug)]
enum Wire {
    Genuine(usize),
    Forged(usize, usize),
}

struct Conn {
    url: String,
    issued_at: Time,
    up_since: Option<Time>,
    subs: BTreeMap<SubKey, Subscription>,
    eose_seen: bool,
    /// The host's session reading this connection (from the handshake on).
    session: Option<ConnectionSession>,
    /// What the relay holds open for this connection.
    relay: RelaySide,
    /// Frames from the relay arrive in order: none before this.
    next_frame_at: Time,
}

#[derive(Default)]
struct RelaySide {
    /// Open REQs: id -> filters.
    reqs: BTreeMap<String, Vec<Value>>,
    /// Open reconciliations by id.
    negs: BTreeMap<String, NegOpen>,
    /// Ids asked for by id under one subscription id since it was last closed.
    asked: BTreeMap<String, usize>,
    /// A flooding relay floods once per connection, after its first history page.
    flooded: bool,
}

struct NegOpen {
    /// The relay's side (none for a relay that never agrees).
    server: Option<Negentropy<'static, NegentropyStorageVector>>,
    /// Messages of ours in this exchange, the NEG-OPEN included.
    rounds: usize,
    opened_at: Time,
    /// The relay stopped answering our message sent then.
    unanswered_since: Option<Time>,
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
    /// What our store serves (published announcements, accepted events): the items our side
    /// reconciles.
    served: BTreeMap<EventId, Event>,
    /// Genuine events that reached the engine at least once.
    arrived: BTreeSet<EventId>,
    /// Per relay, kept across connections as the host keeps them: whether it reconciles, and
    /// how far its histories were read.
    support: BTreeMap<String, NegentropySupport>,
    marks: BTreeMap<String, HistoryMarks>,
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
        served: BTreeMap::new(),
        arrived: BTreeSet::new(),
        support: BTreeMap::new(),
        marks: BTreeMap::new(),
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
                .map(|r| format!(
                    "{} {:?} {:?} {}ms",
                    r.url,
                    r.behaviour,
                    r.nip77,
                    r.latency.as_millis()
                ))
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
        self.schedule(w.heal_at, Action::Heal);
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
            let next_session = self
                .conns
                .values()
                .filter_map(|c| c.session.as_ref()?.poll_timeout())
                .min();
            let Some(next) = [next_action, next_timer, next_session]
                .into_iter()
                .flatten()
                .min()
            else {
                break;
            };
            if next > w.end_at {
                break;
            }
            self.now = self.now.max(next);
            if next_action == Some(next) {
                let (_, action) = self.agenda.pop_first().expect("peeked");
                self.act(action)?;
            } else if next_timer == Some(next) {
                self.follower.handle_timeout(self.now);
            } else {
                self.session_timeouts()?;
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
                self.served.insert(p.event.id, p.event.clone());
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
            Action::Handshake(id) => self.handshake(id)?,
            Action::Frame { id, text } => {
                let now = self.now;
                let Some(session) = self.conns.get_mut(&id).and_then(|c| c.session.as_mut()) else {
                    return Ok(());
                };
                session.set_time(now);
                session.set_now(unix_secs(now));
                session.handle_text(&text);
                self.pump(id)?;
            }
            Action::Heal => {
                let restarting: Vec<ConnectionId> = self
                    .conns
                    .iter()
                    .filter(|(_, c)| {
                        c.up_since.is_some()
                            && self.world.relay(&c.url).is_some_and(|r| {
                                r.behaviour != Behaviour::Healthy
                                    || !matches!(r.nip77, Nip77::Honest | Nip77::Unsupported)
                            })
                    })
                    .map(|(id, _)| *id)
                    .collect();
                trace!(self.trace, self.now, "heal; restarting {restarting:?}");
                for id in restarting {
                    self.connection_ended(id, false);
                    self.follower.handle_input(self.now, Input::Closed { id });
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
                        let live: Vec<(String, Vec<Value>)> = self.conns[&id]
                            .relay
                            .reqs
                            .iter()
                            .map(|(sub, filters)| (sub.clone(), filters.clone()))
                            .collect();
                        for (sub, filters) in live {
                            self.send_matching(id, &sub, &filters, usize::MAX);
                        }
                        self.schedule(self.now + every, Action::Replay(id));
                    }
                }
            }
        }
        Ok(())
    }

    fn handshake(&mut self, id: ConnectionId) -> Step {
        let Some(conn) = self.conns.get(&id) else {
            return Ok(());
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
            return Ok(());
        }
        trace!(self.trace, self.now, "{id} connected to {url}");
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
        // As the host's connection task does: the relay's history method as learned so far,
        // its marks, and the subscriptions wanted by now.
        let method = self
            .support
            .get(&url)
            .copied()
            .unwrap_or_default()
            .method(&self.reconcile_config(), self.now);
        let session = ConnectionSession::reconciling(
            self.conns[&id].subs.values().cloned().collect(),
            self.world.history,
            self.marks.get(&url).cloned().unwrap_or_default(),
            (self.reconcile_config(), method),
            (self.now, unix_secs(self.now)),
        );
        let conn = self.conns.get_mut(&id).expect("checked");
        conn.up_since = Some(self.now);
        conn.session = Some(session);
        self.pump(id)
    }

    fn reconcile_config(&self) -> graspd_core::follow::reconcile::ReconcileConfig {
        let mut config = self.world.reconcile;
        if self.checks == HostChecks::UnboundedRounds {
            config.max_rounds = usize::MAX;
        }
        config
    }

    /// Overdue reconciliation answers: the sessions fall back.
    fn session_timeouts(&mut self) -> Step {
        let now = self.now;
        let due: Vec<ConnectionId> = self
            .conns
            .iter()
            .filter(|(_, c)| {
                c.session
                    .as_ref()
                    .and_then(ConnectionSession::poll_timeout)
                    .is_some_and(|t| t <= now)
            })
            .map(|(id, _)| *id)
            .collect();
        for id in due {
            if let Some(session) = self.conns.get_mut(&id).and_then(|c| c.session.as_mut()) {
                session.handle_timeout(now);
            }
            self.pump(id)?;
        }
        Ok(())
    }

    /// Carries out what connection `id`'s session wants, as the host's connection task does.
    fn pump(&mut self, id: ConnectionId) -> Step {
        loop {
            let Some(conn) = self.conns.get_mut(&id) else {
                return Ok(());
            };
            let Some(output) = conn
                .session
                .as_mut()
                .and_then(ConnectionSession::poll_output)
            else {
                return Ok(());
            };
            match output {
                Output::Send(text) => self.relay_receives(id, &text)?,
                Output::Deliver(event) => self.deliver(id, &event)?,
                Output::HistoryComplete(key, mark) => {
                    let conn = self.conns.get_mut(&id).expect("checked");
                    conn.eose_seen = true;
                    let url = conn.url.clone();
                    trace!(self.trace, self.now, "{id} history of {key} read");
                    self.marks.entry(url).or_default().insert(key, mark);
                    self.follower.handle_input(
                        self.now,
                        Input::Eose {
                            id,
                            subscription: key,
                        },
                    );
                }
                Output::Note(note) => trace!(self.trace, self.now, "{id} {note}"),
                Output::NeedItems { filter, cap } => {
                    let max = self.reconcile_config().max_items;
                    if cap > max.saturating_add(1) {
                        return Err(self.fail(
                            FailureKind::Safety,
                            format!("{id} asked for {cap} of our items, max_items is {max}"),
                        ));
                    }
                    let items: Vec<(u64, EventId)> = self
                        .served
                        .values()
                        .filter(|e| matches_filter(&filter, e))
                        .take(cap)
                        .map(|e| (e.created_at.as_secs(), e.id))
                        .collect();
                    let conn = self.conns.get_mut(&id).expect("checked");
                    conn.session
                        .as_mut()
                        .expect("it spoke")
                        .local_items(Ok(items));
                }
                Output::NegentropyFailed(reason) => {
                    self.stats.neg_fallbacks += 1;
                    let url = self.conns[&id].url.clone();
                    trace!(
                        self.trace,
                        self.now,
                        "{id} {url} cannot reconcile: {reason}"
                    );
                    let config = self.reconcile_config();
                    let now = self.now;
                    self.support.entry(url).or_default().fell_back(&config, now);
                }
                Output::NegentropyWorked => {
                    self.stats.neg_worked += 1;
                    let url = self.conns[&id].url.clone();
                    self.support.entry(url).or_default().reconciled();
                }
            }
        }
    }

    /// A frame from the relay, after the ones already on their way.
    fn relay_sends(&mut self, id: ConnectionId, text: String) {
        let latency = self
            .world
            .relay(&self.conns[&id].url)
            .map_or(Duration::ZERO, |r| r.latency);
        let conn = self
            .conns
            .get_mut(&id)
            .expect("sending on an open connection");
        let at = (self.now + latency / 8 + Duration::from_millis(1)).max(conn.next_frame_at);
        conn.next_frame_at = at;
        self.schedule(at, Action::Frame { id, text });
    }

    fn relay_sends_event(&mut self, id: ConnectionId, sub: &str, wire: Wire) {
        let event = match wire {
            Wire::Genuine(i) => &self.world.held[i].genuine,
            Wire::Forged(i, f) => &self.world.held[i].forged[f],
        };
        let text = json!(["EVENT", sub, event]).to_string();
        self.relay_sends(id, text);
    }

    /// The held events matching `filters`, newest first, at most `limit` (liars send their
    /// forged copies of each first).
    fn send_matching(&mut self, id: ConnectionId, sub: &str, filters: &[Value], limit: usize) {
        let lies = self.behaviour(&self.conns[&id].url) == Behaviour::Lies;
        let mut found: Vec<usize> = (0..self.world.held.len())
            .filter(|i| {
                let e = &self.world.held[*i].genuine;
                filters.iter().any(|f| matches(f, e))
            })
            .collect();
        found.sort_by_key(|i| {
            let e = &self.world.held[*i].genuine;
            (std::cmp::Reverse(e.created_at.as_secs()), e.id)
        });
        for i in found.into_iter().take(limit) {
            if lies {
                for f in 0..self.world.held[i].forged.len() {
                    self.relay_sends_event(id, sub, Wire::Forged(i, f));
                }
            }
            self.relay_sends_event(id, sub, Wire::Genuine(i));
        }
    }

    /// The relay reads one frame of ours and answers it.
    fn relay_receives(&mut self, id: ConnectionId, text: &str) -> Step {
        let frame: Value = serde_json::from_str(text).expect("the session writes JSON");
        let parts = frame.as_array().expect("a NIP-01 message is an array");
        let command = parts[0].as_str().expect("a command");
        let sub = parts[1].as_str().expect("a subscription id").to_owned();
        let url = self.conns[&id].url.clone();
        let nip77 = self.nip77(&url);
        match command {
            "REQ" => {
                let filters: Vec<Value> = parts[2..].to_vec();
                let limit = filters
                    .iter()
                    .filter_map(|f| f.get("limit")?.as_u64())
                    .min()
                    .map_or(usize::MAX, |l| l as usize);
                if let Some(ids) = filters[0].get("ids").and_then(Value::as_array) {
                    self.check_asked_ids(id, &sub, ids.len())?;
                    self.stats.fetched_by_id += ids.len() as u64;
                    if nip77 == Nip77::WrongEvents {
                        self.send_wrong_events(id, &sub, &filters);
                    } else {
                        self.send_matching(id, &sub, &filters, usize::MAX);
                    }
                } else if limit == 0 {
                    self.conns
                        .get_mut(&id)
                        .expect("open")
                        .relay
                        .reqs
                        .insert(sub.clone(), filters);
                } else {
                    self.stats.pages += 1;
                    self.send_matching(id, &sub, &filters, limit);
                    let relay = &mut self.conns.get_mut(&id).expect("open").relay;
                    let first = !std::mem::replace(&mut relay.flooded, true);
                    if let (Behaviour::Floods { burst }, true) = (self.behaviour(&url), first) {
                        let n = self.world.held.len();
                        for k in 0..burst as usize {
                            let wire = if k % 3 == 0 {
                                Wire::Genuine(k % n)
                            } else {
                                Wire::Forged(k % n, k % 2)
                            };
                            self.relay_sends_event(id, &sub, wire);
                        }
                    }
                }
                self.relay_sends(id, json!(["EOSE", sub]).to_string());
            }
            "CLOSE" => {
                let relay = &mut self.conns.get_mut(&id).expect("open").relay;
                relay.reqs.remove(&sub);
                relay.asked.remove(&sub);
            }
            "NEG-OPEN" => {
                self.check_frame_size(id, text)?;
                self.stats.neg_opened += 1;
                if !nip77.speaks() {
                    let notice = json!(["NOTICE", "ERROR: bad msg: unknown cmd"]);
                    self.relay_sends(id, notice.to_string());
                    return Ok(());
                }
                let filter = &parts[2];
                let mut items: Vec<(u64, EventId)> = self
                    .world
                    .held
                    .iter()
                    .map(|h| &h.genuine)
                    .filter(|e| matches(filter, e))
                    .map(|e| (e.created_at.as_secs(), e.id))
                    .collect();
                if let Nip77::PhantomIds { phantoms } = nip77 {
                    let relay = self.relay_index(&url);
                    items
                        .extend((0..phantoms).map(|n| {
                            (EPOCH_SECS + u64::from(n), relay_wire::phantom_id(relay, n))
                        }));
                }
                let server = (nip77 != Nip77::NeverAgrees).then(|| {
                    negentropy_over(&items, RELAY_FRAME_BYTES).expect("valid items and frame")
                });
                let open = NegOpen {
                    server,
                    rounds: 1,
                    opened_at: self.now,
                    unanswered_since: None,
                };
                let relay = &mut self.conns.get_mut(&id).expect("open").relay;
                relay.negs.insert(sub.clone(), open);
                self.neg_answer(id, &sub, nip77, parts[3].as_str().expect("hex"))?;
            }
            "NEG-MSG" => {
                self.check_frame_size(id, text)?;
                // The world's bound, whatever the host was given.
                let max_rounds = self.world.reconcile.max_rounds;
                let Some(open) = self
                    .conns
                    .get_mut(&id)
                    .and_then(|c| c.relay.negs.get_mut(&sub))
                else {
                    return Ok(());
                };
                open.rounds += 1;
                let rounds = open.rounds;
                if rounds > max_rounds {
                    return Err(self.fail(
                        FailureKind::Safety,
                        format!(
                            "{id} to {url}: {rounds} messages in one reconciliation of {sub}, \
                             max_rounds is {max_rounds}"
                        ),
                    ));
                }
                self.neg_answer(id, &sub, nip77, parts[2].as_str().expect("hex"))?;
            }
            "NEG-CLOSE" => {
                let relay = &mut self.conns.get_mut(&id).expect("open").relay;
                relay.negs.remove(&sub);
            }
            other => {
                return Err(self.fail(
                    FailureKind::Safety,
                    format!("{id}: the follower sent an unknown command {other}"),
                ))
            }
        }
        Ok(())
    }

    /// The relay's answer to our negentropy message `hex` on `sub`, as `nip77` has it.
    fn neg_answer(&mut self, id: ConnectionId, sub: &str, nip77: Nip77, hex: &str) -> Step {
        let now = self.now;
        let open = self
            .conns
            .get_mut(&id)
            .and_then(|c| c.relay.negs.get_mut(sub))
            .expect("an open reconciliation");
        if let Nip77::Aborts { after, how } = nip77 {
            if open.rounds > after as usize {
                match how {
                    Abort::Close => {
                        open.unanswered_since = Some(now);
                        self.schedule(now + Duration::from_millis(1), Action::RelayCloses(id));
                    }
                    Abort::NegErr => {
                        let err = json!(["NEG-ERR", sub, "error: reconciliation aborted"]);
                        self.relay_sends(id, err.to_string());
                    }
                    Abort::Silence => open.unanswered_since = Some(now),
                }
                return Ok(());
            }
        }
        let reply = match open.server.as_mut() {
            None => Ok(relay_wire::never_agreeing(open.rounds)),
            Some(server) => {
                let message = graspd_host::hex::decode(hex).expect("the session writes hex");
                server.reconcile(&message)
            }
        };
        let text = match reply {
            Ok(reply) => json!(["NEG-MSG", sub, graspd_host::hex::encode(&reply)]),
            Err(error) => {
                // Our message did not parse: the session wrote something a relay refuses.
                return Err(self.fail(
                    FailureKind::Safety,
                    format!("{id}: the relay could not read our negentropy message: {error}"),
                ));
            }
        };
        self.relay_sends(id, text.to_string());
        Ok(())
    }

    /// A relay answering a fetch by id with forgeries of what was asked and other events.
    fn send_wrong_events(&mut self, id: ConnectionId, sub: &str, filters: &[Value]) {
        let n = self.world.held.len();
        let asked: Vec<usize> = (0..n)
            .filter(|i| {
                filters
                    .iter()
                    .any(|f| matches(f, &self.world.held[*i].genuine))
            })
            .collect();
        for i in asked {
            for f in 0..self.world.held[i].forged.len() {
                self.relay_sends_event(id, sub, Wire::Forged(i, f));
            }
            self.relay_sends_event(id, sub, Wire::Genuine((i + 1) % n));
        }
    }

    /// Ids asked for by id stay within `ids_per_req` a frame and `max_missing` a history.
    fn check_asked_ids(&mut self, id: ConnectionId, sub: &str, asked: usize) -> Step {
        let config = self.reconcile_config();
        let relay = &mut self.conns.get_mut(&id).expect("open").relay;
        let total = relay.asked.entry(sub.to_owned()).or_default();
        *total += asked;
        let total = *total;
        if asked > config.ids_per_req || total > config.max_missing {
            return Err(self.fail(
                FailureKind::Safety,
                format!(
                    "{id} asked for {asked} ids in one REQ ({total} under {sub}); ids_per_req \
                     is {}, max_missing {}",
                    config.ids_per_req, config.max_missing
                ),
            ));
        }
        Ok(())
    }

    fn check_frame_size(&self, id: ConnectionId, text: &str) -> Step {
        if text.len() > MAX_FRAME_CHARS {
            return Err(self.fail(
                FailureKind::Safety,
                format!("{id} sent a {} byte negentropy frame", text.len()),
            ));
        }
        Ok(())
    }

    fn nip77(&self, url: &str) -> Nip77 {
        if self.healed() {
            return Nip77::Honest;
        }
        self.world
            .relay(url)
            .map_or(Nip77::Unsupported, |r| r.nip77)
    }

    fn relay_index(&self, url: &str) -> usize {
        self.world
            .relays
            .iter()
            .position(|r| r.url == url)
            .unwrap_or(0)
    }

    fn deliver(&mut self, id: ConnectionId, event: &Event) -> Step {
        if self.conns.get(&id).is_none_or(|c| c.up_since.is_none()) {
            return Ok(());
        }
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
        if self.genuine.contains(&(event.id, event.sig.to_bytes())) && self.arrived.insert(event.id)
        {
            self.stats.arrived += 1;
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
                if let Verdict::Accepted(_) = verdict {
                    self.served.insert(event.id, event.clone());
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
                    for c in pr.repos.iter() {
                        let repo = RepoKey::new(c.author, c.identifier.clone());
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
                            session: None,
                            relay: RelaySide::default(),
                            next_frame_at: self.now,
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
                    for s in &open {
                        conn.subs.insert(s.key, s.clone());
                    }
                    if let Some(session) = conn.session.as_mut() {
                        session.set_time(self.now);
                        session.set_now(unix_secs(self.now));
                        session.update(open, close);
                        self.pump(id)?;
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
                Command::AcquireLease { url } | Command::ReleaseLease { url } => {
                    return Err(self.fail(
                        FailureKind::Safety,
                        format!("a lease command for {url} with relay leases off"),
                    ));
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
            let reconcile = self.world.reconcile;
            for (sub, open) in &conn.relay.negs {
                // A silent relay is given up at the answer deadline, and no exchange outlasts
                // its messages' deadlines.
                let overdue = open
                    .unanswered_since
                    .is_some_and(|since| self.now > since + reconcile.answer_timeout);
                let longest = reconcile
                    .answer_timeout
                    .saturating_mul(reconcile.max_rounds.min(1_000_000) as u32);
                if overdue || self.now > open.opened_at + longest {
                    return Err(self.fail(
                        FailureKind::Safety,
                        format!(
                            "{id} to {}: reconciliation {sub} opened at {} after {} messages \
                             still open (answer_timeout {:?})",
                            conn.url, open.opened_at, open.rounds, reconcile.answer_timeout
                        ),
                    ));
                }
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
            // Every event the relay holds for what it is followed for has reached us, read
            // by negentropy or by pages, whatever the relays did before the heal.
            for held in &self.world.held {
                let e = &held.genuine;
                let followed = conn
                    .subs
                    .values()
                    .flat_map(|s| &s.filters)
                    .any(|f| matches_filter(f, e));
                if followed && !self.arrived.contains(&e.id) && !self.served.contains_key(&e.id) {
                    return Err(self.fail(
                        FailureKind::Liveness,
                        format!(
                            "event {} (kind {}) that {url} holds for its subscriptions never \
                             arrived; relay {:?}, {:?}",
                            e.id,
                            e.kind.as_u16(),
                            self.world.relay(url).map(|r| (r.behaviour, r.nip77)),
                            self.support.get(*url)
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

/// The wall clock at virtual time `now`, in unix seconds.
fn unix_secs(now: Time) -> u64 {
    EPOCH_SECS + now.as_millis() / 1000
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
