//! Relay-to-client messages (NIP-01), serialized to the text of one WebSocket frame.

use nostr::prelude::{Event, EventId};
use serde_json::json;

/// `["EVENT", <subscription id>, <event>]`
pub fn event(subscription_id: &str, event: &Event) -> String {
    json!(["EVENT", subscription_id, event]).to_string()
}

/// `["OK", <event id>, <accepted>, <message>]`. `message` starts with a NIP-01 prefix
/// (`duplicate:`, `invalid:`, `error:`, `blocked:`, ...) when there is one.
pub fn ok(event_id: &EventId, accepted: bool, message: &str) -> String {
    json!(["OK", event_id.to_hex(), accepted, message]).to_string()
}

/// `["EOSE", <subscription id>]`
pub fn eose(subscription_id: &str) -> String {
    json!(["EOSE", subscription_id]).to_string()
}

/// `["CLOSED", <subscription id>, <message>]`: the relay ended or refused a subscription.
pub fn closed(subscription_id: &str, message: &str) -> String {
    json!(["CLOSED", subscription_id, message]).to_string()
}

/// `["NOTICE", <message>]`
pub fn notice(message: &str) -> String {
    json!(["NOTICE", message]).to_string()
}

/// Sent before the connection is closed because its live queue overflowed.
pub const TOO_SLOW: &str = "error: connection too slow to keep up with live events; closing";
