//! graspd-core: the pure GRASP purgatory engine.
//!
//! No IO, no async runtime, no clock, no unseeded randomness: every input carries `now`, every
//! IO the engine wants is a command with an id, and its outcome comes back as an input.

pub mod acceptance;
pub mod deletion;
pub mod events;
pub mod follow;
pub mod ids;
pub mod maintainers;
pub mod push;
pub mod release;
pub mod satisfy;
pub mod time;

#[cfg(test)]
mod testkit;

pub use ids::{CommandId, EventId, Identifier, Oid, PublicKey, RepoKey};
pub use time::Time;
