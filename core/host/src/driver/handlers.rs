//! The HTTP origin's hooks into the driver: relay sessions and push decisions.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;

use async_tungstenite::tungstenite::Message;
use futures_util::StreamExt;
use graspd_core::{Arrival, Input, Oid, RefDecision, RepoKey};
use tracing::{debug, info};

use super::Node;
use crate::git::RefUpdate;
use crate::http::{Handlers, PushHandler, RelayHandler, WebSocket};
use crate::relay::{messages, Action, Live, Session};
use crate::runtime::{unblock, BoxFuture};

/// The hooks of one [`Node`], for [`crate::http::Site`].
pub fn handlers(node: &Arc<Node>) -> Handlers {
    let metrics_node = Arc::clone(node);
    Handlers {
        relay: Arc::new(NodeHooks(Arc::clone(node))),
        push: Arc::new(NodeHooks(Arc::clone(node))),
        metrics: Arc::new(move || metrics_node.render_metrics()),
    }
}

struct NodeHooks(Arc<Node>);

enum Next {
    Client(Option<Result<Message, async_tungstenite::tungstenite::Error>>),
    Live(Live),
}

impl RelayHandler for NodeHooks {
    fn information_document(&self) -> String {
        self.0.settings.information_document.clone()
    }

    fn on_websocket(&self, socket: WebSocket, peer: SocketAddr) -> BoxFuture<'static, ()> {
        let node = Arc::clone(&self.0);
        Box::pin(async move {
            debug!(%peer, "relay session opened");
            run_session(node, socket).await;
            debug!(%peer, "relay session closed");
        })
    }
}

async fn run_session(node: Arc<Node>, socket: WebSocket) {
    let (mut session, feed) = Session::new(node.settings.relay_limits.clone(), &node.hub);
    let (mut sink, mut stream) = socket.split();
    loop {
        let next = futures_lite::future::or(async { Next::Client(stream.next().await) }, async {
            Next::Live(feed.next().await)
        })
        .await;
        let frames = match next {
            Next::Client(Some(Ok(Message::Text(text)))) => match session.handle_text(text.as_str())
            {
                Some(action) => perform(&node, &mut session, action).await,
                None => Vec::new(),
            },
            Next::Client(Some(Ok(Message::Binary(_)))) => {
                let action = session.handle_binary();
                perform(&node, &mut session, action).await
            }
            Next::Client(Some(Ok(Message::Close(_)))) | Next::Client(None) => break,
            Next::Client(Some(Ok(_))) => Vec::new(),
            Next::Client(Some(Err(error))) => {
                debug!(%error, "relay session read failed");
                break;
            }
            Next::Live(Live::Event(event)) => session.live_event(&event),
            Next::Live(Live::TooSlow) => {
                let _ = sink
                    .send(Message::text(messages::notice(messages::TOO_SLOW)))
                    .await;
                break;
            }
            Next::Live(Live::Closed) => break,
        };
        for frame in frames {
            if sink.send(Message::text(frame)).await.is_err() {
                return;
            }
        }
    }
    let _ = sink.close(None).await;
}

async fn perform(node: &Arc<Node>, session: &mut Session, action: Action) -> Vec<String> {
    match action {
        Action::Send(frame) => vec![frame],
        Action::Accept(event) => {
            let id = event.id;
            let verdict = node.accept(*event, Arrival::Published).await;
            vec![verdict.message(&id)]
        }
        Action::Query(query) => {
            let store = node.store.clone();
            let filters = query.filters.clone();
            let cap = query.cap;
            let events = match unblock(&*node.runtime, move || store.query(&filters, cap)).await {
                Ok(Ok(events)) => events,
                Ok(Err(error)) => {
                    return vec![messages::closed(
                        &query.subscription_id,
                        &format!("error: {error}"),
                    )]
                }
                Err(error) => {
                    return vec![messages::closed(
                        &query.subscription_id,
                        &format!("error: {error}"),
                    )]
                }
            };
            session.stored_events(query.id, &events)
        }
    }
}

impl PushHandler for NodeHooks {
    fn decide_push(
        &self,
        repo: &RepoKey,
        current_refs: &BTreeMap<String, Oid>,
        updates: &[RefUpdate],
    ) -> BoxFuture<'static, Vec<Result<(), String>>> {
        let decisions = {
            let engine = self.0.engine.lock().unwrap_or_else(|e| e.into_inner());
            engine.decide_push(repo, current_refs, updates)
        };
        let verdicts: Vec<Result<(), String>> = decisions
            .into_iter()
            .map(|d| match d {
                RefDecision::Accept => Ok(()),
                RefDecision::Reject(reason) => Err(reason),
            })
            .collect();
        let accepted = verdicts.iter().all(Result::is_ok);
        self.0.metrics.push(accepted);
        info!(%repo, refs = updates.len(), accepted, "push decided");
        Box::pin(async move { verdicts })
    }

    fn on_pushed(&self, repo: &RepoKey, updates: &[RefUpdate]) -> BoxFuture<'static, ()> {
        self.0.input(Input::Pushed {
            repo: repo.clone(),
            updates: updates.to_vec(),
        });
        Box::pin(async {})
    }
}
