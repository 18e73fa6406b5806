//! Prometheus metrics for the purgatory, sync and pushes, rendered at `/metrics`.
//!
//! Counters the host observes (fetch outcomes, pushes, event verdicts, release latency) are
//! recorded as they happen; gauges that mirror engine state (waiting events, fetches in
//! flight) are refreshed from [`graspd_core::Stats`] at every scrape, so they cannot drift.

use std::sync::atomic::{AtomicU64, Ordering};

use graspd_core::follow::RelayStatus;
use graspd_core::Stats;

use crate::follow::{FollowMetrics, FollowStats};
use crate::refusals::{Limit, Refusals};
use prometheus_client::encoding::text::encode;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KindLabel {
    kind: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct FetchLabels {
    domain: String,
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DomainLabel {
    domain: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RelayLabel {
    relay: String,
}

/// `relay` (a relay waiting for a slot in the follower's table) or `value` (a repository or
/// thread waiting for room in a relay's subscription budget).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct WhatLabel {
    what: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct LimitLabel {
    limit: &'static str,
}

/// What the connection limits report at a scrape.
pub struct Connections<'a> {
    pub refusals: &'a Refusals,
    /// Relay sessions running now.
    pub websockets_open: usize,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResultLabel {
    result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabel {
    outcome: &'static str,
}

/// Most distinct domains labelled in fetch metrics; beyond it they count as `other`, so a
/// flood of announcements naming random hosts cannot grow the registry without bound.
const MAX_DOMAIN_LABELS: usize = 256;

pub struct Metrics {
    registry: Registry,
    waiting: Family<KindLabel, Gauge>,
    admissions_pending: Gauge,
    fetches: Family<FetchLabels, Counter>,
    fetches_in_flight: Family<DomainLabel, Gauge>,
    throttle_waits: Counter<u64, AtomicU64>,
    throttle_skips: Counter<u64, AtomicU64>,
    fetch_timeouts: Counter<u64, AtomicU64>,
    released: Counter<u64, AtomicU64>,
    expired: Counter<u64, AtomicU64>,
    withdrawn: Counter<u64, AtomicU64>,
    policy_reloads: Family<ResultLabel, Counter>,
    release_latency: Histogram,
    pushes: Family<OutcomeLabel, Counter>,
    events: Family<OutcomeLabel, Counter>,
    relays_connected: Gauge,
    relay_reconnects: Counter<u64, AtomicU64>,
    relay_connect_failures: Counter<u64, AtomicU64>,
    follow_reconciled: Counter<u64, AtomicU64>,
    follow_reconcile_fallbacks: Counter<u64, AtomicU64>,
    synced_events: Family<RelayLabel, Counter>,
    synced_duplicates: Family<RelayLabel, Counter>,
    synced_invalid: Family<RelayLabel, Counter>,
    follow_waiting: Family<WhatLabel, Gauge>,
    followed_relays: Family<RelayLabel, Gauge>,
    follow_refused: Family<WhatLabel, Counter>,
    follow_admitted_late: Family<WhatLabel, Counter>,
    refusals: Family<LimitLabel, Counter>,
    prune_runs: Family<OutcomeLabel, Counter>,
    prune_objects_removed: Counter,
    websockets_open: Gauge,
    negentropy_opened: Counter<u64, AtomicU64>,
    referenced_ids: Gauge,
    referenced_ids_evicted: Counter<u64, AtomicU64>,
    store_commits: Counter<u64, AtomicU64>,
    store_grouped_writes: Counter<u64, AtomicU64>,
    peer_events: Family<OutcomeLabel, Counter>,
    peer_listener_reconnects: Counter<u64, AtomicU64>,
    peer_listener_connected: Gauge,
    peer_queue: Gauge,
    sync_leases: Family<WhatLabel, Gauge>,
    relay_leases: Family<WhatLabel, Gauge>,
    domains_seen: std::sync::Mutex<std::collections::BTreeSet<String>>,
}

impl Default for Metrics {
    fn default() -> Metrics {
        Metrics::new()
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        let mut registry = Registry::with_prefix("graspd");
        let waiting = Family::<KindLabel, Gauge>::default();
        registry.register(
            "purgatory_waiting",
            "Events waiting for git data, by kind",
            waiting.clone(),
        );
        let admissions_pending = Gauge::default();
        registry.register(
            "admissions_pending",
            "Events admitted whose store write has not finished (they count toward max-waiting)",
            admissions_pending.clone(),
        );
        let fetches = Family::<FetchLabels, Counter>::default();
        registry.register(
            "fetches",
            "Fetches from other git servers by domain and outcome",
            fetches.clone(),
        );
        let fetches_in_flight = Family::<DomainLabel, Gauge>::default();
        registry.register(
            "fetches_in_flight",
            "Fetches running now, by domain",
            fetches_in_flight.clone(),
        );
        let throttle_waits = Counter::default();
        registry.register(
            "throttle_waits",
            "Times a fetch waited for a per-domain limit",
            throttle_waits.clone(),
        );
        let throttle_skips = Counter::default();
        registry.register(
            "throttle_domain_skips",
            "Domains skipped after repeated DNS/TLS failures",
            throttle_skips.clone(),
        );
        let fetch_timeouts = Counter::default();
        registry.register(
            "fetch_timeouts",
            "Fetches that missed their deadline",
            fetch_timeouts.clone(),
        );
        let released = Counter::default();
        registry.register(
            "purgatory_released",
            "Events released from purgatory",
            released.clone(),
        );
        let expired = Counter::default();
        registry.register(
            "purgatory_expired",
            "Events discarded from purgatory without their data",
            expired.clone(),
        );
        let withdrawn = Counter::default();
        registry.register(
            "purgatory_withdrawn",
            "Waiting events dropped because a policy reload refuses them",
            withdrawn.clone(),
        );
        let policy_reloads = Family::<ResultLabel, Counter>::default();
        registry.register(
            "policy_reloads",
            "Reloads of the --config policy file, by result (ok, rejected: the old lists stay)",
            policy_reloads.clone(),
        );
        let release_latency = Histogram::new([
            0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 180.0, 600.0, 1800.0,
        ]);
        registry.register(
            "release_latency_seconds",
            "Time from an event's arrival to its release",
            release_latency.clone(),
        );
        let pushes = Family::<OutcomeLabel, Counter>::default();
        registry.register("pushes", "Pushes by outcome", pushes.clone());
        let events = Family::<OutcomeLabel, Counter>::default();
        registry.register("events", "EVENT messages by verdict", events.clone());
        let relays_connected = Gauge::default();
        registry.register(
            "follow_relays_connected",
            "Relays the GRASP-02 follower is connected to",
            relays_connected.clone(),
        );
        let relay_reconnects = Counter::default();
        registry.register(
            "follow_reconnects",
            "Reconnections to relays tried before",
            relay_reconnects.clone(),
        );
        let follow_reconciled = Counter::default();
        registry.register(
            "follow_reconciled",
            "Histories read from followed relays by NIP-77 negentropy",
            follow_reconciled.clone(),
        );
        let follow_reconcile_fallbacks = Counter::default();
        registry.register(
            "follow_reconcile_fallbacks",
            "Reconciliations given up for the paged REQ because the relay could not reconcile",
            follow_reconcile_fallbacks.clone(),
        );
        let relay_connect_failures = Counter::default();
        registry.register(
            "follow_connect_failures",
            "Relay connections that failed",
            relay_connect_failures.clone(),
        );
        let synced_events = Family::<RelayLabel, Counter>::default();
        registry.register(
            "follow_events_learned",
            "Events first learned from each relay",
            synced_events.clone(),
        );
        let synced_duplicates = Family::<RelayLabel, Counter>::default();
        registry.register(
            "follow_duplicates",
            "Events a relay sent that were already known",
            synced_duplicates.clone(),
        );
        let synced_invalid = Family::<RelayLabel, Counter>::default();
        registry.register(
            "follow_invalid_events",
            "Events with a bad id or signature, by relay",
            synced_invalid.clone(),
        );
        let followed_relays = Family::<RelayLabel, Gauge>::default();
        registry.register(
            "follow_relay_connected",
            "Each relay followed now (bootstrap, or listed by a hosted repository): 1 while a \
             connection to it is up, 0 while it is down; on a shared store, only the relays \
             whose follow lease this instance holds or is acquiring",
            followed_relays.clone(),
        );
        let follow_waiting = Family::<WhatLabel, Gauge>::default();
        registry.register(
            "follow_waiting",
            "Relays waiting for a slot in the follower's table, and repositories or threads \
             waiting for room in a relay's subscription budget",
            follow_waiting.clone(),
        );
        let follow_refused = Family::<WhatLabel, Counter>::default();
        registry.register(
            "follow_refused",
            "Relays and values refused for lack of room (each then waits for room)",
            follow_refused.clone(),
        );
        let follow_admitted_late = Family::<WhatLabel, Counter>::default();
        registry.register(
            "follow_admitted_late",
            "Waiting relays and values admitted when room freed",
            follow_admitted_late.clone(),
        );
        let refusals = Family::<LimitLabel, Counter>::default();
        registry.register(
            "refusals",
            "Connections, git requests and processes refused, disconnected or ended by a limit, by limit",
            refusals.clone(),
        );
        let prune_runs = Family::<OutcomeLabel, Counter>::default();
        registry.register(
            "prune_runs",
            "git gc runs removing what ended refs/nostr placeholders left unreachable, by \
             outcome (done, failed, timed_out)",
            prune_runs.clone(),
        );
        let prune_objects_removed = Counter::default();
        registry.register(
            "prune_objects_removed",
            "Objects those git gc runs removed (unreachable ones, and duplicate copies of kept \
             ones)",
            prune_objects_removed.clone(),
        );
        let negentropy_opened = Counter::default();
        registry.register(
            "negentropy_opened",
            "NIP-77 reconciliations (NEG-OPEN) started by clients and their items read",
            negentropy_opened.clone(),
        );
        let websockets_open = Gauge::default();
        registry.register(
            "websockets_open",
            "Relay WebSocket sessions open now",
            websockets_open.clone(),
        );
        let referenced_ids = Gauge::default();
        registry.register(
            "referenced_ids",
            "Event ids named by accepted issues, patches, PRs and comments, not yet served \
             (each is accepted when it arrives)",
            referenced_ids.clone(),
        );
        let referenced_ids_evicted = Counter::default();
        registry.register(
            "referenced_ids_evicted",
            "Named ids forgotten because the index was full (--max-referenced-ids)",
            referenced_ids_evicted.clone(),
        );
        let store_commits = Counter::default();
        registry.register(
            "store_group_commits",
            "Durable store commits of events served, put in or taken out of purgatory \
             (writes made at the same time share one)",
            store_commits.clone(),
        );
        let store_grouped_writes = Counter::default();
        registry.register(
            "store_grouped_writes",
            "Store writes that went through those commits (writes / commits = the mean batch)",
            store_grouped_writes.clone(),
        );
        let peer_events = Family::<OutcomeLabel, Counter>::default();
        registry.register(
            "peer_events",
            "Event ids other instances on the database notified: received (queued), dropped \
             (the queue was full) or gone (moved or removed before they were read)",
            peer_events.clone(),
        );
        let peer_listener_reconnects = Counter::default();
        registry.register(
            "peer_listener_reconnects",
            "Times the connection listening for other instances' events was made again \
             (what they sent while it was down was not heard)",
            peer_listener_reconnects.clone(),
        );
        let peer_listener_connected = Gauge::default();
        registry.register(
            "peer_listener_connected",
            "Whether this instance is listening for other instances' events (1) or not (0)",
            peer_listener_connected.clone(),
        );
        let peer_queue = Gauge::default();
        registry.register(
            "peer_queue",
            "Notifications from other instances queued, not yet read (how far this instance lags)",
            peer_queue.clone(),
        );
        let sync_leases = Family::<WhatLabel, Gauge>::default();
        registry.register(
            "sync_leases",
            "Repositories whose sync lease this instance holds (held: it fetches for them) or \
             wants while another instance holds it (elsewhere); a shared store only",
            sync_leases.clone(),
        );
        let relay_leases = Family::<WhatLabel, Gauge>::default();
        registry.register(
            "relay_leases",
            "Relays whose follow lease this instance holds (held: it follows them) or wants \
             while another instance holds it (elsewhere); a shared store only",
            relay_leases.clone(),
        );
        Metrics {
            registry,
            sync_leases,
            relay_leases,
            peer_events,
            peer_listener_reconnects,
            peer_listener_connected,
            peer_queue,
            store_commits,
            store_grouped_writes,
            refusals,
            prune_runs,
            prune_objects_removed,
            websockets_open,
            negentropy_opened,
            referenced_ids,
            referenced_ids_evicted,
            follow_waiting,
            followed_relays,
            follow_refused,
            follow_admitted_late,
            relays_connected,
            relay_reconnects,
            relay_connect_failures,
            follow_reconciled,
            follow_reconcile_fallbacks,
            synced_events,
            synced_duplicates,
            synced_invalid,
            waiting,
            admissions_pending,
            fetches,
            fetches_in_flight,
            throttle_waits,
            throttle_skips,
            fetch_timeouts,
            released,
            expired,
            withdrawn,
            policy_reloads,
            release_latency,
            pushes,
            events,
            domains_seen: Default::default(),
        }
    }

    fn domain_label(&self, domain: &str) -> String {
        let mut seen = self.domains_seen.lock().unwrap_or_else(|e| e.into_inner());
        if seen.contains(domain) {
            return domain.to_owned();
        }
        if seen.len() < MAX_DOMAIN_LABELS {
            seen.insert(domain.to_owned());
            return domain.to_owned();
        }
        "other".to_owned()
    }

    pub fn fetch_finished(&self, domain: &str, outcome: &'static str) {
        let domain = self.domain_label(domain);
        self.fetches
            .get_or_create(&FetchLabels { domain, outcome })
            .inc();
    }

    pub fn released(&self, waited: std::time::Duration) {
        self.release_latency.observe(waited.as_secs_f64());
    }

    pub fn push(&self, accepted: bool) {
        let outcome = if accepted { "accepted" } else { "rejected" };
        self.pushes.get_or_create(&OutcomeLabel { outcome }).inc();
    }

    /// Refreshes the gauges of the store's index of referenced ids.
    pub fn referenced(&self, stats: crate::store::ReferenceStats) {
        self.referenced_ids.set(stats.entries as i64);
        catch_up(&self.referenced_ids_evicted, stats.evicted);
    }

    /// Brings the group-commit counters up to the store's.
    pub fn group_commits(&self, stats: crate::store::GroupCommitStats) {
        catch_up(&self.store_commits, stats.commits);
        catch_up(&self.store_grouped_writes, stats.writes);
    }

    /// Brings the counters of other instances' notifications up to the listener's, and the
    /// queue gauge to `queued`.
    pub fn peers(&self, stats: crate::store::ListenStats, queued: usize) {
        for (outcome, total) in [("received", stats.received), ("dropped", stats.dropped)] {
            catch_up(
                &self.peer_events.get_or_create(&OutcomeLabel { outcome }),
                total,
            );
        }
        catch_up(&self.peer_listener_reconnects, stats.reconnects);
        self.peer_listener_connected.set(i64::from(stats.connected));
        self.peer_queue.set(queued as i64);
    }

    /// The leases held here, and those wanted but held by another instance: repositories'
    /// sync leases and relays' follow leases.
    pub fn leases(&self, repos: crate::leases::Counts, relays: crate::leases::Counts) {
        for (family, counts) in [(&self.sync_leases, repos), (&self.relay_leases, relays)] {
            for (what, count) in [("held", counts.held), ("elsewhere", counts.elsewhere)] {
                family.get_or_create(&WhatLabel { what }).set(count as i64);
            }
        }
    }

    /// Counts ids another instance notified that were gone by the time they were read.
    pub fn peer_events_gone(&self, count: u64) {
        if count > 0 {
            self.peer_events
                .get_or_create(&OutcomeLabel { outcome: "gone" })
                .inc_by(count);
        }
    }

    /// Advances the prune run counters to `counts`.
    pub fn prunes(&self, counts: crate::git::PruneCounts) {
        for (outcome, total) in [
            ("done", counts.done),
            ("failed", counts.failed),
            ("timed_out", counts.timed_out),
        ] {
            catch_up(
                &self.prune_runs.get_or_create(&OutcomeLabel { outcome }),
                total,
            );
        }
        catch_up(&self.prune_objects_removed, counts.objects_removed);
    }

    /// Counts one reload of the policy file: taken (`ok`) or refused (`rejected`).
    pub fn policy_reload(&self, ok: bool) {
        let result = if ok { "ok" } else { "rejected" };
        self.policy_reloads
            .get_or_create(&ResultLabel { result })
            .inc();
    }

    /// `outcome`: waiting, accepted, duplicate, rejected.
    pub fn event(&self, outcome: &'static str) {
        self.events.get_or_create(&OutcomeLabel { outcome }).inc();
    }

    /// Counts a NIP-77 reconciliation whose items are being read.
    pub fn negentropy_opened(&self) {
        self.negentropy_opened.inc();
    }

    /// Refreshes the per-relay gauge from the follower's relays (at most its `max_relays`);
    /// relays no longer followed leave it.
    pub fn followed_relays(&self, relays: &[RelayStatus]) {
        self.followed_relays.clear();
        for relay in relays
            .iter()
            .filter(|r| r.followed && !r.followed_elsewhere)
        {
            self.followed_relays
                .get_or_create(&RelayLabel {
                    relay: relay.url.clone(),
                })
                .set(i64::from(relay.connected));
        }
    }

    /// The text exposition, with engine gauges refreshed from `stats`, the relay follower's
    /// connection counters from `follow`, its waiting lists from `follower`, and the
    /// connection limits' refusals from `connections`.
    pub fn render(
        &self,
        stats: &Stats,
        follow: &FollowMetrics,
        follower: &FollowStats,
        connections: &Connections<'_>,
    ) -> String {
        for limit in Limit::ALL {
            let counter = self.refusals.get_or_create(&LimitLabel {
                limit: limit.name(),
            });
            catch_up(&counter, connections.refusals.count(limit));
        }
        self.websockets_open.set(connections.websockets_open as i64);
        for (what, waiting, refused, late) in [
            (
                "relay",
                follower.relays_waiting,
                follower.relays_refused,
                follower.relays_admitted_late,
            ),
            (
                "value",
                follower.values_waiting,
                follower.values_over_budget,
                follower.values_admitted_late,
            ),
        ] {
            let label = WhatLabel { what };
            self.follow_waiting
                .get_or_create(&label)
                .set(waiting as i64);
            catch_up(&self.follow_refused.get_or_create(&label), refused);
            catch_up(&self.follow_admitted_late.get_or_create(&label), late);
        }
        self.relays_connected
            .set(follow.relays_connected.load(Ordering::Relaxed));
        catch_up(
            &self.relay_reconnects,
            follow.reconnects.load(Ordering::Relaxed),
        );
        catch_up(
            &self.relay_connect_failures,
            follow.connect_failures.load(Ordering::Relaxed),
        );
        catch_up(
            &self.follow_reconciled,
            follow.reconciled.load(Ordering::Relaxed),
        );
        catch_up(
            &self.follow_reconcile_fallbacks,
            follow.reconcile_fallbacks.load(Ordering::Relaxed),
        );
        for (relay, counters) in follow.per_relay() {
            let label = RelayLabel { relay };
            catch_up(&self.synced_events.get_or_create(&label), counters.learned);
            catch_up(
                &self.synced_duplicates.get_or_create(&label),
                counters.duplicates,
            );
            catch_up(&self.synced_invalid.get_or_create(&label), counters.invalid);
        }
        let w = &stats.waiting;
        for (kind, n) in [
            ("announcement", w.announcements),
            ("state", w.states),
            ("pr", w.prs),
            ("placeholder", w.placeholders),
        ] {
            self.waiting
                .get_or_create(&KindLabel { kind })
                .set(n as i64);
        }
        self.admissions_pending.set(stats.admissions_pending as i64);
        self.fetches_in_flight.clear();
        for (domain, n) in &stats.fetches_in_flight {
            let domain = self.domain_label(domain);
            self.fetches_in_flight
                .get_or_create(&DomainLabel { domain })
                .set(*n as i64);
        }
        catch_up(&self.throttle_waits, stats.throttle.waits);
        catch_up(&self.throttle_skips, stats.throttle.skips);
        catch_up(&self.fetch_timeouts, stats.fetch_timeouts);
        catch_up(&self.released, stats.released);
        catch_up(&self.expired, stats.expired);
        catch_up(&self.withdrawn, stats.withdrawn);
        let mut out = String::new();
        let _ = encode(&mut out, &self.registry);
        out
    }
}

/// Advances a Prometheus counter to the engine's monotonic total.
fn catch_up(counter: &Counter<u64, AtomicU64>, total: u64) {
    let now = counter.get();
    if total > now {
        counter.inc_by(total - now);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_purgatory_gauges_and_counters() {
        let metrics = Metrics::new();
        let mut stats = Stats::default();
        stats.waiting.states = 3;
        stats.released = 7;
        stats.fetches_in_flight = vec![("a.example".into(), 2)];
        metrics.fetch_finished("a.example", "ok");
        metrics.push(false);
        let follow = FollowMetrics::new(8);
        follow.relays_connected.store(2, Ordering::Relaxed);
        let follower = FollowStats {
            relays_waiting: 3,
            values_admitted_late: 4,
            ..FollowStats::default()
        };
        let refusals = Refusals::new();
        refusals.refuse(Limit::WebSocketIdle, &"idle", std::time::Instant::now());
        let connections = Connections {
            refusals: &refusals,
            websockets_open: 5,
        };
        let text = metrics.render(&stats, &follow, &follower, &connections);
        assert!(
            text.contains(r#"graspd_refusals_total{limit="websocket_idle"} 1"#),
            "{text}"
        );
        assert!(text.contains("graspd_websockets_open 5"), "{text}");
        assert!(text.contains("graspd_follow_relays_connected 2"), "{text}");
        assert!(
            text.contains(r#"graspd_follow_waiting{what="relay"} 3"#),
            "{text}"
        );
        assert!(
            text.contains(r#"graspd_follow_admitted_late_total{what="value"} 4"#),
            "{text}"
        );
        assert!(
            text.contains(r#"graspd_purgatory_waiting{kind="state"} 3"#),
            "{text}"
        );
        assert!(text.contains("graspd_purgatory_released_total 7"), "{text}");
        assert!(
            text.contains(r#"graspd_fetches_in_flight{domain="a.example"} 2"#),
            "{text}"
        );
        assert!(
            text.contains(r#"graspd_fetches_total{domain="a.example",outcome="ok"} 1"#),
            "{text}"
        );
        assert!(
            text.contains(r#"graspd_pushes_total{outcome="rejected"} 1"#),
            "{text}"
        );
        let relay = |url: &str, followed, connected| RelayStatus {
            followed_elsewhere: url.contains("elsewhere"),
            url: url.into(),
            followed,
            bootstrap: false,
            connected,
            consecutive_failures: 0,
            retry_at: None,
            repositories: 1,
            threads: 0,
            values_waiting: 0,
            events_received: 0,
            connects: 0,
        };
        metrics.followed_relays(&[
            relay("wss://up.example", true, true),
            relay("wss://down.example", true, false),
            relay("wss://idle.example", false, false),
            relay("wss://elsewhere.example", true, false),
        ]);
        let text = metrics.render(&stats, &follow, &follower, &connections);
        assert!(
            text.contains(r#"graspd_follow_relay_connected{relay="wss://up.example"} 1"#),
            "{text}"
        );
        assert!(
            text.contains(r#"graspd_follow_relay_connected{relay="wss://down.example"} 0"#),
            "{text}"
        );
        assert!(!text.contains("idle.example"), "{text}");
        assert!(!text.contains("elsewhere.example"), "{text}");
        metrics.followed_relays(&[]);
        let text = metrics.render(&stats, &follow, &follower, &connections);
        assert!(
            !text.contains("up.example"),
            "a relay no longer followed leaves: {text}"
        );
        stats.released = 9;
        assert!(metrics
            .render(&stats, &follow, &follower, &connections)
            .contains("graspd_purgatory_released_total 9"));
    }
}
