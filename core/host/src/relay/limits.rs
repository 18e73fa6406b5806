//! The relay's per-connection limits; also published in the NIP-11 document.

use std::time::Duration;

use super::negentropy::NegentropyLimits;
use crate::event_rate::Rate;

/// Limits one WebSocket connection is held to. Defaults suit a GRASP server.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RelayLimits {
    /// Largest client message, in bytes. The WebSocket layer should refuse larger frames
    /// itself (so they are never buffered); the session checks again.
    pub max_message_bytes: usize,
    /// Open subscriptions per connection.
    pub max_subscriptions: usize,
    /// Filters in one REQ.
    pub max_filters: usize,
    /// Values in one filter field (`ids`, `authors`, `kinds`, each `#x`): bounds the index
    /// lookups one REQ can cost.
    pub max_filter_values: usize,
    /// Longest subscription id, in characters (NIP-01 says 64).
    pub max_subscription_id_chars: usize,
    /// Most stored events one filter returns, whatever its `limit`.
    pub max_limit: usize,
    /// Live events queued for one connection before it is dropped as too slow.
    pub live_queue: usize,
    /// A client silent this long (no message, no pong) is sent a ping.
    pub ping_after: Duration,
    /// A client silent this long is disconnected with a close frame: it did not answer the
    /// ping, so it is gone or not reading.
    pub idle_timeout: Duration,
    /// A send the client does not take within this long disconnects it: a client that stops
    /// reading costs at most `send_buffer_bytes` and this long.
    pub write_timeout: Duration,
    /// Outgoing bytes buffered for one connection before the sender waits for the client to
    /// read; stored results are produced only as the client takes them.
    pub send_buffer_bytes: usize,
    /// EVENTs one connection may send: beyond it they are answered `rate-limited:`.
    pub events_per_connection: Rate,
    /// EVENTs one client address (an IPv6 /64) may send over all its connections.
    pub events_per_address: Rate,
    /// NIP-77 reconciliation: sessions per connection (0: off), items, frame size.
    pub negentropy: NegentropyLimits,
    /// EVENTs one connection has being decided at once; past it the connection reads no
    /// more until one is answered.
    pub events_in_flight: usize,
}

impl Default for RelayLimits {
    fn default() -> RelayLimits {
        RelayLimits {
            max_message_bytes: 512 * 1024,
            max_subscriptions: 32,
            max_filters: 16,
            max_filter_values: 1000,
            max_subscription_id_chars: 64,
            max_limit: 500,
            live_queue: 1024,
            ping_after: Duration::from_secs(30),
            idle_timeout: Duration::from_secs(90),
            write_timeout: Duration::from_secs(30),
            send_buffer_bytes: 256 * 1024,
            events_per_connection: Rate {
                per_second: 100,
                burst: 200,
            },
            events_per_address: Rate {
                per_second: 500,
                burst: 1000,
            },
            negentropy: NegentropyLimits::default(),
            events_in_flight: 32,
        }
    }
}
