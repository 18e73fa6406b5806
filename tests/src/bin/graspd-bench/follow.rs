//! Follow-to-release latency (GRASP-02): server B follows server A's relay. A repository is
//! announced and pushed on A only; B learns the announcement and the state from A's relay,
//! fetches the data from A and serves the state. Compared with a plain `git fetch <A> <oid>`.

use std::time::{Duration, Instant};

use graspd_tests::git::WorkRepo;
use graspd_tests::nostr::{npub, RelayClient};
use graspd_tests::{Flavor, Server, ServerOptions};
use serde_json::json;

use crate::fixtures::owner;
use crate::report::ms;
use crate::sync::{announced_at, floor_fetch, SyncLatency};

/// B, following `a` from start-up, with its defaults otherwise (no shortened sync delays).
pub fn follower_of(flavor: Flavor, a: &Server) -> Server {
    Server::start_with(
        flavor,
        ServerOptions::default()
            .arg("--bootstrap-relay")
            .arg(a.ws_url())
            .arg("--allow-private-relays"),
    )
}

/// `runs` fresh repositories, each announced, stated and pushed on A only.
pub fn measure(a: &Server, b: &Server, work: &WorkRepo, runs: usize) -> SyncLatency {
    let owner = owner();
    let head = work.head();
    let mut result = SyncLatency::default();
    let mut relay_a = RelayClient::connect(&a.ws_url());
    let mut relay_b = RelayClient::connect(&b.ws_url());
    relay_b.subscribe("live", json!({"kinds": [30618], "limit": 0}));
    for run in 0..runs {
        let identifier = format!("follow-{run}-{}", std::process::id());
        let (ann, st) = announced_at(&owner, &identifier, &[&a.http_url(), &b.http_url()], &head);
        relay_a.publish(&ann);
        relay_a.publish(&st);
        let url_a = a.repo_url(&npub(&owner), &identifier);
        work.git(&["push", "-q", &url_a, "main"]);
        let pushed = Instant::now();
        if !relay_b.wait_for_event("live", &st.id.to_hex(), Duration::from_secs(30)) {
            eprintln!(
                "[graspd-bench] B never served {identifier}; log {}",
                b.data_dir.display()
            );
            result.stuck += 1;
            continue;
        }
        result.release.push(ms(pushed.elapsed()));
        result.floor.push(floor_fetch(&url_a, &head));
    }
    result
}
