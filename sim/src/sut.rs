//! The system under test, in the simulator's own terms. `adapter.rs` implements it for
//! `graspd_core::Engine`, so the simulator's world, host model and checks do not move when the
//! engine's types are renamed; only the adapter does.

use std::collections::BTreeMap;
use std::time::Duration;

use graspd_core::{EventId, Oid, RepoKey, Time};

use crate::params::Params;
use crate::scenario::Via;

/// `Waiting` and `Accepted` carry the admission's ticket: the engine acts on the event only
/// after the host reports it `Persisted` (or forgets it on `PersistFailed`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    Rejected(String),
    Waiting(u64),
    Accepted(u64),
    Duplicate,
}

/// One ref update of a push or an apply: `old`/`new` of `None` mean absent.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RefEdit {
    pub name: String,
    pub old: Option<Oid>,
    pub new: Option<Oid>,
}

/// What an `Apply` asks the host to do to one repository, atomically.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ApplyPlan {
    pub repo: RepoKey,
    /// Objects copied in from other local repositories.
    pub copies: Vec<(RepoKey, Vec<Oid>)>,
    /// Compare-and-swap ref edits: every `old` must match or nothing is applied.
    pub edits: Vec<RefEdit>,
    pub head: Option<String>,
}

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
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FetchFailure {
    Refused,
    Dns,
    Tls,
    RateLimited,
    /// git's "not our ref": the remote lacks these wanted objects (git names the first one).
    NotOurRef(Vec<Oid>),
    /// The host gave up at the deadline (the simulator never reports this: the engine must
    /// free the slot itself).
    Timeout,
    /// Anything else the host reports (no such local repo, ...).
    Other,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Input {
    /// On success every wanted object is now present in the fetch's repository.
    FetchDone {
        id: u64,
        result: Result<Vec<Oid>, FetchFailure>,
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
        ticket: u64,
    },
    /// The store write for the admitted event failed.
    PersistFailed {
        ticket: u64,
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
