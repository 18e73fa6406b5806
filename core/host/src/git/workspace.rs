//! This instance's share of `<data-dir>/incoming/` (fetch quarantines, spooled pushes), and
//! which staging names in the data directory belong to a live instance.
//!
//! Several instances may share one data directory. Each works in `incoming/<id>/` and holds an
//! exclusive `flock` on `incoming/<id>.owner` for as long as its `Git` handle lives; the kernel
//! (or the NFS lock manager) lets the lock go when the process dies, however it dies. An
//! instance starting removes only what no live instance owns: a workspace whose owner file it
//! can lock, an entry with no owner file at all (left by a crash, or by a version that kept
//! everything directly under `incoming/`), and repositories half-created or half-removed by
//! such an instance (their staging names carry the id, `repo.rs`). The owner file is made
//! before the directory and removed after it, so a directory without one is never a live
//! instance's.

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

const OWNER_SUFFIX: &str = ".owner";

/// One `Git` handle's workspace; see the module documentation.
#[derive(Debug)]
pub struct Workspace {
    id: String,
    dir: PathBuf,
    /// Locked for the workspace's life; `None` if it could not be made (then nothing of ours
    /// is protected from another instance's start-up, as before workspaces existed).
    _owner: Option<File>,
}

impl Workspace {
    /// Takes a new workspace under `incoming`, after removing those no live instance owns.
    pub fn open(incoming: &Path) -> Workspace {
        let id = new_id();
        let dir = incoming.join(&id);
        let owner = take(incoming, &id);
        if let Err(error) = &owner {
            tracing::warn!(path = %incoming.display(), %error,
                "cannot lock a workspace of its own under incoming/; another instance starting on this data directory may remove this one's quarantines");
        }
        sweep(incoming, &id);
        if let Err(error) = std::fs::create_dir_all(&dir) {
            tracing::warn!(path = %dir.display(), %error, "cannot create the workspace directory");
        }
        Workspace {
            id,
            dir,
            _owner: owner.ok(),
        }
    }

    /// Names this workspace in staging names.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// Where this instance's quarantines and spooled bodies go.
    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

/// Whether the workspace `id` under `incoming` belongs to a live instance.
pub fn is_alive(incoming: &Path, id: &str) -> bool {
    let Ok(file) = File::options()
        .read(true)
        .write(true)
        .open(owner_path(incoming, id))
    else {
        return false;
    };
    // Locked by someone: alive. Our own probe's lock goes with `file`.
    !try_lock(&file).unwrap_or(false)
}

/// A process-unique, instance-unique id: hex of a random hash of the process id, then a
/// counter (several handles in one process, as in tests and the simulator).
fn new_id() -> String {
    use std::hash::{BuildHasher, Hasher};
    static PROCESS: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let process = PROCESS.get_or_init(|| {
        let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
        hasher.write_u32(std::process::id());
        format!("{:016x}", hasher.finish())
    });
    format!("{process}x{}", NEXT.fetch_add(1, Ordering::Relaxed))
}

fn owner_path(incoming: &Path, id: &str) -> PathBuf {
    incoming.join(format!("{id}{OWNER_SUFFIX}"))
}

fn take(incoming: &Path, id: &str) -> io::Result<File> {
    std::fs::create_dir_all(incoming)?;
    let file = File::options()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(owner_path(incoming, id))?;
    if try_lock(&file)? {
        Ok(file)
    } else {
        Err(io::Error::other("the new owner file is locked already"))
    }
}

/// `flock(LOCK_EX | LOCK_NB)`: true if taken, false if another open file holds it.
fn try_lock(file: &File) -> io::Result<bool> {
    // SAFETY: flock on a file descriptor `file` owns; no memory is passed.
    let taken = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } == 0;
    if taken {
        return Ok(true);
    }
    let error = io::Error::last_os_error();
    if error.kind() == io::ErrorKind::WouldBlock {
        Ok(false)
    } else {
        Err(error)
    }
}

/// Removes what no live instance owns under `incoming` (never `own`).
fn sweep(incoming: &Path, own: &str) {
    let Ok(entries) = std::fs::read_dir(incoming) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if let Some(id) = name.strip_suffix(OWNER_SUFFIX) {
            if id == own {
                continue;
            }
            let Ok(file) = File::options().read(true).write(true).open(entry.path()) else {
                continue;
            };
            if try_lock(&file).unwrap_or(false) {
                tracing::info!(
                    workspace = id,
                    "removing the incoming/ workspace of an instance that is gone"
                );
                let _ = std::fs::remove_dir_all(incoming.join(id));
                let _ = std::fs::remove_file(entry.path());
            }
        } else if name != own && !owner_path(incoming, &name).exists() {
            let path = entry.path();
            tracing::info!(path = %path.display(), "removing what an interrupted fetch or push left in incoming/");
            let _ = std::fs::remove_dir_all(&path).or_else(|_| std::fs::remove_file(&path));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp(label: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!(
            "graspd-workspace-{label}-{}-{}",
            std::process::id(),
            new_id()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn a_live_workspace_is_kept_and_a_dead_one_removed() {
        let incoming = temp("live-dead");
        let live = Workspace::open(&incoming);
        std::fs::write(live.dir().join("fetch-1"), b"quarantine").unwrap();
        let dead_id = {
            let dead = Workspace::open(&incoming);
            std::fs::write(dead.dir().join("push-1"), b"spool").unwrap();
            dead.id().to_owned()
        };
        // Left by a crash, or by a version without workspaces.
        std::fs::create_dir_all(incoming.join("fetch-77-3")).unwrap();
        assert!(is_alive(&incoming, live.id()));
        assert!(!is_alive(&incoming, &dead_id));

        let next = Workspace::open(&incoming);
        assert!(
            live.dir().join("fetch-1").exists(),
            "a live instance's quarantine went"
        );
        assert!(!incoming.join(&dead_id).exists());
        assert!(!owner_path(&incoming, &dead_id).exists());
        assert!(!incoming.join("fetch-77-3").exists());
        assert!(next.dir().is_dir());
        std::fs::remove_dir_all(&incoming).unwrap();
    }

    #[test]
    fn a_staged_repository_is_removed_only_when_its_instance_is_gone() {
        let data = temp("staging");
        let incoming = data.join("incoming");
        let live = Workspace::open(&incoming);
        let dead_id = Workspace::open(&incoming).id().to_owned();
        let owner = data.join("npub1owner");
        let staged = |name: String| {
            let path = owner.join(name);
            std::fs::create_dir_all(&path).unwrap();
            path
        };
        let being_made = staged(format!(".a.git.new-{}-0", live.id()));
        let interrupted = staged(format!(".b.git.removed-{dead_id}-1"));
        let legacy = staged(".c.git.new-4242-7".to_owned());
        let repository = staged("d.git".to_owned());

        crate::git::repo::remove_leftovers(&data, &incoming);
        assert!(
            being_made.exists(),
            "a live instance's creation was removed"
        );
        assert!(!interrupted.exists());
        assert!(!legacy.exists());
        assert!(repository.exists());
        std::fs::remove_dir_all(&data).unwrap();
    }
}
