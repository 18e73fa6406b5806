//! Pruning what nothing needs. Objects that came with a `refs/nostr/<id>` placeholder whose
//! ref was deleted (its event never came, or came with another commit) are unreachable once
//! the ref is gone. [`Pruner::queue`] is called when a placeholder ref is deleted; the
//! repository is pruned once the placeholder life has passed since, by
//! `git gc --prune=<placeholder life ago>`: only what is unreachable *and* older than a
//! placeholder may live goes, so objects a push or fetch brought for an event still waiting
//! (unreferenced until it is released) are never touched, whatever runs meanwhile.
//!
//! At most one prune runs at a time, under the repository's lock (the one pushes and applies
//! take, so none runs meanwhile), killed at its deadline. The queue holds each repository once
//! and is bounded: a full queue drops the request (counted as a refusal; the next deletion in
//! that repository queues it again). Its one timer is [`PRUNE_DUE`]: the first queued
//! repository's prune is due.

use std::collections::{BTreeMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use graspd_core::RepoKey;

use super::process;
use super::Git;
use crate::refusals::Limit;

/// Added to the placeholder life before a prune runs, so objects that arrived just before the
/// ref was deleted are past `--prune=` even with git's whole-second dates.
const MARGIN: Duration = Duration::from_secs(2);

/// The reason the worker sleeps: the first queued repository's prune is due.
pub const PRUNE_DUE: &str = "prune_due";

/// Most output kept from a `git gc` run (for the log).
const OUTPUT_CAP: usize = 64 * 1024;

/// Bounds of the prune queue and of each run.
#[derive(Clone, Debug)]
pub struct PruneLimits {
    /// Repositories waiting for a prune at once.
    pub max_queued: usize,
    /// A `git gc` run is killed after this long.
    pub timeout: Duration,
    /// How long a placeholder may live: objects younger than this are never pruned.
    pub expire: Duration,
}

impl Default for PruneLimits {
    fn default() -> PruneLimits {
        PruneLimits {
            max_queued: 1024,
            timeout: Duration::from_secs(600),
            expire: Duration::from_secs(30 * 60),
        }
    }
}

/// How the prunes so far ended, for `/metrics`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PruneCounts {
    pub done: u64,
    pub failed: u64,
    pub timed_out: u64,
    /// Objects the finished runs removed (duplicate copies of one object included).
    pub objects_removed: u64,
}

/// The prune queue of one server; see the module documentation.
#[derive(Debug, Default)]
pub struct Pruner {
    limits: PruneLimits,
    queue: Mutex<Queue>,
    done: AtomicU64,
    failed: AtomicU64,
    timed_out: AtomicU64,
    objects_removed: AtomicU64,
}

#[derive(Debug, Default)]
struct Queue {
    /// Repositories in the order they were queued, each with when it was first due.
    order: VecDeque<(Instant, RepoKey)>,
    /// When each queued repository is due: a later deletion moves it later.
    due: BTreeMap<RepoKey, Instant>,
    /// A worker task is running (it exits when the queue is empty).
    working: bool,
}

impl Pruner {
    pub fn new(limits: PruneLimits) -> Pruner {
        Pruner {
            limits,
            ..Pruner::default()
        }
    }

    pub fn counts(&self) -> PruneCounts {
        PruneCounts {
            done: self.done.load(Ordering::Relaxed),
            failed: self.failed.load(Ordering::Relaxed),
            timed_out: self.timed_out.load(Ordering::Relaxed),
            objects_removed: self.objects_removed.load(Ordering::Relaxed),
        }
    }

    /// Queues `repo` for a prune one placeholder life from now (a placeholder ref in it was
    /// just deleted), and starts the worker if none runs.
    pub fn queue(&self, git: &Git, repo: &RepoKey) {
        let due = git.runtime().now() + self.limits.expire + MARGIN;
        let start = {
            let mut queue = lock(&self.queue);
            if let Some(at) = queue.due.get_mut(repo) {
                *at = due;
                false
            } else if queue.order.len() >= self.limits.max_queued {
                drop(queue);
                git.refuse(
                    Limit::GitPruneQueue,
                    &format_args!(
                        "{repo} not queued for pruning: {} repositories wait already (the \
                         limit, --max-queued-prunes)",
                        self.limits.max_queued
                    ),
                );
                return;
            } else {
                queue.order.push_back((due, repo.clone()));
                queue.due.insert(repo.clone(), due);
                !std::mem::replace(&mut queue.working, true)
            }
        };
        if start {
            let worker = git.clone();
            git.runtime()
                .spawn(Box::pin(async move { worker.pruner().work(&worker).await }));
        }
    }

    /// Runs due prunes one at a time until the queue is empty.
    async fn work(&self, git: &Git) {
        loop {
            let next = {
                let mut queue = lock(&self.queue);
                match queue.order.front() {
                    None => {
                        queue.working = false;
                        return;
                    }
                    Some((due, _)) => *due,
                }
            };
            tracing::debug!(reason = PRUNE_DUE, "pruning waits");
            git.runtime().sleep_until(next).await;
            let repo = {
                let mut queue = lock(&self.queue);
                let Some((_, repo)) = queue.order.pop_front() else {
                    continue;
                };
                match queue.due.get(&repo).copied() {
                    // Another deletion since: due later, with what it brought.
                    Some(later) if later > next => {
                        queue.order.push_back((later, repo));
                        continue;
                    }
                    _ => {
                        queue.due.remove(&repo);
                        repo
                    }
                }
            };
            self.prune(git, &repo).await;
        }
    }

    /// `git gc --prune=<expire ago>` on `repo` under its lock, with a deadline.
    async fn prune(&self, git: &Git, repo: &RepoKey) {
        if !git.exists(repo) {
            return;
        }
        let _guard = match git.lock(repo).await {
            Ok(guard) => guard,
            Err(busy) => {
                self.failed.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(%repo, %busy, "pruning skipped");
                return;
            }
        };
        let path = git.repo_path(repo);
        let before = object_count(git, &path).await;
        let mut command = process::git(Some(&path));
        // Objects only: git's automatic gc stays off and refs are left as they are.
        command.args([
            "-c",
            "gc.auto=0",
            "-c",
            "gc.packRefs=false",
            "gc",
            "--quiet",
        ]);
        command.arg(format!(
            "--prune={}.seconds.ago",
            self.limits.expire.as_secs()
        ));
        let deadline = git.runtime().now() + self.limits.timeout;
        let run = process::run(
            &**git.runtime(),
            command,
            &b""[..],
            Some(deadline),
            OUTPUT_CAP,
        );
        match run.await {
            Ok(out) if out.timed_out() => {
                self.timed_out.fetch_add(1, Ordering::Relaxed);
                git.refuse(
                    Limit::GitProcessTimeout,
                    &format_args!(
                        "git gc for {repo} ran past its limit of {} s (--prune-timeout-secs); \
                         killed",
                        self.limits.timeout.as_secs()
                    ),
                );
            }
            Ok(out) if out.success() => {
                self.done.fetch_add(1, Ordering::Relaxed);
                // gc also packs what is loose and drops duplicate copies; those count too.
                let removed = match (before, object_count(git, &path).await) {
                    (Some(before), Some(after)) => before.saturating_sub(after),
                    _ => 0,
                };
                self.objects_removed.fetch_add(removed, Ordering::Relaxed);
                tracing::info!(
                    %repo,
                    older_than_secs = self.limits.expire.as_secs(),
                    objects_removed = removed,
                    "pruned the unreachable objects an ended placeholder left"
                );
            }
            Ok(out) => {
                self.failed.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(%repo, stderr = %out.stderr_tail(), "git gc failed");
            }
            Err(error) => {
                self.failed.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(%repo, %error, "running git gc failed");
            }
        }
    }
}

/// Objects the repository at `path` holds, loose and packed (`git count-objects -v`); `None`
/// if git could not tell.
async fn object_count(git: &Git, path: &std::path::Path) -> Option<u64> {
    let mut command = process::git(Some(path));
    command.args(["count-objects", "-v"]);
    let deadline = git.runtime().now() + Duration::from_secs(60);
    let out = process::run(
        &**git.runtime(),
        command,
        &b""[..],
        Some(deadline),
        OUTPUT_CAP,
    )
    .await
    .ok()
    .filter(|out| out.success())?;
    parse_object_count(&String::from_utf8_lossy(&out.stdout))
}

/// `count` (loose) plus `in-pack` of `git count-objects -v` output.
fn parse_object_count(output: &str) -> Option<u64> {
    let field = |name: &str| {
        output
            .lines()
            .find_map(|line| line.strip_prefix(name)?.strip_prefix(": "))
            .and_then(|value| value.trim().parse::<u64>().ok())
    };
    Some(field("count")? + field("in-pack")?)
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

#[cfg(test)]
mod tests {
    use super::parse_object_count;

    #[test]
    fn object_count_adds_loose_and_packed() {
        let output = "count: 3\nsize: 12\nin-pack: 40\npacks: 1\nsize-pack: 9\n\
                      prune-packable: 0\ngarbage: 0\nsize-garbage: 0\n";
        assert_eq!(parse_object_count(output), Some(43));
        assert_eq!(parse_object_count("count: 3\n"), None);
        assert_eq!(parse_object_count(""), None);
    }
}
