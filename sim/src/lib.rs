//! graspd-sim: a deterministic simulator for graspd.
//!
//! One thread, virtual time, one root seed. The engine world plays the world (users, remote
//! GRASP servers with faults) and our host (store, purgatory table, crashes and restarts),
//! drives `graspd-core` through it, and checks safety invariants after every step and liveness
//! after the world heals. The host world (`host`) runs the real graspd-host on a simulated
//! runtime instead. The instances world (`instances`) runs several engines with sync leases
//! over one shared store. See `README.md`.

pub mod adapter;
pub mod cli;
pub mod doubles;
pub mod faults;
pub mod follow_run;
pub mod forge;
pub mod host;
pub mod instances;
pub mod instances_cli;
pub mod lease_table;
pub mod monitor;
pub mod named;
pub mod params;
pub mod relay_cli;
pub mod relay_wire;
pub mod relays;
pub mod rng;
pub mod runner;
pub mod scenario;
pub mod seeds;
pub mod store;
pub mod sut;
pub mod swarm;
pub mod trace;
pub mod world;

pub use runner::{run, Failure, FailureKind, Outcome};
pub use scenario::{Scenario, Size};
