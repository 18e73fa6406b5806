//! Command line for the relay-follower worlds: `--relays --seed N`, `--relays --seeds K`,
//! `--scenario relay-*`.

use crate::follow_run::{self, report, RelayOutcome};
use crate::relays::{self, RelayWorld};
use crate::seeds::{self, SeedFailure};
use crate::trace::TraceMode;

/// True if `name` is a relay scenario.
pub fn is_relay_scenario(name: &str) -> bool {
    relays::NAMED.iter().any(|(n, _)| *n == name)
}

fn world_for(scenario: Option<&str>, seed: u64) -> RelayWorld {
    match scenario {
        Some(name) => relays::named(name, seed).expect("checked by the caller"),
        None => RelayWorld::random(seed),
    }
}

fn exit_code(outcome: &RelayOutcome) -> i32 {
    outcome.failure.as_ref().map_or(0, |f| f.kind.exit_code())
}

/// One seed with a trace (`quiet`: only the result), or a determinism check.
pub fn run_one(scenario: Option<&str>, seed: u64, quiet: bool, determinism: bool) -> i32 {
    let world = world_for(scenario, seed);
    if determinism {
        return seeds::report_determinism(seed, follow_run::check_determinism(&world));
    }
    let mode = seeds::trace_mode(quiet);
    let outcome = follow_run::run(&world, mode);
    match &outcome.failure {
        None => {
            let s = &outcome.stats;
            println!(
                "OK seed={seed} trace_hash={:016x} lines={} steps={} connects={} delivered={} \
                 bad_signatures={} accepted={} duplicates={} rejected={} \
                 superseded_reaccepted={} relays_refused={} values_over_budget={} \
                 full_liveness={} neg_opened={} neg_worked={} neg_fallbacks={} pages={} \
                 fetched_by_id={} arrived={}",
                outcome.hash,
                outcome.lines,
                s.steps,
                s.connects,
                s.events_delivered,
                s.bad_signatures,
                s.accepted,
                s.duplicates,
                s.rejected,
                s.superseded_reaccepted,
                s.relays_refused,
                s.values_over_budget,
                s.full_liveness,
                s.neg_opened,
                s.neg_worked,
                s.neg_fallbacks,
                s.pages,
                s.fetched_by_id,
                s.arrived
            );
        }
        Some(_) => print!("{}", report(&world, &outcome)),
    }
    exit_code(&outcome)
}

/// Seeds `from..from + k` of a relay world; stops at the first failure unless `keep_going`.
pub fn run_many(
    scenario: Option<&str>,
    from: u64,
    k: u64,
    determinism: bool,
    keep_going: bool,
) -> i32 {
    let run = |seed| {
        let world = world_for(scenario, seed);
        let outcome = follow_run::run(&world, TraceMode::Tail);
        let f = outcome.failure.as_ref()?;
        Some(SeedFailure {
            kind: f.kind,
            summary: f.message.clone(),
            report: report(&world, &outcome),
        })
    };
    let deterministic = |seed| {
        follow_run::check_determinism(&world_for(scenario, seed))
            .err()
            .map(SeedFailure::nondeterministic)
    };
    let determinism = determinism.then_some(&deterministic as &dyn Fn(u64) -> Option<SeedFailure>);
    seeds::run_many("relay seeds", from, k, keep_going, &run, determinism)
}

/// Every named relay scenario at `seed`; returns the worst exit code.
pub fn run_named_all(seed: u64) -> i32 {
    let mut worst = 0;
    for (name, _) in relays::NAMED {
        let world = relays::named(name, seed).expect("listed");
        let outcome = follow_run::run(&world, TraceMode::Tail);
        if outcome.failure.is_some() {
            println!("FAIL {name}");
            print!("{}", report(&world, &outcome));
            let code = exit_code(&outcome);
            worst = if worst == 0 { code } else { worst.min(code) };
        } else {
            println!("ok   {name}");
        }
    }
    worst
}
