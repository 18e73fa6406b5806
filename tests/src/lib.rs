//! End-to-end harness: real server processes on loopback, the real `git` binary, and real
//! nostr clients (nostr-sdk 0.44 for events and signatures, a plain WebSocket for exact replies).
//!
//! Every test body takes a [`Flavor`] and runs once per server binary, so both runtimes pass
//! one suite.

pub mod attack;
pub mod browser;
pub mod fixtures;
pub mod git;
pub mod http;
pub mod nostr;
pub mod postgres_cluster;
pub mod server;
pub mod traffic;

pub use server::{Flavor, Server, ServerOptions};

/// Runs a test body once per runtime flavor, as separate `#[test]` functions.
#[macro_export]
macro_rules! both_runtimes {
    ($($name:ident),* $(,)?) => {
        mod tokio_server {
            $( #[test] fn $name() { super::$name($crate::Flavor::Tokio) } )*
        }
        mod smol_server {
            $( #[test] fn $name() { super::$name($crate::Flavor::Smol) } )*
        }
    };
}

/// A fresh, empty directory under the system temp dir, unique to this process and call.
pub fn temp_dir(label: &str) -> std::path::PathBuf {
    use std::sync::atomic::{AtomicU32, Ordering};
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    let dir = std::env::temp_dir().join(format!("graspd-e2e-{}-{label}-{n}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("create temp dir");
    dir
}
