//! EVENTs from anonymous clients that try to fill the store or the purgatory: far-future
//! timestamps, deletions of nothing, floods of waiting events, EVENT floods. Each scenario
//! runs against both server binaries.

use std::time::{Duration, Instant};

use graspd_tests::attack::attacker;
use graspd_tests::fixtures::hosted_repo;
use graspd_tests::nostr::{
    announcement, announcement_with, deletion, eventually, keys, tagged, EventBuilder, Kind,
    RelayClient, Tag, Timestamp,
};
use graspd_tests::{both_runtimes, Flavor, Server, ServerOptions};
use serde_json::json;

/// Generous bound for replies on a loaded 2-core CI machine.
const SOON: Duration = Duration::from_secs(30);

const YEAR_SECS: i64 = 365 * 24 * 3600;

fn refusals(server: &Server, limit: &str) -> f64 {
    server
        .metric(&format!(r#"graspd_refusals_total{{limit="{limit}"}}"#))
        .unwrap_or(0.0)
}

/// Events dated more than `--max-future-skew-secs` ahead are refused and never served; a few
/// minutes ahead, and any time in the past, are fine.
fn events_dated_far_in_the_future_are_refused(flavor: Flavor) {
    let server = Server::start(flavor);
    let servers = [server.http_url()];
    let servers: Vec<&str> = servers.iter().map(String::as_str).collect();
    let mut relay = RelayClient::connect(&server.ws_url());

    let century = announcement_with(&keys(1), "later", &servers, &[], &[], 100 * YEAR_SECS);
    let end_of_time = EventBuilder::new(Kind::from(1621), "from the end of time")
        .custom_created_at(Timestamp::from(u64::MAX))
        .sign_with_keys(&keys(2))
        .unwrap();
    for (event, says) in [(&century, "100 years"), (&end_of_time, "years")] {
        let reply = relay.publish(event);
        assert!(!reply.accepted, "{reply:?}");
        assert!(
            reply.message.starts_with("invalid: created_at is ")
                && reply.message.contains(&format!("{says} in the future")),
            "{reply:?}"
        );
    }

    let soon = announcement_with(&keys(1), "soon", &servers, &[], &[], 5 * 60);
    let old = announcement_with(&keys(1), "old", &servers, &[], &[], -10 * YEAR_SECS);
    for event in [&soon, &old] {
        let reply = relay.publish(event);
        assert!(reply.accepted, "{reply:?}");
    }
    let now = announcement(&keys(3), "now", &servers, &[]);
    assert!(relay.publish(&now).accepted);

    let refused = [century.id.to_hex(), end_of_time.id.to_hex()];
    assert!(relay.query(json!({ "ids": refused })).is_empty());
    assert_eq!(refusals(&server, "created_at_future"), 2.0);
}

/// A kind 5 deletion is stored only if it deletes something its author has here, served or
/// waiting, and only within the size bounds; the store does not grow by anyone's deletions
/// of nothing.
fn deletions_must_delete_something_held_here(flavor: Flavor) {
    let server = Server::start(flavor);
    let coordinate = hosted_repo(&server);
    let url = server.http_url();
    let mut relay = RelayClient::connect(&server.ws_url());
    let owner_announcement = relay.query(json!({"kinds": [30617]}))[0]["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let author = keys(2);
    let hex = author.public_key().to_hex();
    let issue = tagged(&author, 1621, &[&["a", &coordinate]]);
    assert!(
        relay.publish(&issue).accepted,
        "an issue on the hosted repo"
    );
    let waiting = announcement(&author, "pending", &[&url], &[]);
    assert!(relay.publish(&waiting).accepted, "a waiting announcement");

    let nothing = format!("30617:{hex}:nothing");
    let unheld = [
        ("no tags", tagged(&author, 5, &[])),
        (
            "an id nobody has",
            tagged(&author, 5, &[&["e", &"ab".repeat(32)]]),
        ),
        (
            "someone else's event",
            tagged(&author, 5, &[&["e", &owner_announcement]]),
        ),
        (
            "someone else's coordinate",
            tagged(&author, 5, &[&["a", &coordinate]]),
        ),
        (
            "an own coordinate not held",
            tagged(&author, 5, &[&["a", &nothing]]),
        ),
    ];
    for (case, deletion) in &unheld {
        let reply = relay.publish(deletion);
        assert!(
            !reply.accepted
                && reply.message.starts_with("blocked: ")
                && reply.message.contains("deletes nothing held here"),
            "{case}: {reply:?}"
        );
    }
    let issue_tag = Tag::parse(["e", issue.id.to_hex().as_str()]).unwrap();
    let long = EventBuilder::new(Kind::from(5), "x".repeat(400 * 1024))
        .tags([issue_tag.clone()])
        .sign_with_keys(&author)
        .unwrap();
    let reply = relay.publish(&long);
    assert!(
        !reply.accepted && reply.message.contains("at most 1024 bytes"),
        "{reply:?}"
    );
    let many = EventBuilder::new(Kind::from(5), "")
        .tags(vec![issue_tag; 200])
        .sign_with_keys(&author)
        .unwrap();
    let reply = relay.publish(&many);
    assert!(
        !reply.accepted && reply.message.contains("at most 128 tags"),
        "{reply:?}"
    );
    assert!(
        relay.query(json!({"kinds": [5]})).is_empty(),
        "a refused deletion was stored"
    );
    assert_eq!(
        relay.query_ids(json!({"ids": [owner_announcement]})).len(),
        1,
        "someone else's deletion removed the owner's announcement"
    );

    // The author's own deletions of its served issue and its waiting announcement are taken.
    let of_issue = deletion(&author, &[&issue]);
    let reply = relay.publish(&of_issue);
    assert!(reply.accepted, "{reply:?}");
    assert!(relay.query(json!({"ids": [issue.id.to_hex()]})).is_empty());
    let of_waiting = tagged(&author, 5, &[&["a", &format!("30617:{hex}:pending")]]);
    let reply = relay.publish(&of_waiting);
    assert!(reply.accepted, "{reply:?}");
    let reply = relay.publish(&of_waiting);
    assert!(
        reply.accepted && reply.message.starts_with("duplicate:"),
        "{reply:?}"
    );
    assert_eq!(relay.query(json!({"kinds": [5]})).len(), 2);
    assert_eq!(refusals(&server, "deletion_not_held"), unheld.len() as f64);
    assert_eq!(refusals(&server, "deletion_too_large"), 2.0);
}

/// Sends `count` EVENTs without waiting, then reads their `OK` messages.
fn flood(client: &mut RelayClient, author: u8, count: usize) -> Vec<String> {
    let events: Vec<_> = (0..count)
        .map(|n| tagged(&keys(author), 1, &[&["t", &format!("flood-{n}")]]))
        .collect();
    for event in &events {
        let event: serde_json::Value = serde_json::to_value(event).unwrap();
        client.send(json!(["EVENT", event]));
    }
    let deadline = Instant::now() + SOON;
    let mut messages = Vec::new();
    while messages.len() < count {
        let Some(reply) = client.recv_until(deadline) else {
            break;
        };
        if reply[0] == "OK" {
            messages.push(reply[3].as_str().unwrap_or_default().to_owned());
        }
    }
    assert_eq!(messages.len(), count, "an EVENT went unanswered");
    messages
}

/// EVENTs beyond a connection's rate, or its address's over all its connections, are
/// answered `rate-limited:`; the connection stays open and is served again once its bucket
/// refills, and another address is not affected.
fn event_floods_are_rate_limited_per_connection_and_address(flavor: Flavor) {
    let server = Server::start_with(
        flavor,
        ServerOptions::default()
            .flag("--events-per-second-per-connection", 2)
            .flag("--event-burst-per-connection", 10)
            .flag("--events-per-second-per-address", 2)
            .flag("--event-burst-per-address", 15),
    );
    let url = server.http_url();
    let limited = |replies: &[String], says: &str| {
        replies
            .iter()
            .filter(|m| m.starts_with("rate-limited: ") && m.contains(says))
            .count()
    };
    // The connection's burst passes (taking 10 of its address's 15); it refuses the rest.
    let mut first = RelayClient::try_connect_from(&server.ws_url(), attacker(1)).unwrap();
    let replies = flood(&mut first, 2, 30);
    assert!(limited(&replies, "on this connection") >= 15, "{replies:?}");
    assert!(limited(&replies, "") <= 20, "the burst passes: {replies:?}");
    // Another connection from that address has a bucket of its own, but shares the address's.
    let mut second = RelayClient::try_connect_from(&server.ws_url(), attacker(1)).unwrap();
    let replies = flood(&mut second, 3, 10);
    assert!(limited(&replies, "from your address") >= 3, "{replies:?}");
    // Another address is not affected.
    let mut other = RelayClient::try_connect_from(&server.ws_url(), attacker(2)).unwrap();
    let fresh = announcement(&keys(4), "other", &[&url], &[]);
    let reply = other.publish(&fresh);
    assert!(reply.accepted, "{reply:?}");
    let replies = flood(&mut other, 4, 9);
    assert_eq!(limited(&replies, ""), 0, "{replies:?}");

    // Refused EVENTs close nothing: once the buckets refill, the flooding connection is served.
    let mut attempt = 0;
    let served = eventually(SOON, || {
        attempt += 1;
        let retry = announcement(&keys(2), &format!("retry-{attempt}"), &[&url], &[]);
        let reply = first.publish(&retry);
        assert!(
            reply.accepted || reply.message.starts_with("rate-limited: "),
            "{reply:?}"
        );
        reply.accepted
    });
    assert!(
        served,
        "the flooding connection was not served again within {SOON:?}"
    );
    assert!(refusals(&server, "events_per_connection") >= 15.0);
    assert!(refusals(&server, "events_per_address") >= 3.0);
}

/// One client address has at most `--max-waiting-per-address` events waiting, however many
/// keys it signs with; another address's announcements are still taken.
fn one_address_cannot_fill_purgatory(flavor: Flavor) {
    let server = Server::start_with(
        flavor,
        ServerOptions::default().flag("--max-waiting-per-address", 5),
    );
    let url = server.http_url();
    let mut flooder = RelayClient::try_connect_from(&server.ws_url(), attacker(1)).unwrap();
    for n in 0..5 {
        let fresh = announcement(&keys(10 + n), "spam", &[&url], &[]);
        let reply = flooder.publish(&fresh);
        assert!(
            reply.accepted && reply.message.starts_with("purgatory: "),
            "{reply:?}"
        );
    }
    let sixth = flooder.publish(&announcement(&keys(15), "spam", &[&url], &[]));
    assert!(
        !sixth.accepted
            && sixth.message.starts_with("rate-limited: ")
            && sixth.message.contains("5 events from your address"),
        "{sixth:?}"
    );
    let mut other = RelayClient::try_connect_from(&server.ws_url(), attacker(2)).unwrap();
    let reply = other.publish(&announcement(&keys(16), "mine", &[&url], &[]));
    assert!(
        reply.accepted && reply.message.starts_with("purgatory: "),
        "{reply:?}"
    );
    let waiting = server.metric(r#"graspd_purgatory_waiting{kind="announcement"}"#);
    assert_eq!(waiting, Some(6.0));
    assert_eq!(refusals(&server, "waiting_per_address"), 1.0);
}

both_runtimes!(
    events_dated_far_in_the_future_are_refused,
    deletions_must_delete_something_held_here,
    event_floods_are_rate_limited_per_connection_and_address,
    one_address_cannot_fill_purgatory,
);
