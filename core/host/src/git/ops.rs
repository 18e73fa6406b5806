//! The git operations the driver executes, as a narrow trait: [`Git`] is the real one (gix and
//! the git binary on `<data-dir>`); the simulator models repositories and remote servers in
//! memory behind the same trait, so it runs the real driver.

use std::fmt;

use graspd_core::{Oid, RefEdit, RepoKey};

use super::{FetchLimits, Git, GitError, GitFetchError, Inspection, PruneCounts};
use crate::runtime::{unblock, BoxFuture};

/// What the driver does to repositories. Each method is one operation with the real one's
/// guarantees: `apply` is one compare-and-swap transaction under the repository's lock, a
/// failed or timed-out `fetch` adds no object to the repository.
pub trait GitOps: Send + Sync + fmt::Debug + 'static {
    /// Creates the bare repository (idempotent).
    fn create_repo<'a>(&'a self, repo: &'a RepoKey) -> BoxFuture<'a, Result<(), GitError>>;

    /// Removes the repository (idempotent).
    fn remove_repo<'a>(&'a self, repo: &'a RepoKey) -> BoxFuture<'a, Result<(), GitError>>;

    /// Which of `oids` the repository has, its refs and HEAD.
    fn inspect<'a>(
        &'a self,
        repo: &'a RepoKey,
        oids: &'a [Oid],
    ) -> BoxFuture<'a, Result<Inspection, GitError>>;

    /// Copies `objects` from the hosted repository `copy_from` (if any), then moves `refs`
    /// and HEAD in one compare-and-swap transaction.
    fn apply<'a>(
        &'a self,
        repo: &'a RepoKey,
        copy_from: Option<&'a RepoKey>,
        objects: &'a [Oid],
        refs: &'a [RefEdit],
        head: Option<&'a str>,
    ) -> BoxFuture<'a, Result<(), GitError>>;

    /// Fetches `oids` from `url` into `into`; returns which of `oids` it has afterwards.
    fn fetch<'a>(
        &'a self,
        into: &'a RepoKey,
        url: &'a str,
        oids: &'a [Oid],
        limits: &'a FetchLimits,
    ) -> BoxFuture<'a, Result<Vec<Oid>, GitFetchError>>;

    /// Every hosted repository (start-up: `refs/nostr` placeholders are restored from them).
    fn hosted_repos(&self) -> BoxFuture<'_, std::io::Result<Vec<RepoKey>>>;

    /// A `refs/nostr` placeholder in `repo` ended (its ref is deleted): what it brought may be
    /// unreachable now, to be pruned later. Models with nothing to prune ignore it.
    fn placeholder_removed(&self, _repo: &RepoKey) {}

    /// How the prunes so far ended, for `/metrics`.
    fn prune_counts(&self) -> PruneCounts {
        PruneCounts::default()
    }
}

impl GitOps for Git {
    fn create_repo<'a>(&'a self, repo: &'a RepoKey) -> BoxFuture<'a, Result<(), GitError>> {
        Box::pin(Git::create_repo(self, repo))
    }

    fn remove_repo<'a>(&'a self, repo: &'a RepoKey) -> BoxFuture<'a, Result<(), GitError>> {
        Box::pin(Git::remove_repo(self, repo))
    }

    fn inspect<'a>(
        &'a self,
        repo: &'a RepoKey,
        oids: &'a [Oid],
    ) -> BoxFuture<'a, Result<Inspection, GitError>> {
        Box::pin(Git::inspect(self, repo, oids))
    }

    fn apply<'a>(
        &'a self,
        repo: &'a RepoKey,
        copy_from: Option<&'a RepoKey>,
        objects: &'a [Oid],
        refs: &'a [RefEdit],
        head: Option<&'a str>,
    ) -> BoxFuture<'a, Result<(), GitError>> {
        Box::pin(async move {
            let source = copy_from.map(|source| self.repo_path(source));
            Git::apply(self, repo, source.as_deref(), objects, refs, head).await
        })
    }

    fn fetch<'a>(
        &'a self,
        into: &'a RepoKey,
        url: &'a str,
        oids: &'a [Oid],
        limits: &'a FetchLimits,
    ) -> BoxFuture<'a, Result<Vec<Oid>, GitFetchError>> {
        Box::pin(async move {
            let path = self.repo_path(into);
            Git::fetch(self, &path, url, oids, limits).await
        })
    }

    fn hosted_repos(&self) -> BoxFuture<'_, std::io::Result<Vec<RepoKey>>> {
        let data_dir = self.data_dir().to_owned();
        Box::pin(async move { unblock(&**self.runtime(), move || hosted_repos(&data_dir)).await })
    }

    fn placeholder_removed(&self, repo: &RepoKey) {
        self.pruner().queue(self, repo);
    }

    fn prune_counts(&self) -> PruneCounts {
        self.pruner().counts()
    }
}

/// Every `<data-dir>/<npub>/<identifier>.git` directory that names a valid repository, and
/// every GRASP-06 one under `<data-dir>/prs/`.
fn hosted_repos(data_dir: &std::path::Path) -> Vec<RepoKey> {
    let mut repos = Vec::new();
    repos_under(data_dir, graspd_core::Namespace::Hosted, &mut repos);
    repos_under(
        &data_dir.join("prs"),
        graspd_core::Namespace::Prs,
        &mut repos,
    );
    repos
}

fn repos_under(dir: &std::path::Path, namespace: graspd_core::Namespace, repos: &mut Vec<RepoKey>) {
    use nostr::nips::nip19::FromBech32;
    let Ok(owners) = std::fs::read_dir(dir) else {
        return;
    };
    for owner_dir in owners.flatten() {
        let name = owner_dir.file_name();
        let Some(owner) = name
            .to_str()
            .and_then(|n| nostr::key::PublicKey::from_bech32(n).ok())
        else {
            continue;
        };
        let Ok(entries) = std::fs::read_dir(owner_dir.path()) else {
            continue;
        };
        for entry in entries.flatten() {
            let name = entry.file_name();
            let Some(identifier) = name
                .to_str()
                .and_then(|n| n.strip_suffix(".git"))
                .and_then(|n| graspd_core::Identifier::new(n).ok())
            else {
                continue;
            };
            let mut repo = RepoKey::new(owner, identifier);
            repo.namespace = namespace;
            repos.push(repo);
        }
    }
}
