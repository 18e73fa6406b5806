//! Bringing a follower level (GRASP-02): server B follows server A, hosts one of A's
//! repositories, and comes back after being down while A took issues for it. The time is from
//! B listening again to B's follower having learned every issue it lacked, and no more events
//! arriving; the events A sent B on the way stand in for the bytes. A reconciles by NIP-77
//! negentropy, or (`--max-negentropy-sessions 0`) makes B page its history with REQ.

use std::time::{Duration, Instant};

use graspd_tests::nostr::{keys, tagged, Event, RelayClient};
use graspd_tests::{Flavor, Server, ServerOptions};
use serde_json::json;

use crate::fixtures::publish_pipelined;

/// How B came back, and what it took to be level again.
pub struct Level {
    /// Issues B lacked when it came back.
    pub lacked: usize,
    pub elapsed: Duration,
    /// Events A sent B (new or already held).
    pub transferred: u64,
    /// Whether B learned every issue it lacked before the bound.
    pub complete: bool,
}

/// How long B may take to be level again.
const BOUND: Duration = Duration::from_secs(180);
/// B is level once no event has arrived for this long.
const QUIET: Duration = Duration::from_secs(2);

/// B lacking all of `issues` issues, then 1% more, then none, against A reconciling by
/// negentropy (`negentropy`) or paged REQ.
pub fn measure(flavor: Flavor, issues: usize, negentropy: bool) -> Vec<Level> {
    let mut a_options = unlimited();
    if !negentropy {
        a_options = a_options.flag("--max-negentropy-sessions", 0);
    }
    let a = Server::start_with(flavor, a_options);
    let mut b = Server::start_with(flavor, crate::follow::follower_options(&a));
    let coordinate = hosted_on_both(&a, &b);
    let mut levels = Vec::new();
    let mut next = 0;
    for lacked in [issues, issues / 100, 0] {
        b.kill9();
        let batch: Vec<Event> = (next..next + lacked)
            .map(|n| issue(&coordinate, n))
            .collect();
        next += lacked;
        let published = publish_pipelined(&a.ws_url(), &batch, 4);
        assert_eq!(
            published.accepted, lacked,
            "{:?}",
            published.first_rejection
        );
        b.restart();
        levels.push(wait_level(&b, lacked));
    }
    levels
}

/// Polls B's follower counters until it learned `lacked` events and nothing arrived for
/// [`QUIET`], or [`BOUND`] passed.
fn wait_level(b: &Server, lacked: usize) -> Level {
    let start = Instant::now();
    let mut last = (0, 0);
    let mut last_change = start;
    loop {
        let now = (
            sum_metric(b, "graspd_follow_events_learned_total"),
            sum_metric(b, "graspd_follow_duplicates_total"),
        );
        let at = Instant::now();
        if now != last {
            last = now;
            last_change = at;
        }
        let complete = now.0 >= lacked as u64;
        if (complete && at - last_change >= QUIET) || at - start >= BOUND {
            return Level {
                lacked,
                elapsed: last_change - start,
                transferred: now.0 + now.1,
                complete,
            };
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The sum of every labelled series of counter `name` on `server`.
fn sum_metric(server: &Server, name: &str) -> u64 {
    let body = graspd_tests::http::request(server.addr, "GET", "/metrics", &[], b"").text();
    body.lines()
        .filter(|l| l.starts_with(name) && l[name.len()..].starts_with(['{', ' ']))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum::<f64>() as u64
}

/// A repository on A whose announcement lists A and B, released on both (B learns it by
/// following A and fetches the data); returns its coordinate.
fn hosted_on_both(a: &Server, b: &Server) -> String {
    let (owner, _, st) = graspd_tests::fixtures::repository_on(a, b);
    let mut relay_b = RelayClient::connect(&b.ws_url());
    let deadline = Instant::now() + BOUND;
    while relay_b
        .query_ids(json!({"ids": [st.id.to_hex()]}))
        .is_empty()
    {
        assert!(
            Instant::now() < deadline,
            "B never served the state\n{}",
            b.log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    format!("30617:{}:demo", owner.public_key().to_hex())
}

fn issue(coordinate: &str, n: usize) -> Event {
    tagged(
        &keys(2),
        1621,
        &[&["a", coordinate], &["t", &format!("n{n}")]],
    )
}

/// A server that takes a bulk publish from one loopback address.
fn unlimited() -> ServerOptions {
    ServerOptions::default()
        .flag("--events-per-second-per-connection", 1_000_000)
        .flag("--events-per-second-per-address", 1_000_000)
}
