//! GRASP-05 archive mode: the archive list lets in announcements that do not list this
//! server, in the lists' precedence (author deny > repository deny > allow list > archive >
//! the usual rules); an archived repository's data is fetched from the servers it lists, and
//! pushes to it are refused unless the operator allows them.

mod common;

use std::collections::BTreeSet;

use common::*;
use graspd_core::policy::{AuthorEntry, Policy, RepoEntry, READ_ONLY_ARCHIVE};
use graspd_core::{Arrival, Command, Engine, Input, RefDecision, RefUpdate, Verdict};
use nostr::event::Event;
use nostr::nips::nip19::ToBech32;

const ELSEWHERE: &str = "https://elsewhere.example";

fn npub(n: u8) -> String {
    pk(n).to_bech32().unwrap()
}

fn entries(list: &[String]) -> Vec<RepoEntry> {
    list.iter().map(|e| e.parse().unwrap()).collect()
}

fn lists(deny_authors: &[String], deny_repos: &[String], allow_repos: &[String]) -> Policy {
    let authors: Vec<AuthorEntry> = deny_authors.iter().map(|a| a.parse().unwrap()).collect();
    Policy::new(authors, entries(deny_repos), entries(allow_repos))
}

fn archiving(policy: Policy, archive: &[String]) -> Policy {
    policy.archiving(entries(archive))
}

/// An announcement of `/<author>/<id>.git` that lists only another server.
fn announced_elsewhere(kit: &mut Kit, author: u8, id: &str) -> Event {
    let clone = format!("{ELSEWHERE}/{}/{id}.git", npub(author));
    let tags = vec![
        vec!["d".to_string(), id.to_string()],
        vec!["clone".to_string(), clone],
        vec!["relays".to_string(), "wss://elsewhere.example".to_string()],
    ];
    kit.event(author, 30617, 1000, &tags)
}

fn engine_with(policy: Policy) -> Engine {
    Engine::new(graspd_core::Config { policy, ..config() })
}

fn is_refused_for_not_listing_us(verdict: &Verdict) -> bool {
    matches!(verdict, Verdict::Rejected(m) if m.contains("only hosts repositories whose announcement lists it"))
}

#[test]
fn an_archived_announcement_is_taken_although_it_does_not_list_this_server() {
    let mut kit = Kit::default();
    let mut host = Host::default();
    let mut plain = engine_with(Policy::default());
    let verdict = publish(
        &mut plain,
        &mut host,
        t(0),
        announced_elsewhere(&mut kit, 1, "r"),
        Arrival::Published,
    );
    assert!(is_refused_for_not_listing_us(&verdict), "{verdict:?}");

    let entry = format!("{}/r", npub(1));
    let mut archive = engine_with(archiving(Policy::default(), &[entry]));
    let verdict = publish(
        &mut archive,
        &mut host,
        t(0),
        announced_elsewhere(&mut kit, 1, "r"),
        Arrival::Published,
    );
    assert!(matches!(verdict, Verdict::Waiting(_)), "{verdict:?}");
    assert!(host
        .commands
        .iter()
        .any(|c| matches!(c, Command::CreateRepo { repo: r } if *r == repo(1, "r"))));
    // Another repository of the same owner keeps the usual rules.
    let other = announced_elsewhere(&mut kit, 1, "s");
    let verdict = publish(&mut archive, &mut host, t(0), other, Arrival::Published);
    assert!(is_refused_for_not_listing_us(&verdict), "{verdict:?}");
}

#[test]
fn archive_precedence_is_author_deny_then_repo_deny_then_allow_then_archive() {
    let entry = format!("{}/r", npub(1));
    let archive = std::slice::from_ref(&entry);
    // Each list above the archive list, set so it refuses `<1>/r`, wins over it; an allow
    // list naming it lets the archive list decide.
    let cases = [
        (lists(&[npub(1)], &[], &[]), false),
        (lists(&[], archive, &[]), false),
        (lists(&[], &[], &[npub(2)]), false),
        (lists(&[], &[], &[npub(1)]), true),
        (Policy::default(), true),
    ];
    for (above, taken) in cases {
        let mut kit = Kit::default();
        let mut host = Host::default();
        let policy = archiving(above, archive);
        let mut engine = engine_with(policy.clone());
        let event = announced_elsewhere(&mut kit, 1, "r");
        // The host asks the lists first (`Policy::check`), then the engine decides.
        let admitted = policy.check(&event, 128).is_ok()
            && matches!(
                publish(&mut engine, &mut host, t(0), event, Arrival::Published),
                Verdict::Waiting(_)
            );
        assert_eq!(admitted, taken, "{policy:?}");
    }
}

#[test]
fn an_archived_repository_s_state_is_fetched_from_the_servers_its_announcement_lists() {
    let mut kit = Kit::default();
    let mut host = Host::default();
    let entry = format!("{}/r", npub(1));
    let mut engine = engine_with(archiving(Policy::default(), &[entry]));
    let announcement = announced_elsewhere(&mut kit, 1, "r");
    let state = kit.state(1, "r", 2000, &[("refs/heads/main", oid(1))]);
    let ids = [announcement.id, state.id];
    for event in [announcement, state] {
        let verdict = publish(&mut engine, &mut host, t(0), event, Arrival::Synced);
        assert!(matches!(verdict, Verdict::Waiting(_)), "{verdict:?}");
    }
    advance(&mut engine, &mut host, t(60_000));
    let fetch = host
        .answer_fetch(&mut engine, t(60_000), &BTreeSet::from([oid(1)]))
        .expect("a fetch was planned");
    let Command::Fetch { url, into, .. } = fetch else {
        unreachable!()
    };
    assert!(url.starts_with(ELSEWHERE), "{url}");
    assert_eq!(into, repo(1, "r"));
    let released: BTreeSet<_> = host.released().into_iter().collect();
    assert_eq!(released, BTreeSet::from(ids));
    assert_eq!(
        host.refs[&repo(1, "r")].get("refs/heads/main").copied(),
        Some(oid(1))
    );
}

fn push_main(engine: &Engine) -> RefDecision {
    let update = RefUpdate {
        old: graspd_core::Oid::ZERO,
        new: oid(1),
        name: "refs/heads/main".into(),
    };
    let decisions = engine.decide_push(&repo(1, "r"), &Default::default(), &[update]);
    decisions.into_iter().next().unwrap()
}

#[test]
fn pushes_to_an_archived_repository_are_refused_unless_read_only_is_off() {
    let entry = format!("{}/r", npub(1));
    let policy = archiving(Policy::default(), &[entry]);
    for read_only in [true, false] {
        let mut kit = Kit::default();
        let mut host = Host::default();
        let mut engine = Engine::new(graspd_core::Config {
            policy: policy.clone(),
            archive_read_only: read_only,
            ..config()
        });
        engine.restore_accepted(&announced_elsewhere(&mut kit, 1, "r"));
        let state = kit.state(1, "r", 2000, &[("refs/heads/main", oid(1))]);
        publish(&mut engine, &mut host, t(0), state, Arrival::Published);
        let want = if read_only {
            RefDecision::Reject(READ_ONLY_ARCHIVE.into())
        } else {
            RefDecision::Accept
        };
        assert_eq!(push_main(&engine), want, "read_only {read_only}");
    }
    assert!(READ_ONLY_ARCHIVE.starts_with("blocked: "));
}

#[test]
fn a_reload_that_adds_an_archive_entry_takes_the_next_announcement() {
    let mut kit = Kit::default();
    let mut host = Host::default();
    let mut engine = engine_with(Policy::default());
    let refused = publish(
        &mut engine,
        &mut host,
        t(0),
        announced_elsewhere(&mut kit, 1, "r"),
        Arrival::Synced,
    );
    assert!(is_refused_for_not_listing_us(&refused), "{refused:?}");
    let policy = archiving(Policy::default(), &[npub(1)]);
    engine.handle_input(t(1), Input::PolicyChanged { policy });
    host.run(&mut engine, t(1));
    let taken = publish(
        &mut engine,
        &mut host,
        t(2),
        announced_elsewhere(&mut kit, 1, "r"),
        Arrival::Synced,
    );
    assert!(matches!(taken, Verdict::Waiting(_)), "{taken:?}");
    // And taken out again: the next announcement goes back to the usual rules.
    engine.handle_input(
        t(3),
        Input::PolicyChanged {
            policy: Policy::default(),
        },
    );
    let other = announced_elsewhere(&mut kit, 1, "s");
    let verdict = publish(&mut engine, &mut host, t(4), other, Arrival::Synced);
    assert!(is_refused_for_not_listing_us(&verdict), "{verdict:?}");
}
