//! Web pages for browsers (GRASP-01: a page at the repository's URL, a 404 for repositories
//! not hosted here) and the landing page listing hosted repositories.
//!
//! Only served events are shown: an announcement waiting in purgatory has no page (404), as
//! it is never served over the relay either, and it may expire without ever being hosted.
//! Pages are plain HTML with every user-provided string escaped, no script, and a
//! Content-Security-Policy that allows nothing but the one stylesheet.

mod html;
mod landing;
mod repo;

use graspd_core::acceptance::OwnService;
use graspd_core::events::KIND_ANNOUNCEMENT;
use graspd_core::RepoKey;
use hyper::header::{self, HeaderName, HeaderValue};
use hyper::{Request, Response, StatusCode};
use nostr::event::Kind;
use nostr::filter::Filter;

use super::body::{full, ResponseBody};
use super::{set_type, status, Site};

/// Scripts, frames, images, fonts, forms, plugins: none. Styles: only `/graspd.css`.
pub const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; style-src 'self'; \
     base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

const STYLESHEET: &str = include_str!("style.css");

/// `GET /`: the hosted repositories, `?after=<cursor>` for later pages.
pub(super) async fn landing<B>(site: &Site, request: &Request<B>) -> Response<ResponseBody> {
    let cursor = match query_param(request, "after") {
        None => None,
        Some(text) => match landing::Cursor::parse(text) {
            Some(cursor) => Some(cursor),
            None => {
                return status(
                    StatusCode::BAD_REQUEST,
                    "?after= takes the cursor of an \"Older\" link: <created_at>-<event id>\n",
                )
            }
        },
    };
    let Some(own) = own_service(site) else {
        return page_failure("the server's public URL is not an http(s) origin");
    };
    let (filters, cap) = landing::query(cursor.as_ref(), landing::PAGE_SIZE);
    let answer = match site.handlers.relay.served_events(filters, cap).await {
        Ok(events) => events,
        Err(error) => return page_failure(&format!("reading announcements failed: {error}")),
    };
    let (entries, next) = landing::select(answer, cursor.as_ref(), landing::PAGE_SIZE);
    html_response(
        StatusCode::OK,
        landing::render(
            &entries,
            cursor.is_none(),
            next.as_ref(),
            &own,
            &site.public_url,
        ),
    )
}

/// `GET /<npub>/<identifier>.git`: the repository's page, or the not-found page (404).
pub(super) async fn repository<B>(
    site: &Site,
    request: &Request<B>,
    repo: RepoKey,
) -> Response<ResponseBody> {
    if query_param(request, "service").is_some() {
        // git never asks for the bare repository URL; a client that does is told where to go.
        return status(
            StatusCode::NOT_FOUND,
            "git smart HTTP is served at <repository>.git/info/refs?service=...\n",
        );
    }
    let Some(own) = own_service(site) else {
        return page_failure("the server's public URL is not an http(s) origin");
    };
    let filter = Filter::new()
        .kind(Kind::from(KIND_ANNOUNCEMENT))
        .author(repo.owner)
        .identifier(repo.identifier.as_str())
        .limit(1);
    let served = match site.handlers.relay.served_events(vec![filter], 1).await {
        Ok(events) => events,
        Err(error) => return page_failure(&format!("reading the announcement failed: {error}")),
    };
    let Some(announced) = served.first().and_then(repo::Announced::from_event) else {
        return html_response(StatusCode::NOT_FOUND, repo::render_not_found(&repo));
    };
    let refs = match site.git.list_refs(&repo, repo::MAX_LISTED_REFS).await {
        Ok(refs) => Some(refs),
        Err(error) => {
            tracing::warn!(%repo, %error, "reading refs for the repository page failed");
            None
        }
    };
    html_response(
        StatusCode::OK,
        repo::render(&announced, refs.as_ref(), &own),
    )
}

/// `GET /graspd.css`
pub(super) fn stylesheet() -> Response<ResponseBody> {
    respond(
        StatusCode::OK,
        "text/css; charset=utf-8",
        STYLESHEET.into(),
        &[(header::CACHE_CONTROL, "public, max-age=3600")],
    )
}

fn html_response(code: StatusCode, html: String) -> Response<ResponseBody> {
    respond(
        code,
        "text/html; charset=utf-8",
        html,
        &[
            (header::CONTENT_SECURITY_POLICY, CONTENT_SECURITY_POLICY),
            (header::REFERRER_POLICY, "no-referrer"),
            // Refs and the list change with every push and release.
            (header::CACHE_CONTROL, "no-cache"),
        ],
    )
}

/// A page or the stylesheet, never content-sniffed into anything else.
fn respond(
    code: StatusCode,
    content_type: &'static str,
    body: String,
    headers: &[(HeaderName, &'static str)],
) -> Response<ResponseBody> {
    let mut response = Response::new(full(body));
    *response.status_mut() = code;
    set_type(&mut response, content_type);
    let all = response.headers_mut();
    all.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    for (name, value) in headers {
        all.insert(name, HeaderValue::from_static(value));
    }
    response
}

fn page_failure(what: &str) -> Response<ResponseBody> {
    tracing::warn!("web page: {what}");
    status(StatusCode::INTERNAL_SERVER_ERROR, &format!("{what}\n"))
}

fn own_service(site: &Site) -> Option<OwnService> {
    OwnService::new(&site.public_url).ok()
}

/// The raw value of the first `name=` parameter of the query string.
fn query_param<'r, B>(request: &'r Request<B>, name: &str) -> Option<&'r str> {
    request
        .uri()
        .query()?
        .split('&')
        .find_map(|pair| pair.strip_prefix(name)?.strip_prefix('='))
}
