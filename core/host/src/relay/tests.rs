//! Session and hub tests: hostile input, limits, stored and live delivery.

use std::sync::Arc;

use nostr::prelude::{Event, EventBuilder, FinalizeEvent, Keys, Kind, Signature, Tag, Timestamp};
use serde_json::{json, Value};

use super::*;

fn keys(n: u8) -> Keys {
    Keys::parse(&format!("{:064x}", u64::from(n) + 1)).unwrap()
}

fn event(kind: u16, created_at: u64, tags: &[&[&str]]) -> Event {
    let tags = tags.iter().map(|t| Tag::parse(t.iter().copied()).unwrap());
    EventBuilder::new(Kind::from(kind), "hello")
        .tags(tags)
        .custom_created_at(Timestamp::from(created_at))
        .finalize(&keys(1))
        .unwrap()
}

fn session() -> (Session, LiveFeed, Hub) {
    session_with(RelayLimits::default())
}

fn session_with(limits: RelayLimits) -> (Session, LiveFeed, Hub) {
    let hub = Hub::new();
    let (session, feed) = Session::new(limits, &hub);
    (session, feed, hub)
}

/// The frame an action sends, parsed; panics on other actions.
fn sent(action: Option<Action>) -> Value {
    match action {
        Some(Action::Send(frame)) => serde_json::from_str(&frame).unwrap(),
        other => panic!("expected a frame, got {other:?}"),
    }
}

/// Asserts a NOTICE whose text starts with `prefix`.
fn assert_notice(action: Option<Action>, prefix: &str) {
    let frame = sent(action);
    assert_eq!(frame[0], "NOTICE", "{frame}");
    let text = frame[1].as_str().unwrap();
    assert!(
        text.starts_with(prefix),
        "{text:?} does not start with {prefix:?}"
    );
}

fn assert_closed(action: Option<Action>, subscription_id: &str, prefix: &str) {
    let frame = sent(action);
    assert_eq!(frame[0], "CLOSED", "{frame}");
    assert_eq!(frame[1], subscription_id);
    let text = frame[2].as_str().unwrap();
    assert!(
        text.starts_with(prefix),
        "{text:?} does not start with {prefix:?}"
    );
}

fn assert_ok_false(action: Option<Action>, id: &str, message: &str) {
    let frame = sent(action);
    assert_eq!(frame, json!(["OK", id, false, message]));
}

fn req(subscription_id: &str, filters: &[Value]) -> String {
    let mut message = vec![json!("REQ"), json!(subscription_id)];
    message.extend(filters.iter().cloned());
    Value::Array(message).to_string()
}

fn expect_query(action: Option<Action>) -> Query {
    match action {
        Some(Action::Query(query)) => query,
        other => panic!("expected a query, got {other:?}"),
    }
}

#[test]
fn malformed_messages_get_a_notice() {
    let (mut s, _feed, _hub) = session();
    for text in [
        "",
        "not json",
        "{\"a\":1}",
        "[]",
        "[1, 2]",
        "[null]",
        "\"EVENT\"",
        "[\"REQ\"",
    ] {
        assert_notice(s.handle_text(text), "invalid:");
    }
    let nested = format!("{}{}", "[".repeat(10_000), "]".repeat(10_000));
    assert_notice(s.handle_text(&nested), "invalid:");
    assert_notice(Some(s.handle_binary()), "invalid:");
}

#[test]
fn unknown_and_unsupported_commands() {
    let (mut s, _feed, _hub) = session();
    assert_notice(s.handle_text(r#"["HELLO", 1]"#), "invalid: unknown command");
    let long = format!(r#"["{}"]"#, "X".repeat(100_000));
    let frame = sent(s.handle_text(&long));
    assert!(
        frame[1].as_str().unwrap().len() < 100,
        "the command is echoed truncated"
    );
    for command in ["AUTH", "COUNT", "NEG-OPEN"] {
        let text = format!(r#"["{command}", "x", {{}}]"#);
        assert_notice(s.handle_text(&text), "unsupported:");
    }
}

#[test]
fn oversized_messages_are_refused() {
    let limits = RelayLimits {
        max_message_bytes: 100,
        ..RelayLimits::default()
    };
    let (mut s, _feed, _hub) = session_with(limits);
    let big = req("sub", &[json!({ "#t": ["x".repeat(200)] })]);
    assert_notice(s.handle_text(&big), "invalid: message of");
    assert_eq!(s.subscription_count(), 0);
}

#[test]
fn event_arity_and_shape() {
    let (mut s, _feed, _hub) = session();
    let e = event(1, 1, &[]);
    assert_notice(
        s.handle_text(r#"["EVENT"]"#),
        "invalid: EVENT takes exactly one event",
    );
    let two = json!(["EVENT", e, e]).to_string();
    assert_notice(
        s.handle_text(&two),
        "invalid: EVENT takes exactly one event",
    );
    assert_notice(
        s.handle_text(r#"["EVENT", {"content": 5}]"#),
        "invalid: malformed event",
    );
    // With a readable id the refusal is an OK false for that id.
    let mut broken = serde_json::to_value(&e).unwrap();
    broken["kind"] = json!("one");
    let frame = sent(s.handle_text(&json!(["EVENT", broken]).to_string()));
    assert_eq!(frame[0], "OK");
    assert_eq!(frame[1], e.id.to_hex());
    assert_eq!(frame[2], false);
    assert!(frame[3]
        .as_str()
        .unwrap()
        .starts_with("invalid: malformed event"));
}

#[test]
fn events_are_verified_before_anything_else() {
    let (mut s, _feed, _hub) = session();
    let e = event(1621, 10, &[&["t", "x"]]);
    let mut tampered = serde_json::to_value(&e).unwrap();
    tampered["content"] = json!("changed");
    assert_ok_false(
        s.handle_text(&json!(["EVENT", tampered]).to_string()),
        &e.id.to_hex(),
        "invalid: bad event id",
    );

    let other = event(1621, 11, &[]);
    let mut forged = serde_json::to_value(&e).unwrap();
    forged["sig"] = json!(other.sig.to_hex());
    assert_ok_false(
        s.handle_text(&json!(["EVENT", forged]).to_string()),
        &e.id.to_hex(),
        "invalid: bad signature",
    );
    let zero_sig = Signature::from_slice(&[0u8; 64]).unwrap();
    let mut zeroed = serde_json::to_value(&e).unwrap();
    zeroed["sig"] = json!(zero_sig.to_hex());
    assert_ok_false(
        s.handle_text(&json!(["EVENT", zeroed]).to_string()),
        &e.id.to_hex(),
        "invalid: bad signature",
    );

    match s.handle_text(&json!(["EVENT", e]).to_string()) {
        Some(Action::Accept(accepted)) => assert_eq!(*accepted, e),
        other => panic!("expected Accept, got {other:?}"),
    }
}

#[test]
fn verdicts_become_ok_frames() {
    let e = event(1, 1, &[]);
    let ok: Value = serde_json::from_str(
        &Verdict::accepted("purgatory: won't be served until git data arrives").message(&e.id),
    )
    .unwrap();
    assert_eq!(
        ok,
        json!([
            "OK",
            e.id.to_hex(),
            true,
            "purgatory: won't be served until git data arrives"
        ])
    );
    let no: Value =
        serde_json::from_str(&Verdict::rejected("blocked: unrelated").message(&e.id)).unwrap();
    assert_eq!(no[2], false);
}

#[test]
fn subscription_ids_are_checked() {
    let (mut s, _feed, _hub) = session();
    for bad in [json!(""), json!(7), json!(null), json!("x".repeat(65))] {
        let text = json!(["REQ", bad, {}]).to_string();
        assert_notice(s.handle_text(&text), "invalid: REQ needs a subscription id");
    }
    assert_notice(
        s.handle_text(r#"["REQ"]"#),
        "invalid: REQ needs a subscription id",
    );
    // 64 characters, multi-byte ones included, is fine.
    let longest = "é".repeat(64);
    expect_query(s.handle_text(&req(&longest, &[json!({})])));
    assert_notice(
        s.handle_text(r#"["CLOSE"]"#),
        "invalid: CLOSE takes exactly one",
    );
    assert_notice(
        s.handle_text(r#"["CLOSE", 5]"#),
        "invalid: CLOSE needs a subscription id",
    );
    assert_notice(
        s.handle_text(r#"["CLOSE", "a", "b"]"#),
        "invalid: CLOSE takes exactly one",
    );
}

#[test]
fn filters_are_checked() {
    let (mut s, _feed, _hub) = session();
    assert_closed(
        s.handle_text(&req("a", &[])),
        "a",
        "invalid: REQ needs at least one filter",
    );
    let seventeen: Vec<Value> = (0..17).map(|_| json!({})).collect();
    assert_closed(
        s.handle_text(&req("a", &seventeen)),
        "a",
        "invalid: 17 filters",
    );
    assert_closed(
        s.handle_text(&req("a", &[json!([1])])),
        "a",
        "invalid: a filter must be",
    );
    assert_closed(
        s.handle_text(&req("a", &[json!({"ids": ["zz"]})])),
        "a",
        "invalid: bad filter",
    );
    assert_closed(
        s.handle_text(&req("a", &[json!({"since": -1})])),
        "a",
        "invalid: bad filter",
    );
    assert_closed(
        s.handle_text(&req("a", &[json!({"#e": [1]})])),
        "a",
        "invalid: bad filter",
    );
    assert_closed(
        s.handle_text(&req("a", &[json!({"search": "x"})])),
        "a",
        "unsupported:",
    );
    assert_eq!(s.subscription_count(), 0);

    let sixteen: Vec<Value> = (0..16).map(|i| json!({ "kinds": [i] })).collect();
    let query = expect_query(s.handle_text(&req("a", &sixteen)));
    assert_eq!(query.filters.len(), 16);
    assert_eq!(query.cap, RelayLimits::default().max_limit);
    assert_eq!(query.subscription_id, "a");
}

#[test]
fn subscription_count_is_limited_and_replacement_is_free() {
    let (mut s, _feed, _hub) = session();
    for i in 0..32 {
        expect_query(s.handle_text(&req(&format!("s{i}"), &[json!({})])));
    }
    assert_closed(
        s.handle_text(&req("s32", &[json!({})])),
        "s32",
        "error: too many",
    );
    expect_query(s.handle_text(&req("s5", &[json!({"kinds": [1]})])));
    assert_eq!(s.subscription_count(), 32);
    assert_eq!(s.handle_text(r#"["CLOSE", "s0"]"#), None);
    expect_query(s.handle_text(&req("s32", &[json!({})])));
    // Closing an unknown subscription is harmless.
    assert_eq!(s.handle_text(r#"["CLOSE", "nope"]"#), None);
}

#[test]
fn stored_events_end_with_eose_unless_the_subscription_moved_on() {
    let (mut s, _feed, _hub) = session();
    let e = event(1, 5, &[]);
    let first = expect_query(s.handle_text(&req("sub", &[json!({})])));
    let frames = s.stored_events(first.id, std::slice::from_ref(&e));
    let frames: Vec<Value> = frames
        .iter()
        .map(|f| serde_json::from_str(f).unwrap())
        .collect();
    assert_eq!(
        frames,
        vec![json!(["EVENT", "sub", e]), json!(["EOSE", "sub"])]
    );

    let second = expect_query(s.handle_text(&req("sub", &[json!({"kinds": [1]})])));
    assert!(
        s.stored_events(first.id, std::slice::from_ref(&e))
            .is_empty(),
        "replaced REQ"
    );
    assert_eq!(
        s.stored_events(second.id, &[]),
        vec![r#"["EOSE","sub"]"#.to_owned()]
    );
    s.handle_text(r#"["CLOSE", "sub"]"#);
    assert!(s.stored_events(second.id, &[]).is_empty(), "closed REQ");
}

#[test]
fn live_events_reach_only_matching_subscriptions() {
    let hub = Hub::new();
    let (mut s1, feed1) = Session::new(RelayLimits::default(), &hub);
    let (mut s2, feed2) = Session::new(RelayLimits::default(), &hub);
    expect_query(s1.handle_text(&req("issues", &[json!({"kinds": [1621]})])));
    expect_query(s1.handle_text(&req("repo", &[json!({"#a": ["30617:x:y"]})])));
    expect_query(s2.handle_text(&req("notes", &[json!({"kinds": [1]})])));

    let issue = event(1621, 1, &[&["a", "30617:x:y"]]);
    assert_eq!(hub.publish(issue.clone()), 1);
    let Some(Live::Event(live)) = feed1.try_next() else {
        panic!("s1 should have the issue")
    };
    let frames: Vec<Value> = s1
        .live_event(&live)
        .iter()
        .map(|f| serde_json::from_str(f).unwrap())
        .collect();
    assert_eq!(
        frames,
        vec![
            json!(["EVENT", "issues", issue]),
            json!(["EVENT", "repo", issue])
        ]
    );
    assert_eq!(feed2.try_next(), None);

    // `since` applies to live events too; `limit` does not.
    expect_query(s2.handle_text(&req(
        "notes",
        &[json!({"kinds": [1], "since": 10, "limit": 0})],
    )));
    assert_eq!(hub.publish(event(1, 5, &[])), 0);
    assert_eq!(hub.publish(event(1, 15, &[])), 1);
    assert!(matches!(feed2.try_next(), Some(Live::Event(_))));

    s2.handle_text(r#"["CLOSE", "notes"]"#);
    assert_eq!(hub.publish(event(1, 20, &[])), 0);
    assert_eq!(feed2.try_next(), None);
}

#[test]
fn a_slow_connection_is_dropped_not_buffered() {
    let limits = RelayLimits {
        live_queue: 2,
        ..RelayLimits::default()
    };
    let hub = Hub::new();
    let (mut slow, slow_feed) = Session::new(limits.clone(), &hub);
    let (mut fast, fast_feed) = Session::new(limits, &hub);
    expect_query(slow.handle_text(&req("all", &[json!({})])));
    expect_query(fast.handle_text(&req("all", &[json!({})])));
    for i in 0..3 {
        hub.publish(event(1, i, &[]));
        assert!(matches!(fast_feed.try_next(), Some(Live::Event(_))));
    }
    assert_eq!(slow_feed.try_next(), Some(Live::TooSlow));
    assert_eq!(
        futures_lite::future::block_on(slow_feed.next()),
        Live::TooSlow
    );
    assert_eq!(hub.connections(), 1);
    assert_eq!(hub.publish(event(1, 9, &[])), 1);
    assert_eq!(
        serde_json::from_str::<Value>(&messages::notice(messages::TOO_SLOW)).unwrap()[0],
        "NOTICE"
    );
}

#[test]
fn dropping_a_session_leaves_the_hub_and_close_all_ends_feeds() {
    let hub = Hub::new();
    let (s1, _feed1) = Session::new(RelayLimits::default(), &hub);
    let (_s2, feed2) = Session::new(RelayLimits::default(), &hub);
    assert_eq!(hub.connections(), 2);
    drop(s1);
    assert_eq!(hub.connections(), 1);
    hub.close_all();
    assert_eq!(hub.connections(), 0);
    assert_eq!(futures_lite::future::block_on(feed2.next()), Live::Closed);
}

#[test]
fn live_feed_wakes_a_waiting_reader() {
    let hub = Hub::new();
    let (mut s, feed) = Session::new(RelayLimits::default(), &hub);
    expect_query(s.handle_text(&req("all", &[json!({})])));
    let e = event(1, 1, &[]);
    let publisher = {
        let hub = hub.clone();
        let e = e.clone();
        std::thread::spawn(move || hub.publish(e))
    };
    let got = futures_lite::future::block_on(feed.next());
    assert_eq!(got, Live::Event(Arc::new(e)));
    assert_eq!(publisher.join().unwrap(), 1);
}
