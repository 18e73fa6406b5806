//! Who the clients are (the address behind a trusted proxy) and how many WebSockets each may
//! hold: a WebSocket takes a slot before the upgrade is answered and gives it back when its
//! session ends, so a full server refuses with 503 and a greedy address with 429 instead of
//! running out of file descriptors.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use hyper::header::HeaderMap;

use crate::address::{AddressKey, TrustedProxies};
use crate::refusals::{Limit, Refusals};

/// Default `--max-websockets`.
pub const DEFAULT_MAX_WEBSOCKETS: usize = 3000;
/// Default `--max-websockets-per-address`.
pub const DEFAULT_MAX_WEBSOCKETS_PER_ADDRESS: usize = 100;

/// Client identification and the WebSocket caps; one per server.
#[derive(Debug)]
pub struct Clients {
    pub trusted_proxies: TrustedProxies,
    pub refusals: Arc<Refusals>,
    max_websockets: usize,
    max_websockets_per_address: usize,
    open: Arc<Mutex<OpenWebSockets>>,
}

#[derive(Debug, Default)]
struct OpenWebSockets {
    total: usize,
    /// Only addresses holding at least one, so at most `max_websockets` entries.
    by_address: BTreeMap<AddressKey, usize>,
}

/// Why a WebSocket was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WebSocketRefusal {
    /// The server holds `--max-websockets`: 503.
    ServerFull,
    /// This address holds `--max-websockets-per-address`: 429.
    AddressFull,
}

/// One open WebSocket's place in the count; freed on drop.
#[derive(Debug)]
pub struct WebSocketSlot {
    open: Arc<Mutex<OpenWebSockets>>,
    key: AddressKey,
}

impl Default for Clients {
    fn default() -> Clients {
        Clients::new(
            TrustedProxies::default(),
            Arc::new(Refusals::new()),
            DEFAULT_MAX_WEBSOCKETS,
            DEFAULT_MAX_WEBSOCKETS_PER_ADDRESS,
        )
    }
}

impl Clients {
    pub fn new(
        trusted_proxies: TrustedProxies,
        refusals: Arc<Refusals>,
        max_websockets: usize,
        max_websockets_per_address: usize,
    ) -> Clients {
        Clients {
            trusted_proxies,
            refusals,
            max_websockets,
            max_websockets_per_address,
            open: Arc::default(),
        }
    }

    /// The client's address (see [`TrustedProxies::client_address`]).
    pub fn address(&self, headers: &HeaderMap, peer: SocketAddr) -> IpAddr {
        self.trusted_proxies.client_address(headers, peer.ip())
    }

    /// Takes a WebSocket slot for `client`, or says which cap is full (counted and logged).
    pub fn open_websocket(
        &self,
        client: IpAddr,
        now: Instant,
    ) -> Result<WebSocketSlot, WebSocketRefusal> {
        let key = AddressKey::of(client);
        let refusal = {
            let mut open = self.open.lock().unwrap_or_else(|e| e.into_inner());
            let held = open.by_address.get(&key).copied().unwrap_or(0);
            if open.total >= self.max_websockets {
                Some(WebSocketRefusal::ServerFull)
            } else if held >= self.max_websockets_per_address {
                Some(WebSocketRefusal::AddressFull)
            } else {
                open.total += 1;
                open.by_address.insert(key, held + 1);
                None
            }
        };
        match refusal {
            None => Ok(WebSocketSlot {
                open: Arc::clone(&self.open),
                key,
            }),
            Some(WebSocketRefusal::ServerFull) => {
                self.refusals.refuse(
                    Limit::WebSocketsTotal,
                    &format_args!(
                        "refused a WebSocket from {client}: {} open, the server's limit \
                         (--max-websockets)",
                        self.max_websockets
                    ),
                    now,
                );
                Err(WebSocketRefusal::ServerFull)
            }
            Some(WebSocketRefusal::AddressFull) => {
                self.refusals.refuse(
                    Limit::WebSocketsPerAddress,
                    &format_args!(
                        "refused a WebSocket from {client}: {} open from that address, the \
                         limit (--max-websockets-per-address)",
                        self.max_websockets_per_address
                    ),
                    now,
                );
                Err(WebSocketRefusal::AddressFull)
            }
        }
    }

    /// WebSockets open now.
    pub fn websockets_open(&self) -> usize {
        self.open.lock().unwrap_or_else(|e| e.into_inner()).total
    }
}

impl Drop for WebSocketSlot {
    fn drop(&mut self) {
        let mut open = self.open.lock().unwrap_or_else(|e| e.into_inner());
        open.total -= 1;
        if let Some(held) = open.by_address.get_mut(&self.key) {
            *held -= 1;
            if *held == 0 {
                open.by_address.remove(&self.key);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn caps_per_address_and_in_total_and_frees_on_drop() {
        let clients = Clients::new(TrustedProxies::default(), Arc::default(), 3, 2);
        let now = Instant::now();
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let b: IpAddr = "10.0.0.2".parse().unwrap();
        let a1 = clients.open_websocket(a, now).unwrap();
        let _a2 = clients.open_websocket(a, now).unwrap();
        assert_eq!(
            clients.open_websocket(a, now).unwrap_err(),
            WebSocketRefusal::AddressFull
        );
        let _b1 = clients.open_websocket(b, now).unwrap();
        assert_eq!(
            clients.open_websocket(b, now).unwrap_err(),
            WebSocketRefusal::ServerFull
        );
        assert_eq!(clients.websockets_open(), 3);
        drop(a1);
        assert_eq!(clients.websockets_open(), 2);
        let _b2 = clients.open_websocket(b, now).unwrap();
        assert_eq!(clients.refusals.count(Limit::WebSocketsPerAddress), 1);
        assert_eq!(clients.refusals.count(Limit::WebSocketsTotal), 1);
    }
}
