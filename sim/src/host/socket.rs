//! A WebSocket connection in memory: message frames both ways, in order, closed when either
//! end is dropped (a crash drops the server's end). The server's end is what
//! `graspd_host::driver::serve_relay` runs the real relay session on.

use std::pin::Pin;
use std::task::{Context, Poll};

use async_channel::{Receiver, Sender};
use async_tungstenite::tungstenite::{Error as WsError, Message};
use futures_util::{Sink, Stream};

/// One end of an in-memory WebSocket.
pub struct SimSocket {
    tx: Sender<Message>,
    /// Boxed: the receiver's stream state is not `Unpin`.
    rx: Pin<Box<Receiver<Message>>>,
}

/// A connected pair: (client end, server end).
pub fn pair() -> (SimSocket, SimSocket) {
    let (to_server, from_client) = async_channel::unbounded();
    let (to_client, from_server) = async_channel::unbounded();
    (
        SimSocket {
            tx: to_server,
            rx: Box::pin(from_server),
        },
        SimSocket {
            tx: to_client,
            rx: Box::pin(from_client),
        },
    )
}

impl SimSocket {
    /// Sends a text frame; false if the other end is gone.
    pub fn send_text(&self, text: String) -> bool {
        self.tx.try_send(Message::text(text)).is_ok()
    }

    /// The next text frame; `None` when the other end is gone.
    pub async fn next_text(&self) -> Option<String> {
        loop {
            match self.rx.recv().await.ok()? {
                Message::Text(text) => return Some(text.as_str().to_owned()),
                Message::Close(_) => return None,
                _ => {}
            }
        }
    }
}

impl Drop for SimSocket {
    fn drop(&mut self) {
        self.tx.close();
        self.rx.close();
    }
}

impl Stream for SimSocket {
    type Item = Result<Message, WsError>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.rx.as_mut().poll_next(cx).map(|m| m.map(Ok))
    }
}

impl Sink<Message> for SimSocket {
    type Error = WsError;

    fn poll_ready(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<Result<(), WsError>> {
        Poll::Ready(Ok(()))
    }

    fn start_send(self: Pin<&mut Self>, item: Message) -> Result<(), WsError> {
        self.tx
            .try_send(item)
            .map_err(|_| WsError::ConnectionClosed)
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<Result<(), WsError>> {
        Poll::Ready(Ok(()))
    }

    fn poll_close(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<Result<(), WsError>> {
        self.tx.close();
        Poll::Ready(Ok(()))
    }
}

/// The relay's view of a socket; the oversized-frame drain is not needed in memory.
impl graspd_host::relay::RelaySocket for SimSocket {}
