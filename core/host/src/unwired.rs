//! Stand-in relay and push handlers used by [`crate::serve`] until the store and driver are
//! wired in: NIP-11 answers, WebSocket sessions close, pushes are refused with a reason.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;

use graspd_core::{Oid, RepoKey};

use crate::config::Config;
use crate::git::RefUpdate;
use crate::http::{Handlers, PushHandler, RelayHandler, WebSocket};
use crate::runtime::BoxFuture;

struct Unwired {
    information: String,
}

pub(crate) fn handlers(config: &Config) -> Handlers {
    let information = serde_json::json!({
        "name": "graspd",
        "description": "GRASP server",
        "software": "graspd",
        "version": env!("CARGO_PKG_VERSION"),
        "supported_nips": [1, 11, 34],
        "supported_grasps": ["GRASP-01"],
        "repo_acceptance_criteria": format!("announcements listing {} in clone and relays", config.public_url()),
    })
    .to_string();
    let unwired = Arc::new(Unwired { information });
    Handlers {
        relay: unwired.clone(),
        push: unwired,
        metrics: Arc::new(String::new),
    }
}

impl RelayHandler for Unwired {
    fn information_document(&self) -> String {
        self.information.clone()
    }

    fn on_websocket(&self, socket: WebSocket, _peer: SocketAddr) -> BoxFuture<'static, ()> {
        Box::pin(async move {
            let mut socket = socket;
            let _ = socket.close(None).await;
        })
    }
}

impl PushHandler for Unwired {
    fn decide_push(
        &self,
        _repo: &RepoKey,
        _current_refs: &BTreeMap<String, Oid>,
        updates: &[RefUpdate],
    ) -> BoxFuture<'static, Vec<Result<(), String>>> {
        let verdicts =
            vec![Err("pushes are not enabled on this server yet".to_owned()); updates.len()];
        Box::pin(async move { verdicts })
    }

    fn on_pushed(&self, _repo: &RepoKey, _updates: &[RefUpdate]) -> BoxFuture<'static, ()> {
        Box::pin(async {})
    }
}
