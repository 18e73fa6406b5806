//! One WebSocket connection run end to end on any runtime: frames in, [`Session`], frames
//! out, plus the connection's live feed, its keep-alive and its deadlines. The decisions, the
//! store reads and the timer are the [`RelayBackend`]'s.

use std::future::Future;
use std::pin::{pin, Pin};
use std::task::Poll;
use std::time::Instant;

use async_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use async_tungstenite::tungstenite::protocol::CloseFrame;
use async_tungstenite::tungstenite::{Error as WsError, Message};
use futures_util::future::{self, select, Either};
use futures_util::stream::FuturesOrdered;
use futures_util::{Sink, SinkExt, Stream, StreamExt};
use nostr::prelude::{Event, EventId};

use super::{messages, Action, Hub, Live, Query, ReconcileOpen, RelayLimits, Session, Verdict};
use crate::refusals::{Limit, Refusals};

/// A boxed `Send` future (the same shape as the runtime trait's).
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// How long, and how many bytes, a connection closed for an oversized frame keeps reading
/// (and discarding) what the client still sends, so that the client reads the NOTICE and
/// the close frame instead of a connection reset.
const OVERSIZED_LINGER: std::time::Duration = std::time::Duration::from_secs(5);
const OVERSIZED_LINGER_BYTES: usize = 16 * 1024 * 1024;

/// Stored events are read for a client in chunks of about this many bytes (and at most
/// [`IDS_PER_LOAD`] events), each only once the client has taken the previous one: a REQ
/// whose answer is hundreds of megabytes costs the server about this much at a time.
const STORED_CHUNK_BYTES: usize = 256 * 1024;
const IDS_PER_LOAD: usize = 128;

/// What the relay needs from the rest of the server; the driver implements it.
pub trait RelayBackend: Send + Sync {
    /// Decides an event whose id and signature are already verified: run it through the
    /// engine, store it durably if it is to be served (or put it in purgatory), publish it on
    /// the [`Hub`] if it is now served, and say what to answer. The answer is sent only after
    /// this completes, so `OK true` always follows a durable commit.
    fn decide(&self, event: Event) -> BoxFuture<'static, Verdict>;

    /// The rate limit an EVENT arriving now is over, with the reason to answer, if any. Asked
    /// before the event is verified, so a refused EVENT costs no signature check.
    fn over_event_rate(&self) -> Option<(Limit, String)>;

    /// The ids of the stored events for a new subscription, read off the async threads
    /// (`store.query_ids(&query.filters, query.cap)` on the blocking pool). An error text ends
    /// the subscription with `CLOSED` and `error: <text>`.
    fn query(&self, query: Query) -> BoxFuture<'static, Result<Vec<EventId>, String>>;

    /// The stored JSON of events `ids`, in order, about `max_bytes` of them
    /// (`store.load_json(&ids, max_bytes)` on the blocking pool): the texts, and how many of
    /// `ids` they stand for.
    fn load(
        &self,
        ids: Vec<EventId>,
        max_bytes: usize,
    ) -> BoxFuture<'static, Result<(Vec<String>, usize), String>>;

    /// The `(created_at, id)` of the served events a NIP-77 `NEG-OPEN` reconciles, read off
    /// the async threads (`store.query_items(&open.filters, open.cap)` on the blocking pool).
    /// An error text ends the reconciliation with `NEG-ERR` and `error: <text>`.
    fn reconciliation_items(
        &self,
        open: &ReconcileOpen,
    ) -> BoxFuture<'static, Result<Vec<(u64, EventId)>, String>>;

    /// The runtime's clock, and its timer (completes at `deadline`): pings, idle and write
    /// deadlines.
    fn now(&self) -> Instant;
    fn sleep_until(&self, deadline: Instant) -> BoxFuture<'static, ()>;

    /// Where connections ended by a limit are counted and logged.
    fn refusals(&self) -> &Refusals;
}

/// The socket a relay connection runs on: a WebSocket stream and sink.
pub trait RelaySocket:
    Stream<Item = Result<Message, WsError>> + Sink<Message, Error = WsError> + Unpin + Send
{
    /// Reads and discards what the client still sends, until `until` completes or `max_bytes`
    /// were read, after a close for an oversized frame (the WebSocket layer cannot parse
    /// past it). The default does nothing.
    fn discard_input(
        &mut self,
        _until: BoxFuture<'static, ()>,
        _max_bytes: usize,
    ) -> BoxFuture<'_, ()> {
        Box::pin(async {})
    }
}

/// Runs one relay connection until the client leaves, the socket fails, the client goes
/// silent (no answer to a ping within `limits.idle_timeout`), stops reading (a send not taken
/// within `limits.write_timeout`), sends an oversized frame (NOTICE, close 1009), the
/// connection falls too far behind on live events, or the hub closes (shutdown: close 1001).
///
/// `socket` is the upgraded WebSocket (configure its maximum message size to
/// `limits.max_message_bytes`). Pings from the client are answered by the WebSocket layer.
pub async fn run_connection<S: RelaySocket>(
    mut socket: S,
    limits: RelayLimits,
    hub: &Hub,
    backend: &dyn RelayBackend,
) {
    let (mut session, feed) = Session::new(limits.clone(), hub);
    let mut out = Outgoing {
        socket: &mut socket,
        backend,
        write_timeout: limits.write_timeout,
    };
    let mut last_heard = backend.now();
    let mut pinged = false;
    // Armed at a deadline that may since have moved later (the client spoke): when it fires
    // early it is re-armed, so a busy connection does not arm a timer per frame.
    let mut timer = backend.sleep_until(last_heard + limits.ping_after);
    // EVENTs being decided, answered in the order they came. The client may send more
    // meanwhile (see `Deciding::has_room`): its EVENTs share store commits instead of each
    // waiting for the one before it. A REQ, NEG-OPEN or close waits for them all first, so
    // a client reads what it published.
    let mut deciding = Deciding::default();
    loop {
        let next = {
            let mut live = pin!(feed.next());
            let socket = &mut *out.socket;
            let reading = deciding.has_room(&limits);
            let deciding = &mut deciding;
            future::poll_fn(|cx| {
                if !deciding.is_empty() {
                    if let Poll::Ready(Some(decided)) = deciding.poll_next(cx) {
                        return Poll::Ready(Next::Decided(decided));
                    }
                }
                if reading {
                    if let Poll::Ready(frame) = socket.poll_next_unpin(cx) {
                        return Poll::Ready(Next::Frame(frame));
                    }
                }
                if let Poll::Ready(live) = live.as_mut().poll(cx) {
                    return Poll::Ready(Next::Live(live));
                }
                timer.as_mut().poll(cx).map(|()| Next::Timer)
            })
            .await
        };
        let outgoing = match next {
            Next::Timer => {
                let deadline = last_heard
                    + if pinged {
                        limits.idle_timeout
                    } else {
                        limits.ping_after
                    };
                let now = backend.now();
                if now < deadline {
                    timer = backend.sleep_until(deadline);
                    continue;
                }
                if pinged {
                    backend.refusals().refuse(
                        Limit::WebSocketIdle,
                        &format_args!(
                            "closing a WebSocket silent for {:?} (no answer to a ping)",
                            limits.idle_timeout
                        ),
                        now,
                    );
                    out.close(CloseCode::Normal, "idle timeout").await;
                    return;
                }
                pinged = true;
                timer = backend.sleep_until(last_heard + limits.idle_timeout);
                if out.send(Message::Ping(Default::default())).await.is_err() {
                    return;
                }
                continue;
            }
            Next::Frame(Some(Err(WsError::Capacity(error)))) => {
                out.refuse_oversized(&error.to_string(), limits.max_message_bytes)
                    .await;
                return;
            }
            Next::Frame(Some(Ok(message))) => {
                last_heard = backend.now();
                pinged = false;
                match message {
                    Message::Close(_) => {
                        // The WebSocket layer has queued the close reply; flush it.
                        let _ = answer_all(&mut out, &mut deciding).await;
                        out.finish().await;
                        return;
                    }
                    Message::Text(text) => match session.handle_text(text.as_str()) {
                        Some(Action::Admit(unverified)) => {
                            if let Some((limit, reason)) = backend.over_event_rate() {
                                let frame = unverified.refusal(&reason);
                                refuse(backend, limit, &frame);
                                vec![frame]
                            } else {
                                match unverified.verify() {
                                    Ok(event) => {
                                        let id = event.id;
                                        deciding.push(id, text.len(), backend.decide(*event));
                                        Vec::new()
                                    }
                                    Err(frame) => vec![frame],
                                }
                            }
                        }
                        None => Vec::new(),
                        Some(Action::Send(frame)) => vec![frame],
                        Some(Action::Query(query)) => {
                            if answer_all(&mut out, &mut deciding).await.is_err() {
                                return;
                            }
                            match stream_stored(&mut out, &mut session, query).await {
                                Ok(rest) => rest,
                                Err(Gone) => return,
                            }
                        }
                        Some(Action::Reconcile(open)) => {
                            if answer_all(&mut out, &mut deciding).await.is_err() {
                                return;
                            }
                            reconcile(backend, &mut session, open).await
                        }
                        Some(Action::Refused { frame, limit }) => {
                            refuse(backend, limit, &frame);
                            vec![frame]
                        }
                    },
                    Message::Binary(_) => match session.handle_binary() {
                        Action::Send(frame) => vec![frame],
                        _ => Vec::new(),
                    },
                    _ => Vec::new(), // ping, pong, raw frames
                }
            }
            Next::Frame(None) | Next::Frame(Some(Err(_))) => return,
            Next::Decided((id, verdict)) => vec![verdict.message(&id)],
            Next::Live(Live::Event(event)) => session.live_event(&event),
            Next::Live(Live::TooSlow) => {
                let _ = out
                    .send(Message::text(messages::notice(messages::TOO_SLOW)))
                    .await;
                out.finish().await;
                return;
            }
            Next::Live(Live::Closed) => {
                out.close(CloseCode::Away, "server shutting down").await;
                return;
            }
        };
        for frame in outgoing {
            if out.feed(Message::text(frame)).await.is_err() {
                return;
            }
        }
        if out.flush().await.is_err() {
            return;
        }
    }
}

/// EVENTs of one connection being decided, answered in arrival order, with the bytes of
/// their messages.
#[derive(Default)]
struct Deciding {
    futures: FuturesOrdered<BoxFuture<'static, (EventId, usize, Verdict)>>,
    bytes: usize,
}

impl Deciding {
    fn is_empty(&self) -> bool {
        self.futures.is_empty()
    }

    /// Whether the connection may read another message: fewer than `events_in_flight`
    /// EVENTs, and less than one largest message's worth of them, are being decided. A
    /// connection so holds at most about two messages' bytes, as when EVENTs waited in turn.
    fn has_room(&self, limits: &RelayLimits) -> bool {
        self.futures.len() < limits.events_in_flight.max(1) && self.bytes < limits.max_message_bytes
    }

    fn push(&mut self, id: EventId, bytes: usize, verdict: BoxFuture<'static, Verdict>) {
        self.bytes += bytes;
        self.futures
            .push_back(Box::pin(async move { (id, bytes, verdict.await) }));
    }

    fn poll_next(&mut self, cx: &mut std::task::Context<'_>) -> Poll<Option<(EventId, Verdict)>> {
        self.futures.poll_next_unpin(cx).map(|decided| {
            decided.map(|(id, bytes, verdict)| {
                self.bytes -= bytes;
                (id, verdict)
            })
        })
    }

    async fn next(&mut self) -> Option<(EventId, Verdict)> {
        future::poll_fn(|cx| self.poll_next(cx)).await
    }
}

/// Waits for every EVENT being decided and sends their `OK`s, in order.
async fn answer_all<S: RelaySocket>(
    out: &mut Outgoing<'_, S>,
    deciding: &mut Deciding,
) -> Result<(), Gone> {
    if deciding.is_empty() {
        return Ok(());
    }
    while let Some((id, verdict)) = deciding.next().await {
        if out.feed(Message::text(verdict.message(&id))).await.is_err() {
            return Err(Gone);
        }
    }
    out.flush().await.map_err(|_| Gone)
}

/// Answers a NEG-OPEN: reads the items it reconciles and starts the session's side.
async fn reconcile(
    backend: &dyn RelayBackend,
    session: &mut Session,
    open: ReconcileOpen,
) -> Vec<String> {
    // No client frame is read meanwhile, so the session cannot change.
    match backend.reconciliation_items(&open).await {
        Ok(items) => match session.start_reconciliation(open, &items) {
            Action::Refused { frame, limit } => {
                refuse(backend, limit, &frame);
                vec![frame]
            }
            Action::Send(frame) => vec![frame],
            _ => Vec::new(),
        },
        Err(reason) => vec![messages::neg_err(
            &open.subscription_id,
            &format!("error: {reason}"),
        )],
    }
}

/// Counts and logs a client request a limit refused; `frame` is the answer it gets.
fn refuse(backend: &dyn RelayBackend, limit: Limit, frame: &str) {
    backend.refusals().refuse(
        limit,
        &format_args!("refused a relay request: {frame}"),
        backend.now(),
    );
}

/// Sends a REQ's stored events as the client takes them, read from the store in chunks;
/// returns what is left to send once they are all out (EOSE, or CLOSED on a store error).
async fn stream_stored<S: RelaySocket>(
    out: &mut Outgoing<'_, S>,
    session: &mut Session,
    query: Query,
) -> Result<Vec<String>, Gone> {
    let id = query.id;
    let ids = match out.backend.query(query).await {
        Ok(ids) => ids,
        Err(reason) => return Ok(session.query_failed(id, &reason).into_iter().collect()),
    };
    let mut rest = &ids[..];
    while !rest.is_empty() {
        let batch = rest[..rest.len().min(IDS_PER_LOAD)].to_vec();
        let (texts, consumed) = match out.backend.load(batch, STORED_CHUNK_BYTES).await {
            Ok(loaded) => loaded,
            Err(reason) => return Ok(session.query_failed(id, &reason).into_iter().collect()),
        };
        rest = &rest[consumed.clamp(1, rest.len())..];
        for text in texts {
            // The session cannot change meanwhile: no client frame is read during the stream.
            let Some(frame) = session.stored_event(id, &text) else {
                return Ok(Vec::new());
            };
            out.feed(Message::text(frame)).await?;
        }
    }
    Ok(session.end_of_stored(id).into_iter().collect())
}

enum Next {
    Frame(Option<Result<Message, WsError>>),
    /// An EVENT's decision, in arrival order.
    Decided((EventId, Verdict)),
    Live(Live),
    Timer,
}

/// The socket's sending side, with the write deadline on every send.
struct Outgoing<'a, S> {
    socket: &'a mut S,
    backend: &'a dyn RelayBackend,
    write_timeout: std::time::Duration,
}

/// The connection cannot go on: the socket failed or the client stopped reading.
struct Gone;

impl<S: RelaySocket> Outgoing<'_, S> {
    /// Queues a frame (waiting while the send buffer is full).
    async fn feed(&mut self, message: Message) -> Result<(), Gone> {
        let deadline = self.backend.now() + self.write_timeout;
        let sent = self.socket.feed(message);
        within(self.backend, self.write_timeout, deadline, sent).await
    }

    async fn flush(&mut self) -> Result<(), Gone> {
        let deadline = self.backend.now() + self.write_timeout;
        let flushed = self.socket.flush();
        within(self.backend, self.write_timeout, deadline, flushed).await
    }

    async fn send(&mut self, message: Message) -> Result<(), Gone> {
        self.feed(message).await?;
        self.flush().await
    }

    /// Sends a close frame with `code` and flushes it (within the write deadline).
    async fn close(&mut self, code: CloseCode, reason: &str) {
        let frame = CloseFrame {
            code,
            reason: reason.into(),
        };
        if self.send(Message::Close(Some(frame))).await.is_ok() {
            self.finish().await;
        }
    }

    /// Completes the close: flushes the close frame queued by us or the WebSocket layer.
    async fn finish(&mut self) {
        let deadline = self.backend.now() + self.write_timeout;
        let closed = self.socket.close();
        let _ = within(self.backend, self.write_timeout, deadline, closed).await;
    }

    /// The client sent a frame over the limit: NOTICE, close 1009, and read on briefly so
    /// the client sees both instead of a reset.
    async fn refuse_oversized(&mut self, error: &str, max_message_bytes: usize) {
        self.backend.refusals().refuse(
            Limit::WebSocketOversized,
            &format_args!("closing a WebSocket that sent an oversized frame: {error}"),
            self.backend.now(),
        );
        let notice = messages::notice(&format!(
            "invalid: message over the {max_message_bytes} byte limit; closing"
        ));
        if self.feed(Message::text(notice)).await.is_err() {
            return;
        }
        let frame = CloseFrame {
            code: CloseCode::Size,
            reason: "message too big".into(),
        };
        if self.send(Message::Close(Some(frame))).await.is_err() {
            return;
        }
        let until = self
            .backend
            .sleep_until(self.backend.now() + OVERSIZED_LINGER);
        self.socket
            .discard_input(until, OVERSIZED_LINGER_BYTES)
            .await;
    }
}

/// Runs a socket operation, giving up (a slow reader, counted) at `deadline`.
async fn within(
    backend: &dyn RelayBackend,
    write_timeout: std::time::Duration,
    deadline: Instant,
    io: impl Future<Output = Result<(), WsError>>,
) -> Result<(), Gone> {
    let timer = backend.sleep_until(deadline);
    match select(pin!(io), timer).await {
        Either::Left((Ok(()), _)) => Ok(()),
        Either::Left((Err(_), _)) => Err(Gone),
        Either::Right(((), _)) => {
            backend.refusals().refuse(
                Limit::WebSocketSlowReader,
                &format_args!(
                    "disconnecting a WebSocket client that read nothing for {:?}",
                    write_timeout
                ),
                backend.now(),
            );
            Err(Gone)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pending_verdict() -> BoxFuture<'static, Verdict> {
        Box::pin(future::pending())
    }

    #[test]
    fn a_connection_reads_on_while_few_and_small_events_are_being_decided() {
        let limits = RelayLimits {
            max_message_bytes: 1000,
            events_in_flight: 3,
            ..RelayLimits::default()
        };
        let id = EventId::from_byte_array([0; 32]);
        let mut small = Deciding::default();
        for _ in 0..2 {
            small.push(id, 100, pending_verdict());
            assert!(small.has_room(&limits));
        }
        small.push(id, 100, pending_verdict());
        assert!(!small.has_room(&limits), "three EVENTs is the count bound");
        let mut large = Deciding::default();
        large.push(id, 600, pending_verdict());
        assert!(large.has_room(&limits));
        large.push(id, 600, pending_verdict());
        assert!(
            !large.has_room(&limits),
            "past one largest message's worth of bytes"
        );
    }
}
