//! The NIP-01 relay at `/`, runtime-agnostic and sans-IO.
//!
//! - [`Session`]: one connection. Feed it text frames ([`Session::handle_text`]); it answers
//!   with an [`Action`]: a frame to send, an event to admit past the rate limits and then
//!   verify and decide ([`Action::Admit`]), or a stored-events query to run ([`Action::Query`]).
//! - [`Hub`]: one per server. The driver [`publish`](Hub::publish)es every event the moment
//!   it becomes served; each session's [`LiveFeed`] yields the ones it subscribed to.
//! - [`messages`]: relay-to-client frames (`EVENT`, `OK`, `EOSE`, `CLOSED`, `NOTICE`).
//! - [`RelayLimits`]: per-connection limits, also published by NIP-11.
//! - [`negentropy`]: NIP-77 reconciliation (`NEG-OPEN`, `NEG-MSG`, `NEG-CLOSE`) over the
//!   served events matching a filter ([`Action::Reconcile`]).
//!
//! - [`run_connection`]: the whole per-connection loop over an upgraded WebSocket, for any
//!   runtime; the driver supplies a [`RelayBackend`] (decide an event, read stored events).
//!
//! The WebSocket upgrade, the decision on each event and the store reads are the driver's;
//! apart from `run_connection`'s socket, nothing here does IO or reads a clock.

mod connection;
mod hub;
mod limits;
pub mod messages;
pub mod negentropy;
mod session;

#[cfg(test)]
mod negentropy_tests;
#[cfg(test)]
mod tests;

pub use connection::{run_connection, BoxFuture, RelayBackend, RelaySocket};
pub use hub::{Hub, Live, LiveFeed};
pub use limits::RelayLimits;
pub use negentropy::{NegentropyLimits, ReconcileOpen};
pub use session::{Action, Query, QueryId, Session, Unverified, Verdict};
