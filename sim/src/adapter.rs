//! `graspd_core::Engine` as the system under test: a thin translation between the engine's
//! types and the simulator's.

use std::collections::BTreeMap;
use std::time::Duration;

use graspd_core::policy::{AuthorEntry, Policy};
use graspd_core::{
    ApplyError, Arrival, CommandId, Config, Engine, EngineEvent, EventId, FetchReport, Oid,
    PublicKey, RefDecision, RefUpdate, RepoKey, RepoSnapshot, Time,
};

use crate::params::Params;
use crate::scenario::Via;
use crate::sut::{self, EngineFactory, EngineUnderTest, Output, RefEdit, Stats, Verdict};
use crate::world::OWN_ORIGIN;

/// The engine configuration for a run's parameters.
pub fn config(p: &Params) -> Config {
    Config {
        own_origin: Some(OWN_ORIGIN.to_owned()),
        allow_private_remotes: false,
        purgatory_expiry: p.purgatory_expiry,
        first_attempt_after_synced: p.first_attempt_after_synced,
        first_attempt_after_published: p.first_attempt_after_published,
        backoff: p.backoff.clone(),
        fetch_timeout: p.fetch_timeout,
        max_concurrent_per_domain: p.max_concurrent_per_domain,
        max_per_minute_per_domain: p.max_per_minute_per_domain,
        rate_window: p.rate_window,
        rate_limited_cooldown: p.rate_limited_cooldown,
        bad_domain_failures: p.bad_domain_failures,
        bad_domain_skip: p.bad_domain_skip,
        max_waiting: p.max_waiting,
        max_domains: p.max_domains,
        domain_idle_ttl: p.domain_idle_ttl,
        placeholder_expiry: p.placeholder_expiry,
        ..Config::default()
    }
}

pub struct Core(Engine);

fn arrival(via: Via) -> Arrival {
    match via {
        Via::Published => Arrival::Published,
        Via::Synced => Arrival::Synced,
    }
}

fn zero_or(o: Option<Oid>) -> Oid {
    o.unwrap_or(Oid::ZERO)
}

impl EngineUnderTest for Core {
    fn restore_accepted(&mut self, event: &nostr::event::Event) {
        self.0.restore_accepted(event);
    }

    fn restore_waiting(
        &mut self,
        now: Time,
        event: &nostr::event::Event,
        via: Via,
        remaining: Duration,
    ) {
        self.0
            .restore_waiting(now, event.clone(), arrival(via), remaining);
    }

    fn restore_placeholder(
        &mut self,
        now: Time,
        repo: &RepoKey,
        id: EventId,
        oid: Oid,
        remaining: Duration,
    ) {
        self.0
            .restore_placeholder(now, repo.clone(), id, oid, remaining);
    }

    fn handle_event(&mut self, now: Time, event: &nostr::event::Event, via: Via) -> Verdict {
        self.0.handle_event(now, event.clone(), arrival(via))
    }

    fn decide_push(
        &mut self,
        repo: &RepoKey,
        current: &BTreeMap<String, Oid>,
        updates: &[RefEdit],
    ) -> Vec<Result<(), String>> {
        let updates: Vec<RefUpdate> = updates.iter().map(to_update).collect();
        self.0
            .decide_push(repo, current, &updates)
            .into_iter()
            .map(|d| match d {
                RefDecision::Accept => Ok(()),
                RefDecision::Reject(r) => Err(r),
            })
            .collect()
    }

    fn handle_input(&mut self, now: Time, input: sut::Input) {
        let input = match input {
            sut::Input::FetchDone { id, result } => graspd_core::Input::FetchDone {
                id: CommandId(id),
                result: result.map(|present| FetchReport { present }),
            },
            sut::Input::Inspected { id, result } => graspd_core::Input::Inspected {
                id: CommandId(id),
                result: result.map(|(present, refs)| RepoSnapshot { present, refs }),
            },
            sut::Input::Pushed { repo, updates } => graspd_core::Input::Pushed {
                repo,
                updates: updates.iter().map(to_update).collect(),
            },
            sut::Input::Applied { id, result } => graspd_core::Input::Applied {
                id: CommandId(id),
                result: result.map_err(|e| {
                    if e.contains("compare-and-swap") {
                        ApplyError::Conflict
                    } else {
                        ApplyError::Io(e)
                    }
                }),
            },
            sut::Input::Persisted { ticket } => graspd_core::Input::Persisted { ticket },
            sut::Input::PersistFailed { ticket } => graspd_core::Input::PersistFailed { ticket },
            sut::Input::Leased { repo } => graspd_core::Input::Leased { repo },
            sut::Input::LeaseLost { repo } => graspd_core::Input::LeaseLost { repo },
        };
        self.0.handle_input(now, input);
    }

    fn handle_timeout(&mut self, now: Time) {
        self.0.handle_timeout(now);
    }

    fn deny_authors(&mut self, now: Time, authors: &std::collections::BTreeSet<PublicKey>) {
        let denied = authors.iter().map(|a| AuthorEntry(*a));
        let policy = Policy::new(denied, [], []);
        self.0
            .handle_input(now, graspd_core::Input::PolicyChanged { policy });
    }

    fn poll_timeout(&mut self) -> Option<(Time, String)> {
        self.0.poll_timeout().map(|(t, r)| (t, format!("{r:?}")))
    }

    fn poll_command(&mut self) -> Option<sut::Command> {
        Some(match self.0.poll_command()? {
            graspd_core::Command::Fetch {
                id,
                into,
                url,
                oids,
                deadline,
            } => sut::Command::Fetch {
                id: id.0,
                into,
                url,
                oids,
                deadline,
            },
            graspd_core::Command::Inspect { id, repo, oids } => sut::Command::Inspect {
                id: id.0,
                repo,
                oids,
            },
            graspd_core::Command::Apply { id, plan } => sut::Command::Apply { id: id.0, plan },
            graspd_core::Command::CreateRepo { repo } => sut::Command::CreateRepo { repo },
            graspd_core::Command::RemoveRepo { repo } => sut::Command::RemoveRepo { repo },
            graspd_core::Command::AcquireLease { repo } => sut::Command::AcquireLease { repo },
            graspd_core::Command::ReleaseLease { repo } => sut::Command::ReleaseLease { repo },
        })
    }

    fn poll_output(&mut self) -> Option<Output> {
        Some(match self.0.poll_event()? {
            EngineEvent::Released { id, .. } => Output::Released { id },
            EngineEvent::Expired { id, .. } => Output::Expired { id },
            EngineEvent::Deleted { id } => Output::Deleted { id },
            EngineEvent::Withdrawn { id } => Output::Withdrawn { id },
            other => Output::Other(format!("{other:?}")),
        })
    }

    fn stats(&self) -> Stats {
        let s = self.0.stats();
        let w = &s.waiting;
        Stats {
            waiting: Some(w.announcements + w.states + w.prs),
            domains: Some(s.domains_tracked),
        }
    }

    fn explain(&self, _id: &EventId) -> Option<String> {
        let s = self.0.stats();
        Some(format!(
            "waiting={:?} in_flight={:?} throttle={:?} repos_active={} timers={}",
            s.waiting, s.fetches_in_flight, s.throttle, s.repos_active, s.timers
        ))
    }
}

fn to_update(e: &RefEdit) -> RefUpdate {
    RefUpdate {
        old: zero_or(e.expected),
        new: zero_or(e.new),
        name: e.name.clone(),
    }
}

/// Builds `graspd_core::Engine`s.
pub struct CoreFactory;

impl EngineFactory for CoreFactory {
    fn build(&self, params: &Params) -> Box<dyn EngineUnderTest> {
        Box::new(Core(Engine::new(config(params))))
    }

    fn name(&self) -> &'static str {
        "graspd-core"
    }
}
