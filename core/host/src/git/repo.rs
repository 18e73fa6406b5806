//! Bare repositories on disk: create, remove, inspect (gix, no fork per object) and apply
//! (copy objects with `git fetch`, then one compare-and-swap ref transaction).
//!
//! These functions do not lock; [`super::Git`] wraps them with the per-repo lock.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use gix::refs::transaction::{self, Change, LogChange, PreviousValue, RefLog};
use gix::refs::{FullName, Target};
use graspd_core::{Oid, RefEdit};

use super::process::{self, git};
use super::GitError;
use crate::runtime::{unblock, Runtime};

/// Config every hosted repo gets: upload-pack serves any reachable object by id (GRASP
/// servers fetch specific commits from each other) and partial clones.
const REPO_CONFIG: &str = "[uploadpack]\n\
\tallowTipSHA1InWant = true\n\
\tallowReachableSHA1InWant = true\n\
\tallowFilter = true\n";

/// Most git output we keep from maintenance commands.
const OUTPUT_CAP: usize = 256 * 1024;

/// What a repo holds: which of the asked-for objects exist, its direct refs, and where HEAD
/// points.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Inspection {
    pub present: Vec<Oid>,
    /// Every non-symbolic ref (`refs/heads/..`, `refs/tags/..`, `refs/nostr/..`) and the
    /// object it names (tags: the tag object, not peeled).
    pub refs: BTreeMap<String, Oid>,
    /// HEAD's symbolic target, e.g. `refs/heads/main`.
    pub head: Option<String>,
}

/// What one apply writes into a repository on disk: the engine's [`graspd_core::ApplyPlan`]
/// with its source repository resolved to a path.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RepoWrite {
    /// A local repo to copy missing `objects` from (`None`: they must be present already).
    pub copy_from: Option<PathBuf>,
    pub objects: Vec<Oid>,
    pub refs: Vec<RefEdit>,
    /// Make HEAD a symbolic ref to this (e.g. `refs/heads/main`).
    pub head: Option<String>,
}

/// Creates a bare repo at `path` with [`REPO_CONFIG`]; does nothing if it exists. The repo is
/// built under a temporary name and renamed into place, so nobody sees a half-made one.
///
/// `workspace` names the instance doing it ([`super::workspace`]), so an instance starting on
/// a shared data directory removes a staging name only when that instance is gone.
pub async fn create_bare_repo(
    runtime: &dyn Runtime,
    path: &Path,
    workspace: &str,
) -> Result<(), GitError> {
    if is_repo(path) {
        return Ok(());
    }
    let parent = path
        .parent()
        .ok_or_else(|| GitError::Git(format!("{} has no parent directory", path.display())))?;
    let parent_owned = parent.to_owned();
    unblock(runtime, move || std::fs::create_dir_all(parent_owned)).await??;
    let staging = staging_path(path, "new", workspace);
    let mut init = git(None);
    // Made as the operator's own `git init --bare` makes it: the unborn HEAD is their
    // `init.defaultBranch`, else git's default. Clients clone the empty repository and create
    // their branches themselves, which fails if the clone is already on the branch they create.
    // Every other git run here ignores the operator's configuration.
    for variable in ["GIT_CONFIG_GLOBAL", "GIT_CONFIG_NOSYSTEM"] {
        match std::env::var_os(variable) {
            Some(value) => init.env(variable, value),
            None => init.env_remove(variable),
        };
    }
    init.arg("init")
        .arg("--bare")
        .arg("--quiet")
        // No template: git's sample hooks and description are never used here.
        .arg("--template=")
        .arg(&staging);
    let out = process::run(runtime, init, &b""[..], None, OUTPUT_CAP).await?;
    if !out.success() {
        return Err(GitError::Git(format!(
            "git init failed: {}",
            out.stderr_tail()
        )));
    }
    let (staging_owned, target) = (staging.clone(), path.to_owned());
    let placed = unblock(runtime, move || -> std::io::Result<()> {
        use std::io::Write;
        let mut config = std::fs::OpenOptions::new()
            .append(true)
            .open(staging_owned.join("config"))?;
        config.write_all(REPO_CONFIG.as_bytes())?;
        config.sync_all()?;
        if is_repo(&target) {
            // Someone else created it meanwhile: theirs wins.
            return std::fs::remove_dir_all(&staging_owned);
        }
        std::fs::rename(&staging_owned, &target)
    })
    .await?;
    if let Err(e) = placed {
        let staging_owned = staging.clone();
        let _ = unblock(runtime, move || std::fs::remove_dir_all(staging_owned)).await;
        return Err(e.into());
    }
    Ok(())
}

/// Removes the repo at `path` (first renamed aside, so it vanishes at once); nothing if absent.
/// The owner's directory goes too once it is empty.
pub async fn remove_repo(
    runtime: &dyn Runtime,
    path: &Path,
    workspace: &str,
) -> Result<(), GitError> {
    let path = path.to_owned();
    let trash = staging_path(&path, "removed", workspace);
    unblock(runtime, move || {
        match std::fs::rename(&path, &trash) {
            Ok(()) => std::fs::remove_dir_all(&trash)?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
        if let Some(owner_dir) = path.parent() {
            // Fails while the owner has another repository (or one being created): kept then.
            let _ = std::fs::remove_dir(owner_dir);
        }
        Ok(())
    })
    .await??;
    Ok(())
}

/// Start-up: removes what an interrupted creation or removal left in the owners' directories
/// of `data_dir` (`.<id>.git.new-<workspace>-<n>`, `.<id>.git.removed-<workspace>-<n>`) when
/// the workspace that made it is gone (`incoming` holds the workspaces), then owners'
/// directories left empty. Nothing else is touched.
pub fn remove_leftovers(data_dir: &Path, incoming: &Path) {
    let Ok(owners) = std::fs::read_dir(data_dir) else {
        return;
    };
    for owner in owners.flatten() {
        let is_owner = owner.file_name().to_string_lossy().starts_with("npub1");
        if !is_owner || !owner.path().is_dir() {
            continue;
        }
        let Ok(entries) = std::fs::read_dir(owner.path()) else {
            continue;
        };
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            let Some(workspace) = staging_workspace(&name) else {
                continue;
            };
            if super::workspace::is_alive(incoming, workspace) {
                continue;
            }
            tracing::info!(path = %entry.path().display(), "removing an interrupted repository creation or removal");
            let _ = std::fs::remove_dir_all(entry.path());
        }
        let _ = std::fs::remove_dir(owner.path());
    }
}

/// The workspace named by a staging name (`.<id>.git.<purpose>-<workspace>-<n>`), if it is one.
fn staging_workspace(name: &str) -> Option<&str> {
    if !name.starts_with('.') {
        return None;
    }
    let (_, rest) = name
        .split_once(".git.new-")
        .or_else(|| name.split_once(".git.removed-"))?;
    Some(
        rest.rsplit_once('-')
            .map_or(rest, |(workspace, _)| workspace),
    )
}

/// True if `path` looks like a bare repo (has `objects/` and `HEAD`).
pub fn is_repo(path: &Path) -> bool {
    path.join("objects").is_dir() && path.join("HEAD").is_file()
}

fn staging_path(path: &Path, purpose: &str, workspace: &str) -> PathBuf {
    use std::sync::atomic::{AtomicU64, Ordering};
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    path.with_file_name(format!(".{name}.{purpose}-{workspace}-{n}"))
}

/// Which of `oids` the repo at `path` has, plus its refs and HEAD.
pub async fn inspect(
    runtime: &dyn Runtime,
    path: &Path,
    oids: &[Oid],
) -> Result<Inspection, GitError> {
    let path = path.to_owned();
    let oids = oids.to_vec();
    unblock(runtime, move || inspect_blocking(&path, &oids)).await?
}

pub(super) fn open(path: &Path) -> Result<gix::Repository, GitError> {
    gix::open_opts(path, gix::open::Options::isolated())
        .map_err(|e| GitError::Git(format!("cannot open {}: {e}", path.display())))
}

fn gix_id(oid: &Oid) -> gix::ObjectId {
    gix::ObjectId::from(*oid.as_bytes())
}

pub(super) fn core_oid(id: &gix::oid) -> Option<Oid> {
    <[u8; 20]>::try_from(id.as_bytes())
        .ok()
        .map(Oid::from_bytes)
}

fn inspect_blocking(path: &Path, oids: &[Oid]) -> Result<Inspection, GitError> {
    let repo = open(path)?;
    let present = oids
        .iter()
        .filter(|oid| repo.has_object(gix_id(oid)))
        .copied()
        .collect();
    let mut refs = BTreeMap::new();
    let git_err = |e: &dyn std::fmt::Display| GitError::Git(format!("reading refs: {e}"));
    let platform = repo.references().map_err(|e| git_err(&e))?;
    for reference in platform.all().map_err(|e| git_err(&e))? {
        let reference = reference.map_err(|e| git_err(&e))?;
        if let Some(id) = reference.target().try_id() {
            if let Some(oid) = core_oid(id) {
                refs.insert(reference.name().as_bstr().to_string(), oid);
            }
        }
    }
    let head = repo.find_reference("HEAD").ok().and_then(|head| {
        head.target()
            .try_name()
            .map(|name| name.as_bstr().to_string())
    });
    Ok(Inspection {
        present,
        refs,
        head,
    })
}

/// Copies missing objects from `write.copy_from`, then applies every ref change and HEAD in one
/// transaction that fails as a whole if any ref is not at its expected value.
pub async fn apply(runtime: &dyn Runtime, path: &Path, write: &RepoWrite) -> Result<(), GitError> {
    let missing = missing_objects(runtime, path, &write.objects).await?;
    if let (Some(source), false) = (&write.copy_from, missing.is_empty()) {
        copy_objects(runtime, path, source, &missing).await?;
    }
    let mut wanted: Vec<Oid> = write.refs.iter().filter_map(|r| r.new).collect();
    wanted.extend(missing);
    let still_missing = missing_objects(runtime, path, &wanted).await?;
    if !still_missing.is_empty() {
        return Err(GitError::MissingObjects(still_missing));
    }
    let path = path.to_owned();
    let write = write.clone();
    unblock(runtime, move || edit_refs_blocking(&path, &write)).await?
}

async fn missing_objects(
    runtime: &dyn Runtime,
    path: &Path,
    oids: &[Oid],
) -> Result<Vec<Oid>, GitError> {
    let present = inspect(runtime, path, oids).await?.present;
    Ok(oids
        .iter()
        .filter(|o| !present.contains(o))
        .copied()
        .collect())
}

/// `git fetch <source> <oid>...` into `path`: objects only, no refs, no FETCH_HEAD.
async fn copy_objects(
    runtime: &dyn Runtime,
    path: &Path,
    source: &Path,
    oids: &[Oid],
) -> Result<(), GitError> {
    let mut fetch = git(Some(path));
    // The source's upload-pack inherits `-c` through the environment: let it serve any id.
    fetch
        .args([
            "-c",
            "uploadpack.allowAnySHA1InWant=true",
            "fetch",
            "--quiet",
            "--no-tags",
        ])
        .args(["--no-write-fetch-head", "--no-auto-gc"])
        .arg(source)
        .args(oids.iter().map(|o| o.to_string()));
    let out = process::run(runtime, fetch, &b""[..], None, OUTPUT_CAP).await?;
    if !out.success() {
        return Err(GitError::Git(format!(
            "copying {} objects from {} failed: {}",
            oids.len(),
            source.display(),
            out.stderr_tail()
        )));
    }
    Ok(())
}

fn full_name(name: &str) -> Result<FullName, GitError> {
    FullName::try_from(name).map_err(|e| GitError::Git(format!("bad ref name {name:?}: {e}")))
}

fn edit_refs_blocking(path: &Path, write: &RepoWrite) -> Result<(), GitError> {
    let mut repo = open(path)?;
    repo.committer_or_set_generic_fallback()
        .map_err(|e| GitError::Git(format!("no committer for the reflog: {e}")))?;
    let log = || LogChange {
        mode: RefLog::AndReference,
        force_create_reflog: false,
        message: "graspd: align with repository state".into(),
    };
    let mut edits = Vec::with_capacity(write.refs.len() + 1);
    for change in &write.refs {
        let expected = match change.expected {
            Some(old) => PreviousValue::MustExistAndMatch(Target::Object(gix_id(&old))),
            None => PreviousValue::MustNotExist,
        };
        let change_kind = match change.new {
            Some(new) => Change::Update {
                log: log(),
                expected,
                new: Target::Object(gix_id(&new)),
            },
            None if change.expected.is_none() => continue,
            None => Change::Delete {
                expected,
                log: RefLog::AndReference,
            },
        };
        edits.push(transaction::RefEdit {
            change: change_kind,
            name: full_name(&change.name)?,
            deref: false,
        });
    }
    if let Some(head) = &write.head {
        edits.push(transaction::RefEdit {
            change: Change::Update {
                log: log(),
                expected: PreviousValue::Any,
                new: Target::Symbolic(full_name(head)?),
            },
            name: full_name("HEAD")?,
            deref: false,
        });
    }
    if edits.is_empty() {
        return Ok(());
    }
    repo.edit_references(edits)
        .map_err(|e| GitError::RefConflict(e.to_string()))?;
    Ok(())
}
