//! A scenario: the world, the engine configuration and the schedule of what happens when.
//! `Scenario::random(seed)` draws every parameter from the seed; `named.rs` builds fixed ones.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::time::Duration;

use graspd_core::{Identifier, Oid, PublicKey, RepoKey, Time};

use crate::faults::{Fault, FaultWindow};
use crate::forge::{self, User};
use crate::params::Params;
use crate::rng::Rng;
use crate::world::{Domain, Remote, Role, SimEvent, World, OWN_ORIGIN, OWN_RELAY};

/// Unix time (seconds) at virtual time zero: `created_at` values and the wall clock.
pub const WALL_EPOCH_SECS: u64 = 1_750_000_000;

/// How an event reaches us.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Via {
    /// A user published it to us (a push usually follows).
    Published,
    /// Our sync found it on another relay.
    Synced,
}

#[derive(Clone, Debug)]
pub enum Action {
    /// `events[event]` reaches our relay.
    Deliver { event: usize, via: Via },
    /// The owner pushes the refs of state `events[state]` (with its objects) to our server;
    /// a rejected push is retried `retries` more times, 30 s apart.
    Push { state: usize, retries: u32 },
    /// A PR author pushes `refs/nostr/<id of events[pr]>` at `commit` (with the object) to
    /// `repo`, usually before publishing the PR; the PR may never come, or name another commit.
    PushPlaceholder {
        pr: usize,
        repo: RepoKey,
        commit: Oid,
    },
    /// Our server crashes and restarts `down_ms` later from what it persisted.
    Crash { down_ms: u64 },
    /// The operator deny-lists `author` (a policy reload): from now on nothing of theirs is
    /// acknowledged or released, and what of theirs waits is withdrawn.
    DenyAuthor { author: PublicKey },
}

#[derive(Clone, Debug)]
pub struct Scheduled {
    pub at: Time,
    pub action: Action,
}

#[derive(Clone, Debug)]
pub struct Scenario {
    pub name: String,
    pub seed: u64,
    pub params: Params,
    pub world: World,
    pub schedule: Vec<Scheduled>,
    /// Every fault stops here, and no crash or arrival is scheduled after it.
    pub heal_at: Time,
    /// The run ends (and liveness is judged) here.
    pub end_at: Time,
    /// Extra checks a named scenario makes.
    pub expect: Vec<Expect>,
    /// Before the heal, this percentage of local git commands (Inspect, Apply) never report:
    /// a hung local process the engine must time out.
    pub local_hang_percent: u64,
    /// Before the heal, this percentage of the host's store writes for admitted events fail
    /// (the client hears an error; the engine must forget the event).
    pub store_fail_percent: u64,
}

/// A scenario-specific check, made at the end of the run.
#[derive(Clone, Debug)]
pub enum Expect {
    /// At most `max` fetches are sent to `domain` before `until`.
    MaxFetchesTo {
        domain: String,
        max: u64,
        until: Time,
    },
}

/// Sizes for random scenarios; the swarm test keeps them small so 1000 seeds run fast.
#[derive(Clone, Copy, Debug)]
pub struct Size {
    pub max_domains: u64,
    pub max_repos: u64,
    pub max_states: u64,
    pub max_prs: u64,
}

impl Size {
    pub fn is_small(&self) -> bool {
        self.max_repos == Size::small().max_repos && self.max_domains == Size::small().max_domains
    }

    /// Small worlds: what the CI swarm test runs 1000 of.
    pub fn small() -> Size {
        Size {
            max_domains: 3,
            max_repos: 2,
            max_states: 2,
            max_prs: 1,
        }
    }
}

impl Default for Size {
    fn default() -> Size {
        Size {
            max_domains: 5,
            max_repos: 4,
            max_states: 3,
            max_prs: 2,
        }
    }
}

pub fn repo_url(host: &str, owner: &User, identifier: &str) -> String {
    format!("https://{host}/{}/{identifier}.git", owner.npub)
}

pub fn own_url(owner: &User, identifier: &str) -> String {
    format!("{OWN_ORIGIN}/{}/{identifier}.git", owner.npub)
}

fn at(ms: u64) -> Time {
    Time::from_millis(ms)
}

fn created(ms: u64) -> u64 {
    WALL_EPOCH_SECS + ms / 1000
}

impl Scenario {
    pub fn random(seed: u64, size: Size) -> Scenario {
        let root = Rng::new(seed);
        let params = Params::draw(&mut root.child("params"));
        let mut wr = root.child("world");
        let mut fr = root.child("faults");
        let mut sr = root.child("schedule");

        let chaos_ms = wr.range(5, 20) * 60_000;
        let n_users = wr.range(2, 4) as usize;
        let users: Vec<User> = (0..n_users)
            .map(|i| User::generate(&format!("u{i}"), &mut wr))
            .collect();
        let n_domains = wr.range(1, size.max_domains) as usize;
        let domains: Vec<Domain> = (0..n_domains)
            .map(|i| {
                let lo = wr.range(5, 500);
                let hi = lo + wr.range(0, 5_000);
                let mut faults = Vec::new();
                if fr.percent(60) {
                    for _ in 0..fr.range(1, 2) {
                        let from = fr.below(chaos_ms);
                        let until = fr.range(from + 1, chaos_ms);
                        faults.push(FaultWindow {
                            fault: Fault::draw(&mut fr),
                            from: at(from),
                            until: at(until),
                        });
                    }
                }
                Domain {
                    name: format!("d{i}.example"),
                    latency_ms: (lo, hi),
                    faults,
                }
            })
            .collect();

        let mut world = World {
            users,
            domains,
            remotes: BTreeMap::new(),
            events: Vec::new(),
        };
        let mut schedule = Vec::new();
        let n_repos = wr.range(1, size.max_repos);
        for r in 0..n_repos {
            gen_repo(
                &mut world,
                &mut schedule,
                r,
                chaos_ms,
                size,
                &mut wr,
                &mut sr,
            );
        }

        let n_crashes = if sr.percent(50) { sr.range(1, 3) } else { 0 };
        for _ in 0..n_crashes {
            schedule.push(Scheduled {
                at: at(sr.below(chaos_ms)),
                action: Action::Crash {
                    down_ms: sr.range(1, 120_000),
                },
            });
        }

        schedule.extend(draw_deny(&world, chaos_ms, &mut root.child("policy")));

        let local_hang_percent = if fr.percent(30) { fr.range(1, 5) } else { 0 };
        let store_fail_percent = if fr.percent(30) { fr.range(1, 10) } else { 0 };
        let heal_at = at(chaos_ms);
        let end_at = end_for(&params, &world, heal_at);
        Scenario {
            name: if size.is_small() {
                "random-small"
            } else {
                "random"
            }
            .into(),
            seed,
            params,
            world,
            schedule,
            heal_at,
            end_at,
            expect: Vec::new(),
            local_hang_percent,
            store_fail_percent,
        }
    }

    /// The first line of every run: every parameter drawn from the seed.
    pub fn summary(&self) -> String {
        let mut s = format!(
            "SEED={} scenario={} heal_at={}s end_at={}s domains=[",
            self.seed,
            self.name,
            self.heal_at.as_millis() / 1000,
            self.end_at.as_millis() / 1000
        );
        for (i, d) in self.world.domains.iter().enumerate() {
            if i > 0 {
                s.push(' ');
            }
            let _ = write!(s, "{}:{}-{}ms", d.name, d.latency_ms.0, d.latency_ms.1);
            for f in &d.faults {
                let _ = write!(
                    s,
                    ":{}@{}-{}s",
                    f.fault,
                    f.from.as_millis() / 1000,
                    f.until.as_millis() / 1000
                );
            }
        }
        let crashes = self
            .schedule
            .iter()
            .filter(|s| matches!(s.action, Action::Crash { .. }))
            .count();
        let pushes = self
            .schedule
            .iter()
            .filter(|s| {
                matches!(
                    s.action,
                    Action::Push { .. } | Action::PushPlaceholder { .. }
                )
            })
            .count();
        let deliveries = self
            .schedule
            .iter()
            .filter(|s| matches!(s.action, Action::Deliver { .. }))
            .count();
        let _ = write!(
            s,
            "] users={} remotes={} events={} deliveries={} pushes={} crashes={} local_hangs={}% store_fails={}% config: {}",
            self.world.users.len(),
            self.world.remotes.len(),
            self.world.events.len(),
            deliveries,
            pushes,
            crashes,
            self.local_hang_percent,
            self.store_fail_percent,
            self.params
        );
        s
    }
}

/// In a third of the worlds, the operator deny-lists a PR author who publishes nothing else
/// (no announcement, state or deletion), at a random moment before the heal.
fn draw_deny(world: &World, chaos_ms: u64, rng: &mut Rng) -> Option<Scheduled> {
    if !rng.percent(33) {
        return None;
    }
    let others: BTreeSet<PublicKey> = world
        .events
        .iter()
        .filter(|e| !matches!(e.role, Role::Pr { .. }))
        .map(|e| e.event.pubkey)
        .collect();
    let candidates: Vec<PublicKey> = world
        .events
        .iter()
        .filter(|e| matches!(e.role, Role::Pr { .. }) && !others.contains(&e.event.pubkey))
        .map(|e| e.event.pubkey)
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    if candidates.is_empty() {
        return None;
    }
    let author = candidates[rng.below(candidates.len() as u64) as usize];
    Some(Scheduled {
        at: at(rng.below(chaos_ms)),
        action: Action::DenyAuthor { author },
    })
}

/// The run goes on until liveness can be judged and every event acknowledged before the heal
/// has expired, so a lost event shows as one still waiting past its expiry.
pub fn end_for(params: &Params, world: &World, heal_at: Time) -> Time {
    let longest_life = params.purgatory_expiry.max(params.placeholder_expiry);
    heal_at + longest_life + params.liveness_bound(world) + Duration::from_secs(60)
}

/// Adds an event to the world and schedules its deliveries: one first arrival, sometimes
/// duplicates later (by sync), all before `chaos_ms`.
fn deliver(
    world: &mut World,
    schedule: &mut Vec<Scheduled>,
    ev: SimEvent,
    first_ms: u64,
    via: Via,
    chaos_ms: u64,
    sr: &mut Rng,
) -> usize {
    let idx = world.events.len();
    world.events.push(ev);
    schedule.push(Scheduled {
        at: at(first_ms),
        action: Action::Deliver { event: idx, via },
    });
    if sr.percent(30) {
        for _ in 0..sr.range(1, 3) {
            schedule.push(Scheduled {
                at: at(sr.range(first_ms, chaos_ms)),
                action: Action::Deliver {
                    event: idx,
                    via: Via::Synced,
                },
            });
        }
    }
    idx
}

fn gen_repo(
    world: &mut World,
    schedule: &mut Vec<Scheduled>,
    r: u64,
    chaos_ms: u64,
    size: Size,
    wr: &mut Rng,
    sr: &mut Rng,
) {
    let owner_idx = wr.index(world.users.len());
    let owner = world.users[owner_idx].clone();
    let ident = format!("repo{r}");
    let key = RepoKey::new(
        owner.pubkey,
        Identifier::new(&ident).expect("valid identifier"),
    );

    // States: each moves main, sometimes adds a branch or tag.
    let n_states = wr.range(1, size.max_states) as usize;
    let mut states: Vec<BTreeMap<String, Oid>> = Vec::new();
    let mut refs = BTreeMap::new();
    for _ in 0..n_states {
        refs.insert("refs/heads/main".to_owned(), forge::oid(wr));
        if wr.percent(30) {
            refs.insert("refs/heads/dev".to_owned(), forge::oid(wr));
        }
        if wr.percent(20) {
            refs.insert(format!("refs/tags/v{}", states.len()), forge::oid(wr));
        }
        if wr.percent(10) {
            refs.remove("refs/heads/dev");
        }
        states.push(refs.clone());
    }

    // Remote copies: each on a distinct domain, holding the objects of states up to some index,
    // sometimes missing one object for good.
    let mut clone = vec![own_url(&owner, &ident)];
    let n_remotes = wr.range(0, world.domains.len().min(3) as u64) as usize;
    let mut hosts: Vec<usize> = (0..world.domains.len()).collect();
    wr.shuffle(&mut hosts);
    for &d in hosts.iter().take(n_remotes) {
        let url = crate::scenario::repo_url(&world.domains[d].name, &owner, &ident);
        let upto = wr.range(0, n_states as u64) as usize;
        let mut objects: BTreeSet<Oid> = states[..upto]
            .iter()
            .flat_map(|s| s.values().copied())
            .collect();
        if wr.percent(10) {
            if let Some(o) = objects.iter().next().copied() {
                objects.remove(&o);
            }
        }
        world
            .remotes
            .insert(url.clone(), Remote { domain: d, objects });
        clone.push(url);
    }
    // URLs a careful engine must never fetch: non-http, loopback, private, look-alikes of us.
    if wr.percent(30) {
        let junk = [
            format!("git@d0.example:{ident}.git"),
            format!("http://127.0.0.1/{}/{ident}.git", owner.npub),
            format!("http://10.1.2.3/{}/{ident}.git", owner.npub),
            format!(
                "https://grasp.local.evil.example/{}/{ident}.git",
                owner.npub
            ),
            format!("https://GRASP.local/{}/{ident}.git", owner.npub),
        ];
        clone.push(wr.pick(&junk).clone());
    }
    wr.shuffle(&mut clone[1..]);

    let t0 = sr.below(chaos_ms / 2);
    let announce_via = if sr.percent(80) {
        Via::Published
    } else {
        Via::Synced
    };
    // Sometimes the owner names a maintainer, who then publishes (and pushes) some states.
    let maintainer = if world.users.len() > 1 && wr.percent(25) {
        let others: Vec<usize> = (0..world.users.len()).filter(|u| *u != owner_idx).collect();
        Some(world.users[*wr.pick(&others)].clone())
    } else {
        None
    };
    let listed: Vec<_> = maintainer.iter().map(|m| m.pubkey).collect();
    // Sometimes the owner publishes a second version in the same second, one listing the
    // maintainer and one not: NIP-01's tie rule (lowest id) decides who may publish states.
    let mut versions = vec![listed.clone()];
    if !listed.is_empty() && wr.percent(35) {
        versions.push(Vec::new());
    }
    for (v, maintainers) in versions.into_iter().enumerate() {
        let ann = forge::announcement(
            &owner,
            created(t0),
            &ident,
            &clone,
            &[OWN_RELAY.to_owned()],
            &maintainers,
        );
        let label = if v == 0 {
            format!("ann({}/{ident})", owner.name)
        } else {
            format!("ann'({}/{ident} same second, no maintainers)", owner.name)
        };
        deliver(
            world,
            schedule,
            SimEvent {
                event: ann,
                role: Role::Announcement {
                    repo: key.clone(),
                    clone: clone.clone(),
                    maintainers,
                },
                label,
            },
            t0,
            announce_via,
            chaos_ms,
            sr,
        );
    }

    let mut t = t0;
    let mut state_events: Vec<(usize, u64, User)> = Vec::new();
    let mut previous: Option<(u64, User)> = None;
    for (k, refs) in states.iter().enumerate() {
        // Usually after the announcement, sometimes before it (reordering).
        let ts = if sr.percent(15) {
            sr.below(t0 + 1)
        } else {
            sr.range(t, chaos_ms - 1)
        };
        t = ts.max(t);
        let mut author = match &maintainer {
            Some(m) if wr.percent(40) => m.clone(),
            _ => owner.clone(),
        };
        let mut created_at = created(ts) + k as u64;
        // Sometimes a state signed in the same second as the previous one, usually by the other
        // maintainer (else by the same author): NIP-01's winner is the lowest id, whichever
        // arrives first.
        if let Some((at, by)) = previous.as_ref().filter(|_| wr.percent(30)) {
            created_at = *at;
            if let Some(m) = maintainer.as_ref().filter(|_| wr.percent(80)) {
                author = if by.pubkey == owner.pubkey {
                    m.clone()
                } else {
                    owner.clone()
                };
            }
        }
        previous = Some((created_at, author.clone()));
        let ev = forge::state(&author, created_at, &ident, refs, Some("refs/heads/main"));
        let via = if sr.percent(70) {
            Via::Published
        } else {
            Via::Synced
        };
        let idx = deliver(
            world,
            schedule,
            SimEvent {
                event: ev,
                role: Role::State {
                    repo: key.clone(),
                    refs: refs.clone(),
                    head: Some("refs/heads/main".into()),
                },
                label: if author.pubkey == owner.pubkey {
                    format!("state{k}({}/{ident})", owner.name)
                } else {
                    format!("state{k}({}/{ident} by {})", owner.name, author.name)
                },
            },
            ts,
            via,
            chaos_ms,
            sr,
        );
        state_events.push((idx, ts, author));
        if via == Via::Published && sr.percent(60) {
            schedule.push(Scheduled {
                at: at(ts + sr.range(0, 200_000)),
                action: Action::Push {
                    state: idx,
                    retries: 3,
                },
            });
        }
    }

    // PRs from other users, with the tip on a fork.
    let mut prs = Vec::new();
    for p in 0..wr.range(0, size.max_prs) {
        let author = world.users[wr.index(world.users.len())].clone();
        let commit = forge::oid(wr);
        let mut pr_clone = Vec::new();
        if !world.domains.is_empty() {
            let d = wr.index(world.domains.len());
            let url = repo_url(&world.domains[d].name, &author, &format!("{ident}-fork{p}"));
            let mut objects = BTreeSet::new();
            if wr.percent(85) {
                objects.insert(commit);
            }
            world
                .remotes
                .insert(url.clone(), Remote { domain: d, objects });
            pr_clone.push(url);
        }
        let tp = sr.range(t0, chaos_ms - 1);
        let target = forge::coordinate(&owner.pubkey, &ident);
        let ev = forge::pull_request(&author, created(tp), &[target], commit, &pr_clone, None);
        let pr_id = ev.id;
        let idx = deliver(
            world,
            schedule,
            SimEvent {
                event: ev,
                role: Role::Pr {
                    targets: vec![key.clone()],
                    commit,
                    clone: pr_clone.clone(),
                },
                label: format!("pr{p}({}->{}/{ident})", author.name, owner.name),
            },
            tp,
            if sr.percent(50) {
                Via::Published
            } else {
                Via::Synced
            },
            chaos_ms,
            sr,
        );
        prs.push((idx, tp, author.clone()));
        // Clients push the tip to refs/nostr/<id> before publishing; sometimes the PR then never
        // comes (the event is not delivered: a ghost), sometimes the pushed commit is another.
        if sr.percent(35) {
            let ghost = sr.percent(25);
            let push_commit = if sr.percent(15) {
                forge::oid(wr)
            } else {
                commit
            };
            let target = idx;
            if ghost {
                // Keep the world's event but drop its deliveries.
                schedule.retain(
                    |s| !matches!(s.action, Action::Deliver { event, .. } if event == target),
                );
                world.events[target].label = format!("ghost-{}", world.events[target].label);
            }
            schedule.push(Scheduled {
                at: at(tp.saturating_sub(sr.range(0, 30_000))),
                action: Action::PushPlaceholder {
                    pr: target,
                    repo: key.clone(),
                    commit: push_commit,
                },
            });
        }
        if wr.percent(30) {
            let commit2 = forge::oid(wr);
            for url in &pr_clone {
                if let Some(remote) = world.remotes.get_mut(url) {
                    remote.objects.insert(commit2);
                }
            }
            let tu = sr.range(tp, chaos_ms - 1);
            let target = forge::coordinate(&owner.pubkey, &ident);
            let ev = forge::pull_request(
                &author,
                created(tu) + 1,
                &[target],
                commit2,
                &pr_clone,
                Some(pr_id),
            );
            deliver(
                world,
                schedule,
                SimEvent {
                    event: ev,
                    role: Role::Pr {
                        targets: vec![key.clone()],
                        commit: commit2,
                        clone: pr_clone.clone(),
                    },
                    label: format!("prupdate{p}({}->{}/{ident})", author.name, owner.name),
                },
                tu,
                Via::Synced,
                chaos_ms,
                sr,
            );
        }
    }

    // Sometimes the owner deletes a state; sometimes a PR author deletes the PR.
    for pool in [&state_events, &prs] {
        if pool.is_empty() || !sr.percent(15) {
            continue;
        }
        let (idx, t_published, author) = pool[sr.index(pool.len())].clone();
        let id = world.events[idx].id();
        let td = sr.range(t_published, chaos_ms - 1);
        let ev = forge::deletion(&author, created(td) + 2, &[id], &[]);
        let label = format!("delete({})", world.events[idx].label);
        deliver(
            world,
            schedule,
            SimEvent {
                event: ev,
                role: Role::Deletion { targets: vec![id] },
                label,
            },
            td,
            Via::Published,
            chaos_ms,
            sr,
        );
    }
}
