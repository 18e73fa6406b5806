//! CI's simulator run: every named fault scenario, 1000 random seeds (small worlds), 200
//! default-size ones, and the determinism check. `cargo run -p graspd-sim --release -- --seed N`
//! reproduces a failure (add `--small` for a small-world seed).

use std::time::Instant;

use graspd_sim::adapter::CoreFactory;
use graspd_sim::doubles::SlothFactory;
use graspd_sim::named;
use graspd_sim::scenario::{Scenario, Size};
use graspd_sim::swarm::{check_determinism, report, run_guarded, run_seed};
use graspd_sim::trace::TraceMode;
use graspd_sim::FailureKind;

/// Seeds CI runs. Never lower this below 1000; make worlds smaller instead.
const SEEDS: u64 = 1_000;
/// Default-size worlds (more users, events and remotes), fewer of them.
const DEFAULT_SIZE_SEEDS: u64 = 200;

#[test]
fn named_scenarios_pass() {
    let mut failures = String::new();
    for (name, _) in named::ALL {
        let sc = named::build(name, 1).expect("listed");
        let outcome = run_guarded(&sc, &CoreFactory, TraceMode::Tail);
        if outcome.failure.is_some() {
            failures.push_str(&format!("scenario {name}:\n{}", report(&sc, &outcome)));
        }
    }
    assert!(failures.is_empty(), "{failures}");
}

#[test]
fn swarm_of_random_seeds_passes() {
    swarm(SEEDS, Size::small(), "small");
}

#[test]
fn swarm_of_default_size_seeds_passes() {
    swarm(DEFAULT_SIZE_SEEDS, Size::default(), "default-size");
}

fn swarm(seeds: u64, size: Size, what: &str) {
    let started = Instant::now();
    let mut failures = Vec::new();
    for seed in 0..seeds {
        let outcome = run_seed(seed, size, &CoreFactory, TraceMode::Tail);
        if outcome.failure.is_some() {
            failures.push(report(&Scenario::random(seed, size), &outcome));
        }
    }
    eprintln!(
        "{seeds} {what} seeds in {:.1}s, {} failed",
        started.elapsed().as_secs_f64(),
        failures.len()
    );
    assert!(
        failures.is_empty(),
        "{} of {seeds} {what} seeds failed; the first:\n{}",
        failures.len(),
        failures[0]
    );
}

#[test]
fn runs_are_deterministic() {
    for seed in [0, 1, 7, 42, 999] {
        let sc = Scenario::random(seed, Size::default());
        if let Err(f) = check_determinism(&sc, &CoreFactory) {
            panic!("{f}");
        }
    }
    let sc = named::build("crash-storm", 3).expect("listed");
    check_determinism(&sc, &CoreFactory).expect("crash-storm is deterministic");
}

#[test]
fn a_do_nothing_engine_is_caught() {
    // The checks must bite: an engine that acknowledges everything and never fetches fails
    // liveness on most seeds.
    let caught = (0..50)
        .filter(|seed| {
            let o = run_seed(*seed, Size::small(), &SlothFactory, TraceMode::Quiet);
            o.failure.is_some_and(|f| f.kind == FailureKind::Liveness)
        })
        .count();
    assert!(caught >= 25, "only {caught} of 50 seeds caught the sloth");
}
