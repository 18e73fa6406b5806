//! Relay-to-client messages (NIP-01, NIP-77), serialized to the text of one WebSocket frame.

use nostr::prelude::{Event, EventId};
use serde_json::json;

/// `["EVENT", <subscription id>, <event>]`
pub fn event(subscription_id: &str, event: &Event) -> String {
    json!(["EVENT", subscription_id, event]).to_string()
}

/// `["EVENT", <subscription id>, <event>]` from the event's JSON text as stored (it was
/// written by `Event::as_json`, so it is embedded as is, neither parsed nor re-encoded).
pub fn event_json(subscription_id: &str, event_json: &str) -> String {
    let subscription_id = serde_json::Value::from(subscription_id).to_string();
    let mut frame = String::with_capacity(event_json.len() + subscription_id.len() + 12);
    frame.push_str("[\"EVENT\",");
    frame.push_str(&subscription_id);
    frame.push(',');
    frame.push_str(event_json);
    frame.push(']');
    frame
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

/// `["NEG-MSG", <subscription id>, <hex message>]` (NIP-77)
pub fn neg_msg(subscription_id: &str, hex_message: &str) -> String {
    json!(["NEG-MSG", subscription_id, hex_message]).to_string()
}

/// `["NEG-ERR", <subscription id>, <reason>]` (NIP-77): the reconciliation is over.
pub fn neg_err(subscription_id: &str, reason: &str) -> String {
    json!(["NEG-ERR", subscription_id, reason]).to_string()
}

/// Sent before the connection is closed because its live queue overflowed.
pub const TOO_SLOW: &str = "error: connection too slow to keep up with live events; closing";
