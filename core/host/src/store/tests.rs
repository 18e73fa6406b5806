//! Store tests on real files in a temporary directory, and on a real PostgreSQL server.
//!
//! The tests of what a store does run on both backends (`on_both_backends!`); those about
//! the redb file itself (damage, foreign files, format versions) run on redb alone.

use std::path::{Path, PathBuf};
use std::process::Command;

use nostr::prelude::{
    EventBuilder, Filter, FinalizeEvent, Keys, Kind, SingleLetterTag, Tag, Timestamp,
};

use ::redb::ReadableDatabase;

use super::*;

/// A fresh directory under the system temp dir, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(name: &str) -> TempDir {
        use std::sync::atomic::{AtomicU32, Ordering};
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let dir = std::env::temp_dir().join(format!(
            "graspd-store-{name}-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        TempDir(dir)
    }

    fn file(&self) -> PathBuf {
        self.0.join(FILE_NAME)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn keys(n: u8) -> Keys {
    Keys::parse(&format!("{:064x}", u64::from(n) + 1)).unwrap()
}

fn event(keys: &Keys, kind: u16, created_at: u64, tags: &[&[&str]], content: &str) -> Event {
    let tags = tags.iter().map(|t| Tag::parse(t.iter().copied()).unwrap());
    EventBuilder::new(Kind::from(kind), content)
        .tags(tags)
        .custom_created_at(Timestamp::from(created_at))
        .finalize(keys)
        .unwrap()
}

fn ids(events: &[Event]) -> Vec<EventId> {
    events.iter().map(|e| e.id).collect()
}

fn open(dir: &TempDir) -> Store {
    Store::open(&dir.file()).unwrap()
}

#[path = "../../../../tests/src/postgres_cluster.rs"]
mod postgres_cluster;

/// The backends the conformance tests run on: each behaves exactly like the other.
#[derive(Clone, Copy, Debug)]
enum Backend {
    Redb,
    Postgres,
}

/// Where one test's store lives: a fresh redb file, or a fresh database in the process's
/// throwaway PostgreSQL cluster (`tests/src/postgres_cluster.rs`).
struct Place {
    dir: TempDir,
    database: Option<String>,
}

impl Place {
    /// `None` (the test is skipped, with a message) only for PostgreSQL when it is not
    /// installed outside CI.
    fn new(backend: Backend, name: &str) -> Option<Place> {
        let database = match backend {
            Backend::Redb => None,
            Backend::Postgres => Some(postgres_cluster::required(name)?.database(name)),
        };
        Some(Place {
            dir: TempDir::new(name),
            database,
        })
    }

    fn open(&self) -> Store {
        match &self.database {
            None => Store::open_in(&self.dir.0).unwrap(),
            Some(url) => Store::open_postgres(&PgSettings {
                url: url.clone(),
                connections: 4,
            })
            .unwrap(),
        }
    }
}

/// Each named test body (taking a [`Backend`]) as one `#[test]` per backend.
macro_rules! on_both_backends {
    ($($name:ident),* $(,)?) => {
        mod redb {
            $( #[test] fn $name() { super::$name(super::Backend::Redb) } )*
        }
        mod postgres {
            $( #[test] fn $name() { super::$name(super::Backend::Postgres) } )*
        }
    };
}

on_both_backends!(
    reopening_keeps_served_and_waiting_events,
    the_purgatory_table_is_read_in_pages_in_id_order,
    release_serves_and_leaves_purgatory_in_one_step,
    remove_waiting_reports_presence,
    acknowledged_writes_survive_a_process_abort,
    queries_answer_each_filter_field_newest_first,
    several_filters_are_a_union_and_cap_bounds_each,
    equal_timestamps_order_by_lowest_id,
    long_tag_values_are_found_exactly,
    replaceable_events_keep_only_the_preferred_version,
    replaceable_ties_go_to_the_lowest_id_in_either_order,
    addressable_same_second_versions_serve_the_lowest_id_in_either_order,
    addressable_events_replace_per_identifier,
    deletion_by_id_removes_only_the_authors_events_and_sticks,
    a_stored_deletion_marks_its_waiting_targets_deleted,
    deletion_by_coordinate_removes_versions_up_to_its_time,
    ids_named_by_accepted_threads_are_remembered_until_served,
    the_referenced_index_forgets_the_oldest_beyond_its_capacity,
    the_referenced_index_survives_a_restart_and_follows_releases,
    ids_then_chunks_give_the_query_answer_in_bounded_pieces,
    reconciliation_items_are_the_served_answer,
    writes_in_one_transaction_see_each_other,
    answers_longer_than_a_page_are_whole,
);

fn stored() -> InsertOutcome {
    InsertOutcome::Stored { removed: vec![] }
}

fn reopening_keeps_served_and_waiting_events(backend: Backend) {
    let Some(place) = Place::new(backend, "reopen") else {
        return;
    };
    let alice = keys(1);
    let served = event(&alice, 1, 100, &[&["t", "x"]], "served");
    let waiting = event(&alice, 30618, 200, &[&["d", "repo"]], "waiting");
    {
        let store = place.open();
        assert_eq!(store.insert(&served).unwrap(), stored());
        store
            .put_waiting(&WaitingEvent {
                event: waiting.clone(),
                arrival: Arrival::Synced,
                expires_at: 1_700_000_000,
            })
            .unwrap();
    }
    let store = place.open();
    assert_eq!(store.get(&served.id).unwrap(), Some(served.clone()));
    assert_eq!(
        store.waiting_all().unwrap(),
        vec![WaitingEvent {
            event: waiting.clone(),
            arrival: Arrival::Synced,
            expires_at: 1_700_000_000
        }]
    );
    // Waiting events are never served.
    assert_eq!(
        ids(&store.query(&[Filter::new()], 100).unwrap()),
        vec![served.id]
    );
    assert_eq!(store.served_count().unwrap(), 1);
    assert_eq!(store.waiting_count().unwrap(), 1);
}

fn the_purgatory_table_is_read_in_pages_in_id_order(backend: Backend) {
    let Some(place) = Place::new(backend, "waiting-pages") else {
        return;
    };
    let store = place.open();
    let mut expected: Vec<EventId> = (0..5)
        .map(|i| {
            let state = event(&keys(1), 30618, 10 + i, &[&["d", "repo"]], "");
            store
                .put_waiting(&WaitingEvent {
                    event: state.clone(),
                    arrival: Arrival::Published,
                    expires_at: 5,
                })
                .unwrap();
            state.id
        })
        .collect();
    expected.sort();
    let mut read = Vec::new();
    let mut pages = 0;
    let mut after = None;
    loop {
        let page = store.waiting_page(after.as_ref(), 2).unwrap();
        pages += 1;
        assert!(page.events.len() <= 2);
        read.extend(page.events.iter().map(|w| w.event.id));
        match page.resume_after {
            Some(id) => after = Some(id),
            None => break,
        }
    }
    assert_eq!(read, expected);
    assert_eq!(pages, 3, "two full pages, then the last one ends the table");
    let all: Vec<EventId> = store
        .waiting_all()
        .unwrap()
        .iter()
        .map(|w| w.event.id)
        .collect();
    assert_eq!(all, expected);
}

fn release_serves_and_leaves_purgatory_in_one_step(backend: Backend) {
    let Some(place) = Place::new(backend, "release") else {
        return;
    };
    let store = place.open();
    let state = event(&keys(1), 30618, 10, &[&["d", "repo"]], "");
    store
        .put_waiting(&WaitingEvent {
            event: state.clone(),
            arrival: Arrival::Published,
            expires_at: 5,
        })
        .unwrap();
    assert_eq!(
        store.release_waiting(&state.id).unwrap(),
        Some((state.clone(), stored()))
    );
    assert!(store.waiting_all().unwrap().is_empty());
    assert_eq!(store.get(&state.id).unwrap(), Some(state.clone()));
    assert!(!store.remove_waiting(&state.id).unwrap());
    // Released already: purgatory no longer holds it, and nothing is served twice.
    assert_eq!(store.release_waiting(&state.id).unwrap(), None);
    assert_eq!(store.served_count().unwrap(), 1);
}

fn remove_waiting_reports_presence(backend: Backend) {
    let Some(place) = Place::new(backend, "remove-waiting") else {
        return;
    };
    let store = place.open();
    let pr = event(&keys(1), 1618, 10, &[], "");
    store
        .put_waiting(&WaitingEvent {
            event: pr.clone(),
            arrival: Arrival::Published,
            expires_at: 5,
        })
        .unwrap();
    assert!(store.remove_waiting(&pr.id).unwrap());
    assert!(!store.remove_waiting(&pr.id).unwrap());
}

/// The child half of the crash test: writes, reports each acknowledged write, then dies
/// without any shutdown. Only runs when the parent sets the variable.
#[test]
fn crash_child() {
    let store = match (
        std::env::var("GRASPD_STORE_CRASH_DIR"),
        std::env::var("GRASPD_STORE_CRASH_DATABASE"),
    ) {
        (_, Ok(url)) => Store::open_postgres(&PgSettings {
            url,
            connections: 2,
        })
        .unwrap(),
        (Ok(dir), _) => Store::open_in(Path::new(&dir)).unwrap(),
        _ => return,
    };
    let alice = keys(1);
    for i in 0..20u64 {
        let e = event(&alice, 1, 1000 + i, &[], &format!("note {i}"));
        store.insert(&e).unwrap();
        let w = event(&alice, 1618, 2000 + i, &[], &format!("pr {i}"));
        store
            .put_waiting(&WaitingEvent {
                event: w,
                arrival: Arrival::Published,
                expires_at: 3000 + i,
            })
            .unwrap();
        println!("acked {i}");
    }
    std::process::abort();
}

fn acknowledged_writes_survive_a_process_abort(backend: Backend) {
    let Some(place) = Place::new(backend, "crash") else {
        return;
    };
    let mut child = Command::new(std::env::current_exe().unwrap());
    child.args(["--exact", "store::tests::crash_child", "--nocapture"]);
    match &place.database {
        Some(url) => child.env("GRASPD_STORE_CRASH_DATABASE", url),
        None => child.env("GRASPD_STORE_CRASH_DIR", &place.dir.0),
    };
    let output = child.output().unwrap();
    assert!(!output.status.success(), "the child should have aborted");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let acked = stdout.lines().filter(|l| l.starts_with("acked ")).count();
    assert_eq!(acked, 20, "child output: {stdout}");

    let store = place.open();
    assert_eq!(store.served_count().unwrap(), 20);
    let waiting = store.waiting_all().unwrap();
    assert_eq!(waiting.len(), 20);
    assert!(waiting.iter().all(|w| w.arrival == Arrival::Published));
    let served = store
        .query(&[Filter::new().kind(Kind::from(1))], 100)
        .unwrap();
    assert_eq!(served.len(), 20);
    assert_eq!(served[0].content, "note 19");
}

#[test]
fn a_garbage_file_is_reported_and_left_alone() {
    let dir = TempDir::new("garbage");
    let garbage: Vec<u8> = (0..64 * 1024u32).map(|i| (i * 7 + 3) as u8).collect();
    std::fs::write(dir.file(), &garbage).unwrap();
    let err = Store::open(&dir.file()).unwrap_err();
    assert!(matches!(err, StoreError::Unreadable { .. }), "{err:?}");
    let message = err.to_string();
    assert!(
        message.contains(&dir.file().display().to_string()),
        "{message}"
    );
    assert!(message.contains("move it aside"), "{message}");
    assert_eq!(std::fs::read(dir.file()).unwrap(), garbage);
}

#[test]
fn a_newer_format_is_reported_and_not_downgraded() {
    let dir = TempDir::new("newer");
    drop(open(&dir));
    {
        let db = ::redb::Database::open(dir.file()).unwrap();
        let txn = db.begin_write().unwrap();
        txn.open_table(META)
            .unwrap()
            .insert(META_FORMAT_KEY, FORMAT_VERSION + 1)
            .unwrap();
        txn.commit().unwrap();
    }
    let err = Store::open(&dir.file()).unwrap_err();
    match &err {
        StoreError::NewerFormat {
            found, supported, ..
        } => {
            assert_eq!((*found, *supported), (FORMAT_VERSION + 1, FORMAT_VERSION));
        }
        other => panic!("expected NewerFormat, got {other:?}"),
    }
    assert!(err.to_string().contains("newer graspd"), "{err}");
    // Still the newer version: nothing was rewritten.
    let db = ::redb::Database::open(dir.file()).unwrap();
    let txn = db.begin_read().unwrap();
    let version = txn
        .open_table(META)
        .unwrap()
        .get(META_FORMAT_KEY)
        .unwrap()
        .unwrap()
        .value();
    assert_eq!(version, FORMAT_VERSION + 1);
}

#[test]
fn a_foreign_redb_file_is_refused() {
    let dir = TempDir::new("foreign");
    {
        let db = ::redb::Database::create(dir.file()).unwrap();
        let txn = db.begin_write().unwrap();
        let def: ::redb::TableDefinition<&str, &str> = ::redb::TableDefinition::new("someone_else");
        txn.open_table(def).unwrap().insert("k", "v").unwrap();
        txn.commit().unwrap();
    }
    let err = Store::open(&dir.file()).unwrap_err();
    assert!(
        err.to_string().contains("not a graspd event store"),
        "{err}"
    );
}

#[test]
fn a_second_open_of_the_same_file_is_refused() {
    let dir = TempDir::new("in-use");
    let _first = open(&dir);
    let err = Store::open(&dir.file()).unwrap_err();
    assert!(matches!(err, StoreError::InUse { .. }), "{err:?}");
}

/// Twelve events by two authors over three kinds with tags, created at 1..=12.
fn corpus(store: &Store) -> Vec<Event> {
    let (alice, bob) = (keys(1), keys(2));
    let mut all = Vec::new();
    for i in 1..=12u64 {
        let author = if i % 2 == 0 { &alice } else { &bob };
        let kind = [1, 1621, 1630][(i % 3) as usize];
        let topic = if i <= 6 { "early" } else { "late" };
        let e = event(
            author,
            kind,
            i,
            &[&["t", topic], &["n", &i.to_string()]],
            "",
        );
        all.push(e);
    }
    assert!(store
        .insert_many(&all)
        .unwrap()
        .iter()
        .all(|o| *o == stored()));
    all
}

fn queries_answer_each_filter_field_newest_first(backend: Backend) {
    let Some(place) = Place::new(backend, "filters") else {
        return;
    };
    let store = place.open();
    let all = corpus(&store);
    let by_n = |ns: &[usize]| -> Vec<EventId> { ns.iter().map(|n| all[n - 1].id).collect() };
    let q = |f: Filter| ids(&store.query(&[f], 100).unwrap());

    assert_eq!(
        q(Filter::new()),
        by_n(&[12, 11, 10, 9, 8, 7, 6, 5, 4, 3, 2, 1])
    );
    assert_eq!(q(Filter::new().limit(3)), by_n(&[12, 11, 10]));
    assert_eq!(q(Filter::new().ids([all[2].id, all[4].id])), by_n(&[5, 3]));
    assert_eq!(
        q(Filter::new().author(keys(1).public_key()).limit(2)),
        by_n(&[12, 10])
    );
    assert_eq!(
        q(Filter::new().kind(Kind::from(1621))),
        by_n(&[10, 7, 4, 1])
    );
    assert_eq!(
        q(Filter::new()
            .kinds([Kind::from(1621), Kind::from(1630)])
            .limit(3)),
        by_n(&[11, 10, 8])
    );
    assert_eq!(q(Filter::new().hashtag("early").limit(2)), by_n(&[6, 5]));
    assert_eq!(
        q(Filter::new().custom_tags(SingleLetterTag::LOWERCASE_N, ["3", "9"])),
        by_n(&[9, 3])
    );
    // Tags AND the other fields.
    assert_eq!(
        q(Filter::new().hashtag("late").author(keys(2).public_key())),
        by_n(&[11, 9, 7])
    );
    assert_eq!(
        q(Filter::new()
            .since(Timestamp::from(4))
            .until(Timestamp::from(6))),
        by_n(&[6, 5, 4])
    );
    assert_eq!(
        q(Filter::new().hashtag("late").until(Timestamp::from(8))),
        by_n(&[8, 7])
    );
    assert_eq!(
        q(Filter::new()
            .since(Timestamp::from(9))
            .until(Timestamp::from(2))),
        by_n(&[])
    );
    assert_eq!(q(Filter::new().hashtag("nope")), by_n(&[]));
    // An empty value list matches nothing.
    assert_eq!(
        q(Filter::new().custom_tags(SingleLetterTag::LOWERCASE_T, Vec::<String>::new())),
        by_n(&[])
    );
}

fn several_filters_are_a_union_and_cap_bounds_each(backend: Backend) {
    let Some(place) = Place::new(backend, "union") else {
        return;
    };
    let store = place.open();
    let all = corpus(&store);
    let found = store
        .query(
            &[
                Filter::new().hashtag("early").limit(1),
                Filter::new().kind(Kind::from(1621)),
                Filter::new().id(all[5].id),
            ],
            100,
        )
        .unwrap();
    let expected: Vec<EventId> = [10, 7, 6, 4, 1].iter().map(|n| all[n - 1].id).collect();
    assert_eq!(ids(&found), expected);
    assert_eq!(store.query(&[Filter::new()], 5).unwrap().len(), 5);
    assert_eq!(store.query(&[Filter::new().limit(50)], 5).unwrap().len(), 5);
    assert!(store
        .query(&[Filter::new().limit(0)], 5)
        .unwrap()
        .is_empty());
}

fn equal_timestamps_order_by_lowest_id(backend: Backend) {
    let Some(place) = Place::new(backend, "ties") else {
        return;
    };
    let store = place.open();
    let alice = keys(1);
    let mut same: Vec<Event> = (0..5)
        .map(|i| event(&alice, 1, 50, &[], &format!("same {i}")))
        .collect();
    store.insert_many(&same).unwrap();
    same.sort_by_key(|e| e.id);
    assert_eq!(ids(&store.query(&[Filter::new()], 10).unwrap()), ids(&same));
}

fn long_tag_values_are_found_exactly(backend: Backend) {
    let Some(place) = Place::new(backend, "long-tags") else {
        return;
    };
    let store = place.open();
    let prefix = "x".repeat(300);
    let a = event(&keys(1), 1, 1, &[&["r", &format!("{prefix}a")]], "");
    let b = event(&keys(1), 1, 2, &[&["r", &format!("{prefix}b")]], "");
    store.insert_many(&[a.clone(), b]).unwrap();
    let found = store
        .query(&[Filter::new().reference(format!("{prefix}a"))], 10)
        .unwrap();
    assert_eq!(ids(&found), vec![a.id]);
}

fn replaceable_events_keep_only_the_preferred_version(backend: Backend) {
    let Some(place) = Place::new(backend, "replaceable") else {
        return;
    };
    let store = place.open();
    let alice = keys(1);
    let v1 = event(&alice, 0, 10, &[], "v1");
    let v2 = event(&alice, 0, 20, &[], "v2");
    let other_author = event(&keys(2), 0, 5, &[], "bob");
    assert_eq!(store.insert(&v1).unwrap(), stored());
    assert_eq!(
        store.insert(&v2).unwrap(),
        InsertOutcome::Stored {
            removed: vec![v1.id]
        }
    );
    assert_eq!(
        store.insert(&v1).unwrap(),
        InsertOutcome::Superseded { by: v2.id }
    );
    assert_eq!(store.insert(&other_author).unwrap(), stored());
    let kind0 = Filter::new().kind(Kind::from(0));
    assert_eq!(
        ids(&store.query(&[kind0], 10).unwrap()),
        vec![v2.id, other_author.id]
    );
    assert_eq!(store.get(&v1.id).unwrap(), None);
    // Old version is gone from every index.
    assert!(store
        .query(&[Filter::new().id(v1.id)], 10)
        .unwrap()
        .is_empty());
    assert!(store
        .query(
            &[Filter::new()
                .author(alice.public_key())
                .until(Timestamp::from(15))],
            10
        )
        .unwrap()
        .is_empty());
}

fn replaceable_ties_go_to_the_lowest_id_in_either_order(backend: Backend) {
    let alice = keys(1);
    let x = event(&alice, 10002, 30, &[], "x");
    let y = event(&alice, 10002, 30, &[], "y");
    let (low, high) = if x.id < y.id { (x, y) } else { (y, x) };
    for order in [[&low, &high], [&high, &low]] {
        let Some(place) = Place::new(backend, "ties-replaceable") else {
            return;
        };
        let store = place.open();
        for e in order {
            store.insert(e).unwrap();
        }
        let found = store
            .query(&[Filter::new().kind(Kind::from(10002))], 10)
            .unwrap();
        assert_eq!(ids(&found), vec![low.id]);
    }
}

fn addressable_same_second_versions_serve_the_lowest_id_in_either_order(backend: Backend) {
    let alice = keys(1);
    let x = event(
        &alice,
        30618,
        30,
        &[&["d", "repo"], &["refs/heads/main", "1"]],
        "",
    );
    let y = event(
        &alice,
        30618,
        30,
        &[&["d", "repo"], &["refs/heads/main", "2"]],
        "",
    );
    let (low, high) = if x.id < y.id { (x, y) } else { (y, x) };
    for (first, second) in [(&low, &high), (&high, &low)] {
        let Some(place) = Place::new(backend, "ties-addressable") else {
            return;
        };
        let store = place.open();
        assert_eq!(store.insert(first).unwrap(), stored());
        let outcome = store.insert(second).unwrap();
        if second.id == low.id {
            let removed = vec![high.id];
            assert_eq!(outcome, InsertOutcome::Stored { removed });
        } else {
            assert_eq!(outcome, InsertOutcome::Superseded { by: low.id });
        }
        let by_d = Filter::new().kind(Kind::from(30618)).identifier("repo");
        assert_eq!(ids(&store.query(&[by_d], 10).unwrap()), vec![low.id]);
        assert_eq!(store.get(&high.id).unwrap(), None);
    }
}

fn addressable_events_replace_per_identifier(backend: Backend) {
    let Some(place) = Place::new(backend, "addressable") else {
        return;
    };
    let store = place.open();
    let alice = keys(1);
    let a1 = event(&alice, 30617, 10, &[&["d", "a"]], "");
    let b1 = event(&alice, 30617, 11, &[&["d", "b"]], "");
    let a2 = event(&alice, 30617, 12, &[&["d", "a"]], "");
    store.insert_many(&[a1.clone(), b1.clone()]).unwrap();
    assert_eq!(
        store.insert(&a2).unwrap(),
        InsertOutcome::Stored {
            removed: vec![a1.id]
        }
    );
    let found = store
        .query(&[Filter::new().kind(Kind::from(30617))], 10)
        .unwrap();
    assert_eq!(ids(&found), vec![a2.id, b1.id]);
    assert_eq!(
        ids(&store.query(&[Filter::new().identifier("a")], 10).unwrap()),
        vec![a2.id]
    );
}

fn deletion_by_id_removes_only_the_authors_events_and_sticks(backend: Backend) {
    let Some(place) = Place::new(backend, "delete-id") else {
        return;
    };
    let store = place.open();
    let (alice, bob) = (keys(1), keys(2));
    let mine = event(&alice, 1621, 10, &[], "mine");
    let theirs = event(&bob, 1621, 10, &[], "theirs");
    store.insert_many(&[mine.clone(), theirs.clone()]).unwrap();
    let deletion = event(
        &alice,
        5,
        20,
        &[&["e", &mine.id.to_hex()], &["e", &theirs.id.to_hex()]],
        "",
    );
    assert_eq!(
        store.insert(&deletion).unwrap(),
        InsertOutcome::Stored {
            removed: vec![mine.id]
        }
    );
    assert_eq!(store.get(&mine.id).unwrap(), None);
    assert_eq!(store.get(&theirs.id).unwrap(), Some(theirs.clone()));
    assert_eq!(store.get(&deletion.id).unwrap(), Some(deletion.clone()));
    assert_eq!(store.insert(&mine).unwrap(), InsertOutcome::Deleted);
    // A deletion that arrives before its target still keeps the target out.
    let later = event(&alice, 1621, 30, &[], "later");
    let pre_deletion = event(&alice, 5, 31, &[&["e", &later.id.to_hex()]], "");
    store.insert(&pre_deletion).unwrap();
    assert_eq!(store.insert(&later).unwrap(), InsertOutcome::Deleted);
}

fn a_stored_deletion_marks_its_waiting_targets_deleted(backend: Backend) {
    let Some(place) = Place::new(backend, "deleted-waiting") else {
        return;
    };
    let store = place.open();
    let alice = keys(1);
    let pr = event(&alice, 1618, 10, &[], "pr");
    let state = event(&alice, 30618, 10, &[&["d", "r"]], "");
    let newer_state = event(&alice, 30618, 30, &[&["d", "r"]], "");
    for e in [&pr, &state, &newer_state] {
        store
            .put_waiting(&WaitingEvent {
                event: e.clone(),
                arrival: Arrival::Published,
                expires_at: u64::MAX,
            })
            .unwrap();
        assert!(!store.is_deleted(e).unwrap());
    }
    let coordinate = format!("30618:{}:r", alice.public_key().to_hex());
    let deletion = event(
        &alice,
        5,
        20,
        &[&["e", &pr.id.to_hex()], &["a", &coordinate]],
        "",
    );
    store.insert(&deletion).unwrap();
    assert!(store.is_deleted(&pr).unwrap());
    assert!(store.is_deleted(&state).unwrap());
    assert!(
        !store.is_deleted(&newer_state).unwrap(),
        "created after the deletion"
    );
    // Someone else's deletion covers nothing.
    let other = event(&keys(2), 1618, 10, &[], "other");
    assert!(!store.is_deleted(&other).unwrap());
}

fn deletion_by_coordinate_removes_versions_up_to_its_time(backend: Backend) {
    let Some(place) = Place::new(backend, "delete-a") else {
        return;
    };
    let store = place.open();
    let alice = keys(1);
    let announcement = event(&alice, 30617, 10, &[&["d", "repo:x"]], "");
    store.insert(&announcement).unwrap();
    let coordinate = format!("30617:{}:repo:x", alice.public_key().to_hex());
    let deletion = event(&alice, 5, 20, &[&["a", &coordinate]], "");
    assert_eq!(
        store.insert(&deletion).unwrap(),
        InsertOutcome::Stored {
            removed: vec![announcement.id]
        }
    );
    let older = event(&alice, 30617, 15, &[&["d", "repo:x"]], "older");
    assert_eq!(store.insert(&older).unwrap(), InsertOutcome::Deleted);
    let newer = event(&alice, 30617, 25, &[&["d", "repo:x"]], "newer");
    assert_eq!(store.insert(&newer).unwrap(), stored());
    // Someone else's deletion of alice's coordinate does nothing.
    let forged = event(&keys(2), 5, 30, &[&["a", &coordinate]], "");
    assert_eq!(store.insert(&forged).unwrap(), stored());
    assert_eq!(store.get(&newer.id).unwrap(), Some(newer));
}

fn filled_store(dir: &TempDir) {
    let store = open(dir);
    let alice = keys(1);
    let events: Vec<Event> = (0..300u64)
        .map(|i| event(&alice, 1, i, &[&["t", "x"]], &"y".repeat(500)))
        .collect();
    store.insert_many(&events).unwrap();
}

#[test]
fn a_damaged_page_is_reported_not_trusted() {
    let dir = TempDir::new("bitflip");
    filled_store(&dir);
    let mut bytes = std::fs::read(dir.file()).unwrap();
    let len = bytes.len();
    for b in &mut bytes[len / 3..len / 3 + 64] {
        *b ^= 0x5a;
    }
    std::fs::write(dir.file(), &bytes).unwrap();
    let err = Store::open(&dir.file()).unwrap_err();
    assert!(matches!(err, StoreError::Unreadable { .. }), "{err:?}");
    assert!(err.to_string().contains("corrupted"), "{err}");
    assert_eq!(std::fs::read(dir.file()).unwrap(), bytes, "file left alone");
}

#[test]
fn a_truncated_file_is_reported_not_trusted() {
    let dir = TempDir::new("truncated");
    filled_store(&dir);
    let bytes = std::fs::read(dir.file()).unwrap();
    let kept = bytes[..bytes.len() / 2].to_vec();
    std::fs::write(dir.file(), &kept).unwrap();
    let err = Store::open(&dir.file()).unwrap_err();
    assert!(matches!(err, StoreError::Unreadable { .. }), "{err:?}");
    assert!(err.to_string().contains("truncated"), "{err}");
    assert_eq!(std::fs::read(dir.file()).unwrap(), kept, "file left alone");
}

/// An issue by `keys(9)` that names each of `named` by an `e` tag.
fn issue_naming(created_at: u64, named: &[&Event]) -> Event {
    let hexes: Vec<String> = named.iter().map(|e| e.id.to_hex()).collect();
    let mut tags: Vec<Vec<&str>> = vec![vec!["subject", "an issue"]];
    tags.extend(hexes.iter().map(|h| vec!["e", h.as_str()]));
    let tags: Vec<&[&str]> = tags.iter().map(Vec::as_slice).collect();
    event(&keys(9), 1621, created_at, &tags, "")
}

fn referenced(store: &Store, events: &[&Event]) -> Vec<bool> {
    events
        .iter()
        .map(|e| store.is_referenced(&e.id).unwrap())
        .collect()
}

fn ids_named_by_accepted_threads_are_remembered_until_served(backend: Backend) {
    let Some(place) = Place::new(backend, "referenced") else {
        return;
    };
    let store = place.open();
    let [x, y, served, by_note] =
        [1, 2, 3, 4].map(|n| event(&keys(1), 1, n, &[], &format!("note {n}")));
    store.insert(&served).unwrap();
    let issue = event(
        &keys(9),
        1621,
        10,
        &[
            &["e", &x.id.to_hex()],
            &["q", &y.id.to_hex(), "wss://r"],
            &["e", &served.id.to_hex()],
        ],
        "",
    );
    store.insert(&issue).unwrap();
    // A note vouches for nothing it names.
    store
        .insert(&event(&keys(2), 1, 11, &[&["e", &by_note.id.to_hex()]], ""))
        .unwrap();
    assert_eq!(
        referenced(&store, &[&x, &y, &served, &by_note]),
        [true, true, false, false]
    );
    assert_eq!(store.reference_stats().entries, 2);
    assert_eq!(store.insert(&x).unwrap(), stored());
    assert_eq!(referenced(&store, &[&x, &y]), [false, true]);
    assert_eq!(
        store.reference_stats(),
        ReferenceStats {
            entries: 1,
            evicted: 0
        }
    );
}

/// One transaction (`insert_many`, as a group commit's batch) whose writes read what the
/// earlier ones wrote: duplicates, replacement, deletion, the referenced index.
fn writes_in_one_transaction_see_each_other(backend: Backend) {
    let Some(place) = Place::new(backend, "one-transaction") else {
        return;
    };
    let store = place.open();
    let alice = keys(1);
    let named = event(&alice, 1, 5, &[], "named");
    let issue = issue_naming(10, &[&named]);
    let (v1, v2) = (
        event(&alice, 10_002, 10, &[], "v1"),
        event(&alice, 10_002, 20, &[], "v2"),
    );
    let doomed = event(&alice, 1621, 10, &[&["t", "doomed"]], "doomed");
    let deletion = event(&alice, 5, 30, &[&["e", &doomed.id.to_hex()]], "");
    let outcomes = store
        .insert_many(&[
            issue.clone(),
            issue.clone(),
            v1.clone(),
            v2.clone(),
            v1.clone(),
            doomed.clone(),
            deletion.clone(),
            doomed.clone(),
            named.clone(),
        ])
        .unwrap();
    assert_eq!(
        outcomes,
        [
            stored(),
            InsertOutcome::Duplicate,
            stored(),
            InsertOutcome::Stored {
                removed: vec![v1.id]
            },
            InsertOutcome::Superseded { by: v2.id },
            stored(),
            InsertOutcome::Stored {
                removed: vec![doomed.id]
            },
            InsertOutcome::Deleted,
            stored(),
        ]
    );
    let served = store.query(&[Filter::new().author(alice.public_key())], 100);
    assert_eq!(ids(&served.unwrap()), [deletion.id, v2.id, named.id]);
    let tagged = Filter::new().hashtag("doomed");
    assert!(store.query(&[tagged], 10).unwrap().is_empty());
    assert_eq!(referenced(&store, &[&named]), [false]);
    assert_eq!(store.reference_stats().entries, 0);
}

/// A filter whose answer takes more than one page of rows (PostgreSQL reads 256 at a time,
/// and the first alone when it answers): every event, or the hidden ones skipped.
fn answers_longer_than_a_page_are_whole(backend: Backend) {
    let Some(place) = Place::new(backend, "long-answer") else {
        return;
    };
    let store = place.open();
    let alice = keys(1);
    let events: Vec<Event> = (0..600u64)
        .map(|n| event(&alice, 1, 1000 + n, &[], &format!("note {n}")))
        .collect();
    store.insert_many(&events).unwrap();
    let newest_first: Vec<EventId> = events.iter().rev().map(|e| e.id).collect();
    let every = Filter::new().author(alice.public_key());
    assert_eq!(
        ids(&store.query(std::slice::from_ref(&every), 1000).unwrap()),
        newest_first
    );
    assert_eq!(
        store.query_ids(std::slice::from_ref(&every), 1000).unwrap(),
        newest_first
    );
    // The 400 newest are hidden: the first page holds none of the answer.
    let old = |event: &Event| event.created_at.as_secs() < 1200;
    let found = store.query_visible(&[every.limit(3)], 1000, &old).unwrap();
    assert_eq!(ids(&found), newest_first[400..403]);
}

fn the_referenced_index_forgets_the_oldest_beyond_its_capacity(backend: Backend) {
    let Some(place) = Place::new(backend, "referenced-bound") else {
        return;
    };
    let store = place.open().with_reference_limits(ReferenceLimits {
        capacity: 3,
        per_event: 64,
    });
    let [a, b, c, d, e] = [1, 2, 3, 4, 5].map(|n| event(&keys(1), 1, n, &[], "named"));
    store.insert(&issue_naming(10, &[&a, &b])).unwrap();
    store.insert(&issue_naming(11, &[&c, &d])).unwrap();
    assert_eq!(
        referenced(&store, &[&a, &b, &c, &d]),
        [false, true, true, true]
    );
    // Named again, `b` is the newest; `c` is now the oldest.
    store.insert(&issue_naming(12, &[&b])).unwrap();
    store.insert(&issue_naming(13, &[&e])).unwrap();
    assert_eq!(
        referenced(&store, &[&b, &c, &d, &e]),
        [true, false, true, true]
    );
    assert_eq!(
        store.reference_stats(),
        ReferenceStats {
            entries: 3,
            evicted: 2
        }
    );
    // Only the first `per_event` reference tags of an event are remembered.
    let narrow = open_again_with(store, &place, 1);
    let [f, g] = [6, 7].map(|n| event(&keys(1), 1, n, &[], "named"));
    narrow.insert(&issue_naming(14, &[&f, &g])).unwrap();
    assert_eq!(referenced(&narrow, &[&f, &g]), [true, false]);
}

fn open_again_with(store: Store, place: &Place, per_event: usize) -> Store {
    drop(store);
    place.open().with_reference_limits(ReferenceLimits {
        capacity: 3,
        per_event,
    })
}

fn the_referenced_index_survives_a_restart_and_follows_releases(backend: Backend) {
    let Some(place) = Place::new(backend, "referenced-reopen") else {
        return;
    };
    let [x, y] = [1, 2].map(|n| event(&keys(1), 1, n, &[], "named"));
    let pr = event(
        &keys(9),
        1618,
        20,
        &[&["c", &"1".repeat(40)], &["q", &y.id.to_hex()]],
        "",
    );
    {
        let store = place.open();
        store.insert(&issue_naming(10, &[&x])).unwrap();
        store
            .put_waiting(&WaitingEvent {
                event: pr.clone(),
                arrival: Arrival::Published,
                expires_at: u64::MAX,
            })
            .unwrap();
        // Waiting events vouch for nothing until they are served.
        assert_eq!(referenced(&store, &[&x, &y]), [true, false]);
    }
    let store = place.open();
    assert_eq!(store.reference_stats().entries, 1);
    assert_eq!(referenced(&store, &[&x]), [true]);
    store.release_waiting(&pr.id).unwrap().unwrap();
    assert_eq!(referenced(&store, &[&x, &y]), [true, true]);
}

fn ids_then_chunks_give_the_query_answer_in_bounded_pieces(backend: Backend) {
    let Some(place) = Place::new(backend, "chunks") else {
        return;
    };
    let store = place.open();
    let author = keys(1);
    let events: Vec<Event> = (0..5)
        .map(|n| event(&author, 1621, 100 + n, &[], &"x".repeat(1000)))
        .collect();
    for e in &events {
        assert_eq!(store.insert(e).unwrap(), stored());
    }
    let filters = [Filter::new().kind(Kind::from(1621))];
    let whole = store.query(&filters, 500).unwrap();
    let answer = store.query_ids(&filters, 500).unwrap();
    assert_eq!(answer, ids(&whole), "same answer, same order");
    assert_eq!(
        store.query_ids(&filters, 2).unwrap().len(),
        2,
        "cap bounds it"
    );
    // About 1.5 events' worth per chunk: two events per read, the last one alone.
    let mut rest = &answer[..];
    let mut texts = Vec::new();
    let mut reads = 0;
    while !rest.is_empty() {
        let (chunk, consumed) = store.load_json(rest, 1500).unwrap();
        assert!(chunk.len() <= 2, "{}", chunk.len());
        texts.extend(chunk);
        rest = &rest[consumed..];
        reads += 1;
    }
    assert_eq!(reads, 3);
    let decoded: Vec<Event> = texts.iter().map(|t| Event::from_json(t).unwrap()).collect();
    assert_eq!(decoded, whole);
}

/// NIP-77's items are what a REQ with the same filter would serve, as `(created_at, id)`:
/// never a waiting event, and at most `cap` per filter.
fn reconciliation_items_are_the_served_answer(backend: Backend) {
    let Some(place) = Place::new(backend, "items") else {
        return;
    };
    let store = place.open();
    let alice = keys(1);
    let served: Vec<Event> = (0..3)
        .map(|n| event(&alice, 1621, 100 + n, &[&["t", "x"]], "served"))
        .collect();
    for e in &served {
        assert_eq!(store.insert(e).unwrap(), stored());
    }
    let waiting = event(&alice, 1621, 500, &[&["t", "x"]], "waiting");
    store
        .put_waiting(&WaitingEvent {
            event: waiting,
            arrival: Arrival::Synced,
            expires_at: 1_700_000_000,
        })
        .unwrap();
    let filter = Filter::new().custom_tags(SingleLetterTag::LOWERCASE_T, ["x"]);
    let items = store
        .query_items(std::slice::from_ref(&filter), 10, &|_| true)
        .unwrap();
    let expected: Vec<(u64, EventId)> = store
        .query(std::slice::from_ref(&filter), 10)
        .unwrap()
        .iter()
        .map(|e| (e.created_at.as_secs(), e.id))
        .collect();
    assert_eq!(items, expected);
    assert_eq!(items.len(), 3);
    assert_eq!(store.query_items(&[filter], 2, &|_| true).unwrap().len(), 2);
}

/// PostgreSQL alone: a write the database refuses is an error (nothing half-written, the
/// caller answers `error:`), and the store works again once the database does.
#[test]
fn a_database_failure_is_an_error_and_the_store_recovers() {
    let Some(place) = Place::new(Backend::Postgres, "db-failure") else {
        return;
    };
    let store = place.open();
    let url = place.database.as_deref().expect("a database");
    let mut admin = ::postgres::Client::connect(url, ::postgres::NoTls).unwrap();
    let before = event(&keys(1), 1, 10, &[&["t", "x"]], "before");
    assert_eq!(store.insert(&before).unwrap(), stored());

    admin
        .batch_execute("ALTER TABLE events RENAME TO events_away")
        .unwrap();
    let refused = event(&keys(1), 1, 20, &[&["t", "x"]], "refused");
    let error = store.insert(&refused).unwrap_err();
    assert!(matches!(error, StoreError::Io { .. }), "{error:?}");
    assert!(
        error.to_string().contains("postgres://graspd@"),
        "names the database: {error}"
    );
    assert!(store.query(&[Filter::new()], 10).is_err());

    admin
        .batch_execute("ALTER TABLE events_away RENAME TO events")
        .unwrap();
    assert_eq!(
        ids(&store.query(&[Filter::new()], 10).unwrap()),
        [before.id]
    );
    assert_eq!(store.insert(&refused).unwrap(), stored());
}

/// PostgreSQL alone: a schema migrated by a newer graspd is refused, and left as it is.
#[test]
fn a_newer_database_schema_is_refused_untouched() {
    let Some(place) = Place::new(Backend::Postgres, "db-newer") else {
        return;
    };
    drop(place.open());
    let url = place.database.as_deref().expect("a database");
    let mut admin = ::postgres::Client::connect(url, ::postgres::NoTls).unwrap();
    let newer = pg::MIGRATIONS.len() as i32 + 1;
    admin
        .execute(
            "INSERT INTO schema_version (version) VALUES ($1)",
            &[&newer],
        )
        .unwrap();
    let error = Store::open_postgres(&PgSettings {
        url: url.to_owned(),
        connections: 1,
    })
    .unwrap_err();
    assert!(
        matches!(error, StoreError::NewerSchema { found, .. } if found == newer as u64),
        "{error:?}"
    );
    assert!(error.to_string().contains("newer graspd"), "{error}");
    let kept: i32 = admin
        .query_one("SELECT max(version) FROM schema_version", &[])
        .unwrap()
        .get(0);
    assert_eq!(kept, newer);
}

/// PostgreSQL alone: what one store commits (put in purgatory, served, released) the other
/// stores on the database hear, in commit order, ids only, and read back as the database
/// holds them now; a store never hears its own writes.
#[test]
fn other_instances_hear_what_one_commits_in_order() {
    let Some(place) = Place::new(Backend::Postgres, "db-notify") else {
        return;
    };
    let (writer, listener) = (place.open(), place.open());
    let heard = listener.listen(16).expect("PostgreSQL listens").unwrap();
    let own = writer.listen(16).expect("PostgreSQL listens").unwrap();
    // Polled for up to 30 s (3000 times 10 ms).
    let next = |queue: &async_channel::Receiver<Vec<ChangedId>>| {
        for _ in 0..3000 {
            match queue.try_recv() {
                Ok(changes) => return Some(changes),
                Err(_) => std::thread::sleep(std::time::Duration::from_millis(10)),
            }
        }
        None
    };
    // Each listener is up once it hears a write the other store made after it started.
    let marker = event(&keys(3), 1, 5, &[], "marker");
    eventually_hears(&heard, &listener, &writer, &marker);
    let back = event(&keys(3), 1, 6, &[], "back");
    eventually_hears(&own, &writer, &listener, &back);
    let base = listener.listen_stats().received;

    let waiting = event(&keys(1), 30618, 10, &[&["d", "r"]], "waits");
    writer
        .put_waiting(&WaitingEvent {
            event: waiting.clone(),
            arrival: Arrival::Published,
            expires_at: u64::MAX,
        })
        .unwrap();
    assert_eq!(next(&heard), Some(vec![ChangedId::Waiting(waiting.id)]));
    let changed = listener
        .changed_events(&[ChangedId::Waiting(waiting.id)])
        .unwrap();
    assert!(matches!(&changed[..], [Changed::Waiting(w)] if w.event == waiting));

    writer.release_waiting(&waiting.id).unwrap().unwrap();
    assert_eq!(next(&heard), Some(vec![ChangedId::Served(waiting.id)]));
    // Moved since: the waiting entry is gone, the served one is read.
    let both = [
        ChangedId::Waiting(waiting.id),
        ChangedId::Served(waiting.id),
    ];
    assert!(
        matches!(&listener.changed_events(&both).unwrap()[..], [Changed::Served(e)] if *e == waiting)
    );

    // A duplicate stores nothing and says nothing; the writer never hears itself.
    assert_eq!(writer.insert(&waiting).unwrap(), InsertOutcome::Duplicate);
    let issue = event(&keys(2), 1621, 20, &[], "issue");
    writer.insert(&issue).unwrap();
    assert_eq!(next(&heard), Some(vec![ChangedId::Served(issue.id)]));
    assert_eq!(listener.listen_stats().received, base + 3);

    // Dropped from purgatory unreleased: heard as gone, and read as gone while it is.
    let dropped = event(&keys(1), 30618, 30, &[&["d", "r"]], "expires");
    writer
        .put_waiting(&WaitingEvent {
            event: dropped.clone(),
            arrival: Arrival::Published,
            expires_at: u64::MAX,
        })
        .unwrap();
    assert_eq!(next(&heard), Some(vec![ChangedId::Waiting(dropped.id)]));
    assert!(writer.remove_waiting(&dropped.id).unwrap());
    assert_eq!(next(&heard), Some(vec![ChangedId::Gone(dropped.id)]));
    assert!(matches!(
        &listener.changed_events(&[ChangedId::Gone(dropped.id)]).unwrap()[..],
        [Changed::Gone(id)] if *id == dropped.id
    ));
    assert!(!writer.remove_waiting(&dropped.id).unwrap(), "removed once");
    // The writer heard none of its own writes: the first thing it hears is the listener's.
    let last = event(&keys(3), 1, 7, &[], "last");
    listener.insert(&last).unwrap();
    assert_eq!(next(&own), Some(vec![ChangedId::Served(last.id)]));
}

/// Writes `marker` from `writer` until `listener`'s `queue` hears it (a LISTEN starts on a
/// thread of its own), and takes it from the queue.
fn eventually_hears(
    queue: &async_channel::Receiver<Vec<ChangedId>>,
    listener: &Store,
    writer: &Store,
    marker: &Event,
) {
    // Up to 30 s (1500 times 20 ms).
    let mut tries = 0;
    while listener.listen_stats().received == 0 {
        tries += 1;
        assert!(tries <= 1500, "never listening");
        writer.remove(&marker.id).unwrap();
        writer.insert(marker).unwrap();
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    assert_eq!(queue.try_recv(), Ok(vec![ChangedId::Served(marker.id)]));
}

/// PostgreSQL alone: a repository's lock across instances is held by one instance's
/// connection at a time, counted per take, and free again once released or once the
/// connection holding it is gone.
#[test]
fn a_repository_lock_is_held_by_one_instance_at_a_time() {
    use pg::repo_locks::{repo_key, SessionLocks};
    let Some(place) = Place::new(Backend::Postgres, "db-repo-locks") else {
        return;
    };
    let url = place.database.as_deref().expect("a database");
    let session = || SessionLocks::new(url.parse().unwrap(), "test".into());
    let (first, second) = (session(), session());
    let repo = repo_key(Path::new("npub1x/a.git"));
    let other = repo_key(Path::new("npub1x/b.git"));
    assert_ne!(repo, other);
    assert_eq!(
        repo,
        repo_key(Path::new("npub1x/a.git")),
        "the same on every instance"
    );

    assert_eq!(first.try_lock(repo), Ok(true));
    assert_eq!(second.try_lock(repo), Ok(false), "held by the first");
    assert_eq!(
        second.try_lock(other),
        Ok(true),
        "another repository is free"
    );
    // The holder may take it again (a pending release of the last holder): one release each.
    assert_eq!(first.try_lock(repo), Ok(true));
    first.unlock(repo).unwrap();
    assert_eq!(second.try_lock(repo), Ok(false));
    first.unlock(repo).unwrap();
    assert_eq!(second.try_lock(repo), Ok(true));

    // A holder that goes away lets its locks go, once the server sees it gone (polled up to
    // 30 s, 3000 times 10 ms).
    drop(second);
    let freed = (0..3000).any(|_| {
        let taken = first.try_lock(repo) == Ok(true);
        if !taken {
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        taken
    });
    assert!(freed, "the lock outlived its connection");
}
