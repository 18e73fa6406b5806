//! The HTTP origin's hooks into the driver: relay sessions and push decisions.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use graspd_core::{Input, Oid, RefDecision, RepoKey, Submission};
use nostr::event::{Event, EventId};
use nostr::filter::Filter;
use tracing::{debug, info, info_span, Instrument};

use super::Node;
use crate::address::AddressKey;
use crate::event_rate::TokenBucket;
use crate::git::RefUpdate;
use crate::http::{Handlers, PushHandler, RelayHandler, WebSocket};
use crate::refusals::{Limit, Refusals};
use crate::relay::{
    run_connection, Query, ReconcileOpen, RelayBackend, RelayLimits, RelaySocket, Verdict,
};
use crate::runtime::{unblock, BoxFuture};
use crate::store::{Store, StoreError, Visible};

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

impl RelayHandler for NodeHooks {
    fn information_document(&self) -> String {
        let policy = self.0.policy();
        let info = crate::nip11::RelayInfo {
            allow_list: policy.has_allow_list(),
            archive_list: policy.has_archive_list(),
            ..self.0.settings.relay_info.clone()
        };
        crate::nip11::document_json(&info, &self.0.settings.relay_limits)
    }

    fn limits(&self) -> RelayLimits {
        self.0.settings.relay_limits.clone()
    }

    fn shutting_down(&self) {
        self.0.hub.close_all();
    }

    fn on_websocket(&self, socket: WebSocket, client: IpAddr) -> BoxFuture<'static, ()> {
        let node = Arc::clone(&self.0);
        Box::pin(
            async move {
                debug!("relay session opened");
                serve_relay(node, socket, Some(client)).await;
                debug!("relay session closed");
            }
            .instrument(info_span!("relay", %client)),
        )
    }

    fn served_events(
        &self,
        filters: Vec<Filter>,
        cap: usize,
    ) -> BoxFuture<'static, Result<Vec<Event>, String>> {
        query_store(&self.0, filters, cap)
    }
}

/// Served events matching `filters` that the lists in force let through, read on the
/// blocking pool.
fn query_store(
    node: &Arc<Node>,
    filters: Vec<Filter>,
    cap: usize,
) -> BoxFuture<'static, Result<Vec<Event>, String>> {
    let node = Arc::clone(node);
    Box::pin(node.read_served(move |store, visible| store.query_visible(&filters, cap, visible)))
}

impl Node {
    /// Runs a store read on the blocking pool that sees only the events the lists in force
    /// let through: what REQs, reconciliations and the pages may answer with.
    async fn read_served<T: Send + 'static>(
        self: Arc<Self>,
        read: impl FnOnce(&Store, Visible<'_>) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, String> {
        let policy = self.policy();
        let reader = Arc::clone(&self);
        let found = unblock(&*self.runtime, move || {
            let visible = |event: &Event| reader.serves(&policy, event);
            read(&reader.store, &visible)
        });
        flatten(found.await)
    }
}

/// Runs one relay connection of `node` on a WebSocket: the HTTP origin's upgraded sockets, and
/// the simulator's in-memory ones. `client` is the client's address (behind a trusted proxy,
/// the one it names), which per-address limits count by.
pub async fn serve_relay<S: RelaySocket>(node: Arc<Node>, socket: S, client: Option<IpAddr>) {
    let limits = node.settings.relay_limits.clone();
    let backend = ConnectionHooks {
        events: Mutex::new(TokenBucket::full(
            limits.events_per_connection,
            node.runtime.now(),
        )),
        address: client.map(AddressKey::of),
        node: NodeHooks(Arc::clone(&node)),
    };
    run_connection(socket, limits, &node.hub, &backend).await;
}

/// One relay connection's view of the node: its EVENT rate and its client's address.
struct ConnectionHooks {
    node: NodeHooks,
    events: Mutex<TokenBucket>,
    address: Option<AddressKey>,
}

impl ConnectionHooks {
    /// The rate limit an EVENT arriving now is over, with the answer to give, if any. The
    /// connection's own bucket is asked first, so a refused connection spends nothing of
    /// its address's.
    fn event_rate_refusal(&self) -> Option<(Limit, String)> {
        let node = &self.node.0;
        let limits = &node.settings.relay_limits;
        let now = node.runtime.now();
        let rate = limits.events_per_connection;
        let taken = {
            let mut bucket = self.events.lock().unwrap_or_else(|e| e.into_inner());
            bucket.take(rate, now)
        };
        if !taken {
            return Some((
                Limit::EventsPerConnection,
                format!(
                    "rate-limited: more than {} events per second on this connection (bursts \
                     of {}); slow down",
                    rate.per_second, rate.burst
                ),
            ));
        }
        let address = self.address?;
        if node.address_rates.take(address, now) {
            return None;
        }
        let rate = node.address_rates.rate();
        Some((
            Limit::EventsPerAddress,
            format!(
                "rate-limited: more than {} events per second from your address (bursts of \
                 {}); slow down",
                rate.per_second, rate.burst
            ),
        ))
    }
}

impl RelayBackend for ConnectionHooks {
    fn decide(&self, event: Event) -> BoxFuture<'static, Verdict> {
        let node = Arc::clone(&self.node.0);
        let submission = Submission::published_from(self.address.map(AddressKey::client));
        Box::pin(async move { node.accept(event, submission).await })
    }

    fn over_event_rate(&self) -> Option<(Limit, String)> {
        let refused = self.event_rate_refusal();
        if refused.is_some() {
            self.node.0.metrics.event("rejected");
        }
        refused
    }

    fn query(&self, query: Query) -> BoxFuture<'static, Result<Vec<EventId>, String>> {
        let node = Arc::clone(&self.node.0);
        Box::pin(node.read_served(move |store, visible| {
            store.query_ids_visible(&query.filters, query.cap, visible)
        }))
    }

    fn reconciliation_items(
        &self,
        open: &ReconcileOpen,
    ) -> BoxFuture<'static, Result<Vec<(u64, EventId)>, String>> {
        let node = Arc::clone(&self.node.0);
        node.metrics.negentropy_opened();
        let (filters, cap) = (open.filters.clone(), open.cap);
        Box::pin(node.read_served(move |store, visible| store.query_items(&filters, cap, visible)))
    }

    fn load(
        &self,
        ids: Vec<EventId>,
        max_bytes: usize,
    ) -> BoxFuture<'static, Result<(Vec<String>, usize), String>> {
        let node = Arc::clone(&self.node.0);
        Box::pin(async move {
            let store = node.store.clone();
            flatten(unblock(&*node.runtime, move || store.load_json(&ids, max_bytes)).await)
        })
    }

    fn now(&self) -> Instant {
        self.node.0.runtime.now()
    }

    fn sleep_until(&self, deadline: Instant) -> BoxFuture<'static, ()> {
        self.node.0.runtime.sleep_until(deadline)
    }

    fn refusals(&self) -> &Refusals {
        &self.node.0.settings.refusals
    }
}

/// A store read run on the blocking pool, its error as text for a `CLOSED`.
fn flatten<T>(result: std::io::Result<Result<T, crate::store::StoreError>>) -> Result<T, String> {
    match result {
        Ok(Ok(value)) => Ok(value),
        Ok(Err(error)) => Err(error.to_string()),
        Err(error) => Err(error.to_string()),
    }
}

impl PushHandler for NodeHooks {
    fn refuses_fetch(&self, repo: &RepoKey) -> Option<&'static str> {
        let denied = self.0.policy().denies_repo(&repo.owner, &repo.identifier);
        denied.then(|| graspd_core::policy::PolicyRefusal::Repo.message())
    }

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
