//! GRASP-02 event sync, the IO half: WebSocket connections to the relays the core's
//! [`RelayFollower`] picks, each reading history (paged REQ until EOSE) and then live events,
//! handing every verified, first-seen event to a callback.
//!
//! ```text
//! let handle = FollowerHandle::new(runtime.clone(), RelayFollower::new(config, own), ClientLimits::default());
//! spawn_follower(runtime, handle.clone(), move |event, relay| { /* accept as synced from relay */ });
//! handle.announcement(accepted_announcement);   // from the acceptance path
//! ```
//!
//! Everything is bounded: message size, events per second per relay (the connection stops
//! reading while over), the queue to the callback (full: the connections wait), the dedup
//! window, the control queue per connection.

mod client;
mod metrics;
mod rate;
mod session;
mod wire;

pub use client::{
    default_tls_config, spawn_follower, spawn_follower_async, tls_config, ClientLimits, FollowArgs,
    FollowerHandle, LeaseCommands, LocalItems,
};
pub use graspd_core::follow::{FollowConfig, FollowStats, RelayFollower, RelayStatus};
pub use metrics::{FollowMetrics, RelayCounters, OTHER_RELAYS};
pub use session::{ConnectionSession, HistoryLimits, HistoryMark, HistoryMarks, Output};
