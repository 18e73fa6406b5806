//! The engine: one sans-IO state machine over purgatory, sync scheduling, the fetch throttle
//! and releases. The host feeds it inputs with `now`, runs the commands it emits (each with an
//! id that comes back on the matching input) and arms one timer at `poll_timeout()`.
//!
//! Per repository ([`RepoKey`], never the identifier alone) the cycle is: Inspect (which wanted
//! objects exist, current refs) -> plan a release -> Apply (object copies, CAS ref edits, HEAD)
//! -> `Released`. Missing objects start a sync attempt: fetch jobs per remote domain through the
//! throttle, then Inspect again; an incomplete attempt backs off (20 s, 40 s, 80 s, 120 s...).
//!
//! An event enters through two-phase admission (`admission.rs`): `handle_event` only decides,
//! and the event takes effect when the host reports it durable (`Input::Persisted`).

mod admission;
mod lease;
mod settle;
mod sync;
mod types;
mod world;

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::time::Duration;

use crate::acceptance::{self, OwnService};
use crate::config::Config;
use crate::deletion;
use crate::events::{self, GitEvent, RefName};
use crate::ids::{CommandId, EventId, Oid, PublicKey, RepoKey};
use crate::lookup::LookupMap;
use crate::purgatory::{IdentKey, Placeholder, Purgatory, Waiting};
use crate::quota::Shares;
use crate::replaceable::supersedes;
use crate::throttle::{Limits, Throttle};
use crate::time::Time;
use crate::timers::Timers;
use crate::urls::{self, UrlPolicy};

pub use crate::purgatory::Arrival;
use admission::Admission;
pub use types::*;
use world::{Accepted, View};

/// The GRASP purgatory engine. See the module documentation.
#[derive(Debug)]
pub struct Engine {
    config: Config,
    own: Option<OwnService>,
    policy: UrlPolicy,
    timers: Timers,
    throttle: Throttle<RepoKey>,
    purgatory: Purgatory,
    accepted: Accepted,
    /// Owners per identifier with a waiting announcement (every waiting one is hosted).
    waiting_hosted: LookupMap<IdentKey, BTreeSet<PublicKey>>,
    repos: LookupMap<RepoKey, RepoWork>,
    /// `(created_at, id)` of the state each hosted repository holds.
    applied: LookupMap<RepoKey, (u64, EventId)>,
    fetches: BTreeMap<CommandId, FetchInFlight>,
    /// Sync leases wanted or held (`lease.rs`; only with `Config::sync_leases`).
    leases: lease::Leases,
    /// Inspects in flight: the repository, the oids asked, and whether a sync attempt for
    /// what is missing was asked for (before this Inspect was issued).
    inspects: BTreeMap<CommandId, (RepoKey, Vec<Oid>, bool)>,
    applies: BTreeMap<CommandId, ApplyInFlight>,
    /// Events an Apply in flight will release: their expiry waits for its outcome.
    applying: BTreeMap<EventId, CommandId>,
    next_command: u64,
    /// Admitted events the host has not yet reported durable, by ticket (`admission.rs`).
    admissions: BTreeMap<Ticket, Admission>,
    /// The `admissions` that will wait in purgatory, by author and client address: they
    /// count toward the waiting limits with the waiting events.
    pending: Shares,
    next_ticket: u64,
    commands: VecDeque<Command>,
    events: VecDeque<EngineEvent>,
    counters: Counters,
    /// The latest `now` seen, for bookkeeping outside an input's own flow.
    now: Time,
}

#[derive(Default, Debug)]
struct Counters {
    fetches_started: u64,
    fetches_failed: u64,
    fetch_timeouts: u64,
    released: u64,
    expired: u64,
    deleted: u64,
    withdrawn: u64,
    apply_conflicts: u64,
}

/// Work in progress for one repository; removed when nothing waits and nothing runs.
#[derive(Default, Debug)]
struct RepoWork {
    /// Index into `Config::backoff` for the next incomplete attempt.
    backoff_step: usize,
    inspect: Option<CommandId>,
    /// Another Inspect is wanted once the current Inspect/Apply is done.
    inspect_queued: bool,
    /// The next Inspect issued carries this: its result starts a sync attempt for what is
    /// missing. (Never the Inspect in flight: it was asked before the request, and may not
    /// ask for the objects of the event that made it.)
    fetch_after_inspect: bool,
    apply: Option<CommandId>,
    apply_retries: u32,
    attempt: Option<sync::Attempt>,
    /// The attempt timer fired while an attempt was running: run again when it ends.
    attempt_due: bool,
}

#[derive(Debug)]
struct FetchInFlight {
    repo: RepoKey,
    domain: String,
    url: String,
    exclude: BTreeSet<Oid>,
}

#[derive(Debug)]
struct ApplyInFlight {
    repo: RepoKey,
    purpose: ApplyPurpose,
}

#[derive(Debug)]
enum ApplyPurpose {
    /// Release these events, and record the state the repository now holds, on success.
    Release {
        events: Vec<EventId>,
        state: Option<(u64, EventId)>,
    },
    /// A `refs/nostr/<id>` placeholder ref deleted.
    RemovePlaceholder(EventId, Placeholder),
    /// A PR released from its GRASP-06 repository, copied into a hosted repository it names.
    /// Nothing waits on it: a conflict means that repository has its own `refs/nostr/<id>`.
    MirrorPr(EventId),
}

impl Engine {
    /// An engine with nothing accepted and nothing waiting. Call once at start-up, then feed
    /// it what the store holds (`restore_accepted`, `restore_waiting`, `restore_placeholder`)
    /// before the first client event.
    pub fn new(config: Config) -> Engine {
        let own = config
            .own_origin
            .as_deref()
            .and_then(|o| OwnService::new(o).ok());
        Engine {
            policy: UrlPolicy::new(&config),
            throttle: Throttle::new(Limits::from_config(&config)),
            own,
            config,
            timers: Timers::new(),
            purgatory: Purgatory::new(),
            accepted: Accepted::default(),
            waiting_hosted: LookupMap::new(),
            repos: LookupMap::new(),
            applied: LookupMap::new(),
            fetches: BTreeMap::new(),
            leases: lease::Leases::default(),
            inspects: BTreeMap::new(),
            applies: BTreeMap::new(),
            applying: BTreeMap::new(),
            next_command: 0,
            admissions: BTreeMap::new(),
            pending: Shares::default(),
            next_ticket: 0,
            commands: VecDeque::new(),
            events: VecDeque::new(),
            counters: Counters::default(),
            now: Time::ZERO,
        }
    }

    /// The configuration the engine was built with.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// Start-up, before any `handle_event`: an announcement or state the store holds as
    /// accepted (served). Call for every one, in any order; it emits nothing.
    pub fn restore_accepted(&mut self, event: &nostr::event::Event) {
        match events::parse(event) {
            Ok(Some(GitEvent::Announcement(a))) => {
                let hosted = self.hosts(&a);
                let repo = RepoKey::new(a.owner, a.identifier.clone());
                self.accepted.add_announcement(a, hosted);
                if hosted {
                    // A stored repository holds its newest accepted authoritative state.
                    let view = self.view();
                    let maintainers = view.maintainers(&repo);
                    if let Some(s) = view.authoritative_state(&repo, &maintainers) {
                        let held = (s.created_at, s.id);
                        self.record_applied(repo, held);
                    }
                }
            }
            Ok(Some(GitEvent::State(s))) => {
                let held = (s.created_at, s.id);
                let repos: Vec<RepoKey> = {
                    let view = self.view();
                    view.targets(&GitEvent::State(s.clone()))
                };
                self.accepted.add_state(s, None);
                for repo in repos {
                    self.record_applied(repo, held);
                }
            }
            _ => {}
        }
    }

    /// Another instance sharing this host's store and repositories served `event`. If it
    /// waits here too, its repositories are inspected: they hold what released it there, so
    /// the inspection releases it here (the host then finds it served already). Otherwise an
    /// announcement or state is taken in as [`Engine::restore_accepted`] takes it.
    pub fn served_elsewhere(&mut self, now: Time, event: &nostr::event::Event) {
        self.now = self.now.max(now);
        if self.purgatory.get(&event.id).is_some() {
            for repo in self.targets_of(&event.id) {
                self.request_inspect(repo, false);
            }
            return;
        }
        self.restore_accepted(event);
    }

    /// Another instance sharing this host's store dropped `id` from purgatory unreleased
    /// (expired, deleted by its author, withdrawn by policy), and the store holds it neither
    /// waiting nor served: it stops waiting here too, so no push here aligns a repository to
    /// it. Nothing is emitted for it (the store's row is gone already); it is remembered as
    /// expired, so a sync re-delivering it is refused. An Apply in flight that would release
    /// it decides first, as it does for an expiry.
    pub fn gone_elsewhere(&mut self, now: Time, id: &EventId) {
        self.now = self.now.max(now);
        if self.applying.contains_key(id) {
            return;
        }
        let targets = self.targets_of(id);
        let Some(waiting) = self.remove_waiting(id) else {
            return;
        };
        self.purgatory.remember_expired(
            now,
            *id,
            self.config.remember_expired_for,
            self.config.max_remembered_expired,
        );
        self.after_removal(&waiting.parsed, targets);
    }

    /// Start-up, after `restore_accepted`: an event the store holds in purgatory, with its
    /// remaining life (the host keeps expiry as wall-clock time). It is durable already, so it
    /// goes straight back into scheduling and its repositories are inspected at once: drain
    /// `poll_command` afterwards.
    pub fn restore_waiting(
        &mut self,
        now: Time,
        event: nostr::event::Event,
        arrival: Arrival,
        remaining: Duration,
    ) {
        self.now = self.now.max(now);
        let Ok(Some(parsed)) = events::parse(&event) else {
            return;
        };
        if matches!(parsed, GitEvent::Deletion(_)) {
            return;
        }
        // Restored from the store: durable already, so it takes effect at once.
        let waiting = Waiting {
            parsed: self.with_prs_repo(parsed),
            arrival,
            client: None,
            received: now,
            expires: now + remaining,
        };
        self.admit(now, waiting, true, None);
    }

    /// Start-up: a `refs/nostr/<id>` ref of `repo` at `oid` whose event the store does not
    /// hold as served, with its remaining life (the placeholder expiry counted from its push).
    /// It is tracked as if just pushed, without `PlaceholderCreated`; a waiting PR with that
    /// id settles it at once (kept if it names `oid`, deleted otherwise).
    pub fn restore_placeholder(
        &mut self,
        now: Time,
        repo: RepoKey,
        id: EventId,
        oid: Oid,
        remaining: Duration,
    ) {
        self.now = self.now.max(now);
        if self.purgatory.placeholder_count() >= self.config.max_placeholders
            && self.purgatory.placeholder(&repo, &id).is_none()
        {
            return;
        }
        let expires = now + remaining;
        self.purgatory.add_placeholder(
            repo.clone(),
            id,
            Placeholder {
                oid,
                expires,
                failed_deletes: 0,
            },
        );
        self.timers
            .set(TimerReason::PlaceholderExpiry(repo, id), expires);
        if let Some(GitEvent::Pr(p)) = self.purgatory.get(&id).map(|w| &w.parsed) {
            let commit = p.commit;
            self.resolve_placeholders(id, commit);
        }
    }

    /// Call for every EVENT of a git kind or a deletion a client publishes or the follower
    /// learns, after the host verified its signature. Returns the verdict only: a `Waiting` or
    /// `Accepted` event takes effect when the host reports its ticket `Persisted` (see
    /// [`Verdict`]); until then the engine emits nothing for it. The host answers `OK` after
    /// that report, never before.
    #[must_use = "the verdict is the client's OK, and a ticket must be reported Persisted or PersistFailed"]
    pub fn handle_event(
        &mut self,
        now: Time,
        event: nostr::event::Event,
        submission: impl Into<Submission>,
    ) -> Verdict {
        self.now = self.now.max(now);
        let Submission {
            arrival,
            deletes_served,
            client,
            synced_from,
        } = submission.into();
        if event.kind.as_u16() == events::KIND_DELETION {
            if let Err(refused) = deletion::check_size(&event, &self.config) {
                return Verdict::Refused(Refusal::DeletionTooLarge, refused);
            }
        }
        let parsed = match events::parse(&event) {
            Err(e) => return Verdict::Rejected(e.to_string()),
            Ok(None) => {
                return Verdict::Rejected(format!(
                    "blocked: kind {} is not a repository announcement, state, PR or deletion",
                    event.kind.as_u16()
                ))
            }
            Ok(Some(p)) => self.with_prs_repo(p),
        };
        let id = event.id;
        if self.purgatory.contains(&id)
            || self.is_accepted(&parsed)
            || self.purgatory.was_released_pr(now, &id)
        {
            return Verdict::Duplicate;
        }
        if let GitEvent::Deletion(d) = parsed {
            // Anyone may sign a deletion: one that deletes nothing here is not stored.
            if !deletes_served && self.purgatory.deletable(&d).is_empty() {
                return Verdict::Refused(Refusal::DeletionNotHeld, deletion::NOT_HELD.into());
            }
            return self.hold(Admission::Delete(d));
        }
        if self.purgatory.was_expired(now, &id) && arrival == Arrival::Synced {
            return Verdict::Rejected(
                "blocked: this event expired from purgatory without its git data; \
                 publish it again once the data can be pushed"
                    .into(),
            );
        }
        let check = {
            let view = self.view();
            match (&self.own, &parsed) {
                // GRASP-05: the operator chose to mirror it, wherever it is announced.
                (_, GitEvent::Announcement(a)) if self.archives(a) => Ok(()),
                (Some(own), _) => acceptance::accept(own, &view, &parsed),
                (None, GitEvent::State(s)) => acceptance::accept_state(&view, s),
                (None, GitEvent::Pr(p)) => acceptance::accept_pr(&view, p),
                (None, _) => Ok(()),
            }
        };
        if let Err(rejection) = check {
            return Verdict::Rejected(rejection.to_string());
        }
        match &parsed {
            GitEvent::Announcement(a) => {
                let repo = RepoKey::new(a.owner, a.identifier.clone());
                // A maintainer's announcement, taken so the chain can be followed; or the
                // repository is served already and this updates its announcement.
                let hosted = self.hosts(a);
                if !hosted || self.accepted.is_hosted(&repo) {
                    let announce = Admission::Announce {
                        announcement: a.clone(),
                        hosted,
                    };
                    return self.hold(announce);
                }
            }
            GitEvent::State(s) => {
                if let Some((old, _)) = self
                    .accepted
                    .states
                    .get(&(IdentKey::of(&s.identifier), s.author))
                {
                    if !supersedes((s.created_at, &s.id), (old.created_at, &old.id)) {
                        return Verdict::Rejected(
                            "blocked: a newer repository state from this author is already \
                             accepted"
                                .into(),
                        );
                    }
                }
            }
            _ => {}
        }
        let waiting = Waiting {
            parsed,
            arrival,
            client,
            received: now,
            expires: now + self.config.purgatory_expiry,
        };
        self.hold(Admission::Wait {
            waiting,
            synced_from,
        })
    }

    /// Call before receive-pack runs, with the push's ref updates and `repo`'s current refs:
    /// per update, accept, or reject with the reason git shows the user. Decides only; report
    /// what git then applied with [`Input::Pushed`].
    #[must_use = "a rejected update must be refused to the client"]
    pub fn decide_push(
        &self,
        repo: &RepoKey,
        current: &BTreeMap<RefName, Oid>,
        updates: &[RefUpdate],
    ) -> Vec<RefDecision> {
        settle::decide_push(self, repo, current, updates)
    }

    /// Call when an IO outcome is known: a command's result (with the command's id), a push
    /// that git applied, or whether an admitted event's store write is durable. Drain
    /// `poll_command` and `poll_event` afterwards, and re-read `poll_timeout`.
    pub fn handle_input(&mut self, now: Time, input: Input) {
        self.now = self.now.max(now);
        match input {
            Input::FetchDone { id, result } => self.fetch_ended(now, id, result),
            Input::Inspected { id, result } => self.inspected(now, id, result),
            Input::Pushed { repo, updates } => self.pushed(now, repo, updates),
            Input::Applied { id, result } => self.applied(now, id, result),
            Input::Persisted { ticket } => self.persisted(now, ticket),
            Input::PersistFailed { ticket } => self.persist_failed(ticket),
            Input::PolicyChanged { policy } => self.policy_changed(policy),
            Input::Leased { repo } => self.leased(repo),
            Input::LeaseLost { repo } => self.lease_lost(now, repo),
        }
    }

    /// Call when the instant `poll_timeout` named has come (calling early or late is
    /// harmless: everything due by `now` runs). Drain `poll_command` and `poll_event`
    /// afterwards.
    pub fn handle_timeout(&mut self, now: Time) {
        self.now = self.now.max(now);
        while let Some((_, reason)) = self.timers.pop_due(now) {
            match reason {
                TimerReason::SyncAttempt(repo) => self.attempt_due(now, repo),
                TimerReason::FetchHedge(repo) => self.hedge_due(now, &repo),
                TimerReason::FetchDeadline(id) => {
                    if self.fetches.contains_key(&id) {
                        self.counters.fetch_timeouts += 1;
                        self.fetch_ended(now, id, Err(FetchError::Timeout));
                    }
                }
                TimerReason::Expiry(id) => self.expire(now, id),
                TimerReason::CommandDeadline(id) => {
                    if self.inspects.contains_key(&id) {
                        self.inspected(now, id, Err("the Inspect did not report in time".into()));
                    } else if self.applies.contains_key(&id) {
                        let late = ApplyError::Io("the Apply did not report in time".into());
                        self.applied(now, id, Err(late));
                    }
                }
                TimerReason::PlaceholderExpiry(repo, id) => self.placeholder_expired(repo, id),
                TimerReason::ThrottleWindow(domain) => self.start_fetches(now, &domain),
            }
        }
        self.throttle.evict_idle(now);
    }

    /// The next instant to call `handle_timeout` at, and why; `None` while nothing is timed.
    /// Read it again after every call that changes the engine: the deadline may move.
    #[must_use]
    pub fn poll_timeout(&self) -> Option<(Time, TimerReason)> {
        self.timers.next()
    }

    /// The next IO to run, until `None`. Drain it after every call that changes the engine;
    /// every command with an id is answered by an [`Input`] with that id.
    #[must_use = "a command not run leaves the engine waiting for its outcome until a deadline"]
    pub fn poll_command(&mut self) -> Option<Command> {
        self.commands.pop_front()
    }

    /// The next thing to persist or serve (a release, an expiry, a deletion, ...), until
    /// `None`. Drain it with `poll_command`, in order.
    #[must_use = "a released, expired or deleted event must be moved in the store"]
    pub fn poll_event(&mut self) -> Option<EngineEvent> {
        self.events.pop_front()
    }

    /// Counts for metrics; cheap, read at each scrape.
    #[must_use]
    pub fn stats(&self) -> Stats {
        let (leases_held, leases_wanted) = self.leases.counts();
        Stats {
            waiting: self.purgatory.counts(),
            remembered_expired: self.purgatory.remembered_expired(),
            fetches_in_flight: self.throttle.in_flight_by_domain(),
            throttle: self.throttle.counters(),
            domains_tracked: self.throttle.domain_count(),
            repos_active: self.repos.len(),
            timers: self.timers.len(),
            fetches_started: self.counters.fetches_started,
            fetches_failed: self.counters.fetches_failed,
            fetch_timeouts: self.counters.fetch_timeouts,
            released: self.counters.released,
            expired: self.counters.expired,
            deleted: self.counters.deleted,
            withdrawn: self.counters.withdrawn,
            apply_conflicts: self.counters.apply_conflicts,
            admissions_pending: self.admissions.len(),
            share_holders: self.purgatory.shares().holders() + self.pending.holders(),
            leases_held,
            leases_wanted,
        }
    }

    // --- internals shared by the submodules ---

    /// GRASP-06: notes a PR's repository under `/prs/` here, when enabled.
    fn with_prs_repo(&self, mut parsed: GitEvent) -> GitEvent {
        if let (true, Some(own), GitEvent::Pr(pr)) = (self.config.grasp06, &self.own, &mut parsed) {
            pr.prs_repo = own.prs_repo_of(pr).map(Box::new);
        }
        parsed
    }

    fn view(&self) -> View<'_> {
        View {
            accepted: &self.accepted,
            purgatory: &self.purgatory,
            waiting_hosted: &self.waiting_hosted,
            applied: &self.applied,
        }
    }

    fn next_id(&mut self) -> CommandId {
        self.next_command += 1;
        CommandId(self.next_command)
    }

    /// Whether the repository `a` announces is kept here: its announcement lists this server,
    /// or the archive list names it.
    fn hosts(&self, a: &events::Announcement) -> bool {
        self.archives(a) || self.lists_us(a)
    }

    fn archives(&self, a: &events::Announcement) -> bool {
        self.config.policy.archives(&a.owner, &a.identifier)
    }

    fn lists_us(&self, a: &events::Announcement) -> bool {
        let Some(own) = &self.own else { return true };
        a.clone
            .iter()
            .any(|u| own.is_own_clone_url(u, &a.owner, &a.identifier))
            && a.relays.iter().any(|u| own.is_own_relay_url(u))
    }

    fn is_accepted(&self, parsed: &GitEvent) -> bool {
        match parsed {
            GitEvent::Announcement(a) => self
                .accepted
                .announcements
                .get(&RepoKey::new(a.owner, a.identifier.clone()))
                .is_some_and(|x| x.id == a.id),
            GitEvent::State(s) => self
                .accepted
                .states
                .get(&(IdentKey::of(&s.identifier), s.author))
                .is_some_and(|(x, _)| x.id == s.id),
            _ => false,
        }
    }

    /// Puts a durable waiting event into purgatory and schedules its repositories.
    /// `synced_from`: the relay a synced event came from (see [`Submission::synced_from`]).
    fn admit(&mut self, now: Time, waiting: Waiting, inspect_now: bool, synced_from: Option<&str>) {
        let id = *waiting.parsed.id();
        let (arrival, expires) = (waiting.arrival, waiting.expires);
        let pr_commit = match &waiting.parsed {
            GitEvent::Pr(p) => Some(p.commit),
            _ => None,
        };
        let announced = match &waiting.parsed {
            GitEvent::Announcement(a) => Some((a.owner, a.identifier.clone())),
            _ => None,
        };
        if !self.purgatory.insert(waiting) {
            return;
        }
        if let Some((owner, identifier)) = announced {
            let repo = RepoKey::new(owner, identifier.clone());
            if !self.view().is_hosted(&repo) {
                self.commands.push_back(Command::CreateRepo { repo });
            }
            self.waiting_hosted
                .get_or_default(IdentKey::of(&identifier))
                .insert(owner);
        }
        self.timers.set_expiry(id, expires);
        if let Some(commit) = pr_commit {
            self.resolve_placeholders(id, commit);
        }
        let targets = {
            let view = self.view();
            view.targets(&self.purgatory.get(&id).expect("just inserted").parsed)
        };
        let from_clone_server = synced_from.is_some_and(|relay| {
            let view = self.view();
            targets.iter().any(|repo| {
                view.clone_candidates(repo)
                    .iter()
                    .any(|clone| urls::same_server(relay, clone))
            })
        });
        let first = match arrival {
            Arrival::Published => self.config.first_attempt_after_published,
            Arrival::Synced if from_clone_server => Duration::ZERO,
            Arrival::Synced => self.config.first_attempt_after_synced,
        };
        for repo in targets {
            // A genuinely new event: the backoff starts over (duplicates never get here).
            let work = self.repos.get_or_default(repo.clone());
            work.backoff_step = 0;
            self.timers
                .set_no_later_than(TimerReason::SyncAttempt(repo.clone()), now + first);
            if inspect_now {
                self.request_inspect(repo, false);
            }
        }
    }

    /// The hosted repositories a waiting event concerns.
    fn targets_of(&self, id: &EventId) -> Vec<RepoKey> {
        match self.purgatory.get(id) {
            Some(w) => self.view().targets(&w.parsed),
            None => Vec::new(),
        }
    }

    /// Removes a waiting event (released, expired or deleted) and tidies what depended on it.
    fn remove_waiting(&mut self, id: &EventId) -> Option<Waiting> {
        let waiting = self.purgatory.remove(id)?;
        self.timers.cancel_expiry(*id, waiting.expires);
        if let GitEvent::Announcement(a) = &waiting.parsed {
            if self
                .purgatory
                .announcements_of(&a.owner, &a.identifier)
                .is_empty()
            {
                if let Some(owners) = self.waiting_hosted.get_mut(&IdentKey::of(&a.identifier)) {
                    owners.remove(&a.owner);
                    if owners.is_empty() {
                        self.waiting_hosted.remove(&IdentKey::of(&a.identifier));
                    }
                }
            }
        }
        Some(waiting)
    }

    fn expire(&mut self, now: Time, id: EventId) {
        if self.applying.contains_key(&id) {
            // An Apply that would release it is running: the event expires when that Apply
            // ends (it has a deadline), whatever the outcome; it is never released after now.
            return;
        }
        let targets = self.targets_of(&id);
        let Some(waiting) = self.remove_waiting(&id) else {
            return;
        };
        self.purgatory.remember_expired(
            now,
            id,
            self.config.remember_expired_for,
            self.config.max_remembered_expired,
        );
        self.counters.expired += 1;
        self.events.push_back(EngineEvent::Expired {
            id,
            kind: waiting.parsed.kind(),
        });
        self.after_removal(&waiting.parsed, targets);
    }

    fn apply_deletion(&mut self, d: &events::Deletion) {
        let ids = self.purgatory.deletable(d);
        for id in ids {
            let targets = self.targets_of(&id);
            if let Some(waiting) = self.remove_waiting(&id) {
                self.counters.deleted += 1;
                self.events.push_back(EngineEvent::Deleted { id });
                self.after_removal(&waiting.parsed, targets);
            }
        }
    }

    /// The operator's lists changed: take them, and withdraw every waiting event they refuse.
    /// Walks the waiting events once: a rare operator action, not a per-event operation.
    fn policy_changed(&mut self, policy: crate::policy::Policy) {
        self.config.policy = policy;
        let refused: Vec<EventId> = self
            .purgatory
            .ids()
            .into_iter()
            .filter(|id| {
                self.purgatory
                    .get(id)
                    .is_some_and(|w| self.config.policy.check_git_event(&w.parsed).is_err())
            })
            .collect();
        for id in refused {
            self.withdraw(id);
        }
    }

    /// Removes a waiting event the operator's policy refuses.
    fn withdraw(&mut self, id: EventId) {
        let targets = self.targets_of(&id);
        if let Some(waiting) = self.remove_waiting(&id) {
            self.counters.withdrawn += 1;
            self.events.push_back(EngineEvent::Withdrawn { id });
            self.after_removal(&waiting.parsed, targets);
        }
    }

    /// After an event left purgatory without release: drop a repository nobody announces any
    /// more, and idle repositories that no longer wait for anything.
    fn after_removal(&mut self, parsed: &GitEvent, targets: Vec<RepoKey>) {
        if let GitEvent::Announcement(a) = parsed {
            let repo = RepoKey::new(a.owner, a.identifier.clone());
            if !self.view().is_hosted(&repo) {
                self.commands
                    .push_back(Command::RemoveRepo { repo: repo.clone() });
            }
        }
        for repo in targets {
            self.maybe_idle(&repo);
        }
    }

    /// `refs/nostr/<id>` placeholders for a PR that just arrived: a matching commit means the
    /// data is here; another commit means the ref is wrong and is deleted.
    fn resolve_placeholders(&mut self, id: EventId, commit: Oid) {
        for repo in self.purgatory.placeholder_repos(&id) {
            let Some(p) = self.purgatory.take_placeholder(&repo, &id) else {
                continue;
            };
            self.timers
                .cancel(&TimerReason::PlaceholderExpiry(repo.clone(), id));
            if p.oid != commit {
                self.delete_placeholder_ref(repo, id, p);
            }
        }
    }

    fn placeholder_expired(&mut self, repo: RepoKey, id: EventId) {
        if let Some(p) = self.purgatory.take_placeholder(&repo, &id) {
            self.delete_placeholder_ref(repo, id, p);
        }
    }

    fn delete_placeholder_ref(&mut self, repo: RepoKey, id: EventId, p: Placeholder) {
        let edit = RefEdit {
            name: format!("refs/nostr/{}", id.to_hex()),
            expected: Some(p.oid),
            new: None,
        };
        let plan = ApplyPlan {
            repo: repo.clone(),
            copy_from: None,
            edits: vec![edit],
            head: None,
        };
        let cmd = self.next_id();
        self.applies.insert(
            cmd,
            ApplyInFlight {
                repo,
                purpose: ApplyPurpose::RemovePlaceholder(id, p),
            },
        );
        self.issue_apply(cmd, plan);
    }

    /// A placeholder's ref delete failed (or hung): the placeholder is tracked again and the
    /// delete retried after a backoff, a bounded number of times.
    fn placeholder_delete_failed(
        &mut self,
        now: Time,
        repo: RepoKey,
        id: EventId,
        p: Placeholder,
        reason: String,
    ) {
        if self.purgatory.placeholder(&repo, &id).is_some() {
            // Pushed again meanwhile: the new placeholder governs the ref.
            return;
        }
        if p.failed_deletes >= self.config.max_apply_retries {
            self.events.push_back(EngineEvent::ApplyFailed {
                repo,
                reason: format!(
                    "could not delete refs/nostr/{} after {} tries ({reason}); delete it by hand",
                    id.to_hex(),
                    p.failed_deletes + 1
                ),
            });
            return;
        }
        let expires = now + self.config.backoff_delay(p.failed_deletes as usize);
        let retry = Placeholder {
            expires,
            failed_deletes: p.failed_deletes + 1,
            ..p
        };
        self.purgatory.add_placeholder(repo.clone(), id, retry);
        self.timers
            .set(TimerReason::PlaceholderExpiry(repo, id), expires);
    }

    fn pushed(&mut self, now: Time, repo: RepoKey, updates: Vec<RefUpdate>) {
        for u in &updates {
            let Some(hex) = u.name.strip_prefix("refs/nostr/") else {
                continue;
            };
            let Some(id) = events::parse_event_id_hex(hex) else {
                continue;
            };
            if u.new.is_zero() {
                if self.purgatory.take_placeholder(&repo, &id).is_some() {
                    self.timers
                        .cancel(&TimerReason::PlaceholderExpiry(repo.clone(), id));
                }
                continue;
            }
            // A PR admitted but not yet durable is not in purgatory: its ref is tracked as a
            // placeholder, which `Persisted` settles (`admit`, `resolve_placeholders`); if its
            // write fails, the placeholder expires as if the PR never came.
            if self.purgatory.contains(&id)
                || self.purgatory.placeholder_count() >= self.config.max_placeholders
            {
                continue;
            }
            let expires = now + self.config.placeholder_expiry;
            self.purgatory.add_placeholder(
                repo.clone(),
                id,
                Placeholder {
                    oid: u.new,
                    expires,
                    failed_deletes: 0,
                },
            );
            self.timers
                .set(TimerReason::PlaceholderExpiry(repo.clone(), id), expires);
            self.events.push_back(EngineEvent::PlaceholderCreated {
                repo: repo.clone(),
                id,
            });
        }
        self.request_inspect(repo, false);
    }

    /// Records the state a repository holds, if newer than what it held.
    fn record_applied(&mut self, repo: RepoKey, held: (u64, EventId)) {
        let newer = self
            .applied
            .get(&repo)
            .is_none_or(|old| supersedes((held.0, &held.1), (old.0, &old.1)));
        if newer {
            self.applied.insert(repo, held);
        }
    }

    /// Drops deadlines of finished commands from the front of the deadline queues.
    fn prune_deadlines(&mut self) {
        let (fetches, inspects, applies) = (&self.fetches, &self.inspects, &self.applies);
        let running = |id: CommandId| {
            fetches.contains_key(&id) || inspects.contains_key(&id) || applies.contains_key(&id)
        };
        let live = fetches.len() + inspects.len() + applies.len();
        self.timers.prune_deadlines(running, live);
    }

    /// Emits an Apply (already registered in `applies`) with its deadline.
    fn issue_apply(&mut self, id: CommandId, plan: ApplyPlan) {
        if let Some(ApplyInFlight {
            purpose: ApplyPurpose::Release { events, .. },
            ..
        }) = self.applies.get(&id)
        {
            for e in events {
                self.applying.insert(*e, id);
            }
        }
        let deadline = self.now + self.config.local_command_timeout;
        self.timers.push_command_deadline(id, deadline);
        self.commands.push_back(Command::Apply { id, plan });
    }

    /// Forgets a repository's work when nothing waits and nothing runs.
    fn maybe_idle(&mut self, repo: &RepoKey) {
        if !self.repos.contains_key(repo) || self.view().has_work(repo) {
            return;
        }
        let now = self.now;
        if let Some(attempt) = self.repos.get_mut(repo).and_then(|w| w.attempt.as_mut()) {
            // Nothing more starts: neither queued URLs nor domains not yet asked.
            attempt.pending.clear();
            let domains: Vec<String> = std::mem::take(&mut attempt.jobs).into_keys().collect();
            for d in domains {
                self.throttle.dequeue(now, &d, repo);
            }
            self.timers.cancel(&TimerReason::FetchHedge(repo.clone()));
        }
        if let Some(work) = self.repos.get_mut(repo) {
            // Nothing in flight and nothing queued: the attempt is over, or nothing would ever
            // end it and a later attempt timer would only mark it due.
            if work
                .attempt
                .as_ref()
                .is_some_and(|a| a.in_flight.is_empty())
            {
                work.attempt = None;
                work.attempt_due = false;
            }
        }
        let Some(work) = self.repos.get(repo) else {
            return;
        };
        if work.inspect.is_none() && work.apply.is_none() && work.attempt.is_none() {
            self.repos.remove(repo);
            self.timers.cancel(&TimerReason::SyncAttempt(repo.clone()));
            self.drop_lease(repo);
        }
    }
}
