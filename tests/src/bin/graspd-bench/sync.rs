//! Sync-to-release latency: server B is told of a state whose data is on server A and fetches
//! it; compared with a plain `git fetch <url> <oid>` of the same objects (the physical floor).

use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use graspd_tests::git::{git, WorkRepo};
use graspd_tests::nostr::{announcement, npub, state, Event, Keys, RelayClient};
use graspd_tests::{temp_dir, Server};
use serde_json::json;

use crate::fixtures::owner;
use crate::report::ms;

/// A repository of `commits` linear commits, built with `git fast-import` (seconds, not
/// minutes, for 10,000). Each commit changes one of 100 files.
pub fn linear_repo(commits: usize) -> WorkRepo {
    let work = WorkRepo::init("bench-sync");
    let mut stream = String::new();
    for i in 1..=commits {
        let msg = format!("commit {i}\n");
        let body = format!("line {i}\n");
        stream.push_str(&format!(
            "commit refs/heads/main\nmark :{i}\ncommitter bench <bench@graspd.invalid> {} +0000\n\
             data {}\n{msg}",
            1_700_000_000 + i,
            msg.len()
        ));
        if i > 1 {
            stream.push_str(&format!("from :{}\n", i - 1));
        }
        stream.push_str(&format!(
            "M 644 inline f{}\ndata {}\n{body}\n",
            i % 100,
            body.len()
        ));
    }
    let mut child = Command::new("git")
        .current_dir(&work.dir)
        .args(["fast-import", "--quiet"])
        .env("GIT_CONFIG_GLOBAL", "/dev/null")
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .stdin(Stdio::piped())
        .spawn()
        .expect("run git fast-import");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(stream.as_bytes())
        .expect("feed fast-import");
    assert!(child.wait().expect("fast-import").success());
    work.git(&["reset", "-q", "--hard", "main"]);
    work
}

/// An announcement of `owner`'s `identifier` listing `servers`, and a state putting `main` at
/// `head`.
pub fn announced_at(
    owner: &Keys,
    identifier: &str,
    servers: &[&str],
    head: &str,
) -> (Event, Event) {
    let ann = announcement(owner, identifier, servers, &[]);
    let st = state(
        owner,
        identifier,
        &[("refs/heads/main", head)],
        Some("main"),
        -10,
    );
    (ann, st)
}

/// Release latencies against the `git fetch` floor.
#[derive(Default)]
pub struct SyncLatency {
    /// Milliseconds from the state being published (on B, or pushed on A when B follows A)
    /// to B serving it.
    pub release: Vec<f64>,
    /// Milliseconds `git fetch <A> <oid>` takes into an empty bare repository.
    pub floor: Vec<f64>,
    /// States B accepted but had not fetched 30 s later.
    pub stuck: usize,
}

/// How B learns of each state whose data is on A.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Learns {
    /// A client publishes the announcement and the state to B; timed from that.
    FromClient,
    /// B follows A's relay; timed from the push to A.
    ByFollowingA,
}

/// `runs` fresh repositories with the content of `work`, each announced, stated and pushed on
/// A, then learned by B as `learns` says and synced from A.
pub fn measure(
    a: &Server,
    b: &Server,
    work: &WorkRepo,
    label: &str,
    runs: usize,
    learns: Learns,
) -> SyncLatency {
    let owner = owner();
    let head = work.head();
    let mut result = SyncLatency::default();
    let mut relay_a = RelayClient::connect(&a.ws_url());
    let mut relay_b = RelayClient::connect(&b.ws_url());
    relay_b.subscribe("live", json!({"kinds": [30618], "limit": 0}));
    for run in 0..runs {
        let identifier = format!("sync-{label}-{run}-{}", std::process::id());
        let (ann, st) = announced_at(&owner, &identifier, &[&a.http_url(), &b.http_url()], &head);
        relay_a.publish(&ann);
        relay_a.publish(&st);
        let url_a = a.repo_url(&npub(&owner), &identifier);
        work.git(&["push", "-q", &url_a, "main"]);
        let started = match learns {
            Learns::ByFollowingA => Instant::now(),
            Learns::FromClient => {
                relay_b.publish(&ann);
                let started = Instant::now();
                let reply = relay_b.publish(&st);
                assert!(reply.accepted, "B refused the state: {reply:?}");
                started
            }
        };
        if !relay_b.wait_for_event("live", &st.id.to_hex(), Duration::from_secs(30)) {
            eprintln!(
                "[graspd-bench] B never served {identifier}; log {}",
                b.data_dir.display()
            );
            result.stuck += 1;
            continue;
        }
        result.release.push(ms(started.elapsed()));
        result.floor.push(floor_fetch(&url_a, &head));
    }
    result
}

/// Time of `git fetch -q <url> <oid>` into a new bare repository.
fn floor_fetch(url: &str, oid: &str) -> f64 {
    let dir = temp_dir("bench-floor");
    git(&dir, &["init", "-q", "--bare"]);
    let started = Instant::now();
    git(&dir, &["fetch", "-q", url, oid]);
    let took = ms(started.elapsed());
    remove(&dir);
    took
}

fn remove(dir: &Path) {
    let _ = std::fs::remove_dir_all(dir);
}
