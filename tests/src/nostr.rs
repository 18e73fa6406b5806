//! Nostr events built and signed with nostr-sdk, and a plain WebSocket client that reads the
//! relay's exact replies.

use std::net::TcpStream;
use std::time::{Duration, Instant};

pub use nostr_sdk::prelude::{
    Event, EventBuilder, Keys, Kind, PublicKey, SecretKey, Tag, TagKind, Timestamp, ToBech32,
};
use serde_json::{json, Value};
use tungstenite::stream::MaybeTlsStream;
pub use tungstenite::Message;
use tungstenite::WebSocket;

/// Deterministic keys: `keys(1)`, `keys(2)`, ... are distinct users.
pub fn keys(n: u8) -> Keys {
    let mut secret = [0x11u8; 32];
    secret[31] = n;
    Keys::new(SecretKey::from_slice(&secret).expect("valid secret key"))
}

pub fn npub(keys: &Keys) -> String {
    keys.public_key().to_bech32().expect("npub")
}

fn tag(values: &[&str]) -> Tag {
    Tag::parse(values.iter().copied()).expect("tag")
}

/// Signs an event of `kind` with `tags` and a fixed offset from now for `created_at`.
pub fn sign(keys: &Keys, kind: u16, tags: Vec<Tag>, created_offset: i64) -> Event {
    sign_created(keys, kind, tags, unix_now() + created_offset)
}

/// Seconds since the Unix epoch, now. Take it once as the base of a batch of events that
/// differ only in `created_at`: offsets from a clock that ticks while the batch is built can
/// make two of them the same event.
pub fn unix_now() -> i64 {
    Timestamp::now().as_secs() as i64
}

/// Signs an event of `kind` with `tags`, created at `created_at` (Unix seconds).
pub fn sign_created(keys: &Keys, kind: u16, tags: Vec<Tag>, created_at: i64) -> Event {
    EventBuilder::new(Kind::from(kind), "")
        .tags(tags)
        .custom_created_at(Timestamp::from(created_at as u64))
        .sign_with_keys(keys)
        .expect("sign")
}

/// An event of `kind` with `tags` (each a list of strings), created now.
pub fn tagged(keys: &Keys, kind: u16, tags: &[&[&str]]) -> Event {
    tagged_at(keys, kind, tags, 0)
}

/// [`tagged`] with a `created_at` offset from now.
pub fn tagged_at(keys: &Keys, kind: u16, tags: &[&[&str]], created_offset: i64) -> Event {
    tagged_created(keys, kind, tags, unix_now() + created_offset)
}

/// [`tagged`] created at `created_at` (Unix seconds).
pub fn tagged_created(keys: &Keys, kind: u16, tags: &[&[&str]], created_at: i64) -> Event {
    let tags = tags.iter().map(|t| tag(t)).collect();
    sign_created(keys, kind, tags, created_at)
}

/// The `30617:<owner hex>:<identifier>` coordinate of `owner`'s repository.
pub fn repo_coordinate(owner: &Keys, identifier: &str) -> String {
    format!("30617:{}:{identifier}", owner.public_key().to_hex())
}

/// A 30617 announcement listing `servers` (http origins) in `clone` and `relays`.
pub fn announcement(
    keys: &Keys,
    identifier: &str,
    servers: &[&str],
    maintainers: &[&Keys],
) -> Event {
    announcement_with(keys, identifier, servers, maintainers, &[], 0)
}

/// [`announcement`] with `extra` tags (e.g. `name`, `description`, `web`; a `name` there
/// replaces the default one) and a `created_at` offset from now.
pub fn announcement_with(
    keys: &Keys,
    identifier: &str,
    servers: &[&str],
    maintainers: &[&Keys],
    extra: &[&[&str]],
    created_offset: i64,
) -> Event {
    let npub = npub(keys);
    let mut clone = vec!["clone".to_owned()];
    let mut relays = vec!["relays".to_owned()];
    for s in servers {
        clone.push(format!("{s}/{npub}/{identifier}.git"));
        relays.push(s.replacen("http", "ws", 1));
    }
    let mut tags = vec![
        tag(&["d", identifier]),
        tag(&clone.iter().map(String::as_str).collect::<Vec<_>>()),
        tag(&relays.iter().map(String::as_str).collect::<Vec<_>>()),
    ];
    if !extra.iter().any(|values| values.first() == Some(&"name")) {
        tags.push(tag(&["name", identifier]));
    }
    if !maintainers.is_empty() {
        let hex: Vec<String> = maintainers
            .iter()
            .map(|k| k.public_key().to_hex())
            .collect();
        let mut m = vec!["maintainers"];
        m.extend(hex.iter().map(String::as_str));
        tags.push(tag(&m));
    }
    tags.extend(extra.iter().map(|values| tag(values)));
    sign(keys, 30617, tags, created_offset)
}

/// A 30618 state with `refs` (name, oid) and HEAD pointing at `head` (a branch name).
pub fn state(
    keys: &Keys,
    identifier: &str,
    refs: &[(&str, &str)],
    head: Option<&str>,
    created_offset: i64,
) -> Event {
    let mut tags = vec![tag(&["d", identifier])];
    for (name, oid) in refs {
        tags.push(tag(&[name, oid]));
    }
    if let Some(h) = head {
        tags.push(tag(&["HEAD", &format!("ref: refs/heads/{h}")]));
    }
    sign(keys, 30618, tags, created_offset)
}

/// A 1618 PR for `owner`'s repo with tip `commit`, fetchable from `clone`.
pub fn pull_request(
    keys: &Keys,
    owner: &Keys,
    identifier: &str,
    commit: &str,
    clone: &[&str],
) -> Event {
    pull_request_created(keys, owner, identifier, commit, clone, unix_now())
}

/// [`pull_request`] created at `created_at` (Unix seconds), so one author's PRs differ.
pub fn pull_request_created(
    keys: &Keys,
    owner: &Keys,
    identifier: &str,
    commit: &str,
    clone: &[&str],
    created_at: i64,
) -> Event {
    let coordinate = repo_coordinate(owner, identifier);
    let mut c = vec!["clone"];
    c.extend_from_slice(clone);
    let tags = vec![
        tag(&["a", &coordinate]),
        tag(&["p", &owner.public_key().to_hex()]),
        tag(&["subject", "a change"]),
        tag(&["c", commit]),
        tag(&c),
    ];
    sign_created(keys, 1618, tags, created_at)
}

/// A kind 5 deletion of `ids`.
pub fn deletion(keys: &Keys, ids: &[&Event]) -> Event {
    let tags = ids.iter().map(|e| tag(&["e", &e.id.to_hex()])).collect();
    sign(keys, 5, tags, 0)
}

/// The relay's reply to an EVENT.
#[derive(Debug, Clone)]
pub struct OkReply {
    pub accepted: bool,
    pub message: String,
}

/// A plain NIP-01 WebSocket client that shows exactly what the relay says.
pub struct RelayClient {
    socket: WebSocket<MaybeTlsStream<TcpStream>>,
}

/// How long to wait for any single reply from the relay.
const REPLY_TIMEOUT: Duration = Duration::from_secs(30);

impl RelayClient {
    pub fn connect(ws_url: &str) -> RelayClient {
        Self::try_connect(ws_url, &[]).expect("websocket connect")
    }

    /// Connects with extra request headers (e.g. `X-Forwarded-For`); a refused upgrade gives
    /// the HTTP status and its `Retry-After` header.
    pub fn try_connect(
        ws_url: &str,
        headers: &[(&'static str, &str)],
    ) -> Result<RelayClient, (u16, Option<String>)> {
        use tungstenite::client::IntoClientRequest;
        let mut request = ws_url.into_client_request().expect("websocket URL");
        for (name, value) in headers {
            request
                .headers_mut()
                .insert(*name, value.parse().expect("header value"));
        }
        Self::connected(tungstenite::connect(request).map(|(socket, _)| socket))
    }

    /// Connects from the local address `source` (a hostile client of
    /// [`crate::attack::attacker`]'s); a refused upgrade gives the HTTP status and its
    /// `Retry-After` header.
    pub fn try_connect_from(
        ws_url: &str,
        source: std::net::IpAddr,
    ) -> Result<RelayClient, (u16, Option<String>)> {
        use tungstenite::client::IntoClientRequest;
        let request = ws_url.into_client_request().expect("websocket URL");
        let host = request.uri().host().expect("websocket host");
        let port = request.uri().port_u16().expect("websocket port");
        let addr = format!("{host}:{port}")
            .parse()
            .expect("a loopback address");
        let stream = crate::attack::connect_from(source, addr).expect("tcp connect");
        Self::connected(
            tungstenite::client(request, MaybeTlsStream::Plain(stream))
                .map_err(|e| match e {
                    tungstenite::HandshakeError::Failure(e) => e,
                    tungstenite::HandshakeError::Interrupted(_) => panic!("blocking handshake"),
                })
                .map(|(socket, _)| socket),
        )
    }

    fn connected(
        handshake: Result<WebSocket<MaybeTlsStream<TcpStream>>, tungstenite::Error>,
    ) -> Result<RelayClient, (u16, Option<String>)> {
        match handshake {
            Ok(socket) => {
                if let MaybeTlsStream::Plain(s) = socket.get_ref() {
                    s.set_read_timeout(Some(Duration::from_millis(200)))
                        .unwrap();
                }
                Ok(RelayClient { socket })
            }
            Err(tungstenite::Error::Http(response)) => {
                let retry_after = response
                    .headers()
                    .get("retry-after")
                    .and_then(|v| v.to_str().ok())
                    .map(str::to_owned);
                Err((response.status().as_u16(), retry_after))
            }
            Err(e) => panic!("websocket connect: {e}"),
        }
    }

    /// The next WebSocket message of any type (pings and closes included), or None once
    /// `deadline` passes or the connection is gone.
    pub fn next_message(&mut self, deadline: Instant) -> Option<Message> {
        while Instant::now() < deadline {
            match self.socket.read() {
                Ok(message) => return Some(message),
                Err(tungstenite::Error::Io(e))
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock
                            | std::io::ErrorKind::TimedOut
                            // A read with a timeout is not restarted after a signal
                            // handler (a child reaper's SIGCHLD) ran: read again.
                            | std::io::ErrorKind::Interrupted
                    ) =>
                {
                    continue
                }
                Err(_) => return None,
            }
        }
        None
    }

    pub fn send(&mut self, msg: Value) {
        self.try_send(msg).expect("send");
    }

    /// Sends a message; the server may have closed the connection.
    pub fn try_send(&mut self, msg: Value) -> Result<(), Box<tungstenite::Error>> {
        self.socket
            .send(Message::text(msg.to_string()))
            .map_err(Box::new)
    }

    /// Sends a raw text frame.
    pub fn send_text(&mut self, text: &str) {
        self.try_send_text(text).expect("send");
    }

    /// Sends a raw text frame; the server may close the connection while it is being sent.
    pub fn try_send_text(&mut self, text: &str) -> Result<(), Box<tungstenite::Error>> {
        self.socket.send(Message::text(text)).map_err(Box::new)
    }

    /// Whether the server closes the connection before `timeout` passes.
    pub fn is_closed_within(&mut self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            match self.socket.read() {
                Ok(Message::Close(_)) => return true,
                Ok(_) => continue,
                Err(tungstenite::Error::Io(e))
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock
                            | std::io::ErrorKind::TimedOut
                            // A read with a timeout is not restarted after a signal
                            // handler (a child reaper's SIGCHLD) ran: read again.
                            | std::io::ErrorKind::Interrupted
                    ) =>
                {
                    continue
                }
                Err(_) => return true,
            }
        }
        false
    }

    /// The next relay message, or None once `deadline` passes.
    pub fn recv_until(&mut self, deadline: Instant) -> Option<Value> {
        self.try_recv(deadline)
            .unwrap_or_else(|e| panic!("websocket read: {e}"))
    }

    /// The next relay message, `Ok(None)` once `deadline` passes, `Err` if the connection
    /// failed or was closed.
    pub fn try_recv(
        &mut self,
        deadline: Instant,
    ) -> Result<Option<Value>, Box<tungstenite::Error>> {
        while Instant::now() < deadline {
            match self.socket.read() {
                Ok(Message::Text(t)) => {
                    return Ok(Some(
                        serde_json::from_str(t.as_str()).expect("relay sent JSON"),
                    ))
                }
                Ok(_) => continue,
                Err(tungstenite::Error::Io(e))
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock
                            | std::io::ErrorKind::TimedOut
                            // A read with a timeout is not restarted after a signal
                            // handler (a child reaper's SIGCHLD) ran: read again.
                            | std::io::ErrorKind::Interrupted
                    ) =>
                {
                    continue
                }
                Err(e) => return Err(Box::new(e)),
            }
        }
        Ok(None)
    }

    /// Publishes an event and returns the relay's OK reply for it.
    pub fn publish(&mut self, event: &Event) -> OkReply {
        self.try_publish(event).unwrap_or_else(|e| panic!("{e}"))
    }

    /// [`RelayClient::publish`] that says what went wrong instead of panicking: no OK within
    /// the reply timeout, or the connection failed.
    pub fn try_publish(&mut self, event: &Event) -> Result<OkReply, String> {
        let event_json: Value =
            serde_json::from_str(&serde_json::to_string(event).unwrap()).unwrap();
        let id = event.id.to_hex();
        self.try_send(json!(["EVENT", event_json]))
            .map_err(|e| format!("EVENT {id}: send: {e}"))?;
        let deadline = Instant::now() + REPLY_TIMEOUT;
        while let Some(msg) = self
            .try_recv(deadline)
            .map_err(|e| format!("EVENT {id}: read: {e}"))?
        {
            if msg[0] == "OK" && msg[1] == id.as_str() {
                return Ok(OkReply {
                    accepted: msg[2].as_bool().expect("OK flag"),
                    message: msg[3].as_str().unwrap_or_default().to_owned(),
                });
            }
        }
        Err(format!("no OK for {id} within {REPLY_TIMEOUT:?}"))
    }

    /// Runs a REQ to EOSE and returns the events.
    pub fn query(&mut self, filter: Value) -> Vec<Value> {
        self.try_query(filter).unwrap_or_else(|e| panic!("{e}"))
    }

    /// [`RelayClient::query`] that says what went wrong instead of panicking: a CLOSED, no
    /// EOSE within the reply timeout, or a failed connection.
    pub fn try_query(&mut self, filter: Value) -> Result<Vec<Value>, String> {
        let sub = "q";
        self.try_send(json!(["REQ", sub, filter]))
            .map_err(|e| format!("REQ: send: {e}"))?;
        let deadline = Instant::now() + REPLY_TIMEOUT;
        let mut events = Vec::new();
        while let Some(msg) = self
            .try_recv(deadline)
            .map_err(|e| format!("REQ: read: {e}"))?
        {
            match msg[0].as_str() {
                Some("EVENT") if msg[1] == sub => events.push(msg[2].clone()),
                Some("EOSE") if msg[1] == sub => {
                    self.try_send(json!(["CLOSE", sub]))
                        .map_err(|e| format!("CLOSE: send: {e}"))?;
                    return Ok(events);
                }
                Some("CLOSED") if msg[1] == sub => {
                    return Err(format!("subscription closed: {msg}"))
                }
                _ => {}
            }
        }
        Err(format!("no EOSE within {REPLY_TIMEOUT:?}"))
    }

    /// Ids of the events a filter returns.
    pub fn query_ids(&mut self, filter: Value) -> Vec<String> {
        self.query(filter)
            .iter()
            .map(|e| e["id"].as_str().unwrap().to_owned())
            .collect()
    }

    /// Opens a live subscription; use [`RelayClient::wait_for_event`] to read from it.
    pub fn subscribe(&mut self, sub: &str, filter: Value) {
        self.send(json!(["REQ", sub, filter]));
    }

    /// Waits for an EVENT with `id` on subscription `sub`.
    pub fn wait_for_event(&mut self, sub: &str, id: &str, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        while let Some(msg) = self.recv_until(deadline) {
            if msg[0] == "EVENT" && msg[1] == sub && msg[2]["id"] == id {
                return true;
            }
        }
        false
    }
}

/// Polls `cond` until it holds or `timeout` passes: for conditions on a separate process that
/// has no push notification (refs appearing on a remote server).
pub fn eventually(timeout: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if cond() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}
