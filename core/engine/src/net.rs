//! Which IP addresses a fetch or relay connection may reach without the operator's say-so: the
//! one address check behind clone URLs (`urls.rs`), relay URLs (`follow/relay_url.rs`) and the
//! host's connect-time checks of what a name resolves to (git fetches, the relay follower).
//!
//! An address is public unless it falls in one of the IANA special-purpose ranges (IPv4
//! RFC 6890 registry, IPv6 registry) that are not globally reachable unicast. IPv6 is public
//! only inside 2000::/3 (global unicast, the only space allocated); addresses that embed an
//! IPv4 address (IPv4-mapped, NAT64 64:ff9b::/96, 6to4, Teredo) are judged by what they embed.

// `core::net`: plain address types, no sockets (the purity check forbids `std::net`).
use core::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// Whether `ip` is a globally reachable unicast address.
pub fn is_public(ip: IpAddr) -> bool {
    special_purpose(ip).is_none()
}

/// The special-purpose range `ip` falls in, named for log lines and refusals (`None`: public).
pub fn special_purpose(ip: IpAddr) -> Option<&'static str> {
    match ip {
        IpAddr::V4(v4) => special_v4(v4),
        IpAddr::V6(v6) => special_v6(v6),
    }
}

/// A host name that always means this machine (RFC 6761 `localhost` and its subdomains).
pub fn is_loopback_name(host: &str) -> bool {
    let host = host.strip_suffix('.').unwrap_or(host).to_ascii_lowercase();
    host == "localhost" || host.ends_with(".localhost") || host == "localhost.localdomain"
}

fn special_v4(ip: Ipv4Addr) -> Option<&'static str> {
    let [a, b, c, _] = ip.octets();
    Some(match (a, b, c) {
        (0, ..) => "this network (0.0.0.0/8)",
        (10, ..) => "private (10.0.0.0/8)",
        (100, 64..=127, _) => "shared address space (100.64.0.0/10)",
        (127, ..) => "loopback (127.0.0.0/8)",
        (169, 254, _) => "link-local (169.254.0.0/16)",
        (172, 16..=31, _) => "private (172.16.0.0/12)",
        (192, 0, 0) => "IETF protocol assignments (192.0.0.0/24)",
        (192, 0, 2) => "documentation (192.0.2.0/24)",
        (192, 88, 99) => "6to4 relay anycast (192.88.99.0/24)",
        (192, 168, _) => "private (192.168.0.0/16)",
        (198, 18..=19, _) => "benchmarking (198.18.0.0/15)",
        (198, 51, 100) => "documentation (198.51.100.0/24)",
        (203, 0, 113) => "documentation (203.0.113.0/24)",
        (224..=239, ..) => "multicast (224.0.0.0/4)",
        (255, 255, 255) if ip == Ipv4Addr::BROADCAST => "broadcast (255.255.255.255)",
        (240..=255, ..) => "reserved (240.0.0.0/4)",
        _ => return None,
    })
}

fn special_v6(ip: Ipv6Addr) -> Option<&'static str> {
    let s = ip.segments();
    let embedded = |hi: u16, lo: u16| Ipv4Addr::from((u32::from(hi) << 16) | u32::from(lo));
    // Forms that carry an IPv4 address are as reachable as what they carry.
    if let Some(v4) = ip.to_ipv4_mapped() {
        return special_v4(v4).map(|_| "IPv4-mapped non-public address (::ffff:0:0/96)");
    }
    if s[..6] == [0x64, 0xff9b, 0, 0, 0, 0] {
        return special_v4(embedded(s[6], s[7])).map(|_| "NAT64 of a non-public address");
    }
    if s[0] == 0x2002 {
        return special_v4(embedded(s[1], s[2])).map(|_| "6to4 of a non-public address");
    }
    if s[..2] == [0x2001, 0] {
        // Teredo: the server's address in clear, the client's with every bit inverted.
        let server = special_v4(embedded(s[2], s[3]));
        let client = special_v4(embedded(!s[6], !s[7]));
        return server.or(client).map(|_| "Teredo of a non-public address");
    }
    Some(match s {
        [0, 0, 0, 0, 0, 0, 0, 0] => "unspecified (::)",
        [0, 0, 0, 0, 0, 0, 0, 1] => "loopback (::1)",
        [0, 0, 0, 0, 0, 0, ..] => "IPv4-compatible (::/96)",
        [0x64, 0xff9b, 1, ..] => "local-use NAT64 (64:ff9b:1::/48)",
        [0x2001, 0x2, 0, ..] => "benchmarking (2001:2::/48)",
        [0x2001, 0xdb8, ..] => "documentation (2001:db8::/32)",
        [0x2001, 0x10..=0x2f, ..] => "ORCHID (2001:10::/28, 2001:20::/28)",
        [0x2001, 0x0..=0x1ff, ..] => "IETF protocol assignments (2001::/23)",
        [0x3fff, 0..=0x0fff, ..] => "documentation (3fff::/20)",
        [0x2000..=0x3fff, ..] => return None,
        [0xfc00..=0xfdff, ..] => "unique local (fc00::/7)",
        [0xfe80..=0xfebf, ..] => "link-local (fe80::/10)",
        [0xff00..=0xffff, ..] => "multicast (ff00::/8)",
        _ => "not global unicast (outside 2000::/3)",
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every IANA special-purpose range, at its edges, and public neighbours.
    #[test]
    fn special_purpose_ranges_are_not_public() {
        let not_public = [
            // IPv4
            "0.0.0.0",
            "0.255.255.255",
            "10.0.0.0",
            "10.255.255.255",
            "100.64.0.0",
            "100.127.255.255",
            "127.0.0.1",
            "127.255.255.255",
            "169.254.0.1",
            "169.254.169.254",
            "172.16.0.0",
            "172.31.255.255",
            "192.0.0.0",
            "192.0.0.255",
            "192.0.2.1",
            "192.88.99.1",
            "192.168.0.1",
            "192.168.255.255",
            "198.18.0.0",
            "198.19.255.255",
            "198.51.100.7",
            "203.0.113.9",
            "224.0.0.1",
            "239.255.255.255",
            "240.0.0.1",
            "254.1.2.3",
            "255.255.255.255",
            // IPv6
            "::",
            "::1",
            "::127.0.0.1",
            "::8.8.8.8",
            "::ffff:127.0.0.1",
            "::ffff:10.0.0.1",
            "::ffff:0.0.0.0",
            "::ffff:240.0.0.1",
            "64:ff9b::127.0.0.1",
            "64:ff9b::10.1.2.3",
            "64:ff9b::169.254.169.254",
            "64:ff9b:1::8.8.8.8",
            "64:ff9b:1:ffff::1",
            "100::1",
            "2001::1",
            "2001:0:c000:0201::1",
            "2001:0:0808:0808::ffff:ffff",
            "2001:0:0808:0808::80ff:fffe",
            "2001:2::1",
            "2001:10::1",
            "2001:20::1",
            "2001:1ff::1",
            "2001:db8::1",
            "2001:db8:ffff::1",
            "2002:7f00:1::1",
            "2002:0a00:0001::1",
            "2002:c0a8:0101::1",
            "3fff::1",
            "3fff:fff::1",
            "5f00::1",
            "fc00::1",
            "fd12:3456::1",
            "fe80::1",
            "febf::1",
            "fec0::1",
            "ff02::1",
            "ff0e::1",
        ];
        for ip in not_public {
            let addr: IpAddr = ip.parse().unwrap();
            assert!(!is_public(addr), "{ip} must not be public");
            assert!(special_purpose(addr).is_some(), "{ip}");
        }
        let public = [
            "1.1.1.1",
            "8.8.8.8",
            "9.255.255.255",
            "11.0.0.0",
            "100.63.255.255",
            "100.128.0.0",
            "172.15.255.255",
            "172.32.0.0",
            "192.0.1.1",
            "192.0.3.1",
            "192.167.255.255",
            "192.169.0.0",
            "198.17.255.255",
            "198.20.0.0",
            "223.255.255.255",
            "2606:4700::1111",
            "2a00:1450:4001::200e",
            "2001:200::1",
            "2001:4860:4860::8888",
            "2002:0808:0808::1",
            "2001:0:0808:0808::f7f7:f7f7",
            "64:ff9b::8.8.8.8",
            "::ffff:1.1.1.1",
            "3fff:1000::1",
        ];
        for ip in public {
            let addr: IpAddr = ip.parse().unwrap();
            assert!(
                is_public(addr),
                "{ip} is public, not {:?}",
                special_purpose(addr)
            );
        }
    }

    #[test]
    fn localhost_names() {
        for name in [
            "localhost",
            "LOCALHOST.",
            "a.localhost",
            "localhost.localdomain",
        ] {
            assert!(is_loopback_name(name), "{name}");
        }
        for name in ["localhost.example", "mylocalhost", "example.com"] {
            assert!(!is_loopback_name(name), "{name}");
        }
    }
}
