//! The HTTP origin: one hyper 1 service for the relay (`/`), metrics and git smart-HTTP.
//!
//! What the rest of graspd plugs in is [`Handlers`]: the relay (sessions over the event store), the push
//! decision (driver) and metrics. Everything else here is routing, CORS and git.

pub mod body;
pub mod clients;
mod pages;
pub mod route;
pub mod server;
mod smart;
mod spool;
mod websocket;

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use graspd_core::{Oid, RepoKey};
use hyper::body::Incoming;
use hyper::header::{self, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};
use nostr::event::Event;
use nostr::filter::Filter;

use crate::git::{Git, RefUpdate};
use crate::runtime::BoxFuture;
use body::{empty, full, ResponseBody};
use route::Route;

pub use server::Server;
pub use websocket::WebSocket;

/// The nostr relay behind `/`.
pub trait RelayHandler: Send + Sync + 'static {
    /// The NIP-11 relay information document (JSON text).
    fn information_document(&self) -> String;

    /// The per-connection limits: the WebSocket layer refuses frames over
    /// `max_message_bytes` and buffers at most `send_buffer_bytes` of outgoing frames.
    fn limits(&self) -> crate::relay::RelayLimits {
        crate::relay::RelayLimits::default()
    }

    /// Runs one relay session on an accepted WebSocket until it ends. `client` is the
    /// client's address (behind a trusted proxy, the one it forwarded for).
    fn on_websocket(&self, socket: WebSocket, client: IpAddr) -> BoxFuture<'static, ()>;

    /// The server is shutting down: end every session (a close frame, then the socket).
    fn shutting_down(&self) {}

    /// Served events matching `filters` (at most `cap` per filter), newest first: what the
    /// web pages show. Events waiting in purgatory are never among them.
    fn served_events(
        &self,
        filters: Vec<Filter>,
        cap: usize,
    ) -> BoxFuture<'static, Result<Vec<Event>, String>> {
        let _ = (filters, cap);
        Box::pin(async { Ok(Vec::new()) })
    }
}

/// Decides pushes and hears about the ones that landed.
pub trait PushHandler: Send + Sync + 'static {
    /// One verdict per update, in order: `Ok(())` to accept, `Err(reason)` to refuse
    /// (`reason` is shown to the user). `current_refs` are the repo's refs now. Called with
    /// the repo's lock held: the future must not wait for anything that takes that lock
    /// (e.g. [`Git::apply`] on the same repo).
    fn decide_push(
        &self,
        repo: &RepoKey,
        current_refs: &BTreeMap<String, Oid>,
        updates: &[RefUpdate],
    ) -> BoxFuture<'static, Vec<Result<(), String>>>;

    /// Called after receive-pack, with the updates that are now in the repo. The repo's lock
    /// is released by then.
    fn on_pushed(&self, repo: &RepoKey, updates: &[RefUpdate]) -> BoxFuture<'static, ()>;

    /// Why clones and fetches of `repo` are refused (403 with this text), if they are: the
    /// operator's policy denies it. Pushes are refused per ref by `decide_push`, so git shows
    /// the reason.
    fn refuses_fetch(&self, repo: &RepoKey) -> Option<&'static str> {
        let _ = repo;
        None
    }
}

/// Renders the Prometheus text exposition for `/metrics`.
pub type MetricsHandler = Arc<dyn Fn() -> String + Send + Sync>;

/// What the HTTP origin serves besides git.
#[derive(Clone)]
pub struct Handlers {
    pub relay: Arc<dyn RelayHandler>,
    pub push: Arc<dyn PushHandler>,
    pub metrics: MetricsHandler,
}

/// Everything a request handler needs.
#[derive(Clone)]
pub struct Site {
    pub git: Git,
    pub handlers: Handlers,
    /// How large and how slow request bodies may be.
    pub body: body::BodyLimits,
    pub public_url: String,
    /// Client addresses and WebSocket caps.
    pub clients: Arc<clients::Clients>,
    /// GRASP-06: `/prs/<npub>/<identifier>.git` is served (404 otherwise).
    pub grasp06: bool,
}

const CORS_METHODS: &str = "GET, POST, OPTIONS, HEAD";
const CORS_HEADERS: &str = "Content-Type, Git-Protocol, Content-Encoding, Authorization, Accept";

impl Site {
    /// Answers one request; every answer carries the CORS headers.
    pub async fn handle(
        &self,
        request: Request<Incoming>,
        peer: SocketAddr,
    ) -> Response<ResponseBody> {
        let mut response = self.route(request, peer).await;
        let headers = response.headers_mut();
        headers.insert(
            header::ACCESS_CONTROL_ALLOW_ORIGIN,
            HeaderValue::from_static("*"),
        );
        headers.insert(
            header::ACCESS_CONTROL_ALLOW_METHODS,
            HeaderValue::from_static(CORS_METHODS),
        );
        headers.insert(
            header::ACCESS_CONTROL_ALLOW_HEADERS,
            HeaderValue::from_static(CORS_HEADERS),
        );
        response
    }

    async fn route(&self, request: Request<Incoming>, peer: SocketAddr) -> Response<ResponseBody> {
        if request.method() == Method::OPTIONS {
            return status(StatusCode::NO_CONTENT, "");
        }
        let route = match route::route(request.uri().path()) {
            Ok(route) => route,
            Err(bad) => return status(StatusCode::BAD_REQUEST, &format!("{}\n", bad.0)),
        };
        match route {
            Route::InfoRefs(repo) | Route::Rpc(repo, _) if repo.is_prs() && !self.grasp06 => {
                status(StatusCode::NOT_FOUND, "not found\n")
            }
            Route::Root => self.root(request, peer).await,
            Route::Metrics if is_get_or_head(&request) => {
                let mut response = Response::new(full((self.handlers.metrics)()));
                set_type(&mut response, "text/plain; version=0.0.4; charset=utf-8");
                response
            }
            Route::Stylesheet if is_get_or_head(&request) => pages::stylesheet(),
            // PR repositories (GRASP-06) have no announcement, so no page.
            Route::RepoPage(repo) if repo.is_prs() => status(StatusCode::NOT_FOUND, "not found\n"),
            Route::RepoPage(repo) if is_get_or_head(&request) => {
                pages::repository(self, &request, repo).await
            }
            Route::InfoRefs(repo) => {
                let client = self.clients.address(request.headers(), peer);
                smart::info_refs(self, request, repo, client).await
            }
            Route::Rpc(repo, service) => {
                let client = self.clients.address(request.headers(), peer);
                smart::rpc(self, request, repo, service, client).await
            }
            Route::NotFound => status(StatusCode::NOT_FOUND, "not found\n"),
            Route::Metrics | Route::Stylesheet | Route::RepoPage(_) => method_not_allowed(),
        }
    }

    async fn root(&self, request: Request<Incoming>, peer: SocketAddr) -> Response<ResponseBody> {
        if websocket::is_upgrade(&request) {
            return websocket::accept(self, request, peer);
        }
        if !is_get_or_head(&request) {
            return method_not_allowed();
        }
        let wants_nip11 = request
            .headers()
            .get_all(header::ACCEPT)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .any(|v| v.contains("application/nostr+json"));
        if wants_nip11 {
            let mut response = Response::new(full(self.handlers.relay.information_document()));
            set_type(&mut response, "application/nostr+json");
            return response;
        }
        pages::landing(self, &request).await
    }
}

fn is_get_or_head<B>(request: &Request<B>) -> bool {
    request.method() == Method::GET || request.method() == Method::HEAD
}

/// A plain-text answer with `code`.
pub(crate) fn status(code: StatusCode, message: &str) -> Response<ResponseBody> {
    let mut response = Response::new(if message.is_empty() {
        empty()
    } else {
        full(message.to_owned())
    });
    *response.status_mut() = code;
    if !message.is_empty() {
        set_type(&mut response, "text/plain; charset=utf-8");
    }
    response
}

fn method_not_allowed() -> Response<ResponseBody> {
    status(StatusCode::METHOD_NOT_ALLOWED, "method not allowed\n")
}

pub(crate) fn set_type<B>(response: &mut Response<B>, content_type: &'static str) {
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
}
