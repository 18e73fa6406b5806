//! NIP-77 reconciliation (negentropy, protocol V1) for one connection, sans-IO.
//!
//! `NEG-OPEN` names a filter; its items are the `(created_at, id)` of the served events that
//! match it, read by the driver with the same filter evaluation as a REQ
//! (`store.query_items`), so waiting events are never among them. Each open reconciliation
//! keeps its items (40 bytes each) until `NEG-CLOSE`, an error or the end of the connection.

use std::collections::BTreeMap;

use negentropy::{Id, Negentropy, NegentropyStorageVector};
use nostr::prelude::{EventId, Filter};

use super::messages;
use crate::hex;
use crate::refusals::Limit;

/// Smallest frame size the negentropy protocol accepts.
pub const MIN_FRAME_BYTES: usize = 4096;

/// A `NEG-OPEN` whose items the driver must read: the served events matching `filters`, at
/// most `cap` of them (`cap` is one more than allowed, so that too many can be told).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReconcileOpen {
    pub subscription_id: String,
    /// The one filter of the `NEG-OPEN`; empty when it matches nothing (`"ids": []`).
    pub filters: Vec<Filter>,
    pub cap: usize,
    /// The client's initial message, hex-decoded.
    pub initial: Vec<u8>,
}

/// A frame answering a NIP-77 message, and the limit that refused it, if one did.
#[derive(Debug, PartialEq, Eq)]
pub struct Reply {
    pub frame: String,
    pub refused: Option<Limit>,
}

impl Reply {
    fn send(frame: String) -> Reply {
        Reply {
            frame,
            refused: None,
        }
    }

    fn refuse(limit: Limit, subscription_id: &str, reason: &str) -> Reply {
        Reply {
            frame: messages::neg_err(subscription_id, reason),
            refused: Some(limit),
        }
    }
}

/// The limits reconciliation is held to (part of [`super::RelayLimits`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NegentropyLimits {
    /// Reconciliations open at once on one connection; 0 turns NIP-77 off.
    pub max_sessions: usize,
    /// Items (matching served events) one reconciliation may hold; above it the client is
    /// told to use REQ.
    pub max_items: usize,
    /// Largest negentropy message this relay sends, in bytes before hex encoding (at least
    /// [`MIN_FRAME_BYTES`]); the rest of a reconciliation follows in later rounds.
    pub frame_bytes: usize,
}

impl Default for NegentropyLimits {
    fn default() -> NegentropyLimits {
        NegentropyLimits {
            max_sessions: 4,
            max_items: 100_000,
            frame_bytes: 60_000,
        }
    }
}

impl NegentropyLimits {
    pub fn enabled(&self) -> bool {
        self.max_sessions > 0
    }
}

/// The open reconciliations of one connection, by subscription id.
#[derive(Default)]
pub struct Reconciliations {
    open: BTreeMap<String, Negentropy<'static, NegentropyStorageVector>>,
}

impl Reconciliations {
    /// Checks a `NEG-OPEN` whose subscription id and filter are valid; `hex_message` is its
    /// initial message. `Ok` asks the driver for the items, `Err` is the answer.
    pub fn open(
        &mut self,
        limits: &NegentropyLimits,
        subscription_id: String,
        filters: Vec<Filter>,
        hex_message: &str,
    ) -> Result<ReconcileOpen, Reply> {
        // NIP-77: a NEG-OPEN for an open subscription id closes that one first.
        self.open.remove(&subscription_id);
        if !limits.enabled() {
            return Err(Reply::refuse(
                Limit::NegentropySessions,
                &subscription_id,
                "blocked: negentropy (NIP-77) is turned off on this relay; use REQ",
            ));
        }
        if self.open.len() >= limits.max_sessions {
            return Err(Reply::refuse(
                Limit::NegentropySessions,
                &subscription_id,
                &format!(
                    "blocked: too many negentropy sessions on this connection (limit {}); \
                     NEG-CLOSE one first",
                    limits.max_sessions
                ),
            ));
        }
        let Some(initial) = hex::decode(hex_message) else {
            return Err(Reply::send(messages::neg_err(
                &subscription_id,
                "invalid: the initial message is not hex",
            )));
        };
        Ok(ReconcileOpen {
            subscription_id,
            filters,
            cap: limits.max_items.saturating_add(1),
            initial,
        })
    }

    /// Starts the reconciliation `open` over `items` (what the driver read for it) and
    /// answers its initial message.
    pub fn start(
        &mut self,
        limits: &NegentropyLimits,
        open: ReconcileOpen,
        items: &[(u64, EventId)],
    ) -> Reply {
        let subscription_id = open.subscription_id;
        if items.len() > limits.max_items {
            return Reply::refuse(
                Limit::NegentropyItems,
                &subscription_id,
                &format!(
                    "blocked: too many items (more than {} events match this filter); \
                     use REQ, or a narrower filter",
                    limits.max_items
                ),
            );
        }
        let mut negentropy = match reconciler(limits, items) {
            Ok(negentropy) => negentropy,
            Err(error) => {
                tracing::error!(%error, "negentropy storage could not be built");
                return Reply::send(messages::neg_err(
                    &subscription_id,
                    "error: could not prepare the reconciliation",
                ));
            }
        };
        match negentropy.reconcile(&open.initial) {
            Ok(answer) => {
                self.open.insert(subscription_id.clone(), negentropy);
                Reply::send(messages::neg_msg(&subscription_id, &hex::encode(&answer)))
            }
            Err(error) => Reply::send(messages::neg_err(
                &subscription_id,
                &format!("invalid: {error}"),
            )),
        }
    }

    /// Answers a `NEG-MSG`. A malformed message ends its reconciliation.
    pub fn message(&mut self, subscription_id: &str, hex_message: &str) -> Reply {
        let Some(negentropy) = self.open.get_mut(subscription_id) else {
            return Reply::send(messages::neg_err(
                subscription_id,
                "closed: no negentropy session is open with this id; send NEG-OPEN",
            ));
        };
        let Some(message) = hex::decode(hex_message) else {
            self.open.remove(subscription_id);
            return Reply::send(messages::neg_err(
                subscription_id,
                "invalid: the message is not hex",
            ));
        };
        match negentropy.reconcile(&message) {
            Ok(answer) => Reply::send(messages::neg_msg(subscription_id, &hex::encode(&answer))),
            Err(error) => {
                self.open.remove(subscription_id);
                Reply::send(messages::neg_err(
                    subscription_id,
                    &format!("invalid: {error}"),
                ))
            }
        }
    }

    /// `NEG-CLOSE`: forgets the reconciliation, if open. Nothing is answered.
    pub fn close(&mut self, subscription_id: &str) {
        self.open.remove(subscription_id);
    }

    /// Reconciliations open now.
    pub fn len(&self) -> usize {
        self.open.len()
    }

    pub fn is_empty(&self) -> bool {
        self.open.is_empty()
    }
}

fn reconciler(
    limits: &NegentropyLimits,
    items: &[(u64, EventId)],
) -> Result<Negentropy<'static, NegentropyStorageVector>, negentropy::Error> {
    let frame_bytes = limits.frame_bytes.max(MIN_FRAME_BYTES) as u64;
    negentropy_over(items, frame_bytes)
}

/// A negentropy instance over `items` (either side: the relay's here, the follower's as a
/// client), sending messages of at most `frame_bytes` (0: unbounded).
pub fn negentropy_over(
    items: &[(u64, EventId)],
    frame_bytes: u64,
) -> Result<Negentropy<'static, NegentropyStorageVector>, negentropy::Error> {
    let mut storage = NegentropyStorageVector::with_capacity(items.len());
    for (created_at, id) in items {
        storage.insert(*created_at, Id::from_byte_array(id.to_bytes()))?;
    }
    storage.seal()?;
    Negentropy::owned(storage, frame_bytes)
}
