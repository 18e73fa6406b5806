//! graspd-core: the pure GRASP purgatory engine.
//!
//! No IO, no async runtime, no clock, no unseeded randomness: every input carries `now`, every
//! IO the engine wants is a [`Command`] with an id, and its outcome comes back as an [`Input`]
//! with that id. The host owns one [`Engine`] and runs this loop around it:
//!
//! ```
//! # use nostr::event::{Event, Kind, Tag, UnsignedEvent};
//! # use nostr::key::{Keys, SecretKey};
//! # use nostr::nips::nip19::ToBech32;
//! # use nostr::types::Timestamp;
//! # fn signed_announcement() -> Event {
//! #     let keys = Keys::new(SecretKey::from_slice(&[1; 32]).unwrap());
//! #     let npub = keys.public_key().to_bech32().unwrap();
//! #     let tags = [
//! #         vec!["d".to_owned(), "project".to_owned()],
//! #         vec!["clone".to_owned(), format!("https://grasp.example/{npub}/project.git")],
//! #         vec!["relays".to_owned(), "wss://grasp.example".to_owned()],
//! #     ];
//! #     let tags = tags.into_iter().map(|t| Tag::parse(t).unwrap()).collect::<Vec<_>>();
//! #     let mut unsigned = UnsignedEvent::new(
//! #         keys.public_key(), Timestamp::from_secs(1_700_000_000), Kind::from_u16(30617), tags, "",
//! #     );
//! #     let secp = secp256k1::Secp256k1::new();
//! #     let sig = keys.sign_schnorr_with_aux_rand(&secp, unsigned.id().as_bytes(), &[7; 32]);
//! #     unsigned.add_signature_with_ctx(&secp, sig).unwrap()
//! # }
//! use graspd_core::{
//!     Arrival, Command, Config, Engine, EngineEvent, Input, RepoSnapshot, Time, Verdict,
//! };
//!
//! let mut engine = Engine::new(Config {
//!     own_origin: Some("https://grasp.example".into()),
//!     ..Config::default()
//! });
//!
//! // A client publishes a repository announcement (its signature checked by the host). The
//! // engine only decides: nothing happens until the host has stored the event durably.
//! let mut now = Time::from_millis(1_000);
//! let announcement = signed_announcement();
//! let Verdict::Waiting(ticket) = engine.handle_event(now, announcement.clone(), Arrival::Published)
//! else {
//!     panic!("an announcement of an empty repository waits for its data");
//! };
//! // ... the host writes it to its purgatory table, then confirms:
//! engine.handle_input(now, Input::Persisted { ticket });
//! // ... and only now answers `["OK", <id>, true, Verdict::WAITING_MESSAGE]`.
//!
//! // Run every command; report each outcome back as an input with the command's id.
//! let mut expired = Vec::new();
//! for _ in 0..100 {
//!     while let Some(command) = engine.poll_command() {
//!         match command {
//!             Command::CreateRepo { .. } => { /* `git init --bare` at the repo's path */ }
//!             Command::RemoveRepo { .. } => { /* its announcement expired without data */ }
//!             Command::Inspect { id, .. } => {
//!                 // Which of the oids exist, and the current refs: an empty repository.
//!                 let result = Ok(RepoSnapshot::default());
//!                 engine.handle_input(now, Input::Inspected { id, result });
//!             }
//!             other => unreachable!("nothing here fetches or applies: {other:?}"),
//!         }
//!     }
//!     // Persist and serve what the engine decided.
//!     while let Some(event) = engine.poll_event() {
//!         if let EngineEvent::Expired { id, .. } = event {
//!             expired.push(id); // drop it from the purgatory table
//!         }
//!     }
//!     // Sleep until the next deadline, then tell the engine the time.
//!     let Some((deadline, _reason)) = engine.poll_timeout() else { break };
//!     now = deadline;
//!     engine.handle_timeout(now);
//! }
//! // No push ever brought data, so the announcement expired from purgatory, never served.
//! assert_eq!(expired, [announcement.id]);
//! ```
//!
//! Durability is part of the contract: the engine emits no command and no event for an event
//! the host has not confirmed durable. [`Engine::handle_event`] only decides; a `Waiting` or
//! `Accepted` verdict carries a [`Ticket`], and the engine takes the event in when the host
//! reports [`Input::Persisted`] after its store write, or forgets it on
//! [`Input::PersistFailed`]. An acknowledged event is therefore served or waiting in the
//! host's store, never neither, whatever else the host runs concurrently.
//!
//! The relay follower ([`follow::RelayFollower`]) is a second machine with the same shape.

// The rules other crates call directly (the host's acceptance, relay-following and store code;
// the engine's own property tests).
pub mod acceptance;
pub mod events;
pub mod follow;
pub mod freshness;
pub mod maintainers;
pub mod net;
pub mod policy;
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
mod quota;
mod satisfy;
mod throttle;
mod time;
mod timers;

#[cfg(test)]
mod testkit;

pub use config::Config;
pub use engine::{
    ApplyError, ApplyPlan, Arrival, Command, Engine, EngineEvent, FetchError, FetchReport, Input,
    RefDecision, RefEdit, RefUpdate, Refusal, RepoSnapshot, Stats, Submission, Ticket, TimerReason,
    Verdict,
};
pub use ids::{CommandId, EventId, Identifier, Namespace, Oid, PublicKey, RepoKey};
pub use purgatory::WaitingCounts;
pub use quota::ClientAddress;
pub use throttle::ThrottleCounters;
pub use time::Time;
