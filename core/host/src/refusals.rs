//! What the server refused because a limit was reached, relay and git alike: one counter per
//! limit (rendered as `graspd_refusals_total{limit}`), and a log line per limit at most once per
//! [`LOG_INTERVAL`], with how many refusals it stands for, so a flood cannot flood the log.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use graspd_core::policy::PolicyRefusal;
use graspd_core::Refusal;

/// Shortest time between two log lines about the same limit.
pub const LOG_INTERVAL: Duration = Duration::from_secs(10);

/// A limit that refuses clients; its `name` is the metric label.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Limit {
    /// `--max-websockets`: the server holds as many WebSockets as it may.
    WebSocketsTotal,
    /// `--max-websockets-per-address`.
    WebSocketsPerAddress,
    /// `--websocket-idle-secs`: a client silent this long (no pong either) was disconnected.
    WebSocketIdle,
    /// `--websocket-write-timeout-secs`: a client that read nothing this long was disconnected.
    WebSocketSlowReader,
    /// A frame over the message size limit: NOTICE and close 1009.
    WebSocketOversized,
    /// The listener could not accept a connection (usually out of file descriptors).
    AcceptFailed,
    /// `--max-future-skew-secs`: an event dated too far ahead of this server's clock.
    CreatedAtFuture,
    /// `--max-git-requests`: the server serves as many git requests as it may (503).
    GitRequestsTotal,
    /// `--max-git-requests-per-address` (429).
    GitRequestsPerAddress,
    /// `--max-body-bytes`, `--max-upload-request-bytes`: a git request body too large (413).
    GitBodyTooLarge,
    /// `--body-idle-timeout-secs`, `--body-timeout-secs`: a git request body that stalled or
    /// took too long (408).
    GitBodyTimeout,
    /// `--git-timeout-secs`: a git process serving a client ran past its deadline; killed.
    GitProcessTimeout,
    /// `--max-push-commands`: a push with more ref updates (400).
    GitTooManyCommands,
    /// A push that changes no ref: its pack is discarded unread.
    GitNoOpPack,
    /// `--events-per-second-per-connection`, `--event-burst-per-connection`.
    EventsPerConnection,
    /// `--events-per-second-per-address`, `--event-burst-per-address`.
    EventsPerAddress,
    /// `--max-waiting`: purgatory is full.
    WaitingTotal,
    /// `--max-waiting-per-author`.
    WaitingPerAuthor,
    /// `--max-waiting-per-address`.
    WaitingPerAddress,
    /// `--max-deletion-content-bytes`, `--max-deletion-tags`.
    DeletionTooLarge,
    /// A deletion request that deletes nothing its author has here.
    DeletionNotHeld,
    /// `--max-queued-prunes`: a repository not queued for pruning (its next ended placeholder
    /// queues it again).
    GitPruneQueue,
    /// `--deny-author`: an event by a denied author.
    PolicyAuthor,
    /// `--deny-repo`, `--allow-repo`: an event for a denied repository, or an announcement
    /// the allow list does not name.
    PolicyRepo,
    /// `--max-negentropy-sessions`: a NIP-77 `NEG-OPEN` over the per-connection limit (or
    /// with negentropy turned off).
    NegentropySessions,
    /// `--max-negentropy-items`: a `NEG-OPEN` whose filter matches more served events.
    NegentropyItems,
}

impl Limit {
    pub const ALL: [Limit; 26] = [
        Limit::WebSocketsTotal,
        Limit::WebSocketsPerAddress,
        Limit::WebSocketIdle,
        Limit::WebSocketSlowReader,
        Limit::WebSocketOversized,
        Limit::AcceptFailed,
        Limit::CreatedAtFuture,
        Limit::GitRequestsTotal,
        Limit::GitRequestsPerAddress,
        Limit::GitBodyTooLarge,
        Limit::GitBodyTimeout,
        Limit::GitProcessTimeout,
        Limit::GitTooManyCommands,
        Limit::GitNoOpPack,
        Limit::WaitingTotal,
        Limit::WaitingPerAuthor,
        Limit::WaitingPerAddress,
        Limit::DeletionTooLarge,
        Limit::DeletionNotHeld,
        Limit::EventsPerConnection,
        Limit::EventsPerAddress,
        Limit::GitPruneQueue,
        Limit::PolicyAuthor,
        Limit::PolicyRepo,
        Limit::NegentropySessions,
        Limit::NegentropyItems,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Limit::WebSocketsTotal => "websockets_total",
            Limit::WebSocketsPerAddress => "websockets_per_address",
            Limit::WebSocketIdle => "websocket_idle",
            Limit::WebSocketSlowReader => "websocket_slow_reader",
            Limit::WebSocketOversized => "websocket_oversized_frame",
            Limit::AcceptFailed => "accept_failed",
            Limit::CreatedAtFuture => "created_at_future",
            Limit::GitRequestsTotal => "git_requests_total",
            Limit::GitRequestsPerAddress => "git_requests_per_address",
            Limit::GitBodyTooLarge => "git_body_too_large",
            Limit::GitBodyTimeout => "git_body_timeout",
            Limit::GitProcessTimeout => "git_process_timeout",
            Limit::GitTooManyCommands => "git_too_many_commands",
            Limit::GitNoOpPack => "git_no_op_pack",
            Limit::GitPruneQueue => "git_prune_queue",
            Limit::EventsPerConnection => "events_per_connection",
            Limit::EventsPerAddress => "events_per_address",
            Limit::WaitingTotal => Refusal::Waiting.name(),
            Limit::WaitingPerAuthor => Refusal::WaitingPerAuthor.name(),
            Limit::WaitingPerAddress => Refusal::WaitingPerAddress.name(),
            Limit::DeletionTooLarge => Refusal::DeletionTooLarge.name(),
            Limit::DeletionNotHeld => Refusal::DeletionNotHeld.name(),
            Limit::PolicyAuthor => "policy_author",
            Limit::PolicyRepo => "policy_repo",
            Limit::NegentropySessions => "negentropy_sessions",
            Limit::NegentropyItems => "negentropy_items",
        }
    }

    /// The limit counting the engine's `refusal`.
    pub fn of(refusal: Refusal) -> Limit {
        match refusal {
            Refusal::Waiting => Limit::WaitingTotal,
            Refusal::WaitingPerAuthor => Limit::WaitingPerAuthor,
            Refusal::WaitingPerAddress => Limit::WaitingPerAddress,
            Refusal::DeletionTooLarge => Limit::DeletionTooLarge,
            Refusal::DeletionNotHeld => Limit::DeletionNotHeld,
        }
    }

    /// The limit counting a curation refusal.
    pub fn of_policy(refusal: PolicyRefusal) -> Limit {
        match refusal {
            PolicyRefusal::Author => Limit::PolicyAuthor,
            PolicyRefusal::Repo | PolicyRefusal::NotAllowed => Limit::PolicyRepo,
        }
    }

    fn index(self) -> usize {
        Limit::ALL
            .iter()
            .position(|&l| l == self)
            .expect("every limit is listed in ALL")
    }
}

/// Refusal counters and their log throttle; shared by the HTTP origin, the git bridge and the
/// driver.
#[derive(Debug, Default)]
pub struct Refusals {
    counts: [AtomicU64; Limit::ALL.len()],
    logs: Mutex<[LogWindow; Limit::ALL.len()]>,
}

#[derive(Debug, Default, Clone, Copy)]
struct LogWindow {
    last: Option<Instant>,
    /// Refusals since the last line.
    unlogged: u64,
}

impl Refusals {
    pub fn new() -> Refusals {
        Refusals::default()
    }

    /// Counts one refusal of `limit`, and logs it (with `detail`, e.g. the client address or
    /// error) unless a line about `limit` was logged less than [`LOG_INTERVAL`] before `now`.
    pub fn refuse(&self, limit: Limit, detail: &dyn std::fmt::Display, now: Instant) {
        self.counts[limit.index()].fetch_add(1, Ordering::Relaxed);
        let due = {
            let mut logs = self.logs.lock().unwrap_or_else(|e| e.into_inner());
            let window = &mut logs[limit.index()];
            window.unlogged += 1;
            match window.last {
                Some(last) if now.duration_since(last) < LOG_INTERVAL => None,
                _ => {
                    window.last = Some(now);
                    Some(std::mem::take(&mut window.unlogged))
                }
            }
        };
        if let Some(count) = due {
            tracing::warn!(
                limit = limit.name(),
                count,
                "{detail} ({count} refused for this limit since the last line)"
            );
        }
    }

    /// Refusals of `limit` so far.
    pub fn count(&self, limit: Limit) -> u64 {
        self.counts[limit.index()].load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_every_refusal_and_logs_once_per_interval() {
        let refusals = Refusals::new();
        let now = Instant::now();
        for _ in 0..1000 {
            refusals.refuse(Limit::AcceptFailed, &"too many open files", now);
        }
        refusals.refuse(Limit::WebSocketIdle, &"idle", now);
        assert_eq!(refusals.count(Limit::AcceptFailed), 1000);
        assert_eq!(refusals.count(Limit::WebSocketIdle), 1);
        assert_eq!(refusals.count(Limit::WebSocketsTotal), 0);
        let logs = refusals.logs.lock().unwrap();
        // The first was logged at once; the other 999 wait for the next line.
        assert_eq!(logs[Limit::AcceptFailed.index()].unlogged, 999);
        assert_eq!(logs[Limit::WebSocketIdle.index()].unlogged, 0);
        drop(logs);
        refusals.refuse(Limit::AcceptFailed, &"later", now + LOG_INTERVAL);
        let logs = refusals.logs.lock().unwrap();
        assert_eq!(
            logs[Limit::AcceptFailed.index()].unlogged,
            0,
            "logged with the count"
        );
    }
}
