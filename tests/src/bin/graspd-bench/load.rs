//! Sync under load: many repositories waiting on five remote "domains" (loopback ports; the
//! throttle keys on host:port): three real servers, one down, one answering 429. Scrapes B's
//! /metrics to show no domain exceeded its concurrency or its per-minute rate.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use graspd_tests::git::WorkRepo;
use graspd_tests::nostr::{npub, Event, RelayClient};
use graspd_tests::{Flavor, Server, ServerOptions};
use serde_json::json;

use crate::fixtures::owner;
use crate::report::{by_label, scrape};
use crate::sync::announced_at;

pub struct LoadSettings {
    pub repos: usize,
    pub max_per_domain: usize,
    pub max_per_minute: usize,
    pub timeout: Duration,
}

pub struct LoadResult {
    pub reachable: usize,
    pub released: usize,
    pub elapsed: Duration,
    /// Per domain: the most fetches seen in flight at one scrape.
    pub max_in_flight: BTreeMap<String, f64>,
    /// Per domain: the most fetches completed within any 60 s between two scrapes.
    pub max_per_minute: BTreeMap<String, f64>,
    /// Per domain: all fetches by outcome at the end.
    pub outcomes: BTreeMap<String, BTreeMap<String, f64>>,
    pub throttle_waits: f64,
    pub scrapes: usize,
}

/// A loopback listener that answers every request with 429 until dropped.
struct RateLimiter {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
}

impl RateLimiter {
    fn start() -> RateLimiter {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind 429 stub");
        listener.set_nonblocking(true).unwrap();
        let addr = listener.local_addr().unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let stopped = stop.clone();
        std::thread::spawn(move || {
            while !stopped.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((mut conn, _)) => {
                        conn.set_nonblocking(false).unwrap();
                        conn.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
                        let mut buf = [0u8; 4096];
                        let _ = conn.read(&mut buf);
                        let _ = conn.write_all(
                            b"HTTP/1.1 429 Too Many Requests\r\nRetry-After: 60\r\n\
                              Content-Length: 0\r\nConnection: close\r\n\r\n",
                        );
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(5)),
                }
            }
        });
        RateLimiter { addr, stop }
    }
}

impl Drop for RateLimiter {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// A loopback port nothing listens on.
fn down_addr() -> SocketAddr {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
}

pub fn measure(flavor: Flavor, settings: &LoadSettings) -> LoadResult {
    let owner = owner();
    let real: Vec<Server> = (0..3).map(|_| Server::start(Flavor::Tokio)).collect();
    let limiter = RateLimiter::start();
    let down = down_addr();
    let b = Server::start_with(
        flavor,
        ServerOptions::default()
            .arg("--sync-delay-published-ms")
            .arg("0")
            .arg("--sync-backoff-ms")
            .arg("2000")
            .arg("--sync-backoff-max-ms")
            .arg("8000")
            .arg("--max-fetches-per-domain")
            .arg(settings.max_per_domain.to_string())
            .arg("--max-fetches-per-minute")
            .arg(settings.max_per_minute.to_string()),
    );
    // Domains 0..2 are real servers, 3 is down, 4 answers 429.
    let origins: Vec<String> = real
        .iter()
        .map(Server::http_url)
        .chain([format!("http://{down}"), format!("http://{}", limiter.addr)])
        .collect();

    // Repository i lists domains i%5 and (i+1)%5 (and B); its data is on the first real one,
    // so the fifth that list only "down" and "429" are unreachable.
    let work = WorkRepo::init("bench-load");
    let head = work.commit("README", "load\n");
    let mut per_server: Vec<Vec<(Event, Event, String)>> = vec![Vec::new(); 3];
    let mut to_b = Vec::new();
    let mut reachable = BTreeSet::new();
    let b_url = b.http_url();
    for i in 0..settings.repos {
        let identifier = format!("load-{i}");
        let listed = [i % 5, (i + 1) % 5];
        let urls: Vec<&str> = listed
            .iter()
            .map(|&d| origins[d].as_str())
            .chain([b_url.as_str()])
            .collect();
        let (ann, st) = announced_at(&owner, &identifier, &urls, &head);
        if let Some(&home) = listed.iter().find(|&&d| d < 3) {
            reachable.insert(st.id.to_hex());
            per_server[home].push((ann.clone(), st.clone(), identifier));
        }
        to_b.push(ann);
        to_b.push(st);
    }
    std::thread::scope(|scope| {
        for (server, repos) in real.iter().zip(&per_server) {
            let (work, owner) = (&work, &owner);
            scope.spawn(move || {
                let mut relay = RelayClient::connect(&server.ws_url());
                for (ann, st, identifier) in repos {
                    relay.publish(ann);
                    relay.publish(st);
                    let url = server.repo_url(&npub(owner), identifier);
                    work.git(&["push", "-q", &url, "main"]);
                }
            });
        }
    });

    // Scrape B's metrics every 500 ms while the run lasts.
    let done = Arc::new(AtomicBool::new(false));
    let (samples_tx, samples_rx) = mpsc::channel();
    let scraper = {
        let done = done.clone();
        let addr = b.addr;
        std::thread::spawn(move || {
            let start = Instant::now();
            while !done.load(Ordering::Relaxed) {
                let s = scrape(addr);
                let _ = samples_tx.send((start.elapsed(), s));
                std::thread::sleep(Duration::from_millis(500));
            }
        })
    };

    let mut sub = RelayClient::connect(&b.ws_url());
    sub.subscribe("live", json!({"kinds": [30618], "limit": 0}));
    let started = Instant::now();
    crate::fixtures::publish_pipelined(&b.ws_url(), &to_b, 1);
    let deadline = started + settings.timeout;
    let mut released = BTreeSet::new();
    while released.len() < reachable.len() {
        let Some(msg) = sub.recv_until(deadline) else {
            break;
        };
        if msg[0] == "EVENT" {
            if let Some(id) = msg[2]["id"].as_str() {
                if reachable.contains(id) {
                    released.insert(id.to_owned());
                }
            }
        }
    }
    let elapsed = started.elapsed();
    done.store(true, Ordering::Relaxed);
    scraper.join().unwrap();
    let samples: Vec<_> = samples_rx.try_iter().collect();
    let names = domain_names(&origins);

    let mut max_in_flight = BTreeMap::new();
    let mut totals: Vec<(Duration, BTreeMap<String, f64>)> = Vec::new();
    for (at, s) in &samples {
        for (domain, v) in by_label(s, "graspd_fetches_in_flight", "domain") {
            let e = max_in_flight.entry(names.name(&domain)).or_insert(0.0f64);
            *e = e.max(v);
        }
        let t = by_label(s, "graspd_fetches_total", "domain")
            .into_iter()
            .map(|(d, v)| (names.name(&d), v))
            .collect();
        totals.push((*at, t));
    }
    let mut max_per_minute = BTreeMap::new();
    for (j, (tj, later)) in totals.iter().enumerate() {
        // The earliest scrape at most 60 s before this one.
        let i = totals[..=j]
            .iter()
            .position(|(ti, _)| *tj - *ti <= Duration::from_secs(60))
            .unwrap_or(j);
        let (_, earlier) = &totals[i];
        for (domain, v) in later {
            let delta = v - earlier.get(domain).copied().unwrap_or(0.0);
            let e = max_per_minute.entry(domain.clone()).or_insert(0.0f64);
            *e = e.max(delta);
        }
    }
    let last = samples.last().map(|(_, s)| s);
    let mut outcomes: BTreeMap<String, BTreeMap<String, f64>> = BTreeMap::new();
    let mut throttle_waits = 0.0;
    if let Some(last) = last {
        for s in last {
            if s.name == "graspd_fetches_total" {
                if let (Some(d), Some(o)) = (s.labels.get("domain"), s.labels.get("outcome")) {
                    *outcomes
                        .entry(names.name(d))
                        .or_default()
                        .entry(o.clone())
                        .or_insert(0.0) += s.value;
                }
            }
            if s.name == "graspd_throttle_waits_total" {
                throttle_waits += s.value;
            }
        }
    }
    drop(limiter);
    LoadResult {
        reachable: reachable.len(),
        released: released.len(),
        elapsed,
        max_in_flight,
        max_per_minute,
        outcomes,
        throttle_waits,
        scrapes: samples.len(),
    }
}

/// Readable names for the five domains in the results.
struct DomainNames(Vec<(String, String)>);

fn domain_names(origins: &[String]) -> DomainNames {
    let labels = ["real-1", "real-2", "real-3", "down", "429"];
    DomainNames(
        origins
            .iter()
            .zip(labels)
            .map(|(o, l)| (o.trim_start_matches("http://").to_owned(), l.to_owned()))
            .collect(),
    )
}

impl DomainNames {
    fn name(&self, domain: &str) -> String {
        self.0
            .iter()
            .find(|(d, _)| d == domain)
            .map(|(_, l)| l.clone())
            .unwrap_or_else(|| domain.to_owned())
    }
}
