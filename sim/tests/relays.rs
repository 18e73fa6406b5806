//! CI's relay-follower run: the named relay scenarios, 500 seeds of the relay world, 300 of
//! relays that all speak NIP-77 (honestly, lying or aborting), the seeds that found the
//! missing late admission (42, 347), the determinism check, and proof that the checks bite. Reproduce a failure with
//! `cargo run -p graspd-sim --release -- --relays --seed N` (or `--scenario NAME --seed N`).

use std::time::Instant;

use graspd_sim::follow_run::{self, check_determinism, report, run_with, HostChecks};
use graspd_sim::relays::{self, RelayWorld};
use graspd_sim::trace::TraceMode;
use graspd_sim::FailureKind;

/// Seeds CI runs. Never lower this below 500; make worlds smaller instead.
const SEEDS: u64 = 500;

#[test]
fn named_relay_scenarios_pass() {
    let mut failures = String::new();
    for (name, _) in relays::NAMED {
        for seed in [1, 2, 3] {
            let world = relays::named(name, seed).expect("listed");
            let outcome = follow_run::run(&world, TraceMode::Tail);
            if outcome.failure.is_some() {
                failures.push_str(&format!("scenario {name}:\n{}", report(&world, &outcome)));
            }
        }
    }
    assert!(failures.is_empty(), "{failures}");
}

#[test]
fn relay_worlds_pass() {
    let started = Instant::now();
    let mut failures = Vec::new();
    let mut delivered = 0;
    let mut bad = 0;
    let mut full = 0;
    let mut late = 0;
    for seed in 0..SEEDS {
        let world = RelayWorld::random(seed);
        let outcome = follow_run::run(&world, TraceMode::Tail);
        delivered += outcome.stats.events_delivered;
        bad += outcome.stats.bad_signatures;
        full += outcome.stats.full_liveness;
        late += outcome.stats.relays_admitted_late + outcome.stats.values_admitted_late;
        if outcome.failure.is_some() {
            failures.push(report(&world, &outcome));
        }
    }
    eprintln!(
        "{SEEDS} relay seeds in {:.1}s ({delivered} events delivered, {bad} bad signatures \
         dropped, {full} with full liveness, {late} late admissions), {} failed",
        started.elapsed().as_secs_f64(),
        failures.len()
    );
    assert!(
        failures.is_empty(),
        "{} of {SEEDS} relay seeds failed; the first:\n{}",
        failures.len(),
        failures[0]
    );
    assert!(bad > 0, "no lying relay in {SEEDS} seeds");
    assert!(
        full >= SEEDS / 10,
        "only {full} seeds fit the budgets for full liveness"
    );
    assert!(
        late > 0,
        "no refusal was ever admitted late in {SEEDS} seeds"
    );
}

/// Relays that all answer NIP-77, each honestly, lying (phantom ids, wrong events, never
/// agreeing) or ending the exchange midway, besides their other faults: the follower's bounds
/// hold on every frame and every event they hold for it arrives after the heal.
#[test]
fn negentropy_relay_worlds_pass() {
    const NEG_SEEDS: u64 = 300;
    let started = Instant::now();
    let mut failures = Vec::new();
    let mut totals = follow_run::RelayStats::default();
    for seed in 0..NEG_SEEDS {
        let world = relays::named("relay-neg-mixed", seed).expect("listed");
        let outcome = follow_run::run(&world, TraceMode::Tail);
        let s = &outcome.stats;
        totals.neg_opened += s.neg_opened;
        totals.neg_worked += s.neg_worked;
        totals.neg_fallbacks += s.neg_fallbacks;
        totals.pages += s.pages;
        totals.fetched_by_id += s.fetched_by_id;
        totals.arrived += s.arrived;
        if outcome.failure.is_some() {
            failures.push(report(&world, &outcome));
        }
    }
    eprintln!(
        "{NEG_SEEDS} NIP-77 relay seeds in {:.1}s: {} exchanges opened, {} worked, {} given up, \
         {} pages read, {} ids fetched, {} events arrived; {} failed",
        started.elapsed().as_secs_f64(),
        totals.neg_opened,
        totals.neg_worked,
        totals.neg_fallbacks,
        totals.pages,
        totals.fetched_by_id,
        totals.arrived,
        failures.len()
    );
    assert!(
        failures.is_empty(),
        "{} of {NEG_SEEDS} NIP-77 relay seeds failed; the first:\n{}",
        failures.len(),
        failures[0]
    );
    let t = &totals;
    assert!(
        t.neg_worked > 0 && t.neg_fallbacks > 0 && t.pages > 0 && t.fetched_by_id > 0,
        "both ways of reading a history must be exercised: {t:?}"
    );
}

#[test]
fn a_follower_without_a_round_bound_is_caught() {
    // A relay that never agrees keeps the exchange going: without `max_rounds` the session
    // would never give it up.
    let world = relays::named("relay-neg-liar", 2).expect("listed");
    assert_eq!(world.relays[0].nip77, relays::Nip77::NeverAgrees);
    assert!(follow_run::run(&world, TraceMode::Quiet).failure.is_none());
    let outcome = run_with(&world, TraceMode::Quiet, HostChecks::UnboundedRounds);
    let failure = outcome.failure.expect("an endless exchange must be caught");
    assert_eq!(failure.kind, FailureKind::Safety, "{}", failure.message);
    assert!(
        failure.message.contains("messages in one reconciliation"),
        "{}",
        failure.message
    );
}

/// Seeds where a relay (42) or a repository (347) was refused for lack of room that freed
/// later: both must end fully followed, through a late admission.
#[test]
fn refusals_are_admitted_when_room_frees() {
    for (seed, relay) in [(42, true), (347, false)] {
        let world = RelayWorld::random(seed);
        let outcome = follow_run::run(&world, TraceMode::Tail);
        assert!(outcome.failure.is_none(), "{}", report(&world, &outcome));
        let s = &outcome.stats;
        assert_eq!(s.full_liveness, 1, "seed {seed}: {s:?}");
        if relay {
            assert!(s.relays_refused > 0 && s.relays_admitted_late > 0, "{s:?}");
        } else {
            assert!(
                s.values_over_budget > 0 && s.values_admitted_late > 0,
                "{s:?}"
            );
        }
    }
}

#[test]
fn relay_runs_are_deterministic() {
    for seed in [0, 1, 7, 42, 347, 499] {
        check_determinism(&RelayWorld::random(seed)).expect("deterministic");
    }
    for (name, _) in relays::NAMED {
        check_determinism(&relays::named(name, 5).expect("listed")).expect("deterministic");
    }
}

#[test]
fn a_host_skipping_signature_checks_is_caught() {
    // The checks must bite: without `verify_signature`, a lying relay's forgeries get in.
    let world = relays::named("relay-liar", 1).expect("listed");
    let outcome = run_with(&world, TraceMode::Quiet, HostChecks::SkipVerify);
    let failure = outcome.failure.expect("forged events must be caught");
    assert_eq!(failure.kind, FailureKind::Safety, "{}", failure.message);
}
