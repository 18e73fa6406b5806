//! graspd benchmarks: both server binaries on loopback, real git, real WebSocket clients.
//! Prints one Markdown table (plus the core scale benchmark's own output).
//!
//! Run: `cargo run --release -p graspd-tests --bin graspd-bench [-- --quick] [-- --only push,sync]`
//! `--waiting-steps 10000,100000` sets the memory section's waiting-event counts;
//! `--attacks unread-clones,upload-bodies` runs only those of the hostile section.
//! Sections: binary, memory, push, relay, instances, leases, sync, follow, reconcile, load, scale, hostile. `--profile` runs tiny sizes, for
//! `valgrind --tool=callgrind --trace-children=yes --trace-children-skip='*git*,*cargo*'`.

// A measuring tool: it reads the wall clock by design.
#![allow(clippy::disallowed_methods, clippy::disallowed_types)]

mod fixtures;
mod follow;
mod hostile;
mod instances;
mod leases;
mod load;
mod memory;
mod push;
mod reconcile;
mod relay;
mod report;
mod sync;

use std::process::Command;
use std::time::{Duration, Instant};

use graspd_tests::{Flavor, Server};

use report::{fmt_p, percentiles_ms, Table};

const FLAVORS: [Flavor; 2] = [Flavor::Tokio, Flavor::Smol];

/// Sizes of every measurement; `--quick` shrinks them.
struct Plan {
    quick: bool,
    pushes: usize,
    throughput_events: [(usize, usize); 3],
    req_store: usize,
    req_queries: usize,
    waiting_steps: Vec<usize>,
    sync_runs: usize,
    follow_runs: usize,
    /// Issues of the repository B reconciles with A.
    reconcile_issues: usize,
    large_commits: usize,
    load: load::LoadSettings,
    hostile: hostile::Settings,
}

impl Plan {
    /// Tiny sizes for running under `valgrind --tool=callgrind` (roughly 50x slower).
    fn profile() -> Plan {
        Plan {
            quick: true,
            pushes: 10,
            throughput_events: [(1, 100), (10, 200), (100, 200)],
            req_store: 2000,
            req_queries: 20,
            waiting_steps: vec![1000],
            sync_runs: 1,
            follow_runs: 3,
            reconcile_issues: 200,
            large_commits: 1000,
            load: load::LoadSettings {
                repos: 20,
                max_per_domain: 2,
                max_per_minute: 60,
                timeout: Duration::from_secs(120),
            },
            hostile: hostile::Settings {
                samples: 3,
                big_issues: 5,
                big_file_mib: 4,
            },
        }
    }

    fn new(quick: bool) -> Plan {
        if quick {
            Plan {
                quick,
                pushes: 30,
                throughput_events: [(1, 500), (10, 1000), (100, 1000)],
                req_store: 20_000,
                req_queries: 50,
                waiting_steps: vec![10_000],
                sync_runs: 2,
                follow_runs: 10,
                reconcile_issues: 2_000,
                large_commits: 10_000,
                load: load::LoadSettings {
                    repos: 100,
                    max_per_domain: 2,
                    max_per_minute: 60,
                    timeout: Duration::from_secs(60),
                },
                hostile: hostile::Settings {
                    samples: 20,
                    big_issues: 50,
                    big_file_mib: 16,
                },
            }
        } else {
            Plan {
                quick,
                pushes: 200,
                throughput_events: [(1, 2000), (10, 5000), (100, 5000)],
                req_store: 100_000,
                req_queries: 200,
                waiting_steps: vec![10_000, 100_000],
                sync_runs: 5,
                follow_runs: 50,
                reconcile_issues: 10_000,
                large_commits: 10_000,
                load: load::LoadSettings {
                    repos: 1000,
                    max_per_domain: 4,
                    max_per_minute: 240,
                    timeout: Duration::from_secs(300),
                },
                hostile: hostile::Settings {
                    samples: 100,
                    big_issues: 100,
                    big_file_mib: 32,
                },
            }
        }
    }
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let quick = args.iter().any(|a| a == "--quick");
    let only: Option<Vec<String>> = args
        .iter()
        .position(|a| a == "--only")
        .and_then(|i| args.get(i + 1))
        .map(|s| s.split(',').map(str::to_owned).collect());
    let wanted = |s: &str| only.as_ref().is_none_or(|o| o.iter().any(|x| x == s));
    let mut plan = if args.iter().any(|a| a == "--profile") {
        Plan::profile()
    } else {
        Plan::new(quick)
    };
    if let Some(steps) = args
        .iter()
        .position(|a| a == "--waiting-steps")
        .and_then(|i| args.get(i + 1))
    {
        plan.waiting_steps = steps
            .split(',')
            .map(|n| n.parse().expect("--waiting-steps: comma-separated counts"))
            .collect();
    }
    let started = Instant::now();
    // Build (or find) both release binaries before any clock starts.
    for f in FLAVORS {
        f.binary();
    }
    let mut table = Table::default();
    let mut scale_output = None;

    if wanted("binary") {
        step("binary sizes");
        let [t, s] = FLAVORS.map(memory::binary_sizes);
        table.both(
            "6 footprint",
            "binary MiB, unstripped",
            f1(t.0),
            f1(s.0),
            "release, line-tables debug info",
        );
        table.both(
            "6 footprint",
            "binary MiB, stripped",
            f1(t.1),
            f1(s.1),
            "`strip`",
        );
    }
    if wanted("memory") {
        step("memory");
        let [t, s] = FLAVORS.map(|f| memory::footprint(f, &plan.waiting_steps));
        table.both(
            "6 footprint",
            "idle RSS MiB",
            f1(t.idle_rss),
            f1(s.idle_rss),
            "after start, 3 s settle",
        );
        table.both(
            "6 footprint",
            "idle threads",
            t.idle_threads.to_string(),
            s.idle_threads.to_string(),
            "/proc/<pid>/status Threads",
        );
        table.both(
            "6 memory",
            &format!("RSS MiB, {} waiting, published live", t.live.0),
            f1(t.live.1),
            f1(s.live.1),
            "kind 1618 PRs whose tips nobody has",
        );
        table.both(
            "6 memory",
            &format!("threads, {} waiting, live", t.live.0),
            t.live.2.to_string(),
            s.live.2.to_string(),
            "",
        );
        table.both(
            "6 memory",
            &format!("waiting EVENTs/s (to {})", t.live.0),
            f0(t.live_rate),
            f0(s.live_rate),
            "10 connections, 32 in flight each; one fsync'd store write per event",
        );
        for (tw, sw) in t.restored.iter().zip(&s.restored) {
            table.both(
                "6 memory",
                &format!("RSS MiB, {} waiting, after restart", tw.0),
                f1(tw.1),
                f1(sw.1),
                "restored from the store at start-up",
            );
        }
    }
    if wanted("push") {
        step("push-to-release");
        let [t, s] = FLAVORS.map(|f| {
            let server = Server::start(f);
            let r = push::measure(&server, plan.pushes);
            stop_gracefully(server);
            r
        });
        let n = plan.pushes;
        table.both(
            "1 push",
            &format!("push returned -> live EVENT, ms p50/p99 (n={n})"),
            fmt_p(percentiles_ms(&t.after_push)),
            fmt_p(percentiles_ms(&s.after_push)),
            "negative: delivered before `git push` exited",
        );
        table.both(
            "1 push",
            "`git push` command, ms p50/p99",
            fmt_p(percentiles_ms(&t.push_command)),
            fmt_p(percentiles_ms(&s.push_command)),
            "one commit each, same repo",
        );
    }
    if wanted("relay") {
        step("relay throughput and REQ latency");
        let total: usize = plan.throughput_events.iter().map(|(_, n)| n).sum();
        let store_events = plan.req_store.max(total);
        let issues = fixtures::issues("relay-bench", store_events, 1000);
        let results = FLAVORS.map(|f| {
            let mut server = memory::quiet_server(f);
            fixtures::served_repo(&server, "relay-bench");
            let mut offset = 0;
            let mut rates = Vec::new();
            for (conns, n) in plan.throughput_events {
                let p = relay::throughput(&server, &issues[offset..offset + n], conns);
                offset += n;
                rates.push(p.per_second());
            }
            relay::bulk_load(&mut server, &issues);
            let (lat, returned) =
                relay::req_latency(&server, &relay::tag_filters(plan.req_queries, 1000));
            let (lat_a, returned_a) = relay::req_latency(
                &server,
                &[serde_json::json!({"#a": [fixtures::coordinate("relay-bench")], "limit": 500})],
            );
            stop_gracefully(server);
            (rates, lat, returned, lat_a, returned_a)
        });
        for (i, (conns, n)) in plan.throughput_events.iter().enumerate() {
            table.both(
                "4 relay",
                &format!("EVENTs/s accepted, {conns} conn ({n} events)"),
                f0(results[0].0[i]),
                f0(results[1].0[i]),
                "kind 1621 issues tagging an accepted repo: verify, accept, store (fsync) each",
            );
        }
        let n = plan.req_store;
        table.both(
            "4 relay",
            &format!(
                "REQ #t (≈{} hits) over {n} events, ms p50/p99",
                results[0].2
            ),
            fmt_p(percentiles_ms(&results[0].1)),
            fmt_p(percentiles_ms(&results[1].1)),
            "to EOSE, one connection",
        );
        table.both(
            "4 relay",
            &format!("REQ #a limit 500 over {n} events, ms"),
            fmt_p(percentiles_ms(&results[0].3)),
            fmt_p(percentiles_ms(&results[1].3)),
            &format!("{} returned", results[0].4),
        );
    }
    if wanted("instances") {
        step("instances on PostgreSQL");
        let events = if plan.quick { 2000 } else { 4000 };
        let issues = fixtures::issues("relay-bench", events, 1000);
        for (label, instances) in [
            ("1 instance, redb", None),
            ("1 instance, PostgreSQL", Some(1)),
            ("2 instances, PostgreSQL", Some(2)),
            ("3 instances, PostgreSQL", Some(3)),
        ] {
            let [t, s] = FLAVORS.map(|f| instances::measure(f, instances, &issues, plan.pushes));
            let (Some(t), Some(s)) = (t, s) else {
                eprintln!("skipping the PostgreSQL rows: PostgreSQL is not installed");
                break;
            };
            table.both(
                "4b instances",
                &format!("{label}: EVENTs/s accepted ({events} events)"),
                f0(t.events_per_second),
                f0(s.events_per_second),
                "kind 1621 issues, 10 connections spread over the instances",
            );
            table.both(
                "4b instances",
                &format!("{label}: store writes per group commit"),
                format!("{:.1}", t.writes_per_commit),
                format!("{:.1}", s.writes_per_commit),
                "while those EVENTs were published, over every instance",
            );
            table.both(
                "4b instances",
                &format!(
                    "{label}: push -> live EVENT, ms p50/p99 (n={})",
                    plan.pushes
                ),
                fmt_p(percentiles_ms(&t.push.after_push)),
                fmt_p(percentiles_ms(&s.push.after_push)),
                "published on the first, pushed to the second, live on the last",
            );
        }
    }
    if wanted("leases") {
        step("lease rounds on PostgreSQL");
        for n in [1_000, 10_000, 100_000] {
            let Some(r) = leases::measure(n) else {
                eprintln!("skipping the lease rows: PostgreSQL is not installed");
                break;
            };
            table.single(
                "4c leases",
                &format!(
                    "one round of {n} leases, ms: acquire / renew / held elsewhere / give back"
                ),
                format!(
                    "{:.0} / {:.0} / {:.0} / {:.0}",
                    r.acquire, r.renew, r.held_elsewhere, r.let_go
                ),
                "one statement each, as an instance's lease task sends them",
            );
        }
    }
    if wanted("sync") {
        step("sync-to-release");
        let small = sync::linear_repo(1);
        let large = sync::linear_repo(plan.large_commits);
        for f in FLAVORS {
            let a = Server::start(f);
            let b = memory_fast_sync(f);
            for (label, work) in [
                ("1 commit", &small),
                (&*format!("{} commits", plan.large_commits), &large),
            ] {
                let r = sync::measure(
                    &a,
                    &b,
                    work,
                    &label.replace(' ', "-"),
                    plan.sync_runs,
                    sync::Learns::FromClient,
                );
                let (rel, _) = percentiles_ms(&r.release);
                let (floor, _) = percentiles_ms(&r.floor);
                let (t, s) = (
                    format!("{rel:.0} ms vs {floor:.0} ms = {:.2}x", rel / floor),
                    "".to_owned(),
                );
                let note = format!(
                    "median of {}; release on B / `git fetch <A> <oid>` floor; stuck runs {}",
                    plan.sync_runs, r.stuck
                );
                match f {
                    Flavor::Tokio => {
                        table.both("2 sync", &format!("sync-to-release, {label}"), t, s, &note)
                    }
                    Flavor::Smol => {
                        let row = table
                            .rows
                            .iter_mut()
                            .rev()
                            .find(|r| r.measure == format!("sync-to-release, {label}"))
                            .unwrap();
                        row.smol = t;
                    }
                }
            }
            stop_gracefully(b);
        }
        // As a user meets it: B on its defaults waits `--sync-delay-published-ms` (1 s) for
        // a push before fetching from A.
        let mut defaults = Vec::new();
        for f in FLAVORS {
            let a = Server::start(f);
            let b = Server::start(f);
            let r = sync::measure(
                &a,
                &b,
                &small,
                "defaults",
                plan.sync_runs,
                sync::Learns::FromClient,
            );
            defaults.push(r);
            stop_gracefully(b);
        }
        let p = |r: &sync::SyncLatency| {
            let (p50, p99) = percentiles_ms(&r.release);
            format!("{p50:.0} / {p99:.0} ms")
        };
        table.both(
            "2 sync",
            "published state, data on A: publish on B → served, p50 / p99",
            p(&defaults[0]),
            p(&defaults[1]),
            &format!(
                "B on its defaults (first fetch 1 s after a publish; was 180 s); 1 commit; {} runs; stuck {} / {}",
                plan.sync_runs, defaults[0].stuck, defaults[1].stuck
            ),
        );
    }
    if wanted("follow") {
        step("follow-to-release");
        let work = sync::linear_repo(1);
        let runs = plan.follow_runs;
        let [t, s] = FLAVORS.map(|f| {
            let a = Server::start(f);
            let b = follow::follower_of(f, &a);
            let r = sync::measure(&a, &b, &work, "follow", runs, sync::Learns::ByFollowingA);
            stop_gracefully(b);
            stop_gracefully(a);
            r
        });
        table.both(
            "2 sync",
            &format!("follow: push on A -> served on B, ms p50/p99 (n={runs})"),
            fmt_p(percentiles_ms(&t.release)),
            fmt_p(percentiles_ms(&s.release)),
            &format!(
                "B follows A's relay (defaults); stuck runs {}/{}",
                t.stuck, s.stuck
            ),
        );
        table.both(
            "2 sync",
            "follow: `git fetch <A> <oid>` floor, ms p50/p99",
            fmt_p(percentiles_ms(&t.floor)),
            fmt_p(percentiles_ms(&s.floor)),
            "one commit, into an empty bare repository",
        );
    }
    if wanted("reconcile") {
        step("reconcile a follower");
        let n = plan.reconcile_issues;
        for (label, negentropy) in [("NIP-77 negentropy", true), ("paged REQ", false)] {
            let [t, s] = FLAVORS.map(|f| reconcile::measure(f, n, negentropy));
            for (i, case) in ["all", "1%", "none"].iter().enumerate() {
                let cell = |l: &reconcile::Level| {
                    format!(
                        "{:.1} s, {} events{}",
                        l.elapsed.as_secs_f64(),
                        l.transferred,
                        if l.complete { "" } else { " (incomplete)" }
                    )
                };
                table.both(
                    "2 sync",
                    &format!("reconcile, {label}: B lacks {case} of {n} issues ({} missing)", t[i].lacked),
                    cell(&t[i]),
                    cell(&s[i]),
                    "B restarts after A took the issues; time to level, events A sent; follower reads 100 events/s per relay",
                );
            }
        }
    }
    if wanted("load") {
        step("sync under load");
        let l = &plan.load;
        let r = load::measure(Flavor::Tokio, l);
        table.single(
            "3 load",
            &format!("{} repos on 5 domains: reachable released", l.repos),
            format!(
                "{}/{} in {:.1} s",
                r.released,
                r.reachable,
                r.elapsed.as_secs_f64()
            ),
            &format!(
                "tokio B; --max-fetches-per-domain {} --max-fetches-per-minute {}",
                l.max_per_domain, l.max_per_minute
            ),
        );
        table.single(
            "3 load",
            "max fetches in flight per domain",
            fmt_map(&r.max_in_flight),
            &format!(
                "limit {}; {} scrapes of /metrics, 500 ms apart",
                l.max_per_domain, r.scrapes
            ),
        );
        table.single(
            "3 load",
            "max fetches per sliding 60 s per domain",
            fmt_map(&r.max_per_minute),
            &format!(
                "limit {} started/min (completions counted)",
                l.max_per_minute
            ),
        );
        let outcomes = r
            .outcomes
            .iter()
            .map(|(d, o)| {
                format!(
                    "{d}: {}",
                    o.iter()
                        .map(|(k, v)| format!("{k} {v}"))
                        .collect::<Vec<_>>()
                        .join(" ")
                )
            })
            .collect::<Vec<_>>()
            .join("; ");
        table.single(
            "3 load",
            "fetch outcomes",
            outcomes,
            &format!("throttle waits {}", r.throttle_waits),
        );
    }
    if wanted("hostile") {
        step("legitimate users under attack");
        let attacks: Option<Vec<String>> = args
            .iter()
            .position(|a| a == "--attacks")
            .and_then(|i| args.get(i + 1))
            .map(|s| s.split(',').map(str::to_owned).collect());
        hostile_rows(&mut table, &plan.hostile, attacks.as_deref());
    }
    if wanted("scale") {
        step("core scale benchmark");
        scale_output = Some(run_scale(plan.quick));
    }

    println!();
    println!(
        "graspd benchmarks ({}), {}",
        if plan.quick { "quick" } else { "full" },
        machine()
    );
    println!();
    print!("{}", table.render());
    if let Some(out) = scale_output {
        println!(
            "\n5 core scale (`cargo bench -p graspd-core --bench scale`):\n\n```\n{}```",
            out
        );
    }
    println!("\ntotal {:.0} s", started.elapsed().as_secs_f64());
}

/// One fresh server per attack and runtime: legitimate p99s during the attack against the same
/// server's just before, and the peak RSS the attack caused.
fn hostile_rows(table: &mut Table, settings: &hostile::Settings, only: Option<&[String]>) {
    const OPS: &str = "push / clone / EVENT / NIP-11";
    let kinds = hostile::Kind::ALL
        .into_iter()
        .filter(|k| only.is_none_or(|names| names.iter().any(|n| n == k.name())));
    for (i, kind) in kinds.enumerate() {
        step(kind.label());
        let [t, s] = FLAVORS.map(|f| hostile::measure(f, kind, settings));
        if i == 0 {
            let [bt, bs] = [&t, &s].map(|o| with_errors(fmt_ms(&o.before.p99()), &o.before.errors));
            table.both(
                "7 hostile",
                &format!("no attack: legit p99 ms, {OPS}"),
                bt,
                bs,
                &format!(
                    "{} of each, from 127.0.0.1; each attack on a fresh server",
                    settings.samples
                ),
            );
        }
        let [during_t, during_s] = [&t, &s].map(|o| {
            let (during, before) = (o.during.p99(), o.before.p99());
            let cells: Vec<String> = during
                .iter()
                .zip(before)
                .map(|(d, b)| format!("{} ({:.1}x)", fmt_one(*d), d / b))
                .collect();
            with_errors(cells.join(" / "), &o.during.errors)
        });
        table.both(
            "7 hostile",
            &format!("{}: legit p99 ms (x before), {OPS}", kind.label()),
            during_t,
            during_s,
            &kind.note(),
        );
        table.both(
            "7 hostile",
            &format!("{}: peak RSS above idle, MiB", kind.label()),
            f1(t.peak_mib - t.idle_mib),
            f1(s.peak_mib - s.idle_mib),
            &format!(
                "idle {:.1} / {:.1} MiB; tokio's attack: {}",
                t.idle_mib, s.idle_mib, t.tally
            ),
        );
    }
}

fn fmt_one(v: f64) -> String {
    if v < 10.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.0}")
    }
}

fn fmt_ms(values: &[f64]) -> String {
    values
        .iter()
        .map(|v| fmt_one(*v))
        .collect::<Vec<_>>()
        .join(" / ")
}

/// A cell with the failures of the legitimate operations, if any.
fn with_errors(cell: String, errors: &[String]) -> String {
    match errors.first() {
        None => cell,
        Some(first) => {
            eprintln!("[graspd-bench] legitimate failures: {errors:?}");
            format!(
                "{cell}; {} FAILED ({})",
                errors.len(),
                first.replace('|', "/").lines().next().unwrap_or("")
            )
        }
    }
}

/// SIGTERM and a short wait, so a server under `valgrind --tool=callgrind` writes its profile
/// (the harness's SIGKILL would lose it).
fn stop_gracefully(mut server: Server) {
    if let Some(pid) = server.pid() {
        let _ = Command::new("kill")
            .args(["-TERM", &pid.to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(20);
        while server.is_running() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

/// B in the sync measurement: hunts a user-published event's data at once.
fn memory_fast_sync(flavor: Flavor) -> Server {
    Server::start_with(
        flavor,
        graspd_tests::ServerOptions::default()
            .arg("--sync-delay-published-ms")
            .arg("0")
            .arg("--sync-backoff-ms")
            .arg("200")
            .arg("--sync-backoff-max-ms")
            .arg("1000"),
    )
}

fn run_scale(quick: bool) -> String {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.args(["bench", "-q", "-p", "graspd-core", "--bench", "scale"]);
    if quick {
        cmd.args(["--", "10000"]);
    }
    let out = cmd.output().expect("run cargo bench");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    if !out.status.success() {
        return format!(
            "{text}\n(failed: {})\n",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    text
}

fn step(name: &str) {
    eprintln!("[graspd-bench] {name} (load {})", report::load_average());
}

fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines().find_map(|l| {
                l.strip_prefix("model name")
                    .map(|m| m.trim_start_matches([' ', '\t', ':']).to_owned())
            })
        })
        .unwrap_or_else(|| "?".into());
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let date = Command::new("date")
        .args(["-u", "+%Y-%m-%d %H:%M UTC"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_default();
    format!("{date}, {cores} cores ({cpu}), loopback; load column = 1-min load average when the row was recorded")
}

fn f0(v: f64) -> String {
    format!("{v:.0}")
}

fn f1(v: f64) -> String {
    format!("{v:.1}")
}

fn fmt_map(m: &std::collections::BTreeMap<String, f64>) -> String {
    m.iter()
        .map(|(k, v)| format!("{k} {v}"))
        .collect::<Vec<_>>()
        .join(", ")
}
