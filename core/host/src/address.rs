//! Who a client is, for per-address limits: the TCP peer, or the address a trusted reverse
//! proxy says it forwarded for (`Forwarded: for=`, else `X-Forwarded-For`). Headers from any
//! other peer are ignored, since anyone can send them.

use std::fmt;
use std::net::{IpAddr, Ipv6Addr};
use std::str::FromStr;

use hyper::header::HeaderMap;

/// An address or a CIDR block (`10.0.0.0/8`, `fd00::/8`, `127.0.0.1`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AddressBlock {
    network: IpAddr,
    prefix: u8,
}

impl FromStr for AddressBlock {
    type Err = String;

    fn from_str(text: &str) -> Result<AddressBlock, String> {
        let (address, prefix) = match text.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (text, None),
        };
        let network: IpAddr = address
            .trim()
            .parse()
            .map_err(|_| format!("{text:?} is not an IP address or CIDR block"))?;
        let bits = if network.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            None => bits,
            Some(p) => p
                .trim()
                .parse::<u8>()
                .ok()
                .filter(|p| *p <= bits)
                .ok_or_else(|| format!("{text:?}: the prefix length must be 0 to {bits}"))?,
        };
        Ok(AddressBlock { network, prefix })
    }
}

impl fmt::Display for AddressBlock {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.network, self.prefix)
    }
}

impl AddressBlock {
    pub fn contains(&self, address: IpAddr) -> bool {
        match (self.network, canonical(address)) {
            (IpAddr::V4(net), IpAddr::V4(a)) => {
                prefix_bits(u32::from(net).into(), 32, self.prefix)
                    == prefix_bits(u32::from(a).into(), 32, self.prefix)
            }
            (IpAddr::V6(net), IpAddr::V6(a)) => {
                prefix_bits(u128::from(net), 128, self.prefix)
                    == prefix_bits(u128::from(a), 128, self.prefix)
            }
            _ => false,
        }
    }
}

fn prefix_bits(value: u128, width: u32, prefix: u8) -> u128 {
    let prefix = u32::from(prefix).min(width);
    if prefix == 0 {
        0
    } else {
        value >> (width - prefix)
    }
}

/// IPv4-mapped IPv6 addresses (`::ffff:a.b.c.d`, from dual-stack listeners) as IPv4.
fn canonical(address: IpAddr) -> IpAddr {
    match address {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4),
        v4 => v4,
    }
}

/// The reverse proxies whose forwarding headers are believed (`--trusted-proxy`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TrustedProxies(Vec<AddressBlock>);

impl TrustedProxies {
    pub fn new(blocks: Vec<AddressBlock>) -> TrustedProxies {
        TrustedProxies(blocks)
    }

    fn trusts(&self, address: IpAddr) -> bool {
        self.0.iter().any(|block| block.contains(address))
    }

    /// The client's address: `peer` itself unless `peer` is a trusted proxy, in which case the
    /// nearest address in the forwarding chain that is not a trusted proxy (the chain is read
    /// from the right, the hop closest to us, so a client cannot pick its own address by
    /// prepending entries). Unparseable or obfuscated entries end the walk at the last hop
    /// that was trusted.
    pub fn client_address(&self, headers: &HeaderMap, peer: IpAddr) -> IpAddr {
        let peer = canonical(peer);
        if !self.trusts(peer) {
            return peer;
        }
        let mut client = peer;
        for hop in forwarded_chain(headers).into_iter().rev() {
            let Some(hop) = hop else { break };
            client = canonical(hop);
            if !self.trusts(client) {
                break;
            }
        }
        client
    }
}

/// The `for=` addresses of the `Forwarded` headers in order, or else those of
/// `X-Forwarded-For`; `None` for an entry that is not an address (`unknown`, `_hidden`).
fn forwarded_chain(headers: &HeaderMap) -> Vec<Option<IpAddr>> {
    let values = |name: &str| -> Vec<String> {
        headers
            .get_all(name)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .map(|v| v.trim().to_owned())
            .collect()
    };
    let forwarded = values("forwarded");
    if !forwarded.is_empty() {
        return forwarded
            .iter()
            .map(|element| {
                element
                    .split(';')
                    .filter_map(|pair| pair.split_once('='))
                    .find(|(key, _)| key.trim().eq_ignore_ascii_case("for"))
                    .and_then(|(_, value)| parse_node(value.trim().trim_matches('"')))
            })
            .collect();
    }
    values("x-forwarded-for")
        .iter()
        .map(|v| parse_node(v))
        .collect()
}

/// `1.2.3.4`, `1.2.3.4:80`, `[::1]`, `[::1]:80`, `::1`.
fn parse_node(node: &str) -> Option<IpAddr> {
    if let Ok(address) = node.parse() {
        return Some(address);
    }
    if let Some(rest) = node.strip_prefix('[') {
        return rest
            .split(']')
            .next()?
            .parse::<Ipv6Addr>()
            .ok()
            .map(IpAddr::V6);
    }
    node.rsplit_once(':')?.0.parse().ok()
}

/// What per-address limits count by: an IPv4 address, or an IPv6 /64 (one subscriber's
/// usual allocation, so a client cannot multiply its allowance by rotating addresses).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct AddressKey(u128);

impl AddressKey {
    pub fn of(address: IpAddr) -> AddressKey {
        match canonical(address) {
            IpAddr::V4(v4) => AddressKey(u128::from(u32::from(v4))),
            IpAddr::V6(v6) => AddressKey((u128::from(v6) >> 64) << 64 | 1 << 63),
        }
    }

    /// The same key, as the engine's per-address waiting limit counts by.
    pub fn client(self) -> graspd_core::ClientAddress {
        graspd_core::ClientAddress(self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hyper::header::HeaderValue;

    fn proxies(blocks: &[&str]) -> TrustedProxies {
        TrustedProxies::new(blocks.iter().map(|b| b.parse().unwrap()).collect())
    }

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.append(*name, HeaderValue::from_static(value));
        }
        map
    }

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    #[test]
    fn blocks_parse_and_match() {
        let block: AddressBlock = "10.1.0.0/16".parse().unwrap();
        assert!(block.contains(ip("10.1.200.3")));
        assert!(block.contains(ip("::ffff:10.1.0.9")));
        assert!(!block.contains(ip("10.2.0.1")));
        assert!("fd00::/8"
            .parse::<AddressBlock>()
            .unwrap()
            .contains(ip("fd12::1")));
        assert!("0.0.0.0/0"
            .parse::<AddressBlock>()
            .unwrap()
            .contains(ip("8.8.8.8")));
        assert!("10.0.0.0/33".parse::<AddressBlock>().is_err());
        assert!("example.com".parse::<AddressBlock>().is_err());
    }

    #[test]
    fn forwarding_headers_count_only_from_a_trusted_proxy() {
        let forwarded = headers(&[("x-forwarded-for", "203.0.113.9")]);
        let none = TrustedProxies::default();
        assert_eq!(
            none.client_address(&forwarded, ip("127.0.0.1")),
            ip("127.0.0.1")
        );
        let local = proxies(&["127.0.0.1"]);
        assert_eq!(
            local.client_address(&forwarded, ip("127.0.0.1")),
            ip("203.0.113.9")
        );
        assert_eq!(
            local.client_address(&forwarded, ip("198.51.100.1")),
            ip("198.51.100.1")
        );
        assert_eq!(
            local.client_address(&headers(&[]), ip("127.0.0.1")),
            ip("127.0.0.1")
        );
    }

    #[test]
    fn the_chain_is_read_from_the_nearest_hop() {
        let trusted = proxies(&["127.0.0.1", "10.0.0.0/8"]);
        // The client wrote the first entry itself; the proxies appended the rest.
        let chain = headers(&[("x-forwarded-for", "1.1.1.1, 203.0.113.9, 10.0.0.5")]);
        assert_eq!(
            trusted.client_address(&chain, ip("127.0.0.1")),
            ip("203.0.113.9")
        );
        let forwarded = headers(&[(
            "forwarded",
            "for=1.1.1.1, for=\"[2001:db8::1]:4711\";proto=https, for=10.0.0.5",
        )]);
        assert_eq!(
            trusted.client_address(&forwarded, ip("127.0.0.1")),
            ip("2001:db8::1")
        );
        let hidden = headers(&[("forwarded", "for=_hidden, for=10.0.0.5")]);
        assert_eq!(
            trusted.client_address(&hidden, ip("127.0.0.1")),
            ip("10.0.0.5")
        );
    }

    #[test]
    fn ipv6_counts_by_slash_64() {
        assert_eq!(
            AddressKey::of(ip("2001:db8:1:2::1")),
            AddressKey::of(ip("2001:db8:1:2:ffff::9"))
        );
        assert_ne!(
            AddressKey::of(ip("2001:db8:1:2::1")),
            AddressKey::of(ip("2001:db8:1:3::1"))
        );
        assert_eq!(
            AddressKey::of(ip("::ffff:1.2.3.4")),
            AddressKey::of(ip("1.2.3.4"))
        );
        assert_ne!(
            AddressKey::of(ip("::1.2.3.4")),
            AddressKey::of(ip("1.2.3.4"))
        );
    }
}
