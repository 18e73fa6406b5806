//! EVENT rate limits: a token bucket per relay connection and one per client address (an IPv6
//! /64 counts as one), so no client makes the server verify, decide and store events as fast
//! as it can send them. A refused EVENT is answered `rate-limited:`; the connection stays open.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Mutex;
use std::time::Instant;

use crate::address::AddressKey;

/// Most client addresses whose EVENT rate is tracked at once; beyond it idle ones (whose
/// bucket is full again) are forgotten first, then the least recently used.
pub const MAX_TRACKED_ADDRESSES: usize = 16_384;

/// A sustained rate and the burst above it, in events.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Rate {
    pub per_second: u32,
    pub burst: u32,
}

/// Tokens refilled at `per_second` up to `burst`; each EVENT takes one.
#[derive(Clone, Copy, Debug)]
pub struct TokenBucket {
    tokens: f64,
    at: Instant,
}

impl TokenBucket {
    pub fn full(rate: Rate, now: Instant) -> TokenBucket {
        TokenBucket {
            tokens: f64::from(rate.burst),
            at: now,
        }
    }

    /// Takes a token if there is one.
    pub fn take(&mut self, rate: Rate, now: Instant) -> bool {
        self.refill(rate, now);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }

    fn refill(&mut self, rate: Rate, now: Instant) {
        let elapsed = now.saturating_duration_since(self.at).as_secs_f64();
        self.tokens =
            (self.tokens + elapsed * f64::from(rate.per_second)).min(f64::from(rate.burst));
        self.at = self.at.max(now);
    }

    fn is_full(&self, rate: Rate, now: Instant) -> bool {
        let mut refilled = *self;
        refilled.refill(rate, now);
        refilled.tokens >= f64::from(rate.burst)
    }
}

/// The per-address buckets of one server, bounded by [`MAX_TRACKED_ADDRESSES`]. At the bound a
/// new address first forgets the least recently used buckets that are full again (no
/// different from forgotten ones), else the least recently used one: each step is a
/// logarithmic lookup, so spraying addresses costs the server no scan of the table.
#[derive(Debug)]
pub struct AddressRates {
    rate: Rate,
    capacity: usize,
    table: Mutex<Table>,
}

#[derive(Debug, Default)]
struct Table {
    buckets: BTreeMap<AddressKey, TokenBucket>,
    /// Every tracked address by the time its bucket was last used, least recent first.
    by_use: BTreeSet<(Instant, AddressKey)>,
}

impl AddressRates {
    pub fn new(rate: Rate) -> AddressRates {
        AddressRates::with_capacity(rate, MAX_TRACKED_ADDRESSES)
    }

    pub fn with_capacity(rate: Rate, capacity: usize) -> AddressRates {
        AddressRates {
            rate,
            capacity: capacity.max(1),
            table: Mutex::new(Table::default()),
        }
    }

    pub fn rate(&self) -> Rate {
        self.rate
    }

    /// Takes a token from `address`'s bucket if there is one.
    pub fn take(&self, address: AddressKey, now: Instant) -> bool {
        let rate = self.rate;
        let mut table = self.table.lock().unwrap_or_else(|e| e.into_inner());
        let Table { buckets, by_use } = &mut *table;
        let mut bucket = match buckets.get(&address) {
            Some(bucket) => {
                by_use.remove(&(bucket.at, address));
                *bucket
            }
            None => {
                if buckets.len() >= self.capacity {
                    forget_least_recent(buckets, by_use, rate, now);
                }
                TokenBucket::full(rate, now)
            }
        };
        let taken = bucket.take(rate, now);
        by_use.insert((bucket.at, address));
        buckets.insert(address, bucket);
        taken
    }

    /// Addresses tracked now.
    pub fn tracked(&self) -> usize {
        let table = self.table.lock().unwrap_or_else(|e| e.into_inner());
        table.buckets.len()
    }
}

/// Forgets the least recently used buckets that are full again, or the least recently used
/// one if none is.
fn forget_least_recent(
    buckets: &mut BTreeMap<AddressKey, TokenBucket>,
    by_use: &mut BTreeSet<(Instant, AddressKey)>,
    rate: Rate,
    now: Instant,
) {
    let mut forgot = false;
    while let Some(&(at, address)) = by_use.first() {
        let full = buckets.get(&address).is_none_or(|b| b.is_full(rate, now));
        if !full && forgot {
            break;
        }
        by_use.remove(&(at, address));
        buckets.remove(&address);
        forgot = true;
        if !full {
            break;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::IpAddr;
    use std::time::Duration;

    const RATE: Rate = Rate {
        per_second: 2,
        burst: 3,
    };

    fn address(n: u8) -> AddressKey {
        AddressKey::of(IpAddr::from([192, 0, 2, n]))
    }

    #[test]
    fn a_bucket_allows_its_burst_then_its_rate() {
        let t0 = Instant::now();
        let mut bucket = TokenBucket::full(RATE, t0);
        assert_eq!((0..5).filter(|_| bucket.take(RATE, t0)).count(), 3);
        assert!(!bucket.take(RATE, t0 + Duration::from_millis(400)));
        assert!(bucket.take(RATE, t0 + Duration::from_millis(500)));
        let later = t0 + Duration::from_secs(60);
        assert_eq!(
            (0..5).filter(|_| bucket.take(RATE, later)).count(),
            3,
            "refills to the burst only"
        );
    }

    #[test]
    fn addresses_have_their_own_buckets_and_the_table_is_bounded() {
        let t0 = Instant::now();
        let rates = AddressRates::with_capacity(RATE, 2);
        assert_eq!((0..5).filter(|_| rates.take(address(1), t0)).count(), 3);
        assert!(rates.take(address(2), t0), "another address has its own");
        // A third address evicts the least recently used one; nothing grows past 2.
        assert!(rates.take(address(3), t0 + Duration::from_millis(1)));
        assert_eq!(rates.tracked(), 2);
        // After a second of quiet every bucket is full again: idle addresses go first.
        let later = t0 + Duration::from_secs(2);
        assert!(rates.take(address(4), later));
        assert_eq!(rates.tracked(), 1, "idle buckets were forgotten");
    }

    #[test]
    fn a_sprayed_table_stays_bounded_and_consistent() {
        let t0 = Instant::now();
        let rates = AddressRates::with_capacity(RATE, 100);
        for i in 0..10_000u32 {
            let key = AddressKey::of(IpAddr::from(i.to_be_bytes()));
            let now = t0 + Duration::from_micros(u64::from(i));
            assert!(
                rates.take(key, now),
                "a new address starts with a full bucket"
            );
        }
        let table = rates.table.lock().unwrap();
        assert_eq!(table.buckets.len(), 100);
        assert_eq!(table.by_use.len(), table.buckets.len());
        assert!(table
            .by_use
            .iter()
            .all(|(at, key)| table.buckets.get(key).is_some_and(|b| b.at == *at)));
    }
}
