//! The git bridge: smart-HTTP services, pushes decided before git runs, and the repo
//! operations the driver executes (create, remove, inspect, apply, fetch).
//!
//! [`Git`] is the handle the HTTP layer and the driver share: it maps a [`RepoKey`] to
//! `<data-dir>/<npub>/<identifier>.git` and serialises writes per repo.

pub mod fetch;
pub mod limits;
pub mod listing;
pub mod locks;
mod ops;
pub mod pktline;
pub mod process;
pub mod prune;
pub mod receive;
pub mod repo;
pub mod smart;
pub mod workspace;

use std::fmt;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use graspd_core::{Namespace, Oid, RefEdit, RepoKey};
use nostr::nips::nip19::ToBech32;

pub use fetch::{FetchLimits, GitFetchError};
pub use limits::{Busy, GitLimits, GitRequestSlot, GitRequests, Priority};
pub use listing::{ListedRef, RefListing};
pub use locks::{RepoGuard, RepoLocks, TooManyLocks};
pub use ops::GitOps;
pub use prune::{PruneCounts, PruneLimits, Pruner};
pub use receive::RefUpdate;
pub use repo::{Inspection, RepoWrite};

use crate::refusals::{Limit, Refusals};
use crate::runtime::Runtime;

/// Why a repo operation failed.
#[derive(Debug)]
pub enum GitError {
    Io(io::Error),
    /// git or gix reported an error (message included).
    Git(String),
    /// These objects are not in the repo (and could not be copied).
    MissingObjects(Vec<Oid>),
    /// A ref was not at its expected value; nothing was changed.
    RefConflict(String),
    /// Too many repos busy at once.
    Busy(LockError),
}

impl fmt::Display for GitError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            GitError::Io(e) => write!(f, "io error: {e}"),
            GitError::Git(m) => f.write_str(m),
            GitError::MissingObjects(oids) => write!(f, "{} object(s) missing", oids.len()),
            GitError::RefConflict(m) => write!(f, "ref transaction refused: {m}"),
            GitError::Busy(e) => e.fmt(f),
        }
    }
}

impl std::error::Error for GitError {}

impl From<io::Error> for GitError {
    fn from(e: io::Error) -> GitError {
        GitError::Io(e)
    }
}

impl From<LockError> for GitError {
    fn from(e: LockError) -> GitError {
        GitError::Busy(e)
    }
}

pub use locks::{LockError, SharedLocks};

/// Most repos locked (or awaited) at once.
pub const MAX_BUSY_REPOS: usize = 4096;

/// The data directory's entry for fetch quarantines and spooled pushes, one workspace per
/// instance (`workspace.rs`).
const INCOMING: &str = "incoming";

/// The shared git handle: data directory, runtime, per-repo locks, limits on the git
/// processes serving clients and the count of what those limits refused.
#[derive(Clone, Debug)]
pub struct Git {
    runtime: Arc<dyn Runtime>,
    data_dir: PathBuf,
    locks: RepoLocks,
    limits: GitLimits,
    requests: Arc<GitRequests>,
    refusals: Arc<Refusals>,
    pruner: Arc<Pruner>,
    /// This instance's part of `incoming/` (`workspace.rs`).
    workspace: Arc<workspace::Workspace>,
}

impl Git {
    /// Quarantines, spooled request bodies and half-created or half-removed repositories a
    /// crash left behind are removed here: nothing runs before the handle exists.
    pub fn new(runtime: Arc<dyn Runtime>, data_dir: impl Into<PathBuf>) -> Git {
        let data_dir: PathBuf = data_dir.into();
        let incoming = data_dir.join(INCOMING);
        let git = Git {
            runtime,
            data_dir,
            locks: RepoLocks::new(MAX_BUSY_REPOS),
            limits: GitLimits::default(),
            requests: GitRequests::new(&GitLimits::default()),
            refusals: Arc::default(),
            pruner: Arc::default(),
            workspace: Arc::new(workspace::Workspace::open(&incoming)),
        };
        repo::remove_leftovers(&git.data_dir, &incoming);
        git
    }

    /// The same handle counting what its limits refuse in `refusals` (shared with the rest of
    /// the server, for `/metrics`).
    pub fn with_refusals(mut self, refusals: Arc<Refusals>) -> Git {
        self.refusals = refusals;
        self
    }

    /// The same handle with these limits on client-serving git processes.
    pub fn with_limits(mut self, limits: GitLimits) -> Git {
        self.requests = GitRequests::new(&limits);
        self.limits = limits;
        self
    }

    /// The same handle holding each repository's lock across the instances sharing the data
    /// directory too (`--database-url`: PostgreSQL advisory locks).
    pub fn with_shared_locks(mut self, shared: Arc<dyn SharedLocks>) -> Git {
        self.locks = self.locks.with_shared(shared, self.data_dir.clone());
        self
    }

    /// The same handle pruning what ended placeholders left within these bounds.
    pub fn with_pruning(mut self, limits: PruneLimits) -> Git {
        self.pruner = Arc::new(Pruner::new(limits));
        self
    }

    /// The pruning of what ended placeholders left ([`prune`]).
    pub fn pruner(&self) -> &Arc<Pruner> {
        &self.pruner
    }

    /// A place for one more git request from `client` (the client's address as
    /// [`crate::http::clients::Clients::address`] says), within the caps in all and per
    /// address; held until the request and its git process are done.
    pub fn start_request(&self, client: std::net::IpAddr) -> Result<GitRequestSlot, Busy> {
        self.requests.try_start(client)
    }

    pub fn limits(&self) -> &GitLimits {
        &self.limits
    }

    /// Where requests refused by a limit are counted and logged.
    pub fn refusals(&self) -> &Refusals {
        &self.refusals
    }

    /// Counts one refusal of `limit` now, and logs `detail` (throttled per limit).
    pub fn refuse(&self, limit: Limit, detail: &dyn fmt::Display) {
        self.refusals.refuse(limit, detail, self.runtime.now());
    }

    pub fn runtime(&self) -> &Arc<dyn Runtime> {
        &self.runtime
    }

    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    /// `<data-dir>/<npub>/<identifier>.git`. Safe by construction: the npub is re-encoded
    /// from the key and [`graspd_core::Identifier`] cannot contain a path separator or be a
    /// dot path.
    pub fn repo_path(&self, repo: &RepoKey) -> PathBuf {
        let npub = repo
            .owner
            .to_bech32()
            .expect("bech32 encoding of a public key cannot fail");
        let base = match repo.namespace {
            Namespace::Hosted => self.data_dir.clone(),
            Namespace::Prs => self.prs_dir(),
        };
        base.join(npub).join(format!("{}.git", repo.identifier))
    }

    /// GRASP-06 PR repositories: `<data-dir>/prs/<npub>/<identifier>.git` (npubs start
    /// `npub1`, so no hosted owner directory is named `prs`).
    fn prs_dir(&self) -> PathBuf {
        self.data_dir.join("prs")
    }

    /// Where a git request for `repo` is served from: the repository, or for a `/prs/`
    /// repository nobody has pushed to yet, one shared empty repository (so a GET creates
    /// nothing per path). `None`: not found.
    pub async fn serving_path(&self, repo: &RepoKey) -> Result<Option<PathBuf>, GitError> {
        if self.exists(repo) {
            return Ok(Some(self.repo_path(repo)));
        }
        if !repo.is_prs() {
            return Ok(None);
        }
        let empty = self.prs_dir().join("empty.git");
        if !repo::is_repo(&empty) {
            let _guard = self.locks.lock(&empty).await?;
            repo::create_bare_repo(&*self.runtime, &empty, self.workspace.id()).await?;
        }
        Ok(Some(empty))
    }

    /// Creates `repo` for a push whose commands were accepted, under the lock the push holds.
    pub async fn create_for_push(&self, repo: &RepoKey, _held: &RepoGuard) -> Result<(), GitError> {
        repo::create_bare_repo(&*self.runtime, &self.repo_path(repo), self.workspace.id()).await
    }

    /// True if the repo exists on disk.
    pub fn exists(&self, repo: &RepoKey) -> bool {
        repo::is_repo(&self.repo_path(repo))
    }

    /// Waits for the repo's lock: held while a push is decided and run, or a release applied.
    pub async fn lock(&self, repo: &RepoKey) -> Result<RepoGuard, LockError> {
        self.locks.lock(&self.repo_path(repo)).await
    }

    /// Creates the bare repo (idempotent).
    pub async fn create_repo(&self, repo: &RepoKey) -> Result<(), GitError> {
        let path = self.repo_path(repo);
        let _guard = self.locks.lock(&path).await?;
        repo::create_bare_repo(&*self.runtime, &path, self.workspace.id()).await
    }

    /// Removes the repo (idempotent).
    pub async fn remove_repo(&self, repo: &RepoKey) -> Result<(), GitError> {
        let path = self.repo_path(repo);
        let _guard = self.locks.lock(&path).await?;
        repo::remove_repo(&*self.runtime, &path, self.workspace.id()).await
    }

    /// Which of `oids` the repo has, its refs and HEAD. Reads only; takes no lock.
    /// A `/prs/` repository nobody has pushed to yet is empty, not an error.
    pub async fn inspect(&self, repo: &RepoKey, oids: &[Oid]) -> Result<Inspection, GitError> {
        if repo.is_prs() && !self.exists(repo) {
            return Ok(Inspection::default());
        }
        repo::inspect(&*self.runtime, &self.repo_path(repo), oids).await
    }

    /// Branches and tags (at most `cap` of each, tags peeled to commits) and HEAD, for the
    /// repository's web page. Reads only; takes no lock.
    pub async fn list_refs(&self, repo: &RepoKey, cap: usize) -> Result<RefListing, GitError> {
        listing::list_refs(&*self.runtime, &self.repo_path(repo), cap).await
    }

    /// Copies missing `objects` from the local repo `copy_from` (another hosted repo or a
    /// staging repo a fetch filled), then applies ref changes and HEAD
    /// in one compare-and-swap transaction, under the repo's lock.
    pub async fn apply(
        &self,
        repo: &RepoKey,
        copy_from: Option<&Path>,
        objects: &[Oid],
        refs: &[RefEdit],
        head: Option<&str>,
    ) -> Result<(), GitError> {
        let write = RepoWrite {
            copy_from: copy_from.map(Path::to_owned),
            objects: objects.to_vec(),
            refs: refs.to_vec(),
            head: head.map(str::to_owned),
        };
        let path = self.repo_path(repo);
        let _guard = self.locks.lock(&path).await?;
        repo::apply(&*self.runtime, &path, &write).await
    }

    /// Fetches `oids` from `url` into the repo at `into` through a quarantine directory under
    /// `<data-dir>/incoming/` (see [`fetch`]). Adds objects only, so it takes no lock.
    pub async fn fetch(
        &self,
        into: &Path,
        url: &str,
        oids: &[Oid],
        limits: &FetchLimits,
    ) -> Result<Vec<Oid>, GitFetchError> {
        let incoming = self.incoming_path("fetch");
        fetch::fetch(&*self.runtime, into, &incoming, url, oids, limits).await
    }

    /// A fresh path under [`Git::incoming_dir`], for a fetch's quarantine or a spooled push.
    pub fn incoming_path(&self, what: &str) -> PathBuf {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        self.incoming_dir().join(format!(
            "{what}-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ))
    }

    /// Where fetches keep their quarantines and pushes their bodies: this instance's
    /// workspace under `incoming/`, inside the data directory (so objects move into
    /// repositories by rename), never under a path a URL can name (npubs start `npub1`).
    pub fn incoming_dir(&self) -> PathBuf {
        self.workspace.dir().to_owned()
    }
}
