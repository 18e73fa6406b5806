//! How a remote GRASP server misbehaves, and what a fetch from it returns at a given moment.

use std::fmt;

use graspd_core::Time;

use crate::rng::Rng;

/// A remote server's fault, active during `[from, until)` of virtual time. After `until` the
/// server is healthy (the heal phase of every run sets `until` at or before the heal time).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FaultWindow {
    pub fault: Fault,
    pub from: Time,
    pub until: Time,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fault {
    /// Connection refused.
    Down,
    /// The name does not resolve.
    DnsFailure,
    /// The TLS handshake fails.
    TlsFailure,
    /// Accepts the connection and never answers.
    Hang,
    /// Answers, but `extra_ms` later than its usual latency (may exceed the fetch deadline).
    Slow { extra_ms: u64 },
    /// Answers HTTP 429.
    RateLimited,
    /// Answers "not our ref" for `percent`% of the objects it holds.
    Partial { percent: u64 },
    /// Alternates between up and down every `period_ms`.
    Flapping { period_ms: u64 },
}

impl fmt::Display for Fault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Fault::Down => f.write_str("down"),
            Fault::DnsFailure => f.write_str("dns"),
            Fault::TlsFailure => f.write_str("tls"),
            Fault::Hang => f.write_str("hang"),
            Fault::Slow { extra_ms } => write!(f, "slow+{extra_ms}ms"),
            Fault::RateLimited => f.write_str("ratelimited"),
            Fault::Partial { percent } => write!(f, "partial{percent}%"),
            Fault::Flapping { period_ms } => write!(f, "flap{period_ms}ms"),
        }
    }
}

impl Fault {
    /// One fault drawn from the seed, with its parameters.
    pub fn draw(rng: &mut Rng) -> Fault {
        match rng.below(8) {
            0 => Fault::Down,
            1 => Fault::DnsFailure,
            2 => Fault::TlsFailure,
            3 => Fault::Hang,
            4 => Fault::Slow {
                extra_ms: rng.range(1_000, 300_000),
            },
            5 => Fault::RateLimited,
            6 => Fault::Partial {
                percent: rng.range(20, 100),
            },
            _ => Fault::Flapping {
                period_ms: rng.range(1_000, 120_000),
            },
        }
    }
}

/// What one fetch request meets at the remote, decided when it is sent.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Response {
    Refused,
    Dns,
    Tls,
    RateLimited,
    /// Never answers.
    Hang,
    /// Answers after `extra_ms` beyond the usual latency; `withhold_percent`% of the held
    /// objects are answered "not our ref".
    Serve {
        extra_ms: u64,
        withhold_percent: u64,
    },
}

/// The response of a server with these fault windows at `now`.
pub fn response_at(windows: &[FaultWindow], now: Time) -> Response {
    let mut extra_ms = 0;
    let mut withhold_percent = 0;
    for w in windows.iter().filter(|w| w.from <= now && now < w.until) {
        match w.fault {
            Fault::Down => return Response::Refused,
            Fault::DnsFailure => return Response::Dns,
            Fault::TlsFailure => return Response::Tls,
            Fault::Hang => return Response::Hang,
            Fault::RateLimited => return Response::RateLimited,
            Fault::Flapping { period_ms } => {
                let phase = now.as_millis().saturating_sub(w.from.as_millis()) / period_ms.max(1);
                if phase % 2 == 1 {
                    return Response::Refused;
                }
            }
            Fault::Slow { extra_ms: e } => extra_ms = extra_ms.max(e),
            Fault::Partial { percent } => withhold_percent = withhold_percent.max(percent),
        }
    }
    Response::Serve {
        extra_ms,
        withhold_percent,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn windows_apply_only_inside_their_span() {
        let w = vec![FaultWindow {
            fault: Fault::Down,
            from: Time::from_millis(100),
            until: Time::from_millis(200),
        }];
        assert_eq!(response_at(&w, Time::from_millis(150)), Response::Refused);
        assert!(matches!(
            response_at(&w, Time::from_millis(200)),
            Response::Serve { .. }
        ));
    }

    #[test]
    fn flapping_alternates() {
        let w = vec![FaultWindow {
            fault: Fault::Flapping { period_ms: 10 },
            from: Time::ZERO,
            until: Time::from_millis(1_000),
        }];
        assert!(matches!(
            response_at(&w, Time::from_millis(5)),
            Response::Serve { .. }
        ));
        assert_eq!(response_at(&w, Time::from_millis(15)), Response::Refused);
    }
}
