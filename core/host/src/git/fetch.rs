//! Fetching specific objects from another git server:
//! `git -c protocol.version=2 fetch --no-tags --no-write-fetch-head <url> <oid>...`,
//! killed at its deadline, its pack size capped, its failure classified from stderr.
//!
//! A fetch only adds objects (no refs), so it needs no repo lock. Its pack lands in a
//! quarantine object directory (the live repo's objects serve as its alternate, so git
//! negotiates and checks connectivity against both) and moves into the live repo only once git
//! has completed the fetch and a wanted object arrived. A fetch killed at its deadline or byte
//! cap, refused, or answered by a remote that lies leaves the live repo untouched.

use std::fmt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use graspd_core::Oid;

use super::process::{self, git};
use crate::resolve::{resolve_checked, ResolveError};
use crate::runtime::{unblock, Runtime};

/// Limits of one fetch.
#[derive(Clone, Debug)]
pub struct FetchLimits {
    /// The process is killed at this instant.
    pub deadline: Instant,
    /// Largest pack accepted, in bytes.
    pub max_bytes: u64,
    /// Allow loopback, private and link-local addresses (tests, LANs).
    pub allow_private: bool,
}

/// Why a fetch failed, classified so the engine can decide between retry, back-off and
/// giving up on a remote.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum GitFetchError {
    /// Not an `http(s)://` URL.
    BadUrl(String),
    /// The host is, or resolves to, a non-public address (`graspd_core::net::is_public`) and
    /// those are not allowed.
    PrivateAddress(String),
    /// The name does not resolve.
    Dns(String),
    /// The connection was refused or could not be made.
    Refused(String),
    /// TLS handshake or certificate failure.
    Tls(String),
    /// Killed at the deadline (or the remote timed out).
    Timeout,
    /// The pack grew beyond the byte cap; the fetch was killed.
    TooLarge { max_bytes: u64 },
    /// The remote does not have (or will not serve) these objects.
    NotOurRef(Vec<Oid>),
    /// The server answered with an HTTP error status.
    HttpStatus(u16),
    /// Anything else, with git's last stderr lines.
    Other(String),
}

impl fmt::Display for GitFetchError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            GitFetchError::BadUrl(url) => write!(f, "not an http(s) URL: {url}"),
            GitFetchError::PrivateAddress(what) => {
                write!(f, "refused: {what} (see --allow-private-remotes)")
            }
            GitFetchError::Dns(m) => write!(f, "name resolution failed: {m}"),
            GitFetchError::Refused(m) => write!(f, "connection failed: {m}"),
            GitFetchError::Tls(m) => write!(f, "TLS failed: {m}"),
            GitFetchError::Timeout => f.write_str("fetch timed out"),
            GitFetchError::TooLarge { max_bytes } => {
                write!(f, "pack larger than {max_bytes} bytes")
            }
            GitFetchError::NotOurRef(oids) => {
                write!(f, "remote will not serve {} object(s)", oids.len())
            }
            GitFetchError::HttpStatus(code) => write!(f, "remote answered HTTP {code}"),
            GitFetchError::Other(m) => write!(f, "fetch failed: {m}"),
        }
    }
}

impl std::error::Error for GitFetchError {}

/// Most stderr/stdout kept from a fetch.
const OUTPUT_CAP: usize = 64 * 1024;

/// Fetches `oids` from `url` for the repo at `into`, through the quarantine directory
/// `incoming` (created here, removed before returning); returns which of `oids` the repo has
/// afterwards.
pub async fn fetch(
    runtime: &dyn Runtime,
    into: &Path,
    incoming: &Path,
    url: &str,
    oids: &[Oid],
    limits: &FetchLimits,
) -> Result<Vec<Oid>, GitFetchError> {
    let target = parse_http_url(url)?;
    let quarantine = Quarantine::create(runtime, incoming).await?;
    let result = fetch_quarantined(runtime, into, &quarantine, url, &target, oids, limits).await;
    quarantine.remove(runtime).await;
    result
}

async fn fetch_quarantined(
    runtime: &dyn Runtime,
    into: &Path,
    quarantine: &Quarantine,
    url: &str,
    target: &HttpTarget,
    oids: &[Oid],
    limits: &FetchLimits,
) -> Result<Vec<Oid>, GitFetchError> {
    let mut command = git(Some(into));
    quarantine.apply_to(&mut command, into);
    command.args(["-c", "protocol.version=2"]);
    if !limits.allow_private {
        // A redirect could point anywhere, including a private address.
        command.args(["-c", "http.followRedirects=false"]);
    }
    // Resolve once, check every address, and pin curl to those addresses, so a second lookup
    // by git cannot rebind the name to a private address.
    let addrs = resolve_checked(runtime, &target.host, target.port, limits.allow_private).await?;
    if target.host.parse::<std::net::IpAddr>().is_err() {
        let pinned: Vec<String> = addrs
            .iter()
            .map(|a| match a {
                std::net::SocketAddr::V6(v6) => format!("[{}]", v6.ip()),
                std::net::SocketAddr::V4(v4) => v4.ip().to_string(),
            })
            .collect();
        command.arg("-c").arg(format!(
            "http.curloptResolve={}:{}:{}",
            target.host,
            target.port,
            pinned.join(",")
        ));
    }
    // Always keep one pack (never explode into loose objects) so the file-size limit caps
    // the whole transfer.
    command.args(["-c", "fetch.unpackLimit=1"]);
    limit_file_size(&mut command, limits.max_bytes);
    command
        .args([
            "fetch",
            "--quiet",
            "--no-tags",
            "--no-write-fetch-head",
            "--no-auto-gc",
        ])
        .arg(url)
        .args(oids.iter().map(|o| o.to_string()));
    let out = process::run(
        runtime,
        command,
        &b""[..],
        Some(limits.deadline),
        OUTPUT_CAP,
    )
    .await
    .map_err(|e| GitFetchError::Other(e.to_string()))?;
    if out.timed_out() {
        return Err(GitFetchError::Timeout);
    }
    if !out.success() {
        let stderr = String::from_utf8_lossy(&out.stderr);
        let killed_pack = capped_pack_left(runtime, &quarantine.path, limits.max_bytes).await;
        if killed_pack || hit_file_size_limit(&stderr) {
            return Err(GitFetchError::TooLarge {
                max_bytes: limits.max_bytes,
            });
        }
        return Err(classify(&stderr));
    }
    // What the quarantine and the repository hold together is what the repository holds
    // once the quarantine has moved in: one look, before deciding to move anything.
    let present = quarantine.present(runtime, into, oids).await;
    if present.is_empty() {
        return Err(GitFetchError::Other(
            "the remote completed the fetch but sent none of the wanted objects".into(),
        ));
    }
    quarantine.migrate(runtime, into).await.map_err(|e| {
        GitFetchError::Other(format!("moving fetched objects into the repository: {e}"))
    })?;
    Ok(present)
}

/// A quarantine object directory for one fetch.
struct Quarantine {
    path: PathBuf,
}

impl Quarantine {
    async fn create(runtime: &dyn Runtime, path: &Path) -> Result<Quarantine, GitFetchError> {
        let path = path.to_owned();
        let pack = path.join("pack");
        unblock(runtime, move || std::fs::create_dir_all(pack))
            .await
            .and_then(|r| r)
            .map_err(|e| GitFetchError::Other(format!("creating the fetch quarantine: {e}")))?;
        Ok(Quarantine { path })
    }

    /// New objects go to the quarantine; the live repo's objects stay readable as an alternate.
    fn apply_to(&self, command: &mut Command, repo: &Path) {
        command
            .env("GIT_OBJECT_DIRECTORY", &self.path)
            .env("GIT_ALTERNATE_OBJECT_DIRECTORIES", repo.join("objects"));
    }

    /// Which of `oids` the quarantine and the live repo hold between them (git's own view of
    /// both), in the order asked.
    async fn present(&self, runtime: &dyn Runtime, repo: &Path, oids: &[Oid]) -> Vec<Oid> {
        let mut command = git(Some(repo));
        self.apply_to(&mut command, repo);
        command.args(["cat-file", "--batch-check"]);
        let stdin: Vec<u8> = oids
            .iter()
            .map(|o| format!("{o}\n"))
            .collect::<String>()
            .into();
        // One line per object: `<oid> <type> <size>` or `<oid> missing`.
        let cap = oids.len() * 80 + OUTPUT_CAP;
        match process::run(runtime, command, &stdin[..], None, cap).await {
            Ok(out) if out.success() => oids
                .iter()
                .zip(String::from_utf8_lossy(&out.stdout).lines())
                .filter(|(_, line)| !line.ends_with(" missing"))
                .map(|(oid, _)| *oid)
                .collect(),
            _ => Vec::new(),
        }
    }

    /// Moves packs (index last, so git never sees an index without its pack) and any loose
    /// objects into the live repo. `.keep` files are fetch's own locks and stay behind.
    async fn migrate(&self, runtime: &dyn Runtime, repo: &Path) -> std::io::Result<()> {
        let (from, objects) = (self.path.clone(), repo.join("objects"));
        unblock(runtime, move || migrate_objects(&from, &objects))
            .await
            .and_then(|r| r)
    }

    async fn remove(self, runtime: &dyn Runtime) {
        let path = self.path;
        let _ = unblock(runtime, move || std::fs::remove_dir_all(path)).await;
    }
}

fn migrate_objects(from: &Path, objects: &Path) -> std::io::Result<()> {
    let pack_dir = objects.join("pack");
    let mut packs: Vec<PathBuf> = std::fs::read_dir(from.join("pack"))?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| {
            let name = p.file_name().map(|n| n.to_string_lossy().into_owned());
            name.is_some_and(|n| n.starts_with("pack-") && !n.ends_with(".keep"))
        })
        .collect();
    packs.sort_by_key(|p| p.extension().is_some_and(|e| e == "idx"));
    for pack in packs {
        let target = pack_dir.join(pack.file_name().expect("listed files have names"));
        if !target.exists() {
            move_file(&pack, &target)?;
        }
    }
    for entry in std::fs::read_dir(from)?.filter_map(Result::ok) {
        let name = entry.file_name().to_string_lossy().into_owned();
        let is_fanout = name.len() == 2 && name.bytes().all(|b| b.is_ascii_hexdigit());
        if !is_fanout {
            continue;
        }
        let into = objects.join(&name);
        std::fs::create_dir_all(&into)?;
        for object in std::fs::read_dir(entry.path())?.filter_map(Result::ok) {
            let target = into.join(object.file_name());
            if !target.exists() {
                move_file(&object.path(), &target)?;
            }
        }
    }
    Ok(())
}

/// A rename, or a copy then a rename into place where the repository lives on another file
/// system than the data directory (a symlinked owner directory): the target never exists
/// half-written.
fn move_file(from: &Path, to: &Path) -> std::io::Result<()> {
    match std::fs::rename(from, to) {
        Err(e) if e.kind() == std::io::ErrorKind::CrossesDevices => {
            let partial = to.with_extension("graspd-partial");
            std::fs::copy(from, &partial)?;
            std::fs::rename(&partial, to)?;
            std::fs::remove_file(from)
        }
        other => other,
    }
}

/// Caps every file git (and its index-pack) writes at `max_bytes` with `RLIMIT_FSIZE`: the
/// kernel stops the pack at the cap (SIGXFSZ), however fast it arrives.
#[cfg(unix)]
fn limit_file_size(command: &mut Command, max_bytes: u64) {
    use std::os::unix::process::CommandExt;
    let limit = libc::rlim_t::try_from(max_bytes).unwrap_or(libc::RLIM_INFINITY);
    let rlimit = libc::rlimit {
        rlim_cur: limit,
        rlim_max: limit,
    };
    // SAFETY: runs in the forked child before exec; setrlimit is async-signal-safe and the
    // closure only reads a copied value.
    unsafe {
        command.pre_exec(move || {
            if libc::setrlimit(libc::RLIMIT_FSIZE, &rlimit) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

/// Not enforced off unix.
#[cfg(not(unix))]
fn limit_file_size(_command: &mut Command, _max_bytes: u64) {}

/// Whether the quarantine holds a temporary pack that reached the cap (its writer was killed
/// by the limit). The quarantine is removed whole afterwards.
async fn capped_pack_left(runtime: &dyn Runtime, quarantine: &Path, max_bytes: u64) -> bool {
    let pack_dir = quarantine.join("pack");
    unblock(runtime, move || {
        let Ok(entries) = std::fs::read_dir(&pack_dir) else {
            return false;
        };
        entries.filter_map(Result::ok).any(|entry| {
            let is_tmp = entry.file_name().to_string_lossy().starts_with("tmp_pack_");
            is_tmp && entry.metadata().is_ok_and(|m| m.len() >= max_bytes)
        })
    })
    .await
    .unwrap_or(false)
}

/// True if a git helper was killed by the file-size limit.
fn hit_file_size_limit(stderr: &str) -> bool {
    #[cfg(unix)]
    {
        stderr.contains(&format!("died of signal {}", libc::SIGXFSZ))
    }
    #[cfg(not(unix))]
    {
        let _ = stderr;
        false
    }
}

/// The parts of an http(s) URL a fetch needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpTarget {
    pub host: String,
    pub port: u16,
}

/// Accepts only `http://` and `https://` URLs with a host.
pub fn parse_http_url(url: &str) -> Result<HttpTarget, GitFetchError> {
    let bad = || GitFetchError::BadUrl(url.to_owned());
    let (rest, default_port) = if let Some(rest) = url.strip_prefix("https://") {
        (rest, 443)
    } else if let Some(rest) = url.strip_prefix("http://") {
        (rest, 80)
    } else {
        return Err(bad());
    };
    let authority = rest.split(['/', '?', '#']).next().unwrap_or_default();
    let host_port = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    let (host, port) = if let Some(bracketed) = host_port.strip_prefix('[') {
        let (host, after) = bracketed.split_once(']').ok_or_else(bad)?;
        let port = match after.strip_prefix(':') {
            Some(p) => p.parse().map_err(|_| bad())?,
            None if after.is_empty() => default_port,
            None => return Err(bad()),
        };
        (host, port)
    } else {
        match host_port.rsplit_once(':') {
            Some((host, port)) => (host, port.parse().map_err(|_| bad())?),
            None => (host_port, default_port),
        }
    };
    if host.is_empty() || host.contains(|c: char| c.is_whitespace() || c.is_control()) {
        return Err(bad());
    }
    Ok(HttpTarget {
        host: host.to_owned(),
        port,
    })
}

impl From<ResolveError> for GitFetchError {
    fn from(e: ResolveError) -> GitFetchError {
        match e {
            ResolveError::Dns(m) => GitFetchError::Dns(m),
            not_public => GitFetchError::PrivateAddress(not_public.to_string()),
        }
    }
}

/// Classifies git's stderr after a failed fetch.
pub fn classify(stderr: &str) -> GitFetchError {
    let not_served = not_our_refs(stderr);
    if !not_served.is_empty() {
        return GitFetchError::NotOurRef(not_served);
    }
    let tail = {
        let lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
        lines[lines.len().saturating_sub(3)..].join("; ")
    };
    let lower = stderr.to_ascii_lowercase();
    if lower.contains("could not resolve host") || lower.contains("could not resolve hostname") {
        GitFetchError::Dns(tail)
    } else if lower.contains("connection refused")
        || lower.contains("failed to connect")
        || lower.contains("couldn't connect")
        || lower.contains("network is unreachable")
    {
        GitFetchError::Refused(tail)
    } else if lower.contains("timed out") {
        GitFetchError::Timeout
    } else if lower.contains("ssl") || lower.contains("tls") || lower.contains("certificate") {
        GitFetchError::Tls(tail)
    } else if let Some(code) = http_status(stderr) {
        GitFetchError::HttpStatus(code)
    } else {
        GitFetchError::Other(tail)
    }
}

/// Object ids named by "not our ref <oid>" or "unadvertised object <oid>".
fn not_our_refs(stderr: &str) -> Vec<Oid> {
    let mut out = Vec::new();
    for marker in ["not our ref ", "unadvertised object "] {
        for (at, _) in stderr.match_indices(marker) {
            let rest = &stderr[at + marker.len()..];
            if let Some(oid) = rest.get(..40).and_then(|hex| Oid::from_hex(hex).ok()) {
                if !out.contains(&oid) {
                    out.push(oid);
                }
            }
        }
    }
    out
}

fn http_status(stderr: &str) -> Option<u16> {
    let marker = "returned error: ";
    let at = stderr.find(marker)? + marker.len();
    stderr[at..].get(..3)?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classifies_git_stderr() {
        let oid = "0123456789abcdef0123456789abcdef01234567";
        assert_eq!(
            classify(&format!(
                "fatal: remote error: upload-pack: not our ref {oid}\n"
            )),
            GitFetchError::NotOurRef(vec![Oid::from_hex(oid).unwrap()])
        );
        assert!(matches!(
            classify("fatal: unable to access 'https://x/': Could not resolve host: x\n"),
            GitFetchError::Dns(_)
        ));
        assert!(matches!(
            classify("fatal: unable to access 'http://127.0.0.1:1/': Failed to connect to 127.0.0.1 port 1 after 0 ms: Couldn't connect to server\n"),
            GitFetchError::Refused(_)
        ));
        assert!(matches!(classify("fatal: unable to access 'https://x/': SSL certificate problem: self-signed certificate\n"), GitFetchError::Tls(_)));
        assert_eq!(
            classify("fatal: unable to access 'http://x/a.git/': The requested URL returned error: 404\n"),
            GitFetchError::HttpStatus(404)
        );
        assert!(matches!(
            classify("fatal: weird\n"),
            GitFetchError::Other(_)
        ));
    }

    #[test]
    fn urls_and_addresses() {
        assert_eq!(
            parse_http_url("https://git.example/a/b.git").unwrap(),
            HttpTarget {
                host: "git.example".into(),
                port: 443
            }
        );
        assert_eq!(
            parse_http_url("http://u@[::1]:8080/x").unwrap(),
            HttpTarget {
                host: "::1".into(),
                port: 8080
            }
        );
        assert!(parse_http_url("file:///etc").is_err());
        assert!(parse_http_url("/srv/repo.git").is_err());
        assert!(parse_http_url("ssh://host/x").is_err());
    }
}
