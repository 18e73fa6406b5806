//! Fetching specific objects from another git server:
//! `git -c protocol.version=2 fetch --no-tags --no-write-fetch-head <url> <oid>...`,
//! killed at its deadline, its pack size capped, its failure classified from stderr.
//!
//! A fetch only adds objects (no refs), so it needs no repo lock; run it into a staging repo
//! and copy into the live one with [`super::repo::apply`] to keep unreleased data unserved.

use std::fmt;
use std::net::{IpAddr, SocketAddr, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::pin::pin;
use std::time::{Duration, Instant};

use futures_util::future::{self, Either};
use graspd_core::Oid;

use super::process::{self, git};
use super::repo;
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
pub enum FetchError {
    /// Not an `http(s)://` URL.
    BadUrl(String),
    /// The host resolves to a loopback/private/link-local address and those are not allowed.
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

impl fmt::Display for FetchError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FetchError::BadUrl(url) => write!(f, "not an http(s) URL: {url}"),
            FetchError::PrivateAddress(what) => write!(f, "refusing a private address: {what}"),
            FetchError::Dns(m) => write!(f, "name resolution failed: {m}"),
            FetchError::Refused(m) => write!(f, "connection failed: {m}"),
            FetchError::Tls(m) => write!(f, "TLS failed: {m}"),
            FetchError::Timeout => f.write_str("fetch timed out"),
            FetchError::TooLarge { max_bytes } => write!(f, "pack larger than {max_bytes} bytes"),
            FetchError::NotOurRef(oids) => {
                write!(f, "remote will not serve {} object(s)", oids.len())
            }
            FetchError::HttpStatus(code) => write!(f, "remote answered HTTP {code}"),
            FetchError::Other(m) => write!(f, "fetch failed: {m}"),
        }
    }
}

impl std::error::Error for FetchError {}

/// How often the pack size is checked against the cap.
const SIZE_CHECK_INTERVAL: Duration = Duration::from_millis(200);

/// Most stderr/stdout kept from a fetch.
const OUTPUT_CAP: usize = 64 * 1024;

/// Fetches `oids` from `url` into the repo at `into`; returns which of `oids` are present
/// afterwards.
pub async fn fetch(
    runtime: &dyn Runtime,
    into: &Path,
    url: &str,
    oids: &[Oid],
    limits: &FetchLimits,
) -> Result<Vec<Oid>, FetchError> {
    let target = parse_http_url(url)?;
    let mut command = git(Some(into));
    command.args([
        "-c",
        "protocol.version=2",
        "-c",
        "http.followRedirects=false",
    ]);
    if !limits.allow_private {
        // Resolve once, check, and pin curl to that address so a second lookup cannot
        // rebind the name to a private address.
        let resolved = resolve_public(runtime, &target).await?;
        let address = match resolved.ip() {
            IpAddr::V6(v6) => format!("[{v6}]"),
            IpAddr::V4(v4) => v4.to_string(),
        };
        command.arg("-c").arg(format!(
            "http.curloptResolve={}:{}:{address}",
            target.host, target.port
        ));
    }
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
    let run = pin!(process::run(
        runtime,
        command,
        &b""[..],
        Some(limits.deadline),
        OUTPUT_CAP
    ));
    let watch = pin!(watch_pack_size(runtime, into, limits.max_bytes));
    let out = match future::select(run, watch).await {
        Either::Left((out, _)) => out.map_err(|e| FetchError::Other(e.to_string()))?,
        // Dropping the run future kills git (children are killed on drop).
        Either::Right(((), _)) => {
            return Err(FetchError::TooLarge {
                max_bytes: limits.max_bytes,
            })
        }
    };
    if out.timed_out() {
        return Err(FetchError::Timeout);
    }
    if !out.success() {
        return Err(classify(&String::from_utf8_lossy(&out.stderr)));
    }
    let inspection = repo::inspect(runtime, into, oids)
        .await
        .map_err(|e| FetchError::Other(e.to_string()))?;
    Ok(inspection.present)
}

/// Completes once the temporary packs git is writing under `objects/pack/` exceed `max_bytes`.
async fn watch_pack_size(runtime: &dyn Runtime, repo: &Path, max_bytes: u64) {
    let pack_dir = repo.join("objects").join("pack");
    loop {
        runtime
            .sleep_until(Instant::now() + SIZE_CHECK_INTERVAL)
            .await;
        let dir = pack_dir.clone();
        let size = unblock(runtime, move || temporary_pack_bytes(&dir))
            .await
            .unwrap_or(0);
        if size > max_bytes {
            return;
        }
    }
}

fn temporary_pack_bytes(dir: &PathBuf) -> u64 {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    entries
        .filter_map(Result::ok)
        .filter(|e| e.file_name().to_string_lossy().starts_with("tmp_pack_"))
        .filter_map(|e| e.metadata().ok())
        .map(|m| m.len())
        .sum()
}

/// The parts of an http(s) URL a fetch needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpTarget {
    pub host: String,
    pub port: u16,
}

/// Accepts only `http://` and `https://` URLs with a host.
pub fn parse_http_url(url: &str) -> Result<HttpTarget, FetchError> {
    let bad = || FetchError::BadUrl(url.to_owned());
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

async fn resolve_public(
    runtime: &dyn Runtime,
    target: &HttpTarget,
) -> Result<SocketAddr, FetchError> {
    let (host, port) = (target.host.clone(), target.port);
    let addrs = unblock(runtime, move || {
        (host.as_str(), port).to_socket_addrs().map(Vec::from_iter)
    })
    .await
    .map_err(|e| FetchError::Other(e.to_string()))?
    .map_err(|e| FetchError::Dns(format!("{}: {e}", target.host)))?;
    if let Some(private) = addrs.iter().find(|a| !is_public(a.ip())) {
        return Err(FetchError::PrivateAddress(format!(
            "{} is {}",
            target.host,
            private.ip()
        )));
    }
    addrs
        .into_iter()
        .next()
        .ok_or_else(|| FetchError::Dns(format!("{}: no addresses", target.host)))
}

/// False for loopback, private, link-local, shared (CGNAT), multicast, documentation and
/// unspecified addresses.
pub fn is_public(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => {
            let [a, b, ..] = v4.octets();
            !(v4.is_loopback()
                || v4.is_private()
                || v4.is_link_local()
                || v4.is_unspecified()
                || v4.is_broadcast()
                || v4.is_multicast()
                || v4.is_documentation()
                || a == 0
                || (a == 100 && (64..128).contains(&b))
                || (a == 198 && (b == 18 || b == 19)))
        }
        IpAddr::V6(v6) => {
            if let Some(v4) = v6.to_ipv4_mapped() {
                return is_public(IpAddr::V4(v4));
            }
            let first = v6.segments()[0];
            !(v6.is_loopback()
                || v6.is_unspecified()
                || v6.is_multicast()
                || (first & 0xfe00) == 0xfc00
                || (first & 0xffc0) == 0xfe80)
        }
    }
}

/// Classifies git's stderr after a failed fetch.
pub fn classify(stderr: &str) -> FetchError {
    let not_served = not_our_refs(stderr);
    if !not_served.is_empty() {
        return FetchError::NotOurRef(not_served);
    }
    let tail = {
        let lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
        lines[lines.len().saturating_sub(3)..].join("; ")
    };
    let lower = stderr.to_ascii_lowercase();
    if lower.contains("could not resolve host") || lower.contains("could not resolve hostname") {
        FetchError::Dns(tail)
    } else if lower.contains("connection refused")
        || lower.contains("failed to connect")
        || lower.contains("couldn't connect")
        || lower.contains("network is unreachable")
    {
        FetchError::Refused(tail)
    } else if lower.contains("timed out") {
        FetchError::Timeout
    } else if lower.contains("ssl") || lower.contains("tls") || lower.contains("certificate") {
        FetchError::Tls(tail)
    } else if let Some(code) = http_status(stderr) {
        FetchError::HttpStatus(code)
    } else {
        FetchError::Other(tail)
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
            FetchError::NotOurRef(vec![Oid::from_hex(oid).unwrap()])
        );
        assert!(matches!(
            classify("fatal: unable to access 'https://x/': Could not resolve host: x\n"),
            FetchError::Dns(_)
        ));
        assert!(matches!(
            classify("fatal: unable to access 'http://127.0.0.1:1/': Failed to connect to 127.0.0.1 port 1 after 0 ms: Couldn't connect to server\n"),
            FetchError::Refused(_)
        ));
        assert!(matches!(classify("fatal: unable to access 'https://x/': SSL certificate problem: self-signed certificate\n"), FetchError::Tls(_)));
        assert_eq!(
            classify("fatal: unable to access 'http://x/a.git/': The requested URL returned error: 404\n"),
            FetchError::HttpStatus(404)
        );
        assert!(matches!(classify("fatal: weird\n"), FetchError::Other(_)));
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
        for private in [
            "127.0.0.1",
            "10.1.2.3",
            "192.168.0.1",
            "169.254.1.1",
            "100.64.0.1",
            "::1",
            "fd00::1",
            "fe80::1",
            "::ffff:127.0.0.1",
            "0.0.0.0",
        ] {
            assert!(!is_public(private.parse().unwrap()), "{private}");
        }
        for public in ["1.1.1.1", "2606:4700::1111"] {
            assert!(is_public(public.parse().unwrap()), "{public}");
        }
    }
}
