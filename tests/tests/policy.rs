//! The operator's curation lists (`--deny-author`, `--deny-repo`, `--allow-repo`): what they
//! refuse, with which message, and that the rest still goes through. Runs against both
//! server binaries.

use graspd_tests::fixtures::hosted_repo;
use graspd_tests::http::nip11_document;
use graspd_tests::nostr::{announcement, keys, npub, tagged, RelayClient};
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

both_runtimes!(curation_lists_refuse_what_they_name);
