//! What an anonymous git client may cost: how long a git process serving it may run, and
//! the count of requests refused for going over a limit (for `/metrics`).

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Limits on the git processes that serve clients.
#[derive(Clone, Debug)]
pub struct GitLimits {
    /// An upload-pack or receive-pack serving a client is killed after this long.
    pub process_timeout: Duration,
    /// Most ref updates in one push.
    pub max_push_commands: usize,
}

impl Default for GitLimits {
    fn default() -> GitLimits {
        GitLimits {
            process_timeout: Duration::from_secs(3600),
            max_push_commands: super::receive::MAX_COMMANDS,
        }
    }
}

/// Why a git request was refused or cut short by a limit.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// The request body was larger than its limit (413).
    BodyTooLarge,
    /// The request body stalled or took too long (408).
    BodyTimeout,
    /// A git process ran past its deadline and was killed.
    GitTimeout,
    /// A push carried more ref updates than allowed.
    TooManyCommands,
}

impl Refusal {
    pub const ALL: [Refusal; 4] = [
        Refusal::BodyTooLarge,
        Refusal::BodyTimeout,
        Refusal::GitTimeout,
        Refusal::TooManyCommands,
    ];

    /// The `reason` label in `graspd_git_refused_total`.
    pub fn label(self) -> &'static str {
        match self {
            Refusal::BodyTooLarge => "body_too_large",
            Refusal::BodyTimeout => "body_timeout",
            Refusal::GitTimeout => "git_timeout",
            Refusal::TooManyCommands => "too_many_commands",
        }
    }
}

/// How many git requests each limit refused since start-up.
#[derive(Debug, Default)]
pub struct Refusals {
    counts: [AtomicU64; Refusal::ALL.len()],
}

impl Refusals {
    pub fn count(&self, refusal: Refusal) {
        self.counts[refusal as usize].fetch_add(1, Ordering::Relaxed);
    }

    /// `(label, total)` for every kind of refusal.
    pub fn totals(&self) -> impl Iterator<Item = (&'static str, u64)> + '_ {
        Refusal::ALL
            .iter()
            .map(|r| (r.label(), self.counts[*r as usize].load(Ordering::Relaxed)))
    }
}
