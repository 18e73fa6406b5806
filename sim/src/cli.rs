//! Command line: `--seed N` (one run, full trace), `--seeds K` (swarm), `--check-determinism`,
//! `--scenario NAME` / `--scenarios` (named fault scenarios). Exit codes: 0 ok, 2 safety,
//! 3 liveness, 4 crash (the engine panicked), 5 determinism, 64 usage.

use crate::host;
use crate::instances_cli;
use crate::named;
use crate::relay_cli;
use crate::relays;
use crate::runner::FailureKind;
use crate::scenario::{Scenario, Size};
use crate::seeds::{self, SeedFailure};
use crate::sut::EngineFactory;
use crate::swarm::{check_determinism, report, repro_command, run_guarded};
use crate::trace::TraceMode;

pub const USAGE: &str = "\
usage: graspd-sim [options]
  --seed N              run seed N with a readable trace (with --scenario: that scenario)
  --seeds K             run K seeds (from --from, default 0), quiet; stop at the first failure
  --from S              first seed for --seeds
  --check-determinism   run each seed twice and compare trace hashes
  --scenario NAME       run a named fault scenario (see --list)
  --scenarios           run every named scenario
  --list                list the named scenarios
  --relays              relay-follower worlds instead of engine worlds (with --seed/--seeds);
                        --scenario relay-* implies it
  --host                host worlds: the real graspd-host on a simulated runtime (with
                        --seed/--seeds); --scenario host-* implies it
  --instances           instances worlds: several engines with sync leases over one shared
                        store, crashes and database partitions (with --seed/--seeds)
  --small               small worlds (what the CI swarm test uses)
  --keep-going          with --seeds: run every seed, list every failing one
  --quiet               with --seed: no trace, only the result
exit codes: 0 ok, 2 safety, 3 liveness, 4 crash (engine panic), 5 determinism, 64 usage";

#[derive(Debug, Default)]
struct Args {
    seed: Option<u64>,
    seeds: Option<u64>,
    from: u64,
    determinism: bool,
    scenario: Option<String>,
    scenarios: bool,
    list: bool,
    small: bool,
    quiet: bool,
    keep_going: bool,
    relays: bool,
    host: bool,
    instances: bool,
}

fn parse(args: &[String]) -> Result<Args, String> {
    let mut a = Args::default();
    let mut it = args.iter();
    let num = |v: Option<&String>, flag: &str| -> Result<u64, String> {
        v.ok_or(format!("{flag} needs a number"))?
            .parse()
            .map_err(|_| format!("{flag} needs a number"))
    };
    while let Some(arg) = it.next() {
        match arg.as_str() {
            "--seed" => a.seed = Some(num(it.next(), "--seed")?),
            "--seeds" => a.seeds = Some(num(it.next(), "--seeds")?),
            "--from" => a.from = num(it.next(), "--from")?,
            "--check-determinism" => a.determinism = true,
            "--scenario" => a.scenario = Some(it.next().ok_or("--scenario needs a name")?.clone()),
            "--scenarios" => a.scenarios = true,
            "--list" => a.list = true,
            "--small" => a.small = true,
            "--quiet" => a.quiet = true,
            "--keep-going" => a.keep_going = true,
            "--relays" => a.relays = true,
            "--host" => a.host = true,
            "--instances" => a.instances = true,
            "-h" | "--help" => return Err(String::new()),
            other => return Err(format!("unknown argument {other:?}")),
        }
    }
    Ok(a)
}

/// Runs the command line; returns the process exit code.
pub fn main(args: &[String], factory: &dyn EngineFactory) -> i32 {
    let a = match parse(args) {
        Ok(a) => a,
        Err(e) => {
            if !e.is_empty() {
                eprintln!("{e}");
            }
            eprintln!("{USAGE}");
            return if e.is_empty() { 0 } else { 64 };
        }
    };
    let size = if a.small {
        Size::small()
    } else {
        Size::default()
    };
    if a.list {
        for (name, what) in named::ALL.iter().chain(relays::NAMED) {
            println!("{name:28} {what}");
        }
        for (name, what, _) in host::world::NAMED {
            println!("{name:28} {what}");
        }
        return 0;
    }
    if a.scenarios {
        let engine = run_named_all(factory, a.seed.unwrap_or(1));
        let relays = relay_cli::run_named_all(a.seed.unwrap_or(1));
        let host = host::cli::run_named_all(a.seed.unwrap_or(1));
        return [engine, relays, host]
            .into_iter()
            .filter(|c| *c != 0)
            .min()
            .unwrap_or(0);
    }
    if a.instances {
        return match a.seeds {
            Some(k) => instances_cli::run_many(a.from, k, a.determinism, a.keep_going),
            None => instances_cli::run_one(a.seed.unwrap_or(0), a.quiet, a.determinism),
        };
    }
    let host_scenario = a
        .scenario
        .as_deref()
        .filter(|n| host::cli::is_host_scenario(n));
    if a.host || host_scenario.is_some() {
        return match a.seeds {
            Some(k) => host::cli::run_many(host_scenario, a.from, k, a.determinism, a.keep_going),
            None => host::cli::run_one(host_scenario, a.seed.unwrap_or(0), a.quiet, a.determinism),
        };
    }
    let relay_scenario = a
        .scenario
        .as_deref()
        .filter(|n| relay_cli::is_relay_scenario(n));
    if a.relays || relay_scenario.is_some() {
        return match a.seeds {
            Some(k) => relay_cli::run_many(relay_scenario, a.from, k, a.determinism, a.keep_going),
            None => relay_cli::run_one(relay_scenario, a.seed.unwrap_or(0), a.quiet, a.determinism),
        };
    }
    let scenario_for = |seed: u64| -> Option<Scenario> {
        match &a.scenario {
            Some(name) => named::build(name, seed),
            None => Some(Scenario::random(seed, size)),
        }
    };
    if let Some(name) = &a.scenario {
        if named::build(name, 0).is_none() {
            eprintln!("no scenario named {name:?}; --list shows them");
            return 64;
        }
    }
    if let Some(k) = a.seeds {
        return run_many(
            factory,
            a.from,
            k,
            a.determinism,
            a.keep_going,
            &scenario_for,
        );
    }
    let seed = a.seed.unwrap_or(0);
    let sc = scenario_for(seed).expect("checked above");
    if a.determinism {
        return match check_determinism(&sc, factory) {
            Ok(hash) => {
                println!("seed {seed}: deterministic, trace hash {hash:016x}");
                0
            }
            Err(f) => {
                println!(
                    "FAILED {f}\n  reproduce: {} --check-determinism",
                    repro_command(&sc)
                );
                f.kind.exit_code()
            }
        };
    }
    let mode = if a.quiet {
        TraceMode::Tail
    } else {
        TraceMode::Print
    };
    let outcome = run_guarded(&sc, factory, mode);
    match &outcome.failure {
        None => {
            println!(
                "OK seed={seed} trace_hash={:016x} lines={} steps={} fetches={} released={} expired={} crashes={}",
                outcome.hash,
                outcome.lines,
                outcome.stats.steps,
                outcome.stats.fetches,
                outcome.stats.released,
                outcome.stats.expired,
                outcome.stats.crashes
            );
            0
        }
        Some(f) => {
            print!("{}", report(&sc, &outcome));
            f.kind.exit_code()
        }
    }
}

/// Seeds `from..from + k` of an engine world; stops at the first failure unless `keep_going`.
fn run_many(
    factory: &dyn EngineFactory,
    from: u64,
    k: u64,
    determinism: bool,
    keep_going: bool,
    scenario_for: &dyn Fn(u64) -> Option<Scenario>,
) -> i32 {
    let run = |seed| {
        let sc = scenario_for(seed).expect("checked");
        let outcome = run_guarded(&sc, factory, TraceMode::Tail);
        let f = outcome.failure.as_ref()?;
        Some(SeedFailure {
            kind: f.kind,
            summary: format!("at {}: {}", f.at, f.message),
            report: report(&sc, &outcome),
        })
    };
    let deterministic = |seed| {
        let sc = scenario_for(seed).expect("checked");
        let f = check_determinism(&sc, factory).err()?;
        Some(SeedFailure {
            kind: f.kind,
            summary: f.message.clone(),
            report: format!(
                "FAILED {f}\n  reproduce: {} --check-determinism\n",
                repro_command(&sc)
            ),
        })
    };
    let determinism = determinism.then_some(&deterministic as &dyn Fn(u64) -> Option<SeedFailure>);
    seeds::run_many("seeds", from, k, keep_going, &run, determinism)
}

fn run_named_all(factory: &dyn EngineFactory, seed: u64) -> i32 {
    let mut worst: Option<FailureKind> = None;
    for (name, _) in named::ALL {
        let sc = named::build(name, seed).expect("listed");
        let outcome = run_guarded(&sc, factory, TraceMode::Tail);
        match &outcome.failure {
            None => println!("ok   {name}"),
            Some(f) => {
                println!("FAIL {name}");
                print!("{}", report(&sc, &outcome));
                worst = Some(worst.map_or(f.kind, |w| w.min(f.kind)));
            }
        }
    }
    worst.map_or(0, FailureKind::exit_code)
}
