//! Several instances on one PostgreSQL database and one data directory, behind one public
//! URL, next to one instance on redb: EVENTs accepted per second over 10 connections spread
//! across the instances, and a push to one instance until the state is live on another.

use std::time::Instant;

use graspd_tests::nostr::Event;
use graspd_tests::{Flavor, Server};

use crate::fixtures::{publish_pipelined, served_repo};
use crate::memory::quiet_options;
use crate::push::{measure_across, PushLatency};

/// Connections the EVENTs are published over, in total.
const CONNECTIONS: usize = 10;

pub struct Measured {
    pub events_per_second: f64,
    /// Store writes per group commit while the EVENTs were published, over every instance.
    pub writes_per_commit: f64,
    pub push: PushLatency,
}

/// Group commits and the writes they held so far, summed over `servers`.
fn group_commits(servers: &[Server]) -> (f64, f64) {
    servers
        .iter()
        .fold((0.0, 0.0), |(commits, writes), server| {
            (
                commits + server.metric_sum("graspd_store_group_commits_total"),
                writes + server.metric_sum("graspd_store_grouped_writes_total"),
            )
        })
}

/// `instances` on PostgreSQL (a fresh database), or one on redb when `None`.
pub fn measure(
    flavor: Flavor,
    instances: Option<usize>,
    events: &[Event],
    pushes: usize,
) -> Option<Measured> {
    // Nothing is fetched: every state is published for a push that follows.
    let options = quiet_options();
    let servers: Vec<Server> = match instances {
        None => vec![Server::start_with(flavor, options)],
        Some(count) => {
            let cluster = graspd_tests::postgres_cluster::required("bench instances")?;
            let options = options.flag(
                "--database-url",
                cluster.database(&format!("bench_{}_{count}", flavor.binary_name())),
            );
            let first = Server::start_with(flavor, options.clone());
            let behind_one_origin = options
                .data_dir(&first.data_dir)
                .public_url(first.http_url());
            let mut servers = vec![first];
            for _ in 1..count {
                servers.push(Server::start_with(flavor, behind_one_origin.clone()));
            }
            servers
        }
    };
    served_repo(&servers[0], "relay-bench");
    let count = servers.len();
    let share = events.len().div_ceil(count);
    let (commits_before, writes_before) = group_commits(&servers);
    let started = Instant::now();
    let published: Vec<_> = std::thread::scope(|scope| {
        let handles: Vec<_> = servers
            .iter()
            .zip(events.chunks(share))
            .enumerate()
            .map(|(i, (server, chunk))| {
                let connections = CONNECTIONS / count + usize::from(i < CONNECTIONS % count);
                let url = server.ws_url();
                scope.spawn(move || publish_pipelined(&url, chunk, connections))
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let elapsed = started.elapsed();
    let (commits_after, writes_after) = group_commits(&servers);
    let writes_per_commit =
        (writes_after - writes_before) / (commits_after - commits_before).max(1.0);
    for p in &published {
        assert_eq!(
            p.rejected, 0,
            "bench issues refused: {:?}",
            p.first_rejection
        );
    }
    let accepted: usize = published.iter().map(|p| p.accepted).sum();
    let events_per_second = accepted as f64 / elapsed.as_secs_f64();
    // Published on the first, pushed to the second, live on the last.
    let push = measure_across(
        &servers[0],
        &servers[1.min(count - 1)],
        &servers[count - 1],
        pushes,
    );
    for server in servers {
        crate::stop_gracefully(server);
    }
    Some(Measured {
        events_per_second,
        writes_per_commit,
        push,
    })
}
