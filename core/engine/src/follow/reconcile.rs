//! How a subscription's stored history is read from a relay: NIP-77 negentropy first, so
//! only the events we lack cross the wire (fetched by id), and the paged REQ (`until`) when
//! the relay cannot reconcile. Pure: the host runs the exchange and reports what the relay
//! answered; this says what that means and remembers it per relay.

use std::time::Duration;

use crate::time::Time;

/// Bounds and delays of reconciliation (part of the host's follower limits).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ReconcileConfig {
    /// Try negentropy at all.
    pub enabled: bool,
    /// A relay that has not answered a NEG-OPEN or NEG-MSG within this long is taken not to
    /// speak NIP-77.
    pub answer_timeout: Duration,
    /// After a relay could not reconcile, its histories are paged for this long before it
    /// is asked again (it may have been upgraded, or only been busy).
    pub retry_after: Duration,
    /// Our own events reconciled for one filter at most; a filter matching more here is
    /// paged instead (the items are held in memory during the exchange).
    pub max_items: usize,
    /// Event ids asked for in one REQ (relays cap the values of a filter field).
    pub ids_per_req: usize,
    /// Missing events fetched by id for one subscription at most; more are paged instead.
    /// A relay that names more while the exchange is still going is given up at once.
    pub max_missing: usize,
    /// Messages we send in one filter's exchange at most: a relay that keeps answering with
    /// ranges to split (wrong fingerprints) would otherwise hold the history open forever.
    /// An honest exchange needs a few rounds per 16-fold split plus one per frame of ids
    /// (about 70 for 100,000 missing events in 60 kB frames).
    pub max_rounds: usize,
}

impl Default for ReconcileConfig {
    fn default() -> ReconcileConfig {
        ReconcileConfig {
            enabled: true,
            answer_timeout: Duration::from_secs(10),
            retry_after: Duration::from_secs(3600),
            max_items: 100_000,
            ids_per_req: 500,
            max_missing: 100_000,
            max_rounds: 200,
        }
    }
}

/// How to read one subscription's history now.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HistoryMethod {
    /// NEG-OPEN per filter, then REQ by the ids we lack.
    Negentropy,
    /// REQ pages walking back with `until`.
    Paged,
}

/// What a relay said while a reconciliation of ours was open on it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RelayAnswer<'a> {
    /// `NEG-MSG` on our reconciliation.
    Message,
    /// `NEG-ERR` on our reconciliation, with its reason.
    Error(&'a str),
    /// `CLOSED` on our reconciliation's id.
    Closed(&'a str),
    /// A `NOTICE` (not tied to any subscription).
    Notice(&'a str),
}

/// Why a reconciliation is given up for the paged REQ, or `None` if it goes on. A relay
/// without NIP-77 answers a NEG-OPEN with a NOTICE that names the command or negentropy
/// (strfry: `bad msg: unknown cmd`; others: `NEG-OPEN is not supported`); any other notice
/// is not about us.
pub fn fallback_reason(answer: RelayAnswer<'_>) -> Option<String> {
    match answer {
        RelayAnswer::Message => None,
        RelayAnswer::Error(reason) => Some(format!("NEG-ERR: {reason}")),
        RelayAnswer::Closed(reason) => Some(format!("CLOSED: {reason}")),
        RelayAnswer::Notice(text) => {
            let lower = text.to_ascii_lowercase();
            let about_us = lower.contains("neg-")
                || lower.contains("negentropy")
                || lower.contains("unknown cmd")
                || lower.contains("unknown command");
            about_us.then(|| format!("NOTICE: {text}"))
        }
    }
}

/// The deadline for the relay's next answer to a message sent at `now`.
pub fn answer_deadline(config: &ReconcileConfig, now: Time) -> Time {
    now + config.answer_timeout
}

/// Whether `missing` events are fetched by id (in batches of `ids_per_req`) or the history
/// is paged instead.
pub fn fetch_batches<T>(config: &ReconcileConfig, missing: Vec<T>) -> Option<Vec<Vec<T>>> {
    if missing.len() > config.max_missing {
        return None;
    }
    let per_req = config.ids_per_req.max(1);
    let mut batches = Vec::with_capacity(missing.len().div_ceil(per_req));
    let mut rest = missing.into_iter().peekable();
    while rest.peek().is_some() {
        batches.push(rest.by_ref().take(per_req).collect());
    }
    Some(batches)
}

/// Whether one relay reconciles, as learned so far (kept across its connections).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NegentropySupport {
    /// Paged until then, after the relay could not reconcile.
    paged_until: Option<Time>,
}

impl NegentropySupport {
    /// How to read a history from this relay now.
    pub fn method(&self, config: &ReconcileConfig, now: Time) -> HistoryMethod {
        match self.paged_until {
            _ if !config.enabled => HistoryMethod::Paged,
            Some(until) if now < until => HistoryMethod::Paged,
            _ => HistoryMethod::Negentropy,
        }
    }

    /// The relay could not reconcile (an answer [`fallback_reason`] gave up on, or none in
    /// time): page its histories for `retry_after`.
    pub fn fell_back(&mut self, config: &ReconcileConfig, now: Time) {
        self.paged_until = Some(now + config.retry_after);
    }

    /// A reconciliation completed: the relay speaks NIP-77.
    pub fn reconciled(&mut self) {
        self.paged_until = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(secs: u64) -> Time {
        Time::from_millis(secs * 1000)
    }

    #[test]
    fn errors_closes_and_notices_about_negentropy_fall_back() {
        assert_eq!(fallback_reason(RelayAnswer::Message), None);
        for answer in [
            RelayAnswer::Error("blocked: too many items"),
            RelayAnswer::Closed("error: shutting down"),
            RelayAnswer::Notice("ERROR: bad msg: unknown cmd"),
            RelayAnswer::Notice("unsupported: NEG-OPEN is not supported by this relay"),
            RelayAnswer::Notice("negentropy disabled"),
        ] {
            assert!(fallback_reason(answer).is_some(), "{answer:?}");
        }
        assert_eq!(
            fallback_reason(RelayAnswer::Notice("rate-limited: slow down")),
            None,
            "a notice about something else is not an answer"
        );
        assert_eq!(
            fallback_reason(RelayAnswer::Error("blocked: too many items")).unwrap(),
            "NEG-ERR: blocked: too many items"
        );
    }

    #[test]
    fn a_relay_that_fell_back_is_paged_until_retry_after() {
        let config = ReconcileConfig {
            retry_after: Duration::from_secs(100),
            ..ReconcileConfig::default()
        };
        let mut relay = NegentropySupport::default();
        assert_eq!(relay.method(&config, at(0)), HistoryMethod::Negentropy);
        relay.fell_back(&config, at(10));
        assert_eq!(relay.method(&config, at(10)), HistoryMethod::Paged);
        assert_eq!(relay.method(&config, at(109)), HistoryMethod::Paged);
        assert_eq!(relay.method(&config, at(110)), HistoryMethod::Negentropy);
        relay.fell_back(&config, at(110));
        relay.reconciled();
        assert_eq!(relay.method(&config, at(111)), HistoryMethod::Negentropy);

        let off = ReconcileConfig {
            enabled: false,
            ..config
        };
        assert_eq!(
            NegentropySupport::default().method(&off, at(0)),
            HistoryMethod::Paged
        );
    }

    #[test]
    fn missing_ids_are_batched_within_bounds() {
        let config = ReconcileConfig {
            ids_per_req: 2,
            max_missing: 5,
            ..ReconcileConfig::default()
        };
        assert_eq!(
            fetch_batches(&config, vec![1, 2, 3, 4, 5]),
            Some(vec![vec![1, 2], vec![3, 4], vec![5]])
        );
        assert_eq!(fetch_batches(&config, Vec::<u8>::new()), Some(vec![]));
        assert_eq!(fetch_batches(&config, vec![0; 6]), None, "over max_missing");
        assert_eq!(
            answer_deadline(&config, at(5)),
            at(5) + config.answer_timeout
        );
    }
}
