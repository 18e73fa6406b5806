//! Legitimate users under attack: p99 of a push, a clone, an EVENT round trip and a NIP-11
//! GET from 127.0.0.1 while anonymous clients attack from other loopback addresses, next to
//! the same operations on the same server just before; and the server's peak RSS during the
//! attack. Each attack gets a fresh server.

use std::net::IpAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use graspd_tests::attack::{
    attacker, connect_from, event_spam, fetch_request, gzip_bomb, never_reading_fetch, pkt, post,
    stalled_pushes, status_within, websocket_flood, Attack, Tally,
};
use graspd_tests::nostr::{keys, tagged, RelayClient};
use graspd_tests::traffic::{self, Maintainer};
use graspd_tests::{Flavor, Server};
use serde_json::json;

use crate::report::{ms, percentiles_ms, proc_status};

/// Sizes of the hostile measurements.
pub struct Settings {
    /// Legitimate operations of each kind measured before and during each attack.
    pub samples: usize,
    /// Stored issues of 400 KiB that the never-reading REQs ask for.
    pub big_issues: usize,
    /// Size of the random file in the repository never-reading clones ask for.
    pub big_file_mib: usize,
}

/// The default per-address limits the attacks go past.
const WEBSOCKETS_PER_ADDRESS: usize = 100;
const GIT_REQUESTS_PER_ADDRESS: usize = 16;

#[derive(Clone, Copy, Debug)]
pub enum Kind {
    StalledPushes,
    WebSocketFlood,
    UnreadReqs,
    UploadBodies,
    UnreadClones,
    EventFlood,
}

impl Kind {
    pub const ALL: [Kind; 6] = [
        Kind::StalledPushes,
        Kind::WebSocketFlood,
        Kind::UnreadReqs,
        Kind::UploadBodies,
        Kind::UnreadClones,
        Kind::EventFlood,
    ];

    /// The attack's name for `--attacks`.
    pub fn name(self) -> &'static str {
        match self {
            Kind::StalledPushes => "stalled-pushes",
            Kind::WebSocketFlood => "websocket-flood",
            Kind::UnreadReqs => "unread-reqs",
            Kind::UploadBodies => "upload-bodies",
            Kind::UnreadClones => "unread-clones",
            Kind::EventFlood => "event-flood",
        }
    }

    pub fn label(self) -> &'static str {
        match self {
            Kind::StalledPushes => "stalled pushes",
            Kind::WebSocketFlood => "WebSocket flood",
            Kind::UnreadReqs => "REQs never read",
            Kind::UploadBodies => "upload-pack bodies",
            Kind::UnreadClones => "clones never read",
            Kind::EventFlood => "EVENT flood",
        }
    }

    /// What the attack does (for the table's note).
    pub fn note(self) -> String {
        match self {
            Kind::StalledPushes => format!(
                "{} receive-pack POSTs from one address that send the commands and stop, on the \
                 repo pushed to",
                GIT_REQUESTS_PER_ADDRESS + 4
            ),
            Kind::WebSocketFlood => format!(
                "4 addresses x {} WebSockets, half idle (no pong), half dribbling a frame",
                WEBSOCKETS_PER_ADDRESS + 20
            ),
            Kind::UnreadReqs => {
                "8 connections x 8 REQs for all the 400 KiB issues, never read".to_owned()
            }
            Kind::UploadBodies => format!(
                "{} at once from one address, in a loop: gzip bombs (1 GiB inflated) and 12 \
                 MiB bodies of haves",
                GIT_REQUESTS_PER_ADDRESS
            ),
            Kind::UnreadClones => format!(
                "2 addresses x {} upload-pack POSTs of a big repo, never read (4 KiB receive \
                 window)",
                GIT_REQUESTS_PER_ADDRESS + 4
            ),
            Kind::EventFlood => {
                "4 connections from one address, 32 EVENTs in flight each: accepted issues"
                    .to_owned()
            }
        }
    }
}

/// Legitimate operations' latencies, in milliseconds, and their failures.
#[derive(Default)]
pub struct Samples {
    pub push: Vec<f64>,
    pub clone: Vec<f64>,
    pub event: Vec<f64>,
    pub nip11: Vec<f64>,
    pub errors: Vec<String>,
}

impl Samples {
    fn record(list: &mut Vec<f64>, errors: &mut Vec<String>, result: Result<Duration, String>) {
        match result {
            Ok(took) => list.push(ms(took)),
            Err(e) => errors.push(e),
        }
    }

    /// p99 of push, clone, EVENT, NIP-11.
    pub fn p99(&self) -> [f64; 4] {
        [&self.push, &self.clone, &self.event, &self.nip11].map(|s| percentiles_ms(s).1)
    }
}

pub struct Outcome {
    pub before: Samples,
    pub during: Samples,
    /// RSS just before the attack, MiB.
    pub idle_mib: f64,
    /// Peak RSS during the attack (VmHWM, reset before it), MiB.
    pub peak_mib: f64,
    /// What the attack did.
    pub tally: String,
}

pub fn measure(flavor: Flavor, kind: Kind, settings: &Settings) -> Outcome {
    let server = Server::start(flavor);
    let mut maintainer = Maintainer::host(&server, keys(1), "hostile");
    let mut relay = RelayClient::connect(&server.ws_url());
    let prepared = prepare(kind, &server, &maintainer, settings);
    let before = legitimate(&server, &mut maintainer, &mut relay, settings.samples);
    let pid = server.pid().expect("server pid");
    let reset = std::fs::write(format!("/proc/{pid}/clear_refs"), "5").is_ok();
    let idle_mib = proc_status(pid, "VmRSS").unwrap_or(0) as f64 / 1024.0;
    let attacks = start(kind, &server, &maintainer, &prepared);
    // Let the attack reach its limits before measuring.
    let settled = Instant::now() + Duration::from_secs(2);
    while Instant::now() < settled {
        std::thread::sleep(Duration::from_millis(100));
    }
    let during = legitimate(&server, &mut maintainer, &mut relay, settings.samples);
    let peak_kib = if reset {
        proc_status(pid, "VmHWM")
    } else {
        proc_status(pid, "VmRSS")
    };
    let tally = attacks
        .into_iter()
        .map(Attack::stop)
        .fold(Tally::default(), |sum, t| {
            for (to, from) in [
                (&sum.opened, &t.opened),
                (&sum.refused, &t.refused),
                (&sum.ended, &t.ended),
                (&sum.most_held, &t.most_held),
                (&sum.answered, &t.answered),
            ] {
                to.fetch_add(from.load(Ordering::Relaxed), Ordering::Relaxed);
            }
            sum
        });
    Outcome {
        before,
        during,
        idle_mib,
        peak_mib: peak_kib.unwrap_or(0) as f64 / 1024.0,
        tally: tally.to_string(),
    }
}

/// `samples` rounds of a push, a clone, an issue and a NIP-11 GET.
fn legitimate(
    server: &Server,
    maintainer: &mut Maintainer,
    relay: &mut RelayClient,
    samples: usize,
) -> Samples {
    let mut s = Samples::default();
    let author = keys(2);
    let coordinate = maintainer.coordinate();
    for _ in 0..samples {
        Samples::record(&mut s.push, &mut s.errors, maintainer.push_next());
        Samples::record(&mut s.clone, &mut s.errors, traffic::clone(&maintainer.url));
        let issue = tagged(
            &author,
            1621,
            &[
                &["a", &coordinate],
                &["subject", &format!("{}", s.event.len())],
            ],
        );
        Samples::record(&mut s.event, &mut s.errors, traffic::publish(relay, &issue));
        Samples::record(&mut s.nip11, &mut s.errors, traffic::nip11(server.addr));
    }
    s
}

/// What an attack needs set up before the baseline: a repository worth cloning, or stored
/// events worth asking for.
enum Prepared {
    Nothing,
    /// (upload-pack path, commit) of a repository with a big random file.
    BigRepo(String, String),
}

fn prepare(kind: Kind, server: &Server, maintainer: &Maintainer, settings: &Settings) -> Prepared {
    match kind {
        Kind::UnreadReqs => {
            let mut writer = RelayClient::connect(&server.ws_url());
            let padding = "x".repeat(400 * 1024);
            let coordinate = maintainer.coordinate();
            for n in 0..settings.big_issues {
                let mut issue = graspd_tests::nostr::EventBuilder::new(
                    graspd_tests::nostr::Kind::from(1621),
                    format!("{n} {padding}"),
                );
                issue = issue.tags([
                    graspd_tests::nostr::Tag::parse(["a", coordinate.as_str()]).unwrap(),
                    graspd_tests::nostr::Tag::parse(["t", "big"]).unwrap(),
                ]);
                let issue = issue.sign_with_keys(&keys(3)).unwrap();
                let reply = writer.publish(&issue);
                assert!(reply.accepted, "big issue refused: {reply:?}");
            }
            Prepared::Nothing
        }
        Kind::UnreadClones => {
            let mut big = Maintainer::host(server, keys(4), "big");
            std::fs::write(
                big.work.dir.join("random.bin"),
                random_bytes(settings.big_file_mib << 20),
            )
            .expect("write the big file");
            big.work.git(&["add", "random.bin"]);
            big.work.git(&["commit", "-q", "-m", "big"]);
            let commit = big.work.head();
            big.push_commit(&commit)
                .unwrap_or_else(|e| panic!("big push: {e}"));
            let path =
                big.url.trim_start_matches(&server.http_url()).to_owned() + "/git-upload-pack";
            Prepared::BigRepo(path, commit)
        }
        _ => Prepared::Nothing,
    }
}

/// Incompressible bytes (xorshift), so the pack is as big as the file.
fn random_bytes(n: usize) -> Vec<u8> {
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut out = Vec::with_capacity(n + 8);
    while out.len() < n {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.truncate(n);
    out
}

fn start(kind: Kind, server: &Server, maintainer: &Maintainer, prepared: &Prepared) -> Vec<Attack> {
    let addr = server.addr;
    let repo_path = maintainer
        .url
        .trim_start_matches(&server.http_url())
        .to_owned();
    match kind {
        Kind::StalledPushes => stalled_pushes(
            &[attacker(1)],
            addr,
            &(repo_path + "/git-receive-pack"),
            &maintainer.work.head(),
            GIT_REQUESTS_PER_ADDRESS + 4,
        ),
        Kind::WebSocketFlood => {
            let sources: Vec<IpAddr> = (1..=4).map(attacker).collect();
            let half = WEBSOCKETS_PER_ADDRESS / 2 + 10;
            let mut attacks = websocket_flood(&sources, addr, half, false);
            attacks.extend(websocket_flood(&sources, addr, half, true));
            attacks
        }
        Kind::UnreadReqs => {
            let ws = server.ws_url();
            vec![Attack::spawn(8, move |_, stop, tally| {
                let Ok(mut hog) = RelayClient::try_connect_from(&ws, attacker(1)) else {
                    tally.refused.fetch_add(1, Ordering::Relaxed);
                    return;
                };
                for sub in 0..8 {
                    let req = json!(["REQ", format!("all-{sub}"), {"#t": ["big"]}]);
                    if hog.try_send(req).is_ok() {
                        tally.opened.fetch_add(1, Ordering::Relaxed);
                    }
                }
                while !stop.load(Ordering::Relaxed) {
                    std::thread::sleep(Duration::from_millis(50));
                }
            })]
        }
        Kind::UploadBodies => {
            let rpc = repo_path + "/git-upload-pack";
            let bomb = Arc::new(gzip_bomb(&maintainer.work.head(), 1024));
            let haves = Arc::new(many_haves(&maintainer.work.head(), 12 << 20));
            vec![Attack::spawn(
                GIT_REQUESTS_PER_ADDRESS,
                move |n, stop, tally| {
                    while !stop.load(Ordering::Relaxed) {
                        let Ok(mut stream) = connect_from(attacker(1), addr) else {
                            continue;
                        };
                        let content_type =
                            ("Content-Type", "application/x-git-upload-pack-request");
                        let sent = if n % 2 == 0 {
                            post(
                                &mut stream,
                                addr,
                                &rpc,
                                &[content_type, ("Content-Encoding", "gzip")],
                                &bomb,
                            )
                        } else {
                            post(&mut stream, addr, &rpc, &[content_type], &haves)
                        };
                        tally.opened.fetch_add(1, Ordering::Relaxed);
                        match sent
                            .ok()
                            .and_then(|_| status_within(&mut stream, Duration::from_secs(60)))
                        {
                            Some(200) => tally.answered.fetch_add(1, Ordering::Relaxed),
                            _ => tally.refused.fetch_add(1, Ordering::Relaxed),
                        };
                    }
                },
            )]
        }
        Kind::UnreadClones => {
            let Prepared::BigRepo(path, commit) = prepared else {
                unreachable!("prepared with the big repository")
            };
            [attacker(1), attacker(2)]
                .into_iter()
                .map(|source| {
                    let (path, commit) = (path.clone(), commit.clone());
                    Attack::hold(
                        GIT_REQUESTS_PER_ADDRESS + 4,
                        move || {
                            let mut s = never_reading_fetch(source, addr, &path, &commit)?;
                            match status_within(&mut s, Duration::from_secs(10)) {
                                Some(200) => Ok(s),
                                other => Err(std::io::Error::other(format!("{other:?}"))),
                            }
                        },
                        // Never read, not even to see whether the server closed it.
                        |_| true,
                    )
                })
                .collect()
        }
        Kind::EventFlood => {
            let coordinate = maintainer.coordinate();
            let (attack, _accepted) =
                event_spam(attacker(1), &server.ws_url(), 4, move |connection, n| {
                    let issue = traffic::issue(&keys(3), &coordinate, n * 8 + connection as u64);
                    serde_json::to_value(&issue).unwrap()
                });
            vec![attack]
        }
    }
}

/// A fetch request of `bytes` bytes: want `oid`, then haves of objects nobody has, then done.
fn many_haves(oid: &str, bytes: usize) -> Vec<u8> {
    let mut body = fetch_request(oid);
    let done = body.split_off(body.len() - 9);
    let mut n: u64 = 0;
    while body.len() < bytes {
        body.extend(pkt(
            format!("have {:040x}\n", 0xdead_0000_0000u64 + n).as_bytes()
        ));
        n += 1;
    }
    body.extend(done);
    body
}
