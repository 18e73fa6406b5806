//! The WebSocket upgrade on `/`: answer 101 ourselves, then hand the upgraded connection,
//! wrapped by async-tungstenite, to the relay.

use std::net::SocketAddr;
use std::sync::Arc;

use async_tungstenite::tungstenite::handshake::derive_accept_key;
use async_tungstenite::tungstenite::protocol::{Role, WebSocketConfig};
use async_tungstenite::WebSocketStream;
use hyper::body::Incoming;
use hyper::header::{self, HeaderValue};
use hyper::upgrade::Upgraded;
use hyper::{Method, Request, Response, StatusCode};

use super::body::{empty, ResponseBody};
use super::clients::WebSocketRefusal;
use super::server::ConnectionToken;
use super::{status, Site};
use crate::io::IoCompat;

/// Bytes the WebSocket layer reads at once.
const READ_BUFFER_BYTES: usize = 16 * 1024;

/// The socket a relay session runs on.
pub type WebSocket = WebSocketStream<IoCompat<Upgraded>>;

fn header_has_token(request: &Request<Incoming>, name: header::HeaderName, token: &str) -> bool {
    request
        .headers()
        .get_all(name)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case(token))
}

/// True if the request asks to become a WebSocket.
pub(super) fn is_upgrade(request: &Request<Incoming>) -> bool {
    header_has_token(request, header::UPGRADE, "websocket")
}

pub(super) fn accept(
    site: &Site,
    mut request: Request<Incoming>,
    peer: SocketAddr,
) -> Response<ResponseBody> {
    let key = request
        .headers()
        .get(header::SEC_WEBSOCKET_KEY)
        .map(|k| derive_accept_key(k.as_bytes()));
    let version_ok = request
        .headers()
        .get(header::SEC_WEBSOCKET_VERSION)
        .is_some_and(|v| v == "13");
    let (Some(accept_key), true, true, true) = (
        key,
        version_ok,
        request.method() == Method::GET,
        header_has_token(&request, header::CONNECTION, "upgrade"),
    ) else {
        return status(StatusCode::BAD_REQUEST, "bad WebSocket upgrade request\n");
    };
    let client = site.clients.address(request.headers(), peer);
    let slot = match site
        .clients
        .open_websocket(client, site.git.runtime().now())
    {
        Ok(slot) => slot,
        Err(WebSocketRefusal::ServerFull) => {
            return retry_later(
                StatusCode::SERVICE_UNAVAILABLE,
                "the server holds as many WebSocket connections as it may; retry later\n",
            )
        }
        Err(WebSocketRefusal::AddressFull) => {
            return retry_later(
                StatusCode::TOO_MANY_REQUESTS,
                "too many WebSocket connections from your address; close one first\n",
            )
        }
    };
    // The connection stays counted (limit and shutdown drain) while the session runs.
    let connection = request.extensions_mut().remove::<Arc<ConnectionToken>>();
    let on_upgrade = hyper::upgrade::on(&mut request);
    let relay = site.handlers.relay.clone();
    let limits = relay.limits();
    // Larger frames are refused by the WebSocket layer before they are buffered.
    let max_message = Some(limits.max_message_bytes);
    // Nostr messages are small; tungstenite's default 128 KiB read buffer is zero-filled on
    // every read and was the top cost in profiles of the relay. Outgoing frames are written
    // once `send_buffer_bytes` are queued, and a sender waits while that much is unsent.
    let config = WebSocketConfig::default()
        .max_message_size(max_message)
        .max_frame_size(max_message)
        .read_buffer_size(READ_BUFFER_BYTES)
        .write_buffer_size(limits.send_buffer_bytes)
        .max_write_buffer_size(limits.send_buffer_bytes + limits.max_message_bytes * 2 + 1024);
    site.git.runtime().spawn(Box::pin(async move {
        let _held = (slot, connection);
        match on_upgrade.await {
            Ok(upgraded) => {
                let socket = WebSocketStream::from_raw_socket(
                    IoCompat(upgraded),
                    Role::Server,
                    Some(config),
                )
                .await;
                relay.on_websocket(socket, client).await;
            }
            Err(e) => tracing::debug!(%peer, error = %e, "WebSocket upgrade failed"),
        }
    }));
    let mut response = Response::new(empty());
    *response.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let headers = response.headers_mut();
    headers.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    headers.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
    headers.insert(
        header::SEC_WEBSOCKET_ACCEPT,
        HeaderValue::from_str(&accept_key).expect("base64 is a valid header value"),
    );
    response
}

/// How long a refused client should wait before trying again, in seconds.
const RETRY_AFTER_SECS: &str = "10";

fn retry_later(code: StatusCode, message: &str) -> Response<ResponseBody> {
    let mut response = status(code, message);
    response.headers_mut().insert(
        header::RETRY_AFTER,
        HeaderValue::from_static(RETRY_AFTER_SECS),
    );
    response
}

impl crate::relay::RelaySocket for WebSocket {
    fn discard_input(
        &mut self,
        until: crate::runtime::BoxFuture<'static, ()>,
        max_bytes: usize,
    ) -> crate::runtime::BoxFuture<'_, ()> {
        use futures_util::AsyncReadExt;
        Box::pin(async move {
            let raw = self.get_mut();
            let discard = async {
                let mut buffer = vec![0u8; READ_BUFFER_BYTES];
                let mut read = 0;
                while read < max_bytes {
                    match raw.read(&mut buffer).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => read += n,
                    }
                }
            };
            futures_util::future::select(std::pin::pin!(discard), until).await;
        })
    }
}
