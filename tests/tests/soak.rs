//! A soak: three attacks at once (a flood of idle and slow WebSockets, stalled pushes, EVENT
//! spam), each from an address of its own, while legitimate users on 127.0.0.1 push new
//! states, clone, publish issues and query. No legitimate operation may fail, and every event
//! the server acknowledged with `OK true` (the spam's too) must be served at the end.
//!
//! It runs `GRASPD_SOAK_SECS` seconds per runtime (60 by default; shorten it while developing).
//! Nothing is timed: the assertions hold however fast the machine is.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use graspd_tests::attack::{attacker, event_spam, stalled_pushes, websocket_flood, Attack, Tally};
use graspd_tests::git::ref_of;
use graspd_tests::nostr::{keys, tagged, RelayClient};
use graspd_tests::traffic::{self, Maintainer};
use graspd_tests::{both_runtimes, Flavor, Server, ServerOptions};
use serde_json::{json, Value};

/// How long the soak runs, unless `GRASPD_SOAK_SECS` says otherwise.
const DEFAULT_SECS: u64 = 60;

fn soak_duration() -> Duration {
    let secs = std::env::var("GRASPD_SOAK_SECS")
        .ok()
        .map(|s| s.parse().expect("GRASPD_SOAK_SECS is a number of seconds"))
        .unwrap_or(DEFAULT_SECS);
    Duration::from_secs(secs)
}

/// The per-address limits the attacks run into (the defaults, named here to attack past them).
const WEBSOCKETS_PER_ADDRESS: usize = 100;
const GIT_REQUESTS_PER_ADDRESS: usize = 16;

/// What the legitimate users saw.
#[derive(Default)]
struct Outcome {
    /// Every failed legitimate operation, with what failed.
    errors: Mutex<Vec<String>>,
    /// Ids of legitimate events acknowledged with `OK true`.
    acknowledged: Mutex<Vec<String>>,
    /// Operations done, by name.
    done: Mutex<std::collections::BTreeMap<&'static str, usize>>,
}

impl Outcome {
    fn record(&self, what: &'static str, result: Result<Duration, String>) {
        match result {
            Ok(_) => *self.done.lock().unwrap().entry(what).or_default() += 1,
            Err(e) => self.errors.lock().unwrap().push(format!("{what}: {e}")),
        }
    }
}

/// Runs `op` over and over until `until`.
fn repeat_until(until: Instant, mut op: impl FnMut()) {
    while Instant::now() < until {
        op();
    }
}

/// A spammer's `n`th event: an accepted issue on the repository, an unrelated note (refused
/// `blocked:`), or an issue with a broken signature (refused `invalid:`), in turn.
fn spam(coordinate: &str, n: u64) -> Value {
    let spammer = keys(3);
    let event = match n % 3 {
        1 => tagged(&spammer, 1, &[&["t", &format!("spam {n}")]]),
        _ => traffic::issue(&spammer, coordinate, n),
    };
    let mut json: Value = serde_json::to_value(&event).unwrap();
    if n % 3 == 2 {
        json["sig"] = Value::String("00".repeat(64));
    }
    json
}

/// Whether every id in `ids` is served: REQs of up to the relay's per-filter cap each.
fn unserved(relay: &mut RelayClient, ids: &[String]) -> Vec<String> {
    let mut missing = Vec::new();
    for chunk in ids.chunks(500) {
        let served = relay.query_ids(json!({"ids": chunk, "limit": chunk.len()}));
        missing.extend(chunk.iter().filter(|id| !served.contains(id)).cloned());
    }
    missing
}

fn legitimate_users_are_unharmed_by_three_attacks_at_once(flavor: Flavor) {
    let server = Server::start_with(
        flavor,
        // Shorter than the defaults so that attackers are cut off and come back many times
        // within the soak; legitimate clients say something every few seconds.
        ServerOptions::default()
            .flag("--websocket-ping-secs", 5)
            .flag("--websocket-idle-secs", 20)
            .flag("--body-idle-timeout-secs", 10),
    );
    let mut maintainer = Maintainer::host(&server, keys(1), "soak");
    let (url, coordinate) = (maintainer.url.clone(), maintainer.coordinate());
    let receive_pack = url.trim_start_matches(&server.http_url()).to_owned() + "/git-receive-pack";
    let head = maintainer.work.head();

    // The attacks, each from its own address, each past its per-address limit.
    let flooders = [attacker(1)];
    let mut attacks: Vec<Attack> = websocket_flood(
        &flooders,
        server.addr,
        WEBSOCKETS_PER_ADDRESS / 2 + 10,
        false,
    );
    attacks.extend(websocket_flood(
        &flooders,
        server.addr,
        WEBSOCKETS_PER_ADDRESS / 2 + 10,
        true,
    ));
    let stalled = stalled_pushes(
        &[attacker(2)],
        server.addr,
        &receive_pack,
        &head,
        GIT_REQUESTS_PER_ADDRESS + 4,
    );
    let spam_coordinate = coordinate.clone();
    let (spammer, spam_acknowledged) = event_spam(attacker(3), &server.ws_url(), 2, move |_, n| {
        spam(&spam_coordinate, n)
    });

    let until = Instant::now() + soak_duration();
    let outcome = Outcome::default();
    std::thread::scope(|s| {
        s.spawn(|| repeat_until(until, || outcome.record("push", maintainer.push_next())));
        s.spawn(|| repeat_until(until, || outcome.record("clone", traffic::clone(&url))));
        s.spawn(|| {
            let author = keys(2);
            let mut relay = RelayClient::connect(&server.ws_url());
            let mut n = 0;
            repeat_until(until, || {
                n += 1;
                let issue = traffic::issue(&author, &coordinate, n);
                let result = traffic::publish(&mut relay, &issue);
                if result.is_ok() {
                    outcome.acknowledged.lock().unwrap().push(issue.id.to_hex());
                }
                outcome.record("EVENT", result);
            });
        });
        s.spawn(|| {
            let mut relay = RelayClient::connect(&server.ws_url());
            let filter =
                json!({"kinds": [1621], "authors": [keys(2).public_key().to_hex()], "limit": 50});
            repeat_until(until, || {
                let started = Instant::now();
                let result = relay.try_query(filter.clone()).map(|_| started.elapsed());
                outcome.record("REQ", result);
                outcome.record("NIP-11", traffic::nip11(server.addr));
            });
        });
    });

    let tallies: Vec<(&str, std::sync::Arc<Tally>)> = attacks
        .into_iter()
        .map(|a| ("WebSocket flood", a.stop()))
        .chain(stalled.into_iter().map(|a| ("stalled pushes", a.stop())))
        .chain([("EVENT spam", spammer.stop())])
        .collect();
    let done = outcome.done.lock().unwrap().clone();
    eprintln!("{flavor:?} soak: legitimate operations {done:?}");
    for (name, tally) in &tallies {
        eprintln!("{flavor:?} soak: {name}: {tally}");
    }

    let errors = outcome.errors.lock().unwrap();
    assert!(
        errors.is_empty(),
        "{} legitimate operations failed under attack:\n{}\n{}",
        errors.len(),
        errors.join("\n"),
        server.log()
    );
    for what in ["push", "clone", "EVENT", "REQ", "NIP-11"] {
        assert!(done.get(what).is_some_and(|n| *n > 0), "no {what} was done");
    }
    // Each attack reached its per-address limit and was refused beyond it.
    for name in ["WebSocket flood", "stalled pushes", "EVENT spam"] {
        let of_it = || tallies.iter().filter(|(n, _)| *n == name).map(|(_, t)| t);
        let sum = |counter: fn(&Tally) -> &std::sync::atomic::AtomicU64| -> u64 {
            of_it().map(|t| Tally::get(counter(t))).sum()
        };
        assert!(
            sum(|t| &t.most_held) + sum(|t| &t.answered) > 0,
            "{name} did nothing"
        );
        assert!(sum(|t| &t.refused) > 0, "{name} was never refused");
    }

    // Nothing acknowledged is lost: the legitimate issues, the spam the server took, and the
    // last state, whose commit the repository serves.
    let mut relay = RelayClient::connect(&server.ws_url());
    let acknowledged = outcome.acknowledged.lock().unwrap();
    let missing = unserved(&mut relay, &acknowledged);
    assert!(
        missing.is_empty(),
        "acknowledged issues not served: {missing:?}"
    );
    let spam_acknowledged = spam_acknowledged.lock().unwrap();
    assert!(
        !spam_acknowledged.is_empty(),
        "the spam's issues were all refused"
    );
    let missing = unserved(&mut relay, &spam_acknowledged);
    assert!(
        missing.is_empty(),
        "acknowledged spam not served: {missing:?}"
    );
    let (state, commit) = maintainer.last_pushed.clone().expect("a state was pushed");
    assert_eq!(
        unserved(&mut relay, std::slice::from_ref(&state)),
        Vec::<String>::new(),
        "the last state"
    );
    assert_eq!(ref_of(&url, "refs/heads/main"), Some(commit));
}

both_runtimes!(legitimate_users_are_unharmed_by_three_attacks_at_once);
