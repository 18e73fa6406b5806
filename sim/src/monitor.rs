//! Safety checks the simulator makes on its own, from the commands it sees: URL policy,
//! per-domain throttle (in flight and per sliding window) and fetch deadlines.

use std::collections::{BTreeMap, VecDeque};

use graspd_core::Time;

use crate::params::Params;
use crate::world::{ms, url_host, OWN_HOST};

/// Fetches counted per domain for one engine lifetime (a restarted engine cannot know what its
/// predecessor started, so a crash resets the counts).
#[derive(Default, Debug)]
pub struct ThrottleMonitor {
    /// Fetch id -> (domain, deadline). A fetch stops counting when it reports or its deadline
    /// passes, whichever comes first: the engine frees the slot at the deadline by contract.
    in_flight: BTreeMap<u64, (String, Time)>,
    starts: BTreeMap<String, VecDeque<Time>>,
}

impl ThrottleMonitor {
    /// Records a fetch start; `Err` names the broken rule.
    pub fn on_fetch(
        &mut self,
        now: Time,
        id: u64,
        url: &str,
        deadline: Time,
        params: &Params,
    ) -> Result<(), String> {
        let domain = forbidden(url)?;
        if deadline <= now {
            return Err(format!(
                "fetch {id} from {url} has a deadline {deadline} not after now"
            ));
        }
        let latest = now + params.fetch_timeout;
        if deadline > latest {
            return Err(format!(
                "fetch {id} from {url} has deadline {deadline}, later than now + fetch_timeout ({latest})"
            ));
        }
        self.in_flight.retain(|_, (_, d)| *d > now);
        let in_flight = self
            .in_flight
            .values()
            .filter(|(d, _)| *d == domain)
            .count();
        if in_flight + 1 > params.max_concurrent_per_domain {
            return Err(format!(
                "fetch {id}: {} fetches in flight to {domain}, limit {}",
                in_flight + 1,
                params.max_concurrent_per_domain
            ));
        }
        // Sliding window (now - window, now]: a start exactly one window ago no longer counts.
        let window = ms(params.rate_window);
        let starts = self.starts.entry(domain.clone()).or_default();
        while starts
            .front()
            .is_some_and(|t| now.as_millis().saturating_sub(t.as_millis()) >= window)
        {
            starts.pop_front();
        }
        if starts.len() + 1 > params.max_per_minute_per_domain {
            return Err(format!(
                "fetch {id}: {} fetches started to {domain} within {}s, limit {} (earliest at {})",
                starts.len() + 1,
                window / 1000,
                params.max_per_minute_per_domain,
                starts.front().copied().unwrap_or(now)
            ));
        }
        starts.push_back(now);
        self.in_flight.insert(id, (domain, deadline));
        Ok(())
    }

    pub fn on_done(&mut self, id: u64) {
        self.in_flight.remove(&id);
    }
}

/// The URL's domain if the engine may fetch from it; `Err` if it is our own origin, not
/// http(s), or a loopback/private/link-local address.
pub fn forbidden(url: &str) -> Result<String, String> {
    let Some(host) = url_host(url) else {
        return Err(format!("fetched from a non-http(s) URL {url:?}"));
    };
    if host == OWN_HOST {
        return Err(format!("fetched from our own origin {url:?}"));
    }
    if is_private(&host) {
        return Err(format!(
            "fetched from a private or loopback address {url:?}"
        ));
    }
    Ok(host)
}

fn is_private(host: &str) -> bool {
    if host == "localhost" || host.ends_with(".localhost") || host == "::1" {
        return true;
    }
    let octets: Vec<u8> = host.split('.').filter_map(|p| p.parse().ok()).collect();
    if octets.len() == 4 && host.split('.').count() == 4 {
        return matches!(
            (octets[0], octets[1]),
            (127, _) | (10, _) | (0, _) | (169, 254) | (192, 168)
        ) || (octets[0] == 172 && (16..=31).contains(&octets[1]));
    }
    host.starts_with("fc") || host.starts_with("fd") || host.starts_with("fe80")
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn refuses_own_private_and_non_http() {
        assert!(forbidden("https://grasp.local/x/y.git").is_err());
        assert!(forbidden("https://GRASP.local/x/y.git").is_err());
        assert!(forbidden("http://127.0.0.1/x").is_err());
        assert!(forbidden("http://10.1.2.3/x").is_err());
        assert!(forbidden("git@d0.example:x.git").is_err());
        assert_eq!(
            forbidden("https://grasp.local.evil.example/x").unwrap(),
            "grasp.local.evil.example"
        );
    }

    #[test]
    fn counts_the_sliding_window_and_in_flight() {
        let p = Params {
            max_concurrent_per_domain: 2,
            max_per_minute_per_domain: 3,
            ..Params::default()
        };
        let mut m = ThrottleMonitor::default();
        let t = Time::from_millis;
        let dl = |now: Time| now + Duration::from_secs(10);
        let url = "https://a.example/x";
        m.on_fetch(t(0), 1, url, dl(t(0)), &p).unwrap();
        m.on_fetch(t(1), 2, url, dl(t(1)), &p).unwrap();
        assert!(m.on_fetch(t(2), 3, url, dl(t(2)), &p).is_err());
        m.on_done(1);
        m.on_fetch(t(3), 4, url, dl(t(3)), &p).unwrap();
        m.on_done(2);
        m.on_done(4);
        assert!(m.on_fetch(t(59_999), 5, url, dl(t(59_999)), &p).is_err());
        m.on_fetch(t(60_000), 6, url, dl(t(60_000)), &p).unwrap();
    }
}
