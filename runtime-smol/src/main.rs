//! The graspd server on smol.

use std::process::ExitCode;
use std::sync::Arc;

use graspd_smol::SmolRuntime;

fn main() -> ExitCode {
    let config = graspd_host::Config::from_args();
    graspd_host::init_tracing(&config.log_filter);
    if config.command == Some(graspd_host::Task::Purge) {
        return graspd_host::purge::main(&config);
    }
    match smol::block_on(graspd_host::serve(Arc::new(SmolRuntime), config)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("graspd: {e}");
            ExitCode::FAILURE
        }
    }
}
