//! Which events this server takes: announcements that list it, states by a repository's
//! maintainers, PRs to repositories it knows. Rejections are NIP-01 `OK` messages for humans.

use std::fmt;

use nostr::nips::nip19::ToBech32;
use nostr::types::url::Url;

use crate::events::{Announcement, GitEvent, PullRequest, RepoState, KIND_ANNOUNCEMENT};
use crate::ids::{Identifier, PublicKey, RepoKey};
use crate::maintainers::{maintainer_set, Announcements};

/// This server's public origin (`https://host[:port]`), and how URLs are compared with it:
/// parsed, scheme class checked, host compared after IDNA/case normalisation, explicit
/// non-default port compared, path compared segment by segment after percent-decoding.
/// Never a substring match.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct OwnService {
    secure: bool,
    host: String,
    port: Option<u16>,
}

impl OwnService {
    /// `public_url` is how users reach this server, e.g. `https://grasp.example` or
    /// `http://localhost:8080`.
    pub fn new(public_url: &str) -> Result<OwnService, String> {
        let url = Url::parse(public_url)
            .map_err(|e| format!("public URL {public_url:?} is not a URL: {e}"))?;
        let secure = match url.scheme() {
            "https" | "wss" => true,
            "http" | "ws" => false,
            other => {
                return Err(format!(
                    "public URL {public_url:?} must be http(s), not {other:?}"
                ))
            }
        };
        let host = normalised_host(&url)
            .ok_or_else(|| format!("public URL {public_url:?} has no host"))?;
        Ok(OwnService {
            secure,
            host,
            port: url.port(),
        })
    }

    fn authority(&self) -> String {
        match self.port {
            Some(p) => format!("{}:{p}", self.host),
            None => self.host.clone(),
        }
    }

    /// `http(s)://<host>[:port]`, the scheme as the public URL has it: what git URLs on this
    /// server start with.
    pub fn git_origin(&self) -> String {
        let scheme = if self.secure { "https" } else { "http" };
        format!("{scheme}://{}", self.authority())
    }

    /// The `clone` URL an announcement must list for `/<owner>/<identifier>.git`.
    pub fn clone_url(&self, owner: &PublicKey, identifier: &Identifier) -> String {
        let npub = owner.to_bech32().unwrap_or_default();
        let id = percent_encode_segment(&format!("{identifier}.git"));
        format!("{}/{npub}/{id}", self.git_origin())
    }

    /// The GRASP-06 URL where `signer` pushes PR tips for `identifier`:
    /// `<origin>/prs/<npub>/<identifier>.git`.
    pub fn prs_clone_url(&self, signer: &PublicKey, identifier: &Identifier) -> String {
        let npub = signer.to_bech32().unwrap_or_default();
        let id = percent_encode_segment(&format!("{identifier}.git"));
        format!("{}/prs/{npub}/{id}", self.git_origin())
    }

    /// The GRASP-06 repository of `pr` here: the first `clone` URL that is this server's
    /// `/prs/<signer npub>/<identifier>.git`, for the PR's own signer and a valid identifier.
    pub fn prs_repo_of(&self, pr: &PullRequest) -> Option<RepoKey> {
        let npub = pr.author.to_bech32().ok()?;
        pr.clone.iter().find_map(|url| {
            let segments = self.own_path_segments(url)?;
            match segments.as_slice() {
                [prs, n, repo] if prs == "prs" && n.to_ascii_lowercase() == npub => {
                    let identifier = Identifier::new(repo.strip_suffix(".git")?).ok()?;
                    Some(RepoKey::prs(pr.author, identifier))
                }
                _ => None,
            }
        })
    }

    /// The `relays` URL an announcement must list.
    pub fn relay_url(&self) -> String {
        let scheme = if self.secure { "wss" } else { "ws" };
        format!("{scheme}://{}", self.authority())
    }

    /// Whether `url` points at this origin at all (any path), over http(s) or ws(s).
    pub fn is_own_origin(&self, url: &str) -> bool {
        self.same_origin(url, &["http", "https", "ws", "wss"])
            .is_some()
    }

    /// Whether `url` is this server's git URL for `/<owner>/<identifier>.git`.
    pub fn is_own_clone_url(&self, url: &str, owner: &PublicKey, identifier: &Identifier) -> bool {
        let Some(segments) = self.own_path_segments(url) else {
            return false;
        };
        let npub = owner.to_bech32().unwrap_or_default();
        matches!(segments.as_slice(),
            [n, repo] if n.to_ascii_lowercase() == npub
                && repo.strip_suffix(".git") == Some(identifier.as_str()))
    }

    /// The percent-decoded path segments of an http(s) URL on this origin without a query
    /// (a trailing slash dropped).
    fn own_path_segments(&self, url: &str) -> Option<Vec<String>> {
        let url = self.same_origin(url, &["http", "https"])?;
        if url.query().is_some() {
            return None;
        }
        let mut segments: Vec<String> = url.path_segments()?.map(percent_decode).collect();
        if segments.last().is_some_and(String::is_empty) {
            segments.pop(); // a trailing slash
        }
        Some(segments)
    }

    /// Whether `url` is this server's relay URL (`ws(s)://<host>` with no path).
    pub fn is_own_relay_url(&self, url: &str) -> bool {
        self.same_origin(url, &["ws", "wss"])
            .is_some_and(|u| u.path() == "/" && u.query().is_none())
    }

    fn same_origin(&self, url: &str, schemes: &[&str]) -> Option<Url> {
        let url = Url::parse(url.trim()).ok()?;
        let ok = schemes.contains(&url.scheme())
            && url.username().is_empty()
            && url.password().is_none()
            && normalised_host(&url).as_deref() == Some(self.host.as_str())
            && url.port() == self.port;
        ok.then_some(url)
    }
}

fn normalised_host(url: &Url) -> Option<String> {
    let host = url.host_str()?;
    Some(host.strip_suffix('.').unwrap_or(host).to_ascii_lowercase())
}

fn percent_decode(segment: &str) -> String {
    let bytes = segment.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = |b: u8| (b as char).to_digit(16);
        if bytes[i] == b'%' && i + 2 < bytes.len() {
            if let (Some(h), Some(l)) = (hex(bytes[i + 1]), hex(bytes[i + 2])) {
                out.push((h * 16 + l) as u8);
                i += 3;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Percent-encodes everything but RFC 3986 unreserved characters, for one URL path segment.
pub fn percent_encode_segment(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// What the acceptance rules need to know about repositories besides announcements.
pub trait KnownRepos: Announcements {
    /// Owners whose announcement with `identifier` is accepted (stored and served).
    fn accepted_owners(&self, identifier: &Identifier) -> Vec<PublicKey>;
    /// Owners whose announcement with `identifier` is known: accepted or waiting in purgatory.
    fn known_owners(&self, identifier: &Identifier) -> Vec<PublicKey>;
}

/// The NIP-01 machine-readable prefix of a refusal.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum RejectPrefix {
    Invalid,
    Blocked,
    Restricted,
}

/// A refusal; `Display` gives the complete `OK` message, e.g. `blocked: ...`.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct Rejection {
    pub prefix: RejectPrefix,
    pub message: String,
}

impl Rejection {
    fn blocked(message: String) -> Rejection {
        Rejection {
            prefix: RejectPrefix::Blocked,
            message,
        }
    }
    fn restricted(message: String) -> Rejection {
        Rejection {
            prefix: RejectPrefix::Restricted,
            message,
        }
    }
}

impl fmt::Display for Rejection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let prefix = match self.prefix {
            RejectPrefix::Invalid => "invalid",
            RejectPrefix::Blocked => "blocked",
            RejectPrefix::Restricted => "restricted",
        };
        write!(f, "{prefix}: {}", self.message)
    }
}

impl std::error::Error for Rejection {}

/// Whether this server takes `event`. Deletions are always taken: they can only remove what
/// their own author published.
pub fn accept(
    service: &OwnService,
    known: &(impl KnownRepos + ?Sized),
    event: &GitEvent,
) -> Result<(), Rejection> {
    match event {
        GitEvent::Announcement(a) => accept_announcement(service, known, a),
        GitEvent::State(s) => accept_state(known, s),
        GitEvent::Pr(p) => accept_pr(known, p),
        GitEvent::Deletion(_) => Ok(()),
    }
}

/// An announcement must list this server in `clone` and `relays`, unless its author maintains
/// an accepted repository with the same identifier owned by someone else (so that repository's
/// maintainer chain can be followed).
pub fn accept_announcement(
    service: &OwnService,
    known: &(impl KnownRepos + ?Sized),
    ann: &Announcement,
) -> Result<(), Rejection> {
    let lists_clone = ann
        .clone
        .iter()
        .any(|u| service.is_own_clone_url(u, &ann.owner, &ann.identifier));
    let lists_relay = ann.relays.iter().any(|u| service.is_own_relay_url(u));
    if lists_clone && lists_relay {
        return Ok(());
    }
    let maintains_accepted_repo = known
        .accepted_owners(&ann.identifier)
        .iter()
        .filter(|owner| **owner != ann.owner)
        .any(|owner| maintainer_set(known, owner, &ann.identifier).contains(&ann.owner));
    if maintains_accepted_repo {
        return Ok(());
    }
    let mut missing = Vec::new();
    if !lists_clone {
        missing.push(format!(
            "{} in its `clone` tag",
            service.clone_url(&ann.owner, &ann.identifier)
        ));
    }
    if !lists_relay {
        missing.push(format!("{} in its `relays` tag", service.relay_url()));
    }
    Err(Rejection::blocked(format!(
        "this server only hosts repositories whose announcement lists it: add {}",
        missing.join(" and ")
    )))
}

/// A state is taken if its author is in the maintainer set of a known (accepted or waiting)
/// announcement with the same identifier.
pub fn accept_state(
    known: &(impl KnownRepos + ?Sized),
    state: &RepoState,
) -> Result<(), Rejection> {
    let owners = known.known_owners(&state.identifier);
    if owners.is_empty() {
        return Err(Rejection::blocked(format!(
            "no repository {:?} is announced here: publish its announcement (kind {}) listing \
             this server first",
            state.identifier.as_str(),
            KIND_ANNOUNCEMENT
        )));
    }
    let authorised = owners
        .iter()
        .any(|owner| maintainer_set(known, owner, &state.identifier).contains(&state.author));
    if authorised {
        return Ok(());
    }
    Err(Rejection::restricted(format!(
        "{} is not a maintainer of any repository {:?} announced here: the owner must list \
         this key in the announcement's `maintainers` tag",
        state.author.to_bech32().unwrap_or_default(),
        state.identifier.as_str()
    )))
}

/// A PR or PR update is taken if one of its `a` tags names a known repository, or (GRASP-06)
/// it has a PR repository here (`pr.prs_repo`, set by the engine from its `clone` tags).
pub fn accept_pr(known: &(impl KnownRepos + ?Sized), pr: &PullRequest) -> Result<(), Rejection> {
    let names_known_repo = pr.repos.iter().any(|c| {
        c.kind == KIND_ANNOUNCEMENT && known.known_owners(&c.identifier).contains(&c.author)
    });
    if names_known_repo || pr.prs_repo.is_some() {
        return Ok(());
    }
    let named: Vec<String> = pr.repos.iter().map(ToString::to_string).collect();
    Err(Rejection::blocked(format!(
        "this PR is for {}, which is not announced here: send it to a server that hosts the \
         repository",
        named.join(", ")
    )))
}

#[cfg(test)]
mod tests {
    use std::collections::{BTreeMap, BTreeSet};

    use super::*;
    use crate::events::{Coordinate, GitEvent};
    use crate::ids::RepoKey;
    use crate::testkit::{announcement, ident, keys, oid, parsed, pk, sign, state};

    fn service() -> OwnService {
        OwnService::new("https://grasp.example").unwrap()
    }

    /// Known announcements; `accepted` names the owners whose announcement is served.
    struct World {
        announcements: BTreeMap<RepoKey, Announcement>,
        accepted: BTreeSet<RepoKey>,
    }

    impl World {
        fn new() -> World {
            World {
                announcements: BTreeMap::new(),
                accepted: BTreeSet::new(),
            }
        }
        fn with(mut self, ann: Announcement, accepted: bool) -> World {
            let key = RepoKey::new(ann.owner, ann.identifier.clone());
            if accepted {
                self.accepted.insert(key.clone());
            }
            self.announcements.insert(key, ann);
            self
        }
    }

    impl Announcements for World {
        fn announcement(
            &self,
            owner: &PublicKey,
            identifier: &Identifier,
        ) -> Option<&Announcement> {
            self.announcements.announcement(owner, identifier)
        }
    }

    impl KnownRepos for World {
        fn accepted_owners(&self, identifier: &Identifier) -> Vec<PublicKey> {
            self.accepted
                .iter()
                .filter(|k| k.identifier == *identifier)
                .map(|k| k.owner)
                .collect()
        }
        fn known_owners(&self, identifier: &Identifier) -> Vec<PublicKey> {
            self.announcements
                .keys()
                .filter(|k| k.identifier == *identifier)
                .map(|k| k.owner)
                .collect()
        }
    }

    /// An announcement by `n` with explicit clone and relay URLs.
    fn ann_with(n: u8, id: &str, clone: &str, relay: &str, maintainers: &[u8]) -> Announcement {
        let hexes: Vec<String> = maintainers.iter().map(|m| pk(*m).to_hex()).collect();
        let mut m_tag = vec!["maintainers"];
        m_tag.extend(hexes.iter().map(String::as_str));
        let e = sign(
            &keys(n),
            KIND_ANNOUNCEMENT,
            1,
            &[
                &["d", id],
                &["clone", "https://other.example/x.git", clone],
                &["relays", relay],
                &m_tag,
            ],
        );
        match parsed(&e) {
            GitEvent::Announcement(a) => a,
            _ => unreachable!(),
        }
    }

    #[test]
    fn clone_url_comparison_is_structural() {
        let svc = service();
        let owner = pk(1);
        let npub = owner.to_bech32().unwrap();
        let other_npub = pk(2).to_bech32().unwrap();
        let id = ident("repo");
        let cases: &[(String, bool)] = &[
            (format!("https://grasp.example/{npub}/repo.git"), true),
            (format!("http://grasp.example/{npub}/repo.git"), true),
            (format!("https://GRASP.Example/{npub}/repo.git"), true),
            (format!("https://grasp.example./{npub}/repo.git"), true),
            (format!("https://grasp.example:443/{npub}/repo.git"), true),
            (format!("https://grasp.example/{npub}/repo.git/"), true),
            (
                format!("https://grasp.example/{}/repo.git", npub.to_uppercase()),
                true,
            ),
            (format!("https://grasp.example/{npub}/re%70o.git"), true),
            (format!("https://grasp.example:8443/{npub}/repo.git"), false),
            (
                format!("https://grasp.example.evil.com/{npub}/repo.git"),
                false,
            ),
            (
                format!("https://evil.com/grasp.example/{npub}/repo.git"),
                false,
            ),
            (
                format!("https://grasp.example@evil.com/{npub}/repo.git"),
                false,
            ),
            (format!("https://user@grasp.example/{npub}/repo.git"), false),
            (
                format!("https://grasp.example/{other_npub}/repo.git"),
                false,
            ),
            (format!("https://grasp.example/{npub}/repo2.git"), false),
            (format!("https://grasp.example/{npub}/repo"), false),
            (format!("https://grasp.example/x/{npub}/repo.git"), false),
            (format!("https://grasp.example/{npub}/repo.git?x=1"), false),
            (format!("ssh://grasp.example/{npub}/repo.git"), false),
            (format!("wss://grasp.example/{npub}/repo.git"), false),
            (format!("grasp.example/{npub}/repo.git"), false),
        ];
        for (url, want) in cases {
            assert_eq!(svc.is_own_clone_url(url, &owner, &id), *want, "{url}");
        }
        assert!(svc.is_own_clone_url(&svc.clone_url(&owner, &id), &owner, &id));
        let odd = ident("a b:c%");
        let url = svc.clone_url(&owner, &odd);
        assert!(url.ends_with("/a%20b%3Ac%25.git"), "{url}");
        assert!(svc.is_own_clone_url(&url, &owner, &odd));
    }

    #[test]
    fn relay_url_comparison_is_structural() {
        let svc = service();
        let cases = [
            ("wss://grasp.example", true),
            ("wss://grasp.example/", true),
            ("ws://grasp.example", true),
            ("WSS://Grasp.Example", true),
            ("wss://grasp.example:443", true),
            ("wss://grasp.example/relay", false),
            ("wss://grasp.example:7777", false),
            ("https://grasp.example", false),
            ("wss://grasp.example.evil.com", false),
            ("wss://evil.com/?grasp.example", false),
        ];
        for (url, want) in cases {
            assert_eq!(svc.is_own_relay_url(url), want, "{url}");
        }
        let local = OwnService::new("http://localhost:8080").unwrap();
        assert_eq!(local.relay_url(), "ws://localhost:8080");
        assert!(local.is_own_relay_url("ws://localhost:8080/"));
        assert!(!local.is_own_relay_url("ws://localhost"));
        assert!(local.is_own_origin("http://LOCALHOST:8080/anything"));
        assert!(OwnService::new("ftp://x").is_err());
    }

    #[test]
    fn announcements_must_list_this_server() {
        let npub1 = pk(1).to_bech32().unwrap();
        let clone = format!("https://grasp.example/{npub1}/r.git");
        let w = World::new();
        let svc = service();
        assert_eq!(
            accept_announcement(
                &svc,
                &w,
                &ann_with(1, "r", &clone, "wss://grasp.example", &[])
            ),
            Ok(())
        );

        let no_relay = accept_announcement(&svc, &w, &ann_with(1, "r", &clone, "wss://else", &[]));
        let msg = no_relay.unwrap_err().to_string();
        assert!(msg.starts_with("blocked: "), "{msg}");
        assert!(
            msg.contains("wss://grasp.example in its `relays` tag"),
            "{msg}"
        );
        assert!(!msg.contains("`clone`"), "{msg}");

        let msg = accept_announcement(
            &svc,
            &w,
            &ann_with(1, "r", "https://else/r.git", "wss://else", &[]),
        )
        .unwrap_err()
        .to_string();
        assert!(
            msg.contains(&format!(
                "{clone} in its `clone` tag and wss://grasp.example"
            )),
            "{msg}"
        );
    }

    #[test]
    fn maintainers_of_accepted_repos_may_announce_elsewhere() {
        let svc = service();
        let elsewhere = |n| ann_with(n, "r", "https://else/r.git", "wss://else", &[]);
        // 1 (accepted) lists 2; 2 lists 3 (waiting, not accepted).
        let w = World::new()
            .with(announcement(1, "r", &[2], 1), true)
            .with(announcement(2, "r", &[3], 1), false);
        assert_eq!(
            accept_announcement(&svc, &w, &elsewhere(2)),
            Ok(()),
            "direct maintainer"
        );
        assert_eq!(
            accept_announcement(&svc, &w, &elsewhere(3)),
            Ok(()),
            "recursive maintainer"
        );
        assert!(
            accept_announcement(&svc, &w, &elsewhere(4)).is_err(),
            "stranger"
        );
        // The owner cannot drop this server from its own announcement and stay hosted.
        assert!(
            accept_announcement(&svc, &w, &elsewhere(1)).is_err(),
            "owner"
        );
        // Directional: 1's accepted repo does not let the owner of a repo 1 maintains in.
        let w = World::new()
            .with(announcement(1, "r", &[], 1), true)
            .with(announcement(5, "r", &[1], 1), false);
        assert!(
            accept_announcement(&svc, &w, &elsewhere(5)).is_err(),
            "directional"
        );
        // Only accepted repos grant the exception, and only for the same identifier.
        let w = World::new().with(announcement(1, "r", &[2], 1), false);
        assert!(
            accept_announcement(&svc, &w, &elsewhere(2)).is_err(),
            "waiting repo"
        );
        let w = World::new().with(announcement(1, "other", &[2], 1), true);
        assert!(
            accept_announcement(&svc, &w, &elsewhere(2)).is_err(),
            "other identifier"
        );
    }

    #[test]
    fn states_need_a_maintainer_of_a_known_repo() {
        let w = World::new()
            .with(announcement(1, "r", &[2], 1), true)
            .with(announcement(2, "r", &[3], 1), false)
            .with(announcement(6, "r", &[], 1), false);
        let cases: &[(u8, &str, Option<&str>)] = &[
            (1, "r", None),
            (2, "r", None),
            (3, "r", None),
            (6, "r", None),
            (4, "r", Some("restricted: npub")),
            (
                1,
                "s",
                Some("blocked: no repository \"s\" is announced here"),
            ),
        ];
        for (author, id, want) in cases {
            let got = accept_state(&w, &state(*author, id, 1, &[("refs/heads/main", 1)], None));
            match want {
                None => assert_eq!(got, Ok(()), "author {author} id {id}"),
                Some(w) => {
                    let msg = got.unwrap_err().to_string();
                    assert!(msg.starts_with(w), "author {author} id {id}: {msg}");
                }
            }
        }
    }

    #[test]
    fn prs_need_a_known_repo() {
        let w = World::new().with(announcement(1, "r:x", &[], 1), false);
        let pr = |owner: u8, id: &str| {
            let a = format!("30617:{}:{id}", pk(owner).to_hex());
            let c = oid(9).to_string();
            let e = sign(
                &keys(7),
                crate::events::KIND_PR,
                1,
                &[&["a", &a], &["c", &c]],
            );
            match parsed(&e) {
                GitEvent::Pr(p) => p,
                _ => unreachable!(),
            }
        };
        assert_eq!(accept_pr(&w, &pr(1, "r:x")), Ok(()));
        let msg = accept_pr(&w, &pr(2, "r:x")).unwrap_err().to_string();
        assert!(msg.starts_with("blocked: this PR is for 30617:"), "{msg}");
        assert!(accept_pr(&w, &pr(1, "r")).is_err());
        let c = Coordinate::parse(&format!("30617:{}:r:x", pk(1).to_hex())).unwrap();
        assert_eq!(c.identifier, ident("r:x"));
    }
}
