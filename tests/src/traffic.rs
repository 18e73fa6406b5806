//! Legitimate users' operations, each timed, that report a failure instead of panicking: what
//! a soak or a benchmark under attack runs alongside the attackers, from 127.0.0.1.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use serde_json::json;

use crate::git::{git_output, WorkRepo};
use crate::nostr::{announcement, npub, repo_coordinate, state, tagged, Event, Keys, RelayClient};
use crate::Server;

/// How long a maintainer's first state may take to be released.
const RELEASE_TIMEOUT: Duration = Duration::from_secs(60);

/// A repository's owner: publishes a new state for each new commit and pushes it.
pub struct Maintainer {
    keys: Keys,
    identifier: String,
    /// The clone URL.
    pub url: String,
    pub work: WorkRepo,
    relay: RelayClient,
    /// `created_at` offset of the next state: strictly increasing, so each state replaces the
    /// last, and in the past so that the states of a long run never reach the future.
    next_created: i64,
    /// The last state acknowledged and pushed: (event id, commit).
    pub last_pushed: Option<(String, String)>,
}

impl Maintainer {
    /// Announces `identifier` on `server`, pushes a first commit and waits until its state is
    /// served. Panics on failure: this is set-up, not the traffic measured.
    pub fn host(server: &Server, keys: Keys, identifier: &str) -> Maintainer {
        let mut relay = RelayClient::connect(&server.ws_url());
        let reply = relay.publish(&announcement(&keys, identifier, &[&server.http_url()], &[]));
        assert!(reply.accepted, "announcement refused: {reply:?}");
        let mut maintainer = Maintainer {
            url: server.repo_url(&npub(&keys), identifier),
            keys,
            identifier: identifier.to_owned(),
            work: WorkRepo::init("maintainer"),
            relay,
            next_created: -100_000,
            last_pushed: None,
        };
        maintainer
            .push_next()
            .unwrap_or_else(|e| panic!("first push: {e}\n{}", server.log()));
        let (id, _) = maintainer.last_pushed.clone().unwrap();
        maintainer.relay.subscribe("released", json!({"ids": [id]}));
        assert!(
            maintainer
                .relay
                .wait_for_event("released", &id, RELEASE_TIMEOUT),
            "first state not released\n{}",
            server.log()
        );
        maintainer
    }

    /// The `30617:<owner>:<identifier>` coordinate that issues tag.
    pub fn coordinate(&self) -> String {
        repo_coordinate(&self.keys, &self.identifier)
    }

    /// Commits a change, publishes a state for it and pushes it; returns how long `git push`
    /// took.
    pub fn push_next(&mut self) -> Result<Duration, String> {
        let n = -self.next_created;
        let commit = self.work.commit("README", &format!("change {n}\n"));
        self.push_commit(&commit)
    }

    /// Publishes a state with `main` at `commit` (in the work repository) and pushes it;
    /// returns how long `git push` took.
    pub fn push_commit(&mut self, commit: &str) -> Result<Duration, String> {
        let st = state(
            &self.keys,
            &self.identifier,
            &[("refs/heads/main", commit)],
            Some("main"),
            self.next_created,
        );
        self.next_created += 1;
        let reply = self.relay.try_publish(&st)?;
        if !reply.accepted {
            return Err(format!("state refused: {}", reply.message));
        }
        let started = Instant::now();
        let out = git_output(&self.work.dir, &["push", "-q", &self.url, "main"]);
        let took = started.elapsed();
        if !out.status.success() {
            return Err(format!(
                "git push failed: {}",
                String::from_utf8_lossy(&out.stderr)
            ));
        }
        self.last_pushed = Some((st.id.to_hex(), commit.to_owned()));
        Ok(took)
    }
}

/// `git clone` of `url` into a fresh directory (removed after); how long it took.
pub fn clone(url: &str) -> Result<Duration, String> {
    let dir = crate::temp_dir("clone");
    let started = Instant::now();
    let out = git_output(&dir, &["clone", "-q", url, "c"]);
    let took = started.elapsed();
    let _ = std::fs::remove_dir_all(&dir);
    if !out.status.success() {
        return Err(format!(
            "git clone failed: {}",
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    Ok(took)
}

/// `GET /` for the NIP-11 document; how long it took to the last byte.
pub fn nip11(addr: SocketAddr) -> Result<Duration, String> {
    let started = Instant::now();
    let response = crate::http::try_request(
        addr,
        "GET",
        "/",
        &[("Accept", "application/nostr+json")],
        b"",
    )?;
    let took = started.elapsed();
    if response.status != 200 {
        return Err(format!("NIP-11: {} {}", response.status, response.text()));
    }
    Ok(took)
}

/// A kind 1621 issue by `author` on the repository at `coordinate`, numbered `n`.
pub fn issue(author: &Keys, coordinate: &str, n: u64) -> Event {
    tagged(
        author,
        1621,
        &[&["a", coordinate], &["subject", &format!("issue {n}")]],
    )
}

/// Publishes `event` and expects `OK true`; how long the round trip took.
pub fn publish(relay: &mut RelayClient, event: &Event) -> Result<Duration, String> {
    let started = Instant::now();
    let reply = relay.try_publish(event)?;
    let took = started.elapsed();
    if !reply.accepted {
        return Err(format!("EVENT refused: {}", reply.message));
    }
    Ok(took)
}
