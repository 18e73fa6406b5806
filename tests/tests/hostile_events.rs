//! EVENTs from anonymous clients that try to fill the store or the purgatory: far-future
//! timestamps, deletions of nothing, floods of waiting events, EVENT floods. Each scenario
//! runs against both server binaries.

use graspd_tests::nostr::{
    announcement, announcement_with, keys, EventBuilder, Kind, RelayClient, Timestamp,
};
use graspd_tests::{both_runtimes, Flavor, Server};
use serde_json::json;

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

both_runtimes!(events_dated_far_in_the_future_are_refused);
