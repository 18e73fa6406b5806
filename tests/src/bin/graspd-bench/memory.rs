//! Process footprint: binary sizes, idle RSS and threads, RSS with many waiting events.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use graspd_tests::{Flavor, Server, ServerOptions};

use crate::fixtures::{publish_pipelined, served_repo, waiting_prs};
use crate::report::{by_label, rss_mib, scrape, threads};

/// (unstripped, stripped) sizes in MiB of a release binary.
pub fn binary_sizes(flavor: Flavor) -> (f64, f64) {
    let path = flavor.binary();
    let unstripped = size_mib(&path);
    let stripped_path =
        std::env::temp_dir().join(format!("graspd-bench-{}-stripped", flavor.binary_name()));
    let status = Command::new("strip")
        .arg("-o")
        .arg(&stripped_path)
        .arg(&path)
        .status()
        .expect("run strip");
    assert!(status.success(), "strip failed");
    let stripped = size_mib(&stripped_path);
    let _ = std::fs::remove_file(stripped_path);
    (unstripped, stripped)
}

fn size_mib(path: &Path) -> f64 {
    std::fs::metadata(path).expect("binary").len() as f64 / (1024.0 * 1024.0)
}

/// A server whose published events never start a fetch during the run.
pub fn quiet_server(flavor: Flavor) -> Server {
    Server::start_with(flavor, quiet_options())
}

/// [`quiet_server`]'s options.
pub fn quiet_options() -> ServerOptions {
    ServerOptions::default()
        .arg("--sync-delay-published-ms")
        .arg("3600000")
        // Throughput is measured from one loopback address: no EVENT rate limit.
        .flag("--events-per-second-per-connection", 1_000_000)
        .flag("--events-per-second-per-address", 1_000_000)
        // One author publishes every waiting PR, from one address.
        .flag("--max-waiting-per-author", 10_000_000)
        .flag("--max-waiting-per-address", 10_000_000)
        .flag("--max-waiting", 10_000_000)
}

pub struct Footprint {
    pub idle_rss: f64,
    pub idle_threads: u64,
    /// RSS MiB and threads with the first step's events published live.
    pub live: (usize, f64, u64),
    /// Waiting events per second while publishing the first step.
    pub live_rate: f64,
    /// (waiting events, RSS MiB) after a restart restored them from the store.
    pub restored: Vec<(usize, f64)>,
}

/// Idle footprint; RSS after publishing `steps[0]` waiting PRs live; then RSS after restarts
/// with each step's count restored from the store (counts beyond the first are written into
/// the store file directly: one relay write costs one fsync, far too slow for 10^5 here).
pub fn footprint(flavor: Flavor, steps: &[usize]) -> Footprint {
    let mut server = quiet_server(flavor);
    let pid = server.pid().expect("server pid");
    settle();
    let idle_rss = rss_mib(pid);
    let idle_threads = threads(pid);
    served_repo(&server, "mem-bench");
    let total = steps.iter().copied().max().unwrap_or(0);
    let clone = server.repo_url(
        &graspd_tests::nostr::npub(&crate::fixtures::owner()),
        "mem-bench",
    );
    let prs = waiting_prs("mem-bench", total, &clone);
    let first = steps[0];
    let published = publish_pipelined(&server.ws_url(), &prs[..first], 10);
    assert_eq!(
        published.rejected, 0,
        "waiting PRs refused: {:?}",
        published.first_rejection
    );
    wait_for_waiting(&server, first);
    settle();
    let live = (first, rss_mib(pid), threads(pid));
    let mut restored = Vec::new();
    let mut loaded = first;
    for &step in steps {
        server.kill9();
        if step > loaded {
            preload_waiting(&server.data_dir, &prs[loaded..step]);
            loaded = step;
        }
        server.restart();
        wait_for_waiting(&server, step);
        settle();
        restored.push((step, rss_mib(server.pid().expect("pid"))));
    }
    Footprint {
        idle_rss,
        idle_threads,
        live,
        live_rate: published.per_second(),
        restored,
    }
}

fn wait_for_waiting(server: &Server, n: usize) {
    let deadline = Instant::now() + Duration::from_secs(300);
    loop {
        let counted: f64 = by_label(&scrape(server.addr), "graspd_purgatory_waiting", "kind")
            .values()
            .sum();
        if counted as usize >= n {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "only {counted} of {n} events waiting\n{}",
            server.log()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// graspd's purgatory table (core/host/src/store/schema.rs `WAITING`): event id ->
/// (arrival code, expiry in Unix seconds, event JSON). Duplicated here so the benchmark can
/// write 10^5 entries in one transaction; a schema change makes this fail loudly on open.
const WAITING: redb::TableDefinition<[u8; 32], (u8, u64, &[u8])> =
    redb::TableDefinition::new("waiting");
/// `Arrival::Published` in the store's encoding.
const ARRIVAL_PUBLISHED: u8 = 1;

fn preload_waiting(data_dir: &Path, events: &[graspd_tests::nostr::Event]) {
    let db = redb::Database::open(data_dir.join(graspd_host::store::FILE_NAME))
        .expect("open the stopped server's store");
    let expires = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        + 3600;
    let txn = db.begin_write().expect("write transaction");
    {
        let mut table = txn.open_table(WAITING).expect("purgatory table");
        for e in events {
            let json = serde_json::to_string(e).unwrap();
            table
                .insert(
                    e.id.to_bytes(),
                    (ARRIVAL_PUBLISHED, expires, json.as_bytes()),
                )
                .expect("insert waiting");
        }
    }
    txn.commit().expect("commit");
}

/// Lets background work (thread pools winding down, allocator trimming) finish before reading:
/// the server trims its heap on the second quiet second after a burst of writes.
fn settle() {
    let until = Instant::now() + Duration::from_secs(3);
    while Instant::now() < until {
        std::thread::sleep(Duration::from_millis(100));
    }
}
