//! One async lock per repository, so pushes, releases and fetches into the same repo never
//! interleave. Entries live only while someone holds or waits for them, and their number is
//! bounded. With instances sharing the data directory, each lock also takes the repository's
//! lock across instances ([`SharedLocks`]) once the local one is held, and lets it go first.

use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use crate::runtime::BoxFuture;

use futures_util::lock::{Mutex as AsyncMutex, OwnedMutexGuard};

/// The per-repository lock table.
#[derive(Clone)]
pub struct RepoLocks {
    inner: Arc<Inner>,
}

struct Inner {
    max_entries: usize,
    entries: Mutex<HashMap<PathBuf, Arc<AsyncMutex<()>>>>,
    /// The locks across instances, keyed by the path inside `base` (the data directory, which
    /// each instance may mount elsewhere).
    shared: Option<(Arc<dyn SharedLocks>, PathBuf)>,
}

/// Repository locks held across every instance sharing the data directory (PostgreSQL
/// advisory locks: `store/pg/repo_locks.rs`). Only ever taken by one task of an instance at a
/// time per repository: its local lock is held around them.
pub trait SharedLocks: Send + Sync {
    /// Completes once this instance holds the lock of the repository at `relative` (its path
    /// inside the data directory), or with why it cannot. Dropping the future before it
    /// completes leaves nothing held.
    fn acquire(&self, relative: &Path) -> BoxFuture<'static, Result<(), String>>;
    /// Lets the lock go; called from a drop, so it must not block.
    fn release(&self, relative: &Path);
}

/// Why a repository's lock could not be taken.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LockError {
    TooMany(TooManyLocks),
    /// The lock across instances could not be taken.
    Shared(String),
}

impl fmt::Display for LockError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LockError::TooMany(e) => e.fmt(f),
            LockError::Shared(why) => write!(
                f,
                "the repository's lock across instances is unavailable ({why}); try again later"
            ),
        }
    }
}

impl std::error::Error for LockError {}

/// Every repository in use at once already has a lock: the server is overloaded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TooManyLocks(pub usize);

impl fmt::Display for TooManyLocks {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "more than {} repositories busy at once; try again later",
            self.0
        )
    }
}

impl std::error::Error for TooManyLocks {}

impl fmt::Debug for RepoLocks {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RepoLocks")
            .field("held", &self.len())
            .finish()
    }
}

/// Holds a repository's lock; released on drop.
pub struct RepoGuard {
    guard: Option<OwnedMutexGuard<()>>,
    path: PathBuf,
    locks: Arc<Inner>,
    /// The repository's lock across instances, if taken.
    shared: Option<PathBuf>,
}

impl RepoLocks {
    pub fn new(max_entries: usize) -> RepoLocks {
        RepoLocks {
            inner: Arc::new(Inner {
                max_entries,
                entries: Mutex::new(HashMap::new()),
                shared: None,
            }),
        }
    }

    /// The same table, each lock also taking `shared`'s lock of the repository, keyed by its
    /// path inside `base`. Call it before any lock is taken.
    pub fn with_shared(self, shared: Arc<dyn SharedLocks>, base: PathBuf) -> RepoLocks {
        RepoLocks {
            inner: Arc::new(Inner {
                max_entries: self.inner.max_entries,
                entries: Mutex::new(HashMap::new()),
                shared: Some((shared, base)),
            }),
        }
    }

    /// Waits for the lock of the repository at `path` (and then for its lock across
    /// instances, if they share the data directory).
    pub async fn lock(&self, path: &Path) -> Result<RepoGuard, LockError> {
        let mutex = {
            let mut entries = self.inner.entries.lock().unwrap_or_else(|e| e.into_inner());
            match entries.get(path) {
                Some(mutex) => Arc::clone(mutex),
                None if entries.len() >= self.inner.max_entries => {
                    return Err(LockError::TooMany(TooManyLocks(self.inner.max_entries)))
                }
                None => {
                    let mutex = Arc::new(AsyncMutex::new(()));
                    entries.insert(path.to_owned(), Arc::clone(&mutex));
                    mutex
                }
            }
        };
        // If this future is dropped while waiting, the Arc it held is gone and the next guard
        // drop cleans the entry up.
        let guard = mutex.lock_owned().await;
        let mut held = RepoGuard {
            guard: Some(guard),
            path: path.to_owned(),
            locks: Arc::clone(&self.inner),
            shared: None,
        };
        if let Some((shared, base)) = &self.inner.shared {
            let relative = path.strip_prefix(base).unwrap_or(path).to_owned();
            // On failure the local lock goes with `held`.
            shared.acquire(&relative).await.map_err(LockError::Shared)?;
            held.shared = Some(relative);
        }
        Ok(held)
    }

    /// How many repositories are locked or awaited.
    pub fn len(&self) -> usize {
        self.inner
            .entries
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl Drop for RepoGuard {
    fn drop(&mut self) {
        if let (Some(relative), Some((shared, _))) = (&self.shared, &self.locks.shared) {
            shared.release(relative);
        }
        let mut entries = self.locks.entries.lock().unwrap_or_else(|e| e.into_inner());
        drop(self.guard.take());
        // Clones are only made under the table lock, so a count of 1 (the table's own) means
        // nobody holds or waits for this lock.
        if entries
            .get(&self.path)
            .is_some_and(|m| Arc::strong_count(m) == 1)
        {
            entries.remove(&self.path);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_util::FutureExt;

    #[test]
    fn serialises_and_forgets_idle_repos() {
        let locks = RepoLocks::new(2);
        let a = locks.lock(Path::new("/a")).now_or_never().unwrap().unwrap();
        assert!(
            locks.lock(Path::new("/a")).now_or_never().is_none(),
            "second holder must wait"
        );
        let _b = locks.lock(Path::new("/b")).now_or_never().unwrap().unwrap();
        assert_eq!(
            locks.lock(Path::new("/c")).now_or_never().unwrap().err(),
            Some(LockError::TooMany(TooManyLocks(2)))
        );
        drop(a);
        assert_eq!(locks.len(), 1);
        assert!(locks.lock(Path::new("/a")).now_or_never().unwrap().is_ok());
    }

    /// Records what is held across instances; refuses when told to.
    #[derive(Default)]
    struct Recorded {
        held: Mutex<Vec<PathBuf>>,
        refuse: std::sync::atomic::AtomicBool,
    }

    impl SharedLocks for Recorded {
        fn acquire(&self, relative: &Path) -> BoxFuture<'static, Result<(), String>> {
            let outcome = if self.refuse.load(std::sync::atomic::Ordering::Relaxed) {
                Err("database down".to_owned())
            } else {
                self.held.lock().unwrap().push(relative.to_owned());
                Ok(())
            };
            Box::pin(async move { outcome })
        }

        fn release(&self, relative: &Path) {
            self.held.lock().unwrap().retain(|p| p != relative);
        }
    }

    #[test]
    fn the_lock_across_instances_is_held_with_the_local_one_and_keyed_inside_the_data_dir() {
        let shared = Arc::new(Recorded::default());
        let locks = RepoLocks::new(4).with_shared(shared.clone(), PathBuf::from("/data"));
        let a = locks
            .lock(Path::new("/data/npub1x/a.git"))
            .now_or_never()
            .unwrap()
            .unwrap();
        assert_eq!(
            *shared.held.lock().unwrap(),
            [PathBuf::from("npub1x/a.git")]
        );
        drop(a);
        assert!(shared.held.lock().unwrap().is_empty());

        shared
            .refuse
            .store(true, std::sync::atomic::Ordering::Relaxed);
        let refused = locks
            .lock(Path::new("/data/npub1x/a.git"))
            .now_or_never()
            .unwrap();
        assert!(matches!(refused, Err(LockError::Shared(_))));
        assert!(locks.is_empty(), "the local lock went with the refusal");
    }
}
