//! Connect-time address checks, shared by git fetches and the relay follower: a host is
//! resolved once, every address it resolves to must be public (`graspd_core::net::is_public`)
//! unless the operator allowed private addresses, and the caller connects only to the addresses
//! returned here, so a second lookup cannot rebind the name to a private one.

use std::fmt;
use std::net::{IpAddr, SocketAddr, ToSocketAddrs};

use graspd_core::net;

use crate::runtime::{unblock, Runtime};

/// Why a host cannot be connected to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ResolveError {
    /// The name does not resolve, or to no address.
    Dns(String),
    /// The host is, or resolves to, an address in a special-purpose range.
    NotPublic {
        host: String,
        address: IpAddr,
        range: &'static str,
    },
}

impl fmt::Display for ResolveError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ResolveError::Dns(m) => write!(f, "name resolution failed: {m}"),
            ResolveError::NotPublic {
                host,
                address,
                range,
            } if host.trim_matches(['[', ']']) == address.to_string() => {
                write!(f, "{address} is not a public address: {range}")
            }
            ResolveError::NotPublic {
                host,
                address,
                range,
            } => write!(
                f,
                "{host} resolves to {address}, not a public address: {range}"
            ),
        }
    }
}

impl std::error::Error for ResolveError {}

/// The addresses to connect to for `host` (a name, or an IPv4/IPv6 literal, brackets allowed)
/// and `port`: all of them public unless `allow_private`. A name that resolves to any
/// non-public address is refused as a whole.
pub async fn resolve_checked(
    runtime: &dyn Runtime,
    host: &str,
    port: u16,
    allow_private: bool,
) -> Result<Vec<SocketAddr>, ResolveError> {
    let literal = host.trim_start_matches('[').trim_end_matches(']');
    let addrs: Vec<SocketAddr> = match literal.parse::<IpAddr>() {
        Ok(ip) => vec![SocketAddr::new(ip, port)],
        Err(_) => {
            let name = host.to_owned();
            unblock(runtime, move || {
                (name.as_str(), port).to_socket_addrs().map(Vec::from_iter)
            })
            .await
            .map_err(|e| ResolveError::Dns(format!("{host}: {e}")))?
            .map_err(|e| ResolveError::Dns(format!("{host}: {e}")))?
        }
    };
    if !allow_private {
        for addr in &addrs {
            if let Some(range) = net::special_purpose(addr.ip()) {
                return Err(ResolveError::NotPublic {
                    host: host.to_owned(),
                    address: addr.ip(),
                    range,
                });
            }
        }
    }
    if addrs.is_empty() {
        return Err(ResolveError::Dns(format!("{host}: no addresses")));
    }
    Ok(addrs)
}
