//! Sync leases on the host side (`graspd_core`'s `engine/lease.rs` has the rule): the engine's
//! `AcquireLease` / `ReleaseLease` commands set which leases this instance wants, and one task
//! keeps them in the store's lease table (`store/pg/leases.rs`), reporting `Leased` and
//! `LeaseLost` back.
//!
//! The task acquires a newly wanted lease at once, and otherwise every third of the lease's
//! life renews those held and tries again for those held elsewhere (their holder may have died).
//! A held lease counts as lost here two thirds of the way through its life without a renewal,
//! before the table lets another instance take it, so two instances never both believe they
//! hold it (clock rates aside). Lease commands are applied while the engine's lock is held, in
//! the engine's order: an acquire and the release that follows can never swap.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};

use graspd_core::{Command, Input, RepoKey, Time};
use tracing::{debug, info, warn};

use super::Node;
use crate::runtime::unblock;

#[derive(Default)]
struct Wanted {
    /// By the name the lease table keys them with.
    repos: BTreeMap<String, RepoKey>,
    /// Held ones (a subset of `repos`), with the instant they count as lost unless renewed.
    held: BTreeMap<String, Time>,
    /// Held leases no longer wanted, to give back.
    let_go: BTreeSet<String>,
}

/// The leases this instance wants; see the module documentation.
pub(super) struct LeaseKeeper {
    wanted: Mutex<Wanted>,
    wake: async_channel::Sender<()>,
    woken: async_channel::Receiver<()>,
}

impl LeaseKeeper {
    pub(super) fn new() -> LeaseKeeper {
        let (wake, woken) = async_channel::bounded(1);
        LeaseKeeper {
            wanted: Mutex::new(Wanted::default()),
            wake,
            woken,
        }
    }

    /// Applies `command` if it is a lease command (returns whether it was).
    pub(super) fn take(&self, command: &Command) -> bool {
        let mut wanted = self.wanted.lock().unwrap_or_else(|e| e.into_inner());
        match command {
            Command::AcquireLease { repo } => {
                wanted.repos.insert(repo.to_string(), repo.clone());
            }
            Command::ReleaseLease { repo } => {
                let name = repo.to_string();
                wanted.repos.remove(&name);
                if wanted.held.remove(&name).is_some() {
                    wanted.let_go.insert(name);
                }
            }
            _ => return false,
        }
        let _ = self.wake.try_send(());
        true
    }

    /// (held, wanted but held elsewhere).
    pub(super) fn counts(&self) -> (usize, usize) {
        let wanted = self.wanted.lock().unwrap_or_else(|e| e.into_inner());
        (wanted.held.len(), wanted.repos.len() - wanted.held.len())
    }
}

impl Node {
    pub(super) fn spawn_lease_keeper(self: &Arc<Self>) {
        let node = Arc::clone(self);
        self.runtime
            .spawn(Box::pin(async move { node.keep_leases().await }));
    }

    async fn keep_leases(self: Arc<Self>) {
        let life = self.settings.sync_lease;
        let round = life / 3;
        loop {
            let (names, let_go) = {
                let mut wanted = self.leases.wanted.lock().unwrap_or_else(|e| e.into_inner());
                let names: Vec<String> = wanted.repos.keys().cloned().collect();
                (names, std::mem::take(&mut wanted.let_go))
            };
            if !let_go.is_empty() {
                let store = self.store.clone();
                let let_go: Vec<String> = let_go.into_iter().collect();
                match unblock(&*self.runtime, move || store.let_go_leases(&let_go)).await {
                    Ok(Ok(())) => {}
                    // They expire on their own.
                    Ok(Err(error)) => warn!(%error, "giving sync leases back failed"),
                    Err(error) => warn!(%error, "giving sync leases back failed"),
                }
            }
            let asked_at = self.clock.now();
            let store = self.store.clone();
            let asked = names.clone();
            let held_now = match unblock(&*self.runtime, move || store.hold_leases(&asked, life))
                .await
            {
                Ok(Ok(held)) => Some(held.into_iter().collect::<BTreeSet<String>>()),
                Ok(Err(error)) => {
                    warn!(%error, wanted = names.len(), "acquiring or renewing sync leases failed");
                    None
                }
                Err(error) => {
                    warn!(%error, wanted = names.len(), "acquiring or renewing sync leases failed");
                    None
                }
            };
            let inputs = self.settle_leases(&names, held_now.as_ref(), asked_at, life * 2 / 3);
            for input in inputs {
                self.input(input);
            }
            let (held, elsewhere) = self.leases.counts();
            self.metrics.sync_leases(held, elsewhere);
            let sleep = self.runtime.sleep(round);
            let woken = self.leases.woken.recv();
            futures_lite::future::or(sleep, async {
                let _ = woken.await;
            })
            .await;
        }
    }

    /// Records what one round of the table answered (`None`: it could not be reached) and
    /// what the engine must hear of it.
    fn settle_leases(
        &self,
        asked: &[String],
        held_now: Option<&BTreeSet<String>>,
        asked_at: Time,
        valid_for: std::time::Duration,
    ) -> Vec<Input> {
        let mut inputs = Vec::new();
        let mut wanted = self.leases.wanted.lock().unwrap_or_else(|e| e.into_inner());
        let wanted = &mut *wanted;
        if let Some(held_now) = held_now {
            for name in asked {
                let Some(repo) = wanted.repos.get(name) else {
                    // No longer wanted: give it back if the table just gave it to us.
                    if held_now.contains(name) {
                        wanted.let_go.insert(name.clone());
                    }
                    continue;
                };
                if held_now.contains(name) {
                    if wanted
                        .held
                        .insert(name.clone(), asked_at + valid_for)
                        .is_none()
                    {
                        info!(%repo, "sync lease acquired");
                        inputs.push(Input::Leased { repo: repo.clone() });
                    }
                } else if wanted.held.remove(name).is_some() {
                    warn!(%repo, "sync lease taken by another instance");
                    inputs.push(Input::LeaseLost { repo: repo.clone() });
                } else {
                    debug!(%repo, "sync lease held by another instance");
                }
            }
        }
        let now = self.clock.now();
        let repos = &wanted.repos;
        wanted.held.retain(|name, valid_until| {
            if *valid_until > now {
                return true;
            }
            if let Some(repo) = repos.get(name) {
                warn!(%repo, "sync lease not renewed in time; another instance may take it");
                inputs.push(Input::LeaseLost { repo: repo.clone() });
            }
            false
        });
        inputs
    }
}
