//! Command-line and environment configuration shared by both server binaries.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser};

/// graspd: a GRASP server (a nostr relay and git smart-HTTP on one origin).
#[derive(Parser, Debug, Clone)]
#[command(name = "graspd", version)]
pub struct Config {
    /// What to run: the server (no subcommand), or an operator's task.
    #[command(subcommand)]
    pub command: Option<Task>,

    /// Address to listen on.
    #[arg(long, env = "GRASPD_BIND", default_value = "127.0.0.1:7334")]
    pub bind: SocketAddr,

    /// The URL users reach this server at (clone URLs and relay URLs in announcements must name
    /// it). Defaults to `http://<bind>`.
    #[arg(long, env = "GRASPD_PUBLIC_URL")]
    pub public_url: Option<String>,

    /// Directory for the bare repositories and the event store.
    #[arg(long, env = "GRASPD_DATA_DIR", default_value = "./data", global = true)]
    pub data_dir: PathBuf,

    /// Keep the events in this PostgreSQL database (`postgres://user:password@host/db`, or a
    /// `key=value` connection string) instead of `<data-dir>/graspd.redb`. The schema is
    /// created and migrated at start-up.
    #[arg(long, env = "GRASPD_DATABASE_URL")]
    pub database_url: Option<String>,

    /// Most connections open to the `--database-url` database at once; more store
    /// operations wait for a free one (at most 30 s, then fail with an `error:`).
    #[arg(long, env = "GRASPD_DATABASE_CONNECTIONS", default_value_t = crate::store::pg::DEFAULT_CONNECTIONS)]
    pub database_connections: usize,

    /// With `--database-url`, one instance at a time fetches for a repository, under a lease
    /// it renews every third of this many seconds. If it dies, another instance takes the
    /// lease once it expires and fetches instead.
    #[arg(long, env = "GRASPD_SYNC_LEASE_SECS", default_value_t = 30, value_parser = clap::value_parser!(u64).range(3..))]
    pub sync_lease_secs: u64,

    /// Allow fetching git data from non-public addresses (loopback, private, link-local, ...),
    /// named literally or resolved from a name (tests, LANs).
    #[arg(long, env = "GRASPD_ALLOW_PRIVATE_REMOTES")]
    pub allow_private_remotes: bool,

    /// GRASP-06: serve `/prs/<npub>/<identifier>.git`, where anyone pushes
    /// `refs/nostr/<event-id>` for a PR or PR update, also for repositories not hosted here.
    #[arg(long, env = "GRASPD_GRASP06")]
    pub grasp06: bool,

    /// Refuse every event by this author (an npub): never stored, never waiting, never taken
    /// from followed relays (repeatable).
    #[arg(
        long = "deny-author",
        env = "GRASPD_DENY_AUTHORS",
        value_delimiter = ',',
        global = true
    )]
    pub deny_authors: Vec<graspd_core::policy::AuthorEntry>,

    /// Refuse announcements, states, PRs and other events for these repositories: `<npub>`
    /// (all of theirs), `<npub>/<identifier>` or `<identifier>` (anyone's); wins over
    /// `--allow-repo` (repeatable).
    #[arg(
        long = "deny-repo",
        env = "GRASPD_DENY_REPOS",
        value_delimiter = ',',
        global = true
    )]
    pub deny_repos: Vec<graspd_core::policy::RepoEntry>,

    /// Host only these repositories (entries as for `--deny-repo`): when any is set, an
    /// announcement is accepted only if it lists this server and matches one (repeatable).
    #[arg(
        long = "allow-repo",
        env = "GRASPD_ALLOW_REPOS",
        value_delimiter = ',',
        global = true
    )]
    pub allow_repos: Vec<graspd_core::policy::RepoEntry>,

    /// GRASP-05: keep read-only archive mirrors of these repositories (entries as for
    /// `--deny-repo`): their announcements are taken although they do not list this server,
    /// and their data and events are fetched from the servers and relays they list. The deny
    /// lists and an allow list win over it (repeatable).
    #[arg(
        long = "archive-repo",
        env = "GRASPD_ARCHIVE_REPOS",
        value_delimiter = ',',
        global = true
    )]
    pub archive_repos: Vec<graspd_core::policy::RepoEntry>,

    /// Refuse pushes to the repositories `--archive-repo` names (`--archive-read-only=false`
    /// lets their maintainers push here as to any hosted repository).
    #[arg(long, env = "GRASPD_ARCHIVE_READ_ONLY", default_value_t = true,
          action = clap::ArgAction::Set, num_args = 0..=1, default_missing_value = "true")]
    pub archive_read_only: bool,

    /// A TOML file with more curation lists (`deny_authors`, `deny_repos`, `allow_repos`,
    /// `archive_repos`, entries as for the flags), added to the flags'. Re-read on SIGHUP and when it changes;
    /// a file that does not parse stops the start-up, and on a reload keeps the lists in force.
    #[arg(long = "config", env = "GRASPD_CONFIG", global = true)]
    pub config_file: Option<PathBuf>,

    /// Seconds between checks of the `--config` file for a change (its modification time,
    /// length and content); 0 re-reads it only on SIGHUP.
    #[arg(long, env = "GRASPD_CONFIG_POLL_SECS", default_value_t = 5)]
    pub config_poll_secs: u64,

    /// Log filter in `tracing_subscriber::EnvFilter` syntax, e.g. `info,graspd_host=debug`.
    #[arg(long = "log", env = "GRASPD_LOG", default_value = "info")]
    pub log_filter: String,

    /// Largest accepted HTTP request body in bytes, after gzip decoding (a push's pack).
    #[arg(long, env = "GRASPD_MAX_BODY_BYTES", default_value_t = 512 * 1024 * 1024)]
    pub max_body_bytes: u64,

    /// Largest `git-upload-pack` request body in bytes, after gzip decoding (a fetch's wants
    /// and haves; streamed to git as it is inflated, never held whole).
    #[arg(long, env = "GRASPD_MAX_UPLOAD_REQUEST_BYTES", default_value_t = 16 * 1024 * 1024)]
    pub max_upload_request_bytes: u64,

    /// Seconds a request body may send nothing before the request is ended (408).
    #[arg(long, env = "GRASPD_BODY_IDLE_TIMEOUT_SECS", default_value_t = 60)]
    pub body_idle_timeout_secs: u64,

    /// Seconds a whole request body may take to arrive (408 beyond).
    #[arg(long, env = "GRASPD_BODY_TIMEOUT_SECS", default_value_t = 3600)]
    pub body_timeout_secs: u64,

    /// Seconds a git process serving a client (upload-pack, receive-pack) may run before it
    /// is killed.
    #[arg(long, env = "GRASPD_GIT_TIMEOUT_SECS", default_value_t = 3600)]
    pub git_timeout_secs: u64,

    /// Niceness (0-19) of the `git upload-pack` processes serving clones and fetches, and of
    /// the pack generation they run: bulk reads yield the CPU to pushes and the relay, so
    /// clients asking for large packs (or never reading them) cannot starve those.
    #[arg(long, env = "GRASPD_GIT_UPLOAD_NICE", default_value_t = 10,
          value_parser = clap::value_parser!(i32).range(0..=19))]
    pub git_upload_nice: i32,

    /// Git requests one client address may have in flight at `--git-upload-nice`; its
    /// clones and fetches beyond these run only on CPU time nothing else wants
    /// (`SCHED_IDLE`), so many requests from one address cannot slow another address's.
    #[arg(
        long,
        env = "GRASPD_GIT_FULL_PRIORITY_PER_ADDRESS",
        default_value_t = 2
    )]
    pub git_full_priority_per_address: usize,

    /// Most ref updates one push may carry.
    #[arg(long, env = "GRASPD_MAX_PUSH_COMMANDS", default_value_t = 10_000)]
    pub max_push_commands: usize,

    /// Most git requests (clones, fetches, pushes, ref listings), each with its git process,
    /// served at once; beyond it clients get 503 with `Retry-After`.
    #[arg(long, env = "GRASPD_MAX_GIT_REQUESTS", default_value_t = 64)]
    pub max_git_requests: usize,

    /// Most git requests served at once for one client address; beyond it 429 with
    /// `Retry-After`.
    #[arg(
        long,
        env = "GRASPD_MAX_GIT_REQUESTS_PER_ADDRESS",
        default_value_t = 16
    )]
    pub max_git_requests_per_address: usize,

    /// Seconds a `git gc` removing what an ended `refs/nostr` placeholder left unreachable may
    /// run before it is killed.
    #[arg(long, env = "GRASPD_PRUNE_TIMEOUT_SECS", default_value_t = 600)]
    pub prune_timeout_secs: u64,

    /// Most repositories waiting to be pruned at once; beyond it a request to prune one more
    /// is dropped (counted as a refusal; its next ended placeholder asks again).
    #[arg(long, env = "GRASPD_MAX_QUEUED_PRUNES", default_value_t = 1024)]
    pub max_queued_prunes: usize,

    /// Seconds a fetch from another git server may take before it is killed.
    #[arg(long, env = "GRASPD_FETCH_TIMEOUT_SECS", default_value_t = 120)]
    pub fetch_timeout_secs: u64,

    /// Largest pack in bytes a fetch from another git server may bring.
    #[arg(long, env = "GRASPD_MAX_FETCH_BYTES", default_value_t = 512 * 1024 * 1024)]
    pub max_fetch_bytes: u64,

    /// Most event ids remembered as named (by `e`/`q`) by accepted issues, patches, PRs and
    /// comments, so that those events are accepted when they arrive; beyond it the oldest is
    /// forgotten.
    #[arg(long, env = "GRASPD_MAX_REFERENCED_IDS", default_value_t = crate::store::DEFAULT_MAX_REFERENCED_IDS)]
    pub max_referenced_ids: usize,

    /// Reference tags (`a`, `e`, `q`, either case) of one event that are looked at to relate
    /// it to what is hosted here, and remembered; the rest are ignored.
    #[arg(long, env = "GRASPD_MAX_EVENT_REFERENCES", default_value_t = crate::store::DEFAULT_MAX_EVENT_REFERENCES)]
    pub max_event_references: usize,

    /// Store writes made at the same time (events served, put in or taken out of purgatory)
    /// share one durable commit, at most this many; 1 commits each on its own.
    #[arg(long, env = "GRASPD_MAX_WRITES_PER_COMMIT", default_value_t = crate::store::DEFAULT_MAX_WRITES_PER_COMMIT)]
    pub max_writes_per_commit: usize,

    /// The event store's page cache, in MiB (the kernel's page cache holds the rest of the
    /// file; this one saves the copies of the hottest pages).
    #[arg(long, env = "GRASPD_STORE_CACHE_MIB", default_value_t = crate::store::DEFAULT_CACHE_MIB)]
    pub store_cache_mib: usize,

    #[command(flatten)]
    pub engine: EngineLimits,

    #[command(flatten)]
    pub connections: ConnectionLimits,

    #[command(flatten)]
    pub follow: crate::follow::FollowArgs,
}

/// Client connection limits: WebSocket caps, keep-alive and deadlines, trusted proxies.
#[derive(Args, Debug, Clone)]
pub struct ConnectionLimits {
    /// Most WebSocket connections open at once; beyond it upgrades are answered 503. Lowered
    /// at start-up to fit the process's open-file limit.
    #[arg(long, env = "GRASPD_MAX_WEBSOCKETS", default_value_t = crate::http::clients::DEFAULT_MAX_WEBSOCKETS)]
    pub max_websockets: usize,

    /// Most WebSocket connections from one client address (an IPv6 /64 counts as one);
    /// beyond it upgrades are answered 429.
    #[arg(
        long,
        env = "GRASPD_MAX_WEBSOCKETS_PER_ADDRESS",
        default_value_t = crate::http::clients::DEFAULT_MAX_WEBSOCKETS_PER_ADDRESS
    )]
    pub max_websockets_per_address: usize,

    /// A reverse proxy (address or CIDR block) whose `Forwarded`/`X-Forwarded-For` headers
    /// name the client; from any other peer those headers are ignored (repeatable).
    #[arg(
        long = "trusted-proxy",
        env = "GRASPD_TRUSTED_PROXIES",
        value_delimiter = ','
    )]
    pub trusted_proxies: Vec<crate::address::AddressBlock>,

    /// Seconds a WebSocket client may be silent before it is pinged.
    #[arg(long, env = "GRASPD_WEBSOCKET_PING_SECS", default_value_t = 30)]
    pub websocket_ping_secs: u64,

    /// Seconds a WebSocket client may be silent (no message, no pong) before it is
    /// disconnected.
    #[arg(long, env = "GRASPD_WEBSOCKET_IDLE_SECS", default_value_t = 90)]
    pub websocket_idle_secs: u64,

    /// Seconds a WebSocket client may take nothing we send before it is disconnected.
    #[arg(
        long,
        env = "GRASPD_WEBSOCKET_WRITE_TIMEOUT_SECS",
        default_value_t = 30
    )]
    pub websocket_write_timeout_secs: u64,

    /// EVENTs one WebSocket may have being decided at once (pipelined EVENTs share store
    /// commits); past it the connection reads nothing more until one is answered.
    #[arg(
        long,
        env = "GRASPD_EVENTS_IN_FLIGHT_PER_CONNECTION",
        default_value_t = 32
    )]
    pub events_in_flight_per_connection: usize,

    /// Outgoing bytes buffered per WebSocket; past it the server sends only as fast as the
    /// client reads.
    #[arg(long, env = "GRASPD_WEBSOCKET_SEND_BUFFER_BYTES", default_value_t = 256 * 1024)]
    pub websocket_send_buffer_bytes: usize,

    /// EVENTs per second one WebSocket may send, sustained; beyond it (and its burst) they
    /// are answered `rate-limited:` and the connection stays open.
    #[arg(
        long,
        env = "GRASPD_EVENTS_PER_SECOND_PER_CONNECTION",
        default_value_t = 100
    )]
    pub events_per_second_per_connection: u32,

    /// EVENTs one WebSocket may send at once above its sustained rate.
    #[arg(long, env = "GRASPD_EVENT_BURST_PER_CONNECTION", default_value_t = 200)]
    pub event_burst_per_connection: u32,

    /// EVENTs per second one client address (an IPv6 /64) may send over all its WebSockets.
    #[arg(
        long,
        env = "GRASPD_EVENTS_PER_SECOND_PER_ADDRESS",
        default_value_t = 500
    )]
    pub events_per_second_per_address: u32,

    /// EVENTs one client address may send at once above its sustained rate.
    #[arg(long, env = "GRASPD_EVENT_BURST_PER_ADDRESS", default_value_t = 1000)]
    pub event_burst_per_address: u32,

    /// NIP-77 reconciliations (NEG-OPEN) open at once on one WebSocket; beyond it NEG-ERR
    /// `blocked:`. 0 turns NIP-77 off (NEG-OPEN is answered NEG-ERR, NIP-11 omits 77).
    #[arg(
        long,
        env = "GRASPD_MAX_NEGENTROPY_SESSIONS",
        default_value_t = crate::relay::NegentropyLimits::default().max_sessions
    )]
    pub max_negentropy_sessions: usize,

    /// Served events one NIP-77 reconciliation may cover; a NEG-OPEN whose filter matches
    /// more is answered NEG-ERR `blocked: too many items` (the client falls back to REQ).
    #[arg(
        long,
        env = "GRASPD_MAX_NEGENTROPY_ITEMS",
        default_value_t = crate::relay::NegentropyLimits::default().max_items
    )]
    pub max_negentropy_items: usize,

    /// Largest NIP-77 message this server sends, in bytes before hex encoding (at least
    /// 4096); a larger answer is split over more rounds.
    #[arg(
        long,
        env = "GRASPD_NEGENTROPY_FRAME_BYTES",
        default_value_t = crate::relay::NegentropyLimits::default().frame_bytes
    )]
    pub negentropy_frame_bytes: usize,
}

/// A rate of at least one event per second, with a burst of at least one event.
fn rate(per_second: u32, burst: u32) -> crate::event_rate::Rate {
    crate::event_rate::Rate {
        per_second: per_second.max(1),
        burst: burst.max(1),
    }
}

impl ConnectionLimits {
    /// The relay's per-connection limits with these keep-alive and buffer settings.
    pub fn relay_limits(&self) -> crate::relay::RelayLimits {
        let ping_after = Duration::from_secs(self.websocket_ping_secs.max(1));
        crate::relay::RelayLimits {
            ping_after,
            idle_timeout: Duration::from_secs(self.websocket_idle_secs).max(ping_after),
            write_timeout: Duration::from_secs(self.websocket_write_timeout_secs.max(1)),
            send_buffer_bytes: self.websocket_send_buffer_bytes,
            events_in_flight: self.events_in_flight_per_connection.max(1),
            events_per_connection: rate(
                self.events_per_second_per_connection,
                self.event_burst_per_connection,
            ),
            events_per_address: rate(
                self.events_per_second_per_address,
                self.event_burst_per_address,
            ),
            negentropy: crate::relay::NegentropyLimits {
                max_sessions: self.max_negentropy_sessions,
                max_items: self.max_negentropy_items,
                frame_bytes: self
                    .negentropy_frame_bytes
                    .max(crate::relay::negentropy::MIN_FRAME_BYTES),
            },
            ..crate::relay::RelayLimits::default()
        }
    }

    pub fn trusted_proxies(&self) -> crate::address::TrustedProxies {
        crate::address::TrustedProxies::new(self.trusted_proxies.clone())
    }
}

/// Engine limits and delays (purgatory expiry, sync timing, per-domain throttle). Defaults are
/// the established server's values; tests shorten the delays.
#[derive(Args, Debug, Clone)]
pub struct EngineLimits {
    /// Seconds an announcement, state, PR or PR update waits for its git data.
    #[arg(long, env = "GRASPD_PURGATORY_EXPIRY_SECS", default_value_t = 30 * 60)]
    pub purgatory_expiry_secs: u64,

    /// Milliseconds before the first fetch attempt for an event a user published. A push
    /// often follows; one that races the fetch still succeeds (it is decided under the
    /// repository's lock, and a push whose refs are already here is answered `ok`).
    #[arg(long, env = "GRASPD_SYNC_DELAY_PUBLISHED_MS", default_value_t = 1_000)]
    pub sync_delay_published_ms: u64,

    /// Milliseconds before the first fetch attempt for an event learned from another server.
    #[arg(long, env = "GRASPD_SYNC_DELAY_SYNCED_MS", default_value_t = 500)]
    pub sync_delay_synced_ms: u64,

    /// First back-off after an incomplete attempt, in milliseconds; it doubles up to
    /// `--sync-backoff-max-ms`.
    #[arg(long, env = "GRASPD_SYNC_BACKOFF_MS", default_value_t = 20_000)]
    pub sync_backoff_ms: u64,

    /// Longest back-off between attempts, in milliseconds.
    #[arg(long, env = "GRASPD_SYNC_BACKOFF_MAX_MS", default_value_t = 120_000)]
    pub sync_backoff_max_ms: u64,

    /// Fetches in flight at once per remote domain.
    #[arg(long, env = "GRASPD_MAX_FETCHES_PER_DOMAIN", default_value_t = 5)]
    pub max_fetches_per_domain: usize,

    /// Fetches started per remote domain in any sliding minute.
    #[arg(long, env = "GRASPD_MAX_FETCHES_PER_MINUTE", default_value_t = 60)]
    pub max_fetches_per_minute: usize,

    /// Milliseconds a sync attempt waits on one remote domain before also asking the next
    /// listed one (each domain is otherwise tried only after the previous one is done).
    #[arg(long, env = "GRASPD_FETCH_HEDGE_MS", default_value_t = 10_000)]
    pub fetch_hedge_ms: u64,

    /// Seconds a domain with repeated DNS or TLS failures is skipped.
    #[arg(long, env = "GRASPD_BAD_DOMAIN_SKIP_SECS", default_value_t = 12 * 3600)]
    pub bad_domain_skip_secs: u64,

    /// Most events waiting in purgatory at once; beyond it new ones are refused.
    #[arg(long, env = "GRASPD_MAX_WAITING", default_value_t = 1_000_000)]
    pub max_waiting: usize,

    /// Most events of one author waiting in purgatory at once; beyond it their new ones are
    /// refused (`rate-limited:`).
    #[arg(long, env = "GRASPD_MAX_WAITING_PER_AUTHOR", default_value_t = 1000)]
    pub max_waiting_per_author: usize,

    /// Most events published from one client address (an IPv6 /64 counts as one) waiting in
    /// purgatory at once; beyond it its new ones are refused (`rate-limited:`).
    #[arg(long, env = "GRASPD_MAX_WAITING_PER_ADDRESS", default_value_t = 10_000)]
    pub max_waiting_per_address: usize,

    /// Seconds an event's `created_at` may be ahead of this server's clock; later ones are
    /// refused (`invalid: created_at is ... in the future`). Past timestamps are accepted.
    #[arg(long, env = "GRASPD_MAX_FUTURE_SKEW_SECS", default_value_t = 15 * 60)]
    pub max_future_skew_secs: u64,

    /// Largest content of a kind 5 deletion request, in bytes; larger ones are refused.
    #[arg(
        long,
        env = "GRASPD_MAX_DELETION_CONTENT_BYTES",
        default_value_t = 1024
    )]
    pub max_deletion_content_bytes: usize,

    /// Most tags of a kind 5 deletion request; larger ones are refused.
    #[arg(long, env = "GRASPD_MAX_DELETION_TAGS", default_value_t = 128)]
    pub max_deletion_tags: usize,
}

impl EngineLimits {
    /// Back-off steps: the first, doubled until the maximum (20 s, 40 s, 80 s, 120 s by default).
    pub fn backoff(&self) -> Vec<Duration> {
        let max = self.sync_backoff_max_ms.max(1);
        let mut steps = Vec::new();
        let mut step = self.sync_backoff_ms.clamp(1, max);
        loop {
            steps.push(Duration::from_millis(step));
            if step >= max || steps.len() >= 16 {
                return steps;
            }
            step = (step * 2).min(max);
        }
    }
}

impl Config {
    /// `--public-url`, or `http://<bind>` when not set; never ends with `/`.
    pub fn public_url(&self) -> String {
        let url = match &self.public_url {
            Some(url) => url.clone(),
            None => format!("http://{}", self.bind),
        };
        url.trim_end_matches('/').to_owned()
    }

    /// Size and time limits on request bodies.
    pub fn body_limits(&self) -> crate::http::body::BodyLimits {
        crate::http::body::BodyLimits {
            max_bytes: self.max_body_bytes,
            max_upload_request_bytes: self.max_upload_request_bytes,
            idle_timeout: Duration::from_secs(self.body_idle_timeout_secs),
            total_timeout: Duration::from_secs(self.body_timeout_secs),
        }
    }

    /// Limits on the git processes serving clients.
    pub fn git_limits(&self) -> crate::git::GitLimits {
        crate::git::GitLimits {
            process_timeout: Duration::from_secs(self.git_timeout_secs),
            upload_pack_nice: self.git_upload_nice,
            full_priority_per_address: self.git_full_priority_per_address,
            max_push_commands: self.max_push_commands,
            max_requests: self.max_git_requests,
            max_requests_per_address: self.max_git_requests_per_address,
        }
    }

    /// Bounds of the pruning of what ended placeholders left: objects younger than a
    /// placeholder's life (the purgatory expiry) are never pruned.
    pub fn prune_limits(&self) -> crate::git::PruneLimits {
        crate::git::PruneLimits {
            max_queued: self.max_queued_prunes,
            timeout: Duration::from_secs(self.prune_timeout_secs),
            expire: self.purgatory_expiry(),
        }
    }

    pub fn fetch_timeout(&self) -> Duration {
        Duration::from_secs(self.fetch_timeout_secs)
    }

    /// The PostgreSQL database to keep the events in (`--database-url`), if any.
    pub fn database(&self) -> Option<crate::store::PgSettings> {
        self.database_url
            .clone()
            .map(|url| crate::store::PgSettings {
                url,
                connections: self.database_connections,
            })
    }

    /// Bounds of the store's index of ids named by accepted events.
    pub fn reference_limits(&self) -> crate::store::ReferenceLimits {
        crate::store::ReferenceLimits {
            capacity: self.max_referenced_ids,
            per_event: self.max_event_references,
        }
    }

    pub fn purgatory_expiry(&self) -> Duration {
        Duration::from_secs(self.engine.purgatory_expiry_secs)
    }

    /// The relay follower's configuration: its flags, and leases when the store is shared.
    pub fn follow_config(&self) -> graspd_core::follow::FollowConfig {
        graspd_core::follow::FollowConfig {
            relay_leases: self.database_url.is_some(),
            ..self.follow.config()
        }
    }

    /// The engine's configuration: every limit and delay from the flags above.
    pub fn engine_config(&self) -> graspd_core::Config {
        let e = &self.engine;
        graspd_core::Config {
            own_origin: Some(self.public_url()),
            allow_private_remotes: self.allow_private_remotes,
            grasp06: self.grasp06,
            policy: self.policy(),
            archive_read_only: self.archive_read_only,
            sync_leases: self.database_url.is_some(),
            purgatory_expiry: self.purgatory_expiry(),
            placeholder_expiry: self.purgatory_expiry(),
            max_waiting: e.max_waiting,
            max_waiting_per_author: e.max_waiting_per_author,
            max_waiting_per_address: e.max_waiting_per_address,
            max_future_skew: Duration::from_secs(e.max_future_skew_secs),
            max_deletion_content_bytes: e.max_deletion_content_bytes,
            max_deletion_tags: e.max_deletion_tags,
            first_attempt_after_published: Duration::from_millis(e.sync_delay_published_ms),
            first_attempt_after_synced: Duration::from_millis(e.sync_delay_synced_ms),
            backoff: e.backoff(),
            fetch_timeout: self.fetch_timeout(),
            max_concurrent_per_domain: e.max_fetches_per_domain,
            max_per_minute_per_domain: e.max_fetches_per_minute,
            bad_domain_skip: Duration::from_secs(e.bad_domain_skip_secs),
            fetch_hedge_after: Duration::from_millis(e.fetch_hedge_ms),
            ..graspd_core::Config::default()
        }
    }

    /// The curation lists from `--deny-author`, `--deny-repo`, `--allow-repo` and
    /// `--archive-repo` alone (the `--config` file's are added by
    /// `policy_file::PolicySource`).
    pub fn policy(&self) -> graspd_core::policy::Policy {
        graspd_core::policy::Policy::new(
            self.deny_authors.iter().copied(),
            self.deny_repos.iter().cloned(),
            self.allow_repos.iter().cloned(),
        )
        .archiving(self.archive_repos.iter().cloned())
    }

    /// Parses the command line, with environment variables as fallbacks; exits with usage on
    /// error (what both binaries call, so they need no clap of their own).
    pub fn from_args() -> Config {
        Config::parse()
    }

    /// A configuration with every default, for tests and embedding.
    pub fn defaults() -> Config {
        Config::parse_from(["graspd"])
    }
}

/// An operator's task run instead of the server. The data directory and the curation lists
/// (`--data-dir`, `--deny-*`, `--allow-repo`, `--archive-repo`, `--config`) may follow it.
#[derive(clap::Subcommand, Debug, Clone, PartialEq, Eq)]
pub enum Task {
    /// With the server stopped: delete every stored event the deny lists refuse (served or
    /// waiting) and the git directories of denied repositories, printing what was removed.
    Purge,
}

/// Installs the global `tracing` subscriber with `filter`; a bad filter falls back to `info`
/// and says so.
pub fn init_tracing(filter: &str) {
    let env_filter = match tracing_subscriber::EnvFilter::try_new(filter) {
        Ok(f) => f,
        Err(e) => {
            eprintln!("graspd: bad log filter {filter:?} ({e}); using \"info\"");
            tracing_subscriber::EnvFilter::new("info")
        }
    };
    // Colours only on a terminal: log files and journald get plain text.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stdout());
    let _ = tracing_subscriber::fmt()
        .with_ansi(ansi)
        .with_env_filter(env_filter)
        .try_init();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn public_url_defaults_to_bind() {
        let config = Config::parse_from(["graspd", "--bind", "0.0.0.0:80"]);
        assert_eq!(config.public_url(), "http://0.0.0.0:80");
        let config = Config::parse_from(["graspd", "--public-url", "https://git.example/"]);
        assert_eq!(config.public_url(), "https://git.example");
        assert!(!config.allow_private_remotes);
    }

    #[test]
    fn follower_bounds_are_flags_whose_defaults_are_the_followers() {
        let defaults = crate::follow::ClientLimits::default();
        let limits = Config::defaults().follow.client_limits();
        assert_eq!(limits.events_per_second, defaults.events_per_second);
        assert_eq!(limits.max_message_bytes, defaults.max_message_bytes);
        assert_eq!(limits.history, defaults.history);
        assert_eq!(limits.reconcile, defaults.reconcile);
        let config = Config::parse_from([
            "graspd",
            "--follow-events-per-second",
            "500",
            "--follow-negentropy-timeout-secs",
            "3",
            "--follow-negentropy-max-items",
            "10",
        ]);
        let limits = config.follow.client_limits();
        assert_eq!(limits.events_per_second, 500);
        assert_eq!(limits.reconcile.answer_timeout, Duration::from_secs(3));
        assert_eq!(
            (limits.reconcile.max_items, limits.reconcile.max_missing),
            (10, 10)
        );
    }

    #[test]
    fn reference_index_bounds_are_flags() {
        assert_eq!(
            Config::defaults().reference_limits(),
            crate::store::ReferenceLimits::default()
        );
        let config = Config::parse_from([
            "graspd",
            "--max-referenced-ids",
            "5",
            "--max-event-references",
            "2",
        ]);
        assert_eq!(
            config.reference_limits(),
            crate::store::ReferenceLimits {
                capacity: 5,
                per_event: 2
            }
        );
    }

    #[test]
    fn engine_defaults_are_the_established_values() {
        let config = Config::defaults();
        let engine = config.engine_config();
        let secs = |s: &[u64]| {
            s.iter()
                .map(|&s| Duration::from_secs(s))
                .collect::<Vec<_>>()
        };
        assert_eq!(engine.backoff, secs(&[20, 40, 80, 120]));
        assert_eq!(engine.first_attempt_after_published, Duration::from_secs(1));
        assert_eq!(
            engine.first_attempt_after_synced,
            Duration::from_millis(500)
        );
        assert_eq!(engine.purgatory_expiry, Duration::from_secs(1800));
        assert_eq!(engine.own_origin.as_deref(), Some("http://127.0.0.1:7334"));
        let fast = Config::parse_from([
            "graspd",
            "--sync-backoff-ms",
            "300",
            "--sync-backoff-max-ms",
            "1000",
        ]);
        assert_eq!(
            fast.engine_config().backoff,
            [300, 600, 1000].map(Duration::from_millis).to_vec()
        );
    }

    #[test]
    fn curation_flags_repeat_and_a_bad_entry_names_flag_and_entry() {
        const NPUB: &str = "npub10elfcs4fr0l0r8af98jlmgdh9c8tcxjvz9qkw038js35mp4dma8qzvjptg";
        let config = Config::parse_from([
            "graspd",
            "--deny-author",
            NPUB,
            "--deny-repo",
            "spam",
            "--deny-repo",
            &format!("{NPUB}/x"),
            "--allow-repo",
            "ok",
            "--archive-repo",
            "linux",
        ]);
        assert_eq!(config.deny_authors.len(), 1);
        assert_eq!(config.deny_repos.len(), 2);
        let engine = config.engine_config();
        assert!(engine.policy.has_allow_list() && engine.policy.has_archive_list());
        assert!(engine.archive_read_only);
        let defaults = Config::defaults().engine_config();
        assert!(!defaults.policy.has_allow_list() && !defaults.policy.has_archive_list());
        for (args, read_only) in [
            (&["--archive-read-only=false"][..], false),
            (&["--archive-read-only", "false"][..], false),
            (&["--archive-read-only"][..], true),
        ] {
            let parsed = Config::parse_from(std::iter::once("graspd").chain(args.iter().copied()));
            assert_eq!(
                parsed.engine_config().archive_read_only,
                read_only,
                "{args:?}"
            );
        }
        for (flag, entry) in [
            ("--deny-author", "npub1typo"),
            ("--deny-repo", "npub1typo/x"),
            ("--allow-repo", ".."),
            ("--archive-repo", "npub1typo"),
        ] {
            let error = Config::try_parse_from(["graspd", flag, entry])
                .unwrap_err()
                .to_string();
            assert!(error.contains(flag) && error.contains(entry), "{error}");
        }
    }
}
