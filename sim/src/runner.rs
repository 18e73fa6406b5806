//! One run: the virtual-time loop that drives the engine through a scenario, plays the host
//! (executing commands against the modelled store and world), and checks the invariants after
//! every step.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::time::Duration;

use graspd_core::{EventId, Oid, PublicKey, RepoKey, Time};

use crate::monitor::ThrottleMonitor;
use crate::rng::Rng;
use crate::scenario::{Action, Scenario, Via};
use crate::store::{apply_edits, diff_refs, LocalRepo, Store, WaitingRow};
use crate::sut::{
    Command, EngineFactory, EngineUnderTest, FetchError, Input, Output, Ticket, Verdict,
};
use crate::trace::{Trace, TraceMode};
use crate::world::{nip01_prefers, RemoteOutcome, Role, SimEvent};

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum FailureKind {
    Safety,
    Liveness,
    /// The engine panicked.
    Crash,
    Determinism,
}

impl FailureKind {
    pub fn exit_code(self) -> i32 {
        match self {
            FailureKind::Safety => 2,
            FailureKind::Liveness => 3,
            FailureKind::Crash => 4,
            FailureKind::Determinism => 5,
        }
    }
}

#[derive(Clone, Debug)]
pub struct Failure {
    pub kind: FailureKind,
    pub at: Time,
    pub message: String,
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{:?} violation at {}: {}",
            self.kind, self.at, self.message
        )
    }
}

#[derive(Clone, Debug, Default)]
pub struct RunStats {
    pub steps: u64,
    pub fetches: u64,
    pub released: u64,
    pub expired: u64,
    pub crashes: u64,
}

pub struct Outcome {
    pub summary: String,
    pub hash: u64,
    pub lines: u64,
    pub failure: Option<Failure>,
    pub stats: RunStats,
    /// The last trace lines (Tail mode).
    pub tail: Vec<String>,
}

/// Steps after which a run counts as a runaway engine (commands or timers without end).
const MAX_STEPS: u64 = 2_000_000;
/// Engine outputs drained in one step before it counts as a busy loop.
const MAX_DRAIN: u32 = 100_000;
/// Steps at one instant before `poll_timeout` counts as a busy loop.
const MAX_SAME_INSTANT: u32 = 100_000;

#[derive(Clone, Debug)]
enum Item {
    Act(Action),
    Restart,
    Heal,
    FetchDone {
        epoch: u64,
        id: u64,
        into: RepoKey,
        result: Result<Vec<Oid>, FetchError>,
    },
    InspectDone {
        epoch: u64,
        id: u64,
        repo: RepoKey,
        oids: Vec<Oid>,
    },
    ApplyExec {
        epoch: u64,
        id: u64,
        plan: crate::sut::ApplyPlan,
    },
    ApplyDone {
        epoch: u64,
        id: u64,
        result: Result<(), String>,
    },
    /// The host's store write of an admitted event ends (a crash before it loses the write).
    Persist {
        epoch: u64,
        ticket: Ticket,
        event: usize,
        via: Via,
        waits: bool,
        fails: bool,
    },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Status {
    Waiting,
    Served,
    Expired,
    Deleted,
    /// The operator deny-listed its author while it waited.
    Withdrawn,
}

#[derive(Clone, Debug)]
struct Ack {
    event: usize,
    status: Status,
    acked_at: Time,
    expires_at: Time,
    released_at: Option<Time>,
}

pub struct Sim<'a> {
    sc: &'a Scenario,
    factory: &'a dyn EngineFactory,
    trace: Trace,
    now: Time,
    agenda: BTreeMap<(Time, u64), Item>,
    seq: u64,
    store: Store,
    engine: Option<Box<dyn EngineUnderTest>>,
    epoch: u64,
    boot_at: Time,
    net: Rng,
    acks: BTreeMap<EventId, Ack>,
    by_id: BTreeMap<EventId, usize>,
    monitor: ThrottleMonitor,
    failure: Option<Failure>,
    healed: bool,
    /// Events released or accepted at least once (a later re-delivery may make one wait again).
    ever_served: BTreeSet<EventId>,
    /// When each `refs/nostr/<id>` ref was pushed (by repository and ref name).
    placeholders: BTreeMap<(RepoKey, String), Time>,
    /// Deny-listed authors, with when.
    denied: BTreeMap<PublicKey, Time>,
    /// Fetch start times per domain (for scenario expectations).
    fetch_log: BTreeMap<String, Vec<Time>>,
    /// Liveness is measured from the later of the heal and the last restart.
    calm_since: Time,
    end_at: Time,
    stats: RunStats,
}

pub fn run(sc: &Scenario, factory: &dyn EngineFactory, mode: TraceMode) -> Outcome {
    let mut sim = Sim::new(sc, factory, mode);
    sim.run();
    sim.finish()
}

impl<'a> Sim<'a> {
    fn new(sc: &'a Scenario, factory: &'a dyn EngineFactory, mode: TraceMode) -> Sim<'a> {
        let by_id = sc
            .world
            .events
            .iter()
            .enumerate()
            .map(|(i, e)| (e.id(), i))
            .collect();
        let mut sim = Sim {
            sc,
            factory,
            trace: Trace::new(mode),
            now: Time::ZERO,
            agenda: BTreeMap::new(),
            seq: 0,
            store: Store::default(),
            engine: None,
            epoch: 0,
            boot_at: Time::ZERO,
            net: Rng::new(sc.seed).child("network"),
            acks: BTreeMap::new(),
            by_id,
            monitor: ThrottleMonitor::default(),
            fetch_log: BTreeMap::new(),
            placeholders: BTreeMap::new(),
            denied: BTreeMap::new(),
            ever_served: BTreeSet::new(),
            failure: None,
            healed: false,
            calm_since: sc.heal_at,
            end_at: sc.end_at,
            stats: RunStats::default(),
        };
        for s in &sc.schedule {
            sim.at(s.at, Item::Act(s.action.clone()));
        }
        sim.at(sc.heal_at, Item::Heal);
        sim
    }

    fn at(&mut self, t: Time, item: Item) {
        self.seq += 1;
        self.agenda.insert((t, self.seq), item);
    }

    fn fail(&mut self, kind: FailureKind, message: String) {
        if self.failure.is_none() {
            crate::trace!(self.trace, self.now, "FAIL {kind:?}: {message}");
            self.failure = Some(Failure {
                kind,
                at: self.now,
                message,
            });
        }
    }

    /// The engine's clock: milliseconds since this process started.
    fn engine_now(&self) -> Time {
        Time::from_millis(self.now.as_millis() - self.boot_at.as_millis())
    }

    fn to_sim_time(&self, engine_time: Time) -> Time {
        Time::from_millis(
            engine_time
                .as_millis()
                .saturating_add(self.boot_at.as_millis()),
        )
    }

    /// `u0/repo1` for a repository key (trace only).
    fn rk(&self, repo: &RepoKey) -> String {
        match self.sc.world.users.iter().find(|u| u.pubkey == repo.owner) {
            Some(u) => format!("{}/{}", u.name, repo.identifier),
            None => repo.to_string(),
        }
    }

    /// Replaces users' hex public keys by their names in an engine-provided string.
    fn names(&self, s: String) -> String {
        let mut s = s;
        for u in &self.sc.world.users {
            let hex = u.pubkey.to_hex();
            if s.contains(&hex) {
                s = s
                    .replace(&format!("PublicKey({hex})"), &u.name)
                    .replace(&hex, &u.name);
            }
        }
        s
    }

    fn label(&self, idx: usize) -> &str {
        &self.sc.world.events[idx].label
    }

    fn run(&mut self) {
        crate::trace!(self.trace, self.now, "{}", self.sc.summary());
        self.boot();
        let mut same_instant = 0u32;
        let mut last_now = self.now;
        while self.failure.is_none() {
            let next_item = self.agenda.first_key_value().map(|((t, _), _)| *t);
            let next_timer = self.engine.as_mut().and_then(|e| e.poll_timeout());
            let timer_at = next_timer.as_ref().map(|(t, _)| self.to_sim_time(*t));
            let take_item = match (next_item, timer_at) {
                (None, None) => break,
                (Some(i), Some(t)) => i <= t.max(self.now),
                (Some(_), None) => true,
                (None, Some(_)) => false,
            };
            let next = if take_item {
                next_item.expect("checked")
            } else {
                timer_at.expect("checked").max(self.now)
            };
            if next > self.end_at {
                break;
            }
            self.now = next.max(self.now);
            if take_item {
                let (_, item) = self.agenda.pop_first().expect("checked");
                self.process(item);
            } else {
                let why = next_timer
                    .as_ref()
                    .map(|(_, w)| w.clone())
                    .unwrap_or_default();
                let why = self.names(why);
                crate::trace!(self.trace, self.now, "timeout {why}");
                let now = self.engine_now();
                if let Some(e) = self.engine.as_mut() {
                    e.handle_timeout(now);
                }
            }
            self.drain();
            self.check_step();
            self.stats.steps += 1;
            if self.now == last_now {
                same_instant += 1;
                if same_instant > MAX_SAME_INSTANT {
                    let why = next_timer.map(|(_, w)| w).unwrap_or_default();
                    self.fail(
                        FailureKind::Liveness,
                        format!("busy loop: {MAX_SAME_INSTANT} steps without time advancing (timer: {why})"),
                    );
                }
            } else {
                same_instant = 0;
                last_now = self.now;
            }
            if self.stats.steps > MAX_STEPS {
                self.fail(
                    FailureKind::Liveness,
                    format!("runaway: more than {MAX_STEPS} steps"),
                );
            }
        }
        if self.failure.is_none() {
            self.now = self.now.max(self.end_at);
            self.check_liveness();
        }
        if self.failure.is_none() {
            self.check_applied();
        }
        if self.failure.is_none() {
            self.check_expectations();
        }
    }

    fn check_expectations(&mut self) {
        for e in &self.sc.expect {
            match e {
                crate::scenario::Expect::MaxFetchesTo { domain, max, until } => {
                    let n = self
                        .fetch_log
                        .get(domain)
                        .map_or(0, |v| v.iter().filter(|t| *t < until).count())
                        as u64;
                    if n > *max {
                        let msg = format!(
                            "{n} fetches sent to {domain} before {until}, at most {max} expected"
                        );
                        self.fail(FailureKind::Safety, msg);
                        return;
                    }
                }
            }
        }
    }

    /// A fetch into `into` may only use URLs that an announcement of that repository (by its
    /// owner) or a PR targeting it lists: unrelated owners sharing an identifier never share
    /// URLs.
    fn check_candidate(&self, into: &RepoKey, url: &str) -> Result<(), String> {
        let listed = self.sc.world.events.iter().any(|e| match &e.role {
            Role::Announcement { repo, clone, .. } => {
                repo == into && clone.iter().any(|c| c == url)
            }
            Role::Pr { targets, clone, .. } => {
                targets.contains(into) && clone.iter().any(|c| c == url)
            }
            _ => false,
        });
        if listed {
            Ok(())
        } else {
            Err(format!("fetched {url} into {into}, but no announcement of that repository nor PR to it lists that URL"))
        }
    }

    fn finish(self) -> Outcome {
        Outcome {
            summary: self.sc.summary(),
            hash: self.trace.hash(),
            lines: self.trace.line_count(),
            failure: self.failure,
            stats: self.stats,
            tail: self.trace.tail().map(str::to_owned).collect(),
        }
    }

    // ---------------------------------------------------------------- start-up and crash

    fn boot(&mut self) {
        self.boot_at = self.now;
        let mut engine = self.factory.build(&self.sc.params);
        let now = Time::ZERO;
        let mut restored = 0;
        for (id, idx) in &self.store.served {
            let ev = &self.sc.world.events[*idx];
            if matches!(ev.role, Role::Announcement { .. } | Role::State { .. }) {
                engine.restore_accepted(&ev.event);
                restored += 1;
                let _ = id;
            }
        }
        let mut waiting = 0;
        for row in self.store.waiting.values() {
            // The table holds wall-clock expiry; the engine gets what is left of it.
            let remaining = row.expires_at.saturating_since(self.now);
            engine.restore_waiting(
                now,
                &self.sc.world.events[row.event].event,
                row.via,
                remaining,
            );
            waiting += 1;
        }
        // Every `refs/nostr/<id>` ref whose event the store does not serve is a placeholder
        // again, with what is left of its life since its push.
        let mut placeholders = 0;
        for (key, repo) in &self.store.repos {
            for (name, oid) in &repo.refs {
                let Some(id) = name
                    .strip_prefix("refs/nostr/")
                    .and_then(|hex| EventId::from_hex(hex).ok())
                else {
                    continue;
                };
                if self.store.served.contains_key(&id) {
                    continue;
                }
                let life = self.sc.params.placeholder_expiry;
                let remaining = match self.placeholders.get(&(key.clone(), name.clone())) {
                    Some(pushed) => (*pushed + life).saturating_since(self.now),
                    None => life,
                };
                engine.restore_placeholder(now, key, id, *oid, remaining);
                placeholders += 1;
            }
        }
        if !self.denied.is_empty() {
            engine.deny_authors(now, &self.denied_authors());
        }
        self.engine = Some(engine);
        self.monitor = ThrottleMonitor::default();
        crate::trace!(
            self.trace,
            self.now,
            "boot: restored {placeholders} placeholder refs"
        );
        crate::trace!(
            self.trace,
            self.now,
            "boot epoch={} engine={} restored accepted={} waiting={}",
            self.epoch,
            self.factory.name(),
            restored,
            waiting
        );
        self.drain();
    }

    fn crash(&mut self, down_ms: u64) {
        if self.engine.is_none() {
            return;
        }
        self.engine = None;
        self.epoch += 1;
        self.stats.crashes += 1;
        crate::trace!(self.trace, self.now, "CRASH down for {down_ms}ms");
        let back = self.now + Duration::from_millis(down_ms);
        self.at(back, Item::Restart);
    }

    // ---------------------------------------------------------------- the world acts

    fn process(&mut self, item: Item) {
        match item {
            Item::Act(Action::Deliver { event, via }) => self.deliver(event, via),
            Item::Act(Action::Push { state, retries }) => self.push(state, retries),
            Item::Act(Action::Crash { down_ms }) => self.crash(down_ms),
            Item::Act(Action::DenyAuthor { author }) => self.deny(author),
            Item::Act(Action::PushPlaceholder { pr, repo, commit }) => {
                self.push_placeholder(pr, repo, commit)
            }
            Item::Restart => {
                self.calm_since = self.calm_since.max(self.now);
                let min_end = self.now + self.sc.params.liveness_bound(&self.sc.world);
                self.end_at = self.end_at.max(min_end);
                self.boot();
            }
            Item::Heal => {
                self.healed = true;
                crate::trace!(self.trace, self.now, "HEAL: every fault stops");
            }
            Item::FetchDone {
                epoch,
                id,
                into,
                result,
            } => {
                if epoch != self.epoch {
                    return;
                }
                self.monitor.on_done(id);
                if let Ok(present) = &result {
                    if let Some(repo) = self.store.repos.get_mut(&into) {
                        repo.objects.extend(present.iter().copied());
                    }
                }
                crate::trace!(
                    self.trace,
                    self.now,
                    "fetch {id} done: {}",
                    show_fetch(&result)
                );
                self.input(Input::FetchDone { id, result });
            }
            Item::InspectDone {
                epoch,
                id,
                repo,
                oids,
            } => {
                if epoch != self.epoch {
                    return;
                }
                let result = match self.store.repos.get(&repo) {
                    Some(r) => Ok((
                        oids.iter()
                            .filter(|o| r.objects.contains(o))
                            .copied()
                            .collect::<Vec<_>>(),
                        r.refs.clone(),
                    )),
                    None => Err(format!("no repository {repo}")),
                };
                crate::trace!(
                    self.trace,
                    self.now,
                    "inspect {id} done: {}",
                    match &result {
                        Ok((p, refs)) =>
                            format!("{}/{} present, {} refs", p.len(), oids.len(), refs.len()),
                        Err(e) => e.clone(),
                    }
                );
                self.input(Input::Inspected { id, result });
            }
            Item::ApplyExec { epoch, id, plan } => {
                if epoch != self.epoch {
                    return;
                }
                let result = self.store.apply(&plan);
                crate::trace!(self.trace, self.now, "apply {id} executed: {result:?}");
                let delay = self.net.range(1, 20);
                self.at(
                    self.now + Duration::from_millis(delay),
                    Item::ApplyDone { epoch, id, result },
                );
            }
            Item::ApplyDone { epoch, id, result } => {
                if epoch != self.epoch {
                    return;
                }
                self.input(Input::Applied { id, result });
            }
            Item::Persist {
                epoch,
                ticket,
                event,
                via,
                waits,
                fails,
            } => {
                if epoch != self.epoch {
                    return;
                }
                self.persisted(ticket, event, via, waits, fails);
            }
        }
    }

    fn input(&mut self, input: Input) {
        let now = self.engine_now();
        if let Some(e) = self.engine.as_mut() {
            e.handle_input(now, input);
        }
    }

    fn deliver(&mut self, idx: usize, via: Via) {
        let label = self.label(idx).to_owned();
        if self.is_denied(idx) {
            // The host checks the operator's lists before the engine sees an event.
            crate::trace!(
                self.trace,
                self.now,
                "deliver {label} {via:?} -> blocked: denied"
            );
            return;
        }
        let now = self.engine_now();
        let Some(engine) = self.engine.as_mut() else {
            crate::trace!(
                self.trace,
                self.now,
                "deliver {label} {via:?}: server down, lost"
            );
            return;
        };
        let ev = &self.sc.world.events[idx];
        if self.store.served.contains_key(&ev.id()) {
            // The relay stores events by id: one it already serves is a duplicate before the
            // engine ever sees it.
            crate::trace!(
                self.trace,
                self.now,
                "deliver {label} {via:?} -> already served"
            );
            return;
        }
        let verdict = engine.handle_event(now, &ev.event, via);
        crate::trace!(
            self.trace,
            self.now,
            "deliver {label} {via:?} -> {verdict:?}"
        );
        let (ticket, waits) = match verdict {
            Verdict::Waiting(ticket) => (ticket, true),
            Verdict::Accepted(ticket) => (ticket, false),
            Verdict::Rejected(_) | Verdict::Refused(..) | Verdict::Duplicate => return,
        };
        // The host's store write for the admitted event: sometimes done at once, usually a few
        // milliseconds later (other inputs and timers run meanwhile), and before the heal it
        // may fail.
        let fails = !self.healed
            && self.sc.store_fail_percent > 0
            && self.net.percent(self.sc.store_fail_percent);
        let delay = self.net.range(0, 20);
        let write = Item::Persist {
            epoch: self.epoch,
            ticket,
            event: idx,
            via,
            waits,
            fails,
        };
        if delay == 0 {
            self.process(write);
        } else {
            self.at(self.now + Duration::from_millis(delay), write);
        }
    }

    /// The store write of an admitted event ended: record what the store now holds and what
    /// the client heard, then tell the engine.
    fn persisted(&mut self, ticket: Ticket, idx: usize, via: Via, waits: bool, fails: bool) {
        let label = self.label(idx).to_owned();
        let id = self.sc.world.events[idx].id();
        if fails {
            crate::trace!(self.trace, self.now, "store write for {label} failed");
            self.input(Input::PersistFailed { ticket });
            return;
        }
        crate::trace!(self.trace, self.now, "store write for {label} done");
        if waits {
            let expires_at = self.now + self.sc.params.purgatory_expiry;
            let row = self.store.waiting.entry(id).or_insert(WaitingRow {
                event: idx,
                via,
                expires_at,
            });
            let expires_at = row.expires_at;
            let ack = self.acks.entry(id).or_insert(Ack {
                event: idx,
                status: Status::Waiting,
                acked_at: self.now,
                expires_at,
                released_at: None,
            });
            if ack.status != Status::Waiting {
                *ack = Ack {
                    event: idx,
                    status: Status::Waiting,
                    acked_at: self.now,
                    expires_at,
                    released_at: None,
                };
            }
        } else {
            self.check_data_present(idx, "accepted");
            self.check_authorised(idx, "accepted");
            self.ever_served.insert(id);
            self.store.served.insert(id, idx);
            self.store.waiting.remove(&id);
            self.acks.insert(
                id,
                Ack {
                    event: idx,
                    status: Status::Served,
                    acked_at: self.now,
                    expires_at: self.now + self.sc.params.purgatory_expiry,
                    released_at: Some(self.now),
                },
            );
        }
        self.input(Input::Persisted { ticket });
    }

    fn push(&mut self, state_idx: usize, retries: u32) {
        let ev = &self.sc.world.events[state_idx];
        let Role::State { repo, refs, .. } = &ev.role else {
            return;
        };
        let label = ev.label.clone();
        let retry = |sim: &mut Sim<'_>, why: &str| {
            crate::trace!(sim.trace, sim.now, "push {label}: {why}");
            if retries > 0 {
                sim.at(
                    sim.now + Duration::from_secs(30),
                    Item::Act(Action::Push {
                        state: state_idx,
                        retries: retries - 1,
                    }),
                );
            }
        };
        if self.engine.is_none() {
            return retry(self, "server down");
        }
        let Some(local) = self.store.repos.get(repo) else {
            return retry(self, "repository not found");
        };
        let current = local.refs.clone();
        let edits = diff_refs(&current, refs);
        let decisions = self
            .engine
            .as_mut()
            .expect("checked")
            .decide_push(repo, &current, &edits);
        if decisions.len() != edits.len() {
            self.fail(
                FailureKind::Safety,
                format!(
                    "decide_push returned {} decisions for {} updates",
                    decisions.len(),
                    edits.len()
                ),
            );
            return;
        }
        let accepted: Vec<_> = edits
            .iter()
            .zip(&decisions)
            .filter(|(_, d)| d.is_ok())
            .map(|(e, _)| e.clone())
            .collect();
        if accepted.is_empty() && !edits.is_empty() {
            let why = decisions
                .iter()
                .find_map(|d| d.clone().err())
                .unwrap_or_default();
            return retry(self, &format!("rejected: {why}"));
        }
        let repo_mut: &mut LocalRepo = self.store.repos.get_mut(repo).expect("checked");
        repo_mut.objects.extend(refs.values().copied());
        apply_edits(repo_mut, &accepted);
        crate::trace!(
            self.trace,
            self.now,
            "push {label}: {} of {} ref updates accepted",
            accepted.len(),
            edits.len()
        );
        let repo = repo.clone();
        self.input(Input::Pushed {
            repo,
            updates: accepted,
        });
    }

    fn push_placeholder(&mut self, pr: usize, repo: RepoKey, commit: Oid) {
        let label = self.label(pr).to_owned();
        let name = format!("refs/nostr/{}", self.sc.world.events[pr].id().to_hex());
        let Some(local) = self.store.repos.get(&repo) else {
            crate::trace!(
                self.trace,
                self.now,
                "push {name} ({label}): repository not found"
            );
            return;
        };
        let Some(engine) = self.engine.as_mut() else {
            crate::trace!(self.trace, self.now, "push {name} ({label}): server down");
            return;
        };
        let current = local.refs.clone();
        let edit = crate::sut::RefEdit {
            name: name.clone(),
            expected: current.get(&name).copied(),
            new: Some(commit),
        };
        let decision = engine.decide_push(&repo, &current, std::slice::from_ref(&edit));
        match decision.first() {
            Some(Ok(())) => {
                let r = self.store.repos.get_mut(&repo).expect("checked");
                r.objects.insert(commit);
                apply_edits(r, std::slice::from_ref(&edit));
                self.placeholders
                    .insert((repo.clone(), name.clone()), self.now);
                crate::trace!(
                    self.trace,
                    self.now,
                    "push {name} ({label}) at {commit}: accepted"
                );
                self.input(Input::Pushed {
                    repo,
                    updates: vec![edit],
                });
            }
            other => {
                crate::trace!(self.trace, self.now, "push {name} ({label}): {other:?}");
            }
        }
    }

    // ---------------------------------------------------------------- the host executes

    fn drain(&mut self) {
        let mut rounds = 0u32;
        loop {
            let Some(engine) = self.engine.as_mut() else {
                return;
            };
            if let Some(cmd) = engine.poll_command() {
                self.execute(cmd);
            } else if let Some(out) = engine.poll_output() {
                self.output(out);
            } else {
                return;
            }
            rounds += 1;
            if rounds > MAX_DRAIN {
                self.fail(
                    FailureKind::Liveness,
                    format!("busy loop: more than {MAX_DRAIN} commands and events in one step"),
                );
                return;
            }
        }
    }

    fn execute(&mut self, cmd: Command) {
        let epoch = self.epoch;
        match cmd {
            Command::Fetch {
                id,
                into,
                url,
                oids,
                deadline,
            } => {
                self.stats.fetches += 1;
                let deadline = self.to_sim_time(deadline);
                crate::trace!(
                    self.trace,
                    self.now,
                    "fetch {id} {url} {} objects into {} deadline {deadline}",
                    oids.len(),
                    self.rk(&into)
                );
                if let Err(why) =
                    self.monitor
                        .on_fetch(self.now, id, &url, deadline, &self.sc.params)
                {
                    self.fail(FailureKind::Safety, why);
                    return;
                }
                if let Err(why) = self.check_candidate(&into, &url) {
                    self.fail(FailureKind::Safety, why);
                    return;
                }
                if let Some(host) = crate::world::url_host(&url) {
                    self.fetch_log.entry(host).or_default().push(self.now);
                }
                if !self.store.repos.contains_key(&into) {
                    let delay = self.net.range(1, 10);
                    self.at(
                        self.now + Duration::from_millis(delay),
                        Item::FetchDone {
                            epoch,
                            id,
                            into,
                            result: Err(FetchError::Other("no such local repository".into())),
                        },
                    );
                    return;
                }
                let outcome =
                    self.sc
                        .world
                        .fetch(&url, &oids, self.now, self.healed, &mut self.net);
                let quick = self.net.range(1, 300);
                let (delay, result) = match outcome {
                    RemoteOutcome::Refused => (quick, Err(FetchError::Refused)),
                    RemoteOutcome::Dns | RemoteOutcome::Unknown => (quick, Err(FetchError::Dns)),
                    RemoteOutcome::Tls => (quick, Err(FetchError::Tls)),
                    RemoteOutcome::RateLimited => (quick, Err(FetchError::RateLimited)),
                    RemoteOutcome::Hang => {
                        crate::trace!(self.trace, self.now, "fetch {id} hangs");
                        return;
                    }
                    RemoteOutcome::Served { delay_ms, present } => {
                        // git fails the whole fetch on the first wanted object the remote lacks.
                        match oids.iter().find(|o| !present.contains(o)) {
                            Some(lacking) => (delay_ms, Err(FetchError::NotOurRef(vec![*lacking]))),
                            None => (delay_ms, Ok(present)),
                        }
                    }
                };
                self.at(
                    self.now + Duration::from_millis(delay),
                    Item::FetchDone {
                        epoch,
                        id,
                        into,
                        result,
                    },
                );
            }
            Command::Inspect { id, repo, oids } => {
                crate::trace!(
                    self.trace,
                    self.now,
                    "inspect {id} {} {} objects",
                    self.rk(&repo),
                    oids.len()
                );
                if self.local_hangs() {
                    crate::trace!(self.trace, self.now, "inspect {id} hangs");
                    return;
                }
                let delay = self.net.range(1, 20);
                self.at(
                    self.now + Duration::from_millis(delay),
                    Item::InspectDone {
                        epoch,
                        id,
                        repo,
                        oids,
                    },
                );
            }
            Command::Apply { id, plan } => {
                crate::trace!(
                    self.trace,
                    self.now,
                    "apply {id} {} edits={} copy_from={:?} head={:?}",
                    self.rk(&plan.repo),
                    plan.edits.len(),
                    plan.copy_from.as_ref().map(|(from, _)| self.rk(from)),
                    plan.head
                );
                if self.local_hangs() {
                    crate::trace!(self.trace, self.now, "apply {id} hangs before it starts");
                    return;
                }
                let delay = self.net.range(1, 20);
                self.at(
                    self.now + Duration::from_millis(delay),
                    Item::ApplyExec { epoch, id, plan },
                );
            }
            // One instance: its engine runs without sync leases and never asks for one.
            Command::AcquireLease { .. } | Command::ReleaseLease { .. } => {
                self.fail(
                    FailureKind::Safety,
                    "a lease command from an engine without sync leases".into(),
                );
            }
            Command::CreateRepo { repo } => {
                crate::trace!(self.trace, self.now, "create repo {}", self.rk(&repo));
                self.store.repos.entry(repo).or_default();
            }
            Command::RemoveRepo { repo } => {
                crate::trace!(self.trace, self.now, "remove repo {}", self.rk(&repo));
                let served: Vec<String> = self
                    .store
                    .served
                    .values()
                    .filter(|idx| match &self.sc.world.events[**idx].role {
                        Role::Announcement { repo: r, .. } | Role::State { repo: r, .. } => {
                            *r == repo
                        }
                        _ => false,
                    })
                    .map(|idx| self.label(*idx).to_owned())
                    .collect();
                if !served.is_empty() {
                    self.fail(
                        FailureKind::Safety,
                        format!(
                            "removed repository {repo} although it serves {}",
                            served.join(", ")
                        ),
                    );
                }
                self.store.repos.remove(&repo);
            }
        }
    }

    /// Whether this local git command hangs (only before the heal).
    fn local_hangs(&mut self) -> bool {
        let p = self.sc.local_hang_percent;
        p > 0 && !self.healed && self.net.percent(p)
    }

    fn output(&mut self, out: Output) {
        match out {
            Output::Released { id } => self.released(id),
            Output::Expired { id } => {
                self.stats.expired += 1;
                let label = self.id_label(&id);
                crate::trace!(self.trace, self.now, "expired {label}");
                self.store.waiting.remove(&id);
                if let Some(ack) = self.acks.get_mut(&id) {
                    if ack.status == Status::Waiting {
                        ack.status = Status::Expired;
                    }
                }
            }
            Output::Withdrawn { id } => self.withdrawn(id),
            Output::Deleted { id } => {
                let label = self.id_label(&id);
                crate::trace!(self.trace, self.now, "deleted {label}");
                self.store.waiting.remove(&id);
                if let Some(ack) = self.acks.get_mut(&id) {
                    if ack.status == Status::Waiting {
                        ack.status = Status::Deleted;
                    }
                }
            }
            Output::Other(s) => {
                let s = self.names(s);
                crate::trace!(self.trace, self.now, "engine: {s}")
            }
        }
    }

    /// A policy reload deny-lists `author`; the engine hears it now, and again at every boot
    /// (the operator's lists outlive restarts).
    fn deny(&mut self, author: PublicKey) {
        self.denied.entry(author).or_insert(self.now);
        crate::trace!(
            self.trace,
            self.now,
            "policy: deny author {}",
            author.to_hex()
        );
        let (now, denied) = (self.engine_now(), self.denied_authors());
        if let Some(engine) = self.engine.as_mut() {
            engine.deny_authors(now, &denied);
        }
        self.drain();
    }

    fn denied_authors(&self) -> BTreeSet<PublicKey> {
        self.denied.keys().copied().collect()
    }

    /// Whether `idx`'s author is deny-listed by now.
    fn is_denied(&self, idx: usize) -> bool {
        self.denied
            .contains_key(&self.sc.world.events[idx].event.pubkey)
    }

    fn withdrawn(&mut self, id: EventId) {
        let label = self.id_label(&id);
        crate::trace!(self.trace, self.now, "withdrawn {label}");
        let Some(&idx) = self.by_id.get(&id) else {
            return;
        };
        if !self.is_denied(idx) {
            let msg = format!("withdrew {label}, whose author is not deny-listed");
            self.fail(FailureKind::Safety, msg);
            return;
        }
        self.store.waiting.remove(&id);
        if let Some(ack) = self.acks.get_mut(&id) {
            if ack.status == Status::Waiting {
                ack.status = Status::Withdrawn;
            }
        }
    }

    fn id_label(&self, id: &EventId) -> String {
        match self.by_id.get(id) {
            Some(idx) => self.label(*idx).to_owned(),
            None => format!("unknown event {}", id.to_hex()),
        }
    }

    fn released(&mut self, id: EventId) {
        self.stats.released += 1;
        let label = self.id_label(&id);
        crate::trace!(self.trace, self.now, "released {label}");
        let Some(ack) = self.acks.get(&id).cloned() else {
            self.fail(
                FailureKind::Safety,
                format!("released {label}, which was never acknowledged as waiting"),
            );
            return;
        };
        if self.is_denied(ack.event) {
            let msg = format!("released {label}, whose author is deny-listed");
            self.fail(FailureKind::Safety, msg);
            return;
        }
        match ack.status {
            Status::Waiting => {}
            Status::Withdrawn => {
                let msg = format!("released {label} after it was withdrawn");
                self.fail(FailureKind::Safety, msg);
                return;
            }
            Status::Served => {
                // Released again in a later lifetime is harmless (the store write is idempotent);
                // twice in one lifetime is a bug.
                if ack.released_at.is_some_and(|t| t >= self.boot_at) {
                    self.fail(FailureKind::Safety, format!("released {label} twice"));
                }
                return;
            }
            Status::Expired => {
                self.fail(
                    FailureKind::Safety,
                    format!("released {label} after it expired"),
                );
                return;
            }
            Status::Deleted => {
                self.fail(
                    FailureKind::Safety,
                    format!("released {label} after it was deleted"),
                );
                return;
            }
        }
        if self.now >= ack.expires_at {
            self.fail(
                FailureKind::Safety,
                format!("released {label} at or after its expiry {}", ack.expires_at),
            );
            return;
        }
        self.check_data_present(ack.event, "released");
        self.check_authorised(ack.event, "released");
        self.store.served.insert(id, ack.event);
        self.store.waiting.remove(&id);
        self.ever_served.insert(id);
        let ack = self.acks.get_mut(&id).expect("checked");
        ack.status = Status::Served;
        ack.released_at = Some(self.now);
    }

    // ---------------------------------------------------------------- safety

    fn check_data_present(&mut self, idx: usize, what: &str) {
        let ev = &self.sc.world.events[idx];
        for (repo, oids) in ev.needs() {
            let missing: Vec<String> = match self.store.repos.get(&repo) {
                None => vec![format!("repository {} does not exist", self.rk(&repo))],
                Some(r) => oids
                    .iter()
                    .filter(|o| !r.objects.contains(o))
                    .map(|o| format!("object {o} missing in {}", self.rk(&repo)))
                    .collect(),
            };
            if !missing.is_empty() {
                let msg = format!(
                    "{what} {} before its data was present: {}",
                    ev.label,
                    missing.join("; ")
                );
                self.fail(FailureKind::Safety, msg);
                return;
            }
        }
    }

    fn check_step(&mut self) {
        for (key, repo) in &self.store.repos {
            for (name, oid) in &repo.refs {
                if !repo.objects.contains(oid) {
                    let msg = format!(
                        "ref {name} of {} points at missing object {oid}",
                        self.rk(key)
                    );
                    self.fail(FailureKind::Safety, msg);
                    return;
                }
            }
        }
        let Some(engine) = self.engine.as_ref() else {
            return;
        };
        let stats = engine.stats();
        let p = &self.sc.params;
        if let Some(w) = stats.waiting.filter(|w| *w > p.max_waiting) {
            self.fail(
                FailureKind::Safety,
                format!("{w} events waiting, bound {}", p.max_waiting),
            );
        }
        if let Some(d) = stats.domains.filter(|d| *d > p.max_domains) {
            self.fail(
                FailureKind::Safety,
                format!("{d} domains tracked, bound {}", p.max_domains),
            );
        }
    }

    // ---------------------------------------------------------------- liveness

    /// A `refs/nostr/<id>` ref survives only if its PR arrived naming that commit (GRASP:
    /// "delete the ref if no matching event arrives in time, or if the event arrives with a
    /// different c"); any other is deleted within `placeholder_expiry` (plus the liveness bound
    /// for the Apply) of its push, crashes included. A matching PR that
    /// is deleted later may leave its ref: the spec does not say otherwise.
    fn check_placeholders(&mut self) {
        let grace =
            self.sc.params.placeholder_expiry + self.sc.params.liveness_bound(&self.sc.world);
        for (key, repo) in &self.store.repos {
            for (name, oid) in &repo.refs {
                let Some(hex) = name.strip_prefix("refs/nostr/") else {
                    continue;
                };
                let legit = self.sc.world.events.iter().any(|e| {
                    e.id().to_hex() == hex
                        && matches!(&e.role, Role::Pr { commit, .. } if commit == oid)
                        && (self.ever_served.contains(&e.id()) || self.acks.contains_key(&e.id()))
                });
                if legit {
                    continue;
                }
                let pushed = self
                    .placeholders
                    .get(&(key.clone(), name.clone()))
                    .copied()
                    .unwrap_or(Time::ZERO);
                let due = self.calm_since.max(pushed) + grace;
                if self.now > due {
                    let label = self
                        .sc
                        .world
                        .events
                        .iter()
                        .find(|e| e.id().to_hex() == hex)
                        .map_or("an unknown event", |e| e.label.as_str())
                        .to_owned();
                    let msg = format!(
                        "placeholder {name} ({label}) at {oid} in {} pushed at {pushed} still exists after {due}: its event never arrived or named another commit",
                        self.rk(key)
                    );
                    self.fail(FailureKind::Liveness, msg);
                    return;
                }
            }
        }
    }

    fn check_liveness(&mut self) {
        self.check_placeholders();
        if self.failure.is_some() {
            return;
        }
        let bound = self.sc.params.liveness_bound(&self.sc.world);
        let acks: Vec<(EventId, Ack)> = self.acks.iter().map(|(k, v)| (*k, v.clone())).collect();
        for (id, ack) in acks {
            let label = self.label(ack.event).to_owned();
            if ack.status == Status::Waiting && ack.expires_at <= self.now {
                let why = self.why(&id, ack.event);
                self.fail(
                    FailureKind::Liveness,
                    format!(
                        "{label} is still waiting after its expiry {} (lost?): {why}",
                        ack.expires_at
                    ),
                );
                return;
            }
            let deadline = self.calm_since.max(ack.acked_at) + bound;
            if deadline >= ack.expires_at {
                continue;
            }
            let Some(reason) = self.obligation(&id, &ack, deadline) else {
                continue;
            };
            let on_time =
                ack.status == Status::Served && ack.released_at.is_some_and(|t| t <= deadline);
            if !on_time {
                let why = self.why(&id, ack.event);
                self.fail(
                    FailureKind::Liveness,
                    format!(
                        "{label} ({}) not released by {deadline} (healed at {}, bound {}s) although {reason}; status {:?}: {why}",
                        id.to_hex(),
                        self.calm_since,
                        bound.as_secs(),
                        ack.status
                    ),
                );
                return;
            }
        }
    }

    /// Whether the engine holds `id` (waiting or served) until `by`, unless it is deleted.
    fn held_until(&self, id: &EventId, by: Time) -> bool {
        self.acks.get(id).is_some_and(|a| match a.status {
            Status::Served => true,
            Status::Waiting | Status::Expired => a.expires_at > by,
            Status::Deleted | Status::Withdrawn => false,
        })
    }

    /// Who may publish states for `repo` at `by`: its owner and the maintainers that NIP-01's
    /// winner among the owner's announcements the engine holds then lists.
    fn maintainers_of(&self, repo: &RepoKey, by: Time) -> BTreeSet<PublicKey> {
        let mut winner: Option<&SimEvent> = None;
        for e in &self.sc.world.events {
            let ours = matches!(&e.role, Role::Announcement { repo: r, .. } if r == repo);
            if ours
                && self.held_until(&e.id(), by)
                && winner.is_none_or(|w| nip01_prefers(e.version(), w.version()))
            {
                winner = Some(e);
            }
        }
        let mut set = BTreeSet::from([repo.owner]);
        if let Some(Role::Announcement { maintainers, .. }) = winner.map(|w| &w.role) {
            set.extend(maintainers.iter().copied());
        }
        set
    }

    /// A state is served only if its author is a maintainer by the announcement NIP-01 prefers
    /// among those the engine holds now.
    fn check_authorised(&mut self, idx: usize, what: &str) {
        let ev = &self.sc.world.events[idx];
        let Role::State { repo, .. } = &ev.role else {
            return;
        };
        if !self
            .maintainers_of(repo, self.now)
            .contains(&ev.event.pubkey)
        {
            let msg = format!(
                "{what} {}, whose author the announcement NIP-01 prefers does not list",
                ev.label
            );
            self.fail(FailureKind::Safety, msg);
        }
    }

    /// At the end, every repository holds the refs of NIP-01's winner among the states served
    /// for it by its maintainers, never those of a state that winner beats (an older one, or a
    /// same-second one with a higher id).
    fn check_applied(&mut self) {
        for (key, local) in &self.store.repos {
            let maintainers = self.maintainers_of(key, self.now);
            let states = || {
                self.sc.world.events.iter().filter_map(|e| match &e.role {
                    Role::State { repo, refs, .. } if repo == key => Some((e, refs)),
                    _ => None,
                })
            };
            let served = |e: &SimEvent| {
                self.acks
                    .get(&e.id())
                    .is_some_and(|a| a.status == Status::Served)
            };
            let Some((winner, _)) = states()
                .filter(|(e, _)| served(e) && maintainers.contains(&e.event.pubkey))
                .reduce(|w, c| {
                    if nip01_prefers(c.0.version(), w.0.version()) {
                        c
                    } else {
                        w
                    }
                })
            else {
                continue;
            };
            let held: BTreeMap<String, Oid> = local
                .refs
                .iter()
                .filter(|(n, _)| n.starts_with("refs/heads/") || n.starts_with("refs/tags/"))
                .map(|(n, o)| (n.clone(), *o))
                .collect();
            let beaten = states().find(|(e, refs)| {
                **refs == held
                    && e.id() != winner.id()
                    && nip01_prefers(winner.version(), e.version())
            });
            if let Some((loser, _)) = beaten {
                let msg = format!(
                    "{} holds the refs of {} although {}, which NIP-01 prefers, is served",
                    self.rk(key),
                    loser.label,
                    winner.label
                );
                self.fail(FailureKind::Safety, msg);
                return;
            }
        }
    }

    /// The clone URLs of an announcement of `repo` the engine holds until `by`: candidates.
    fn announcement_urls(&self, repo: &RepoKey, by: Time) -> Option<Vec<String>> {
        self.sc.world.events.iter().find_map(|e| match &e.role {
            Role::Announcement { repo: r, clone, .. }
                if r == repo && self.held_until(&e.id(), by) =>
            {
                Some(clone.clone())
            }
            _ => None,
        })
    }

    /// Remote hosts the world's events name that the engine may fetch from.
    fn fetchable_hosts(&self) -> usize {
        let mut hosts = BTreeSet::new();
        for e in &self.sc.world.events {
            let urls = match &e.role {
                Role::Announcement { clone, .. } | Role::Pr { clone, .. } => clone,
                _ => continue,
            };
            hosts.extend(
                urls.iter()
                    .filter_map(|u| crate::monitor::forbidden(u).ok()),
            );
        }
        hosts.len()
    }

    /// Why this acknowledged event must be released after the heal, or `None` if it need not.
    fn obligation(&self, id: &EventId, ack: &Ack, deadline: Time) -> Option<String> {
        if matches!(ack.status, Status::Deleted | Status::Withdrawn) || self.is_denied(ack.event) {
            return None;
        }
        // A world with more hosts than the engine may track can starve a domain until an idle
        // one is evicted (the configured trade-off of bounded state): no promise then.
        if self.fetchable_hosts() > self.sc.params.max_domains {
            return None;
        }
        let ev = &self.sc.world.events[ack.event];
        match &ev.role {
            Role::State { repo, .. } => {
                // Only the newest live state of a repository by one of its maintainers (NIP-01:
                // ties go to the lowest id) must be released.
                let maintainers = self.maintainers_of(repo, deadline);
                if !maintainers.contains(&ev.event.pubkey) {
                    return None;
                }
                let newer = self.acks.iter().any(|(oid, a)| {
                    let other = &self.sc.world.events[a.event];
                    matches!(&other.role, Role::State { repo: r, .. } if r == repo)
                        && oid != id
                        && a.status != Status::Deleted
                        && maintainers.contains(&other.event.pubkey)
                        && nip01_prefers(other.version(), ev.version())
                });
                if newer {
                    return None;
                }
                let urls = self.announcement_urls(repo, deadline)?;
                self.data_reachable(ev, &urls)
            }
            Role::Pr { targets, clone, .. } => {
                let mut urls = clone.clone();
                for t in targets {
                    urls.extend(self.announcement_urls(t, deadline)?);
                }
                self.data_reachable(ev, &urls)
            }
            Role::Announcement { .. } | Role::Deletion { .. } => None,
        }
    }

    fn data_reachable(&self, ev: &crate::world::SimEvent, urls: &[String]) -> Option<String> {
        for (repo, oids) in ev.needs() {
            let local = self.store.repos.get(&repo);
            for o in oids {
                let here = local.is_some_and(|r| r.objects.contains(&o));
                if !here && !self.sc.world.reachable(urls, &o) {
                    return None;
                }
            }
        }
        Some("its data is present or reachable".into())
    }

    fn why(&self, id: &EventId, idx: usize) -> String {
        let ev = &self.sc.world.events[idx];
        let mut parts = Vec::new();
        for (repo, oids) in ev.needs() {
            let local = self.store.repos.get(&repo);
            for o in oids {
                let here = local.is_some_and(|r| r.objects.contains(&o));
                let holders: Vec<&str> = self
                    .sc
                    .world
                    .remotes
                    .iter()
                    .filter(|(_, r)| r.objects.contains(&o))
                    .map(|(u, _)| u.as_str())
                    .collect();
                parts.push(format!(
                    "{o}: {} locally, held by [{}]",
                    if here { "present" } else { "missing" },
                    holders.join(", ")
                ));
            }
        }
        let engine = self
            .engine
            .as_ref()
            .and_then(|e| e.explain(id))
            .unwrap_or_else(|| "engine gives no explanation".into());
        format!("{}; engine: {engine}", parts.join("; "))
    }
}

fn show_fetch(r: &Result<Vec<Oid>, FetchError>) -> String {
    match r {
        Ok(p) => format!("{} objects", p.len()),
        Err(e) => format!("{e:?}"),
    }
}

/// The set of repos an event's release touches (for reports).
pub fn repos_of(role: &Role) -> BTreeSet<RepoKey> {
    match role {
        Role::Announcement { repo, .. } | Role::State { repo, .. } => [repo.clone()].into(),
        Role::Pr { targets, .. } => targets.iter().cloned().collect(),
        Role::Deletion { .. } => BTreeSet::new(),
    }
}
