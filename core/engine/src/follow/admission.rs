//! Late admission: what was refused for lack of room (a relay when `max_relays` were tracked,
//! a value when a relay's subscription budget was full) is let in when room frees, oldest
//! refusal first, through the same checks as a first admission (`track`, `Relay::insert`).
//!
//! Runs only from `reconcile` after an input removed something (`slot_may_have_freed`,
//! `budget_freed`), never on a timer: a refusal is retried once per freeing event at most.

use super::filters::Inserted;
use super::waitlist::Remembered;
use super::{RelayFollower, Value};
use crate::ids::RepoKey;

impl RelayFollower {
    pub(super) fn admit_waiting(&mut self) {
        if std::mem::take(&mut self.slot_may_have_freed) {
            self.admit_waiting_relays();
        }
        for url in std::mem::take(&mut self.budget_freed) {
            self.admit_waiting_values(&url);
        }
    }

    /// Tracks waiting relays while slots are free (or held by idle relays), oldest first, and
    /// follows every repository listing each on it.
    fn admit_waiting_relays(&mut self) {
        // Each round admits at least one relay or ends, so this is bounded by the listed
        // relays; more than one round only when refusals were dropped from the full list.
        loop {
            if self.waiting_relays.overflowed() {
                self.find_lost_relays();
            }
            let mut admitted = false;
            let mut room = true;
            for url in self.waiting_relays.oldest_first() {
                if !self.track(&url) {
                    // No slot: the younger refusals wait for the next freeing event.
                    room = false;
                    break;
                }
                self.waiting_relays.remove(&url);
                self.stats.relays_admitted_late += 1;
                self.attach_listers(&url);
                admitted = true;
            }
            if !room || !admitted || !self.waiting_relays.overflowed() {
                break;
            }
        }
        // Refill the places the admitted left, so the list shows what still waits.
        if self.waiting_relays.overflowed() {
            self.find_lost_relays();
        }
    }

    /// After refusals were dropped from the full waiting list: listed relays not tracked, in
    /// URL order, queued behind the ones remembered.
    fn find_lost_relays(&mut self) {
        let lost: Vec<String> = self
            .listers
            .keys()
            .filter(|url| !self.relays.contains_key(*url) && !self.waiting_relays.contains(*url))
            .cloned()
            .collect();
        self.waiting_relays.clear_overflow();
        for url in lost {
            if self.waiting_relays.remember(url) == Remembered::Dropped {
                break;
            }
        }
    }

    /// Inserts the values waiting on `url`, oldest first, while its budget has room. A value
    /// that still does not fit stays (one of the other kind may fit in its own chunks).
    fn admit_waiting_values(&mut self, url: &str) {
        // Each round admits at least one value or ends (bounded by the relay's budget).
        while self.admit_waiting_values_once(url) {
            if !self
                .relays
                .get(url)
                .is_some_and(|relay| relay.waiting.overflowed())
            {
                break;
            }
        }
    }

    /// One pass over `url`'s waiting values; true if one was admitted.
    fn admit_waiting_values_once(&mut self, url: &str) -> bool {
        let (size, max_subs) = (
            self.config.chunk_size,
            self.config.max_subscriptions_per_relay,
        );
        let Some(relay) = self.relays.get(url) else {
            return false;
        };
        if relay.waiting.overflowed() {
            self.find_lost_values(url);
        }
        let Some(relay) = self.relays.get(url) else {
            return false;
        };
        let waiting = relay.waiting.oldest_first();
        let still_wanted: Vec<bool> = waiting.iter().map(|v| self.wants(url, v)).collect();
        let relay = self.relays.get_mut(url).expect("checked above");
        let mut admitted = false;
        for (value, wanted) in waiting.into_iter().zip(still_wanted) {
            if !wanted {
                relay.waiting.remove(&value);
                continue;
            }
            match relay.insert(&value, size, max_subs) {
                Inserted::New => {
                    relay.dirty = true;
                    relay.waiting.remove(&value);
                    self.stats.values_admitted_late += 1;
                    self.needs_reconcile = true;
                    admitted = true;
                }
                Inserted::AlreadyThere => {
                    relay.waiting.remove(&value);
                }
                Inserted::NoRoom => {}
            }
        }
        // Refill the places the admitted left, so the list shows what still waits.
        if relay.waiting.overflowed() {
            self.find_lost_values(url);
        }
        admitted
    }

    /// After refusals were dropped from `url`'s full waiting list: the values it should follow
    /// and does not, queued behind the ones remembered.
    fn find_lost_values(&mut self, url: &str) {
        let repos: Vec<RepoKey> = if self.bootstrap.contains(url) {
            self.repos.keys().cloned().collect()
        } else {
            self.listers
                .get(url)
                .into_iter()
                .flatten()
                .filter(|key| self.repos.get(*key).is_some_and(|e| e.relays.contains(url)))
                .cloned()
                .collect()
        };
        let mut lost: Vec<Value> = Vec::new();
        let mut threads = Vec::new();
        for key in &repos {
            lost.push(Value::Repo(key.clone()));
            for id in self.threads_by_repo.get(key).into_iter().flatten() {
                threads.push(Value::Thread(*id));
            }
        }
        lost.extend(threads);
        let Some(relay) = self.relays.get_mut(url) else {
            return;
        };
        relay.waiting.clear_overflow();
        for value in lost {
            if relay.follows(&value) || relay.waiting.contains(&value) {
                continue;
            }
            if relay.waiting.remember(value) == Remembered::Dropped {
                break;
            }
        }
    }

    /// Whether `url` should still be asked about `value`.
    pub(super) fn wants(&self, url: &str, value: &Value) -> bool {
        let repo = match value {
            Value::Repo(key) => key,
            Value::Thread(id) => match self.threads.get(id) {
                Some((key, _)) => key,
                None => return false,
            },
        };
        self.bootstrap.contains(url)
            || self
                .repos
                .get(repo)
                .is_some_and(|entry| entry.relays.contains(url))
    }
}
