//! NIP-01's rule for replaceable and addressable events: of two versions at one address, the
//! one with the later `created_at` is kept; on equal `created_at` the one with the lowest id
//! is kept. The engine (accepted announcements and states, the state a repository holds,
//! push decisions) and the host's store both decide with this one function.

use std::cmp::Ordering;

use crate::ids::EventId;

/// A version of a replaceable or addressable event, as the rule sees it: `(created_at, id)`.
pub type Version<'a> = (u64, &'a EventId);

/// How `a` ranks against `b`: `Greater` when `a` is the version NIP-01 keeps.
pub fn precedence(a: Version<'_>, b: Version<'_>) -> Ordering {
    a.0.cmp(&b.0).then_with(|| b.1.cmp(a.1))
}

/// Whether version `new` replaces version `old` (an event never replaces itself).
pub fn supersedes(new: Version<'_>, old: Version<'_>) -> bool {
    precedence(new, old) == Ordering::Greater
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn newer_wins_and_ties_go_to_the_lowest_id() {
        let lo = EventId::from_slice(&[1; 32]).unwrap();
        let hi = EventId::from_slice(&[2; 32]).unwrap();
        let cases = [
            ((2, &lo), (1, &hi), true, "newer wins"),
            ((2, &hi), (1, &lo), true, "newer wins whatever its id"),
            ((1, &lo), (2, &hi), false, "older loses"),
            ((5, &lo), (5, &hi), true, "tie: lowest id wins"),
            ((5, &hi), (5, &lo), false, "tie: higher id loses"),
            (
                (5, &lo),
                (5, &lo),
                false,
                "an event does not replace itself",
            ),
        ];
        for (new, old, want, name) in cases {
            assert_eq!(supersedes(new, old), want, "{name}");
            assert_eq!(precedence(new, old) == Ordering::Greater, want, "{name}");
        }
    }
}
