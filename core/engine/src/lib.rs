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

pub mod acceptance;
pub mod config;
pub mod deletion;
pub mod engine;
pub mod events;
pub mod follow;
pub mod ids;
pub mod lookup;
pub mod maintainers;
pub mod net;
pub mod purgatory;
pub mod push;
pub mod related;
pub mod release;
pub mod replaceable;
pub mod satisfy;
pub mod throttle;
pub mod time;
pub mod timers;
pub mod urls;

#[cfg(test)]
mod testkit;

pub use config::Config;
pub use engine::{
    ApplyError, ApplyPlan, Arrival, Command, Engine, EngineEvent, FetchError, FetchReport, Input,
    RefDecision, RefEdit, RefUpdate, RepoSnapshot, Stats, Ticket, TimerReason, Verdict,
};
pub use ids::{CommandId, EventId, Identifier, Namespace, Oid, PublicKey, RepoKey};
pub use time::Time;
