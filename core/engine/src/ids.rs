//! Identifiers the engine keys everything by: git object ids, repositories, coordinates.

use std::fmt;
use std::str::FromStr;
use std::sync::Arc;

pub use nostr::event::EventId;
pub use nostr::key::PublicKey;

/// A git object id (SHA-1, 20 bytes). Compared and hashed as bytes, shown as lowercase hex.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Oid([u8; 20]);

/// Why a string is not an object id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BadOid;

impl fmt::Display for BadOid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("not a 40-character lowercase hex git object id")
    }
}

impl Oid {
    /// The all-zero id git uses for "no object" in ref updates.
    pub const ZERO: Oid = Oid([0; 20]);

    pub const fn from_bytes(bytes: [u8; 20]) -> Oid {
        Oid(bytes)
    }

    pub const fn as_bytes(&self) -> &[u8; 20] {
        &self.0
    }

    pub fn is_zero(&self) -> bool {
        self.0 == [0; 20]
    }

    /// Parses exactly 40 lowercase hex digits (the only spelling NIP-34 and git's wire use).
    pub fn from_hex(s: &str) -> Result<Oid, BadOid> {
        let b = s.as_bytes();
        if b.len() != 40 {
            return Err(BadOid);
        }
        let mut out = [0u8; 20];
        for (i, pair) in b.chunks_exact(2).enumerate() {
            out[i] = (hex_digit(pair[0])? << 4) | hex_digit(pair[1])?;
        }
        Ok(Oid(out))
    }
}

fn hex_digit(c: u8) -> Result<u8, BadOid> {
    match c {
        b'0'..=b'9' => Ok(c - b'0'),
        b'a'..=b'f' => Ok(c - b'a' + 10),
        _ => Err(BadOid),
    }
}

impl FromStr for Oid {
    type Err = BadOid;
    fn from_str(s: &str) -> Result<Oid, BadOid> {
        Oid::from_hex(s)
    }
}

impl fmt::Display for Oid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for b in self.0 {
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for Oid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Oid({self})")
    }
}

/// A repository identifier: the announcement's `d` tag, already percent-decoded.
///
/// Valid identifiers are non-empty, at most [`Identifier::MAX_LEN`] bytes, not `.` or `..`, and
/// contain no `/`, `\`, NUL or other control characters, so `<data>/<npub>/<id>.git` can never
/// escape its directory.
///
/// The first [`INLINE`] bytes are also kept inline (zero-padded), so the comparisons in the
/// engine's ordered indexes rarely follow the pointer to the heap: a B-tree search over keys
/// holding identifiers would otherwise touch one more cache line per comparison. The order is
/// exactly the string order: no identifier contains NUL, so the zero padding sorts a shorter
/// identifier before any longer one it is a prefix of.
///
/// The full string is shared (`Arc<str>`): identifiers are cloned into every index key and
/// repository key, and a clone must not cost an allocation.
#[derive(Clone)]
pub struct Identifier {
    inline: [u8; INLINE],
    full: Arc<str>,
}

/// Bytes of an identifier kept inline for comparisons.
const INLINE: usize = 16;

impl PartialEq for Identifier {
    fn eq(&self, other: &Identifier) -> bool {
        // Equal inline bytes and equal lengths up to INLINE mean equal strings (no NUL).
        self.inline == other.inline
            && self.full.len() == other.full.len()
            && (self.full.len() <= INLINE
                || Arc::ptr_eq(&self.full, &other.full)
                || self.full == other.full)
    }
}

impl Eq for Identifier {}

impl PartialOrd for Identifier {
    fn partial_cmp(&self, other: &Identifier) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Identifier {
    fn cmp(&self, other: &Identifier) -> std::cmp::Ordering {
        self.inline.cmp(&other.inline).then_with(|| {
            if self.full.len() <= INLINE && other.full.len() <= INLINE {
                // Same inline bytes, both short: the same string.
                std::cmp::Ordering::Equal
            } else {
                self.full.cmp(&other.full)
            }
        })
    }
}

impl std::hash::Hash for Identifier {
    /// The inline bytes and the length: consistent with `Eq` (equal identifiers share both),
    /// and a hash lookup never follows the pointer to the heap.
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.inline.hash(state);
        self.full.len().hash(state);
    }
}

/// Why a string cannot be a repository identifier.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BadIdentifier {
    Empty,
    TooLong,
    DotPath,
    ForbiddenChar(char),
}

impl fmt::Display for BadIdentifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BadIdentifier::Empty => f.write_str("repository identifier is empty"),
            BadIdentifier::TooLong => write!(
                f,
                "repository identifier is longer than {} bytes",
                Identifier::MAX_LEN
            ),
            BadIdentifier::DotPath => f.write_str("repository identifier may not be '.' or '..'"),
            BadIdentifier::ForbiddenChar(c) => {
                write!(f, "repository identifier may not contain {c:?}")
            }
        }
    }
}

impl Identifier {
    pub const MAX_LEN: usize = 255;

    pub fn new(s: &str) -> Result<Identifier, BadIdentifier> {
        if s.is_empty() {
            return Err(BadIdentifier::Empty);
        }
        if s.len() > Self::MAX_LEN {
            return Err(BadIdentifier::TooLong);
        }
        if s == "." || s == ".." {
            return Err(BadIdentifier::DotPath);
        }
        if let Some(c) = s
            .chars()
            .find(|c| matches!(c, '/' | '\\') || c.is_control())
        {
            return Err(BadIdentifier::ForbiddenChar(c));
        }
        let mut inline = [0u8; INLINE];
        let n = s.len().min(INLINE);
        inline[..n].copy_from_slice(&s.as_bytes()[..n]);
        Ok(Identifier {
            inline,
            full: Arc::from(s),
        })
    }

    pub fn as_str(&self) -> &str {
        &self.full
    }
}

impl fmt::Display for Identifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.full)
    }
}

impl fmt::Debug for Identifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", self.full)
    }
}

/// Which git namespace a repository lives in.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Debug, Default)]
pub enum Namespace {
    /// `/<npub>/<identifier>.git`: a repository announced here, governed by its states.
    #[default]
    Hosted,
    /// `/prs/<npub>/<identifier>.git` (GRASP-06): where anyone pushes `refs/nostr/<event-id>`
    /// for a PR or PR update, `<npub>` being the PR's signer. Holds nothing else.
    Prs,
}

/// One bare repository: `/<npub of owner>/<identifier>.git`, or its `/prs/` counterpart.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Debug)]
pub struct RepoKey {
    pub owner: PublicKey,
    pub identifier: Identifier,
    pub namespace: Namespace,
}

impl RepoKey {
    /// A hosted repository.
    pub fn new(owner: PublicKey, identifier: Identifier) -> RepoKey {
        RepoKey {
            owner,
            identifier,
            namespace: Namespace::Hosted,
        }
    }

    /// A GRASP-06 PR repository of `signer`.
    pub fn prs(signer: PublicKey, identifier: Identifier) -> RepoKey {
        RepoKey {
            owner: signer,
            identifier,
            namespace: Namespace::Prs,
        }
    }

    pub fn is_prs(&self) -> bool {
        self.namespace == Namespace::Prs
    }
}

impl fmt::Display for RepoKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.is_prs() {
            f.write_str("prs/")?;
        }
        write!(f, "{}/{}", self.owner.to_hex(), self.identifier)
    }
}

/// Correlates a command the engine issued with the input that reports its outcome.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Debug)]
pub struct CommandId(pub u64);

impl fmt::Display for CommandId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "cmd#{}", self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn oid_round_trips_lowercase_hex_only() {
        let hex = "0123456789abcdef0123456789abcdef01234567";
        assert_eq!(Oid::from_hex(hex).unwrap().to_string(), hex);
        assert_eq!(Oid::from_hex(&hex.to_uppercase()), Err(BadOid));
        assert_eq!(Oid::from_hex(&hex[..39]), Err(BadOid));
        assert!(Oid::from_hex(&"0".repeat(40)).unwrap().is_zero());
    }

    #[test]
    fn identifier_order_and_equality_are_the_string_order() {
        let names = [
            "a",
            "ab",
            "abcdefghijklmnop",
            "abcdefghijklmnopq",
            "abcdefghijklmnopr",
            "abcdefghijklmno",
            "abcdefghijklmnopqrstuvwxyz",
            "b",
            "r10",
            "r2",
            "ünïcode",
            "ünïcodeünïcodeünïcode",
        ];
        for x in names {
            for y in names {
                let (a, b) = (Identifier::new(x).unwrap(), Identifier::new(y).unwrap());
                assert_eq!(a.cmp(&b), x.cmp(y), "{x:?} vs {y:?}");
                assert_eq!(a == b, x == y, "{x:?} == {y:?}");
            }
        }
    }

    #[test]
    fn identifier_refuses_path_tricks() {
        for bad in ["", ".", "..", "a/b", "a\\b", "a\0b", "a\nb"] {
            assert!(Identifier::new(bad).is_err(), "{bad:?} accepted");
        }
        assert!(Identifier::new(&"x".repeat(256)).is_err());
        for good in ["graspd", "my.repo", "a:b", "..x", "ünïcode"] {
            assert_eq!(Identifier::new(good).unwrap().as_str(), good);
        }
    }
}
