//! The NIP-11 relay information document, served at `/` to `Accept: application/nostr+json`.
//!
//! It carries GRASP's two required fields, `supported_grasps` and
//! `repo_acceptance_criteria`, and the relay's limits. There is no `curation` field: graspd
//! curates nothing beyond what GRASP-01 requires.

use serde_json::{json, Value};

use crate::relay::RelayLimits;

/// The media type that asks for this document (and that it is served as).
pub const MEDIA_TYPE: &str = "application/nostr+json";

/// Operator-supplied parts of the document.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RelayInfo {
    pub name: String,
    pub description: String,
    /// The public host (and port, if not the default) clients reach this server at, e.g.
    /// `git.example.com`; quoted in the acceptance criteria. Empty: described generically.
    pub domain: String,
    /// Operator's hex pubkey, if published.
    pub pubkey: Option<String>,
    /// Operator contact (URI), if published.
    pub contact: Option<String>,
    /// GRASP-06 (`/prs/` PR submission) is served.
    pub grasp06: bool,
}

/// Whether an `Accept` header value asks for the NIP-11 document.
pub fn is_requested(accept: &str) -> bool {
    accept
        .split(',')
        .filter_map(|part| part.split(';').next())
        .any(|media| media.trim().eq_ignore_ascii_case(MEDIA_TYPE))
}

/// The human-readable `repo_acceptance_criteria`.
pub fn acceptance_criteria(domain: &str) -> String {
    let (clone, relay) = if domain.is_empty() {
        (
            "this server's git URL (https://<this host>/<npub>/<identifier>.git)".to_owned(),
            "this server's relay URL (wss://<this host>)".to_owned(),
        )
    } else {
        (
            format!("https://{domain}/<npub>/<identifier>.git"),
            format!("wss://{domain}"),
        )
    };
    format!(
        "A repository announcement (kind 30617) is accepted only if its `clone` tag lists \
         {clone} and its `relays` tag lists {relay}. Announcements of maintainers of a repository \
         already hosted here are also accepted. Repository state (30618), patches, pull \
         requests, issues, status updates, comments and deletions are accepted when they refer \
         to a hosted repository. Announcements, states and pull requests are acknowledged at \
         once but served only after their git data arrives (pushed here, or fetched from the \
         announcement's other clone servers), and are discarded if it has not arrived within \
         30 minutes."
    )
}

/// The GRASPs this server implements, as NIP-11 lists them.
fn supported_grasps(info: &RelayInfo) -> Vec<&'static str> {
    let mut grasps = vec!["GRASP-01", "GRASP-02"];
    if info.grasp06 {
        grasps.push("GRASP-06");
    }
    grasps
}

/// The document as a JSON value.
pub fn document(info: &RelayInfo, limits: &RelayLimits) -> Value {
    let mut doc = json!({
        "name": info.name,
        "description": info.description,
        "software": "graspd",
        "version": env!("CARGO_PKG_VERSION"),
        "supported_nips": [1, 9, 11, 34],
        "supported_grasps": supported_grasps(info),
        "repo_acceptance_criteria": acceptance_criteria(&info.domain),
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
            domain: "git.example.com".into(),
            pubkey: None,
            contact: Some("mailto:ops@example.com".into()),
            grasp06: false,
        };
        let limits = RelayLimits::default();
        let doc: Value = serde_json::from_str(&document_json(&info, &limits)).unwrap();
        assert_eq!(doc["supported_grasps"], json!(["GRASP-01", "GRASP-02"]));
        assert_eq!(doc["supported_nips"], json!([1, 9, 11, 34]));
        let criteria = doc["repo_acceptance_criteria"].as_str().unwrap();
        assert!(criteria.contains("https://git.example.com/<npub>/<identifier>.git"));
        assert!(criteria.contains("wss://git.example.com"));
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
    }

    #[test]
    fn accept_header_detection() {
        assert!(is_requested("application/nostr+json"));
        assert!(is_requested("text/html, Application/Nostr+JSON;q=0.9"));
        assert!(!is_requested("application/json"));
        assert!(!is_requested(""));
    }
}
