//! The relay world for the GRASP-02 follower: remote relays drawn from one seed, each with a
//! behaviour (healthy, hanging, refusing, disconnecting, flapping, replaying, flooding, lying)
//! and a way of answering NIP-77 negentropy (not at all, honestly, lying, aborting), the
//! hosted announcements that list them, and the signed events they hold.
//!
//! Events here are really signed (deterministically: fixed auxiliary randomness), because the
//! point is to run the host's signature check on them; lying relays send corrupted copies.

use std::time::Duration;

use graspd_core::acceptance::OwnService;
use graspd_core::events::{self, Announcement, GitEvent};
use graspd_core::follow::reconcile::ReconcileConfig;
use graspd_core::follow::relay_url;
use graspd_core::follow::FollowConfig;
use graspd_core::{Identifier, Time};
use graspd_host::follow::HistoryLimits;
use nostr::event::Event;
use nostr::key::{Keys, SecretKey};

use crate::rng::Rng;
use crate::world::OWN_ORIGIN;

/// Wall-clock seconds of virtual time zero (event `created_at` values).
pub const EPOCH_SECS: u64 = 1_760_000_000;

/// How one remote relay misbehaves until the heal time; afterwards every relay is healthy.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Behaviour {
    Healthy,
    /// Never answers the WebSocket handshake.
    Hangs,
    /// Refuses every connection.
    Refuses,
    /// Connects, sends its history, closes the connection after `after`.
    Disconnects {
        after: Duration,
    },
    /// Up for `period`, then refusing for `period`, alternately; closes at the end of an up.
    Flaps {
        period: Duration,
    },
    /// Sends its stored events again every `every` on every connection.
    Replays {
        every: Duration,
    },
    /// After the history, `burst` more events 1 ms apart: copies and junk.
    Floods {
        burst: u32,
    },
    /// Its events carry bad ids or signatures (and a few honest ones).
    Lies,
}

impl Behaviour {
    fn draw(rng: &mut Rng) -> Behaviour {
        match rng.below(8) {
            0 => Behaviour::Healthy,
            1 => Behaviour::Hangs,
            2 => Behaviour::Refuses,
            3 => Behaviour::Disconnects {
                after: Duration::from_millis(rng.range(200, 90_000)),
            },
            4 => Behaviour::Flaps {
                period: Duration::from_millis(rng.range(1_000, 40_000)),
            },
            5 => Behaviour::Replays {
                every: Duration::from_millis(rng.range(5_000, 40_000)),
            },
            6 => Behaviour::Floods {
                burst: rng.range(20, 300) as u32,
            },
            _ => Behaviour::Lies,
        }
    }
}

/// How one remote relay answers NIP-77 until the heal; afterwards every relay reconciles
/// honestly.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Nip77 {
    /// Answers `NEG-OPEN` with a NOTICE naming an unknown command (strfry without it).
    Unsupported,
    Honest,
    /// Reconciles over its events and `phantoms` ids of events it does not hold, so a fetch
    /// by id gets nothing for them.
    PhantomIds {
        phantoms: u32,
    },
    /// Reconciles honestly, but answers a fetch by id with forged copies and other events,
    /// never the one asked for.
    WrongEvents,
    /// Answers every message with the whole range under a wrong fingerprint: it never agrees,
    /// so every round asks for another split.
    NeverAgrees,
    /// Reconciles honestly for `after` messages of ours (0: not even the `NEG-OPEN`), then
    /// ends the exchange by `how`.
    Aborts {
        after: u32,
        how: Abort,
    },
}

/// How a relay ends a reconciliation midway.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Abort {
    /// Closes the connection.
    Close,
    /// Answers `NEG-ERR`.
    NegErr,
    /// Never answers again on that reconciliation.
    Silence,
}

impl Nip77 {
    fn draw(rng: &mut Rng) -> Nip77 {
        match rng.below(10) {
            0..=2 => Nip77::Unsupported,
            3 | 4 => Nip77::Honest,
            5 => Nip77::PhantomIds {
                phantoms: rng.range(1, 60) as u32,
            },
            6 => Nip77::WrongEvents,
            7 => Nip77::NeverAgrees,
            _ => Nip77::Aborts {
                after: rng.range(0, 2) as u32,
                how: match rng.below(3) {
                    0 => Abort::Close,
                    1 => Abort::NegErr,
                    _ => Abort::Silence,
                },
            },
        }
    }

    /// Whether the relay answers negentropy at all.
    pub fn speaks(self) -> bool {
        self != Nip77::Unsupported
    }
}

/// One remote relay.
#[derive(Clone, Debug)]
pub struct SimRelay {
    /// Canonical URL (as the follower spells it).
    pub url: String,
    pub behaviour: Behaviour,
    pub nip77: Nip77,
    /// Handshake latency.
    pub latency: Duration,
}

/// One version of a hosted announcement: published at `at`, listing `relays` (raw spellings,
/// junk included).
#[derive(Clone, Debug)]
pub struct Publication {
    pub at: Time,
    pub repo: usize,
    pub event: Event,
    pub announcement: Announcement,
}

/// A signed event some relays hold, with the forged copies liars send instead.
#[derive(Clone, Debug)]
pub struct Held {
    pub genuine: Event,
    /// Same id, signature of another event; content changed under the old id; id recomputed
    /// but signed by a stranger.
    pub forged: Vec<Event>,
}

/// Everything a relay-follower run is made of.
#[derive(Clone, Debug)]
pub struct RelayWorld {
    pub seed: u64,
    pub name: String,
    pub config: FollowConfig,
    /// The follower's history bounds: reconciliation and paging (production defaults or
    /// tighter).
    pub reconcile: ReconcileConfig,
    pub history: HistoryLimits,
    pub relays: Vec<SimRelay>,
    /// Raw relay URLs that must never be connected: our origin and (unless allowed) private.
    pub junk: Vec<String>,
    pub publications: Vec<Publication>,
    /// `(at, repo)`: the repository stops being hosted.
    pub removals: Vec<(Time, usize)>,
    /// Events on every relay (announcements, states, strangers' events).
    pub held: Vec<Held>,
    /// The repository of each PR held (PR threads share a relay's subscription budget).
    pub pr_repos: Vec<usize>,
    pub heal_at: Time,
    pub end_at: Time,
}

/// Knobs the named scenarios turn.
#[derive(Clone, Debug)]
pub struct Shape {
    pub relays: u64,
    pub repos: u64,
    /// Every public relay gets this behaviour (`None`: drawn per relay).
    pub behaviour: Option<Behaviour>,
    pub max_connections: Option<usize>,
    pub heal_after: Duration,
    /// Every public relay answers NIP-77 so (`None`: drawn per relay).
    pub nip77: Option<Nip77>,
    /// Draw the NIP-77 behaviour among relays that speak it.
    pub nip77_spoken: bool,
}

impl Default for Shape {
    fn default() -> Shape {
        Shape {
            relays: 0,
            repos: 0,
            behaviour: None,
            max_connections: None,
            heal_after: Duration::ZERO,
            nip77: None,
            nip77_spoken: false,
        }
    }
}

pub fn own_service() -> OwnService {
    OwnService::new(OWN_ORIGIN).expect("the simulated origin parses")
}

/// Deterministic keys for `name` from `rng`.
pub fn keys(rng: &mut Rng) -> Keys {
    loop {
        let bytes: [u8; 32] = rng.bytes();
        if let Ok(secret) = SecretKey::from_slice(&bytes) {
            return Keys::new(secret);
        }
    }
}

/// A signed event with fixed auxiliary randomness (so runs are reproducible).
pub fn signed(
    keys: &Keys,
    kind: u16,
    created_at: u64,
    tags: Vec<Vec<String>>,
    content: &str,
) -> Event {
    let unsigned = crate::forge::Unsigned::new(keys.public_key(), kind, created_at, tags, content);
    let secp = secp256k1::Secp256k1::new();
    let sig = keys.sign_schnorr_with_aux_rand(&secp, unsigned.id.as_bytes(), &[7; 32]);
    unsigned.with_signature(sig)
}

fn strs(parts: &[&str]) -> Vec<String> {
    parts.iter().map(|s| (*s).to_owned()).collect()
}

/// The three lies about `genuine`; `other` is another genuine event, `stranger` a key that is
/// not the author's.
fn forgeries(genuine: &Event, other: &Event, stranger: &Keys) -> Vec<Event> {
    let borrowed_sig = Event::new(
        genuine.id,
        genuine.pubkey,
        genuine.created_at,
        genuine.kind,
        genuine.tags.clone(),
        genuine.content.clone(),
        other.sig,
    );
    let tampered = Event::new(
        genuine.id,
        genuine.pubkey,
        genuine.created_at,
        genuine.kind,
        genuine.tags.clone(),
        format!("{} (tampered)", genuine.content),
        genuine.sig,
    );
    if genuine.pubkey == stranger.public_key() {
        // The stranger's own events: re-signing them would be genuine, not a lie.
        return vec![borrowed_sig, tampered];
    }
    // The author's name on an event the stranger signed: id right, signature wrong key.
    let mut tags: Vec<Vec<String>> = genuine.tags.iter().map(|t| t.as_slice().to_vec()).collect();
    tags.push(strs(&["t", "forged"]));
    let stranger_signed = signed(
        stranger,
        genuine.kind.as_u16(),
        genuine.created_at.as_secs(),
        tags,
        &genuine.content,
    );
    let impersonation = Event::new(
        nostr::event::EventId::compute(
            &genuine.pubkey,
            &stranger_signed.created_at,
            &stranger_signed.kind,
            &stranger_signed.tags,
            &stranger_signed.content,
        ),
        genuine.pubkey,
        stranger_signed.created_at,
        stranger_signed.kind,
        stranger_signed.tags.clone(),
        stranger_signed.content.clone(),
        stranger_signed.sig,
    );
    vec![borrowed_sig, tampered, impersonation]
}

const PUBLIC_HOSTS: &[&str] = &[
    "wss://relay.damus.example",
    "wss://nos.example",
    "wss://relay.git.example:7443",
    "ws://plain.example",
    "wss://relay.example.org/nostr",
    "wss://gitnostr.example",
    "wss://r7.example.net",
    "wss://r8.example.net",
];

/// Never to be connected: our own origin in several spellings, and private addresses.
const OWN_SPELLINGS: &[&str] = &[
    "wss://grasp.local",
    "wss://GRASP.local/",
    "ws://grasp.local/relay",
    "wss://grasp.local:443",
];
const PRIVATE: &[&str] = &[
    "ws://127.0.0.1:7000",
    "wss://10.1.2.3",
    "ws://localhost:4869",
    "wss://[::1]:8080",
    "wss://192.168.1.20",
];

impl RelayWorld {
    /// A world drawn from `seed`.
    pub fn random(seed: u64) -> RelayWorld {
        RelayWorld::shaped(seed, "random", &Shape::default())
    }

    /// A world drawn from `seed` within `shape` (zero fields are drawn).
    pub fn shaped(seed: u64, name: &str, shape: &Shape) -> RelayWorld {
        let root = Rng::new(seed).child("relay-world");
        let mut rng = root.child("relays");
        let mut cfg_rng = root.child("config");
        let mut ev_rng = root.child("events");
        let mut pr_rng = root.child("prs");
        let mut neg_rng = root.child("nip77");

        let n_relays = if shape.relays > 0 {
            shape.relays
        } else {
            rng.range(1, PUBLIC_HOSTS.len() as u64)
        };
        let mut hosts: Vec<&str> = PUBLIC_HOSTS.to_vec();
        rng.shuffle(&mut hosts);
        let relays: Vec<SimRelay> = hosts[..n_relays as usize]
            .iter()
            .map(|raw| SimRelay {
                url: relay_url::normalise(raw, false).expect("public relay URLs are followable"),
                behaviour: shape.behaviour.unwrap_or_else(|| Behaviour::draw(&mut rng)),
                nip77: shape.nip77.unwrap_or_else(|| loop {
                    let drawn = Nip77::draw(&mut neg_rng);
                    if drawn.speaks() || !shape.nip77_spoken {
                        break drawn;
                    }
                }),
                latency: Duration::from_millis(rng.range(1, 800)),
            })
            .collect();
        // Tight bounds in half the worlds, so that lies and large histories reach them.
        let reconcile = if neg_rng.percent(50) {
            ReconcileConfig {
                answer_timeout: Duration::from_millis(neg_rng.range(500, 15_000)),
                retry_after: Duration::from_millis(neg_rng.range(5_000, 3_600_000)),
                max_items: neg_rng.range(1, 30) as usize,
                ids_per_req: neg_rng.range(1, 8) as usize,
                max_missing: neg_rng.range(1, 40) as usize,
                max_rounds: neg_rng.range(4, 40) as usize,
                ..ReconcileConfig::default()
            }
        } else {
            ReconcileConfig::default()
        };
        // Pages hold more events than share one second here (paging cannot step through a
        // second holding more than a page).
        let history = HistoryLimits {
            page_limit: neg_rng.range(8, 600) as usize,
            ..HistoryLimits::default()
        };

        let allow_private = cfg_rng.percent(15);
        let config = FollowConfig {
            bootstrap_relays: if cfg_rng.percent(30) {
                vec![relays[rng.index(relays.len())].url.clone()]
            } else {
                Vec::new()
            },
            allow_private_relays: allow_private,
            max_connections: shape
                .max_connections
                .unwrap_or_else(|| cfg_rng.range(1, 10) as usize),
            max_relays: cfg_rng.range(2, 12) as usize,
            max_relays_per_announcement: cfg_rng.range(3, 16) as usize,
            chunk_size: cfg_rng.range(1, 4) as usize,
            max_subscriptions_per_relay: cfg_rng.range(1, 5) as usize,
            ..FollowConfig::default()
        };
        // Private URLs are junk unless allowed; allowed ones are simply unreachable relays
        // (refusing), which is what a wrong private address is.
        let mut junk: Vec<String> = OWN_SPELLINGS.iter().map(|s| (*s).to_owned()).collect();
        let mut relays = relays;
        for p in PRIVATE {
            if allow_private {
                relays.push(SimRelay {
                    url: relay_url::normalise(p, true).expect("private URLs normalise"),
                    behaviour: Behaviour::Refuses,
                    nip77: Nip77::Unsupported,
                    latency: Duration::from_millis(1),
                });
            } else {
                junk.push((*p).to_owned());
            }
        }

        let owners: Vec<Keys> = (0..rng.range(1, 3)).map(|_| keys(&mut ev_rng)).collect();
        let stranger = keys(&mut ev_rng);
        let own = own_service();
        let n_repos = if shape.repos > 0 {
            shape.repos
        } else {
            rng.range(1, 5)
        };
        let heal_at = if shape.heal_after > Duration::ZERO {
            Time::ZERO + shape.heal_after
        } else {
            Time::from_millis(rng.range(60_000, 400_000))
        };
        let mut publications = Vec::new();
        let mut removals = Vec::new();
        let mut held: Vec<Held> = Vec::new();
        let mut genuine: Vec<Event> = Vec::new();
        let mut pr_repos = Vec::new();
        for repo in 0..n_repos as usize {
            let owner = &owners[rng.index(owners.len())];
            let identifier = format!("repo-{repo}");
            let clone = own.clone_url(
                &owner.public_key(),
                &Identifier::new(&identifier).expect("simple identifier"),
            );
            let versions = if rng.percent(30) { 2 } else { 1 };
            let mut at = Time::from_millis(rng.range(0, 30_000));
            for version in 0..versions {
                let mut listed: Vec<String> = Vec::new();
                for r in &relays {
                    if rng.percent(60) {
                        listed.push(r.url.clone());
                    }
                }
                if rng.percent(50) {
                    listed.push(junk[rng.index(junk.len())].clone());
                }
                rng.shuffle(&mut listed);
                let mut relays_tag = vec!["relays".to_owned()];
                relays_tag.extend(listed);
                let created_at = EPOCH_SECS + at.as_millis() / 1000 + version;
                let event = signed(
                    owner,
                    events::KIND_ANNOUNCEMENT,
                    created_at,
                    vec![
                        strs(&["d", &identifier]),
                        vec!["clone".to_owned(), clone.clone()],
                        relays_tag,
                    ],
                    "",
                );
                let Ok(Some(GitEvent::Announcement(announcement))) = events::parse(&event) else {
                    panic!("simulated announcement does not parse");
                };
                genuine.push(event.clone());
                publications.push(Publication {
                    at,
                    repo,
                    event,
                    announcement,
                });
                at = at + Duration::from_millis(rng.range(1_000, 200_000));
            }
            if rng.percent(15) {
                removals.push((at, repo));
            }
            // A state by the owner (waits for data), and a stranger's state for the same
            // identifier (refused: not a maintainer).
            let oid = format!("{:040x}", rng.next_u64());
            let state_tags = vec![
                strs(&["d", &identifier]),
                strs(&["refs/heads/main", &oid]),
                strs(&["HEAD", "ref: refs/heads/main"]),
            ];
            genuine.push(signed(
                owner,
                events::KIND_STATE,
                EPOCH_SECS + 100 + repo as u64,
                state_tags.clone(),
                "",
            ));
            genuine.push(signed(
                &stranger,
                events::KIND_STATE,
                EPOCH_SECS + 101 + repo as u64,
                state_tags,
                "",
            ));
            // Sometimes a stranger's PR to the repository (waits for data; its thread is then
            // followed, so thread subscriptions share the relay's budget).
            if pr_rng.percent(50) {
                pr_repos.push(repo);
                let coordinate = format!(
                    "{}:{}:{identifier}",
                    events::KIND_ANNOUNCEMENT,
                    owner.public_key().to_hex()
                );
                genuine.push(signed(
                    &stranger,
                    events::KIND_PR,
                    EPOCH_SECS + 102 + repo as u64,
                    vec![
                        strs(&["a", &coordinate]),
                        strs(&["c", &format!("{:040x}", pr_rng.next_u64())]),
                        strs(&["clone", "https://git.example.net/pr.git"]),
                    ],
                    "",
                ));
            }
        }
        for (i, event) in genuine.iter().enumerate() {
            let other = &genuine[(i + 1) % genuine.len()];
            held.push(Held {
                genuine: event.clone(),
                forged: forgeries(event, other, &stranger),
            });
        }
        publications.sort_by_key(|p| p.at);
        let last = publications
            .iter()
            .map(|p| p.at)
            .chain(removals.iter().map(|r| r.0))
            .max()
            .unwrap_or(Time::ZERO)
            .max(heal_at);
        // After the heal and the last publication: the longest backoff, a connect timeout
        // and a resubscribe interval, with room.
        let end_at = last
            + config.backoff_max
            + config.connect_timeout
            + config.resubscribe_interval
            + Duration::from_secs(10);
        RelayWorld {
            seed,
            name: name.to_owned(),
            config,
            reconcile,
            history,
            relays,
            junk,
            publications,
            removals,
            held,
            pr_repos,
            heal_at,
            end_at,
        }
    }

    pub fn relay(&self, url: &str) -> Option<&SimRelay> {
        self.relays.iter().find(|r| r.url == url)
    }
}

/// Named relay scenarios: `(name, what it checks)`.
pub const NAMED: &[(&str, &str)] = &[
    (
        "relay-flood",
        "relays flooding copies and junk: no second acceptance, bounded connections",
    ),
    (
        "relay-liar",
        "relays sending forged ids and signatures: nothing forged is accepted",
    ),
    (
        "relay-flap",
        "flapping relays: reconnects respect the backoff, all connected after the heal",
    ),
    (
        "relay-replay",
        "relays replaying old events: each event accepted at most once",
    ),
    (
        "relay-hang",
        "relays that never answer the handshake: every connect times out, slots freed",
    ),
    (
        "relay-few-slots",
        "more relays than connection slots: never above max_connections",
    ),
    (
        "relay-neg-honest",
        "relays reconciling by NIP-77: only missing events fetched, every event arrives",
    ),
    (
        "relay-neg-liar",
        "relays lying in NIP-77 (phantom ids, wrong events, no agreement): bounds hold",
    ),
    (
        "relay-neg-abort",
        "relays ending reconciliations midway (close, NEG-ERR, silence): paged instead",
    ),
    (
        "relay-neg-mixed",
        "every relay speaks NIP-77, honestly or not, with any other fault: bounds and liveness",
    ),
];

pub fn named(name: &str, seed: u64) -> Option<RelayWorld> {
    let shape = match name {
        "relay-flood" => Shape {
            relays: 4,
            repos: 3,
            behaviour: Some(Behaviour::Floods { burst: 400 }),
            ..Shape::default()
        },
        "relay-liar" => Shape {
            relays: 4,
            repos: 3,
            behaviour: Some(Behaviour::Lies),
            ..Shape::default()
        },
        "relay-flap" => Shape {
            relays: 4,
            repos: 2,
            behaviour: Some(Behaviour::Flaps {
                period: Duration::from_secs(7),
            }),
            heal_after: Duration::from_secs(600),
            ..Shape::default()
        },
        "relay-replay" => Shape {
            relays: 3,
            repos: 3,
            behaviour: Some(Behaviour::Replays {
                every: Duration::from_secs(5),
            }),
            ..Shape::default()
        },
        "relay-hang" => Shape {
            relays: 5,
            repos: 2,
            behaviour: Some(Behaviour::Hangs),
            max_connections: Some(2),
            heal_after: Duration::from_secs(300),
            ..Shape::default()
        },
        "relay-few-slots" => Shape {
            relays: 8,
            repos: 4,
            max_connections: Some(2),
            ..Shape::default()
        },
        "relay-neg-mixed" => Shape {
            nip77_spoken: true,
            ..Shape::default()
        },
        "relay-neg-honest" => Shape {
            relays: 3,
            repos: 4,
            behaviour: Some(Behaviour::Healthy),
            nip77: Some(Nip77::Honest),
            ..Shape::default()
        },
        "relay-neg-liar" => Shape {
            relays: 4,
            repos: 3,
            behaviour: Some(Behaviour::Healthy),
            nip77: Some(match seed % 3 {
                0 => Nip77::PhantomIds { phantoms: 50 },
                1 => Nip77::WrongEvents,
                _ => Nip77::NeverAgrees,
            }),
            heal_after: Duration::from_secs(300),
            ..Shape::default()
        },
        "relay-neg-abort" => Shape {
            relays: 4,
            repos: 3,
            behaviour: Some(Behaviour::Healthy),
            nip77: Some(Nip77::Aborts {
                after: (seed % 2) as u32,
                how: match seed % 3 {
                    0 => Abort::Close,
                    1 => Abort::NegErr,
                    _ => Abort::Silence,
                },
            }),
            heal_after: Duration::from_secs(300),
            ..Shape::default()
        },
        _ => return None,
    };
    Some(RelayWorld::shaped(seed, name, &shape))
}
