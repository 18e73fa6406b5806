//! Two-phase admission: `handle_event` decides, and the engine acts on the event only once the
//! host reports it durable (`Input::Persisted`); `Input::PersistFailed` drops the decision.
//!
//! Nothing an admitted event changes (purgatory and its indexes, accepted announcements,
//! deletions of waiting events, the memory of expired ids) is touched before `Persisted`, so a
//! failed store write leaves the engine exactly as if the event never arrived, and no Inspect,
//! Apply or `Released` can run ahead of the host's write.

use super::Engine;
use crate::engine::types::{EngineEvent, Refusal, Ticket, Verdict};
use crate::events::{Announcement, Deletion};
use crate::purgatory::{Arrival, Waiting};
use crate::time::Time;

/// What an admitted event does once it is durable.
#[derive(Debug)]
pub(super) enum Admission {
    /// Wait in purgatory and be scheduled; `synced_from` is the relay a synced event came
    /// from, which can make its first fetch start at once.
    Wait {
        waiting: Waiting,
        synced_from: Option<String>,
    },
    /// A kind 5 deletion: remove the waiting events it names.
    Delete(Deletion),
    /// An announcement taken as accepted: a maintainer's (`hosted` false) or a newer one of a
    /// repository already served.
    Announce {
        announcement: Announcement,
        hosted: bool,
    },
}

impl Engine {
    /// Holds `admission` until the host reports on its ticket: `Waiting` or `Accepted` with
    /// that ticket, or `rate-limited` when too many are held. Admissions that will wait count
    /// toward the waiting limits with the waiting events; the others are bounded by
    /// `max_waiting` on their own.
    pub(super) fn hold(&mut self, admission: Admission) -> Verdict {
        let refused = match &admission {
            Admission::Wait { waiting, .. } => self.over_waiting_limit(waiting),
            _ if self.admissions.len() >= self.config.max_waiting => Some(waiting_is_full()),
            _ => None,
        };
        if let Some(refused) = refused {
            return refused;
        }
        self.next_ticket += 1;
        let ticket = Ticket(self.next_ticket);
        let verdict = match &admission {
            Admission::Wait { waiting, .. } => {
                self.pending.add(*waiting.parsed.author(), waiting.client);
                Verdict::Waiting(ticket)
            }
            _ => Verdict::Accepted(ticket),
        };
        self.admissions.insert(ticket, admission);
        verdict
    }

    /// The refusal of `waiting` if purgatory, with the admissions that will wait, holds
    /// `max_waiting` events, or as many of its author's or of its client address's as they
    /// may have waiting.
    fn over_waiting_limit(&self, waiting: &Waiting) -> Option<Verdict> {
        let (held, pending, config) = (self.purgatory.shares(), &self.pending, &self.config);
        if self.purgatory.len() + pending.total() >= config.max_waiting {
            return Some(waiting_is_full());
        }
        let author = waiting.parsed.author();
        if held.of_author(author) + pending.of_author(author) >= config.max_waiting_per_author {
            let limit = config.max_waiting_per_author;
            return Some(share_is_full(
                Refusal::WaitingPerAuthor,
                limit,
                "of this author",
            ));
        }
        let address = waiting.client?;
        if held.of_address(&address) + pending.of_address(&address)
            >= config.max_waiting_per_address
        {
            let limit = config.max_waiting_per_address;
            return Some(share_is_full(
                Refusal::WaitingPerAddress,
                limit,
                "from your address",
            ));
        }
        None
    }

    fn release_ticket(&mut self, ticket: Ticket) -> Option<Admission> {
        let admission = self.admissions.remove(&ticket)?;
        if let Admission::Wait { waiting, .. } = &admission {
            self.pending.remove(waiting.parsed.author(), waiting.client);
        }
        Some(admission)
    }

    /// The host stored the event: it takes effect now.
    pub(super) fn persisted(&mut self, now: Time, ticket: Ticket) {
        match self.release_ticket(ticket) {
            Some(Admission::Wait {
                waiting,
                synced_from,
            }) => {
                let id = *waiting.parsed.id();
                if waiting.arrival == Arrival::Published {
                    // Published again after it expired: it gets a new life.
                    self.purgatory.forget_expired(&id);
                }
                // Admitted twice at once (two tickets) and taken in, or released, meanwhile.
                if self.purgatory.contains(&id)
                    || self.is_accepted(&waiting.parsed)
                    || self.purgatory.was_released_pr(now, &id)
                {
                    return;
                }
                // The operator's lists changed while it was being stored.
                if self.config.policy.check_git_event(&waiting.parsed).is_err() {
                    self.counters.withdrawn += 1;
                    self.events.push_back(EngineEvent::Withdrawn { id });
                    return;
                }
                // A published event is inspected at once (its data may be here already);
                // synced ones wait for their first attempt (500 ms), which starts with an
                // Inspect, so a burst of synced events costs one Inspect per repository.
                let inspect_now = waiting.arrival == Arrival::Published;
                self.admit(now, waiting, inspect_now, synced_from.as_deref());
            }
            Some(Admission::Delete(deletion)) => self.apply_deletion(&deletion),
            Some(Admission::Announce {
                announcement,
                hosted,
            }) => self.accepted.add_announcement(announcement, hosted),
            None => {}
        }
    }

    /// The host could not store the event: forget the decision.
    pub(super) fn persist_failed(&mut self, ticket: Ticket) {
        self.release_ticket(ticket);
    }
}

/// The refusal of an event while `limit` events `whose` (its author's, or its address's) wait.
fn share_is_full(refusal: Refusal, limit: usize, whose: &str) -> Verdict {
    Verdict::Refused(
        refusal,
        format!(
            "rate-limited: {limit} events {whose} are already waiting here for their git data; \
             push it, or try again once some are served or expire"
        ),
    )
}

/// The refusal of an event while `max_waiting` events wait.
fn waiting_is_full() -> Verdict {
    Verdict::Refused(
        Refusal::Waiting,
        "rate-limited: too many events are waiting for git data; try again later".into(),
    )
}
