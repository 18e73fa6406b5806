//! Scale benchmark: 10^3 .. 10^6 waiting events over proportionally many repositories (4 per
//! repository: 2 states, 2 PRs; 100 repositories per remote domain). Prints, per size: time
//! per event insert (arrival by sync: parse, acceptance, purgatory, indexes, timers), per attempt
//! start (Inspect, URL plan, throttle queue, first fetches), per fetch completion
//! (through Inspect, Apply and Released; a tenth of the repositories), per timeout (expiries and
//! fetch deadlines, one `handle_timeout` call), and heap bytes per waiting event (counting global
//! allocator). Every size reports the median of its runs (5 up to 10^4, 3 above), after one
//! discarded warm-up run. Keys are spread and arrival is shuffled, as in real traffic, so the
//! large sizes pay for memory the way a server would; the last column measures that price.
//!
//! Run: `cargo bench -p graspd-core --bench scale` (add `-- 100000` to cap the largest size,
//! `-- --only 1000000 --runs 3` for one size).

// The benchmark measures wall time; the engine itself never reads a clock.
#![allow(clippy::disallowed_methods, clippy::disallowed_types)]

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicIsize, Ordering};
use std::time::{Duration, Instant};

use graspd_core::{
    Arrival, Command, Config, Engine, EngineEvent, FetchReport, Input, Oid, PublicKey, RepoKey,
    RepoSnapshot, Time, Verdict,
};
use nostr::event::{Event, EventId, Kind, Signature, Tag};
use nostr::nips::nip19::ToBech32;
use nostr::types::Timestamp;

struct Counting;

static LIVE_BYTES: AtomicIsize = AtomicIsize::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        LIVE_BYTES.fetch_add(layout.size() as isize, Ordering::Relaxed);
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE_BYTES.fetch_sub(layout.size() as isize, Ordering::Relaxed);
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        LIVE_BYTES.fetch_add(
            new_size as isize - layout.size() as isize,
            Ordering::Relaxed,
        );
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

const ORIGIN: &str = "https://grasp.example";
const EVENTS_PER_REPO: usize = 4;
const REPOS_PER_DOMAIN: usize = 100;
/// Fetch completions measured: this share of repositories, so every size does the same mix.
const COMPLETED_SHARE: usize = 10;

/// SplitMix64: spreads sequential numbers over the key space, as hashes are in real traffic
/// (event ids, public keys and object ids are SHA-256 or curve points, never sequential).
fn mix(n: u64) -> u64 {
    let mut z = n.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

fn spread<const N: usize>(n: u64, salt: u64) -> [u8; N] {
    let mut b = [0u8; N];
    for (i, chunk) in b.chunks_mut(8).enumerate() {
        let word = mix(n ^ mix(salt + i as u64)).to_be_bytes();
        chunk.copy_from_slice(&word[..chunk.len()]);
    }
    b
}

fn pk(n: usize) -> PublicKey {
    PublicKey::from_byte_array(spread(n as u64, 1))
}

fn oid(n: usize) -> Oid {
    Oid::from_bytes(spread(n as u64, 2))
}

/// A seeded Fisher-Yates shuffle: events arrive in no particular repository order.
fn shuffle<T>(items: &mut [T], seed: u64) {
    for i in (1..items.len()).rev() {
        let j = (mix(seed ^ i as u64) % (i as u64 + 1)) as usize;
        items.swap(i, j);
    }
}

fn event(
    seq: &mut u64,
    author: PublicKey,
    kind: u16,
    created_at: u64,
    tags: Vec<Vec<String>>,
) -> Event {
    *seq += 1;
    let id: [u8; 32] = spread(*seq, 3);
    let tags: Vec<Tag> = tags.into_iter().map(|t| Tag::parse(t).unwrap()).collect();
    Event::new(
        EventId::from_byte_array(id),
        author,
        Timestamp::from_secs(created_at),
        Kind::from_u16(kind),
        tags,
        "",
        Signature::from_byte_array([1; 64]),
    )
}

fn s(v: &str) -> String {
    v.to_owned()
}

fn announcement(seq: &mut u64, r: usize) -> Event {
    let owner = pk(r);
    let npub = owner.to_bech32().unwrap();
    let domain = r / REPOS_PER_DOMAIN;
    let tags = vec![
        vec![s("d"), format!("r{r}")],
        vec![
            s("clone"),
            format!("{ORIGIN}/{npub}/r{r}.git"),
            format!("https://d{domain}.example/r{r}.git"),
        ],
        vec![s("relays"), s("wss://grasp.example")],
    ];
    event(seq, owner, 30617, 1000, tags)
}

/// The `i`-th event of repository `r`: two states, then two PRs.
fn waiting_event(seq: &mut u64, r: usize, i: usize) -> Event {
    let o = oid(r * EVENTS_PER_REPO + i);
    if i < 2 {
        let tags = vec![
            vec![s("d"), format!("r{r}")],
            vec![s("refs/heads/main"), o.to_string()],
            vec![s("HEAD"), s("ref: refs/heads/main")],
        ];
        event(seq, pk(r), 30618, 2000 + i as u64, tags)
    } else {
        let tags = vec![
            vec![s("a"), format!("30617:{}:r{r}", pk(r).to_hex())],
            vec![s("c"), o.to_string()],
        ];
        event(seq, pk(1_000_000_000 + r), 1618, 3000, tags)
    }
}

/// Runs the engine's commands: Inspect and Apply answered at once from `have` (objects the
/// benchmark says are present), fetches collected.
fn drain(
    engine: &mut Engine,
    now: Time,
    have: &dyn Fn(&RepoKey, &Oid) -> bool,
    fetches: &mut Vec<Command>,
) -> usize {
    let mut released = 0;
    loop {
        let mut busy = false;
        while let Some(cmd) = engine.poll_command() {
            busy = true;
            match cmd {
                Command::Inspect { id, repo, oids } => {
                    let present = oids.into_iter().filter(|o| have(&repo, o)).collect();
                    let snap = RepoSnapshot {
                        present,
                        refs: Default::default(),
                    };
                    engine.handle_input(
                        now,
                        Input::Inspected {
                            id,
                            result: Ok(snap),
                        },
                    );
                }
                Command::Apply { id, .. } => {
                    engine.handle_input(now, Input::Applied { id, result: Ok(()) })
                }
                Command::Fetch { .. } => fetches.push(cmd),
                _ => {}
            }
        }
        while let Some(e) = engine.poll_event() {
            busy = true;
            if matches!(e, EngineEvent::Released { .. }) {
                released += 1;
            }
        }
        if !busy {
            return released;
        }
    }
}

struct Row {
    events: usize,
    repos: usize,
    insert: Duration,
    attempt: Duration,
    fetch: Duration,
    fetches: usize,
    released: usize,
    timeout: Duration,
    timeouts: usize,
    bytes_per_event: f64,
    random_read_ns: f64,
}

fn per(d: Duration, n: usize) -> f64 {
    d.as_nanos() as f64 / n.max(1) as f64 / 1000.0
}

// Each timed phase is its own function, so `valgrind --tool=callgrind --toggle-collect=<phase>`
// counts the instructions of exactly that phase (README, "Benchmarks").

#[inline(never)]
fn phase_insert(engine: &mut Engine, batch: Vec<Event>, fetches: &mut Vec<Command>) {
    let t0 = Time::from_millis(0);
    let nothing = |_: &RepoKey, _: &Oid| false;
    for e in batch {
        if let Verdict::Waiting(ticket) = engine.handle_event(t0, e, Arrival::Synced) {
            engine.handle_input(t0, Input::Persisted { ticket });
        }
        drain(engine, t0, &nothing, fetches);
    }
}

#[inline(never)]
fn phase_attempt(engine: &mut Engine, fetches: &mut Vec<Command>) {
    let t1 = Time::from_millis(500);
    let nothing = |_: &RepoKey, _: &Oid| false;
    engine.handle_timeout(t1);
    drain(engine, t1, &nothing, fetches);
}

/// Completes up to `count` fetches: the remote had everything; Inspect, Apply, Released
/// follow, and the freed slot starts the next repository's fetch. Returns (done, released).
#[inline(never)]
fn phase_fetch(engine: &mut Engine, fetches: &mut Vec<Command>, count: usize) -> (usize, usize) {
    let t1 = Time::from_millis(500);
    let everything = |_: &RepoKey, _: &Oid| true;
    let (mut done, mut released) = (0, 0);
    while done < count {
        let Some(Command::Fetch { id, oids, .. }) = fetches.pop() else {
            break;
        };
        engine.handle_input(
            t1,
            Input::FetchDone {
                id,
                result: Ok(FetchReport { present: oids }),
            },
        );
        released += drain(engine, t1, &everything, fetches);
        done += 1;
    }
    (done, released)
}

#[inline(never)]
fn phase_timeout(engine: &mut Engine) {
    engine.handle_timeout(Time::from_millis(31 * 60 * 1000));
}

fn measure(n: usize) -> Row {
    let repos = n / EVENTS_PER_REPO;
    let config = Config {
        own_origin: Some(ORIGIN.into()),
        max_waiting: n + 1,
        // Fetch starts are bounded by concurrency only, so completions measure the engine.
        max_per_minute_per_domain: usize::MAX / 2,
        ..Config::default()
    };
    let mut seq = 0;
    let mut engine = Engine::new(config);
    for r in 0..repos {
        engine.restore_accepted(&announcement(&mut seq, r));
    }
    let mut fetches = Vec::new();

    // Insert: every event arrives by sync, in no particular repository order; its Inspect is
    // answered "absent". Events are built in batches outside the timed part; every byte they
    // hold ends up owned by the engine.
    let before = LIVE_BYTES.load(Ordering::Relaxed);
    let mut insert = Duration::ZERO;
    for i in 0..EVENTS_PER_REPO {
        for first in (0..repos).step_by(10_000) {
            let batch = first..(first + 10_000).min(repos);
            let mut events: Vec<Event> = batch.map(|r| waiting_event(&mut seq, r, i)).collect();
            shuffle(&mut events, seq);
            let start = Instant::now();
            phase_insert(&mut engine, events, &mut fetches);
            insert += start.elapsed();
        }
    }
    let bytes = LIVE_BYTES.load(Ordering::Relaxed) - before;
    assert_eq!(
        engine.stats().waiting.states + engine.stats().waiting.prs,
        n
    );

    // Attempt start: every repository's first attempt (Inspect, URL plan, throttle queue).
    let start = Instant::now();
    phase_attempt(&mut engine, &mut fetches);
    let attempt = start.elapsed();

    // Fetch completion, for a tenth of the repositories.
    let start = Instant::now();
    let (done, released) = phase_fetch(&mut engine, &mut fetches, repos / COMPLETED_SHARE);
    let fetch = start.elapsed();

    // Timeouts: jump past every fetch deadline and every expiry in one call.
    let timers_before = engine.stats();
    let start = Instant::now();
    phase_timeout(&mut engine);
    let timeout = start.elapsed();
    let after = engine.stats();
    let timeouts = (after.expired - timers_before.expired) as usize
        + (after.fetch_timeouts - timers_before.fetch_timeouts) as usize;
    drop(engine);

    Row {
        events: n,
        repos,
        insert,
        attempt,
        fetch,
        fetches: done,
        released,
        timeout,
        timeouts,
        bytes_per_event: bytes as f64 / n as f64,
        random_read_ns: 0.0,
    }
}

/// The hardware's price for touching memory the size of the engine at random: nanoseconds per
/// dependent load in a random cycle through a buffer of `bytes` (one load per 64-byte line).
/// An engine operation that touches k unrelated cache lines cannot cost less than k times
/// this, so the ratio of this column between sizes bounds how flat any per-op time can be.
fn random_read_ns(bytes: usize) -> f64 {
    let lines = (bytes / 64).max(1024);
    // One u64 per cache line: next[i] is the line visited after line i (a single cycle).
    let mut order: Vec<usize> = (0..lines).collect();
    shuffle(&mut order, 0x5eed);
    let mut next = vec![0u64; lines * 8];
    for w in 0..lines {
        next[order[w] * 8] = order[(w + 1) % lines] as u64;
    }
    let loads = 2_000_000;
    let mut at = order[0];
    let start = Instant::now();
    for _ in 0..loads {
        at = next[at * 8] as usize;
    }
    let elapsed = start.elapsed();
    std::hint::black_box(at);
    elapsed.as_nanos() as f64 / loads as f64
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let cap: usize = args
        .iter()
        .find_map(|a| a.parse().ok())
        .unwrap_or(1_000_000);
    // `--only N`: one size (for profiling); `--runs R`: runs per size instead of 5/3/1.
    let flag = |name: &str| {
        args.iter()
            .position(|a| a == name)
            .and_then(|i| args.get(i + 1)?.parse::<usize>().ok())
    };
    let sizes: Vec<usize> = match flag("--only") {
        Some(n) => vec![n],
        None => [1_000, 10_000, 100_000, 1_000_000]
            .into_iter()
            .filter(|n| *n <= cap)
            .collect(),
    };
    println!(
        "| waiting events | repos | insert µs/event | attempt start µs/repo | fetch completion µs/fetch | timeout µs/timer | bytes/waiting event | random read ns |"
    );
    println!("|---:|---:|---:|---:|---:|---:|---:|---:|");
    // Warm-up: the first engine in a process pays for growing the heap and faulting in pages.
    // (`--no-warmup` when counting instructions, which do not depend on it.)
    if !args.iter().any(|a| a == "--no-warmup") {
        let _ = measure(1_000);
    }
    let mut rows = Vec::new();
    for n in sizes {
        // Every size reports the median of its runs (not the best, which would favour the
        // sizes that run more often); small sizes run more often because they are noisier.
        // Three runs at the large sizes: the first run to reach a new heap size pays the
        // kernel for fresh zeroed pages, and the median is the engine's steady state.
        let runs = flag("--runs").unwrap_or(if n <= 10_000 { 5 } else { 3 });
        let all: Vec<Row> = (0..runs).map(|_| measure(n)).collect();
        let median = |f: fn(&Row) -> Duration| {
            let mut v: Vec<Duration> = all.iter().map(f).collect();
            v.sort();
            v[v.len() / 2]
        };
        let (insert, attempt, fetch, timeout) = (
            median(|r| r.insert),
            median(|r| r.attempt),
            median(|r| r.fetch),
            median(|r| r.timeout),
        );
        let mut row = all.into_iter().next().expect("at least one run");
        row.insert = insert;
        row.attempt = attempt;
        row.fetch = fetch;
        row.timeout = timeout;
        row.random_read_ns = random_read_ns((row.bytes_per_event * n as f64) as usize);
        println!(
            "| {} | {} | {:.2} | {:.2} | {:.2} ({} fetches, {} released) | {:.2} ({} timers) | {:.0} | {:.1} |",
            row.events,
            row.repos,
            per(row.insert, row.events),
            per(row.attempt, row.repos),
            per(row.fetch, row.fetches),
            row.fetches,
            row.released,
            per(row.timeout, row.timeouts),
            row.timeouts,
            row.bytes_per_event,
            row.random_read_ns,
        );
        rows.push(row);
    }
    let ratios = |label: &str, small: &Row, large: &Row| {
        let ratio = |f: fn(&Row) -> f64| f(large) / f(small);
        println!(
            "{label} ({} -> {} events): insert {:.2}x, attempt {:.2}x, fetch {:.2}x, timeout {:.2}x",
            small.events,
            large.events,
            ratio(|r| per(r.insert, r.events)),
            ratio(|r| per(r.attempt, r.repos)),
            ratio(|r| per(r.fetch, r.fetches)),
            ratio(|r| per(r.timeout, r.timeouts)),
        );
    };
    if let (Some(small), Some(large)) = (rows.first(), rows.last()) {
        println!();
        ratios("time per op, largest/smallest", small, large);
    }
    if let (Some(mid), Some(large)) = (rows.get(1), rows.last()) {
        ratios("time per op, largest/second", mid, large);
    }
}
