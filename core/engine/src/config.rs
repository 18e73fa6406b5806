//! Every delay, limit and expiry the engine uses, in one place. Defaults match the established
//! GRASP server's behaviour (PROTOCOL.md, "Timing where the specifications are silent") unless
//! noted.

use std::time::Duration;

/// Engine configuration. `Config::default()` is the production setting; tests and the simulator
/// override single fields.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Config {
    /// Our own public origin, e.g. `https://relay.example.com` (scheme, host, optional port).
    /// Clone URLs on exactly this host and port are never fetched from.
    pub own_origin: Option<String>,
    /// Fetch from loopback, private and link-local addresses (tests and private deployments).
    pub allow_private_remotes: bool,
    /// GRASP-06: take PRs whose `clone` names this server's `/prs/<signer>/<identifier>.git`,
    /// even for repositories not hosted here, and mirror them into the hosted ones they name.
    pub grasp06: bool,
    /// The operator's curation lists (`--deny-author`, `--deny-repo`, `--allow-repo`,
    /// `--archive-repo`), checked by the host before anything else decides an event.
    pub policy: crate::policy::Policy,
    /// GRASP-05: pushes to a repository the archive list names are refused (the mirror
    /// follows the servers its announcement lists).
    pub archive_read_only: bool,

    /// Several instances share this engine's store and repositories: a repository's fetches
    /// start only under its sync lease, which the host acquires across instances
    /// (`engine/lease.rs`). Off, every lease is held implicitly.
    pub sync_leases: bool,

    /// How long an announcement, state, PR or PR update waits for its git data.
    pub purgatory_expiry: Duration,
    /// How long a `refs/nostr/<id>` push waits for its event before the ref is deleted.
    pub placeholder_expiry: Duration,
    /// At most this many events wait at once; beyond it new events are refused.
    pub max_waiting: usize,
    /// At most this many events of one author wait at once, so one key cannot fill
    /// `max_waiting`.
    pub max_waiting_per_author: usize,
    /// At most this many events published from one client address wait at once. Events
    /// learned from other relays, and events restored from the store after a restart, count
    /// toward no address.
    pub max_waiting_per_address: usize,
    /// At most this many `refs/nostr/<id>` placeholders at once.
    pub max_placeholders: usize,
    /// Expired event ids are remembered this long, so a sync re-delivering them is refused.
    pub remember_expired_for: Duration,
    /// At most this many expired ids are remembered (oldest forgotten first).
    pub max_remembered_expired: usize,
    /// Events dated more than this ahead of the host's wall clock are refused
    /// (`freshness::check_created_at`); older ones are always fine.
    pub max_future_skew: Duration,
    /// Largest content of a kind 5 deletion request, in bytes (room for a short reason).
    pub max_deletion_content_bytes: usize,
    /// Most tags of a kind 5 deletion request (each target is looked up).
    pub max_deletion_tags: usize,

    /// First sync attempt after an event that arrived by sync (nobody will push it).
    pub first_attempt_after_synced: Duration,
    /// First sync attempt after an event a user published (a push usually follows).
    pub first_attempt_after_published: Duration,
    /// Delays between incomplete attempts; the last one repeats.
    pub backoff: Vec<Duration>,
    /// A fetch's deadline: the host stops it by then and reports.
    pub fetch_timeout: Duration,
    /// How long after a fetch's deadline its throttle slot stays taken while the host stops
    /// it and reports; a fetch not reported by then counts as failed and frees its slot, and a
    /// later report is ignored. Freeing the slot at the deadline itself would start the next
    /// fetch at that domain while the host may still be stopping the last one.
    pub fetch_report_grace: Duration,
    /// An attempt fetches from one remote domain at a time, in candidate order: the next
    /// domain starts when the current one is done without everything, or after this long
    /// (a hedge against a slow or queued remote). Asking every listed server at once would
    /// spend their rate budgets on copies of the same objects.
    pub fetch_hedge_after: Duration,
    /// An Inspect or Apply the host has not reported by then counts as failed (a late report
    /// is ignored), so a lost local command never blocks a repository.
    pub local_command_timeout: Duration,
    /// Candidate clone URLs considered per repository (first ones win).
    pub max_urls_per_repo: usize,
    /// An Apply whose compare-and-swap fails is re-inspected and re-planned this many times.
    pub max_apply_retries: u32,

    /// Fetches in flight per remote domain.
    pub max_concurrent_per_domain: usize,
    /// Fetches started per remote domain in any sliding `rate_window`.
    pub max_per_minute_per_domain: usize,
    /// The sliding window `max_per_minute_per_domain` counts in.
    pub rate_window: Duration,
    /// A domain answering "rate limited" gets no fetch for this long.
    pub rate_limited_cooldown: Duration,
    /// Consecutive DNS or TLS failures after which a domain is skipped.
    pub bad_domain_failures: u32,
    /// How long a domain with persistent DNS or TLS failures is skipped.
    pub bad_domain_skip: Duration,
    /// At most this many remote domains are tracked; idle ones are evicted first.
    pub max_domains: usize,
    /// An idle domain's state (window, failure count) is kept at least this long.
    pub domain_idle_ttl: Duration,
}

impl Default for Config {
    fn default() -> Config {
        Config {
            own_origin: None,
            allow_private_remotes: false,
            grasp06: false,
            policy: crate::policy::Policy::default(),
            archive_read_only: true,
            sync_leases: false,
            purgatory_expiry: Duration::from_secs(30 * 60),
            placeholder_expiry: Duration::from_secs(30 * 60),
            max_waiting: 1_000_000,
            max_waiting_per_author: 1000,
            max_waiting_per_address: 10_000,
            max_placeholders: 100_000,
            remember_expired_for: Duration::from_secs(24 * 3600),
            max_remembered_expired: 100_000,
            max_future_skew: Duration::from_secs(15 * 60),
            max_deletion_content_bytes: 1024,
            max_deletion_tags: 128,
            first_attempt_after_synced: Duration::from_millis(500),
            first_attempt_after_published: Duration::from_secs(1),
            backoff: vec![
                Duration::from_secs(20),
                Duration::from_secs(40),
                Duration::from_secs(80),
                Duration::from_secs(120),
            ],
            fetch_timeout: Duration::from_secs(120),
            fetch_report_grace: Duration::from_secs(5),
            fetch_hedge_after: Duration::from_secs(10),
            local_command_timeout: Duration::from_secs(60),
            max_urls_per_repo: 16,
            max_apply_retries: 3,
            max_concurrent_per_domain: 5,
            max_per_minute_per_domain: 60,
            rate_window: Duration::from_secs(60),
            rate_limited_cooldown: Duration::from_secs(60),
            bad_domain_failures: 2,
            bad_domain_skip: Duration::from_secs(12 * 3600),
            max_domains: 10_000,
            domain_idle_ttl: Duration::from_secs(3600),
        }
    }
}

impl Config {
    /// The delay before the `step`-th retry (0-based); the last configured delay repeats.
    pub fn backoff_delay(&self, step: usize) -> Duration {
        match self.backoff.get(step) {
            Some(d) => *d,
            None => self
                .backoff
                .last()
                .copied()
                .unwrap_or(Duration::from_secs(120)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_match_the_established_server() {
        let c = Config::default();
        assert_eq!(c.purgatory_expiry, Duration::from_secs(1800));
        assert_eq!(c.first_attempt_after_synced, Duration::from_millis(500));
        assert_eq!(c.first_attempt_after_published, Duration::from_secs(1));
        assert_eq!(c.fetch_timeout, Duration::from_secs(120));
        assert_eq!(c.max_concurrent_per_domain, 5);
        assert_eq!(c.max_per_minute_per_domain, 60);
        assert_eq!(c.bad_domain_skip, Duration::from_secs(12 * 3600));
    }

    #[test]
    fn backoff_is_20_40_80_then_120_forever() {
        let c = Config::default();
        let secs: Vec<u64> = (0..6).map(|s| c.backoff_delay(s).as_secs()).collect();
        assert_eq!(secs, [20, 40, 80, 120, 120, 120]);
    }
}
