//! Store throughput and REQ latency over 100,000 events. Run in release mode:
//! `cargo bench -p graspd-host --bench store`. Prints a table; the store file lives in the
//! system temp dir and is removed at the end.
//!
//! Events are shaped like a GRASP server's traffic: issues, statuses, comments and patches,
//! each with an `a` tag naming one of 1,000 repositories, a `p` tag, an `e` tag to an earlier
//! event and a `t` tag. Signatures are dummies: the store does not verify (the relay does).

use std::time::{Duration, Instant};

use graspd_host::store::Store;
use nostr::prelude::{Event, EventId, Filter, Kind, PublicKey, Signature, Tag, Tags, Timestamp};

const TOTAL: usize = 100_000;
const SINGLE_COMMITS: usize = 1_000;
const BATCH: usize = 1_000;
const REPOS: u64 = 1_000;
const AUTHORS: u64 = 500;
const QUERIES: usize = 1_000;

/// xorshift64*: deterministic, good enough to spread keys.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

fn pubkey(n: u64) -> PublicKey {
    // Any 32 bytes parse as an x-only key often enough; search for one that does.
    let mut bytes = [0u8; 32];
    bytes[..8].copy_from_slice(&n.to_be_bytes());
    for salt in 0u8..=255 {
        bytes[31] = salt;
        if let Ok(key) = PublicKey::from_slice(&bytes) {
            return key;
        }
    }
    unreachable!("no valid x-only key near {n}")
}

fn repo_coordinate(owner: &PublicKey, repo: u64) -> String {
    format!("30617:{}:repo-{repo}", owner.to_hex())
}

fn make_events(rng: &mut Rng, authors: &[PublicKey]) -> Vec<Event> {
    let kinds = [1621u16, 1630, 1111, 1617];
    let mut events: Vec<Event> = Vec::with_capacity(TOTAL);
    for i in 0..TOTAL {
        let author = authors[rng.below(AUTHORS) as usize];
        let repo = rng.below(REPOS);
        let owner = authors[(repo % AUTHORS) as usize];
        let mut tags = vec![
            Tag::parse(["a", &repo_coordinate(&owner, repo)]).unwrap(),
            Tag::parse(["p", &owner.to_hex()]).unwrap(),
            Tag::parse(["t", &format!("topic-{}", rng.below(50))]).unwrap(),
        ];
        if i > 0 {
            let parent = events[rng.below(i as u64) as usize].id;
            tags.push(Tag::parse(["e", &parent.to_hex()]).unwrap());
        }
        let kind = Kind::from(kinds[rng.below(4) as usize]);
        let created_at = Timestamp::from(1_700_000_000 + i as u64);
        let content = format!("event {i}: some text of a typical length for an issue or comment");
        let tags = Tags::from_list(tags);
        let id = EventId::compute(&author, &created_at, &kind, &tags, &content);
        let sig = Signature::from_slice(&[1u8; 64]).unwrap();
        events.push(Event::new(id, author, created_at, kind, tags, content, sig));
    }
    events
}

struct Row {
    what: String,
    count: usize,
    total: Duration,
    p50: Duration,
    p99: Duration,
    results: f64,
}

fn timed<T>(
    mut f: impl FnMut(usize) -> T,
    count: usize,
    measure: impl Fn(&T) -> usize,
) -> (Duration, Duration, Duration, f64) {
    let mut samples = Vec::with_capacity(count);
    let mut results = 0;
    let start = Instant::now();
    for i in 0..count {
        let t = Instant::now();
        let out = f(i);
        samples.push(t.elapsed());
        results += measure(&out);
    }
    let total = start.elapsed();
    samples.sort();
    let pct = |p: usize| samples[(samples.len() * p / 100).min(samples.len() - 1)];
    (
        total,
        pct(50),
        pct(99),
        results as f64 / count.max(1) as f64,
    )
}

fn main() {
    let dir = std::env::temp_dir().join(format!("graspd-store-bench-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let store = Store::open_in(&dir).expect("open store");
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let authors: Vec<PublicKey> = (0..AUTHORS).map(pubkey).collect();
    let events = make_events(&mut rng, &authors);
    let mut rows = Vec::new();

    let (total, p50, p99, _) = timed(|i| store.insert(&events[i]).unwrap(), SINGLE_COMMITS, |_| 0);
    rows.push(Row {
        what: "insert, one durable commit each".into(),
        count: SINGLE_COMMITS,
        total,
        p50,
        p99,
        results: 0.0,
    });

    let batches: Vec<&[Event]> = events[SINGLE_COMMITS..].chunks(BATCH).collect();
    let (total, p50, p99, _) = timed(
        |i| store.insert_many(batches[i]).unwrap(),
        batches.len(),
        |_| 0,
    );
    rows.push(Row {
        what: format!("insert_many, {BATCH} per commit (per batch)"),
        count: batches.len(),
        total,
        p50,
        p99,
        results: 0.0,
    });
    assert_eq!(store.served_count().unwrap(), TOTAL as u64);

    let cap = 500;
    let repo_filter = |rng: &mut Rng| {
        let repo = rng.below(REPOS);
        let owner = authors[(repo % AUTHORS) as usize];
        Filter::new().custom_tag(
            nostr::prelude::SingleLetterTag::LOWERCASE_A,
            repo_coordinate(&owner, repo),
        )
    };
    let q = |name: &str, make: &dyn Fn(&mut Rng) -> Filter, rows: &mut Vec<Row>, rng: &mut Rng| {
        let filters: Vec<Filter> = (0..QUERIES).map(|_| make(rng)).collect();
        let (total, p50, p99, results) = timed(
            |i| store.query(std::slice::from_ref(&filters[i]), cap).unwrap(),
            QUERIES,
            |r| r.len(),
        );
        rows.push(Row {
            what: name.into(),
            count: QUERIES,
            total,
            p50,
            p99,
            results,
        });
    };
    q(
        "REQ #a=<repo> (about 100 match)",
        &|rng| repo_filter(rng),
        &mut rows,
        &mut rng,
    );
    q(
        "REQ #a=<repo> kinds=[1630] limit 10",
        &|rng| repo_filter(rng).kind(Kind::from(1630)).limit(10),
        &mut rows,
        &mut rng,
    );
    let ids: Vec<EventId> = events.iter().map(|e| e.id).collect();
    q(
        "REQ #e=<event> (replies)",
        &|rng| Filter::new().event(ids[rng.below(TOTAL as u64) as usize]),
        &mut rows,
        &mut rng,
    );
    q(
        "REQ #t=<topic> limit 500 (2,000 match)",
        &|rng| {
            Filter::new()
                .hashtag(format!("topic-{}", rng.below(50)))
                .limit(500)
        },
        &mut rows,
        &mut rng,
    );
    q(
        "REQ authors=[1] limit 100",
        &|rng| {
            Filter::new()
                .author(authors[rng.below(AUTHORS) as usize])
                .limit(100)
        },
        &mut rows,
        &mut rng,
    );
    q(
        "REQ kinds=[1621] limit 500",
        &|_| Filter::new().kind(Kind::from(1621)).limit(500),
        &mut rows,
        &mut rng,
    );
    q(
        "REQ ids=[10 ids]",
        &|rng| Filter::new().ids((0..10).map(|_| ids[rng.below(TOTAL as u64) as usize])),
        &mut rows,
        &mut rng,
    );
    q(
        "REQ {} limit 100 (newest)",
        &|_| Filter::new().limit(100),
        &mut rows,
        &mut rng,
    );

    let usage = store.disk_usage().unwrap();
    drop(store);
    let size = std::fs::metadata(dir.join(graspd_host::store::FILE_NAME))
        .map(|m| m.len())
        .unwrap_or(0);
    let start = Instant::now();
    let store = Store::open_in(&dir).expect("reopen");
    let reopen = start.elapsed();
    assert_eq!(store.served_count().unwrap(), TOTAL as u64);
    drop(store);
    let _ = std::fs::remove_dir_all(&dir);

    println!(
        "graspd store bench: {TOTAL} events, {REPOS} repos, {AUTHORS} authors, query cap {cap}"
    );
    println!(
        "{:<44} {:>6} {:>12} {:>10} {:>10} {:>8}",
        "operation", "n", "rate/s", "p50", "p99", "results"
    );
    for r in &rows {
        let rate = r.count as f64 / r.total.as_secs_f64();
        println!(
            "{:<44} {:>6} {:>12.0} {:>10.3?} {:>10.3?} {:>8.1}",
            r.what, r.count, rate, r.p50, r.p99, r.results
        );
    }
    let mib = |b: u64| b as f64 / (1024.0 * 1024.0);
    println!(
        "usage: allocated {:.1} MiB, stored keys+values {:.1} MiB, fragmented {:.1} MiB",
        mib(usage.allocated_bytes),
        mib(usage.stored_bytes),
        mib(usage.fragmented_bytes)
    );
    println!(
        "file size {:.1} MiB; reopen with full integrity check {reopen:.2?}",
        size as f64 / (1024.0 * 1024.0)
    );
}
