//! The engine's inputs, commands, events and verdicts: the contract with the host.

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use crate::events::RefName;
use crate::ids::{CommandId, EventId, Oid, RepoKey};
use crate::purgatory::{Arrival, WaitingCounts};
use crate::quota::ClientAddress;
use crate::throttle;
use crate::time::Time;

pub use crate::timers::TimerReason;

/// Names one event that `handle_event` admitted, until the host reports it durable
/// ([`Input::Persisted`]) or not ([`Input::PersistFailed`]).
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Debug)]
pub struct Ticket(pub u64);

impl fmt::Display for Ticket {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "admission-{}", self.0)
    }
}

/// What `handle_event` answers; the host turns it into the NIP-01 `OK` message.
///
/// Admission is two-phase. For `Waiting` and `Accepted` the engine has changed nothing yet: it
/// holds the decision under its [`Ticket`] and emits no command and no event for the event
/// until the host has stored it durably and reported [`Input::Persisted`]. If storing fails
/// the host reports [`Input::PersistFailed`] and the engine forgets the event as if it had
/// never seen it. So whatever runs between the verdict and the report (another EVENT, a timer,
/// an IO completion) can never release, expire or act on an event the store does not hold.
#[derive(Clone, PartialEq, Eq, Debug)]
pub enum Verdict {
    /// `OK false` with this complete message (prefix included, e.g. `invalid: ...`).
    Rejected(String),
    /// Put the event in the purgatory table, report `Persisted`, then answer
    /// `OK true "purgatory: won't be served until git data arrives"`.
    Waiting(Ticket),
    /// Store and serve now (deletions; announcements of maintainers or of repos already
    /// served), then report `Persisted`.
    Accepted(Ticket),
    /// Already known.
    Duplicate,
    /// `OK false` with this complete message, refused by a limit or rule the host counts
    /// (a metric label each, [`Refusal::name`]).
    Refused(Refusal, String),
}

/// A limit or rule that refused an event.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Debug)]
pub enum Refusal {
    /// `Config::max_waiting`: purgatory is full.
    Waiting,
    /// `Config::max_waiting_per_author`.
    WaitingPerAuthor,
    /// `Config::max_waiting_per_address`.
    WaitingPerAddress,
    /// `Config::max_deletion_content_bytes` or `Config::max_deletion_tags`.
    DeletionTooLarge,
    /// A deletion request that deletes nothing its author has here, served or waiting.
    DeletionNotHeld,
}

impl Refusal {
    /// The metric label.
    pub fn name(self) -> &'static str {
        match self {
            Refusal::Waiting => "waiting_total",
            Refusal::WaitingPerAuthor => "waiting_per_author",
            Refusal::WaitingPerAddress => "waiting_per_address",
            Refusal::DeletionTooLarge => "deletion_too_large",
            Refusal::DeletionNotHeld => "deletion_not_held",
        }
    }
}

/// How an event reached the host, and what the host's store knows about it: the facts
/// admission needs besides the event itself. An [`Arrival`] alone converts into one.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct Submission {
    pub arrival: Arrival,
    /// For a kind 5 deletion: the host's store serves an event it deletes (one of its
    /// author's, by `e` id, or by `a` coordinate up to its `created_at`). The engine checks
    /// waiting events itself.
    pub deletes_served: bool,
    /// The client address that published it, which `max_waiting_per_address` counts by;
    /// none for events learned from other relays.
    pub client: Option<ClientAddress>,
    /// For an event learned from another relay: that relay's URL. When it is the origin of
    /// a server the event's repository lists in `clone`, the data is there already (a GRASP
    /// server serves an event only with its data), so the first fetch starts at once instead
    /// of after `first_attempt_after_synced`.
    pub synced_from: Option<String>,
}

impl Submission {
    /// An event a client published from `client`.
    pub fn published_from(client: Option<ClientAddress>) -> Submission {
        Submission {
            client,
            ..Submission::from(Arrival::Published)
        }
    }
}

impl Submission {
    /// An event learned from the relay at `relay` (a `ws`/`wss` URL).
    pub fn synced_from(relay: impl Into<String>) -> Submission {
        Submission {
            synced_from: Some(relay.into()),
            ..Submission::from(Arrival::Synced)
        }
    }
}

impl From<Arrival> for Submission {
    fn from(arrival: Arrival) -> Submission {
        Submission {
            arrival,
            deletes_served: false,
            client: None,
            synced_from: None,
        }
    }
}

impl Verdict {
    /// The `OK` message text for a `Waiting` verdict.
    pub const WAITING_MESSAGE: &'static str = "purgatory: won't be served until git data arrives";
}

/// One ref update of a push (receive-pack command), and one per-ref decision.
pub use crate::push::{RefDecision, RefUpdate};
/// One compare-and-swap ref edit (`expected` current value, `new` value; `None`: absent).
pub use crate::release::RefEdit;

/// What a fetch brought.
#[derive(Clone, PartialEq, Eq, Debug, Default)]
pub struct FetchReport {
    /// The wanted oids now present in the fetch's `into` repository.
    pub present: Vec<Oid>,
}

/// Why a fetch failed. DNS and TLS failures count towards skipping the domain.
#[derive(Clone, PartialEq, Eq, Debug)]
pub enum FetchError {
    /// Connection refused or reset.
    Refused,
    Dns,
    Tls,
    Timeout,
    /// The remote sent more than the host's size cap.
    TooLarge,
    Http(u16),
    /// The remote answered 429 / "too many requests".
    RateLimited,
    /// The remote does not have (or will not serve) these oids: retried without them.
    NotOurRef(Vec<Oid>),
    Other(String),
}

/// The objects and refs of one repository, as `Inspect` found them.
#[derive(Clone, PartialEq, Eq, Debug, Default)]
pub struct RepoSnapshot {
    /// Which of the asked oids exist.
    pub present: Vec<Oid>,
    /// Current `refs/heads/*`, `refs/tags/*` and `refs/nostr/*`.
    pub refs: BTreeMap<RefName, Oid>,
}

/// Why an `Apply` failed.
#[derive(Clone, PartialEq, Eq, Debug)]
pub enum ApplyError {
    /// A compare-and-swap expectation failed: the repository changed since it was inspected.
    Conflict,
    Io(String),
}

/// Changes to one repository, applied as: copy objects, then every ref edit in one
/// compare-and-swap transaction, then HEAD.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct ApplyPlan {
    pub repo: RepoKey,
    /// Copy these objects (with what they reach) from another repository on this server.
    pub copy_from: Option<(RepoKey, Vec<Oid>)>,
    pub edits: Vec<RefEdit>,
    /// Point HEAD at this branch (`refs/heads/<b>`).
    pub head: Option<RefName>,
}

/// An IO outcome, reported with the id of the command that asked for it.
#[derive(Clone, PartialEq, Eq, Debug)]
pub enum Input {
    FetchDone {
        id: CommandId,
        result: Result<FetchReport, FetchError>,
    },
    Inspected {
        id: CommandId,
        result: Result<RepoSnapshot, String>,
    },
    /// receive-pack succeeded with these ref updates.
    Pushed {
        repo: RepoKey,
        updates: Vec<RefUpdate>,
    },
    Applied {
        id: CommandId,
        result: Result<(), ApplyError>,
    },
    /// The event admitted under `ticket` is durable (purgatory table or served events): the
    /// engine takes it in now and queues what it needs (create the repository, inspect).
    Persisted { ticket: Ticket },
    /// Storing the event admitted under `ticket` failed (or the store refused it): the engine
    /// forgets it, as if it had never seen it.
    PersistFailed { ticket: Ticket },
    /// The operator's curation lists changed: new events are judged by `policy` from now on,
    /// pushes to a repository it denies are refused, and every waiting event it refuses
    /// (including one admitted but not yet reported durable) is withdrawn
    /// ([`EngineEvent::Withdrawn`]), as a restart with these lists would drop it.
    PolicyChanged { policy: crate::policy::Policy },
    /// The host acquired the sync lease of `repo` that [`Command::AcquireLease`] asked for:
    /// fetches for it may start (`Config::sync_leases`).
    Leased { repo: RepoKey },
    /// The host could not renew `repo`'s sync lease before it expired: another instance may
    /// hold it now, so no new fetch starts. The host keeps trying to acquire it.
    LeaseLost { repo: RepoKey },
}

/// IO the engine wants done. Every command with an id is answered by an input with that id.
#[derive(Clone, PartialEq, Eq, Debug)]
pub enum Command {
    /// `git fetch <url> <oids>` into `into` (the host may quarantine). Stop it at `deadline`
    /// and report; a report later than `Config::fetch_report_grace` after it is ignored, the
    /// fetch counted failed and its throttle slot freed.
    Fetch {
        id: CommandId,
        into: RepoKey,
        url: String,
        oids: Vec<Oid>,
        deadline: Time,
    },
    /// Which of `oids` exist in `repo`, and its current refs.
    Inspect {
        id: CommandId,
        repo: RepoKey,
        oids: Vec<Oid>,
    },
    Apply {
        id: CommandId,
        plan: ApplyPlan,
    },
    /// Create the bare repository (an announcement is waiting: its git endpoint must work).
    CreateRepo {
        repo: RepoKey,
    },
    /// Remove the bare repository (its announcement expired or was deleted without data).
    RemoveRepo {
        repo: RepoKey,
    },
    /// Acquire `repo`'s sync lease, and keep trying (another instance may hold it until it
    /// expires) until [`Command::ReleaseLease`]; report [`Input::Leased`] when held, and
    /// [`Input::LeaseLost`] when a held one could not be renewed. Only with
    /// `Config::sync_leases`.
    AcquireLease {
        repo: RepoKey,
    },
    /// Nothing waits on `repo` any more: stop trying to acquire its lease, and give it back if
    /// held.
    ReleaseLease {
        repo: RepoKey,
    },
}

/// What happened, for the host to persist and serve.
#[derive(Clone, PartialEq, Eq, Debug)]
pub enum EngineEvent {
    /// The event's data is in place: move it from the purgatory table to the served events
    /// (one transaction) and serve it. The engine keeps no copy of raw events; the host's
    /// purgatory table holds them.
    Released {
        id: EventId,
        kind: u16,
        waited: Duration,
    },
    /// The event's data never arrived; drop it from the purgatory table.
    Expired { id: EventId, kind: u16 },
    /// A kind 5 deletion removed this waiting event; drop it from the purgatory table.
    Deleted { id: EventId },
    /// The operator's policy refuses this waiting event now ([`Input::PolicyChanged`]):
    /// drop it from the purgatory table.
    Withdrawn { id: EventId },
    /// A `refs/nostr/<id>` ref was pushed before its event: the host may look for the event.
    PlaceholderCreated { repo: RepoKey, id: EventId },
    /// A placeholder ended: its event never came, or came with another commit (ref deleted).
    PlaceholderRemoved { repo: RepoKey, id: EventId },
    /// An Apply failed for good (after retries); the events stay waiting until they expire.
    ApplyFailed { repo: RepoKey, reason: String },
}

/// Counts for metrics.
#[derive(Clone, PartialEq, Eq, Debug, Default)]
pub struct Stats {
    pub waiting: WaitingCounts,
    pub remembered_expired: usize,
    /// Fetches in flight per domain that has any.
    pub fetches_in_flight: Vec<(String, usize)>,
    pub throttle: throttle::ThrottleCounters,
    pub domains_tracked: usize,
    pub repos_active: usize,
    pub timers: usize,
    pub fetches_started: u64,
    pub fetches_failed: u64,
    pub fetch_timeouts: u64,
    pub released: u64,
    pub expired: u64,
    pub deleted: u64,
    /// Waiting events a policy change withdrew.
    pub withdrawn: u64,
    pub apply_conflicts: u64,
    /// Admitted events the host has not yet reported durable.
    pub admissions_pending: usize,
    /// Authors and client addresses holding waiting events or admissions that will wait
    /// (zero once nothing waits).
    pub share_holders: usize,
    /// Sync leases held, and wanted but held elsewhere (`Config::sync_leases`).
    pub leases_held: usize,
    pub leases_wanted: usize,
}

impl fmt::Display for FetchError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FetchError::Refused => f.write_str("connection refused"),
            FetchError::Dns => f.write_str("DNS lookup failed"),
            FetchError::Tls => f.write_str("TLS handshake failed"),
            FetchError::Timeout => f.write_str("timed out"),
            FetchError::TooLarge => f.write_str("response too large"),
            FetchError::Http(code) => write!(f, "HTTP {code}"),
            FetchError::RateLimited => f.write_str("rate limited by the remote"),
            FetchError::NotOurRef(oids) => write!(f, "remote lacks {} wanted objects", oids.len()),
            FetchError::Other(s) => f.write_str(s),
        }
    }
}
