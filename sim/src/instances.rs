//! The instances world: several real `graspd_core::Engine`s with `sync_leases`, each with the
//! host's own lease bookkeeping (`graspd_host::leases::LeaseBook`), over one shared store (bare
//! repositories with compare-and-swap applies, one purgatory table, one lease table with the
//! SQL statement's rule, `lease_table.rs`), and remotes holding the data. Some states wait from
//! the start; others are published mid-run to whichever instance is up (the others hear of
//! them as the store's notifications tell them), and some are deleted by their author while
//! they wait (the others hear they are gone: `Engine::gone_elsewhere`). Instances crash and
//! restart from the shared purgatory, lose the database for a while, see lease statements run
//! late; remotes refuse or hang. After the heal every instance is up and every remote serves.
//!
//! Safety, after every step: a fetch starts only while the table names its instance the holder
//! of the repository's lease, unexpired; no two live instances' books hold one lease unexpired
//! at once; a fetch still running after its instance lost the lease (the overlap, counted)
//! started under the lease and ends by its deadline; an event is released only with its data
//! in the shared repository. Liveness: every waiting event is served within the bound
//! `liveness_bound` after the heal (a deleted one is not waited for), and no live engine waits on
//! anything or wants a lease.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::time::Duration;

use graspd_core::{
    ApplyError, ApplyPlan, Arrival, Command, CommandId, Config, Engine, EngineEvent, EventId,
    FetchError, FetchReport, Identifier, Input, Oid, RepoKey, RepoSnapshot, Time, Verdict,
};
use graspd_host::leases::{LeaseBook, Report};
use nostr::event::Event;

use crate::forge::{self, User};
use crate::lease_table::LeaseTable;
use crate::rng::Rng;
use crate::runner::FailureKind;
use crate::trace::{Trace, TraceMode};
use crate::world::{OWN_ORIGIN, OWN_RELAY};

/// Planted faults, to check that the checks bite.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Default)]
pub enum Plant {
    #[default]
    None,
    /// The book counts a lease valid for one and a half of the table's lease life instead of
    /// two thirds of it.
    BookKeepsLeaseTooLong,
    /// Every instance's keeper reports `Leased` for every wanted lease without asking the table.
    KeeperIgnoresTable,
    /// The keeper counts a lease lost only when a round settles, not when its validity ends
    /// while a statement is slow (how the keeper first was).
    KeeperWaitsForStatement,
    /// Instances do not hear that an event another one dropped from purgatory is gone.
    GoneNotHeard,
}

/// What one world drew from its seed.
#[derive(Clone, Debug)]
pub struct Params {
    pub seed: u64,
    pub instances: usize,
    pub repos: usize,
    pub lease_life: Duration,
    pub fetch_timeout: Duration,
    pub heal: Time,
    pub crashes: usize,
    pub partitions: usize,
    pub remote_faults: usize,
    /// States published mid-run, and deletions of waiting states by their authors.
    pub late_states: usize,
    pub deletions: usize,
}

impl Params {
    /// How long after the heal every waiting event must be served: a dead holder's lease
    /// expires (one life), the next keeper round takes it (a third), a fetch hung before the
    /// heal runs out and the retry waits its back-off (one fetch timeout and the longest
    /// back-off), then one fetch, plus slack for local commands and notifications.
    pub fn liveness_bound(&self) -> Duration {
        self.lease_life + self.lease_life / 3 + BACKOFF_MAX + self.fetch_timeout * 2 + SLACK
    }
}

const BACKOFF_MAX: Duration = Duration::from_secs(4);
const SLACK: Duration = Duration::from_secs(5);
const EXPIRY: Duration = Duration::from_secs(6 * 3600);

/// The result of one run.
#[derive(Debug)]
pub struct Outcome {
    pub params: Params,
    pub hash: u64,
    pub lines: u64,
    pub failure: Option<(FailureKind, String)>,
    pub fetches: u64,
    pub overlaps: u64,
    pub released: u64,
    pub crashes: u64,
    /// States deleted while they waited (their deletion taken by an instance).
    pub deleted: u64,
    pub tail: Vec<String>,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum RemoteMode {
    Serve,
    Refuse,
    Hang,
}

struct Remote {
    domain: String,
    /// Objects per repository URL, and when they were pushed there.
    objects: BTreeMap<String, (BTreeSet<Oid>, Time)>,
    faults: Vec<(Time, Time, RemoteMode)>,
}

#[derive(Clone, Debug, Default)]
struct Repo {
    objects: BTreeSet<Oid>,
    refs: BTreeMap<String, Oid>,
}

struct Waiting {
    event: Event,
    repo: RepoKey,
    oids: Vec<Oid>,
}

struct FetchRec {
    lease: String,
    started: Time,
    deadline: Time,
    overlapped: bool,
}

struct Instance {
    engine: Option<Engine>,
    book: LeaseBook,
    generation: u64,
    token: String,
    round_running: bool,
    woken: bool,
    round_seq: u64,
    fetches: BTreeMap<CommandId, FetchRec>,
    /// Applies in flight, with when they were asked for.
    applies: BTreeMap<CommandId, Time>,
    /// Events this incarnation heard another instance dropped, and when.
    heard_gone: BTreeMap<EventId, Time>,
    crashes: Vec<(Time, Time)>,
    partitions: Vec<(Time, Time)>,
}

enum Ev {
    Crash(usize),
    Restart(usize),
    Round {
        seq: u64,
    },
    /// The lease statements of a round run on the table.
    Statement {
        names: Vec<String>,
        let_go: Vec<String>,
        asked_at: Time,
    },
    Answer {
        names: Vec<String>,
        asked_at: Time,
        held: Option<BTreeSet<String>>,
    },
    Inspect {
        id: CommandId,
        repo: RepoKey,
        oids: Vec<Oid>,
    },
    Apply {
        id: CommandId,
        plan: ApplyPlan,
    },
    FetchEnd {
        id: CommandId,
        into: RepoKey,
        url: String,
        oids: Vec<Oid>,
        mode: RemoteMode,
    },
    /// The store's notification that another instance served the event.
    Notify(EventId),
    /// The store's notification that another instance put the event in purgatory.
    NotifyWaiting(EventId),
    /// The store's notification that another instance dropped the event from purgatory.
    NotifyGone(EventId),
    /// A user publishes a state to the instance (to another one if it is down).
    Publish(EventId),
    /// Its author deletes a state (a kind 5 event naming it) on the instance.
    Delete {
        deletion: Event,
        target: EventId,
    },
}

struct Sim {
    params: Params,
    plant: Plant,
    config: Config,
    io: Rng,
    trace: Trace,
    now: Time,
    queue: BTreeMap<(Time, u64), (usize, u64, Ev)>,
    seq: u64,
    instances: Vec<Instance>,
    announcements: Vec<Event>,
    waiting: BTreeMap<EventId, Waiting>,
    /// States to publish mid-run (`Ev::Publish`).
    unpublished: BTreeMap<EventId, Waiting>,
    /// Client actions (publications, deletions), scheduled at the start.
    actions: Vec<(Time, usize, Ev)>,
    served: BTreeMap<EventId, Event>,
    expected: Vec<EventId>,
    repos: BTreeMap<RepoKey, Repo>,
    remotes: Vec<Remote>,
    table: LeaseTable,
    fetches: u64,
    overlaps: u64,
    released: u64,
    crashed: u64,
    deleted: u64,
    /// While an `Applied` is being handled: when its Apply was asked for.
    apply_asked: Option<Time>,
    failure: Option<(FailureKind, String)>,
}

fn at(ms: u64) -> Time {
    Time::from_millis(ms)
}

fn ms(d: Duration) -> u64 {
    d.as_millis() as u64
}

/// Runs the world of `seed`.
pub fn run(seed: u64, mode: TraceMode, plant: Plant) -> Outcome {
    let mut sim = Sim::draw(seed, mode, plant);
    sim.run();
    let tail = sim.trace.tail().map(str::to_owned).collect();
    Outcome {
        hash: sim.trace.hash(),
        lines: sim.trace.line_count(),
        failure: sim.failure,
        fetches: sim.fetches,
        overlaps: sim.overlaps,
        released: sim.released,
        crashes: sim.crashed,
        deleted: sim.deleted,
        params: sim.params,
        tail,
    }
}

impl Sim {
    fn draw(seed: u64, mode: TraceMode, plant: Plant) -> Sim {
        let root = Rng::new(seed);
        let mut world = root.child("world");
        let mut faults = root.child("faults");
        let instances = world.range(2, 4) as usize;
        let repo_count = world.range(1, 3) as usize;
        let lease_life = Duration::from_millis(world.range(3_000, 15_000));
        let fetch_timeout = Duration::from_millis(world.range(2_000, 10_000));
        let heal = at(world.range(20_000, 120_000));
        let remote_count = world.range(1, 2) as usize;
        let mut remotes: Vec<Remote> = (0..remote_count)
            .map(|k| Remote {
                domain: format!("remote{k}.example"),
                objects: BTreeMap::new(),
                faults: Vec::new(),
            })
            .collect();
        let mut announcements = Vec::new();
        let mut waiting = BTreeMap::new();
        let mut unpublished = BTreeMap::new();
        let mut actions = Vec::new();
        let instance_count = instances;
        let (mut late_states, mut deletions) = (0, 0);
        let mut expected = Vec::new();
        let mut repos = BTreeMap::new();
        for r in 0..repo_count {
            let owner = User::generate(&format!("owner{r}"), &mut world);
            let identifier = format!("r{r}");
            let mut clone = vec![format!("{OWN_ORIGIN}/{}/{identifier}.git", owner.npub)];
            let listed: Vec<usize> = (0..remote_count)
                .filter(|_| remote_count == 1 || world.percent(70))
                .collect();
            let listed = if listed.is_empty() { vec![0] } else { listed };
            for k in &listed {
                clone.push(format!(
                    "https://{}/{}/{identifier}.git",
                    remotes[*k].domain, owner.npub
                ));
            }
            let created = 1_700_000_000 + r as u64;
            announcements.push(forge::announcement(
                &owner,
                created,
                &identifier,
                &clone,
                &[OWN_RELAY.to_owned()],
                &[],
            ));
            let oids: Vec<Oid> = (0..world.range(1, 2))
                .map(|_| forge::oid(&mut world))
                .collect();
            let refs: BTreeMap<String, Oid> = oids
                .iter()
                .enumerate()
                .map(|(i, o)| (format!("refs/heads/b{i}"), *o))
                .collect();
            let state = forge::state(
                &owner,
                created + 10,
                &identifier,
                &refs,
                Some("refs/heads/b0"),
            );
            // The data is on at least one listed remote.
            // Pushed there at once or late, so instances retry through the faults.
            let holder = *world.pick(&listed);
            let pushed = if world.percent(30) {
                Time::ZERO
            } else {
                at(world.range(0, heal.as_millis()))
            };
            for (i, k) in listed.iter().enumerate() {
                if *k == holder || world.percent(50) {
                    remotes[*k].objects.insert(
                        clone[i + 1].clone(),
                        (oids.iter().copied().collect(), pushed),
                    );
                }
            }
            let repo = RepoKey::new(owner.pubkey, Identifier::new(&identifier).expect("valid"));
            // The announcement is served: its bare repository exists.
            repos.insert(repo.clone(), Repo::default());
            let id = state.id;
            let entry = Waiting {
                event: state,
                repo,
                oids,
            };
            // Waiting from the start, or published mid-run to one of the instances.
            let mut published = Time::ZERO;
            if world.percent(50) {
                published = at(world.range(0, heal.as_millis() * 4 / 5));
                let to = world.range(0, instance_count as u64 - 1) as usize;
                actions.push((published, to, Ev::Publish(id)));
                unpublished.insert(id, entry);
                late_states += 1;
            } else {
                expected.push(id);
                waiting.insert(id, entry);
            }
            // Its author deletes it a little later, perhaps before it is released.
            if world.percent(25) {
                let when = published + Duration::from_millis(world.range(1, 5_000));
                let to = world.range(0, instance_count as u64 - 1) as usize;
                let deletion = forge::deletion(&owner, created + 20, &[id], &[]);
                actions.push((
                    when,
                    to,
                    Ev::Delete {
                        deletion,
                        target: id,
                    },
                ));
                deletions += 1;
            }
        }
        let heal_ms = heal.as_millis();
        let window = |rng: &mut Rng, longest: u64| {
            let start = rng.range(0, heal_ms - 1);
            let end = (start + rng.range(100, longest)).min(heal_ms);
            (at(start), at(end))
        };
        let mut remote_faults = 0;
        for remote in &mut remotes {
            for _ in 0..faults.range(0, 2) {
                let (a, b) = window(&mut faults, 40_000);
                let mode = if faults.percent(50) {
                    RemoteMode::Refuse
                } else {
                    RemoteMode::Hang
                };
                remote.faults.push((a, b, mode));
                remote_faults += 1;
            }
        }
        let (mut crashes, mut partitions) = (0, 0);
        let instances: Vec<Instance> = (0..instances)
            .map(|i| {
                let crash_list: Vec<(Time, Time)> = (0..faults.range(0, 2))
                    .map(|_| window(&mut faults, 20_000))
                    .collect();
                let partition_list: Vec<(Time, Time)> = (0..faults.range(0, 2))
                    .map(|_| window(&mut faults, ms(lease_life) * 2))
                    .collect();
                crashes += crash_list.len();
                partitions += partition_list.len();
                Instance {
                    engine: None,
                    book: LeaseBook::new(),
                    generation: 0,
                    token: format!("i{i}.0"),
                    round_running: false,
                    woken: false,
                    round_seq: 0,
                    fetches: BTreeMap::new(),
                    applies: BTreeMap::new(),
                    heard_gone: BTreeMap::new(),
                    crashes: crash_list,
                    partitions: partition_list,
                }
            })
            .collect();
        let config = Config {
            own_origin: Some(OWN_ORIGIN.into()),
            sync_leases: true,
            purgatory_expiry: EXPIRY,
            backoff: vec![Duration::from_secs(1), Duration::from_secs(2), BACKOFF_MAX],
            fetch_timeout,
            fetch_hedge_after: fetch_timeout,
            ..Config::default()
        };
        let params = Params {
            seed,
            instances: instances.len(),
            repos: repo_count,
            lease_life,
            fetch_timeout,
            heal,
            crashes,
            partitions,
            remote_faults,
            late_states,
            deletions,
        };
        Sim {
            params,
            plant,
            config,
            io: root.child("io"),
            trace: Trace::new(mode),
            now: Time::ZERO,
            queue: BTreeMap::new(),
            seq: 0,
            instances,
            announcements,
            waiting,
            unpublished,
            actions,
            served: BTreeMap::new(),
            expected,
            repos,
            remotes,
            table: LeaseTable::default(),
            fetches: 0,
            overlaps: 0,
            released: 0,
            crashed: 0,
            deleted: 0,
            apply_asked: None,
            failure: None,
        }
    }

    fn log(&mut self, line: std::fmt::Arguments<'_>) {
        self.trace.log(self.now, line);
    }

    fn fail(&mut self, kind: FailureKind, message: String) {
        if self.failure.is_none() {
            self.log(format_args!("FAIL {message}"));
            self.failure = Some((kind, message));
        }
    }

    fn schedule(&mut self, when: Time, instance: usize, ev: Ev) {
        self.seq += 1;
        let generation = self.instances[instance].generation;
        self.queue
            .insert((when, self.seq), (instance, generation, ev));
    }

    fn after(&mut self, lo: u64, hi: u64) -> Time {
        self.now + Duration::from_millis(self.io.range(lo, hi))
    }

    /// When a lease statement's next step happens: usually within `quick_max` ms; before the
    /// heal, one time in ten late (from `slow_min` ms to a quarter of the lease life), the
    /// table moving meanwhile.
    fn statement_delay(&mut self, slow_min: u64, quick_max: u64) -> Time {
        if self.now < self.params.heal && self.io.percent(10) {
            self.after(slow_min, ms(self.params.lease_life) / 4)
        } else {
            self.after(1, quick_max)
        }
    }

    fn run(&mut self) {
        let p = &self.params;
        let mut header = format!(
            "SEED={} instances={} repos={} lease_life={}ms fetch_timeout={}ms heal={} crashes={} partitions={} remote_faults={} late_states={} deletions={}",
            p.seed,
            p.instances,
            p.repos,
            ms(p.lease_life),
            ms(p.fetch_timeout),
            p.heal,
            p.crashes,
            p.partitions,
            p.remote_faults,
            p.late_states,
            p.deletions
        );
        if self.plant != Plant::None {
            let _ = write!(header, " plant={:?}", self.plant);
        }
        self.log(format_args!("{header}"));
        let end = self.params.heal + self.params.liveness_bound();
        for i in 0..self.instances.len() {
            for (crash, restart) in self.instances[i].crashes.clone() {
                self.schedule(crash, i, Ev::Crash(i));
                self.schedule(restart, i, Ev::Restart(i));
            }
        }
        for (when, i, ev) in std::mem::take(&mut self.actions) {
            self.schedule(when, i, ev);
        }
        for i in 0..self.instances.len() {
            self.boot(i);
        }
        while self.failure.is_none() {
            let timer = self
                .instances
                .iter()
                .enumerate()
                .filter_map(|(i, inst)| Some((inst.engine.as_ref()?.poll_timeout()?.0, i)))
                .min();
            // The keeper's own timer: a held lease counts as lost when its validity ends.
            let expiry = self
                .instances
                .iter()
                .enumerate()
                .filter(|(_, inst)| inst.engine.is_some())
                .filter(|_| self.plant != Plant::KeeperWaitsForStatement)
                .filter_map(|(i, inst)| Some((inst.book.next_expiry()?, i)))
                .min();
            if let Some((t, i)) = expiry {
                if t <= timer.map_or(t, |(timer, _)| timer)
                    && self.queue.keys().next().is_none_or(|(q, _)| t <= *q)
                    && t <= end
                {
                    self.now = self.now.max(t);
                    let now = self.now;
                    let reports = self.instances[i].book.expire(now);
                    for input in reports.into_iter().filter_map(Report::into_engine) {
                        self.log(format_args!(
                            "lease {i} {} (not renewed in time)",
                            describe(&input)
                        ));
                        self.input(i, input);
                    }
                    self.check_books();
                    self.count_overlaps();
                    continue;
                }
            }
            let queued = self.queue.keys().next().map(|(t, _)| *t);
            let next = match (timer, queued) {
                (Some((t, _)), Some(q)) => t.min(q),
                (Some((t, _)), None) => t,
                (None, Some(q)) => q,
                (None, None) => break,
            };
            if next > end {
                break;
            }
            self.now = self.now.max(next);
            match (timer, queued) {
                (Some((t, i)), q) if q.is_none_or(|q| t < q) => {
                    let now = self.now;
                    if let Some(engine) = self.instances[i].engine.as_mut() {
                        engine.handle_timeout(now);
                    }
                    self.drain(i);
                }
                _ => {
                    let key = *self.queue.keys().next().expect("queued");
                    let (i, generation, ev) = self.queue.remove(&key).expect("queued");
                    self.step(i, generation, ev);
                }
            }
            self.check_books();
            self.count_overlaps();
        }
        self.now = self.now.max(end);
        if self.failure.is_none() {
            self.check_liveness();
        }
    }

    fn partitioned(&self, i: usize) -> bool {
        self.instances[i]
            .partitions
            .iter()
            .any(|(a, b)| *a <= self.now && self.now < *b)
    }

    fn remote_mode(&self, domain: usize) -> RemoteMode {
        self.remotes[domain]
            .faults
            .iter()
            .find(|(a, b, _)| *a <= self.now && self.now < *b)
            .map_or(RemoteMode::Serve, |f| f.2)
    }

    fn boot(&mut self, i: usize) {
        let mut engine = Engine::new(self.config.clone());
        for a in &self.announcements {
            engine.restore_accepted(a);
        }
        for e in self.served.values() {
            engine.restore_accepted(e);
        }
        for w in self.waiting.values() {
            engine.restore_waiting(self.now, w.event.clone(), Arrival::Synced, EXPIRY);
        }
        let inst = &mut self.instances[i];
        inst.engine = Some(engine);
        inst.token = format!("i{i}.{}", inst.generation);
        let token = inst.token.clone();
        self.log(format_args!("boot {i} as {token}"));
        self.drain(i);
    }

    fn step(&mut self, i: usize, generation: u64, ev: Ev) {
        match ev {
            Ev::Crash(i) => {
                let inst = &mut self.instances[i];
                if inst.engine.take().is_some() {
                    inst.book = LeaseBook::new();
                    inst.generation += 1;
                    inst.round_running = false;
                    inst.woken = false;
                    inst.fetches.clear();
                    inst.applies.clear();
                    inst.heard_gone.clear();
                    self.crashed += 1;
                    self.log(format_args!("crash {i}"));
                }
                return;
            }
            Ev::Restart(i) => {
                if self.instances[i].engine.is_none() {
                    self.boot(i);
                }
                return;
            }
            // A client's action goes to whichever instance is up (the origin's proxy).
            Ev::Publish(id) => {
                if let Some(up) = self.up_from(i) {
                    self.publish(up, id);
                }
                return;
            }
            Ev::Delete { deletion, target } => {
                if let Some(up) = self.up_from(i) {
                    self.delete(up, deletion, target);
                }
                return;
            }
            _ => {}
        }
        // Results for an incarnation that crashed are lost with it.
        if self.instances[i].generation != generation || self.instances[i].engine.is_none() {
            return;
        }
        match ev {
            Ev::Crash(_) | Ev::Restart(_) | Ev::Publish(_) | Ev::Delete { .. } => {
                unreachable!("handled above")
            }
            Ev::Round { seq } => {
                if seq == self.instances[i].round_seq {
                    self.start_round(i);
                }
            }
            Ev::Statement {
                names,
                let_go,
                asked_at,
            } => {
                let held = if self.partitioned(i) {
                    None
                } else {
                    let token = self.instances[i].token.clone();
                    self.table.let_go(&token, &let_go);
                    let held = self
                        .table
                        .hold(&token, &names, self.params.lease_life, self.now);
                    Some(held.into_iter().collect::<BTreeSet<String>>())
                };
                self.log(format_args!(
                    "lease-statement {i} asked={} let_go={} held={:?}",
                    names.len(),
                    let_go.len(),
                    held.as_ref().map(BTreeSet::len)
                ));
                let when = self.statement_delay(100, 30);
                self.schedule(
                    when,
                    i,
                    Ev::Answer {
                        names,
                        asked_at,
                        held,
                    },
                );
            }
            Ev::Answer {
                names,
                asked_at,
                held,
            } => {
                let valid_for = match self.plant {
                    Plant::BookKeepsLeaseTooLong => self.params.lease_life * 3 / 2,
                    _ => self.params.lease_life * 2 / 3,
                };
                let held = match self.plant {
                    Plant::KeeperIgnoresTable => Some(names.iter().cloned().collect()),
                    _ => held,
                };
                let now = self.now;
                let inputs =
                    self.instances[i]
                        .book
                        .settle(&names, held.as_ref(), asked_at, valid_for, now);
                for input in inputs.into_iter().filter_map(Report::into_engine) {
                    self.log(format_args!("lease {i} {}", describe(&input)));
                    self.input(i, input);
                }
                let inst = &mut self.instances[i];
                inst.round_running = false;
                let next = if std::mem::take(&mut inst.woken) {
                    Some(self.now)
                } else if inst.book.is_idle() {
                    None
                } else {
                    Some(self.now + self.params.lease_life / 3)
                };
                if let Some(when) = next {
                    self.instances[i].round_seq += 1;
                    let seq = self.instances[i].round_seq;
                    self.schedule(when, i, Ev::Round { seq });
                }
            }
            Ev::Inspect { id, repo, oids } => {
                let result = match self.repos.get(&repo) {
                    Some(r) => Ok(RepoSnapshot {
                        present: oids
                            .iter()
                            .copied()
                            .filter(|o| r.objects.contains(o))
                            .collect(),
                        refs: r.refs.clone(),
                    }),
                    None => Err(format!("no repository {repo}")),
                };
                self.input(i, Input::Inspected { id, result });
            }
            Ev::Apply { id, plan } => {
                let result = self.apply(&plan);
                self.log(format_args!(
                    "apply {i} {} {:?}",
                    plan.repo,
                    result.as_ref().err()
                ));
                self.apply_asked = self.instances[i].applies.remove(&id);
                self.input(i, Input::Applied { id, result });
                self.apply_asked = None;
            }
            Ev::FetchEnd {
                id,
                into,
                url,
                oids,
                mode,
            } => {
                self.instances[i].fetches.remove(&id);
                let result = match mode {
                    RemoteMode::Refuse => Err(FetchError::Refused),
                    RemoteMode::Hang => Err(FetchError::Timeout),
                    RemoteMode::Serve => self.serve_fetch(&into, &url, &oids),
                };
                self.log(format_args!(
                    "fetch-end {i} {url} {:?}",
                    result.as_ref().err()
                ));
                self.input(i, Input::FetchDone { id, result });
            }
            Ev::Notify(id) => {
                if let Some(event) = self.served.get(&id).cloned() {
                    let now = self.now;
                    if let Some(engine) = self.instances[i].engine.as_mut() {
                        engine.served_elsewhere(now, &event);
                    }
                    self.drain(i);
                }
            }
            // Read from the store, as the host reads a notified id: what is no longer waiting
            // there is not restored.
            Ev::NotifyWaiting(id) => {
                if let Some(event) = self.waiting.get(&id).map(|w| w.event.clone()) {
                    let now = self.now;
                    if let Some(engine) = self.instances[i].engine.as_mut() {
                        engine.restore_waiting(now, event, Arrival::Published, EXPIRY);
                    }
                    self.drain(i);
                }
            }
            Ev::NotifyGone(id) => {
                let now = self.now;
                self.instances[i].heard_gone.insert(id, now);
                if self.plant == Plant::GoneNotHeard {
                    return;
                }
                if let Some(engine) = self.instances[i].engine.as_mut() {
                    engine.gone_elsewhere(now, &id);
                }
                self.drain(i);
            }
        }
    }

    /// The first instance up, from `i` on.
    fn up_from(&self, i: usize) -> Option<usize> {
        let n = self.instances.len();
        (0..n)
            .map(|k| (i + k) % n)
            .find(|k| self.instances[*k].engine.is_some())
    }

    /// Schedules a store notification to every other live instance.
    fn notify_others(&mut self, i: usize, ev: impl Fn() -> Ev) {
        for other in 0..self.instances.len() {
            if other != i && self.instances[other].engine.is_some() {
                let when = self.after(5, 200);
                self.schedule(when, other, ev());
            }
        }
    }

    /// A user publishes a state to instance `i`: once it is durably waiting, the others hear.
    fn publish(&mut self, i: usize, id: EventId) {
        let Some(entry) = self.unpublished.remove(&id) else {
            return;
        };
        let now = self.now;
        let engine = self.instances[i].engine.as_mut().expect("up");
        let verdict = engine.handle_event(now, entry.event.clone(), Arrival::Published);
        self.log(format_args!("publish {i} {} {verdict:?}", id.to_hex()));
        match verdict {
            Verdict::Waiting(ticket) => {
                self.waiting.insert(id, entry);
                self.expected.push(id);
                let engine = self.instances[i].engine.as_mut().expect("up");
                engine.handle_input(now, Input::Persisted { ticket });
                self.notify_others(i, || Ev::NotifyWaiting(id));
            }
            other => self.fail(
                FailureKind::Safety,
                format!("a state without its data was not held waiting: {other:?}"),
            ),
        }
        self.drain(i);
    }

    /// Its author deletes a state on instance `i`. A state already served or not waiting on
    /// `i` yet (its notification still on the way) is not deleted here.
    fn delete(&mut self, i: usize, deletion: Event, target: EventId) {
        if !self.waiting.contains_key(&target) {
            self.log(format_args!("delete {i} {} not waiting", target.to_hex()));
            return;
        }
        let now = self.now;
        let engine = self.instances[i].engine.as_mut().expect("up");
        let verdict = engine.handle_event(now, deletion, Arrival::Published);
        self.log(format_args!("delete {i} {} {verdict:?}", target.to_hex()));
        if let Verdict::Accepted(ticket) = verdict {
            let engine = self.instances[i].engine.as_mut().expect("up");
            engine.handle_input(now, Input::Persisted { ticket });
        }
        self.drain(i);
    }

    fn serve_fetch(
        &mut self,
        into: &RepoKey,
        url: &str,
        oids: &[Oid],
    ) -> Result<FetchReport, FetchError> {
        let has = self
            .remotes
            .iter()
            .find_map(|r| r.objects.get(url))
            .filter(|(_, pushed)| *pushed <= self.now)
            .map(|(oids, _)| oids.clone())
            .unwrap_or_default();
        let missing: Vec<Oid> = oids.iter().copied().filter(|o| !has.contains(o)).collect();
        if !missing.is_empty() {
            return Err(FetchError::NotOurRef(missing));
        }
        let Some(repo) = self.repos.get_mut(into) else {
            return Err(FetchError::Other(format!("no repository {into}")));
        };
        repo.objects.extend(oids.iter().copied());
        Ok(FetchReport {
            present: oids.to_vec(),
        })
    }

    fn apply(&mut self, plan: &ApplyPlan) -> Result<(), ApplyError> {
        if let Some((from, oids)) = &plan.copy_from {
            let copied: Vec<Oid> = match self.repos.get(from) {
                Some(src) => oids
                    .iter()
                    .copied()
                    .filter(|o| src.objects.contains(o))
                    .collect(),
                None => Vec::new(),
            };
            if let Some(repo) = self.repos.get_mut(&plan.repo) {
                repo.objects.extend(copied);
            }
        }
        let Some(repo) = self.repos.get_mut(&plan.repo) else {
            return Err(ApplyError::Io(format!("no repository {}", plan.repo)));
        };
        for edit in &plan.edits {
            if repo.refs.get(&edit.name).copied() != edit.expected {
                return Err(ApplyError::Conflict);
            }
        }
        for edit in &plan.edits {
            match edit.new {
                Some(new) => {
                    repo.refs.insert(edit.name.clone(), new);
                }
                None => {
                    repo.refs.remove(&edit.name);
                }
            }
        }
        Ok(())
    }

    fn start_round(&mut self, i: usize) {
        let round = match self.plant {
            Plant::KeeperIgnoresTable => {
                let round = self.instances[i].book.start_round();
                graspd_host::leases::Round {
                    names: round.names,
                    let_go: Vec::new(),
                }
            }
            _ => self.instances[i].book.start_round(),
        };
        self.instances[i].round_running = true;
        let asked_at = self.now;
        // Usually quick; sometimes the statement runs late, the table moving meanwhile.
        let when = self.statement_delay(50, 20);
        self.schedule(
            when,
            i,
            Ev::Statement {
                names: round.names,
                let_go: round.let_go,
                asked_at,
            },
        );
    }

    fn wake_keeper(&mut self, i: usize) {
        let inst = &mut self.instances[i];
        if inst.round_running {
            inst.woken = true;
            return;
        }
        inst.round_seq += 1;
        let seq = inst.round_seq;
        let now = self.now;
        self.schedule(now, i, Ev::Round { seq });
    }

    fn input(&mut self, i: usize, input: Input) {
        let now = self.now;
        if let Some(engine) = self.instances[i].engine.as_mut() {
            engine.handle_input(now, input);
        }
        self.drain(i);
    }

    /// Runs what instance `i`'s engine asks for, as its host would.
    fn drain(&mut self, i: usize) {
        loop {
            let Some(engine) = self.instances[i].engine.as_mut() else {
                return;
            };
            if let Some(command) = engine.poll_command() {
                self.command(i, command);
                continue;
            }
            let Some(event) = engine.poll_event() else {
                return;
            };
            self.engine_event(i, event);
        }
    }

    fn command(&mut self, i: usize, command: Command) {
        if self.instances[i].book.apply(&command) {
            self.log(format_args!("{i} {}", describe_command(&command)));
            self.wake_keeper(i);
            return;
        }
        match command {
            Command::Fetch {
                id,
                into,
                url,
                oids,
                deadline,
            } => self.fetch(i, id, into, url, oids, deadline),
            Command::Inspect { id, repo, oids } => {
                let when = self.after(1, 20);
                self.schedule(when, i, Ev::Inspect { id, repo, oids });
            }
            Command::Apply { id, plan } => {
                let now = self.now;
                self.instances[i].applies.insert(id, now);
                let when = self.after(1, 30);
                self.schedule(when, i, Ev::Apply { id, plan });
            }
            Command::CreateRepo { repo } => {
                self.repos.entry(repo).or_default();
            }
            Command::RemoveRepo { repo } => {
                self.log(format_args!("remove-repo {i} {repo}"));
                self.repos.remove(&repo);
            }
            Command::AcquireLease { .. } | Command::ReleaseLease { .. } => {
                unreachable!("the book takes them")
            }
        }
    }

    fn fetch(
        &mut self,
        i: usize,
        id: CommandId,
        into: RepoKey,
        url: String,
        oids: Vec<Oid>,
        deadline: Time,
    ) {
        self.fetches += 1;
        let lease = into.to_string();
        let token = self.instances[i].token.clone();
        let holder = self.table.holder_at(&lease, self.now).map(str::to_owned);
        self.log(format_args!("fetch {i} {url} holder={holder:?}"));
        if holder.as_deref() != Some(token.as_str()) {
            self.fail(
                FailureKind::Safety,
                format!("instance {i} ({token}) started a fetch for {lease} while the lease table names {holder:?}"),
            );
        }
        if deadline <= self.now || deadline > self.now + self.params.fetch_timeout {
            self.fail(
                FailureKind::Safety,
                format!("fetch deadline {deadline} out of range"),
            );
        }
        self.instances[i].fetches.insert(
            id,
            FetchRec {
                lease,
                started: self.now,
                deadline,
                overlapped: false,
            },
        );
        let domain = self
            .remotes
            .iter()
            .position(|r| url.starts_with(&format!("https://{}/", r.domain)));
        let mode = domain.map_or(RemoteMode::Refuse, |d| self.remote_mode(d));
        let (when, mode) = match mode {
            RemoteMode::Refuse => (self.after(10, 200), RemoteMode::Refuse),
            RemoteMode::Hang => (deadline, RemoteMode::Hang),
            RemoteMode::Serve => {
                // Slower than the deadline at times before the heal, within it after.
                let slowest = if self.now < self.params.heal {
                    ms(self.params.fetch_timeout) * 3 / 2
                } else {
                    ms(self.params.fetch_timeout) / 2
                };
                let when = self.after(50, slowest);
                if when >= deadline {
                    (deadline, RemoteMode::Hang)
                } else {
                    (when, RemoteMode::Serve)
                }
            }
        };
        self.schedule(
            when,
            i,
            Ev::FetchEnd {
                id,
                into,
                url,
                oids,
                mode,
            },
        );
    }

    fn engine_event(&mut self, i: usize, event: EngineEvent) {
        match event {
            EngineEvent::Released { id, .. } => {
                self.log(format_args!("released {i} {}", id.to_hex()));
                // An Apply asked for after hearing the event was gone moved refs to it.
                let heard = self.instances[i].heard_gone.get(&id).copied();
                if let (Some(heard), Some(asked)) = (heard, self.apply_asked) {
                    if asked >= heard {
                        self.fail(
                            FailureKind::Safety,
                            format!(
                                "instance {i} aligned refs to {} after hearing it was gone",
                                id.to_hex()
                            ),
                        );
                    }
                }
                if let Some(w) = self.waiting.get(&id) {
                    let present = self
                        .repos
                        .get(&w.repo)
                        .is_some_and(|r| w.oids.iter().all(|o| r.objects.contains(o)));
                    if !present {
                        self.fail(
                            FailureKind::Safety,
                            format!("instance {i} released {} without its data", id.to_hex()),
                        );
                    }
                }
                if let Some(w) = self.waiting.remove(&id) {
                    self.released += 1;
                    self.served.insert(id, w.event);
                    // NOTIFY: the other live instances hear of it a little later.
                    self.notify_others(i, || Ev::Notify(id));
                }
            }
            EngineEvent::Expired { id, .. }
            | EngineEvent::Deleted { id }
            | EngineEvent::Withdrawn { id } => {
                self.log(format_args!("dropped {i} {}", id.to_hex()));
                if self.waiting.remove(&id).is_some() {
                    // No longer to be served; the others stop holding it waiting.
                    self.deleted += 1;
                    self.expected.retain(|e| *e != id);
                    self.notify_others(i, || Ev::NotifyGone(id));
                }
            }
            other => self.log(format_args!("event {i} {other:?}")),
        }
    }

    /// No two live instances' books hold one lease unexpired at once.
    fn check_books(&mut self) {
        let mut holders: BTreeMap<&str, usize> = BTreeMap::new();
        let mut clash = None;
        for (i, inst) in self.instances.iter().enumerate() {
            if inst.engine.is_none() {
                continue;
            }
            for (name, until) in inst.book.held() {
                if until <= self.now {
                    continue;
                }
                if let Some(other) = holders.insert(name, i) {
                    clash = Some(format!(
                        "instances {other} and {i} both hold the lease of {name}"
                    ));
                }
            }
        }
        if let Some(message) = clash {
            self.fail(FailureKind::Safety, message);
        }
    }

    /// Fetches still running after their instance lost the lease: counted, and each must have
    /// started under the lease (checked at its start) and end by its deadline.
    fn count_overlaps(&mut self) {
        let now = self.now;
        let mut late = None;
        for (i, inst) in self.instances.iter_mut().enumerate() {
            for rec in inst.fetches.values_mut() {
                if rec.deadline < now {
                    late = Some(format!(
                        "instance {i}'s fetch for {} ran past its deadline",
                        rec.lease
                    ));
                }
                if !rec.overlapped
                    && self.table.holder_at(&rec.lease, now) != Some(inst.token.as_str())
                {
                    rec.overlapped = true;
                    self.overlaps += 1;
                    if rec.deadline > rec.started + self.config.fetch_timeout {
                        late = Some(format!(
                            "instance {i}'s fetch for {} may overlap beyond the fetch timeout",
                            rec.lease
                        ));
                    }
                }
            }
        }
        if let Some(message) = late {
            self.fail(FailureKind::Safety, message);
        }
    }

    fn check_liveness(&mut self) {
        let bound = self.params.liveness_bound();
        if let Some(id) = self
            .expected
            .iter()
            .find(|id| !self.served.contains_key(id))
        {
            let message = format!(
                "{} still waiting {}ms after the heal (the bound)",
                id.to_hex(),
                ms(bound)
            );
            self.fail(FailureKind::Liveness, message);
            return;
        }
        for i in 0..self.instances.len() {
            let Some(engine) = self.instances[i].engine.as_ref() else {
                self.fail(
                    FailureKind::Liveness,
                    format!("instance {i} is down after the heal"),
                );
                return;
            };
            let stats = engine.stats();
            let w = &stats.waiting;
            let waiting = w.announcements + w.states + w.prs;
            if waiting > 0 || stats.leases_held + stats.leases_wanted > 0 {
                self.fail(
                    FailureKind::Liveness,
                    format!(
                        "instance {i} still waits on {waiting} events, holds {} and wants {} leases",
                        stats.leases_held, stats.leases_wanted
                    ),
                );
                return;
            }
        }
    }
}

fn describe(input: &Input) -> String {
    match input {
        Input::Leased { repo } => format!("leased {repo}"),
        Input::LeaseLost { repo } => format!("lost {repo}"),
        other => format!("{other:?}"),
    }
}

fn describe_command(command: &Command) -> String {
    match command {
        Command::AcquireLease { repo } => format!("acquire {repo}"),
        Command::ReleaseLease { repo } => format!("release {repo}"),
        other => format!("{other:?}"),
    }
}

/// The one-line summary of an outcome.
pub fn summary(o: &Outcome) -> String {
    match &o.failure {
        None => format!(
            "OK seed={} trace_hash={:016x} lines={} fetches={} overlaps={} released={} crashes={} deleted={}",
            o.params.seed, o.hash, o.lines, o.fetches, o.overlaps, o.released, o.crashes, o.deleted
        ),
        Some((kind, message)) => {
            let mut s = format!("FAILED seed={} {kind:?}: {message}\n", o.params.seed);
            for line in &o.tail {
                let _ = writeln!(s, "  {line}");
            }
            let _ = write!(
                s,
                "  reproduce: cargo run -p graspd-sim --release -- --instances --seed {}",
                o.params.seed
            );
            s
        }
    }
}
