//! Git, modelled: the server's repositories (objects by id, refs, HEAD) and the other
//! servers' (remotes with faults), behind graspd-host's [`GitOps`] seam. Every operation is a
//! job on the simulated blocking pool, so it takes seeded time and completes whole, as the
//! real operation's atomic rename or ref transaction does. The repositories survive crashes;
//! a push is the model of `git receive-pack` after the engine decided it.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use graspd_core::{Oid, RefEdit, RepoKey};
use graspd_host::git::{FetchLimits, GitError, GitFetchError, GitOps, Inspection};
use graspd_host::runtime::{unblock, BoxFuture};
use graspd_host::Runtime;

use super::runtime::SimRuntime;

/// A bare repository: which objects it has, its refs and HEAD.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Repo {
    pub objects: BTreeSet<Oid>,
    pub refs: BTreeMap<String, Oid>,
    pub head: Option<String>,
}

/// How another git server misbehaves until it heals.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fault {
    Healthy,
    /// Never answers (the fetch is killed at its deadline).
    Hung,
    /// Refuses connections.
    Failing,
    /// Answers after this long.
    Slow(Duration),
    /// Says it has the objects and sends none.
    Lying,
}

/// Another git server: objects it serves (for every repository) and its fault.
#[derive(Clone, Debug)]
pub struct Remote {
    pub objects: BTreeSet<Oid>,
    pub fault: Fault,
    pub heals_at: Duration,
}

/// Everything git: survives crashes (repositories are files).
#[derive(Default)]
pub struct GitWorld {
    pub repos: BTreeMap<RepoKey, Repo>,
    /// By domain (`host[:port]` of the clone URL).
    pub remotes: BTreeMap<String, Remote>,
    pub fetches: u64,
    /// Fetches talking to each remote domain right now (from start until the remote's part
    /// is over: answered, refused or killed at the deadline).
    pub fetching: BTreeMap<String, usize>,
    /// The most fetches one domain ever had at once, and where and when.
    pub most_fetching: Option<(usize, String, Duration)>,
}

impl GitWorld {
    fn fetch_started(&mut self, domain: &str, at: Duration) {
        let n = self.fetching.entry(domain.to_owned()).or_default();
        *n += 1;
        if self
            .most_fetching
            .as_ref()
            .is_none_or(|(most, _, _)| *n > *most)
        {
            self.most_fetching = Some((*n, domain.to_owned(), at));
        }
    }

    fn fetch_ended(&mut self, domain: &str) {
        if let Some(n) = self.fetching.get_mut(domain) {
            *n -= 1;
            if *n == 0 {
                self.fetching.remove(domain);
            }
        }
    }
}

/// Counts one fetch at a domain for as long as it lives: a fetch whose task is dropped (its
/// server crashed) stops counting too.
struct Fetching {
    world: SharedGit,
    domain: String,
}

impl Drop for Fetching {
    fn drop(&mut self) {
        self.world.lock().fetch_ended(&self.domain);
    }
}

/// Shared handle to the git world.
#[derive(Clone, Default)]
pub struct SharedGit(Arc<Mutex<GitWorld>>);

impl SharedGit {
    pub fn lock(&self) -> MutexGuard<'_, GitWorld> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// One incarnation's [`GitOps`]: the shared git world, operations on its runtime group.
pub struct ModelGit {
    pub world: SharedGit,
    pub runtime: SimRuntime,
}

impl std::fmt::Debug for ModelGit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ModelGit")
    }
}

fn domain_of(url: &str) -> Option<String> {
    let rest = url.split_once("://")?.1;
    Some(rest.split('/').next()?.to_owned())
}

impl ModelGit {
    async fn job<T: Send + 'static>(
        &self,
        work: impl FnOnce(&mut GitWorld) -> T + Send + 'static,
    ) -> Result<T, GitError> {
        let world = self.world.clone();
        unblock(&self.runtime, move || work(&mut world.lock()))
            .await
            .map_err(GitError::Io)
    }
}

impl GitOps for ModelGit {
    fn create_repo<'a>(&'a self, repo: &'a RepoKey) -> BoxFuture<'a, Result<(), GitError>> {
        let repo = repo.clone();
        Box::pin(async move {
            self.job(move |w| {
                w.repos.entry(repo).or_default();
            })
            .await
        })
    }

    fn remove_repo<'a>(&'a self, repo: &'a RepoKey) -> BoxFuture<'a, Result<(), GitError>> {
        let repo = repo.clone();
        Box::pin(async move {
            self.job(move |w| {
                w.repos.remove(&repo);
            })
            .await
        })
    }

    fn inspect<'a>(
        &'a self,
        repo: &'a RepoKey,
        oids: &'a [Oid],
    ) -> BoxFuture<'a, Result<Inspection, GitError>> {
        let (repo, oids) = (repo.clone(), oids.to_vec());
        Box::pin(async move {
            self.job(move |w| {
                let r = w.repos.get(&repo).cloned().unwrap_or_default();
                Inspection {
                    present: oids.into_iter().filter(|o| r.objects.contains(o)).collect(),
                    refs: r.refs,
                    head: r.head,
                }
            })
            .await
        })
    }

    fn apply<'a>(
        &'a self,
        repo: &'a RepoKey,
        copy_from: Option<&'a RepoKey>,
        objects: &'a [Oid],
        refs: &'a [RefEdit],
        head: Option<&'a str>,
    ) -> BoxFuture<'a, Result<(), GitError>> {
        let (repo, source) = (repo.clone(), copy_from.cloned());
        let (objects, refs) = (objects.to_vec(), refs.to_vec());
        let head = head.map(str::to_owned);
        Box::pin(async move {
            self.job(move |w| apply(w, &repo, source.as_ref(), &objects, &refs, head))
                .await?
        })
    }

    fn fetch<'a>(
        &'a self,
        into: &'a RepoKey,
        url: &'a str,
        oids: &'a [Oid],
        limits: &'a FetchLimits,
    ) -> BoxFuture<'a, Result<Vec<Oid>, GitFetchError>> {
        let (into, oids) = (into.clone(), oids.to_vec());
        let domain = domain_of(url);
        Box::pin(async move {
            let now = self.runtime.elapsed();
            let remote = {
                let mut w = self.world.lock();
                w.fetches += 1;
                let remote = domain.as_ref().and_then(|d| w.remotes.get(d).cloned());
                if let (Some(_), Some(d)) = (&remote, &domain) {
                    w.fetch_started(d, now);
                }
                remote
            };
            let (Some(remote), Some(domain)) = (remote, domain) else {
                return Err(GitFetchError::Dns("no such host".into()));
            };
            let talking = Fetching {
                world: self.world.clone(),
                domain,
            };
            let fault = if now >= remote.heals_at {
                Fault::Healthy
            } else {
                remote.fault
            };
            match fault {
                Fault::Hung => {
                    self.runtime.sleep_until(limits.deadline).await;
                    return Err(GitFetchError::Timeout);
                }
                Fault::Failing => return Err(GitFetchError::Refused("connection refused".into())),
                Fault::Slow(delay) => {
                    let done = self.runtime.now() + delay;
                    if done >= limits.deadline {
                        self.runtime.sleep_until(limits.deadline).await;
                        return Err(GitFetchError::Timeout);
                    }
                    self.runtime.sleep(delay).await;
                }
                Fault::Healthy | Fault::Lying => {}
            }
            // The remote's part is over; what follows is local (the quarantine's move).
            drop(talking);
            let sends = fault != Fault::Lying;
            let present = self
                .job(move |w| {
                    let Some(repo) = w.repos.get_mut(&into) else {
                        return Vec::new();
                    };
                    if sends {
                        for oid in &oids {
                            if remote.objects.contains(oid) {
                                repo.objects.insert(*oid);
                            }
                        }
                    }
                    oids.into_iter()
                        .filter(|o| repo.objects.contains(o))
                        .collect()
                })
                .await
                .map_err(|e| GitFetchError::Other(e.to_string()))?;
            Ok(present)
        })
    }

    fn hosted_repos(&self) -> BoxFuture<'_, std::io::Result<Vec<RepoKey>>> {
        Box::pin(async move {
            self.job(|w| w.repos.keys().cloned().collect())
                .await
                .map_err(|e| std::io::Error::other(e.to_string()))
        })
    }
}

/// One release: copy objects, then every ref edit checked against its expectation and made
/// together, or nothing.
fn apply(
    w: &mut GitWorld,
    repo: &RepoKey,
    source: Option<&RepoKey>,
    objects: &[Oid],
    refs: &[RefEdit],
    head: Option<String>,
) -> Result<(), GitError> {
    let copied: Vec<Oid> = match source {
        Some(source) => {
            let from = w
                .repos
                .get(source)
                .map(|r| r.objects.clone())
                .unwrap_or_default();
            let missing: Vec<Oid> = objects
                .iter()
                .filter(|o| !from.contains(o))
                .copied()
                .collect();
            if !missing.is_empty() {
                return Err(GitError::MissingObjects(missing));
            }
            objects.to_vec()
        }
        None => Vec::new(),
    };
    let target = w
        .repos
        .get_mut(repo)
        .ok_or_else(|| GitError::Git(format!("{repo}: no such repository")))?;
    target.objects.extend(copied);
    for edit in refs {
        if target.refs.get(&edit.name) != edit.expected.as_ref() {
            return Err(GitError::RefConflict(format!("{} moved", edit.name)));
        }
        if let Some(new) = edit.new {
            if !target.objects.contains(&new) {
                return Err(GitError::MissingObjects(vec![new]));
            }
        }
    }
    for edit in refs {
        match edit.new {
            Some(new) => target.refs.insert(edit.name.clone(), new),
            None => target.refs.remove(&edit.name),
        };
    }
    if let Some(head) = head {
        target.head = Some(head);
    }
    Ok(())
}

/// A push after the engine accepted every update: the objects arrive, then the refs move (the
/// model of `git receive-pack`, which the host runs under the repository's lock).
pub fn push(w: &mut GitWorld, repo: &RepoKey, objects: &[Oid], refs: &BTreeMap<String, Oid>) {
    let target = w.repos.entry(repo.clone()).or_default();
    target.objects.extend(objects.iter().copied());
    for (name, oid) in refs {
        target.refs.insert(name.clone(), *oid);
    }
}
