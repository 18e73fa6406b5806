//! The git operations the driver executes (create, remove, inspect, apply, fetch), against
//! real repos, on both runtimes.

mod support;

use std::time::{Duration, Instant};

use graspd_core::{Oid, RefEdit};
use graspd_host::git::{FetchLimits, GitError, GitFetchError};
use support::*;

fn limits(allow_private: bool) -> FetchLimits {
    FetchLimits {
        deadline: Instant::now() + Duration::from_secs(30),
        max_bytes: 64 * 1024 * 1024,
        allow_private,
    }
}

const UNKNOWN: &str = "0123456789abcdef0123456789abcdef01234567";

#[test]
fn create_is_idempotent_and_configured_remove_is_clean() {
    on_each_runtime(|h| {
        let repo = h.create_repo("made");
        h.create_repo("made");
        let path = h.git.repo_path(&repo);
        assert!(h.git.exists(&repo));
        for key in [
            "uploadpack.allowTipSHA1InWant",
            "uploadpack.allowReachableSHA1InWant",
            "uploadpack.allowFilter",
        ] {
            assert_eq!(
                git_ok(Some(&path), &["config", "--bool", key]).trim(),
                "true",
                "{key}"
            );
        }
        // The unborn HEAD is what the operator's own `git init --bare` makes.
        let fresh = repo_key("fresh");
        h.block_on(h.git.create_repo(&fresh)).unwrap();
        let reference = h.scratch("reference.git");
        let made = std::process::Command::new("git")
            .args(["init", "--bare", "--quiet"])
            .arg(&reference)
            .status()
            .expect("git runs");
        assert!(made.success());
        assert_eq!(
            std::fs::read_to_string(h.git.repo_path(&fresh).join("HEAD")).unwrap(),
            std::fs::read_to_string(reference.join("HEAD")).unwrap()
        );
        h.block_on(h.git.remove_repo(&fresh)).unwrap();
        let leftovers: Vec<_> = std::fs::read_dir(path.parent().unwrap())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(leftovers, vec![std::ffi::OsString::from("made.git")]);
        h.block_on(h.git.remove_repo(&repo)).unwrap();
        assert!(!h.git.exists(&repo));
        h.block_on(h.git.remove_repo(&repo)).unwrap();
    });
}

#[test]
fn inspect_fetch_and_apply_align_a_repo() {
    on_each_runtime(|h| {
        // The source: a repo on this server with two commits on main.
        let source = h.create_repo("source");
        let work = work_repo(&h.scratch("work"), 2);
        git_ok(Some(&work), &["push", "--quiet", &h.url(&source), "main"]);
        let tip = head_oid(&work, "main");
        let parent = head_oid(&work, "main~1");
        let unknown = Oid::from_hex(UNKNOWN).unwrap();

        let seen = h.block_on(h.git.inspect(&source, &[tip, unknown])).unwrap();
        assert_eq!(seen.present, vec![tip]);
        assert_eq!(seen.refs.get("refs/heads/main"), Some(&tip));
        assert_eq!(seen.head.as_deref(), Some("refs/heads/main"));

        // Fetch a non-tip commit by id over HTTP (allow-reachable-sha1-in-want).
        let staging = h.create_repo("staging");
        let staging_path = h.git.repo_path(&staging);
        let present = h
            .block_on(
                h.git
                    .fetch(&staging_path, &h.url(&source), &[parent], &limits(true)),
            )
            .unwrap();
        assert_eq!(present, vec![parent]);
        assert!(
            h.block_on(h.git.inspect(&staging, &[]))
                .unwrap()
                .refs
                .is_empty(),
            "fetch adds no refs"
        );

        // Apply into a third repo: copy from staging, create main and a branch, set HEAD.
        let target = h.create_repo("target");
        h.block_on(h.git.apply(
            &target,
            Some(&staging_path),
            &[parent],
            &[
                RefEdit {
                    name: "refs/heads/main".into(),
                    expected: None,
                    new: Some(parent),
                },
                RefEdit {
                    name: "refs/heads/dev".into(),
                    expected: None,
                    new: Some(parent),
                },
            ],
            Some("refs/heads/dev"),
        ))
        .unwrap();
        let after = h.block_on(h.git.inspect(&target, &[parent])).unwrap();
        assert_eq!(after.present, vec![parent]);
        assert_eq!(after.refs.len(), 2);
        assert_eq!(after.head.as_deref(), Some("refs/heads/dev"));

        // Compare-and-swap: a stale expectation changes nothing, not even the valid edit.
        let stale = h.block_on(h.git.apply(
            &target,
            Some(&h.git.repo_path(&source)),
            &[tip],
            &[
                RefEdit {
                    name: "refs/heads/main".into(),
                    expected: Some(parent),
                    new: Some(tip),
                },
                RefEdit {
                    name: "refs/heads/dev".into(),
                    expected: Some(tip),
                    new: None,
                },
            ],
            None,
        ));
        assert!(matches!(stale, Err(GitError::RefConflict(_))), "{stale:?}");
        let unchanged = h.block_on(h.git.inspect(&target, &[])).unwrap();
        assert_eq!(unchanged.refs.get("refs/heads/main"), Some(&parent));
        assert_eq!(unchanged.refs.get("refs/heads/dev"), Some(&parent));

        // A correct expectation moves main and deletes dev in one transaction.
        h.block_on(h.git.apply(
            &target,
            None,
            &[],
            &[
                RefEdit {
                    name: "refs/heads/main".into(),
                    expected: Some(parent),
                    new: Some(tip),
                },
                RefEdit {
                    name: "refs/heads/dev".into(),
                    expected: Some(parent),
                    new: None,
                },
            ],
            Some("refs/heads/main"),
        ))
        .unwrap();
        let moved = h.block_on(h.git.inspect(&target, &[])).unwrap();
        assert_eq!(
            moved.refs.keys().collect::<Vec<_>>(),
            vec!["refs/heads/main"]
        );
        assert_eq!(moved.refs["refs/heads/main"], tip);
        let clone = h.scratch("clone");
        git_ok(
            None,
            &["clone", "--quiet", &h.url(&target), clone.to_str().unwrap()],
        );
        assert_eq!(head_oid(&clone, "HEAD"), tip);

        // Objects that are nowhere: refused before any ref moves.
        let missing = h.block_on(h.git.apply(
            &target,
            None,
            &[],
            &[RefEdit {
                name: "refs/heads/ghost".into(),
                expected: None,
                new: Some(unknown),
            }],
            None,
        ));
        assert!(
            matches!(missing, Err(GitError::MissingObjects(ref o)) if o == &vec![unknown]),
            "{missing:?}"
        );
    });
}

#[test]
fn fetch_failures_are_classified() {
    on_each_runtime(|h| {
        let source = h.create_repo("src");
        let work = work_repo(&h.scratch("work"), 1);
        git_ok(Some(&work), &["push", "--quiet", &h.url(&source), "main"]);
        let into = h.git.repo_path(&h.create_repo("into"));
        let unknown = Oid::from_hex(UNKNOWN).unwrap();
        let fetch = |url: &str, oids: &[Oid], limits: FetchLimits| {
            h.block_on(h.git.fetch(&into, url, oids, &limits))
        };

        let not_ours = fetch(&h.url(&source), &[unknown], limits(true));
        assert_eq!(
            not_ours,
            Err(GitFetchError::NotOurRef(vec![unknown])),
            "{:?}",
            h.flavor
        );

        let private = fetch(&h.url(&source), &[unknown], limits(false));
        assert!(
            matches!(private, Err(GitFetchError::PrivateAddress(_))),
            "{private:?}"
        );

        let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let closed_port = closed.local_addr().unwrap().port();
        drop(closed);
        let refused = fetch(
            &format!("http://127.0.0.1:{closed_port}/x.git"),
            &[unknown],
            limits(true),
        );
        assert!(
            matches!(refused, Err(GitFetchError::Refused(_))),
            "{refused:?}"
        );

        let missing_repo = fetch(
            &format!("http://{}/npub1x/none.git", h.addr),
            &[unknown],
            limits(true),
        );
        assert_eq!(missing_repo, Err(GitFetchError::HttpStatus(400)));

        assert!(matches!(
            fetch("file:///etc", &[unknown], limits(true)),
            Err(GitFetchError::BadUrl(_))
        ));

        let mut past = limits(true);
        past.deadline = Instant::now();
        assert_eq!(
            fetch(&h.url(&source), &[head_oid(&work, "main")], past),
            Err(GitFetchError::Timeout)
        );
    });
}

#[test]
fn fetch_stops_at_the_byte_cap() {
    on_each_runtime(|h| {
        let source = h.create_repo("big");
        let work = work_repo(&h.scratch("work"), 1);
        let noise = noise(2_000_000);
        std::fs::write(work.join("noise.bin"), noise).unwrap();
        git_ok(Some(&work), &["add", "."]);
        git_ok(Some(&work), &["commit", "--quiet", "-m", "noise"]);
        git_ok(Some(&work), &["push", "--quiet", &h.url(&source), "main"]);
        let tip = head_oid(&work, "main");
        let into = h.git.repo_path(&h.create_repo("small"));
        let mut capped = limits(true);
        capped.max_bytes = 256 * 1024;
        let result = h.block_on(h.git.fetch(&into, &h.url(&source), &[tip], &capped));
        assert_eq!(
            result,
            Err(GitFetchError::TooLarge {
                max_bytes: 256 * 1024
            }),
            "{:?}",
            h.flavor
        );
        // The capped fetch left nothing behind: no pack, no temporary file, no quarantine.
        assert_eq!(pack_files(&into), Vec::<String>::new(), "{:?}", h.flavor);
        assert_eq!(incoming_entries(h), 0);
        let result = h.block_on(h.git.fetch(&into, &h.url(&source), &[tip], &limits(true)));
        assert_eq!(result, Ok(vec![tip]));
        assert!(
            pack_files(&into).iter().any(|f| f.ends_with(".idx")),
            "{:?}",
            pack_files(&into)
        );
        assert_eq!(incoming_entries(h), 0);
    });
}

/// Files in a repo's `objects/pack`, sorted.
fn pack_files(repo: &std::path::Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(repo.join("objects").join("pack"))
        .map(|entries| {
            entries
                .filter_map(Result::ok)
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}

/// Quarantines still present under the data directory.
fn incoming_entries(h: &Harness) -> usize {
    std::fs::read_dir(h.git.incoming_dir()).map_or(0, |entries| entries.count())
}

#[test]
fn failed_fetches_leave_the_live_repository_untouched() {
    on_each_runtime(|h| {
        let source = h.create_repo("src");
        let work = work_repo(&h.scratch("work"), 3);
        git_ok(Some(&work), &["push", "--quiet", &h.url(&source), "main"]);
        let tip = head_oid(&work, "main");
        let into_key = h.create_repo("into");
        let into = h.git.repo_path(&into_key);
        let before = pack_files(&into);
        let unknown = Oid::from_hex(UNKNOWN).unwrap();

        // A remote without the object, and one killed at its deadline mid-transfer.
        let not_ours = h.block_on(
            h.git
                .fetch(&into, &h.url(&source), &[unknown], &limits(true)),
        );
        assert_eq!(not_ours, Err(GitFetchError::NotOurRef(vec![unknown])));
        let mut past = limits(true);
        past.deadline = Instant::now();
        let late = h.block_on(h.git.fetch(&into, &h.url(&source), &[tip], &past));
        assert_eq!(late, Err(GitFetchError::Timeout));

        assert_eq!(pack_files(&into), before, "{:?}", h.flavor);
        assert_eq!(incoming_entries(h), 0);
        let inspected = h.block_on(h.git.inspect(&into_key, &[tip])).unwrap();
        assert!(inspected.present.is_empty(), "{:?}", h.flavor);
    });
}

#[test]
fn a_name_resolving_to_loopback_is_fetched_from_only_when_private_remotes_are_allowed() {
    on_each_runtime(|h| {
        let source = h.create_repo("src");
        let work = work_repo(&h.scratch("work"), 1);
        git_ok(Some(&work), &["push", "--quiet", &h.url(&source), "main"]);
        let tip = head_oid(&work, "main");
        let into = h.git.repo_path(&h.create_repo("into"));
        let by_name = h
            .url(&source)
            .replace(&h.addr.ip().to_string(), "localhost");
        assert!(by_name.starts_with("http://localhost:"), "{by_name}");

        let refused = h.block_on(h.git.fetch(&into, &by_name, &[tip], &limits(false)));
        let Err(GitFetchError::PrivateAddress(why)) = &refused else {
            panic!("{:?}: {refused:?}", h.flavor)
        };
        assert!(why.starts_with("localhost resolves to "), "{why}");
        assert!(
            refused
                .unwrap_err()
                .to_string()
                .contains("--allow-private-remotes"),
            "the refusal names the flag"
        );

        let fetched = h.block_on(h.git.fetch(&into, &by_name, &[tip], &limits(true)));
        assert_eq!(fetched, Ok(vec![tip]), "{:?}", h.flavor);
    });
}
