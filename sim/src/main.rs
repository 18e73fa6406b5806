//! `cargo run -p graspd-sim --release -- --seed N`: see `graspd_sim::cli::USAGE`.

use graspd_sim::adapter::CoreFactory;
use graspd_sim::doubles::SlothFactory;
use graspd_sim::sut::EngineFactory;

fn main() {
    let mut args: Vec<String> = std::env::args().skip(1).collect();
    // `--engine sloth` runs a do-nothing engine: a check that the checks bite.
    let mut factory: &dyn EngineFactory = &CoreFactory;
    if let Some(i) = args.iter().position(|a| a == "--engine") {
        if args.get(i + 1).map(String::as_str) == Some("sloth") {
            factory = &SlothFactory;
        }
        args.drain(i..(i + 2).min(args.len()));
    }
    std::process::exit(graspd_sim::cli::main(&args, factory));
}
