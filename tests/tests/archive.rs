//! GRASP-05 archive mode (`--archive-repo`, `archive_repos` in the `--config` file): a server
//! mirrors, read-only, a repository whose announcement lists only another server. Runs
//! against both server binaries.

use std::time::Duration;

use graspd_tests::fixtures::hosted_repo_of;
use graspd_tests::git::{git, git_fails, ref_of};
use graspd_tests::http::nip11_document;
use graspd_tests::nostr::{announcement, eventually, keys, npub, tagged, RelayClient};
use graspd_tests::{both_runtimes, Flavor, Server, ServerOptions};
use serde_json::{json, Value};

const WAIT: Duration = Duration::from_secs(60);

fn soon(what: &str, server: &Server, cond: impl FnMut() -> bool) {
    assert!(eventually(WAIT, cond), "{what}\n{}", server.log());
}

fn lists_grasp05(server: &Server) -> bool {
    nip11_document(server.addr)["supported_grasps"]
        .as_array()
        .is_some_and(|grasps| grasps.contains(&Value::from("GRASP-05")))
}

/// B archives `<owner>/demo`, hosted on A and announced with A alone: B takes the
/// announcement, follows A's relay for the state and the issues, fetches the data from A,
/// serves it to `git clone`, and refuses pushes with the reason.
fn an_archive_mirrors_a_repository_hosted_elsewhere(flavor: Flavor) {
    let a = Server::start(flavor);
    let owner = keys(1);
    let b = Server::start_with(
        flavor,
        ServerOptions::default()
            .flag("--archive-repo", format!("{}/demo", npub(&owner)))
            .flag("--sync-delay-synced-ms", 100)
            .flag("--sync-backoff-ms", 300)
            .flag("--sync-backoff-max-ms", 1000)
            .arg("--allow-private-relays"),
    );
    let hosted = hosted_repo_of(&a, &owner, "demo");
    let (ann, st, tip) = (hosted.announcement, hosted.state, hosted.tip);
    let mut relay_a = RelayClient::connect(&a.ws_url());

    // An announcement B does not archive is refused: it does not list B.
    let mut relay_b = RelayClient::connect(&b.ws_url());
    let elsewhere = announcement(&keys(2), "demo", &[&a.http_url()], &[]);
    let refused = relay_b.publish(&elsewhere);
    assert!(
        !refused.accepted && refused.message.contains("lists it"),
        "{refused:?}"
    );
    let taken = relay_b.publish(&ann);
    assert!(
        taken.accepted && taken.message.starts_with("purgatory:"),
        "{taken:?}"
    );

    // The state comes from A's relay (nothing sends it to B), its data from A.
    soon("B did not mirror the state", &b, || {
        relay_b
            .query_ids(json!({"ids": [ann.id.to_hex(), st.id.to_hex()]}))
            .len()
            == 2
    });
    let url_b = b.repo_url(&npub(&owner), "demo");
    assert_eq!(
        ref_of(&url_b, "refs/heads/main").as_deref(),
        Some(tip.as_str())
    );
    let clones = graspd_tests::temp_dir("archive-clone");
    git(&clones, &["clone", "-q", &url_b, "mirror"]);
    let mirror = clones.join("mirror");
    assert_eq!(git(&mirror, &["rev-parse", "HEAD"]), tip);

    // An issue published to A reaches B through the follower.
    let issue = tagged(&keys(4), 1621, &[&["a", &hosted.coordinate]]);
    assert!(relay_a.publish(&issue).accepted);
    soon("the issue did not reach B", &b, || {
        !relay_b
            .query_ids(json!({"ids": [issue.id.to_hex()]}))
            .is_empty()
    });

    // Pushes are refused per ref, with the reason.
    std::fs::write(mirror.join("more"), "more\n").unwrap();
    git(&mirror, &["add", "more"]);
    git(&mirror, &["commit", "-q", "-m", "more"]);
    let pushed = git_fails(&mirror, &["push", "origin", "main"]);
    assert!(
        pushed.contains("[remote rejected] main -> main (blocked: read-only archive mirror"),
        "{pushed}"
    );
    assert_eq!(
        ref_of(&url_b, "refs/heads/main").as_deref(),
        Some(tip.as_str())
    );

    assert!(lists_grasp05(&b));
    assert!(!lists_grasp05(&a));
    let _ = std::fs::remove_dir_all(clones);
}

/// An archive entry added to the `--config` file takes effect for the next announcement.
fn a_reloaded_archive_entry_takes_the_next_announcement(flavor: Flavor) {
    let dir = graspd_tests::temp_dir("archive-file");
    let file = dir.join("graspd.toml");
    std::fs::write(&file, "").unwrap();
    let server = Server::start_with(
        flavor,
        ServerOptions::default()
            .flag("--config", file.display())
            .flag("--config-poll-secs", 0),
    );
    let owner = keys(1);
    let elsewhere = "http://127.0.0.1:1";
    let mut relay = RelayClient::connect(&server.ws_url());
    let first = announcement(&owner, "demo", &[elsewhere], &[]);
    let refused = relay.publish(&first);
    assert!(
        !refused.accepted && refused.message.contains("lists it"),
        "{refused:?}"
    );
    assert!(!lists_grasp05(&server));

    std::fs::write(
        &file,
        format!("archive_repos = [\"{}/demo\"]\n", npub(&owner)),
    )
    .unwrap();
    server.signal("HUP");
    soon("the archive entry was not reloaded", &server, || {
        lists_grasp05(&server)
    });
    let taken = relay.publish(&first);
    assert!(
        taken.accepted && taken.message.starts_with("purgatory:"),
        "{taken:?}"
    );
    let _ = std::fs::remove_dir_all(dir);
}

both_runtimes!(
    an_archive_mirrors_a_repository_hosted_elsewhere,
    a_reloaded_archive_entry_takes_the_next_announcement
);
