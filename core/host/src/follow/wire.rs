//! NIP-01 as a client speaks it: REQ and CLOSE out, EVENT, EOSE, CLOSED and NOTICE in; and
//! NIP-77: NEG-OPEN, NEG-MSG and NEG-CLOSE out, NEG-MSG and NEG-ERR in.

use graspd_core::follow::Filter;
use nostr::event::Event;
use serde_json::{json, Map, Value};

/// The `since`, `until` and `limit` added to every filter of a REQ.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Window {
    pub since: Option<u64>,
    pub until: Option<u64>,
    pub limit: Option<usize>,
}

/// One filter as JSON, within `window`.
pub fn filter_json(filter: &Filter, window: Window) -> Value {
    let mut object = Map::new();
    if !filter.kinds.is_empty() {
        object.insert("kinds".into(), json!(filter.kinds));
    }
    if let Some(tag) = &filter.tag {
        object.insert(format!("#{}", tag.letter), json!(tag.values));
    }
    if let Some(since) = window.since {
        object.insert("since".into(), json!(since));
    }
    if let Some(until) = window.until {
        object.insert("until".into(), json!(until));
    }
    if let Some(limit) = window.limit {
        object.insert("limit".into(), json!(limit));
    }
    Value::Object(object)
}

/// `["REQ", <id>, <filter>...]`.
pub fn req(sub_id: &str, filters: &[Filter], window: Window) -> String {
    let mut message = vec![json!("REQ"), json!(sub_id)];
    message.extend(filters.iter().map(|f| filter_json(f, window)));
    Value::Array(message).to_string()
}

/// `["CLOSE", <id>]`.
pub fn close(sub_id: &str) -> String {
    json!(["CLOSE", sub_id]).to_string()
}

/// `["REQ", <id>, {"ids": [...]}]`: the events a reconciliation found missing.
pub fn req_ids(sub_id: &str, ids: &[nostr::event::EventId]) -> String {
    let ids: Vec<String> = ids.iter().map(|id| id.to_hex()).collect();
    json!(["REQ", sub_id, {"ids": ids}]).to_string()
}

/// `["NEG-OPEN", <id>, <filter>, <hex message>]`.
pub fn neg_open(sub_id: &str, filter: &Filter, hex_message: &str) -> String {
    json!([
        "NEG-OPEN",
        sub_id,
        filter_json(filter, Window::default()),
        hex_message
    ])
    .to_string()
}

/// `["NEG-MSG", <id>, <hex message>]`.
pub fn neg_msg(sub_id: &str, hex_message: &str) -> String {
    json!(["NEG-MSG", sub_id, hex_message]).to_string()
}

/// `["NEG-CLOSE", <id>]`.
pub fn neg_close(sub_id: &str) -> String {
    json!(["NEG-CLOSE", sub_id]).to_string()
}

/// A message from a relay, as far as a follower cares.
#[derive(Debug)]
pub enum RelayMessage {
    Event {
        sub_id: String,
        event: Box<Event>,
    },
    Eose {
        sub_id: String,
    },
    Closed {
        sub_id: String,
        message: String,
    },
    Notice {
        message: String,
    },
    /// NIP-77: the relay's next reconciliation message (hex).
    NegMsg {
        sub_id: String,
        message: String,
    },
    /// NIP-77: the relay ended a reconciliation, with its reason.
    NegErr {
        sub_id: String,
        message: String,
    },
    /// AUTH, OK, COUNT and anything newer: nothing to do.
    Other,
}

/// Why a frame from a relay could not be understood.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Malformed(pub String);

pub fn parse(text: &str) -> Result<RelayMessage, Malformed> {
    let value: Value =
        serde_json::from_str(text).map_err(|e| Malformed(format!("not JSON: {e}")))?;
    let Value::Array(mut items) = value else {
        return Err(Malformed("not a JSON array".into()));
    };
    let string = |items: &[Value], i: usize| -> Result<String, Malformed> {
        items
            .get(i)
            .and_then(Value::as_str)
            .map(str::to_owned)
            .ok_or_else(|| Malformed(format!("element {i} is not a string")))
    };
    let verb = string(&items, 0)?;
    Ok(match verb.as_str() {
        "EVENT" => {
            let sub_id = string(&items, 1)?;
            let raw = items
                .get_mut(2)
                .map(Value::take)
                .ok_or_else(|| Malformed("EVENT without an event".into()))?;
            let event: Event = serde_json::from_value(raw)
                .map_err(|e| Malformed(format!("EVENT with a malformed event: {e}")))?;
            RelayMessage::Event {
                sub_id,
                event: Box::new(event),
            }
        }
        "EOSE" => RelayMessage::Eose {
            sub_id: string(&items, 1)?,
        },
        "CLOSED" => RelayMessage::Closed {
            sub_id: string(&items, 1)?,
            message: string(&items, 2).unwrap_or_default(),
        },
        "NOTICE" => RelayMessage::Notice {
            message: string(&items, 1).unwrap_or_default(),
        },
        "NEG-MSG" => RelayMessage::NegMsg {
            sub_id: string(&items, 1)?,
            message: string(&items, 2)?,
        },
        "NEG-ERR" => RelayMessage::NegErr {
            sub_id: string(&items, 1)?,
            message: string(&items, 2).unwrap_or_default(),
        },
        _ => RelayMessage::Other,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use graspd_core::follow::TagFilter;

    #[test]
    fn req_carries_kinds_tag_until_and_limit() {
        let filter = Filter {
            kinds: vec![30617, 30618],
            tag: Some(TagFilter {
                letter: 'd',
                values: vec!["a".into(), "b".into()],
            }),
        };
        let any = Filter {
            kinds: vec![],
            tag: None,
        };
        let window = Window {
            since: Some(1000),
            until: Some(1700),
            limit: Some(500),
        };
        let text = req("graspd-repos-0-h", &[filter, any], window);
        assert_eq!(
            text,
            r##"["REQ","graspd-repos-0-h",{"#d":["a","b"],"kinds":[30617,30618],"limit":500,"since":1000,"until":1700},{"limit":500,"since":1000,"until":1700}]"##
        );
        assert_eq!(close("x"), r#"["CLOSE","x"]"#);
    }

    #[test]
    fn parses_what_relays_send_and_refuses_garbage() {
        assert!(
            matches!(parse(r#"["EOSE","s"]"#), Ok(RelayMessage::Eose { sub_id }) if sub_id == "s")
        );
        assert!(matches!(
            parse(r#"["CLOSED","s","error: too many"]"#),
            Ok(RelayMessage::Closed { message, .. }) if message == "error: too many"
        ));
        assert!(matches!(
            parse(r#"["AUTH","challenge"]"#),
            Ok(RelayMessage::Other)
        ));
        assert!(parse("{}").is_err());
        assert!(parse(r#"["EVENT","s",{"id":"nope"}]"#).is_err());
        assert!(parse("[1]").is_err());
    }
}
