//! The bookkeeping of leases on the host side, without IO: which leases this instance wants
//! and holds, what one round asks the lease table, and what the engine and the relay follower
//! hear of its answer. Two kinds share the table: a repository's sync lease (the engine's
//! `AcquireLease` / `ReleaseLease`) and a relay's follow lease (the follower's).
//! `driver/leases.rs` runs it against the store; the simulator runs it against a model of the
//! table (`graspd-sim`'s instances world).
//!
//! A held lease counts as lost `valid_for` after the round that last acquired or renewed it
//! was asked, which the caller sets shorter than the table's lease life: the table counts from
//! when its statement ran, always later, so this instance lets go before another can take it.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use graspd_core::follow;
use graspd_core::{Command, Input, RepoKey, Time};
use tracing::{debug, info, warn};

/// What a lease is for.
#[derive(Clone, PartialEq, Eq, Debug)]
pub enum Subject {
    /// Fetching a repository's missing data (the engine's sync attempts).
    Repo(RepoKey),
    /// Following a relay (the relay follower's connection).
    Relay(String),
}

impl Subject {
    /// The row's key in the lease table: a repository as the engine prints it, a relay as
    /// `relay <url>` (a repository's name never has a space).
    pub fn name(&self) -> String {
        match self {
            Subject::Repo(repo) => repo.to_string(),
            Subject::Relay(url) => format!("relay {url}"),
        }
    }

    fn acquired(&self) -> Report {
        match self {
            Subject::Repo(repo) => Report::Engine(Input::Leased { repo: repo.clone() }),
            Subject::Relay(url) => Report::Follower(follow::Input::Leased { url: url.clone() }),
        }
    }

    fn lost(&self) -> Report {
        match self {
            Subject::Repo(repo) => Report::Engine(Input::LeaseLost { repo: repo.clone() }),
            Subject::Relay(url) => Report::Follower(follow::Input::LeaseLost { url: url.clone() }),
        }
    }
}

impl std::fmt::Display for Subject {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Subject::Repo(repo) => write!(f, "sync lease of {repo}"),
            Subject::Relay(url) => write!(f, "follow lease of {url}"),
        }
    }
}

/// What a round's answer means for the engine or the follower.
#[derive(Clone, Debug)]
pub enum Report {
    Engine(Input),
    Follower(follow::Input),
}

impl Report {
    /// The engine's input, if this report is for the engine.
    pub fn into_engine(self) -> Option<Input> {
        match self {
            Report::Engine(input) => Some(input),
            Report::Follower(_) => None,
        }
    }
}

/// How many leases of one kind this instance holds, and wants while another instance holds
/// them (or before the first round answers).
#[derive(Clone, Copy, PartialEq, Eq, Debug, Default)]
pub struct Counts {
    pub held: usize,
    pub elsewhere: usize,
}

/// The leases one instance wants and holds.
#[derive(Debug, Default)]
pub struct LeaseBook {
    /// By the name the lease table keys them with.
    wanted: BTreeMap<String, Subject>,
    /// Wanted since the last full round: the next early round asks only for these.
    fresh: BTreeSet<String>,
    /// Held ones (a subset of `wanted`), with the instant they count as lost unless renewed.
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

    /// Applies `command` if it is one of the engine's lease commands (returns whether it was).
    pub fn apply(&mut self, command: &Command) -> bool {
        match command {
            Command::AcquireLease { repo } => self.want(Subject::Repo(repo.clone())),
            Command::ReleaseLease { repo } => self.unwant(&Subject::Repo(repo.clone())),
            _ => return false,
        }
        true
    }

    /// Applies `command` if it is one of the follower's lease commands (returns whether it was).
    pub fn apply_follow(&mut self, command: &follow::Command) -> bool {
        match command {
            follow::Command::AcquireLease { url } => self.want(Subject::Relay(url.clone())),
            follow::Command::ReleaseLease { url } => self.unwant(&Subject::Relay(url.clone())),
            _ => return false,
        }
        true
    }

    fn want(&mut self, subject: Subject) {
        let name = subject.name();
        self.fresh.insert(name.clone());
        self.wanted.insert(name, subject);
    }

    fn unwant(&mut self, subject: &Subject) {
        let name = subject.name();
        self.wanted.remove(&name);
        self.fresh.remove(&name);
        if self.held.remove(&name).is_some() {
            self.let_go.insert(name);
        }
    }

    /// Starts a full round: every wanted lease to acquire or renew, and those to give back
    /// (taken out of the book: if giving them back fails, they expire on their own).
    pub fn start_round(&mut self) -> Round {
        self.fresh.clear();
        Round {
            names: self.wanted.keys().cloned().collect(),
            let_go: std::mem::take(&mut self.let_go).into_iter().collect(),
        }
    }

    /// Starts an early round, between full ones: only the leases wanted since the last round
    /// (renewals wait for the next full round, in time for their validity), and those to give
    /// back. A burst of new work asks the table about the new names, not all of them again.
    pub fn start_fresh_round(&mut self) -> Round {
        Round {
            names: std::mem::take(&mut self.fresh).into_iter().collect(),
            let_go: std::mem::take(&mut self.let_go).into_iter().collect(),
        }
    }

    /// Records what the table answered to a round that asked for `asked` at `asked_at`
    /// (`held_now`: the names it holds now; `None`: the table could not be reached) and
    /// returns what the engine and the follower must hear. A lease held longer than
    /// `valid_for` since the round that last renewed it was asked counts as lost by `now`.
    pub fn settle(
        &mut self,
        asked: &[String],
        held_now: Option<&BTreeSet<String>>,
        asked_at: Time,
        valid_for: Duration,
        now: Time,
    ) -> Vec<Report> {
        let mut reports = Vec::new();
        if let Some(held_now) = held_now {
            for name in asked {
                let Some(subject) = self.wanted.get(name) else {
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
                        info!(lease = %subject, "lease acquired");
                        reports.push(subject.acquired());
                    }
                } else if self.held.remove(name).is_some() {
                    warn!(lease = %subject, "lease taken by another instance");
                    reports.push(subject.lost());
                } else {
                    debug!(lease = %subject, "lease held by another instance");
                }
            }
        }
        reports.extend(self.expire(now));
        reports
    }

    /// Counts every held lease not renewed in time by `now` as lost. Runs at each settle and
    /// also at [`LeaseBook::next_expiry`] while a round is slow or the keeper sleeps: a statement
    /// that hangs must not keep a lease held here past the instant the table may give it away.
    pub fn expire(&mut self, now: Time) -> Vec<Report> {
        let mut reports = Vec::new();
        let wanted = &self.wanted;
        self.held.retain(|name, valid_until| {
            if *valid_until > now {
                return true;
            }
            if let Some(subject) = wanted.get(name) {
                warn!(lease = %subject, "lease not renewed in time; another instance may take it");
                reports.push(subject.lost());
            }
            false
        });
        reports
    }

    /// The first instant a held lease counts as lost unless renewed before.
    pub fn next_expiry(&self) -> Option<Time> {
        self.held.values().min().copied()
    }

    /// (repositories' sync leases, relays' follow leases).
    pub fn counts(&self) -> (Counts, Counts) {
        let (mut repos, mut relays) = (Counts::default(), Counts::default());
        for (name, subject) in &self.wanted {
            let counts = match subject {
                Subject::Repo(_) => &mut repos,
                Subject::Relay(_) => &mut relays,
            };
            if self.held.contains_key(name) {
                counts.held += 1;
            } else {
                counts.elsewhere += 1;
            }
        }
        (repos, relays)
    }

    /// The leases the book holds, with the instant each counts as lost unless renewed.
    pub fn held(&self) -> impl Iterator<Item = (&str, Time)> + '_ {
        self.held
            .iter()
            .map(|(name, until)| (name.as_str(), *until))
    }

    /// Whether nothing is wanted, held or waiting to be given back.
    pub fn is_idle(&self) -> bool {
        self.wanted.is_empty() && self.held.is_empty() && self.let_go.is_empty()
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

    fn engine(reports: Vec<Report>) -> Vec<Input> {
        reports
            .into_iter()
            .filter_map(Report::into_engine)
            .collect()
    }

    fn repo_counts(n: usize) -> Counts {
        Counts {
            held: n,
            elsewhere: 1 - n,
        }
    }

    #[test]
    fn a_lease_is_reported_once_when_acquired_and_lost_when_taken_or_unrenewed() {
        let mut book = LeaseBook::new();
        assert!(book.apply(&Command::AcquireLease { repo: repo() }));
        let round = book.start_round();
        assert_eq!(round.names, [repo().to_string()]);
        let held: BTreeSet<String> = round.names.iter().cloned().collect();
        let inputs = engine(book.settle(&round.names, Some(&held), at(0), VALID, at(10)));
        assert_eq!(inputs, [Input::Leased { repo: repo() }]);
        assert!(book
            .settle(&round.names, Some(&held), at(1_000), VALID, at(1_010))
            .is_empty());
        assert_eq!(book.next_expiry(), Some(at(3_000)));
        // The table cannot be reached: held until the last renewal's validity ends.
        assert!(book
            .settle(&round.names, None, at(2_000), VALID, at(2_010))
            .is_empty());
        assert_eq!(book.counts(), (repo_counts(1), Counts::default()));
        assert_eq!(
            engine(book.expire(at(3_000))),
            [Input::LeaseLost { repo: repo() }]
        );
        assert_eq!(book.counts(), (repo_counts(0), Counts::default()));
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

    #[test]
    fn relay_leases_share_the_table_under_their_own_names_and_report_to_the_follower() {
        let url = "wss://relay.example";
        let mut book = LeaseBook::new();
        assert!(book.apply_follow(&follow::Command::AcquireLease { url: url.into() }));
        assert!(!book.apply_follow(&follow::Command::Disconnect {
            id: follow::ConnectionId(0)
        }));
        book.apply(&Command::AcquireLease { repo: repo() });
        let round = book.start_round();
        assert_eq!(round.names, [repo().to_string(), format!("relay {url}")]);
        let only_relay: BTreeSet<String> = [format!("relay {url}")].into();
        let reports = book.settle(&round.names, Some(&only_relay), at(0), VALID, at(10));
        assert!(matches!(
            reports.as_slice(),
            [Report::Follower(follow::Input::Leased { url: got })] if got == url
        ));
        assert_eq!(
            book.counts(),
            (
                Counts {
                    held: 0,
                    elsewhere: 1
                },
                Counts {
                    held: 1,
                    elsewhere: 0
                }
            )
        );
        let reports = book.expire(at(2_000));
        assert!(matches!(
            reports.as_slice(),
            [Report::Follower(follow::Input::LeaseLost { url: got })] if got == url
        ));
    }

    #[test]
    fn an_early_round_asks_only_for_what_was_wanted_since_the_last_full_one() {
        let mut book = LeaseBook::new();
        book.apply(&Command::AcquireLease { repo: repo() });
        assert_eq!(book.start_fresh_round().names, [repo().to_string()]);
        assert!(book.start_fresh_round().names.is_empty());
        book.apply_follow(&follow::Command::AcquireLease {
            url: "wss://a.example".into(),
        });
        assert_eq!(
            book.start_fresh_round().names,
            ["relay wss://a.example".to_string()]
        );
        // A full round asks for everything and leaves nothing fresh.
        book.apply_follow(&follow::Command::AcquireLease {
            url: "wss://b.example".into(),
        });
        assert_eq!(book.start_round().names.len(), 3);
        assert!(book.start_fresh_round().names.is_empty());
    }
}
