//! graspd-host: all of graspd's IO, written once and generic over a small [`Runtime`] trait.
//!
//! The runtime crates (`graspd-tokio`, `graspd-smol`) implement [`Runtime`], parse [`Config`]
//! and call [`serve`].

pub mod config;
pub mod follow;
pub mod git;
pub mod http;
pub mod io;
pub mod nip11;
pub mod relay;
pub mod runtime;
pub mod store;
mod unwired;

use std::fmt;
use std::sync::Arc;

pub use config::{init_tracing, Config};
pub use runtime::{BoxFuture, Runtime};

/// Why the server could not run.
#[derive(Debug)]
pub enum ServeError {
    /// Binding the listen address failed.
    Bind {
        addr: std::net::SocketAddr,
        error: std::io::Error,
    },
    DataDir {
        path: std::path::PathBuf,
        error: std::io::Error,
    },
}

impl fmt::Display for ServeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ServeError::Bind { addr, error } => write!(f, "cannot listen on {addr}: {error}"),
            ServeError::DataDir { path, error } => {
                write!(f, "cannot use data directory {}: {error}", path.display())
            }
        }
    }
}

impl std::error::Error for ServeError {}

/// Runs graspd until the runtime's shutdown signal (SIGINT/SIGTERM).
pub async fn serve(runtime: Arc<dyn Runtime>, config: Config) -> Result<(), ServeError> {
    std::fs::create_dir_all(&config.data_dir).map_err(|error| ServeError::DataDir {
        path: config.data_dir.clone(),
        error,
    })?;
    // Until the driver and store are wired in, the relay and push decisions are stand-ins
    // that refuse everything with a clear message.
    let handlers = unwired::handlers(&config);
    let site = http::Site {
        git: git::Git::new(Arc::clone(&runtime), &config.data_dir),
        handlers,
        max_body_bytes: config.max_body_bytes,
        public_url: config.public_url(),
    };
    let server = http::Server::bind(Arc::clone(&runtime), config.bind, site)
        .await
        .map_err(|error| ServeError::Bind {
            addr: config.bind,
            error,
        })?;
    let addr = server.local_addr().unwrap_or(config.bind);
    tracing::info!(%addr, public_url = %config.public_url(), data_dir = %config.data_dir.display(), "graspd listening");
    server.run(runtime.shutdown_signal()).await;
    tracing::info!("graspd stopped");
    Ok(())
}
