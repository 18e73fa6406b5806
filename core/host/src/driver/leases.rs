//! Leases on the host side (`graspd_core`'s `engine/lease.rs` and the follower's module docs
//! have the rules): the engine's and the relay follower's `AcquireLease` / `ReleaseLease`
//! commands set which leases this instance wants, and one task keeps them in the store's lease
//! table (`store/pg/leases.rs`), reporting `Leased` and `LeaseLost` back to whichever asked.
//! The bookkeeping is `crate::leases::LeaseBook`; this module runs its rounds.
//!
//! The task asks for newly wanted leases at once (an early round, with only those names), and
//! every third of the lease's life runs a full round: it renews those held and tries again for
//! those held elsewhere (their holder may have died).
//! A held lease counts as lost here two thirds of the way through its life without a renewal,
//! before the table lets another instance take it, so two instances never both believe they
//! hold it (clock rates aside). Lease commands are applied while the engine's lock is held, in
//! the engine's order: an acquire and the release that follows can never swap.

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};

use graspd_core::{follow, Command};
use tracing::warn;

use super::Node;
use crate::leases::{LeaseBook, Report};
use crate::runtime::unblock;

/// The leases this instance wants (`crate::leases::LeaseBook`), and the wake-up of the task
/// that keeps them.
pub(super) struct LeaseKeeper {
    book: Mutex<LeaseBook>,
    wake: async_channel::Sender<()>,
    woken: async_channel::Receiver<()>,
}

impl LeaseKeeper {
    pub(super) fn new() -> LeaseKeeper {
        let (wake, woken) = async_channel::bounded(1);
        LeaseKeeper {
            book: Mutex::new(LeaseBook::new()),
            wake,
            woken,
        }
    }

    fn book(&self) -> std::sync::MutexGuard<'_, LeaseBook> {
        self.book.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Applies `command` if it is one of the engine's lease commands (returns whether it was).
    pub(super) fn take(&self, command: &Command) -> bool {
        if !self.book().apply(command) {
            return false;
        }
        let _ = self.wake.try_send(());
        true
    }

    /// Applies one of the relay follower's lease commands.
    fn take_follow(&self, command: &follow::Command) {
        if self.book().apply_follow(command) {
            let _ = self.wake.try_send(());
        }
    }
}

impl Node {
    /// Starts the lease task, and sends the relay follower's lease commands to it.
    pub(super) fn spawn_lease_keeper(self: &Arc<Self>) {
        let weak = Arc::downgrade(self);
        self.follower
            .set_lease_commands(Arc::new(move |command: &follow::Command| {
                if let Some(node) = weak.upgrade() {
                    node.leases.take_follow(command);
                }
            }));
        let node = Arc::clone(self);
        self.runtime
            .spawn(Box::pin(async move { node.keep_leases().await }));
    }

    async fn keep_leases(self: Arc<Self>) {
        let life = self.settings.sync_lease;
        let full_every = life / 3;
        let mut next_full = self.clock.now();
        loop {
            let round_asked = if self.clock.now() >= next_full {
                next_full = self.clock.now() + full_every;
                self.leases.book().start_round()
            } else {
                self.leases.book().start_fresh_round()
            };
            let (names, let_go) = (round_asked.names, round_asked.let_go);
            if !let_go.is_empty() {
                let store = self.store.clone();
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
            let statement = unblock(&*self.runtime, move || store.hold_leases(&asked, life));
            let answer = self.expiring_leases_while(statement).await;
            let held_now = match answer {
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
            let now = self.clock.now();
            let inputs =
                self.leases
                    .book()
                    .settle(&names, held_now.as_ref(), asked_at, life * 2 / 3, now);
            self.report_leases(inputs);
            let (repos, relays) = self.leases.book().counts();
            self.metrics.leases(repos, relays);
            let sleep = self
                .runtime
                .sleep(next_full.saturating_since(self.clock.now()));
            let woken = self.leases.woken.recv();
            self.expiring_leases_while(futures_lite::future::or(sleep, async {
                let _ = woken.await;
            }))
            .await;
        }
    }

    /// Awaits `work` (a lease statement, or the sleep between rounds), reporting held leases
    /// lost as their local validity ends meanwhile: a statement hung on a dead connection must
    /// not leave the engine fetching after the table may have given its lease away.
    async fn expiring_leases_while<T>(
        self: &Arc<Self>,
        work: impl std::future::Future<Output = T>,
    ) -> T {
        let mut work = std::pin::pin!(work);
        loop {
            let next = self.leases.book().next_expiry();
            let Some(expiry) = next else {
                return work.await;
            };
            let wait = expiry.saturating_since(self.clock.now());
            let expired = async {
                self.runtime.sleep(wait).await;
                None
            };
            if let Some(done) =
                futures_lite::future::or(async { Some(work.as_mut().await) }, expired).await
            {
                return done;
            }
            let reports = self.leases.book().expire(self.clock.now());
            self.report_leases(reports);
        }
    }

    /// Tells the engine and the relay follower what became of their leases.
    fn report_leases(self: &Arc<Self>, reports: Vec<Report>) {
        for report in reports {
            match report {
                Report::Engine(input) => self.input(input),
                Report::Follower(input) => self.follower.lease_report(input),
            }
        }
    }
}
