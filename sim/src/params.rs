//! The engine configuration a run uses, drawn from the seed, and the bounds the invariants and
//! the liveness check derive from it.

use std::fmt;
use std::time::Duration;

use crate::faults::Fault;
use crate::rng::Rng;
use crate::world::{ms, World};

/// The configuration values the simulator draws and checks. `adapter.rs` turns them into the
/// engine's `Config`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Params {
    pub purgatory_expiry: Duration,
    pub first_attempt_after_synced: Duration,
    pub first_attempt_after_published: Duration,
    pub backoff: Vec<Duration>,
    pub fetch_timeout: Duration,
    pub max_concurrent_per_domain: usize,
    pub max_per_minute_per_domain: usize,
    pub rate_window: Duration,
    pub rate_limited_cooldown: Duration,
    pub bad_domain_failures: u32,
    pub bad_domain_skip: Duration,
    pub max_waiting: usize,
    pub max_domains: usize,
    pub domain_idle_ttl: Duration,
    pub placeholder_expiry: Duration,
}

impl Default for Params {
    /// The production defaults (the established server's values, PROTOCOL.md section 11).
    fn default() -> Params {
        Params {
            purgatory_expiry: Duration::from_secs(30 * 60),
            first_attempt_after_synced: Duration::from_millis(500),
            first_attempt_after_published: Duration::from_secs(1),
            backoff: [20, 40, 80, 120].map(Duration::from_secs).to_vec(),
            fetch_timeout: Duration::from_secs(120),
            max_concurrent_per_domain: 5,
            max_per_minute_per_domain: 60,
            rate_window: Duration::from_secs(60),
            rate_limited_cooldown: Duration::from_secs(60),
            bad_domain_failures: 2,
            bad_domain_skip: Duration::from_secs(12 * 3600),
            max_waiting: 1_000_000,
            max_domains: 10_000,
            domain_idle_ttl: Duration::from_secs(3600),
            placeholder_expiry: Duration::from_secs(30 * 60),
        }
    }
}

impl Params {
    /// A configuration drawn from the seed: sometimes the defaults, often tighter limits so the
    /// throttle, bounds and expiry paths are exercised in short runs.
    pub fn draw(rng: &mut Rng) -> Params {
        let mut p = Params::default();
        if rng.percent(20) {
            return p;
        }
        p.purgatory_expiry = Duration::from_secs(rng.range(10, 30) * 60);
        p.first_attempt_after_published = Duration::from_secs(rng.range(5, 180));
        p.first_attempt_after_synced = Duration::from_millis(rng.range(100, 2_000));
        let base = rng.range(2, 20);
        p.backoff = (0..rng.range(1, 4))
            .map(|i| Duration::from_secs(base << i))
            .collect();
        p.fetch_timeout = Duration::from_secs(rng.range(5, 120));
        p.max_concurrent_per_domain = rng.range(1, 5) as usize;
        p.max_per_minute_per_domain = rng.range(1, 60) as usize;
        p.rate_limited_cooldown = Duration::from_secs(rng.range(5, 60));
        p.bad_domain_failures = rng.range(1, 3) as u32;
        p.bad_domain_skip = Duration::from_secs(rng.range(30, 600));
        p.max_waiting = *rng.pick(&[8, 30, 1_000]);
        p.max_domains = *rng.pick(&[2, 4, 1_000]);
        p.domain_idle_ttl = Duration::from_secs(rng.range(60, 3_600));
        p.placeholder_expiry = Duration::from_secs(rng.range(5, 30) * 60);
        p
    }

    pub fn max_backoff(&self) -> Duration {
        self.backoff.iter().copied().max().unwrap_or(Duration::ZERO)
    }

    /// After the world heals, an event whose data is reachable is released within this long:
    /// its first attempt, two backoff steps, a skip for a domain marked bad before the heal
    /// (only if some domain had DNS or TLS faults) or a rate-limit cooldown (only if some was
    /// rate limited), a fetch that hangs until its deadline, then enough rate windows for one
    /// domain's queue to drain, plus slack for latencies and inspections.
    pub fn liveness_bound(&self, world: &World) -> Duration {
        let faults = || {
            world
                .domains
                .iter()
                .flat_map(|d| d.faults.iter().map(|w| w.fault))
        };
        let bad = faults().any(|f| matches!(f, Fault::DnsFailure | Fault::TlsFailure));
        let limited = faults().any(|f| matches!(f, Fault::RateLimited));
        let first = self
            .first_attempt_after_published
            .max(self.first_attempt_after_synced);
        let mut skip = Duration::ZERO;
        if bad {
            skip = skip.max(self.bad_domain_skip);
        }
        if limited {
            skip = skip.max(self.rate_limited_cooldown);
        }
        let fetches = world.events.len() * 2;
        let windows = fetches.div_ceil(self.max_per_minute_per_domain.max(1)) as u32 + 1;
        first
            + self.max_backoff() * 2
            + skip
            + self.fetch_timeout * 2
            + self.rate_window * windows
            + Duration::from_secs(30)
    }
}

impl fmt::Display for Params {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let backoff: Vec<String> = self.backoff.iter().map(|d| ms(*d).to_string()).collect();
        write!(
            f,
            "expiry={}s first_synced={}ms first_published={}s backoff=[{}]ms fetch_timeout={}s \
             max_inflight={} max_per_window={} window={}s ratelimit_cooldown={}s bad_after={} \
             bad_skip={}s max_waiting={} max_domains={} domain_ttl={}s placeholder_expiry={}s",
            self.purgatory_expiry.as_secs(),
            ms(self.first_attempt_after_synced),
            self.first_attempt_after_published.as_secs(),
            backoff.join(","),
            self.fetch_timeout.as_secs(),
            self.max_concurrent_per_domain,
            self.max_per_minute_per_domain,
            self.rate_window.as_secs(),
            self.rate_limited_cooldown.as_secs(),
            self.bad_domain_failures,
            self.bad_domain_skip.as_secs(),
            self.max_waiting,
            self.max_domains,
            self.domain_idle_ttl.as_secs(),
            self.placeholder_expiry.as_secs(),
        )
    }
}
