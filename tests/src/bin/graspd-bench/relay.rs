//! Relay throughput (EVENTs accepted per second over 1, 10 and 100 connections) and REQ
//! latency for a tag filter over a large store.

use std::time::Instant;

use graspd_host::store::Store;
use graspd_tests::nostr::{Event, RelayClient};
use graspd_tests::Server;
use serde_json::json;

use crate::fixtures::{publish_pipelined, Published};
use crate::report::ms;

/// Publishes `events` in `connections` groups; every event is a new issue on an accepted repo.
pub fn throughput(server: &Server, events: &[Event], connections: usize) -> Published {
    let published = publish_pipelined(&server.ws_url(), events, connections);
    assert_eq!(
        published.rejected, 0,
        "bench issues refused: {:?}",
        published.first_rejection
    );
    published
}

/// Writes `events` straight into the server's store (stopped meanwhile), in batches of one
/// transaction each, then restarts it.
pub fn bulk_load(server: &mut Server, events: &[Event]) {
    server.kill9();
    {
        // The server's own store: PostgreSQL when the bench runs with GRASPD_DATABASE_URL.
        let store = match std::env::var("GRASPD_DATABASE_URL") {
            Ok(url) => Store::open_postgres(&graspd_host::store::PgSettings {
                url,
                connections: 1,
            }),
            Err(_) => Store::open_in(&server.data_dir),
        }
        .expect("open the bench store");
        for batch in events.chunks(5000) {
            let converted: Vec<nostr::event::Event> = batch
                .iter()
                .map(|e| {
                    nostr::event::Event::from_json(serde_json::to_string(e).unwrap())
                        .expect("event json")
                })
                .collect();
            store.insert_many(&converted).expect("bulk insert");
        }
    }
    server.restart();
}

/// Milliseconds per REQ (to EOSE) for `queries` filters on one connection; returns
/// (latencies, events returned by the first).
pub fn req_latency(server: &Server, filters: &[serde_json::Value]) -> (Vec<f64>, usize) {
    let mut relay = RelayClient::connect(&server.ws_url());
    // Warm-up, not counted.
    let first = relay.query(filters[0].clone()).len();
    let mut samples = Vec::with_capacity(filters.len());
    for f in filters {
        let started = Instant::now();
        relay.query(f.clone());
        samples.push(ms(started.elapsed()));
    }
    (samples, first)
}

/// Tag filters over `buckets` values, round robin.
pub fn tag_filters(count: usize, buckets: usize) -> Vec<serde_json::Value> {
    (0..count)
        .map(|i| json!({"#t": [format!("b{}", (i * 7919) % buckets)]}))
        .collect()
}
