//! The operator's lists changing while the engine runs (`Input::PolicyChanged`): waiting
//! events the new lists refuse are withdrawn, pushes to a denied repository are refused, and
//! lifting a deny lets pushes in again.

mod common;

use std::collections::BTreeSet;

use common::*;
use graspd_core::policy::{AuthorEntry, Policy, RepoEntry};
use graspd_core::{
    Arrival, Engine, EngineEvent, EventId, Input, RefDecision, RefUpdate, Ticket, Verdict,
};
use nostr::nips::nip19::ToBech32;

fn npub(n: u8) -> String {
    pk(n).to_bech32().unwrap()
}

fn policy(deny_authors: &[String], deny_repos: &[String], allow_repos: &[String]) -> Policy {
    let entries =
        |list: &[String]| -> Vec<RepoEntry> { list.iter().map(|e| e.parse().unwrap()).collect() };
    let authors: Vec<AuthorEntry> = deny_authors.iter().map(|a| a.parse().unwrap()).collect();
    Policy::new(authors, entries(deny_repos), entries(allow_repos))
}

fn change(engine: &mut Engine, host: &mut Host, now: graspd_core::Time, policy: Policy) {
    engine.handle_input(now, Input::PolicyChanged { policy });
    host.run(engine, now);
}

fn withdrawn(host: &Host) -> BTreeSet<EventId> {
    host.events
        .iter()
        .filter_map(|e| match e {
            EngineEvent::Withdrawn { id } => Some(*id),
            _ => None,
        })
        .collect()
}

/// An engine serving `/<1>/r.git` (maintainer 2) with a state of 1, a state of 2 and a PR of
/// 3 waiting for it, and an announcement of `/<4>/s.git` waiting for its data.
struct Waiting {
    engine: Engine,
    host: Host,
    owner_state: EventId,
    maintainer_state: EventId,
    pr: EventId,
    announcement: EventId,
}

impl Waiting {
    fn change(&mut self, now: graspd_core::Time, policy: Policy) {
        change(&mut self.engine, &mut self.host, now, policy);
    }
}

fn waiting() -> Waiting {
    let mut kit = Kit::default();
    let mut engine = Engine::new(config());
    let mut host = Host::default();
    engine.restore_accepted(&kit.announcement(1, "r", &[2], &[]));
    let owner_state = kit.state(1, "r", 2000, &[("refs/heads/main", oid(1))]);
    let maintainer_state = kit.state(2, "r", 2001, &[("refs/heads/main", oid(2))]);
    let pr = kit.pr(3, &repo(1, "r"), oid(3), &[]);
    let announcement = kit.announcement(4, "s", &[], &[]);
    let ids = [owner_state.id, maintainer_state.id, pr.id, announcement.id];
    for event in [owner_state, maintainer_state, pr, announcement] {
        let verdict = publish(&mut engine, &mut host, t(0), event, Arrival::Published);
        assert!(matches!(verdict, Verdict::Waiting(_)), "{verdict:?}");
    }
    Waiting {
        engine,
        host,
        owner_state: ids[0],
        maintainer_state: ids[1],
        pr: ids[2],
        announcement: ids[3],
    }
}

#[test]
fn a_denied_author_s_waiting_events_are_withdrawn_and_no_one_else_s() {
    let mut w = waiting();
    w.change(t(10), policy(&[npub(3)], &[], &[]));
    assert_eq!(withdrawn(&w.host), BTreeSet::from([w.pr]));
    let stats = w.engine.stats();
    assert_eq!((stats.waiting.prs, stats.waiting.states), (0, 2));
    assert_eq!(stats.waiting.announcements, 1);
    assert_eq!(stats.withdrawn, 1);
}

#[test]
fn a_denied_repository_s_waiting_events_are_withdrawn_whoever_published_them() {
    let mut w = waiting();
    let entry = format!("{}/r", npub(1));
    w.change(t(10), policy(&[], &[entry], &[]));
    // The owner's state is for `<1>/r`, the PR names it; the maintainer's state is for the
    // maintainer's own `<2>/r`, which is not denied.
    assert_eq!(withdrawn(&w.host), BTreeSet::from([w.owner_state, w.pr]));
    assert_eq!(w.engine.stats().waiting.states, 1);

    // By identifier: everyone's `r`.
    w.change(t(11), policy(&[], &["r".into()], &[]));
    assert!(withdrawn(&w.host).contains(&w.maintainer_state));
    assert_eq!(w.engine.stats().waiting.states, 0);
    assert_eq!(w.engine.stats().waiting.announcements, 1);
}

#[test]
fn an_allow_list_withdraws_waiting_announcements_it_does_not_name_and_nothing_else() {
    let mut w = waiting();
    w.change(t(10), policy(&[], &[], &[npub(1)]));
    assert_eq!(withdrawn(&w.host), BTreeSet::from([w.announcement]));
    let stats = w.engine.stats();
    assert_eq!((stats.waiting.states, stats.waiting.prs), (2, 1));
    // The withdrawn announcement's repository was created for it, and nothing else holds it.
    assert!(w.host.commands.iter().any(|c| matches!(
        c,
        graspd_core::Command::RemoveRepo { repo: r } if *r == repo(4, "s")
    )));
}

#[test]
fn precedence_is_author_deny_then_repo_deny_then_allow() {
    // The allow list names `<1>/r`, but its owner is denied: the owner's state goes.
    let mut w = waiting();
    let entry = format!("{}/r", npub(1));
    w.change(t(10), policy(&[npub(1)], &[], std::slice::from_ref(&entry)));
    assert!(withdrawn(&w.host).contains(&w.owner_state));
    // Denied and allowed at once: the deny wins, for the state and for pushes.
    let mut w = waiting();
    let both = std::slice::from_ref(&entry);
    w.change(t(10), policy(&[], both, both));
    assert!(withdrawn(&w.host).contains(&w.owner_state));
    assert!(matches!(push_main(&w.engine, 1), RefDecision::Reject(_)));
}

#[test]
fn an_event_stored_while_the_lists_changed_is_withdrawn_when_reported_durable() {
    let mut kit = Kit::default();
    let mut engine = Engine::new(config());
    let mut host = Host::default();
    engine.restore_accepted(&kit.announcement(1, "r", &[], &[]));
    let pr = kit.pr(3, &repo(1, "r"), oid(3), &[]);
    let id = pr.id;
    let Verdict::Waiting(ticket) = engine.handle_event(t(0), pr, Arrival::Published) else {
        panic!("not waiting");
    };
    change(&mut engine, &mut host, t(1), policy(&[npub(3)], &[], &[]));
    assert!(
        withdrawn(&host).is_empty(),
        "not durable yet: nothing to drop"
    );
    report(&mut engine, &mut host, ticket);
    assert_eq!(withdrawn(&host), BTreeSet::from([id]));
    assert_eq!(engine.stats().waiting.prs, 0);
    assert_eq!(engine.stats().admissions_pending, 0);
}

fn report(engine: &mut Engine, host: &mut Host, ticket: Ticket) {
    engine.handle_input(t(2), Input::Persisted { ticket });
    host.run(engine, t(2));
}

fn push_main(engine: &Engine, to: u32) -> RefDecision {
    let update = RefUpdate {
        old: graspd_core::Oid::ZERO,
        new: oid(to),
        name: "refs/heads/main".into(),
    };
    let decisions = engine.decide_push(&repo(1, "r"), &Default::default(), &[update]);
    decisions.into_iter().next().unwrap()
}

#[test]
fn pushes_to_a_denied_repository_are_refused_until_the_deny_is_lifted() {
    let mut kit = Kit::default();
    let mut engine = Engine::new(config());
    let mut host = Host::default();
    engine.restore_accepted(&kit.announcement(1, "r", &[], &[]));
    let entry = format!("{}/r", npub(1));
    let denials = [policy(&[], &[entry], &[]), policy(&[npub(1)], &[], &[])];
    for (n, denied) in denials.into_iter().enumerate() {
        let at = 10 * n as u64;
        let state = kit.state(1, "r", 3000 + at, &[("refs/heads/main", oid(1))]);
        publish(&mut engine, &mut host, t(at), state, Arrival::Published);
        assert_eq!(push_main(&engine, 1), RefDecision::Accept);
        change(&mut engine, &mut host, t(at + 1), denied);
        assert_eq!(
            push_main(&engine, 1),
            RefDecision::Reject("blocked: not accepted here".into())
        );
        // Lifted: the state the deny withdrew is published again, and pushed as usual.
        change(&mut engine, &mut host, t(at + 2), Policy::default());
        let again = kit.state(1, "r", 3001 + at, &[("refs/heads/main", oid(1))]);
        publish(&mut engine, &mut host, t(at + 3), again, Arrival::Published);
        assert_eq!(push_main(&engine, 1), RefDecision::Accept);
    }
    // An allow list that does not name a hosted repository leaves its pushes alone.
    change(&mut engine, &mut host, t(100), policy(&[], &[], &[npub(9)]));
    assert_eq!(push_main(&engine, 1), RefDecision::Accept);
}
