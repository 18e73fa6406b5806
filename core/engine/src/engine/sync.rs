//! Sync attempts: fetch jobs per remote domain through the throttle, deadlines, backoff.

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use super::{Engine, FetchInFlight, RepoWork};
use crate::engine::types::{Command, FetchError, FetchReport, TimerReason};
use crate::ids::{CommandId, Oid, RepoKey};
use crate::throttle::{Enqueued, Outcome};
use crate::time::Time;

/// One running sync attempt of one repository.
#[derive(Debug, Default)]
pub(super) struct Attempt {
    /// Wanted objects not yet known present.
    pub missing: BTreeSet<Oid>,
    /// URLs still to try, per started domain, in candidate order.
    pub jobs: BTreeMap<String, VecDeque<Job>>,
    /// Domains not started yet, in candidate order (see `Config::fetch_hedge_after`).
    pub pending: VecDeque<(String, VecDeque<Job>)>,
    /// At most one fetch in flight per domain for this repository.
    pub in_flight: BTreeMap<String, CommandId>,
}

#[derive(Debug, Clone)]
pub(super) struct Job {
    pub url: String,
    /// Oids this URL said it does not have.
    pub exclude: BTreeSet<Oid>,
}

fn outcome_of(result: &Result<FetchReport, FetchError>) -> Outcome {
    match result {
        Ok(_) => Outcome::Reachable,
        Err(FetchError::Dns | FetchError::Tls) => Outcome::Unreachable,
        Err(FetchError::RateLimited) => Outcome::RateLimited,
        Err(FetchError::Http(_) | FetchError::NotOurRef(_) | FetchError::TooLarge) => {
            Outcome::Reachable
        }
        Err(FetchError::Refused | FetchError::Timeout | FetchError::Other(_)) => Outcome::Neutral,
    }
}

impl Engine {
    /// The repository's attempt timer fired.
    pub(super) fn attempt_due(&mut self, now: Time, repo: RepoKey) {
        let Some(work) = self.repos.get_mut(&repo) else {
            return;
        };
        if work.attempt.is_some() {
            // Never lose the wake-up: run again as soon as the current attempt ends (now, if
            // nothing is in flight or queued any more).
            work.attempt_due = true;
            self.check_attempt_end(now, &repo);
            return;
        }
        self.request_inspect(repo, true);
    }

    /// Starts an attempt for `missing` (the Inspect that preceded it found them absent).
    pub(super) fn start_attempt(&mut self, now: Time, repo: RepoKey, missing: BTreeSet<Oid>) {
        if !self.may_fetch(&repo) {
            // `Input::Leased` inspects again and comes back here.
            return;
        }
        let urls = {
            let view = self.view();
            let candidates = view.clone_candidates(&repo);
            self.policy.plan(
                candidates.iter().map(String::as_str),
                self.config.max_urls_per_repo,
            )
        };
        let mut attempt = Attempt {
            missing,
            ..Attempt::default()
        };
        for url in urls {
            let domain = url.domain();
            let job = Job {
                url: url.to_string(),
                exclude: BTreeSet::new(),
            };
            match attempt.pending.iter_mut().find(|(d, _)| *d == domain) {
                Some((_, jobs)) => jobs.push_back(job),
                None => attempt.pending.push_back((domain, VecDeque::from([job]))),
            }
        }
        self.repos.get_or_default(repo.clone()).attempt = Some(attempt);
        self.start_next_domain(now, &repo);
        self.check_attempt_end(now, &repo);
    }

    /// Starts the attempt's next domain (candidate order) that the throttle takes; arms the
    /// hedge timer while more remain. Returns whether one started.
    fn start_next_domain(&mut self, now: Time, repo: &RepoKey) -> bool {
        loop {
            let Some(a) = self.repos.get_mut(repo).and_then(|w| w.attempt.as_mut()) else {
                return false;
            };
            if a.missing.is_empty() {
                a.pending.clear();
                return false;
            }
            let Some((domain, jobs)) = a.pending.pop_front() else {
                return false;
            };
            let more = !a.pending.is_empty();
            match self.throttle.enqueue(now, &domain, repo.clone()) {
                Enqueued::Queued | Enqueued::AlreadyQueued => {}
                // Skipped (bad domain) or no room to track it: on to the next domain.
                Enqueued::Skipped { .. } | Enqueued::TableFull => continue,
            }
            if let Some(a) = self.repos.get_mut(repo).and_then(|w| w.attempt.as_mut()) {
                a.jobs.insert(domain.clone(), jobs);
            }
            let hedge = TimerReason::FetchHedge(repo.clone());
            if more {
                self.timers.set(hedge, now + self.config.fetch_hedge_after);
            } else {
                self.timers.cancel(&hedge);
            }
            self.start_fetches(now, &domain);
            return true;
        }
    }

    /// The hedge timer fired: the current domain is slow, start the next one as well.
    pub(super) fn hedge_due(&mut self, now: Time, repo: &RepoKey) {
        self.start_next_domain(now, repo);
        self.check_attempt_end(now, repo);
    }

    /// Starts as many fetches at `domain` as the throttle allows, then re-arms its wake-up.
    pub(super) fn start_fetches(&mut self, now: Time, domain: &str) {
        while let Some(repo) = self.throttle.try_start(now, domain) {
            let job = self
                .repos
                .get_mut(&repo)
                .and_then(|w| w.attempt.as_mut())
                .and_then(|a| {
                    let job = a.jobs.get_mut(domain)?.pop_front()?;
                    if a.jobs.get(domain).is_some_and(VecDeque::is_empty) {
                        a.jobs.remove(domain);
                    }
                    let oids: Vec<Oid> = a.missing.difference(&job.exclude).copied().collect();
                    Some((job, oids))
                });
            let Some((job, oids)) = job.filter(|(_, oids)| !oids.is_empty()) else {
                // Nothing for this URL to fetch: give the slot back, try the next URL later.
                self.throttle.abandon_start(now, domain);
                let more = self
                    .repos
                    .get(&repo)
                    .and_then(|w| w.attempt.as_ref())
                    .is_some_and(|a| a.jobs.contains_key(domain));
                if more {
                    self.throttle.enqueue(now, domain, repo.clone());
                }
                self.check_attempt_end(now, &repo);
                continue;
            };
            let id = self.next_id();
            let deadline = now + self.config.fetch_timeout;
            if let Some(a) = self.repos.get_mut(&repo).and_then(|w| w.attempt.as_mut()) {
                a.in_flight.insert(domain.to_owned(), id);
            }
            self.fetches.insert(
                id,
                FetchInFlight {
                    repo: repo.clone(),
                    domain: domain.to_owned(),
                    url: job.url.clone(),
                    exclude: job.exclude,
                },
            );
            self.timers
                .push_fetch_deadline(id, deadline + self.config.fetch_report_grace);
            self.counters.fetches_started += 1;
            self.commands.push_back(Command::Fetch {
                id,
                into: repo,
                url: job.url,
                oids,
                deadline,
            });
        }
        let reason = TimerReason::ThrottleWindow(domain.to_owned());
        match self.throttle.wake_at(now, domain) {
            Some(at) => self.timers.set(reason, at),
            None => {
                self.timers.cancel(&reason);
            }
        }
    }

    /// A fetch reported, or missed its deadline. Late reports (unknown id) are ignored.
    pub(super) fn fetch_ended(
        &mut self,
        now: Time,
        id: CommandId,
        result: Result<FetchReport, FetchError>,
    ) {
        let Some(f) = self.fetches.remove(&id) else {
            return;
        };
        self.prune_deadlines();
        if result.is_err() {
            self.counters.fetches_failed += 1;
        }
        let dropped = self.throttle.finish(now, &f.domain, outcome_of(&result));
        for other in dropped {
            if let Some(a) = self.repos.get_mut(&other).and_then(|w| w.attempt.as_mut()) {
                a.jobs.remove(&f.domain);
            }
            if other != f.repo {
                self.check_attempt_end(now, &other);
            }
        }
        let skipped = self.throttle.skipped_until(now, &f.domain).is_some();
        let mut got_objects = false;
        let mut requeue = false;
        if let Some(a) = self.repos.get_mut(&f.repo).and_then(|w| w.attempt.as_mut()) {
            if a.in_flight.get(&f.domain) == Some(&id) {
                a.in_flight.remove(&f.domain);
            }
            match &result {
                Ok(report) => {
                    for oid in &report.present {
                        got_objects |= a.missing.remove(oid);
                    }
                }
                Err(FetchError::NotOurRef(lacking)) if !skipped => {
                    // Same URL again without what it lacks, if anything is left to ask it.
                    let mut exclude = f.exclude.clone();
                    exclude.extend(lacking.iter().copied());
                    if a.missing.difference(&exclude).next().is_some() && exclude != f.exclude {
                        a.jobs
                            .entry(f.domain.clone())
                            .or_default()
                            .push_front(super::sync::Job {
                                url: f.url.clone(),
                                exclude,
                            });
                    }
                }
                Err(_) => {}
            }
            if a.missing.is_empty() {
                a.jobs.clear();
                a.pending.clear();
            }
            requeue = a.jobs.contains_key(&f.domain) && !skipped;
            if skipped {
                a.jobs.remove(&f.domain);
            }
        }
        if got_objects {
            self.request_inspect(f.repo.clone(), false);
        }
        if requeue {
            if let Enqueued::Skipped { .. } | Enqueued::TableFull =
                self.throttle.enqueue(now, &f.domain, f.repo.clone())
            {
                if let Some(a) = self.repos.get_mut(&f.repo).and_then(|w| w.attempt.as_mut()) {
                    a.jobs.remove(&f.domain);
                }
            }
        }
        self.withdraw_if_done(now, &f.repo);
        self.check_attempt_end(now, &f.repo);
        self.start_fetches(now, &f.domain);
    }

    /// When an attempt has nothing left to fetch, take it out of every domain queue.
    fn withdraw_if_done(&mut self, now: Time, repo: &RepoKey) {
        let Some(a) = self.repos.get_mut(repo).and_then(|w| w.attempt.as_mut()) else {
            return;
        };
        if !a.missing.is_empty() {
            return;
        }
        a.pending.clear();
        let domains: Vec<String> = std::mem::take(&mut a.jobs).into_keys().collect();
        for d in domains {
            self.throttle.dequeue(now, &d, repo);
        }
    }

    /// Ends the attempt once nothing is in flight or queued: back off if objects are still
    /// missing, and honour an attempt timer that fired meanwhile.
    pub(super) fn check_attempt_end(&mut self, now: Time, repo: &RepoKey) {
        let Some(work) = self.repos.get_mut(repo) else {
            return;
        };
        let Some(a) = &work.attempt else { return };
        if !a.in_flight.is_empty() || a.jobs.values().any(|j| !j.is_empty()) {
            return;
        }
        let incomplete = !a.missing.is_empty();
        if incomplete && !a.pending.is_empty() && self.start_next_domain(now, repo) {
            // The started domain may have had nothing to ask for: look again.
            return self.check_attempt_end(now, repo);
        }
        let Some(work) = self.repos.get_mut(repo) else {
            return;
        };
        work.attempt = None;
        let due = std::mem::take(&mut work.attempt_due);
        self.timers.cancel(&TimerReason::FetchHedge(repo.clone()));
        if incomplete {
            self.schedule_backoff(now, repo);
        }
        if due {
            self.request_inspect(repo.clone(), true);
        } else {
            self.maybe_idle(repo);
        }
    }

    /// Arms the next attempt after an incomplete one (never later than an armed one).
    pub(super) fn schedule_backoff(&mut self, now: Time, repo: &RepoKey) {
        let work: &mut RepoWork = self.repos.get_or_default(repo.clone());
        let delay = self.config.backoff_delay(work.backoff_step);
        work.backoff_step = work.backoff_step.saturating_add(1);
        self.timers
            .set_no_later_than(TimerReason::SyncAttempt(repo.clone()), now + delay);
    }
}
