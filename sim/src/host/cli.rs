//! Command line for the host world: `--host --seed N`, `--host --seeds K`,
//! `--scenario host-*`, each with `--check-determinism`.

use std::panic::{catch_unwind, AssertUnwindSafe};

use super::world::{self, HostOutcome, HostWorld, NAMED};
use crate::runner::FailureKind;
use crate::seeds::{self, SeedFailure};
use crate::trace::TraceMode;

/// True if `name` is a host scenario.
pub fn is_host_scenario(name: &str) -> bool {
    NAMED.iter().any(|(n, _, _)| *n == name)
}

/// The world for `seed`: the named scenario's, or a random one.
pub fn world_for(scenario: Option<&str>, seed: u64) -> HostWorld {
    match scenario.and_then(|name| NAMED.iter().find(|(n, _, _)| *n == name)) {
        Some((_, _, build)) => build(seed),
        None => HostWorld::random(seed),
    }
}

/// Runs a world; a panic in the host (or the simulator) is a `Crash` failure.
pub fn run_guarded(world: &HostWorld, mode: TraceMode) -> HostOutcome {
    match catch_unwind(AssertUnwindSafe(|| world::run(world, mode))) {
        Ok(outcome) => outcome,
        Err(panic) => {
            let message = panic
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| panic.downcast_ref::<&str>().map(|s| (*s).to_owned()))
                .unwrap_or_default();
            HostOutcome {
                hash: 0,
                lines: 0,
                failure: Some((FailureKind::Crash, format!("panicked: {message}"))),
                tail: Vec::new(),
                acked: 0,
                served_live: 0,
                restarts: 0,
                polls: 0,
                pushes_accepted: 0,
                deleted: 0,
                expired: 0,
                most_fetching: 0,
            }
        }
    }
}

/// Runs the world twice; the trace hashes must match.
pub fn check_determinism(world: &HostWorld) -> Result<u64, String> {
    let first = run_guarded(world, TraceMode::Quiet);
    let second = run_guarded(world, TraceMode::Quiet);
    if first.hash == second.hash && first.lines == second.lines {
        Ok(first.hash)
    } else {
        Err(format!(
            "seed {}: trace hashes differ ({:016x}, {} lines vs {:016x}, {} lines)",
            world.seed, first.hash, first.lines, second.hash, second.lines
        ))
    }
}

fn scenario_flag(scenario: Option<&str>) -> String {
    scenario.map_or_else(|| "--host".to_owned(), |s| format!("--scenario {s}"))
}

/// A failure report: what failed, the last trace lines, how to reproduce.
pub fn report(scenario: Option<&str>, world: &HostWorld, outcome: &HostOutcome) -> String {
    let mut out = String::new();
    if let Some((kind, why)) = &outcome.failure {
        out.push_str(&format!("FAILED seed {} ({kind:?}): {why}\n", world.seed));
    }
    for line in &outcome.tail {
        out.push_str(&format!("  | {line}\n"));
    }
    out.push_str(&format!(
        "  reproduce: cargo run -p graspd-sim --release -- {} --seed {}\n",
        scenario_flag(scenario),
        world.seed
    ));
    out
}

fn exit_code(outcome: &HostOutcome) -> i32 {
    outcome
        .failure
        .as_ref()
        .map_or(0, |(kind, _)| kind.exit_code())
}

/// One seed with a trace (`quiet`: only the result), or a determinism check.
pub fn run_one(scenario: Option<&str>, seed: u64, quiet: bool, determinism: bool) -> i32 {
    let world = world_for(scenario, seed);
    if determinism {
        return seeds::report_determinism(seed, check_determinism(&world));
    }
    let mode = seeds::trace_mode(quiet);
    let outcome = run_guarded(&world, mode);
    match &outcome.failure {
        None => println!(
            "OK seed={seed} trace_hash={:016x} lines={} acked={} served_live={} pushes={} restarts={} polls={} \
             deleted={} expired={} most_fetching={}",
            outcome.hash,
            outcome.lines,
            outcome.acked,
            outcome.served_live,
            outcome.pushes_accepted,
            outcome.restarts,
            outcome.polls,
            outcome.deleted,
            outcome.expired,
            outcome.most_fetching
        ),
        Some(_) => print!("{}", report(scenario, &world, &outcome)),
    }
    exit_code(&outcome)
}

/// Seeds `from..from + k` of a host world; stops at the first failure unless `keep_going`.
pub fn run_many(
    scenario: Option<&str>,
    from: u64,
    k: u64,
    determinism: bool,
    keep_going: bool,
) -> i32 {
    let run = |seed| {
        let world = world_for(scenario, seed);
        let outcome = run_guarded(&world, TraceMode::Tail);
        let (kind, why) = outcome.failure.clone()?;
        Some(SeedFailure {
            kind,
            summary: why,
            report: report(scenario, &world, &outcome),
        })
    };
    let deterministic = |seed| {
        check_determinism(&world_for(scenario, seed))
            .err()
            .map(SeedFailure::nondeterministic)
    };
    let determinism = determinism.then_some(&deterministic as &dyn Fn(u64) -> Option<SeedFailure>);
    seeds::run_many("host seeds", from, k, keep_going, &run, determinism)
}

/// Every named host scenario at `seed`; returns the worst exit code.
pub fn run_named_all(seed: u64) -> i32 {
    let mut worst: Option<FailureKind> = None;
    for (name, _, build) in NAMED {
        let world = build(seed);
        let outcome = run_guarded(&world, TraceMode::Tail);
        match &outcome.failure {
            None => println!("ok   {name}"),
            Some((kind, _)) => {
                println!("FAIL {name}");
                print!("{}", report(Some(name), &world, &outcome));
                worst = Some(worst.map_or(*kind, |w| w.min(*kind)));
            }
        }
    }
    worst.map_or(0, FailureKind::exit_code)
}
