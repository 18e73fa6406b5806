//! Command line for the instances world: `--instances --seed N`, `--instances --seeds K`.

use crate::instances::{self, Plant};
use crate::seeds::{self, SeedFailure};
use crate::trace::TraceMode;

/// Runs `seed` twice and compares the trace hashes; `Ok` holds the hash.
pub fn check_determinism(seed: u64, plant: Plant) -> Result<u64, String> {
    let first = instances::run(seed, TraceMode::Quiet, plant);
    let second = instances::run(seed, TraceMode::Quiet, plant);
    if first.hash == second.hash && first.lines == second.lines {
        Ok(first.hash)
    } else {
        Err(format!(
            "seed {seed}: trace hashes differ ({:016x} / {:016x})",
            first.hash, second.hash
        ))
    }
}

/// One seed with a trace (`quiet`: only the result), or a determinism check.
pub fn run_one(seed: u64, quiet: bool, determinism: bool) -> i32 {
    if determinism {
        return seeds::report_determinism(seed, check_determinism(seed, Plant::None));
    }
    let outcome = instances::run(seed, seeds::trace_mode(quiet), Plant::None);
    println!("{}", instances::summary(&outcome));
    outcome.failure.map_or(0, |(kind, _)| kind.exit_code())
}

/// Seeds `from..from + k`.
pub fn run_many(from: u64, k: u64, determinism: bool, keep_going: bool) -> i32 {
    let run = |seed| {
        let outcome = instances::run(seed, TraceMode::Tail, Plant::None);
        let (kind, message) = outcome.failure.clone()?;
        Some(SeedFailure {
            kind,
            summary: message,
            report: format!("{}\n", instances::summary(&outcome)),
        })
    };
    let deterministic = |seed| {
        check_determinism(seed, Plant::None)
            .err()
            .map(SeedFailure::nondeterministic)
    };
    let determinism = determinism.then_some(&deterministic as &dyn Fn(u64) -> Option<SeedFailure>);
    seeds::run_many("instance seeds", from, k, keep_going, &run, determinism)
}
