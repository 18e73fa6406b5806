//! Builds NIP-34 events with deterministic keys and correct ids, without signing.
//!
//! The engine ignores signatures (the host verifies them), and Schnorr signing would need
//! randomness, so every event carries an all-zero signature. Signatures never enter the trace.

use std::collections::BTreeMap;

use graspd_core::{EventId, Oid, PublicKey};
use nostr::event::{Event, Kind, Signature, Tag, Tags};
use nostr::key::{Keys, SecretKey};
use nostr::nips::nip19::ToBech32;
use nostr::types::Timestamp;

use crate::rng::Rng;

/// A simulated nostr user: deterministic keys from the seed.
#[derive(Clone, Debug)]
pub struct User {
    pub name: String,
    pub pubkey: PublicKey,
    pub npub: String,
}

impl User {
    pub fn generate(name: &str, rng: &mut Rng) -> User {
        loop {
            let bytes: [u8; 32] = rng.bytes();
            // Almost every 32-byte string is a valid secret key; retry the rare one that is not.
            if let Ok(secret) = SecretKey::from_slice(&bytes) {
                let keys = Keys::new(secret);
                let pubkey = keys.public_key();
                let npub = pubkey.to_bech32().expect("bech32 of a public key");
                return User {
                    name: name.to_owned(),
                    pubkey,
                    npub,
                };
            }
        }
    }
}

/// The parts every simulated event is made of, with its correct id.
pub struct Unsigned {
    pub id: EventId,
    pub pubkey: PublicKey,
    pub created_at: Timestamp,
    pub kind: Kind,
    pub tags: Tags,
    pub content: String,
}

impl Unsigned {
    pub fn new(
        pubkey: PublicKey,
        kind: u16,
        created_at: u64,
        tags: Vec<Vec<String>>,
        content: &str,
    ) -> Unsigned {
        let tags = Tags::from_list(
            tags.into_iter()
                .map(|t| Tag::parse(t).expect("non-empty tag"))
                .collect(),
        );
        let created_at = Timestamp::from_secs(created_at);
        let kind = Kind::from(kind);
        let id = EventId::compute(&pubkey, &created_at, &kind, &tags, content);
        Unsigned {
            id,
            pubkey,
            created_at,
            kind,
            tags,
            content: content.to_owned(),
        }
    }

    pub fn with_signature(self, sig: Signature) -> Event {
        Event::new(
            self.id,
            self.pubkey,
            self.created_at,
            self.kind,
            self.tags,
            self.content,
            sig,
        )
    }
}

/// An unsigned event with a correct id and a zero signature.
pub fn event(
    author: &User,
    kind: u16,
    created_at: u64,
    tags: Vec<Vec<String>>,
    content: &str,
) -> Event {
    let sig = Signature::from_slice(&[0u8; 64]).expect("64 bytes");
    Unsigned::new(author.pubkey, kind, created_at, tags, content).with_signature(sig)
}

fn tag<const N: usize>(parts: [&str; N]) -> Vec<String> {
    parts.iter().map(|s| (*s).to_owned()).collect()
}

pub fn announcement(
    owner: &User,
    created_at: u64,
    identifier: &str,
    clone: &[String],
    relays: &[String],
    maintainers: &[PublicKey],
) -> Event {
    let mut tags = vec![tag(["d", identifier]), tag(["name", identifier])];
    let mut c = vec!["clone".to_owned()];
    c.extend(clone.iter().cloned());
    tags.push(c);
    let mut r = vec!["relays".to_owned()];
    r.extend(relays.iter().cloned());
    tags.push(r);
    if !maintainers.is_empty() {
        let mut m = vec!["maintainers".to_owned()];
        m.extend(maintainers.iter().map(PublicKey::to_hex));
        tags.push(m);
    }
    event(owner, 30617, created_at, tags, "")
}

pub fn state(
    author: &User,
    created_at: u64,
    identifier: &str,
    refs: &BTreeMap<String, Oid>,
    head: Option<&str>,
) -> Event {
    let mut tags = vec![tag(["d", identifier])];
    for (name, oid) in refs {
        tags.push(vec![name.clone(), oid.to_string()]);
    }
    if let Some(h) = head {
        tags.push(vec!["HEAD".to_owned(), format!("ref: {h}")]);
    }
    event(author, 30618, created_at, tags, "")
}

pub fn coordinate(owner: &PublicKey, identifier: &str) -> String {
    format!("30617:{}:{identifier}", owner.to_hex())
}

/// A PR (1618) or, with `updates`, a PR update (1619).
pub fn pull_request(
    author: &User,
    created_at: u64,
    targets: &[String],
    commit: Oid,
    clone: &[String],
    updates: Option<EventId>,
) -> Event {
    let mut tags: Vec<Vec<String>> = targets.iter().map(|a| tag(["a", a])).collect();
    tags.push(vec!["c".to_owned(), commit.to_string()]);
    let mut c = vec!["clone".to_owned()];
    c.extend(clone.iter().cloned());
    tags.push(c);
    let kind = match updates {
        Some(pr) => {
            tags.push(vec!["E".to_owned(), pr.to_hex()]);
            1619
        }
        None => 1618,
    };
    event(author, kind, created_at, tags, "")
}

pub fn deletion(author: &User, created_at: u64, ids: &[EventId], coords: &[String]) -> Event {
    let mut tags: Vec<Vec<String>> = ids
        .iter()
        .map(|id| vec!["e".to_owned(), id.to_hex()])
        .collect();
    tags.extend(coords.iter().map(|a| tag(["a", a])));
    event(author, 5, created_at, tags, "")
}

/// A fresh object id drawn from the seed.
pub fn oid(rng: &mut Rng) -> Oid {
    Oid::from_bytes(rng.bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_correct_and_deterministic() {
        let mut r1 = Rng::new(9);
        let mut r2 = Rng::new(9);
        let u1 = User::generate("alice", &mut r1);
        let u2 = User::generate("alice", &mut r2);
        assert_eq!(u1.pubkey, u2.pubkey);
        assert!(u1.npub.starts_with("npub1"));
        let e1 = announcement(
            &u1,
            1_700_000_000,
            "repo",
            &["https://a/x.git".into()],
            &[],
            &[],
        );
        let e2 = announcement(
            &u2,
            1_700_000_000,
            "repo",
            &["https://a/x.git".into()],
            &[],
            &[],
        );
        assert_eq!(e1.id, e2.id);
        assert!(e1.verify_id());
    }
}
