//! Two-phase admission: the engine acts on an admitted event only once the host reports it
//! durable, and forgets it entirely when the host's store write failed.

mod common;

use common::*;
use graspd_core::{
    Arrival, ClientAddress, Command, Config, Engine, EngineEvent, Input, Refusal, Submission,
    Ticket, Verdict,
};

/// An engine with an accepted, served repository `/<1>/r.git`.
fn served(kit: &mut Kit) -> (Engine, Host) {
    let mut engine = Engine::new(config());
    engine.restore_accepted(&kit.announcement(1, "r", &[], &[]));
    (engine, Host::default())
}

fn ticket(verdict: Verdict) -> Ticket {
    match verdict {
        Verdict::Waiting(ticket) | Verdict::Accepted(ticket) => ticket,
        other => panic!("not admitted: {other:?}"),
    }
}

/// The race a host hits when its store write is slower than other work: a PR whose commit is
/// here is admitted, and before the host reports it durable another PR's release runs to the
/// end. The first PR must not be inspected, applied or released in that window.
#[test]
fn nothing_runs_for_an_admitted_event_until_the_host_reports_it_durable() {
    let mut kit = Kit::default();
    let (mut engine, mut host) = served(&mut kit);
    host.give(&repo(1, "r"), &[oid(3)]);
    let slow = kit.pr(5, &repo(1, "r"), oid(3), &[]);
    let quick = kit.pr(6, &repo(1, "r"), oid(3), &[]);

    let slow_ticket = ticket(engine.handle_event(t(0), slow.clone(), Arrival::Published));
    assert_eq!(engine.poll_command(), None, "no command before Persisted");
    assert_eq!(engine.poll_event(), None, "no event before Persisted");
    assert_eq!(engine.poll_timeout(), None, "no timer before Persisted");
    assert_eq!(engine.stats().waiting.prs, 0);
    assert_eq!(engine.stats().admissions_pending, 1);

    // Meanwhile another PR is admitted, stored, inspected, applied and released.
    publish(
        &mut engine,
        &mut host,
        t(1),
        quick.clone(),
        Arrival::Published,
    );
    assert_eq!(
        host.released(),
        [quick.id],
        "only the durable PR is released"
    );

    engine.handle_input(
        t(2),
        Input::Persisted {
            ticket: slow_ticket,
        },
    );
    assert_eq!(engine.stats().admissions_pending, 0);
    host.run(&mut engine, t(2));
    assert_eq!(host.released(), [quick.id, slow.id]);
}

/// A failed store write leaves the engine as if the event had never arrived: nothing waits,
/// nothing is scheduled, and the same event is admitted afresh when it comes again.
#[test]
fn a_failed_store_write_forgets_the_event() {
    let mut kit = Kit::default();
    let (mut engine, mut host) = served(&mut kit);
    let st = kit.state(1, "r", 2000, &[("refs/heads/main", oid(1))]);
    let failed = ticket(engine.handle_event(t(0), st.clone(), Arrival::Published));
    engine.handle_input(t(1), Input::PersistFailed { ticket: failed });
    host.run(&mut engine, t(1));
    assert!(host.commands.is_empty() && host.events.is_empty());
    assert_eq!(engine.poll_timeout(), None);
    assert_eq!(engine.stats().waiting.states, 0);
    assert_eq!(engine.stats().admissions_pending, 0);
    // A late report for the ticket changes nothing.
    engine.handle_input(t(2), Input::Persisted { ticket: failed });
    assert_eq!(engine.stats().waiting.states, 0);

    assert!(matches!(
        publish(&mut engine, &mut host, t(3), st, Arrival::Published),
        Verdict::Waiting(_)
    ));
    assert_eq!(engine.stats().waiting.states, 1);
}

/// An announcement whose write failed creates no repository; a deletion whose write failed
/// removes nothing.
#[test]
fn failed_writes_of_announcements_and_deletions_change_nothing() {
    let mut kit = Kit::default();
    let mut engine = Engine::new(config());
    let mut host = Host::default();
    let ann = kit.announcement(1, "new", &[], &[]);
    let failed = ticket(engine.handle_event(t(0), ann, Arrival::Published));
    engine.handle_input(t(0), Input::PersistFailed { ticket: failed });
    host.run(&mut engine, t(0));
    assert!(
        !host
            .commands
            .iter()
            .any(|c| matches!(c, Command::CreateRepo { .. })),
        "{:?}",
        host.commands
    );
    assert_eq!(engine.stats().waiting.announcements, 0);

    let (mut engine, mut host) = served(&mut kit);
    let st = kit.state(1, "r", 2000, &[("refs/heads/main", oid(1))]);
    publish(&mut engine, &mut host, t(0), st.clone(), Arrival::Published);
    let delete = kit.deletion(1, &[st.id], &[]);
    let failed = ticket(engine.handle_event(t(1), delete.clone(), Arrival::Published));
    engine.handle_input(t(1), Input::PersistFailed { ticket: failed });
    host.run(&mut engine, t(1));
    assert_eq!(
        engine.stats().waiting.states,
        1,
        "deleted without a stored deletion"
    );
    assert!(!host
        .events
        .iter()
        .any(|e| matches!(e, EngineEvent::Deleted { .. })));
    // Stored this time: the state goes.
    publish(&mut engine, &mut host, t(2), delete, Arrival::Published);
    assert_eq!(engine.stats().waiting.states, 0);
}

/// An expired event published again is remembered as expired until its new admission is
/// durable: a failed write does not clear the memory.
#[test]
fn a_failed_republish_keeps_the_expired_memory() {
    let mut kit = Kit::default();
    let (mut engine, mut host) = served(&mut kit);
    let st = kit.state(1, "r", 2000, &[("refs/heads/main", oid(1))]);
    publish(&mut engine, &mut host, t(0), st.clone(), Arrival::Published);
    advance(&mut engine, &mut host, t(30 * 60 * 1000));
    assert_eq!(engine.stats().waiting.states, 0);
    let later = t(30 * 60 * 1000 + 1);
    let failed = ticket(engine.handle_event(later, st.clone(), Arrival::Published));
    engine.handle_input(later, Input::PersistFailed { ticket: failed });
    assert!(matches!(
        engine.handle_event(later, st, Arrival::Synced),
        Verdict::Rejected(m) if m.starts_with("blocked:")
    ));
}

/// Admissions not yet durable count toward `max_waiting`; a failed one frees its place.
#[test]
fn pending_admissions_count_toward_the_waiting_cap() {
    let mut kit = Kit::default();
    let mut engine = Engine::new(Config {
        max_waiting: 2,
        ..config()
    });
    engine.restore_accepted(&kit.announcement(1, "r", &[], &[]));
    let first = ticket(engine.handle_event(
        t(0),
        kit.state(1, "r", 2000, &[("refs/heads/main", oid(1))]),
        Arrival::Published,
    ));
    ticket(engine.handle_event(
        t(0),
        kit.state(1, "r", 2001, &[("refs/heads/main", oid(2))]),
        Arrival::Published,
    ));
    let third = kit.state(1, "r", 2002, &[("refs/heads/main", oid(3))]);
    assert!(matches!(
        engine.handle_event(t(0), third.clone(), Arrival::Published),
        Verdict::Refused(Refusal::Waiting, m) if m.starts_with("rate-limited:")
    ));
    engine.handle_input(t(1), Input::PersistFailed { ticket: first });
    assert!(matches!(
        engine.handle_event(t(1), third, Arrival::Published),
        Verdict::Waiting(_)
    ));
}

/// One author, or one client address however many keys it signs with, has at most its share
/// of purgatory waiting; admissions not yet durable count, a failed write gives the share
/// back, and other addresses and events learned from relays are not held to it.
#[test]
fn one_author_or_one_address_cannot_fill_purgatory() {
    let mut kit = Kit::default();
    let mut engine = Engine::new(Config {
        max_waiting_per_author: 2,
        max_waiting_per_address: 3,
        ..config()
    });
    engine.restore_accepted(&kit.announcement(1, "r", &[], &[]));
    let r = repo(1, "r");
    let from = |n| Submission::published_from(Some(ClientAddress(n)));
    let refused_by = |verdict: Verdict, limit: Refusal, says: &str| {
        matches!(&verdict, Verdict::Refused(l, m)
            if *l == limit && m.starts_with("rate-limited: ") && m.contains(says))
    };

    // Author 5, from two addresses: its third PR is refused, whichever address sends it.
    let first = ticket(engine.handle_event(t(0), kit.pr(5, &r, oid(1), &[]), from(1)));
    let second = ticket(engine.handle_event(t(0), kit.pr(5, &r, oid(2), &[]), from(2)));
    engine.handle_input(t(0), Input::Persisted { ticket: first });
    let third = kit.pr(5, &r, oid(3), &[]);
    let verdict = engine.handle_event(t(0), third.clone(), from(3));
    assert!(refused_by(
        verdict,
        Refusal::WaitingPerAuthor,
        "2 events of this author"
    ));
    engine.handle_input(t(0), Input::PersistFailed { ticket: second });
    admit(&mut engine, t(0), third, from(3));

    // Fresh keys from address 1: three events in all wait, the fourth is refused.
    for author in [6, 7] {
        let pr = kit.pr(author, &r, oid(1), &[]);
        assert!(matches!(
            admit(&mut engine, t(0), pr, from(1)),
            Verdict::Waiting(_)
        ));
    }
    let fourth = kit.pr(8, &r, oid(1), &[]);
    let verdict = engine.handle_event(t(0), fourth.clone(), from(1));
    assert!(refused_by(
        verdict,
        Refusal::WaitingPerAddress,
        "3 events from your address"
    ));

    // Another address, and a relay, still get theirs taken.
    assert!(matches!(
        admit(&mut engine, t(0), fourth, from(4)),
        Verdict::Waiting(_)
    ));
    let synced = kit.pr(9, &r, oid(1), &[]);
    assert!(matches!(
        admit(&mut engine, t(0), synced, Arrival::Synced),
        Verdict::Waiting(_)
    ));
    assert_eq!(engine.stats().waiting.prs, 6);
}

/// The same event admitted twice at once (two connections) is taken in once, whichever
/// write finishes first, and still waits if one of the writes failed.
#[test]
fn an_event_admitted_twice_at_once_is_taken_in_once() {
    let mut kit = Kit::default();
    let (mut engine, mut host) = served(&mut kit);
    let st = kit.state(1, "r", 2000, &[("refs/heads/main", oid(1))]);
    let a = ticket(engine.handle_event(t(0), st.clone(), Arrival::Published));
    let b = ticket(engine.handle_event(t(0), st.clone(), Arrival::Published));
    assert_ne!(a, b);
    engine.handle_input(t(1), Input::PersistFailed { ticket: a });
    engine.handle_input(t(1), Input::Persisted { ticket: b });
    host.run(&mut engine, t(1));
    assert_eq!(engine.stats().waiting.states, 1);
    assert_eq!(host.inspects_of(&repo(1, "r")), 1);
    assert_eq!(
        engine.handle_event(t(2), st, Arrival::Published),
        Verdict::Duplicate
    );
}
