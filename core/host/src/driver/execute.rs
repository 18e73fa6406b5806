//! Runs the engine's commands against the git repositories and reports their outcomes as
//! inputs carrying the command's id.

use std::sync::Arc;
use std::time::Duration;

use graspd_core::{ApplyError, Command, EngineEvent, FetchError, FetchReport, Input, RepoSnapshot};
use tracing::{debug, info, warn};

use super::write_slots::committed;
use super::Node;
use crate::git::{self, FetchLimits, GitError};
use crate::runtime::unblock;
use crate::store::InsertOutcome;

/// The first wait before writing a released event again after its store write failed.
const RELEASE_RETRY_FIRST: Duration = Duration::from_millis(250);
/// The longest wait between two attempts to write a released event.
const RELEASE_RETRY_MAX: Duration = Duration::from_secs(30);

impl Node {
    pub(super) async fn execute(self: Arc<Self>, command: Command) {
        match command {
            Command::Fetch {
                id,
                into,
                url,
                oids,
                deadline,
            } => {
                let limits = FetchLimits {
                    deadline: self.clock.instant(deadline),
                    max_bytes: self.settings.max_fetch_bytes,
                    allow_private: self.settings.allow_private_remotes,
                };
                if into.is_prs() {
                    // A GRASP-06 repository exists once something is pushed or fetched into it.
                    if let Err(error) = self.git.create_repo(&into).await {
                        warn!(%id, repo = %into, %error, "creating the PR repository failed");
                    }
                }
                let domain = domain_of(&url);
                debug!(%id, repo = %into, %url, wanted = oids.len(), "fetch starts");
                let result = self.git.fetch(&into, &url, &oids, &limits).await;
                let result = match result {
                    Ok(present) => {
                        info!(%id, repo = %into, %url, fetched = present.len(), wanted = oids.len(), "fetch done");
                        self.metrics.fetch_finished(&domain, "ok");
                        Ok(FetchReport { present })
                    }
                    Err(error) => {
                        warn!(%id, repo = %into, %url, %error, "fetch failed");
                        let error = engine_fetch_error(error);
                        self.metrics.fetch_finished(&domain, fetch_outcome(&error));
                        Err(error)
                    }
                };
                self.input(Input::FetchDone { id, result });
            }
            Command::Inspect { id, repo, oids } => {
                let result = self
                    .git
                    .inspect(&repo, &oids)
                    .await
                    .map(|i| RepoSnapshot {
                        present: i.present,
                        refs: i.refs,
                    })
                    .map_err(|e| e.to_string());
                if let Err(error) = &result {
                    warn!(%id, %repo, %error, "inspect failed");
                }
                self.input(Input::Inspected { id, result });
            }
            Command::Apply { id, plan } => {
                let (copy_from, objects) = match &plan.copy_from {
                    Some((source, oids)) => (Some(source), oids.as_slice()),
                    None => (None, &[][..]),
                };
                let refs = &plan.edits;
                let result = self
                    .git
                    .apply(&plan.repo, copy_from, objects, refs, plan.head.as_deref())
                    .await;
                let result = match result {
                    Ok(()) => {
                        info!(%id, repo = %plan.repo, edits = refs.len(), head = ?plan.head, "refs aligned");
                        Ok(())
                    }
                    Err(GitError::RefConflict(why)) => {
                        info!(%id, repo = %plan.repo, %why, "ref transaction conflicted; engine re-plans");
                        Err(ApplyError::Conflict)
                    }
                    Err(error) => {
                        warn!(%id, repo = %plan.repo, %error, "apply failed");
                        Err(ApplyError::Io(error.to_string()))
                    }
                };
                self.input(Input::Applied { id, result });
            }
            Command::CreateRepo { repo } => {
                if let Err(error) = self.git.create_repo(&repo).await {
                    warn!(%repo, %error, "creating the repository failed");
                }
            }
            Command::RemoveRepo { repo } => {
                self.follower.repository_removed(repo.clone());
                match self.git.remove_repo(&repo).await {
                    Ok(()) => {
                        info!(%repo, "repository removed: its announcement left purgatory without data")
                    }
                    Err(error) => warn!(%repo, %error, "removing the repository failed"),
                }
            }
            // Taken before commands are spawned (`LeaseKeeper::take`); never reach here.
            Command::AcquireLease { .. } | Command::ReleaseLease { .. } => {}
        }
    }

    /// Persists and serves what the engine decided.
    pub(super) async fn on_engine_event(self: Arc<Self>, event: EngineEvent) {
        match event {
            // Order: the engine released an event it took in only after the host reported it
            // durable, so the purgatory table holds it. The engine forgets it first, then the
            // host moves it in one transaction: a failed write is retried until it lands, and a
            // crash in between leaves it in the purgatory table, restored at start-up and
            // released again (its refs are aligned already).
            EngineEvent::Released { id, kind, waited } => match self.release_durably(id).await {
                Some((event, outcome)) => {
                    info!(%id, kind, waited_ms = waited.as_millis() as u64, ?outcome, "released from purgatory");
                    self.metrics.released(waited);
                    // Only a newly stored event goes live: not one its author deleted,
                    // nor one a newer version supersedes.
                    if matches!(outcome, InsertOutcome::Stored { .. }) {
                        self.follow(&event);
                        self.reread_if_announcement(&event);
                        self.publish_live(event);
                    }
                }
                None if self.served_already(id).await => {
                    debug!(%id, kind, "released here and by another instance, which served it")
                }
                None => {
                    warn!(%id, kind, "a released event is not in the purgatory table; nothing to serve")
                }
            },
            // Expired and Deleted come only for events the engine took in after `Persisted`.
            // A crash or failed removal leaves the entry in the table: the restore drops it
            // as expired, or as deleted (`Store::is_deleted`).
            EngineEvent::Expired { id, kind } => {
                info!(%id, kind, "expired from purgatory without its git data");
                self.forget_waiting(id).await;
            }
            EngineEvent::Deleted { id } => {
                info!(%id, "deleted from purgatory by its author");
                self.forget_waiting(id).await;
            }
            EngineEvent::Withdrawn { id } => {
                info!(%id, "withdrawn from purgatory: the operator's policy refuses it now");
                self.forget_waiting(id).await;
            }
            EngineEvent::PlaceholderCreated { repo, id } => {
                debug!(%repo, %id, "refs/nostr placeholder waits for its event");
            }
            EngineEvent::PlaceholderRemoved { repo, id } => {
                info!(%repo, %id, "refs/nostr placeholder removed");
                self.git.placeholder_removed(&repo);
            }
            EngineEvent::ApplyFailed { repo, reason } => {
                warn!(%repo, %reason, "release could not be applied; its events keep waiting");
            }
        }
    }

    /// Moves a released event from the purgatory table to the served events. The engine has
    /// forgotten it already, so a failed write is retried here, backing off up to
    /// [`RELEASE_RETRY_MAX`], until it lands: otherwise the event would be neither served nor
    /// waiting for anyone to release it until a restart. A shutdown meanwhile leaves it in the
    /// purgatory table, restored and released again at start-up.
    async fn release_durably(
        &self,
        id: graspd_core::EventId,
    ) -> Option<(nostr::event::Event, InsertOutcome)> {
        let mut delay = RELEASE_RETRY_FIRST;
        loop {
            let store = self.store.clone();
            let slot = self.writers.acquire().await;
            let released = committed(&self.runtime, store.release_waiting_queued(&id)).await;
            drop(slot);
            match released {
                Ok(found) => return found,
                Err(error) => {
                    let retry_ms = delay.as_millis() as u64;
                    warn!(%id, %error, retry_ms, "storing a released event failed; retrying");
                    self.runtime.sleep(delay).await;
                    delay = (delay * 2).min(RELEASE_RETRY_MAX);
                }
            }
        }
    }

    /// Whether the store serves `id` (another instance sharing it released it first).
    async fn served_already(&self, id: graspd_core::EventId) -> bool {
        let store = self.store.clone();
        matches!(
            unblock(&*self.runtime, move || store.get(&id)).await,
            Ok(Ok(Some(_)))
        )
    }

    async fn forget_waiting(&self, id: graspd_core::EventId) {
        let store = self.store.clone();
        match committed(&self.runtime, store.remove_waiting_queued(&id)).await {
            Ok(_) => {}
            Err(error) => warn!(%id, %error, "removing a waiting event from the store failed"),
        }
    }
}

fn engine_fetch_error(error: git::GitFetchError) -> FetchError {
    use git::GitFetchError as G;
    match error {
        G::BadUrl(m) | G::PrivateAddress(m) | G::Other(m) => FetchError::Other(m),
        G::Dns(_) => FetchError::Dns,
        G::Refused(_) => FetchError::Refused,
        G::Tls(_) => FetchError::Tls,
        G::Timeout => FetchError::Timeout,
        G::TooLarge { .. } => FetchError::TooLarge,
        G::NotOurRef(oids) => FetchError::NotOurRef(oids),
        G::HttpStatus(429) => FetchError::RateLimited,
        G::HttpStatus(code) => FetchError::Http(code),
    }
}

fn fetch_outcome(error: &FetchError) -> &'static str {
    match error {
        FetchError::Refused => "refused",
        FetchError::Dns => "dns",
        FetchError::Tls => "tls",
        FetchError::Timeout => "timeout",
        FetchError::TooLarge => "too_large",
        FetchError::Http(_) => "http_error",
        FetchError::RateLimited => "rate_limited",
        FetchError::NotOurRef(_) => "not_our_ref",
        FetchError::Other(_) => "other",
    }
}

/// The throttle's domain key of a clone URL, so metric labels match the limits they report.
fn domain_of(url: &str) -> String {
    graspd_core::urls::RemoteUrl::parse(url).map_or_else(|_| "invalid".to_owned(), |u| u.domain())
}
