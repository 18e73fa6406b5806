//! The bookkeeping of sync leases on the host side, without IO: which leases this instance
//! wants and holds, what one round asks the lease table, and what the engine hears of its
//! answer. `driver/leases.rs` runs it against the store; the simulator runs it against a model
//! of the table (`graspd-sim`'s instances world).
//!
//! A held lease counts as lost `valid_for` after the round that last acquired or renewed it
//! was asked, which the caller sets shorter than the table's lease life: the table counts from
//! when its statement ran, always later, so this instance lets go before another can take it.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use graspd_core::{Command, Input, RepoKey, Time};
use tracing::{debug, info, warn};

/// The leases one instance wants and holds.
#[derive(Debug, Default)]
pub struct LeaseBook {
    /// By the name the lease table keys them with.
    repos: BTreeMap<String, RepoKey>,
    /// Held ones (a subset of `repos`), with the instant they count as lost unless renewed.
    held: BTreeMap<String, Time>,
    /// Held leases no longer wanted, to give back.
    let_go: BTreeSet<String>,
}

/// What one round asks the lease table.
#[derive(Clone, PartialEq, Eq, Debug, Default)]
pub struct Round {
    /// To acquire or renew, in order.
    pub names: Vec<String>,
    /// To give back (their rows, if still ours).
    pub let_go: Vec<String>,
}

impl LeaseBook {
    pub fn new() -> LeaseBook {
        LeaseBook::default()
    }

    /// Applies `command` if it is a lease command (returns whether it was).
    pub fn apply(&mut self, command: &Command) -> bool {
        match command {
            Command::AcquireLease { repo } => {
                self.repos.insert(repo.to_string(), repo.clone());
            }
            Command::ReleaseLease { repo } => {
                let name = repo.to_string();
                self.repos.remove(&name);
                if self.held.remove(&name).is_some() {
                    self.let_go.insert(name);
                }
            }
            _ => return false,
        }
        true
    }

    /// Starts a round: every wanted lease to acquire or renew, and those to give back (taken
    /// out of the book: if giving them back fails, they expire on their own).
    pub fn start_round(&mut self) -> Round {
        Round {
            names: self.repos.keys().cloned().collect(),
            let_go: std::mem::take(&mut self.let_go).into_iter().collect(),
        }
    }

    /// Records what the table answered to a round that asked for `asked` at `asked_at`
    /// (`held_now`: the names it holds now; `None`: the table could not be reached) and
    /// returns what the engine must hear. A lease held longer than `valid_for` since the round
    /// that last renewed it was asked counts as lost by `now`.
    pub fn settle(
        &mut self,
        asked: &[String],
        held_now: Option<&BTreeSet<String>>,
        asked_at: Time,
        valid_for: Duration,
        now: Time,
    ) -> Vec<Input> {
        let mut inputs = Vec::new();
        if let Some(held_now) = held_now {
            for name in asked {
                let Some(repo) = self.repos.get(name) else {
                    // No longer wanted: give it back if the table just gave it to us.
                    if held_now.contains(name) {
                        self.let_go.insert(name.clone());
                    }
                    continue;
                };
                if held_now.contains(name) {
                    if self
                        .held
                        .insert(name.clone(), asked_at + valid_for)
                        .is_none()
                    {
                        info!(%repo, "sync lease acquired");
                        inputs.push(Input::Leased { repo: repo.clone() });
                    }
                } else if self.held.remove(name).is_some() {
                    warn!(%repo, "sync lease taken by another instance");
                    inputs.push(Input::LeaseLost { repo: repo.clone() });
                } else {
                    debug!(%repo, "sync lease held by another instance");
                }
            }
        }
        inputs.extend(self.expire(now));
        inputs
    }

    /// Counts every held lease not renewed in time by `now` as lost. Runs at each settle and
    /// also at [`LeaseBook::next_expiry`] while a round is slow or the keeper sleeps: a statement
    /// that hangs must not keep a lease held here past the instant the table may give it away.
    pub fn expire(&mut self, now: Time) -> Vec<Input> {
        let mut inputs = Vec::new();
        let repos = &self.repos;
        self.held.retain(|name, valid_until| {
            if *valid_until > now {
                return true;
            }
            if let Some(repo) = repos.get(name) {
                warn!(%repo, "sync lease not renewed in time; another instance may take it");
                inputs.push(Input::LeaseLost { repo: repo.clone() });
            }
            false
        });
        inputs
    }

    /// The first instant a held lease counts as lost unless renewed before.
    pub fn next_expiry(&self) -> Option<Time> {
        self.held.values().min().copied()
    }

    /// (held, wanted but held elsewhere).
    pub fn counts(&self) -> (usize, usize) {
        (self.held.len(), self.repos.len() - self.held.len())
    }

    /// The leases the book holds, with the instant each counts as lost unless renewed.
    pub fn held(&self) -> impl Iterator<Item = (&str, Time)> + '_ {
        self.held
            .iter()
            .map(|(name, until)| (name.as_str(), *until))
    }

    /// Whether nothing is wanted, held or waiting to be given back.
    pub fn is_idle(&self) -> bool {
        self.repos.is_empty() && self.held.is_empty() && self.let_go.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use graspd_core::{Identifier, PublicKey};

    fn repo() -> RepoKey {
        let owner =
            PublicKey::from_hex("3bf0c63fcb93463407af97a5e5ee64fa883d107ef9e558472c4eb9aaaefa459d")
                .unwrap();
        RepoKey::new(owner, Identifier::new("r").unwrap())
    }

    fn at(ms: u64) -> Time {
        Time::from_millis(ms)
    }

    const VALID: Duration = Duration::from_secs(2);

    #[test]
    fn a_lease_is_reported_once_when_acquired_and_lost_when_taken_or_unrenewed() {
        let mut book = LeaseBook::new();
        assert!(book.apply(&Command::AcquireLease { repo: repo() }));
        let round = book.start_round();
        assert_eq!(round.names, [repo().to_string()]);
        let held: BTreeSet<String> = round.names.iter().cloned().collect();
        let inputs = book.settle(&round.names, Some(&held), at(0), VALID, at(10));
        assert_eq!(inputs, [Input::Leased { repo: repo() }]);
        assert!(book
            .settle(&round.names, Some(&held), at(1_000), VALID, at(1_010))
            .is_empty());
        assert_eq!(book.next_expiry(), Some(at(3_000)));
        // The table cannot be reached: held until the last renewal's validity ends.
        assert!(book
            .settle(&round.names, None, at(2_000), VALID, at(2_010))
            .is_empty());
        assert_eq!(book.counts(), (1, 0));
        assert_eq!(book.expire(at(3_000)), [Input::LeaseLost { repo: repo() }]);
        assert_eq!(book.counts(), (0, 1));
        assert_eq!(book.next_expiry(), None);
    }

    #[test]
    fn a_lease_let_go_while_held_is_given_back_in_the_next_round() {
        let mut book = LeaseBook::new();
        book.apply(&Command::AcquireLease { repo: repo() });
        let round = book.start_round();
        let held: BTreeSet<String> = round.names.iter().cloned().collect();
        book.settle(&round.names, Some(&held), at(0), VALID, at(10));
        assert!(book.apply(&Command::ReleaseLease { repo: repo() }));
        let next = book.start_round();
        assert!(next.names.is_empty());
        assert_eq!(next.let_go, [repo().to_string()]);
        assert!(book.is_idle());
        // Granted by a round asked before the release: given back too.
        assert!(book
            .settle(&round.names, Some(&held), at(20), VALID, at(30))
            .is_empty());
        assert_eq!(book.start_round().let_go, [repo().to_string()]);
    }
}
