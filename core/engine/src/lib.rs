//! graspd-core: the pure GRASP purgatory engine.
//!
//! No IO, no async runtime, no clock, no unseeded randomness: every input carries `now`, every
//! IO the engine wants is a command with an id, and its outcome comes back as an input.
//!
//! Durability is part of the contract: the engine emits no command and no event for an event
//! the host has not confirmed durable. `Engine::handle_event` only decides; a `Waiting` or
//! `Accepted` verdict carries a [`Ticket`], and the engine takes the event in when the host
//! reports `Input::Persisted { ticket }` after its store write, or forgets it on
//! `Input::PersistFailed { ticket }`. An acknowledged event is therefore served or waiting in
//! the host's store, never neither, whatever else the host runs concurrently.

// The rules other crates call directly (the host's acceptance, relay-following and store code;
// the engine's own property tests).
pub mod acceptance;
pub mod events;
pub mod follow;
pub mod maintainers;
pub mod net;
pub mod push;
pub mod related;
pub mod release;
pub mod replaceable;
pub mod urls;

// The engine's machinery: reached only through `Engine` and the types re-exported below.
mod config;
mod deletion;
mod engine;
mod ids;
mod lookup;
mod purgatory;
mod satisfy;
mod throttle;
mod time;
mod timers;

#[cfg(test)]
mod testkit;

pub use config::Config;
pub use engine::{
    ApplyError, ApplyPlan, Arrival, Command, Engine, EngineEvent, FetchError, FetchReport, Input,
    RefDecision, RefEdit, RefUpdate, RepoSnapshot, Stats, Ticket, TimerReason, Verdict,
};
pub use purgatory::WaitingCounts;
pub use throttle::ThrottleCounters;
pub use ids::{CommandId, EventId, Identifier, Namespace, Oid, PublicKey, RepoKey};
pub use time::Time;
