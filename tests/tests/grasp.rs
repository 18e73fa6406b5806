//! GRASP end to end: each scenario runs against both server binaries.

use std::time::Duration;

use graspd_tests::git::{git, git_fails, git_output, ls_remote, ref_of, WorkRepo};
use graspd_tests::http::request;
use graspd_tests::nostr::{
    announcement, announcement_with, deletion, eventually, keys, npub, pull_request,
    pull_request_created, repo_coordinate, state, tagged, tagged_at, tagged_created, unix_now,
    Event, RelayClient,
};
use graspd_tests::{both_runtimes, temp_dir, Flavor, Server, ServerOptions};
use serde_json::json;

/// Generous bound for things that happen "at once" on a loaded 2-core CI machine.
const SOON: Duration = Duration::from_secs(30);

const PURGATORY: &str = "purgatory: won't be served until git data arrives";

/// A server with one announced repo "demo" of keys(1), with `main` pushed and released.
fn served_repo(flavor: Flavor) -> (Server, WorkRepo, String) {
    served_repo_with(flavor, ServerOptions::default())
}

/// [`served_repo`] on a server started with `options`.
fn served_repo_with(flavor: Flavor, options: ServerOptions) -> (Server, WorkRepo, String) {
    let server = Server::start_with(flavor, options);
    let owner = keys(1);
    let url = server.repo_url(&npub(&owner), "demo");
    let mut relay = RelayClient::connect(&server.ws_url());
    let ann = announcement(&owner, "demo", &[&server.http_url()], &[]);
    assert_eq!(relay.publish(&ann).message, PURGATORY);
    let work = WorkRepo::init("work");
    let c1 = work.commit("README", "hello\n");
    let st = state(&owner, "demo", &[("refs/heads/main", &c1)], Some("main"), 0);
    assert!(relay.publish(&st).accepted);
    relay.subscribe("live", json!({"ids": [st.id.to_hex(), ann.id.to_hex()]}));
    work.git(&["push", "-q", &url, "main"]);
    // The two are released one after the other; the repository is hosted once both are served.
    let mut unreleased = vec![st.id.to_hex(), ann.id.to_hex()];
    let deadline = std::time::Instant::now() + SOON;
    while !unreleased.is_empty() {
        let Some(msg) = relay.recv_until(deadline) else {
            panic!("{unreleased:?} not released after push\n{}", server.log());
        };
        if msg[0] == "EVENT" && msg[1] == "live" {
            unreleased.retain(|id| msg[2]["id"] != id.as_str());
        }
    }
    (server, work, url)
}

fn announcement_then_push_then_served(flavor: Flavor) {
    let server = Server::start(flavor);
    let owner = keys(1);
    let url = server.repo_url(&npub(&owner), "demo");
    let mut relay = RelayClient::connect(&server.ws_url());

    let ann = announcement(&owner, "demo", &[&server.http_url()], &[]);
    let reply = relay.publish(&ann);
    assert!(reply.accepted, "{reply:?}");
    assert_eq!(reply.message, PURGATORY);
    assert!(
        relay.query_ids(json!({"kinds": [30617]})).is_empty(),
        "announcement served from purgatory"
    );
    assert!(
        ls_remote(&url).is_empty(),
        "the repo exists and is empty while its announcement waits"
    );

    let work = WorkRepo::init("work");
    let c1 = work.commit("README", "hello\n");
    let st = state(&owner, "demo", &[("refs/heads/main", &c1)], Some("main"), 0);
    assert_eq!(relay.publish(&st).message, PURGATORY);
    relay.subscribe("live", json!({"kinds": [30617, 30618]}));
    work.git(&["push", "-q", &url, "main"]);

    assert!(
        relay.wait_for_event("live", &st.id.to_hex(), SOON),
        "{}",
        server.log()
    );
    assert!(
        eventually(SOON, || relay
            .query_ids(json!({"ids": [ann.id.to_hex()]}))
            .len()
            == 1),
        "announcement not released with its first state"
    );
    let mut reader = RelayClient::connect(&server.ws_url());
    let served = reader.query_ids(json!({"authors": [owner.public_key().to_hex()]}));
    assert!(
        served.contains(&ann.id.to_hex()) && served.contains(&st.id.to_hex()),
        "{served:?}"
    );
    assert_eq!(
        ref_of(&url, "refs/heads/main").as_deref(),
        Some(c1.as_str())
    );
    let clone = temp_dir("clone");
    git(&clone, &["clone", "-q", &url, "c"]);
    assert_eq!(git(&clone.join("c"), &["rev-parse", "HEAD"]), c1);
    assert_eq!(
        git(&clone.join("c"), &["symbolic-ref", "HEAD"]),
        "refs/heads/main"
    );
}

fn push_without_matching_state_is_rejected_with_reason(flavor: Flavor) {
    let (_server, work, url) = served_repo(flavor);
    work.commit("README", "unannounced\n");
    let stderr = git_fails(&work.dir, &["push", &url, "main"]);
    assert!(
        stderr.contains("! [remote rejected] main -> main (no state event in purgatory matches"),
        "{stderr}"
    );
    assert!(!stderr.contains("bad band"), "{stderr}");
    let stderr = git_fails(&work.dir, &["push", &url, "main:refs/heads/pr/x"]);
    assert!(stderr.contains("send PRs over nostr"), "{stderr}");
}

fn pull_request_before_and_after_its_event(flavor: Flavor) {
    let (server, work, url) = served_repo(flavor);
    let owner = keys(1);
    let contributor = keys(2);
    let mut relay = RelayClient::connect(&server.ws_url());

    // Pushed before its event: a placeholder, then the event is served at once.
    let c2 = work.commit("a.txt", "pr one\n");
    let pr1 = pull_request(&contributor, &owner, "demo", &c2, &[&url]);
    work.git(&[
        "push",
        "-q",
        &url,
        &format!("{c2}:refs/nostr/{}", pr1.id.to_hex()),
    ]);
    let reply = relay.publish(&pr1);
    assert!(reply.accepted, "{reply:?}");
    assert!(eventually(SOON, || relay
        .query_ids(json!({"ids": [pr1.id.to_hex()]}))
        .len()
        == 1));

    // Event first: waits, then the push releases it.
    let c3 = work.commit("b.txt", "pr two\n");
    let pr2 = pull_request(&contributor, &owner, "demo", &c3, &[&url]);
    assert_eq!(relay.publish(&pr2).message, PURGATORY);
    relay.subscribe("live", json!({"ids": [pr2.id.to_hex()]}));
    work.git(&[
        "push",
        "-q",
        &url,
        &format!("{c3}:refs/nostr/{}", pr2.id.to_hex()),
    ]);
    assert!(
        relay.wait_for_event("live", &pr2.id.to_hex(), SOON),
        "{}",
        server.log()
    );
    assert_eq!(
        ref_of(&url, &format!("refs/nostr/{}", pr2.id.to_hex())),
        Some(c3.clone())
    );

    // A push whose commit is not the event's `c` is refused.
    let c4 = work.commit("c.txt", "pr three\n");
    let pr3 = pull_request(&contributor, &owner, "demo", &c4, &[&url]);
    relay.publish(&pr3);
    let stderr = git_fails(
        &work.dir,
        &[
            "push",
            &url,
            &format!("{c3}:refs/nostr/{}", pr3.id.to_hex()),
        ],
    );
    assert!(stderr.contains("[remote rejected]"), "{stderr}");
}

fn state_with_present_data_is_applied_without_push(flavor: Flavor) {
    let (server, work, url) = served_repo(flavor);
    let owner = keys(1);
    let c1 = work.head();
    let mut relay = RelayClient::connect(&server.ws_url());
    let st = state(
        &owner,
        "demo",
        &[("refs/heads/main", &c1), ("refs/heads/dev", &c1)],
        Some("dev"),
        1,
    );
    assert!(relay.publish(&st).accepted);
    assert!(
        eventually(SOON, || ref_of(&url, "refs/heads/dev").as_deref()
            == Some(c1.as_str())),
        "{}",
        server.log()
    );
    assert!(eventually(SOON, || relay
        .query_ids(json!({"ids": [st.id.to_hex()]}))
        .len()
        == 1));
}

fn two_maintainers_repos_kept_in_step(flavor: Flavor) {
    let server = Server::start(flavor);
    let (a, b) = (keys(1), keys(2));
    let mut relay = RelayClient::connect(&server.ws_url());
    relay.publish(&announcement(&a, "shared", &[&server.http_url()], &[&b]));
    relay.publish(&announcement(&b, "shared", &[&server.http_url()], &[&a]));
    let url_a = server.repo_url(&npub(&a), "shared");
    let url_b = server.repo_url(&npub(&b), "shared");
    let work = WorkRepo::init("work");
    let c1 = work.commit("f", "1\n");
    relay.publish(&state(
        &b,
        "shared",
        &[("refs/heads/main", &c1)],
        Some("main"),
        0,
    ));
    work.git(&["push", "-q", &url_b, "main"]);
    assert!(
        eventually(SOON, || ref_of(&url_a, "refs/heads/main").as_deref()
            == Some(c1.as_str())),
        "{}",
        server.log()
    );
    assert_eq!(
        ref_of(&url_b, "refs/heads/main").as_deref(),
        Some(c1.as_str())
    );
}

fn partial_clone_with_blob_filter(flavor: Flavor) {
    let (_server, work, url) = served_repo(flavor);
    let dir = temp_dir("partial");
    git(&dir, &["clone", "-q", "--filter=blob:none", &url, "p"]);
    assert_eq!(git(&dir.join("p"), &["rev-parse", "HEAD"]), work.head());
    assert_eq!(
        git(&dir.join("p"), &["config", "remote.origin.promisor"]),
        "true"
    );
}

fn nip11_and_cors(flavor: Flavor) {
    let server = Server::start(flavor);
    let r = request(
        server.addr,
        "GET",
        "/",
        &[("Accept", "application/nostr+json")],
        b"",
    );
    assert_eq!(r.status, 200);
    assert_eq!(r.header("access-control-allow-origin"), Some("*"));
    let doc: serde_json::Value = serde_json::from_slice(&r.body).expect("NIP-11 JSON");
    assert!(
        doc["supported_grasps"]
            .as_array()
            .is_some_and(|g| g.iter().any(|v| v == "GRASP-01")),
        "{doc}"
    );
    // The criteria quote the URLs this server compares announcements with, derived from
    // its public URL (http://127.0.0.1:<port> here), and say that relations decide the rest.
    let criteria = doc["repo_acceptance_criteria"].as_str().expect("criteria");
    for wanted in [
        format!("{}/<npub>/<identifier>.git", server.http_url()),
        format!("lists {} ", server.ws_url()),
        "tags, or is tagged by, an accepted repository announcement or an accepted issue".into(),
    ] {
        assert!(criteria.contains(&wanted), "{criteria:?} lacks {wanted:?}");
    }
    assert!(
        !criteria.contains("https://") && !criteria.contains("wss://"),
        "{criteria}"
    );
    assert!(doc.get("curation").is_none());
    let r = request(server.addr, "OPTIONS", "/", &[], b"");
    assert_eq!(r.status, 204);
    assert!(r
        .header("access-control-allow-methods")
        .is_some_and(|m| m.contains("POST")));
    let r = request(
        server.addr,
        "GET",
        "/npub1nope/x.git/info/refs?service=git-upload-pack",
        &[],
        b"",
    );
    assert!(r.status == 400 || r.status == 404, "{}", r.status);
    assert_eq!(r.header("access-control-allow-origin"), Some("*"));
    let owner = npub(&keys(1));
    let r = request(
        server.addr,
        "GET",
        &format!("/{owner}/..%2Fescape.git/info/refs?service=git-upload-pack"),
        &[],
        b"",
    );
    assert!(r.status == 400 || r.status == 404, "{}", r.status);
}

fn deletion_removes_event_from_purgatory(flavor: Flavor) {
    let (server, work, url) = served_repo(flavor);
    let owner = keys(1);
    let mut relay = RelayClient::connect(&server.ws_url());
    let c2 = work.commit("README", "two\n");
    let st = state(&owner, "demo", &[("refs/heads/main", &c2)], Some("main"), 1);
    assert_eq!(relay.publish(&st).message, PURGATORY);
    assert!(relay.publish(&deletion(&owner, &[&st])).accepted);
    let stderr = git_fails(&work.dir, &["push", &url, "main"]);
    assert!(
        stderr.contains("[remote rejected]"),
        "deleted state still authorised a push: {stderr}"
    );
}

/// What other GRASP servers take although it is unusual: a state whose ref value is not a full
/// object id waits in purgatory where nothing can satisfy it, until a deletion or its expiry;
/// a `HEAD` tag without `ref: ` names the same branch.
fn unusual_states_are_taken_as_other_servers_take_them(flavor: Flavor) {
    let (server, work, url) = served_repo_with(
        flavor,
        ServerOptions::default().flag("--purgatory-expiry-secs", 20),
    );
    let owner = keys(1);
    let waiting_states = || server.metric(r#"graspd_purgatory_waiting{kind="state"}"#);
    let mut relay = RelayClient::connect(&server.ws_url());
    let c2 = work.commit("README", "two\n");
    work.git(&["branch", "develop"]);
    // Newer than the state a push will bring, and listing exactly what that push makes
    // `main`: were it matched or blocking, the push below would be refused or release it.
    let unreadable = tagged_at(
        &owner,
        30618,
        &[
            &["d", "demo"],
            &["refs/heads/main", &c2],
            &["refs/heads/old", "abc123"],
        ],
        3,
    );
    let reply = relay.publish(&unreadable);
    assert!(reply.accepted, "{reply:?}");
    assert_eq!(reply.message, PURGATORY);
    assert_eq!(waiting_states(), Some(1.0));
    let stderr = git_fails(&work.dir, &["push", &url, "main"]);
    assert!(
        stderr.contains("(no state event in purgatory matches"),
        "a state that can never be satisfied matched a push: {stderr}"
    );
    let doomed = tagged_at(
        &owner,
        30618,
        &[&["d", "demo"], &["refs/heads/main", &c2[..12]]],
        4,
    );
    assert_eq!(relay.publish(&doomed).message, PURGATORY);
    assert_eq!(waiting_states(), Some(2.0));
    assert!(relay.publish(&deletion(&owner, &[&doomed])).accepted);
    assert!(
        eventually(SOON, || waiting_states() == Some(1.0)),
        "the deletion did not remove it"
    );

    let develop = tagged_at(
        &owner,
        30618,
        &[
            &["d", "demo"],
            &["refs/heads/main", &c2],
            &["refs/heads/develop", &c2],
            &["HEAD", "refs/heads/develop"],
        ],
        2,
    );
    assert_eq!(relay.publish(&develop).message, PURGATORY);
    relay.subscribe("live", json!({"kinds": [30618]}));
    work.git(&["push", "-q", &url, "main", "develop"]);
    assert!(
        relay.wait_for_event("live", &develop.id.to_hex(), SOON),
        "{}",
        server.log()
    );
    let clone = temp_dir("clone");
    git(&clone, &["clone", "-q", &url, "c"]);
    assert_eq!(
        git(&clone.join("c"), &["symbolic-ref", "HEAD"]),
        "refs/heads/develop",
        "HEAD without `ref: ` names the same branch"
    );

    assert!(
        eventually(Duration::from_secs(60), || waiting_states() == Some(0.0)),
        "the unsatisfiable state never expired\n{}",
        server.log()
    );
    let mut reader = RelayClient::connect(&server.ws_url());
    let never_served = [unreadable.id.to_hex(), doomed.id.to_hex()];
    assert!(reader.query_ids(json!({"ids": never_served})).is_empty());
    assert_eq!(
        ref_of(&url, "refs/heads/old"),
        None,
        "nothing of it was applied"
    );
}

/// A deletion stored just before a crash, whose target had not left the purgatory table yet:
/// after the restart the target no longer waits, so a push for it is refused.
fn deletion_stored_before_a_crash_still_removes_its_waiting_target(flavor: Flavor) {
    let (mut server, work, url) = served_repo(flavor);
    let owner = keys(1);
    let c2 = work.commit("README", "deleted before the crash\n");
    let st = state(&owner, "demo", &[("refs/heads/main", &c2)], Some("main"), 1);
    {
        let mut relay = RelayClient::connect(&server.ws_url());
        assert_eq!(relay.publish(&st).message, PURGATORY);
    }
    server.kill9();
    {
        let store = graspd_host::store::Store::open_in(&server.data_dir).expect("open the store");
        let json = serde_json::to_string(&deletion(&owner, &[&st])).unwrap();
        let deletion = nostr::event::Event::from_json(json).expect("deletion");
        store.insert(&deletion).expect("store the deletion");
    }
    server.restart();
    let stderr = git_fails(&work.dir, &["push", &url, "main"]);
    assert!(
        stderr.contains("[remote rejected]"),
        "a deleted state still authorised a push after the restart: {stderr}\n{}",
        server.log()
    );
}

fn kill9_and_restart_keep_purgatory_and_store(flavor: Flavor) {
    kill9_and_restart_keep_purgatory_and_store_of(served_repo(flavor));
}

/// A state published to the served repository waits in purgatory across `kill -9` and a
/// restart, and the push after it releases it.
fn kill9_and_restart_keep_purgatory_and_store_of(
    (mut server, work, url): (Server, WorkRepo, String),
) {
    let owner = keys(1);
    let c2 = work.commit("README", "after restart\n");
    let st = state(&owner, "demo", &[("refs/heads/main", &c2)], Some("main"), 1);
    {
        let mut relay = RelayClient::connect(&server.ws_url());
        assert_eq!(relay.publish(&st).message, PURGATORY);
    }
    server.kill9();
    server.restart();
    let mut relay = RelayClient::connect(&server.ws_url());
    assert_eq!(
        relay.query_ids(json!({"kinds": [30617]})).len(),
        1,
        "stored announcement lost"
    );
    assert!(
        relay.query_ids(json!({"ids": [st.id.to_hex()]})).is_empty(),
        "waiting state served"
    );
    relay.subscribe("live", json!({"ids": [st.id.to_hex()]}));
    let out = git_output(&work.dir, &["push", &url, "main"]);
    assert!(
        out.status.success(),
        "waiting state lost across kill -9: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        relay.wait_for_event("live", &st.id.to_hex(), SOON),
        "{}",
        server.log()
    );
}

/// Server options keeping the events in a fresh database of the test cluster; `None` (the
/// test is skipped) only when PostgreSQL is not installed outside CI.
fn on_postgres(test: &str) -> Option<ServerOptions> {
    Some(ServerOptions::default().flag("--database-url", postgres_database(test)?))
}

/// A fresh database for `test` in the test cluster, or None (with a note) without PostgreSQL.
fn postgres_database(test: &str) -> Option<String> {
    Some(graspd_tests::postgres_cluster::required(test)?.database(test))
}

/// The redb file is never made when the events are in PostgreSQL.
fn assert_no_redb_file(server: &Server) {
    let file = server.data_dir.join("graspd.redb");
    assert!(!file.exists(), "{} was created", file.display());
}

/// Announce, publish a state (it waits), push, served, cloned; a restart keeps everything;
/// an event waiting in purgatory survives `kill -9` and is released by the push after it.
fn on_postgres_events_are_served_and_kept_across_restarts_and_kill9(flavor: Flavor) {
    let Some(options) = on_postgres("pg_restarts") else {
        return;
    };
    let (mut server, work, url) = served_repo_with(flavor, options);
    assert_no_redb_file(&server);
    let clone = temp_dir("pg-clone");
    git(&clone, &["clone", "-q", &url, "."]);
    assert_eq!(git(&clone, &["rev-parse", "HEAD"]).trim(), work.head());

    server.restart();
    let mut relay = RelayClient::connect(&server.ws_url());
    assert_eq!(relay.query_ids(json!({"kinds": [30617, 30618]})).len(), 2);
    assert_eq!(ref_of(&url, "refs/heads/main"), Some(work.head()));

    drop(relay);
    assert_no_redb_file(&server);
    kill9_and_restart_keep_purgatory_and_store_of((server, work, url));
}

/// Two instances on one database and data directory: a REQ on the second returns an event
/// the first accepted after the second started, and the second serves the repository.
fn on_postgres_a_second_instance_serves_what_the_first_accepted(flavor: Flavor) {
    let Some(options) = on_postgres("pg_two_instances") else {
        return;
    };
    let (first, work, _) = served_repo_with(flavor, options.clone());
    let second = Server::start_with(flavor, options.data_dir(&first.data_dir));
    let owner = keys(1);
    let repo = repo_coordinate(&owner, "demo");
    let issue = tagged(
        &keys(2),
        1621,
        &[&["a", &repo], &["subject", "seen by both"]],
    );
    let mut relay = RelayClient::connect(&first.ws_url());
    assert!(relay.publish(&issue).accepted, "{}", first.log());
    let mut other = RelayClient::connect(&second.ws_url());
    assert_eq!(
        other.query_ids(json!({"ids": [issue.id.to_hex()]})),
        vec![issue.id.to_hex()],
        "{}",
        second.log()
    );
    let url = second.repo_url(&npub(&owner), "demo");
    assert_eq!(ref_of(&url, "refs/heads/main"), Some(work.head()));
}

/// Three instances behind one public URL, on one database and one data directory: announce
/// and publish a state on the first, push to the second (whose engine learned the state from
/// the first's notification), a live subscriber on the third gets the release, and a clone
/// from the third has the data. The first, which held the state waiting, serves it once and
/// keeps no copy waiting.
fn on_postgres_three_instances_behind_one_origin_share_pushes_and_live_events(flavor: Flavor) {
    let Some(options) = on_postgres("pg_three_instances") else {
        return;
    };
    let options = options.flag("--log", "info,graspd_host::driver=debug");
    let first = Server::start_with(flavor, options.clone());
    let behind_one_origin = options
        .data_dir(&first.data_dir)
        .public_url(first.http_url());
    let second = Server::start_with(flavor, behind_one_origin.clone());
    let third = Server::start_with(flavor, behind_one_origin);
    let logs = || format!("{}\n{}\n{}", first.log(), second.log(), third.log());

    let owner = keys(1);
    let ann = announcement(&owner, "demo", &[&first.http_url()], &[]);
    let work = WorkRepo::init("three-instances");
    let c1 = work.commit("README", "hello\n");
    let st = state(&owner, "demo", &[("refs/heads/main", &c1)], Some("main"), 0);
    let mut watcher = RelayClient::connect(&third.ws_url());
    watcher.subscribe("live", json!({"ids": [st.id.to_hex(), ann.id.to_hex()]}));
    let deadline = std::time::Instant::now() + SOON;
    while let Some(msg) = watcher.recv_until(deadline) {
        if msg[0] == "EOSE" {
            break;
        }
    }

    let mut relay = RelayClient::connect(&first.ws_url());
    // The second instance's engine holds the state waiting (learned, not only heard of).
    publish_waiting_learned_by(&mut relay, &second, &ann, &st);
    let pushed_at = std::time::Instant::now();
    work.git(&[
        "push",
        "-q",
        &second.repo_url(&npub(&owner), "demo"),
        "main",
    ]);

    // In either order: whichever instance releases first, the third serves both live.
    let mut undelivered = vec![st.id.to_hex(), ann.id.to_hex()];
    let deadline = std::time::Instant::now() + SOON;
    while !undelivered.is_empty() {
        let Some(msg) = watcher.recv_until(deadline) else {
            panic!(
                "{undelivered:?} not delivered live on the third instance\n{}",
                logs()
            );
        };
        if msg[0] == "EVENT" && msg[1] == "live" {
            undelivered.retain(|id| msg[2]["id"] != id.as_str());
        }
    }
    eprintln!(
        "push to the second instance to both events live on the third: {} ms",
        pushed_at.elapsed().as_millis()
    );
    let clone = temp_dir("three-instances-clone");
    git(
        &clone,
        &["clone", "-q", &third.repo_url(&npub(&owner), "demo"), "."],
    );
    assert_eq!(git(&clone, &["rev-parse", "HEAD"]).trim(), c1);

    assert!(
        eventually(SOON, || first.metric(WAITING_STATES) == Some(0.0)),
        "the first instance still holds the state waiting\n{}",
        logs()
    );
    let mut reader = RelayClient::connect(&first.ws_url());
    assert_eq!(
        reader.query_ids(json!({"kinds": [30618]})),
        vec![st.id.to_hex()]
    );
    assert!(
        !logs().contains("not in the purgatory table"),
        "an instance lost track of a release\n{}",
        logs()
    );
    assert!(
        !logs().contains("lock across instances is unavailable"),
        "a repository lock was refused\n{}",
        logs()
    );
}

/// Three instances started with `options`, the second and third sharing the first's data
/// directory and public URL (one origin).
fn three_behind_one_origin(flavor: Flavor, options: ServerOptions) -> Vec<Server> {
    let first = Server::start_with(flavor, options.clone());
    let behind_one_origin = options
        .data_dir(&first.data_dir)
        .public_url(first.http_url());
    vec![
        first,
        Server::start_with(flavor, behind_one_origin.clone()),
        Server::start_with(flavor, behind_one_origin),
    ]
}

/// Every instance's log, one after the other.
fn all_logs(instances: &[Server]) -> String {
    instances
        .iter()
        .map(Server::log)
        .collect::<Vec<_>>()
        .join("\n")
}

/// Three instances on one database, a repository whose data is on another graspd: exactly
/// one instance (the sync lease holder) fetches it. Then, with the other server frozen
/// mid-fetch, `kill -9` of the lease holder: once its lease expires another instance takes
/// it and releases the next state, and nothing acknowledged is lost.
fn on_postgres_one_instance_fetches_and_another_takes_over_from_a_dead_one(flavor: Flavor) {
    let Some(database) = postgres_database("pg_sync_leases") else {
        return;
    };
    const LEASE: Duration = Duration::from_secs(3);
    let options = fast_sync()
        .flag("--database-url", database)
        .flag("--sync-lease-secs", LEASE.as_secs())
        .flag("--log", "info,graspd_host::driver=debug");
    let remote = Server::start(flavor);
    let mut instances = three_behind_one_origin(flavor, options);

    let owner = keys(1);
    let ann = announcement(
        &owner,
        "demo",
        &[&remote.http_url(), &instances[0].http_url()],
        &[],
    );
    let work = WorkRepo::init("sync-leases");
    let c1 = work.commit("README", "one\n");
    let st1 = state(&owner, "demo", &[("refs/heads/main", &c1)], Some("main"), 0);
    let mut on_remote = RelayClient::connect(&remote.ws_url());
    on_remote.publish(&ann);
    on_remote.publish(&st1);
    work.git(&[
        "push",
        "-q",
        &remote.repo_url(&npub(&owner), "demo"),
        "main",
    ]);

    let mut relay = RelayClient::connect(&instances[0].ws_url());
    assert_eq!(relay.publish(&ann).message, PURGATORY);
    assert_eq!(relay.publish(&st1).message, PURGATORY);
    let served = |server: &Server, id: &str| {
        RelayClient::connect(&server.ws_url())
            .query_ids(json!({"ids": [id]}))
            .len()
            == 1
    };
    assert!(
        eventually(SOON, || instances
            .iter()
            .all(|i| served(i, &st1.id.to_hex()))),
        "the state was not released on every instance\n{}",
        all_logs(&instances)
    );
    let fetches = |instances: &[Server]| -> f64 {
        instances
            .iter()
            .map(|i| i.metric_sum("graspd_fetches_total{"))
            .sum()
    };
    assert_eq!(
        fetches(&instances),
        1.0,
        "fetched other than once across the instances\n{}",
        all_logs(&instances)
    );

    // The next state: the remote has its data, then freezes (it accepts connections and
    // answers nothing), so the lease holder's fetch hangs.
    let c2 = work.commit("README", "two\n");
    let st2 = state(&owner, "demo", &[("refs/heads/main", &c2)], Some("main"), 1);
    on_remote.publish(&st2);
    work.git(&[
        "push",
        "-q",
        &remote.repo_url(&npub(&owner), "demo"),
        "main",
    ]);
    remote.signal("STOP");
    assert_eq!(relay.publish(&st2).message, PURGATORY);
    let in_flight = |server: &Server| server.metric_sum("graspd_fetches_in_flight{") >= 1.0;
    assert!(
        eventually(SOON, || instances.iter().any(in_flight)),
        "no instance started fetching the second state\n{}",
        all_logs(&instances)
    );
    let holders: Vec<usize> = (0..instances.len())
        .filter(|n| instances[*n].metric(r#"graspd_sync_leases{what="held"}"#) == Some(1.0))
        .collect();
    assert_eq!(
        holders.len(),
        1,
        "one lease holder\n{}",
        all_logs(&instances)
    );
    let holder = holders[0];
    assert!(in_flight(&instances[holder]), "only the holder fetches");
    let mut dead = instances.remove(holder);
    dead.kill9();
    let killed = std::time::Instant::now();
    remote.signal("CONT");

    let released = eventually(LEASE + SOON, || served(&instances[0], &st2.id.to_hex()));
    assert!(
        released,
        "no other instance took over the dead holder's fetch\n{}\n{}",
        all_logs(&instances),
        dead.log()
    );
    eprintln!(
        "kill -9 of the lease holder to the release by another instance: {} ms (lease {} s)",
        killed.elapsed().as_millis(),
        LEASE.as_secs()
    );
    for instance in &instances {
        let mut reader = RelayClient::connect(&instance.ws_url());
        let mut ids = reader.query_ids(json!({"kinds": [30617, 30618]}));
        ids.sort();
        let mut expected = vec![ann.id.to_hex(), st2.id.to_hex()];
        expected.sort();
        assert_eq!(ids, expected, "{}", all_logs(&instances));
    }
    let clone = temp_dir("sync-leases-clone");
    git(
        &clone,
        &[
            "clone",
            "-q",
            &instances[1].repo_url(&npub(&owner), "demo"),
            ".",
        ],
    );
    assert_eq!(git(&clone, &["rev-parse", "HEAD"]).trim(), c2);
}

/// Three instances on one database follow another server's relay (their bootstrap relay):
/// exactly one of them (the relay's follow lease holder) is connected to it, and what it learns
/// is served by all three. After `kill -9` of that instance another one follows the relay once
/// the lease expires, and a state published there afterwards is served by the survivors.
fn on_postgres_each_relay_is_followed_by_one_instance_and_another_takes_over(flavor: Flavor) {
    let Some(database) = postgres_database("pg_relay_leases") else {
        return;
    };
    const LEASE: Duration = Duration::from_secs(3);
    let remote = Server::start(flavor);
    let options = fast_sync()
        .flag("--database-url", database)
        .flag("--sync-lease-secs", LEASE.as_secs())
        .flag("--sync-delay-synced-ms", 100)
        .flag("--bootstrap-relay", remote.ws_url())
        .arg("--allow-private-relays");
    let mut instances = three_behind_one_origin(flavor, options);
    let connected = format!(
        r#"graspd_follow_relay_connected{{relay="{}"}}"#,
        remote.ws_url()
    );
    let followers = |instances: &[Server]| -> Vec<usize> {
        (0..instances.len())
            .filter(|n| instances[*n].metric(&connected) == Some(1.0))
            .collect()
    };
    let served = |server: &Server, ids: &[&Event]| {
        let ids: Vec<String> = ids.iter().map(|e| e.id.to_hex()).collect();
        RelayClient::connect(&server.ws_url())
            .query_ids(json!({ "ids": ids }))
            .len()
            == ids.len()
    };

    let owner = keys(1);
    let ann = announcement(
        &owner,
        "followed",
        &[&remote.http_url(), &instances[0].http_url()],
        &[],
    );
    let work = WorkRepo::init("relay-leases");
    let c1 = work.commit("README", "one\n");
    let st1 = state(
        &owner,
        "followed",
        &[("refs/heads/main", &c1)],
        Some("main"),
        0,
    );
    let mut on_remote = RelayClient::connect(&remote.ws_url());
    on_remote.publish(&ann);
    on_remote.publish(&st1);
    let remote_repo = remote.repo_url(&npub(&owner), "followed");
    work.git(&["push", "-q", &remote_repo, "main"]);
    assert!(
        eventually(Duration::from_secs(60), || instances
            .iter()
            .all(|i| served(i, &[&ann, &st1]))),
        "the followed events were not served by every instance\n{}",
        all_logs(&instances)
    );
    let holders = followers(&instances);
    assert_eq!(
        holders.len(),
        1,
        "not exactly one instance follows the relay\n{}",
        all_logs(&instances)
    );
    let holder = holders[0];
    let leases_held: f64 = instances
        .iter()
        .map(|i| {
            i.metric(r#"graspd_relay_leases{what="held"}"#)
                .unwrap_or(0.0)
        })
        .sum();
    assert_eq!(leases_held, 1.0, "{}", all_logs(&instances));

    let mut dead = instances.remove(holder);
    dead.kill9();
    let killed = std::time::Instant::now();
    assert!(
        eventually(LEASE + SOON, || followers(&instances).len() == 1),
        "no surviving instance took the relay over\n{}\n{}",
        all_logs(&instances),
        dead.log()
    );
    eprintln!(
        "kill -9 of the relay's follower to another instance following it: {} ms (lease {} s)",
        killed.elapsed().as_millis(),
        LEASE.as_secs()
    );
    let c2 = work.commit("README", "two\n");
    let st2 = state(
        &owner,
        "followed",
        &[("refs/heads/main", &c2)],
        Some("main"),
        1,
    );
    on_remote.publish(&st2);
    work.git(&["push", "-q", &remote_repo, "main"]);
    assert!(
        eventually(Duration::from_secs(60), || instances
            .iter()
            .all(|i| served(i, &[&st2]))),
        "a state published after the take-over was not served\n{}",
        all_logs(&instances)
    );
    assert_eq!(followers(&instances).len(), 1, "{}", all_logs(&instances));
    let clone = temp_dir("relay-leases-clone");
    git(
        &clone,
        &[
            "clone",
            "-q",
            &instances[0].repo_url(&npub(&owner), "followed"),
            ".",
        ],
    );
    assert_eq!(git(&clone, &["rev-parse", "HEAD"]).trim(), c2);
}

/// The metric of states waiting in an instance's engine.
const WAITING_STATES: &str = r#"graspd_purgatory_waiting{kind="state"}"#;

/// Publishes `ann` and `st` on `relay` (both wait for their data) and waits until `other`,
/// an instance on the same database, holds the state waiting too.
fn publish_waiting_learned_by(relay: &mut RelayClient, other: &Server, ann: &Event, st: &Event) {
    assert_eq!(relay.publish(ann).message, PURGATORY);
    assert_eq!(relay.publish(st).message, PURGATORY);
    assert!(
        eventually(SOON, || other.metric(WAITING_STATES) == Some(1.0)),
        "the other instance never learned of the waiting state\n{}",
        other.log()
    );
}

/// A state its author deletes on one instance stops waiting on the others: a push to another
/// instance can no longer align the repository to it.
fn on_postgres_a_state_deleted_on_one_instance_is_refused_on_another(flavor: Flavor) {
    let Some(options) = on_postgres("pg_deleted_elsewhere") else {
        return;
    };
    let first = Server::start_with(flavor, options.clone());
    let second = Server::start_with(
        flavor,
        options
            .data_dir(&first.data_dir)
            .public_url(first.http_url()),
    );
    let owner = keys(1);
    let ann = announcement(&owner, "demo", &[&first.http_url()], &[]);
    let work = WorkRepo::init("deleted-elsewhere");
    let c1 = work.commit("README", "regretted\n");
    let st = state(&owner, "demo", &[("refs/heads/main", &c1)], Some("main"), 0);
    let mut relay = RelayClient::connect(&first.ws_url());
    publish_waiting_learned_by(&mut relay, &second, &ann, &st);

    assert!(relay.publish(&deletion(&owner, &[&st])).accepted);
    assert!(
        eventually(SOON, || second.metric(WAITING_STATES) == Some(0.0)),
        "the state deleted on the first still waits on the second\n{}",
        second.log()
    );
    let url = second.repo_url(&npub(&owner), "demo");
    let refused = git_fails(&work.dir, &["push", &url, "main"]);
    assert!(refused.contains("[remote rejected]"), "{refused}");
    assert_eq!(ref_of(&url, "refs/heads/main"), None);
}

/// A database that is down at start-up stops graspd with an error naming the URL, never its
/// password.
fn on_postgres_a_database_that_is_down_is_a_clear_start_up_error(flavor: Flavor) {
    let dir = temp_dir("pg-down");
    let out = std::process::Command::new(flavor.binary())
        .args(["--bind", "127.0.0.1:0", "--data-dir"])
        .arg(&dir)
        .args([
            "--database-url",
            "postgres://graspd:s3cret@127.0.0.1:1/events",
        ])
        .env("NO_COLOR", "1")
        .output()
        .expect("run graspd");
    let stderr = String::from_utf8_lossy(&out.stderr);
    let all = format!("{stderr}{}", String::from_utf8_lossy(&out.stdout));
    assert!(!out.status.success(), "started without its database: {all}");
    assert!(
        all.contains("postgres://graspd@127.0.0.1:1/events"),
        "the error names the database: {all}"
    );
    assert!(!all.contains("s3cret"), "the password leaked: {all}");
}

/// Sync flags that make a user-published event's data hunted quickly, for two-server tests.
fn fast_sync() -> ServerOptions {
    ServerOptions::default()
        .arg("--sync-delay-published-ms")
        .arg("200")
        .arg("--sync-backoff-ms")
        .arg("300")
        .arg("--sync-backoff-max-ms")
        .arg("1000")
}

/// A state published to B whose data is on A, for 50 repositories at once: B fetches each
/// from A one second after it was published (the default), while the user pushes the same
/// data to B at a random moment 0-3 s after publishing. Every push succeeds, whether it ran
/// before, during or after B's fetch, and every state is served on B.
fn push_racing_a_fetch_of_the_same_state_succeeds(flavor: Flavor) {
    const REPOS: usize = 50;
    /// Seeds the push delays; a failure names it so the same delays can be replayed.
    const SEED: u64 = 0x5eed_0f9a_5b00;
    let a = Server::start(flavor);
    let b = Server::start(flavor);
    let owner = keys(1);
    let work = WorkRepo::init("work");
    let tip = work.commit("README", "raced\n");
    let mut relay_a = RelayClient::connect(&a.ws_url());
    let repos: Vec<(String, Event, Event)> = (0..REPOS)
        .map(|r| {
            let id = format!("race{r}");
            let ann = announcement(&owner, &id, &[&a.http_url(), &b.http_url()], &[]);
            let st = state(&owner, &id, &[("refs/heads/main", &tip)], Some("main"), 0);
            relay_a.publish(&ann);
            relay_a.publish(&st);
            work.git(&["push", "-q", &a.repo_url(&npub(&owner), &id), "main"]);
            (id, ann, st)
        })
        .collect();
    let mut rng = SEED;
    let mut relay_b = RelayClient::connect(&b.ws_url());
    let pushes: Vec<_> = repos
        .iter()
        .map(|(id, ann, st)| {
            relay_b.publish(ann);
            assert_eq!(relay_b.publish(st).message, PURGATORY);
            // xorshift: deterministic delays without a dependency.
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            let delay = Duration::from_millis(rng % 3_000);
            let (dir, url) = (work.dir.clone(), b.repo_url(&npub(&owner), id));
            std::thread::spawn(move || {
                std::thread::sleep(delay);
                (
                    url.clone(),
                    delay,
                    git_output(&dir, &["push", &url, "main"]),
                )
            })
        })
        .collect();
    for push in pushes {
        let (url, delay, out) = push.join().expect("push thread");
        assert!(
            out.status.success(),
            "push to {url} {delay:?} after publishing failed (seed {SEED:#x}): {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let ids: Vec<String> = repos.iter().map(|(_, _, st)| st.id.to_hex()).collect();
    let served = eventually(SOON, || {
        relay_b.query_ids(json!({"ids": ids})).len() == REPOS
    });
    assert!(served, "not every state served on B:\n{}", b.log());
    let log = b.log();
    eprintln!(
        "B fetched {} repositories from A; {} pushes found their refs already there",
        log.matches("fetch done").count(),
        log.matches("push already applied here").count()
    );
}

fn second_server_fetches_state_and_pr_data(flavor: Flavor) {
    let a = Server::start(flavor);
    let b = Server::start_with(flavor, fast_sync());
    let owner = keys(1);
    let ann = announcement(&owner, "demo", &[&a.http_url(), &b.http_url()], &[]);
    let work = WorkRepo::init("work");
    let c1 = work.commit("README", "synced\n");
    let st = state(&owner, "demo", &[("refs/heads/main", &c1)], Some("main"), 0);
    let url_a = a.repo_url(&npub(&owner), "demo");
    let url_b = b.repo_url(&npub(&owner), "demo");
    let mut relay_a = RelayClient::connect(&a.ws_url());
    relay_a.publish(&ann);
    relay_a.publish(&st);
    work.git(&["push", "-q", &url_a, "main"]);

    let mut relay_b = RelayClient::connect(&b.ws_url());
    relay_b.subscribe("live", json!({"kinds": [30618, 1618]}));
    assert_eq!(relay_b.publish(&ann).message, PURGATORY);
    assert_eq!(relay_b.publish(&st).message, PURGATORY);
    assert!(
        relay_b.wait_for_event("live", &st.id.to_hex(), SOON),
        "B did not fetch from A\n{}",
        b.log()
    );
    assert_eq!(
        ref_of(&url_b, "refs/heads/main").as_deref(),
        Some(c1.as_str())
    );

    let contributor = keys(2);
    let c2 = work.commit("pr.txt", "change\n");
    let pr = pull_request(&contributor, &owner, "demo", &c2, &[&url_a]);
    work.git(&[
        "push",
        "-q",
        &url_a,
        &format!("{c2}:refs/nostr/{}", pr.id.to_hex()),
    ]);
    assert!(relay_a.publish(&pr).accepted);
    assert_eq!(relay_b.publish(&pr).message, PURGATORY);
    assert!(
        relay_b.wait_for_event("live", &pr.id.to_hex(), SOON),
        "B did not fetch the PR tip\n{}",
        b.log()
    );
}

fn remote_down_then_back_up(flavor: Flavor) {
    let mut a = Server::start(flavor);
    let b = Server::start_with(flavor, fast_sync());
    let owner = keys(1);
    let ann = announcement(&owner, "demo", &[&a.http_url(), &b.http_url()], &[]);
    let work = WorkRepo::init("work");
    let c1 = work.commit("README", "eventually\n");
    let st = state(&owner, "demo", &[("refs/heads/main", &c1)], Some("main"), 0);
    let mut relay_a = RelayClient::connect(&a.ws_url());
    relay_a.publish(&ann);
    relay_a.publish(&st);
    work.git(&["push", "-q", &a.repo_url(&npub(&owner), "demo"), "main"]);
    drop(relay_a);
    a.kill9();

    let mut relay_b = RelayClient::connect(&b.ws_url());
    relay_b.subscribe("live", json!({"kinds": [30618]}));
    relay_b.publish(&ann);
    relay_b.publish(&st);
    assert!(
        !relay_b.wait_for_event("live", &st.id.to_hex(), Duration::from_secs(2)),
        "released while A was down"
    );
    a.restart();
    assert!(
        relay_b.wait_for_event("live", &st.id.to_hex(), SOON),
        "B never retried A\n{}",
        b.log()
    );
}

/// GRASP-02 event sync: B learns the announcement and the state from A's relay (its bootstrap
/// relay), then fetches the data from A's clone URL, with nothing sent to B directly.
fn events_and_data_reach_a_server_that_follows_another(flavor: Flavor) {
    let a = Server::start(flavor);
    let b = Server::start_with(
        flavor,
        fast_sync()
            .arg("--sync-delay-synced-ms")
            .arg("100")
            .arg("--bootstrap-relay")
            .arg(a.ws_url())
            .arg("--allow-private-relays"),
    );
    let owner = keys(1);
    let work = WorkRepo::init("work");
    let c1 = work.commit("README", "followed\n");
    let ann = announcement(&owner, "demo", &[&a.http_url(), &b.http_url()], &[]);
    let st = state(&owner, "demo", &[("refs/heads/main", &c1)], Some("main"), 0);
    let mut relay_a = RelayClient::connect(&a.ws_url());
    relay_a.publish(&ann);
    relay_a.publish(&st);
    let pushed = std::time::Instant::now();
    work.git(&["push", "-q", &a.repo_url(&npub(&owner), "demo"), "main"]);

    let url_b = b.repo_url(&npub(&owner), "demo");
    let mut relay_b = RelayClient::connect(&b.ws_url());
    let served = eventually(Duration::from_secs(60), || {
        relay_b
            .query_ids(json!({"ids": [st.id.to_hex(), ann.id.to_hex()]}))
            .len()
            == 2
    });
    assert!(
        served,
        "B did not learn and release the events\n{}",
        b.log()
    );
    eprintln!("push on A to state served on B: {:?}", pushed.elapsed());
    assert_eq!(
        ref_of(&url_b, "refs/heads/main").as_deref(),
        Some(c1.as_str())
    );
}

/// A bootstrap relay the server may not follow is reported at start-up with the flag that
/// fixes it; each relay followed is logged when following starts and stops, and has a gauge.
fn followed_relays_and_unfollowable_configuration_are_reported(flavor: Flavor) {
    let relay = Server::start(flavor);
    let label = |url: &str| format!(r#"graspd_follow_relay_connected{{relay="{url}"}}"#);

    let refused = Server::start_with(
        flavor,
        ServerOptions::default().flag("--bootstrap-relay", relay.ws_url()),
    );
    let warning = format!(
        "--bootstrap-relay {} is on a loopback or private address and will not be followed; \
         pass --allow-private-relays",
        relay.ws_url()
    );
    assert!(
        eventually(SOON, || refused
            .log()
            .lines()
            .any(|l| l.contains("WARN") && l.contains(&warning))),
        "no start-up warning naming the flag\n{}",
        refused.log()
    );
    assert_eq!(refused.metric(&label(&relay.ws_url())), None);

    let follower = Server::start_with(
        flavor,
        ServerOptions::default()
            .flag("--bootstrap-relay", relay.ws_url())
            .arg("--allow-private-relays"),
    );
    assert!(!follower.log().contains("WARN"), "{}", follower.log());
    assert!(
        eventually(SOON, || follower.metric(&label(&relay.ws_url()))
            == Some(1.0)),
        "the bootstrap relay's gauge is not 1\n{}",
        follower.log()
    );
    let following = |url: &str, verb: &str| {
        follower
            .log()
            .lines()
            .any(|l| l.contains(verb) && l.contains(&format!("relay={url}")))
    };
    assert!(
        following(&relay.ws_url(), "following relay"),
        "{}",
        follower.log()
    );

    // A hosted repository lists a relay nobody runs: followed (and down) until a newer
    // announcement stops listing it.
    let owner = keys(1);
    let nowhere = "http://127.0.0.1:1";
    let ann = announcement(&owner, "demo", &[&follower.http_url(), nowhere], &[]);
    let mut client = RelayClient::connect(&follower.ws_url());
    assert_eq!(client.publish(&ann).message, PURGATORY);
    let work = WorkRepo::init("work");
    let c1 = work.commit("README", "followed\n");
    let st = state(&owner, "demo", &[("refs/heads/main", &c1)], Some("main"), 0);
    assert_eq!(client.publish(&st).message, PURGATORY);
    work.git(&[
        "push",
        "-q",
        &follower.repo_url(&npub(&owner), "demo"),
        "main",
    ]);
    assert!(
        eventually(SOON, || follower.metric(&label("ws://127.0.0.1:1"))
            == Some(0.0)),
        "the listed relay is not followed\n{}",
        follower.log()
    );
    assert!(
        following("ws://127.0.0.1:1", "following relay"),
        "{}",
        follower.log()
    );
    let newer = announcement_with(&owner, "demo", &[&follower.http_url()], &[], &[], 1);
    assert!(client.publish(&newer).accepted);
    assert!(
        eventually(SOON, || following(
            "ws://127.0.0.1:1",
            "stopped following relay"
        )),
        "{}",
        follower.log()
    );
    assert_eq!(follower.metric(&label("ws://127.0.0.1:1")), None);
    assert_eq!(follower.metric(&label(&relay.ws_url())), Some(1.0));
}

/// The two runtimes interoperate. A smol server syncs a state from a tokio server, and
/// a tokio server syncs one from a smol server.
#[test]
fn mixed_runtimes_sync_from_each_other() {
    for (source, sink) in [(Flavor::Tokio, Flavor::Smol), (Flavor::Smol, Flavor::Tokio)] {
        let a = Server::start(source);
        let b = Server::start_with(sink, fast_sync());
        let owner = keys(1);
        let ann = announcement(&owner, "demo", &[&a.http_url(), &b.http_url()], &[]);
        let work = WorkRepo::init("work");
        let c1 = work.commit("README", &format!("from {source:?} to {sink:?}\n"));
        let st = state(&owner, "demo", &[("refs/heads/main", &c1)], Some("main"), 0);
        let mut relay_a = RelayClient::connect(&a.ws_url());
        relay_a.publish(&ann);
        relay_a.publish(&st);
        work.git(&["push", "-q", &a.repo_url(&npub(&owner), "demo"), "main"]);

        let mut relay_b = RelayClient::connect(&b.ws_url());
        relay_b.subscribe("live", json!({"kinds": [30618]}));
        assert_eq!(relay_b.publish(&ann).message, PURGATORY);
        assert_eq!(relay_b.publish(&st).message, PURGATORY);
        assert!(
            relay_b.wait_for_event("live", &st.id.to_hex(), SOON),
            "{sink:?} did not fetch from {source:?}\n{}",
            b.log()
        );
        assert_eq!(
            ref_of(&b.repo_url(&npub(&owner), "demo"), "refs/heads/main").as_deref(),
            Some(c1.as_str())
        );
    }
}

fn hostile_relay_input_gets_clear_errors(flavor: Flavor) {
    let server = Server::start(flavor);
    let owner = keys(1);
    let mut relay = RelayClient::connect(&server.ws_url());
    // A signed event altered after signing.
    let ann = announcement(&owner, "demo", &[&server.http_url()], &[]);
    let mut forged: serde_json::Value = serde_json::to_value(&ann).unwrap();
    forged["content"] = json!("changed after signing");
    relay.send(json!(["EVENT", forged]));
    let deadline = std::time::Instant::now() + SOON;
    let reply = relay
        .recv_until(deadline)
        .expect("an answer to a forged event");
    assert_eq!(reply[0], "OK", "{reply}");
    assert_eq!(reply[2], false, "{reply}");
    assert!(
        reply[3].as_str().unwrap().starts_with("invalid: "),
        "{reply}"
    );
    // An announcement that does not list this server.
    let elsewhere = announcement(&owner, "other", &["http://elsewhere.example"], &[]);
    let reply = relay.publish(&elsewhere);
    assert!(!reply.accepted && reply.message.contains(':'), "{reply:?}");
    // Not JSON at all.
    relay.send_text("this is not json");
    let reply = relay
        .recv_until(std::time::Instant::now() + SOON)
        .expect("a NOTICE");
    assert_eq!(reply[0], "NOTICE", "{reply}");
    // A frame over the message limit closes the connection; the server keeps serving.
    let sent = relay.try_send_text(&"x".repeat(2 * 1024 * 1024));
    assert!(
        sent.is_err() || relay.is_closed_within(SOON),
        "an oversized frame was accepted"
    );
    let mut fresh = RelayClient::connect(&server.ws_url());
    assert_eq!(fresh.publish(&ann).message, PURGATORY);
}

/// A `refs/nostr/<id>` pushed before its event is still a placeholder after `kill -9`: when no
/// event comes, the ref is deleted at its expiry.
fn placeholder_ref_expires_across_restart(flavor: Flavor) {
    let mut server = Server::start_with(
        flavor,
        ServerOptions::default()
            .arg("--purgatory-expiry-secs")
            .arg("20"),
    );
    let owner = keys(1);
    let url = server.repo_url(&npub(&owner), "demo");
    let mut relay = RelayClient::connect(&server.ws_url());
    relay.publish(&announcement(&owner, "demo", &[&server.http_url()], &[]));
    let work = WorkRepo::init("work");
    let c1 = work.commit("README", "one\n");
    relay.publish(&state(
        &owner,
        "demo",
        &[("refs/heads/main", &c1)],
        Some("main"),
        0,
    ));
    work.git(&["push", "-q", &url, "main"]);
    let c2 = work.commit("pr.txt", "never announced\n");
    let ghost = pull_request(&keys(2), &owner, "demo", &c2, &[&url]);
    let ghost_ref = format!("refs/nostr/{}", ghost.id.to_hex());
    work.git(&["push", "-q", &url, &format!("{c2}:{ghost_ref}")]);
    assert_eq!(ref_of(&url, &ghost_ref), Some(c2.clone()));
    drop(relay);
    server.kill9();
    server.restart();
    assert!(
        eventually(Duration::from_secs(60), || ref_of(&url, &ghost_ref)
            .is_none()),
        "the placeholder ref outlived its expiry after a restart\n{}",
        server.log()
    );
    assert_eq!(ref_of(&url, "refs/heads/main"), Some(c1));
}

/// `cargo install --path runtime-tokio` installs `graspd` and `--path runtime-smol` installs
/// `graspd-smol`: the package's only binary target carries that name, and it is the binary
/// these tests run.
fn binary_is_named_as_operators_install_it(flavor: Flavor) {
    let workspace = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace root");
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let out = std::process::Command::new(cargo)
        .current_dir(workspace)
        .args([
            "metadata",
            "--no-deps",
            "--format-version",
            "1",
            "--offline",
        ])
        .output()
        .expect("run cargo metadata");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let metadata: serde_json::Value = serde_json::from_slice(&out.stdout).expect("metadata JSON");
    let package = metadata["packages"]
        .as_array()
        .and_then(|p| p.iter().find(|p| p["name"] == flavor.package()))
        .expect("the runtime's package");
    let bins: Vec<&str> = package["targets"]
        .as_array()
        .expect("targets")
        .iter()
        .filter(|t| {
            t["kind"]
                .as_array()
                .is_some_and(|k| k.iter().any(|k| k == "bin"))
        })
        .filter_map(|t| t["name"].as_str())
        .collect();
    let expected = match flavor {
        Flavor::Tokio => "graspd",
        Flavor::Smol => "graspd-smol",
    };
    assert_eq!(bins, [expected], "binaries of {}", flavor.package());
    let binary = flavor.binary();
    assert_eq!(binary.file_name().and_then(|n| n.to_str()), Some(expected));
    let version = std::process::Command::new(&binary)
        .arg("--version")
        .output()
        .expect("run the server binary");
    assert!(version.status.success());
    assert!(
        String::from_utf8_lossy(&version.stdout).starts_with("graspd "),
        "{}",
        String::from_utf8_lossy(&version.stdout)
    );
}

/// Connections publishing at once in the burst tests; each waits for its OK before its next
/// EVENT, as a client does.
const PUBLISHERS: usize = 20;
/// Events per burst.
const BURST: usize = 400;
/// How long a burst of events whose data is already here may take to be served on a loaded
/// 2-core machine.
const BURST_SERVED: Duration = Duration::from_secs(60);
/// What the server logs when the engine released an event its purgatory table does not hold.
const NOTHING_TO_SERVE: &str = "nothing to serve";

/// Publishes each batch on its own connection, all batches at once, and returns every event
/// with whether the relay acknowledged it (`OK true`).
fn publish_at_once(server: &Server, batches: Vec<Vec<Event>>) -> Vec<(Event, bool)> {
    let distinct: std::collections::BTreeSet<_> = batches.iter().flatten().map(|e| e.id).collect();
    let total: usize = batches.iter().map(Vec::len).sum();
    assert_eq!(distinct.len(), total, "the test built the same event twice");
    let ws = server.ws_url();
    let publishers: Vec<_> = batches
        .into_iter()
        .map(|batch| {
            let ws = ws.clone();
            std::thread::spawn(move || {
                let mut relay = RelayClient::connect(&ws);
                batch
                    .into_iter()
                    .map(|event| {
                        let accepted = relay.publish(&event).accepted;
                        (event, accepted)
                    })
                    .collect::<Vec<_>>()
            })
        })
        .collect();
    publishers
        .into_iter()
        .flat_map(|p| p.join().expect("publisher thread"))
        .collect()
}

/// Asserts that every one of `ids` is served within [`BURST_SERVED`], and that the server never
/// released an event it had not stored.
fn assert_all_served(server: &Server, ids: &[String]) {
    let mut relay = RelayClient::connect(&server.ws_url());
    let mut served = 0;
    let all = eventually(BURST_SERVED, || {
        served = relay.query_ids(json!({"ids": ids})).len();
        served == ids.len()
    });
    let log = server.log();
    let lost = log.matches(NOTHING_TO_SERVE).count();
    assert!(
        all,
        "{served} of {} acknowledged events served after {BURST_SERVED:?}; the log says \
         \"{NOTHING_TO_SERVE}\" {lost} times",
        ids.len()
    );
    assert_eq!(lost, 0, "released events the store did not hold:\n{log}");
}

/// 400 PRs whose commit is already in the repository, published over 20 connections at once:
/// each is acknowledged as waiting, and each is served, none released before it was stored.
fn concurrent_prs_with_present_commits_are_all_served(flavor: Flavor) {
    let (server, work, url) = served_repo(flavor);
    let owner = keys(1);
    let tip = work.head();
    let now = unix_now();
    let batches = (0..PUBLISHERS)
        .map(|p| {
            let contributor = keys(10 + p as u8);
            (0..BURST / PUBLISHERS)
                .map(|i| {
                    let created = now - i as i64;
                    pull_request_created(&contributor, &owner, "demo", &tip, &[&url], created)
                })
                .collect()
        })
        .collect();
    let replies = publish_at_once(&server, batches);
    let refused: Vec<_> = replies.iter().filter(|(_, ok)| !ok).collect();
    assert!(refused.is_empty(), "{} PRs refused", refused.len());
    let ids: Vec<String> = replies.iter().map(|(e, _)| e.id.to_hex()).collect();
    assert_all_served(&server, &ids);
}

/// 400 states for 20 repositories whose data is already here, published over 20 connections
/// at once (each connection moves from repository to repository): the newest acknowledged
/// state of each repository is served, and no state was released before it was stored.
fn concurrent_states_with_present_data_are_all_served(flavor: Flavor) {
    let server = Server::start(flavor);
    let owner = keys(1);
    let work = WorkRepo::init("work");
    let tip = work.commit("README", "hello\n");
    let repos: Vec<String> = (0..PUBLISHERS).map(|r| format!("repo{r}")).collect();
    let mut relay = RelayClient::connect(&server.ws_url());
    let mut first = Vec::new();
    for repo in &repos {
        relay.publish(&announcement(&owner, repo, &[&server.http_url()], &[]));
        let st = state(&owner, repo, &[("refs/heads/main", &tip)], Some("main"), 0);
        assert_eq!(relay.publish(&st).message, PURGATORY);
        work.git(&["push", "-q", &server.repo_url(&npub(&owner), repo), "main"]);
        first.push(st.id.to_hex());
    }
    assert_all_served(&server, &first);

    let batches = (0..PUBLISHERS)
        .map(|p| {
            (0..BURST / PUBLISHERS)
                .map(|k| {
                    let branch = format!("refs/heads/b{k}");
                    let refs = [("refs/heads/main", tip.as_str()), (branch.as_str(), &tip)];
                    let repo = &repos[(p + k) % PUBLISHERS];
                    state(&owner, repo, &refs, Some("main"), k as i64 + 1)
                })
                .collect()
        })
        .collect();
    let replies = publish_at_once(&server, batches);
    // Per repository, the newest acknowledged state (newer created_at; ties: the lower id):
    // the one that must be served. Older ones are superseded or were refused as older.
    let mut newest: std::collections::BTreeMap<String, &Event> = Default::default();
    for (event, _) in replies.iter().filter(|(_, ok)| *ok) {
        let repo = event.tags.identifier().expect("d tag").to_owned();
        let slot = newest.entry(repo).or_insert(event);
        if (event.created_at, std::cmp::Reverse(event.id))
            > (slot.created_at, std::cmp::Reverse(slot.id))
        {
            *slot = event;
        }
    }
    assert_eq!(
        newest.len(),
        repos.len(),
        "a repository got no state acknowledged"
    );
    let ids: Vec<String> = newest.values().map(|e| e.id.to_hex()).collect();
    assert_all_served(&server, &ids);
}

/// Connections publishing without pause while the server is killed (`kill -9`): every event
/// acknowledged before the kill is served after the restart. Concurrent writes share durable
/// commits, and `OK true` is sent only after the commit holding the event.
fn acknowledged_events_survive_kill9_mid_stream(flavor: Flavor) {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;
    /// Events one connection sends at most (the kill normally ends it long before).
    const PER_CONNECTION: i64 = 2_000;
    let (mut server, _work, _url) = served_repo(flavor);
    let repo = repo_coordinate(&keys(1), "demo");
    let acked = Arc::new(AtomicUsize::new(0));
    let publishers: Vec<_> = (0..PUBLISHERS)
        .map(|p| {
            let (ws, repo, acked) = (server.ws_url(), repo.clone(), Arc::clone(&acked));
            std::thread::spawn(move || {
                let author = keys(40 + p as u8);
                let now = unix_now();
                let mut relay = RelayClient::connect(&ws);
                let mut acknowledged = Vec::new();
                for i in 0..PER_CONNECTION {
                    let issue = tagged_created(&author, 1621, &[&["a", &repo]], now - i);
                    match relay.try_publish(&issue) {
                        Ok(reply) if reply.accepted => {
                            acknowledged.push(issue.id.to_hex());
                            acked.fetch_add(1, Ordering::Relaxed);
                        }
                        // Refused (a rate limit): not acknowledged, nothing promised.
                        Ok(_) => {}
                        // The server is gone.
                        Err(_) => break,
                    }
                }
                acknowledged
            })
        })
        .collect();
    assert!(
        eventually(SOON, || acked.load(Ordering::Relaxed) >= 300),
        "publishing stalled\n{}",
        server.log()
    );
    server.kill9();
    let acknowledged: Vec<String> = publishers
        .into_iter()
        .flat_map(|p| p.join().expect("publisher thread"))
        .collect();
    server.restart();
    let mut relay = RelayClient::connect(&server.ws_url());
    let missing: Vec<&String> = acknowledged
        .chunks(200)
        .flat_map(|ids| {
            let served = relay.query_ids(json!({ "ids": ids }));
            ids.iter().filter(move |id| !served.contains(id))
        })
        .collect();
    assert!(
        missing.is_empty(),
        "{} of {} acknowledged events lost by kill -9: {:?}",
        missing.len(),
        acknowledged.len(),
        &missing[..missing.len().min(5)]
    );
}

/// GRASP-01: events that tag an accepted repository or issue are accepted whatever their
/// kind, through chains (a reaction to a comment on an issue); unrelated ones are refused.
fn events_that_tag_hosted_repos_and_issues_are_accepted(flavor: Flavor) {
    let (server, _work, _url) = served_repo(flavor);
    let owner = keys(1);
    let user = keys(2);
    let repo = repo_coordinate(&owner, "demo");
    let owner_hex = owner.public_key().to_hex();
    let mut relay = RelayClient::connect(&server.ws_url());
    let issue = tagged(
        &user,
        1621,
        &[&["a", &repo], &["p", &owner_hex], &["subject", "it breaks"]],
    );
    let issue_id = issue.id.to_hex();
    let comment = tagged(
        &owner,
        1111,
        &[
            &["E", &issue_id, "", &user.public_key().to_hex()],
            &["K", "1621"],
            &["e", &issue_id],
            &["k", "1621"],
        ],
    );
    let accepted = [
        ("an issue on the repository", issue.clone()),
        (
            "a note quoting the issue",
            tagged(&keys(3), 1, &[&["q", &issue_id]]),
        ),
        (
            "a note tagging the repository",
            tagged(&keys(3), 1, &[&["a", &repo]]),
        ),
        (
            "a note quoting the repository",
            tagged(&keys(3), 1, &[&["q", &repo]]),
        ),
        ("a comment on the issue", comment.clone()),
        (
            "a reaction to the comment",
            tagged(&keys(4), 7, &[&["e", &comment.id.to_hex()], &["k", "1111"]]),
        ),
    ];
    for (what, event) in &accepted {
        let reply = relay.publish(event);
        assert!(reply.accepted, "{what}: {reply:?}\n{}", server.log());
        assert_eq!(
            relay.query_ids(json!({"ids": [event.id.to_hex()]})),
            [event.id.to_hex()],
            "{what} is not served"
        );
    }
    let unrelated = tagged(&keys(3), 1, &[&["t", "hello"]]);
    let reply = relay.publish(&unrelated);
    assert!(!reply.accepted, "{reply:?}");
    assert!(
        reply.message.starts_with("blocked: ") && reply.message.contains("hosted here"),
        "{reply:?}"
    );
    assert!(relay
        .query_ids(json!({"ids": [unrelated.id.to_hex()]}))
        .is_empty());
}

/// GRASP-01 "tagged by": an event an accepted issue references is accepted when it arrives
/// later, also after a `kill -9` between the two.
fn events_an_accepted_issue_references_are_accepted_later(flavor: Flavor) {
    let (mut server, _work, _url) = served_repo(flavor);
    let repo = repo_coordinate(&keys(1), "demo");
    let quoted_note = tagged(&keys(3), 1, &[&["t", "context"]]);
    let referenced_after_restart = tagged(&keys(3), 1, &[&["t", "more context"]]);
    {
        let mut relay = RelayClient::connect(&server.ws_url());
        let issue = tagged(
            &keys(2),
            1621,
            &[
                &["a", &repo],
                &["e", &quoted_note.id.to_hex(), "", "mention"],
                &["q", &referenced_after_restart.id.to_hex()],
            ],
        );
        let reply = relay.publish(&issue);
        assert!(reply.accepted, "{reply:?}");
        let reply = relay.publish(&quoted_note);
        assert!(reply.accepted, "{reply:?}\n{}", server.log());
        assert_eq!(
            relay.query_ids(json!({"ids": [quoted_note.id.to_hex()]})),
            [quoted_note.id.to_hex()]
        );
    }
    server.kill9();
    server.restart();
    let mut relay = RelayClient::connect(&server.ws_url());
    let reply = relay.publish(&referenced_after_restart);
    assert!(reply.accepted, "{reply:?}\n{}", server.log());
    assert_eq!(
        relay.query_ids(json!({"ids": [referenced_after_restart.id.to_hex()]})),
        [referenced_after_restart.id.to_hex()]
    );
}

/// A server whose git runs see `config` as the operator's global git configuration (and no
/// system configuration), as `~/.gitconfig` would be.
fn server_with_git_config(flavor: Flavor, config: &str) -> Server {
    let path = temp_dir("operator-gitconfig").join("gitconfig");
    std::fs::write(&path, config).expect("write git config");
    Server::start_with(
        flavor,
        ServerOptions::default()
            .env("GIT_CONFIG_GLOBAL", path.display().to_string())
            .env("GIT_CONFIG_NOSYSTEM", "1"),
    )
}

/// The flow clients written against other GRASP servers follow: clone the announced (empty)
/// repository, commit, create `main` themselves, publish a state for it, force-push. The empty
/// repository's unborn HEAD is what `git init --bare` gives (the operator's
/// `init.defaultBranch`, else git's own default), so the clone is not on `main` already.
fn empty_clone_then_create_main_and_push(flavor: Flavor) {
    let server = server_with_git_config(flavor, "");
    let owner = keys(1);
    let url = server.repo_url(&npub(&owner), "demo");
    let mut relay = RelayClient::connect(&server.ws_url());
    let ann = announcement(&owner, "demo", &[&server.http_url()], &[]);
    assert_eq!(relay.publish(&ann).message, PURGATORY);

    let dir = temp_dir("empty-clone");
    let cloned = git_output(&dir, &["clone", &url, "c"]);
    assert!(
        cloned.status.success(),
        "{}",
        String::from_utf8_lossy(&cloned.stderr)
    );
    let clone = dir.join("c");
    std::fs::write(clone.join("README"), "first\n").unwrap();
    git(&clone, &["add", "README"]);
    git(&clone, &["commit", "-q", "-m", "first"]);
    git(&clone, &["branch", "main"]);
    git(&clone, &["checkout", "-q", "main"]);
    let c1 = git(&clone, &["rev-parse", "HEAD"]);

    let st = state(&owner, "demo", &[("refs/heads/main", &c1)], Some("main"), 0);
    assert_eq!(relay.publish(&st).message, PURGATORY);
    relay.subscribe("live", json!({"ids": [st.id.to_hex()]}));
    let pushed = git_output(&clone, &["push", "origin", "main", "--force"]);
    assert!(
        pushed.status.success(),
        "{}\n{}",
        String::from_utf8_lossy(&pushed.stderr),
        server.log()
    );
    assert!(
        relay.wait_for_event("live", &st.id.to_hex(), SOON),
        "state not served after the push\n{}",
        server.log()
    );
    assert!(
        eventually(SOON, || relay
            .query_ids(json!({"ids": [ann.id.to_hex()]}))
            .len()
            == 1),
        "announcement not served with its first state"
    );
    assert_eq!(ref_of(&url, "refs/heads/main"), Some(c1.clone()));
    let again = temp_dir("second-clone");
    git(&again, &["clone", "-q", &url, "c"]);
    assert_eq!(
        git(&again.join("c"), &["symbolic-ref", "HEAD"]),
        "refs/heads/main",
        "HEAD follows the state's HEAD tag once applied"
    );
    assert_eq!(git(&again.join("c"), &["rev-parse", "HEAD"]), c1);

    // The operator's `init.defaultBranch` names a new repository's unborn branch.
    let trunk = server_with_git_config(flavor, "[init]\n\tdefaultBranch = trunk\n");
    let url = trunk.repo_url(&npub(&owner), "demo");
    let mut relay = RelayClient::connect(&trunk.ws_url());
    let ann = announcement(&owner, "demo", &[&trunk.http_url()], &[]);
    assert_eq!(relay.publish(&ann).message, PURGATORY);
    let dir = temp_dir("trunk-clone");
    let cloned = git_output(&dir, &["clone", &url, "c"]);
    assert!(cloned.status.success());
    assert_eq!(
        git(&dir.join("c"), &["symbolic-ref", "HEAD"]),
        "refs/heads/trunk"
    );
}

/// The Content-Security-Policy every web page carries.
const PAGE_CSP: &str = "default-src 'none'; style-src 'self'; base-uri 'none'; \
                        form-action 'none'; frame-ancestors 'none'";

/// The path of `<npub>/<identifier>.git` on a server (the repository's page for a browser).
fn repo_path(owner: &nostr_sdk::prelude::Keys, identifier: &str) -> String {
    format!("/{}/{identifier}.git", npub(owner))
}

/// Announces `identifier` (with `extra` tags and a `created_at` offset), publishes a state with
/// `main` at a new commit, and pushes it, so the announcement is served. Returns the commit.
fn publish_and_push(
    server: &Server,
    owner: &nostr_sdk::prelude::Keys,
    identifier: &str,
    extra: &[&[&str]],
    created_offset: i64,
) -> String {
    let mut relay = RelayClient::connect(&server.ws_url());
    let ann = announcement_with(
        owner,
        identifier,
        &[&server.http_url()],
        &[],
        extra,
        created_offset,
    );
    assert_eq!(relay.publish(&ann).message, PURGATORY);
    let work = WorkRepo::init(identifier);
    let commit = work.commit("README", &format!("{identifier}\n"));
    let st = state(
        owner,
        identifier,
        &[("refs/heads/main", &commit)],
        Some("main"),
        0,
    );
    assert!(relay.publish(&st).accepted);
    work.git(&[
        "push",
        "-q",
        &server.repo_url(&npub(owner), identifier),
        "main",
    ]);
    assert!(
        eventually(SOON, || relay
            .query_ids(json!({"ids": [ann.id.to_hex()]}))
            .len()
            == 1),
        "announcement {identifier} not served after its push\n{}",
        server.log()
    );
    commit
}

/// Polls `path` until it answers 200: an announcement is served just after the state that
/// releases it.
fn wait_for_page(server: &Server, path: &str) -> graspd_tests::http::Response {
    let mut last = None;
    let served = eventually(SOON, || {
        let r = request(server.addr, "GET", path, &[("Accept", "text/html")], b"");
        let ok = r.status == 200;
        last = Some(r);
        ok
    });
    let last = last.expect("at least one answer");
    assert!(
        served,
        "{path}: {} {}\n{}",
        last.status,
        last.text(),
        server.log()
    );
    last
}

fn assert_html_page(r: &graspd_tests::http::Response) {
    assert_eq!(r.header("content-type"), Some("text/html; charset=utf-8"));
    assert_eq!(r.header("content-security-policy"), Some(PAGE_CSP));
    assert_eq!(r.header("access-control-allow-origin"), Some("*"));
    let body = r.text();
    assert!(!body.contains("<script"), "{body}");
    assert!(!body.contains("style="), "inline style: {body}");
}

/// GRASP-01: a browser's GET of the repository URL gets a page with what the repository holds
/// and where to browse it; every user-provided string is text, never markup or a script link;
/// git's own requests to the same repository are answered as before.
fn repository_page_shows_refs_clone_addresses_and_clients(flavor: Flavor) {
    let server = Server::start(flavor);
    let (owner, co) = (keys(1), keys(2));
    let url = server.repo_url(&npub(&owner), "demo");
    let mut relay = RelayClient::connect(&server.ws_url());
    let ann = announcement_with(
        &owner,
        "demo",
        &[&server.http_url()],
        &[&co],
        &[
            &["name", "<script>alert(\"pwned\")</script>"],
            &["description", "Quotes \" and ' & <b>tags</b>"],
            &[
                "web",
                "javascript:alert(1)",
                "https://example.com/demo?a=1&b=2",
            ],
        ],
        0,
    );
    assert_eq!(relay.publish(&ann).message, PURGATORY);
    let page = repo_path(&owner, "demo");
    let waiting = request(server.addr, "GET", &page, &[], b"");
    assert_eq!(
        waiting.status, 404,
        "a page for an announcement in purgatory"
    );
    assert_html_page(&waiting);

    let work = WorkRepo::init("work");
    let c1 = work.commit("README", "hello\n");
    work.git(&["checkout", "-q", "-b", "dev"]);
    let c2 = work.commit("dev.txt", "dev\n");
    work.git(&["tag", "-a", "v1.0", "-m", "release", &c1]);
    let st = state(
        &owner,
        "demo",
        &[
            ("refs/heads/main", &c1),
            ("refs/heads/dev", &c2),
            ("refs/tags/v1.0", &work.rev("v1.0")),
        ],
        Some("main"),
        0,
    );
    assert!(relay.publish(&st).accepted);
    relay.subscribe("live", json!({"ids": [st.id.to_hex()]}));
    work.git(&["push", "-q", &url, "main", "dev", "v1.0"]);
    assert!(
        relay.wait_for_event("live", &st.id.to_hex(), SOON),
        "{}",
        server.log()
    );

    let r = wait_for_page(&server, &page);
    assert_html_page(&r);
    let body = r.text();
    let owner_npub = npub(&owner);
    let relay_hint = format!("ws%3A%2F%2F{}", server.addr.to_string().replace(':', "%3A"));
    for expected in [
        "<h1>&lt;script&gt;alert(&quot;pwned&quot;)&lt;/script&gt;</h1>",
        "Quotes &quot; and &#39; &amp; &lt;b&gt;tags&lt;/b&gt;",
        "<a href=\"https://example.com/demo?a=1&amp;b=2\">",
        "<code>javascript:alert(1)</code>",
        &format!("git clone {url}"),
        &format!("git clone nostr://{owner_npub}/{relay_hint}/demo"),
        "<a href=\"https://gitworkshop.dev/naddr1",
        "<a href=\"nostr:naddr1",
        &format!("<code>main</code> <span class=\"badge\">HEAD</span></td><td><code>{c1}</code>"),
        &format!("<code>dev</code></td><td><code>{c2}</code>"),
        // The annotated tag is shown at the commit it names.
        &format!("<code>v1.0</code></td><td><code>{c1}</code>"),
        "HEAD points to <code>refs/heads/main</code>",
        &owner_npub,
        &npub(&co),
    ] {
        assert!(body.contains(expected), "{expected:?} missing from\n{body}");
    }
    assert!(!body.contains("href=\"javascript"), "{body}");
    let naddr = body
        .split("href=\"nostr:")
        .nth(1)
        .and_then(|rest| rest.split('"').next())
        .expect("an naddr link");
    let coordinate =
        <nostr_sdk::prelude::Nip19Coordinate as nostr_sdk::prelude::FromBech32>::from_bech32(naddr)
            .expect("a NIP-19 naddr");
    assert_eq!(coordinate.kind.as_u16(), 30617);
    assert_eq!(coordinate.public_key, owner.public_key());
    assert_eq!(coordinate.identifier, "demo");
    assert_eq!(
        coordinate.relays[0].as_str_without_trailing_slash(),
        server.ws_url()
    );

    let css = request(server.addr, "GET", "/graspd.css", &[], b"");
    assert_eq!(css.status, 200);
    assert_eq!(css.header("content-type"), Some("text/css; charset=utf-8"));
    // The same URL for git: smart HTTP only, unchanged; a POST is not a page.
    let dumb = request(server.addr, "GET", &format!("{page}/info/refs"), &[], b"");
    assert_eq!(dumb.status, 403);
    assert_eq!(request(server.addr, "POST", &page, &[], b"").status, 405);
    let clone = temp_dir("clone");
    git(&clone, &["clone", "-q", &url, "c"]);
    assert_eq!(git(&clone.join("c"), &["rev-parse", "HEAD"]), c1);
}

/// A repository this server does not host gets a styled 404; so does one whose announcement
/// is still waiting for its data, although its bare repository exists.
fn unhosted_repository_page_is_a_styled_404(flavor: Flavor) {
    let server = Server::start(flavor);
    let owner = keys(1);
    let r = request(server.addr, "GET", &repo_path(&owner, "nowhere"), &[], b"");
    assert_eq!(r.status, 404);
    assert_html_page(&r);
    let body = r.text();
    assert!(body.contains("Repository not found"), "{body}");
    assert!(body.contains("<code>nowhere</code>"), "{body}");
    assert!(body.contains("href=\"/graspd.css\""), "{body}");

    let mut relay = RelayClient::connect(&server.ws_url());
    relay.publish(&announcement(&owner, "waiting", &[&server.http_url()], &[]));
    assert!(ls_remote(&server.repo_url(&npub(&owner), "waiting")).is_empty());
    let r = request(server.addr, "GET", &repo_path(&owner, "waiting"), &[], b"");
    assert_eq!(r.status, 404, "{}", r.text());
    assert!(r.text().contains("Repository not found"));
    // git's requests for a repository that does not exist are answered as before.
    let r = request(
        server.addr,
        "GET",
        &format!(
            "{}/info/refs?service=git-upload-pack",
            repo_path(&owner, "nowhere")
        ),
        &[],
        b"",
    );
    assert_eq!(r.status, 404);
    assert_eq!(r.header("content-type"), Some("text/plain; charset=utf-8"));
}

/// The landing page lists served repositories newest first, links each to its page, leaves
/// out announcements still waiting, and pages with the `?after=` cursor.
fn landing_page_lists_hosted_repositories_newest_first(flavor: Flavor) {
    let server = Server::start(flavor);
    let (a, b) = (keys(1), keys(2));
    publish_and_push(&server, &a, "alpha", &[&["description", "the oldest"]], -30);
    publish_and_push(&server, &b, "beta", &[], -20);
    publish_and_push(&server, &a, "gamma", &[&["name", "Gamma <3"]], -10);
    let mut relay = RelayClient::connect(&server.ws_url());
    relay.publish(&announcement(&a, "waiting", &[&server.http_url()], &[]));

    let r = request(server.addr, "GET", "/", &[("Accept", "text/html")], b"");
    assert_eq!(r.status, 200);
    assert_html_page(&r);
    let body = r.text();
    let at = |needle: &str| {
        body.find(needle)
            .unwrap_or_else(|| panic!("{needle:?} missing from\n{body}"))
    };
    let (gamma, beta, alpha) = (
        at(&format!(
            "<a href=\"{}\">Gamma &lt;3</a>",
            server.repo_url(&npub(&a), "gamma")
        )),
        at(&format!(
            "<a href=\"{}\">beta</a>",
            server.repo_url(&npub(&b), "beta")
        )),
        at(&format!(
            "<a href=\"{}\">alpha</a>",
            server.repo_url(&npub(&a), "alpha")
        )),
    );
    assert!(gamma < beta && beta < alpha, "not newest first:\n{body}");
    assert!(body.contains("the oldest"));
    assert!(
        !body.contains("waiting.git"),
        "a waiting announcement is listed:\n{body}"
    );

    // The page after gamma, by its cursor.
    let newest = relay.query(json!({"kinds": [30617], "#d": ["gamma"]}));
    let cursor = format!(
        "{}-{}",
        newest[0]["created_at"].as_u64().unwrap(),
        newest[0]["id"].as_str().unwrap()
    );
    let r = request(server.addr, "GET", &format!("/?after={cursor}"), &[], b"");
    assert_eq!(r.status, 200);
    let later = r.text();
    assert!(
        !later.contains("gamma.git") && later.contains("beta.git") && later.contains("alpha.git")
    );
    assert!(later.contains("<a href=\"/\">Newest</a>"), "{later}");
    let r = request(server.addr, "GET", "/?after=<script>", &[], b"");
    assert_eq!(r.status, 400);
}

/// A real browser renders the repository page and the 404 with the stylesheet allowed by the
/// Content-Security-Policy and no violation reported. With `GRASPD_SCREENSHOT_DIR` set, it
/// also writes screenshots of the pages there, to look at.
#[test]
fn repository_page_and_404_render_in_chromium() {
    let Some(chromium) = graspd_tests::browser::chromium() else {
        eprintln!(
            "SKIPPED repository_page_and_404_render_in_chromium: no chromium on PATH \
             (apt-get install chromium; under CI the test fails instead)"
        );
        return;
    };
    let (server, work, url) = served_repo(Flavor::Tokio);
    wait_for_page(&server, &repo_path(&keys(1), "demo"));
    let page = graspd_tests::browser::render(&chromium, &url);
    let text = page.text();
    for expected in [
        "demo",
        "Browse",
        "Issues, patches and code on gitworkshop.dev",
        &format!("git clone {url}"),
        "git clone nostr://",
        "Branches",
        &format!("main HEAD {}", work.head()),
        &npub(&keys(1)),
    ] {
        assert!(
            text.contains(expected),
            "{expected:?} not rendered:\n{text}"
        );
    }
    assert!(
        !page.log.contains("Content Security Policy"),
        "CSP violation:\n{}",
        page.log
    );
    let missing = graspd_tests::browser::render(
        &chromium,
        &format!("{}{}", server.http_url(), repo_path(&keys(1), "nowhere")),
    );
    let text = missing.text();
    assert!(
        text.contains("Repository not found") && text.contains("does not host nowhere"),
        "{text}"
    );
    assert!(
        !missing.log.contains("Content Security Policy"),
        "{}",
        missing.log
    );
    if let Some(png) = std::env::var_os("GRASPD_SCREENSHOT_DIR") {
        let dir = std::path::PathBuf::from(png);
        graspd_tests::browser::screenshot(&chromium, &url, &dir.join("repository.png"));
        graspd_tests::browser::screenshot(&chromium, &server.http_url(), &dir.join("landing.png"));
        graspd_tests::browser::screenshot(
            &chromium,
            &format!("{}{}", server.http_url(), repo_path(&keys(1), "nowhere")),
            &dir.join("not-found.png"),
        );
    }
}

both_runtimes!(
    empty_clone_then_create_main_and_push,
    binary_is_named_as_operators_install_it,
    events_that_tag_hosted_repos_and_issues_are_accepted,
    events_an_accepted_issue_references_are_accepted_later,
    placeholder_ref_expires_across_restart,
    hostile_relay_input_gets_clear_errors,
    events_and_data_reach_a_server_that_follows_another,
    announcement_then_push_then_served,
    push_without_matching_state_is_rejected_with_reason,
    pull_request_before_and_after_its_event,
    state_with_present_data_is_applied_without_push,
    two_maintainers_repos_kept_in_step,
    partial_clone_with_blob_filter,
    nip11_and_cors,
    deletion_removes_event_from_purgatory,
    unusual_states_are_taken_as_other_servers_take_them,
    followed_relays_and_unfollowable_configuration_are_reported,
    kill9_and_restart_keep_purgatory_and_store,
    deletion_stored_before_a_crash_still_removes_its_waiting_target,
    second_server_fetches_state_and_pr_data,
    push_racing_a_fetch_of_the_same_state_succeeds,
    remote_down_then_back_up,
    concurrent_prs_with_present_commits_are_all_served,
    concurrent_states_with_present_data_are_all_served,
    acknowledged_events_survive_kill9_mid_stream,
    repository_page_shows_refs_clone_addresses_and_clients,
    unhosted_repository_page_is_a_styled_404,
    landing_page_lists_hosted_repositories_newest_first,
    on_postgres_events_are_served_and_kept_across_restarts_and_kill9,
    on_postgres_a_second_instance_serves_what_the_first_accepted,
    on_postgres_three_instances_behind_one_origin_share_pushes_and_live_events,
    on_postgres_one_instance_fetches_and_another_takes_over_from_a_dead_one,
    on_postgres_each_relay_is_followed_by_one_instance_and_another_takes_over,
    on_postgres_a_state_deleted_on_one_instance_is_refused_on_another,
    on_postgres_a_database_that_is_down_is_a_clear_start_up_error,
);
