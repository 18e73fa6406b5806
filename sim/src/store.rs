//! What our host persists, modelled: the served store (bare repos and stored events) and the
//! purgatory table with each entry's wall-clock expiry. It survives a crash; the engine does not.

use std::collections::{BTreeMap, BTreeSet};

use graspd_core::{EventId, Oid, RepoKey, Time};

use crate::scenario::Via;
use crate::sut::{ApplyPlan, RefEdit};

/// One bare repository on our disk.
#[derive(Clone, Debug, Default)]
pub struct LocalRepo {
    pub objects: BTreeSet<Oid>,
    pub refs: BTreeMap<String, Oid>,
    pub head: Option<String>,
}

/// A purgatory table row: the event, how it arrived, and its expiry on the wall clock.
#[derive(Clone, Debug)]
pub struct WaitingRow {
    pub event: usize,
    pub via: Via,
    pub expires_at: Time,
}

#[derive(Clone, Debug, Default)]
pub struct Store {
    pub repos: BTreeMap<RepoKey, LocalRepo>,
    /// Stored and served events (by index into the world's events).
    pub served: BTreeMap<EventId, usize>,
    pub waiting: BTreeMap<EventId, WaitingRow>,
}

impl Store {
    /// Applies a compare-and-swap plan atomically, as the host's git bridge would.
    pub fn apply(&mut self, plan: &ApplyPlan) -> Result<(), String> {
        let Some(repo) = self.repos.get(&plan.repo) else {
            return Err(format!("no repository {}", plan.repo));
        };
        for edit in &plan.edits {
            if repo.refs.get(&edit.name).copied() != edit.expected {
                return Err(format!("{} moved (compare-and-swap failed)", edit.name));
            }
        }
        let mut copied = BTreeSet::new();
        if let Some((from, oids)) = &plan.copy_from {
            let Some(src) = self.repos.get(from) else {
                return Err(format!("copy source {from} does not exist"));
            };
            for o in oids {
                if src.objects.contains(o) {
                    copied.insert(*o);
                }
            }
        }
        let repo = self.repos.get_mut(&plan.repo).expect("checked above");
        repo.objects.extend(copied);
        apply_edits(repo, &plan.edits);
        if plan.head.is_some() {
            repo.head.clone_from(&plan.head);
        }
        Ok(())
    }
}

pub fn apply_edits(repo: &mut LocalRepo, edits: &[RefEdit]) {
    for edit in edits {
        match edit.new {
            Some(new) => {
                repo.refs.insert(edit.name.clone(), new);
            }
            None => {
                repo.refs.remove(&edit.name);
            }
        }
    }
}

/// The ref edits that take `current` to exactly `target`.
pub fn diff_refs(current: &BTreeMap<String, Oid>, target: &BTreeMap<String, Oid>) -> Vec<RefEdit> {
    let mut edits = Vec::new();
    for (name, new) in target {
        let old = current.get(name).copied();
        if old != Some(*new) {
            edits.push(RefEdit {
                name: name.clone(),
                expected: old,
                new: Some(*new),
            });
        }
    }
    for (name, old) in current {
        if !target.contains_key(name)
            && (name.starts_with("refs/heads/") || name.starts_with("refs/tags/"))
        {
            edits.push(RefEdit {
                name: name.clone(),
                expected: Some(*old),
                new: None,
            });
        }
    }
    edits
}
