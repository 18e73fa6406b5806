//! Deciding an EVENT: git events and deletions through the engine, every other kind by its
//! relation to what the store serves (`graspd_core::related`), and persisting what was
//! acknowledged before the client hears `OK`.
//!
//! A git event's admission is two-phase (see `graspd_core::Verdict`): the engine decides, the
//! store write runs, and only then is the engine told `Persisted` (it starts acting on the
//! event) or `PersistFailed` (it forgets it). Reporting `Persisted` before the write would let
//! any concurrent dispatch run Inspect, Apply and `Released` for an event the purgatory table does
//! not hold yet: acknowledged, then neither served nor waiting.

use std::sync::Arc;

use graspd_core::events::{Coordinate, Deletion, GitEvent, KIND_ANNOUNCEMENT, KIND_DELETION};
use graspd_core::freshness;
use graspd_core::policy::{Policy, PolicyRefusal};
use graspd_core::related::{self, KnownEvents};
use graspd_core::{EventId, Input, PublicKey, Submission, Ticket, Verdict};
use nostr::event::{Event, Kind};
use nostr::filter::Filter;
use tracing::{debug, warn};

use super::write_slots::committed;
use super::Node;
use crate::refusals::Limit;
use crate::relay;
use crate::runtime::unblock;
use crate::store::{InsertOutcome, PendingWrite, Store, StoreError, WaitingEvent};

const DUPLICATE: &str = "duplicate: already have this event";

impl Node {
    /// Decides one signature-checked event and makes the decision durable; the answer is the
    /// relay's `OK`.
    pub async fn accept(self: &Arc<Self>, event: Event, submission: Submission) -> relay::Verdict {
        let id = event.id;
        let kind = event.kind.as_u16();
        let verdict = if let Err(refused) = self.check_policy(&event) {
            self.refuse(Limit::of_policy(refused), refused.message(), &event)
        } else if let Err(refused) = self.check_created_at(&event) {
            self.refuse(Limit::CreatedAtFuture, &refused, &event)
        } else if related::is_decided_by_relation(kind) {
            self.accept_related(event).await
        } else {
            self.accept_git_event(event, submission).await
        };
        debug!(%id, kind, accepted = verdict.accepted, message = %verdict.message, "event decided");
        verdict
    }

    /// The operator's curation lists, before anything else: published and synced events
    /// alike come through [`Node::accept`], so no denied event is stored or waits.
    pub(super) fn check_policy(&self, event: &Event) -> Result<(), PolicyRefusal> {
        let max_tags = self.store.reference_limits().per_event;
        let engine = self.engine.lock().unwrap_or_else(|e| e.into_inner());
        engine.config().policy.check(event, max_tags)
    }

    /// Refuses events dated too far ahead of this server's clock (`--max-future-skew-secs`).
    fn check_created_at(&self, event: &Event) -> Result<(), String> {
        let max_skew = {
            let engine = self.engine.lock().unwrap_or_else(|e| e.into_inner());
            engine.config().max_future_skew
        };
        freshness::check_created_at(event.created_at.as_secs(), self.clock.unix_now(), max_skew)
    }

    /// Counts and logs a refusal by `limit`, and answers it with `message`.
    pub(super) fn refuse(&self, limit: Limit, message: &str, event: &Event) -> relay::Verdict {
        self.metrics.event("rejected");
        self.settings.refusals.refuse(
            limit,
            &format_args!("refused event {} by {}: {message}", event.id, event.pubkey),
            self.runtime.now(),
        );
        relay::Verdict::rejected(message)
    }

    /// An event the relay follower learned from the relay at `relay` (id and signature
    /// checked).
    pub async fn accept_synced(self: &Arc<Self>, event: Event, relay: &str) -> relay::Verdict {
        let id = event.id;
        let verdict = self.accept(event, Submission::synced_from(relay)).await;
        debug!(%id, accepted = verdict.accepted, message = %verdict.message, "synced event decided");
        verdict
    }

    async fn accept_git_event(
        self: &Arc<Self>,
        event: Event,
        mut submission: Submission,
    ) -> relay::Verdict {
        let arrival = submission.arrival;
        if event.kind.as_u16() == KIND_DELETION {
            match self.deletion_targets(&event).await {
                Ok(DeletionTargets::AlreadyStored) => return relay::Verdict::accepted(DUPLICATE),
                Ok(DeletionTargets::Served(served)) => submission.deletes_served = served,
                Err(error) => return persist_failed(&error),
            }
        }
        let verdict = {
            let mut engine = self.engine.lock().unwrap_or_else(|e| e.into_inner());
            engine.handle_event(self.clock.now(), event.clone(), submission)
        };
        match verdict {
            Verdict::Rejected(message) => {
                self.metrics.event("rejected");
                relay::Verdict::rejected(message)
            }
            Verdict::Refused(refusal, message) => self.refuse(Limit::of(refusal), &message, &event),
            Verdict::Duplicate => {
                self.metrics.event("duplicate");
                relay::Verdict::accepted(DUPLICATE)
            }
            Verdict::Accepted(ticket) => {
                let stored = event.clone();
                let outcome = self
                    .persist(
                        ticket,
                        move |store| store.insert_queued(&stored),
                        |outcome| *outcome != InsertOutcome::Deleted,
                    )
                    .await;
                match outcome {
                    Ok(outcome) => self.served(event, outcome),
                    Err(error) => persist_failed(&error),
                }
            }
            Verdict::Waiting(ticket) => {
                self.metrics.event("waiting");
                let waiting = WaitingEvent {
                    event,
                    arrival,
                    expires_at: self.clock.unix_now() + self.settings.purgatory_expiry.as_secs(),
                };
                let repo = announced_repo(&waiting.event);
                let event_for_follow = waiting.event.clone();
                let written = self
                    .persist(
                        ticket,
                        move |store| store.put_waiting_queued(&waiting),
                        |()| true,
                    )
                    .await;
                match written {
                    Ok(()) => {
                        self.follow_waiting(&event_for_follow);
                        // The git endpoint must work the moment the client hears OK.
                        if let Some(repo) = repo {
                            if let Err(error) = self.git.create_repo(&repo).await {
                                warn!(%repo, %error, "creating the repository failed");
                            }
                        }
                        relay::Verdict::accepted(Verdict::WAITING_MESSAGE)
                    }
                    Err(error) => persist_failed(&error),
                }
            }
        }
    }

    /// What the store holds of a deletion request's targets (on the blocking pool): the
    /// engine takes a deletion only if it deletes something its author has here.
    async fn deletion_targets(&self, event: &Event) -> Result<DeletionTargets, String> {
        let max_targets = {
            let engine = self.engine.lock().unwrap_or_else(|e| e.into_inner());
            engine.config().max_deletion_tags
        };
        let store = self.store.clone();
        let event = event.clone();
        let found = unblock(&*self.runtime, move || {
            if store.get(&event.id)?.is_some() {
                return Ok(DeletionTargets::AlreadyStored);
            }
            let served = match graspd_core::events::parse(&event) {
                Ok(Some(GitEvent::Deletion(d))) => serves_a_target(&store, &d, max_targets)?,
                _ => false,
            };
            Ok(DeletionTargets::Served(served))
        })
        .await;
        match found {
            Ok(Ok(targets)) => Ok(targets),
            Ok(Err(error)) => Err(StoreError::to_string(&error)),
            Err(error) => Err(error.to_string()),
        }
    }

    /// Runs the store `write` for an admitted event, then reports `ticket` to the engine:
    /// `Persisted` if the write succeeded and `kept` says the store holds the event, else
    /// `PersistFailed`. Write and report run in a task of their own, so an EVENT whose
    /// connection closes meanwhile still ends its admission.
    async fn persist<T: Send + 'static>(
        self: &Arc<Self>,
        ticket: Ticket,
        write: impl FnOnce(&Store) -> PendingWrite<T> + Send + 'static,
        kept: fn(&T) -> bool,
    ) -> Result<T, String> {
        let (done, result) = async_channel::bounded(1);
        let node = Arc::clone(self);
        self.runtime.spawn(Box::pin(async move {
            let slot = node.writers.acquire().await;
            let written = committed(&node.runtime, write(&node.store)).await;
            drop(slot);
            let written = written.map_err(|error| error.to_string());
            let input = match &written {
                Ok(value) if kept(value) => Input::Persisted { ticket },
                _ => Input::PersistFailed { ticket },
            };
            // Durable first, then the engine may act on it (and dispatches what it queued).
            node.input(input);
            let _ = done.try_send(written);
        }));
        result
            .recv()
            .await
            .unwrap_or_else(|_| Err("the store write was abandoned".into()))
    }

    async fn accept_related(self: &Arc<Self>, event: Event) -> relay::Verdict {
        let store = self.store.clone();
        let stored = event.clone();
        let policy = self.policy();
        let slot = self.writers.acquire().await;
        let decided = unblock(&*self.runtime, move || {
            let max_references = store.reference_limits().per_event;
            let view = StoreView {
                store: &store,
                policy: &policy,
                max_tags: max_references,
            };
            related::accept_related(&stored, &view, max_references)
                .map(|()| store.insert_queued(&stored))
        })
        .await;
        let written = match decided {
            Ok(Ok(pending)) => Ok(Ok(committed(&self.runtime, pending).await)),
            Ok(Err(rejection)) => Ok(Err(rejection)),
            Err(error) => Err(error),
        };
        drop(slot);
        match written {
            Ok(Ok(Ok(outcome))) => self.served(event, outcome),
            Ok(Ok(Err(error))) => persist_failed(&error),
            Ok(Err(rejection)) => {
                self.metrics.event("rejected");
                relay::Verdict::rejected(rejection.to_string())
            }
            Err(error) => persist_failed(&error),
        }
    }

    fn served(&self, event: Event, outcome: InsertOutcome) -> relay::Verdict {
        match outcome {
            InsertOutcome::Stored { .. } => {
                self.metrics.event("accepted");
                self.follow(&event);
                self.publish_live(event);
                relay::Verdict::accepted("")
            }
            InsertOutcome::Duplicate => relay::Verdict::accepted(DUPLICATE),
            InsertOutcome::Superseded { by } => relay::Verdict::accepted(format!(
                "duplicate: a newer version ({by}) is already served"
            )),
            InsertOutcome::Deleted => {
                relay::Verdict::rejected("blocked: its author deleted this event")
            }
        }
    }
}

/// What the store holds of a deletion request's targets.
enum DeletionTargets {
    /// The request itself is stored already.
    AlreadyStored,
    /// Whether the store serves an event the request deletes.
    Served(bool),
}

/// Whether `store` serves an event `deletion` deletes: its author's, named by `e` id, or by
/// an `a` coordinate with a version no newer than the request (NIP-09). Looks at no more than
/// `max_targets` of each; deletions themselves are final.
fn serves_a_target(
    store: &Store,
    deletion: &Deletion,
    max_targets: usize,
) -> Result<bool, StoreError> {
    for id in deletion.event_ids.iter().take(max_targets) {
        if let Some(found) = store.get(id)? {
            if found.pubkey == deletion.author && found.kind.as_u16() != KIND_DELETION {
                return Ok(true);
            }
        }
    }
    let own = deletion
        .coordinates
        .iter()
        .filter(|c| c.author == deletion.author);
    for coordinate in own.take(max_targets) {
        let filter = Filter::new()
            .kind(Kind::from(coordinate.kind))
            .author(coordinate.author)
            .identifier(coordinate.identifier.as_str())
            .until(nostr::types::Timestamp::from(deletion.created_at))
            .limit(1);
        if !store.query(&[filter], 1)?.is_empty() {
            return Ok(true);
        }
    }
    Ok(false)
}

/// The repository an announcement asks for.
fn announced_repo(event: &Event) -> Option<graspd_core::RepoKey> {
    match graspd_core::events::parse(event) {
        Ok(Some(GitEvent::Announcement(a))) => {
            Some(graspd_core::RepoKey::new(a.owner, a.identifier))
        }
        _ => None,
    }
}

fn persist_failed(error: &dyn std::fmt::Display) -> relay::Verdict {
    warn!(%error, "could not persist an event");
    relay::Verdict::rejected(format!(
        "error: could not store the event ({error}); try again"
    ))
}

/// What the store serves, for related-event acceptance (runs on a blocking thread): what the
/// deny lists in force hide anchors nothing, so a reply to a denied author's issue is refused
/// like one to an issue that is not here. (The index of ids named by served events cannot
/// tell which served event named an id, and is not filtered.)
struct StoreView<'a> {
    store: &'a Store,
    policy: &'a Policy,
    max_tags: usize,
}

impl StoreView<'_> {
    fn visible(&self, event: &Event) -> bool {
        self.policy.serves(event, self.max_tags)
    }

    fn any(&self, filter: Filter) -> bool {
        self.store
            .query_visible(&[filter.limit(1)], 1, &|event| self.visible(event))
            .is_ok_and(|found| !found.is_empty())
    }
}

impl KnownEvents for StoreView<'_> {
    fn repo_accepted(&self, coordinate: &Coordinate) -> bool {
        self.any(
            Filter::new()
                .kind(Kind::from(KIND_ANNOUNCEMENT))
                .author(coordinate.author)
                .identifier(coordinate.identifier.as_str()),
        )
    }

    fn accepted_kind(&self, id: &EventId) -> Option<u16> {
        let found = self.store.get(id).ok().flatten();
        found
            .filter(|event| self.visible(event))
            .map(|event| event.kind.as_u16())
    }

    fn referenced_by_accepted(&self, id: &EventId) -> bool {
        self.store.is_referenced(id).unwrap_or(false)
    }

    fn has_repo(&self, author: &PublicKey) -> bool {
        self.any(
            Filter::new()
                .kind(Kind::from(KIND_ANNOUNCEMENT))
                .author(*author),
        )
    }
}
