//! Named scenarios: each puts the engine where the established GRASP server fails (the
//! guarantees in PROTOCOL.md, section 12, that the engine can express) and must pass here.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use graspd_core::{Identifier, Oid, RepoKey, Time};

use crate::faults::{Fault, FaultWindow};
use crate::forge::{self, User};
use crate::params::Params;
use crate::rng::Rng;
use crate::scenario::{
    end_for, own_url, repo_url, Action, Expect, Scenario, Scheduled, Via, WALL_EPOCH_SECS,
};
use crate::world::{Domain, Remote, Role, SimEvent, World, OWN_RELAY};

pub const ALL: &[(&str, &str)] = &[
    (
        "hung-fetch",
        "a remote that never answers holds a slot only until the fetch deadline",
    ),
    (
        "lost-wakeup",
        "states arriving while their repo's fetch completes are not lost",
    ),
    (
        "duplicate-backoff",
        "re-delivered duplicates do not reset the backoff",
    ),
    (
        "throttle-burst",
        "a burst of repos on one domain never exceeds the throttle",
    ),
    (
        "rate-limited-drain",
        "a rate-limited domain with nothing in flight drains its queue",
    ),
    (
        "naughty-rearm",
        "a permanently broken domain stays skipped after the skip ends",
    ),
    (
        "restored-prs",
        "PRs restored after a crash are fetched and released",
    ),
    (
        "crash-storm",
        "nothing acknowledged is lost across repeated crashes",
    ),
    (
        "junk-urls",
        "own origin, look-alikes, private and non-http URLs are never fetched",
    ),
    (
        "shared-identifier",
        "owners sharing a d tag never share URLs or queues",
    ),
    (
        "push-races-apply",
        "a push racing a sync apply is resolved by compare-and-swap",
    ),
    (
        "split-data",
        "partial data: objects spread over two remotes, one answering not-our-ref",
    ),
    (
        "placeholders",
        "refs/nostr refs whose PR never comes or names another commit are deleted",
    ),
];

pub fn build(name: &str, seed: u64) -> Option<Scenario> {
    let sc = match name {
        "hung-fetch" => hung_fetch(seed),
        "lost-wakeup" => lost_wakeup(seed),
        "duplicate-backoff" => duplicate_backoff(seed),
        "throttle-burst" => throttle_burst(seed),
        "rate-limited-drain" => rate_limited_drain(seed),
        "naughty-rearm" => naughty_rearm(seed),
        "restored-prs" => restored_prs(seed),
        "crash-storm" => crash_storm(seed),
        "junk-urls" => junk_urls(seed),
        "shared-identifier" => shared_identifier(seed),
        "push-races-apply" => push_races_apply(seed),
        "split-data" => split_data(seed),
        "placeholders" => placeholders(seed),
        _ => return None,
    };
    Some(sc)
}

const S: u64 = 1_000;
const MIN: u64 = 60_000;

/// A hand-built scenario.
struct B {
    name: &'static str,
    seed: u64,
    params: Params,
    world: World,
    schedule: Vec<Scheduled>,
    rng: Rng,
    expect: Vec<Expect>,
}

#[derive(Clone)]
struct Repo {
    key: RepoKey,
    owner: usize,
    ident: String,
    /// Remote URLs and the domain each is on.
    remotes: Vec<String>,
}

impl B {
    fn new(name: &'static str, seed: u64, params: Params) -> B {
        B {
            name,
            seed,
            params,
            world: World {
                users: Vec::new(),
                domains: Vec::new(),
                remotes: BTreeMap::new(),
                events: Vec::new(),
            },
            schedule: Vec::new(),
            rng: Rng::new(seed).child(name),
            expect: Vec::new(),
        }
    }

    fn user(&mut self) -> usize {
        let name = format!("u{}", self.world.users.len());
        self.world.users.push(User::generate(&name, &mut self.rng));
        self.world.users.len() - 1
    }

    fn domain(&mut self, latency_ms: (u64, u64), faults: &[(Fault, u64, u64)]) -> usize {
        let name = format!("d{}.example", self.world.domains.len());
        self.world.domains.push(Domain {
            name,
            latency_ms,
            faults: faults
                .iter()
                .map(|(fault, from, until)| FaultWindow {
                    fault: *fault,
                    from: Time::from_millis(*from),
                    until: Time::from_millis(*until),
                })
                .collect(),
        });
        self.world.domains.len() - 1
    }

    fn domain_name(&self, d: usize) -> String {
        self.world.domains[d].name.clone()
    }

    /// A repository of `owner` with a remote copy on each of `domains`; `extra` clone URLs
    /// (which no server of the world answers) are listed too.
    fn repo(&mut self, owner: usize, ident: &str, domains: &[usize], extra: &[String]) -> Repo {
        let user = self.world.users[owner].clone();
        let mut remotes = Vec::new();
        for &d in domains {
            let url = repo_url(&self.world.domains[d].name, &user, ident);
            self.world.remotes.insert(
                url.clone(),
                Remote {
                    domain: d,
                    objects: BTreeSet::new(),
                },
            );
            remotes.push(url);
        }
        remotes.extend(extra.iter().cloned());
        Repo {
            key: RepoKey::new(user.pubkey, Identifier::new(ident).expect("valid")),
            owner,
            ident: ident.to_owned(),
            remotes,
        }
    }

    fn add(&mut self, ev: SimEvent) -> usize {
        self.world.events.push(ev);
        self.world.events.len() - 1
    }

    fn deliver(&mut self, idx: usize, at_ms: u64, via: Via) {
        self.schedule.push(Scheduled {
            at: Time::from_millis(at_ms),
            action: Action::Deliver { event: idx, via },
        });
    }

    fn announce(&mut self, repo: &Repo, at_ms: u64, via: Via) -> usize {
        let user = self.world.users[repo.owner].clone();
        let mut clone = vec![own_url(&user, &repo.ident)];
        clone.extend(repo.remotes.iter().cloned());
        let ev = forge::announcement(
            &user,
            created(at_ms),
            &repo.ident,
            &clone,
            &[OWN_RELAY.to_owned()],
            &[],
        );
        let idx = self.add(SimEvent {
            event: ev,
            role: Role::Announcement {
                repo: repo.key.clone(),
                clone,
                maintainers: Vec::new(),
            },
            label: format!("ann({}/{})", user.name, repo.ident),
        });
        self.deliver(idx, at_ms, via);
        idx
    }

    /// A state moving main to a fresh commit, held by the remotes at `holders` (indexes into
    /// `repo.remotes`).
    fn state(&mut self, repo: &Repo, at_ms: u64, via: Via, holders: &[usize]) -> usize {
        let oid = forge::oid(&mut self.rng);
        let refs: BTreeMap<String, Oid> = [("refs/heads/main".to_owned(), oid)].into();
        self.state_with(repo, at_ms, via, refs, holders)
    }

    fn state_with(
        &mut self,
        repo: &Repo,
        at_ms: u64,
        via: Via,
        refs: BTreeMap<String, Oid>,
        holders: &[usize],
    ) -> usize {
        let user = self.world.users[repo.owner].clone();
        for &h in holders {
            let url = &repo.remotes[h];
            if let Some(r) = self.world.remotes.get_mut(url) {
                r.objects.extend(refs.values().copied());
            }
        }
        let n = self.world.events.len() as u64;
        let ev = forge::state(
            &user,
            created(at_ms) + n,
            &repo.ident,
            &refs,
            Some("refs/heads/main"),
        );
        let idx = self.add(SimEvent {
            event: ev,
            role: Role::State {
                repo: repo.key.clone(),
                refs,
                head: Some("refs/heads/main".into()),
            },
            label: format!("state{n}({}/{})", user.name, repo.ident),
        });
        self.deliver(idx, at_ms, via);
        idx
    }

    /// A PR from `author` to `repo` whose tip is held on a fork at `fork_domain`.
    fn pr(
        &mut self,
        author: usize,
        repo: &Repo,
        fork_domain: usize,
        at_ms: u64,
        via: Via,
    ) -> usize {
        let idx = self.pr_event(author, repo, fork_domain, at_ms);
        self.deliver(idx, at_ms, via);
        idx
    }

    /// The tip the PR `events[pr]` names.
    fn pr_commit(&self, pr: usize) -> Oid {
        match &self.world.events[pr].role {
            Role::Pr { commit, .. } => *commit,
            _ => unreachable!("not a PR"),
        }
    }

    fn placeholder(&mut self, pr: usize, repo: &Repo, commit: Oid, at_ms: u64) {
        self.schedule.push(Scheduled {
            at: Time::from_millis(at_ms),
            action: Action::PushPlaceholder {
                pr,
                repo: repo.key.clone(),
                commit,
            },
        });
    }

    /// A PR event that is not delivered (yet).
    fn pr_event(&mut self, author: usize, repo: &Repo, fork_domain: usize, at_ms: u64) -> usize {
        let user = self.world.users[author].clone();
        let commit = forge::oid(&mut self.rng);
        let url = repo_url(
            &self.world.domains[fork_domain].name,
            &user,
            &format!("{}-fork", repo.ident),
        );
        self.world
            .remotes
            .entry(url.clone())
            .or_insert(Remote {
                domain: fork_domain,
                objects: BTreeSet::new(),
            })
            .objects
            .insert(commit);
        let owner = self.world.users[repo.owner].pubkey;
        let ev = forge::pull_request(
            &user,
            created(at_ms),
            &[forge::coordinate(&owner, &repo.ident)],
            commit,
            std::slice::from_ref(&url),
            None,
        );
        let idx = self.add(SimEvent {
            event: ev,
            role: Role::Pr {
                targets: vec![repo.key.clone()],
                commit,
                clone: vec![url],
            },
            label: format!(
                "pr{}({}->{})",
                self.world.events.len(),
                user.name,
                repo.ident
            ),
        });
        idx
    }

    fn push(&mut self, state: usize, at_ms: u64) {
        self.schedule.push(Scheduled {
            at: Time::from_millis(at_ms),
            action: Action::Push { state, retries: 3 },
        });
    }

    fn crash(&mut self, at_ms: u64, down_ms: u64) {
        self.schedule.push(Scheduled {
            at: Time::from_millis(at_ms),
            action: Action::Crash { down_ms },
        });
    }

    fn finish(self, heal_ms: u64) -> Scenario {
        let heal_at = Time::from_millis(heal_ms);
        let end_at = end_for(&self.params, &self.world, heal_at);
        Scenario {
            name: self.name.into(),
            seed: self.seed,
            params: self.params,
            world: self.world,
            schedule: self.schedule,
            heal_at,
            end_at,
            expect: self.expect,
            local_hang_percent: 0,
            store_fail_percent: 0,
        }
    }
}

fn created(ms: u64) -> u64 {
    WALL_EPOCH_SECS + ms / 1000
}

fn hung_fetch(seed: u64) -> Scenario {
    let params = Params {
        max_concurrent_per_domain: 1,
        fetch_timeout: Duration::from_secs(30),
        ..Params::default()
    };
    let mut b = B::new("hung-fetch", seed, params);
    let owner = b.user();
    let d = b.domain((50, 200), &[(Fault::Hang, 0, 10 * MIN)]);
    for i in 0..3 {
        let repo = b.repo(owner, &format!("hung{i}"), &[d], &[]);
        b.announce(&repo, S, Via::Synced);
        b.state(&repo, 2 * S + i * S, Via::Synced, &[0]);
    }
    b.finish(10 * MIN)
}

fn lost_wakeup(seed: u64) -> Scenario {
    let params = Params {
        first_attempt_after_synced: Duration::from_millis(500),
        ..Params::default()
    };
    let mut b = B::new("lost-wakeup", seed, params);
    let owner = b.user();
    let d = b.domain((1_000, 1_000), &[]);
    // Per repository: state A starts an attempt at +0.5 s whose fetch takes 1 s; state B
    // arrives meanwhile, so its attempt timer fires while A's attempt runs. B must not be lost.
    for k in 0..4u64 {
        let repo = b.repo(owner, &format!("wake{k}"), &[d], &[]);
        let t0 = k * 10 * S;
        b.announce(&repo, t0, Via::Synced);
        b.state(&repo, t0 + 1, Via::Synced, &[0]);
        b.state(&repo, t0 + 600 + 100 * k, Via::Synced, &[0]);
    }
    // And a stream of states landing around the moments fetches complete.
    let repo = b.repo(owner, "stream", &[d], &[]);
    b.announce(&repo, 0, Via::Synced);
    let mut t = 1_000;
    for k in 0..12 {
        b.state(&repo, t + (k % 3), Via::Synced, &[0]);
        t += 1_500 + 499 * (k % 2);
    }
    b.finish(5 * MIN)
}

fn duplicate_backoff(seed: u64) -> Scenario {
    let params = Params {
        first_attempt_after_synced: Duration::from_millis(500),
        ..Params::default()
    };
    let chaos = 10 * MIN;
    let mut b = B::new("duplicate-backoff", seed, params.clone());
    let owner = b.user();
    let d = b.domain((50, 100), &[(Fault::Down, 0, chaos)]);
    let repo = b.repo(owner, "popular", &[d], &[]);
    b.announce(&repo, 0, Via::Synced);
    let st = b.state(&repo, S, Via::Synced, &[0]);
    let ann = 0;
    // Every relay re-delivers the same events every 2 s.
    let mut t = 2 * S;
    while t < chaos {
        b.deliver(st, t, Via::Synced);
        b.deliver(ann, t + 1, Via::Synced);
        t += 2 * S;
    }
    // With backoff 20, 40, 80, 120, 120.. s, 10 minutes allow about 8 attempts; a backoff
    // reset by duplicates would make ~300.
    let name = b.domain_name(d);
    b.expect.push(Expect::MaxFetchesTo {
        domain: name,
        max: 12,
        until: Time::from_millis(chaos),
    });
    b.finish(chaos)
}

fn throttle_burst(seed: u64) -> Scenario {
    let params = Params {
        max_concurrent_per_domain: 2,
        max_per_minute_per_domain: 5,
        first_attempt_after_synced: Duration::from_millis(100),
        ..Params::default()
    };
    let mut b = B::new("throttle-burst", seed, params);
    let owner = b.user();
    let d = b.domain((200, 3_000), &[]);
    for i in 0..20 {
        let repo = b.repo(owner, &format!("burst{i}"), &[d], &[]);
        b.announce(&repo, 0, Via::Synced);
        b.state(&repo, 10, Via::Synced, &[0]);
    }
    b.finish(MIN)
}

fn rate_limited_drain(seed: u64) -> Scenario {
    let params = Params {
        rate_limited_cooldown: Duration::from_secs(30),
        ..Params::default()
    };
    let mut b = B::new("rate-limited-drain", seed, params);
    let owner = b.user();
    let d = b.domain((50, 500), &[(Fault::RateLimited, 0, 3 * MIN)]);
    for i in 0..6 {
        let repo = b.repo(owner, &format!("limited{i}"), &[d], &[]);
        b.announce(&repo, i * S, Via::Synced);
        b.state(&repo, i * S + 10, Via::Synced, &[0]);
    }
    b.finish(3 * MIN)
}

fn naughty_rearm(seed: u64) -> Scenario {
    let params = Params {
        bad_domain_failures: 2,
        bad_domain_skip: Duration::from_secs(20 * 60),
        purgatory_expiry: Duration::from_secs(30 * 60),
        ..Params::default()
    };
    let run = 3 * 60 * MIN;
    let mut b = B::new("naughty-rearm", seed, params);
    let owner = b.user();
    // A clone URL on a name that never resolves, for ever; the data is nowhere else either.
    let broken = "https://gone.invalid".to_owned();
    let owner_user = b.world.users[owner].clone();
    let url = format!("{broken}/{}/stale.git", owner_user.npub);
    let repo = b.repo(owner, "stale", &[], &[url]);
    // The owner keeps re-announcing (a fresh event each time) and publishing states, so the
    // engine always has a reason to try the broken domain again.
    let mut t = 0;
    while t < run {
        b.announce(&repo, t, Via::Synced);
        b.state(&repo, t + S, Via::Synced, &[]);
        t += 10 * MIN;
    }
    // One skip period of 20 min allows `bad_domain_failures` failures plus one probe; over
    // 3 h that is 9 periods. Never re-arming would mean a fetch every backoff step (~90).
    b.expect.push(Expect::MaxFetchesTo {
        domain: "gone.invalid".into(),
        max: 9 * 3 + 3,
        until: Time::from_millis(run),
    });
    b.finish(run)
}

fn restored_prs(seed: u64) -> Scenario {
    let mut b = B::new("restored-prs", seed, Params::default());
    let owner = b.user();
    let contributor = b.user();
    let home = b.domain((50, 200), &[]);
    let forks = b.domain((50, 200), &[(Fault::Down, 0, 5 * MIN)]);
    let repo = b.repo(owner, "project", &[home], &[]);
    b.announce(&repo, 0, Via::Synced);
    b.state(&repo, S, Via::Synced, &[0]);
    b.pr(contributor, &repo, forks, 10 * S, Via::Synced);
    b.pr(contributor, &repo, forks, 20 * S, Via::Published);
    b.crash(2 * MIN, 30 * S);
    b.finish(5 * MIN)
}

fn crash_storm(seed: u64) -> Scenario {
    let mut b = B::new("crash-storm", seed, Params::default());
    let owner = b.user();
    let d0 = b.domain(
        (100, 2_000),
        &[(Fault::Flapping { period_ms: 7_000 }, 0, 8 * MIN)],
    );
    let d1 = b.domain(
        (100, 2_000),
        &[(Fault::Slow { extra_ms: 20_000 }, 0, 8 * MIN)],
    );
    for i in 0..4 {
        let repo = b.repo(owner, &format!("storm{i}"), &[d0, d1], &[]);
        b.announce(&repo, i * 10 * S, Via::Published);
        let st = b.state(&repo, i * 10 * S + S, Via::Published, &[i as usize % 2]);
        if i % 2 == 0 {
            b.push(st, i * 10 * S + 30 * S);
        }
        b.state(&repo, 3 * MIN + i * S, Via::Synced, &[0, 1]);
    }
    for k in 0..6 {
        b.crash(20 * S + k * 70 * S, 5 * S + k * 3 * S);
    }
    b.finish(8 * MIN)
}

fn junk_urls(seed: u64) -> Scenario {
    let mut b = B::new("junk-urls", seed, Params::default());
    let owner = b.user();
    let d = b.domain((50, 200), &[]);
    let u = b.world.users[owner].clone();
    let junk = vec![
        format!("https://GRASP.LOCAL/{}/j.git", u.npub),
        format!("https://grasp.local:443/{}/j.git", u.npub),
        format!("http://127.0.0.1:7334/{}/j.git", u.npub),
        format!("http://localhost/{}/j.git", u.npub),
        format!("http://10.0.0.7/{}/j.git", u.npub),
        format!("http://192.168.1.2/{}/j.git", u.npub),
        format!("http://[::1]/{}/j.git", u.npub),
        format!("ssh://git@d0.example/{}/j.git", u.npub),
        format!("git@d0.example:{}/j.git", u.npub),
        format!("file:///etc/{}/j.git", u.npub),
        format!("https://grasp.local.evil.example/{}/j.git", u.npub),
    ];
    let repo = b.repo(owner, "j", &[d], &junk);
    b.announce(&repo, 0, Via::Synced);
    b.state(&repo, S, Via::Synced, &[0]);
    b.finish(2 * MIN)
}

fn shared_identifier(seed: u64) -> Scenario {
    let mut b = B::new("shared-identifier", seed, Params::default());
    let alice = b.user();
    let bob = b.user();
    let da = b.domain((50, 200), &[(Fault::Down, 0, 4 * MIN)]);
    let db = b.domain((50, 200), &[]);
    let ra = b.repo(alice, "same", &[da], &[]);
    let rb = b.repo(bob, "same", &[db], &[]);
    b.announce(&ra, 0, Via::Synced);
    b.announce(&rb, 0, Via::Synced);
    b.state(&ra, S, Via::Synced, &[0]);
    b.state(&rb, S, Via::Synced, &[0]);
    b.finish(4 * MIN)
}

fn push_races_apply(seed: u64) -> Scenario {
    let params = Params {
        first_attempt_after_published: Duration::from_secs(5),
        ..Params::default()
    };
    let mut b = B::new("push-races-apply", seed, params);
    let owner = b.user();
    let d = b.domain((5, 30), &[]);
    let repo = b.repo(owner, "race", &[d], &[]);
    b.announce(&repo, 0, Via::Published);
    let s1 = b.state(&repo, S, Via::Published, &[0]);
    let s2 = b.state(&repo, 6 * S, Via::Published, &[]);
    // The owner pushes the newer state around the moment the engine applies the older one.
    for k in 0..5 {
        b.push(s2, 6 * S + k * 7);
    }
    b.push(s1, 6 * S + 3);
    b.finish(2 * MIN)
}

fn split_data(seed: u64) -> Scenario {
    let mut b = B::new("split-data", seed, Params::default());
    let owner = b.user();
    let d0 = b.domain((50, 200), &[(Fault::Partial { percent: 100 }, 0, 2 * MIN)]);
    let d1 = b.domain((50, 200), &[]);
    let repo = b.repo(owner, "split", &[d0, d1], &[]);
    b.announce(&repo, 0, Via::Synced);
    let main = forge::oid(&mut b.rng);
    let dev = forge::oid(&mut b.rng);
    let refs: BTreeMap<String, Oid> = [
        ("refs/heads/main".to_owned(), main),
        ("refs/heads/dev".to_owned(), dev),
    ]
    .into();
    b.state_with(&repo, S, Via::Synced, refs, &[]);
    // main only on d0, dev only on d1.
    b.world
        .remotes
        .get_mut(&repo.remotes[0])
        .expect("remote")
        .objects
        .insert(main);
    b.world
        .remotes
        .get_mut(&repo.remotes[1])
        .expect("remote")
        .objects
        .insert(dev);
    b.finish(2 * MIN)
}

fn placeholders(seed: u64) -> Scenario {
    let params = Params {
        placeholder_expiry: Duration::from_secs(5 * 60),
        ..Params::default()
    };
    let mut b = B::new("placeholders", seed, params);
    let owner = b.user();
    let contributor = b.user();
    let home = b.domain((50, 200), &[]);
    let forks = b.domain((50, 200), &[]);
    let repo = b.repo(owner, "pp", &[home], &[]);
    b.announce(&repo, 0, Via::Published);
    let st = b.state(&repo, S, Via::Published, &[0]);
    b.push(st, 2 * S);
    // Pushed, then published with the same commit: the ref stays (it is the PR's).
    let good = b.pr_event(contributor, &repo, forks, 20 * S);
    let c = b.pr_commit(good);
    b.placeholder(good, &repo, c, 10 * S);
    b.deliver(good, 20 * S, Via::Published);
    // Pushed, never published: deleted after placeholder_expiry.
    let ghost = b.pr_event(contributor, &repo, forks, 30 * S);
    let c = b.pr_commit(ghost);
    b.placeholder(ghost, &repo, c, 30 * S);
    // Pushed at another commit than the PR names: deleted when the PR arrives.
    let wrong = b.pr_event(contributor, &repo, forks, 50 * S);
    let other = forge::oid(&mut b.rng);
    b.placeholder(wrong, &repo, other, 40 * S);
    b.deliver(wrong, 50 * S, Via::Published);
    // Pushed, never published, and the server crashes: still deleted after the restart.
    let lost = b.pr_event(contributor, &repo, forks, 70 * S);
    let c = b.pr_commit(lost);
    b.placeholder(lost, &repo, c, 70 * S);
    b.crash(80 * S, 10 * S);
    b.finish(2 * MIN)
}
