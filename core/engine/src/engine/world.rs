//! What the engine knows about repositories: accepted announcements and states, which
//! repositories are hosted here, maintainer sets, and what each repository waits for.

use std::collections::BTreeSet;

use crate::acceptance::KnownRepos;
use crate::events::{Announcement, GitEvent, RepoState};
use crate::ids::{EventId, Identifier, Oid, PublicKey, RepoKey};
use crate::lookup::LookupMap;
use crate::maintainers::{maintainer_set, Announcements, MaintainerSet};
use crate::purgatory::{pr_repos, IdentKey, Purgatory};
use crate::replaceable::{precedence, supersedes};
use crate::satisfy::required_objects;

/// Accepted (stored, served) knowledge, newest per address.
#[derive(Default, Debug)]
pub struct Accepted {
    pub announcements: LookupMap<RepoKey, Announcement>,
    /// Owners per identifier whose accepted announcement lists this server (repo hosted).
    pub hosted: LookupMap<IdentKey, BTreeSet<PublicKey>>,
    /// Newest accepted state per (identifier, author), with the repository it was released
    /// in (objects can be copied from there; `None` when restored).
    pub states: LookupMap<(IdentKey, PublicKey), (RepoState, Option<RepoKey>)>,
}

impl Accepted {
    pub fn add_announcement(&mut self, ann: Announcement, hosted: bool) {
        let key = RepoKey::new(ann.owner, ann.identifier.clone());
        if hosted {
            self.hosted
                .get_or_default(IdentKey::of(&ann.identifier))
                .insert(ann.owner);
        }
        match self.announcements.get(&key) {
            Some(old) if !supersedes((ann.created_at, &ann.id), (old.created_at, &old.id)) => {}
            _ => {
                self.announcements.insert(key, ann);
            }
        }
    }

    pub fn add_state(&mut self, state: RepoState, source: Option<RepoKey>) {
        let key = (IdentKey::of(&state.identifier), state.author);
        match self.states.get(&key) {
            Some((old, _))
                if !supersedes((state.created_at, &state.id), (old.created_at, &old.id)) => {}
            _ => {
                self.states.insert(key, (state, source));
            }
        }
    }

    pub fn is_hosted(&self, repo: &RepoKey) -> bool {
        self.hosted
            .get(&IdentKey::of(&repo.identifier))
            .is_some_and(|o| o.contains(&repo.owner))
    }
}

/// A read view over accepted knowledge and purgatory, for the rules.
pub struct View<'a> {
    pub accepted: &'a Accepted,
    pub purgatory: &'a Purgatory,
    /// Owners per identifier with a waiting announcement that lists this server.
    pub waiting_hosted: &'a LookupMap<IdentKey, BTreeSet<PublicKey>>,
    /// The state each repository holds.
    pub applied: &'a LookupMap<RepoKey, (u64, EventId)>,
}

impl Announcements for View<'_> {
    fn announcement(&self, owner: &PublicKey, identifier: &Identifier) -> Option<&Announcement> {
        if let Some(a) = self
            .accepted
            .announcements
            .get(&RepoKey::new(*owner, identifier.clone()))
        {
            return Some(a);
        }
        // A waiting announcement counts, so a new repository's maintainers can publish states.
        self.purgatory
            .announcements_of(owner, identifier)
            .iter()
            .filter_map(|id| match &self.purgatory.get(id)?.parsed {
                GitEvent::Announcement(a) => Some(a),
                _ => None,
            })
            .max_by(|x, y| precedence((x.created_at, &x.id), (y.created_at, &y.id)))
    }
}

impl KnownRepos for View<'_> {
    fn accepted_owners(&self, identifier: &Identifier) -> Vec<PublicKey> {
        self.accepted
            .hosted
            .get(&IdentKey::of(identifier))
            .map(|o| o.iter().copied().collect())
            .unwrap_or_default()
    }

    fn known_owners(&self, identifier: &Identifier) -> Vec<PublicKey> {
        self.hosted_owners(identifier).collect()
    }
}

impl View<'_> {
    /// Owners of repositories with `identifier` hosted here (accepted or waiting), in
    /// ascending order, each once; nothing is copied.
    pub fn hosted_owners(&self, identifier: &Identifier) -> impl Iterator<Item = PublicKey> + '_ {
        static NONE: BTreeSet<PublicKey> = BTreeSet::new();
        let key = IdentKey::of(identifier);
        let accepted = self.accepted.hosted.get(&key).unwrap_or(&NONE);
        let waiting = self.waiting_hosted.get(&key).unwrap_or(&NONE);
        accepted.union(waiting).copied()
    }

    pub fn is_hosted(&self, repo: &RepoKey) -> bool {
        self.accepted.is_hosted(repo)
            || self
                .waiting_hosted
                .get(&IdentKey::of(&repo.identifier))
                .is_some_and(|o| o.contains(&repo.owner))
    }

    pub fn maintainers(&self, repo: &RepoKey) -> MaintainerSet {
        maintainer_set(self, &repo.owner, &repo.identifier)
    }

    /// The hosted repositories a parsed event concerns.
    pub fn targets(&self, event: &GitEvent) -> Vec<RepoKey> {
        match event {
            GitEvent::Announcement(a) => {
                let repo = RepoKey::new(a.owner, a.identifier.clone());
                if self.is_hosted(&repo) {
                    vec![repo]
                } else {
                    Vec::new()
                }
            }
            // No repository can equal it: nothing to inspect, fetch or apply anywhere.
            GitEvent::State(s) if s.never_satisfiable => Vec::new(),
            GitEvent::State(s) => self
                .hosted_owners(&s.identifier)
                .map(|owner| RepoKey::new(owner, s.identifier.clone()))
                .filter(|repo| self.maintainers(repo).contains(&s.author))
                .collect(),
            GitEvent::Pr(p) => pr_repos(p)
                .into_iter()
                .filter(|r| r.is_prs() || self.is_hosted(r))
                .collect(),
            GitEvent::Deletion(_) => Vec::new(),
        }
    }

    /// The newest accepted state authoritative for `repo`, with where it was released.
    pub fn authoritative(
        &self,
        repo: &RepoKey,
        maintainers: &MaintainerSet,
    ) -> Option<&(RepoState, Option<RepoKey>)> {
        maintainers
            .iter()
            .filter_map(|m| {
                self.accepted
                    .states
                    .get(&(IdentKey::of(&repo.identifier), *m))
            })
            .max_by(|(x, _), (y, _)| precedence((x.created_at, &x.id), (y.created_at, &y.id)))
    }

    pub fn authoritative_state(
        &self,
        repo: &RepoKey,
        maintainers: &MaintainerSet,
    ) -> Option<&RepoState> {
        self.authoritative(repo, maintainers).map(|(s, _)| s)
    }

    /// Whether a state `(created_at, id)` is newer than what `repo` holds.
    pub fn newer_than_held(&self, repo: &RepoKey, created_at: u64, id: &EventId) -> bool {
        self.applied
            .get(repo)
            .is_none_or(|(at, held)| supersedes((created_at, id), (*at, held)))
    }

    /// The accepted authoritative state `repo` does not hold yet (it was released elsewhere,
    /// or the repository is new): the repository catches up to it.
    pub fn catch_up(
        &self,
        repo: &RepoKey,
        maintainers: &MaintainerSet,
    ) -> Option<&(RepoState, Option<RepoKey>)> {
        self.authoritative(repo, maintainers)
            .filter(|(s, _)| self.newer_than_held(repo, s.created_at, &s.id))
    }

    /// Waiting states authoritative for `repo` (authored by its maintainers) and newer than
    /// what it holds.
    pub fn waiting_states(&self, repo: &RepoKey, maintainers: &MaintainerSet) -> Vec<EventId> {
        self.purgatory
            .states_with(&repo.identifier)
            .into_iter()
            .filter(|(author, _)| maintainers.contains(author))
            .filter(|(_, id)| {
                self.purgatory
                    .get(id)
                    .is_some_and(|w| self.newer_than_held(repo, w.parsed.created_at(), id))
            })
            .map(|(_, id)| id)
            .collect()
    }

    /// Everything `repo` waits for: ids of waiting events and the objects they need.
    pub fn wanted(&self, repo: &RepoKey) -> Wanted {
        let maintainers = self.maintainers(repo);
        let mut w = Wanted::default();
        for id in self.waiting_states(repo, &maintainers) {
            w.events.push(id);
            if let Some(e) = self.purgatory.get(&id) {
                w.oids.extend(required_objects(&e.parsed));
            }
        }
        for id in &self.purgatory.prs_for(repo) {
            w.events.push(*id);
            if let Some(e) = self.purgatory.get(id) {
                w.oids.extend(required_objects(&e.parsed));
            }
        }
        w.events.extend(
            self.purgatory
                .announcements_of(&repo.owner, &repo.identifier),
        );
        if self.is_hosted(repo) {
            if let Some((s, _)) = self.catch_up(repo, &maintainers) {
                w.catch_up = Some(s.id);
                w.oids.extend(s.refs.values().copied());
            }
        }
        w
    }

    /// Whether `repo` has anything to do (cheapest checks first).
    pub fn has_work(&self, repo: &RepoKey) -> bool {
        if self.purgatory.has_prs_for(repo)
            || self
                .purgatory
                .has_announcements_of(&repo.owner, &repo.identifier)
        {
            return true;
        }
        // Computed at most once, and only when a state or the hosted check needs it.
        let mut maintainers: Option<MaintainerSet> = None;
        let waiting = self
            .purgatory
            .any_state_with(&repo.identifier, |author, id| {
                maintainers
                    .get_or_insert_with(|| self.maintainers(repo))
                    .contains(author)
                    && self
                        .purgatory
                        .get(id)
                        .is_some_and(|w| self.newer_than_held(repo, w.parsed.created_at(), id))
            });
        if waiting {
            return true;
        }
        // Nothing waits: only a hosted repository's catch-up remains.
        self.is_hosted(repo) && {
            let maintainers = maintainers.unwrap_or_else(|| self.maintainers(repo));
            self.catch_up(repo, &maintainers).is_some()
        }
    }

    /// Candidate clone URLs for `repo`: its maintainers' announcements, then waiting PRs.
    pub fn clone_candidates(&self, repo: &RepoKey) -> Vec<String> {
        let mut out = Vec::new();
        for m in self.maintainers(repo).iter() {
            if let Some(a) = self.announcement(m, &repo.identifier) {
                out.extend(a.clone.iter().cloned());
            }
        }
        for id in &self.purgatory.prs_for(repo) {
            if let Some(GitEvent::Pr(p)) = self.purgatory.get(id).map(|w| &w.parsed) {
                out.extend(p.clone.iter().cloned());
            }
        }
        out
    }
}

/// What one repository waits for.
#[derive(Default, Debug)]
pub struct Wanted {
    pub events: Vec<EventId>,
    /// An accepted state the repository should be brought to.
    pub catch_up: Option<EventId>,
    pub oids: BTreeSet<Oid>,
}
