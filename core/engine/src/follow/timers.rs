//! Named deadlines of the follower; the host arms one OS timer at the earliest.

use std::collections::{BTreeMap, BTreeSet};

use super::ConnectionId;
use crate::time::Time;

/// Why the follower wants to be woken.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Debug)]
pub enum FollowTimer {
    /// A relay's backoff has elapsed: connect again if it is still wanted.
    Reconnect(String),
    /// A connection has not reported `Connected`: count it failed.
    ConnectDeadline(ConnectionId),
    /// Send a relay the subscription changes gathered since the last batch.
    Resubscribe(String),
}

/// At most one timer per reason, indexed both ways.
#[derive(Default, Debug)]
pub(super) struct Timers {
    by_time: BTreeSet<(Time, FollowTimer)>,
    by_reason: BTreeMap<FollowTimer, Time>,
}

impl Timers {
    /// Arms `reason` at `at`, replacing any earlier setting.
    pub fn set(&mut self, reason: FollowTimer, at: Time) {
        if let Some(old) = self.by_reason.insert(reason.clone(), at) {
            self.by_time.remove(&(old, reason.clone()));
        }
        self.by_time.insert((at, reason));
    }

    /// Arms `reason` at `at` unless it is already armed (a pending batch is not delayed).
    pub fn set_if_unarmed(&mut self, reason: FollowTimer, at: Time) {
        if !self.by_reason.contains_key(&reason) {
            self.set(reason, at);
        }
    }

    pub fn cancel(&mut self, reason: &FollowTimer) {
        if let Some(at) = self.by_reason.remove(reason) {
            self.by_time.remove(&(at, reason.clone()));
        }
    }

    pub fn next(&self) -> Option<(Time, &FollowTimer)> {
        self.by_time.first().map(|(t, r)| (*t, r))
    }

    pub fn pop_due(&mut self, now: Time) -> Option<FollowTimer> {
        if self.by_time.first()?.0 > now {
            return None;
        }
        let (_, reason) = self.by_time.pop_first()?;
        self.by_reason.remove(&reason);
        Some(reason)
    }
}
