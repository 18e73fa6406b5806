//! Sync leases (`Config::sync_leases`): several instances over one store fetch for a
//! repository one at a time, under the lease the host acquires for them.

mod common;

use std::collections::BTreeSet;

use common::*;
use graspd_core::{Arrival, Command, Config, Engine, FetchError, Input};
use nostr::event::Event;

const ELSEWHERE: &str = "https://elsewhere.example/r.git";

fn leased_config() -> Config {
    Config {
        sync_leases: true,
        ..config()
    }
}

/// An instance that restored a waiting state whose data is only on `ELSEWHERE`.
fn instance(config: Config, announcement: &Event, state: &Event) -> (Engine, Host) {
    let mut engine = Engine::new(config);
    let mut host = Host::default();
    engine.restore_accepted(announcement);
    engine.restore_waiting(t(0), state.clone(), Arrival::Synced, secs(1800));
    host.run(&mut engine, t(0));
    advance(&mut engine, &mut host, t(1_000));
    (engine, host)
}

fn fixture() -> (Event, Event) {
    let mut kit = Kit::default();
    let announcement = kit.announcement(1, "r", &[], &[ELSEWHERE]);
    let state = kit.state(1, "r", 2000, &[("refs/heads/main", oid(1))]);
    (announcement, state)
}

fn fetches_of(host: &Host) -> usize {
    host.commands
        .iter()
        .filter(|c| matches!(c, Command::Fetch { .. }))
        .count()
}

#[test]
fn only_the_instance_holding_the_lease_fetches() {
    let (announcement, state) = fixture();
    let (mut first, mut first_host) = instance(leased_config(), &announcement, &state);
    let (mut second, mut second_host) = instance(leased_config(), &announcement, &state);
    for host in [&first_host, &second_host] {
        assert_eq!(host.lease_commands(), [(true, repo(1, "r"))]);
        assert_eq!(fetches_of(host), 0, "no fetch without the lease");
    }

    first.handle_input(t(1_000), Input::Leased { repo: repo(1, "r") });
    first_host.run(&mut first, t(1_000));
    assert_eq!(fetches_of(&first_host), 1);
    advance(&mut second, &mut second_host, t(600_000));
    assert_eq!(fetches_of(&second_host), 0, "the other never fetches");

    let remote = BTreeSet::from([oid(1)]);
    first_host
        .answer_fetch(&mut first, t(1_100), &remote)
        .unwrap();
    assert_eq!(first_host.released(), [state.id]);
    assert_eq!(
        first_host.lease_commands().last(),
        Some(&(false, repo(1, "r"))),
        "a lease nothing waits on goes back"
    );

    // The other hears it was served, finds the data in the shared repository, and stops
    // wanting the lease.
    second_host.give(&repo(1, "r"), &[oid(1)]);
    second_host.refs = first_host.refs.clone();
    second.served_elsewhere(t(1_200), &state);
    second_host.run(&mut second, t(1_200));
    assert_eq!(second_host.released(), [state.id]);
    assert_eq!(
        second_host.lease_commands(),
        [(true, repo(1, "r")), (false, repo(1, "r"))]
    );
    assert_eq!(fetches_of(&second_host), 0);
    assert_eq!(
        (second.stats().leases_held, second.stats().leases_wanted),
        (0, 0)
    );
}

#[test]
fn a_lost_lease_starts_nothing_more_and_the_next_holder_resumes() {
    let (announcement, state) = fixture();
    let (mut first, mut first_host) = instance(leased_config(), &announcement, &state);
    let (mut second, mut second_host) = instance(leased_config(), &announcement, &state);
    first.handle_input(t(1_000), Input::Leased { repo: repo(1, "r") });
    first_host.run(&mut first, t(1_000));
    let Some(Command::Fetch { id, .. }) = first_host.fetches.pop() else {
        panic!("the holder fetches")
    };
    assert_eq!(
        (first.stats().leases_held, first.stats().leases_wanted),
        (1, 0)
    );

    // Its database connection drops: the lease is lost while the fetch runs. The fetch
    // ends (its deadline bounds the overlap); nothing more starts here, however long.
    first.handle_input(t(2_000), Input::LeaseLost { repo: repo(1, "r") });
    first.handle_input(
        t(2_500),
        Input::FetchDone {
            id,
            result: Err(FetchError::Refused),
        },
    );
    first_host.run(&mut first, t(2_500));
    advance(&mut first, &mut first_host, t(1_000_000));
    assert_eq!(fetches_of(&first_host), 1);
    assert_eq!(
        (first.stats().leases_held, first.stats().leases_wanted),
        (0, 1)
    );
    assert_eq!(
        first_host.lease_commands(),
        [(true, repo(1, "r"))],
        "still wanted: the host keeps trying"
    );

    // The lease expired in the table; the other instance gets it and fetches.
    second.handle_input(t(40_000), Input::Leased { repo: repo(1, "r") });
    second_host.run(&mut second, t(40_000));
    let remote = BTreeSet::from([oid(1)]);
    second_host
        .answer_fetch(&mut second, t(40_100), &remote)
        .unwrap();
    assert_eq!(second_host.released(), [state.id]);
}

#[test]
fn a_lease_granted_after_the_work_ended_goes_back_at_once() {
    let mut engine = Engine::new(leased_config());
    let mut host = Host::default();
    engine.handle_input(t(0), Input::Leased { repo: repo(1, "r") });
    host.run(&mut engine, t(0));
    assert_eq!(host.lease_commands(), [(false, repo(1, "r"))]);
    engine.handle_input(t(0), Input::LeaseLost { repo: repo(1, "r") });
    host.run(&mut engine, t(0));
    assert_eq!(
        host.lease_commands().len(),
        1,
        "a lost lease not held is ignored"
    );
}

#[test]
fn without_leases_an_instance_fetches_at_once_and_asks_for_none() {
    let (announcement, state) = fixture();
    let (_engine, host) = instance(config(), &announcement, &state);
    assert_eq!(fetches_of(&host), 1);
    assert!(host.lease_commands().is_empty());
}
