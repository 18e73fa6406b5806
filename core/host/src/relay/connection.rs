//! One WebSocket connection run end to end on any runtime: frames in, [`Session`], frames
//! out, plus the connection's live feed. The decisions and the store reads are the
//! [`RelayBackend`]'s.

use std::future::Future;
use std::pin::{pin, Pin};

use async_tungstenite::tungstenite::{Error as WsError, Message};
use futures_util::future::{select, Either};
use futures_util::{Sink, SinkExt, Stream, StreamExt};
use nostr::prelude::Event;

use super::{messages, Action, Hub, Live, Query, RelayLimits, Session, Verdict};

/// A boxed `Send` future (the same shape as the runtime trait's).
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// What the relay needs from the rest of the server; the driver implements it.
pub trait RelayBackend: Send + Sync {
    /// Decides an event whose id and signature are already verified: run it through the
    /// engine, store it durably if it is to be served (or put it in purgatory), publish it on
    /// the [`Hub`] if it is now served, and say what to answer. The answer is sent only after
    /// this completes, so `OK true` always follows a durable commit.
    fn decide(&self, event: Event) -> BoxFuture<'static, Verdict>;

    /// Reads the stored events for a new subscription, off the async threads
    /// (`store.query(&query.filters, query.cap)` on the blocking pool). An error text ends the
    /// subscription with `CLOSED` and `error: <text>`.
    fn query(&self, query: Query) -> BoxFuture<'static, Result<Vec<Event>, String>>;
}

/// Runs one relay connection until the client leaves, the socket fails, the connection
/// falls too far behind on live events, or the hub closes (shutdown).
///
/// `socket` is the upgraded WebSocket (configure its maximum message size to
/// `limits.max_message_bytes`). Pings are answered by the WebSocket layer.
pub async fn run_connection<S>(
    mut socket: S,
    limits: RelayLimits,
    hub: &Hub,
    backend: &dyn RelayBackend,
) where
    S: Stream<Item = Result<Message, WsError>> + Sink<Message, Error = WsError> + Unpin,
{
    let (mut session, feed) = Session::new(limits, hub);
    loop {
        let next = {
            let live = pin!(feed.next());
            match select(socket.next(), live).await {
                Either::Left((frame, _)) => Next::Frame(frame),
                Either::Right((live, _)) => Next::Live(live),
            }
        };
        let outgoing = match next {
            Next::Frame(None) | Next::Frame(Some(Err(_))) => return,
            Next::Frame(Some(Ok(Message::Close(_)))) => {
                // The WebSocket layer has queued the close reply; flush it.
                let _ = socket.close().await;
                return;
            }
            Next::Frame(Some(Ok(Message::Text(text)))) => {
                match session.handle_text(text.as_str()) {
                    None => Vec::new(),
                    Some(Action::Send(frame)) => vec![frame],
                    Some(Action::Accept(event)) => {
                        let id = event.id;
                        vec![backend.decide(*event).await.message(&id)]
                    }
                    Some(Action::Query(query)) => {
                        let id = query.id;
                        match backend.query(query).await {
                            Ok(events) => session.stored_events(id, &events),
                            Err(reason) => session.query_failed(id, &reason).into_iter().collect(),
                        }
                    }
                }
            }
            Next::Frame(Some(Ok(Message::Binary(_)))) => match session.handle_binary() {
                Action::Send(frame) => vec![frame],
                _ => Vec::new(),
            },
            Next::Frame(Some(Ok(_))) => Vec::new(), // ping, pong, raw frames
            Next::Live(Live::Event(event)) => session.live_event(&event),
            Next::Live(Live::TooSlow) => {
                let _ = socket
                    .send(Message::text(messages::notice(messages::TOO_SLOW)))
                    .await;
                let _ = socket.close().await;
                return;
            }
            Next::Live(Live::Closed) => {
                let _ = socket.close().await;
                return;
            }
        };
        for frame in outgoing {
            if socket.feed(Message::text(frame)).await.is_err() {
                return;
            }
        }
        if socket.flush().await.is_err() {
            return;
        }
    }
}

enum Next {
    Frame(Option<Result<Message, WsError>>),
    Live(Live),
}
