//! Which `relays` values the follower may connect to, spelled one way so one relay is one entry.

use crate::acceptance::OwnService;
use crate::net;
use std::fmt;

use nostr::types::url::{Host, Url};

/// Why a relay URL is not followed.
#[derive(Clone, PartialEq, Eq, Debug)]
pub enum BadRelayUrl {
    NotAUrl,
    NotWebSocket,
    HasCredentials,
    NoHost,
    /// A literal non-public address (`net::is_public`) or a `localhost` name, and private
    /// relays are not allowed. Names are checked again, by what they resolve to, at connect
    /// time.
    Private,
    /// This server itself.
    Own,
}

impl fmt::Display for BadRelayUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            BadRelayUrl::NotAUrl => "not a URL",
            BadRelayUrl::NotWebSocket => "not a ws:// or wss:// URL",
            BadRelayUrl::HasCredentials => "carries a user name or password",
            BadRelayUrl::NoHost => "has no host",
            BadRelayUrl::Private => "points at a private address (see --allow-private-relays)",
            BadRelayUrl::Own => "is this server",
        })
    }
}

/// The canonical spelling of a relay URL: lowercase scheme and host, default port dropped, no
/// trailing `/` on an empty path, no fragment.
pub fn normalise(raw: &str, allow_private: bool) -> Result<String, BadRelayUrl> {
    let mut url = Url::parse(raw.trim()).map_err(|_| BadRelayUrl::NotAUrl)?;
    if !matches!(url.scheme(), "ws" | "wss") {
        return Err(BadRelayUrl::NotWebSocket);
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err(BadRelayUrl::HasCredentials);
    }
    let private = match url.host() {
        None => return Err(BadRelayUrl::NoHost),
        Some(Host::Domain(d)) => net::is_loopback_name(d),
        Some(Host::Ipv4(ip)) => !net::is_public(ip.into()),
        Some(Host::Ipv6(ip)) => !net::is_public(ip.into()),
    };
    if private && !allow_private {
        return Err(BadRelayUrl::Private);
    }
    url.set_fragment(None);
    let mut s = url.to_string();
    if url.path() == "/" && url.query().is_none() {
        s.pop();
    }
    Ok(s)
}

/// The one spelling of `raw` if the follower may connect to it: a public ws(s) relay (or a
/// private one when `allow_private`) that is not this server (`own`, any URL on its origin).
pub fn followable(raw: &str, allow_private: bool, own: &OwnService) -> Result<String, BadRelayUrl> {
    if own.is_own_origin(raw) || own.is_own_relay_url(raw) {
        return Err(BadRelayUrl::Own);
    }
    let url = normalise(raw, allow_private)?;
    if own.is_own_origin(&url) {
        return Err(BadRelayUrl::Own);
    }
    Ok(url)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_server_is_never_followable() {
        let own = OwnService::new("http://127.0.0.1:7334").unwrap();
        for ours in [
            "ws://127.0.0.1:7334",
            "wss://127.0.0.1:7334/",
            "http://127.0.0.1:7334/x",
        ] {
            assert_eq!(
                followable(ours, true, &own),
                Err(BadRelayUrl::Own),
                "{ours}"
            );
        }
        assert_eq!(
            followable("ws://127.0.0.1:7001", false, &own),
            Err(BadRelayUrl::Private)
        );
        assert_eq!(
            followable("ws://127.0.0.1:7001/", true, &own).as_deref(),
            Ok("ws://127.0.0.1:7001")
        );
    }

    #[test]
    fn one_spelling_per_relay() {
        for raw in [
            "wss://Relay.Example/",
            "wss://relay.example",
            "WSS://relay.example:443/#x",
        ] {
            assert_eq!(normalise(raw, false).unwrap(), "wss://relay.example");
        }
        assert_eq!(
            normalise("ws://relay.example:8080/nostr", false).unwrap(),
            "ws://relay.example:8080/nostr"
        );
    }

    #[test]
    fn refuses_what_is_not_a_public_relay() {
        assert_eq!(
            normalise("https://relay.example", false),
            Err(BadRelayUrl::NotWebSocket)
        );
        assert_eq!(normalise("relay.example", false), Err(BadRelayUrl::NotAUrl));
        assert_eq!(
            normalise("wss://u:p@relay.example", false),
            Err(BadRelayUrl::HasCredentials)
        );
        for private in [
            "ws://127.0.0.1:7777",
            "ws://localhost",
            "ws://10.1.2.3",
            "ws://192.168.0.1",
            "ws://169.254.169.254",
            "ws://[::1]",
            "ws://[fd00::1]",
            "ws://[::ffff:127.0.0.1]",
            "ws://0.0.0.0",
            "ws://0.1.2.3",
            "ws://224.0.0.1",
            "ws://240.0.0.1",
            "ws://[64:ff9b::a01:203]",
            "ws://[ff02::1]",
        ] {
            assert_eq!(
                normalise(private, false),
                Err(BadRelayUrl::Private),
                "{private}"
            );
        }
        assert_eq!(
            normalise("ws://127.0.0.1:7777/", true).unwrap(),
            "ws://127.0.0.1:7777"
        );
    }
}
