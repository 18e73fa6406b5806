//! Test helpers: real keys from fixed secrets and really signed events, so tests exercise the
//! same ids and signatures as production without an OS random source.

// Shared by every module's tests; each uses a different subset.
#![allow(dead_code)]

use std::collections::BTreeMap;

use nostr::event::{Event, Kind, Tag, UnsignedEvent};
use nostr::key::{Keys, SecretKey};
use nostr::types::Timestamp;

use crate::events::{self, GitEvent, RefName, RepoState};
use crate::ids::{Identifier, Oid, PublicKey};

/// Deterministic keys: `n` picks the secret `[n; 32]` (1..=255).
pub fn keys(n: u8) -> Keys {
    assert!(n > 0, "the all-zero secret is not a valid key");
    Keys::new(SecretKey::from_slice(&[n; 32]).unwrap())
}

pub fn pk(n: u8) -> PublicKey {
    keys(n).public_key()
}

pub fn oid(n: u8) -> Oid {
    Oid::from_bytes([n; 20])
}

pub fn ident(s: &str) -> Identifier {
    Identifier::new(s).unwrap()
}

/// Signs an event of `kind` with `tags` (each a list of strings) at `created_at`.
pub fn sign(keys: &Keys, kind: u16, created_at: u64, tags: &[&[&str]]) -> Event {
    let tags: Vec<Tag> = tags
        .iter()
        .map(|t| Tag::parse(t.iter().copied()).unwrap())
        .collect();
    let mut unsigned = UnsignedEvent::new(
        keys.public_key(),
        Timestamp::from_secs(created_at),
        Kind::from_u16(kind),
        tags,
        "",
    );
    let id = unsigned.id();
    let secp = secp256k1::Secp256k1::new();
    let sig = keys.sign_schnorr_with_aux_rand(&secp, id.as_bytes(), &[7; 32]);
    unsigned.add_signature_with_ctx(&secp, sig).unwrap()
}

pub fn parsed(event: &Event) -> GitEvent {
    events::parse(event).unwrap().unwrap()
}

/// A signed announcement by key `n` listing `maintainers` and our service's URLs.
pub fn announcement(n: u8, id: &str, maintainers: &[u8], created_at: u64) -> events::Announcement {
    let owner = keys(n);
    let npub = nostr::nips::nip19::ToBech32::to_bech32(&owner.public_key()).unwrap();
    let clone = format!("https://grasp.example/{npub}/{id}.git");
    let hexes: Vec<String> = maintainers.iter().map(|m| pk(*m).to_hex()).collect();
    let mut m_tag: Vec<&str> = vec!["maintainers"];
    m_tag.extend(hexes.iter().map(String::as_str));
    let event = sign(
        &owner,
        events::KIND_ANNOUNCEMENT,
        created_at,
        &[
            &["d", id],
            &["clone", &clone],
            &["relays", "wss://grasp.example"],
            &m_tag,
        ],
    );
    match parsed(&event) {
        GitEvent::Announcement(a) => a,
        other => panic!("not an announcement: {other:?}"),
    }
}

/// A signed state by key `n` with `refs` (name, oid byte) and an optional HEAD branch.
pub fn state(
    n: u8,
    id: &str,
    created_at: u64,
    refs: &[(&str, u8)],
    head: Option<&str>,
) -> RepoState {
    let hexes: Vec<(String, String)> = refs
        .iter()
        .map(|(r, o)| (r.to_string(), oid(*o).to_string()))
        .collect();
    let head_value = head.map(|h| format!("ref: {h}"));
    let mut tags: Vec<Vec<&str>> = vec![vec!["d", id]];
    tags.extend(hexes.iter().map(|(r, o)| vec![r.as_str(), o.as_str()]));
    if let Some(h) = &head_value {
        tags.push(vec!["HEAD", h.as_str()]);
    }
    let tags: Vec<&[&str]> = tags.iter().map(Vec::as_slice).collect();
    match parsed(&sign(&keys(n), events::KIND_STATE, created_at, &tags)) {
        GitEvent::State(s) => s,
        other => panic!("not a state: {other:?}"),
    }
}

pub fn refs(list: &[(&str, u8)]) -> BTreeMap<RefName, Oid> {
    list.iter().map(|(r, o)| (r.to_string(), oid(*o))).collect()
}
