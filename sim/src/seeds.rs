//! The one seed loop behind `--seeds K` for every world (engine, relay follower, host).

use std::time::Instant;

use crate::runner::FailureKind;
use crate::trace::TraceMode;

/// How one seed failed, as the seed loop prints it.
pub struct SeedFailure {
    pub kind: FailureKind,
    /// One line, listed with `--keep-going`.
    pub summary: String,
    /// What failed, the trace's tail and how to reproduce, printed at the first failure.
    pub report: String,
}

impl SeedFailure {
    /// Two runs of one seed differed (`why` says how).
    pub fn nondeterministic(why: String) -> SeedFailure {
        SeedFailure {
            kind: FailureKind::Determinism,
            report: format!("FAILED {why}\n"),
            summary: why,
        }
    }
}

/// Prints the result of checking one seed's determinism (`Ok`: the trace hash both runs
/// shared) and returns the exit code.
pub fn report_determinism(seed: u64, checked: Result<u64, String>) -> i32 {
    match checked {
        Ok(hash) => {
            println!("seed {seed}: deterministic, trace hash {hash:016x}");
            0
        }
        Err(e) => {
            println!("FAILED {e}");
            FailureKind::Determinism.exit_code()
        }
    }
}

/// How one seed's run traces: the whole trace, or only its tail when `quiet`.
pub fn trace_mode(quiet: bool) -> TraceMode {
    if quiet {
        TraceMode::Tail
    } else {
        TraceMode::Print
    }
}

/// Runs seeds `from..from + k` through `run` (and, when given, `determinism`, which runs a
/// seed twice and compares); stops at the first failure unless `keep_going`. `noun` names the
/// seeds in the summary ("host seeds"). Returns the exit code of the worst failure, or 0.
pub fn run_many(
    noun: &str,
    from: u64,
    k: u64,
    keep_going: bool,
    run: &dyn Fn(u64) -> Option<SeedFailure>,
    determinism: Option<&dyn Fn(u64) -> Option<SeedFailure>>,
) -> i32 {
    let started = Instant::now();
    let mut failed: Vec<(u64, FailureKind)> = Vec::new();
    for seed in from..from + k {
        if let Some(f) = run(seed) {
            if !keep_going {
                print!("{}", f.report);
                println!("{} {noun} passed before seed {seed} failed", seed - from);
                return f.kind.exit_code();
            }
            println!("seed {seed}: {:?} {}", f.kind, f.summary);
            failed.push((seed, f.kind));
            continue;
        }
        if let Some(f) = determinism.and_then(|check| check(seed)) {
            print!("{}", f.report);
            return f.kind.exit_code();
        }
    }
    if let Some(worst) = failed.iter().map(|(_, kind)| *kind).min() {
        let seeds: Vec<String> = failed.iter().map(|(s, _)| s.to_string()).collect();
        println!(
            "FAILED {} of {k} {noun} in {:.1}s: {}",
            failed.len(),
            started.elapsed().as_secs_f64(),
            seeds.join(" ")
        );
        return worst.exit_code();
    }
    println!(
        "OK {k} {noun} ({from}..{}) in {:.1}s",
        from + k,
        started.elapsed().as_secs_f64()
    );
    0
}
