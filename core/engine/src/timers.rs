//! Named deadlines. Every timer the engine arms has a reason; the host arms one OS timer at the
//! earliest (`poll_timeout`). Both directions are indexed, so arming, moving, cancelling and
//! popping cost O(log n) whatever the number of timers.

use std::collections::{BTreeSet, VecDeque};

use crate::ids::{CommandId, EventId, RepoKey};
use crate::lookup::LookupMap;
use crate::time::Time;

/// Why the engine wants to be woken.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Debug)]
pub enum TimerReason {
    /// Start the next sync attempt for this repository.
    SyncAttempt(RepoKey),
    /// The attempt's current remote domain is slow: start fetching from the next one too.
    FetchHedge(RepoKey),
    /// The fetch has not reported: count it failed and free its slot.
    FetchDeadline(CommandId),
    /// An Inspect or Apply has not reported: count it failed.
    CommandDeadline(CommandId),
    /// A waiting event's git data did not arrive in time.
    Expiry(EventId),
    /// A `refs/nostr/<id>` push whose event never arrived: delete the ref.
    PlaceholderExpiry(RepoKey, EventId),
    /// A domain's sliding rate window (or a remote's rate-limit cooldown) frees a start.
    ThrottleWindow(String),
}

/// A set of timers, at most one per reason.
///
/// Purgatory expiries (one per waiting event, the bulk of all timers) live in their own compact
/// set keyed by `(deadline, event id)`; the caller knows each event's deadline, so no reverse
/// map is needed for them.
///
/// Command deadlines (fetches; Inspect and Apply) are `issue time + a constant`, so each kind
/// is a FIFO in deadline order: O(1) to arm. A completed command's entry is dropped lazily
/// (`prune_deadlines`), so the front is always a command still running.
#[derive(Default, Debug)]
pub struct Timers {
    by_time: BTreeSet<(Time, TimerReason)>,
    by_reason: LookupMap<TimerReason, Time>,
    expiries: BTreeSet<(Time, EventId)>,
    fetch_deadlines: VecDeque<(Time, CommandId)>,
    command_deadlines: VecDeque<(Time, CommandId)>,
}

/// Appends to a deadline FIFO, keeping it sorted (a deadline is never earlier than the last).
fn push_sorted(fifo: &mut VecDeque<(Time, CommandId)>, at: Time, id: CommandId) {
    let at = fifo.back().map_or(at, |(last, _)| at.max(*last));
    fifo.push_back((at, id));
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

    #[cfg(test)]
    pub fn get(&self, reason: &TimerReason) -> Option<Time> {
        self.by_reason.get(reason).copied()
    }

    /// Arms the purgatory expiry of event `id` at `at` (one per event; not moved).
    pub fn set_expiry(&mut self, id: EventId, at: Time) {
        self.expiries.insert((at, id));
    }

    /// Cancels the expiry armed by `set_expiry(id, at)`.
    pub fn cancel_expiry(&mut self, id: EventId, at: Time) {
        self.expiries.remove(&(at, id));
    }

    /// Arms the deadline of fetch `id` (deadlines arrive in non-decreasing order).
    pub fn push_fetch_deadline(&mut self, id: CommandId, at: Time) {
        push_sorted(&mut self.fetch_deadlines, at, id);
    }

    /// Arms the deadline of Inspect/Apply `id` (deadlines arrive in non-decreasing order).
    pub fn push_command_deadline(&mut self, id: CommandId, at: Time) {
        push_sorted(&mut self.command_deadlines, at, id);
    }

    /// Drops deadlines of commands that are no longer running from the fronts of the FIFOs,
    /// and compacts them when finished commands pile up behind a long-running one.
    pub fn prune_deadlines(&mut self, running: impl Fn(CommandId) -> bool, live: usize) {
        for fifo in [&mut self.fetch_deadlines, &mut self.command_deadlines] {
            while fifo.front().is_some_and(|(_, id)| !running(*id)) {
                fifo.pop_front();
            }
            if fifo.len() > 2 * live + 1024 {
                fifo.retain(|(_, id)| running(*id));
            }
        }
    }

    /// The earliest timer.
    pub fn next(&self) -> Option<(Time, TimerReason)> {
        let mut best: Option<(Time, TimerReason)> =
            self.by_time.first().map(|(t, r)| (*t, r.clone()));
        let mut consider = |at: Time, reason: TimerReason| {
            if best.as_ref().is_none_or(|(b, _)| at < *b) {
                best = Some((at, reason));
            }
        };
        if let Some((at, id)) = self.expiries.first() {
            consider(*at, TimerReason::Expiry(*id));
        }
        if let Some((at, id)) = self.fetch_deadlines.front() {
            consider(*at, TimerReason::FetchDeadline(*id));
        }
        if let Some((at, id)) = self.command_deadlines.front() {
            consider(*at, TimerReason::CommandDeadline(*id));
        }
        best
    }

    /// Removes and returns the earliest timer due at or before `now`.
    pub fn pop_due(&mut self, now: Time) -> Option<(Time, TimerReason)> {
        let (at, reason) = self.next()?;
        if at > now {
            return None;
        }
        match &reason {
            TimerReason::Expiry(id) if self.expiries.first() == Some(&(at, *id)) => {
                self.expiries.pop_first();
            }
            TimerReason::FetchDeadline(id)
                if self.fetch_deadlines.front().map(|(t, i)| (*t, *i)) == Some((at, *id)) =>
            {
                self.fetch_deadlines.pop_front();
            }
            TimerReason::CommandDeadline(id)
                if self.command_deadlines.front().map(|(t, i)| (*t, *i)) == Some((at, *id)) =>
            {
                self.command_deadlines.pop_front();
            }
            _ => {
                self.by_time.pop_first();
                self.by_reason.remove(&reason);
            }
        }
        Some((at, reason))
    }

    /// Timers armed (command deadlines counted until pruned).
    pub fn len(&self) -> usize {
        self.by_reason.len()
            + self.expiries.len()
            + self.fetch_deadlines.len()
            + self.command_deadlines.len()
    }

    #[cfg(test)]
    pub fn is_empty(&self) -> bool {
        self.len() == 0
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

    #[test]
    fn expiries_interleave_with_other_timers_by_deadline() {
        let mut timers = Timers::new();
        let id = EventId::from_byte_array([1; 32]);
        timers.set_expiry(id, t(15));
        timers.set(TimerReason::FetchDeadline(CommandId(1)), t(10));
        timers.set(TimerReason::FetchDeadline(CommandId(2)), t(20));
        assert_eq!(timers.len(), 3);
        let order: Vec<TimerReason> = std::iter::from_fn(|| timers.pop_due(t(30)))
            .map(|(_, r)| r)
            .collect();
        assert_eq!(
            order,
            [
                TimerReason::FetchDeadline(CommandId(1)),
                TimerReason::Expiry(id),
                TimerReason::FetchDeadline(CommandId(2))
            ]
        );
        timers.set_expiry(id, t(40));
        timers.cancel_expiry(id, t(40));
        assert!(timers.is_empty());
    }

    #[test]
    fn command_deadlines_are_fifos_pruned_of_finished_commands() {
        let mut timers = Timers::new();
        timers.push_fetch_deadline(CommandId(1), t(100));
        timers.push_fetch_deadline(CommandId(2), t(110));
        timers.push_command_deadline(CommandId(3), t(105));
        // A deadline is never earlier than the one before it.
        timers.push_fetch_deadline(CommandId(4), t(90));
        assert_eq!(
            timers.next(),
            Some((t(100), TimerReason::FetchDeadline(CommandId(1))))
        );
        // Command 1 finished: its deadline disappears from the front.
        timers.prune_deadlines(|id| id != CommandId(1), 3);
        assert_eq!(
            timers.next(),
            Some((t(105), TimerReason::CommandDeadline(CommandId(3))))
        );
        let due: Vec<TimerReason> = std::iter::from_fn(|| timers.pop_due(t(200)))
            .map(|(_, r)| r)
            .collect();
        assert_eq!(
            due,
            [
                TimerReason::CommandDeadline(CommandId(3)),
                TimerReason::FetchDeadline(CommandId(2)),
                TimerReason::FetchDeadline(CommandId(4)),
            ]
        );
    }
}
