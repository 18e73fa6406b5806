//! The WebSocket upgrade on `/`: answer 101 ourselves, then hand the upgraded connection,
//! wrapped by async-tungstenite, to the relay.

use std::net::SocketAddr;

use async_tungstenite::tungstenite::handshake::derive_accept_key;
use async_tungstenite::tungstenite::protocol::{Role, WebSocketConfig};
use async_tungstenite::WebSocketStream;
use hyper::body::Incoming;
use hyper::header::{self, HeaderValue};
use hyper::upgrade::Upgraded;
use hyper::{Method, Request, Response, StatusCode};

use super::body::{empty, ResponseBody};
use super::{status, Site};
use crate::io::IoCompat;

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
    let on_upgrade = hyper::upgrade::on(&mut request);
    let relay = site.handlers.relay.clone();
    // Larger frames are refused by the WebSocket layer before they are buffered.
    let limit = Some(relay.max_message_bytes());
    let config = WebSocketConfig::default()
        .max_message_size(limit)
        .max_frame_size(limit);
    site.git.runtime().spawn(Box::pin(async move {
        match on_upgrade.await {
            Ok(upgraded) => {
                let socket = WebSocketStream::from_raw_socket(
                    IoCompat(upgraded),
                    Role::Server,
                    Some(config),
                )
                .await;
                relay.on_websocket(socket, peer).await;
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
