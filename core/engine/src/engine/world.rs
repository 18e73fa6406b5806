//! What the engine knows about repositories: accepted announcements and states, which
//! repositories are hosted here, maintainer sets, and what each repository waits for.

use std::collections::{BTreeMap, BTreeSet};

use crate::acceptance::KnownRepos;
use crate::events::{Announcement, GitEvent, RepoState};
use crate::ids::{EventId, Identifier, Oid, PublicKey, RepoKey};
use crate::maintainers::{maintainer_set, Announcements};
use crate::purgatory::{pr_repos, Purgatory};
use crate::satisfy::required_objects;

/// Accepted (stored, served) knowledge, newest per address.
#[derive(Default, Debug)]
pub struct Accepted {
    pub announcements: BTreeMap<RepoKey, Announcement>,
    /// Owners per identifier whose accepted announcement lists this server (repo hosted).
    pub hosted: BTreeMap<Identifier, BTreeSet<PublicKey>>,
    /// Newest accepted state per (identifier, author).
    pub states: BTreeMap<(Identifier, PublicKey), RepoState>,
}

impl Accepted {
    pub fn add_announcement(&mut self, ann: Announcement, hosted: bool) {
        let key = RepoKey::new(ann.owner, ann.identifier.clone());
        if hosted {
            self.hosted
                .entry(ann.identifier.clone())
                .or_default()
                .insert(ann.owner);
        }
        match self.announcements.get(&key) {
            Some(old) if !newer(ann.created_at, &ann.id, old.created_at, &old.id) => {}
            _ => {
                self.announcements.insert(key, ann);
            }
        }
    }

    pub fn add_state(&mut self, state: RepoState) {
        let key = (state.identifier.clone(), state.author);
        match self.states.get(&key) {
            Some(old) if !newer(state.created_at, &state.id, old.created_at, &old.id) => {}
            _ => {
                self.states.insert(key, state);
            }
        }
    }

    pub fn is_hosted(&self, repo: &RepoKey) -> bool {
        self.hosted
            .get(&repo.identifier)
            .is_some_and(|o| o.contains(&repo.owner))
    }
}

/// `a` is newer than `b`: later `created_at`, ties to the lowest id.
pub fn newer(a_at: u64, a_id: &EventId, b_at: u64, b_id: &EventId) -> bool {
    (a_at, std::cmp::Reverse(*a_id)) > (b_at, std::cmp::Reverse(*b_id))
}

/// A read view over accepted knowledge and purgatory, for the rules.
pub struct View<'a> {
    pub accepted: &'a Accepted,
    pub purgatory: &'a Purgatory,
    /// Owners per identifier with a waiting announcement that lists this server.
    pub waiting_hosted: &'a BTreeMap<Identifier, BTreeSet<PublicKey>>,
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
            .max_by(|x, y| {
                x.created_at
                    .cmp(&y.created_at)
                    .then_with(|| y.id.cmp(&x.id))
            })
    }
}

impl KnownRepos for View<'_> {
    fn accepted_owners(&self, identifier: &Identifier) -> Vec<PublicKey> {
        self.accepted
            .hosted
            .get(identifier)
            .map(|o| o.iter().copied().collect())
            .unwrap_or_default()
    }

    fn known_owners(&self, identifier: &Identifier) -> Vec<PublicKey> {
        self.hosted_owners(identifier).into_iter().collect()
    }
}

impl View<'_> {
    /// Owners of repositories with `identifier` hosted here (accepted or waiting).
    pub fn hosted_owners(&self, identifier: &Identifier) -> BTreeSet<PublicKey> {
        let mut owners = self
            .accepted
            .hosted
            .get(identifier)
            .cloned()
            .unwrap_or_default();
        if let Some(w) = self.waiting_hosted.get(identifier) {
            owners.extend(w.iter().copied());
        }
        owners
    }

    pub fn is_hosted(&self, repo: &RepoKey) -> bool {
        self.accepted.is_hosted(repo)
            || self
                .waiting_hosted
                .get(&repo.identifier)
                .is_some_and(|o| o.contains(&repo.owner))
    }

    pub fn maintainers(&self, repo: &RepoKey) -> BTreeSet<PublicKey> {
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
            GitEvent::State(s) => self
                .hosted_owners(&s.identifier)
                .into_iter()
                .map(|owner| RepoKey::new(owner, s.identifier.clone()))
                .filter(|repo| self.maintainers(repo).contains(&s.author))
                .collect(),
            GitEvent::Pr(p) => pr_repos(&p.repos)
                .into_iter()
                .filter(|r| self.is_hosted(r))
                .collect(),
            GitEvent::Deletion(_) => Vec::new(),
        }
    }

    /// The newest accepted state authoritative for `repo`.
    pub fn authoritative_state(
        &self,
        repo: &RepoKey,
        maintainers: &BTreeSet<PublicKey>,
    ) -> Option<&RepoState> {
        maintainers
            .iter()
            .filter_map(|m| self.accepted.states.get(&(repo.identifier.clone(), *m)))
            .max_by(|x, y| {
                x.created_at
                    .cmp(&y.created_at)
                    .then_with(|| y.id.cmp(&x.id))
            })
    }

    /// Waiting states authoritative for `repo` (authored by its maintainers).
    pub fn waiting_states(
        &self,
        repo: &RepoKey,
        maintainers: &BTreeSet<PublicKey>,
    ) -> Vec<EventId> {
        self.purgatory
            .states_with(&repo.identifier)
            .into_iter()
            .filter(|(author, _)| maintainers.contains(author))
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
        for id in self.purgatory.prs_for(repo) {
            w.events.push(*id);
            if let Some(e) = self.purgatory.get(id) {
                w.oids.extend(required_objects(&e.parsed));
            }
        }
        let announcements = self
            .purgatory
            .announcements_of(&repo.owner, &repo.identifier);
        if !announcements.is_empty() {
            w.events.extend(announcements);
            // A new announcement is released with an authoritative state: want its objects.
            if let Some(s) = self.authoritative_state(repo, &maintainers) {
                w.oids.extend(s.refs.values().copied());
            }
        }
        w
    }

    /// Candidate clone URLs for `repo`: its maintainers' announcements, then waiting PRs.
    pub fn clone_candidates(&self, repo: &RepoKey) -> Vec<String> {
        let mut out = Vec::new();
        for m in self.maintainers(repo) {
            if let Some(a) = self.announcement(&m, &repo.identifier) {
                out.extend(a.clone.iter().cloned());
            }
        }
        for id in self.purgatory.prs_for(repo) {
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
    pub oids: BTreeSet<Oid>,
}
