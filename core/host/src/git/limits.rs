//! What an anonymous git client may cost: how many git requests are served at once (in all
//! and per client address) and how long a git process serving one may run. What these limits
//! refuse is counted in [`crate::refusals`].

use std::collections::BTreeMap;
use std::fmt;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::address::AddressKey;

/// Limits on the git processes that serve clients.
#[derive(Clone, Debug)]
pub struct GitLimits {
    /// An upload-pack or receive-pack serving a client is killed after this long.
    pub process_timeout: Duration,
    /// Niceness of the upload-pack processes (and the pack-objects they run).
    pub upload_pack_nice: i32,
    /// An address's git requests beyond this many in flight run their upload-pack at the
    /// lowest priority ([`Priority::Idle`]): one address's many clones cannot take the CPU
    /// from another address's one.
    pub full_priority_per_address: usize,
    /// Most ref updates in one push.
    pub max_push_commands: usize,
    /// Most git requests (each with its git process) served at once.
    pub max_requests: usize,
    /// Most git requests served at once for one client address.
    pub max_requests_per_address: usize,
}

impl Default for GitLimits {
    fn default() -> GitLimits {
        GitLimits {
            process_timeout: Duration::from_secs(3600),
            upload_pack_nice: 10,
            full_priority_per_address: 2,
            max_push_commands: super::receive::MAX_COMMANDS,
            max_requests: 64,
            max_requests_per_address: 16,
        }
    }
}

/// Why a git request was not started.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Busy {
    /// The server serves `max` git requests already.
    Server { max: usize },
    /// The client's address has `max` git requests in flight already.
    Address { max: usize },
}

impl fmt::Display for Busy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Busy::Server { max } => write!(
                f,
                "this server is serving its limit of {max} git requests at once; try again in a \
                 few seconds"
            ),
            Busy::Address { max } => write!(
                f,
                "your address has {max} git requests in flight already (this server's limit); \
                 try again when one is done"
            ),
        }
    }
}

/// How much CPU a git process serving a client may claim against the others.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Priority {
    /// At this niceness.
    Nice(i32),
    /// Only when nothing else wants the CPU (`SCHED_IDLE` on Linux, niceness 19 elsewhere).
    Idle,
}

/// The git requests in flight, in all and per client address (an IPv6 /64 counts as one, as
/// for WebSockets). Only addresses with a request in flight have an entry, so the map never
/// holds more than the total cap.
#[derive(Debug)]
pub struct GitRequests {
    max_total: usize,
    max_per_address: usize,
    full_priority_per_address: usize,
    in_flight: Mutex<(usize, BTreeMap<AddressKey, usize>)>,
}

/// One git request in flight; its place is freed on drop.
#[derive(Debug)]
pub struct GitRequestSlot {
    requests: Arc<GitRequests>,
    address: AddressKey,
    /// Requests from the same address already in flight when this one started.
    rank: usize,
}

impl GitRequests {
    pub fn new(limits: &GitLimits) -> Arc<GitRequests> {
        Arc::new(GitRequests {
            max_total: limits.max_requests,
            max_per_address: limits.max_requests_per_address,
            full_priority_per_address: limits.full_priority_per_address,
            in_flight: Mutex::default(),
        })
    }

    /// A place for one more request from `client` (its address, behind a trusted proxy the
    /// one it forwarded for), if both caps allow it.
    pub fn try_start(self: &Arc<Self>, client: IpAddr) -> Result<GitRequestSlot, Busy> {
        let address = AddressKey::of(client);
        let mut in_flight = self.in_flight.lock().unwrap_or_else(|e| e.into_inner());
        let (total, per_address) = &mut *in_flight;
        if *total >= self.max_total {
            return Err(Busy::Server {
                max: self.max_total,
            });
        }
        let mine = per_address.entry(address).or_insert(0);
        if *mine >= self.max_per_address {
            return Err(Busy::Address {
                max: self.max_per_address,
            });
        }
        let rank = *mine;
        *mine += 1;
        *total += 1;
        Ok(GitRequestSlot {
            requests: Arc::clone(self),
            address,
            rank,
        })
    }
}

impl GitRequestSlot {
    /// The priority of this request's upload-pack: `nice` for an address's first requests
    /// in flight, idle beyond them. The rank is fixed when the request starts, so an
    /// address keeps at most its share at `nice` however its requests come and go.
    pub fn upload_pack_priority(&self, nice: i32) -> Priority {
        if self.rank < self.requests.full_priority_per_address {
            Priority::Nice(nice)
        } else {
            Priority::Idle
        }
    }
}

impl Drop for GitRequestSlot {
    fn drop(&mut self) {
        let mut in_flight = self
            .requests
            .in_flight
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        let (total, per_address) = &mut *in_flight;
        *total -= 1;
        if let Some(mine) = per_address.get_mut(&self.address) {
            *mine -= 1;
            if *mine == 0 {
                per_address.remove(&self.address);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn caps_requests_in_all_and_per_address() {
        let requests = GitRequests::new(&GitLimits {
            max_requests: 3,
            max_requests_per_address: 2,
            ..GitLimits::default()
        });
        let (a, b, c): (IpAddr, IpAddr, IpAddr) = (
            "10.0.0.1".parse().unwrap(),
            "10.0.0.2".parse().unwrap(),
            "10.0.0.3".parse().unwrap(),
        );
        let a1 = requests.try_start(a).unwrap();
        let _a2 = requests.try_start(a).unwrap();
        assert_eq!(requests.try_start(a).unwrap_err(), Busy::Address { max: 2 });
        let _b1 = requests.try_start(b).unwrap();
        assert_eq!(requests.try_start(c).unwrap_err(), Busy::Server { max: 3 });
        drop(a1);
        let _c1 = requests.try_start(c).unwrap();
        assert_eq!(requests.try_start(a).unwrap_err(), Busy::Server { max: 3 });
        assert_eq!(requests.in_flight.lock().unwrap().1.len(), 3);
    }

    #[test]
    fn an_address_beyond_its_share_runs_upload_pack_idle_and_others_keep_theirs() {
        let requests = GitRequests::new(&GitLimits {
            full_priority_per_address: 2,
            ..GitLimits::default()
        });
        let (a, b): (IpAddr, IpAddr) = ("10.0.0.1".parse().unwrap(), "10.0.0.2".parse().unwrap());
        let a1 = requests.try_start(a).unwrap();
        let a2 = requests.try_start(a).unwrap();
        let a3 = requests.try_start(a).unwrap();
        let b1 = requests.try_start(b).unwrap();
        assert_eq!(a1.upload_pack_priority(10), Priority::Nice(10));
        assert_eq!(a2.upload_pack_priority(10), Priority::Nice(10));
        assert_eq!(a3.upload_pack_priority(10), Priority::Idle);
        assert_eq!(b1.upload_pack_priority(10), Priority::Nice(10));
        drop((a1, a2));
        let a4 = requests.try_start(a).unwrap();
        assert_eq!(a4.upload_pack_priority(10), Priority::Nice(10));
    }
}
