//! `graspd purge` (and `graspd-smol purge`): with the server stopped, deletes what the deny
//! lists refuse, events and git directories, and nothing else. Runs against both binaries.

use std::path::Path;
use std::process::Output;

use graspd_tests::fixtures::{hosted_repo, hosted_repo_of};
use graspd_tests::git::{git_fails, ref_of};
use graspd_tests::nostr::{keys, npub, tagged, RelayClient};
use graspd_tests::{both_runtimes, Flavor, Server};
use serde_json::json;

fn purge(flavor: Flavor, data_dir: &Path, args: &[&str]) -> Output {
    std::process::Command::new(flavor.binary())
        .arg("purge")
        .arg("--data-dir")
        .arg(data_dir)
        .args(args)
        .output()
        .expect("run the purge")
}

fn purge_deletes_what_the_deny_lists_refuse_and_nothing_else(flavor: Flavor) {
    let mut server = Server::start(flavor);
    let owner = keys(1);
    let coordinate = hosted_repo(&server);
    let kept_repo = hosted_repo_of(&server, &keys(3), "kept");
    let mut kept = vec![
        kept_repo.announcement.id.to_hex(),
        kept_repo.state.id.to_hex(),
    ];
    let mut relay = RelayClient::connect(&server.ws_url());
    let issue = tagged(&keys(4), 1621, &[&["a", &coordinate]]);
    assert!(relay.publish(&issue).accepted);
    let kept_issue = tagged(&keys(4), 1621, &[&["a", &kept_repo.coordinate]]);
    assert!(relay.publish(&kept_issue).accepted);
    kept.push(kept_issue.id.to_hex());
    let mut denied = relay.query_ids(json!({"authors": [owner.public_key().to_hex()]}));
    assert_eq!(denied.len(), 2, "announcement and state of demo");
    denied.push(issue.id.to_hex());
    let demo_dir = server.data_dir.join(npub(&owner)).join("demo.git");
    assert!(demo_dir.is_dir());
    let entry = format!("{}/demo", npub(&owner));
    let deny = ["--deny-repo", entry.as_str()];

    // A running server holds the store: the purge touches nothing.
    let busy = purge(flavor, &server.data_dir, &deny);
    let stderr = String::from_utf8_lossy(&busy.stderr);
    assert!(!busy.status.success(), "{stderr}");
    assert!(stderr.contains("already open"), "{stderr}");
    assert!(demo_dir.is_dir());

    drop(relay);
    server.kill9();
    let done = purge(flavor, &server.data_dir, &deny);
    let stdout = String::from_utf8_lossy(&done.stdout);
    assert!(
        done.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&done.stderr)
    );
    for id in &denied {
        assert!(stdout.contains(&format!("removed event {id}")), "{stdout}");
    }
    assert!(
        stdout.contains(&format!("removed repository {}", demo_dir.display())),
        "{stdout}"
    );
    assert!(stdout.contains("purged 3 served events"), "{stdout}");
    assert!(!demo_dir.exists());

    // Started again without the deny: what was purged is gone, not hidden; the rest is served.
    server.start_again();
    let mut relay = RelayClient::connect(&server.ws_url());
    assert!(relay.query_ids(json!({ "ids": denied })).is_empty());
    assert_eq!(relay.query_ids(json!({ "ids": kept })).len(), 3);
    let kept_url = server.repo_url(&npub(&keys(3)), "kept");
    assert_eq!(ref_of(&kept_url, "refs/heads/main"), Some(kept_repo.tip));
    let scratch = graspd_tests::temp_dir("purge-ls-remote");
    let demo_url = server.repo_url(&npub(&owner), "demo");
    let gone = git_fails(&scratch, &["ls-remote", &demo_url]);
    assert!(gone.contains("not found"), "{gone}");
    let _ = std::fs::remove_dir_all(scratch);
}

both_runtimes!(purge_deletes_what_the_deny_lists_refuse_and_nothing_else);
