//! Repository locks across instances: a session-level advisory lock per repository, held on
//! one connection of this instance's own (outside the pool) for as long as the repository's
//! local lock is held (`git/locks.rs`). Several instances on one data directory then never
//! run ref transactions, receive-pack or prunes on one repository at once.
//!
//! A lock is taken with `pg_try_advisory_lock` and retried with a short backoff, never with
//! a blocking `pg_advisory_lock`: the one connection serves every repository, and a wait on
//! it would hold up the others. Keys are `(REPO_LOCK_CLASS, hash of the repository's path
//! inside the data directory)` (the two-key form, so they cannot meet the store's
//! single-key locks); two repositories whose hashes collide share a lock, which only
//! serialises them. If the connection breaks, PostgreSQL lets its locks go: logged, counted
//! in the errors callers see, and the next lock connects again.

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::git::SharedLocks;
use crate::runtime::{unblock, BoxFuture, Runtime};

/// The first key of every repository lock (`grrl`).
pub const REPO_LOCK_CLASS: i32 = 0x6772_726c;
/// The first wait before trying a lock another instance holds again.
const RETRY_FIRST: Duration = Duration::from_millis(2);
/// The longest wait between two tries.
const RETRY_MAX: Duration = Duration::from_millis(100);
/// The longest this instance waits for a repository another instance holds.
pub const ACQUIRE_WAIT: Duration = Duration::from_secs(300);

/// The second key of a repository's lock: FNV-1a of its path inside the data directory, the
/// same on every instance and every build.
pub fn repo_key(relative: &Path) -> i32 {
    let mut hash: u32 = 0x811c_9dc5;
    for byte in relative.as_os_str().as_encoded_bytes() {
        hash ^= u32::from(*byte);
        hash = hash.wrapping_mul(0x0100_0193);
    }
    hash as i32
}

/// The connection holding this instance's repository locks.
pub struct SessionLocks {
    config: postgres::Config,
    label: String,
    client: Mutex<Option<postgres::Client>>,
}

impl SessionLocks {
    pub fn new(config: postgres::Config, label: String) -> SessionLocks {
        SessionLocks {
            config,
            label,
            client: Mutex::new(None),
        }
    }

    fn on_connection<T>(
        &self,
        body: impl FnOnce(&mut postgres::Client) -> Result<T, postgres::Error>,
    ) -> Result<T, String> {
        let mut slot = self.client.lock().unwrap_or_else(|e| e.into_inner());
        if slot.as_ref().is_some_and(postgres::Client::is_closed) {
            tracing::error!(database = %self.label,
                "the connection holding repository locks closed; the locks it held are gone");
            *slot = None;
        }
        if slot.is_none() {
            *slot = Some(
                self.config
                    .connect(postgres::NoTls)
                    .map_err(|e| format!("cannot connect for repository locks: {e}"))?,
            );
        }
        let client = slot.as_mut().expect("connected above");
        let outcome = body(client);
        if client.is_closed() {
            *slot = None;
        }
        outcome.map_err(|e| format!("repository lock: {e}"))
    }

    /// Takes `key`'s lock if no other instance holds it (this one may hold it already: the
    /// locks count, and each take needs its release).
    pub fn try_lock(&self, key: i32) -> Result<bool, String> {
        self.on_connection(|client| {
            Ok(client
                .query_one(
                    "SELECT pg_try_advisory_lock($1, $2)",
                    &[&REPO_LOCK_CLASS, &key],
                )?
                .get(0))
        })
    }

    pub fn unlock(&self, key: i32) -> Result<(), String> {
        self.on_connection(|client| {
            client.execute(
                "SELECT pg_advisory_unlock($1, $2)",
                &[&REPO_LOCK_CLASS, &key],
            )?;
            Ok(())
        })
    }
}

/// [`SharedLocks`] on PostgreSQL, over the runtime's blocking pool and timers.
pub struct PgRepoLocks {
    runtime: Arc<dyn Runtime>,
    inner: Arc<PgRepoLocksInner>,
}

impl PgRepoLocks {
    /// Connects lazily, at the first lock.
    pub fn new(
        runtime: Arc<dyn Runtime>,
        settings: &super::PgSettings,
    ) -> Result<PgRepoLocks, String> {
        let config: postgres::Config = settings
            .url
            .parse()
            .map_err(|e| format!("the --database-url is not a PostgreSQL connection URL: {e}"))?;
        let label = super::redacted(&config);
        let session = Arc::new(SessionLocks::new(config, label));
        Ok(PgRepoLocks {
            inner: Arc::new(PgRepoLocksInner {
                runtime: Arc::clone(&runtime),
                session,
            }),
            runtime,
        })
    }
}

/// Where one acquisition is: the tries run in a task of their own, so a caller that stops
/// waiting (its request was dropped) never leaves a lock taken that nobody will release.
enum Phase {
    Trying,
    /// Taken, and not yet handed to the caller.
    Taken,
    /// Handed to the caller, who releases it.
    Handed,
    /// The caller stopped waiting: a lock taken now is released at once.
    Abandoned,
}

/// The caller's side of an acquisition; dropping it before the lock is handed over
/// abandons it.
struct Waiter {
    phase: Arc<Mutex<Phase>>,
    locks: Arc<PgRepoLocksInner>,
    key: i32,
}

impl Drop for Waiter {
    fn drop(&mut self) {
        let mut phase = self.phase.lock().unwrap_or_else(|e| e.into_inner());
        match *phase {
            Phase::Trying => *phase = Phase::Abandoned,
            Phase::Taken => {
                *phase = Phase::Abandoned;
                self.locks.release(self.key);
            }
            Phase::Handed | Phase::Abandoned => {}
        }
    }
}

struct PgRepoLocksInner {
    runtime: Arc<dyn Runtime>,
    session: Arc<SessionLocks>,
}

impl PgRepoLocksInner {
    fn release(&self, key: i32) {
        let (runtime, session) = (Arc::clone(&self.runtime), Arc::clone(&self.session));
        self.runtime.spawn(Box::pin(async move {
            let unlocked = unblock(&*runtime, move || session.unlock(key)).await;
            if let Err(error) = unlocked.map_err(|e| e.to_string()).and_then(|r| r) {
                tracing::warn!(%error, "releasing a repository lock failed");
            }
        }));
    }

    /// Tries until `key` is taken, the wait is over or the caller gave up; reports on `done`.
    async fn tries(
        self: Arc<Self>,
        key: i32,
        phase: Arc<Mutex<Phase>>,
        done: async_channel::Sender<Result<(), String>>,
    ) {
        let runtime = Arc::clone(&self.runtime);
        let deadline = runtime.now() + ACQUIRE_WAIT;
        let mut delay = RETRY_FIRST;
        let outcome = loop {
            if matches!(
                *phase.lock().unwrap_or_else(|e| e.into_inner()),
                Phase::Abandoned
            ) {
                return;
            }
            let session = Arc::clone(&self.session);
            let taken = unblock(&*runtime, move || session.try_lock(key))
                .await
                .map_err(|e| e.to_string())
                .and_then(|taken| taken);
            match taken {
                Ok(true) => {
                    let mut phase = phase.lock().unwrap_or_else(|e| e.into_inner());
                    if matches!(*phase, Phase::Abandoned) {
                        self.release(key);
                        return;
                    }
                    *phase = Phase::Taken;
                    break Ok(());
                }
                Ok(false) if runtime.now() < deadline => {}
                Ok(false) => {
                    break Err(format!(
                        "another instance held the repository for over {}s",
                        ACQUIRE_WAIT.as_secs()
                    ))
                }
                Err(error) => break Err(error),
            }
            runtime.sleep(delay).await;
            delay = (delay * 2).min(RETRY_MAX);
        };
        let _ = done.try_send(outcome);
    }
}

impl SharedLocks for PgRepoLocks {
    fn acquire(&self, relative: &Path) -> BoxFuture<'static, Result<(), String>> {
        let key = repo_key(relative);
        let phase = Arc::new(Mutex::new(Phase::Trying));
        let (done, outcome) = async_channel::bounded(1);
        self.runtime.spawn(Box::pin(Arc::clone(&self.inner).tries(
            key,
            Arc::clone(&phase),
            done,
        )));
        let waiter = Waiter {
            phase,
            locks: Arc::clone(&self.inner),
            key,
        };
        Box::pin(async move {
            let outcome = outcome
                .recv()
                .await
                .unwrap_or_else(|_| Err("the repository lock's task ended".into()));
            if outcome.is_ok() {
                *waiter.phase.lock().unwrap_or_else(|e| e.into_inner()) = Phase::Handed;
            }
            outcome
        })
    }

    fn release(&self, relative: &Path) {
        self.inner.release(repo_key(relative));
    }
}
