//! Push-to-release latency: from `git push` returning to the state event reaching a live
//! subscriber on another connection.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use graspd_tests::git::{git_output, WorkRepo};
use graspd_tests::nostr::{npub, state, RelayClient};
use graspd_tests::Server;
use serde_json::json;

use crate::fixtures::{owner, served_repo};
use crate::report::ms;

pub struct PushLatency {
    /// Milliseconds from `git push` returning to delivery (negative: delivered before the
    /// push command had exited).
    pub after_push: Vec<f64>,
    /// Milliseconds the `git push` command itself took.
    pub push_command: Vec<f64>,
}

pub fn measure(server: &Server, pushes: usize) -> PushLatency {
    measure_across(server, server, server, pushes)
}

/// Pushes `main` to `url`; returns when the push that succeeded started. Another instance
/// than the one the state was published to knows the state once its notification arrived (a
/// few ms): until then it refuses the push, which is tried again.
fn push_once_heard(work: &WorkRepo, url: &str) -> Instant {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let started = Instant::now();
        let out = git_output(&work.dir, &["push", "-q", url, "main"]);
        if out.status.success() {
            return started;
        }
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            stderr.contains("no state event in purgatory matches") && Instant::now() < deadline,
            "git push {url} failed:\n{stderr}"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// [`measure`] with each state published to `publish_to`, pushed to `push_to` and watched
/// live on `watch` (instances sharing one store behind one public URL).
pub fn measure_across(
    publish_to: &Server,
    push_to: &Server,
    watch: &Server,
    pushes: usize,
) -> PushLatency {
    let server = publish_to;
    let owner = owner();
    let (work, _) = served_repo(server, "push-bench");
    let url = push_to.repo_url(&npub(&owner), "push-bench");

    // A subscriber thread timestamps every state as it arrives.
    let (arrived_tx, arrived_rx) = mpsc::channel::<(String, Instant)>();
    let ws = watch.ws_url();
    let author = owner.public_key().to_hex();
    let (ready_tx, ready_rx) = mpsc::channel();
    let stop = Arc::new(AtomicBool::new(false));
    let stopped = stop.clone();
    let subscriber = std::thread::spawn(move || {
        let mut sub = RelayClient::connect(&ws);
        sub.subscribe(
            "live",
            json!({"kinds": [30618], "authors": [author], "limit": 0}),
        );
        let _ = ready_tx.send(());
        while !stopped.load(Ordering::Relaxed) {
            let Some(msg) = sub.recv_until(Instant::now() + Duration::from_millis(300)) else {
                continue;
            };
            if msg[0] == "EVENT" {
                let id = msg[2]["id"].as_str().unwrap_or_default().to_owned();
                if arrived_tx.send((id, Instant::now())).is_err() {
                    return;
                }
            }
        }
    });
    ready_rx.recv().expect("subscriber ready");

    let mut publisher = RelayClient::connect(&server.ws_url());
    let mut result = PushLatency {
        after_push: Vec::with_capacity(pushes),
        push_command: Vec::with_capacity(pushes),
    };
    for i in 0..pushes {
        let commit = work.commit("README", &format!("push {i}\n"));
        // Strictly increasing created_at, all in the past.
        let st = state(
            &owner,
            "push-bench",
            &[("refs/heads/main", &commit)],
            Some("main"),
            i as i64 - 4000,
        );
        let reply = publisher.publish(&st);
        assert!(reply.accepted, "bench push state refused: {reply:?}");
        let id = st.id.to_hex();
        let started = push_once_heard(&work, &url);
        let pushed = Instant::now();
        let arrived = loop {
            let (got, at) = arrived_rx
                .recv_timeout(Duration::from_secs(60))
                .unwrap_or_else(|_| panic!("state {i} not released\n{}", server.log()));
            if got == id {
                break at;
            }
        };
        result.push_command.push(ms(pushed - started));
        result.after_push.push(if arrived >= pushed {
            ms(arrived - pushed)
        } else {
            -ms(pushed - arrived)
        });
    }
    stop.store(true, Ordering::Relaxed);
    let _ = subscriber.join();
    result
}
