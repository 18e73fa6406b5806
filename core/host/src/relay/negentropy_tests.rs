//! NIP-77 through the session: a real negentropy client reconciles with it, and malformed or
//! over-limit messages get `NEG-ERR` without harming the connection.

use ::negentropy::{Id, Negentropy, NegentropyStorageVector};
use nostr::prelude::EventId;
use serde_json::{json, Value};

use super::negentropy::NegentropyLimits;
use super::*;
use crate::hex;
use crate::refusals::Limit;

fn id(n: u8) -> EventId {
    EventId::from_byte_array([n; 32])
}

fn session_with(negentropy: NegentropyLimits) -> (Session, LiveFeed, Hub) {
    let hub = Hub::new();
    let limits = RelayLimits {
        negentropy,
        ..RelayLimits::default()
    };
    let (session, feed) = Session::new(limits, &hub);
    (session, feed, hub)
}

fn client(items: &[(u64, EventId)]) -> Negentropy<'static, NegentropyStorageVector> {
    super::negentropy::negentropy_over(items, 0).unwrap()
}

fn neg_open(subscription_id: &str, filter: Value, message: &str) -> String {
    json!(["NEG-OPEN", subscription_id, filter, message]).to_string()
}

fn frame_of(action: Action) -> Value {
    match action {
        Action::Send(frame) | Action::Refused { frame, .. } => {
            serde_json::from_str(&frame).unwrap()
        }
        other => panic!("expected a frame, got {other:?}"),
    }
}

fn expect_open(action: Option<Action>) -> ReconcileOpen {
    match action {
        Some(Action::Reconcile(open)) => open,
        other => panic!("expected a reconciliation, got {other:?}"),
    }
}

fn assert_neg_err(frame: &Value, subscription_id: &str, prefix: &str) {
    assert_eq!(frame[0], "NEG-ERR", "{frame}");
    assert_eq!(frame[1], subscription_id, "{frame}");
    let reason = frame[2].as_str().unwrap();
    assert!(reason.starts_with(prefix), "{reason:?} vs {prefix:?}");
}

/// The client learns exactly what only the relay has and what only it has, over as many
/// rounds as the frame size needs.
#[test]
fn a_negentropy_client_reconciles_with_the_session() {
    let small_frames = NegentropyLimits {
        frame_bytes: 4096,
        ..NegentropyLimits::default()
    };
    let (mut s, _feed, _hub) = session_with(small_frames);
    let items = |tag: u8, count: u32, first: u64| -> Vec<(u64, EventId)> {
        (0..count)
            .map(|n| {
                let mut bytes = [tag; 32];
                bytes[..4].copy_from_slice(&n.to_be_bytes());
                (first + u64::from(n), EventId::from_byte_array(bytes))
            })
            .collect()
    };
    let shared = items(1, 2000, 1_000);
    // 300 ids (9.6 KB) cannot be listed in one 4 KiB frame.
    let relay_only = items(2, 300, 500);
    let client_only = [(6, id(0xb1))];
    let relay_items: Vec<_> = shared.iter().chain(&relay_only).copied().collect();
    let client_items: Vec<_> = shared.iter().chain(&client_only).copied().collect();

    let mut negentropy = client(&client_items);
    let initial = hex::encode(&negentropy.initiate().unwrap());
    let open = expect_open(s.handle_text(&neg_open("n", json!({"kinds": [1]}), &initial)));
    assert_eq!(open.cap, NegentropyLimits::default().max_items + 1);
    let mut reply = frame_of(s.start_reconciliation(open, &relay_items));
    assert_eq!(s.reconciliation_count(), 1);
    let (mut have, mut need) = (Vec::new(), Vec::new());
    let mut rounds = 0;
    loop {
        assert_eq!(reply[0], "NEG-MSG", "{reply}");
        let message = hex::decode(reply[2].as_str().unwrap()).unwrap();
        let next = negentropy
            .reconcile_with_ids(&message, &mut have, &mut need)
            .unwrap();
        let Some(next) = next else { break };
        rounds += 1;
        assert!(rounds < 50, "reconciliation does not end");
        let text = json!(["NEG-MSG", "n", hex::encode(&next)]).to_string();
        reply = frame_of(s.handle_text(&text).unwrap());
    }
    assert!(rounds > 1, "4 KiB frames need more than one round");
    need.sort();
    let mut expected: Vec<Id> = relay_only
        .iter()
        .map(|(_, id)| Id::from_byte_array(id.to_bytes()))
        .collect();
    expected.sort();
    assert_eq!(need, expected);
    assert_eq!(have, vec![Id::from_byte_array(id(0xb1).to_bytes())]);
    assert_eq!(s.handle_text(r#"["NEG-CLOSE", "n"]"#), None);
    assert_eq!(s.reconciliation_count(), 0);
}

#[test]
fn too_many_items_are_refused_so_the_client_uses_req() {
    let (mut s, _feed, _hub) = session_with(NegentropyLimits {
        max_items: 2,
        ..NegentropyLimits::default()
    });
    let initial = hex::encode(&client(&[]).initiate().unwrap());
    let open = expect_open(s.handle_text(&neg_open("n", json!({}), &initial)));
    assert_eq!(open.cap, 3, "one more than allowed, to tell too many");
    let items = [(1, id(1)), (2, id(2)), (3, id(3))];
    let action = s.start_reconciliation(open.clone(), &items);
    assert!(
        matches!(
            &action,
            Action::Refused {
                limit: Limit::NegentropyItems,
                ..
            }
        ),
        "{action:?}"
    );
    assert_neg_err(&frame_of(action), "n", "blocked: too many items");
    assert_eq!(s.reconciliation_count(), 0);
    let fits = frame_of(s.start_reconciliation(open, &items[..2]));
    assert_eq!(fits[0], "NEG-MSG", "{fits}");
}

#[test]
fn sessions_per_connection_are_capped_and_zero_turns_negentropy_off() {
    let initial = hex::encode(&client(&[]).initiate().unwrap());
    let (mut s, _feed, _hub) = session_with(NegentropyLimits {
        max_sessions: 2,
        ..NegentropyLimits::default()
    });
    for sub in ["a", "b"] {
        let open = expect_open(s.handle_text(&neg_open(sub, json!({}), &initial)));
        frame_of(s.start_reconciliation(open, &[]));
    }
    // Reopening an open id replaces it rather than counting twice.
    let open = expect_open(s.handle_text(&neg_open("a", json!({}), &initial)));
    frame_of(s.start_reconciliation(open, &[]));
    let refused = s.handle_text(&neg_open("c", json!({}), &initial)).unwrap();
    assert!(
        matches!(
            &refused,
            Action::Refused {
                limit: Limit::NegentropySessions,
                ..
            }
        ),
        "{refused:?}"
    );
    assert_neg_err(
        &frame_of(refused),
        "c",
        "blocked: too many negentropy sessions",
    );
    s.handle_text(r#"["NEG-CLOSE", "b"]"#);
    expect_open(s.handle_text(&neg_open("c", json!({}), &initial)));

    let (mut off, _feed, _hub) = session_with(NegentropyLimits {
        max_sessions: 0,
        ..NegentropyLimits::default()
    });
    let refused = frame_of(
        off.handle_text(&neg_open("a", json!({}), &initial))
            .unwrap(),
    );
    assert_neg_err(&refused, "a", "blocked: negentropy (NIP-77) is turned off");
}

/// Bad hex, a version byte outside NIP-77's range and unknown ids are answered `NEG-ERR`,
/// end only the reconciliation concerned, and leave REQ working.
#[test]
fn malformed_negentropy_messages_get_neg_err() {
    let (mut s, _feed, _hub) = session_with(NegentropyLimits::default());
    let initial = hex::encode(&client(&[]).initiate().unwrap());
    assert_neg_err(
        &frame_of(s.handle_text(&neg_open("n", json!({}), "zz")).unwrap()),
        "n",
        "invalid: the initial message is not hex",
    );
    let open = expect_open(s.handle_text(&neg_open("n", json!({}), "51")));
    assert_neg_err(
        &frame_of(s.start_reconciliation(open, &[])),
        "n",
        "invalid:",
    );
    assert_neg_err(
        &frame_of(
            s.handle_text(&neg_open("n", json!({"search": "x"}), &initial))
                .unwrap(),
        ),
        "n",
        "unsupported: search",
    );
    assert_neg_err(
        &frame_of(s.handle_text(r#"["NEG-OPEN", "n", {}]"#).unwrap()),
        "n",
        "invalid: NEG-OPEN takes",
    );

    let open = expect_open(s.handle_text(&neg_open("n", json!({}), &initial)));
    frame_of(s.start_reconciliation(open, &[(1, id(1))]));
    assert_neg_err(
        &frame_of(s.handle_text(r#"["NEG-MSG", "n", "xyz"]"#).unwrap()),
        "n",
        "invalid: the message is not hex",
    );
    assert_eq!(s.reconciliation_count(), 0, "a malformed message ends it");
    assert_neg_err(
        &frame_of(s.handle_text(r#"["NEG-MSG", "n", "61"]"#).unwrap()),
        "n",
        "closed: no negentropy session",
    );
    // A newer protocol version is answered with ours (NIP-77's version negotiation).
    let open = expect_open(s.handle_text(&neg_open("v", json!({}), "62")));
    let reply = frame_of(s.start_reconciliation(open, &[]));
    assert_eq!(reply, json!(["NEG-MSG", "v", "61"]));

    let req = json!(["REQ", "r", {"kinds": [1]}]).to_string();
    assert!(matches!(s.handle_text(&req), Some(Action::Query(_))));
}
