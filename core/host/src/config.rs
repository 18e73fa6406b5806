//! Command-line and environment configuration shared by both server binaries.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser};

/// graspd: a GRASP server (a nostr relay and git smart-HTTP on one origin).
#[derive(Parser, Debug, Clone)]
#[command(name = "graspd", version, about)]
pub struct Config {
    /// Address to listen on.
    #[arg(long, env = "GRASPD_BIND", default_value = "127.0.0.1:7334")]
    pub bind: SocketAddr,

    /// The URL users reach this server at (clone URLs and relay URLs in announcements must name
    /// it). Defaults to `http://<bind>`.
    #[arg(long, env = "GRASPD_PUBLIC_URL")]
    pub public_url: Option<String>,

    /// Directory for the bare repositories and the event store.
    #[arg(long, env = "GRASPD_DATA_DIR", default_value = "./data")]
    pub data_dir: PathBuf,

    /// Allow fetching git data from loopback, private and link-local addresses (tests, LANs).
    #[arg(long, env = "GRASPD_ALLOW_PRIVATE_REMOTES")]
    pub allow_private_remotes: bool,

    /// Log filter in `tracing_subscriber::EnvFilter` syntax, e.g. `info,graspd_host=debug`.
    #[arg(long = "log", env = "GRASPD_LOG", default_value = "info")]
    pub log_filter: String,

    /// Largest accepted HTTP request body in bytes, after gzip decoding (a push's pack).
    #[arg(long, env = "GRASPD_MAX_BODY_BYTES", default_value_t = 512 * 1024 * 1024)]
    pub max_body_bytes: u64,

    /// Seconds a fetch from another git server may take before it is killed.
    #[arg(long, env = "GRASPD_FETCH_TIMEOUT_SECS", default_value_t = 120)]
    pub fetch_timeout_secs: u64,

    /// Largest pack in bytes a fetch from another git server may bring.
    #[arg(long, env = "GRASPD_MAX_FETCH_BYTES", default_value_t = 512 * 1024 * 1024)]
    pub max_fetch_bytes: u64,

    #[command(flatten)]
    pub engine: EngineLimits,
}

/// Engine limits and delays (purgatory expiry, backoff, per-domain throttle). Placeholder: each
/// `graspd_core` config field gets a flag and env variable here as the engine lands.
#[derive(Args, Debug, Clone, Default)]
pub struct EngineLimits {}

impl Config {
    /// `--public-url`, or `http://<bind>` when not set; never ends with `/`.
    pub fn public_url(&self) -> String {
        let url = match &self.public_url {
            Some(url) => url.clone(),
            None => format!("http://{}", self.bind),
        };
        url.trim_end_matches('/').to_owned()
    }

    pub fn fetch_timeout(&self) -> Duration {
        Duration::from_secs(self.fetch_timeout_secs)
    }

    /// Parses the command line, with environment variables as fallbacks; exits with usage on
    /// error (what both binaries call, so they need no clap of their own).
    pub fn from_args() -> Config {
        Config::parse()
    }

    /// A configuration with every default, for tests and embedding.
    pub fn defaults() -> Config {
        Config::parse_from(["graspd"])
    }
}

/// Installs the global `tracing` subscriber with `filter`; a bad filter falls back to `info`
/// and says so.
pub fn init_tracing(filter: &str) {
    let env_filter = match tracing_subscriber::EnvFilter::try_new(filter) {
        Ok(f) => f,
        Err(e) => {
            eprintln!("graspd: bad log filter {filter:?} ({e}); using \"info\"");
            tracing_subscriber::EnvFilter::new("info")
        }
    };
    let _ = tracing_subscriber::fmt()
        .with_env_filter(env_filter)
        .try_init();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn public_url_defaults_to_bind() {
        let config = Config::parse_from(["graspd", "--bind", "0.0.0.0:80"]);
        assert_eq!(config.public_url(), "http://0.0.0.0:80");
        let config = Config::parse_from(["graspd", "--public-url", "https://git.example/"]);
        assert_eq!(config.public_url(), "https://git.example");
        assert!(!config.allow_private_remotes);
    }
}
