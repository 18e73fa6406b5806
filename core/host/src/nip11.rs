//! The NIP-11 relay information document, served at `/` to `Accept: application/nostr+json`.
//!
//! It carries GRASP's two required fields, `supported_grasps` and
//! `repo_acceptance_criteria` (which quotes the URLs derived from `--public-url`), and the
//! relay's limits. When the operator set an allow list (`--allow-repo`), the criteria say
//! so; when an archive list (`--archive-repo`), GRASP-05 is listed and the criteria say that
//! some repositories are read-only mirrors; deny lists are never advertised.

use std::time::Duration;

use graspd_core::acceptance::OwnService;
use serde_json::{json, Value};

use crate::relay::RelayLimits;

/// The media type that asks for this document (and that it is served as).
pub const MEDIA_TYPE: &str = "application/nostr+json";

/// Operator-supplied parts of the document.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RelayInfo {
    pub name: String,
    pub description: String,
    /// This server's public origin (`--public-url`): the acceptance criteria quote the URLs
    /// derived from it. `None`: described generically.
    pub own: Option<OwnService>,
    /// How long an announcement, state or PR waits for its git data.
    pub purgatory_expiry: Duration,
    /// Operator's hex pubkey, if published.
    pub pubkey: Option<String>,
    /// Operator contact (URI), if published.
    pub contact: Option<String>,
    /// GRASP-06 (`/prs/` PR submission) is served.
    pub grasp06: bool,
    /// Only repositories the operator lists are hosted (`--allow-repo`).
    pub allow_list: bool,
    /// GRASP-05: repositories the operator lists are kept as archive mirrors
    /// (`--archive-repo`).
    pub archive_list: bool,
}

/// Whether an `Accept` header value asks for the NIP-11 document.
pub fn is_requested(accept: &str) -> bool {
    accept
        .split(',')
        .filter_map(|part| part.split(';').next())
        .any(|media| media.trim().eq_ignore_ascii_case(MEDIA_TYPE))
}

/// The human-readable `repo_acceptance_criteria`: the URLs this server compares
/// announcements with (`OwnService`, which takes either scheme of a class), and the rules of
/// `acceptance` and `related` in a few sentences.
pub fn acceptance_criteria(info: &RelayInfo) -> String {
    let (origin, relay) = match &info.own {
        Some(own) => (own.git_origin(), own.relay_url()),
        None => (
            "<this server's origin>".to_owned(),
            "<this server's relay URL>".to_owned(),
        ),
    };
    let prs = if info.grasp06 {
        format!(", or (GRASP-06) whose `clone` tag lists {origin}/prs/<npub>/<identifier>.git")
    } else {
        String::new()
    };
    let mut curation = String::new();
    if info.allow_list {
        curation.push_str(
            " This server hosts only repositories its operator lists: announcements of others \
             are refused.",
        );
    }
    if info.archive_list {
        curation.push_str(
            " (GRASP-05) This server also keeps archive mirrors of repositories its operator \
             lists: their announcements are accepted without listing this server, their data \
             is fetched from the servers they list, and pushes to them are refused.",
        );
    }
    format!(
        "A repository announcement (kind 30617) is accepted only if its `clone` tag lists \
         {origin}/<npub>/<identifier>.git (http or https) and its `relays` tag lists {relay} \
         (ws or wss). Announcements of the maintainers of a repository announced here are \
         accepted too. Repository states (30618) are accepted from the repository's \
         maintainers (the owner and, recursively, those its announcements list); pull \
         requests and PR updates (1618, 1619) when they name a repository announced here{prs}. \
         Any other event is accepted by its relation, whatever its kind: it tags, or is tagged \
         by, an accepted repository announcement or an accepted issue, patch, pull request or \
         comment (so whole threads are accepted), or it is the grasp list (10317) of someone \
         with a repository here. Deletions (5) are accepted and apply to their author's own \
         events. Announcements, states and pull requests are acknowledged at once but served \
         only after their git data arrives (pushed here, or fetched from the announcement's \
         other clone servers), and are discarded if it has not arrived within {}.{curation}",
        span(info.purgatory_expiry)
    )
}

/// `30 minutes`, `1 hour`, `45 seconds`: the largest unit that divides the span.
fn span(d: Duration) -> String {
    let secs = d.as_secs();
    let (n, unit) = match secs {
        s if s > 0 && s % 3600 == 0 => (s / 3600, "hour"),
        s if s > 0 && s % 60 == 0 => (s / 60, "minute"),
        s => (s, "second"),
    };
    if n == 1 {
        format!("1 {unit}")
    } else {
        format!("{n} {unit}s")
    }
}

/// The GRASPs this server implements, as NIP-11 lists them.
fn supported_grasps(info: &RelayInfo) -> Vec<&'static str> {
    let mut grasps = vec!["GRASP-01", "GRASP-02"];
    if info.archive_list {
        grasps.push("GRASP-05");
    }
    if info.grasp06 {
        grasps.push("GRASP-06");
    }
    grasps
}

/// The NIPs this server implements; 77 (negentropy) unless it is turned off.
fn supported_nips(limits: &RelayLimits) -> Vec<u16> {
    let mut nips = vec![1, 9, 11, 34];
    if limits.negentropy.enabled() {
        nips.push(77);
    }
    nips
}

/// The document as a JSON value.
pub fn document(info: &RelayInfo, limits: &RelayLimits) -> Value {
    let mut doc = json!({
        "name": info.name,
        "description": info.description,
        "software": "graspd",
        "version": env!("CARGO_PKG_VERSION"),
        "supported_nips": supported_nips(limits),
        "supported_grasps": supported_grasps(info),
        "repo_acceptance_criteria": acceptance_criteria(info),
        "limitation": {
            "max_message_length": limits.max_message_bytes,
            "max_subscriptions": limits.max_subscriptions,
            "max_filters": limits.max_filters,
            "max_filter_values": limits.max_filter_values,
            "max_limit": limits.max_limit,
            "default_limit": limits.max_limit,
            "max_subid_length": limits.max_subscription_id_chars,
            "auth_required": false,
            "payment_required": false,
            "restricted_writes": true,
        },
    });
    if let Some(pubkey) = &info.pubkey {
        doc["pubkey"] = json!(pubkey);
    }
    if let Some(contact) = &info.contact {
        doc["contact"] = json!(contact);
    }
    doc
}

/// The document as the body to serve (with `Content-Type: application/nostr+json` and the
/// CORS headers every response carries).
pub fn document_json(info: &RelayInfo, limits: &RelayLimits) -> String {
    document(info, limits).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn document_has_the_grasp_fields_and_limits() {
        let info = RelayInfo {
            name: "example".into(),
            description: "a GRASP server".into(),
            own: OwnService::new("https://git.example.com").ok(),
            purgatory_expiry: Duration::from_secs(1800),
            pubkey: None,
            contact: Some("mailto:ops@example.com".into()),
            grasp06: false,
            allow_list: false,
            archive_list: false,
        };
        let limits = RelayLimits::default();
        let doc: Value = serde_json::from_str(&document_json(&info, &limits)).unwrap();
        assert_eq!(doc["supported_grasps"], json!(["GRASP-01", "GRASP-02"]));
        assert_eq!(doc["supported_nips"], json!([1, 9, 11, 34, 77]));
        let negentropy_off = RelayLimits {
            negentropy: crate::relay::NegentropyLimits {
                max_sessions: 0,
                ..crate::relay::NegentropyLimits::default()
            },
            ..RelayLimits::default()
        };
        let off: Value = serde_json::from_str(&document_json(&info, &negentropy_off)).unwrap();
        assert_eq!(off["supported_nips"], json!([1, 9, 11, 34]));
        let criteria = doc["repo_acceptance_criteria"].as_str().unwrap();
        assert!(criteria.contains("https://git.example.com/<npub>/<identifier>.git"));
        assert!(criteria.contains("wss://git.example.com"));
        assert!(criteria.contains("within 30 minutes"), "{criteria}");
        assert_eq!(doc["limitation"]["max_subscriptions"], json!(32));
        assert_eq!(doc["limitation"]["max_message_length"], json!(512 * 1024));
        assert_eq!(doc["contact"], json!("mailto:ops@example.com"));
        assert!(doc.get("pubkey").is_none());
        assert!(doc.get("curation").is_none());
        let with_prs = RelayInfo {
            grasp06: true,
            ..info
        };
        let doc: Value = serde_json::from_str(&document_json(&with_prs, &limits)).unwrap();
        assert_eq!(
            doc["supported_grasps"],
            json!(["GRASP-01", "GRASP-02", "GRASP-06"])
        );
        let archiving = RelayInfo {
            archive_list: true,
            ..with_prs
        };
        let doc: Value = serde_json::from_str(&document_json(&archiving, &limits)).unwrap();
        assert_eq!(
            doc["supported_grasps"],
            json!(["GRASP-01", "GRASP-02", "GRASP-05", "GRASP-06"])
        );
        let criteria = doc["repo_acceptance_criteria"].as_str().unwrap();
        assert!(criteria.contains("archive mirrors"), "{criteria}");
    }

    #[test]
    fn criteria_quote_the_urls_derived_from_the_public_url() {
        let info = RelayInfo {
            own: OwnService::new("http://127.0.0.1:7334").ok(),
            purgatory_expiry: Duration::from_secs(90),
            grasp06: true,
            ..RelayInfo::default()
        };
        let criteria = acceptance_criteria(&info);
        for wanted in [
            "lists http://127.0.0.1:7334/<npub>/<identifier>.git (http or https)",
            "lists ws://127.0.0.1:7334 (ws or wss)",
            "http://127.0.0.1:7334/prs/<npub>/<identifier>.git",
            "tags, or is tagged by, an accepted repository announcement or an accepted issue",
            "within 90 seconds",
        ] {
            assert!(criteria.contains(wanted), "{criteria:?} lacks {wanted:?}");
        }
        assert!(
            !criteria.contains("https://") && !criteria.contains("wss://"),
            "{criteria}"
        );
        let generic = acceptance_criteria(&RelayInfo::default());
        assert!(!generic.contains("GRASP-06") && generic.contains("<this server's origin>"));
        assert!(!generic.contains("operator lists"), "{generic}");
        let curated = acceptance_criteria(&RelayInfo {
            allow_list: true,
            ..RelayInfo::default()
        });
        assert!(curated.contains("hosts only repositories its operator lists"));
        assert_eq!(span(Duration::from_secs(3600)), "1 hour");
        assert_eq!(span(Duration::from_secs(120)), "2 minutes");
        assert_eq!(span(Duration::from_secs(0)), "0 seconds");
    }

    #[test]
    fn accept_header_detection() {
        assert!(is_requested("application/nostr+json"));
        assert!(is_requested("text/html, Application/Nostr+JSON;q=0.9"));
        assert!(!is_requested("application/json"));
        assert!(!is_requested(""));
    }
}
