//! What the other instances sharing this store commit (PostgreSQL, `--database-url`): their
//! notifications name the events they put in purgatory or served (`store/pg/notify.rs`);
//! this instance reads those events and feeds them to its engine (a waiting event as the
//! start-up restore does, a served one as [`graspd_core::Engine::served_elsewhere`], one
//! dropped unreleased as [`graspd_core::Engine::gone_elsewhere`]), so a
//! push to any instance is decided by every waiting event, and hands the served ones to its
//! live subscribers.
//!
//! Bounded: the listener queues at most [`PEER_QUEUE`] notifications (what does not fit is
//! dropped and counted), and each store read takes at most [`PEER_BATCH`] ids.

use std::sync::Arc;
use std::time::Duration;

use tracing::{debug, warn};

use super::Node;
use crate::runtime::unblock;
use crate::store::{Changed, ChangedId};

/// Notifications (up to 100 ids each) queued from the listener at most.
pub const PEER_QUEUE: usize = 1024;
/// Ids read from the store in one round trip at most.
const PEER_BATCH: usize = 256;
/// The wait before reading again after a store read failed.
const READ_RETRY: Duration = Duration::from_millis(500);

/// The listener's queue, if the store is shared; started before the restore so nothing
/// committed meanwhile is missed (what the restore also read is taken once: the engine
/// ignores a waiting event it holds).
pub(super) fn listen(
    store: &crate::store::Store,
) -> Option<async_channel::Receiver<Vec<ChangedId>>> {
    match store.listen(PEER_QUEUE)? {
        Ok(heard) => Some(heard),
        Err(error) => {
            warn!(%error, "cannot start listening for other instances' events; this instance will not learn of them");
            None
        }
    }
}

impl Node {
    pub(super) fn spawn_peer_feed(
        self: &Arc<Self>,
        heard: async_channel::Receiver<Vec<ChangedId>>,
    ) {
        let node = Arc::clone(self);
        self.runtime
            .spawn(Box::pin(async move { node.feed_peers(heard).await }));
    }

    async fn feed_peers(self: Arc<Self>, heard: async_channel::Receiver<Vec<ChangedId>>) {
        while let Ok(mut batch) = heard.recv().await {
            while batch.len() < PEER_BATCH {
                match heard.try_recv() {
                    Ok(more) => batch.extend(more),
                    Err(_) => break,
                }
            }
            loop {
                let store = self.store.clone();
                let named = batch.clone();
                match unblock(&*self.runtime, move || store.changed_events(&named)).await {
                    Ok(Ok(changed)) => {
                        self.metrics
                            .peer_events_gone((batch.len() - changed.len()) as u64);
                        self.learn(changed);
                        break;
                    }
                    Ok(Err(error)) => {
                        warn!(%error, ids = batch.len(), "reading other instances' events failed; retrying")
                    }
                    Err(error) => {
                        warn!(%error, ids = batch.len(), "reading other instances' events failed; retrying")
                    }
                }
                self.runtime.sleep(READ_RETRY).await;
            }
        }
    }

    /// Feeds what another instance committed to the engine, then serves the served events
    /// live, in the order they were committed.
    fn learn(self: &Arc<Self>, changed: Vec<Changed>) {
        let policy = self.policy();
        let max_tags = self.store.reference_limits().per_event;
        let (now, unix_now) = (self.clock.now(), self.clock.unix_now());
        let mut served = Vec::new();
        {
            let mut engine = self.engine.lock().unwrap_or_else(|e| e.into_inner());
            for change in changed {
                match change {
                    Changed::Waiting(w) => {
                        // As the start-up restore: expired or refused ones are not taken in
                        // (the instance that holds them drops them).
                        if w.expires_at <= unix_now || policy.check(&w.event, max_tags).is_err() {
                            continue;
                        }
                        debug!(id = %w.event.id, "another instance put an event in purgatory");
                        self.follow_waiting(&w.event);
                        let remaining = Duration::from_secs(w.expires_at - unix_now);
                        engine.restore_waiting(now, w.event, w.arrival, remaining);
                    }
                    Changed::Gone(id) => {
                        debug!(%id, "another instance dropped an event from purgatory");
                        engine.gone_elsewhere(now, &id);
                    }
                    Changed::Served(event) => {
                        debug!(id = %event.id, "another instance served an event");
                        engine.served_elsewhere(now, &event);
                        served.push(event);
                    }
                }
            }
        }
        self.dispatch();
        for event in served {
            self.follow(&event);
            self.reread_if_announcement(&event);
            self.publish_live(event);
        }
    }
}
