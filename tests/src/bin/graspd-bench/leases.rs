//! The lease table's statements at scale: one round of an instance that wants `n` leases
//! (sync leases of repositories with waiting work, follow leases of relays), straight against
//! the store on a fresh PostgreSQL database, as two instances' stores.

use std::time::{Duration, Instant};

use graspd_host::store::{PgSettings, Store};

/// Milliseconds of each statement for `n` names: (first acquire, renewal, asked while another
/// instance holds them all, giving them back).
pub struct Rounds {
    pub acquire: f64,
    pub renew: f64,
    pub held_elsewhere: f64,
    pub let_go: f64,
}

/// `None` without PostgreSQL.
pub fn measure(n: usize) -> Option<Rounds> {
    let cluster = graspd_tests::postgres_cluster::required("bench leases")?;
    let url = cluster.database(&format!("bench_leases_{n}"));
    let open = || {
        Store::open_postgres(&PgSettings {
            url: url.clone(),
            connections: 2,
        })
        .expect("open the bench store")
    };
    let (one, other) = (open(), open());
    // Names as the engine prints repositories: 64 hex digits, a slash, an identifier.
    let names: Vec<String> = (0..n).map(|i| format!("{i:064x}/repository-{i}")).collect();
    let ttl = Duration::from_secs(30);
    let timed = |work: &dyn Fn() -> usize, expect: usize| {
        let started = Instant::now();
        let held = work();
        assert_eq!(held, expect, "leases held after the statement");
        started.elapsed().as_secs_f64() * 1000.0
    };
    let hold = |store: &Store| store.hold_leases(&names, ttl).expect("hold leases").len();
    let acquire = timed(&|| hold(&one), n);
    let renew = timed(&|| hold(&one), n);
    let held_elsewhere = timed(&|| hold(&other), 0);
    let let_go = timed(
        &|| {
            one.let_go_leases(&names).expect("let go");
            0
        },
        0,
    );
    Some(Rounds {
        acquire,
        renew,
        held_elsewhere,
        let_go,
    })
}
