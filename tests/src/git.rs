//! The real `git` binary, with an environment that does not depend on the machine's config.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// Runs git in `dir` with a hermetic environment.
pub fn git_output(dir: &Path, args: &[&str]) -> Output {
    git_command(dir, args).output().expect("run git")
}

/// git in `dir` with a hermetic environment, to add to (e.g. trace variables) and run.
pub fn git_command(dir: &Path, args: &[&str]) -> Command {
    let mut command = Command::new("git");
    command
        .current_dir(dir)
        .args(args)
        .env("GIT_CONFIG_GLOBAL", "/dev/null")
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("GIT_TERMINAL_PROMPT", "0")
        .env("GIT_AUTHOR_NAME", "graspd tests")
        .env("GIT_AUTHOR_EMAIL", "tests@graspd.invalid")
        .env("GIT_COMMITTER_NAME", "graspd tests")
        .env("GIT_COMMITTER_EMAIL", "tests@graspd.invalid")
        .env("GIT_AUTHOR_DATE", "2026-01-01T00:00:00Z")
        .env("GIT_COMMITTER_DATE", "2026-01-01T00:00:00Z");
    command
}

/// Runs git and returns trimmed stdout; panics with stderr on failure.
pub fn git(dir: &Path, args: &[&str]) -> String {
    let out = git_output(dir, args);
    assert!(
        out.status.success(),
        "git {args:?} failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

/// Runs git expecting failure; returns stderr.
pub fn git_fails(dir: &Path, args: &[&str]) -> String {
    let out = git_output(dir, args);
    assert!(!out.status.success(), "git {args:?} unexpectedly succeeded");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// A local working repository used as the "user's" clone.
pub struct WorkRepo {
    pub dir: PathBuf,
}

impl WorkRepo {
    pub fn init(label: &str) -> WorkRepo {
        let dir = crate::temp_dir(label);
        git(&dir, &["init", "-q", "-b", "main"]);
        WorkRepo { dir }
    }

    pub fn git(&self, args: &[&str]) -> String {
        git(&self.dir, args)
    }

    /// Writes `file` and commits it; returns the new commit id.
    pub fn commit(&self, file: &str, content: &str) -> String {
        std::fs::write(self.dir.join(file), content).expect("write file");
        self.git(&["add", file]);
        self.git(&["commit", "-q", "-m", &format!("edit {file}")]);
        self.head()
    }

    pub fn head(&self) -> String {
        self.git(&["rev-parse", "HEAD"])
    }

    pub fn rev(&self, rev: &str) -> String {
        self.git(&["rev-parse", rev])
    }
}

impl Drop for WorkRepo {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

/// `git ls-remote <url>` as (ref, oid) pairs.
pub fn ls_remote(url: &str) -> Vec<(String, String)> {
    let out = git(&std::env::temp_dir(), &["ls-remote", url]);
    out.lines()
        .filter_map(|l| l.split_once('\t'))
        .map(|(oid, r)| (r.to_owned(), oid.to_owned()))
        .collect()
}

/// The oid `ref_name` points at on the remote `url`, if it exists there.
pub fn ref_of(url: &str, ref_name: &str) -> Option<String> {
    ls_remote(url)
        .into_iter()
        .find(|(r, _)| r == ref_name)
        .map(|(_, oid)| oid)
}
