//! One async lock per repository, so pushes, releases and fetches into the same repo never
//! interleave. Entries live only while someone holds or waits for them, and their number is
//! bounded.

use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use futures_util::lock::{Mutex as AsyncMutex, OwnedMutexGuard};

/// The per-repository lock table.
#[derive(Clone)]
pub struct RepoLocks {
    inner: Arc<Inner>,
}

struct Inner {
    max_entries: usize,
    entries: Mutex<HashMap<PathBuf, Arc<AsyncMutex<()>>>>,
}

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
}

impl RepoLocks {
    pub fn new(max_entries: usize) -> RepoLocks {
        RepoLocks {
            inner: Arc::new(Inner {
                max_entries,
                entries: Mutex::new(HashMap::new()),
            }),
        }
    }

    /// Waits for the lock of the repository at `path`.
    pub async fn lock(&self, path: &Path) -> Result<RepoGuard, TooManyLocks> {
        let mutex = {
            let mut entries = self.inner.entries.lock().unwrap_or_else(|e| e.into_inner());
            match entries.get(path) {
                Some(mutex) => Arc::clone(mutex),
                None if entries.len() >= self.inner.max_entries => {
                    return Err(TooManyLocks(self.inner.max_entries))
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
        Ok(RepoGuard {
            guard: Some(guard),
            path: path.to_owned(),
            locks: Arc::clone(&self.inner),
        })
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
            Some(TooManyLocks(2))
        );
        drop(a);
        assert_eq!(locks.len(), 1);
        assert!(locks.lock(Path::new("/a")).now_or_never().unwrap().is_ok());
    }
}
