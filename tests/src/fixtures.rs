//! Server states that several scenarios start from.

use std::time::Duration;

use crate::git::WorkRepo;
use crate::nostr::{announcement, keys, npub, state, Event, Keys, RelayClient};
use crate::Server;
use serde_json::json;

/// A repository "demo" of `keys(1)`, announced, pushed and served, so that other events may
/// tag it; returns its `30617:<owner hex>:demo` coordinate.
pub fn hosted_repo(server: &Server) -> String {
    hosted_repo_of(server, &keys(1), "demo").coordinate
}

/// A repository hosted by [`hosted_repo_of`].
pub struct HostedRepo {
    /// `30617:<owner hex>:<identifier>`.
    pub coordinate: String,
    pub announcement: Event,
    pub state: Event,
    /// The commit `refs/heads/main` holds.
    pub tip: String,
}

/// `owner`'s repository `identifier`, announced, pushed and served.
pub fn hosted_repo_of(server: &Server, owner: &Keys, identifier: &str) -> HostedRepo {
    let url = server.repo_url(&npub(owner), identifier);
    let mut relay = RelayClient::connect(&server.ws_url());
    let ann = announcement(owner, identifier, &[&server.http_url()], &[]);
    assert!(relay.publish(&ann).accepted);
    let work = WorkRepo::init("work");
    let tip = work.commit("README", "hello\n");
    let st = state(
        owner,
        identifier,
        &[("refs/heads/main", &tip)],
        Some("main"),
        0,
    );
    assert!(relay.publish(&st).accepted);
    relay.subscribe("live", json!({"ids": [st.id.to_hex()]}));
    work.git(&["push", "-q", &url, "main"]);
    assert!(
        relay.wait_for_event("live", &st.id.to_hex(), Duration::from_secs(30)),
        "state not released after push\n{}",
        server.log()
    );
    HostedRepo {
        coordinate: format!("30617:{}:{identifier}", owner.public_key().to_hex()),
        announcement: ann,
        state: st,
        tip,
    }
}

/// A repository "demo" of `keys(1)` listing both servers, announced, stated and pushed on `a`
/// only (`b` learns it by following `a`); returns the owner, announcement and state.
pub fn repository_on(a: &Server, b: &Server) -> (Keys, Event, Event) {
    let owner = keys(1);
    let work = WorkRepo::init("work");
    let tip = work.commit("README", "followed\n");
    let ann = announcement(&owner, "demo", &[&a.http_url(), &b.http_url()], &[]);
    let st = state(
        &owner,
        "demo",
        &[("refs/heads/main", &tip)],
        Some("main"),
        0,
    );
    let mut relay_a = RelayClient::connect(&a.ws_url());
    assert!(relay_a.publish(&ann).accepted);
    assert!(relay_a.publish(&st).accepted);
    work.git(&["push", "-q", &a.repo_url(&npub(&owner), "demo"), "main"]);
    (owner, ann, st)
}
