//! GRASP-06 end to end, on both server binaries: contributors push PR tips to
//! `/prs/<npub>/<identifier>.git`, even for repositories this server does not host.

use std::time::Duration;

use graspd_tests::git::{git_fails, ls_remote, ref_of, WorkRepo};
use graspd_tests::http::request;
use graspd_tests::nostr::{announcement, keys, npub, pull_request, state, Keys, RelayClient};
use graspd_tests::{both_runtimes, Flavor, Server, ServerOptions};
use serde_json::json;

const SOON: Duration = Duration::from_secs(30);

fn prs_url(server: &Server, signer: &Keys, identifier: &str) -> String {
    format!(
        "{}/prs/{}/{identifier}.git",
        server.http_url(),
        npub(signer)
    )
}

fn grasp06_server(flavor: Flavor) -> Server {
    Server::start_with(flavor, ServerOptions::default().arg("--grasp06"))
}

fn contributor_pushes_to_prs_and_the_pr_reaches_the_hosted_repository(flavor: Flavor) {
    let server = grasp06_server(flavor);
    let owner = keys(1);
    let contributor = keys(2);
    let url = server.repo_url(&npub(&owner), "demo");
    let mut relay = RelayClient::connect(&server.ws_url());
    relay.publish(&announcement(&owner, "demo", &[&server.http_url()], &[]));
    let work = WorkRepo::init("work");
    let c1 = work.commit("README", "hello\n");
    let st = state(&owner, "demo", &[("refs/heads/main", &c1)], Some("main"), 0);
    relay.publish(&st);
    relay.subscribe("state", json!({"ids": [st.id.to_hex()]}));
    work.git(&["push", "-q", &url, "main"]);
    assert!(relay.wait_for_event("state", &st.id.to_hex(), SOON));

    // Nobody pushed to the contributor's /prs/ repository yet: it answers as an empty one.
    let prs = prs_url(&server, &contributor, "demo");
    assert!(ls_remote(&prs).is_empty());

    // Only refs/nostr/<event-id> lands there.
    let c2 = work.commit("a.txt", "contribution\n");
    let stderr = git_fails(&work.dir, &["push", &prs, "HEAD:refs/heads/feature"]);
    assert!(
        stderr.contains("[remote rejected]") && stderr.contains("only refs/nostr/"),
        "{stderr}"
    );

    // The PR names the hosted repository and lists the /prs/ URL; its tip goes to /prs/.
    let pr = pull_request(&contributor, &owner, "demo", &c2, &[&prs]);
    let reply = relay.publish(&pr);
    assert!(reply.accepted, "{reply:?}");
    relay.subscribe("pr", json!({"ids": [pr.id.to_hex()]}));
    let nostr_ref = format!("refs/nostr/{}", pr.id.to_hex());
    work.git(&["push", "-q", &prs, &format!("{c2}:{nostr_ref}")]);
    assert!(
        relay.wait_for_event("pr", &pr.id.to_hex(), SOON),
        "PR not released after its /prs/ push\n{}",
        server.log()
    );
    assert_eq!(ref_of(&prs, &nostr_ref).as_deref(), Some(c2.as_str()));
    assert!(
        graspd_tests::nostr::eventually(SOON, || ref_of(&url, &nostr_ref).as_deref()
            == Some(c2.as_str())),
        "the PR was not mirrored into the hosted repository\n{}",
        server.log()
    );
    assert_eq!(ref_of(&prs, "refs/heads/main"), None);
}

fn a_pr_for_a_repository_hosted_elsewhere_is_taken_only_through_prs(flavor: Flavor) {
    let server = grasp06_server(flavor);
    let elsewhere_owner = keys(3);
    let contributor = keys(2);
    let mut relay = RelayClient::connect(&server.ws_url());
    let work = WorkRepo::init("work");
    let c1 = work.commit("README", "elsewhere\n");

    let without = pull_request(
        &contributor,
        &elsewhere_owner,
        "elsewhere",
        &c1,
        &["https://other.example/x.git"],
    );
    let reply = relay.publish(&without);
    assert!(
        !reply.accepted && reply.message.starts_with("blocked:"),
        "{reply:?}"
    );

    let prs = prs_url(&server, &contributor, "elsewhere");
    let pr = pull_request(&contributor, &elsewhere_owner, "elsewhere", &c1, &[&prs]);
    let reply = relay.publish(&pr);
    assert!(
        reply.accepted && reply.message.starts_with("purgatory:"),
        "{reply:?}"
    );
    relay.subscribe("pr", json!({"ids": [pr.id.to_hex()]}));
    work.git(&[
        "push",
        "-q",
        &prs,
        &format!("{c1}:refs/nostr/{}", pr.id.to_hex()),
    ]);
    assert!(
        relay.wait_for_event("pr", &pr.id.to_hex(), SOON),
        "{}",
        server.log()
    );

    // A tip that is not the event's `c` is refused.
    let c2 = work.commit("b.txt", "other\n");
    let stderr = git_fails(
        &work.dir,
        &["push", &prs, &format!("{c2}:refs/nostr/{}", pr.id.to_hex())],
    );
    assert!(stderr.contains("[remote rejected]"), "{stderr}");
}

fn prs_is_absent_unless_enabled(flavor: Flavor) {
    let server = Server::start(flavor);
    let contributor = keys(2);
    let prs = prs_url(&server, &contributor, "demo");
    let response = request(
        server.addr,
        "GET",
        &format!(
            "{}/info/refs?service=git-upload-pack",
            prs.trim_start_matches(&server.http_url())
        ),
        &[],
        b"",
    );
    assert_eq!(response.status, 404, "{}", response.text());
    let info = request(
        server.addr,
        "GET",
        "/",
        &[("Accept", "application/nostr+json")],
        b"",
    );
    let doc: serde_json::Value = serde_json::from_str(&info.text()).unwrap();
    assert_eq!(doc["supported_grasps"], json!(["GRASP-01", "GRASP-02"]));

    let enabled = grasp06_server(flavor);
    let info = request(
        enabled.addr,
        "GET",
        "/",
        &[("Accept", "application/nostr+json")],
        b"",
    );
    let doc: serde_json::Value = serde_json::from_str(&info.text()).unwrap();
    assert!(doc["supported_grasps"]
        .as_array()
        .unwrap()
        .contains(&json!("GRASP-06")));
}

both_runtimes!(
    contributor_pushes_to_prs_and_the_pr_reaches_the_hosted_repository,
    a_pr_for_a_repository_hosted_elsewhere_is_taken_only_through_prs,
    prs_is_absent_unless_enabled,
);
