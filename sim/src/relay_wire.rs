//! What a simulated relay reads in the follower's frames: NIP-01 filters matched against the
//! events it holds, and the NIP-77 messages a lying relay sends.

use graspd_core::follow::Filter;
use nostr::event::{Event, EventId};
use serde_json::{json, Map, Value};

/// A follower's filter as a relay receives it (the production wire form, no window).
pub fn filter_json(filter: &Filter) -> Value {
    let mut object = Map::new();
    if !filter.kinds.is_empty() {
        object.insert("kinds".into(), json!(filter.kinds));
    }
    if let Some(tag) = &filter.tag {
        object.insert(format!("#{}", tag.letter), json!(tag.values));
    }
    Value::Object(object)
}

/// Whether `event` matches the NIP-01 filter `filter` (`limit` aside). An unknown field
/// matches nothing, so a filter the follower should not send is noticed as missing events.
pub fn matches(filter: &Value, event: &Event) -> bool {
    let Some(object) = filter.as_object() else {
        return false;
    };
    let strings = |v: &Value| -> Vec<String> {
        v.as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|s| s.as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default()
    };
    object.iter().all(|(field, want)| match field.as_str() {
        "ids" => strings(want).contains(&event.id.to_hex()),
        "authors" => strings(want).contains(&event.pubkey.to_hex()),
        "kinds" => want.as_array().is_some_and(|kinds| {
            kinds
                .iter()
                .any(|k| k.as_u64() == Some(u64::from(event.kind.as_u16())))
        }),
        "since" => want
            .as_u64()
            .is_some_and(|since| event.created_at.as_secs() >= since),
        "until" => want
            .as_u64()
            .is_some_and(|until| event.created_at.as_secs() <= until),
        "limit" => true,
        tag if tag.len() == 2 && tag.starts_with('#') => {
            let values = strings(want);
            event.tags.iter().any(|t| {
                let t = t.as_slice();
                t.len() >= 2 && t[0] == tag[1..] && values.contains(&t[1])
            })
        }
        _ => false,
    })
}

/// Whether `event` matches a follower's `filter`.
pub fn matches_filter(filter: &Filter, event: &Event) -> bool {
    matches(&filter_json(filter), event)
}

/// A negentropy (protocol V1) message naming the whole range with a fingerprint no set of
/// events has: the follower must split its side again, round after round.
pub fn never_agreeing(round: usize) -> Vec<u8> {
    // Version, upper bound infinity (timestamp 0, no id bytes), mode fingerprint, fingerprint.
    let mut message = vec![0x61, 0, 0, 1];
    message.extend((0..16).map(|i| (round as u8).wrapping_mul(31).wrapping_add(i)));
    message
}

/// The `n`th id a relay claims but holds no event for.
pub fn phantom_id(relay: usize, n: u32) -> EventId {
    let mut bytes = [0xee; 32];
    bytes[0] = relay as u8;
    bytes[1..5].copy_from_slice(&n.to_be_bytes());
    EventId::from_byte_array(bytes)
}
