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

/// What an EVENT's action gives once the rate limits admit it (the connection asks them in
/// between): the verified event, or the frame answering it.
fn verified(action: Option<Action>) -> Result<Box<Event>, String> {
    match action {
        Some(Action::Admit(unverified)) => unverified.verify(),
        other => panic!("expected an EVENT to admit, got {other:?}"),
    }
}

/// The frame an action sends (an EVENT's once admitted), parsed; panics on other actions.
fn sent(action: Option<Action>) -> Value {
    let action = match action {
        Some(Action::Admit(unverified)) => match unverified.verify() {
            Err(frame) => Some(Action::Send(frame)),
            Ok(event) => panic!("expected a frame, got the verified event {event:?}"),
        },
        other => other,
    };
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
    for command in ["AUTH", "COUNT"] {
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

    match verified(s.handle_text(&json!(["EVENT", e]).to_string())) {
        Ok(accepted) => assert_eq!(*accepted, e),
        Err(frame) => panic!("expected the event verified, got {frame}"),
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
    let many: Vec<String> = (0..1001).map(|i| i.to_string()).collect();
    assert_closed(
        s.handle_text(&req("a", &[json!({ "#t": many })])),
        "a",
        "invalid: a filter field lists more than 1000",
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
    let frame = s.stored_event(first.id, &e.as_json()).unwrap();
    assert_eq!(
        serde_json::from_str::<Value>(&frame).unwrap(),
        json!(["EVENT", "sub", e])
    );
    assert_eq!(
        s.end_of_stored(first.id).as_deref(),
        Some(r#"["EOSE","sub"]"#)
    );

    let second = expect_query(s.handle_text(&req("sub", &[json!({"kinds": [1]})])));
    assert_eq!(s.stored_event(first.id, &e.as_json()), None, "replaced REQ");
    assert_eq!(s.end_of_stored(first.id), None, "replaced REQ");
    assert_eq!(
        s.end_of_stored(second.id).as_deref(),
        Some(r#"["EOSE","sub"]"#)
    );
    s.handle_text(r#"["CLOSE", "sub"]"#);
    assert_eq!(s.end_of_stored(second.id), None, "closed REQ");
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

/// Every reply to any input is one well-formed NOTICE, CLOSED, OK or NEG-ERR frame, and
/// nothing panics.
fn replies_are_well_formed(text: &str) -> bool {
    let (mut s, _feed, _hub) = session();
    match s.handle_text(text) {
        None => true,
        Some(Action::Send(frame) | Action::Refused { frame, .. }) => {
            let frame: Value = serde_json::from_str(&frame).unwrap();
            matches!(
                frame[0].as_str(),
                Some("NOTICE" | "CLOSED" | "OK" | "NEG-ERR")
            )
        }
        // No filters left is a REQ whose filters all list nothing (`"ids": []`): EOSE only.
        Some(Action::Query(query)) => query.filters.len() <= RelayLimits::default().max_filters,
        Some(Action::Reconcile(open)) => open.filters.len() <= 1,
        Some(Action::Admit(unverified)) => match unverified.verify() {
            Ok(event) => event.verify().is_ok(),
            Err(frame) => {
                let frame: Value = serde_json::from_str(&frame).unwrap();
                matches!(frame[0].as_str(), Some("NOTICE" | "OK"))
            }
        },
    }
}

#[test]
fn arbitrary_text_never_panics() {
    fn prop(text: String) -> bool {
        replies_are_well_formed(&text)
    }
    quickcheck::QuickCheck::new()
        .tests(2_000)
        .quickcheck(prop as fn(String) -> bool);
}

#[test]
fn arbitrary_command_shaped_json_never_panics() {
    // Pieces that make up near-valid messages, so the property reaches deep into the parser.
    const PIECES: [&str; 16] = [
        "\"EVENT\"",
        "\"REQ\"",
        "\"CLOSE\"",
        "\"sub\"",
        "{}",
        "{\"kinds\":[1]}",
        "{\"#e\":[\"x\"]}",
        "{\"ids\":[]}",
        "{\"limit\":-1}",
        "{\"since\":1e99}",
        "null",
        "[]",
        "1",
        "\"\"",
        "{\"id\":\"00\"}",
        "{\"authors\":[\"zz\"]}",
    ];
    fn prop(picks: Vec<u8>) -> bool {
        let parts: Vec<&str> = picks
            .iter()
            .map(|p| PIECES[*p as usize % PIECES.len()])
            .collect();
        replies_are_well_formed(&format!("[{}]", parts.join(",")))
    }
    quickcheck::QuickCheck::new()
        .tests(2_000)
        .quickcheck(prop as fn(Vec<u8>) -> bool);
}

/// The pieces as a driver wires them: EVENT -> store -> hub -> another session's REQ.
#[test]
fn session_store_and_hub_work_together() {
    use crate::store::{InsertOutcome, Store};

    let dir = std::env::temp_dir().join(format!("graspd-relay-wiring-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let store = Store::open_in(&dir).unwrap();
    let hub = Hub::new();
    let (mut writer, _writer_feed) = Session::new(RelayLimits::default(), &hub);
    let (mut reader, reader_feed) = Session::new(RelayLimits::default(), &hub);

    let old = event(1621, 1, &[&["a", "30617:x:repo"]]);
    store.insert(&old).unwrap();
    let query = expect_query(reader.handle_text(&req("repo", &[json!({"#a": ["30617:x:repo"]})])));
    let stored = store.query_ids(&query.filters, query.cap).unwrap();
    let (texts, consumed) = store.load_json(&stored, usize::MAX).unwrap();
    assert_eq!((texts.len(), consumed), (1, 1), "one stored event");
    assert!(reader.stored_event(query.id, &texts[0]).is_some());

    let new = event(1621, 2, &[&["a", "30617:x:repo"]]);
    let Ok(accepted) = verified(writer.handle_text(&json!(["EVENT", new]).to_string())) else {
        panic!("valid event not accepted")
    };
    let verdict = match store.insert(&accepted).unwrap() {
        InsertOutcome::Stored { .. } => {
            hub.publish(*accepted.clone());
            Verdict::accepted("")
        }
        InsertOutcome::Duplicate => Verdict::accepted("duplicate: already have this event"),
        other => Verdict::rejected(format!("blocked: {other:?}")),
    };
    assert_eq!(
        verdict.message(&accepted.id),
        messages::ok(&new.id, true, "")
    );
    let Some(Live::Event(live)) = reader_feed.try_next() else {
        panic!("reader should see the new event live")
    };
    assert_eq!(
        reader.live_event(&live),
        vec![messages::event("repo", &new)]
    );
    drop(store);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn pieces_can_move_between_threads() {
    fn send_sync<T: Send + Sync>(_: &T) {}
    let hub = Hub::new();
    let (session, feed) = Session::new(RelayLimits::default(), &hub);
    send_sync(&hub);
    send_sync(&session);
    send_sync(&feed);
    fn send<T: Send>(_: T) {}
    send(feed.next());
    fn send_sync_type<T: Send + Sync>() {}
    send_sync_type::<crate::store::Store>();
}

#[test]
fn empty_value_lists_match_nothing_stored_or_live() {
    let (mut s, _feed, _hub) = session();
    for filter in [
        json!({"ids": []}),
        json!({"authors": [], "kinds": [1]}),
        json!({"kinds": []}),
        json!({"#e": []}),
    ] {
        let query = expect_query(s.handle_text(&req("sub", std::slice::from_ref(&filter))));
        assert!(query.filters.is_empty(), "{filter} was kept: {query:?}");
        assert!(
            s.live_event(&event(1, 1, &[])).is_empty(),
            "{filter} matched live"
        );
    }
    let query =
        expect_query(s.handle_text(&req("sub", &[json!({"ids": []}), json!({"kinds": [1]})])));
    assert_eq!(query.filters.len(), 1, "the other filter still counts");
}

// Test code from here on (the clock-read check stops at this line).
#[cfg(test)]
mod connection {
    //! `run_connection` over an in-memory socket, with a real store behind it.

    use std::pin::Pin;
    use std::task::{Context, Poll};

    use async_channel::{Receiver, Sender};
    use async_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
    use async_tungstenite::tungstenite::{Error as WsError, Message};
    use futures_lite::future::block_on;
    use futures_util::{Sink, Stream};

    use super::*;
    use crate::store::{InsertOutcome, Store};

    /// Frames the test sends in, frames the connection sends out.
    struct FakeSocket {
        incoming: Pin<Box<Receiver<Result<Message, WsError>>>>,
        outgoing: Sender<Message>,
    }

    impl Stream for FakeSocket {
        type Item = Result<Message, WsError>;
        fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
            self.incoming.as_mut().poll_next(cx)
        }
    }

    impl RelaySocket for FakeSocket {}

    impl Sink<Message> for FakeSocket {
        type Error = WsError;
        fn poll_ready(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Result<(), WsError>> {
            Poll::Ready(Ok(()))
        }
        fn start_send(self: Pin<&mut Self>, item: Message) -> Result<(), WsError> {
            self.outgoing
                .try_send(item)
                .map_err(|_| WsError::ConnectionClosed)
        }
        fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Result<(), WsError>> {
            Poll::Ready(Ok(()))
        }
        fn poll_close(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Result<(), WsError>> {
            let _ = self.outgoing.try_send(Message::Close(None));
            Poll::Ready(Ok(()))
        }
    }

    struct Backend {
        store: Store,
        hub: Hub,
        refusals: crate::refusals::Refusals,
        /// When set, each decision says it started, then waits for a go before storing.
        gate: Option<Gate>,
        /// When set, every EVENT is over the rate limits.
        over_rate: std::sync::atomic::AtomicBool,
    }

    struct Gate {
        started: Sender<()>,
        go: Receiver<()>,
    }

    impl Backend {
        fn new(dir: &std::path::Path, gate: Option<Gate>) -> std::sync::Arc<Backend> {
            std::sync::Arc::new(Backend {
                store: Store::open_in(dir).unwrap(),
                hub: Hub::new(),
                refusals: Default::default(),
                gate,
                over_rate: Default::default(),
            })
        }
    }

    impl RelayBackend for Backend {
        fn over_event_rate(&self) -> Option<(crate::refusals::Limit, String)> {
            let over = self.over_rate.load(std::sync::atomic::Ordering::Relaxed);
            over.then(|| {
                (
                    crate::refusals::Limit::EventsPerConnection,
                    "rate-limited: slow down".to_string(),
                )
            })
        }

        fn decide(&self, event: Event) -> BoxFuture<'static, Verdict> {
            let (store, hub) = (self.store.clone(), self.hub.clone());
            let gate = self
                .gate
                .as_ref()
                .map(|g| (g.started.clone(), g.go.clone()));
            Box::pin(async move {
                if let Some((started, go)) = gate {
                    started.send(()).await.unwrap();
                    go.recv().await.unwrap();
                }
                match store.insert(&event) {
                    Ok(InsertOutcome::Stored { .. }) => {
                        hub.publish(event);
                        Verdict::accepted("")
                    }
                    Ok(InsertOutcome::Duplicate) => Verdict::accepted("duplicate: have it"),
                    Ok(other) => Verdict::rejected(format!("blocked: {other:?}")),
                    Err(e) => Verdict::rejected(format!("error: {e}")),
                }
            })
        }

        fn query(
            &self,
            query: Query,
        ) -> BoxFuture<'static, Result<Vec<nostr::prelude::EventId>, String>> {
            let store = self.store.clone();
            Box::pin(async move {
                store
                    .query_ids(&query.filters, query.cap)
                    .map_err(|e| e.to_string())
            })
        }

        fn reconciliation_items(
            &self,
            open: &ReconcileOpen,
        ) -> BoxFuture<'static, Result<Vec<(u64, nostr::prelude::EventId)>, String>> {
            let (store, filters, cap) = (self.store.clone(), open.filters.clone(), open.cap);
            Box::pin(async move {
                store
                    .query_items(&filters, cap, &|_| true)
                    .map_err(|e| e.to_string())
            })
        }

        fn load(
            &self,
            ids: Vec<nostr::prelude::EventId>,
            max_bytes: usize,
        ) -> BoxFuture<'static, Result<(Vec<String>, usize), String>> {
            let store = self.store.clone();
            Box::pin(async move { store.load_json(&ids, max_bytes).map_err(|e| e.to_string()) })
        }

        fn now(&self) -> std::time::Instant {
            std::time::Instant::now()
        }

        fn sleep_until(&self, deadline: std::time::Instant) -> BoxFuture<'static, ()> {
            Box::pin(async move {
                smol::Timer::at(deadline).await;
            })
        }

        fn refusals(&self) -> &crate::refusals::Refusals {
            &self.refusals
        }
    }

    struct Client {
        to_relay: Sender<Result<Message, WsError>>,
        from_relay: Receiver<Message>,
        thread: std::thread::JoinHandle<()>,
    }

    impl Client {
        fn connect(backend: &std::sync::Arc<Backend>) -> Client {
            let (to_relay, incoming) = async_channel::unbounded();
            let (outgoing, from_relay) = async_channel::unbounded();
            let socket = FakeSocket {
                incoming: Box::pin(incoming),
                outgoing,
            };
            let backend = backend.clone();
            let thread = std::thread::spawn(move || {
                block_on(run_connection(
                    socket,
                    RelayLimits::default(),
                    &backend.hub,
                    &*backend,
                ))
            });
            Client {
                to_relay,
                from_relay,
                thread,
            }
        }

        fn send(&self, text: &str) {
            self.to_relay.try_send(Ok(Message::text(text))).unwrap();
        }

        fn receive(&self) -> Value {
            match block_on(self.from_relay.recv()).unwrap() {
                Message::Text(text) => serde_json::from_str(text.as_str()).unwrap(),
                other => panic!("expected text, got {other:?}"),
            }
        }
    }

    #[test]
    fn two_clients_publish_subscribe_and_leave() {
        let dir = std::env::temp_dir().join(format!("graspd-relay-conn-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let backend = Backend::new(&dir, None);
        let writer = Client::connect(&backend);
        let reader = Client::connect(&backend);

        reader.send(&req("live", &[json!({"kinds": [1621]})]));
        assert_eq!(reader.receive(), json!(["EOSE", "live"]));

        let e = event(1621, 7, &[]);
        writer.send(&json!(["EVENT", e]).to_string());
        assert_eq!(writer.receive(), json!(["OK", e.id.to_hex(), true, ""]));
        assert_eq!(reader.receive(), json!(["EVENT", "live", e]));

        writer.send("garbage");
        assert_eq!(writer.receive()[0], "NOTICE");
        writer.send(&req("old", &[json!({"ids": [e.id.to_hex()]})]));
        assert_eq!(writer.receive(), json!(["EVENT", "old", e]));
        assert_eq!(writer.receive(), json!(["EOSE", "old"]));

        // A client that vanishes ends its connection; one that closes gets its close echoed.
        drop(writer.to_relay);
        writer.thread.join().unwrap();
        reader.to_relay.try_send(Ok(Message::Close(None))).unwrap();
        assert_eq!(
            block_on(reader.from_relay.recv()).unwrap(),
            Message::Close(None)
        );
        reader.thread.join().unwrap();
        assert_eq!(backend.hub.connections(), 0);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn shutdown_closes_connections() {
        let dir = std::env::temp_dir().join(format!("graspd-relay-shut-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let backend = Backend::new(&dir, None);
        let client = Client::connect(&backend);
        client.send(&req("x", &[json!({})]));
        assert_eq!(client.receive(), json!(["EOSE", "x"]));
        backend.hub.close_all();
        match block_on(client.from_relay.recv()).unwrap() {
            Message::Close(Some(frame)) => assert_eq!(frame.code, CloseCode::Away),
            other => panic!("expected a close frame, got {other:?}"),
        }
        client.thread.join().unwrap();
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// A client's pipelined EVENTs are decided at once (the second starts before the first is
    /// answered), answered in the order they came, and a REQ after them sees both.
    #[test]
    fn pipelined_events_are_decided_together_and_a_req_waits_for_them() {
        let dir = std::env::temp_dir().join(format!("graspd-relay-pipe-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let (started, started_rx) = async_channel::unbounded();
        let (go_tx, go) = async_channel::unbounded();
        let backend = Backend::new(&dir, Some(Gate { started, go }));
        let client = Client::connect(&backend);
        let (a, b) = (event(1621, 7, &[]), event(1621, 8, &[]));
        client.send(&json!(["EVENT", a]).to_string());
        client.send(&json!(["EVENT", b]).to_string());
        client.send(&req("after", &[json!({"kinds": [1621]})]));
        // Both decisions are under way while neither has been answered (one at a time, the
        // second would never start: the bound turns that hang into a failure).
        for which in ["first", "second"] {
            let started =
                futures_lite::future::or(async { started_rx.recv().await.is_ok() }, async {
                    smol::Timer::after(std::time::Duration::from_secs(30)).await;
                    false
                });
            assert!(
                block_on(started),
                "the {which} EVENT's decision never started"
            );
        }
        assert!(client.from_relay.is_empty(), "nothing answered yet");
        go_tx.try_send(()).unwrap();
        go_tx.try_send(()).unwrap();
        assert_eq!(client.receive(), json!(["OK", a.id.to_hex(), true, ""]));
        assert_eq!(client.receive(), json!(["OK", b.id.to_hex(), true, ""]));
        assert_eq!(client.receive(), json!(["EVENT", "after", b]));
        assert_eq!(client.receive(), json!(["EVENT", "after", a]));
        assert_eq!(client.receive(), json!(["EOSE", "after"]));
        drop(client.to_relay);
        client.thread.join().unwrap();
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// Over the rate limits, an EVENT is refused before its signature is checked (a forged
    /// one gets `rate-limited`, not `invalid`): a flood costs the server no signature checks.
    #[test]
    fn the_rate_limits_are_asked_before_the_signature_is_checked() {
        let dir = std::env::temp_dir().join(format!("graspd-relay-rate-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let backend = Backend::new(&dir, None);
        let client = Client::connect(&backend);
        let (e, other) = (event(1621, 7, &[]), event(1621, 8, &[]));
        let mut forged = serde_json::to_value(&e).unwrap();
        forged["sig"] = json!(other.sig.to_hex());
        let forged = json!(["EVENT", forged]).to_string();

        client.send(&forged);
        assert_eq!(
            client.receive(),
            json!(["OK", e.id.to_hex(), false, "invalid: bad signature"])
        );
        backend
            .over_rate
            .store(true, std::sync::atomic::Ordering::Relaxed);
        client.send(&forged);
        assert_eq!(
            client.receive(),
            json!(["OK", e.id.to_hex(), false, "rate-limited: slow down"])
        );
        client.send(r#"["EVENT", {"content": "no id"}]"#);
        assert_eq!(
            client.receive(),
            json!(["NOTICE", "rate-limited: slow down"])
        );
        let limit = crate::refusals::Limit::EventsPerConnection;
        assert_eq!(backend.refusals.count(limit), 2);
        drop(client.to_relay);
        client.thread.join().unwrap();
        let _ = std::fs::remove_dir_all(&dir);
    }
}
