//! The operator's policy file (`--config`): a TOML file with the curation lists, whose
//! entries are added to those of `--deny-author`, `--deny-repo`, `--allow-repo` and
//! `--archive-repo`.
//!
//! ```toml
//! deny_authors = ["npub1..."]
//! deny_repos = ["npub1.../spam", "malware"]
//! allow_repos = []
//! archive_repos = ["npub1.../linux"]
//! ```
//!
//! The file is read whole, at most [`MAX_FILE_BYTES`]. A file that does not parse, has an
//! unknown key or a bad entry is refused with the line it is on; at start-up that stops the
//! server, on a reload the lists in force stay (`driver/reload.rs`).

use std::fmt;
use std::hash::{Hash, Hasher};
use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use graspd_core::policy::{AuthorEntry, Policy, RepoEntry};
use serde::Deserialize;
use toml::Spanned;

use crate::config::Config;

/// Largest policy file read; a larger one is refused (it is not a list of keys).
pub const MAX_FILE_BYTES: u64 = 1024 * 1024;

/// Where the curation lists come from: the flags (fixed) and the file (re-read).
#[derive(Clone, Debug)]
pub struct PolicySource {
    deny_authors: Vec<AuthorEntry>,
    deny_repos: Vec<RepoEntry>,
    allow_repos: Vec<RepoEntry>,
    archive_repos: Vec<RepoEntry>,
    path: Option<PathBuf>,
}

/// What identifies one version of the file: its modification time, length and a hash of
/// its content (a rewrite within the same second and length still differs by content), or
/// why it could not be read.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Fingerprint {
    Read {
        modified: Option<SystemTime>,
        len: u64,
        hash: u64,
    },
    Unreadable(String),
}

/// The file's bytes as read once, with their fingerprint.
#[derive(Debug)]
pub struct FileVersion {
    pub fingerprint: Fingerprint,
    contents: Result<String, String>,
}

/// Why the lists could not be taken from the file; the text names the file and the line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PolicyFileError(pub String);

impl fmt::Display for PolicyFileError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    #[serde(default)]
    deny_authors: Vec<Spanned<String>>,
    #[serde(default)]
    deny_repos: Vec<Spanned<String>>,
    #[serde(default)]
    allow_repos: Vec<Spanned<String>>,
    #[serde(default)]
    archive_repos: Vec<Spanned<String>>,
}

impl PolicySource {
    pub fn new(config: &Config) -> PolicySource {
        PolicySource {
            deny_authors: config.deny_authors.clone(),
            deny_repos: config.deny_repos.clone(),
            allow_repos: config.allow_repos.clone(),
            archive_repos: config.archive_repos.clone(),
            path: config.config_file.clone(),
        }
    }

    /// The policy file, if one is configured.
    pub fn path(&self) -> Option<&Path> {
        self.path.as_deref()
    }

    /// Reads the file once (blocking). `None` without a file.
    pub fn read(&self) -> Option<FileVersion> {
        self.path.as_deref().map(read_file)
    }

    /// The lists: the flags' plus those of `version` of the file (the flags' alone without
    /// one).
    pub fn policy(&self, version: Option<&FileVersion>) -> Result<Policy, PolicyFileError> {
        let (mut authors, mut denied, mut allowed, mut archived) = (
            self.deny_authors.clone(),
            self.deny_repos.clone(),
            self.allow_repos.clone(),
            self.archive_repos.clone(),
        );
        if let (Some(version), Some(path)) = (version, self.path.as_deref()) {
            let text = version
                .contents
                .as_deref()
                .map_err(|why| PolicyFileError(format!("{}: {why}", path.display())))?;
            let file: File = toml::from_str(text).map_err(|e| {
                // One line for the log: toml's own text draws the line with a caret.
                let why = e.message().trim().replace('\n', "; ");
                PolicyFileError(match e.span() {
                    Some(span) => {
                        format!(
                            "{} line {}: {why}",
                            path.display(),
                            line_of(text, span.start)
                        )
                    }
                    None => format!("{}: {why}", path.display()),
                })
            })?;
            let place = |name: &str, entry: &Spanned<String>, why: String| {
                let line = line_of(text, entry.span().start);
                PolicyFileError(format!(
                    "{} line {line}: {name} entry {:?}: {why}",
                    path.display(),
                    entry.get_ref()
                ))
            };
            for entry in &file.deny_authors {
                let parsed = entry
                    .get_ref()
                    .parse()
                    .map_err(|why| place("deny_authors", entry, why));
                authors.push(parsed?);
            }
            for (name, list, into) in [
                ("deny_repos", &file.deny_repos, &mut denied),
                ("allow_repos", &file.allow_repos, &mut allowed),
                ("archive_repos", &file.archive_repos, &mut archived),
            ] {
                for entry in list {
                    let parsed = entry
                        .get_ref()
                        .parse()
                        .map_err(|why| place(name, entry, why));
                    into.push(parsed?);
                }
            }
        }
        Ok(Policy::new(authors, denied, allowed).archiving(archived))
    }
}

/// The 1-based line of byte `offset` in `text`.
fn line_of(text: &str, offset: usize) -> usize {
    text.get(..offset).unwrap_or(text).matches('\n').count() + 1
}

/// Reads `path` whole, at most [`MAX_FILE_BYTES`].
fn read_file(path: &Path) -> FileVersion {
    let unreadable = |why: String| FileVersion {
        fingerprint: Fingerprint::Unreadable(why.clone()),
        contents: Err(why),
    };
    let mut file = match std::fs::File::open(path) {
        Ok(file) => file,
        Err(e) => return unreadable(format!("cannot open: {e}")),
    };
    let modified = file.metadata().and_then(|m| m.modified()).ok();
    let mut bytes = Vec::new();
    if let Err(e) = (&mut file).take(MAX_FILE_BYTES + 1).read_to_end(&mut bytes) {
        return unreadable(format!("cannot read: {e}"));
    }
    if bytes.len() as u64 > MAX_FILE_BYTES {
        return unreadable(format!("larger than {MAX_FILE_BYTES} bytes"));
    }
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    bytes.hash(&mut hasher);
    let fingerprint = Fingerprint::Read {
        modified,
        len: bytes.len() as u64,
        hash: hasher.finish(),
    };
    let contents = String::from_utf8(bytes).map_err(|_| "not UTF-8 text".to_owned());
    FileVersion {
        fingerprint,
        contents,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use graspd_core::policy::PolicySizes;
    use nostr::nips::nip19::ToBech32;

    fn npub(seed: u8) -> String {
        let secret = nostr::prelude::SecretKey::from_slice(&[seed; 32]).unwrap();
        nostr::prelude::Keys::new(secret)
            .public_key()
            .to_bech32()
            .unwrap()
    }

    fn source(dir: &Path, text: &str, flags: &[&str]) -> PolicySource {
        let path = dir.join("graspd.toml");
        std::fs::write(&path, text).unwrap();
        let mut args = vec![
            "graspd".to_owned(),
            "--config".into(),
            path.display().to_string(),
        ];
        args.extend(flags.iter().map(|f| f.to_string()));
        PolicySource::new(&<Config as clap::Parser>::parse_from(args))
    }

    fn load(source: &PolicySource) -> Result<Policy, PolicyFileError> {
        source.policy(source.read().as_ref())
    }

    fn tempdir(name: &str) -> PathBuf {
        let dir =
            std::env::temp_dir().join(format!("graspd-policy-file-{name}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn the_file_s_lists_are_added_to_the_flags() {
        let dir = tempdir("added");
        let text = format!(
            "deny_authors = [\"{}\"]\ndeny_repos = [\"{}/spam\", \"malware\"]\n\
             archive_repos = [\"{}/linux\"]\n",
            npub(1),
            npub(2),
            npub(4)
        );
        let deny_flag = format!("--deny-author={}", npub(3));
        let flags = [deny_flag.as_str(), "--allow-repo=ok", "--archive-repo=git"];
        let source = source(&dir, &text, &flags);
        assert_eq!(
            load(&source).unwrap().sizes(),
            PolicySizes {
                deny_authors: 2,
                deny_repos: 2,
                allow_repos: 1,
                archive_repos: 2,
            }
        );
        // An empty file adds nothing.
        let empty = self::source(&dir, "", &[&deny_flag]);
        assert_eq!(load(&empty).unwrap().sizes().deny_authors, 1);
    }

    #[test]
    fn a_bad_entry_is_refused_with_its_line_and_list() {
        let dir = tempdir("bad-entry");
        let text = format!(
            "deny_repos = [\n  \"{}/ok\",\n  \"npub1typo\",\n]\n",
            npub(1)
        );
        let error = load(&source(&dir, &text, &[])).unwrap_err().0;
        assert!(
            error.contains("line 3: deny_repos entry \"npub1typo\""),
            "{error}"
        );
        let error = load(&source(&dir, "deny_authors = [\"nobody\"]", &[]))
            .unwrap_err()
            .0;
        assert!(
            error.contains("line 1: deny_authors entry \"nobody\""),
            "{error}"
        );
    }

    #[test]
    fn a_file_that_does_not_parse_or_has_unknown_keys_is_refused() {
        let dir = tempdir("bad-toml");
        let error = load(&source(&dir, "deny_repos = [\"a\"\n", &[]))
            .unwrap_err()
            .0;
        assert!(
            error.contains("graspd.toml") && error.contains("line"),
            "{error}"
        );
        let error = load(&source(&dir, "deny_repo = [\"a\"]\n", &[]))
            .unwrap_err()
            .0;
        assert!(error.contains("deny_repo"), "{error}");
        let missing = PolicySource {
            path: Some(dir.join("absent.toml")),
            ..source(&dir, "", &[])
        };
        assert!(load(&missing).unwrap_err().0.contains("cannot open"));
    }

    #[test]
    fn the_fingerprint_changes_with_the_content() {
        let dir = tempdir("fingerprint");
        let one = source(&dir, "deny_repos = [\"a\"]\n", &[]);
        let first = one.read().unwrap().fingerprint;
        assert_eq!(one.read().unwrap().fingerprint, first);
        // Same length, rewritten at once: the hash tells them apart.
        std::fs::write(one.path().unwrap(), "deny_repos = [\"b\"]\n").unwrap();
        assert_ne!(one.read().unwrap().fingerprint, first);
    }
}
