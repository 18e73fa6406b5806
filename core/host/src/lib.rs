//! graspd-host: all of graspd's IO, written once and generic over a small [`Runtime`] trait.
//!
//! The runtime crates (`graspd-tokio`, `graspd-smol`) implement [`Runtime`], parse [`Config`]
//! and call [`serve`].

pub mod address;
pub mod clock;
pub mod config;
mod config_check;
pub mod driver;
pub mod event_rate;
mod fd_limit;
pub mod follow;
pub mod git;
mod heap;
pub mod hex;
pub mod http;
pub mod io;
pub mod leases;
pub mod metrics;
pub mod nip11;
pub mod policy_file;
pub mod purge;
pub mod refusals;
pub mod relay;
pub mod resolve;
pub mod runtime;
pub mod store;

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

pub use config::{init_tracing, Config, Task};
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
    /// The event store could not be opened (corrupt, newer format, unreadable).
    Store(store::StoreError),
    /// `--public-url` is not an http(s) origin.
    PublicUrl(String),
    /// The `--config` policy file cannot be read, does not parse or has a bad entry.
    Policy(policy_file::PolicyFileError),
}

impl fmt::Display for ServeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ServeError::Bind { addr, error } => write!(f, "cannot listen on {addr}: {error}"),
            ServeError::DataDir { path, error } => {
                write!(f, "cannot use data directory {}: {error}", path.display())
            }
            ServeError::Store(error) => write!(f, "cannot open the event store: {error}"),
            ServeError::PublicUrl(error) => write!(f, "bad --public-url: {error}"),
            ServeError::Policy(error) => write!(f, "bad --config: {error}"),
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
    let refusals = Arc::new(refusals::Refusals::new());
    let git = git::Git::new(Arc::clone(&runtime), &config.data_dir)
        .with_limits(config.git_limits())
        .with_pruning(config.prune_limits())
        .with_refusals(Arc::clone(&refusals));
    let git = match config.database() {
        Some(database) => {
            let locks = store::pg::repo_locks::PgRepoLocks::new(Arc::clone(&runtime), &database)
                .map_err(|detail| {
                    ServeError::Store(store::StoreError::Database {
                        url: "the --database-url".into(),
                        detail,
                    })
                })?;
            git.with_shared_locks(Arc::new(locks))
        }
        None => git,
    };
    let relay_limits = config.connections.relay_limits();
    let own = graspd_core::acceptance::OwnService::new(&config.public_url())
        .map_err(ServeError::PublicUrl)?;
    config_check::log_warnings(&config, &own);
    let policy_source = policy_file::PolicySource::new(&config);
    let policy_file = policy_source.read();
    let policy = policy_source
        .policy(policy_file.as_ref())
        .map_err(ServeError::Policy)?;
    let relay_info = nip11::RelayInfo {
        name: "graspd".to_owned(),
        description: "A GRASP server: git repositories authorised by signed nostr proofs"
            .to_owned(),
        own: Some(own.clone()),
        purgatory_expiry: config.purgatory_expiry(),
        grasp06: config.grasp06,
        ..Default::default()
    };
    let settings = driver::Settings {
        purgatory_expiry: config.purgatory_expiry(),
        max_fetch_bytes: config.max_fetch_bytes,
        allow_private_remotes: config.allow_private_remotes,
        relay_info,
        relay_limits,
        refusals: Arc::clone(&refusals),
        store_writers: config.max_writes_per_commit,
        sync_lease: Duration::from_secs(config.sync_lease_secs),
    };
    let follower = follow::FollowerHandle::new(
        Arc::clone(&runtime),
        follow::RelayFollower::new(config.follow_config(), own),
        config.follow.client_limits(),
    );
    let node = driver::Node::start(
        Arc::clone(&runtime),
        &config,
        policy,
        Arc::new(git.clone()),
        settings,
        follower.clone(),
    )
    .await
    .map_err(ServeError::Store)?;
    if let (Some(file), Some(path)) = (policy_file, policy_source.path()) {
        let sizes = node.policy().sizes();
        tracing::info!(
            config = %path.display(),
            deny_authors = sizes.deny_authors,
            deny_repos = sizes.deny_repos,
            allow_repos = sizes.allow_repos,
            archive_repos = sizes.archive_repos,
            "policy lists loaded"
        );
        let poll =
            (config.config_poll_secs > 0).then(|| Duration::from_secs(config.config_poll_secs));
        node.spawn_policy_reloader(policy_source, Some(file.fingerprint), poll);
    }
    if config.connections.max_negentropy_sessions > 0 {
        follower.set_local_items(node.local_items());
    }
    let synced = Arc::clone(&node);
    follow::spawn_follower_async(Arc::clone(&runtime), follower, move |event, relay| {
        let node = Arc::clone(&synced);
        Box::pin(async move { node.accept_synced(event, &relay).await.accepted })
    });
    let served = serve_site(runtime, &config, git, driver::handlers(&node), refusals).await;
    node.hub().close_all();
    served
}

/// Serves the HTTP origin with these handlers until the runtime's shutdown signal. `git`
/// must be the same handle the driver uses, so pushes and releases share the repo locks.
pub async fn serve_site(
    runtime: Arc<dyn Runtime>,
    config: &Config,
    git: git::Git,
    handlers: http::Handlers,
    refusals: Arc<refusals::Refusals>,
) -> Result<(), ServeError> {
    std::fs::create_dir_all(&config.data_dir).map_err(|error| ServeError::DataDir {
        path: config.data_dir.clone(),
        error,
    })?;
    let limits = &config.connections;
    let clients = http::clients::Clients::new(
        limits.trusted_proxies(),
        refusals,
        fd_limit::websockets_that_fit(limits.max_websockets),
        limits.max_websockets_per_address,
    );
    let site = http::Site {
        git,
        handlers,
        body: config.body_limits(),
        public_url: config.public_url(),
        clients: Arc::new(clients),
        grasp06: config.grasp06,
    };
    let server = http::Server::bind(Arc::clone(&runtime), config.bind, site)
        .await
        .map_err(|error| ServeError::Bind {
            addr: config.bind,
            error,
        })?;
    let addr = server.local_addr().unwrap_or(config.bind);
    tracing::info!(
        %addr,
        public_url = %config.public_url(),
        data_dir = %config.data_dir.display(),
        "graspd listening"
    );
    server.run(runtime.shutdown_signal()).await;
    tracing::info!("graspd stopped");
    Ok(())
}
