//! Every delay and bound the relay follower uses, in one place.

use std::time::Duration;

/// Relay-follower configuration. `FollowConfig::default()` is the production setting; tests
/// override single fields.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FollowConfig {
    /// Relays followed whatever the announcements say (`--bootstrap-relay`, repeatable;
    /// `GRASPD_BOOTSTRAP_RELAYS`): they also get a discovery subscription for announcements,
    /// so repositories that list this server are found before anyone publishes them here.
    pub bootstrap_relays: Vec<String>,
    /// Follow relays on loopback, private and link-local addresses (tests, private setups).
    pub allow_private_relays: bool,

    /// First reconnect delay after a failure; doubles per consecutive failure.
    pub backoff_initial: Duration,
    /// The doubling stops here.
    pub backoff_max: Duration,
    /// A connection not established by then counts as failed.
    pub connect_timeout: Duration,
    /// A connection that lived this long (or completed a history) was a success: the next
    /// failure starts the backoff from `backoff_initial` again.
    pub stable_after: Duration,

    /// Connections open (or opening) at once.
    pub max_connections: usize,
    /// Relays tracked at once (with their backoff); unwanted ones are forgotten first.
    pub max_relays: usize,
    /// `relays` values taken from one announcement (first ones win).
    pub max_relays_per_announcement: usize,
    /// Events whose replies are followed (`#e`/`#E`); the oldest is forgotten first.
    pub max_threads: usize,

    /// Values (identifiers, coordinates, event ids) per filter.
    pub chunk_size: usize,
    /// Subscriptions (REQs) open on one relay at once; values beyond them are not followed.
    pub max_subscriptions_per_relay: usize,
    /// A subscription change goes to a relay at once when its last update is older than
    /// this; changes within it of the last update coalesce into one update at its end, so a
    /// burst of new announcements becomes one batch of REQs and a lone one costs no delay.
    /// Short: announcements arriving a few hundred milliseconds apart would otherwise each
    /// wait most of it before their histories (and the state they wait for) are read.
    pub resubscribe_interval: Duration,
    /// Connect a relay only under its lease (several instances on one store: each relay is
    /// followed by one of them). Off: every relay's lease is held implicitly.
    pub relay_leases: bool,
}

impl Default for FollowConfig {
    fn default() -> FollowConfig {
        FollowConfig {
            bootstrap_relays: Vec::new(),
            allow_private_relays: false,
            backoff_initial: Duration::from_secs(5),
            backoff_max: Duration::from_secs(3600),
            connect_timeout: Duration::from_secs(30),
            stable_after: Duration::from_secs(60),
            max_connections: 64,
            max_relays: 1_000,
            max_relays_per_announcement: 16,
            max_threads: 100_000,
            chunk_size: 256,
            max_subscriptions_per_relay: 16,
            resubscribe_interval: Duration::from_millis(50),
            relay_leases: false,
        }
    }
}

impl FollowConfig {
    /// The reconnect delay after `failures` consecutive failures (1-based): `backoff_initial`
    /// doubled `failures - 1` times, at most `backoff_max`.
    pub fn backoff_delay(&self, failures: u32) -> Duration {
        let doublings = failures.saturating_sub(1).min(32);
        self.backoff_initial
            .saturating_mul(1u32 << doublings.min(31))
            .min(self.backoff_max)
    }
}

/// Splits a `GRASPD_BOOTSTRAP_RELAYS`-style list (commas and/or whitespace) into URLs.
pub fn parse_relay_list(list: &str) -> Vec<String> {
    list.split(|c: char| c == ',' || c.is_whitespace())
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
        .collect()
}
