//! NIP-77 negentropy against graspd: a real client (nostr-sdk's `Client::sync`) reconciles
//! with the served events, a filter over the item cap is refused with `NEG-ERR`, and
//! malformed messages get `NEG-ERR` on a connection that stays usable; a server following
//! another reads its history by negentropy, and pages it when the other has NIP-77 off; the
//! issues of a repository a follower first learns arrive with it.
//! Each scenario runs against both server binaries.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use graspd_tests::fixtures::{hosted_repo, repository_on};
use graspd_tests::git::WorkRepo;
use graspd_tests::nostr::{
    announcement_with, eventually, keys, npub, state, tagged, Event, RelayClient,
};
use graspd_tests::{both_runtimes, Flavor, Server, ServerOptions};
use negentropy::{Negentropy, NegentropyStorageVector};
use nostr_sdk::prelude::{
    Client, Filter, Kind, MemoryDatabase, MemoryDatabaseOptions, SyncDirection, SyncOptions,
};
use serde_json::{json, Value};

/// Generous bound for replies on a loaded 2-core CI machine.
const SOON: Duration = Duration::from_secs(30);

/// A kind 1621 issue on the hosted repository `coordinate`, told apart by `n`.
fn issue(coordinate: &str, n: u32) -> Event {
    tagged(
        &keys(2),
        1621,
        &[&["a", coordinate], &["t", &format!("n{n}")]],
    )
}

fn ids(events: &[Event]) -> BTreeSet<String> {
    events.iter().map(|e| e.id.to_hex()).collect()
}

/// The hex initial message of a client that holds nothing.
fn empty_initial_message() -> String {
    let mut storage = NegentropyStorageVector::new();
    storage.seal().unwrap();
    let mut client = Negentropy::owned(storage, 0).unwrap();
    let message = client.initiate().unwrap();
    message.iter().map(|b| format!("{b:02x}")).collect()
}

/// The next frame answering subscription `id` (skipping others), within [`SOON`].
fn reply_for(relay: &mut RelayClient, id: &str) -> Value {
    let deadline = Instant::now() + SOON;
    while let Some(frame) = relay.recv_until(deadline) {
        if frame[1] == id {
            return frame;
        }
    }
    panic!("no reply for {id}");
}

fn refusals(server: &Server, limit: &str) -> f64 {
    server
        .metric(&format!(r#"graspd_refusals_total{{limit="{limit}"}}"#))
        .unwrap_or(0.0)
}

/// nostr-sdk syncs both ways: it receives what only graspd serves, sends what only it has
/// (graspd accepts those, as they tag a hosted repository), and is never offered an event
/// waiting in purgatory.
fn a_client_reconciles_with_graspd(flavor: Flavor) {
    let server = Server::start(flavor);
    let coordinate = hosted_repo(&server);
    let mut relay = RelayClient::connect(&server.ws_url());
    let shared: Vec<Event> = (0..20).map(|n| issue(&coordinate, n)).collect();
    let server_only: Vec<Event> = (20..25).map(|n| issue(&coordinate, n)).collect();
    let client_only: Vec<Event> = (25..28).map(|n| issue(&coordinate, n)).collect();
    for event in shared.iter().chain(&server_only) {
        assert!(relay.publish(event).accepted);
    }
    // A state whose commit nobody has: acknowledged into purgatory, never served.
    let waiting = state(
        &keys(1),
        "demo",
        &[("refs/heads/main", &"ab".repeat(20))],
        Some("main"),
        5,
    );
    let reply = relay.publish(&waiting);
    assert!(
        reply.accepted && reply.message.starts_with("purgatory:"),
        "{reply:?}"
    );

    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let (issues, states) = runtime.block_on(async {
        // The default memory database keeps no events; this client's local set must.
        let database = MemoryDatabase::with_opts(MemoryDatabaseOptions {
            events: true,
            max_events: None,
        });
        let client = Client::builder().database(database).build();
        for event in shared.iter().chain(&client_only) {
            client.database().save_event(event).await.unwrap();
        }
        client.add_relay(server.ws_url()).await.unwrap();
        client.connect().await;
        let both = SyncOptions::new().direction(SyncDirection::Both);
        let issues = client
            .sync(Filter::new().kind(Kind::from(1621)), &both)
            .await
            .unwrap();
        let states = client
            .sync(Filter::new().kind(Kind::from(30618)), &SyncOptions::new())
            .await
            .unwrap();
        client.shutdown().await;
        (issues, states)
    });
    assert!(issues.failed.is_empty(), "{:?}", issues.failed);
    let hexes = |set: &std::collections::HashSet<nostr_sdk::prelude::EventId>| -> BTreeSet<String> {
        set.iter().map(|id| id.to_hex()).collect()
    };
    assert_eq!(hexes(&issues.val.remote), ids(&server_only));
    assert_eq!(hexes(&issues.val.received), ids(&server_only));
    assert_eq!(hexes(&issues.val.local), ids(&client_only));
    assert_eq!(hexes(&issues.val.sent), ids(&client_only));
    let served: BTreeSet<String> = relay
        .query_ids(json!({"kinds": [1621]}))
        .into_iter()
        .collect();
    let everything: Vec<Event> = shared
        .iter()
        .chain(&server_only)
        .chain(&client_only)
        .cloned()
        .collect();
    assert_eq!(served, ids(&everything), "graspd took what it lacked");

    let received = hexes(&states.val.received);
    assert_eq!(received.len(), 1, "the served state only: {received:?}");
    assert!(!received.contains(&waiting.id.to_hex()));
    assert!(
        server
            .metric("graspd_negentropy_opened_total")
            .unwrap_or(0.0)
            >= 2.0,
        "NEG-OPENs are counted"
    );
}

/// A NEG-OPEN whose filter matches more served events than `--max-negentropy-items` gets
/// `NEG-ERR` `blocked: too many items` (a client falls back to REQ), counted; a narrower
/// filter on the same connection reconciles.
fn neg_open_over_the_item_cap_gets_neg_err(flavor: Flavor) {
    let server = Server::start_with(
        flavor,
        ServerOptions::default().flag("--max-negentropy-items", 3),
    );
    let coordinate = hosted_repo(&server);
    let mut relay = RelayClient::connect(&server.ws_url());
    for n in 0..4 {
        assert!(relay.publish(&issue(&coordinate, n)).accepted);
    }
    let initial = empty_initial_message();
    relay.send(json!(["NEG-OPEN", "big", {"kinds": [1621]}, initial]));
    let refused = reply_for(&mut relay, "big");
    assert_eq!(refused[0], "NEG-ERR", "{refused}");
    assert!(
        refused[2]
            .as_str()
            .unwrap()
            .starts_with("blocked: too many items"),
        "{refused}"
    );
    assert_eq!(refusals(&server, "negentropy_items"), 1.0);

    relay.send(json!(["NEG-OPEN", "small", {"kinds": [30617]}, initial]));
    let answer = reply_for(&mut relay, "small");
    assert_eq!(answer[0], "NEG-MSG", "{answer}");
}

/// Bad hex, a version byte outside NIP-77's range and an unknown session are answered
/// `NEG-ERR`; the connection stays open and REQ still works on it. NIP-11 lists 77.
fn malformed_negentropy_messages_get_neg_err(flavor: Flavor) {
    let server = Server::start(flavor);
    hosted_repo(&server);
    let mut relay = RelayClient::connect(&server.ws_url());
    let initial = empty_initial_message();
    let cases = [
        (
            json!(["NEG-OPEN", "hex", {}, "not hex"]),
            "invalid: the initial message is not hex",
        ),
        (json!(["NEG-OPEN", "version", {}, "51"]), "invalid:"),
        (
            json!(["NEG-MSG", "unknown", initial]),
            "closed: no negentropy session",
        ),
    ];
    for (message, reason) in cases {
        let id = message[1].as_str().unwrap().to_owned();
        relay.send(message);
        let reply = reply_for(&mut relay, &id);
        assert_eq!(reply[0], "NEG-ERR", "{reply}");
        assert!(reply[2].as_str().unwrap().starts_with(reason), "{reply}");
    }
    relay.send(json!(["NEG-OPEN", "ok", {}, initial]));
    assert_eq!(reply_for(&mut relay, "ok")[0], "NEG-MSG");
    relay.send(json!(["NEG-MSG", "ok", "zz"]));
    let reply = reply_for(&mut relay, "ok");
    assert_eq!(reply[0], "NEG-ERR", "{reply}");
    assert!(
        reply[2]
            .as_str()
            .unwrap()
            .starts_with("invalid: the message is not hex"),
        "{reply}"
    );
    assert_eq!(
        relay.query(json!({"kinds": [30617]})).len(),
        1,
        "REQ still works"
    );

    let nips = graspd_tests::http::nip11_document(server.addr)["supported_nips"].clone();
    assert!(
        nips.as_array().unwrap().contains(&json!(77)),
        "NIP-11 lists 77: {nips}"
    );
}

/// B follows A (its bootstrap relay): each history is read by negentropy (A counts the
/// NEG-OPENs, B the reconciliations, and nothing falls back), B serves the repository, and
/// after a restart B fetches only the events A got meanwhile.
fn a_follower_reconciles_by_negentropy(flavor: Flavor) {
    let a = Server::start(flavor);
    let mut b = Server::start_with(flavor, follower_of(&a));
    let (owner, ann, st) = repository_on(&a, &b);
    let relay_b = serves_both(&b, &ann, &st);
    let opened = a.metric("graspd_negentropy_opened_total").unwrap_or(0.0);
    assert!(opened >= 1.0, "A saw no NEG-OPEN\n{}", a.log());
    assert!(b.metric("graspd_follow_reconciled_total").unwrap_or(0.0) >= 1.0);
    assert_eq!(
        b.metric("graspd_follow_reconcile_fallbacks_total"),
        Some(0.0),
        "{}",
        b.log()
    );

    // B is down while A takes issues: on its return it reconciles and fetches them.
    drop(relay_b);
    b.kill9();
    let coordinate = format!("30617:{}:demo", owner.public_key().to_hex());
    let issues: Vec<Event> = (0..20).map(|n| issue(&coordinate, n)).collect();
    let mut relay_a = RelayClient::connect(&a.ws_url());
    for event in &issues {
        let reply = relay_a.publish(event);
        assert!(reply.accepted, "{}\n{}", reply.message, a.log());
    }
    b.restart();
    let mut relay_b = RelayClient::connect(&b.ws_url());
    assert!(
        eventually(Duration::from_secs(60), || ids(&issues)
            == relay_b
                .query_ids(json!({"kinds": [1621]}))
                .into_iter()
                .collect::<BTreeSet<_>>()),
        "B did not fetch what A got while it was down\n{}",
        b.log()
    );
    assert!(a.metric("graspd_negentropy_opened_total").unwrap_or(0.0) > opened);
}

/// A with negentropy off (`--max-negentropy-sessions 0`): NIP-11 omits 77, A refuses B's
/// NEG-OPENs with NEG-ERR, and B falls back to paging A's history with REQ.
fn a_follower_pages_a_relay_without_negentropy(flavor: Flavor) {
    let a = Server::start_with(
        flavor,
        ServerOptions::default().flag("--max-negentropy-sessions", 0),
    );
    let nips = graspd_tests::http::nip11_document(a.addr)["supported_nips"].clone();
    assert!(!nips.as_array().unwrap().contains(&json!(77)), "{nips}");
    let b = Server::start_with(flavor, follower_of(&a));
    let (_, ann, st) = repository_on(&a, &b);
    serves_both(&b, &ann, &st);
    assert!(refusals(&a, "negentropy_sessions") >= 1.0, "{}", a.log());
    assert_eq!(a.metric("graspd_negentropy_opened_total"), Some(0.0));
    assert!(
        b.metric("graspd_follow_reconcile_fallbacks_total")
            .unwrap_or(0.0)
            >= 1.0,
        "{}",
        b.log()
    );
}

/// B follows A and first learns of a repository whose issues A already serves: the issues
/// come in the same history as the announcement, before B hosts the repository (refused as
/// tagging nothing hosted), and arrive once B releases the announcement, without waiting for
/// another reconciliation.
fn issues_arrive_with_a_repository_first_followed(flavor: Flavor) {
    let a = Server::start(flavor);
    let b = Server::start_with(flavor, follower_of(&a));
    let owner = keys(1);
    let work = WorkRepo::init("work");
    let tip = work.commit("README", "followed\n");
    // First announced on A only, so B does not take it; A takes issues for it.
    let on_a = announcement_with(&owner, "demo", &[&a.http_url()], &[], &[], -10);
    let st = state(
        &owner,
        "demo",
        &[("refs/heads/main", &tip)],
        Some("main"),
        0,
    );
    let mut relay_a = RelayClient::connect(&a.ws_url());
    assert!(relay_a.publish(&on_a).accepted);
    assert!(relay_a.publish(&st).accepted);
    work.git(&["push", "-q", &a.repo_url(&npub(&owner), "demo"), "main"]);
    assert!(
        eventually(SOON, || !relay_a
            .query_ids(json!({"ids": [st.id.to_hex()]}))
            .is_empty()),
        "A did not serve its state\n{}",
        a.log()
    );
    let coordinate = format!("30617:{}:demo", owner.public_key().to_hex());
    let issues: Vec<Event> = (0..5).map(|n| issue(&coordinate, n)).collect();
    for event in &issues {
        assert!(relay_a.publish(event).accepted);
    }
    // Now it lists B too: B learns it, follows it and reads its history from A.
    let on_both = announcement_with(&owner, "demo", &[&a.http_url(), &b.http_url()], &[], &[], 0);
    assert!(relay_a.publish(&on_both).accepted);
    let mut relay_b = serves_both(&b, &on_both, &st);
    assert!(
        eventually(SOON, || ids(&issues)
            == relay_b
                .query_ids(json!({"kinds": [1621]}))
                .into_iter()
                .collect::<BTreeSet<_>>()),
        "B did not take the issues it read with the announcement\n{}",
        b.log()
    );
}

/// Waits until `b` serves the announcement and state it learned from the server it follows;
/// returns the client that saw them.
fn serves_both(b: &Server, ann: &Event, st: &Event) -> RelayClient {
    let mut relay_b = RelayClient::connect(&b.ws_url());
    assert!(
        eventually(Duration::from_secs(60), || relay_b
            .query_ids(json!({"ids": [st.id.to_hex(), ann.id.to_hex()]}))
            .len()
            == 2),
        "B did not learn and release the events\n{}",
        b.log()
    );
    relay_b
}

/// Options of a server B that follows `a` and fetches what it learns at once.
fn follower_of(a: &Server) -> ServerOptions {
    ServerOptions::default()
        .flag("--sync-delay-synced-ms", 100)
        .flag("--bootstrap-relay", a.ws_url())
        .arg("--allow-private-relays")
}

both_runtimes!(
    a_client_reconciles_with_graspd,
    neg_open_over_the_item_cap_gets_neg_err,
    malformed_negentropy_messages_get_neg_err,
    a_follower_reconciles_by_negentropy,
    a_follower_pages_a_relay_without_negentropy,
    issues_arrive_with_a_repository_first_followed,
);
