//! Inspect -> plan (release rules) -> Apply -> Released, per repository; push decisions.

use std::collections::{BTreeMap, BTreeSet};

use super::{ApplyInFlight, ApplyPurpose, Engine};
use crate::engine::types::{
    ApplyError, ApplyPlan, Command, EngineEvent, RefDecision, RefEdit, RefUpdate, RepoSnapshot,
};
use crate::events::{GitEvent, PullRequest, RefName, RepoState};
use crate::ids::{CommandId, EventId, Oid, RepoKey};
use crate::push;
use crate::release::{self, RepoUpdate, Target};
use crate::replaceable::precedence;
use crate::time::Time;

/// What one Inspect allows for one repository: an Apply (objects, CAS ref edits, HEAD) and
/// the events it releases, with the state the repository then holds.
#[derive(Debug, Default)]
struct RepoRelease {
    copy_from: Option<(RepoKey, Vec<Oid>)>,
    edits: Vec<RefEdit>,
    head: Option<RefName>,
    release: Vec<EventId>,
    state: Option<(u64, EventId)>,
}

impl RepoRelease {
    fn needs_apply(&self) -> bool {
        self.copy_from.is_some() || !self.edits.is_empty() || self.head.is_some()
    }

    fn take(&mut self, update: RepoUpdate) {
        if let Some(from) = update.copy_from {
            let objects = &mut self.copy_from.get_or_insert_with(|| (from, Vec::new())).1;
            objects.extend(update.objects);
        }
        self.edits.extend(update.edits);
        if update.head.is_some() {
            self.head = update.head;
        }
        if update.applied_state.is_some() {
            self.state = update.applied_state;
        }
    }
}

impl Engine {
    /// Asks for an Inspect of `repo` (coalesced: at most one in flight per repository, and
    /// none while an Apply runs; a request meanwhile is queued, never lost).
    pub(super) fn request_inspect(&mut self, repo: RepoKey, then_fetch: bool) {
        let work = self.repos.get_or_default(repo.clone());
        work.fetch_after_inspect |= then_fetch;
        if work.inspect.is_some() || work.apply.is_some() {
            work.inspect_queued = true;
            return;
        }
        self.issue_inspect(repo);
    }

    fn issue_inspect(&mut self, repo: RepoKey) {
        let wanted = self.view().wanted(&repo);
        let Some(work) = self.repos.get_mut(&repo) else {
            return;
        };
        work.inspect_queued = false;
        if wanted.events.is_empty() && wanted.catch_up.is_none() {
            work.fetch_after_inspect = false;
            self.maybe_idle(&repo);
            return;
        }
        self.next_command += 1;
        let id = CommandId(self.next_command);
        work.inspect = Some(id);
        let then_fetch = std::mem::take(&mut work.fetch_after_inspect);
        let oids: Vec<Oid> = wanted.oids.into_iter().collect();
        self.inspects
            .insert(id, (repo.clone(), oids.clone(), then_fetch));
        let deadline = self.now + self.config.local_command_timeout;
        self.timers.push_command_deadline(id, deadline);
        self.commands.push_back(Command::Inspect { id, repo, oids });
    }

    pub(super) fn inspected(
        &mut self,
        now: Time,
        id: CommandId,
        result: Result<RepoSnapshot, String>,
    ) {
        let Some((repo, asked, fetch)) = self.inspects.remove(&id) else {
            return;
        };
        self.prune_deadlines();
        let Some(work) = self.repos.get_mut(&repo) else {
            return;
        };
        if work.inspect == Some(id) {
            work.inspect = None;
        }
        let snapshot = match result {
            Ok(s) => s,
            Err(_) => {
                self.schedule_backoff(now, &repo);
                self.after_settle_step(&repo);
                return;
            }
        };
        let present: BTreeSet<Oid> = snapshot.present.iter().copied().collect();
        let plan = self.plan_repo_release(&repo, &snapshot, &present);
        if plan.needs_apply() {
            let cmd = self.next_id();
            let apply = ApplyPlan {
                repo: repo.clone(),
                copy_from: plan.copy_from,
                edits: plan.edits,
                head: plan.head,
            };
            let purpose = ApplyPurpose::Release {
                events: plan.release,
                state: plan.state,
            };
            self.applies.insert(
                cmd,
                ApplyInFlight {
                    repo: repo.clone(),
                    purpose,
                },
            );
            if let Some(w) = self.repos.get_mut(&repo) {
                w.apply = Some(cmd);
            }
            self.issue_apply(cmd, apply);
        } else if !plan.release.is_empty() || plan.state.is_some() {
            self.release(now, &repo, &plan.release, plan.state);
        }
        let missing: BTreeSet<Oid> = asked.into_iter().filter(|o| !present.contains(o)).collect();
        let running = self.repos.get_mut(&repo).and_then(|w| w.attempt.as_mut());
        match running {
            Some(a) => {
                a.missing.retain(|o| !present.contains(o));
                if fetch {
                    // Asked to fetch while fetching: go again when this attempt ends.
                    if let Some(w) = self.repos.get_mut(&repo) {
                        w.attempt_due = true;
                    }
                }
            }
            None if fetch && !missing.is_empty() => self.start_attempt(now, repo.clone(), missing),
            None => {}
        }
        self.after_settle_step(&repo);
    }

    pub(super) fn applied(&mut self, now: Time, id: CommandId, result: Result<(), ApplyError>) {
        let Some(a) = self.applies.remove(&id) else {
            return;
        };
        self.prune_deadlines();
        if let ApplyPurpose::Release { events, .. } = &a.purpose {
            for e in events {
                self.applying.remove(e);
            }
            // Events whose expiry passed while this Apply ran expire now, whatever it did.
            for e in events {
                if self.purgatory.get(e).is_some_and(|w| w.expires <= now) {
                    self.expire(now, *e);
                }
            }
        }
        let repo = a.repo;
        if let Some(w) = self.repos.get_mut(&repo) {
            if w.apply == Some(id) {
                w.apply = None;
            }
        }
        match (a.purpose, result) {
            (ApplyPurpose::Release { events, state }, Ok(())) => {
                if let Some(w) = self.repos.get_mut(&repo) {
                    w.apply_retries = 0;
                }
                // The plan held everything releasable at its Inspect; events that arrived
                // since have queued another Inspect.
                self.release(now, &repo, &events, state);
            }
            (ApplyPurpose::Release { .. }, Err(ApplyError::Conflict)) => {
                self.counters.apply_conflicts += 1;
                let w = self.repos.get_or_default(repo.clone());
                if w.apply_retries < self.config.max_apply_retries {
                    w.apply_retries += 1;
                    self.request_inspect(repo.clone(), false);
                } else {
                    w.apply_retries = 0;
                    self.events.push_back(EngineEvent::ApplyFailed {
                        repo: repo.clone(),
                        reason: "the repository kept changing while its refs were aligned".into(),
                    });
                    self.schedule_backoff(now, &repo);
                }
            }
            (ApplyPurpose::Release { .. }, Err(ApplyError::Io(reason))) => {
                self.events.push_back(EngineEvent::ApplyFailed {
                    repo: repo.clone(),
                    reason,
                });
                self.schedule_backoff(now, &repo);
            }
            (ApplyPurpose::RemovePlaceholder(eid, _), Ok(())) => {
                self.events.push_back(EngineEvent::PlaceholderRemoved {
                    repo: repo.clone(),
                    id: eid,
                });
            }
            (ApplyPurpose::RemovePlaceholder(eid, _), Err(ApplyError::Conflict)) => {
                // The ref no longer holds that commit: deleted, or pushed again (and then
                // tracked as a new placeholder).
                if self.purgatory.placeholder(&repo, &eid).is_none() {
                    self.events.push_back(EngineEvent::PlaceholderRemoved {
                        repo: repo.clone(),
                        id: eid,
                    });
                }
            }
            (ApplyPurpose::RemovePlaceholder(eid, p), Err(ApplyError::Io(reason))) => {
                self.placeholder_delete_failed(now, repo.clone(), eid, p, reason);
            }
            (ApplyPurpose::MirrorPr(_), Ok(()) | Err(ApplyError::Conflict)) => {}
            (ApplyPurpose::MirrorPr(eid), Err(ApplyError::Io(reason))) => {
                self.events.push_back(EngineEvent::ApplyFailed {
                    repo: repo.clone(),
                    reason: format!("mirroring PR {} from /prs/: {reason}", eid.to_hex()),
                });
            }
        }
        self.after_settle_step(&repo);
    }

    /// After an Inspect or Apply finished: run a queued Inspect, or idle the repository.
    fn after_settle_step(&mut self, repo: &RepoKey) {
        let Some(w) = self.repos.get(repo) else {
            return;
        };
        if w.inspect.is_none() && w.apply.is_none() && w.inspect_queued {
            self.issue_inspect(repo.clone());
        } else {
            self.maybe_idle(repo);
        }
    }

    /// Emits `Released` for each still-waiting event, records what is now accepted and what
    /// `repo` holds, and lets sibling repositories catch up to a newly accepted state.
    fn release(
        &mut self,
        now: Time,
        repo: &RepoKey,
        ids: &[EventId],
        state: Option<(u64, EventId)>,
    ) {
        if !repo.is_prs() && !self.view().is_hosted(repo) {
            // Its announcement left while the Inspect or Apply ran: the repository was removed.
            return;
        }
        if let Some(held) = state {
            self.record_applied(repo.clone(), held);
        }
        let mut released_state = None;
        for id in ids {
            if self.purgatory.get(id).is_some_and(|w| w.expires <= now) {
                // Never released at or after its expiry (its expiry timer may not have run).
                self.expire(now, *id);
                continue;
            }
            let Some(waiting) = self.remove_waiting(id) else {
                continue;
            };
            match &waiting.parsed {
                GitEvent::Announcement(a) => self.accepted.add_announcement(a.clone(), true),
                GitEvent::State(s) => {
                    released_state = Some(waiting.parsed.clone());
                    self.accepted.add_state(s.clone(), Some(repo.clone()));
                }
                GitEvent::Pr(pr) => {
                    self.purgatory.remember_released_pr(
                        now,
                        *id,
                        self.config.remember_expired_for,
                        self.config.max_remembered_expired,
                    );
                    if repo.is_prs() {
                        self.mirror_pr(repo, pr);
                    }
                }
                GitEvent::Deletion(_) => {}
            }
            self.counters.released += 1;
            let waited = now.saturating_since(waiting.received);
            self.events.push_back(EngineEvent::Released {
                id: *id,
                kind: waiting.parsed.kind(),
                waited,
            });
        }
        let shared = |e: &GitEvent| match e {
            GitEvent::State(s) => self.view().hosted_owners(&s.identifier).nth(1).is_some(),
            _ => false,
        };
        if let Some(state) = released_state.filter(shared) {
            let siblings = self.view().targets(&state);
            for sibling in siblings.into_iter().filter(|s| s != repo) {
                self.request_inspect(sibling, false);
            }
        }
    }

    /// GRASP-06: a PR released from its `/prs/` repository gets its `refs/nostr/<id>` in every
    /// hosted repository it names (never the reverse: a hosted repository's PRs stay there).
    fn mirror_pr(&mut self, from: &RepoKey, pr: &PullRequest) {
        let hosted: Vec<RepoKey> = {
            let view = self.view();
            view.targets(&GitEvent::Pr(pr.clone()))
                .into_iter()
                .filter(|r| !r.is_prs())
                .collect()
        };
        for repo in hosted {
            let id = self.next_id();
            self.applies.insert(
                id,
                ApplyInFlight {
                    repo: repo.clone(),
                    purpose: ApplyPurpose::MirrorPr(pr.id),
                },
            );
            let plan = ApplyPlan {
                repo,
                copy_from: Some((from.clone(), vec![pr.commit])),
                edits: vec![RefEdit {
                    name: release::pr_ref_name(&pr.id),
                    expected: None,
                    new: Some(pr.commit),
                }],
                head: None,
            };
            self.issue_apply(id, plan);
        }
    }

    /// Plans with the release rules (`release::plan_release`) for this one repository, whose
    /// snapshot says which wanted objects it has: the newest releasable state (waiting, or an
    /// accepted one it has not caught up with, copied from where it was released), PRs whose
    /// commit is here, and the announcement once the repository has data.
    fn plan_repo_release(
        &self,
        repo: &RepoKey,
        snap: &RepoSnapshot,
        present: &BTreeSet<Oid>,
    ) -> RepoRelease {
        let view = self.view();
        let maintainers = view.maintainers(repo);
        let waiting_announcements = self
            .purgatory
            .announcements_of(&repo.owner, &repo.identifier);
        let target = Target {
            repo: repo.clone(),
            refs: &snap.refs,
            applied_state: self.applied.get(repo).copied(),
            maintainers: &maintainers,
            waiting_announcement: waiting_announcements.last().copied(),
        };
        let here = |r: &RepoKey, o: &Oid| r == repo && present.contains(o);
        let mut plan = RepoRelease::default();

        // States, newest first: waiting ones, and the accepted one to catch up with.
        let catch_up = view
            .catch_up(repo, &maintainers)
            .map(|(s, source)| (GitEvent::State(s.clone()), source.as_ref()));
        let mut states: Vec<(&GitEvent, Option<&RepoKey>, bool)> = view
            .waiting_states(repo, &maintainers)
            .into_iter()
            .filter_map(|id| Some((&self.purgatory.get(&id)?.parsed, None, true)))
            .collect();
        if let Some((event, source)) = &catch_up {
            states.push((event, *source, false));
        }
        states.sort_by(|(a, _, _), (b, _, _)| {
            precedence((b.created_at(), b.id()), (a.created_at(), a.id()))
        });
        for (event, source, waiting) in states {
            let GitEvent::State(state) = event else {
                continue;
            };
            let all_here = state.refs.values().all(|o| present.contains(o));
            let source = match source {
                Some(src) if !all_here && src != repo => src,
                _ => repo,
            };
            // Objects of an accepted state are in the repository it was released in.
            let available = |r: &RepoKey, o: &Oid| (r == source && r != repo) || here(r, o);
            let Ok(p) =
                release::plan_release(event, source, std::slice::from_ref(&target), available)
            else {
                continue;
            };
            for update in p.updates.into_iter().filter(|u| u.repo == *repo) {
                plan.take(update);
            }
            if !p.announcements.is_empty() {
                // Every waiting version of the owner's announcement goes together: the store
                // and `Accepted` keep NIP-01's winner, and no version is left behind to be
                // taken for the current one. Before the state: the host serves in this order,
                // and a client that sees the state may at once publish an issue that needs
                // the repository's announcement served.
                plan.release.extend(waiting_announcements.iter().copied());
            }
            if waiting {
                plan.release.push(state.id);
            }
            break;
        }
        if plan.release.is_empty()
            && plan.state.is_none()
            && release::announcement_ready(&snap.refs)
        {
            plan.release.extend(waiting_announcements.iter().copied());
        }
        for id in &self.purgatory.prs_for(repo) {
            let Some(w) = self.purgatory.get(id) else {
                continue;
            };
            let Ok(p) = release::plan_release(&w.parsed, repo, std::slice::from_ref(&target), here)
            else {
                continue;
            };
            for update in p.updates.into_iter().filter(|u| u.repo == *repo) {
                plan.take(update);
            }
            plan.release.push(*id);
        }
        // Without duplicates, in the order planned: not sorted by id, which would put a
        // state before its announcement whenever its id is the lower one.
        let mut planned = BTreeSet::new();
        plan.release.retain(|id| planned.insert(*id));
        plan
    }
}

/// Push decisions by the push rules over this repository's waiting states and known PRs.
pub(super) fn decide_push(
    engine: &Engine,
    repo: &RepoKey,
    current: &BTreeMap<RefName, Oid>,
    updates: &[RefUpdate],
) -> Vec<RefDecision> {
    if engine
        .config
        .policy
        .denies_repo(&repo.owner, &repo.identifier)
    {
        let refused = crate::policy::PolicyRefusal::Repo.message();
        return vec![RefDecision::Reject(refused.into()); updates.len()];
    }
    let archived = engine.config.archive_read_only
        && !repo.is_prs()
        && engine.config.policy.archives(&repo.owner, &repo.identifier);
    if archived {
        let refused = crate::policy::READ_ONLY_ARCHIVE;
        return vec![RefDecision::Reject(refused.into()); updates.len()];
    }
    let known_pr_commit = |id: &EventId| match engine.purgatory.get(id).map(|w| &w.parsed) {
        Some(GitEvent::Pr(p)) => Some(p.commit),
        _ => None,
    };
    if repo.is_prs() {
        return push::decide_prs_push(current, updates, known_pr_commit);
    }
    let view = engine.view();
    let maintainers = view.maintainers(repo);
    // Only states newer than the one the repository holds: a push must never take it back
    // to an older (or same-second, higher-id) state.
    let states: Vec<&RepoState> = view
        .waiting_states(repo, &maintainers)
        .into_iter()
        .filter_map(|id| match &engine.purgatory.get(&id)?.parsed {
            GitEvent::State(s) => Some(s),
            _ => None,
        })
        .collect();
    push::decide_push(current, updates, &states, known_pr_commit)
}
