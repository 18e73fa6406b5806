//! The host world: the real graspd-host server (driver, engine, redb store, relay sessions and
//! hub) on the simulated runtime, with simulated clients publishing, pushing and subscribing
//! over in-memory WebSockets, other git servers that hang, fail, crawl or lie until they heal,
//! and crashes that restart the server from what its disk had synced.
//!
//! What is checked, and when:
//! - every live event a subscriber receives is already durable in the store, its git data is
//!   in the repository, and no subscription receives it twice;
//! - after every restart and every few seconds while the server runs, every event that got
//!   `OK true` and has not reached its purgatory expiry is served or waiting in purgatory (or
//!   replaced by a newer acknowledged version, or deleted), never neither;
//! - a PR whose kind 5 deletion got `OK true` is never served from then on, and no longer
//!   waits in purgatory shortly after;
//! - an event past its purgatory expiry that was not served is neither waiting nor, ever
//!   after, served;
//! - no remote domain ever has more fetches talking to it at once than the configured limit;
//! - after the world heals and settles: every acknowledged event whose data can be had, and
//!   that neither expired nor was deleted, is served.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use graspd_core::acceptance::OwnService;
use graspd_core::{EventId, Oid, RepoKey, Time};
use graspd_host::driver::{handlers, serve_relay, Node, Settings};
use graspd_host::follow::{ClientLimits, FollowerHandle, RelayFollower};
use graspd_host::relay::RelayLimits;
use graspd_host::runtime::unblock;
use graspd_host::store::{Store, StoreError};
use graspd_host::{Config, Runtime};
use nostr::event::Event;
use nostr::key::Keys;
use nostr::nips::nip19::ToBech32;

use super::disk::Disk;
use super::git::{self, Fault, ModelGit, Remote, SharedGit};
use super::runtime::{Group, JobDelays, SimRuntime, Step};
use super::socket::{self, SimSocket};
use crate::forge;
use crate::relays::{keys, signed};
use crate::rng::Rng;
use crate::runner::FailureKind;
use crate::trace::{Trace, TraceMode};
use crate::world::{OWN_ORIGIN, OWN_RELAY};

/// Virtual time the run lasts: activity, then healing, then settling.
const RUN_FOR: Duration = Duration::from_secs(20 * 60);
/// Every fault has healed by then.
const HEALED_BY: Duration = Duration::from_secs(5 * 60);
/// Created-at of the first event (the wall clock's origin).
const T0: u64 = super::runtime::WALL_ORIGIN_SECS;
/// How often a client retries an event whose connection broke before `OK`.
const PUBLISH_ATTEMPTS: u32 = 6;
/// Most polls a seed may take (a livelock is a failure, not a hang).
const MAX_POLLS: u64 = 5_000_000;
/// How often the store is audited while the server runs.
const AUDIT_EVERY: Duration = Duration::from_secs(30);
/// How long after its deletion's `OK` a PR may still sit in the purgatory table (the engine's
/// `Deleted` is written by a task of its own).
const DELETE_MARGIN: Duration = Duration::from_secs(10);
/// How long after its expiry an event may still wait: an Apply that would release it holds
/// the expiry until it ends (its deadline is the 60 s local command timeout).
const EXPIRY_MARGIN: Duration = Duration::from_secs(90);
/// The store keeps expiry as whole unix seconds: a restart may bring it this much earlier.
const EXPIRY_ROUNDING: Duration = Duration::from_secs(2);

/// One host world, drawn from a seed (or built by a named scenario).
#[derive(Clone, Debug)]
pub struct HostWorld {
    pub seed: u64,
    pub repos: usize,
    pub states_per_repo: usize,
    pub contributors: usize,
    pub prs_each: usize,
    pub remotes: Vec<(Fault, Duration)>,
    /// When the server crashes, and how long it stays down.
    pub crashes: Vec<(Duration, Duration)>,
    pub job_delays: JobDelays,
    /// Percent of PRs whose commit is already in the repository (released at once).
    pub prs_in_repo_percent: u64,
    /// The disk loses even synced writes at a crash (to show the checks catch lost data).
    pub lying_disk: bool,
    /// How long an event waits in purgatory for its data.
    pub purgatory_expiry: Duration,
    /// Percent of PRs their author deletes (kind 5) after the `OK`.
    pub deletions_percent: u64,
    /// The fetches one remote domain may have at once (`--max-fetches-per-domain`).
    pub max_fetches_per_domain: usize,
    /// Overrides the engine's `fetch_report_grace` (to show the fetch-limit check bites).
    pub fetch_report_grace: Option<Duration>,
}

impl HostWorld {
    pub fn random(seed: u64) -> HostWorld {
        let mut rng = Rng::new(seed).child("host-world");
        let remotes = (0..rng.range(1, 3))
            .map(|_| {
                let fault = match rng.below(6) {
                    0 => Fault::Hung,
                    1 => Fault::Failing,
                    2 => Fault::Slow(Duration::from_millis(rng.range(100, 30_000))),
                    3 => Fault::Lying,
                    _ => Fault::Healthy,
                };
                (
                    fault,
                    Duration::from_secs(rng.range(0, HEALED_BY.as_secs())),
                )
            })
            .collect();
        let crashes = (0..rng.below(3))
            .map(|_| {
                (
                    Duration::from_millis(rng.range(500, 200_000)),
                    Duration::from_millis(rng.range(10, 5_000)),
                )
            })
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect();
        HostWorld {
            seed,
            repos: rng.range(1, 2) as usize,
            states_per_repo: rng.range(1, 4) as usize,
            contributors: rng.range(1, 4) as usize,
            prs_each: rng.range(2, 12) as usize,
            remotes,
            crashes,
            job_delays: JobDelays {
                min_ms: 0,
                max_ms: rng.range(1, 80),
            },
            prs_in_repo_percent: rng.range(30, 90),
            lying_disk: false,
            purgatory_expiry: if rng.percent(30) {
                Duration::from_secs(rng.range(30, 600))
            } else {
                LONG_EXPIRY
            },
            deletions_percent: if rng.percent(50) { rng.range(5, 40) } else { 0 },
            max_fetches_per_domain: rng.range(1, 3) as usize,
            fetch_report_grace: None,
        }
    }

    /// Many PRs whose commit is already in the repository, from many connections at once,
    /// no faults: the shape of a flood that found acknowledged events never served.
    pub fn pr_flood(seed: u64) -> HostWorld {
        HostWorld {
            seed,
            repos: 1,
            states_per_repo: 1,
            contributors: 6,
            prs_each: 12,
            remotes: vec![(Fault::Healthy, Duration::ZERO)],
            crashes: Vec::new(),
            job_delays: JobDelays {
                min_ms: 0,
                max_ms: 40,
            },
            prs_in_repo_percent: 100,
            lying_disk: false,
            purgatory_expiry: LONG_EXPIRY,
            deletions_percent: 0,
            max_fetches_per_domain: 2,
            fetch_report_grace: None,
        }
    }

    /// The flood with two crashes in the middle of it.
    pub fn pr_flood_with_crashes(seed: u64) -> HostWorld {
        HostWorld {
            crashes: vec![
                (Duration::from_millis(1_500), Duration::from_millis(300)),
                (Duration::from_millis(4_000), Duration::from_millis(50)),
            ],
            ..HostWorld::pr_flood(seed)
        }
    }

    /// Every remote hung, failing or lying until late; states must be fetched after healing.
    pub fn bad_remotes(seed: u64) -> HostWorld {
        HostWorld {
            seed,
            repos: 2,
            states_per_repo: 3,
            contributors: 2,
            prs_each: 4,
            remotes: vec![
                (Fault::Hung, Duration::from_secs(200)),
                (Fault::Failing, Duration::from_secs(150)),
                (Fault::Lying, Duration::from_secs(240)),
            ],
            crashes: vec![(Duration::from_secs(100), Duration::from_secs(2))],
            job_delays: JobDelays {
                min_ms: 0,
                max_ms: 30,
            },
            prs_in_repo_percent: 40,
            lying_disk: false,
            purgatory_expiry: LONG_EXPIRY,
            deletions_percent: 0,
            max_fetches_per_domain: 1,
            fetch_report_grace: None,
        }
    }

    /// PRs whose data mostly never comes, a short purgatory expiry, authors deleting many of
    /// their PRs while they wait or after they are served, one fetch per domain at a time, and
    /// a crash in the middle.
    pub fn deletions_and_expiry(seed: u64) -> HostWorld {
        HostWorld {
            seed,
            repos: 1,
            states_per_repo: 2,
            contributors: 4,
            prs_each: 6,
            remotes: vec![
                (
                    Fault::Slow(Duration::from_secs(5)),
                    Duration::from_secs(120),
                ),
                (Fault::Hung, Duration::from_secs(60)),
            ],
            crashes: vec![(Duration::from_secs(40), Duration::from_secs(3))],
            job_delays: JobDelays {
                min_ms: 0,
                max_ms: 40,
            },
            prs_in_repo_percent: 30,
            lying_disk: false,
            purgatory_expiry: Duration::from_secs(90),
            deletions_percent: 40,
            max_fetches_per_domain: 1,
            fetch_report_grace: None,
        }
    }
}

/// The purgatory expiry of most worlds: longer than a run, so nothing expires.
const LONG_EXPIRY: Duration = Duration::from_secs(3 * 3600);

/// A named scenario: (name, what it is, builder from a seed).
pub type Named = (&'static str, &'static str, fn(u64) -> HostWorld);

/// The named host scenarios.
pub const NAMED: &[Named] = &[
    (
        "host-pr-flood",
        "PRs whose commit is already here, from many connections at once",
        HostWorld::pr_flood,
    ),
    (
        "host-pr-flood-crashes",
        "the PR flood with two crashes in the middle",
        HostWorld::pr_flood_with_crashes,
    ),
    (
        "host-bad-remotes",
        "states only on hung, failing and lying remotes that heal late, and a crash",
        HostWorld::bad_remotes,
    ),
    (
        "host-deletions-expiry",
        "PRs deleted by their authors and PRs expiring from purgatory, one fetch per domain",
        HostWorld::deletions_and_expiry,
    ),
];

/// What an acknowledged event needs and whether the world will ever have it.
#[derive(Clone, Debug)]
struct Expect {
    label: String,
    repo: RepoKey,
    /// Objects that must be in the repository when it is served.
    needs: Vec<Oid>,
    /// The data is pushed or on a remote that heals: it must be served in the end.
    obtainable: bool,
    /// States: (author, d, created_at) for "a newer one replaced it".
    state_of: Option<(nostr::key::PublicKey, String, u64)>,
}

#[derive(Default)]
struct Checks {
    failure: Option<(FailureKind, String)>,
    acked: BTreeMap<EventId, Expect>,
    /// When each event was first sent: the server admitted it no earlier.
    sent_at: BTreeMap<EventId, Duration>,
    /// When each acknowledged event got its `OK true`.
    ok_at: BTreeMap<EventId, Duration>,
    /// PRs whose deletion got `OK true`, and when.
    deleted: BTreeMap<EventId, Duration>,
    /// Acknowledged events seen gone after their expiry without being served.
    expired: BTreeSet<EventId>,
    /// Every event we built, by id: what it needs (the subscriber checks served events).
    built: BTreeMap<EventId, Expect>,
    live_seen: BTreeSet<(u64, EventId)>,
    served_live: u64,
    oks: u64,
    restarts: u64,
    pushes_accepted: u64,
}

struct Shared {
    runtime: SimRuntime,
    disk: Disk,
    git: SharedGit,
    config: Config,
    /// The world's purgatory expiry and per-domain fetch limit, as configured.
    expiry: Duration,
    fetch_limit: usize,
    fetch_report_grace: Option<Duration>,
    node: Mutex<Option<(Group, Arc<Node>)>>,
    checks: Mutex<Checks>,
    trace: Mutex<Trace>,
    ready: Mutex<BTreeSet<usize>>,
    next_connection: Mutex<u64>,
}

impl Shared {
    fn checks(&self) -> MutexGuard<'_, Checks> {
        self.checks.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn now(&self) -> Time {
        Time::from_millis(u64::try_from(self.runtime.elapsed().as_millis()).unwrap_or(u64::MAX))
    }

    fn log(&self, line: std::fmt::Arguments<'_>) {
        let now = self.now();
        self.trace
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .log(now, line);
    }

    fn fail(&self, kind: FailureKind, why: String) {
        self.log(format_args!("FAILURE {why}"));
        let mut checks = self.checks();
        if checks.failure.is_none() {
            checks.failure = Some((kind, why));
        }
    }

    fn node(&self) -> Option<(Group, Arc<Node>)> {
        self.node.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// A new in-memory connection to the running server; waits while it is down.
    async fn connect(&self) -> (u64, SimSocket) {
        loop {
            if let Some((group, node)) = self.node() {
                let (client, server) = socket::pair();
                self.runtime
                    .in_group(group)
                    .spawn(Box::pin(serve_relay(node, server, None)));
                let mut n = self
                    .next_connection
                    .lock()
                    .unwrap_or_else(|e| e.into_inner());
                *n += 1;
                return (*n, client);
            }
            self.runtime.sleep(Duration::from_millis(100)).await;
        }
    }
}

/// The result of one host run.
#[derive(Debug)]
pub struct HostOutcome {
    pub hash: u64,
    pub lines: u64,
    pub failure: Option<(FailureKind, String)>,
    pub tail: Vec<String>,
    pub acked: usize,
    pub served_live: u64,
    pub restarts: u64,
    pub polls: u64,
    pub pushes_accepted: u64,
    /// PRs whose deletion got `OK true`.
    pub deleted: usize,
    /// Acknowledged events that expired from purgatory unserved.
    pub expired: usize,
    /// The most fetches one domain had at once.
    pub most_fetching: usize,
}

fn engine_settings(config: &Config) -> Settings {
    Settings {
        purgatory_expiry: config.purgatory_expiry(),
        max_fetch_bytes: config.max_fetch_bytes,
        allow_private_remotes: false,
        relay_limits: RelayLimits::default(),
        relay_info: Default::default(),
        refusals: Arc::default(),
        store_writers: graspd_host::store::DEFAULT_MAX_WRITES_PER_COMMIT,
        sync_lease: std::time::Duration::from_secs(30),
    }
}

fn sim_config(world: &HostWorld) -> Config {
    let mut config = Config::defaults();
    config.public_url = Some(OWN_ORIGIN.to_owned());
    config.fetch_timeout_secs = 20;
    let e = &mut config.engine;
    e.purgatory_expiry_secs = world.purgatory_expiry.as_secs();
    e.max_fetches_per_domain = world.max_fetches_per_domain;
    e.sync_delay_published_ms = 3_000;
    e.sync_delay_synced_ms = 500;
    e.sync_backoff_ms = 1_000;
    e.sync_backoff_max_ms = 16_000;
    config
}

async fn start_node(shared: &Arc<Shared>, group: Group) -> Result<Arc<Node>, StoreError> {
    let node_rt = shared.runtime.in_group(group);
    let runtime: Arc<dyn Runtime> = Arc::new(node_rt.clone());
    let backend = shared.disk.backend();
    let store = unblock(&*runtime, move || {
        Store::open_on(backend, Path::new("sim-disk"))
    })
    .await
    .map_err(|e| StoreError::Io {
        path: "sim-disk".into(),
        detail: e.to_string(),
    })??;
    let own = OwnService::new(OWN_ORIGIN).expect("the simulated origin parses");
    let follower = FollowerHandle::new(
        Arc::clone(&runtime),
        RelayFollower::new(shared.config.follow.config(), own),
        ClientLimits::default(),
    );
    let git = Arc::new(ModelGit {
        world: shared.git.clone(),
        runtime: node_rt,
    });
    let mut engine = shared.config.engine_config();
    if let Some(grace) = shared.fetch_report_grace {
        engine.fetch_report_grace = grace;
    }
    Node::start_with(
        runtime,
        engine,
        store,
        git,
        engine_settings(&shared.config),
        follower,
    )
    .await
}

/// Starts the server, then crashes and restarts it on schedule.
async fn controller(shared: Arc<Shared>, crashes: Vec<(Duration, Duration)>) {
    let mut group: Group = 1;
    let mut node = match start_node(&shared, group).await {
        Ok(node) => node,
        Err(e) => return shared.fail(FailureKind::Crash, format!("server did not start: {e}")),
    };
    *shared.node.lock().unwrap_or_else(|e| e.into_inner()) = Some((group, Arc::clone(&node)));
    shared.log(format_args!("server up (incarnation {group})"));
    for (at, down_for) in crashes {
        let wait = at.saturating_sub(shared.runtime.elapsed());
        shared.runtime.sleep(wait).await;
        *shared.node.lock().unwrap_or_else(|e| e.into_inner()) = None;
        drop(node);
        shared.disk.crash();
        shared.runtime.kill(group);
        shared.log(format_args!("CRASH (incarnation {group})"));
        shared.runtime.sleep(down_for).await;
        group += 1;
        node = match start_node(&shared, group).await {
            Ok(node) => node,
            Err(e) => {
                return shared.fail(FailureKind::Crash, format!("server did not restart: {e}"))
            }
        };
        shared.checks().restarts += 1;
        audit(&shared, node.store(), "after a restart");
        *shared.node.lock().unwrap_or_else(|e| e.into_inner()) = Some((group, Arc::clone(&node)));
        shared.log(format_args!("server up (incarnation {group})"));
    }
}

/// The store against what clients were told. Never neither: every acknowledged event is
/// served, waiting, replaced by a newer acknowledged version of itself, deleted, or past its
/// expiry. A deleted PR is not served, and not waiting once its deletion had time to be
/// written. An event past its expiry that was not served is not waiting, and is never served
/// after. No domain had more fetches at once than the limit.
fn audit(shared: &Shared, store: &Store, when: &str) {
    let waiting: BTreeSet<EventId> = match store.waiting_all() {
        Ok(all) => all.into_iter().map(|w| w.event.id).collect(),
        Err(e) => return shared.fail(FailureKind::Safety, format!("store unreadable {when}: {e}")),
    };
    let now = shared.runtime.elapsed();
    let (acked, sent_at, ok_at, deleted, mut expired) = {
        let c = shared.checks();
        (
            c.acked.clone(),
            c.sent_at.clone(),
            c.ok_at.clone(),
            c.deleted.clone(),
            c.expired.clone(),
        )
    };
    let mut failure = None;
    for (id, expect) in &acked {
        let served = store.get(id).ok().flatten().is_some();
        let is_waiting = waiting.contains(id);
        let label = &expect.label;
        failure = if let Some(at) = deleted.get(id) {
            if served {
                Some(format!(
                    "{when}: {label} is served after its deletion got OK"
                ))
            } else if is_waiting && now > *at + DELETE_MARGIN {
                let late = (now - *at).as_secs();
                Some(format!(
                    "{when}: {label} still waits in purgatory {late}s after its deletion got OK"
                ))
            } else {
                None
            }
        } else if expired.contains(id) {
            let place = if served { "served" } else { "waiting" };
            (served || is_waiting).then(|| format!("{when}: {label} is {place} after it expired"))
        } else if served || replaced(&acked, expect) {
            None
        } else if is_waiting {
            let acked_at = ok_at.get(id).copied().unwrap_or(now);
            let late = now.saturating_sub(acked_at + shared.expiry);
            (late > EXPIRY_MARGIN).then(|| {
                format!(
                    "{when}: {label} still waits in purgatory {}s past its expiry",
                    late.as_secs()
                )
            })
        } else if sent_at
            .get(id)
            .is_some_and(|t| now + EXPIRY_ROUNDING >= *t + shared.expiry)
        {
            expired.insert(*id);
            None
        } else {
            Some(format!(
                "{when}: {label} ({}) got OK true but is neither served nor waiting",
                id.to_hex()
            ))
        };
        if failure.is_some() {
            break;
        }
    }
    shared.checks().expired = expired;
    if let Some(why) = failure {
        return shared.fail(FailureKind::Safety, why);
    }
    let most = shared.git.lock().most_fetching.clone();
    if let Some((n, domain, at)) = most.filter(|(n, _, _)| *n > shared.fetch_limit) {
        shared.fail(
            FailureKind::Safety,
            format!(
                "{n} fetches talked to {domain} at once (at {:.3}s), over the limit of {}",
                at.as_secs_f64(),
                shared.fetch_limit
            ),
        );
    }
}

/// Audits the store every few seconds while the server is up, until the run ends.
async fn auditor(shared: Arc<Shared>) {
    while shared.runtime.elapsed() + AUDIT_EVERY < RUN_FOR {
        shared.runtime.sleep(AUDIT_EVERY).await;
        if let Some((_, node)) = shared.node() {
            audit(&shared, node.store(), "while running");
        }
    }
}

/// A newer acknowledged state of the same author and `d` exists.
fn replaced(acked: &BTreeMap<EventId, Expect>, expect: &Expect) -> bool {
    let Some((author, d, at)) = &expect.state_of else {
        return false;
    };
    acked.values().any(|other| {
        other
            .state_of
            .as_ref()
            .is_some_and(|(a, od, oat)| a == author && od == d && oat > at)
    })
}

/// Publishes `event` on the client's connection (reconnecting when it broke) until the server
/// answers `OK`; records an `OK true`.
async fn publish(
    shared: &Arc<Shared>,
    who: &str,
    connection: &mut Option<SimSocket>,
    event: &Event,
) -> Option<(bool, String)> {
    let json = serde_json::json!(["EVENT", event]).to_string();
    let first_sent = shared.runtime.elapsed();
    shared
        .checks()
        .sent_at
        .entry(event.id)
        .or_insert(first_sent);
    for _ in 0..PUBLISH_ATTEMPTS {
        let socket = match connection.take() {
            Some(socket) => socket,
            None => shared.connect().await.1,
        };
        if !socket.send_text(json.clone()) {
            continue;
        }
        while let Some(text) = socket.next_text().await {
            let Ok(serde_json::Value::Array(parts)) = serde_json::from_str(&text) else {
                continue;
            };
            if parts.first().and_then(|v| v.as_str()) != Some("OK")
                || parts.get(1).and_then(|v| v.as_str()) != Some(&event.id.to_hex())
            {
                continue;
            }
            let ok = parts.get(2).and_then(serde_json::Value::as_bool) == Some(true);
            let message = parts
                .get(3)
                .and_then(|v| v.as_str())
                .unwrap_or("")
                .to_owned();
            let mut checks = shared.checks();
            checks.oks += 1;
            let label = checks
                .built
                .get(&event.id)
                .map_or_else(|| "?".to_owned(), |e| e.label.clone());
            if ok {
                if let Some(expect) = checks.built.get(&event.id).cloned() {
                    checks.acked.insert(event.id, expect);
                    let now = shared.runtime.elapsed();
                    checks.ok_at.entry(event.id).or_insert(now);
                }
            }
            drop(checks);
            shared.log(format_args!("{who}: OK {ok} {label} {message:?}"));
            *connection = Some(socket);
            return Some((ok, message));
        }
        shared.log(format_args!("{who}: connection lost before OK; retrying"));
    }
    None
}

/// A push of `refs` (objects `objects`) to `repo`, decided by the real push hook.
async fn push(
    shared: &Arc<Shared>,
    who: &str,
    repo: &RepoKey,
    refs: &BTreeMap<String, Oid>,
    objects: &[Oid],
) -> bool {
    let Some((_, node)) = shared.node() else {
        shared.log(format_args!("{who}: push: server down"));
        return false;
    };
    let current = match shared.git.lock().repos.get(repo) {
        Some(r) => r.refs.clone(),
        None => {
            shared.log(format_args!("{who}: push: repository not found"));
            return false;
        }
    };
    let updates: Vec<graspd_core::RefUpdate> = refs
        .iter()
        .filter(|(name, oid)| current.get(*name) != Some(oid))
        .map(|(name, oid)| graspd_core::RefUpdate {
            old: current.get(name).copied().unwrap_or(Oid::ZERO),
            new: *oid,
            name: name.clone(),
        })
        .collect();
    if updates.is_empty() {
        return true;
    }
    let hooks = handlers(&node).push;
    let verdicts = hooks.decide_push(repo, &current, &updates).await;
    if let Some(Err(reason)) = verdicts.iter().find(|v| v.is_err()) {
        shared.log(format_args!("{who}: push refused: {reason}"));
        return false;
    }
    git::push(&mut shared.git.lock(), repo, objects, refs);
    shared.checks().pushes_accepted += 1;
    shared.log(format_args!("{who}: pushed {} ref(s)", updates.len()));
    hooks.on_pushed(repo, &updates).await;
    true
}

/// One subscriber: every live event it gets is checked; reconnects after a crash.
async fn subscriber(shared: Arc<Shared>) {
    let req = serde_json::json!(["REQ", "all", {"kinds": [30617, 30618, 1618]}]).to_string();
    loop {
        let (connection, socket) = shared.connect().await;
        if !socket.send_text(req.clone()) {
            continue;
        }
        let mut stored = true;
        while let Some(text) = socket.next_text().await {
            let Ok(serde_json::Value::Array(parts)) = serde_json::from_str(&text) else {
                continue;
            };
            match parts.first().and_then(|v| v.as_str()) {
                Some("EOSE") => stored = false,
                Some("EVENT") if !stored => {
                    let Some(event) = parts
                        .get(2)
                        .and_then(|v| serde_json::from_value::<Event>(v.clone()).ok())
                    else {
                        continue;
                    };
                    check_served(&shared, connection, &event);
                }
                _ => {}
            }
        }
    }
}

/// A live event: durable before served, with its data, once per subscription.
fn check_served(shared: &Arc<Shared>, connection: u64, event: &Event) {
    let expect = shared.checks().built.get(&event.id).cloned();
    let label = expect
        .as_ref()
        .map_or_else(|| event.id.to_hex(), |e| e.label.clone());
    shared.log(format_args!("sub#{connection}: live {label}"));
    let fresh = {
        let mut checks = shared.checks();
        checks.served_live += 1;
        checks.live_seen.insert((connection, event.id))
    };
    if !fresh {
        return shared.fail(
            FailureKind::Safety,
            format!("{label} was delivered twice on one subscription"),
        );
    }
    if shared.checks().expired.contains(&event.id) {
        return shared.fail(
            FailureKind::Safety,
            format!("{label} was served live after it expired"),
        );
    }
    if let Some((_, node)) = shared.node() {
        if node.store().get(&event.id).ok().flatten().is_none() {
            let deleted = shared.checks().deleted.contains_key(&event.id);
            let why = if deleted {
                format!("{label} was served live after its deletion got OK")
            } else {
                format!("{label} was served live before it was durable in the store")
            };
            return shared.fail(FailureKind::Safety, why);
        }
    }
    if let Some(expect) = expect {
        let git = shared.git.lock();
        let objects = git.repos.get(&expect.repo).map(|r| &r.objects);
        let missing = expect
            .needs
            .iter()
            .filter(|o| !objects.is_some_and(|have| have.contains(o)))
            .count();
        drop(git);
        if missing > 0 {
            shared.fail(
                FailureKind::Safety,
                format!("{label} was served with {missing} object(s) not in the repository"),
            );
        }
    }
}

struct Plan {
    owner: Keys,
    contributors: Vec<Keys>,
    remote_domains: Vec<String>,
}

fn clone_url(domain: &str, owner: &Keys, identifier: &str) -> String {
    let npub = owner.public_key().to_bech32().expect("bech32 of a key");
    format!("https://{domain}/{npub}/{identifier}.git")
}

fn own_clone_url(owner: &Keys, identifier: &str) -> String {
    let npub = owner.public_key().to_bech32().expect("bech32 of a key");
    format!("{OWN_ORIGIN}/{npub}/{identifier}.git")
}

fn resign(event: &Event, keys: &Keys) -> Event {
    let tags = event
        .tags
        .iter()
        .map(|t| t.as_slice().to_vec())
        .collect::<Vec<_>>();
    signed(
        keys,
        event.kind.as_u16(),
        event.created_at.as_secs(),
        tags,
        &event.content,
    )
}

fn forge_user(keys: &Keys, name: &str) -> forge::User {
    forge::User {
        name: name.to_owned(),
        pubkey: keys.public_key(),
        npub: keys.public_key().to_bech32().expect("bech32 of a key"),
    }
}

/// The owner of one repository: announce it, publish its states, push what is to be pushed.
async fn owner_script(shared: Arc<Shared>, world: HostWorld, plan: Arc<Plan>, repo_index: usize) {
    let mut rng = Rng::new(world.seed).child(&format!("owner-{repo_index}"));
    let who = format!("owner/{repo_index}");
    let identifier = format!("repo{repo_index}");
    let owner = forge_user(&plan.owner, "owner");
    let repo = RepoKey::new(
        plan.owner.public_key(),
        graspd_core::Identifier::new(&identifier).expect("valid identifier"),
    );
    let mut clone = vec![own_clone_url(&plan.owner, &identifier)];
    clone.extend(
        plan.remote_domains
            .iter()
            .map(|d| clone_url(d, &plan.owner, &identifier)),
    );
    let announcement = resign(
        &forge::announcement(
            &owner,
            T0,
            &identifier,
            &clone,
            &[OWN_RELAY.to_owned()],
            &[],
        ),
        &plan.owner,
    );
    let mut created_at = T0;
    let mut states = Vec::new();
    for k in 0..world.states_per_repo {
        created_at += rng.range(1, 30);
        let tip = forge::oid(&mut rng);
        let refs: BTreeMap<String, Oid> = [("refs/heads/main".to_owned(), tip)].into();
        let state = resign(
            &forge::state(
                &owner,
                created_at,
                &identifier,
                &refs,
                Some("refs/heads/main"),
            ),
            &plan.owner,
        );
        // The first state is always pushed (PRs need a repository with data); later ones are
        // pushed or only on a remote.
        let pushed = k == 0 || rng.percent(50);
        if !pushed {
            let domain = rng.index(plan.remote_domains.len());
            let mut git = shared.git.lock();
            if let Some(remote) = git.remotes.get_mut(&plan.remote_domains[domain]) {
                remote.objects.insert(tip);
            }
        }
        states.push((state, refs, tip, pushed));
    }
    {
        let mut checks = shared.checks();
        checks.built.insert(
            announcement.id,
            Expect {
                label: format!("announcement/{repo_index}"),
                repo: repo.clone(),
                needs: Vec::new(),
                obtainable: true,
                state_of: None,
            },
        );
        for (k, (state, _, tip, _)) in states.iter().enumerate() {
            checks.built.insert(
                state.id,
                Expect {
                    label: format!("state/{repo_index}.{k}"),
                    repo: repo.clone(),
                    needs: vec![*tip],
                    obtainable: true,
                    state_of: Some((
                        plan.owner.public_key(),
                        identifier.clone(),
                        state.created_at.as_secs(),
                    )),
                },
            );
        }
    }
    let mut connection = None;
    publish(&shared, &who, &mut connection, &announcement).await;
    for (k, (state, refs, tip, pushed)) in states.iter().enumerate() {
        if k > 0 {
            shared
                .runtime
                .sleep(Duration::from_millis(rng.range(0, 20_000)))
                .await;
        }
        publish(&shared, &who, &mut connection, state).await;
        if *pushed {
            for _ in 0..20 {
                shared
                    .runtime
                    .sleep(Duration::from_millis(rng.range(10, 2_000)))
                    .await;
                if push(&shared, &who, &repo, refs, &[*tip]).await {
                    break;
                }
            }
        }
        if k == 0 {
            shared
                .ready
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .insert(repo_index);
        }
    }
}

/// A contributor: once the repository has data, publishes PRs one after another.
async fn contributor_script(shared: Arc<Shared>, world: HostWorld, plan: Arc<Plan>, n: usize) {
    let mut rng = Rng::new(world.seed).child(&format!("contributor-{n}"));
    let who = format!("contributor/{n}");
    let keys = &plan.contributors[n];
    let user = forge_user(keys, &who);
    let repo_index = rng.index(world.repos);
    let identifier = format!("repo{repo_index}");
    let repo = RepoKey::new(
        plan.owner.public_key(),
        graspd_core::Identifier::new(&identifier).expect("valid identifier"),
    );
    while !shared
        .ready
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .contains(&repo_index)
    {
        shared.runtime.sleep(Duration::from_millis(200)).await;
    }
    let coordinate = forge::coordinate(&plan.owner.public_key(), &identifier);
    let mut connection = None;
    for k in 0..world.prs_each {
        let in_repo = {
            let git = shared.git.lock();
            git.repos
                .get(&repo)
                .and_then(|r| r.refs.get("refs/heads/main").copied())
        };
        let domain = plan.remote_domains[rng.index(plan.remote_domains.len())].clone();
        let (commit, obtainable) = match in_repo {
            Some(tip) if rng.percent(world.prs_in_repo_percent) => (tip, true),
            _ => {
                let commit = forge::oid(&mut rng);
                let on_remote = rng.percent(70);
                if on_remote {
                    if let Some(remote) = shared.git.lock().remotes.get_mut(&domain) {
                        remote.objects.insert(commit);
                    }
                }
                (commit, on_remote)
            }
        };
        let clone = vec![clone_url(&domain, keys, &identifier)];
        let created_at = T0 + 60 + k as u64;
        let pr = resign(
            &forge::pull_request(
                &user,
                created_at,
                std::slice::from_ref(&coordinate),
                commit,
                &clone,
                None,
            ),
            keys,
        );
        shared.checks().built.insert(
            pr.id,
            Expect {
                label: format!("pr/{n}.{k}"),
                repo: repo.clone(),
                needs: vec![commit],
                obtainable,
                state_of: None,
            },
        );
        let acked = publish(&shared, &who, &mut connection, &pr).await;
        if acked.is_some_and(|(ok, _)| ok) && rng.percent(world.deletions_percent) {
            shared
                .runtime
                .sleep(Duration::from_millis(rng.range(0, 3_000)))
                .await;
            delete(&shared, &who, &mut connection, (&user, keys), &pr, &repo).await;
        }
        shared
            .runtime
            .sleep(Duration::from_millis(rng.range(0, 300)))
            .await;
    }
}

/// The author deletes its PR (NIP-09, by id); an `OK true` makes the PR deleted for the checks.
async fn delete(
    shared: &Arc<Shared>,
    who: &str,
    connection: &mut Option<SimSocket>,
    (user, keys): (&forge::User, &Keys),
    pr: &Event,
    repo: &RepoKey,
) {
    let created_at = pr.created_at.as_secs() + 1;
    let deletion = resign(&forge::deletion(user, created_at, &[pr.id], &[]), keys);
    let label = {
        let mut checks = shared.checks();
        let target = checks
            .built
            .get(&pr.id)
            .map_or_else(|| pr.id.to_hex(), |e| e.label.clone());
        let label = format!("deletion of {target}");
        checks.built.insert(
            deletion.id,
            Expect {
                label: label.clone(),
                repo: repo.clone(),
                needs: Vec::new(),
                obtainable: true,
                state_of: None,
            },
        );
        label
    };
    if let Some((true, _)) = publish(shared, who, connection, &deletion).await {
        let now = shared.runtime.elapsed();
        shared.checks().deleted.entry(pr.id).or_insert(now);
        shared.log(format_args!("{who}: {label} acknowledged"));
    }
}

/// After healing and settling: everything obtainable is served, nothing waits that has its
/// data, and the store agrees.
fn check_settled(shared: &Arc<Shared>) {
    let Some((_, node)) = shared.node() else {
        return shared.fail(
            FailureKind::Liveness,
            "the server is down at the end".into(),
        );
    };
    let store = node.store();
    audit(shared, store, "at the end");
    if shared.checks().failure.is_some() {
        return;
    }
    let (acked, gone) = {
        let c = shared.checks();
        let gone: BTreeSet<EventId> = c.deleted.keys().chain(&c.expired).copied().collect();
        (c.acked.clone(), gone)
    };
    let waiting: BTreeMap<EventId, ()> = store
        .waiting_all()
        .map(|all| all.into_iter().map(|w| (w.event.id, ())).collect())
        .unwrap_or_default();
    for (id, expect) in &acked {
        if !expect.obtainable || replaced(&acked, expect) || gone.contains(id) {
            continue;
        }
        if store.get(id).ok().flatten().is_none() {
            let place = if waiting.contains_key(id) {
                "still waiting in purgatory"
            } else {
                "gone"
            };
            return shared.fail(
                FailureKind::Liveness,
                format!(
                    "{} ({}) is {place} after the world healed, though its data is here",
                    expect.label,
                    id.to_hex()
                ),
            );
        }
    }
}

/// Runs one host world.
pub fn run(world: &HostWorld, mode: TraceMode) -> HostOutcome {
    let root = Rng::new(world.seed);
    let runtime = SimRuntime::new(root.child("scheduler"), world.job_delays);
    let mut rng = root.child("plan");
    let plan = Arc::new(Plan {
        owner: keys(&mut rng),
        contributors: (0..world.contributors).map(|_| keys(&mut rng)).collect(),
        remote_domains: (0..world.remotes.len())
            .map(|i| format!("r{i}.example"))
            .collect(),
    });
    let git = SharedGit::default();
    {
        let mut g = git.lock();
        for (domain, (fault, heals_at)) in plan.remote_domains.iter().zip(&world.remotes) {
            g.remotes.insert(
                domain.clone(),
                Remote {
                    objects: BTreeSet::new(),
                    fault: *fault,
                    heals_at: *heals_at,
                },
            );
        }
    }
    let shared = Arc::new(Shared {
        runtime: runtime.clone(),
        disk: if world.lying_disk {
            Disk::lying()
        } else {
            Disk::new()
        },
        git,
        config: sim_config(world),
        expiry: world.purgatory_expiry,
        fetch_limit: world.max_fetches_per_domain,
        fetch_report_grace: world.fetch_report_grace,
        node: Mutex::new(None),
        checks: Mutex::new(Checks::default()),
        trace: Mutex::new(Trace::new(mode)),
        ready: Mutex::new(BTreeSet::new()),
        next_connection: Mutex::new(0),
    });
    shared.log(format_args!(
        "host world seed={} repos={} states={} contributors={} prs_each={} remotes={:?} crashes={:?} \
         expiry={}s deletions={}% fetches_per_domain={}",
        world.seed,
        world.repos,
        world.states_per_repo,
        world.contributors,
        world.prs_each,
        world.remotes,
        world.crashes,
        world.purgatory_expiry.as_secs(),
        world.deletions_percent,
        world.max_fetches_per_domain
    ));
    runtime.spawn(Box::pin(controller(
        Arc::clone(&shared),
        world.crashes.clone(),
    )));
    runtime.spawn(Box::pin(subscriber(Arc::clone(&shared))));
    runtime.spawn(Box::pin(auditor(Arc::clone(&shared))));
    for r in 0..world.repos {
        runtime.spawn(Box::pin(owner_script(
            Arc::clone(&shared),
            world.clone(),
            Arc::clone(&plan),
            r,
        )));
    }
    for n in 0..world.contributors {
        runtime.spawn(Box::pin(contributor_script(
            Arc::clone(&shared),
            world.clone(),
            Arc::clone(&plan),
            n,
        )));
    }
    loop {
        if shared.checks().failure.is_some() {
            break;
        }
        if runtime.polls() > MAX_POLLS {
            shared.fail(
                FailureKind::Liveness,
                format!("no quiescence after {MAX_POLLS} polls"),
            );
            break;
        }
        match runtime.step(RUN_FOR) {
            Step::Idle => break,
            _ if runtime.elapsed() >= RUN_FOR && !runtime.busy() => break,
            _ => {}
        }
    }
    if shared.checks().failure.is_none() {
        check_settled(&shared);
    }
    let polls = runtime.polls();
    // Drop every task (clients and server) before the shared state goes.
    let groups = shared.node().map_or(0, |(g, _)| g);
    *shared.node.lock().unwrap_or_else(|e| e.into_inner()) = None;
    for group in 0..=groups {
        runtime.kill(group);
    }
    let most_fetching = shared
        .git
        .lock()
        .most_fetching
        .as_ref()
        .map_or(0, |(n, _, _)| *n);
    let checks = shared.checks();
    let trace = shared.trace.lock().unwrap_or_else(|e| e.into_inner());
    HostOutcome {
        hash: trace.hash(),
        lines: trace.line_count(),
        failure: checks.failure.clone(),
        tail: trace.tail().map(str::to_owned).collect(),
        acked: checks.acked.len(),
        served_live: checks.served_live,
        restarts: checks.restarts,
        polls,
        pushes_accepted: checks.pushes_accepted,
        deleted: checks.deleted.len(),
        expired: checks.expired.len(),
        most_fetching,
    }
}
