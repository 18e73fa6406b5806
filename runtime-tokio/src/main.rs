//! The graspd server on tokio.

use std::process::ExitCode;
use std::sync::Arc;

use graspd_tokio::TokioRuntime;

fn main() -> ExitCode {
    let config = graspd_host::Config::from_args();
    graspd_host::init_tracing(&config.log_filter);
    if config.command == Some(graspd_host::Task::Purge) {
        return graspd_host::purge::main(&config);
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("graspd: cannot start the tokio runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let adapter = Arc::new(TokioRuntime::new(runtime.handle().clone()));
    match runtime.block_on(graspd_host::serve(adapter, config)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("graspd: {e}");
            ExitCode::FAILURE
        }
    }
}
