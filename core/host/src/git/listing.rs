//! A repository's branches, tags and HEAD as a web page shows them (gix, read only).

use std::path::Path;

use graspd_core::Oid;

use super::repo::{core_oid, open};
use super::GitError;
use crate::runtime::{unblock, Runtime};

/// One branch or tag: its short name and the commit it names (annotated tags peeled).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ListedRef {
    /// Without `refs/heads/` or `refs/tags/`.
    pub name: String,
    pub commit: Oid,
}

/// Branches and tags in name order, each list cut at the listing's cap.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RefListing {
    /// HEAD's symbolic target, e.g. `refs/heads/main`.
    pub head: Option<String>,
    pub branches: Vec<ListedRef>,
    pub tags: Vec<ListedRef>,
    /// Branches and tags beyond the cap, not listed.
    pub more_branches: usize,
    pub more_tags: usize,
}

/// Lists at most `cap` branches and `cap` tags of the repo at `path`.
pub async fn list_refs(
    runtime: &dyn Runtime,
    path: &Path,
    cap: usize,
) -> Result<RefListing, GitError> {
    let path = path.to_owned();
    unblock(runtime, move || list_blocking(&path, cap)).await?
}

fn list_blocking(path: &Path, cap: usize) -> Result<RefListing, GitError> {
    let repo = open(path)?;
    let git_err = |e: &dyn std::fmt::Display| GitError::Git(format!("reading refs: {e}"));
    let platform = repo.references().map_err(|e| git_err(&e))?;
    let mut listing = RefListing {
        head: repo.find_reference("HEAD").ok().and_then(|head| {
            head.target()
                .try_name()
                .map(|name| name.as_bstr().to_string())
        }),
        ..RefListing::default()
    };
    for (prefix, listed, more) in [
        (
            "refs/heads/",
            &mut listing.branches,
            &mut listing.more_branches,
        ),
        ("refs/tags/", &mut listing.tags, &mut listing.more_tags),
    ] {
        for reference in platform.prefixed(prefix).map_err(|e| git_err(&e))? {
            let mut reference = reference.map_err(|e| git_err(&e))?;
            if listed.len() >= cap {
                *more += 1;
                continue;
            }
            // A ref whose object is missing or unreadable is left out rather than failing
            // the whole page.
            let Some(commit) = reference.peel_to_id().ok().and_then(|id| core_oid(&id)) else {
                continue;
            };
            let full = reference.name().as_bstr().to_string();
            let name = full.strip_prefix(prefix).unwrap_or(&full).to_owned();
            listed.push(ListedRef { name, commit });
        }
    }
    Ok(listing)
}
