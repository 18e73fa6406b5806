//! The landing page at `/`: the hosted repositories, newest announcement first, a page at a
//! time. A page after the first is named by a cursor, the last entry of the page before
//! (`/?after=<created_at>-<event id>`), so a page costs the same however deep it is.

use std::fmt::Write;

use graspd_core::acceptance::OwnService;
use graspd_core::events::KIND_ANNOUNCEMENT;
use nostr::event::{Event, EventId, Kind};
use nostr::filter::Filter;
use nostr::nips::nip19::ToBech32;
use nostr::types::Timestamp;

use super::html::{escape, link, page, truncate};
use super::repo::Announced;

/// Repositories per page.
pub const PAGE_SIZE: usize = 50;

/// Most announcements sharing one `created_at` second that paging steps through in order;
/// beyond it, some of that second's announcements may be skipped.
pub const MAX_SAME_SECOND: usize = 1000;

/// Longest description shown in the list.
const DESCRIPTION_CHARS: usize = 200;

/// A position in the list: just after the announcement with this `created_at` and id. The
/// list is newest first, ties by highest id first: the order the store's time index picks
/// the newest `limit` events in, so a page boundary inside one second loses nothing.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Cursor {
    created_at: u64,
    id: EventId,
}

impl Cursor {
    pub fn of(event: &Event) -> Cursor {
        Cursor {
            created_at: event.created_at.as_secs(),
            id: event.id,
        }
    }

    /// Reads `<created_at>-<64 hex digits>`.
    pub fn parse(text: &str) -> Option<Cursor> {
        let (secs, id) = text.split_once('-')?;
        if secs.is_empty() || !secs.bytes().all(|b| b.is_ascii_digit()) || id.len() != 64 {
            return None;
        }
        Some(Cursor {
            created_at: secs.parse().ok()?,
            id: EventId::from_hex(id).ok()?,
        })
    }

    /// Whether `event` comes after this position in the list.
    fn precedes(&self, event: &Event) -> bool {
        let created_at = event.created_at.as_secs();
        created_at < self.created_at
            || (created_at == self.created_at && event.id.as_bytes() < self.id.as_bytes())
    }
}

impl std::fmt::Display for Cursor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}-{}", self.created_at, self.id.to_hex())
    }
}

/// The store query for the page after `cursor` (the first page for `None`) and its cap per
/// filter: the announcements of the cursor's own second, and `page_size + 1` older ones (one
/// more than a page, to know whether another page follows).
pub fn query(cursor: Option<&Cursor>, page_size: usize) -> (Vec<Filter>, usize) {
    let announcements = Filter::new().kind(Kind::from(KIND_ANNOUNCEMENT));
    let Some(cursor) = cursor else {
        return (vec![announcements.limit(page_size + 1)], page_size + 1);
    };
    let at = Timestamp::from(cursor.created_at);
    let mut filters = vec![announcements
        .clone()
        .since(at)
        .until(at)
        .limit(MAX_SAME_SECOND)];
    if let Some(older) = cursor.created_at.checked_sub(1) {
        filters.push(
            announcements
                .until(Timestamp::from(older))
                .limit(page_size + 1),
        );
    }
    (filters, MAX_SAME_SECOND.max(page_size + 1))
}

/// One page of the list from the store's answer to [`query`], and the cursor of the next page
/// if there is one.
pub fn select(
    mut events: Vec<Event>,
    cursor: Option<&Cursor>,
    page_size: usize,
) -> (Vec<Event>, Option<Cursor>) {
    events.sort_by(|a, b| {
        b.created_at
            .cmp(&a.created_at)
            .then_with(|| b.id.as_bytes().cmp(a.id.as_bytes()))
    });
    let mut entries: Vec<Event> = events
        .into_iter()
        .filter(|event| cursor.is_none_or(|c| c.precedes(event)))
        .take(page_size + 1)
        .collect();
    let next = if entries.len() > page_size {
        entries.truncate(page_size);
        entries.last().map(Cursor::of)
    } else {
        None
    };
    (entries, next)
}

/// The landing page: this server's addresses, then one page of repositories.
pub fn render(
    entries: &[Event],
    first_page: bool,
    next: Option<&Cursor>,
    own: &OwnService,
    public_url: &str,
) -> String {
    let mut body = String::from("<h1>Repositories on this server</h1>\n");
    let _ = writeln!(
        body,
        "<p class=\"intro\">A GRASP server: a nostr relay at <code>{}</code> and git over HTTP \
         at <code>{}/&lt;npub&gt;/&lt;identifier&gt;.git</code>. Announce a repository \
         (NIP-34, kind 30617) that lists this server in its <code>clone</code> and \
         <code>relays</code> tags, publish its state, and push.</p>",
        escape(&own.relay_url()),
        escape(public_url),
    );
    let listed: Vec<Announced> = entries.iter().filter_map(Announced::from_event).collect();
    if listed.is_empty() {
        body.push_str(if first_page {
            "<p>No repositories yet.</p>\n"
        } else {
            "<p>No more repositories.</p>\n"
        });
    } else {
        body.push_str("<ul class=\"repos\">\n");
        for repo in &listed {
            let owner = repo.repo.owner.to_bech32().unwrap_or_default();
            let _ = write!(
                body,
                "<li>{} <span class=\"owner\">{} · <code>{}</code></span>",
                link(
                    &own.clone_url(&repo.repo.owner, &repo.repo.identifier),
                    &escape(&repo.name)
                ),
                escape(repo.repo.identifier.as_str()),
                escape(&truncate(&owner, 20)),
            );
            if !repo.description.is_empty() {
                let _ = write!(
                    body,
                    "<p>{}</p>",
                    escape(&truncate(&repo.description, DESCRIPTION_CHARS))
                );
            }
            body.push_str("</li>\n");
        }
        body.push_str("</ul>\n");
    }
    let mut pager = Vec::new();
    if !first_page {
        pager.push(link("/", "Newest"));
    }
    if let Some(next) = next {
        pager.push(link(&format!("/?after={next}"), "Older"));
    }
    if !pager.is_empty() {
        let _ = writeln!(body, "<nav class=\"pager\">{}</nav>", pager.join(" "));
    }
    page("graspd: repositories", &body)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::Store;
    use nostr::prelude::{EventBuilder, FinalizeEvent, Keys, Tag};

    fn announcement(keys: &Keys, identifier: &str, created_at: u64) -> Event {
        EventBuilder::new(Kind::from(KIND_ANNOUNCEMENT), "")
            .tags([
                Tag::identifier(identifier),
                Tag::parse(["clone", "http://h/x.git"]).unwrap(),
            ])
            .custom_created_at(Timestamp::from(created_at))
            .finalize(keys)
            .unwrap()
    }

    /// Walks every page of `store` the way the landing page's links do.
    fn walk(store: &Store, page_size: usize) -> Vec<Vec<Event>> {
        let mut pages = Vec::new();
        let mut cursor = None;
        loop {
            let (filters, cap) = query(cursor.as_ref(), page_size);
            let answer = store.query(&filters, cap).unwrap();
            let (entries, next) = select(answer, cursor.as_ref(), page_size);
            pages.push(entries);
            match next {
                Some(next) => {
                    let text = next.to_string();
                    cursor = Some(Cursor::parse(&text).expect("a cursor reads back"));
                }
                None => return pages,
            }
            assert!(pages.len() < 1000, "paging does not end");
        }
    }

    #[test]
    fn pages_list_every_repository_once_newest_first_across_tied_seconds() {
        let dir = std::env::temp_dir().join(format!("graspd-landing-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let store = Store::open(&dir.join("store.redb")).unwrap();
        let keys = Keys::generate();
        // 23 announcements over 5 seconds, many sharing a second, so page boundaries fall
        // inside a second.
        let mut all = Vec::new();
        for n in 0..23u64 {
            let event = announcement(&keys, &format!("repo-{n}"), 1_000 + n % 5);
            store.insert(&event).unwrap();
            all.push(event);
        }
        // A state is not a repository.
        let state = EventBuilder::new(Kind::from(30618), "")
            .tags([Tag::identifier("repo-1")])
            .custom_created_at(Timestamp::from(2_000))
            .finalize(&keys)
            .unwrap();
        store.insert(&state).unwrap();

        for page_size in [1, 4, 5, 10, 23, 50] {
            let pages = walk(&store, page_size);
            assert!(pages.iter().all(|p| p.len() <= page_size));
            let listed: Vec<&Event> = pages.iter().flatten().collect();
            assert_eq!(listed.len(), all.len(), "page size {page_size}");
            for pair in listed.windows(2) {
                let (a, b) = (pair[0], pair[1]);
                assert!(
                    a.created_at > b.created_at
                        || (a.created_at == b.created_at && a.id.as_bytes() > b.id.as_bytes()),
                    "page size {page_size}: not newest first"
                );
            }
            let mut ids: Vec<_> = listed.iter().map(|e| e.id).collect();
            ids.sort();
            ids.dedup();
            assert_eq!(ids.len(), all.len(), "page size {page_size}: repeats");
            let expected_pages = all.len().div_ceil(page_size);
            assert_eq!(pages.len(), expected_pages, "page size {page_size}");
        }
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn cursor_reads_only_its_own_form() {
        let id = "ab".repeat(32);
        let cursor = Cursor::parse(&format!("1700000000-{id}")).unwrap();
        assert_eq!(cursor.to_string(), format!("1700000000-{id}"));
        for bad in [
            "",
            "-",
            "17-",
            &format!("-{id}"),
            &format!("+1-{id}"),
            &format!("1-{}", "ab".repeat(31)),
            &format!("1-{}g", "ab".repeat(31)),
            &format!("99999999999999999999999-{id}"),
            "<script>",
        ] {
            assert_eq!(Cursor::parse(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn landing_escapes_names_and_descriptions() {
        let keys = Keys::generate();
        let event = EventBuilder::new(Kind::from(KIND_ANNOUNCEMENT), "")
            .tags([
                Tag::identifier("x"),
                Tag::parse(["name", "<script>alert(1)</script>"]).unwrap(),
                Tag::parse(["description", "\"quoted\" & <b>bold</b>"]).unwrap(),
            ])
            .finalize(&keys)
            .unwrap();
        let own = OwnService::new("http://127.0.0.1:7334").unwrap();
        let html = render(&[event], true, None, &own, "http://127.0.0.1:7334");
        assert!(!html.contains("<script"), "{html}");
        assert!(!html.contains("<b>"), "{html}");
        assert!(html.contains("&lt;script&gt;alert(1)&lt;/script&gt;"));
        assert!(html.contains("&quot;quoted&quot; &amp; &lt;b&gt;bold&lt;/b&gt;"));
    }
}
