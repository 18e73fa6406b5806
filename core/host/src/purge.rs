//! `graspd purge`: deletes what the curation lists deny. A deny stops serving and keeps the
//! data (so lifting it serves everything again); purging is the operator's separate, explicit
//! step that deletes it: every stored event the deny lists in force (flags and `--config`
//! file) refuse, served or waiting, and the git directories of denied repositories.
//!
//! It runs with the server stopped: the store's file lock refuses a second opener, so a
//! running server (which holds it) makes the purge stop before anything is touched.

use std::fmt;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use graspd_core::policy::Policy;
use graspd_core::{Identifier, PublicKey};
use nostr::filter::Filter;
use nostr::nips::nip19::FromBech32;

use crate::config::Config;
use crate::policy_file::{PolicyFileError, PolicySource};
use crate::store::{Store, StoreError};

/// What a purge removed.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Purged {
    /// Served events, as `<id> kind <kind> by <npub>`.
    pub events: Vec<String>,
    /// Events waiting in purgatory, in the same form.
    pub waiting: Vec<String>,
    /// Repository directories removed.
    pub repos: Vec<PathBuf>,
}

/// Why a purge did not run (or stopped).
#[derive(Debug)]
pub enum PurgeError {
    /// The `--config` file cannot be read or has a bad entry.
    Policy(PolicyFileError),
    /// The store cannot be opened (a running server holds it, or it is unreadable), read or
    /// written.
    Store(StoreError),
    /// A repository directory could not be removed.
    Repo {
        path: PathBuf,
        error: std::io::Error,
    },
}

impl fmt::Display for PurgeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PurgeError::Policy(error) => write!(f, "bad --config: {error}"),
            PurgeError::Store(error) => write!(f, "{error}"),
            PurgeError::Repo { path, error } => {
                write!(f, "cannot remove {}: {error}", path.display())
            }
        }
    }
}

impl std::error::Error for PurgeError {}

/// The `purge` subcommand of both binaries: purges, prints what it removed, and says how it
/// ended.
pub fn main(config: &Config) -> ExitCode {
    let report = |line: &str| println!("{line}");
    match purge(config, report) {
        Ok(purged) => {
            println!(
                "purged {} served events, {} waiting events and {} repositories from {}",
                purged.events.len(),
                purged.waiting.len(),
                purged.repos.len(),
                config.data_dir.display()
            );
            ExitCode::SUCCESS
        }
        Err(error) => {
            eprintln!("graspd purge: {error}");
            ExitCode::FAILURE
        }
    }
}

/// Deletes from `config.data_dir` what the deny lists of `config` (its flags and its
/// `--config` file) refuse, calling `report` with one line per thing removed.
pub fn purge(config: &Config, mut report: impl FnMut(&str)) -> Result<Purged, PurgeError> {
    let source = PolicySource::new(config);
    let policy = source
        .policy(source.read().as_ref())
        .map_err(PurgeError::Policy)?;
    let max_tags = config.reference_limits().per_event;
    let mut purged = Purged::default();
    if !policy.has_deny_lists() {
        return Ok(purged);
    }
    // Opened first: a running server holds the lock, and then nothing is touched.
    let store = Store::open_configured(
        &config.data_dir,
        config.database().as_ref(),
        config.store_cache_mib,
    )
    .map_err(PurgeError::Store)?;
    let denied = |event: &nostr::event::Event| !policy.serves(event, max_tags);
    let events = store
        .query_visible(&[Filter::new()], usize::MAX, &denied)
        .map_err(PurgeError::Store)?;
    for event in events {
        if store.remove(&event.id).map_err(PurgeError::Store)? {
            let line = describe(&event);
            report(&format!("removed event {line}"));
            purged.events.push(line);
        }
    }
    for waiting in store.waiting_all().map_err(PurgeError::Store)? {
        if denied(&waiting.event)
            && store
                .remove_waiting(&waiting.event.id)
                .map_err(PurgeError::Store)?
        {
            let line = describe(&waiting.event);
            report(&format!("removed waiting event {line}"));
            purged.waiting.push(line);
        }
    }
    for path in denied_repos(&config.data_dir, &policy) {
        std::fs::remove_dir_all(&path).map_err(|error| PurgeError::Repo {
            path: path.clone(),
            error,
        })?;
        report(&format!("removed repository {}", path.display()));
        purged.repos.push(path);
    }
    Ok(purged)
}

fn describe(event: &nostr::event::Event) -> String {
    use nostr::nips::nip19::ToBech32;
    let author = event.pubkey.to_bech32().unwrap_or_default();
    format!("{} kind {} by {author}", event.id, event.kind.as_u16())
}

/// The hosted repositories (`<data>/<npub>/<identifier>.git`) that `policy` denies, in path
/// order. Directories whose names are not an npub and a valid identifier are left alone.
fn denied_repos(data_dir: &Path, policy: &Policy) -> Vec<PathBuf> {
    let mut denied = Vec::new();
    let Ok(owners) = std::fs::read_dir(data_dir) else {
        return denied;
    };
    for owner_dir in owners.flatten() {
        let name = owner_dir.file_name();
        let Ok(owner) = PublicKey::from_bech32(&name.to_string_lossy()) else {
            continue;
        };
        let Ok(repos) = std::fs::read_dir(owner_dir.path()) else {
            continue;
        };
        for repo in repos.flatten() {
            let file_name = repo.file_name().to_string_lossy().into_owned();
            let Some(identifier) = file_name
                .strip_suffix(".git")
                .and_then(|id| Identifier::new(id).ok())
            else {
                continue;
            };
            if repo.path().is_dir() && policy.denies_repo(&owner, &identifier) {
                denied.push(repo.path());
            }
        }
    }
    denied.sort();
    denied
}

#[cfg(test)]
mod tests {
    use nostr::nips::nip19::ToBech32;
    use nostr::prelude::{EventBuilder, FinalizeEvent, Keys, Kind, Tag};

    use super::*;
    use crate::store::WaitingEvent;

    fn keys(n: u8) -> Keys {
        Keys::parse(&format!("{:064x}", u64::from(n) + 1)).unwrap()
    }

    fn npub(n: u8) -> String {
        keys(n).public_key().to_bech32().unwrap()
    }

    fn event(author: u8, kind: u16, tags: &[&[&str]]) -> nostr::event::Event {
        let tags = tags.iter().map(|t| Tag::parse(t.iter().copied()).unwrap());
        EventBuilder::new(Kind::from(kind), "")
            .tags(tags)
            .finalize(&keys(author))
            .unwrap()
    }

    fn data_dir(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("graspd-purge-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    fn config(dir: &Path, args: &[&str]) -> Config {
        let mut argv = vec!["graspd", "purge", "--data-dir", dir.to_str().unwrap()];
        argv.extend(args);
        <Config as clap::Parser>::parse_from(argv)
    }

    #[test]
    fn the_lists_may_follow_the_subcommand() {
        let dir = data_dir("args");
        let deny = format!("{}/a", npub(1));
        let config = config(&dir, &["--deny-repo", &deny, "--deny-author", &npub(2)]);
        assert_eq!(config.command, Some(crate::Task::Purge));
        assert_eq!(config.data_dir, dir);
        assert_eq!((config.deny_repos.len(), config.deny_authors.len()), (1, 1));
        let server = <Config as clap::Parser>::parse_from(["graspd"]);
        assert_eq!(server.command, None);
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn what_the_deny_lists_refuse_is_removed_and_nothing_else() {
        let dir = data_dir("removes");
        let coordinate = format!("30617:{}:a", keys(1).public_key().to_hex());
        let denied_announcement = event(1, 30617, &[&["d", "a"]]);
        let denied_issue = event(3, 1621, &[&["a", &coordinate]]);
        let kept = event(2, 30617, &[&["d", "b"]]);
        let waiting_state = event(1, 30618, &[&["d", "a"]]);
        {
            let store = Store::open_in(&dir).unwrap();
            for e in [&denied_announcement, &denied_issue, &kept] {
                store.insert(e).unwrap();
            }
            store
                .put_waiting(&WaitingEvent {
                    event: waiting_state.clone(),
                    arrival: graspd_core::Arrival::Published,
                    expires_at: u64::MAX,
                })
                .unwrap();
        }
        let denied_repo = dir.join(npub(1)).join("a.git");
        let kept_repos = [
            dir.join(npub(1)).join("other.git"),
            dir.join(npub(2)).join("a.git"),
            dir.join("incoming").join("a.git"),
        ];
        for repo in kept_repos.iter().chain([&denied_repo]) {
            std::fs::create_dir_all(repo).unwrap();
        }

        // Nothing denied: nothing touched.
        let untouched = purge(&config(&dir, &["--allow-repo", "z"]), |_| {}).unwrap();
        assert_eq!(untouched, Purged::default());
        assert!(denied_repo.is_dir());

        let deny = format!("{}/a", npub(1));
        let mut lines = Vec::new();
        let purged = purge(&config(&dir, &["--deny-repo", &deny]), |line| {
            lines.push(line.to_owned())
        })
        .unwrap();
        assert_eq!(purged.events.len(), 2, "{lines:?}");
        assert_eq!(purged.waiting.len(), 1, "{lines:?}");
        assert_eq!(purged.repos, vec![denied_repo.clone()]);
        assert!(lines
            .iter()
            .any(|l| l.starts_with(&format!("removed event {}", denied_issue.id))));
        assert!(!denied_repo.exists());
        assert!(kept_repos.iter().all(|r| r.is_dir()));
        let store = Store::open_in(&dir).unwrap();
        assert!(store.get(&denied_announcement.id).unwrap().is_none());
        assert!(store.get(&denied_issue.id).unwrap().is_none());
        assert!(store.get(&kept.id).unwrap().is_some());
        assert!(store.waiting_all().unwrap().is_empty());

        // A held store (a running server) refuses the purge.
        let refused = purge(&config(&dir, &["--deny-repo", &deny]), |_| {}).unwrap_err();
        assert!(
            matches!(refused, PurgeError::Store(StoreError::InUse { .. })),
            "{refused}"
        );
        drop(store);
        let _ = std::fs::remove_dir_all(dir);
    }
}
