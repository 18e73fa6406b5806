//! Running seeds: one (with a readable trace), many (swarm), twice (determinism), with engine
//! panics turned into `Crash` failures.

use std::panic::{self, AssertUnwindSafe};

use crate::runner::{self, Failure, FailureKind, Outcome};
use crate::scenario::{Scenario, Size};
use crate::sut::EngineFactory;
use crate::trace::TraceMode;

/// Runs a scenario, turning a panic into a `Crash` failure.
pub fn run_guarded(sc: &Scenario, factory: &dyn EngineFactory, mode: TraceMode) -> Outcome {
    match panic::catch_unwind(AssertUnwindSafe(|| runner::run(sc, factory, mode))) {
        Ok(outcome) => outcome,
        Err(payload) => {
            let msg = payload
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| payload.downcast_ref::<&str>().map(|s| (*s).to_owned()))
                .unwrap_or_else(|| "unknown panic".into());
            Outcome {
                summary: sc.summary(),
                hash: 0,
                lines: 0,
                failure: Some(Failure {
                    kind: FailureKind::Crash,
                    at: graspd_core::Time::ZERO,
                    message: format!("panicked: {msg}"),
                }),
                stats: Default::default(),
                tail: Vec::new(),
            }
        }
    }
}

pub fn run_seed(seed: u64, size: Size, factory: &dyn EngineFactory, mode: TraceMode) -> Outcome {
    run_guarded(&Scenario::random(seed, size), factory, mode)
}

/// Runs a seed twice and compares the trace hashes.
pub fn check_determinism(sc: &Scenario, factory: &dyn EngineFactory) -> Result<u64, Failure> {
    let a = run_guarded(sc, factory, TraceMode::Quiet);
    let b = run_guarded(sc, factory, TraceMode::Quiet);
    if a.hash == b.hash && a.lines == b.lines {
        Ok(a.hash)
    } else {
        Err(Failure {
            kind: FailureKind::Determinism,
            at: graspd_core::Time::ZERO,
            message: format!(
                "seed {} gave trace hash {:016x} ({} lines) then {:016x} ({} lines)",
                sc.seed, a.hash, a.lines, b.hash, b.lines
            ),
        })
    }
}

/// The command that reproduces a failing run.
pub fn repro_command(sc: &Scenario) -> String {
    if sc.name == "random" {
        format!("cargo run -p graspd-sim --release -- --seed {}", sc.seed)
    } else if sc.name == "random-small" {
        format!(
            "cargo run -p graspd-sim --release -- --small --seed {}",
            sc.seed
        )
    } else {
        format!(
            "cargo run -p graspd-sim --release -- --scenario {} --seed {}",
            sc.name, sc.seed
        )
    }
}

/// A failure report: what broke, the scenario line, the last trace lines, how to reproduce.
pub fn report(sc: &Scenario, outcome: &Outcome) -> String {
    let mut s = String::new();
    if let Some(f) = &outcome.failure {
        s.push_str(&format!("FAILED {f}\n  {}\n", outcome.summary));
        if !outcome.tail.is_empty() {
            s.push_str("  last trace lines:\n");
            for l in &outcome.tail {
                s.push_str(&format!("    {l}\n"));
            }
        }
        s.push_str(&format!("  reproduce: {}\n", repro_command(sc)));
    }
    s
}
