//! Test kit for the engine: events with fixed ids (the engine trusts the host to verify
//! signatures), and a fake host holding repositories in memory that answers commands.

#![allow(dead_code)]

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use graspd_core::events::RefName;
use graspd_core::{
    Arrival, Command, Config, Engine, EngineEvent, FetchReport, Identifier, Input, Oid, PublicKey,
    RepoKey, RepoSnapshot, Submission, Time, Verdict,
};
use nostr::event::{Event, EventId, Kind, Tag};
use nostr::nips::nip19::ToBech32;
use nostr::types::Timestamp;

pub const ORIGIN: &str = "https://grasp.example";

pub fn pk(n: u8) -> PublicKey {
    PublicKey::from_byte_array([n; 32])
}

pub fn oid(n: u32) -> Oid {
    let mut b = [0u8; 20];
    b[..4].copy_from_slice(&n.to_be_bytes());
    b[19] = 1;
    Oid::from_bytes(b)
}

pub fn ident(s: &str) -> Identifier {
    Identifier::new(s).unwrap()
}

pub fn repo(n: u8, id: &str) -> RepoKey {
    RepoKey::new(pk(n), ident(id))
}

pub fn t(ms: u64) -> Time {
    Time::from_millis(ms)
}

pub fn secs(s: u64) -> Duration {
    Duration::from_secs(s)
}

/// The first attempt's delay after a publish, in the tests' configuration: longer than every
/// command deadline, so a test sees those first.
pub const PUBLISHED_DELAY: std::time::Duration = std::time::Duration::from_secs(180);

/// The tests' timelines assume the first attempt after a publish comes at
/// [`PUBLISHED_DELAY`], whatever the production default.
pub fn config() -> Config {
    Config {
        own_origin: Some(ORIGIN.into()),
        allow_private_remotes: false,
        first_attempt_after_published: PUBLISHED_DELAY,
        ..Config::default()
    }
}

/// Builds events with unique ids from a counter.
pub struct Kit {
    next: u64,
}

impl Default for Kit {
    fn default() -> Self {
        Kit { next: 1 }
    }
}

impl Kit {
    pub fn event(&mut self, author: u8, kind: u16, created_at: u64, tags: &[Vec<String>]) -> Event {
        self.event_by(pk(author), kind, created_at, tags)
    }

    pub fn event_by(
        &mut self,
        author: PublicKey,
        kind: u16,
        created_at: u64,
        tags: &[Vec<String>],
    ) -> Event {
        let mut id = [0u8; 32];
        id[..8].copy_from_slice(&self.next.to_be_bytes());
        id[31] = 0xee;
        self.next += 1;
        let tags: Vec<Tag> = tags
            .iter()
            .map(|t| Tag::parse(t.iter().map(String::as_str)).unwrap())
            .collect();
        let sig = nostr::event::Signature::from_byte_array([1u8; 64]);
        Event::new(
            EventId::from_byte_array(id),
            author,
            Timestamp::from_secs(created_at),
            Kind::from_u16(kind),
            tags,
            "",
            sig,
        )
    }

    /// An announcement of `/<author>/<id>.git` listing this server and `extra_clone` URLs.
    pub fn announcement(
        &mut self,
        author: u8,
        id: &str,
        maintainers: &[u8],
        extra_clone: &[&str],
    ) -> Event {
        let npub = pk(author).to_bech32().unwrap();
        let mut clone = vec!["clone".to_string(), format!("{ORIGIN}/{npub}/{id}.git")];
        clone.extend(extra_clone.iter().map(|s| s.to_string()));
        let mut tags = vec![
            vec!["d".to_string(), id.to_string()],
            clone,
            vec!["relays".to_string(), "wss://grasp.example".to_string()],
        ];
        if !maintainers.is_empty() {
            let mut m = vec!["maintainers".to_string()];
            m.extend(maintainers.iter().map(|n| pk(*n).to_hex()));
            tags.push(m);
        }
        self.event(author, 30617, 1000, &tags)
    }

    pub fn state(&mut self, author: u8, id: &str, created_at: u64, refs: &[(&str, Oid)]) -> Event {
        let mut tags = vec![vec!["d".to_string(), id.to_string()]];
        for (name, o) in refs {
            tags.push(vec![name.to_string(), o.to_string()]);
        }
        if let Some((name, _)) = refs.iter().find(|(n, _)| n.starts_with("refs/heads/")) {
            tags.push(vec!["HEAD".to_string(), format!("ref: {name}")]);
        }
        self.event(author, 30618, created_at, &tags)
    }

    pub fn pr(&mut self, author: u8, target: &RepoKey, commit: Oid, clone: &[&str]) -> Event {
        let mut c = vec!["clone".to_string()];
        c.extend(clone.iter().map(|s| s.to_string()));
        let mut tags = vec![
            vec![
                "a".to_string(),
                format!("30617:{}:{}", target.owner.to_hex(), target.identifier),
            ],
            vec!["c".to_string(), commit.to_string()],
        ];
        if !clone.is_empty() {
            tags.push(c);
        }
        self.event(author, 1618, 2000, &tags)
    }

    pub fn deletion(&mut self, author: u8, ids: &[EventId], coords: &[String]) -> Event {
        let mut tags: Vec<Vec<String>> = ids
            .iter()
            .map(|i| vec!["e".to_string(), i.to_hex()])
            .collect();
        tags.extend(coords.iter().map(|c| vec!["a".to_string(), c.clone()]));
        self.event(author, 5, 5000, &tags)
    }
}

/// In-memory repositories answering Inspect/Apply, and a log of what the engine emitted.
#[derive(Default)]
pub struct Host {
    pub objects: BTreeMap<RepoKey, BTreeSet<Oid>>,
    pub refs: BTreeMap<RepoKey, BTreeMap<RefName, Oid>>,
    pub heads: BTreeMap<RepoKey, RefName>,
    pub commands: Vec<Command>,
    pub events: Vec<EngineEvent>,
    /// Fetches not yet answered (the test answers them).
    pub fetches: Vec<Command>,
}

impl Host {
    /// Drains commands, answering Inspect/Apply/Create/Remove at once; fetches are kept for
    /// the test to answer. Runs until the engine is quiet.
    pub fn run(&mut self, engine: &mut Engine, now: Time) {
        loop {
            let mut progressed = false;
            while let Some(cmd) = engine.poll_command() {
                progressed = true;
                self.commands.push(cmd.clone());
                match cmd {
                    Command::Inspect { id, repo, oids } => {
                        let have = self.objects.get(&repo).cloned().unwrap_or_default();
                        let snap = RepoSnapshot {
                            present: oids.into_iter().filter(|o| have.contains(o)).collect(),
                            refs: self.refs.get(&repo).cloned().unwrap_or_default(),
                        };
                        engine.handle_input(
                            now,
                            Input::Inspected {
                                id,
                                result: Ok(snap),
                            },
                        );
                    }
                    Command::Apply { id, plan } => {
                        let refs = self.refs.entry(plan.repo.clone()).or_default();
                        let ok = plan
                            .edits
                            .iter()
                            .all(|e| refs.get(&e.name).copied() == e.expected);
                        if ok {
                            for e in &plan.edits {
                                match e.new {
                                    Some(o) => refs.insert(e.name.clone(), o),
                                    None => refs.remove(&e.name),
                                };
                            }
                            if let Some(h) = &plan.head {
                                self.heads.insert(plan.repo.clone(), h.clone());
                            }
                            if let Some((src, oids)) = &plan.copy_from {
                                let have = self.objects.get(src).cloned().unwrap_or_default();
                                let dst = self.objects.entry(plan.repo.clone()).or_default();
                                dst.extend(oids.iter().filter(|o| have.contains(o)));
                            }
                        }
                        let result = if ok {
                            Ok(())
                        } else {
                            Err(graspd_core::ApplyError::Conflict)
                        };
                        engine.handle_input(now, Input::Applied { id, result });
                    }
                    Command::Fetch { .. } => self.fetches.push(cmd),
                    Command::CreateRepo { .. }
                    | Command::RemoveRepo { .. }
                    | Command::AcquireLease { .. }
                    | Command::ReleaseLease { .. } => {}
                }
            }
            while let Some(e) = engine.poll_event() {
                progressed = true;
                self.events.push(e);
            }
            if !progressed {
                break;
            }
        }
    }

    /// A push landed in `repo`: it holds `oid` and its `name` ref points at it; the engine is
    /// told (`Pushed`) and the host runs.
    pub fn push_lands(
        &mut self,
        engine: &mut Engine,
        now: Time,
        repo: &RepoKey,
        name: &str,
        oid: Oid,
    ) {
        self.give(repo, &[oid]);
        self.refs
            .entry(repo.clone())
            .or_default()
            .insert(name.into(), oid);
        engine.handle_input(
            now,
            Input::Pushed {
                repo: repo.clone(),
                updates: vec![],
            },
        );
        self.run(engine, now);
    }

    pub fn give(&mut self, repo: &RepoKey, oids: &[Oid]) {
        self.objects
            .entry(repo.clone())
            .or_default()
            .extend(oids.iter().copied());
    }

    /// Answers the oldest outstanding fetch: the remote has `remote` objects.
    pub fn answer_fetch(
        &mut self,
        engine: &mut Engine,
        now: Time,
        remote: &BTreeSet<Oid>,
    ) -> Option<Command> {
        if self.fetches.is_empty() {
            return None;
        }
        let cmd = self.fetches.remove(0);
        let Command::Fetch { id, into, oids, .. } = &cmd else {
            unreachable!()
        };
        let got: Vec<Oid> = oids
            .iter()
            .filter(|o| remote.contains(o))
            .copied()
            .collect();
        self.give(into, &got);
        engine.handle_input(
            now,
            Input::FetchDone {
                id: *id,
                result: Ok(FetchReport { present: got }),
            },
        );
        self.run(engine, now);
        Some(cmd)
    }

    pub fn released(&self) -> Vec<EventId> {
        self.events
            .iter()
            .filter_map(|e| match e {
                EngineEvent::Released { id, .. } => Some(*id),
                _ => None,
            })
            .collect()
    }

    /// The lease commands run so far, in order: `(true, repo)` for an acquire.
    pub fn lease_commands(&self) -> Vec<(bool, RepoKey)> {
        self.commands
            .iter()
            .filter_map(|c| match c {
                Command::AcquireLease { repo } => Some((true, repo.clone())),
                Command::ReleaseLease { repo } => Some((false, repo.clone())),
                _ => None,
            })
            .collect()
    }

    pub fn inspects_of(&self, r: &RepoKey) -> usize {
        self.commands
            .iter()
            .filter(|c| matches!(c, Command::Inspect { repo, .. } if repo == r))
            .count()
    }
}

/// Advances time to each deadline up to `until`, running the host after each.
pub fn advance(engine: &mut Engine, host: &mut Host, until: Time) {
    while let Some((at, _)) = engine.poll_timeout() {
        if at > until {
            break;
        }
        engine.handle_timeout(at);
        host.run(engine, at);
    }
}

/// Hands `event` to the engine and, if it is admitted, reports it durable at once, as a host
/// does after its store write succeeded.
pub fn admit(
    engine: &mut Engine,
    now: Time,
    event: Event,
    arrival: impl Into<Submission>,
) -> Verdict {
    let v = engine.handle_event(now, event, arrival);
    if let Verdict::Waiting(ticket) | Verdict::Accepted(ticket) = v {
        engine.handle_input(now, Input::Persisted { ticket });
    }
    v
}

/// Publishes `event` (admitted and reported durable at once) and runs the host.
pub fn publish(
    engine: &mut Engine,
    host: &mut Host,
    now: Time,
    event: Event,
    arrival: Arrival,
) -> Verdict {
    let v = admit(engine, now, event, arrival);
    host.run(engine, now);
    v
}
