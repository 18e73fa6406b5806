//! Accepting connections and serving HTTP/1.1 on them until shutdown.

use std::convert::Infallible;
use std::io;
use std::net::SocketAddr;
use std::pin::pin;
use std::sync::{Arc, Mutex};
use std::task::{Poll, Waker};
use std::time::Duration;

use futures_util::future::{self, Either, FutureExt, Shared};
use hyper::server::conn::http1;
use hyper::service::service_fn;

use super::Site;
use crate::io::{IoCompat, RuntimeTimer};
use crate::refusals::Limit;
use crate::runtime::{BoxFuture, Runtime, TcpListener};

/// Most connections served at once; beyond it new ones are closed at once.
pub const MAX_CONNECTIONS: usize = 4096;

/// How long in-flight requests may take to finish after shutdown was asked for.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

/// How long a client may take to send a request's headers (slow-loris guard).
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(30);

/// The pause after a failed accept, doubled while accepts keep failing (usually out of file
/// descriptors: retrying at once would spin), up to [`ACCEPT_BACKOFF_MAX`].
const ACCEPT_BACKOFF_MIN: Duration = Duration::from_millis(10);
const ACCEPT_BACKOFF_MAX: Duration = Duration::from_secs(1);

/// A bound HTTP server.
pub struct Server {
    runtime: Arc<dyn Runtime>,
    listener: Box<dyn TcpListener>,
    site: Arc<Site>,
}

impl Server {
    pub async fn bind(
        runtime: Arc<dyn Runtime>,
        addr: SocketAddr,
        site: Site,
    ) -> io::Result<Server> {
        let listener = runtime.bind_tcp(addr).await?;
        Ok(Server {
            runtime,
            listener,
            site: Arc::new(site),
        })
    }

    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Serves until `shutdown` completes, then asks the relay to end its WebSocket sessions
    /// and lets open requests and sessions finish (at most [`SHUTDOWN_GRACE`]). A WebSocket
    /// counts as an open connection until its session ends.
    pub async fn run(self, shutdown: BoxFuture<'static, ()>) {
        let shutdown = shutdown.shared();
        let active = Arc::new(ActiveConnections::default());
        let mut accept_backoff = ACCEPT_BACKOFF_MIN;
        loop {
            let accepted = match future::select(self.listener.accept(), shutdown.clone()).await {
                Either::Left((accepted, _)) => accepted,
                Either::Right(((), _)) => break,
            };
            let (connection, peer) = match accepted {
                Ok(accepted) => {
                    accept_backoff = ACCEPT_BACKOFF_MIN;
                    accepted
                }
                Err(e) => {
                    self.site.clients.refusals.refuse(
                        Limit::AcceptFailed,
                        &format_args!("accept failed: {e}; pausing {accept_backoff:?}"),
                        self.runtime.now(),
                    );
                    self.runtime.sleep(accept_backoff).await;
                    accept_backoff = (accept_backoff * 2).min(ACCEPT_BACKOFF_MAX);
                    continue;
                }
            };
            let Some(token) = active.enter(MAX_CONNECTIONS) else {
                tracing::warn!(%peer, "too many connections; closing a new one");
                continue;
            };
            let site = Arc::clone(&self.site);
            let shutdown = shutdown.clone();
            let runtime = Arc::clone(&self.runtime);
            self.runtime.spawn(Box::pin(async move {
                serve_connection(runtime, connection, peer, site, shutdown, token).await;
            }));
        }
        tracing::info!(
            open = active.count(),
            websockets = self.site.clients.websockets_open(),
            "shutting down: no new connections"
        );
        self.site.handlers.relay.shutting_down();
        let deadline = self.runtime.sleep(SHUTDOWN_GRACE);
        let idle = pin!(active.idle());
        let drained = future::select(idle, deadline).await;
        if let Either::Right(_) = drained {
            tracing::warn!(
                open = active.count(),
                websockets = self.site.clients.websockets_open(),
                "connections still open after the grace period"
            );
        }
    }
}

async fn serve_connection(
    runtime: Arc<dyn Runtime>,
    connection: crate::runtime::Connection,
    peer: SocketAddr,
    site: Arc<Site>,
    shutdown: Shared<BoxFuture<'static, ()>>,
    token: ConnectionToken,
) {
    // Each request carries the connection's place in the count, so an upgrade to a WebSocket
    // keeps it for as long as its session runs (see `websocket::accept`).
    let token = Arc::new(token);
    let service = service_fn(move |mut request: hyper::Request<hyper::body::Incoming>| {
        request.extensions_mut().insert(Arc::clone(&token));
        let site = Arc::clone(&site);
        async move { Ok::<_, Infallible>(site.handle(request, peer).await) }
    });
    let mut connection = pin!(http1::Builder::new()
        .timer(RuntimeTimer(runtime))
        .header_read_timeout(HEADER_READ_TIMEOUT)
        .serve_connection(IoCompat(connection), service)
        .with_upgrades());
    let result = match future::select(connection.as_mut(), shutdown).await {
        Either::Left((result, _)) => result,
        Either::Right(((), _)) => {
            connection.as_mut().graceful_shutdown();
            connection.await
        }
    };
    if let Err(e) = result {
        tracing::debug!(%peer, error = %e, "connection ended with an error");
    }
}

/// Counts open connections and wakes the shutdown wait when none is left.
#[derive(Default)]
struct ActiveConnections {
    state: Mutex<(usize, Vec<Waker>)>,
}

/// One open connection's place in the count; the count drops when the last clone goes.
pub(super) struct ConnectionToken(Arc<ActiveConnections>);

impl ActiveConnections {
    fn enter(self: &Arc<Self>, max: usize) -> Option<ConnectionToken> {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        if state.0 >= max {
            return None;
        }
        state.0 += 1;
        Some(ConnectionToken(Arc::clone(self)))
    }

    fn count(&self) -> usize {
        self.state.lock().unwrap_or_else(|e| e.into_inner()).0
    }

    fn idle(&self) -> impl std::future::Future<Output = ()> + '_ {
        future::poll_fn(move |cx| {
            let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
            if state.0 == 0 {
                return Poll::Ready(());
            }
            if !state.1.iter().any(|w| w.will_wake(cx.waker())) {
                state.1.push(cx.waker().clone());
            }
            Poll::Pending
        })
    }
}

impl Drop for ConnectionToken {
    fn drop(&mut self) {
        let mut state = self.0.state.lock().unwrap_or_else(|e| e.into_inner());
        state.0 -= 1;
        if state.0 == 0 {
            state.1.drain(..).for_each(Waker::wake);
        }
    }
}
