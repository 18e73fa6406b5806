//! The PostgreSQL schema, as versioned migrations applied at start-up.
//!
//! `schema_version` holds one row per applied migration. Migrations run in one transaction
//! under an advisory lock, so instances starting together apply each exactly once. A
//! database whose newest version is beyond [`MIGRATIONS`] was written by a newer graspd and
//! is refused untouched. Never edit a migration that has shipped: add the next one.
//!
//! The tables mirror the redb ones (`../schema.rs`): integers that are `u64` in Rust are
//! `bigint` (the bits kept, so `u64::MAX` deadlines round-trip), kinds are `integer`, ids
//! and keys are `bytea`, event JSON is `text`.

/// Each migration's SQL; version `n` is `MIGRATIONS[n - 1]`.
pub const MIGRATIONS: &[&str] = &[
    // 1: served events with their filter indexes, coordinates, purgatory, tombstones and the
    // index of referenced ids.
    "CREATE TABLE events (
        id bytea PRIMARY KEY,
        pubkey bytea NOT NULL,
        kind integer NOT NULL,
        created_at bigint NOT NULL,
        json text NOT NULL
    );
    CREATE INDEX events_by_time ON events (created_at DESC, id);
    CREATE INDEX events_by_kind ON events (kind, created_at DESC, id);
    CREATE INDEX events_by_author ON events (pubkey, created_at DESC, id);
    CREATE TABLE event_tags (
        letter smallint NOT NULL,
        value bytea NOT NULL,
        created_at bigint NOT NULL,
        id bytea NOT NULL REFERENCES events (id) ON DELETE CASCADE,
        PRIMARY KEY (letter, value, created_at, id)
    );
    CREATE INDEX event_tags_by_event ON event_tags (id);
    CREATE TABLE coordinates (
        kind integer NOT NULL,
        pubkey bytea NOT NULL,
        d bytea NOT NULL,
        id bytea NOT NULL,
        PRIMARY KEY (kind, pubkey, d)
    );
    CREATE TABLE waiting (
        id bytea PRIMARY KEY,
        arrival smallint NOT NULL,
        expires_at bigint NOT NULL,
        json text NOT NULL
    );
    CREATE TABLE tombstone_ids (
        id bytea NOT NULL,
        author bytea NOT NULL,
        PRIMARY KEY (id, author)
    );
    CREATE TABLE tombstone_coordinates (
        kind integer NOT NULL,
        author bytea NOT NULL,
        d bytea NOT NULL,
        until bigint NOT NULL,
        PRIMARY KEY (kind, author, d)
    );
    CREATE TABLE referenced (
        id bytea PRIMARY KEY,
        age bigint NOT NULL UNIQUE
    );",
    // 2: sync leases: which instance fetches for a repository, until when (database time).
    "CREATE TABLE sync_leases (
        repo text PRIMARY KEY,
        holder text NOT NULL,
        expires_at timestamptz NOT NULL
    );",
];

/// Serialises migrations, and every write transaction (one writer at a time, as redb does,
/// across all instances on the database): `pg_advisory_xact_lock` keys.
pub const MIGRATION_LOCK: i64 = 0x6772_6173_7064_0001;
pub const WRITE_LOCK: i64 = 0x6772_6173_7064_0002;

/// Applies the missing migrations; returns the version found before, or the newer version
/// that makes the database unusable here.
pub fn migrate(client: &mut postgres::Client) -> Result<Result<u64, u64>, postgres::Error> {
    let mut txn = client.transaction()?;
    txn.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])?;
    txn.batch_execute(
        "CREATE TABLE IF NOT EXISTS schema_version (
            version integer PRIMARY KEY,
            applied_at timestamptz NOT NULL DEFAULT now()
        )",
    )?;
    let found: i32 = txn
        .query_one("SELECT coalesce(max(version), 0) FROM schema_version", &[])?
        .get(0);
    let found = found as u64;
    if found > MIGRATIONS.len() as u64 {
        return Ok(Err(found));
    }
    for (n, sql) in MIGRATIONS.iter().enumerate().skip(found as usize) {
        let version = n as i32 + 1;
        txn.batch_execute(sql)?;
        txn.execute(
            "INSERT INTO schema_version (version) VALUES ($1)",
            &[&version],
        )?;
        tracing::info!(version, "database schema migrated");
    }
    txn.commit()?;
    Ok(Ok(found))
}
