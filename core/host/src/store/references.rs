//! The index of event ids that accepted issues, patches, PRs and comments name but that are
//! not served here yet (GRASP-01 "tagged by": such an event is accepted when it arrives).
//!
//! Which ids an event contributes is decided by `graspd_core::related::remembered_references`;
//! the rows are kept by `rules.rs`: written in the same transaction that serves the naming
//! event (so they survive a crash exactly when that event does), dropped when the named event
//! is served, and bounded by [`ReferenceLimits::capacity`] with the oldest entry forgotten
//! first. This module holds the bounds and the counters for metrics.

use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use nostr::prelude::EventId;

/// Default of `--max-referenced-ids`.
pub const DEFAULT_MAX_REFERENCED_IDS: usize = 100_000;
/// Default of `--max-event-references`.
pub const DEFAULT_MAX_EVENT_REFERENCES: usize = 64;

/// Bounds of the index.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ReferenceLimits {
    /// Most ids kept; beyond it the oldest is forgotten.
    pub capacity: usize,
    /// Reference tags of one event that are looked at (to relate it) and remembered.
    pub per_event: usize,
}

impl Default for ReferenceLimits {
    fn default() -> ReferenceLimits {
        ReferenceLimits {
            capacity: DEFAULT_MAX_REFERENCED_IDS,
            per_event: DEFAULT_MAX_EVENT_REFERENCES,
        }
    }
}

/// What a write transaction did to the index, applied to [`ReferenceCounters`] once it
/// committed.
#[derive(Default)]
pub struct ReferenceChanges {
    /// The index's size at the end of the transaction, if it was touched.
    pub entries: Option<u64>,
    pub evicted: u64,
}

/// The index's size and evictions, for metrics; shared by every clone of the store.
#[derive(Default, Debug)]
pub struct ReferenceCounters {
    entries: AtomicU64,
    evicted: AtomicU64,
    full_reported: AtomicBool,
}

/// A snapshot of [`ReferenceCounters`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ReferenceStats {
    /// Ids remembered now.
    pub entries: u64,
    /// Ids forgotten for lack of room since start-up.
    pub evicted: u64,
}

impl ReferenceCounters {
    pub fn starting_with(entries: u64) -> ReferenceCounters {
        ReferenceCounters {
            entries: AtomicU64::new(entries),
            ..ReferenceCounters::default()
        }
    }

    pub fn apply(&self, changes: ReferenceChanges, limits: &ReferenceLimits, path: &Path) {
        if let Some(entries) = changes.entries {
            self.entries.store(entries, Ordering::Relaxed);
        }
        if changes.evicted > 0 {
            self.evicted.fetch_add(changes.evicted, Ordering::Relaxed);
            if !self.full_reported.swap(true, Ordering::Relaxed) {
                tracing::warn!(
                    path = %path.display(),
                    capacity = limits.capacity,
                    "the index of ids named by accepted issues, patches, PRs and comments is \
                     full; the oldest are forgotten from now on (events they name are then \
                     refused unless related otherwise): raise --max-referenced-ids to keep more"
                );
            }
        }
    }

    pub fn stats(&self) -> ReferenceStats {
        ReferenceStats {
            entries: self.entries.load(Ordering::Relaxed),
            evicted: self.evicted.load(Ordering::Relaxed),
        }
    }
}

/// Whether `id` is named by an accepted event and not served yet (a read transaction).
pub fn is_referenced(txn: &redb::ReadTransaction, id: &EventId) -> Result<bool, redb::Error> {
    let table = txn.open_table(super::schema::REFERENCED)?;
    Ok(table.get(id.to_bytes())?.is_some())
}
