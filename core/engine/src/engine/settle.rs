//! Inspect -> plan -> Apply -> Released, per repository, and push decisions.

use std::collections::{BTreeMap, BTreeSet};

use super::{ApplyInFlight, ApplyPurpose, Engine};
use crate::engine::types::{
    ApplyError, ApplyPlan, Command, EngineEvent, RefDecision, RefEdit, RefUpdate, RepoSnapshot,
};
use crate::events::{GitEvent, RefName};
use crate::ids::{CommandId, EventId, Oid, RepoKey};
use crate::satisfy::required_objects;
use crate::time::Time;

/// What one Inspect allows: ref edits and HEAD (if any) and the events released by them.
#[derive(Debug, Default)]
struct ReleasePlan {
    edits: Vec<RefEdit>,
    head: Option<RefName>,
    release: Vec<EventId>,
}

fn is_branch_or_tag(name: &str) -> bool {
    name.starts_with("refs/heads/") || name.starts_with("refs/tags/")
}

/// Compare-and-swap edits taking the branches and tags in `current` to exactly `target`.
fn align(current: &BTreeMap<RefName, Oid>, target: &BTreeMap<RefName, Oid>) -> Vec<RefEdit> {
    let mut edits = Vec::new();
    for (name, oid) in current.iter().filter(|(n, _)| is_branch_or_tag(n)) {
        match target.get(name) {
            Some(t) if t == oid => {}
            Some(t) => edits.push(RefEdit {
                name: name.clone(),
                expected: Some(*oid),
                new: Some(*t),
            }),
            None => edits.push(RefEdit {
                name: name.clone(),
                expected: Some(*oid),
                new: None,
            }),
        }
    }
    for (name, oid) in target {
        if !current.contains_key(name) {
            edits.push(RefEdit {
                name: name.clone(),
                expected: None,
                new: Some(*oid),
            });
        }
    }
    edits
}

impl Engine {
    /// Asks for an Inspect of `repo` (coalesced: at most one in flight per repository).
    pub(super) fn request_inspect(&mut self, repo: RepoKey, then_fetch: bool) {
        let work = self.repos.entry(repo.clone()).or_default();
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
        if wanted.events.is_empty() {
            work.fetch_after_inspect = false;
            self.maybe_idle(&repo);
            return;
        }
        self.next_command += 1;
        let id = CommandId(self.next_command);
        work.inspect = Some(id);
        let oids: Vec<Oid> = wanted.oids.into_iter().collect();
        self.inspects.insert(id, (repo.clone(), oids.clone()));
        self.commands.push_back(Command::Inspect { id, repo, oids });
    }

    pub(super) fn inspected(
        &mut self,
        now: Time,
        id: CommandId,
        result: Result<RepoSnapshot, String>,
    ) {
        let Some((repo, asked)) = self.inspects.remove(&id) else {
            return;
        };
        let Some(work) = self.repos.get_mut(&repo) else {
            return;
        };
        if work.inspect == Some(id) {
            work.inspect = None;
        }
        let fetch = std::mem::take(&mut work.fetch_after_inspect);
        let snapshot = match result {
            Ok(s) => s,
            Err(_) => {
                self.schedule_backoff(now, &repo);
                self.after_settle_step(&repo);
                return;
            }
        };
        let present: BTreeSet<Oid> = snapshot.present.iter().copied().collect();
        let plan = self.plan_release(&repo, &snapshot, &present);
        if !plan.edits.is_empty() || plan.head.is_some() {
            let cmd = self.next_id();
            let apply = ApplyPlan {
                repo: repo.clone(),
                copy_from: None,
                edits: plan.edits,
                head: plan.head,
            };
            self.applies.insert(
                cmd,
                ApplyInFlight {
                    repo: repo.clone(),
                    purpose: ApplyPurpose::Release(plan.release),
                },
            );
            if let Some(w) = self.repos.get_mut(&repo) {
                w.apply = Some(cmd);
            }
            self.commands.push_back(Command::Apply {
                id: cmd,
                plan: apply,
            });
        } else if !plan.release.is_empty() {
            self.release(now, &repo, &plan.release);
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
        let repo = a.repo;
        if let Some(w) = self.repos.get_mut(&repo) {
            if w.apply == Some(id) {
                w.apply = None;
            }
        }
        match (a.purpose, result) {
            (ApplyPurpose::Release(ids), Ok(())) => {
                if let Some(w) = self.repos.get_mut(&repo) {
                    w.apply_retries = 0;
                }
                self.release(now, &repo, &ids);
                // More may be releasable now (another state, PRs): look again.
                self.request_inspect(repo.clone(), false);
            }
            (ApplyPurpose::Release(_), Err(ApplyError::Conflict)) => {
                self.counters.apply_conflicts += 1;
                let w = self.repos.entry(repo.clone()).or_default();
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
            (ApplyPurpose::Release(_), Err(ApplyError::Io(reason))) => {
                self.events.push_back(EngineEvent::ApplyFailed {
                    repo: repo.clone(),
                    reason,
                });
                self.schedule_backoff(now, &repo);
            }
            (ApplyPurpose::CopyObjects, Ok(())) => self.request_inspect(repo.clone(), false),
            (ApplyPurpose::CopyObjects, Err(e)) => {
                self.events.push_back(EngineEvent::ApplyFailed {
                    repo: repo.clone(),
                    reason: format!("copying objects from a sibling repository failed: {e:?}"),
                });
            }
            (ApplyPurpose::RemovePlaceholder(eid), _) => {
                self.events.push_back(EngineEvent::PlaceholderRemoved {
                    repo: repo.clone(),
                    id: eid,
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

    /// Emits `Released` for each still-waiting event and records what is now accepted.
    fn release(&mut self, now: Time, repo: &RepoKey, ids: &[EventId]) {
        let mut released_state = false;
        for id in ids {
            let Some((waiting, _targets)) = self.remove_waiting(id) else {
                continue;
            };
            match &waiting.parsed {
                GitEvent::Announcement(a) => self.accepted.add_announcement(a.clone(), true),
                GitEvent::State(s) => {
                    released_state = true;
                    self.accepted.add_state(s.clone());
                }
                _ => {}
            }
            self.counters.released += 1;
            let waited = now.saturating_since(waiting.received);
            self.events.push_back(EngineEvent::Released {
                event: waiting.event,
                waited,
            });
        }
        if released_state {
            self.copy_to_siblings(repo);
        }
    }

    /// Which waiting events of `repo` the snapshot satisfies, and the ref edits that serve
    /// them: the newest satisfiable state of the maintainer set (if newer than the accepted
    /// one), the announcement with it, and PRs whose commit is present (`refs/nostr/<id>`).
    fn plan_release(
        &self,
        repo: &RepoKey,
        snap: &RepoSnapshot,
        present: &BTreeSet<Oid>,
    ) -> ReleasePlan {
        let view = self.view();
        let maintainers = view.maintainers(repo);
        let accepted = view.authoritative_state(repo, &maintainers);
        let mut plan = ReleasePlan::default();
        let newest_waiting = view
            .waiting_states(repo, &maintainers)
            .into_iter()
            .filter_map(|id| match &self.purgatory.get(&id)?.parsed {
                GitEvent::State(s) => Some(s),
                _ => None,
            })
            .filter(|s| s.refs.values().all(|o| present.contains(o)))
            .filter(|s| {
                accepted
                    .is_none_or(|a| super::world::newer(s.created_at, &s.id, a.created_at, &a.id))
            })
            .max_by(|x, y| {
                x.created_at
                    .cmp(&y.created_at)
                    .then_with(|| y.id.cmp(&x.id))
            });
        let target = match newest_waiting {
            Some(s) => {
                plan.release.push(s.id);
                plan.head = s.head.clone();
                Some(s)
            }
            None => accepted.filter(|a| a.refs.values().all(|o| present.contains(o))),
        };
        if let Some(state) = target {
            plan.edits = align(&snap.refs, &state.refs);
            if newest_waiting.is_none() && !plan.edits.is_empty() {
                plan.head = state.head.clone();
            }
            plan.release.extend(
                self.purgatory
                    .announcements_of(&repo.owner, &repo.identifier),
            );
        }
        for id in self.purgatory.prs_for(repo) {
            let Some(w) = self.purgatory.get(id) else {
                continue;
            };
            if !required_objects(&w.parsed)
                .iter()
                .all(|o| present.contains(o))
            {
                continue;
            }
            if let GitEvent::Pr(p) = &w.parsed {
                let name = format!("refs/nostr/{}", id.to_hex());
                let current = snap.refs.get(&name).copied();
                if current != Some(p.commit) {
                    plan.edits.push(RefEdit {
                        name,
                        expected: current,
                        new: Some(p.commit),
                    });
                }
                plan.release.push(*id);
            }
        }
        plan
    }
}

/// Interim push rule until `push.rs` lands: `refs/heads/pr/*` refused; `refs/nostr/<id>` must
/// match a known PR's commit; branches and tags must end exactly at a waiting state of the
/// maintainer set.
pub(super) fn decide_push(
    engine: &Engine,
    repo: &RepoKey,
    current: &BTreeMap<RefName, Oid>,
    updates: &[RefUpdate],
) -> Vec<RefDecision> {
    let view = engine.view();
    let maintainers = view.maintainers(repo);
    let mut after: BTreeMap<RefName, Oid> = current
        .iter()
        .filter(|(n, _)| is_branch_or_tag(n))
        .map(|(n, o)| (n.clone(), *o))
        .collect();
    for u in updates.iter().filter(|u| is_branch_or_tag(&u.name)) {
        if u.new.is_zero() {
            after.remove(&u.name);
        } else {
            after.insert(u.name.clone(), u.new);
        }
    }
    let noop = updates.iter().all(|u| u.old == u.new);
    let state_matches = view.waiting_states(repo, &maintainers).iter().any(|id| {
        matches!(engine.purgatory.get(id).map(|w| &w.parsed), Some(GitEvent::State(s)) if s.refs == after)
    });
    updates
        .iter()
        .map(|u| {
            if u.name.starts_with("refs/heads/pr/") {
                return RefDecision::Reject("send PRs over nostr (kind 1618), not as refs/heads/pr/*".into());
            }
            if let Some(hex) = u.name.strip_prefix("refs/nostr/") {
                let Some(id) = crate::events::parse_event_id_hex(hex) else {
                    return RefDecision::Reject("refs/nostr/<id> needs a 64-hex event id".into());
                };
                return match engine.purgatory.get(&id).map(|w| &w.parsed) {
                    Some(GitEvent::Pr(p)) if p.commit != u.new && !u.new.is_zero() => RefDecision::Reject(
                        format!("PR {hex} points at {}, not {}", p.commit, u.new),
                    ),
                    _ => RefDecision::Accept,
                };
            }
            if !is_branch_or_tag(&u.name) {
                return RefDecision::Reject("only refs/heads/*, refs/tags/* and refs/nostr/* may be pushed".into());
            }
            if noop || state_matches {
                RefDecision::Accept
            } else {
                RefDecision::Reject(
                    "no repository state (kind 30618) from a maintainer matches the refs after this push; publish the state first".into(),
                )
            }
        })
        .collect()
}
