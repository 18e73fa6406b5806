//! The instances world: several engines with sync leases over one shared store
//! (`graspd_sim::instances`).

use graspd_sim::instances::{self, Plant};
use graspd_sim::instances_cli::check_determinism;
use graspd_sim::trace::TraceMode;
use graspd_sim::FailureKind;

#[test]
fn a_swarm_of_seeds_keeps_every_lease_safe_and_serves_everything() {
    let (mut fetches, mut overlaps, mut crashes, mut deleted, mut late) = (0, 0, 0, 0, 0);
    for seed in 0..400 {
        let outcome = instances::run(seed, TraceMode::Tail, Plant::None);
        assert!(
            outcome.failure.is_none(),
            "{}",
            instances::summary(&outcome)
        );
        fetches += outcome.fetches;
        overlaps += outcome.overlaps;
        crashes += outcome.crashes;
        deleted += outcome.deleted;
        late += outcome.params.late_states;
    }
    // The worlds do what they are for: fetches, crashes, and fetches outliving their lease.
    assert!(fetches > 2_000, "{fetches} fetches");
    assert!(crashes > 200, "{crashes} crashes");
    assert!(overlaps > 0, "no fetch outlived its lease");
    // States published mid-run, and deleted while they waited.
    assert!(late > 100, "{late} states published mid-run");
    assert!(deleted > 20, "{deleted} states deleted while waiting");
    println!("{fetches} fetches, {crashes} crashes, {overlaps} overlaps, {late} late states, {deleted} deleted");
}

#[test]
fn a_seed_replays_exactly() {
    for seed in [0, 7, 47, 10_073] {
        check_determinism(seed, Plant::None).unwrap();
    }
}

/// Each planted fault must be caught, by a safety check, within the first seeds.
fn caught(plant: Plant) -> u64 {
    let seed = (0..3000)
        .find(|seed| {
            let outcome = instances::run(*seed, TraceMode::Quiet, plant);
            matches!(outcome.failure, Some((FailureKind::Safety, _)))
        })
        .unwrap_or_else(|| panic!("{plant:?} was never caught"));
    println!("{plant:?} caught at seed {seed}");
    seed
}

#[test]
fn a_book_that_keeps_a_lease_past_its_validity_is_caught() {
    caught(Plant::BookKeepsLeaseTooLong);
}

#[test]
fn a_keeper_that_ignores_the_table_is_caught() {
    caught(Plant::KeeperIgnoresTable);
}

#[test]
fn a_keeper_that_waits_for_a_slow_statement_to_count_a_lease_lost_is_caught() {
    caught(Plant::KeeperWaitsForStatement);
}

/// An instance that never hears that a state another one dropped is gone still aligns the
/// repository to it once its data arrives.
#[test]
fn an_instance_deaf_to_events_gone_elsewhere_is_caught() {
    caught(Plant::GoneNotHeard);
}
