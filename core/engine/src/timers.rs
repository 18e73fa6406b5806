//! Named deadlines. Every timer the engine arms has a reason; the host arms one OS timer at the
//! earliest (`poll_timeout`). Both directions are indexed, so arming, moving, cancelling and
//! popping cost O(log n) whatever the number of timers.

use std::collections::{BTreeMap, BTreeSet};

use crate::ids::{CommandId, EventId, RepoKey};
use crate::time::Time;

/// Why the engine wants to be woken.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Debug)]
pub enum TimerReason {
    /// Start the next sync attempt for this repository.
    SyncAttempt(RepoKey),
    /// The fetch has not reported: count it failed and free its slot.
    FetchDeadline(CommandId),
    /// A waiting event's git data did not arrive in time.
    Expiry(EventId),
    /// A `refs/nostr/<id>` push whose event never arrived: delete the ref.
    PlaceholderExpiry(RepoKey, EventId),
    /// A domain's sliding rate window (or a remote's rate-limit cooldown) frees a start.
    ThrottleWindow(String),
}

/// A set of timers, at most one per reason.
#[derive(Default, Debug)]
pub struct Timers {
    by_time: BTreeSet<(Time, TimerReason)>,
    by_reason: BTreeMap<TimerReason, Time>,
}

impl Timers {
    pub fn new() -> Timers {
        Timers::default()
    }

    /// Arms `reason` at `at`, replacing any earlier setting.
    pub fn set(&mut self, reason: TimerReason, at: Time) {
        if let Some(old) = self.by_reason.insert(reason.clone(), at) {
            self.by_time.remove(&(old, reason.clone()));
        }
        self.by_time.insert((at, reason));
    }

    /// Arms `reason` at `at` unless it is already armed earlier (never delays a wake-up).
    pub fn set_no_later_than(&mut self, reason: TimerReason, at: Time) {
        match self.by_reason.get(&reason) {
            Some(&old) if old <= at => {}
            _ => self.set(reason, at),
        }
    }

    pub fn cancel(&mut self, reason: &TimerReason) -> Option<Time> {
        let at = self.by_reason.remove(reason)?;
        self.by_time.remove(&(at, reason.clone()));
        Some(at)
    }

    pub fn get(&self, reason: &TimerReason) -> Option<Time> {
        self.by_reason.get(reason).copied()
    }

    /// The earliest timer.
    pub fn next(&self) -> Option<(Time, &TimerReason)> {
        self.by_time.first().map(|(t, r)| (*t, r))
    }

    /// Removes and returns the earliest timer due at or before `now`.
    pub fn pop_due(&mut self, now: Time) -> Option<(Time, TimerReason)> {
        if self.by_time.first()?.0 > now {
            return None;
        }
        let (at, reason) = self.by_time.pop_first()?;
        self.by_reason.remove(&reason);
        Some((at, reason))
    }

    pub fn len(&self) -> usize {
        self.by_reason.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_reason.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(ms: u64) -> Time {
        Time::from_millis(ms)
    }

    #[test]
    fn pops_in_deadline_order_and_only_when_due() {
        let mut timers = Timers::new();
        timers.set(TimerReason::FetchDeadline(CommandId(2)), t(20));
        timers.set(TimerReason::FetchDeadline(CommandId(1)), t(10));
        assert_eq!(timers.next().unwrap().0, t(10));
        assert!(timers.pop_due(t(9)).is_none());
        assert_eq!(
            timers.pop_due(t(25)),
            Some((t(10), TimerReason::FetchDeadline(CommandId(1))))
        );
        assert_eq!(
            timers.pop_due(t(25)),
            Some((t(20), TimerReason::FetchDeadline(CommandId(2))))
        );
        assert!(timers.is_empty());
    }

    #[test]
    fn one_timer_per_reason_moves_and_cancels() {
        let mut timers = Timers::new();
        let r = TimerReason::ThrottleWindow("example.org".into());
        timers.set(r.clone(), t(50));
        timers.set(r.clone(), t(70));
        assert_eq!(timers.len(), 1);
        timers.set_no_later_than(r.clone(), t(90));
        assert_eq!(timers.get(&r), Some(t(70)));
        timers.set_no_later_than(r.clone(), t(60));
        assert_eq!(timers.get(&r), Some(t(60)));
        assert_eq!(timers.cancel(&r), Some(t(60)));
        assert!(timers.next().is_none());
    }
}
