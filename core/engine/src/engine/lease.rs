//! Sync leases: when several instances share one store and one set of repositories, exactly
//! one of them fetches for a repository at a time. The host keeps the lease table; the engine
//! only says which leases it wants and starts fetches only under one it holds.
//!
//! The rule: a sync attempt that would fetch first needs the repository's lease. Without it the
//! engine asks for it ([`Command::AcquireLease`]) and fetches nothing. The host keeps trying to
//! acquire a wanted lease (the holder may die and its lease expire) until the engine lets it go
//! ([`Command::ReleaseLease`], once nothing waits on the repository), and reports
//! [`Input::Leased`] when it has it and [`Input::LeaseLost`] when it could not renew it in time.
//! A lost lease stops the attempt starting anything; fetches in flight run to their deadline,
//! which bounds how long two instances may fetch for one repository at once.
//!
//! With `Config::sync_leases` off (one instance, the default) every lease is held implicitly
//! and neither command is ever emitted.

use std::collections::BTreeMap;

use super::Engine;
use crate::engine::types::{Command, TimerReason};
use crate::ids::RepoKey;
use crate::time::Time;

/// Where this engine stands on one repository's lease.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(super) enum Lease {
    /// Asked for; the host is trying to acquire it.
    Wanted,
    /// Held: fetches may start.
    Held,
}

/// The leases this engine wants or holds. Only repositories with work are here, so it is
/// bounded like `Engine::repos`.
#[derive(Debug, Default)]
pub(super) struct Leases {
    by_repo: BTreeMap<RepoKey, Lease>,
}

impl Leases {
    pub(super) fn get(&self, repo: &RepoKey) -> Option<Lease> {
        self.by_repo.get(repo).copied()
    }

    /// (held, wanted) counts.
    pub(super) fn counts(&self) -> (usize, usize) {
        let held = self.by_repo.values().filter(|l| **l == Lease::Held).count();
        (held, self.by_repo.len() - held)
    }
}

impl Engine {
    /// Whether fetches for `repo` may start now; if not, its lease is asked for.
    pub(super) fn may_fetch(&mut self, repo: &RepoKey) -> bool {
        if !self.config.sync_leases {
            return true;
        }
        match self.leases.get(repo) {
            Some(Lease::Held) => true,
            Some(Lease::Wanted) => false,
            None => {
                self.leases.by_repo.insert(repo.clone(), Lease::Wanted);
                self.commands
                    .push_back(Command::AcquireLease { repo: repo.clone() });
                false
            }
        }
    }

    /// The host acquired `repo`'s lease: look at the repository again and fetch what is
    /// still missing. A lease nobody wants any more goes back at once.
    pub(super) fn leased(&mut self, repo: RepoKey) {
        match self.leases.get(&repo) {
            Some(Lease::Wanted) => {
                self.leases.by_repo.insert(repo.clone(), Lease::Held);
                self.request_inspect(repo, true);
            }
            Some(Lease::Held) => {}
            None => self.commands.push_back(Command::ReleaseLease { repo }),
        }
    }

    /// The host could not renew `repo`'s lease in time: another instance may take it now, so
    /// nothing more starts here. The lease stays wanted while work remains.
    pub(super) fn lease_lost(&mut self, now: Time, repo: RepoKey) {
        if self.leases.get(&repo) != Some(Lease::Held) {
            return;
        }
        self.leases.by_repo.insert(repo.clone(), Lease::Wanted);
        let Some(a) = self.repos.get_mut(&repo).and_then(|w| w.attempt.as_mut()) else {
            return;
        };
        a.pending.clear();
        let domains: Vec<String> = std::mem::take(&mut a.jobs).into_keys().collect();
        for d in domains {
            self.throttle.dequeue(now, &d, &repo);
        }
        self.timers.cancel(&TimerReason::FetchHedge(repo.clone()));
        self.check_attempt_end(now, &repo);
    }

    /// `repo`'s work is over: let its lease go, wanted or held.
    pub(super) fn drop_lease(&mut self, repo: &RepoKey) {
        if self.leases.by_repo.remove(repo).is_some() {
            self.commands
                .push_back(Command::ReleaseLease { repo: repo.clone() });
        }
    }
}
