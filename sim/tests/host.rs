//! CI's host-world run: the real graspd-host (driver, engine, redb store, relay sessions and
//! hub) on the simulated runtime. Every named host scenario, 500 random seeds, the
//! determinism check, and a check that the checks bite. `cargo run -p graspd-sim --release --
//! --host --seed N` reproduces a failing seed with its trace.

use std::time::{Duration, Instant};

use graspd_sim::host::cli::{check_determinism, report, run_guarded, world_for};
use graspd_sim::host::world::NAMED;
use graspd_sim::host::HostWorld;
use graspd_sim::trace::TraceMode;
use graspd_sim::FailureKind;

/// Random host seeds CI runs. Never lower this below 500; make worlds smaller instead.
const SEEDS: u64 = 500;

#[test]
fn named_host_scenarios_pass() {
    let mut failures = String::new();
    for (name, _, build) in NAMED {
        for seed in 0..5 {
            let world = build(seed);
            let outcome = run_guarded(&world, TraceMode::Tail);
            if outcome.failure.is_some() {
                failures.push_str(&report(Some(name), &world, &outcome));
            }
        }
    }
    assert!(failures.is_empty(), "{failures}");
}

#[test]
fn swarm_of_host_seeds_passes() {
    let started = Instant::now();
    let mut failures = Vec::new();
    for seed in 0..SEEDS {
        let world = world_for(None, seed);
        let outcome = run_guarded(&world, TraceMode::Tail);
        if outcome.failure.is_some() {
            failures.push(report(None, &world, &outcome));
        }
    }
    eprintln!(
        "{SEEDS} host seeds in {:.1}s, {} failed",
        started.elapsed().as_secs_f64(),
        failures.len()
    );
    assert!(
        failures.is_empty(),
        "{} of {SEEDS} host seeds failed; the first:\n{}",
        failures.len(),
        failures[0]
    );
}

#[test]
fn host_runs_are_deterministic() {
    for seed in [0, 1, 42] {
        check_determinism(&HostWorld::random(seed)).unwrap_or_else(|e| panic!("{e}"));
    }
    check_determinism(&HostWorld::pr_flood_with_crashes(3)).unwrap_or_else(|e| panic!("{e}"));
}

#[test]
fn a_disk_that_loses_synced_writes_is_caught() {
    // The checks must bite: when a crash also loses what redb synced, events that got
    // `OK true` are gone after the restart.
    let caught = (0..10)
        .filter(|seed| {
            let world = HostWorld {
                lying_disk: true,
                ..HostWorld::pr_flood_with_crashes(*seed)
            };
            let outcome = run_guarded(&world, TraceMode::Quiet);
            outcome
                .failure
                .is_some_and(|(kind, _)| kind == FailureKind::Safety)
        })
        .count();
    assert!(
        caught >= 8,
        "only {caught} of 10 seeds caught the lying disk"
    );
}

#[test]
fn a_fetch_slot_freed_at_the_deadline_is_caught() {
    // The checks must bite: when the engine frees a fetch's slot at the very instant the host
    // stops it, the next fetch to that domain can start while the last still talks to it.
    let caught = (0..10)
        .filter(|seed| {
            let world = HostWorld {
                fetch_report_grace: Some(Duration::ZERO),
                ..HostWorld::bad_remotes(*seed)
            };
            let outcome = run_guarded(&world, TraceMode::Quiet);
            outcome
                .failure
                .is_some_and(|(kind, why)| kind == FailureKind::Safety && why.contains("at once"))
        })
        .count();
    assert!(
        caught >= 1,
        "no seed of 10 caught two fetches at one domain at once"
    );
}

#[test]
fn deletions_and_expiry_are_exercised() {
    // The deletion and expiry checks are not vacuous: the scenario deletes acknowledged PRs
    // and lets others expire, and every check holds.
    for seed in 0..5 {
        let world = HostWorld::deletions_and_expiry(seed);
        let outcome = run_guarded(&world, TraceMode::Tail);
        assert!(
            outcome.failure.is_none(),
            "{}",
            report(Some("host-deletions-expiry"), &world, &outcome)
        );
        assert!(
            outcome.deleted > 0,
            "seed {seed}: no PR deletion was acknowledged"
        );
        assert!(outcome.expired > 0, "seed {seed}: nothing expired");
        assert!(
            outcome.most_fetching >= 1,
            "seed {seed}: nothing was fetched"
        );
    }
}
