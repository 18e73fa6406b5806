//! Properties over random input sequences: the throttle limits hold, every fetch ends in a
//! completion or a timeout, the same inputs give the same outputs, and every way out of
//! purgatory gives its author's and address's share back.

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use common::*;
use graspd_core::{
    Arrival, ClientAddress, Command, CommandId, Config, Engine, FetchError, FetchReport, Input,
    Oid, RefUpdate, Submission, Time,
};
use quickcheck::{Arbitrary, Gen, QuickCheck};

const REPOS: u8 = 6;
const DOMAINS: u8 = 3;

#[derive(Clone, Debug)]
enum Op {
    /// Published from client address `address`, or synced.
    State {
        repo: u8,
        oid: u8,
        published: bool,
        address: u8,
    },
    /// The repository's owner deletes its states by coordinate.
    Delete {
        repo: u8,
    },
    Pr {
        repo: u8,
        oid: u8,
    },
    Advance {
        ms: u32,
    },
    Answer {
        pick: u8,
        kind: u8,
    },
    Push {
        repo: u8,
        oid: u8,
    },
}

impl Arbitrary for Op {
    fn arbitrary(g: &mut Gen) -> Op {
        let small = |g: &mut Gen| u8::arbitrary(g) % 8;
        match u8::arbitrary(g) % 10 {
            0 | 1 => Op::State {
                repo: u8::arbitrary(g) % REPOS,
                oid: small(g),
                published: bool::arbitrary(g),
                address: u8::arbitrary(g) % 3,
            },
            2 => Op::Pr {
                repo: u8::arbitrary(g) % REPOS,
                oid: small(g),
            },
            3..=5 => Op::Advance {
                ms: u32::arbitrary(g) % 90_000,
            },
            6..=8 => Op::Answer {
                pick: u8::arbitrary(g),
                kind: u8::arbitrary(g) % 8,
            },
            9 if bool::arbitrary(g) => Op::Delete {
                repo: u8::arbitrary(g) % REPOS,
            },
            _ => Op::Push {
                repo: u8::arbitrary(g) % REPOS,
                oid: small(g),
            },
        }
    }
}

fn limits() -> Config {
    Config {
        max_concurrent_per_domain: 2,
        max_per_minute_per_domain: 3,
        fetch_timeout: Duration::from_secs(30),
        bad_domain_failures: 2,
        bad_domain_skip: Duration::from_secs(300),
        rate_limited_cooldown: Duration::from_secs(20),
        ..config()
    }
}

fn domain_of(url: &str) -> String {
    url.split('/').nth(2).unwrap().to_string()
}

struct FetchRecord {
    domain: String,
    start: Time,
    /// When the engine frees its slot if it never reports: its deadline plus the grace.
    frees_at: Time,
    answered: Option<Time>,
}

/// Runs `ops`; checks the throttle model on every fetch start; returns a transcript.
struct Run {
    engine: Engine,
    host: Host,
    now: Time,
    seen_commands: usize,
    fetches: BTreeMap<CommandId, FetchRecord>,
    violations: Vec<String>,
    /// Steps after which the shares of purgatory disagreed with what waits.
    share_leaks: Vec<String>,
}

impl Run {
    fn new() -> Run {
        let mut kit = Kit::default();
        let mut engine = Engine::new(limits());
        for n in 0..REPOS {
            let urls = [
                format!("https://d{}.example/{n}.git", n % DOMAINS),
                format!("https://d{}.example/{n}.git", (n + 1) % DOMAINS),
            ];
            let urls: Vec<&str> = urls.iter().map(String::as_str).collect();
            engine.restore_accepted(&kit.announcement(n + 1, &format!("r{n}"), &[], &urls));
        }
        Run {
            engine,
            host: Host::default(),
            now: Time::ZERO,
            seen_commands: 0,
            fetches: BTreeMap::new(),
            violations: Vec::new(),
            share_leaks: Vec::new(),
        }
    }

    /// Records fetches started since the last call and checks the limits at their start.
    fn observe(&mut self) {
        let cfg = limits();
        let new: Vec<Command> = self.host.commands[self.seen_commands..].to_vec();
        self.seen_commands = self.host.commands.len();
        for cmd in new {
            let Command::Fetch {
                id, url, deadline, ..
            } = cmd
            else {
                continue;
            };
            let domain = domain_of(&url);
            let now = self.now;
            let open = self
                .fetches
                .values()
                .filter(|f| f.domain == domain && f.frees_at > now && f.answered.is_none())
                .count();
            if open + 1 > cfg.max_concurrent_per_domain {
                self.violations
                    .push(format!("{domain}: {} in flight at {now:?}", open + 1));
            }
            let starts = self
                .fetches
                .values()
                .filter(|f| f.domain == domain && f.start + cfg.rate_window > now)
                .count();
            if starts + 1 > cfg.max_per_minute_per_domain {
                self.violations.push(format!(
                    "{domain}: {} starts in the window ending {now:?}",
                    starts + 1
                ));
            }
            self.fetches.insert(
                id,
                FetchRecord {
                    domain,
                    start: now,
                    frees_at: deadline + cfg.fetch_report_grace,
                    answered: None,
                },
            );
        }
    }

    fn step(&mut self, kit: &mut Kit, op: &Op) {
        match *op {
            Op::State {
                repo: r,
                oid: o,
                published,
                address,
            } => {
                let arrival = if published {
                    Submission::published_from(Some(ClientAddress(u128::from(address))))
                } else {
                    Submission::from(Arrival::Synced)
                };
                let ev = kit.state(
                    r + 1,
                    &format!("r{r}"),
                    2000 + u64::from(o),
                    &[("refs/heads/main", oid(u32::from(o)))],
                );
                admit(&mut self.engine, self.now, ev, arrival);
            }
            Op::Pr { repo: r, oid: o } => {
                let ev = kit.pr(
                    9,
                    &repo(r + 1, &format!("r{r}")),
                    oid(100 + u32::from(o)),
                    &["https://d2.example/fork.git"],
                );
                admit(&mut self.engine, self.now, ev, Arrival::Synced);
            }
            Op::Delete { repo: r } => {
                let coordinate = format!("30618:{}:r{r}", pk(r + 1).to_hex());
                let ev = kit.deletion(r + 1, &[], &[coordinate]);
                admit(&mut self.engine, self.now, ev, Arrival::Published);
            }
            Op::Advance { ms } => {
                let until = self.now + Duration::from_millis(u64::from(ms));
                while let Some((at, _)) = self.engine.poll_timeout() {
                    if at > until {
                        break;
                    }
                    self.now = at;
                    self.engine.handle_timeout(at);
                    self.host.run(&mut self.engine, at);
                    self.observe();
                }
                self.now = until;
            }
            Op::Answer { pick, kind } => {
                // Answer an outstanding fetch whose deadline has not passed.
                let now = self.now;
                let live: Vec<usize> = (0..self.host.fetches.len())
                    .filter(|&i| matches!(&self.host.fetches[i], Command::Fetch { deadline, .. } if *deadline > now))
                    .collect();
                if live.is_empty() {
                    return;
                }
                let Command::Fetch { id, into, oids, .. } = self
                    .host
                    .fetches
                    .remove(live[usize::from(pick) % live.len()])
                else {
                    unreachable!()
                };
                let result = match kind {
                    0 | 1 => {
                        self.host.give(&into, &oids);
                        Ok(FetchReport { present: oids })
                    }
                    2 => Ok(FetchReport { present: vec![] }),
                    3 => Err(FetchError::Dns),
                    4 => Err(FetchError::RateLimited),
                    5 => Err(FetchError::NotOurRef(oids.into_iter().take(1).collect())),
                    6 => Err(FetchError::Tls),
                    _ => Err(FetchError::Http(500)),
                };
                if let Some(f) = self.fetches.get_mut(&id) {
                    f.answered = Some(now);
                }
                self.engine
                    .handle_input(now, Input::FetchDone { id, result });
            }
            Op::Push { repo: r, oid: o } => {
                let key = repo(r + 1, &format!("r{r}"));
                let o: Oid = oid(u32::from(o));
                self.host.give(&key, &[o]);
                let name = "refs/heads/main".to_string();
                self.engine.handle_input(
                    self.now,
                    Input::Pushed {
                        repo: key,
                        updates: vec![RefUpdate {
                            old: Oid::ZERO,
                            new: o,
                            name,
                        }],
                    },
                );
            }
        }
        self.host.run(&mut self.engine, self.now);
        self.observe();
        self.check_shares(op);
    }

    /// Every waiting event has an author, so some share is held exactly while something waits.
    fn check_shares(&mut self, op: &Op) {
        let stats = self.engine.stats();
        let waiting = stats.waiting.announcements + stats.waiting.states + stats.waiting.prs;
        let held = waiting + stats.admissions_pending;
        if (held == 0) != (stats.share_holders == 0) {
            self.share_leaks.push(format!(
                "after {op:?}: {held} held, {} share holders",
                stats.share_holders
            ));
        }
    }

    fn transcript(&self) -> String {
        format!(
            "{:?}\n{:?}\n{:?}\n{:?}",
            self.host.commands,
            self.host.events,
            self.engine.stats(),
            self.engine.poll_timeout()
        )
    }
}

fn run(ops: &[Op]) -> Run {
    let mut kit = Kit::default();
    let mut r = Run::new();
    for op in ops {
        r.step(&mut kit, op);
    }
    r
}

fn throttle_limits_hold(ops: Vec<Op>) -> bool {
    let r = run(&ops);
    if !r.violations.is_empty() {
        eprintln!("{:#?}", r.violations);
    }
    r.violations.is_empty()
}

fn every_fetch_ends_in_completion_or_timeout(ops: Vec<Op>) -> bool {
    let mut kit = Kit::default();
    let mut r = run(&ops);
    // Let every deadline and its grace pass without answering anything more.
    let grace = limits().fetch_report_grace.as_millis() as u32;
    r.step(&mut kit, &Op::Advance { ms: 31_000 + grace });
    let end = r.now;
    let unanswered_due = r
        .fetches
        .values()
        .filter(|f| f.answered.is_none() && f.frees_at <= end)
        .count();
    let open_model: BTreeMap<String, usize> = r
        .fetches
        .values()
        .filter(|f| f.answered.is_none() && f.frees_at > end)
        .fold(BTreeMap::new(), |mut m, f| {
            *m.entry(f.domain.clone()).or_default() += 1;
            m
        });
    let stats = r.engine.stats();
    let open_engine: BTreeMap<String, usize> = stats.fetches_in_flight.into_iter().collect();
    let ok = stats.fetch_timeouts as usize == unanswered_due && open_engine == open_model;
    if !ok {
        eprintln!(
            "timeouts {} vs {unanswered_due}; open {open_engine:?} vs {open_model:?}",
            stats.fetch_timeouts
        );
    }
    ok
}

fn shares_are_given_back(ops: Vec<Op>) -> bool {
    let mut kit = Kit::default();
    let mut r = run(&ops);
    // Past every expiry: everything has left purgatory, by one way or another.
    r.step(&mut kit, &Op::Advance { ms: u32::MAX });
    let stats = r.engine.stats();
    if !r.share_leaks.is_empty() || stats.share_holders != 0 {
        eprintln!("{:#?}\n{stats:?}", r.share_leaks);
        return false;
    }
    true
}

fn same_inputs_same_outputs(ops: Vec<Op>) -> bool {
    run(&ops).transcript() == run(&ops).transcript()
}

fn qc() -> QuickCheck {
    QuickCheck::new().tests(300).rng(Gen::new(80))
}

#[test]
fn prop_throttle_limits_hold() {
    qc().quickcheck(throttle_limits_hold as fn(Vec<Op>) -> bool);
}

#[test]
fn prop_every_fetch_ends_in_completion_or_timeout() {
    qc().quickcheck(every_fetch_ends_in_completion_or_timeout as fn(Vec<Op>) -> bool);
}

#[test]
fn prop_shares_are_given_back() {
    qc().quickcheck(shares_are_given_back as fn(Vec<Op>) -> bool);
}

#[test]
fn prop_same_inputs_same_outputs() {
    qc().tests(100)
        .quickcheck(same_inputs_same_outputs as fn(Vec<Op>) -> bool);
}

#[test]
fn the_random_sequences_do_exercise_fetches_and_limits() {
    // Guard against a vacuous property: a busy sequence starts many fetches and hits limits.
    let mut ops = Vec::new();
    for n in 0..REPOS {
        ops.push(Op::State {
            repo: n,
            oid: n,
            published: false,
            address: 0,
        });
        ops.push(Op::Pr { repo: n, oid: n });
    }
    for i in 0..60u8 {
        ops.push(Op::Advance { ms: 7_000 });
        ops.push(Op::Answer { pick: i, kind: 2 });
    }
    let r = run(&ops);
    assert!(r.violations.is_empty(), "{:?}", r.violations);
    assert!(r.fetches.len() > 20, "{}", r.fetches.len());
    assert!(r.engine.stats().throttle.waits > 0);
}
