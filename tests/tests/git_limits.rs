//! What anonymous git clients cannot do to graspd: hold a repository with a stalled push,
//! take memory with a small body, store objects nothing needs, or tie up git processes. Each
//! scenario runs against both server binaries.

use std::io::Write;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use graspd_tests::attack::{
    answered_or_closed_within, fetch_request, gzip, gzip_bomb, pkt, stalled_push, stalled_push_ref,
    LEGITIMATE,
};
use graspd_tests::git::{ref_of, WorkRepo};
use graspd_tests::nostr::{announcement, keys, npub, state, RelayClient};
use graspd_tests::{both_runtimes, Flavor, Server, ServerOptions};

/// Generous bound for things that happen "at once" on a loaded 2-core machine.
const SOON: Duration = Duration::from_secs(30);

/// An announced repo "demo" of keys(1) on `server`, with `main` pushed and released; returns
/// the work repo and the clone URL.
fn announced_repo(server: &Server, relay: &mut RelayClient) -> (WorkRepo, String) {
    let owner = keys(1);
    let url = server.repo_url(&npub(&owner), "demo");
    relay.publish(&announcement(&owner, "demo", &[&server.http_url()], &[]));
    let work = WorkRepo::init("work");
    let c1 = work.commit("README", "hello\n");
    let st = state(&owner, "demo", &[("refs/heads/main", &c1)], Some("main"), 0);
    assert!(relay.publish(&st).accepted);
    work.git(&["push", "-q", &url, "main"]);
    (work, url)
}

/// Runs `git push` and waits at most `timeout` for it; `None` if it had to be killed.
fn push_within(work: &WorkRepo, url: &str, timeout: Duration) -> Option<std::process::Output> {
    let mut child = Command::new("git")
        .current_dir(&work.dir)
        .args(["push", "-q", url, "main"])
        .env("GIT_CONFIG_GLOBAL", "/dev/null")
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("GIT_TERMINAL_PROMPT", "0")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run git push");
    let deadline = Instant::now() + timeout;
    while child.try_wait().unwrap().is_none() {
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            return None;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Some(child.wait_with_output().unwrap())
}

/// A push that sends its commands and the start of a pack, then stalls, does not hold the
/// repository: the owner's push to it goes through while the stalled one is still open, and
/// the stalled one is ended at the body idle timeout.
fn stalled_push_does_not_block_the_repository(flavor: Flavor) {
    let idle = Duration::from_secs(20);
    let server = Server::start_with(
        flavor,
        ServerOptions::default()
            .arg("--body-idle-timeout-secs")
            .arg(idle.as_secs().to_string()),
    );
    let mut relay = RelayClient::connect(&server.ws_url());
    let (work, url) = announced_repo(&server, &mut relay);
    let path = url.trim_start_matches(&server.http_url()).to_owned() + "/git-receive-pack";
    let started = Instant::now();
    let mut stalled = stalled_push(LEGITIMATE, server.addr, &path, &work.head()).expect("connect");

    let owner = keys(1);
    let c2 = work.commit("README", "second\n");
    let st = state(&owner, "demo", &[("refs/heads/main", &c2)], Some("main"), 1);
    assert!(relay.publish(&st).accepted);
    let out = push_within(&work, &url, idle / 2).unwrap_or_else(|| {
        panic!(
            "the owner's push hung behind a stalled push\n{}",
            server.log()
        )
    });
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(ref_of(&url, "refs/heads/main"), Some(c2));
    assert!(
        started.elapsed() < idle
            && !answered_or_closed_within(&mut stalled, Duration::from_millis(10)),
        "the push went through only after the stalled one was ended"
    );
    assert!(
        answered_or_closed_within(&mut stalled, idle + SOON),
        "the stalled push was never ended"
    );
    assert_eq!(ref_of(&url, &stalled_push_ref()), None);
    assert_eq!(
        server.metric(r#"graspd_refusals_total{limit="git_body_timeout"}"#),
        Some(1.0)
    );
}

/// The server's peak resident memory so far, in bytes (`VmHWM`).
fn peak_rss(server: &Server) -> u64 {
    let pid = server.pid().expect("server running");
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("proc status");
    let kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmHWM in /proc/<pid>/status");
    kb * 1024
}

/// A gzip body that inflates to 1 GiB, sent to `git-upload-pack`, is refused (413) while it
/// is inflated, so the server's memory barely moves; a gzip'd fetch request still works.
fn gzip_bomb_is_refused_with_bounded_memory(flavor: Flavor) {
    let server = Server::start(flavor);
    let mut relay = RelayClient::connect(&server.ws_url());
    let (work, url) = announced_repo(&server, &mut relay);
    let rpc = url.trim_start_matches(&server.http_url()).to_owned() + "/git-upload-pack";
    // 1 GiB of zeros: about 1 MB on the wire.
    let bomb = gzip_bomb(1024);
    let before = peak_rss(&server);
    let response = graspd_tests::http::request(
        server.addr,
        "POST",
        &rpc,
        &[
            ("Content-Encoding", "gzip"),
            ("Content-Type", "application/x-git-upload-pack-request"),
        ],
        &bomb,
    );
    assert_eq!(response.status, 413, "{}", response.text());
    assert!(response.text().contains("limit"), "{}", response.text());
    let grown = peak_rss(&server).saturating_sub(before);
    eprintln!(
        "{flavor:?}: a {} byte gzip body inflating to 1 GiB raised peak RSS by {} KiB",
        bomb.len(),
        grown / 1024
    );
    assert!(
        grown < 64 << 20,
        "peak RSS grew by {grown} bytes for a {} byte request",
        bomb.len()
    );
    // A well-formed gzip'd fetch (protocol v0, stateless): NAK, then the pack.
    let request = fetch_request(&work.head());
    let request = gzip(move |out| out.write_all(&request).unwrap());
    let response = graspd_tests::http::request(
        server.addr,
        "POST",
        &rpc,
        &[
            ("Content-Encoding", "gzip"),
            ("Content-Type", "application/x-git-upload-pack-request"),
        ],
        &request,
    );
    assert_eq!(response.status, 200, "{}", response.text());
    assert!(
        response.body.windows(4).any(|w| w == b"PACK"),
        "{}",
        response.text()
    );
}

/// A push with more ref updates than allowed is refused with the limit, before any of it
/// reaches git.
fn push_with_too_many_commands_is_refused(flavor: Flavor) {
    let server = Server::start_with(
        flavor,
        ServerOptions::default().arg("--max-push-commands").arg("3"),
    );
    let mut relay = RelayClient::connect(&server.ws_url());
    let (work, url) = announced_repo(&server, &mut relay);
    let rpc = url.trim_start_matches(&server.http_url()).to_owned() + "/git-receive-pack";
    let (zero, head) = ("0".repeat(40), work.head());
    let mut body = Vec::new();
    for i in 0..5 {
        let caps = if i == 0 { "\0report-status" } else { "" };
        body.extend(pkt(
            format!("{zero} {head} refs/tags/t{i}{caps}\n").as_bytes()
        ));
    }
    body.extend_from_slice(b"0000");
    let response = graspd_tests::http::request(
        server.addr,
        "POST",
        &rpc,
        &[("Content-Type", "application/x-git-receive-pack-request")],
        &body,
    );
    assert_eq!(response.status, 400, "{}", response.text());
    assert!(
        response.text().contains("more than 3 ref updates"),
        "{}",
        response.text()
    );
    assert_eq!(ref_of(&url, "refs/tags/t0"), None);
    assert_eq!(
        server.metric(r#"graspd_refusals_total{limit="git_too_many_commands"}"#),
        Some(1.0)
    );
}

/// Git requests in flight from one address are capped: beyond the cap a clone is refused with
/// 429 and `Retry-After` at once instead of tying up another git process, and served again
/// once a place is free.
fn git_requests_per_address_are_capped(flavor: Flavor) {
    let server = Server::start_with(
        flavor,
        ServerOptions::default()
            .arg("--max-git-requests-per-address")
            .arg("1"),
    );
    let mut relay = RelayClient::connect(&server.ws_url());
    let (work, url) = announced_repo(&server, &mut relay);
    let path = url.trim_start_matches(&server.http_url()).to_owned();
    // A stalled push holds this address's one place. A listing that arrives first takes the
    // place instead (and the push is refused): then another stalled push is opened.
    let refs = path.clone() + "/info/refs?service=git-upload-pack";
    let deadline = Instant::now() + SOON;
    let mut stalled = Vec::new();
    let refused = loop {
        stalled.push(
            stalled_push(
                LEGITIMATE,
                server.addr,
                &(path.clone() + "/git-receive-pack"),
                &work.head(),
            )
            .expect("connect"),
        );
        let response = graspd_tests::http::request(server.addr, "GET", &refs, &[], b"");
        if response.status == 429 {
            break response;
        }
        assert!(
            Instant::now() < deadline,
            "a second git request from the address was served\n{}",
            server.log()
        );
    };
    assert_eq!(refused.header("retry-after"), Some("5"));
    assert!(refused.text().contains("in flight"), "{}", refused.text());
    drop(stalled);
    assert!(
        graspd_tests::nostr::eventually(SOON, || graspd_tests::http::request(
            server.addr,
            "GET",
            &refs,
            &[],
            b""
        )
        .status
            == 200),
        "the place was not freed when the stalled push went away"
    );
    let refused = server.metric(r#"graspd_refusals_total{limit="git_requests_per_address"}"#);
    assert!(refused.is_some_and(|n| n >= 1.0), "{refused:?}");
}

/// A push whose commands change nothing is answered `ok` without storing the pack it carries;
/// repositories are created without git's sample hooks.
fn no_op_push_stores_nothing(flavor: Flavor) {
    let server = Server::start(flavor);
    let mut relay = RelayClient::connect(&server.ws_url());
    let (work, url) = announced_repo(&server, &mut relay);
    let rpc = url.trim_start_matches(&server.http_url()).to_owned() + "/git-receive-pack";
    let main = work.head();
    work.commit("never.txt", &"a blob nothing refers to\n".repeat(1000));
    let blob = work.rev("HEAD:never.txt");
    let mut pack_objects = Command::new("git")
        .current_dir(&work.dir)
        .args(["pack-objects", "--stdout"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("run git pack-objects");
    let mut stdin = pack_objects.stdin.take().unwrap();
    stdin.write_all(format!("{blob}\n").as_bytes()).unwrap();
    drop(stdin);
    let pack = pack_objects.wait_with_output().unwrap().stdout;
    assert!(pack.starts_with(b"PACK"));
    let mut body = pkt(format!("{main} {main} refs/heads/main\0report-status\n").as_bytes());
    body.extend_from_slice(b"0000");
    body.extend_from_slice(&pack);
    let response = graspd_tests::http::request(
        server.addr,
        "POST",
        &rpc,
        &[("Content-Type", "application/x-git-receive-pack-request")],
        &body,
    );
    assert_eq!(response.status, 200, "{}", response.text());
    assert!(
        response.text().contains("ok refs/heads/main"),
        "{}",
        response.text()
    );
    let bare = server.data_dir.join(npub(&keys(1))).join("demo.git");
    let has_blob = Command::new("git")
        .arg("--git-dir")
        .arg(&bare)
        .args(["cat-file", "-e", &blob])
        .status()
        .unwrap();
    assert!(!has_blob.success(), "the no-op push's pack was stored");
    assert_eq!(ref_of(&url, "refs/heads/main"), Some(main));
    let samples: Vec<_> = std::fs::read_dir(bare.join("hooks"))
        .map(|entries| entries.flatten().map(|e| e.file_name()).collect())
        .unwrap_or_default();
    assert!(samples.is_empty(), "hooks in a new repository: {samples:?}");
}

/// An owner's directory goes with its last repository, and what an interrupted creation left
/// behind is removed at start-up.
fn no_empty_or_half_made_repository_directories_stay(flavor: Flavor) {
    let mut server = Server::start_with(
        flavor,
        ServerOptions::default()
            .arg("--purgatory-expiry-secs")
            .arg("3"),
    );
    let mut relay = RelayClient::connect(&server.ws_url());
    let owner = keys(4);
    relay.publish(&announcement(&owner, "gone", &[&server.http_url()], &[]));
    let owner_dir = server.data_dir.join(npub(&owner));
    assert!(
        graspd_tests::nostr::eventually(SOON, || owner_dir.join("gone.git").exists()),
        "the announced repository was not created"
    );
    assert!(
        graspd_tests::nostr::eventually(SOON, || !owner_dir.exists()),
        "an expired repository's owner directory stayed: {:?}",
        std::fs::read_dir(&owner_dir)
            .map(|d| d.flatten().map(|e| e.file_name()).collect::<Vec<_>>())
    );
    drop(relay);
    let other = server.data_dir.join(npub(&keys(5)));
    let staged = other.join(".demo.git.new-4242-0");
    std::fs::create_dir_all(staged.join("objects")).unwrap();
    server.restart();
    assert!(
        !staged.exists(),
        "an interrupted creation's directory survived a restart"
    );
    assert!(
        !other.exists(),
        "an empty owner directory survived a restart"
    );
}

both_runtimes!(
    no_empty_or_half_made_repository_directories_stay,
    no_op_push_stores_nothing,
    git_requests_per_address_are_capped,
    push_with_too_many_commands_is_refused,
    stalled_push_does_not_block_the_repository,
    gzip_bomb_is_refused_with_bounded_memory,
);
