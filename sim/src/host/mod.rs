//! The host world: the real graspd-host (driver, engine, store, relay) on a deterministic
//! simulated runtime. See `world.rs` for what is checked and `README.md` for how it compares
//! with the engine-only world.

pub mod cli;
pub mod disk;
pub mod git;
pub mod runtime;
pub mod socket;
pub mod world;

pub use world::{run, HostOutcome, HostWorld};
