//! Clone-URL planning: which remote URLs a repository's missing objects may be fetched from.
//!
//! URLs are normalised (lowercase scheme and host, default port made explicit, no trailing
//! slash) so duplicates collapse and our own origin is recognised by exact host and port, never
//! by substring. Only http and https are fetched. Literal non-public addresses
//! (`net::is_public`) and `localhost` names are refused unless `allow_private_remotes`; a DNS
//! name that *resolves* to such an address is refused by the host at connect time, with the
//! same check.

use core::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::collections::BTreeSet;
use std::fmt;

use crate::config::Config;
use crate::net;

/// A normalised http(s) remote.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Debug)]
pub struct RemoteUrl {
    pub https: bool,
    /// Lowercase, no trailing dot; IPv6 literals keep their brackets.
    pub host: String,
    pub port: u16,
    /// Starts with `/` or is empty; no trailing slash.
    pub path: String,
}

/// Why a clone URL is not fetched from.
#[derive(Clone, PartialEq, Eq, Debug)]
pub enum UrlRefusal {
    NotHttp,
    Malformed,
    Credentials,
    PrivateAddress,
    OwnOrigin,
}

impl fmt::Display for UrlRefusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            UrlRefusal::NotHttp => "only http and https clone URLs are fetched",
            UrlRefusal::Malformed => "malformed clone URL",
            UrlRefusal::Credentials => "clone URL carries credentials",
            UrlRefusal::PrivateAddress => {
                "clone URL targets a loopback, private or link-local address"
            }
            UrlRefusal::OwnOrigin => "clone URL is this server",
        })
    }
}

/// Whether the relay at `relay` (a `ws`/`wss` URL) and the clone URL `clone` (`http`/`https`)
/// are the same server: the same scheme security, host and port.
pub fn same_server(relay: &str, clone: &str) -> bool {
    let relay = relay.trim();
    let Some((scheme, rest)) = relay.split_once("://") else {
        return false;
    };
    let as_http = match scheme.to_ascii_lowercase().as_str() {
        "wss" => format!("https://{rest}"),
        "ws" => format!("http://{rest}"),
        _ => return false,
    };
    match (RemoteUrl::parse(&as_http), RemoteUrl::parse(clone)) {
        (Ok(r), Ok(c)) => r.https == c.https && r.host == c.host && r.port == c.port,
        _ => false,
    }
}

impl RemoteUrl {
    /// Parses and normalises; no policy beyond "http(s), well formed, no credentials".
    pub fn parse(raw: &str) -> Result<RemoteUrl, UrlRefusal> {
        let raw = raw.trim();
        let (scheme, rest) = raw.split_once("://").ok_or(UrlRefusal::Malformed)?;
        let https = match scheme.to_ascii_lowercase().as_str() {
            "https" => true,
            "http" => false,
            _ => return Err(UrlRefusal::NotHttp),
        };
        let rest = rest.split('#').next().unwrap_or("");
        let (authority, path) = match rest.find(['/', '?']) {
            Some(i) => rest.split_at(i),
            None => (rest, ""),
        };
        if authority.contains('@') {
            return Err(UrlRefusal::Credentials);
        }
        let (host, port) = split_host_port(authority)?;
        let port = match port {
            Some(p) => p,
            None if https => 443,
            None => 80,
        };
        let host = normalise_host(host)?;
        let path = path.trim_end_matches('/').to_owned();
        Ok(RemoteUrl {
            https,
            host,
            port,
            path,
        })
    }

    /// The throttling unit: the host, with the port when it is not the scheme's default.
    pub fn domain(&self) -> String {
        if self.port == self.default_port() {
            self.host.clone()
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }

    fn default_port(&self) -> u16 {
        if self.https {
            443
        } else {
            80
        }
    }

    /// Whether the host is a literal non-public address or a `localhost` name.
    pub fn is_private(&self) -> bool {
        let h = self.host.as_str();
        if net::is_loopback_name(h) {
            return true;
        }
        if let Some(v6) = h.strip_prefix('[').and_then(|s| s.strip_suffix(']')) {
            return v6
                .parse::<Ipv6Addr>()
                .map_or(true, |ip| !net::is_public(IpAddr::V6(ip)));
        }
        h.parse::<Ipv4Addr>()
            .is_ok_and(|ip| !net::is_public(IpAddr::V4(ip)))
    }
}

impl fmt::Display for RemoteUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let scheme = if self.https { "https" } else { "http" };
        if self.port == self.default_port() {
            write!(f, "{scheme}://{}{}", self.host, self.path)
        } else {
            write!(f, "{scheme}://{}:{}{}", self.host, self.port, self.path)
        }
    }
}

fn split_host_port(authority: &str) -> Result<(&str, Option<u16>), UrlRefusal> {
    let (host, port) = if authority.starts_with('[') {
        let end = authority.find(']').ok_or(UrlRefusal::Malformed)?;
        let (host, after) = authority.split_at(end + 1);
        match after {
            "" => (host, None),
            _ => (
                host,
                Some(after.strip_prefix(':').ok_or(UrlRefusal::Malformed)?),
            ),
        }
    } else {
        match authority.rsplit_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (authority, None),
        }
    };
    let port = match port {
        None | Some("") => None,
        Some(p) if p.bytes().all(|b| b.is_ascii_digit()) => {
            Some(p.parse::<u16>().map_err(|_| UrlRefusal::Malformed)?)
        }
        Some(_) => return Err(UrlRefusal::Malformed),
    };
    if port == Some(0) {
        return Err(UrlRefusal::Malformed);
    }
    Ok((host, port))
}

fn normalise_host(host: &str) -> Result<String, UrlRefusal> {
    if let Some(v6) = host.strip_prefix('[').and_then(|s| s.strip_suffix(']')) {
        let addr: Ipv6Addr = v6.parse().map_err(|_| UrlRefusal::Malformed)?;
        return Ok(format!("[{addr}]"));
    }
    let host = host.to_ascii_lowercase();
    let host = host.strip_suffix('.').unwrap_or(&host);
    let labels_ok = !host.is_empty()
        && host.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
        });
    if !labels_ok || host.len() > 253 {
        return Err(UrlRefusal::Malformed);
    }
    // A last label starting with a digit is an address, not a name: only a strict dotted quad
    // is allowed, so `2130706433` or `0x7f.1` cannot smuggle loopback past the check.
    let last = host.rsplit('.').next().unwrap_or("");
    if last.starts_with(|c: char| c.is_ascii_digit()) && host.parse::<Ipv4Addr>().is_err() {
        return Err(UrlRefusal::Malformed);
    }
    Ok(host.to_owned())
}

/// Which clone URLs may be fetched from, per the configuration.
#[derive(Clone, Debug)]
pub struct UrlPolicy {
    own: Option<(String, u16)>,
    allow_private: bool,
}

impl UrlPolicy {
    pub fn new(config: &Config) -> UrlPolicy {
        let own = config
            .own_origin
            .as_deref()
            .and_then(|o| RemoteUrl::parse(o).ok())
            .map(|u| (u.host, u.port));
        UrlPolicy {
            own,
            allow_private: config.allow_private_remotes,
        }
    }

    /// Parses `raw` and applies the policy.
    pub fn check(&self, raw: &str) -> Result<RemoteUrl, UrlRefusal> {
        let url = RemoteUrl::parse(raw)?;
        if let Some((host, port)) = &self.own {
            if url.host == *host && url.port == *port {
                return Err(UrlRefusal::OwnOrigin);
            }
        }
        if !self.allow_private && url.is_private() {
            return Err(UrlRefusal::PrivateAddress);
        }
        Ok(url)
    }

    /// The fetchable URLs among `candidates`, normalised, de-duplicated, first `max` in order.
    pub fn plan<'a>(
        &self,
        candidates: impl IntoIterator<Item = &'a str>,
        max: usize,
    ) -> Vec<RemoteUrl> {
        let mut seen = BTreeSet::new();
        let mut out = Vec::new();
        for raw in candidates {
            if out.len() >= max {
                break;
            }
            if let Ok(url) = self.check(raw) {
                if seen.insert(url.clone()) {
                    out.push(url);
                }
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(own: &str, allow_private: bool) -> UrlPolicy {
        UrlPolicy::new(&Config {
            own_origin: Some(own.into()),
            allow_private_remotes: allow_private,
            ..Config::default()
        })
    }

    #[test]
    fn normalises_scheme_host_port_and_trailing_slash() {
        let u = RemoteUrl::parse("HTTPS://Git.Example.COM.:443/npub1x/repo.git/").unwrap();
        assert_eq!(u.to_string(), "https://git.example.com/npub1x/repo.git");
        assert_eq!(u.domain(), "git.example.com");
        let u = RemoteUrl::parse("http://example.com:8080").unwrap();
        assert_eq!(u.to_string(), "http://example.com:8080");
        assert_eq!(u.domain(), "example.com:8080");
        let u = RemoteUrl::parse("http://[::1]:9000/a").unwrap();
        assert_eq!(u.domain(), "[::1]:9000");
    }

    #[test]
    fn only_http_and_https() {
        for bad in [
            "git://example.com/r.git",
            "ssh://example.com/r",
            "file:///tmp/r",
            "example.com/r",
        ] {
            assert!(RemoteUrl::parse(bad).is_err(), "{bad}");
        }
        assert_eq!(
            RemoteUrl::parse("https://u:p@example.com/r"),
            Err(UrlRefusal::Credentials)
        );
    }

    #[test]
    fn own_origin_by_exact_host_and_port_never_substring() {
        let p = policy("https://relay.example.com", false);
        assert_eq!(
            p.check("https://RELAY.example.com/x/y.git"),
            Err(UrlRefusal::OwnOrigin)
        );
        assert_eq!(
            p.check("https://relay.example.com:443/x"),
            Err(UrlRefusal::OwnOrigin)
        );
        // Same host, other port: another server.
        assert!(p.check("https://relay.example.com:8443/x").is_ok());
        // Substrings of / superstrings containing our host are other servers.
        assert!(p.check("https://relay.example.com.evil.net/x").is_ok());
        assert!(p.check("https://notrelay.example.com/x").is_ok());
        assert!(p.check("https://example.com/relay.example.com/x").is_ok());
        // Plain http on 80 is another origin than https on 443.
        assert!(p.check("http://relay.example.com/x").is_ok());
    }

    #[test]
    fn private_targets_refused_unless_allowed() {
        let strict = policy("https://me.example", false);
        for bad in [
            "http://127.0.0.1/r",
            "http://127.8.9.1:8080/r",
            "http://localhost/r",
            "http://a.localhost/r",
            "http://10.1.2.3/r",
            "http://172.16.0.1/r",
            "http://192.168.1.1/r",
            "http://169.254.169.254/latest",
            "http://0.0.0.0/r",
            "http://100.64.0.1/r",
            "http://[::1]/r",
            "http://[fe80::1]/r",
            "http://[fd00::1]/r",
            "http://[::ffff:127.0.0.1]/r",
            "http://[::]/r",
            "http://224.0.0.1/r",
            "http://240.0.0.1/r",
            "http://255.255.255.255/r",
            "http://198.18.0.1/r",
            "http://[64:ff9b::a00:1]/r",
            "http://[64:ff9b::7f00:1]/r",
            "http://[2002:7f00:1::1]/r",
            "http://[ff02::1]/r",
        ] {
            assert_eq!(strict.check(bad), Err(UrlRefusal::PrivateAddress), "{bad}");
        }
        for sneaky in ["http://2130706433/r", "http://0x7f.1/r", "http://127.1/r"] {
            assert_eq!(strict.check(sneaky), Err(UrlRefusal::Malformed), "{sneaky}");
        }
        assert!(strict.check("http://93.184.216.34/r").is_ok());
        assert!(strict.check("http://[2606:2800:220:1::1]/r").is_ok());
        let lax = policy("https://me.example", true);
        assert!(lax.check("http://127.0.0.1:3000/r").is_ok());
        assert!(lax.check("http://localhost:3000/r").is_ok());
    }

    #[test]
    fn plan_dedupes_after_normalising_and_bounds() {
        let p = policy("https://me.example", false);
        let urls = p.plan(
            [
                "https://a.example/r/",
                "HTTPS://A.EXAMPLE:443/r",
                "ftp://x/r",
                "https://me.example/r",
                "https://b.example/r",
                "https://c.example/r",
            ],
            2,
        );
        let shown: Vec<String> = urls.iter().map(ToString::to_string).collect();
        assert_eq!(shown, ["https://a.example/r", "https://b.example/r"]);
    }
}
