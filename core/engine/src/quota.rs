//! Shares of purgatory: how many waiting events each author and each client address holds,
//! so that neither one key nor one client fills `max_waiting` for everyone
//! (`Config::max_waiting_per_author`, `Config::max_waiting_per_address`).

use std::collections::BTreeMap;

use crate::ids::PublicKey;

/// A client's address as the host's per-address limits group it (an IPv4 address, or an IPv6
/// /64), opaque to the engine.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ClientAddress(pub u128);

/// Waiting events counted in all, by author, and by the client address that published them.
/// Entries at zero are removed, so shares of nothing hold nothing.
#[derive(Debug, Default)]
pub struct Shares {
    total: usize,
    by_author: BTreeMap<PublicKey, usize>,
    by_address: BTreeMap<ClientAddress, usize>,
}

impl Shares {
    pub fn add(&mut self, author: PublicKey, client: Option<ClientAddress>) {
        self.total += 1;
        *self.by_author.entry(author).or_default() += 1;
        if let Some(address) = client {
            *self.by_address.entry(address).or_default() += 1;
        }
    }

    pub fn remove(&mut self, author: &PublicKey, client: Option<ClientAddress>) {
        self.total -= 1;
        decrement(&mut self.by_author, author);
        if let Some(address) = client {
            decrement(&mut self.by_address, &address);
        }
    }

    pub fn total(&self) -> usize {
        self.total
    }

    pub fn of_author(&self, author: &PublicKey) -> usize {
        self.by_author.get(author).copied().unwrap_or(0)
    }

    pub fn of_address(&self, address: &ClientAddress) -> usize {
        self.by_address.get(address).copied().unwrap_or(0)
    }

    /// Authors and client addresses holding at least one event.
    pub fn holders(&self) -> usize {
        self.by_author.len() + self.by_address.len()
    }
}

fn decrement<K: Ord>(counts: &mut BTreeMap<K, usize>, key: &K) {
    if let Some(count) = counts.get_mut(key) {
        *count -= 1;
        if *count == 0 {
            counts.remove(key);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_return_to_nothing() {
        let author = PublicKey::from_byte_array([1; 32]);
        let address = ClientAddress(7);
        let mut shares = Shares::default();
        shares.add(author, Some(address));
        shares.add(author, None);
        assert_eq!((shares.total(), shares.of_author(&author)), (2, 2));
        assert_eq!(shares.of_address(&address), 1);
        shares.remove(&author, Some(address));
        assert_eq!(
            (shares.of_author(&author), shares.of_address(&address)),
            (1, 0)
        );
        shares.remove(&author, None);
        assert_eq!((shares.total(), shares.holders()), (0, 0));
    }
}
