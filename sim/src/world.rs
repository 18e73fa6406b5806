//! The world outside our server: users, remote GRASP servers (domains) with the objects they
//! hold and their faults, and the events users publish.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use graspd_core::{EventId, Oid, PublicKey, RepoKey, Time};

use crate::faults::{response_at, FaultWindow, Response};
use crate::forge::User;
use crate::rng::Rng;

/// Our own origin: announcements must list it, and the engine must never fetch from it.
pub const OWN_HOST: &str = "grasp.local";
pub const OWN_ORIGIN: &str = "https://grasp.local";
pub const OWN_RELAY: &str = "wss://grasp.local";

/// A remote GRASP server.
#[derive(Clone, Debug)]
pub struct Domain {
    pub name: String,
    /// Healthy answer latency, uniform in this range (ms).
    pub latency_ms: (u64, u64),
    pub faults: Vec<FaultWindow>,
}

/// One fetchable URL: a repository on a remote domain and the objects it holds.
#[derive(Clone, Debug)]
pub struct Remote {
    pub domain: usize,
    pub objects: BTreeSet<Oid>,
}

/// What a simulated event is, in the simulator's own terms (never re-parsed from tags).
#[derive(Clone, Debug)]
pub enum Role {
    Announcement {
        repo: RepoKey,
        clone: Vec<String>,
        /// The `maintainers` tag (besides the owner).
        maintainers: Vec<PublicKey>,
    },
    State {
        repo: RepoKey,
        refs: BTreeMap<String, Oid>,
        head: Option<String>,
    },
    /// PR (1618) or PR update (1619).
    Pr {
        targets: Vec<RepoKey>,
        commit: Oid,
        clone: Vec<String>,
    },
    Deletion {
        targets: Vec<EventId>,
    },
}

#[derive(Clone, Debug)]
pub struct SimEvent {
    pub event: nostr::event::Event,
    pub role: Role,
    /// Short readable label for the trace, e.g. `state#3(alice/repo1)`.
    pub label: String,
}

/// NIP-01's rule for two versions at one address: the later `created_at` is kept, and on a tie
/// the lowest id. Written here on purpose rather than taken from the engine, so a wrong rule
/// there is caught rather than copied into the checks.
pub fn nip01_prefers(a: (u64, &EventId), b: (u64, &EventId)) -> bool {
    a.0 > b.0 || (a.0 == b.0 && a.1 < b.1)
}

impl SimEvent {
    pub fn id(&self) -> EventId {
        self.event.id
    }

    /// `(created_at, id)`, what NIP-01 ranks versions by.
    pub fn version(&self) -> (u64, &EventId) {
        (self.event.created_at.as_secs(), &self.event.id)
    }

    /// Objects that must be present locally before this event may be released, per repo.
    pub fn needs(&self) -> Vec<(RepoKey, Vec<Oid>)> {
        match &self.role {
            Role::State { repo, refs, .. } => {
                vec![(repo.clone(), refs.values().copied().collect())]
            }
            Role::Pr {
                targets, commit, ..
            } => targets.iter().map(|r| (r.clone(), vec![*commit])).collect(),
            Role::Announcement { .. } | Role::Deletion { .. } => Vec::new(),
        }
    }
}

/// The outcome of a fetch as the remote produces it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RemoteOutcome {
    Refused,
    Dns,
    Tls,
    RateLimited,
    /// Never answers.
    Hang,
    /// Which of the requested objects came back (the rest: "not our ref"), after `delay_ms`.
    Served {
        delay_ms: u64,
        present: Vec<Oid>,
    },
    /// The URL names no server of this world (or not http(s)): the name does not resolve.
    Unknown,
}

#[derive(Clone, Debug)]
pub struct World {
    pub users: Vec<User>,
    pub domains: Vec<Domain>,
    pub remotes: BTreeMap<String, Remote>,
    pub events: Vec<SimEvent>,
}

impl World {
    /// What a fetch of `oids` from `url` sent at `now` meets. `healed` ignores every fault.
    pub fn fetch(
        &self,
        url: &str,
        oids: &[Oid],
        now: Time,
        healed: bool,
        rng: &mut Rng,
    ) -> RemoteOutcome {
        let Some(remote) = self.remotes.get(url) else {
            return RemoteOutcome::Unknown;
        };
        let domain = &self.domains[remote.domain];
        let response = if healed {
            Response::Serve {
                extra_ms: 0,
                withhold_percent: 0,
            }
        } else {
            response_at(&domain.faults, now)
        };
        let latency = rng.range(domain.latency_ms.0, domain.latency_ms.1);
        match response {
            Response::Refused => RemoteOutcome::Refused,
            Response::Dns => RemoteOutcome::Dns,
            Response::Tls => RemoteOutcome::Tls,
            Response::RateLimited => RemoteOutcome::RateLimited,
            Response::Hang => RemoteOutcome::Hang,
            Response::Serve {
                extra_ms,
                withhold_percent,
            } => {
                let present = oids
                    .iter()
                    .filter(|o| remote.objects.contains(o))
                    .filter(|_| withhold_percent == 0 || !rng.percent(withhold_percent))
                    .copied()
                    .collect();
                RemoteOutcome::Served {
                    delay_ms: latency + extra_ms,
                    present,
                }
            }
        }
    }

    /// Does some URL in `urls` hold `oid`, once every fault is healed?
    pub fn reachable(&self, urls: &[String], oid: &Oid) -> bool {
        urls.iter()
            .filter_map(|u| self.remotes.get(u))
            .any(|r| r.objects.contains(oid))
    }

    pub fn domain_of(&self, url: &str) -> Option<&str> {
        self.remotes
            .get(url)
            .map(|r| self.domains[r.domain].name.as_str())
    }
}

/// The host part of an http(s) URL, lowercased, without port or credentials: the key the
/// simulator counts throttle limits by.
pub fn url_host(url: &str) -> Option<String> {
    let rest = url
        .strip_prefix("https://")
        .or_else(|| url.strip_prefix("http://"))?;
    let authority = rest.split('/').next()?;
    let authority = authority.rsplit('@').next()?;
    let host = match authority.strip_prefix('[') {
        Some(v6) => v6.split(']').next()?,
        None => authority.split(':').next()?,
    };
    Some(host.to_ascii_lowercase())
}

/// A `Duration` as whole milliseconds.
pub fn ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn url_host_strips_port_and_userinfo() {
        assert_eq!(
            url_host("https://a.example:8443/x/y.git").unwrap(),
            "a.example"
        );
        assert_eq!(url_host("http://u:p@B.example/x").unwrap(), "b.example");
        assert_eq!(url_host("http://[::1]:80/x").unwrap(), "::1");
        assert!(url_host("ssh://a.example/x").is_none());
    }
}
