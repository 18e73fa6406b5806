//! The shared store's `sync_leases` table, modelled with exactly the rule of
//! `graspd_host`'s `store/pg/leases.rs`: a row is taken when it is absent, expired (by the
//! table's clock) or already the asker's, and its expiry moves to the table's now + ttl; giving
//! back deletes only the asker's own rows.

use std::collections::BTreeMap;
use std::time::Duration;

use graspd_core::Time;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Row {
    pub holder: String,
    pub expires_at: Time,
}

#[derive(Clone, Debug, Default)]
pub struct LeaseTable {
    rows: BTreeMap<String, Row>,
}

impl LeaseTable {
    /// One `hold_leases` statement by `holder` at table time `now`: the names it holds after.
    pub fn hold(
        &mut self,
        holder: &str,
        names: &[String],
        ttl: Duration,
        now: Time,
    ) -> Vec<String> {
        let mut held = Vec::new();
        for name in names {
            let take = match self.rows.get(name) {
                None => true,
                // `expires_at < now()`: a row expiring exactly now is still its holder's.
                Some(row) => row.holder == holder || row.expires_at < now,
            };
            if take {
                self.rows.insert(
                    name.clone(),
                    Row {
                        holder: holder.to_owned(),
                        expires_at: now + ttl,
                    },
                );
                held.push(name.clone());
            }
        }
        held
    }

    /// One `let_go_leases` statement: deletes `holder`'s rows among `names`.
    pub fn let_go(&mut self, holder: &str, names: &[String]) {
        for name in names {
            if self.rows.get(name).is_some_and(|row| row.holder == holder) {
                self.rows.remove(name);
            }
        }
    }

    /// Who holds `name` at `now`, if its row has not expired (`expires_at >= now`, the
    /// statement's own test).
    pub fn holder_at(&self, name: &str, now: Time) -> Option<&str> {
        self.rows
            .get(name)
            .filter(|row| row.expires_at >= now)
            .map(|row| row.holder.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(ms: u64) -> Time {
        Time::from_millis(ms)
    }

    #[test]
    fn a_row_is_taken_only_when_absent_expired_or_own() {
        let mut table = LeaseTable::default();
        let ttl = Duration::from_secs(3);
        let names = vec!["r".to_owned()];
        assert_eq!(table.hold("a", &names, ttl, at(0)), names);
        assert!(table.hold("b", &names, ttl, at(2_000)).is_empty());
        assert_eq!(table.hold("a", &names, ttl, at(2_000)), names, "renewed");
        assert!(
            table.hold("b", &names, ttl, at(5_000)).is_empty(),
            "not yet expired"
        );
        assert_eq!(table.hold("b", &names, ttl, at(5_001)), names);
        assert_eq!(table.holder_at("r", at(5_001)), Some("b"));
        table.let_go("a", &names);
        assert_eq!(
            table.holder_at("r", at(5_001)),
            Some("b"),
            "only own rows go"
        );
        table.let_go("b", &names);
        assert_eq!(table.holder_at("r", at(5_001)), None);
    }
}
