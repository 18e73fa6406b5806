//! Several engines over one store and one set of repositories: what one instance learns of
//! another's events (`restore_waiting` for a waiting one, `served_elsewhere` for a served one).

mod common;

use common::*;
use graspd_core::{Arrival, Command, Engine, Input, RefDecision, RefUpdate, Verdict};

fn push_main(engine: &Engine, to: u32) -> RefDecision {
    let update = RefUpdate {
        old: graspd_core::Oid::ZERO,
        new: oid(to),
        name: "refs/heads/main".into(),
    };
    engine
        .decide_push(&repo(1, "r"), &Default::default(), &[update])
        .remove(0)
}

#[test]
fn a_push_to_another_instance_is_decided_by_what_it_learned_from_the_first() {
    let mut kit = Kit::default();
    let announcement = kit.announcement(1, "r", &[], &[]);
    let state = kit.state(1, "r", 2000, &[("refs/heads/main", oid(1))]);
    let mut first = Engine::new(config());
    let mut shared = Host::default();
    first.restore_accepted(&announcement);
    assert!(matches!(
        publish(
            &mut first,
            &mut shared,
            t(0),
            state.clone(),
            Arrival::Published
        ),
        Verdict::Waiting(_)
    ));

    let mut second = Engine::new(config());
    assert!(
        matches!(push_main(&second, 1), RefDecision::Reject(_)),
        "knowing neither the repository nor the state, a push is refused"
    );
    second.served_elsewhere(t(5), &announcement);
    second.restore_waiting(t(5), state.clone(), Arrival::Published, secs(600));
    assert_eq!(push_main(&second, 1), RefDecision::Accept);
    assert!(matches!(push_main(&second, 2), RefDecision::Reject(_)));

    // The push lands in the shared repository; the second instance releases the state
    // (and sets HEAD, which the push did not).
    shared
        .refs
        .entry(repo(1, "r"))
        .or_default()
        .insert("refs/heads/main".into(), oid(1));
    shared.give(&repo(1, "r"), &[oid(1)]);
    second.handle_input(
        t(10),
        Input::Pushed {
            repo: repo(1, "r"),
            updates: vec![],
        },
    );
    shared.run(&mut second, t(10));
    assert_eq!(shared.released(), [state.id]);

    // The first hears it was served there: it releases it too, moving no ref.
    let before = shared.commands.len();
    first.served_elsewhere(t(20), &state);
    shared.run(&mut first, t(20));
    let run: Vec<&Command> = shared.commands[before..].iter().collect();
    assert!(
        run.iter().any(|c| matches!(c, Command::Inspect { .. })),
        "{run:?}"
    );
    assert!(
        !run.iter()
            .any(|c| matches!(c, Command::Apply { plan, .. } if !plan.edits.is_empty())),
        "the refs are aligned already: {run:?}"
    );
    assert_eq!(shared.released(), [state.id, state.id]);
    assert_eq!(first.stats().waiting.states, 0);
}

#[test]
fn a_state_served_elsewhere_that_never_waited_here_is_what_the_repository_holds() {
    let mut kit = Kit::default();
    let announcement = kit.announcement(1, "r", &[], &[]);
    let newer = kit.state(1, "r", 3000, &[("refs/heads/main", oid(2))]);
    let older = kit.state(1, "r", 2000, &[("refs/heads/main", oid(1))]);
    let mut engine = Engine::new(config());
    engine.served_elsewhere(t(0), &announcement);
    engine.served_elsewhere(t(0), &newer);
    let mut host = Host::default();
    // An older state no longer waits: the repository holds a newer one.
    let verdict = admit(&mut engine, t(1), older, Arrival::Published);
    assert!(
        !matches!(verdict, Verdict::Waiting(_) | Verdict::Accepted(_)),
        "{verdict:?}"
    );
    host.run(&mut engine, t(1));
    assert!(host.released().is_empty());
}

#[test]
fn a_state_dropped_by_another_instance_stops_waiting_here_and_decides_no_push() {
    let mut kit = Kit::default();
    let announcement = kit.announcement(1, "r", &[], &[]);
    let state = kit.state(1, "r", 2000, &[("refs/heads/main", oid(1))]);
    let mut engine = Engine::new(config());
    engine.served_elsewhere(t(0), &announcement);
    engine.restore_waiting(t(0), state.clone(), Arrival::Published, secs(600));
    assert_eq!(push_main(&engine, 1), RefDecision::Accept);

    // Its author deleted it on the other instance, which dropped it from the store.
    engine.gone_elsewhere(t(5), &state.id);
    let mut host = Host::default();
    host.run(&mut engine, t(5));
    assert_eq!(engine.stats().waiting.states, 0);
    assert!(
        matches!(push_main(&engine, 1), RefDecision::Reject(_)),
        "a push may no longer align the repository to it"
    );
    assert!(
        host.events.is_empty(),
        "nothing to move in the store: {:?}",
        host.events
    );
    // A sync re-delivering it is refused.
    let verdict = admit(&mut engine, t(6), state, Arrival::Synced);
    assert!(
        !matches!(verdict, Verdict::Waiting(_) | Verdict::Accepted(_)),
        "{verdict:?}"
    );
}
