//! The system under test, in the simulator's own terms. `adapter.rs` implements it for
//! `graspd_core::Engine`, so the simulator's world, host model and checks do not move when the
//! engine's types are renamed; only the adapter does.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use graspd_core::{EventId, Oid, RepoKey, Time};

use crate::params::Params;
use crate::scenario::Via;

/// The engine's own types where the simulator's terms would be the same: the admission verdict
/// (`Waiting` and `Accepted` carry the ticket the host reports back as `Persisted` or
/// `PersistFailed`), an `Apply`'s plan with its compare-and-swap ref edits, and why a fetch
/// failed.
pub use graspd_core::{ApplyPlan, FetchError, RefEdit, Ticket, Verdict};

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Command {
    Fetch {
        id: u64,
        into: RepoKey,
        url: String,
        oids: Vec<Oid>,
        deadline: Time,
    },
    Inspect {
        id: u64,
        repo: RepoKey,
        oids: Vec<Oid>,
    },
    Apply {
        id: u64,
        plan: ApplyPlan,
    },
    CreateRepo {
        repo: RepoKey,
    },
    RemoveRepo {
        repo: RepoKey,
    },
    /// Acquire the repository's sync lease, and keep trying until released.
    AcquireLease {
        repo: RepoKey,
    },
    ReleaseLease {
        repo: RepoKey,
    },
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Input {
    /// On success every wanted object is now present in the fetch's repository.
    FetchDone {
        id: u64,
        result: Result<Vec<Oid>, FetchError>,
    },
    Inspected {
        id: u64,
        result: Result<(Vec<Oid>, BTreeMap<String, Oid>), String>,
    },
    Pushed {
        repo: RepoKey,
        updates: Vec<RefEdit>,
    },
    Applied {
        id: u64,
        result: Result<(), String>,
    },
    /// The admitted event is in the store (purgatory table or served).
    Persisted {
        ticket: Ticket,
    },
    /// The store write for the admitted event failed.
    PersistFailed {
        ticket: Ticket,
    },
    /// The repository's sync lease is held now.
    Leased {
        repo: RepoKey,
    },
    /// The repository's sync lease could not be renewed in time.
    LeaseLost {
        repo: RepoKey,
    },
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Output {
    Released {
        id: EventId,
    },
    Expired {
        id: EventId,
    },
    Deleted {
        id: EventId,
    },
    /// The operator's policy refuses this waiting event now.
    Withdrawn {
        id: EventId,
    },
    /// Anything else the engine reports, for the trace.
    Other(String),
}

/// Counters the bounds invariants read; `None` where the engine does not report one.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    pub waiting: Option<usize>,
    pub domains: Option<usize>,
}

pub trait EngineUnderTest {
    fn restore_accepted(&mut self, event: &nostr::event::Event);
    fn restore_waiting(
        &mut self,
        now: Time,
        event: &nostr::event::Event,
        via: Via,
        remaining: Duration,
    );
    /// A `refs/nostr/<id>` ref at `oid` whose event the store does not serve, at boot.
    fn restore_placeholder(
        &mut self,
        _now: Time,
        _repo: &RepoKey,
        _id: EventId,
        _oid: Oid,
        _remaining: Duration,
    ) {
    }
    fn handle_event(&mut self, now: Time, event: &nostr::event::Event, via: Via) -> Verdict;
    /// Per update, `Ok` to accept or `Err(reason)`.
    fn decide_push(
        &mut self,
        repo: &RepoKey,
        current: &BTreeMap<String, Oid>,
        updates: &[RefEdit],
    ) -> Vec<Result<(), String>>;
    fn handle_input(&mut self, now: Time, input: Input);
    /// The operator's lists now deny `authors` (a reload); an engine without policies
    /// ignores it.
    fn deny_authors(&mut self, _now: Time, _authors: &BTreeSet<graspd_core::PublicKey>) {}
    fn handle_timeout(&mut self, now: Time);
    /// The next deadline and its reason, for the trace.
    fn poll_timeout(&mut self) -> Option<(Time, String)>;
    fn poll_command(&mut self) -> Option<Command>;
    fn poll_output(&mut self) -> Option<Output>;
    fn stats(&self) -> Stats;
    /// Why the engine still holds `id`, for liveness failure reports.
    fn explain(&self, _id: &EventId) -> Option<String> {
        None
    }
}

/// Builds a fresh engine for a (re)start.
pub trait EngineFactory {
    fn build(&self, params: &Params) -> Box<dyn EngineUnderTest>;
    fn name(&self) -> &'static str;
}
