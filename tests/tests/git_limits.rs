//! What anonymous git clients cannot do to graspd: hold a repository with a stalled push,
//! take memory with a small body, store objects nothing needs, or tie up git processes. Each
//! scenario runs against both server binaries.

use std::io::Write;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use std::net::TcpStream;

use graspd_tests::attack::{
    answered_or_closed_within, fetch_request, gzip, gzip_bomb, pkt, stalled_push, stalled_push_ref,
    LEGITIMATE,
};
use graspd_tests::git::{git, git_command, ref_of, WorkRepo};
use graspd_tests::http::Response;
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
    let mut stalled =
        stalled_push(LEGITIMATE, server.addr, &path, &work.head(), &[]).expect("connect");

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
    let metric = r#"graspd_refusals_total{limit="git_body_timeout"}"#;
    let counted = graspd_tests::nostr::eventually(SOON, || server.metric(metric) == Some(1.0));
    assert!(
        counted,
        "the stalled push was not ended by the body timeout: {metric} = {:?}\n{}",
        server.metric(metric),
        server.log()
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

/// An upload-pack request that inflates past `--max-upload-request-bytes` is refused (413)
/// while it streams to git, and the server never holds it: its peak memory grows by a small
/// fraction of the limit, let alone of the 1 GiB the request inflates to. A gzip'd fetch
/// request within the limit still works.
fn gzip_bomb_is_refused_with_bounded_memory(flavor: Flavor) {
    let limit: u64 = 128 << 20;
    let server = Server::start_with(
        flavor,
        ServerOptions::default().flag("--max-upload-request-bytes", limit),
    );
    let mut relay = RelayClient::connect(&server.ws_url());
    let (work, url) = announced_repo(&server, &mut relay);
    let rpc = url.trim_start_matches(&server.http_url()).to_owned() + "/git-upload-pack";
    // 1 GiB of the same `have`: about 1 MB on the wire.
    let bomb = gzip_bomb(&work.head(), 1024);
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
        "{flavor:?}: a {} byte gzip body inflating to 1 GiB (limit {} MiB) raised peak RSS by \
         {} KiB",
        bomb.len(),
        limit >> 20,
        grown / 1024
    );
    assert!(
        grown < limit / 8,
        "peak RSS grew by {grown} bytes for a {} byte request",
        bomb.len()
    );
    assert_eq!(
        server.metric(r#"graspd_refusals_total{limit="git_body_too_large"}"#),
        Some(1.0)
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

/// Runs `git <args>` in `dir` with its HTTP traffic traced; panics unless it succeeds and
/// sent at least one gzip'd request body.
fn git_sending_gzip(dir: &std::path::Path, args: &[&str]) {
    let out = git_command(dir, args)
        .env("GIT_TRACE_CURL", "1")
        .env("GIT_TRACE_CURL_NO_DATA", "1")
        .output()
        .expect("run git");
    let trace = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "git {args:?} failed:\n{trace}");
    assert!(
        trace.contains("Send header: Content-Encoding: gzip"),
        "git {args:?} sent no gzip'd request, so this test exercises nothing:\n{trace}"
    );
}

/// Real `git` gzips a request body over 1 KiB: a clone of a repository with many branches
/// (many wants) and a fetch into a clone with many commits of its own (many haves) are
/// negotiated with gzip'd bodies, streamed to upload-pack as they are inflated, and both
/// complete.
fn clone_and_fetch_with_gzip_bodies_work(flavor: Flavor) {
    let server = Server::start(flavor);
    let mut relay = RelayClient::connect(&server.ws_url());
    let owner = keys(1);
    let url = server.repo_url(&npub(&owner), "branches");
    relay.publish(&announcement(
        &owner,
        "branches",
        &[&server.http_url()],
        &[],
    ));
    let work = WorkRepo::init("branches");
    let mut refs = Vec::new();
    for i in 0..48 {
        let commit = work.commit(&format!("f{i}"), &format!("{i}\n"));
        work.git(&["branch", &format!("b{i:02}")]);
        refs.push((format!("refs/heads/b{i:02}"), commit));
    }
    refs.push(("refs/heads/main".to_owned(), work.head()));
    let pairs: Vec<(&str, &str)> = refs.iter().map(|(r, c)| (r.as_str(), c.as_str())).collect();
    assert!(
        relay
            .publish(&state(&owner, "branches", &pairs, Some("main"), 0))
            .accepted
    );
    work.git(&["push", "-q", &url, "refs/heads/*:refs/heads/*"]);

    let dir = graspd_tests::temp_dir("gzip-clone");
    git_sending_gzip(&dir, &["clone", "-q", &url, "c"]);
    let clone = dir.join("c");
    assert_eq!(
        git(&clone, &["rev-parse", "origin/b00"]),
        refs[0].1,
        "the clone lacks a branch"
    );

    let next = work.commit("next", "next\n");
    refs.last_mut().unwrap().1 = next.clone();
    let pairs: Vec<(&str, &str)> = refs.iter().map(|(r, c)| (r.as_str(), c.as_str())).collect();
    assert!(
        relay
            .publish(&state(&owner, "branches", &pairs, Some("main"), 1))
            .accepted
    );
    work.git(&["push", "-q", &url, "main"]);
    // Newer local commits the server lacks: the fetch offers them first, as haves, in
    // rounds that double in size.
    for i in 0..64 {
        let message = format!("local {i}");
        let committed = git_command(&clone, &["commit", "-q", "--allow-empty", "-m", &message])
            .env("GIT_COMMITTER_DATE", "2026-06-01T00:00:00Z")
            .status()
            .expect("run git commit");
        assert!(committed.success());
    }
    git_sending_gzip(&clone, &["fetch", "-q", "origin"]);
    assert_eq!(git(&clone, &["rev-parse", "origin/main"]), next);
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

/// Holds the one git request place of the client that `headers` say (a per-address cap of 1)
/// with a stalled push to `path`'s receive-pack, until a listing of `path` from that client
/// is refused. A listing that arrives first takes the place instead (and the push is
/// refused): then another stalled push is opened. Returns the stalled pushes, which hold the
/// place until dropped, and the refusal.
fn hold_the_one_git_place(
    server: &Server,
    path: &str,
    new: &str,
    headers: &[(&str, &str)],
) -> (Vec<TcpStream>, Response) {
    let refs = format!("{path}/info/refs?service=git-upload-pack");
    let receive_pack = format!("{path}/git-receive-pack");
    let deadline = Instant::now() + SOON;
    let mut stalled = Vec::new();
    loop {
        stalled.push(
            stalled_push(LEGITIMATE, server.addr, &receive_pack, new, headers).expect("connect"),
        );
        let response = graspd_tests::http::request(server.addr, "GET", &refs, headers, b"");
        if response.status == 429 {
            return (stalled, response);
        }
        assert!(
            Instant::now() < deadline,
            "a second git request from the same client was served\n{}",
            server.log()
        );
    }
}

/// Git requests in flight from one address are capped: beyond the cap a clone is refused with
/// 429 and `Retry-After` at once instead of tying up another git process, and served again
/// once a place is free.
fn git_requests_per_address_are_capped(flavor: Flavor) {
    let server = Server::start_with(
        flavor,
        ServerOptions::default().flag("--max-git-requests-per-address", 1),
    );
    let mut relay = RelayClient::connect(&server.ws_url());
    let (work, url) = announced_repo(&server, &mut relay);
    let path = url.trim_start_matches(&server.http_url()).to_owned();
    let (stalled, refused) = hold_the_one_git_place(&server, &path, &work.head(), &[]);
    assert_eq!(refused.header("retry-after"), Some("5"));
    assert!(refused.text().contains("in flight"), "{}", refused.text());
    drop(stalled);
    let refs = path + "/info/refs?service=git-upload-pack";
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

/// Behind a trusted proxy the per-address cap on git requests counts the address the proxy
/// forwarded for, not the proxy's: one client at its cap leaves another client's requests
/// through the same proxy alone.
fn git_requests_per_address_count_the_forwarded_client(flavor: Flavor) {
    let server = Server::start_with(
        flavor,
        ServerOptions::default()
            .flag("--max-git-requests-per-address", 1)
            .flag("--trusted-proxy", "127.0.0.1"),
    );
    let mut relay = RelayClient::connect(&server.ws_url());
    let (work, url) = announced_repo(&server, &mut relay);
    let path = url.trim_start_matches(&server.http_url()).to_owned();
    let busy_client = [("X-Forwarded-For", "203.0.113.7")];
    let (stalled, _) = hold_the_one_git_place(&server, &path, &work.head(), &busy_client);
    let refs = path + "/info/refs?service=git-upload-pack";
    for other_client in ["203.0.113.8", "198.51.100.1"] {
        let other = graspd_tests::http::request(
            server.addr,
            "GET",
            &refs,
            &[("X-Forwarded-For", other_client)],
            b"",
        );
        assert_eq!(
            other.status,
            200,
            "another client behind the same proxy was refused: {}",
            other.text()
        );
        assert!(other.text().contains("refs/heads/main"), "{}", other.text());
    }
    let busy = graspd_tests::http::request(server.addr, "GET", &refs, &busy_client, b"");
    assert_eq!(busy.status, 429, "{}", busy.text());
    drop(stalled);
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

/// Whether the bare repository at `bare` has object `oid`.
fn has_object(bare: &std::path::Path, oid: &str) -> bool {
    Command::new("git")
        .arg("--git-dir")
        .arg(bare)
        .args(["cat-file", "-e", oid])
        .status()
        .expect("run git cat-file")
        .success()
}

/// What a `refs/nostr/<id>` placeholder brought is pruned once its event never came: the
/// placeholder expires, its ref is deleted, and a later `git gc` of that repository removes
/// the commit and blob only it reached, while everything the real refs reach stays and the
/// repository checks clean.
fn objects_of_an_expired_placeholder_are_pruned(flavor: Flavor) {
    let server = Server::start_with(
        flavor,
        ServerOptions::default().flag("--purgatory-expiry-secs", 3),
    );
    let mut relay = RelayClient::connect(&server.ws_url());
    let (work, url) = announced_repo(&server, &mut relay);
    let main = work.head();
    work.git(&["checkout", "-q", "-b", "side"]);
    let orphan = work.commit("never.txt", "an event for this never comes\n");
    let blob = work.rev("HEAD:never.txt");
    let placeholder = format!("refs/nostr/{}", "cd".repeat(32));
    work.git(&["push", "-q", &url, &format!("side:{placeholder}")]);
    let bare = server.data_dir.join(npub(&keys(1))).join("demo.git");
    assert!(
        has_object(&bare, &orphan),
        "the placeholder's push landed nothing"
    );

    let pruned =
        graspd_tests::nostr::eventually(Duration::from_secs(60), || !has_object(&bare, &orphan));
    assert!(
        pruned,
        "the expired placeholder's commit stayed\n{}",
        server.log()
    );
    assert!(
        !has_object(&bare, &blob),
        "the expired placeholder's blob stayed"
    );
    assert_eq!(ref_of(&url, &placeholder), None);
    // The run is counted once git gc has exited and the objects were counted again.
    let counted = graspd_tests::nostr::eventually(SOON, || {
        server
            .metric(r#"graspd_prune_runs_total{outcome="done"}"#)
            .is_some_and(|n| n >= 1.0)
    });
    assert!(counted, "no prune counted\n{}", server.log());
    // The side commit, its tree and the blob.
    let removed = server.metric("graspd_prune_objects_removed_total");
    assert!(
        removed.is_some_and(|n| n >= 3.0),
        "objects removed by the prune: {removed:?}\n{}",
        server.log()
    );
    assert!(has_object(&bare, &main));
    assert_eq!(ref_of(&url, "refs/heads/main"), Some(main.clone()));
    let fsck = Command::new("git")
        .arg("--git-dir")
        .arg(&bare)
        .args(["fsck", "--strict", "--no-dangling"])
        .output()
        .expect("run git fsck");
    assert!(
        fsck.status.success() && fsck.stdout.is_empty(),
        "git fsck after the prune: {}{}",
        String::from_utf8_lossy(&fsck.stdout),
        String::from_utf8_lossy(&fsck.stderr)
    );
    let dir = graspd_tests::temp_dir("pruned-clone");
    git(&dir, &["clone", "-q", &url, "c"]);
    assert_eq!(git(&dir.join("c"), &["rev-parse", "HEAD"]), main);
}

/// Linux's scheduling policy for processes that run only on CPU time nothing else wants.
const SCHED_IDLE: i64 = 5;

/// The parent, niceness and scheduling policy of the process whose `/proc/<pid>/stat` is
/// `stat`.
fn parent_niceness_policy(stat: &str) -> (u32, i64, i64) {
    // After the parenthesised command name: state, ppid, ..., nice (field 19 overall), ...,
    // policy (field 41).
    let fields: Vec<&str> = stat[stat.rfind(')').unwrap() + 2..].split(' ').collect();
    (
        fields[1].parse().expect("ppid"),
        fields[16].parse().expect("nice"),
        fields[38].parse().expect("policy"),
    )
}

/// The niceness and scheduling policy of each process whose parent is `parent` and whose
/// command line names `program`, sorted.
fn children_priorities(parent: u32, program: &str) -> Vec<(i64, i64)> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").expect("/proc").flatten() {
        let dir = entry.path();
        let cmdline = std::fs::read(dir.join("cmdline")).unwrap_or_default();
        if !String::from_utf8_lossy(&cmdline).contains(program) {
            continue;
        }
        let Ok(stat) = std::fs::read_to_string(dir.join("stat")) else {
            continue;
        };
        let (ppid, nice, policy) = parent_niceness_policy(&stat);
        if ppid == parent {
            found.push((nice, policy));
        }
    }
    found.sort();
    found
}

/// A fetch whose request never ends, which keeps its upload-pack waiting for the rest.
fn unfinished_fetch(server: &Server, path: &str, want: &str) -> TcpStream {
    let mut stream = TcpStream::connect(server.addr).expect("connect");
    let body = pkt(format!("want {want}\n").as_bytes());
    let head = format!(
        "POST {path} HTTP/1.1\r\nHost: {}\r\n\
         Content-Type: application/x-git-upload-pack-request\r\nContent-Length: {}\r\n\r\n",
        server.addr,
        body.len() + 1_000
    );
    stream.write_all(head.as_bytes()).expect("send head");
    stream.write_all(&body).expect("send body");
    stream
}

/// Clones and fetches run their git at a lower CPU priority than the server (and its
/// pushes): a client asking for large packs cannot starve pushes and the relay. An address's
/// fetches beyond its share run only on CPU time nothing else wants, so one address's many
/// clones cannot slow another's.
fn upload_pack_runs_at_lower_priority(flavor: Flavor) {
    let server = Server::start_with(
        flavor,
        ServerOptions::default()
            .flag("--git-upload-nice", 7)
            .flag("--git-full-priority-per-address", 2),
    );
    let mut relay = RelayClient::connect(&server.ws_url());
    let (work, url) = announced_repo(&server, &mut relay);
    let path = url.trim_start_matches(&server.http_url()).to_owned() + "/git-upload-pack";
    let pid = server.pid().expect("running");
    let mut fetches = Vec::new();
    let mut priorities = Vec::new();
    for running in 1..=3 {
        fetches.push(unfinished_fetch(&server, &path, &work.head()));
        let seen = graspd_tests::nostr::eventually(SOON, || {
            priorities = children_priorities(pid, "upload-pack");
            priorities.len() == running
        });
        assert!(
            seen,
            "{running} upload-packs of the server expected, found {priorities:?}"
        );
    }
    assert_eq!(
        priorities,
        [(0, SCHED_IDLE), (7, 0), (7, 0)],
        "(niceness, policy) of the server's upload-packs"
    );
    let own = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("server stat");
    assert_eq!(
        parent_niceness_policy(&own).1,
        0,
        "the server's own niceness"
    );
    drop(fetches);
}

/// Whether `oid` is a loose object of the bare repository at `bare`.
fn is_loose(bare: &std::path::Path, oid: &str) -> bool {
    bare.join("objects")
        .join(&oid[..2])
        .join(&oid[2..])
        .exists()
}

/// A large push keeps its pack (clones copy its objects as they are, instead of compressing
/// loose ones again for every clone); a small one is unpacked into loose objects as git does.
fn a_large_push_is_kept_as_a_pack(flavor: Flavor) {
    let server = Server::start(flavor);
    let mut relay = RelayClient::connect(&server.ws_url());
    let (work, url) = announced_repo(&server, &mut relay);
    let bare = server.data_dir.join(npub(&keys(1))).join("demo.git");
    let small = work.rev("HEAD:README");
    assert!(is_loose(&bare, &small), "a small push's blob is loose");

    // About 2 MiB once compressed: hex digits of a xorshift stream.
    let mut x: u64 = 0x2545_f491_4f6c_dd1d;
    let mut content = String::with_capacity(4 << 20);
    while content.len() < 4 << 20 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        content.push_str(&format!("{x:016x}"));
    }
    let big_commit = work.commit("big.txt", &content);
    let big = work.rev("HEAD:big.txt");
    let st = state(
        &keys(1),
        "demo",
        &[("refs/heads/main", &big_commit)],
        Some("main"),
        1,
    );
    assert!(relay.publish(&st).accepted);
    work.git(&["push", "-q", &url, "main"]);
    assert_eq!(ref_of(&url, "refs/heads/main"), Some(big_commit));
    assert!(has_object(&bare, &big), "the pushed blob is stored");
    assert!(
        !is_loose(&bare, &big),
        "the large push's blob was unpacked into a loose object"
    );
}

both_runtimes!(
    a_large_push_is_kept_as_a_pack,
    no_empty_or_half_made_repository_directories_stay,
    upload_pack_runs_at_lower_priority,
    no_op_push_stores_nothing,
    git_requests_per_address_are_capped,
    git_requests_per_address_count_the_forwarded_client,
    push_with_too_many_commands_is_refused,
    stalled_push_does_not_block_the_repository,
    gzip_bomb_is_refused_with_bounded_memory,
    clone_and_fetch_with_gzip_bodies_work,
    objects_of_an_expired_placeholder_are_pruned,
);
