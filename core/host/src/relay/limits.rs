//! The relay's per-connection limits; also published in the NIP-11 document.

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
    /// Longest subscription id, in characters (NIP-01 says 64).
    pub max_subscription_id_chars: usize,
    /// Most stored events one filter returns, whatever its `limit`.
    pub max_limit: usize,
    /// Live events queued for one connection before it is dropped as too slow.
    pub live_queue: usize,
}

impl Default for RelayLimits {
    fn default() -> RelayLimits {
        RelayLimits {
            max_message_bytes: 512 * 1024,
            max_subscriptions: 32,
            max_filters: 16,
            max_subscription_id_chars: 64,
            max_limit: 500,
            live_queue: 1024,
        }
    }
}
