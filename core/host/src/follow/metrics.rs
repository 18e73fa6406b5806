//! Counters of the relay follower, for the Prometheus export. Plain atomics; per-relay
//! counters are bounded (relays beyond the bound are added up under [`OTHER_RELAYS`]).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::Mutex;

/// The label per-relay counters of relays beyond `max_relays` are added to.
pub const OTHER_RELAYS: &str = "other";

/// Per relay: what it taught us.
#[derive(Clone, Copy, Default, Debug, PartialEq, Eq)]
pub struct RelayCounters {
    /// Events first seen from this relay (handed to the acceptance path).
    pub learned: u64,
    /// Events already seen (from this relay or another).
    pub duplicates: u64,
    /// Events with a bad id or signature.
    pub invalid: u64,
    /// Successful WebSocket handshakes.
    pub connects: u64,
}

#[derive(Debug)]
pub struct FollowMetrics {
    /// Relays with an open WebSocket now.
    pub relays_connected: AtomicI64,
    /// Connections attempted to a relay that had been tried before.
    pub reconnects: AtomicU64,
    /// Connections that failed (resolution, TCP, TLS, handshake, or broke with an error).
    pub connect_failures: AtomicU64,
    pub events_received: AtomicU64,
    pub events_learned: AtomicU64,
    pub duplicates: AtomicU64,
    pub invalid_events: AtomicU64,
    /// Times a relay sent faster than its events-per-second bound and was made to wait.
    pub rate_limited: AtomicU64,
    /// Histories read by NIP-77 negentropy (reconciled, the missing events then fetched).
    pub reconciled: AtomicU64,
    /// Reconciliations given up for the paged REQ because the relay could not reconcile.
    pub reconcile_fallbacks: AtomicU64,
    per_relay: Mutex<BTreeMap<String, RelayCounters>>,
    max_relays: usize,
}

impl FollowMetrics {
    pub fn new(max_relays: usize) -> FollowMetrics {
        FollowMetrics {
            relays_connected: AtomicI64::new(0),
            reconnects: AtomicU64::new(0),
            connect_failures: AtomicU64::new(0),
            events_received: AtomicU64::new(0),
            events_learned: AtomicU64::new(0),
            duplicates: AtomicU64::new(0),
            invalid_events: AtomicU64::new(0),
            rate_limited: AtomicU64::new(0),
            reconciled: AtomicU64::new(0),
            reconcile_fallbacks: AtomicU64::new(0),
            per_relay: Mutex::new(BTreeMap::new()),
            max_relays,
        }
    }

    /// Per-relay counters, in URL order.
    pub fn per_relay(&self) -> Vec<(String, RelayCounters)> {
        let map = self.per_relay.lock().unwrap_or_else(|e| e.into_inner());
        map.iter().map(|(k, v)| (k.clone(), *v)).collect()
    }

    pub(super) fn relay(&self, url: &str, update: impl FnOnce(&mut RelayCounters)) {
        let mut map = self.per_relay.lock().unwrap_or_else(|e| e.into_inner());
        let key = if map.contains_key(url) || map.len() < self.max_relays {
            url
        } else {
            OTHER_RELAYS
        };
        update(map.entry(key.to_owned()).or_default());
    }

    pub(super) fn add(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }
}

impl Default for FollowMetrics {
    fn default() -> FollowMetrics {
        FollowMetrics::new(1_000)
    }
}
