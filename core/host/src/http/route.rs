//! Which resource a request path names. Nothing from the URL reaches the filesystem
//! unvalidated: the npub must decode to a key, the identifier must pass
//! [`graspd_core::Identifier::new`] after percent-decoding.

use graspd_core::{Identifier, Namespace, PublicKey, RepoKey};
use nostr::nips::nip19::FromBech32;

use crate::git::smart::Service;

/// The resources on this origin.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route {
    /// `/`: relay (WebSocket), NIP-11, landing page.
    Root,
    /// `/metrics`
    Metrics,
    /// `/graspd.css`: the web pages' one stylesheet.
    Stylesheet,
    /// `/<npub>/<identifier>.git` (or with a trailing `/`): the repository's web page.
    RepoPage(RepoKey),
    /// `/<npub>/<identifier>.git/info/refs`
    InfoRefs(RepoKey),
    /// `/<npub>/<identifier>.git/git-upload-pack` or `.../git-receive-pack`
    Rpc(RepoKey, Service),
    NotFound,
}

/// A repo path that is malformed (answered 400, with this message).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BadPath(pub String);

/// Routes a raw (still percent-encoded) request path.
pub fn route(path: &str) -> Result<Route, BadPath> {
    match path {
        "/" | "" => return Ok(Route::Root),
        "/metrics" => return Ok(Route::Metrics),
        STYLESHEET_PATH => return Ok(Route::Stylesheet),
        _ => {}
    }
    let path = path.strip_prefix('/').unwrap_or(path);
    // GRASP-06's PR repositories mirror the hosted layout under `/prs/`.
    let (namespace, path) = match path.strip_prefix("prs/") {
        Some(rest) => (Namespace::Prs, rest),
        None => (Namespace::Hosted, path),
    };
    let segments: Vec<&str> = path.split('/').collect();
    let (npub, repo_segment, rest) = match segments.as_slice() {
        [npub, repo, rest @ ..] if repo.ends_with(".git") => (*npub, *repo, rest),
        _ => return Ok(Route::NotFound),
    };
    let endpoint = match rest {
        [] | [""] => Endpoint::Page,
        ["info", "refs"] => Endpoint::InfoRefs,
        [name] => match Service::from_name(name) {
            Some(service) => Endpoint::Rpc(service),
            None => return Ok(Route::NotFound),
        },
        _ => return Ok(Route::NotFound),
    };
    let mut repo = parse_repo(npub, &repo_segment[..repo_segment.len() - ".git".len()])?;
    repo.namespace = namespace;
    Ok(match endpoint {
        Endpoint::Page => Route::RepoPage(repo),
        Endpoint::InfoRefs => Route::InfoRefs(repo),
        Endpoint::Rpc(service) => Route::Rpc(repo, service),
    })
}

/// Where the web pages' stylesheet is served.
pub const STYLESHEET_PATH: &str = "/graspd.css";

enum Endpoint {
    Page,
    InfoRefs,
    Rpc(Service),
}

fn parse_repo(npub: &str, encoded_identifier: &str) -> Result<RepoKey, BadPath> {
    let owner = PublicKey::from_bech32(npub)
        .map_err(|_| BadPath(format!("{npub:?} is not an npub (NIP-19 public key)")))?;
    let decoded = percent_decode(encoded_identifier).ok_or_else(|| {
        BadPath("repository identifier is not valid percent-encoded UTF-8".into())
    })?;
    let identifier = Identifier::new(&decoded).map_err(|e| BadPath(e.to_string()))?;
    Ok(RepoKey::new(owner, identifier))
}

/// Decodes `%XX` escapes; `None` for a bad escape or non-UTF-8 result.
pub fn percent_decode(s: &str) -> Option<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = std::str::from_utf8(bytes.get(i + 1..i + 3)?).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use nostr::nips::nip19::ToBech32;

    fn npub() -> String {
        let key =
            PublicKey::from_hex("3bf0c63fcb93463407af97a5e5ee64fa883d107ef9e558472c4eb9aaaefa459d")
                .unwrap();
        key.to_bech32().unwrap()
    }

    #[test]
    fn routes_git_paths() {
        let npub = npub();
        let Ok(Route::InfoRefs(repo)) = route(&format!("/{npub}/my%20repo.git/info/refs")) else {
            panic!()
        };
        assert_eq!(repo.identifier.as_str(), "my repo");
        assert!(matches!(
            route(&format!("/{npub}/x.git/git-receive-pack")),
            Ok(Route::Rpc(_, Service::ReceivePack))
        ));
        assert_eq!(route(&format!("/{npub}/x.git/HEAD")), Ok(Route::NotFound));
        for page in [
            format!("/{npub}/my%20repo.git"),
            format!("/{npub}/my%20repo.git/"),
        ] {
            let Ok(Route::RepoPage(repo)) = route(&page) else {
                panic!("{page} is not a repository page")
            };
            assert_eq!(repo.identifier.as_str(), "my repo");
        }
        assert_eq!(route(&format!("/{npub}/x")), Ok(Route::NotFound));
        assert_eq!(route("/graspd.css"), Ok(Route::Stylesheet));
        assert_eq!(route("/favicon.ico"), Ok(Route::NotFound));
        assert_eq!(route("/"), Ok(Route::Root));
        let Ok(Route::Rpc(prs, Service::ReceivePack)) =
            route(&format!("/prs/{npub}/x.git/git-receive-pack"))
        else {
            panic!()
        };
        assert_eq!(prs, RepoKey::prs(prs.owner, prs.identifier.clone()));
        assert!(route(&format!("/prs/{npub}/..%2F.git/info/refs")).is_err());
        assert_eq!(route("/prs/x"), Ok(Route::NotFound));
    }

    #[test]
    fn refuses_path_tricks() {
        let npub = npub();
        for bad in [
            "..%2F", "..", "%2E%2E", "a%2Fb", "a%5Cb", "a%00b", "%ff", "%zz", "%",
        ] {
            assert!(
                route(&format!("/{npub}/{bad}.git/info/refs")).is_err(),
                "{bad} accepted"
            );
        }
        assert!(route("/npub1notakey/x.git/info/refs").is_err());
        assert!(route("/../x.git/info/refs").is_err());
    }
}
