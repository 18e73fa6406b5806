//! Shared set-up: an announced and pushed repository, pre-signed bulk events, and pipelined
//! publishing over many WebSocket connections.

use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use graspd_tests::git::WorkRepo;
use graspd_tests::nostr::{announcement, keys, npub, sign, state, Event, Keys, RelayClient, Tag};
use graspd_tests::Server;
use serde_json::{json, Value};

/// Repository owner in every scenario.
pub fn owner() -> Keys {
    keys(1)
}

/// Author of the bulk issues and PRs.
pub fn contributor() -> Keys {
    keys(2)
}

pub fn coordinate(identifier: &str) -> String {
    format!("30617:{}:{identifier}", owner().public_key().to_hex())
}

fn tag(values: &[&str]) -> Tag {
    Tag::parse(values.iter().copied()).expect("tag")
}

/// Announces `identifier` on `server`, pushes one commit and waits until the state is
/// served. Returns the work repository and the commit.
pub fn served_repo(server: &Server, identifier: &str) -> (WorkRepo, String) {
    let owner = owner();
    let mut relay = RelayClient::connect(&server.ws_url());
    relay.publish(&announcement(
        &owner,
        identifier,
        &[&server.http_url()],
        &[],
    ));
    let work = WorkRepo::init("bench-work");
    let c1 = work.commit("README", "bench\n");
    let st = state(
        &owner,
        identifier,
        &[("refs/heads/main", &c1)],
        Some("main"),
        -5000,
    );
    assert!(relay.publish(&st).accepted);
    relay.subscribe("live", json!({"ids": [st.id.to_hex()]}));
    work.git(&[
        "push",
        "-q",
        &server.repo_url(&npub(&owner), identifier),
        "main",
    ]);
    assert!(
        relay.wait_for_event("live", &st.id.to_hex(), Duration::from_secs(60)),
        "bench fixture: state not released\n{}",
        server.log()
    );
    (work, c1)
}

/// `n` kind 1621 issues on `identifier`, each with a `t` tag `b<i % buckets>`: related events
/// that take the relay's full path (signature, acceptance by repository, store write).
pub fn issues(identifier: &str, n: usize, buckets: usize) -> Vec<Event> {
    let author = contributor();
    let a = coordinate(identifier);
    (0..n)
        .map(|i| {
            let tags = vec![
                tag(&["a", &a]),
                tag(&["t", &format!("b{}", i % buckets)]),
                tag(&["subject", &format!("issue {i}")]),
            ];
            sign(&author, 1621, tags, -((i % 3600) as i64))
        })
        .collect()
}

/// `n` kind 1618 PRs on `identifier` whose tips nobody has: each waits in purgatory.
pub fn waiting_prs(identifier: &str, n: usize, clone: &str) -> Vec<Event> {
    let author = contributor();
    let a = coordinate(identifier);
    let p = owner().public_key().to_hex();
    (0..n)
        .map(|i| {
            let commit = format!("{:040x}", 0xbe4c_0000_0000u64 + i as u64);
            let tags = vec![
                tag(&["a", &a]),
                tag(&["p", &p]),
                tag(&["subject", &format!("pr {i}")]),
                tag(&["c", &commit]),
                tag(&["clone", clone]),
            ];
            sign(&author, 1618, tags, 0)
        })
        .collect()
}

/// Outcome of a pipelined publish.
pub struct Published {
    pub accepted: usize,
    pub rejected: usize,
    pub first_rejection: Option<String>,
    pub elapsed: Duration,
}

impl Published {
    pub fn per_second(&self) -> f64 {
        (self.accepted + self.rejected) as f64 / self.elapsed.as_secs_f64()
    }
}

/// How many EVENTs one connection keeps unanswered.
const WINDOW: usize = 32;

/// Publishes `events` split over `connections` WebSockets, each keeping up to [`WINDOW`]
/// EVENTs unanswered; the clock runs from all connections open to the last OK.
pub fn publish_pipelined(ws_url: &str, events: &[Event], connections: usize) -> Published {
    let json: Vec<Value> = events
        .iter()
        .map(|e| serde_json::from_str(&serde_json::to_string(e).unwrap()).unwrap())
        .collect();
    let chunk = json.len().div_ceil(connections).max(1);
    let chunks: Vec<Vec<Value>> = json.chunks(chunk).map(<[Value]>::to_vec).collect();
    let barrier = Arc::new(Barrier::new(chunks.len() + 1));
    let handles: Vec<_> = chunks
        .into_iter()
        .map(|chunk| {
            let barrier = barrier.clone();
            let url = ws_url.to_owned();
            std::thread::spawn(move || {
                let mut relay = RelayClient::connect(&url);
                barrier.wait();
                publish_window(&mut relay, &chunk)
            })
        })
        .collect();
    barrier.wait();
    let start = Instant::now();
    let mut total = Published {
        accepted: 0,
        rejected: 0,
        first_rejection: None,
        elapsed: Duration::ZERO,
    };
    for h in handles {
        let (ok, no, why) = h.join().expect("publisher thread");
        total.accepted += ok;
        total.rejected += no;
        total.first_rejection = total.first_rejection.or(why);
    }
    total.elapsed = start.elapsed();
    total
}

fn publish_window(relay: &mut RelayClient, events: &[Value]) -> (usize, usize, Option<String>) {
    let (mut sent, mut answered, mut accepted) = (0, 0, 0);
    let mut first_rejection = None;
    let deadline = Instant::now() + Duration::from_secs(600);
    while answered < events.len() {
        while sent < events.len() && sent - answered < WINDOW {
            relay.send(json!(["EVENT", events[sent]]));
            sent += 1;
        }
        let Some(msg) = relay.recv_until(deadline) else {
            panic!("bench: relay stopped answering after {answered} OKs");
        };
        if msg[0] == "OK" {
            answered += 1;
            if msg[2].as_bool() == Some(true) {
                accepted += 1;
            } else if first_rejection.is_none() {
                first_rejection = Some(msg[3].as_str().unwrap_or_default().to_owned());
            }
        }
    }
    (accepted, answered - accepted, first_rejection)
}
