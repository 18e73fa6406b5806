//! Purgatory: events acknowledged but not served until their git data arrives, and
//! `refs/nostr/<id>` placeholders pushed before their event. Pure storage with an index for
//! every lookup the engine makes; the engine owns the timers and decides what happens.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::hash::Hash;
use std::sync::Arc;
use std::time::Duration;

use crate::deletion::deletion_matches;
use crate::events::{Coordinate, Deletion, GitEvent, PullRequest, KIND_ANNOUNCEMENT, KIND_STATE};
use crate::ids::{EventId, Identifier, Oid, PublicKey, RepoKey};
use crate::lookup::{Keyed, LookupMap, LookupSet};
use crate::quota::{ClientAddress, Shares};
use crate::time::Time;

/// Where an event came from; decides how soon the first sync attempt runs.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Debug)]
pub enum Arrival {
    /// A user published it to us: a push usually follows, so wait before fetching.
    Published,
    /// We got it from another relay: nobody will push it here, fetch soon.
    Synced,
}

/// One waiting event, as the rules see it. The raw event (tags, content, signature) is not
/// kept: the host holds it durably in its purgatory table and serves it from there on release.
#[derive(Clone, Debug)]
pub struct Waiting {
    pub parsed: GitEvent,
    pub arrival: Arrival,
    /// The client address that published it; none for events learned from other relays or
    /// restored from the store.
    pub client: Option<ClientAddress>,
    pub received: Time,
    pub expires: Time,
}

impl Keyed for Waiting {
    type Key = EventId;
    fn key(&self) -> &EventId {
        self.parsed.id()
    }
}

/// Counts of waiting entries by kind.
#[derive(Clone, Copy, Default, Debug, PartialEq, Eq)]
pub struct WaitingCounts {
    pub announcements: usize,
    pub states: usize,
    pub prs: usize,
    pub placeholders: usize,
}

/// A `refs/nostr/<id>` ref pushed before its event.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Placeholder {
    pub oid: Oid,
    pub expires: Time,
    /// Deletes of the ref that failed so far (retried a bounded number of times).
    pub failed_deletes: u32,
}

#[derive(Default, Debug)]
pub struct Purgatory {
    /// By id. Boxed: the table's slots stay one pointer, whatever the size of an event.
    entries: LookupSet<Box<Waiting>>,
    /// Waiting announcements by (owner, identifier).
    announcements: EventIndex<(PublicKey, Identifier)>,
    /// Waiting states by (identifier, author): a range over an identifier finds every author.
    states: EventIndex<(IdentKey, PublicKey)>,
    /// Waiting states no repository can equal (`RepoState::never_satisfiable`), by the same
    /// key. Kept out of `states`, which every rule that inspects, fetches, plans or decides a
    /// push reads: only deletion by coordinate finds them, and expiry by id.
    never_satisfiable: EventIndex<(IdentKey, PublicKey)>,
    /// Waiting PRs and PR updates by target repository (its slot in `pr_repos`).
    prs: EventIndex<u32>,
    pr_repos: RepoSlots,
    /// One copy of each distinct list of target repositories and of clone URLs that waiting
    /// PRs name: a repository's PRs usually all name the same ones.
    pr_targets: Interned<Coordinate>,
    pr_clones: Interned<String>,
    placeholders: BTreeMap<(RepoKey, EventId), Placeholder>,
    placeholders_by_event: BTreeMap<EventId, BTreeSet<RepoKey>>,
    counts: WaitingCounts,
    /// Waiting events by author and by client address, kept by `insert` and `remove`, which
    /// every way out of purgatory goes through.
    shares: Shares,
    expired: ExpiredMemory,
    /// Released PRs and PR updates (not kept as accepted state): re-deliveries are duplicates.
    released_prs: ExpiredMemory,
}

impl Purgatory {
    pub fn new() -> Purgatory {
        Purgatory::default()
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn counts(&self) -> WaitingCounts {
        WaitingCounts {
            placeholders: self.placeholders.len(),
            ..self.counts
        }
    }

    /// Waiting events by author and by client address.
    pub fn shares(&self) -> &Shares {
        &self.shares
    }

    /// Every waiting event's id, in id order (a full walk: for rare operator actions only).
    pub fn ids(&self) -> Vec<EventId> {
        let announcements = self.announcements.pairs.iter().map(|(_, id)| *id);
        let states = self.states.pairs.iter().map(|(_, id)| *id);
        let never = self.never_satisfiable.pairs.iter().map(|(_, id)| *id);
        let prs = self.prs.pairs.iter().map(|(_, id)| *id);
        let all: BTreeSet<EventId> = announcements
            .chain(states)
            .chain(never)
            .chain(prs)
            .collect();
        all.into_iter().collect()
    }

    pub fn contains(&self, id: &EventId) -> bool {
        self.entries.contains_key(id)
    }

    pub fn get(&self, id: &EventId) -> Option<&Waiting> {
        self.entries.get(id).map(|w| &**w)
    }

    /// Adds a waiting event (deletions never wait). Returns false if it is already waiting.
    pub fn insert(&mut self, mut waiting: Waiting) -> bool {
        let id = *waiting.parsed.id();
        if self.entries.contains_key(&id) {
            return false;
        }
        match &mut waiting.parsed {
            GitEvent::Announcement(a) => {
                self.announcements
                    .insert((a.owner, a.identifier.clone()), id);
                self.counts.announcements += 1;
            }
            GitEvent::State(s) => {
                let key = (IdentKey::of(&s.identifier), s.author);
                if s.never_satisfiable {
                    self.never_satisfiable.insert(key, id);
                } else {
                    self.states.insert(key, id);
                }
                self.counts.states += 1;
            }
            GitEvent::Pr(p) => {
                for repo in pr_repos(p) {
                    let slot = self.pr_repos.acquire(repo);
                    self.prs.insert(slot, id);
                }
                self.pr_targets.share(&mut p.repos);
                self.pr_clones.share(&mut p.clone);
                self.counts.prs += 1;
            }
            GitEvent::Deletion(_) => return false,
        }
        self.shares.add(*waiting.parsed.author(), waiting.client);
        self.entries.insert(Box::new(waiting));
        true
    }

    /// Removes a waiting event and its index entries.
    pub fn remove(&mut self, id: &EventId) -> Option<Waiting> {
        let waiting = *self.entries.remove(id)?;
        match &waiting.parsed {
            GitEvent::Announcement(a) => {
                self.announcements
                    .remove((a.owner, a.identifier.clone()), id);
                self.counts.announcements -= 1;
            }
            GitEvent::State(s) => {
                let key = (IdentKey::of(&s.identifier), s.author);
                if s.never_satisfiable {
                    self.never_satisfiable.remove(key, id);
                } else {
                    self.states.remove(key, id);
                }
                self.counts.states -= 1;
            }
            GitEvent::Pr(p) => {
                for repo in pr_repos(p) {
                    if let Some(slot) = self.pr_repos.release(&repo) {
                        self.prs.remove(slot, id);
                    }
                }
                self.pr_targets.unshare(&p.repos);
                self.pr_clones.unshare(&p.clone);
                self.counts.prs -= 1;
            }
            GitEvent::Deletion(_) => {}
        }
        self.shares.remove(waiting.parsed.author(), waiting.client);
        Some(waiting)
    }

    /// Waiting announcements of `/<owner>/<identifier>.git`.
    pub fn announcements_of(&self, owner: &PublicKey, identifier: &Identifier) -> Vec<EventId> {
        self.announcements
            .get(&(*owner, identifier.clone()))
            .collect()
    }

    /// Waiting states with `identifier` that a repository could equal, any author, as
    /// (author, id).
    pub fn states_with(&self, identifier: &Identifier) -> Vec<(PublicKey, EventId)> {
        let key = IdentKey::of(identifier);
        self.states
            .from((key.clone(), PublicKey::from_byte_array([0; 32])))
            .take_while(|((i, _), _)| *i == key)
            .map(|((_, author), id)| (*author, *id))
            .collect()
    }

    /// Whether any announcement by `owner` for `identifier` waits (no allocation beyond the key).
    pub fn has_announcements_of(&self, owner: &PublicKey, identifier: &Identifier) -> bool {
        self.announcements
            .get(&(*owner, identifier.clone()))
            .next()
            .is_some()
    }

    /// Whether any PR for `repo` waits.
    pub fn has_prs_for(&self, repo: &RepoKey) -> bool {
        self.pr_repos.slot(repo).is_some()
    }

    /// Whether any waiting state with `identifier` satisfies `f(author, id)`, without collecting.
    pub fn any_state_with(
        &self,
        identifier: &Identifier,
        mut f: impl FnMut(&PublicKey, &EventId) -> bool,
    ) -> bool {
        let key = IdentKey::of(identifier);
        self.states
            .from((key.clone(), PublicKey::from_byte_array([0; 32])))
            .take_while(|((i, _), _)| *i == key)
            .any(|((_, author), id)| f(author, id))
    }

    /// Waiting PRs and PR updates that target `repo`.
    pub fn prs_for(&self, repo: &RepoKey) -> Vec<EventId> {
        match self.pr_repos.slot(repo) {
            Some(slot) => self.prs.get(&slot).collect(),
            None => Vec::new(),
        }
    }

    /// The waiting events a kind 5 deletion removes (`deletion::deletion_matches`: the
    /// author's own events, by id or by coordinate), found through the indexes.
    pub fn deletable(&self, deletion: &Deletion) -> Vec<EventId> {
        let mut candidates = BTreeSet::new();
        candidates.extend(
            deletion
                .event_ids
                .iter()
                .filter(|id| self.entries.contains_key(id)),
        );
        for c in deletion
            .coordinates
            .iter()
            .filter(|c| c.author == deletion.author)
        {
            match c.kind {
                KIND_ANNOUNCEMENT => {
                    candidates.extend(self.announcements_of(&c.author, &c.identifier))
                }
                KIND_STATE => {
                    let key = (IdentKey::of(&c.identifier), c.author);
                    candidates.extend(self.states.get(&key));
                    candidates.extend(self.never_satisfiable.get(&key));
                }
                _ => {}
            }
        }
        candidates
            .into_iter()
            .filter(|id| deletion_matches(deletion, &self.entries[id].parsed))
            .collect()
    }

    // --- placeholders ---

    pub fn add_placeholder(&mut self, repo: RepoKey, id: EventId, placeholder: Placeholder) {
        self.placeholders_by_event
            .entry(id)
            .or_default()
            .insert(repo.clone());
        self.placeholders.insert((repo, id), placeholder);
    }

    pub fn placeholder(&self, repo: &RepoKey, id: &EventId) -> Option<Placeholder> {
        self.placeholders.get(&(repo.clone(), *id)).copied()
    }

    pub fn take_placeholder(&mut self, repo: &RepoKey, id: &EventId) -> Option<Placeholder> {
        let p = self.placeholders.remove(&(repo.clone(), *id))?;
        remove_indexed(&mut self.placeholders_by_event, id, repo);
        Some(p)
    }

    /// Repositories holding a placeholder for event `id`.
    pub fn placeholder_repos(&self, id: &EventId) -> Vec<RepoKey> {
        self.placeholders_by_event
            .get(id)
            .map(|s| s.iter().cloned().collect())
            .unwrap_or_default()
    }

    pub fn placeholder_count(&self) -> usize {
        self.placeholders.len()
    }

    // --- expired ids ---

    pub fn remember_expired(&mut self, now: Time, id: EventId, keep_for: Duration, max: usize) {
        self.expired.remember(now, id, keep_for, max);
    }

    pub fn was_expired(&self, now: Time, id: &EventId) -> bool {
        self.expired.contains(now, id)
    }

    pub fn forget_expired(&mut self, id: &EventId) {
        self.expired.forget(id);
    }

    pub fn remembered_expired(&self) -> usize {
        self.expired.until.len()
    }

    // --- released PR ids ---

    pub fn remember_released_pr(&mut self, now: Time, id: EventId, keep_for: Duration, max: usize) {
        self.released_prs.remember(now, id, keep_for, max);
    }

    pub fn was_released_pr(&self, now: Time, id: &EventId) -> bool {
        self.released_prs.contains(now, id)
    }
}

/// The repositories a PR concerns: those its `a` coordinates name (kind 30617), and its
/// GRASP-06 repository here if it has one; de-duplicated.
pub fn pr_repos(pr: &PullRequest) -> BTreeSet<RepoKey> {
    pr.repos
        .iter()
        .filter(|c| c.kind == KIND_ANNOUNCEMENT)
        .map(|c| RepoKey::new(c.author, c.identifier.clone()))
        .chain(pr.prs_repo.as_deref().cloned())
        .collect()
}

fn remove_indexed<K: Ord, V: Ord>(index: &mut BTreeMap<K, BTreeSet<V>>, key: &K, value: &V) {
    if let Some(set) = index.get_mut(key) {
        set.remove(value);
        if set.is_empty() {
            index.remove(key);
        }
    }
}

/// An identifier as a map key. [`Identifier`] itself compares its inline first bytes before
/// following the heap pointer, so this adds nothing to the key; it names the role.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Debug)]
pub struct IdentKey {
    full: Identifier,
}

impl IdentKey {
    pub fn of(identifier: &Identifier) -> IdentKey {
        IdentKey {
            full: identifier.clone(),
        }
    }
}

/// A multimap from `K` to event ids kept as one ordered set of pairs: no node per key, and a
/// key's ids are one range.
#[derive(Debug)]
struct EventIndex<K> {
    pairs: BTreeSet<(K, EventId)>,
}

impl<K> Default for EventIndex<K> {
    fn default() -> Self {
        EventIndex {
            pairs: BTreeSet::new(),
        }
    }
}

const LOWEST_ID: EventId = EventId::from_byte_array([0; 32]);

impl<K: Ord + Clone> EventIndex<K> {
    fn insert(&mut self, key: K, id: EventId) {
        self.pairs.insert((key, id));
    }

    fn remove(&mut self, key: K, id: &EventId) {
        self.pairs.remove(&(key, *id));
    }

    fn get<'a>(&'a self, key: &'a K) -> impl Iterator<Item = EventId> + 'a {
        self.pairs
            .range((key.clone(), LOWEST_ID)..)
            .take_while(move |(k, _)| k == key)
            .map(|(_, id)| *id)
    }

    /// Pairs from `(key, lowest id)` on, for prefix scans over composite keys.
    fn from(&self, key: K) -> impl Iterator<Item = (&K, &EventId)> {
        self.pairs.range((key, LOWEST_ID)..).map(|(k, id)| (k, id))
    }
}

/// The repositories waiting PRs name, each numbered while at least one does: the PR index
/// then holds (number, id) pairs of 36 bytes instead of (repository, id) pairs of 104, which
/// is most of a waiting PR's share of the indexes. Freed numbers are reused.
#[derive(Default, Debug)]
struct RepoSlots {
    /// Repository -> (its number, how many waiting PRs name it).
    by_repo: BTreeMap<RepoKey, (u32, usize)>,
    free: Vec<u32>,
    next: u32,
}

impl RepoSlots {
    fn slot(&self, repo: &RepoKey) -> Option<u32> {
        self.by_repo.get(repo).map(|(slot, _)| *slot)
    }

    /// One more waiting PR names `repo`; its number.
    fn acquire(&mut self, repo: RepoKey) -> u32 {
        if let Some((slot, users)) = self.by_repo.get_mut(&repo) {
            *users += 1;
            return *slot;
        }
        let slot = self.free.pop().unwrap_or_else(|| {
            // At most one number per waiting PR is live, and waiting PRs are bounded.
            let slot = self.next;
            self.next += 1;
            slot
        });
        self.by_repo.insert(repo, (slot, 1));
        slot
    }

    /// One waiting PR naming `repo` left; its number (freed when no PR names it any more).
    fn release(&mut self, repo: &RepoKey) -> Option<u32> {
        let (slot, users) = self.by_repo.get_mut(repo)?;
        let slot = *slot;
        *users -= 1;
        if *users == 0 {
            self.by_repo.remove(repo);
            self.free.push(slot);
        }
        Some(slot)
    }
}

/// One shared copy of each distinct list that waiting events hold, with how many hold it; a
/// list nobody holds any more is dropped.
#[derive(Debug)]
struct Interned<T> {
    lists: LookupMap<Arc<[T]>, usize>,
}

impl<T> Default for Interned<T> {
    fn default() -> Self {
        Interned {
            lists: LookupMap::default(),
        }
    }
}

impl<T: Hash + Eq> Interned<T> {
    /// Makes `list` the shared copy of its content (which it becomes if it is the first).
    fn share(&mut self, list: &mut Arc<[T]>) {
        match self.lists.get_key_value_mut(&**list) {
            Some((shared, holders)) => {
                *holders += 1;
                *list = Arc::clone(shared);
            }
            None => {
                self.lists.insert(Arc::clone(list), 1);
            }
        }
    }

    /// One holder of `list`, shared before, let it go.
    fn unshare(&mut self, list: &[T]) {
        if let Some(holders) = self.lists.get_mut(list) {
            *holders -= 1;
            if *holders == 0 {
                self.lists.remove(list);
            }
        }
    }
}

/// Ids of events that expired, remembered for a bounded time and count.
#[derive(Default, Debug)]
struct ExpiredMemory {
    until: LookupMap<EventId, Time>,
    /// Insertion order; entries whose `until` changed or vanished are stale and skipped.
    order: VecDeque<(Time, EventId)>,
}

impl ExpiredMemory {
    fn remember(&mut self, now: Time, id: EventId, keep_for: Duration, max: usize) {
        let until = now + keep_for;
        self.until.insert(id, until);
        self.order.push_back((until, id));
        while let Some(&(t, old)) = self.order.front() {
            let live = self.until.get(&old) == Some(&t);
            let over = self.until.len() > max;
            if live && t > now && !over {
                break;
            }
            self.order.pop_front();
            if live {
                self.until.remove(&old);
            }
        }
        // Stale entries (forgotten or re-remembered ids) must not pile up either.
        if self.order.len() > 2 * self.until.len() + 16 {
            let until = &self.until;
            self.order.retain(|(t, id)| until.get(id) == Some(t));
        }
    }

    fn contains(&self, now: Time, id: &EventId) -> bool {
        self.until.get(id).is_some_and(|&t| t > now)
    }

    fn forget(&mut self, id: &EventId) {
        self.until.remove(id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testkit::{keys, parsed, pk, sign};

    /// A waiting PR by `author` (created at `at`) for the repository `r` of each owner.
    fn pr(author: u8, at: u64, owners: &[u8]) -> Waiting {
        let coordinates: Vec<String> = owners
            .iter()
            .map(|o| format!("30617:{}:r", pk(*o).to_hex()))
            .collect();
        let mut tags: Vec<[&str; 2]> = coordinates.iter().map(|a| ["a", a.as_str()]).collect();
        let commit = "11".repeat(20);
        tags.push(["c", &commit]);
        let tags: Vec<&[&str]> = tags.iter().map(|t| &t[..]).collect();
        Waiting {
            parsed: parsed(&sign(&keys(author), crate::events::KIND_PR, at, &tags)),
            arrival: Arrival::Published,
            client: None,
            received: Time::ZERO,
            expires: Time::ZERO,
        }
    }

    fn repo(owner: u8) -> RepoKey {
        RepoKey::new(pk(owner), Identifier::new("r").unwrap())
    }

    #[test]
    fn prs_are_found_by_repository_while_repository_numbers_are_freed_and_reused() {
        let mut purgatory = Purgatory::new();
        let (a1, a2, ab) = (pr(2, 1, &[1]), pr(2, 2, &[1]), pr(2, 3, &[1, 3]));
        let (a1_id, a2_id, ab_id) = (*a1.parsed.id(), *a2.parsed.id(), *ab.parsed.id());
        for w in [a1, a2, ab] {
            assert!(purgatory.insert(w));
        }
        let mut of_a = purgatory.prs_for(&repo(1));
        of_a.sort();
        let mut expected = vec![a1_id, a2_id, ab_id];
        expected.sort();
        assert_eq!(of_a, expected);
        assert_eq!(purgatory.prs_for(&repo(3)), vec![ab_id]);

        // Every PR naming repository 1 leaves: its number is freed, 3's stays.
        for id in [a1_id, a2_id, ab_id] {
            purgatory.remove(&id);
        }
        assert!(!purgatory.has_prs_for(&repo(1)));
        assert!(!purgatory.has_prs_for(&repo(3)));
        let only_3 = pr(4, 4, &[3]);
        let only_3_id = *only_3.parsed.id();
        assert!(purgatory.insert(only_3));
        // A new repository takes a freed number; nothing of the old one is found under it.
        let new_repo = pr(4, 5, &[5]);
        let new_id = *new_repo.parsed.id();
        assert!(purgatory.insert(new_repo));
        assert_eq!(purgatory.prs_for(&repo(3)), vec![only_3_id]);
        assert_eq!(purgatory.prs_for(&repo(5)), vec![new_id]);
        assert!(purgatory.prs_for(&repo(1)).is_empty());
        assert_eq!(purgatory.pr_repos.by_repo.len(), 2);
        assert_eq!(purgatory.pr_repos.next, 2, "numbers are reused, not minted");
    }

    #[test]
    fn prs_naming_the_same_repositories_share_one_copy_of_the_lists_until_the_last_leaves() {
        let mut purgatory = Purgatory::new();
        let (first, second, other) = (pr(2, 1, &[1]), pr(2, 2, &[1]), pr(2, 3, &[3]));
        let ids = [first.parsed.id(), second.parsed.id(), other.parsed.id()].map(|id| *id);
        for w in [first, second, other] {
            assert!(purgatory.insert(w));
        }
        let targets = |purgatory: &Purgatory, id: &EventId| match &purgatory.get(id).unwrap().parsed
        {
            GitEvent::Pr(p) => Arc::clone(&p.repos),
            _ => unreachable!(),
        };
        assert!(Arc::ptr_eq(
            &targets(&purgatory, &ids[0]),
            &targets(&purgatory, &ids[1])
        ));
        assert!(!Arc::ptr_eq(
            &targets(&purgatory, &ids[0]),
            &targets(&purgatory, &ids[2])
        ));
        assert_eq!(purgatory.pr_targets.lists.len(), 2);

        purgatory.remove(&ids[0]);
        assert_eq!(
            purgatory.pr_targets.lists.len(),
            2,
            "the second PR still holds it"
        );
        assert_eq!(*targets(&purgatory, &ids[1]), [repo_coordinate(1)]);
        purgatory.remove(&ids[1]);
        purgatory.remove(&ids[2]);
        assert_eq!(purgatory.pr_targets.lists.len(), 0);
        assert_eq!(purgatory.pr_clones.lists.len(), 0);
    }

    fn repo_coordinate(owner: u8) -> Coordinate {
        Coordinate {
            kind: KIND_ANNOUNCEMENT,
            author: pk(owner),
            identifier: Identifier::new("r").unwrap(),
        }
    }
}
