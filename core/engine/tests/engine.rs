//! One test per engine rule, against injected time (no sleeps).

mod common;

use std::collections::BTreeSet;
use std::time::Duration;

use common::*;
use graspd_core::{
    Arrival, Command, Config, Engine, EngineEvent, FetchError, Input, RefUpdate, Refusal,
    Submission, TimerReason, Verdict,
};

const REMOTE: &str = "https://remote.example/npub/r.git";

/// An engine with an accepted, served repository `/<1>/r.git` whose announcement lists REMOTE.
fn served(kit: &mut Kit) -> (Engine, Host) {
    let mut engine = Engine::new(config());
    let ann = kit.announcement(1, "r", &[], &[REMOTE]);
    engine.restore_accepted(&ann);
    (engine, Host::default())
}

/// The events the engine reported deleted.
fn deleted_ids(host: &Host) -> BTreeSet<graspd_core::EventId> {
    host.events
        .iter()
        .filter_map(|e| match e {
            EngineEvent::Deleted { id } => Some(*id),
            _ => None,
        })
        .collect()
}

fn fetch_times(host: &Host) -> Vec<u64> {
    host.commands
        .iter()
        .filter_map(|c| match c {
            Command::Fetch { deadline, .. } => Some(deadline.as_millis() - 120_000),
            _ => None,
        })
        .collect()
}

#[test]
fn a_state_waits_then_is_released_after_apply_only() {
    let mut kit = Kit::default();
    let (mut engine, mut host) = served(&mut kit);
    let st = kit.state(1, "r", 2000, &[("refs/heads/main", oid(1))]);
    let id = st.id;
    assert!(matches!(
        publish(&mut engine, &mut host, t(0), st, Arrival::Published),
        Verdict::Waiting(_)
    ));
    assert!(
        host.released().is_empty(),
        "objects absent: nothing released"
    );
    // A push brings the objects.
    host.give(&repo(1, "r"), &[oid(1)]);
    engine.handle_input(
        t(10),
        Input::Pushed {
            repo: repo(1, "r"),
            updates: vec![],
        },
    );
    // Run commands by hand to see the order: Inspect, then Apply, and only then Released.
    let inspect = engine.poll_command().unwrap();
    let Command::Inspect { id: iid, oids, .. } = inspect else {
        panic!("{inspect:?}")
    };
    assert_eq!(oids, [oid(1)]);
    let snap = graspd_core::RepoSnapshot {
        present: vec![oid(1)],
        refs: Default::default(),
    };
    engine.handle_input(
        t(11),
        Input::Inspected {
            id: iid,
            result: Ok(snap),
        },
    );
    let Some(Command::Apply { id: aid, plan }) = engine.poll_command() else {
        panic!()
    };
    assert_eq!(plan.edits.len(), 1);
    assert_eq!(plan.edits[0].expected, None);
    assert_eq!(plan.head.as_deref(), Some("refs/heads/main"));
    assert!(engine.poll_event().is_none(), "no Released before Applied");
    engine.handle_input(
        t(12),
        Input::Applied {
            id: aid,
            result: Ok(()),
        },
    );
    match engine.poll_event() {
        Some(EngineEvent::Released {
            id: released,
            kind,
            waited,
        }) => {
            assert_eq!(released, id);
            assert_eq!(kind, 30618);
            assert_eq!(waited, std::time::Duration::from_millis(12));
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn apply_conflict_reinspects_and_replans_with_bounded_retries() {
    let mut kit = Kit::default();
    let (mut engine, mut host) = served(&mut kit);
    host.give(&repo(1, "r"), &[oid(1)]);
    let st = kit.state(1, "r", 2000, &[("refs/heads/main", oid(1))]);
    admit(&mut engine, t(0), st, Arrival::Published);
    let mut applies = 0;
    // Answer every Apply with Conflict: re-Inspect each time, then give up after the bound.
    for _ in 0..20 {
        let Some(cmd) = engine.poll_command() else {
            break;
        };
        match cmd {
            Command::Inspect { id, oids, .. } => {
                let snap = graspd_core::RepoSnapshot {
                    present: oids,
                    refs: Default::default(),
                };
                engine.handle_input(
                    t(1),
                    Input::Inspected {
                        id,
                        result: Ok(snap),
                    },
                );
            }
            Command::Apply { id, .. } => {
                applies += 1;
                engine.handle_input(
                    t(1),
                    Input::Applied {
                        id,
                        result: Err(graspd_core::ApplyError::Conflict),
                    },
                );
            }
            _ => {}
        }
    }
    assert_eq!(applies, 1 + Config::default().max_apply_retries as usize);
    let failed = std::iter::from_fn(|| engine.poll_event())
        .any(|e| matches!(e, EngineEvent::ApplyFailed { .. }));
    assert!(failed);
    assert_eq!(engine.stats().apply_conflicts, 4);
}

#[test]
fn first_attempt_delay_depends_on_arrival() {
    for (arrival, delay) in [(Arrival::Synced, 500), (Arrival::Published, 180_000)] {
        let mut kit = Kit::default();
        let (mut engine, mut host) = served(&mut kit);
        let st = kit.state(1, "r", 2000, &[("refs/heads/main", oid(1))]);
        publish(&mut engine, &mut host, t(0), st, arrival);
        assert_eq!(
            engine.poll_timeout().map(|(at, _)| at),
            Some(t(delay)),
            "{arrival:?}"
        );
        assert!(matches!(
            engine.poll_timeout().unwrap().1,
            TimerReason::SyncAttempt(_)
        ));
        advance(&mut engine, &mut host, t(delay));
        assert_eq!(fetch_times(&host), [delay], "{arrival:?}");
    }
}

/// A state learned from the relay of a server the repository lists in `clone` is fetched at
/// once (that server serves it only with its data); from any other relay it waits as synced
/// events do.
#[test]
fn a_state_synced_from_a_clone_server_is_fetched_at_once() {
    for (relay, delay) in [
        ("wss://remote.example", 0),
        ("wss://REMOTE.example:443/", 0),
        ("ws://remote.example", 500),
        ("wss://relay.elsewhere.example", 500),
    ] {
        let mut kit = Kit::default();
        let (mut engine, mut host) = served(&mut kit);
        let st = kit.state(1, "r", 2000, &[("refs/heads/main", oid(1))]);
        admit(&mut engine, t(0), st, Submission::synced_from(relay));
        host.run(&mut engine, t(0));
        assert_eq!(
            engine.poll_timeout().map(|(at, _)| at),
            Some(t(delay)),
            "{relay}"
        );
        advance(&mut engine, &mut host, t(delay));
        assert_eq!(fetch_times(&host), [delay], "{relay}");
    }
}

#[test]
fn backoff_is_20_40_80_120_and_resets_only_on_a_new_event() {
    let mut kit = Kit::default();
    let (mut engine, mut host) = served(&mut kit);
    let st = kit.state(1, "r", 2000, &[("refs/heads/main", oid(1))]);
    let dup = st.clone();
    publish(&mut engine, &mut host, t(0), st, Arrival::Synced);
    let empty = BTreeSet::new();
    let mut now = 500;
    let mut starts = Vec::new();
    for _ in 0..5 {
        advance(&mut engine, &mut host, t(now));
        starts.push(now);
        host.answer_fetch(&mut engine, t(now), &empty)
            .expect("a fetch per attempt");
        let (next, _) = engine.poll_timeout().unwrap();
        now = next.as_millis();
        if starts.len() == 2 {
            // A duplicate never resets the backoff.
            assert_eq!(
                publish(
                    &mut engine,
                    &mut host,
                    t(starts[1] + 1),
                    dup.clone(),
                    Arrival::Synced
                ),
                Verdict::Duplicate
            );
            assert_eq!(engine.poll_timeout().unwrap().0, t(now));
        }
    }
    let gaps: Vec<u64> = starts.windows(2).map(|w| (w[1] - w[0]) / 1000).collect();
    assert_eq!(gaps, [20, 40, 80, 120]);
    // A genuinely new event for the repository resets it.
    let st2 = kit.state(1, "r", 3000, &[("refs/heads/main", oid(2))]);
    publish(&mut engine, &mut host, t(now - 1000), st2, Arrival::Synced);
    assert_eq!(engine.poll_timeout().unwrap().0, t(now - 500));
    advance(&mut engine, &mut host, t(now - 500));
    host.answer_fetch(&mut engine, t(now - 500), &empty)
        .unwrap();
    assert_eq!(engine.poll_timeout().unwrap().0, t(now - 500 + 20_000));
}

#[test]
fn an_event_arriving_during_an_attempt_is_not_lost() {
    let mut kit = Kit::default();
    let (mut engine, mut host) = served(&mut kit);
    let st = kit.state(1, "r", 2000, &[("refs/heads/main", oid(1))]);
    publish(&mut engine, &mut host, t(0), st, Arrival::Synced);
    advance(&mut engine, &mut host, t(500));
    assert_eq!(host.fetches.len(), 1);
    // While that fetch runs, a new PR arrives; its attempt timer fires mid-attempt.
    let pr = kit.pr(7, &repo(1, "r"), oid(9), &[]);
    publish(&mut engine, &mut host, t(600), pr, Arrival::Synced);
    advance(&mut engine, &mut host, t(1100));
    // The attempt finishes (the remote has the PR commit only) ...
    let remote = BTreeSet::from([oid(9)]);
    let Some(Command::Fetch { oids, .. }) = host.answer_fetch(&mut engine, t(1200), &remote) else {
        panic!()
    };
    assert_eq!(
        oids,
        [oid(1)],
        "the first attempt asked only for what it knew"
    );
    // ... and a new attempt runs at once for what arrived meanwhile.
    let Some(Command::Fetch { oids, .. }) = host.fetches.first().cloned() else {
        panic!("lost wake-up")
    };
    assert_eq!(oids, [oid(1), oid(9)]);
    host.answer_fetch(&mut engine, t(1300), &remote).unwrap();
    assert_eq!(host.released().len(), 1, "the PR is released");
}

/// Runs the engine's queued commands, answering each Inspect with `snapshot` of nothing
/// present; returns the Fetches.
fn answer_inspects_with_nothing(engine: &mut Engine, now: graspd_core::Time) -> Vec<Command> {
    let mut fetches = Vec::new();
    while let Some(cmd) = engine.poll_command() {
        match cmd {
            Command::Inspect { id, .. } => engine.handle_input(
                now,
                Input::Inspected {
                    id,
                    result: Ok(Default::default()),
                },
            ),
            Command::Fetch { .. } => fetches.push(cmd),
            _ => {}
        }
    }
    fetches
}

/// An announcement published with no sync delay, then its state while the announcement's
/// Inspect runs, and the state's attempt timer fires at once: the state's data is fetched.
/// (A fetch asked for while an Inspect runs belongs to the Inspect queued after it: the one in
/// flight was asked before the state existed and finds nothing missing.)
#[test]
fn a_state_arriving_while_its_repository_is_inspected_is_fetched() {
    let mut kit = Kit::default();
    let mut engine = Engine::new(Config {
        first_attempt_after_published: Duration::ZERO,
        ..config()
    });
    let ann = kit.announcement(1, "r", &[], &[REMOTE]);
    admit(&mut engine, t(0), ann, Arrival::Published);
    // The announcement's Inspect is in flight when its attempt timer fires.
    let mut first = Vec::new();
    while let Some(cmd) = engine.poll_command() {
        first.push(cmd);
    }
    engine.handle_timeout(t(0));
    // The state arrives while the announcement's Inspects still run; its timer fires too.
    let st = kit.state(1, "r", 2000, &[("refs/heads/main", oid(1))]);
    admit(&mut engine, t(5), st, Arrival::Published);
    engine.handle_timeout(t(5));
    for cmd in first {
        if let Command::Inspect { id, .. } = cmd {
            let result = Ok(Default::default());
            engine.handle_input(t(10), Input::Inspected { id, result });
        }
    }
    let mut fetched = Vec::new();
    for now in [10, 20, 30] {
        fetched.extend(answer_inspects_with_nothing(&mut engine, t(now)));
    }
    assert!(
        fetched
            .iter()
            .any(|f| matches!(f, Command::Fetch { oids, .. } if oids.contains(&oid(1)))),
        "the state's data was never asked for: {fetched:?}; next timer {:?}",
        engine.poll_timeout()
    );
}

/// The host stops a fetch at its deadline; its slot stays taken for `fetch_report_grace`
/// after, so the next fetch at that domain never starts while the last is still being stopped
/// (the host-world simulator found two fetches at one domain at once, over a limit of one).
#[test]
fn a_fetch_missing_its_deadline_fails_frees_its_slot_and_late_reports_are_ignored() {
    let mut kit = Kit::default();
    let mut engine = Engine::new(Config {
        max_concurrent_per_domain: 1,
        ..config()
    });
    let mut host = Host::default();
    for (n, id) in [(1u8, "a"), (2, "b")] {
        engine.restore_accepted(&kit.announcement(n, id, &[], &[REMOTE]));
        let st = kit.state(n, id, 2000, &[("refs/heads/main", oid(n as u32))]);
        publish(&mut engine, &mut host, t(0), st, Arrival::Synced);
    }
    advance(&mut engine, &mut host, t(500));
    assert_eq!(host.fetches.len(), 1, "one slot");
    let Command::Fetch {
        id: late, deadline, ..
    } = host.fetches.remove(0)
    else {
        panic!()
    };
    assert_eq!(deadline, t(120_500));
    let grace = config().fetch_report_grace.as_millis() as u64;
    assert_eq!(
        engine.poll_timeout().unwrap(),
        (t(120_500 + grace), TimerReason::FetchDeadline(late))
    );
    advance(&mut engine, &mut host, t(120_500));
    assert!(
        host.fetches.is_empty(),
        "the slot is held while the host stops the fetch"
    );
    advance(&mut engine, &mut host, t(120_500 + grace));
    assert_eq!(engine.stats().fetch_timeouts, 1);
    assert_eq!(
        host.fetches.len(),
        1,
        "the slot went to the other repository"
    );
    // The late report changes nothing.
    engine.handle_input(
        t(130_000),
        Input::FetchDone {
            id: late,
            result: Err(FetchError::Other("x".into())),
        },
    );
    assert_eq!(engine.stats().fetches_failed, 1);
    assert_eq!(
        engine.stats().fetches_in_flight,
        [("remote.example".to_string(), 1)]
    );
}

#[test]
fn purgatory_entries_expire_and_synced_repeats_are_refused_but_republishing_reenters() {
    let mut kit = Kit::default();
    let (mut engine, mut host) = served(&mut kit);
    let st = kit.state(1, "r", 2000, &[("refs/heads/main", oid(1))]);
    let again = st.clone();
    publish(&mut engine, &mut host, t(0), st.clone(), Arrival::Published);
    advance(&mut engine, &mut host, t(30 * 60 * 1000));
    assert!(host
        .events
        .iter()
        .any(|e| matches!(e, EngineEvent::Expired { id, kind: 30618 } if *id == st.id)));
    assert_eq!(engine.stats().waiting.states, 0);
    let now = t(30 * 60 * 1000 + 1);
    assert!(
        matches!(admit(&mut engine, now, again.clone(), Arrival::Synced), Verdict::Rejected(m) if m.starts_with("blocked:"))
    );
    assert!(matches!(
        admit(&mut engine, now, again, Arrival::Published),
        Verdict::Waiting(_)
    ));
}

#[test]
fn deletion_removes_only_the_same_authors_entries_by_id_or_coordinate() {
    let mut kit = Kit::default();
    let mut engine = Engine::new(config());
    let mut host = Host::default();
    engine.restore_accepted(&kit.announcement(1, "r", &[2], &[REMOTE]));
    let s1 = kit.state(1, "r", 2000, &[("refs/heads/main", oid(1))]);
    let s2 = kit.state(2, "r", 2001, &[("refs/heads/main", oid(2))]);
    let pr = kit.pr(3, &repo(1, "r"), oid(3), &[]);
    for e in [s1.clone(), s2.clone(), pr.clone()] {
        assert!(matches!(
            publish(&mut engine, &mut host, t(0), e, Arrival::Published),
            Verdict::Waiting(_)
        ));
    }
    // Someone else cannot delete them, and a request that deletes nothing is not taken.
    let foreign = kit.deletion(9, &[s1.id, pr.id], &[format!("30618:{}:r", pk(2).to_hex())]);
    assert!(matches!(
        publish(&mut engine, &mut host, t(1), foreign, Arrival::Published),
        Verdict::Refused(Refusal::DeletionNotHeld, m) if m.starts_with("blocked:")
    ));
    assert_eq!(engine.stats().waiting.states, 2);
    // The authors can: by id, and by coordinate.
    let by_id = kit.deletion(3, &[pr.id], &[]);
    let by_coord = kit.deletion(2, &[], &[format!("30618:{}:r", pk(2).to_hex())]);
    publish(&mut engine, &mut host, t(2), by_id, Arrival::Published);
    publish(&mut engine, &mut host, t(2), by_coord, Arrival::Published);
    let deleted = deleted_ids(&host);
    assert_eq!(deleted, BTreeSet::from([pr.id, s2.id]));
    assert_eq!(engine.stats().waiting.states, 1);
    assert_eq!(engine.stats().waiting.prs, 0);
}

#[test]
fn a_waiting_announcement_creates_its_repo_and_is_released_only_with_a_state() {
    let mut kit = Kit::default();
    let mut engine = Engine::new(config());
    let mut host = Host::default();
    let ann = kit.announcement(1, "r", &[], &[REMOTE]);
    assert!(matches!(
        publish(
            &mut engine,
            &mut host,
            t(0),
            ann.clone(),
            Arrival::Published
        ),
        Verdict::Waiting(_)
    ));
    assert!(host
        .commands
        .iter()
        .any(|c| matches!(c, Command::CreateRepo { repo: r } if *r == repo(1, "r"))));
    assert!(
        host.released().is_empty(),
        "an empty repo does not release its announcement"
    );
    host.give(&repo(1, "r"), &[oid(1)]);
    let st = kit.state(1, "r", 2000, &[("refs/heads/main", oid(1))]);
    publish(&mut engine, &mut host, t(1), st.clone(), Arrival::Published);
    assert_eq!(
        BTreeSet::from_iter(host.released()),
        BTreeSet::from([ann.id, st.id])
    );
    // The repository is served now: a later announcement is accepted at once.
    let mut ann2 = kit.announcement(1, "r", &[], &[REMOTE]);
    ann2.created_at = nostr::types::Timestamp::from_secs(5000);
    assert!(matches!(
        admit(&mut engine, t(2), ann2, Arrival::Published),
        Verdict::Accepted(_)
    ));
}

#[test]
fn an_expired_announcement_removes_its_repo() {
    let mut kit = Kit::default();
    let mut engine = Engine::new(config());
    let mut host = Host::default();
    publish(
        &mut engine,
        &mut host,
        t(0),
        kit.announcement(1, "r", &[], &[]),
        Arrival::Published,
    );
    advance(&mut engine, &mut host, t(31 * 60 * 1000));
    assert!(host
        .commands
        .iter()
        .any(|c| matches!(c, Command::RemoveRepo { repo: r } if *r == repo(1, "r"))));
    assert_eq!(engine.stats().repos_active, 0);
    assert_eq!(engine.stats().timers, 0);
}

#[test]
fn announcements_not_listing_us_are_refused_unless_from_a_maintainer() {
    let mut kit = Kit::default();
    let mut engine = Engine::new(config());
    engine.restore_accepted(&kit.announcement(1, "r", &[2], &[]));
    let mut foreign_tags = vec![
        vec!["d".to_string(), "r".to_string()],
        vec!["clone".to_string(), REMOTE.to_string()],
    ];
    let stranger = kit.event(5, 30617, 1000, &foreign_tags);
    assert!(
        matches!(admit(&mut engine, t(0), stranger, Arrival::Published), Verdict::Rejected(m) if m.starts_with("blocked:"))
    );
    foreign_tags.push(vec!["maintainers".to_string(), pk(3).to_hex()]);
    let maintainer = kit.event(2, 30617, 1000, &foreign_tags);
    assert!(matches!(
        admit(&mut engine, t(0), maintainer, Arrival::Published),
        Verdict::Accepted(_)
    ));
    // Now pk(3) is a maintainer of /1/r through pk(2): its state is taken.
    let st = kit.state(3, "r", 2000, &[("refs/heads/main", oid(1))]);
    assert!(matches!(
        admit(&mut engine, t(0), st, Arrival::Published),
        Verdict::Waiting(_)
    ));
    let st = kit.state(4, "r", 2000, &[("refs/heads/main", oid(1))]);
    assert!(matches!(
        admit(&mut engine, t(0), st, Arrival::Published),
        Verdict::Rejected(_)
    ));
}

#[test]
fn urls_come_from_maintainer_announcements_and_pr_clone_tags_and_run_on_several_domains() {
    let mut kit = Kit::default();
    let mut engine = Engine::new(config());
    let mut host = Host::default();
    engine.restore_accepted(&kit.announcement(
        1,
        "r",
        &[2],
        &[
            "https://a.example/x.git/",
            "http://127.0.0.1/x.git",
            "git://c.example/x",
        ],
    ));
    let mut m_tags = vec![
        vec!["d".to_string(), "r".to_string()],
        vec![
            "clone".to_string(),
            "https://B.example:443/x.git".to_string(),
            "https://a.example/x.git".to_string(),
        ],
    ];
    m_tags.push(vec!["relays".to_string()]);
    admit(
        &mut engine,
        t(0),
        kit.event(2, 30617, 1000, &m_tags),
        Arrival::Synced,
    );
    let pr = kit.pr(
        9,
        &repo(1, "r"),
        oid(5),
        &[
            "https://pr.example/fork.git",
            "https://grasp.example/x/y.git",
        ],
    );
    host.give(&repo(1, "r"), &[oid(1)]);
    let st = kit.state(
        1,
        "r",
        2000,
        &[("refs/heads/main", oid(1)), ("refs/heads/dev", oid(2))],
    );
    publish(&mut engine, &mut host, t(0), st, Arrival::Synced);
    publish(&mut engine, &mut host, t(0), pr, Arrival::Synced);
    let fetched = |host: &Host| -> Vec<(String, Vec<graspd_core::Oid>)> {
        host.fetches
            .iter()
            .map(|c| match c {
                Command::Fetch { url, oids, .. } => (url.clone(), oids.clone()),
                _ => unreachable!(),
            })
            .collect()
    };
    let want = vec![oid(2), oid(5)]; // oid(1) is present already: never asked for
                                     // One domain at a time in candidate order (the owner's, its maintainer's, then the PR's);
                                     // none answers here, so each next one starts when the hedge delay passes.
    let hedge = config().fetch_hedge_after.as_millis() as u64;
    advance(&mut engine, &mut host, t(500));
    assert_eq!(
        fetched(&host),
        [("https://a.example/x.git".to_string(), want.clone())]
    );
    advance(&mut engine, &mut host, t(500 + hedge - 1));
    assert_eq!(
        fetched(&host).len(),
        1,
        "nothing more before the hedge delay"
    );
    advance(&mut engine, &mut host, t(500 + hedge));
    advance(&mut engine, &mut host, t(500 + 2 * hedge));
    assert_eq!(
        fetched(&host),
        [
            ("https://a.example/x.git".to_string(), want.clone()),
            ("https://b.example/x.git".to_string(), want.clone()),
            ("https://pr.example/fork.git".to_string(), want.clone()),
        ],
        "every domain in turn; private, non-http, duplicate and own URLs excluded"
    );
    advance(&mut engine, &mut host, t(500 + 10 * hedge));
    assert_eq!(fetched(&host).len(), 3, "each domain once per attempt");
}

#[test]
fn a_domain_that_delivers_everything_spares_the_others() {
    let mut kit = Kit::default();
    let mut engine = Engine::new(config());
    let mut host = Host::default();
    engine.restore_accepted(&kit.announcement(
        1,
        "r",
        &[],
        &["https://one.example/r.git", "https://two.example/r.git"],
    ));
    let st = kit.state(1, "r", 2000, &[("refs/heads/main", oid(1))]);
    let st_id = st.id;
    publish(&mut engine, &mut host, t(0), st, Arrival::Synced);
    advance(&mut engine, &mut host, t(500));
    let Some(Command::Fetch { id, url, oids, .. }) = host.fetches.first().cloned() else {
        panic!("no fetch: {:?}", host.fetches)
    };
    assert_eq!(url, "https://one.example/r.git");
    host.give(&repo(1, "r"), &oids);
    engine.handle_input(
        t(600),
        Input::FetchDone {
            id,
            result: Ok(graspd_core::FetchReport { present: oids }),
        },
    );
    host.run(&mut engine, t(600));
    advance(&mut engine, &mut host, t(60_000));
    assert_eq!(host.fetches.len(), 1, "{:?}", host.fetches);
    assert_eq!(host.released(), vec![st_id]);
}

#[test]
fn a_repository_with_nothing_left_to_wait_for_asks_no_further_domain() {
    let mut kit = Kit::default();
    let mut engine = Engine::new(config());
    let mut host = Host::default();
    engine.restore_accepted(&kit.announcement(
        1,
        "r",
        &[],
        &["https://one.example/r.git", "https://two.example/r.git"],
    ));
    let st = kit.state(1, "r", 2000, &[("refs/heads/main", oid(1))]);
    let st_id = st.id;
    publish(&mut engine, &mut host, t(0), st, Arrival::Synced);
    advance(&mut engine, &mut host, t(500));
    assert_eq!(host.fetches.len(), 1);
    // The author deletes the state while the first domain's fetch runs.
    let del = kit.deletion(1, &[st_id], &[]);
    publish(&mut engine, &mut host, t(600), del, Arrival::Synced);
    let hedge = config().fetch_hedge_after.as_millis() as u64;
    advance(&mut engine, &mut host, t(500 + 5 * hedge));
    assert_eq!(host.fetches.len(), 1, "{:?}", host.fetches);
}

#[test]
fn a_failing_domain_hands_over_to_the_next_at_once() {
    let mut kit = Kit::default();
    let mut engine = Engine::new(config());
    let mut host = Host::default();
    engine.restore_accepted(&kit.announcement(
        1,
        "r",
        &[],
        &["https://one.example/r.git", "https://two.example/r.git"],
    ));
    let st = kit.state(1, "r", 2000, &[("refs/heads/main", oid(1))]);
    publish(&mut engine, &mut host, t(0), st, Arrival::Synced);
    advance(&mut engine, &mut host, t(500));
    let Some(Command::Fetch { id, .. }) = host.fetches.first().cloned() else {
        panic!()
    };
    engine.handle_input(
        t(700),
        Input::FetchDone {
            id,
            result: Err(graspd_core::FetchError::Refused),
        },
    );
    host.run(&mut engine, t(700));
    let urls: Vec<String> = host
        .fetches
        .iter()
        .map(|c| match c {
            Command::Fetch { url, .. } => url.clone(),
            _ => unreachable!(),
        })
        .collect();
    assert_eq!(
        urls,
        ["https://one.example/r.git", "https://two.example/r.git"],
        "the next domain starts when the first fails, not after the hedge delay"
    );
}

#[test]
fn private_remotes_are_fetched_only_when_allowed() {
    for allow in [false, true] {
        let mut kit = Kit::default();
        let mut engine = Engine::new(Config {
            allow_private_remotes: allow,
            ..config()
        });
        let mut host = Host::default();
        engine.restore_accepted(&kit.announcement(1, "r", &[], &["http://127.0.0.1:9/x.git"]));
        let st = kit.state(1, "r", 2000, &[("refs/heads/main", oid(1))]);
        publish(&mut engine, &mut host, t(0), st, Arrival::Synced);
        advance(&mut engine, &mut host, t(500));
        assert_eq!(host.fetches.len(), usize::from(allow));
    }
}

#[test]
fn same_identifier_different_owners_are_separate_repos() {
    let mut kit = Kit::default();
    let mut engine = Engine::new(config());
    let mut host = Host::default();
    engine.restore_accepted(&kit.announcement(1, "r", &[], &["https://one.example/r.git"]));
    engine.restore_accepted(&kit.announcement(2, "r", &[], &["https://two.example/r.git"]));
    publish(
        &mut engine,
        &mut host,
        t(0),
        kit.state(1, "r", 2000, &[("refs/heads/main", oid(1))]),
        Arrival::Synced,
    );
    publish(
        &mut engine,
        &mut host,
        t(0),
        kit.state(2, "r", 2000, &[("refs/heads/main", oid(2))]),
        Arrival::Synced,
    );
    advance(&mut engine, &mut host, t(500));
    let fetched: BTreeSet<_> = host
        .fetches
        .iter()
        .map(|c| match c {
            Command::Fetch {
                into, url, oids, ..
            } => (into.owner, url.clone(), oids.clone()),
            _ => unreachable!(),
        })
        .collect();
    assert_eq!(
        fetched,
        BTreeSet::from([
            (pk(1), "https://one.example/r.git".to_string(), vec![oid(1)]),
            (pk(2), "https://two.example/r.git".to_string(), vec![oid(2)]),
        ])
    );
}

#[test]
fn restored_waiting_events_are_inspected_at_once_and_requeued_prs_too() {
    let mut kit = Kit::default();
    let (mut engine, mut host) = served(&mut kit);
    let pr = kit.pr(5, &repo(1, "r"), oid(3), &["https://fork.example/f.git"]);
    engine.restore_waiting(t(0), pr.clone(), Arrival::Published, secs(600));
    host.run(&mut engine, t(0));
    assert_eq!(host.inspects_of(&repo(1, "r")), 1);
    assert_eq!(
        engine.poll_timeout().unwrap(),
        (t(180_000), TimerReason::SyncAttempt(repo(1, "r")))
    );
    advance(&mut engine, &mut host, t(180_000));
    host.answer_fetch(&mut engine, t(180_001), &BTreeSet::from([oid(3)]))
        .unwrap();
    assert_eq!(host.released(), [pr.id]);
    assert_eq!(
        host.refs[&repo(1, "r")][&format!("refs/nostr/{}", pr.id.to_hex())],
        oid(3)
    );
    // Remaining life is honoured.
    let pr2 = kit.pr(5, &repo(1, "r"), oid(4), &[]);
    engine.restore_waiting(t(200_000), pr2.clone(), Arrival::Published, secs(1));
    advance(&mut engine, &mut host, t(201_000));
    assert!(host
        .events
        .iter()
        .any(|e| matches!(e, EngineEvent::Expired { id, .. } if *id == pr2.id)));
}

#[test]
fn placeholder_refs_wait_for_their_event_and_are_deleted_when_it_never_comes() {
    let mut kit = Kit::default();
    let (mut engine, mut host) = served(&mut kit);
    let pr = kit.pr(5, &repo(1, "r"), oid(3), &[]);
    let name = format!("refs/nostr/{}", pr.id.to_hex());
    // A push of the PR tip before the PR event: a placeholder after receive-pack succeeded.
    host.give(&repo(1, "r"), &[oid(3)]);
    host.refs
        .entry(repo(1, "r"))
        .or_default()
        .insert(name.clone(), oid(3));
    engine.handle_input(
        t(0),
        Input::Pushed {
            repo: repo(1, "r"),
            updates: vec![RefUpdate {
                old: graspd_core::Oid::ZERO,
                new: oid(3),
                name: name.clone(),
            }],
        },
    );
    host.run(&mut engine, t(0));
    assert_eq!(engine.stats().waiting.placeholders, 1);
    assert!(host
        .events
        .iter()
        .any(|e| matches!(e, EngineEvent::PlaceholderCreated { .. })));
    // The event arrives with the same commit: released at once, placeholder gone.
    assert!(matches!(
        publish(&mut engine, &mut host, t(5), pr.clone(), Arrival::Published),
        Verdict::Waiting(_)
    ));
    assert_eq!(host.released(), [pr.id]);
    assert_eq!(engine.stats().waiting.placeholders, 0);
    // Another push whose event never comes: the ref is deleted (CAS on its value) at expiry.
    let other = kit.pr(5, &repo(1, "r"), oid(4), &[]);
    let other_name = format!("refs/nostr/{}", other.id.to_hex());
    host.refs
        .get_mut(&repo(1, "r"))
        .unwrap()
        .insert(other_name.clone(), oid(4));
    engine.handle_input(
        t(10),
        Input::Pushed {
            repo: repo(1, "r"),
            updates: vec![RefUpdate {
                old: graspd_core::Oid::ZERO,
                new: oid(4),
                name: other_name.clone(),
            }],
        },
    );
    host.run(&mut engine, t(10));
    assert_eq!(
        engine.poll_timeout().unwrap(),
        (
            t(10 + 30 * 60 * 1000),
            TimerReason::PlaceholderExpiry(repo(1, "r"), other.id)
        )
    );
    advance(&mut engine, &mut host, t(10 + 30 * 60 * 1000));
    assert!(!host.refs[&repo(1, "r")].contains_key(&other_name));
    assert!(host
        .events
        .iter()
        .any(|e| matches!(e, EngineEvent::PlaceholderRemoved { id, .. } if *id == other.id)));
}

#[test]
fn a_placeholder_with_another_commit_is_deleted_when_the_event_arrives() {
    let mut kit = Kit::default();
    let (mut engine, mut host) = served(&mut kit);
    let pr = kit.pr(5, &repo(1, "r"), oid(3), &[]);
    let name = format!("refs/nostr/{}", pr.id.to_hex());
    host.refs
        .entry(repo(1, "r"))
        .or_default()
        .insert(name.clone(), oid(8));
    engine.handle_input(
        t(0),
        Input::Pushed {
            repo: repo(1, "r"),
            updates: vec![RefUpdate {
                old: graspd_core::Oid::ZERO,
                new: oid(8),
                name: name.clone(),
            }],
        },
    );
    host.run(&mut engine, t(0));
    publish(&mut engine, &mut host, t(1), pr, Arrival::Published);
    assert!(!host.refs[&repo(1, "r")].contains_key(&name));
}

#[test]
fn the_throttle_caps_one_domain_across_many_repositories_and_drains_by_itself() {
    let mut kit = Kit::default();
    let mut engine = Engine::new(Config {
        max_per_minute_per_domain: 6,
        ..config()
    });
    let mut host = Host::default();
    for n in 1..=20u8 {
        let id = format!("r{n}");
        engine.restore_accepted(&kit.announcement(n, &id, &[], &[REMOTE]));
        publish(
            &mut engine,
            &mut host,
            t(0),
            kit.state(n, &id, 2000, &[("refs/heads/main", oid(n as u32))]),
            Arrival::Synced,
        );
    }
    advance(&mut engine, &mut host, t(500));
    assert_eq!(host.fetches.len(), 5, "max_concurrent");
    let all = (1..=20).map(oid).collect::<BTreeSet<_>>();
    while host.answer_fetch(&mut engine, t(1000), &all).is_some() {}
    assert_eq!(
        host.released().len(),
        6,
        "max_per_minute: 6 starts in the window"
    );
    // With nothing in flight, the window frees itself and the queue drains.
    let (at, reason) = engine.poll_timeout().unwrap();
    assert_eq!(
        (at, reason),
        (
            t(60_500),
            TimerReason::ThrottleWindow("remote.example".into())
        )
    );
    let mut now = 60_500;
    while host.released().len() < 20 {
        advance(&mut engine, &mut host, t(now));
        while host.answer_fetch(&mut engine, t(now), &all).is_some() {}
        now += 60_000;
        assert!(now < 400_000);
    }
}

#[test]
fn persistent_dns_failures_skip_the_domain_for_other_repositories_too() {
    let mut kit = Kit::default();
    let mut engine = Engine::new(Config {
        max_concurrent_per_domain: 1,
        ..config()
    });
    let mut host = Host::default();
    for n in 1..=3u8 {
        let id = format!("r{n}");
        engine.restore_accepted(&kit.announcement(n, &id, &[], &[REMOTE]));
        publish(
            &mut engine,
            &mut host,
            t(0),
            kit.state(n, &id, 2000, &[("refs/heads/main", oid(n as u32))]),
            Arrival::Synced,
        );
    }
    advance(&mut engine, &mut host, t(500));
    for _ in 0..2 {
        let Command::Fetch { id, .. } = host.fetches.remove(0) else {
            panic!()
        };
        engine.handle_input(
            t(600),
            Input::FetchDone {
                id,
                result: Err(FetchError::Dns),
            },
        );
        host.run(&mut engine, t(600));
    }
    assert!(
        host.fetches.is_empty(),
        "the third repository is not sent to a broken domain"
    );
    assert_eq!(engine.stats().throttle.skips, 1);
    advance(&mut engine, &mut host, t(3_600_000));
    assert!(host.fetches.is_empty(), "still skipped on retries");
}

#[test]
fn not_our_ref_retries_without_the_lacking_oids() {
    let mut kit = Kit::default();
    let (mut engine, mut host) = served(&mut kit);
    publish(
        &mut engine,
        &mut host,
        t(0),
        kit.state(
            1,
            "r",
            2000,
            &[("refs/heads/a", oid(1)), ("refs/heads/b", oid(2))],
        ),
        Arrival::Synced,
    );
    advance(&mut engine, &mut host, t(500));
    let Command::Fetch { id, .. } = host.fetches.remove(0) else {
        panic!()
    };
    engine.handle_input(
        t(600),
        Input::FetchDone {
            id,
            result: Err(FetchError::NotOurRef(vec![oid(1)])),
        },
    );
    host.run(&mut engine, t(600));
    let Some(Command::Fetch { oids, url, .. }) = host.fetches.first() else {
        panic!()
    };
    assert_eq!((url.as_str(), oids.clone()), (REMOTE, vec![oid(2)]));
}

#[test]
fn decide_push_accepts_exactly_a_waiting_state_and_refuses_pr_branches() {
    let mut kit = Kit::default();
    let (mut engine, mut host) = served(&mut kit);
    publish(
        &mut engine,
        &mut host,
        t(0),
        kit.state(1, "r", 2000, &[("refs/heads/main", oid(1))]),
        Arrival::Published,
    );
    let current = Default::default();
    let good = [RefUpdate {
        old: graspd_core::Oid::ZERO,
        new: oid(1),
        name: "refs/heads/main".into(),
    }];
    assert_eq!(
        engine.decide_push(&repo(1, "r"), &current, &good),
        [graspd_core::RefDecision::Accept]
    );
    let bad = [RefUpdate {
        old: graspd_core::Oid::ZERO,
        new: oid(2),
        name: "refs/heads/main".into(),
    }];
    assert!(matches!(
        &engine.decide_push(&repo(1, "r"), &current, &bad)[0],
        graspd_core::RefDecision::Reject(_)
    ));
    let pr = [RefUpdate {
        old: graspd_core::Oid::ZERO,
        new: oid(2),
        name: "refs/heads/pr/x".into(),
    }];
    assert!(matches!(
        &engine.decide_push(&repo(1, "r"), &current, &pr)[0],
        graspd_core::RefDecision::Reject(_)
    ));
}

#[test]
fn purgatory_size_is_bounded() {
    let mut kit = Kit::default();
    let mut engine = Engine::new(Config {
        max_waiting: 2,
        ..config()
    });
    engine.restore_accepted(&kit.announcement(1, "r", &[], &[]));
    for i in 0..2 {
        let st = kit.state(1, "r", 2000 + i, &[("refs/heads/main", oid(1))]);
        assert!(matches!(
            admit(&mut engine, t(0), st, Arrival::Published),
            Verdict::Waiting(_)
        ));
    }
    let st = kit.state(1, "r", 2005, &[("refs/heads/main", oid(1))]);
    assert!(
        matches!(admit(&mut engine, t(0), st, Arrival::Published), Verdict::Refused(Refusal::Waiting, m) if m.starts_with("rate-limited:"))
    );
}

#[test]
fn expired_memory_is_bounded() {
    let mut kit = Kit::default();
    let mut engine = Engine::new(Config {
        max_remembered_expired: 3,
        ..config()
    });
    let mut host = Host::default();
    engine.restore_accepted(&kit.announcement(1, "r", &[], &[]));
    for i in 0..10 {
        let st = kit.state(1, "r", 2000 + i, &[("refs/heads/main", oid(1))]);
        publish(&mut engine, &mut host, t(i), st, Arrival::Published);
    }
    advance(&mut engine, &mut host, t(3_600_000));
    assert_eq!(engine.stats().remembered_expired, 3);
}

#[test]
fn a_state_released_in_one_repo_is_copied_into_sibling_repos_it_is_authoritative_for() {
    let mut kit = Kit::default();
    let mut engine = Engine::new(config());
    let mut host = Host::default();
    // Owner 1 lists maintainer 2; both host "r" here.
    engine.restore_accepted(&kit.announcement(1, "r", &[2], &[]));
    engine.restore_accepted(&kit.announcement(2, "r", &[], &[]));
    let st = kit.state(2, "r", 2000, &[("refs/heads/main", oid(1))]);
    publish(&mut engine, &mut host, t(0), st.clone(), Arrival::Published);
    // Maintainer 2 pushes to its own repository.
    host.give(&repo(2, "r"), &[oid(1)]);
    engine.handle_input(
        t(1),
        Input::Pushed {
            repo: repo(2, "r"),
            updates: vec![],
        },
    );
    host.run(&mut engine, t(1));
    assert_eq!(host.released(), [st.id]);
    // Owner 1's repository caught up: objects copied from 2's, refs aligned, HEAD set.
    let copy = host.commands.iter().find_map(|c| match c {
        Command::Apply { plan, .. } if plan.repo == repo(1, "r") => Some(plan.clone()),
        _ => None,
    });
    let plan = copy.expect("an Apply for the sibling");
    assert_eq!(plan.copy_from, Some((repo(2, "r"), vec![oid(1)])));
    assert_eq!(host.refs[&repo(1, "r")]["refs/heads/main"], oid(1));
    assert_eq!(host.heads[&repo(1, "r")], "refs/heads/main");
    assert_eq!(engine.stats().repos_active, 0, "nothing left to do");
    assert_eq!(engine.poll_timeout(), None);
}

#[test]
fn expired_ids_are_forgotten_after_the_configured_time() {
    let mut kit = Kit::default();
    let mut engine = Engine::new(Config {
        remember_expired_for: secs(3600),
        ..config()
    });
    let mut host = Host::default();
    engine.restore_accepted(&kit.announcement(1, "r", &[], &[]));
    let st = kit.state(1, "r", 2000, &[("refs/heads/main", oid(1))]);
    publish(&mut engine, &mut host, t(0), st.clone(), Arrival::Published);
    advance(&mut engine, &mut host, t(1_800_000));
    assert_eq!(engine.stats().waiting.states, 0);
    let refused = admit(
        &mut engine,
        t(1_800_000 + 3_599_000),
        st.clone(),
        Arrival::Synced,
    );
    assert!(matches!(refused, Verdict::Rejected(_)));
    let later = t(1_800_000 + 3_600_000);
    assert!(matches!(
        admit(&mut engine, later, st, Arrival::Synced),
        Verdict::Waiting(_)
    ));
}

#[test]
fn a_rate_limited_remote_cools_its_domain_down_then_drains_by_itself() {
    let mut kit = Kit::default();
    let mut engine = Engine::new(Config {
        max_concurrent_per_domain: 1,
        ..config()
    });
    let mut host = Host::default();
    for n in 1..=2u8 {
        let id = format!("r{n}");
        engine.restore_accepted(&kit.announcement(n, &id, &[], &[REMOTE]));
        let st = kit.state(n, &id, 2000, &[("refs/heads/main", oid(n as u32))]);
        publish(&mut engine, &mut host, t(0), st, Arrival::Synced);
    }
    advance(&mut engine, &mut host, t(500));
    let Command::Fetch { id, .. } = host.fetches.remove(0) else {
        panic!()
    };
    engine.handle_input(
        t(1000),
        Input::FetchDone {
            id,
            result: Err(FetchError::RateLimited),
        },
    );
    host.run(&mut engine, t(1000));
    assert!(host.fetches.is_empty(), "cooling down");
    // Nothing starts during the cooldown, even when r1's retry comes due at 21 s ...
    advance(&mut engine, &mut host, t(60_999));
    assert!(host.fetches.is_empty(), "still cooling down");
    // ... and the domain wakes by itself when it ends, with nothing in flight.
    advance(&mut engine, &mut host, t(61_000));
    assert_eq!(
        host.fetches.len(),
        1,
        "the queue drains with nothing in flight"
    );
}

#[test]
fn an_unanswered_inspect_times_out_and_never_blocks_the_repository() {
    let mut kit = Kit::default();
    let (mut engine, _host) = served(&mut kit);
    let st = kit.state(1, "r", 2000, &[("refs/heads/main", oid(1))]);
    admit(&mut engine, t(0), st, Arrival::Published);
    let Some(Command::Inspect { id: lost, .. }) = engine.poll_command() else {
        panic!()
    };
    assert_eq!(
        engine.poll_timeout(),
        Some((t(60_000), TimerReason::CommandDeadline(lost)))
    );
    engine.handle_timeout(t(60_000));
    // Counted failed: the repository backs off and its next attempt inspects again.
    let (at, reason) = engine.poll_timeout().unwrap();
    assert_eq!(
        (at, reason),
        (t(80_000), TimerReason::SyncAttempt(repo(1, "r")))
    );
    engine.handle_timeout(at);
    assert!(matches!(engine.poll_command(), Some(Command::Inspect { id, .. }) if id != lost));
    // The late report is ignored.
    let snap = graspd_core::RepoSnapshot::default();
    engine.handle_input(
        t(80_001),
        Input::Inspected {
            id: lost,
            result: Ok(snap),
        },
    );
    assert!(engine.poll_command().is_none());
}

#[test]
fn an_event_whose_apply_succeeds_only_after_its_expiry_waits_for_it_then_expires() {
    let mut kit = Kit::default();
    let (mut engine, _host) = served(&mut kit);
    let st = kit.state(1, "r", 2000, &[("refs/heads/main", oid(1))]);
    let id = st.id;
    admit(&mut engine, t(0), st, Arrival::Published);
    let expiry = 30 * 60 * 1000;
    let Some(Command::Inspect { id: iid, .. }) = engine.poll_command() else {
        panic!()
    };
    // The data arrives just before expiry; the Apply is still running when it comes.
    let snap = graspd_core::RepoSnapshot {
        present: vec![oid(1)],
        refs: Default::default(),
    };
    engine.handle_input(
        t(expiry - 10),
        Input::Inspected {
            id: iid,
            result: Ok(snap),
        },
    );
    let Some(Command::Apply { id: aid, .. }) = engine.poll_command() else {
        panic!()
    };
    engine.handle_timeout(t(expiry));
    assert!(
        engine.poll_event().is_none(),
        "not expired while its Apply runs"
    );
    engine.handle_input(
        t(expiry + 5),
        Input::Applied {
            id: aid,
            result: Ok(()),
        },
    );
    // Its success came after the expiry: the event expires (never served after its expiry;
    // the repository keeps the refs, and a republished event is released at once).
    assert!(matches!(engine.poll_event(), Some(EngineEvent::Expired { id: x, .. }) if x == id));
    assert_eq!(engine.stats().expired, 1);
    assert_eq!(engine.stats().released, 0);
}

#[test]
fn an_attempt_whose_events_left_while_it_waited_for_the_rate_window_ends() {
    let mut kit = Kit::default();
    let mut engine = Engine::new(Config {
        max_per_minute_per_domain: 1,
        ..config()
    });
    engine.restore_accepted(&kit.announcement(1, "r", &[], &[REMOTE]));
    let mut host = Host::default();
    let refs = [("refs/heads/a", oid(1)), ("refs/heads/b", oid(2))];
    let st = kit.state(1, "r", 2000, &refs);
    let st_id = st.id;
    publish(&mut engine, &mut host, t(0), st, Arrival::Synced);
    advance(&mut engine, &mut host, t(500));
    let Command::Fetch { id, .. } = host.fetches.remove(0) else {
        panic!()
    };
    // The retry without oid(1) waits for the rate window (one start per minute).
    engine.handle_input(
        t(600),
        Input::FetchDone {
            id,
            result: Err(FetchError::NotOurRef(vec![oid(1)])),
        },
    );
    host.run(&mut engine, t(600));
    assert!(host.fetches.is_empty());
    // The state is deleted while its attempt waits: nothing is in flight or queued any more.
    let del = kit.deletion(1, &[st_id], &[]);
    publish(&mut engine, &mut host, t(700), del, Arrival::Published);
    // A new PR must get its own attempt (not wait for its expiry behind the old one).
    let pr = kit.pr(7, &repo(1, "r"), oid(9), &[]);
    publish(&mut engine, &mut host, t(800), pr, Arrival::Synced);
    advance(&mut engine, &mut host, t(120_000));
    let Some(Command::Fetch { oids, .. }) = host.fetches.first() else {
        panic!("the PR never got a sync attempt")
    };
    assert_eq!(oids, &[oid(9)]);
}

#[test]
fn a_failed_placeholder_delete_is_retried_and_reported_only_once_done() {
    let mut kit = Kit::default();
    let (mut engine, mut host) = served(&mut kit);
    let ghost = kit.pr(5, &repo(1, "r"), oid(4), &[]);
    let name = format!("refs/nostr/{}", ghost.id.to_hex());
    host.give(&repo(1, "r"), &[oid(4)]);
    host.refs
        .entry(repo(1, "r"))
        .or_default()
        .insert(name.clone(), oid(4));
    engine.handle_input(
        t(0),
        Input::Pushed {
            repo: repo(1, "r"),
            updates: vec![RefUpdate {
                old: graspd_core::Oid::ZERO,
                new: oid(4),
                name: name.clone(),
            }],
        },
    );
    host.run(&mut engine, t(0));
    host.events.clear();
    // At expiry the delete is issued, and hangs: the host never answers it.
    let expiry = 30 * 60 * 1000;
    engine.handle_timeout(t(expiry));
    let mut deletes = 0;
    while let Some(cmd) = engine.poll_command() {
        deletes += usize::from(matches!(cmd, Command::Apply { .. }));
    }
    assert_eq!(deletes, 1);
    // Its deadline passes: not removed (the ref is still there), tried again later.
    engine.handle_timeout(t(expiry + 60_000));
    host.run(&mut engine, t(expiry + 60_000));
    assert!(!host
        .events
        .iter()
        .any(|e| matches!(e, EngineEvent::PlaceholderRemoved { .. })));
    assert!(host.refs[&repo(1, "r")].contains_key(&name));
    advance(&mut engine, &mut host, t(expiry + 10 * 60_000));
    assert!(!host.refs[&repo(1, "r")].contains_key(&name));
    let removed = host
        .events
        .iter()
        .filter(|e| matches!(e, EngineEvent::PlaceholderRemoved { id, .. } if *id == ghost.id))
        .count();
    assert_eq!(removed, 1);
    assert_eq!(engine.stats().waiting.placeholders, 0);
}

/// Rule: an event is released only when the Apply releasing it reports success before the
/// event's expiry. At its expiry an event whose Apply still runs waits for that Apply to end
/// (it has a deadline), then expires whatever the outcome; it is never planned again.
#[test]
fn an_event_whose_apply_hangs_over_its_expiry_expires_when_the_apply_ends() {
    let mut kit = Kit::default();
    let (mut engine, mut host) = served(&mut kit);
    let st = kit.state(1, "r", 2000, &[("refs/heads/main", oid(1))]);
    let id = st.id;
    admit(&mut engine, t(0), st, Arrival::Published);
    let expiry = 30 * 60 * 1000;
    let Some(Command::Inspect { id: iid, .. }) = engine.poll_command() else {
        panic!()
    };
    host.give(&repo(1, "r"), &[oid(1)]);
    let snap = graspd_core::RepoSnapshot {
        present: vec![oid(1)],
        refs: Default::default(),
    };
    engine.handle_input(
        t(expiry - 10),
        Input::Inspected {
            id: iid,
            result: Ok(snap),
        },
    );
    let Some(Command::Apply { .. }) = engine.poll_command() else {
        panic!()
    };
    // The Apply hangs; the expiry passes, then the Apply's deadline.
    engine.handle_timeout(t(expiry));
    assert!(engine.poll_event().is_none(), "waits for the running Apply");
    advance(&mut engine, &mut host, t(expiry + 10 * 60_000));
    assert!(
        host.released().is_empty(),
        "never released after its expiry"
    );
    assert!(host
        .events
        .iter()
        .any(|e| matches!(e, EngineEvent::Expired { id: x, .. } if *x == id)));
    assert_eq!(engine.stats().expired, 1);
    assert_eq!(engine.stats().waiting.states, 0);
}

#[test]
fn a_released_pr_delivered_again_is_a_duplicate() {
    let mut kit = Kit::default();
    let (mut engine, mut host) = served(&mut kit);
    host.give(&repo(1, "r"), &[oid(3)]);
    let pr = kit.pr(5, &repo(1, "r"), oid(3), &[]);
    assert!(matches!(
        publish(&mut engine, &mut host, t(0), pr.clone(), Arrival::Published),
        Verdict::Waiting(_)
    ));
    assert_eq!(host.released(), [pr.id]);
    for arrival in [Arrival::Synced, Arrival::Published] {
        assert_eq!(
            publish(&mut engine, &mut host, t(10), pr.clone(), arrival),
            Verdict::Duplicate
        );
    }
    assert_eq!(host.released(), [pr.id], "not released twice");
    assert_eq!(engine.stats().waiting.prs, 0);
}

#[test]
fn placeholders_restored_at_boot_keep_their_remaining_life_and_match_their_event() {
    let mut kit = Kit::default();
    let (mut engine, mut host) = served(&mut kit);
    let r = repo(1, "r");
    let pr = kit.pr(5, &r, oid(3), &[]);
    let ghost = kit.pr(6, &r, oid(4), &[]);
    host.give(&r, &[oid(3), oid(4)]);
    let refs = host.refs.entry(r.clone()).or_default();
    for (e, o) in [(&pr, oid(3)), (&ghost, oid(4))] {
        refs.insert(format!("refs/nostr/{}", e.id.to_hex()), o);
    }
    // The host restarts: the refs were pushed before, with 100 s and 200 s of life left.
    engine.restore_placeholder(t(0), r.clone(), ghost.id, oid(4), secs(100));
    engine.restore_placeholder(t(0), r.clone(), pr.id, oid(3), secs(200));
    assert_eq!(engine.stats().waiting.placeholders, 2);
    assert_eq!(
        engine.poll_timeout().unwrap(),
        (
            t(100_000),
            TimerReason::PlaceholderExpiry(r.clone(), ghost.id)
        )
    );
    // The PR arrives with that commit: released, its ref kept.
    publish(
        &mut engine,
        &mut host,
        t(10),
        pr.clone(),
        Arrival::Published,
    );
    assert_eq!(host.released(), [pr.id]);
    // The ghost's ref goes at its (restored) expiry.
    advance(&mut engine, &mut host, t(100_000));
    let refs = &host.refs[&r];
    assert!(refs.contains_key(&format!("refs/nostr/{}", pr.id.to_hex())));
    assert!(!refs.contains_key(&format!("refs/nostr/{}", ghost.id.to_hex())));
    assert_eq!(engine.stats().waiting.placeholders, 0);
}

#[test]
fn nothing_is_released_into_a_repository_removed_while_its_apply_ran() {
    let mut kit = Kit::default();
    let mut engine = Engine::new(config());
    let ann = kit.announcement(1, "r", &[], &[REMOTE]);
    admit(&mut engine, t(0), ann, Arrival::Published);
    let pr = kit.pr(5, &repo(1, "r"), oid(3), &[]);
    let minute = 60_000;
    admit(&mut engine, t(29 * minute + 30_000), pr, Arrival::Published);
    let mut apply = None;
    while let Some(cmd) = engine.poll_command() {
        match cmd {
            Command::Inspect { id, .. } => {
                let snap = graspd_core::RepoSnapshot {
                    present: vec![oid(3)],
                    refs: Default::default(),
                };
                engine.handle_input(
                    t(29 * minute + 30_000),
                    Input::Inspected {
                        id,
                        result: Ok(snap),
                    },
                );
            }
            Command::Apply { id, .. } => apply = Some(id),
            _ => {}
        }
    }
    let apply = apply.expect("the PR's ref is applied");
    // The announcement expires while that Apply runs: its repository is removed.
    engine.handle_timeout(t(30 * minute));
    let mut removed = false;
    while let Some(cmd) = engine.poll_command() {
        removed |= matches!(cmd, Command::RemoveRepo { .. });
    }
    assert!(removed);
    engine.handle_input(
        t(30 * minute + 5),
        Input::Applied {
            id: apply,
            result: Ok(()),
        },
    );
    while let Some(e) = engine.poll_event() {
        assert!(
            !matches!(e, EngineEvent::Released { .. }),
            "released into a removed repository"
        );
    }
}

#[test]
fn same_second_states_leave_the_lowest_id_applied_whichever_arrives_first() {
    // NIP-01: on equal created_at the lowest id wins. Two maintainers (and one author twice)
    // publish in the same second; the repository must end at the lowest id's refs.
    for (low_author, high_author) in [(1, 2), (2, 1), (1, 1)] {
        for low_first in [true, false] {
            let case = format!("authors {low_author}/{high_author}, low id first: {low_first}");
            let mut kit = Kit::default();
            let mut engine = Engine::new(config());
            let mut host = Host::default();
            engine.restore_accepted(&kit.announcement(1, "r", &[2], &[]));
            let low = kit.state(low_author, "r", 2000, &[("refs/heads/main", oid(1))]);
            let high = kit.state(high_author, "r", 2000, &[("refs/heads/main", oid(2))]);
            assert!(low.id < high.id);
            let order = if low_first {
                [low.clone(), high.clone()]
            } else {
                [high.clone(), low.clone()]
            };
            host.give(&repo(1, "r"), &[oid(1), oid(2)]);
            for (i, st) in order.into_iter().enumerate() {
                let now = t(i as u64 * 1000);
                publish(&mut engine, &mut host, now, st, Arrival::Published);
                engine.handle_input(
                    now,
                    Input::Pushed {
                        repo: repo(1, "r"),
                        updates: vec![],
                    },
                );
                host.run(&mut engine, now);
            }
            assert_eq!(
                host.refs[&repo(1, "r")]["refs/heads/main"],
                oid(1),
                "{case}: the lowest id's refs are applied"
            );
            assert!(host.released().contains(&low.id), "{case}");
            if low_first {
                assert!(
                    !host.released().contains(&high.id),
                    "{case}: loser released"
                );
            }
        }
    }
}

#[test]
fn same_second_announcements_waiting_together_are_released_together_and_the_lowest_id_rules() {
    let mut kit = Kit::default();
    let mut engine = Engine::new(config());
    let mut host = Host::default();
    // Two versions in the same second: the lower id lists maintainer 2, the higher nobody.
    let with_maintainer = kit.announcement(1, "r", &[2], &[]);
    let without = kit.announcement(1, "r", &[], &[]);
    assert!(with_maintainer.id < without.id);
    for ann in [&without, &with_maintainer] {
        let verdict = publish(
            &mut engine,
            &mut host,
            t(0),
            ann.clone(),
            Arrival::Published,
        );
        assert!(matches!(verdict, Verdict::Waiting(_)), "{verdict:?}");
    }
    host.give(&repo(1, "r"), &[oid(1), oid(2)]);
    let owners = kit.state(1, "r", 2000, &[("refs/heads/main", oid(1))]);
    publish(
        &mut engine,
        &mut host,
        t(1),
        owners.clone(),
        Arrival::Published,
    );
    assert_eq!(
        BTreeSet::from_iter(host.released()),
        BTreeSet::from([with_maintainer.id, without.id, owners.id]),
        "no version of the announcement is left waiting"
    );
    // NIP-01's winner lists maintainer 2, whose newer state moves the repository.
    let maintainers = kit.state(2, "r", 3000, &[("refs/heads/main", oid(2))]);
    publish(
        &mut engine,
        &mut host,
        t(2),
        maintainers,
        Arrival::Published,
    );
    assert_eq!(host.refs[&repo(1, "r")]["refs/heads/main"], oid(2));
}

#[test]
fn a_push_never_takes_a_repository_back_to_a_state_older_than_the_one_it_holds() {
    let mut kit = Kit::default();
    let (mut engine, mut host) = served(&mut kit);
    let older = kit.state(1, "r", 2000, &[("refs/heads/main", oid(1))]);
    let newer = kit.state(1, "r", 3000, &[("refs/heads/main", oid(2))]);
    publish(&mut engine, &mut host, t(0), older, Arrival::Published);
    host.give(&repo(1, "r"), &[oid(2)]);
    publish(
        &mut engine,
        &mut host,
        t(1),
        newer.clone(),
        Arrival::Published,
    );
    assert_eq!(host.released(), [newer.id]);
    let current = host.refs[&repo(1, "r")].clone();
    let back = [RefUpdate {
        old: oid(2),
        new: oid(1),
        name: "refs/heads/main".into(),
    }];
    assert!(
        matches!(
            &engine.decide_push(&repo(1, "r"), &current, &back)[0],
            graspd_core::RefDecision::Reject(_)
        ),
        "the older state still waits, but the repository holds a newer one"
    );
}

/// A state by `author` for `r` with `main` at `oid(1)` and a `dev` whose value is an
/// abbreviated object id, as some clients write it.
fn unreadable_state(kit: &mut Kit, author: u8, created_at: u64) -> nostr::event::Event {
    let tags = [
        vec!["d".to_string(), "r".to_string()],
        vec!["refs/heads/main".to_string(), oid(1).to_string()],
        vec!["refs/heads/dev".to_string(), "abc123".to_string()],
        vec!["HEAD".to_string(), "ref: refs/heads/main".to_string()],
    ];
    kit.event(author, 30618, created_at, &tags)
}

fn push_main(engine: &Engine, to: u32) -> graspd_core::RefDecision {
    let update = [RefUpdate {
        old: graspd_core::Oid::ZERO,
        new: oid(to),
        name: "refs/heads/main".into(),
    }];
    engine.decide_push(&repo(1, "r"), &Default::default(), &update)[0].clone()
}

#[test]
fn a_state_with_a_ref_value_that_is_not_an_object_id_waits_unseen_then_expires() {
    let mut kit = Kit::default();
    let (mut engine, mut host) = served(&mut kit);
    let st = unreadable_state(&mut kit, 1, 2000);
    let id = st.id;
    assert!(matches!(
        publish(&mut engine, &mut host, t(0), st.clone(), Arrival::Synced),
        Verdict::Waiting(_)
    ));
    assert_eq!(engine.stats().waiting.states, 1);
    // Its readable ref is here, and a push brings exactly its readable refs: neither can
    // satisfy it.
    host.give(&repo(1, "r"), &[oid(1)]);
    assert!(
        matches!(push_main(&engine, 1), graspd_core::RefDecision::Reject(r) if r.contains("no state event"))
    );
    engine.handle_input(
        t(10),
        Input::Pushed {
            repo: repo(1, "r"),
            updates: vec![],
        },
    );
    host.run(&mut engine, t(10));
    advance(&mut engine, &mut host, t(30 * 60 * 1000 - 1));
    assert_eq!(host.inspects_of(&repo(1, "r")), 0, "never inspected");
    assert!(fetch_times(&host).is_empty(), "never fetched for");
    assert!(host
        .commands
        .iter()
        .all(|c| !matches!(c, Command::Apply { .. })));
    assert!(host.released().is_empty());
    assert_eq!(engine.stats().waiting.states, 1, "it waits its whole life");
    advance(&mut engine, &mut host, t(30 * 60 * 1000));
    assert!(host
        .events
        .iter()
        .any(|e| matches!(e, EngineEvent::Expired { id: x, kind: 30618 } if *x == id)));
    assert_eq!(engine.stats().waiting.states, 0);
    assert_eq!(engine.stats().repos_active, 0);
    // Like any expired event: a synced repeat is refused, the author may publish it again.
    assert!(matches!(
        admit(&mut engine, t(30 * 60 * 1000 + 1), st, Arrival::Synced),
        Verdict::Rejected(m) if m.starts_with("blocked:")
    ));
}

#[test]
fn a_never_satisfiable_state_is_deleted_by_id_or_coordinate() {
    let mut kit = Kit::default();
    let (mut engine, mut host) = served(&mut kit);
    let by_id = unreadable_state(&mut kit, 1, 2000);
    publish(
        &mut engine,
        &mut host,
        t(0),
        by_id.clone(),
        Arrival::Published,
    );
    let deletion = kit.deletion(1, &[by_id.id], &[]);
    publish(&mut engine, &mut host, t(1), deletion, Arrival::Published);
    assert_eq!(engine.stats().waiting.states, 0);

    let by_coord = unreadable_state(&mut kit, 1, 2001);
    publish(
        &mut engine,
        &mut host,
        t(2),
        by_coord.clone(),
        Arrival::Published,
    );
    let foreign = kit.deletion(2, &[], &[format!("30618:{}:r", pk(1).to_hex())]);
    publish(&mut engine, &mut host, t(3), foreign, Arrival::Published);
    assert_eq!(
        engine.stats().waiting.states,
        1,
        "only its author deletes it"
    );
    let own = kit.deletion(1, &[], &[format!("30618:{}:r", pk(1).to_hex())]);
    publish(&mut engine, &mut host, t(4), own, Arrival::Published);
    assert_eq!(engine.stats().waiting.states, 0);
    let deleted = deleted_ids(&host);
    assert_eq!(deleted, BTreeSet::from([by_id.id, by_coord.id]));
}

#[test]
fn a_never_satisfiable_state_neither_blocks_nor_outranks_the_states_a_push_can_equal() {
    let mut kit = Kit::default();
    let (mut engine, mut host) = served(&mut kit);
    let older = kit.state(1, "r", 2000, &[("refs/heads/main", oid(1))]);
    let unreadable = unreadable_state(&mut kit, 1, 2001);
    publish(
        &mut engine,
        &mut host,
        t(0),
        older.clone(),
        Arrival::Published,
    );
    publish(
        &mut engine,
        &mut host,
        t(0),
        unreadable.clone(),
        Arrival::Published,
    );
    // The newer state cannot be equalled; the older one still can, and is released.
    assert_eq!(push_main(&engine, 1), graspd_core::RefDecision::Accept);
    host.push_lands(&mut engine, t(10), &repo(1, "r"), "refs/heads/main", oid(1));
    assert_eq!(host.released(), [older.id]);
    // A state newer than both is pushed and released as usual; the unreadable one expires.
    let newer = kit.state(1, "r", 2002, &[("refs/heads/main", oid(2))]);
    publish(
        &mut engine,
        &mut host,
        t(20),
        newer.clone(),
        Arrival::Published,
    );
    host.give(&repo(1, "r"), &[oid(2)]);
    engine.handle_input(
        t(30),
        Input::Pushed {
            repo: repo(1, "r"),
            updates: vec![],
        },
    );
    host.run(&mut engine, t(30));
    assert_eq!(host.released(), [older.id, newer.id]);
    advance(&mut engine, &mut host, t(30 * 60 * 1000));
    assert!(host
        .events
        .iter()
        .any(|e| matches!(e, EngineEvent::Expired { id, .. } if *id == unreadable.id)));
    assert_eq!(engine.stats().waiting.states, 0);
}

#[test]
fn an_announcement_released_with_its_first_state_is_served_before_it() {
    let mut kit = Kit::default();
    let mut engine = Engine::new(config());
    let mut host = Host::default();
    // The kit's ids grow: the state's sorts before the announcement's, so an order by id
    // would put the state first.
    let st = kit.state(1, "r", 2000, &[("refs/heads/main", oid(1))]);
    let ann = kit.announcement(1, "r", &[], &[]);
    assert!(st.id < ann.id);
    for event in [ann.clone(), st.clone()] {
        let verdict = publish(&mut engine, &mut host, t(0), event, Arrival::Published);
        assert!(matches!(verdict, Verdict::Waiting(_)), "{verdict:?}");
    }
    // The push set the refs the state names: nothing to apply, both go out at once.
    host.push_lands(&mut engine, t(10), &repo(1, "r"), "refs/heads/main", oid(1));
    // A client that sees the state served may publish an issue for the repository at once.
    assert_eq!(host.released(), [ann.id, st.id]);
}
