//! The repository page: what a served announcement says, the branches and tags the repository
//! holds, and how to clone and browse it with git-nostr clients.

use std::fmt::Write;

use graspd_core::acceptance::OwnService;
use graspd_core::events::{self, GitEvent};
use graspd_core::{PublicKey, RepoKey};
use nostr::event::{Event, Kind};
use nostr::nips::nip01::Coordinate;
use nostr::nips::nip19::{Nip19Coordinate, ToBech32};
use nostr::types::RelayUrl;

use super::html::{escape, http_link, link, page};
use crate::git::{ListedRef, RefListing};

/// Most branches, and most tags, a page lists.
pub const MAX_LISTED_REFS: usize = 500;

/// Most maintainers a page lists.
const MAX_LISTED_MAINTAINERS: usize = 100;

/// The web client that browses a repository by its `naddr`.
const GITWORKSHOP: &str = "https://gitworkshop.dev";

/// What the pages show of one served announcement (kind 30617).
#[derive(Clone, Debug)]
pub struct Announced {
    pub repo: RepoKey,
    /// The `name` tag, else the identifier.
    pub name: String,
    pub description: String,
    pub clone: Vec<String>,
    pub web: Vec<String>,
    pub relays: Vec<String>,
    /// The owner first, then the `maintainers` tag, each once.
    pub maintainers: Vec<PublicKey>,
}

impl Announced {
    /// `None` if `event` is not a well-formed announcement (a served one always is).
    pub fn from_event(event: &Event) -> Option<Announced> {
        let Ok(Some(GitEvent::Announcement(announcement))) = events::parse(event) else {
            return None;
        };
        let first = |name: &str| tag_values(event, name).into_iter().next();
        let mut maintainers = vec![announcement.owner];
        for key in announcement.maintainers {
            if !maintainers.contains(&key) && maintainers.len() < MAX_LISTED_MAINTAINERS {
                maintainers.push(key);
            }
        }
        Some(Announced {
            name: first("name")
                .filter(|n| !n.trim().is_empty())
                .unwrap_or(announcement.identifier.as_str())
                .to_owned(),
            description: first("description").unwrap_or_default().to_owned(),
            web: tag_values(event, "web")
                .into_iter()
                .map(str::to_owned)
                .collect(),
            repo: RepoKey::new(announcement.owner, announcement.identifier),
            clone: announcement.clone,
            relays: announcement.relays,
            maintainers,
        })
    }
}

/// Every non-empty value of every tag called `name`, in order.
fn tag_values<'a>(event: &'a Event, name: &str) -> Vec<&'a str> {
    event
        .tags
        .iter()
        .map(|tag| tag.as_slice())
        .filter(|tag| tag.first().is_some_and(|n| n == name))
        .flat_map(|tag| tag.iter().skip(1))
        .map(String::as_str)
        .filter(|v| !v.is_empty())
        .collect()
}

fn npub(key: &PublicKey) -> String {
    key.to_bech32()
        .expect("bech32 encoding of a public key cannot fail")
}

/// The NIP-19 `naddr` of the announcement, with this server's relay as the hint.
pub fn naddr(repo: &RepoKey, own: &OwnService) -> String {
    let mut coordinate = Coordinate::new(Kind::GitRepoAnnouncement, repo.owner);
    coordinate.identifier = repo.identifier.as_str().to_owned();
    let relays = RelayUrl::parse(&own.relay_url()).ok();
    Nip19Coordinate::new(coordinate, relays)
        .to_bech32()
        .expect("an naddr of a valid identifier and relay URL encodes")
}

/// The clone address git-remote-nostr (ngit) takes: `nostr://<npub>/<relay>/<identifier>`,
/// the relay written as ngit writes it (`wss://` dropped, the rest percent-encoded).
pub fn nostr_clone_url(repo: &RepoKey, own: &OwnService) -> String {
    let relay = own.relay_url();
    let relay = relay.strip_prefix("wss://").unwrap_or(&relay);
    format!(
        "nostr://{}/{}/{}",
        npub(&repo.owner),
        graspd_core::acceptance::percent_encode_segment(relay),
        repo.identifier
    )
}

/// The whole repository page. `refs` is `None` when they could not be read.
pub fn render(announced: &Announced, refs: Option<&RefListing>, own: &OwnService) -> String {
    let repo = &announced.repo;
    let clone_url = own.clone_url(&repo.owner, &repo.identifier);
    let naddr = naddr(repo, own);
    let mut body = String::new();
    let _ = write!(
        body,
        "<h1>{}</h1>\n<p class=\"coordinate\"><code>{}</code> / <code>{}</code></p>\n",
        escape(&announced.name),
        escape(&npub(&repo.owner)),
        escape(repo.identifier.as_str()),
    );
    if !announced.description.is_empty() {
        let _ = writeln!(
            body,
            "<p class=\"description\">{}</p>",
            escape(&announced.description)
        );
    }

    body.push_str("<section><h2>Browse</h2><ul class=\"links\">\n");
    let _ = writeln!(
        body,
        "<li>{} on gitworkshop.dev</li>",
        link(
            &format!("{GITWORKSHOP}/{naddr}"),
            "Issues, patches and code"
        )
    );
    let _ = writeln!(
        body,
        "<li>{} in any nostr client</li>",
        link(&format!("nostr:{naddr}"), "Open the announcement")
    );
    for web in &announced.web {
        let _ = writeln!(body, "<li>Website: {}</li>", http_link(web));
    }
    body.push_str("</ul></section>\n");

    let _ = write!(
        body,
        "<section><h2>Clone</h2>\n<pre>git clone {}</pre>\n\
         <p>With git-remote-nostr (<a href=\"https://ngit.dev\">ngit</a>), which follows the \
         maintainers' latest state on every server they list:</p>\n<pre>git clone {}</pre>\n",
        escape(&clone_url),
        escape(&nostr_clone_url(repo, own)),
    );
    let others: Vec<&String> = announced
        .clone
        .iter()
        .filter(|url| !own.is_own_clone_url(url, &repo.owner, &repo.identifier))
        .collect();
    if !others.is_empty() {
        body.push_str("<p>Also served from:</p><ul class=\"plain\">\n");
        for url in others {
            let _ = writeln!(body, "<li><code>{}</code></li>", escape(url));
        }
        body.push_str("</ul>\n");
    }
    body.push_str("</section>\n");

    match refs {
        Some(refs) => render_refs(&mut body, refs),
        None => body.push_str(
            "<section><h2>Branches</h2><p>The repository's refs could not be read.</p></section>\n",
        ),
    }

    body.push_str("<section><h2>Maintainers</h2><ul class=\"plain\">\n");
    for key in &announced.maintainers {
        let npub = npub(key);
        let _ = writeln!(
            body,
            "<li>{}</li>",
            link(&format!("nostr:{npub}"), &format!("<code>{npub}</code>"))
        );
    }
    body.push_str("</ul></section>\n");

    if !announced.relays.is_empty() {
        body.push_str("<section><h2>Relays</h2><ul class=\"plain\">\n");
        for relay in &announced.relays {
            let _ = writeln!(body, "<li><code>{}</code></li>", escape(relay));
        }
        body.push_str("</ul></section>\n");
    }
    page(&announced.name, &body)
}

fn render_refs(body: &mut String, refs: &RefListing) {
    let head_branch = refs
        .head
        .as_deref()
        .and_then(|head| head.strip_prefix("refs/heads/"));
    for (title, listed, more, is_head) in [
        ("Branches", &refs.branches, refs.more_branches, head_branch),
        ("Tags", &refs.tags, refs.more_tags, None),
    ] {
        let _ = writeln!(body, "<section><h2>{title}</h2>");
        if let (true, Some(head)) = (title == "Branches", refs.head.as_deref()) {
            let _ = writeln!(
                body,
                "<p class=\"head\">HEAD points to <code>{}</code></p>",
                escape(head)
            );
        }
        if listed.is_empty() {
            let _ = writeln!(body, "<p>No {}.</p>", title.to_lowercase());
        } else {
            body.push_str("<table><thead><tr><th>name</th><th>commit</th></tr></thead><tbody>\n");
            for ListedRef { name, commit } in listed {
                let marker = if is_head == Some(name.as_str()) {
                    " <span class=\"badge\">HEAD</span>"
                } else {
                    ""
                };
                let _ = writeln!(
                    body,
                    "<tr><td><code>{}</code>{marker}</td><td><code>{commit}</code></td></tr>",
                    escape(name)
                );
            }
            body.push_str("</tbody></table>\n");
        }
        if more > 0 {
            let _ = writeln!(body, "<p>and {more} more.</p>");
        }
        body.push_str("</section>\n");
    }
}

/// The page for a repository this server does not host (served with status 404).
pub fn render_not_found(repo: &RepoKey) -> String {
    let body = format!(
        "<h1>Repository not found</h1>\n<p>This server does not host <code>{}</code> of \
         <code>{}</code>.</p>\n<p>A repository appears here once its announcement (kind 30617) \
         listing this server is served. An announcement waits, unpublished, until a state \
         (kind 30618) for the repository is published and its git data has arrived, by a \
         push or from another server the announcement lists.</p>\n\
         <p><a href=\"/\">Repositories hosted here</a></p>\n",
        escape(repo.identifier.as_str()),
        escape(&npub(&repo.owner)),
    );
    page("Repository not found", &body)
}

#[cfg(test)]
mod tests {
    use super::*;
    use graspd_core::Oid;
    use nostr::nips::nip19::FromBech32;
    use nostr::prelude::{EventBuilder, FinalizeEvent, Keys, Tag};

    const ORIGIN: &str = "http://127.0.0.1:7334";

    fn announcement(keys: &Keys, identifier: &str, tags: &[&[&str]]) -> Event {
        let mut all = vec![Tag::identifier(identifier)];
        all.extend(tags.iter().map(|t| Tag::parse(t.iter().copied()).unwrap()));
        EventBuilder::new(Kind::GitRepoAnnouncement, "")
            .tags(all)
            .finalize(keys)
            .unwrap()
    }

    fn listing() -> RefListing {
        let commit = Oid::from_bytes([0xab; 20]);
        RefListing {
            head: Some("refs/heads/main".into()),
            branches: vec![
                ListedRef {
                    name: "<b>x</b>".into(),
                    commit,
                },
                ListedRef {
                    name: "main".into(),
                    commit,
                },
            ],
            tags: vec![ListedRef {
                name: "v1.0".into(),
                commit,
            }],
            more_branches: 0,
            more_tags: 3,
        }
    }

    #[test]
    fn hostile_announcement_renders_as_text() {
        let keys = Keys::generate();
        let event = announcement(
            &keys,
            "it's \"<img src=x onerror=alert(1)>\"",
            &[
                &["name", "<script>alert(1)</script>"],
                &["description", "\"'><style>*{}</style> & more"],
                &["web", "javascript:alert(1)", "https://example.com/?a=1&b=2"],
                &["web", " javascript:alert(2)"],
                &["clone", "http://elsewhere.example/\"><script>x</script>"],
                &["relays", "wss://relay.example/<i>"],
            ],
        );
        let own = OwnService::new(ORIGIN).unwrap();
        let announced = Announced::from_event(&event).expect("an announcement");
        let html = render(&announced, Some(&listing()), &own);
        for forbidden in [
            "<script",
            "<img",
            "<style",
            "<b>",
            "<i>",
            "href=\"javascript",
            "href=\" javascript",
        ] {
            assert!(!html.contains(forbidden), "{forbidden} in\n{html}");
        }
        assert!(html.contains("&lt;script&gt;alert(1)&lt;/script&gt;"));
        assert!(html.contains("<a href=\"https://example.com/?a=1&amp;b=2\">"));
        assert!(html.contains("<code>javascript:alert(1)</code>"));
        // The page's own link to the repository percent-encodes the identifier.
        assert!(html.contains("git clone http://127.0.0.1:7334/npub1"));
        assert!(html.contains("%3Cimg%20src%3Dx%20onerror%3Dalert%281%29%3E"));
        assert!(html.contains("&lt;b&gt;x&lt;/b&gt;"));
        assert!(html.contains("<code>main</code> <span class=\"badge\">HEAD</span>"));
        assert!(html.contains(&"ab".repeat(20)));
        assert!(html.contains("and 3 more."));
    }

    #[test]
    fn clone_addresses_and_naddr_name_this_server() {
        let keys = Keys::generate();
        let event = announcement(
            &keys,
            "demo",
            &[&["maintainers", &keys.public_key().to_hex()]],
        );
        let announced = Announced::from_event(&event).unwrap();
        assert_eq!(announced.name, "demo");
        assert_eq!(
            announced.maintainers,
            vec![keys.public_key()],
            "owner listed once"
        );
        let npub = keys.public_key().to_bech32().unwrap();

        let own = OwnService::new(ORIGIN).unwrap();
        assert_eq!(
            nostr_clone_url(&announced.repo, &own),
            format!("nostr://{npub}/ws%3A%2F%2F127.0.0.1%3A7334/demo")
        );
        let secure = OwnService::new("https://grasp.example").unwrap();
        assert_eq!(
            nostr_clone_url(&announced.repo, &secure),
            format!("nostr://{npub}/grasp.example/demo")
        );

        let decoded = Nip19Coordinate::from_bech32(&naddr(&announced.repo, &own)).unwrap();
        assert_eq!(decoded.kind, Kind::GitRepoAnnouncement);
        assert_eq!(decoded.public_key, keys.public_key());
        assert_eq!(decoded.identifier, "demo");
        assert_eq!(
            decoded.relays[0].as_str_without_trailing_slash(),
            "ws://127.0.0.1:7334"
        );
    }
}
