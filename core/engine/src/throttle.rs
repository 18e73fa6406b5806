//! Per-remote-domain fetch throttle with hard guarantees.
//!
//! - in flight never above `max_concurrent`: a start is checked and recorded in one call;
//! - starts in any sliding window never above `max_per_window`;
//! - waiting keys (repositories) are served round-robin;
//! - a domain blocked by its window or a remote rate limit reports when it may start again
//!   (`wake_at`), so the engine arms a timer and the queue drains with nothing in flight;
//! - a domain with persistent DNS/TLS failures is skipped for `bad_skip`, and the failure count
//!   survives the skip, so the first failure after it re-arms the skip at once;
//! - the domain map is bounded; idle domains are evicted, never before their window empties.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::time::Duration;

use crate::config::Config;
use crate::time::Time;

/// The limits, taken from `Config`.
#[derive(Clone, Debug)]
pub struct Limits {
    pub max_concurrent: usize,
    pub max_per_window: usize,
    pub window: Duration,
    pub rate_limited_cooldown: Duration,
    pub bad_failures: u32,
    pub bad_skip: Duration,
    pub max_domains: usize,
    pub idle_ttl: Duration,
}

impl Limits {
    pub fn from_config(c: &Config) -> Limits {
        Limits {
            max_concurrent: c.max_concurrent_per_domain.max(1),
            max_per_window: c.max_per_minute_per_domain.max(1),
            window: c.rate_window,
            rate_limited_cooldown: c.rate_limited_cooldown,
            bad_failures: c.bad_domain_failures.max(1),
            bad_skip: c.bad_domain_skip,
            max_domains: c.max_domains.max(1),
            idle_ttl: c.domain_idle_ttl,
        }
    }
}

/// How a fetch against a domain ended, as far as the throttle cares.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Outcome {
    /// The remote answered (success, or an error only a live server gives).
    Reachable,
    /// DNS or TLS failure.
    Unreachable,
    /// The remote said "too many requests".
    RateLimited,
    /// Timeout, refused connection, ...: says nothing about the domain's health.
    Neutral,
}

/// The answer to `enqueue`.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Enqueued {
    Queued,
    AlreadyQueued,
    /// The domain has persistent DNS/TLS failures; try again after `until`.
    Skipped {
        until: Time,
    },
    /// Too many domains are tracked and none is idle long enough to evict.
    TableFull,
}

#[derive(Debug)]
struct Domain<K> {
    in_flight: usize,
    /// Start times inside the current window, oldest first (at most `max_per_window`).
    starts: VecDeque<Time>,
    /// Round-robin order; an entry is live only if `queued` holds the same generation.
    rotation: VecDeque<(K, u64)>,
    queued: BTreeMap<K, u64>,
    failures: u32,
    skip_until: Option<Time>,
    cooldown_until: Option<Time>,
    /// The key under which this domain sits in the idle index, if idle.
    idle_key: Option<Time>,
}

impl<K> Domain<K> {
    fn new() -> Domain<K> {
        Domain {
            in_flight: 0,
            starts: VecDeque::new(),
            rotation: VecDeque::new(),
            queued: BTreeMap::new(),
            failures: 0,
            skip_until: None,
            cooldown_until: None,
            idle_key: None,
        }
    }

    fn prune(&mut self, now: Time, window: Duration) {
        while self.starts.front().is_some_and(|&s| s + window <= now) {
            self.starts.pop_front();
        }
    }
}

/// Counts of the throttle's decisions, for metrics.
#[derive(Clone, Copy, Default, Debug, PartialEq, Eq)]
pub struct ThrottleCounters {
    /// Times a queued fetch could not start because a limit was reached.
    pub waits: u64,
    /// Domains put on the skip list.
    pub skips: u64,
    /// Domains evicted when idle.
    pub evictions: u64,
    /// Enqueues refused because the domain table was full.
    pub table_full: u64,
}

/// The throttle over all domains; `K` identifies what waits (a repository).
#[derive(Debug)]
pub struct Throttle<K> {
    limits: Limits,
    domains: BTreeMap<String, Domain<K>>,
    /// Idle domains by the time they may be evicted.
    idle: BTreeSet<(Time, String)>,
    /// Domains with fetches in flight (for metrics without a scan).
    busy: BTreeSet<String>,
    generation: u64,
    counters: ThrottleCounters,
}

impl<K: Ord + Clone> Throttle<K> {
    pub fn new(limits: Limits) -> Throttle<K> {
        Throttle {
            limits,
            domains: BTreeMap::new(),
            idle: BTreeSet::new(),
            busy: BTreeSet::new(),
            generation: 0,
            counters: ThrottleCounters::default(),
        }
    }

    /// Queues `key` for a start at `domain` (once; again after it was started or dequeued).
    pub fn enqueue(&mut self, now: Time, domain: &str, key: K) -> Enqueued {
        if !self.domains.contains_key(domain) {
            if self.domains.len() >= self.limits.max_domains {
                self.evict_idle(now);
            }
            if self.domains.len() >= self.limits.max_domains {
                self.counters.table_full += 1;
                return Enqueued::TableFull;
            }
            self.domains.insert(domain.to_owned(), Domain::new());
        }
        let d = self.domains.get_mut(domain).expect("inserted above");
        if let Some(until) = d.skip_until.filter(|&u| u > now) {
            self.touch(now, domain);
            return Enqueued::Skipped { until };
        }
        if d.queued.contains_key(&key) {
            return Enqueued::AlreadyQueued;
        }
        self.generation += 1;
        d.queued.insert(key.clone(), self.generation);
        d.rotation.push_back((key, self.generation));
        self.touch(now, domain);
        Enqueued::Queued
    }

    /// Withdraws `key` from `domain`'s queue, if queued.
    pub fn dequeue(&mut self, now: Time, domain: &str, key: &K) {
        let Some(d) = self.domains.get_mut(domain) else {
            return;
        };
        if d.queued.remove(key).is_none() {
            return;
        }
        // Stale rotation entries are skipped when popped; compact so they stay bounded.
        if d.rotation.len() > 2 * d.queued.len() + 16 {
            let queued = &d.queued;
            d.rotation.retain(|(k, g)| queued.get(k) == Some(g));
        }
        self.touch(now, domain);
    }

    /// If `domain` may start a fetch now, takes the next key in round-robin order and records
    /// the start (in flight + window) in the same step.
    pub fn try_start(&mut self, now: Time, domain: &str) -> Option<K> {
        let limits = &self.limits;
        let d = self.domains.get_mut(domain)?;
        if d.queued.is_empty() {
            return None;
        }
        d.prune(now, limits.window);
        let blocked = d.in_flight >= limits.max_concurrent
            || d.starts.len() >= limits.max_per_window
            || d.cooldown_until.is_some_and(|c| c > now)
            || d.skip_until.is_some_and(|s| s > now);
        if blocked {
            self.counters.waits += 1;
            return None;
        }
        let key = loop {
            let (k, g) = d.rotation.pop_front()?;
            if d.queued.get(&k) == Some(&g) {
                d.queued.remove(&k);
                break k;
            }
        };
        d.in_flight += 1;
        d.starts.push_back(now);
        self.busy.insert(domain.to_owned());
        self.touch(now, domain);
        Some(key)
    }

    /// Undoes the last `try_start` at `domain` when the caller found nothing to fetch.
    pub fn abandon_start(&mut self, now: Time, domain: &str) {
        let Some(d) = self.domains.get_mut(domain) else {
            return;
        };
        d.in_flight = d.in_flight.saturating_sub(1);
        d.starts.pop_back();
        if d.in_flight == 0 {
            self.busy.remove(domain);
        }
        self.touch(now, domain);
    }

    /// A started fetch ended (completed or timed out). Returns the keys dropped from the queue
    /// because the domain is now skipped.
    pub fn finish(&mut self, now: Time, domain: &str, outcome: Outcome) -> Vec<K> {
        let limits = self.limits.clone();
        let Some(d) = self.domains.get_mut(domain) else {
            return Vec::new();
        };
        d.in_flight = d.in_flight.saturating_sub(1);
        if d.in_flight == 0 {
            self.busy.remove(domain);
        }
        let mut dropped = Vec::new();
        match outcome {
            Outcome::Reachable => {
                d.failures = 0;
                d.skip_until = None;
            }
            Outcome::Unreachable => {
                d.failures = d.failures.saturating_add(1);
                let already = d.skip_until.is_some_and(|s| s > now);
                if d.failures >= limits.bad_failures && !already {
                    d.skip_until = Some(now + limits.bad_skip);
                    self.counters.skips += 1;
                    dropped.extend(std::mem::take(&mut d.queued).into_keys());
                    d.rotation.clear();
                }
            }
            Outcome::RateLimited => {
                let until = now + limits.rate_limited_cooldown;
                d.cooldown_until = Some(d.cooldown_until.map_or(until, |c| c.max(until)));
            }
            Outcome::Neutral => {}
        }
        self.touch(now, domain);
        dropped
    }

    /// When `domain`, which has queued keys but may not start now, may start again by the
    /// clock alone (window or cooldown). `None` if it can start now, has nothing queued, or
    /// waits only for a fetch in flight to finish.
    pub fn wake_at(&self, now: Time, domain: &str) -> Option<Time> {
        let d = self.domains.get(domain)?;
        if d.queued.is_empty() {
            return None;
        }
        let mut at: Option<Time> = None;
        // Starts are in time order: the ones still inside the window are a suffix.
        let first_live = d.starts.partition_point(|&s| s + self.limits.window <= now);
        let live = d.starts.len() - first_live;
        if live >= self.limits.max_per_window {
            // The start that leaves the window first frees one slot.
            let freeing = d.starts[d.starts.len() - self.limits.max_per_window];
            at = Some(freeing + self.limits.window);
        }
        for t in [d.cooldown_until, d.skip_until].into_iter().flatten() {
            if t > now {
                at = Some(at.map_or(t, |a| a.max(t)));
            }
        }
        at
    }

    /// When the domain is skipped for DNS/TLS failures, until when.
    pub fn skipped_until(&self, now: Time, domain: &str) -> Option<Time> {
        self.domains.get(domain)?.skip_until.filter(|&s| s > now)
    }

    pub fn in_flight(&self, domain: &str) -> usize {
        self.domains.get(domain).map_or(0, |d| d.in_flight)
    }

    /// Fetches in flight, per domain that has any.
    pub fn in_flight_by_domain(&self) -> Vec<(String, usize)> {
        self.busy
            .iter()
            .map(|name| (name.clone(), self.in_flight(name)))
            .collect()
    }

    pub fn domain_count(&self) -> usize {
        self.domains.len()
    }

    pub fn counters(&self) -> ThrottleCounters {
        self.counters
    }

    /// Forgets domains that have been idle past their eviction time.
    pub fn evict_idle(&mut self, now: Time) {
        while let Some((at, _)) = self.idle.first() {
            if *at > now {
                break;
            }
            let (_, name) = self.idle.pop_first().expect("checked non-empty");
            self.domains.remove(&name);
            self.counters.evictions += 1;
        }
    }

    /// Re-files `domain` in the idle index after a change.
    fn touch(&mut self, now: Time, domain: &str) {
        let limits = &self.limits;
        let Some(d) = self.domains.get_mut(domain) else {
            return;
        };
        if let Some(old) = d.idle_key.take() {
            self.idle.remove(&(old, domain.to_owned()));
        }
        if d.in_flight == 0 && d.queued.is_empty() {
            let mut at = now + limits.idle_ttl;
            let window_end = d.starts.back().map(|&s| s + limits.window);
            for t in [window_end, d.cooldown_until, d.skip_until]
                .into_iter()
                .flatten()
            {
                at = at.max(t);
            }
            d.idle_key = Some(at);
            self.idle.insert((at, domain.to_owned()));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits() -> Limits {
        Limits::from_config(&Config::default())
    }

    fn t(s: u64) -> Time {
        Time::from_millis(s * 1000)
    }

    #[test]
    fn never_more_than_max_concurrent_in_flight() {
        let mut th: Throttle<u32> = Throttle::new(limits());
        for k in 0..10 {
            th.enqueue(t(0), "a.example", k);
        }
        let started: Vec<u32> = std::iter::from_fn(|| th.try_start(t(0), "a.example")).collect();
        assert_eq!(started, [0, 1, 2, 3, 4]);
        assert_eq!(th.in_flight("a.example"), 5);
        assert_eq!(
            th.wake_at(t(0), "a.example"),
            None,
            "waits for a completion, not the clock"
        );
        th.finish(t(1), "a.example", Outcome::Reachable);
        assert_eq!(th.try_start(t(1), "a.example"), Some(5));
        assert_eq!(th.try_start(t(1), "a.example"), None);
    }

    #[test]
    fn sliding_window_caps_starts_and_wakes_when_it_frees() {
        let mut th: Throttle<u32> = Throttle::new(Limits {
            max_per_window: 3,
            ..limits()
        });
        for k in 0..5 {
            th.enqueue(t(0), "a.example", k);
        }
        assert_eq!(th.try_start(t(0), "a.example"), Some(0));
        th.finish(t(1), "a.example", Outcome::Reachable);
        assert_eq!(th.try_start(t(10), "a.example"), Some(1));
        th.finish(t(11), "a.example", Outcome::Reachable);
        assert_eq!(th.try_start(t(20), "a.example"), Some(2));
        th.finish(t(21), "a.example", Outcome::Reachable);
        // Nothing in flight, three starts in the last 60 s: blocked, and it says when to wake.
        assert_eq!(th.try_start(t(30), "a.example"), None);
        assert_eq!(th.wake_at(t(30), "a.example"), Some(t(60)));
        assert_eq!(th.try_start(t(59), "a.example"), None);
        assert_eq!(th.try_start(t(60), "a.example"), Some(3));
        assert_eq!(th.wake_at(t(60), "a.example"), Some(t(70)));
        assert!(th.counters().waits >= 2);
    }

    #[test]
    fn round_robin_across_keys() {
        let mut th: Throttle<&str> = Throttle::new(Limits {
            max_concurrent: 1,
            ..limits()
        });
        th.enqueue(t(0), "d", "r1");
        th.enqueue(t(0), "d", "r2");
        th.enqueue(t(0), "d", "r3");
        let mut order = Vec::new();
        for i in 0..6 {
            let k = th.try_start(t(i), "d").unwrap();
            order.push(k);
            th.finish(t(i), "d", Outcome::Reachable);
            th.enqueue(t(i), "d", k); // each repo has more to fetch: back of the line
        }
        assert_eq!(order, ["r1", "r2", "r3", "r1", "r2", "r3"]);
    }

    #[test]
    fn dequeued_keys_are_not_started_and_rotation_stays_bounded() {
        let mut th: Throttle<u32> = Throttle::new(limits());
        for round in 0..1000 {
            th.enqueue(t(0), "d", 7);
            th.dequeue(t(0), "d", &7);
            assert!(th.domains["d"].rotation.len() <= 17, "round {round}");
        }
        th.enqueue(t(0), "d", 8);
        assert_eq!(th.try_start(t(0), "d"), Some(8));
        assert_eq!(th.try_start(t(0), "d"), None);
    }

    #[test]
    fn abandon_start_gives_the_slot_and_the_window_back() {
        let mut th: Throttle<u32> = Throttle::new(Limits {
            max_concurrent: 1,
            max_per_window: 1,
            ..limits()
        });
        th.enqueue(t(0), "d", 1);
        th.enqueue(t(0), "d", 2);
        assert_eq!(th.try_start(t(0), "d"), Some(1));
        th.abandon_start(t(0), "d");
        assert_eq!(th.try_start(t(0), "d"), Some(2));
    }

    #[test]
    fn persistent_dns_failures_skip_the_domain_and_rearm_after_expiry() {
        let mut th: Throttle<u32> = Throttle::new(Limits {
            bad_failures: 2,
            ..limits()
        });
        th.enqueue(t(0), "bad", 1);
        th.enqueue(t(0), "bad", 2);
        th.enqueue(t(0), "bad", 3);
        th.try_start(t(0), "bad");
        th.try_start(t(0), "bad");
        assert!(th.finish(t(1), "bad", Outcome::Unreachable).is_empty());
        let dropped = th.finish(t(1), "bad", Outcome::Unreachable);
        assert_eq!(
            dropped,
            [3],
            "queued keys are handed back when the domain is skipped"
        );
        let until = t(1) + Duration::from_secs(12 * 3600);
        assert_eq!(th.enqueue(t(2), "bad", 4), Enqueued::Skipped { until });
        // After the skip expires the domain is tried again ...
        assert_eq!(th.enqueue(until, "bad", 4), Enqueued::Queued);
        assert_eq!(th.try_start(until, "bad"), Some(4));
        // ... and a single further failure re-arms the skip (no fresh grace count).
        th.finish(until, "bad", Outcome::Unreachable);
        assert!(th.skipped_until(until, "bad").is_some());
        assert_eq!(th.counters().skips, 2);
    }

    #[test]
    fn success_clears_the_failure_count() {
        let mut th: Throttle<u32> = Throttle::new(Limits {
            bad_failures: 2,
            ..limits()
        });
        for k in 0..3 {
            th.enqueue(t(0), "d", k);
            th.try_start(t(0), "d");
        }
        th.finish(t(1), "d", Outcome::Unreachable);
        th.finish(t(1), "d", Outcome::Reachable);
        th.finish(t(1), "d", Outcome::Unreachable);
        assert_eq!(th.skipped_until(t(1), "d"), None);
    }

    #[test]
    fn remote_rate_limit_cools_the_domain_down_and_wakes_it() {
        let mut th: Throttle<u32> = Throttle::new(limits());
        th.enqueue(t(0), "d", 1);
        th.enqueue(t(0), "d", 2);
        th.try_start(t(0), "d");
        th.finish(t(5), "d", Outcome::RateLimited);
        assert_eq!(th.try_start(t(5), "d"), None);
        assert_eq!(th.wake_at(t(5), "d"), Some(t(65)));
        assert_eq!(th.try_start(t(65), "d"), Some(2));
    }

    #[test]
    fn domain_table_is_bounded_and_evicts_idle_domains_after_their_window() {
        let mut th: Throttle<u32> = Throttle::new(Limits {
            max_domains: 2,
            idle_ttl: Duration::from_secs(10),
            ..limits()
        });
        th.enqueue(t(0), "a", 1);
        th.try_start(t(0), "a");
        th.finish(t(1), "a", Outcome::Reachable);
        th.enqueue(t(0), "b", 1);
        // "a" is idle but its last start is still inside the window: not evictable yet.
        assert_eq!(th.enqueue(t(30), "c", 1), Enqueued::TableFull);
        assert_eq!(th.enqueue(t(60), "c", 1), Enqueued::Queued);
        assert_eq!(th.domain_count(), 2);
        assert_eq!(th.counters().evictions, 1);
        assert_eq!(th.counters().table_full, 1);
    }
}
