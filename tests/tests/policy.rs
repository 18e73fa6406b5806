//! The operator's curation lists (`--deny-author`, `--deny-repo`, `--allow-repo`): what they
//! refuse, with which message, and that the rest still goes through; and the `--config` file
//! that holds more of them, reloaded on SIGHUP and when it changes. Runs against both server
//! binaries.

use std::path::Path;
use std::time::Duration;

use graspd_tests::fixtures::hosted_repo;
use graspd_tests::git::{git, git_fails};
use graspd_tests::http::{nip11_document, request};
use graspd_tests::nostr::{announcement, eventually, keys, npub, tagged, RelayClient};
use graspd_tests::{both_runtimes, Flavor, Server, ServerOptions};
use serde_json::json;

const NOT_ACCEPTED: &str = "blocked: not accepted here";

fn refusals(server: &Server, limit: &str) -> f64 {
    server
        .metric(&format!(r#"graspd_refusals_total{{limit="{limit}"}}"#))
        .unwrap_or(0.0)
}

/// Deny lists refuse before anything else and say no more than "not accepted here"; an allow
/// list admits only the announcements it names; deny wins over allow.
fn curation_lists_refuse_what_they_name(flavor: Flavor) {
    let (owner, denied_author, curated, stranger) = (keys(1), keys(2), keys(3), keys(5));
    let options = ServerOptions::default()
        .flag("--deny-author", npub(&denied_author))
        .flag("--allow-repo", format!("{}/demo", npub(&owner)))
        .flag("--allow-repo", npub(&curated))
        .flag("--allow-repo", "open")
        // The environment fallback, comma-separated.
        .env(
            "GRASPD_DENY_REPOS",
            format!("{}/secret,forbidden", npub(&curated)),
        );
    let server = Server::start_with(flavor, options);
    let url = server.http_url();
    let mut relay = RelayClient::connect(&server.ws_url());

    // An allowed repository is hosted as usual (announced, pushed, served).
    let coordinate = hosted_repo(&server);
    let allowed = relay.publish(&announcement(&curated, "public", &[&url], &[]));
    assert!(
        allowed.accepted && allowed.message.starts_with("purgatory:"),
        "{allowed:?}"
    );

    // A denied author's issue on a hosted repository is refused; anyone else's is taken.
    let denied_issue = tagged(&denied_author, 1621, &[&["a", &coordinate]]);
    let reply = relay.publish(&denied_issue);
    assert!(
        !reply.accepted && reply.message == NOT_ACCEPTED,
        "{reply:?}"
    );
    let issue = tagged(&keys(4), 1621, &[&["a", &coordinate]]);
    let reply = relay.publish(&issue);
    assert!(reply.accepted, "{reply:?}");
    // Author deny wins over an allow entry naming the identifier.
    let denied_announcement = announcement(&denied_author, "open", &[&url], &[]);
    let reply = relay.publish(&denied_announcement);
    assert!(
        !reply.accepted && reply.message == NOT_ACCEPTED,
        "{reply:?}"
    );

    // Denied repositories, by `<npub>/<identifier>` (although the owner is allowed) and by
    // `<identifier>`.
    let secret = announcement(&curated, "secret", &[&url], &[]);
    let forbidden = announcement(&stranger, "forbidden", &[&url], &[]);
    for event in [&secret, &forbidden] {
        let reply = relay.publish(event);
        assert!(
            !reply.accepted && reply.message == NOT_ACCEPTED,
            "{reply:?}"
        );
    }

    // Not on the allow list.
    let unlisted = announcement(&stranger, "elsewhere", &[&url], &[]);
    let reply = relay.publish(&unlisted);
    assert!(
        !reply.accepted && reply.message == "blocked: this server only hosts listed repositories",
        "{reply:?}"
    );

    let refused = [
        &denied_issue,
        &denied_announcement,
        &secret,
        &forbidden,
        &unlisted,
    ]
    .map(|e| e.id.to_hex());
    assert!(relay.query(json!({ "ids": refused })).is_empty());
    assert_eq!(refusals(&server, "policy_author"), 2.0);
    assert_eq!(refusals(&server, "policy_repo"), 3.0);
    let info = nip11_document(server.addr);
    let criteria = info["repo_acceptance_criteria"]
        .as_str()
        .unwrap_or_default();
    assert!(criteria.contains("operator lists"), "{info}");
}

/// Writes the policy file whole (a rename, so a poll never reads half of it).
fn write_policy(path: &Path, text: &str) {
    let partial = path.with_extension("partial");
    std::fs::write(&partial, text).unwrap();
    std::fs::rename(&partial, path).unwrap();
}

fn reloads(server: &Server, result: &str) -> f64 {
    server
        .metric(&format!(
            r#"graspd_policy_reloads_total{{result="{result}"}}"#
        ))
        .unwrap_or(0.0)
}

/// Polls until `cond` holds, at most 30 s.
fn soon(what: &str, server: &Server, cond: impl FnMut() -> bool) {
    assert!(
        eventually(Duration::from_secs(30), cond),
        "{what}\n{}",
        server.log()
    );
}

/// A repository, its events and an author's issue are served; a SIGHUP after the file denies
/// them stops serving them (REQ, clone, push) without deleting anything, and lifting the deny
/// serves them again.
fn a_reloaded_deny_hides_what_is_held_until_it_is_lifted(flavor: Flavor) {
    let dir = graspd_tests::temp_dir("policy-file");
    let file = dir.join("graspd.toml");
    write_policy(&file, "deny_repos = []\n");
    // No polling: only the SIGHUP can bring the new lists in.
    let options = ServerOptions::default()
        .flag("--config", file.display())
        .flag("--config-poll-secs", 0);
    let server = Server::start_with(flavor, options);
    let (owner, author) = (keys(1), keys(4));
    let coordinate = hosted_repo(&server);
    let mut relay = RelayClient::connect(&server.ws_url());
    let issue = tagged(&author, 1621, &[&["a", &coordinate]]);
    assert!(relay.publish(&issue).accepted);
    let note = tagged(&author, 1, &[&["e", &issue.id.to_hex()]]);
    assert!(relay.publish(&note).accepted);
    let repo_events = json!({"kinds": [30617, 30618], "authors": [owner.public_key().to_hex()]});
    let authors_events = json!({"authors": [author.public_key().to_hex()]});
    assert_eq!(relay.query_ids(repo_events.clone()).len(), 2);
    assert_eq!(relay.query_ids(authors_events.clone()).len(), 2);
    let url = server.repo_url(&npub(&owner), "demo");
    let work = graspd_tests::temp_dir("policy-clone");
    git(&work, &["clone", "-q", &url, "clone"]);
    let clone = work.join("clone");

    write_policy(
        &file,
        &format!(
            "deny_authors = [\"{}\"]\ndeny_repos = [\"{}/demo\"]\n",
            npub(&author),
            npub(&owner)
        ),
    );
    server.signal("HUP");
    soon(
        "the denied author's events are still served",
        &server,
        || relay.query_ids(authors_events.clone()).is_empty(),
    );
    assert!(relay.query_ids(repo_events.clone()).is_empty());
    // Other filters do not find them either.
    assert!(relay
        .query_ids(json!({"ids": [issue.id.to_hex()]}))
        .is_empty());
    assert!(relay.query_ids(json!({"#a": [coordinate]})).is_empty());
    assert_eq!(reloads(&server, "ok"), 1.0);
    assert!(server.log().contains("policy reloaded"));

    // Fetches are refused with the reason, and so is a push.
    let refs = request(
        server.addr,
        "GET",
        &format!(
            "/{}/demo.git/info/refs?service=git-upload-pack",
            npub(&owner)
        ),
        &[],
        b"",
    );
    assert_eq!(refs.status, 403, "{}", refs.text());
    assert!(refs.text().contains(NOT_ACCEPTED), "{}", refs.text());
    let refused = git_fails(&work, &["clone", "-q", &url, "again"]);
    assert!(refused.contains("403"), "{refused}");
    // Nor are its refs shown to a push, which is refused per ref.
    let tip = git(&clone, &["rev-parse", "HEAD"]);
    let advertised = request(
        server.addr,
        "GET",
        &format!(
            "/{}/demo.git/info/refs?service=git-receive-pack",
            npub(&owner)
        ),
        &[],
        b"",
    );
    assert_eq!(advertised.status, 200);
    assert!(!advertised.text().contains(&tip), "{}", advertised.text());
    std::fs::write(clone.join("more"), "more\n").unwrap();
    git(&clone, &["add", "more"]);
    git(&clone, &["commit", "-q", "-m", "more"]);
    let pushed = git_fails(&clone, &["push", "origin", "main"]);
    assert!(
        pushed.contains(&format!("[remote rejected] main -> main ({NOT_ACCEPTED})")),
        "{pushed}"
    );
    // New events of the author are refused as at start-up.
    let late = tagged(&author, 1621, &[&["a", &coordinate]]);
    assert_eq!(relay.publish(&late).message, NOT_ACCEPTED);
    // A reply tied to the hidden issue by its `e` tag alone has nothing served to relate to.
    let reply = tagged(&keys(6), 1, &[&["e", &issue.id.to_hex()]]);
    let refused = relay.publish(&reply);
    assert!(
        !refused.accepted && refused.message.starts_with("blocked: "),
        "{refused:?}"
    );

    // Lifted: everything is served again, nothing was deleted.
    write_policy(&file, "");
    server.signal("HUP");
    soon(
        "the lifted author's events are not served again",
        &server,
        || relay.query_ids(authors_events.clone()).len() == 2,
    );
    assert_eq!(relay.query_ids(repo_events).len(), 2);
    git(&work, &["clone", "-q", &url, "again"]);
    assert!(relay.publish(&reply).accepted);
    assert_eq!(reloads(&server, "ok"), 2.0);
    for scratch in [dir, work] {
        let _ = std::fs::remove_dir_all(scratch);
    }
}

/// The file is polled for changes: a file that does not parse is refused (logged with its
/// line, counted) and the lists in force stay; a good one then takes effect without a signal.
/// An allow list refuses new announcements it does not name (and NIP-11 says so) but leaves
/// what is hosted served.
fn a_changed_file_is_reloaded_and_a_bad_one_keeps_the_lists_in_force(flavor: Flavor) {
    let dir = graspd_tests::temp_dir("policy-poll");
    let file = dir.join("graspd.toml");
    write_policy(&file, "");
    let options = ServerOptions::default()
        .flag("--config", file.display())
        .flag("--config-poll-secs", 1);
    let server = Server::start_with(flavor, options);
    let owner = keys(1);
    hosted_repo(&server);
    let mut relay = RelayClient::connect(&server.ws_url());
    let repo_events = json!({"kinds": [30617, 30618], "authors": [owner.public_key().to_hex()]});

    write_policy(&file, "deny_repos = [\n  \"npub1typo\",\n]\n");
    soon("the bad file was not refused", &server, || {
        reloads(&server, "rejected") == 1.0
    });
    assert!(
        server.log().contains("line 2: deny_repos entry"),
        "{}",
        server.log()
    );
    assert_eq!(relay.query_ids(repo_events.clone()).len(), 2);
    assert_eq!(reloads(&server, "ok"), 0.0);

    // An allow list that does not name the hosted repository: new announcements only.
    write_policy(&file, "allow_repos = [\"elsewhere\"]\n");
    soon("the allow list was not reloaded", &server, || {
        reloads(&server, "ok") == 1.0
    });
    assert_eq!(relay.query_ids(repo_events.clone()).len(), 2);
    let unlisted = announcement(&keys(5), "unlisted", &[&server.http_url()], &[]);
    let reply = relay.publish(&unlisted);
    assert!(
        reply.message.contains("only hosts listed repositories"),
        "{reply:?}"
    );
    let criteria = nip11_document(server.addr)["repo_acceptance_criteria"].clone();
    assert!(
        criteria
            .as_str()
            .unwrap_or_default()
            .contains("operator lists"),
        "{criteria}"
    );

    write_policy(&file, &format!("deny_repos = [\"{}\"]\n", npub(&owner)));
    soon("the changed file was not reloaded", &server, || {
        relay.query_ids(repo_events.clone()).is_empty()
    });
    assert_eq!(reloads(&server, "ok"), 2.0);
    assert_eq!(reloads(&server, "rejected"), 1.0);
    let criteria = nip11_document(server.addr)["repo_acceptance_criteria"].clone();
    assert!(
        !criteria
            .as_str()
            .unwrap_or_default()
            .contains("operator lists"),
        "{criteria}"
    );
    drop(server);
    let _ = std::fs::remove_dir_all(dir);
}

/// A policy file with a bad entry stops the start-up with its line.
fn a_bad_file_at_start_up_is_an_error_naming_its_line(flavor: Flavor) {
    let dir = graspd_tests::temp_dir("policy-bad");
    let file = dir.join("graspd.toml");
    write_policy(&file, "deny_authors = [\n  \"not-an-npub\",\n]\n");
    let out = std::process::Command::new(flavor.binary())
        .arg("--bind")
        .arg("127.0.0.1:0")
        .arg("--data-dir")
        .arg(dir.join("data"))
        .arg("--config")
        .arg(&file)
        .output()
        .expect("run the server");
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("line 2: deny_authors entry \"not-an-npub\""),
        "{stderr}"
    );
    let _ = std::fs::remove_dir_all(dir);
}

both_runtimes!(
    curation_lists_refuse_what_they_name,
    a_reloaded_deny_hides_what_is_held_until_it_is_lifted,
    a_changed_file_is_reloaded_and_a_bad_one_keeps_the_lists_in_force,
    a_bad_file_at_start_up_is_an_error_naming_its_line
);
