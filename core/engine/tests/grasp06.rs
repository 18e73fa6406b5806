//! GRASP-06: PRs pushed to `/prs/<signer>/<identifier>.git`, accepted for repositories not
//! hosted here, and mirrored into the hosted repositories they name.

mod common;

use graspd_core::events::RefName;
use graspd_core::{Arrival, Config, Engine, Input, RefDecision, RefUpdate, RepoKey, Verdict};
use nostr::nips::nip19::ToBech32;

use common::*;

fn grasp06_config() -> Config {
    Config {
        grasp06: true,
        ..config()
    }
}

fn prs_url(signer: u8, id: &str) -> String {
    format!("{ORIGIN}/prs/{}/{id}.git", pk(signer).to_bech32().unwrap())
}

fn prs_repo(signer: u8, id: &str) -> RepoKey {
    RepoKey::prs(pk(signer), ident(id))
}

fn nostr_ref(id: &nostr::event::EventId) -> RefName {
    format!("refs/nostr/{}", id.to_hex())
}

fn push(engine: &mut Engine, host: &mut Host, repo: &RepoKey, name: &RefName, tip: u32) {
    host.give(repo, &[oid(tip)]);
    host.refs
        .entry(repo.clone())
        .or_default()
        .insert(name.clone(), oid(tip));
    engine.handle_input(
        t(0),
        Input::Pushed {
            repo: repo.clone(),
            updates: vec![RefUpdate {
                old: graspd_core::Oid::ZERO,
                new: oid(tip),
                name: name.clone(),
            }],
        },
    );
    host.run(engine, t(0));
}

#[test]
fn a_pr_for_a_repository_not_hosted_here_is_taken_only_with_a_prs_clone_url() {
    let mut kit = Kit::default();
    let elsewhere = repo(1, "elsewhere");
    for (grasp06, clone, taken) in [
        (false, prs_url(5, "elsewhere"), false),
        (true, "https://other.example/x.git".to_owned(), false),
        (true, prs_url(6, "elsewhere"), false), // another signer's namespace
        (true, prs_url(5, "elsewhere"), true),
    ] {
        let mut engine = Engine::new(Config {
            grasp06,
            ..config()
        });
        let mut host = Host::default();
        let pr = kit.pr(5, &elsewhere, oid(3), &[&clone]);
        let verdict = publish(&mut engine, &mut host, t(0), pr, Arrival::Published);
        assert_eq!(
            matches!(verdict, Verdict::Waiting(_)),
            taken,
            "grasp06={grasp06} clone={clone}: {verdict:?}"
        );
    }
}

#[test]
fn pushes_to_prs_take_only_refs_nostr_and_check_a_known_tip() {
    let mut kit = Kit::default();
    let mut engine = Engine::new(grasp06_config());
    let mut host = Host::default();
    let pr = kit.pr(5, &repo(1, "x"), oid(3), &[&prs_url(5, "x")]);
    publish(&mut engine, &mut host, t(0), pr.clone(), Arrival::Published);
    let update = |name: &str, new: u32| RefUpdate {
        old: graspd_core::Oid::ZERO,
        new: oid(new),
        name: name.to_owned(),
    };
    let decisions = engine.decide_push(
        &prs_repo(5, "x"),
        &Default::default(),
        &[
            update(&nostr_ref(&pr.id), 3),
            update("refs/heads/main", 3),
            update(&nostr_ref(&pr.id), 4),
            update(&format!("refs/nostr/{}", "ab".repeat(32)), 9), // unknown yet: placeholder
        ],
    );
    assert_eq!(decisions[0], RefDecision::Accept);
    assert!(
        matches!(&decisions[1], RefDecision::Reject(r) if r.contains("only refs/nostr")),
        "{decisions:?}"
    );
    assert!(matches!(&decisions[2], RefDecision::Reject(r) if r.contains("tip")));
    assert_eq!(decisions[3], RefDecision::Accept);
}

#[test]
fn a_pr_released_from_prs_is_mirrored_into_the_hosted_repository_it_names() {
    let mut kit = Kit::default();
    let mut engine = Engine::new(grasp06_config());
    engine.restore_accepted(&kit.announcement(1, "r", &[], &[]));
    let mut host = Host::default();
    let pr = kit.pr(5, &repo(1, "r"), oid(3), &[&prs_url(5, "r")]);
    assert!(matches!(
        publish(&mut engine, &mut host, t(0), pr.clone(), Arrival::Published),
        Verdict::Waiting(_)
    ));
    assert!(host.released().is_empty());

    push(
        &mut engine,
        &mut host,
        &prs_repo(5, "r"),
        &nostr_ref(&pr.id),
        3,
    );

    assert_eq!(host.released(), [pr.id]);
    assert_eq!(host.refs[&repo(1, "r")][&nostr_ref(&pr.id)], oid(3));
    assert!(host.objects[&repo(1, "r")].contains(&oid(3)));
}

#[test]
fn a_pr_pushed_to_the_hosted_repository_never_appears_under_prs() {
    let mut kit = Kit::default();
    let mut engine = Engine::new(grasp06_config());
    engine.restore_accepted(&kit.announcement(1, "r", &[], &[]));
    let mut host = Host::default();
    let pr = kit.pr(5, &repo(1, "r"), oid(3), &[&prs_url(5, "r")]);
    publish(&mut engine, &mut host, t(0), pr.clone(), Arrival::Published);

    push(&mut engine, &mut host, &repo(1, "r"), &nostr_ref(&pr.id), 3);

    assert_eq!(host.released(), [pr.id]);
    assert!(!host.refs.contains_key(&prs_repo(5, "r")));
    assert!(!host.objects.contains_key(&prs_repo(5, "r")));
}

#[test]
fn a_prs_pr_for_a_repository_not_hosted_is_released_with_nothing_to_mirror() {
    let mut kit = Kit::default();
    let mut engine = Engine::new(grasp06_config());
    let mut host = Host::default();
    let pr = kit.pr(
        5,
        &repo(1, "elsewhere"),
        oid(3),
        &[&prs_url(5, "elsewhere")],
    );
    publish(&mut engine, &mut host, t(0), pr.clone(), Arrival::Published);
    push(
        &mut engine,
        &mut host,
        &prs_repo(5, "elsewhere"),
        &nostr_ref(&pr.id),
        3,
    );
    assert_eq!(host.released(), [pr.id]);
    assert!(!host.refs.contains_key(&repo(1, "elsewhere")));
}

#[test]
fn a_prs_tip_that_differs_from_the_event_is_deleted_and_blocks_the_release() {
    let mut kit = Kit::default();
    let mut engine = Engine::new(grasp06_config());
    engine.restore_accepted(&kit.announcement(1, "r", &[], &[]));
    let mut host = Host::default();
    let pr = kit.pr(5, &repo(1, "r"), oid(3), &[&prs_url(5, "r")]);
    // The tip arrives first, then the event says another commit.
    push(
        &mut engine,
        &mut host,
        &prs_repo(5, "r"),
        &nostr_ref(&pr.id),
        4,
    );
    publish(&mut engine, &mut host, t(0), pr.clone(), Arrival::Published);
    assert!(host.released().is_empty());
    assert!(!host.refs[&prs_repo(5, "r")].contains_key(&nostr_ref(&pr.id)));
    assert!(!host
        .refs
        .get(&repo(1, "r"))
        .is_some_and(|r| r.contains_key(&nostr_ref(&pr.id))));
}

#[test]
fn a_held_refs_nostr_ref_cannot_be_moved_by_a_push() {
    let mut engine = Engine::new(grasp06_config());
    let name = format!("refs/nostr/{}", "cd".repeat(32));
    let current = std::collections::BTreeMap::from([(name.clone(), oid(3))]);
    for repo in [repo(1, "r"), prs_repo(5, "r")] {
        let decisions = engine.decide_push(
            &repo,
            &current,
            &[
                RefUpdate {
                    old: oid(3),
                    new: oid(4),
                    name: name.clone(),
                },
                RefUpdate {
                    old: oid(3),
                    new: oid(3),
                    name: name.clone(),
                },
            ],
        );
        assert!(
            matches!(&decisions[0], RefDecision::Reject(r) if r.contains("already holds")),
            "{repo}: {decisions:?}"
        );
        assert_eq!(decisions[1], RefDecision::Accept, "{repo}");
    }
    engine.handle_timeout(t(0));
}
