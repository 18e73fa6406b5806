//! Sync leases across instances (`graspd_core`'s `engine/lease.rs` says what they are for):
//! one row per repository in `sync_leases`, naming the instance that holds it and until when.
//!
//! Expiry is the database's clock (`now()`), never an instance's, so instances with skewed
//! clocks still agree on who holds a lease. Acquiring and renewing are one statement: a row
//! is taken when it is absent, expired, or already this instance's, and its expiry moves to
//! `now() + ttl`. What the statement returns is what this instance holds from then on.

use std::time::Duration;

use super::PgStore;
use crate::store::StoreError;

impl PgStore {
    /// Acquires or renews the leases of `repos` (repository names as the engine prints them)
    /// for `ttl`; returns those this instance holds now. The others are held elsewhere.
    pub fn hold_leases(&self, repos: &[String], ttl: Duration) -> Result<Vec<String>, StoreError> {
        if repos.is_empty() {
            return Ok(Vec::new());
        }
        let ttl_ms = ttl.as_millis().min(i64::MAX as u128) as f64;
        let holder: &str = &self.token;
        self.read(|client| {
            let rows = client.query(
                "INSERT INTO sync_leases (repo, holder, expires_at)
                 SELECT unnest($1::text[]), $2, now() + $3 * interval '1 millisecond'
                 ON CONFLICT (repo) DO UPDATE
                    SET holder = EXCLUDED.holder, expires_at = EXCLUDED.expires_at
                    WHERE sync_leases.holder = EXCLUDED.holder
                       OR sync_leases.expires_at < now()
                 RETURNING repo",
                &[&repos, &holder, &ttl_ms],
            )?;
            Ok(rows.iter().map(|row| row.get(0)).collect())
        })
    }

    /// Gives back the leases of `repos` this instance holds (others' rows are untouched).
    pub fn let_go_leases(&self, repos: &[String]) -> Result<(), StoreError> {
        if repos.is_empty() {
            return Ok(());
        }
        let holder: &str = &self.token;
        self.read(|client| {
            client.execute(
                "DELETE FROM sync_leases WHERE holder = $2 AND repo = ANY($1)",
                &[&repos, &holder],
            )?;
            Ok(())
        })
    }
}
