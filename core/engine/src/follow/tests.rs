//! The follower against injected time: backoff, caps, batching, bootstrap, own relay.

use std::time::Duration;

use super::*;
use crate::ids::Identifier;
use crate::testkit::pk;

const OWN: &str = "https://grasp.example";

fn t(secs: u64) -> Time {
    Time::from_millis(secs * 1000)
}

fn ann(owner: u8, identifier: &str, created_at: u64, relays: &[&str]) -> Announcement {
    let mut id = [owner; 32];
    id[31] = created_at as u8;
    id[30] = identifier.len() as u8;
    Announcement {
        id: EventId::from_byte_array(id),
        owner: pk(owner),
        created_at,
        identifier: Identifier::new(identifier).unwrap(),
        clone: Vec::new(),
        relays: relays.iter().map(|r| r.to_string()).collect(),
        maintainers: Vec::new(),
    }
}

fn repo(owner: u8, identifier: &str) -> RepoKey {
    RepoKey::new(pk(owner), Identifier::new(identifier).unwrap())
}

fn follower(config: FollowConfig) -> RelayFollower {
    RelayFollower::new(config, OwnService::new(OWN).unwrap())
}

fn drain(f: &mut RelayFollower) -> Vec<Command> {
    std::iter::from_fn(|| f.poll_command()).collect()
}

fn connects(commands: &[Command]) -> Vec<(ConnectionId, String)> {
    commands
        .iter()
        .filter_map(|c| match c {
            Command::Connect { id, url, .. } => Some((*id, url.clone())),
            _ => None,
        })
        .collect()
}

/// Runs timers until `until`, returning every command emitted on the way with its time.
fn run_until(f: &mut RelayFollower, until: Time) -> Vec<(Time, Command)> {
    let mut out: Vec<(Time, Command)> = drain(f).into_iter().map(|c| (f.now, c)).collect();
    while let Some((at, _)) = f.poll_timeout() {
        if at > until {
            break;
        }
        f.handle_timeout(at);
        out.extend(drain(f).into_iter().map(|c| (at, c)));
    }
    out
}

fn only_connect(commands: &[Command]) -> (ConnectionId, Vec<Subscription>) {
    match commands {
        [Command::Connect {
            id, subscriptions, ..
        }] => (*id, subscriptions.clone()),
        other => panic!("expected one Connect, got {other:?}"),
    }
}

#[test]
fn announced_relays_are_followed_without_our_own() {
    let mut f = follower(FollowConfig::default());
    f.handle_input(
        t(0),
        Input::Announcement(ann(
            1,
            "repo",
            100,
            &[
                "wss://grasp.example",
                "wss://GRASP.example/",
                "wss://relay.one/",
                "https://web.example",
                "ws://127.0.0.1",
            ],
        )),
    );
    let commands = drain(&mut f);
    assert_eq!(
        connects(&commands)
            .into_iter()
            .map(|c| c.1)
            .collect::<Vec<_>>(),
        ["wss://relay.one"]
    );
    let (_, subs) = only_connect(&commands);
    assert_eq!(subs.len(), 1);
    assert_eq!(subs[0].key, SubKey::Repos(0));
    let coordinate = format!("30617:{}:repo", pk(1).to_hex());
    assert_eq!(
        subs[0].filters,
        [
            Filter {
                kinds: vec![30617, 30618],
                tag: Some(TagFilter {
                    letter: 'd',
                    values: vec!["repo".into()]
                })
            },
            Filter {
                kinds: vec![],
                tag: Some(TagFilter {
                    letter: 'a',
                    values: vec![coordinate]
                })
            },
        ]
    );
    assert_eq!(f.stats().relay_urls_ignored, 4);
}

#[test]
fn failing_relay_backs_off_from_5s_doubling_to_an_hour() {
    let mut f = follower(FollowConfig::default());
    f.handle_input(
        t(0),
        Input::Announcement(ann(1, "r", 1, &["wss://down.example"])),
    );
    let mut now = t(0);
    let mut delays = Vec::new();
    for _ in 0..13 {
        let commands = drain(&mut f);
        let (id, _) = only_connect(&commands);
        f.handle_input(
            now,
            Input::Failed {
                id,
                reason: "refused".into(),
            },
        );
        assert!(f.poll_command().is_none(), "no connect before the backoff");
        let (at, reason) = f.poll_timeout().unwrap();
        assert_eq!(reason, FollowTimer::Reconnect("wss://down.example".into()));
        delays.push(at.saturating_since(now).as_secs());
        now = at;
        f.handle_timeout(now);
    }
    assert_eq!(
        delays,
        [5, 10, 20, 40, 80, 160, 320, 640, 1280, 2560, 3600, 3600, 3600]
    );
    assert_eq!(f.stats().failures, 13);
    assert_eq!(f.stats().reconnects, 12);
}

#[test]
fn a_healthy_connection_resets_the_backoff() {
    let mut f = follower(FollowConfig::default());
    f.handle_input(
        t(0),
        Input::Announcement(ann(1, "r", 1, &["wss://flaky.example"])),
    );
    let (id, _) = only_connect(&drain(&mut f));
    f.handle_input(
        t(0),
        Input::Failed {
            id,
            reason: "x".into(),
        },
    );
    f.handle_timeout(t(5));
    let (id, _) = only_connect(&drain(&mut f));
    f.handle_input(
        t(5),
        Input::Failed {
            id,
            reason: "x".into(),
        },
    );
    assert_eq!(f.poll_timeout().unwrap().0, t(15));
    f.handle_timeout(t(15));
    let (id, _) = only_connect(&drain(&mut f));
    f.handle_input(t(16), Input::Connected { id });
    // Connected but closed at once, before any history: still failing (10 s -> 20 s).
    f.handle_input(t(17), Input::Closed { id });
    assert_eq!(f.poll_timeout().unwrap().0, t(37));
    f.handle_timeout(t(37));
    let (id, _) = only_connect(&drain(&mut f));
    f.handle_input(t(38), Input::Connected { id });
    f.handle_input(
        t(39),
        Input::Eose {
            id,
            subscription: SubKey::Repos(0),
        },
    );
    f.handle_input(t(500), Input::Closed { id });
    // After a success: reconnect after the initial delay, and failures start from 5 s again.
    assert_eq!(f.poll_timeout().unwrap().0, t(505));
    f.handle_timeout(t(505));
    let (id, _) = only_connect(&drain(&mut f));
    f.handle_input(
        t(505),
        Input::Failed {
            id,
            reason: "x".into(),
        },
    );
    assert_eq!(f.poll_timeout().unwrap().0, t(510));
    let status = f.relay_statuses().next().unwrap();
    assert_eq!(status.consecutive_failures, 1);
    assert_eq!(status.connects, 5);
}

#[test]
fn a_connection_that_lived_long_enough_counts_as_success_without_eose() {
    let mut f = follower(FollowConfig::default());
    f.handle_input(
        t(0),
        Input::Announcement(ann(1, "r", 1, &["wss://quiet.example"])),
    );
    let (id, _) = only_connect(&drain(&mut f));
    f.handle_input(t(1), Input::Connected { id });
    f.handle_input(
        t(61),
        Input::Failed {
            id,
            reason: "reset".into(),
        },
    );
    // The failure after a stable connection is the first one: 5 s.
    assert_eq!(f.poll_timeout().unwrap().0, t(66));
}

#[test]
fn connect_timeout_counts_as_failure_and_disconnects() {
    let mut f = follower(FollowConfig::default());
    f.handle_input(
        t(0),
        Input::Announcement(ann(1, "r", 1, &["wss://slow.example"])),
    );
    let (id, _) = only_connect(&drain(&mut f));
    assert_eq!(
        f.poll_timeout().unwrap(),
        (t(30), FollowTimer::ConnectDeadline(id))
    );
    f.handle_timeout(t(30));
    assert_eq!(drain(&mut f), [Command::Disconnect { id }]);
    // A late report about the abandoned connection changes nothing.
    f.handle_input(t(31), Input::Connected { id });
    assert_eq!(f.stats().relays_connected, 0);
    assert_eq!(
        f.poll_timeout().unwrap(),
        (t(35), FollowTimer::Reconnect("wss://slow.example".into()))
    );
}

#[test]
fn duplicate_and_older_announcements_change_nothing() {
    let mut f = follower(FollowConfig::default());
    let a = ann(1, "r", 10, &["wss://relay.one"]);
    f.handle_input(t(0), Input::Announcement(a.clone()));
    let (id, _) = only_connect(&drain(&mut f));
    f.handle_input(
        t(0),
        Input::Failed {
            id,
            reason: "x".into(),
        },
    );
    f.handle_timeout(t(5));
    let (id, _) = only_connect(&drain(&mut f));
    f.handle_input(
        t(5),
        Input::Failed {
            id,
            reason: "x".into(),
        },
    );
    let timeout = f.poll_timeout();
    assert_eq!(timeout.as_ref().unwrap().0, t(15));
    // The same announcement again, and an older one naming another relay: nothing moves.
    f.handle_input(t(6), Input::Announcement(a));
    f.handle_input(
        t(7),
        Input::Announcement(ann(1, "r", 9, &["wss://relay.two"])),
    );
    assert!(drain(&mut f).is_empty());
    assert_eq!(f.poll_timeout(), timeout);
    assert_eq!(f.relay_statuses().next().unwrap().consecutive_failures, 2);
    assert_eq!(f.stats().relays_tracked, 1);
}

#[test]
fn newer_announcement_moves_the_repository_to_its_new_relays() {
    let mut f = follower(FollowConfig::default());
    f.handle_input(
        t(0),
        Input::Announcement(ann(1, "r", 10, &["wss://relay.one"])),
    );
    let (old, _) = only_connect(&drain(&mut f));
    f.handle_input(t(1), Input::Connected { id: old });
    f.handle_input(
        t(2),
        Input::Announcement(ann(1, "r", 11, &["wss://relay.two"])),
    );
    let commands = drain(&mut f);
    assert_eq!(commands[0], Command::Disconnect { id: old });
    assert_eq!(connects(&commands)[0].1, "wss://relay.two");
    f.handle_input(t(3), Input::RepositoryRemoved(repo(1, "r")));
    assert!(matches!(drain(&mut f)[..], [Command::Disconnect { .. }]));
    assert_eq!(f.stats().repositories_followed, 0);
}

#[test]
fn thousands_of_repositories_are_a_few_subscriptions_and_one_update_batch() {
    let mut f = follower(FollowConfig {
        resubscribe_interval: Duration::from_secs(10),
        ..FollowConfig::default()
    });
    for i in 0..600 {
        f.handle_input(
            t(0),
            Input::Announcement(ann(1, &format!("repo-{i:04}"), 1, &["wss://big.example"])),
        );
    }
    let (id, subs) = only_connect(&drain(&mut f));
    let sizes: Vec<usize> = subs
        .iter()
        .map(|s| s.filters[0].tag.as_ref().unwrap().values.len())
        .collect();
    assert_eq!(sizes, [256, 256, 88]);
    f.handle_input(t(1), Input::Connected { id });
    // The first new repository after the connection goes out at once; the rest of its burst
    // coalesces into one update of the last chunk at the end of the interval.
    let announce = |f: &mut RelayFollower, i: usize| {
        f.handle_input(
            t(2),
            Input::Announcement(ann(1, &format!("repo-{i:04}"), 1, &["wss://big.example"])),
        )
    };
    announce(&mut f, 600);
    let first = drain(&mut f);
    for i in 601..610 {
        announce(&mut f, i);
        assert!(drain(&mut f).is_empty());
    }
    let last_chunk_size = |commands: &[Command]| match commands {
        [Command::UpdateSubscriptions {
            id: got,
            open,
            close,
        }] => {
            assert_eq!(*got, id);
            assert!(close.is_empty());
            assert_eq!(open.len(), 1);
            assert_eq!(open[0].key, SubKey::Repos(2));
            open[0].filters[1].tag.as_ref().unwrap().values.len()
        }
        other => panic!("{other:?}"),
    };
    assert_eq!(last_chunk_size(&first), 89);
    let (at, reason) = f.poll_timeout().unwrap();
    assert_eq!(
        (at, reason),
        (t(12), FollowTimer::Resubscribe("wss://big.example".into()))
    );
    f.handle_timeout(at);
    assert_eq!(last_chunk_size(&drain(&mut f)), 98);
    // Removing a repository from the first chunk changes that chunk only.
    f.handle_input(t(13), Input::RepositoryRemoved(repo(1, "repo-0000")));
    assert!(drain(&mut f).is_empty());
    f.handle_timeout(t(22));
    match &drain(&mut f)[..] {
        [Command::UpdateSubscriptions { open, close, .. }] => {
            assert_eq!(
                open.iter().map(|s| s.key).collect::<Vec<_>>(),
                [SubKey::Repos(0)]
            );
            assert!(close.is_empty());
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn subscription_budget_caps_what_one_relay_is_asked() {
    let mut f = follower(FollowConfig {
        chunk_size: 2,
        max_subscriptions_per_relay: 2,
        ..FollowConfig::default()
    });
    for i in 0..5 {
        f.handle_input(
            t(0),
            Input::Announcement(ann(1, &format!("r{i}"), 1, &["wss://r.example"])),
        );
    }
    let (_, subs) = only_connect(&drain(&mut f));
    assert_eq!(subs.len(), 2);
    assert_eq!(f.stats().values_over_budget, 1);
}

#[test]
fn open_connections_are_capped_and_freed_slots_reused() {
    let mut f = follower(FollowConfig {
        max_connections: 2,
        ..FollowConfig::default()
    });
    // relay.c is named by two repositories, so it goes first.
    f.handle_input(
        t(0),
        Input::Announcement(ann(1, "x", 1, &["wss://relay.a", "wss://relay.c"])),
    );
    f.handle_input(
        t(0),
        Input::Announcement(ann(2, "y", 1, &["wss://relay.b", "wss://relay.c"])),
    );
    let first = connects(&drain(&mut f));
    assert_eq!(
        first.iter().map(|c| c.1.as_str()).collect::<Vec<_>>(),
        ["wss://relay.c", "wss://relay.a"]
    );
    f.handle_input(
        t(1),
        Input::Failed {
            id: first[1].0,
            reason: "x".into(),
        },
    );
    let next = connects(&drain(&mut f));
    assert_eq!(
        next.iter().map(|c| c.1.as_str()).collect::<Vec<_>>(),
        ["wss://relay.b"]
    );
    assert_eq!(f.stats().relays_connecting, 2);
}

#[test]
fn tracked_relays_are_capped_and_idle_ones_forgotten_first() {
    let mut f = follower(FollowConfig {
        max_relays: 2,
        ..FollowConfig::default()
    });
    f.handle_input(
        t(0),
        Input::Announcement(ann(
            1,
            "x",
            1,
            &["wss://relay.a", "wss://relay.b", "wss://relay.c"],
        )),
    );
    assert_eq!(f.stats().relays_tracked, 2);
    assert_eq!(f.stats().relays_refused, 1);
    // Once a repository leaves relay.a, relay.a is idle and makes room.
    f.handle_input(
        t(1),
        Input::Announcement(ann(1, "x", 2, &["wss://relay.b"])),
    );
    f.handle_input(
        t(1),
        Input::Announcement(ann(2, "y", 1, &["wss://relay.d"])),
    );
    let urls: Vec<String> = f.relay_statuses().map(|s| s.url).collect();
    assert_eq!(urls, ["wss://relay.b", "wss://relay.d"]);
}

#[test]
fn making_room_never_forgets_a_relay_the_same_announcement_lists() {
    // Found by graspd-sim (relay world, seed 11928): a relay that failed, went idle and was
    // listed again was forgotten to make room for its neighbour in the same announcement,
    // then tracked afresh, so its backoff restarted at 5 s.
    let mut f = follower(FollowConfig {
        max_relays: 2,
        ..FollowConfig::default()
    });
    f.handle_input(
        t(0),
        Input::Announcement(ann(1, "x", 1, &["wss://relay.b", "wss://relay.c"])),
    );
    let ids: Vec<ConnectionId> = connects(&drain(&mut f)).into_iter().map(|c| c.0).collect();
    for id in &ids {
        f.handle_input(
            t(0),
            Input::Failed {
                id: *id,
                reason: "refused".into(),
            },
        );
    }
    f.handle_input(t(1), Input::RepositoryRemoved(repo(1, "x")));
    f.handle_input(
        t(2),
        Input::Announcement(ann(2, "y", 1, &["wss://relay.a", "wss://relay.b"])),
    );
    let b = f
        .relay_statuses()
        .find(|s| s.url == "wss://relay.b")
        .expect("relay.b still tracked");
    assert_eq!(b.consecutive_failures, 1, "relay.b's backoff was forgotten");
    assert_eq!(b.retry_at, Some(t(5)));
}

#[test]
fn bootstrap_relays_discover_announcements_and_follow_every_repository() {
    let mut f = follower(FollowConfig {
        bootstrap_relays: parse_relay_list(
            "wss://boot.example, wss://grasp.example  ws://10.0.0.1",
        ),
        ..FollowConfig::default()
    });
    let (id, subs) = only_connect(&drain(&mut f));
    assert_eq!(
        subs.iter().map(|s| s.key).collect::<Vec<_>>(),
        [SubKey::Discovery]
    );
    assert_eq!(subs[0].filters[0].kinds, [30617]);
    f.handle_input(t(1), Input::Connected { id });
    f.handle_input(t(2), Input::Announcement(ann(1, "x", 1, &[])));
    f.handle_timeout(t(10));
    match &drain(&mut f)[..] {
        [Command::UpdateSubscriptions { open, .. }] => {
            assert_eq!(
                open.iter().map(|s| s.key).collect::<Vec<_>>(),
                [SubKey::Repos(0)]
            )
        }
        other => panic!("{other:?}"),
    }
    // Bootstrap relays stay wanted with no repository at all.
    f.handle_input(t(11), Input::RepositoryRemoved(repo(1, "x")));
    f.handle_timeout(t(20));
    match &drain(&mut f)[..] {
        [Command::UpdateSubscriptions { open, close, .. }] => {
            assert!(open.is_empty());
            assert_eq!(close, &[SubKey::Repos(0)]);
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(f.stats().relays_connected, 1);
}

#[test]
fn threads_are_followed_by_event_id_on_their_repositorys_relays() {
    let mut f = follower(FollowConfig {
        max_threads: 2,
        ..FollowConfig::default()
    });
    f.handle_input(
        t(0),
        Input::Announcement(ann(1, "x", 1, &["wss://relay.a"])),
    );
    let root = |n: u8| EventId::from_byte_array([n; 32]);
    for n in 1..=3 {
        f.handle_input(
            t(0),
            Input::Thread {
                repo: repo(1, "x"),
                root: root(n),
            },
        );
    }
    // A thread of an unknown repository is ignored.
    f.handle_input(
        t(0),
        Input::Thread {
            repo: repo(9, "nope"),
            root: root(9),
        },
    );
    let (_, subs) = only_connect(&drain(&mut f));
    let threads = subs.iter().find(|s| s.key == SubKey::Threads(0)).unwrap();
    let wanted = vec![root(2).to_hex(), root(3).to_hex()];
    assert_eq!(threads.filters.len(), 2);
    for (filter, letter) in threads.filters.iter().zip(['e', 'E']) {
        let tag = filter.tag.as_ref().unwrap();
        assert_eq!((tag.letter, &tag.values), (letter, &wanted));
    }
    assert_eq!(f.stats().threads_followed, 2);
}

#[test]
fn stale_connection_reports_are_ignored() {
    let mut f = follower(FollowConfig::default());
    f.handle_input(
        t(0),
        Input::Announcement(ann(1, "x", 1, &["wss://relay.a"])),
    );
    let (id, _) = only_connect(&drain(&mut f));
    f.handle_input(
        t(0),
        Input::Failed {
            id,
            reason: "x".into(),
        },
    );
    for input in [
        Input::Connected { id },
        Input::Closed { id },
        Input::Failed {
            id,
            reason: "again".into(),
        },
        Input::EventReceived { id },
        Input::Connected {
            id: ConnectionId(77),
        },
    ] {
        f.handle_input(t(1), input);
    }
    assert_eq!(f.stats().failures, 1);
    assert_eq!(f.stats().events_received, 0);
    assert_eq!(f.poll_timeout().unwrap().0, t(5));
}

#[test]
fn same_inputs_same_commands() {
    let script = |f: &mut RelayFollower| {
        for i in 0..50u8 {
            let relay = format!("wss://relay{}.example", i % 7);
            f.handle_input(
                t(0),
                Input::Announcement(ann(i % 5 + 1, &format!("r{i}"), 1, &[&relay])),
            );
        }
        let mut all = run_until(f, t(0));
        for (_, c) in all.clone() {
            if let Command::Connect { id, .. } = c {
                f.handle_input(
                    t(1),
                    Input::Failed {
                        id,
                        reason: "x".into(),
                    },
                );
            }
        }
        all.extend(run_until(f, t(3600)));
        all
    };
    let a = script(&mut follower(FollowConfig::default()));
    let b = script(&mut follower(FollowConfig::default()));
    assert!(a.len() > 7);
    assert_eq!(a, b);
}

#[test]
fn backoff_delay_is_capped_for_huge_failure_counts() {
    let c = FollowConfig::default();
    assert_eq!(c.backoff_delay(1), Duration::from_secs(5));
    assert_eq!(c.backoff_delay(u32::MAX), Duration::from_secs(3600));
}

/// Random announcements, removals, threads, connection outcomes and clock jumps never break
/// the bounds, and every command refers to a connection the follower opened.
#[test]
fn random_histories_respect_every_bound() {
    fn prop(script: Vec<(u8, u8, u8)>) -> bool {
        let config = FollowConfig {
            max_connections: 3,
            max_relays: 6,
            max_subscriptions_per_relay: 2,
            chunk_size: 2,
            max_threads: 4,
            bootstrap_relays: vec!["wss://boot.example".into()],
            ..FollowConfig::default()
        };
        let mut f = follower(config.clone());
        let mut now = t(0);
        let mut open: std::collections::BTreeSet<ConnectionId> = Default::default();
        let mut up: std::collections::BTreeSet<ConnectionId> = Default::default();
        let mut seen_ids: std::collections::BTreeSet<ConnectionId> = Default::default();
        for (op, a, b) in script {
            let relay = format!("wss://r{}.example", a % 8);
            match op % 8 {
                0 | 1 => f.handle_input(
                    now,
                    Input::Announcement(ann(
                        a % 4 + 1,
                        &format!("x{}", b % 6),
                        u64::from(b),
                        &[&relay],
                    )),
                ),
                2 => f.handle_input(
                    now,
                    Input::RepositoryRemoved(repo(a % 4 + 1, &format!("x{}", b % 6))),
                ),
                3 => f.handle_input(
                    now,
                    Input::Thread {
                        repo: repo(a % 4 + 1, &format!("x{}", b % 6)),
                        root: EventId::from_byte_array([b; 32]),
                    },
                ),
                4 => {
                    if let Some(&id) = open.iter().nth(usize::from(b) % open.len().max(1)) {
                        f.handle_input(now, Input::Connected { id });
                        up.insert(id);
                    }
                }
                5 => {
                    if let Some(&id) = open.iter().nth(usize::from(b) % open.len().max(1)) {
                        let input = if a % 2 == 0 {
                            Input::Failed {
                                id,
                                reason: "x".into(),
                            }
                        } else {
                            Input::Closed { id }
                        };
                        f.handle_input(now, input);
                        open.remove(&id);
                        up.remove(&id);
                    }
                }
                6 => {
                    now = now + Duration::from_secs(u64::from(b) * 7);
                    f.handle_timeout(now);
                }
                _ => {
                    if let Some(&id) = up.iter().next() {
                        f.handle_input(
                            now,
                            Input::Eose {
                                id,
                                subscription: SubKey::Repos(0),
                            },
                        );
                    }
                }
            }
            while let Some(command) = f.poll_command() {
                match command {
                    Command::Connect {
                        id, subscriptions, ..
                    } => {
                        if !seen_ids.insert(id)
                            || subscriptions.len() > config.max_subscriptions_per_relay + 1
                        {
                            return false;
                        }
                        open.insert(id);
                    }
                    Command::UpdateSubscriptions { id, open: subs, .. } => {
                        if !up.contains(&id) || subs.len() > config.max_subscriptions_per_relay + 1
                        {
                            return false;
                        }
                    }
                    Command::Disconnect { id } => {
                        if !open.remove(&id) {
                            return false;
                        }
                        up.remove(&id);
                    }
                    // Leases are off.
                    Command::AcquireLease { .. } | Command::ReleaseLease { .. } => return false,
                }
            }
            let stats = f.stats();
            if open.len() > config.max_connections
                || stats.relays_connected + stats.relays_connecting != open.len()
                || stats.relays_tracked > config.max_relays
                || stats.threads_followed > config.max_threads
                || f.relay_statuses().any(|r| r.repositories > 4)
                || !nothing_waits_for_room_that_exists(&f)
            {
                return false;
            }
        }
        true
    }
    quickcheck::QuickCheck::new()
        .tests(1000)
        .quickcheck(prop as fn(Vec<(u8, u8, u8)>) -> bool);
}

/// Liveness of the waiting lists after a reconcile: a listed relay is untracked only if every slot
/// holds a relay that is not idle, and a value waits only on a relay using its whole budget.
fn nothing_waits_for_room_that_exists(f: &RelayFollower) -> bool {
    let idle = f
        .relays
        .iter()
        .any(|(u, r)| !r.wanted() && r.link == Link::Down && !f.listers.contains_key(u));
    let relay_waits = f.listers.keys().any(|u| !f.relays.contains_key(u));
    if relay_waits && (idle || f.relays.len() < f.config.max_relays) {
        return false;
    }
    f.relays.iter().all(|(url, r)| {
        let waits = r.waiting.oldest_first().iter().any(|v| f.wants(url, v));
        !waits || r.subscription_count() >= f.config.max_subscriptions_per_relay
    })
}

/// Ten thousand repositories spread over 50 relays: one Connect per relay, each within the
/// subscription budget, and re-adding every announcement emits nothing.
#[test]
fn ten_thousand_repositories() {
    let mut f = follower(FollowConfig::default());
    let relays: Vec<String> = (0..50).map(|i| format!("wss://relay{i}.example")).collect();
    let announcements: Vec<Announcement> = (0..10_000u32)
        .map(|i| {
            let a = &relays[(i % 50) as usize];
            let b = &relays[((i / 50) % 50) as usize];
            ann((i % 200) as u8 + 1, &format!("repo-{i}"), 1, &[a, b])
        })
        .collect();
    for a in &announcements {
        f.handle_input(t(0), Input::Announcement(a.clone()));
    }
    let commands = drain(&mut f);
    assert_eq!(connects(&commands).len(), 50);
    for c in &commands {
        let Command::Connect { subscriptions, .. } = c else {
            panic!("{c:?}")
        };
        assert!(subscriptions.len() <= 16);
    }
    assert_eq!(f.stats().values_over_budget, 0);
    for a in announcements {
        f.handle_input(t(1), Input::Announcement(a));
    }
    assert!(drain(&mut f).is_empty());
}

fn urls(commands: &[Command]) -> Vec<String> {
    connects(commands).into_iter().map(|c| c.1).collect()
}

#[test]
fn relay_refused_for_a_full_table_is_admitted_when_another_is_forgotten() {
    let mut f = follower(FollowConfig {
        max_relays: 2,
        ..FollowConfig::default()
    });
    f.handle_input(
        t(0),
        Input::Announcement(ann(1, "x", 1, &["wss://a.example"])),
    );
    f.handle_input(
        t(0),
        Input::Announcement(ann(2, "y", 1, &["wss://b.example"])),
    );
    let first = drain(&mut f);
    assert_eq!(urls(&first), ["wss://a.example", "wss://b.example"]);
    for (id, _) in connects(&first) {
        f.handle_input(t(0), Input::Connected { id });
    }
    // Refused in this order (d before c): admitted in this order, whatever the URLs say.
    f.handle_input(
        t(1),
        Input::Announcement(ann(3, "z", 1, &["wss://d.example"])),
    );
    f.handle_input(
        t(1),
        Input::Announcement(ann(4, "w", 1, &["wss://c.example"])),
    );
    assert_eq!(f.stats().relays_refused, 2);
    assert_eq!(f.stats().relays_waiting, 2);
    // Nothing is retried without room: no command, no timer for the waiting relays.
    assert!(run_until(&mut f, t(3600)).is_empty());
    assert_eq!(f.poll_timeout(), None);

    // Repository x goes: relay a is idle, forgotten, and the oldest refusal takes its slot.
    f.handle_input(t(3601), Input::RepositoryRemoved(repo(1, "x")));
    let commands = drain(&mut f);
    assert_eq!(
        commands[0],
        Command::Disconnect {
            id: first_id(&first, 0)
        }
    );
    assert_eq!(urls(&commands), ["wss://d.example"]);
    let (_, subs) = only_connect(&commands[1..]);
    assert_eq!(subs[0].filters[0].tag.as_ref().unwrap().values, ["z"]);
    assert_eq!(f.stats().relays_waiting, 1);

    f.handle_input(t(3602), Input::RepositoryRemoved(repo(2, "y")));
    assert_eq!(urls(&drain(&mut f)), ["wss://c.example"]);
    let tracked: Vec<String> = f.relay_statuses().map(|s| s.url).collect();
    assert_eq!(tracked, ["wss://c.example", "wss://d.example"]);
    let stats = f.stats();
    assert_eq!((stats.relays_admitted_late, stats.relays_waiting), (2, 0));
    assert_eq!(
        stats.relays_refused, 2,
        "a late admission is not another refusal"
    );
}

fn first_id(commands: &[Command], n: usize) -> ConnectionId {
    connects(commands)[n].0
}

#[test]
fn a_relay_nobody_lists_any_more_stops_waiting() {
    let mut f = follower(FollowConfig {
        max_relays: 1,
        ..FollowConfig::default()
    });
    f.handle_input(
        t(0),
        Input::Announcement(ann(1, "x", 1, &["wss://a.example"])),
    );
    f.handle_input(
        t(0),
        Input::Announcement(ann(2, "y", 1, &["wss://b.example"])),
    );
    assert_eq!(f.stats().relays_waiting, 1);
    // y now lists a (tracked) instead of b: b stops waiting, y is followed on a at once.
    f.handle_input(
        t(1),
        Input::Announcement(ann(2, "y", 2, &["wss://a.example"])),
    );
    assert_eq!(f.stats().relays_waiting, 0);
    assert_eq!(f.relay_statuses().next().unwrap().repositories, 2);
    f.handle_input(t(2), Input::RepositoryRemoved(repo(1, "x")));
    f.handle_input(t(2), Input::RepositoryRemoved(repo(2, "y")));
    drain(&mut f);
    assert_eq!(f.stats().relays_admitted_late, 0);
}

#[test]
fn value_over_budget_is_admitted_once_a_value_is_dropped() {
    let mut f = follower(FollowConfig {
        chunk_size: 1,
        max_subscriptions_per_relay: 2,
        ..FollowConfig::default()
    });
    for (i, name) in ["r0", "r1", "r2"].into_iter().enumerate() {
        f.handle_input(
            t(i as u64),
            Input::Announcement(ann(1, name, 1, &["wss://r.example"])),
        );
    }
    let (id, subs) = only_connect(&drain(&mut f));
    assert_eq!(subs.len(), 2);
    f.handle_input(t(3), Input::Connected { id });
    let stats = f.stats();
    assert_eq!((stats.values_over_budget, stats.values_waiting), (1, 1));
    assert_eq!(f.relay_statuses().next().unwrap().values_waiting, 1);
    assert!(
        run_until(&mut f, t(100)).is_empty(),
        "no retry without room"
    );

    // r0 leaves its subscription: r2, refused at t=2, takes it in the next batch.
    f.handle_input(t(101), Input::RepositoryRemoved(repo(1, "r0")));
    let batch = run_until(&mut f, t(200));
    match &batch[..] {
        [(_, Command::UpdateSubscriptions { open, close, .. })] => {
            assert!(close.is_empty());
            assert_eq!(open.len(), 1);
            assert_eq!(open[0].key, SubKey::Repos(0));
            assert_eq!(open[0].filters[0].tag.as_ref().unwrap().values, ["r2"]);
        }
        other => panic!("{other:?}"),
    }
    let stats = f.stats();
    assert_eq!((stats.values_admitted_late, stats.values_waiting), (1, 0));
    assert_eq!(stats.values_over_budget, 1);
}

#[test]
fn holes_left_by_removals_are_packed_when_a_waiting_value_needs_a_subscription() {
    let mut f = follower(FollowConfig {
        chunk_size: 2,
        max_subscriptions_per_relay: 2,
        ..FollowConfig::default()
    });
    for name in ["x0", "x1", "x2"] {
        f.handle_input(
            t(0),
            Input::Announcement(ann(1, name, 1, &["wss://r.example"])),
        );
    }
    let (id, _) = only_connect(&drain(&mut f));
    f.handle_input(t(1), Input::Connected { id });
    // Repos(0) = {x0, x1}, Repos(1) = {x2}: a thread needs a third subscription.
    let root = EventId::from_byte_array([9; 32]);
    f.handle_input(
        t(2),
        Input::Thread {
            repo: repo(1, "x0"),
            root,
        },
    );
    assert_eq!(f.stats().values_waiting, 1);
    // x1 leaves a hole in Repos(0); x2 moves into it, Repos(1) closes, the thread gets one.
    f.handle_input(t(3), Input::RepositoryRemoved(repo(1, "x1")));
    match &run_until(&mut f, t(10))[..] {
        [(_, Command::UpdateSubscriptions { open, close, .. })] => {
            let keys: Vec<SubKey> = open.iter().map(|s| s.key).collect();
            assert_eq!(keys, [SubKey::Repos(0), SubKey::Threads(0)]);
            assert_eq!(
                open[0].filters[0].tag.as_ref().unwrap().values,
                ["x0", "x2"]
            );
            assert_eq!(close, &[SubKey::Repos(1)]);
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(f.stats().values_waiting, 0);
}

#[test]
fn waiting_lists_stay_bounded_under_a_flood_of_refusals() {
    let mut f = follower(FollowConfig {
        max_relays: 2,
        chunk_size: 1,
        max_subscriptions_per_relay: 2,
        ..FollowConfig::default()
    });
    f.handle_input(
        t(0),
        Input::Announcement(ann(1, "a", 1, &["wss://a.example"])),
    );
    f.handle_input(
        t(0),
        Input::Announcement(ann(1, "b", 1, &["wss://b.example"])),
    );
    // 200 repositories listing 16 new relays each (and ourselves, never followed) ...
    for i in 0..200u32 {
        let listed: Vec<String> = (0..16)
            .map(|j| format!("wss://flood{i}-{j}.example"))
            .chain(["wss://grasp.example".to_owned()])
            .collect();
        let listed: Vec<&str> = listed.iter().map(String::as_str).collect();
        f.handle_input(
            t(1),
            Input::Announcement(ann((i % 250) as u8 + 2, &format!("f{i}"), 1, &listed)),
        );
    }
    // ... and 100 repositories on relay a, whose budget is two values.
    for i in 0..100 {
        f.handle_input(
            t(1),
            Input::Announcement(ann(1, &format!("on-a-{i}"), 1, &["wss://a.example"])),
        );
    }
    let stats = f.stats();
    assert_eq!(stats.relays_refused, 3200);
    assert_eq!(stats.relays_waiting, 2, "at most max_relays relays wait");
    assert_eq!(
        stats.values_waiting, 2,
        "at most chunk_size x budget values wait"
    );
    // Relay a holds "a" and one more: 99 refused, 2 remembered.
    assert_eq!(stats.values_over_budget, 99);
    assert_eq!(stats.refusals_dropped, 3198 + 97);
    assert_eq!(f.stats().relays_tracked, 2);

    // Only f150 stays: the remembered refusals go with their repositories, yet f150's
    // relays, dropped from the full list, are found again once slots free.
    for i in (0..200u32).filter(|i| *i != 150) {
        f.handle_input(
            t(2),
            Input::RepositoryRemoved(repo((i % 250) as u8 + 2, &format!("f{i}"))),
        );
    }
    for i in 0..100 {
        f.handle_input(
            t(2),
            Input::RepositoryRemoved(repo(1, &format!("on-a-{i}"))),
        );
    }
    f.handle_input(t(3), Input::RepositoryRemoved(repo(1, "a")));
    f.handle_input(t(3), Input::RepositoryRemoved(repo(1, "b")));
    drain(&mut f);
    let tracked: Vec<(String, usize)> = f
        .relay_statuses()
        .map(|s| (s.url, s.repositories))
        .collect();
    assert_eq!(
        tracked,
        [
            ("wss://flood150-0.example".to_owned(), 1),
            ("wss://flood150-1.example".to_owned(), 1)
        ]
    );
    // The next two wait (the list was refilled from the repositories), the rest are found
    // when those are admitted.
    assert_eq!(f.stats().relays_waiting, 2);
}

#[test]
fn following_a_relay_is_reported_when_it_starts_and_stops() {
    let mut f = follower(FollowConfig {
        bootstrap_relays: vec!["wss://boot.example".into()],
        ..FollowConfig::default()
    });
    let changes =
        |f: &mut RelayFollower| std::iter::from_fn(|| f.poll_change()).collect::<Vec<_>>();
    assert_eq!(
        changes(&mut f),
        [FollowChange::Started {
            url: "wss://boot.example".into(),
            bootstrap: true,
            repositories: 0,
        }]
    );
    f.handle_input(
        t(1),
        Input::Announcement(ann(
            1,
            "r",
            1,
            &["wss://a.example", OWN, "wss://boot.example"],
        )),
    );
    assert_eq!(
        changes(&mut f),
        [FollowChange::Started {
            url: "wss://a.example".into(),
            bootstrap: false,
            repositories: 1,
        }],
        "once per relay: the bootstrap relay was followed already, our own never is"
    );
    f.handle_input(
        t(2),
        Input::Announcement(ann(2, "q", 2, &["wss://a.example"])),
    );
    assert_eq!(
        changes(&mut f),
        [],
        "a second repository on it changes nothing"
    );
    f.handle_input(t(3), Input::RepositoryRemoved(repo(1, "r")));
    assert_eq!(changes(&mut f), []);
    f.handle_input(t(4), Input::RepositoryRemoved(repo(2, "q")));
    assert_eq!(
        changes(&mut f),
        [FollowChange::Stopped {
            url: "wss://a.example".into()
        }]
    );
    let followed: Vec<(String, bool)> = f.relay_statuses().map(|s| (s.url, s.followed)).collect();
    assert_eq!(
        followed,
        [
            ("wss://a.example".to_owned(), false),
            ("wss://boot.example".to_owned(), true)
        ]
    );
}

/// A repository followed while its announcement waited becomes hosted: the subscription
/// covering it on each connected relay is sent again unchanged (its history is read again,
/// so what was refused as tagging nothing hosted comes back), once, coalesced with other
/// changes; a relay still connecting reads every history when it connects anyway.
#[test]
fn a_repository_becoming_hosted_reads_its_histories_again() {
    let mut f = follower(FollowConfig::default());
    f.handle_input(
        t(0),
        Input::Announcement(ann(1, "repo", 100, &["wss://relay.one"])),
    );
    let (id, subs) = only_connect(&drain(&mut f));
    f.handle_input(t(1), Input::Connected { id });
    assert!(drain(&mut f).is_empty());

    f.handle_input(t(5), Input::RepositoryHosted(repo(1, "repo")));
    assert_eq!(
        drain(&mut f),
        [Command::UpdateSubscriptions {
            id,
            open: subs.clone(),
            close: vec![]
        }]
    );
    assert!(
        run_until(&mut f, t(60)).is_empty(),
        "read again once, not on every timer"
    );

    // Within the resubscribe interval of that update: one update at its end.
    f.handle_input(t(60), Input::RepositoryHosted(repo(1, "repo")));
    let at = f.now;
    drain(&mut f);
    f.handle_input(at, Input::RepositoryHosted(repo(1, "repo")));
    assert!(drain(&mut f).is_empty(), "coalesced");
    let later = run_until(&mut f, t(120));
    assert_eq!(later.len(), 1, "{later:?}");

    // Unknown repositories and relays not up change nothing.
    f.handle_input(t(130), Input::RepositoryHosted(repo(2, "other")));
    assert!(drain(&mut f).is_empty());
    f.handle_input(t(131), Input::Closed { id });
    drain(&mut f);
    f.handle_input(t(132), Input::RepositoryHosted(repo(1, "repo")));
    assert!(
        !drain(&mut f)
            .iter()
            .any(|c| matches!(c, Command::UpdateSubscriptions { .. })),
        "nothing to send on a connection that is down"
    );
}

fn leased_config() -> FollowConfig {
    FollowConfig {
        relay_leases: true,
        ..FollowConfig::default()
    }
}

fn lease_commands(commands: &[Command]) -> Vec<Command> {
    commands
        .iter()
        .filter(|c| {
            matches!(
                c,
                Command::AcquireLease { .. } | Command::ReleaseLease { .. }
            )
        })
        .cloned()
        .collect()
}

/// With relay leases a relay is connected only while its lease is held; a lost lease closes
/// the connection without counting a failure, and the relay connects again when it comes back.
#[test]
fn with_relay_leases_a_relay_is_connected_only_under_its_lease() {
    let url = "wss://relay.one";
    let mut f = follower(leased_config());
    f.handle_input(t(0), Input::Announcement(ann(1, "repo", 100, &[url])));
    let commands = drain(&mut f);
    assert_eq!(commands, [Command::AcquireLease { url: url.into() }]);
    assert!(f.relay_statuses().all(|r| r.followed_elsewhere));
    // Asked once, however long another instance holds it.
    f.handle_timeout(t(600));
    assert!(drain(&mut f).is_empty());

    f.handle_input(t(601), Input::Leased { url: url.into() });
    let (id, subs) = only_connect(&drain(&mut f));
    assert_eq!(subs.len(), 1);
    assert!(f.relay_statuses().all(|r| !r.followed_elsewhere));
    f.handle_input(t(602), Input::Connected { id });
    assert!(drain(&mut f).is_empty());

    f.handle_input(t(610), Input::LeaseLost { url: url.into() });
    assert_eq!(drain(&mut f), [Command::Disconnect { id }]);
    assert_eq!(f.stats().failures, 0);
    assert_eq!(f.stats().relays_connected, 0);
    // A report of the closed connection changes nothing.
    f.handle_input(t(611), Input::Closed { id });
    assert!(drain(&mut f).is_empty());

    f.handle_input(t(612), Input::Leased { url: url.into() });
    let (again, _) = only_connect(&drain(&mut f));
    assert_ne!(again, id);
}

/// An instance whose connection to a relay fails gives the relay's lease back while it backs
/// off, so another instance may follow it; it asks again when the backoff ends.
#[test]
fn a_failed_connection_gives_the_lease_back_for_the_backoff() {
    let url = "wss://relay.one";
    let mut f = follower(leased_config());
    f.handle_input(t(0), Input::Announcement(ann(1, "repo", 100, &[url])));
    drain(&mut f);
    f.handle_input(t(0), Input::Leased { url: url.into() });
    let (id, _) = only_connect(&drain(&mut f));
    f.handle_input(
        t(1),
        Input::Failed {
            id,
            reason: "refused".into(),
        },
    );
    assert_eq!(drain(&mut f), [Command::ReleaseLease { url: url.into() }]);
    // The lease is asked for again once the 5 s backoff is over, not before.
    let commands = run_until(&mut f, t(5));
    assert!(commands.is_empty(), "{commands:?}");
    let commands = run_until(&mut f, t(6));
    assert_eq!(
        commands.iter().map(|(_, c)| c.clone()).collect::<Vec<_>>(),
        [Command::AcquireLease { url: url.into() }]
    );
    // A connection that ends healthy keeps the lease.
    f.handle_input(t(7), Input::Leased { url: url.into() });
    let (id, _) = only_connect(&drain(&mut f));
    f.handle_input(t(7), Input::Connected { id });
    f.handle_input(
        t(8),
        Input::Eose {
            id,
            subscription: SubKey::Repos(0),
        },
    );
    f.handle_input(t(9), Input::Closed { id });
    assert!(lease_commands(&drain(&mut f)).is_empty());
}

/// A relay nobody wants any more gives its lease back, held or still wanted; a lease acquired
/// for a relay no longer wanted goes back at once.
#[test]
fn a_relay_nobody_follows_gives_its_lease_back() {
    let (one, two) = ("wss://relay.one", "wss://relay.two");
    let mut f = follower(leased_config());
    f.handle_input(t(0), Input::Announcement(ann(1, "a", 100, &[one])));
    f.handle_input(t(0), Input::Announcement(ann(2, "b", 100, &[two])));
    assert_eq!(
        lease_commands(&drain(&mut f)),
        [
            Command::AcquireLease { url: one.into() },
            Command::AcquireLease { url: two.into() }
        ]
    );
    f.handle_input(t(1), Input::Leased { url: one.into() });
    let (id, _) = only_connect(&drain(&mut f));

    f.handle_input(t(2), Input::RepositoryRemoved(repo(1, "a")));
    f.handle_input(t(2), Input::RepositoryRemoved(repo(2, "b")));
    let commands = drain(&mut f);
    assert!(
        commands.contains(&Command::Disconnect { id }),
        "{commands:?}"
    );
    assert_eq!(
        lease_commands(&commands),
        [
            Command::ReleaseLease { url: one.into() },
            Command::ReleaseLease { url: two.into() }
        ]
    );
    // The round that asked before the release answers late.
    f.handle_input(t(3), Input::Leased { url: two.into() });
    assert_eq!(drain(&mut f), [Command::ReleaseLease { url: two.into() }]);
}

/// Random announcements, removals, connection outcomes, lease grants and losses: a relay is
/// connected only while its lease is held, a lost lease closes its connection at once, and
/// acquires and releases of one relay alternate.
#[test]
fn random_histories_connect_only_under_held_leases() {
    fn prop(script: Vec<(u8, u8, u8)>) -> bool {
        let config = FollowConfig {
            max_connections: 3,
            max_relays: 4,
            bootstrap_relays: vec!["wss://boot.example".into()],
            relay_leases: true,
            ..FollowConfig::default()
        };
        let mut f = follower(config);
        let mut now = t(0);
        // The lease table as the host sees it: wanted, and held by us.
        let mut wanted: BTreeSet<String> = BTreeSet::new();
        let mut held: BTreeSet<String> = BTreeSet::new();
        let mut open: BTreeMap<ConnectionId, String> = BTreeMap::new();
        for (op, a, b) in script {
            let relay = format!("wss://r{}.example", a % 6);
            match op % 7 {
                0 | 1 => f.handle_input(
                    now,
                    Input::Announcement(ann(a % 3 + 1, "x", u64::from(b), &[&relay])),
                ),
                2 => f.handle_input(now, Input::RepositoryRemoved(repo(a % 3 + 1, "x"))),
                3 => {
                    // The keeper grants a wanted lease (or a late answer for one let go).
                    let pick = wanted.iter().nth(usize::from(b) % wanted.len().max(1));
                    if let Some(url) = pick.cloned() {
                        held.insert(url.clone());
                        f.handle_input(now, Input::Leased { url });
                    } else {
                        f.handle_input(now, Input::Leased { url: relay });
                    }
                }
                4 => {
                    let pick = held.iter().nth(usize::from(b) % held.len().max(1));
                    if let Some(url) = pick.cloned() {
                        held.remove(&url);
                        f.handle_input(now, Input::LeaseLost { url: url.clone() });
                    }
                }
                5 => {
                    if let Some((&id, _)) = open.iter().nth(usize::from(b) % open.len().max(1)) {
                        if a % 2 == 0 {
                            f.handle_input(now, Input::Connected { id });
                        } else {
                            f.handle_input(now, Input::Closed { id });
                            open.remove(&id);
                        }
                    }
                }
                _ => {
                    now = now + Duration::from_secs(u64::from(b) * 7);
                    f.handle_timeout(now);
                }
            }
            while let Some(command) = f.poll_command() {
                match command {
                    Command::Connect { id, url, .. } => {
                        if !held.contains(&url) {
                            return false;
                        }
                        open.insert(id, url);
                    }
                    Command::Disconnect { id } => {
                        open.remove(&id);
                    }
                    Command::AcquireLease { url } => {
                        // Asked again only after a release.
                        if !wanted.insert(url) {
                            return false;
                        }
                    }
                    Command::ReleaseLease { url } => {
                        // Not wanted: the answer to a late grant.
                        wanted.remove(&url);
                        held.remove(&url);
                    }
                    Command::UpdateSubscriptions { .. } => {}
                }
            }
            // A lost lease closed its connection in the same drain.
            if open.values().any(|url| !held.contains(url)) {
                return false;
            }
        }
        true
    }
    quickcheck::QuickCheck::new()
        .tests(1000)
        .quickcheck(prop as fn(Vec<(u8, u8, u8)>) -> bool);
}
