//! One relay connection's subscriptions, sans-IO: which REQ and CLOSE frames to send, and what
//! the relay's answers mean.
//!
//! Every subscription is opened live at once (`limit: 0`, id `<key>`), so nothing published
//! while history is read is missed; its stored history is then read one subscription at a
//! time (id `<key>-h`), in pages of `page_limit` events walking back with `until`. A
//! subscription whose history was read before with the same filters (an earlier connection to
//! the same relay) only reads back to then, less `overlap`.
//!
//! When the relay reconciles (NIP-77), a history is read by negentropy instead: for each
//! filter our own items are asked for ([`Output::NeedItems`]), reconciled with the relay's
//! under id `<key>-n`, and the events we lack are then fetched by id under `<key>-h`, in
//! bounded batches. A `NEG-ERR`, a `CLOSED`, a NOTICE about it, or no answer in time falls
//! back to the paged REQ (`graspd_core::follow::reconcile` decides), for the rest of the
//! connection.

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use graspd_core::follow::reconcile::{
    answer_deadline, fallback_reason, fetch_batches, HistoryMethod, ReconcileConfig, RelayAnswer,
};
use graspd_core::follow::{Filter, SubKey, Subscription};
use graspd_core::Time;
use negentropy::{Negentropy, NegentropyStorageVector};
use nostr::event::{Event, EventId};

use super::wire::{self, RelayMessage, Window};
use crate::hex;
use crate::relay::negentropy::negentropy_over;

/// Largest negentropy message we send, before hex encoding: a NEG-MSG stays well within
/// the common 128 KiB relay message limit (nostr-sdk uses the same).
const NEGENTROPY_FRAME_BYTES: u64 = 60_000;

/// Bounds on reading one relay's history.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HistoryLimits {
    /// Events asked for per history page (`limit`).
    pub page_limit: usize,
    /// Pages read per subscription before its history is taken as complete.
    pub max_pages: usize,
    /// How far before an earlier complete read a re-read starts (late and backdated events).
    pub overlap_secs: u64,
}

/// How far a subscription's history was read: its filters then, and the unix time (seconds)
/// the read began.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HistoryMark {
    pub filters: Vec<Filter>,
    pub read_from: u64,
}

/// The marks of one relay.
pub type HistoryMarks = BTreeMap<SubKey, HistoryMark>;

impl Default for HistoryLimits {
    fn default() -> HistoryLimits {
        HistoryLimits {
            page_limit: 500,
            max_pages: 200,
            overlap_secs: 3600,
        }
    }
}

/// What the session wants done.
#[derive(Debug)]
pub enum Output {
    /// A text frame for the relay.
    Send(String),
    /// An event the relay sent on one of our subscriptions (not yet verified).
    Deliver(Box<Event>),
    /// The stored history of this subscription has been read (as far as `max_pages` allow).
    HistoryComplete(SubKey, HistoryMark),
    /// Something worth a log line (relay NOTICE, refused subscription, malformed frame).
    Note(String),
    /// Read the `(created_at, id)` of our own served events matching `filter`, at most
    /// `cap`, and hand them to [`ConnectionSession::local_items`].
    NeedItems { filter: Filter, cap: usize },
    /// The relay could not reconcile (the reason): page its histories for a while.
    NegentropyFailed(String),
    /// A reconciliation with the relay completed.
    NegentropyWorked,
}

/// One subscription's history being read by negentropy.
struct Reconciling {
    key: SubKey,
    neg_id: String,
    fetch_id: String,
    filters: Vec<Filter>,
    /// The filter being reconciled.
    next: usize,
    step: Step,
    missing: BTreeSet<EventId>,
    /// Messages sent in the current filter's exchange (its NEG-OPEN included).
    rounds: usize,
    started_at: u64,
    /// The relay must answer by then.
    deadline: Option<Time>,
}

enum Step {
    /// Waiting for our own items of `filters[next]`.
    Items,
    /// NEG-OPEN sent; exchanging NEG-MSGs.
    Exchange(Box<Negentropy<'static, NegentropyStorageVector>>),
    /// A REQ by ids is open; these batches follow.
    Fetch(VecDeque<Vec<EventId>>),
}

impl std::fmt::Debug for Reconciling {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Reconciling")
            .field("key", &self.key)
            .field("next", &self.next)
            .field("missing", &self.missing.len())
            .finish_non_exhaustive()
    }
}

fn negentropy_id(key: SubKey) -> String {
    format!("{key}-n")
}

fn history_id(key: SubKey) -> String {
    format!("{key}-h")
}

#[derive(Debug)]
struct History {
    key: SubKey,
    id: String,
    filters: Vec<Filter>,
    since: Option<u64>,
    started_at: u64,
    until: Option<u64>,
    oldest: Option<u64>,
    received: usize,
    pages: usize,
}

/// The subscriptions of one connection.
#[derive(Debug)]
pub struct ConnectionSession {
    live: BTreeMap<SubKey, (String, Vec<Filter>)>,
    waiting_history: VecDeque<SubKey>,
    history: Option<History>,
    reconciling: Option<Reconciling>,
    limits: HistoryLimits,
    reconcile: ReconcileConfig,
    method: HistoryMethod,
    marks: HistoryMarks,
    now_unix: u64,
    now: Time,
    out: VecDeque<Output>,
}

impl ConnectionSession {
    /// A session opening `subscriptions` whose histories are paged, knowing how far this
    /// relay was read before.
    #[cfg(test)]
    pub fn new(
        subscriptions: Vec<Subscription>,
        limits: HistoryLimits,
        marks: HistoryMarks,
        now_unix: u64,
    ) -> ConnectionSession {
        let disabled = ReconcileConfig {
            enabled: false,
            ..ReconcileConfig::default()
        };
        ConnectionSession::reconciling(
            subscriptions,
            limits,
            marks,
            (disabled, HistoryMethod::Paged),
            (Time::ZERO, now_unix),
        )
    }

    /// A session reading histories by `method` (negentropy when the relay is not known to
    /// lack it) within `reconcile`'s bounds; `now` is the monotonic and the unix time.
    pub fn reconciling(
        subscriptions: Vec<Subscription>,
        limits: HistoryLimits,
        marks: HistoryMarks,
        (reconcile, method): (ReconcileConfig, HistoryMethod),
        (now, now_unix): (Time, u64),
    ) -> ConnectionSession {
        let mut session = ConnectionSession {
            live: BTreeMap::new(),
            waiting_history: VecDeque::new(),
            history: None,
            reconciling: None,
            limits,
            reconcile,
            method,
            marks,
            now_unix,
            now,
            out: VecDeque::new(),
        };
        session.update(subscriptions, Vec::new());
        session
    }

    /// The wall clock (unix seconds) for the marks of histories started from now on.
    pub fn set_now(&mut self, now_unix: u64) {
        self.now_unix = now_unix;
    }

    /// The monotonic clock, for reconciliation deadlines.
    pub fn set_time(&mut self, now: Time) {
        self.now = now;
    }

    /// When the relay's answer to a reconciliation is due, if one is awaited.
    pub fn poll_timeout(&self) -> Option<Time> {
        self.reconciling.as_ref().and_then(|r| r.deadline)
    }

    /// A reconciliation whose answer is overdue at `now` falls back to the paged REQ.
    pub fn handle_timeout(&mut self, now: Time) {
        self.now = now;
        if self.poll_timeout().is_some_and(|deadline| now >= deadline) {
            self.fall_back("no answer in time".into(), true);
        }
    }

    /// Our own items for the filter of the last [`Output::NeedItems`], or why they could not
    /// be read.
    pub fn local_items(&mut self, items: Result<Vec<(u64, EventId)>, String>) {
        let Some(r) = self.reconciling.as_mut() else {
            return;
        };
        if !matches!(r.step, Step::Items) {
            return;
        }
        let items = match items {
            Ok(items) if items.len() <= self.reconcile.max_items => items,
            Ok(items) => {
                let reason = format!("{} events here match the filter", items.len());
                return self.fall_back(reason, false);
            }
            Err(error) => return self.fall_back(format!("our store: {error}"), false),
        };
        let opened = negentropy_over(&items, NEGENTROPY_FRAME_BYTES).and_then(|mut negentropy| {
            let initial = negentropy.initiate()?;
            Ok((negentropy, initial))
        });
        match opened {
            Ok((negentropy, initial)) => {
                let frame = wire::neg_open(
                    &negentropy_id(r.key),
                    &r.filters[r.next],
                    &hex::encode(&initial),
                );
                r.step = Step::Exchange(Box::new(negentropy));
                r.rounds = 1;
                r.deadline = Some(answer_deadline(&self.reconcile, self.now));
                self.out.push_back(Output::Send(frame));
            }
            Err(error) => self.fall_back(format!("negentropy: {error}"), false),
        }
    }

    pub fn poll_output(&mut self) -> Option<Output> {
        self.out.pop_front()
    }

    /// Opens (or replaces) `open` and closes `close`.
    pub fn update(&mut self, open: Vec<Subscription>, close: Vec<SubKey>) {
        for key in close {
            self.stop_history_of(key);
            if let Some((id, _)) = self.live.remove(&key) {
                self.out.push_back(Output::Send(wire::close(&id)));
            }
        }
        for sub in open {
            self.stop_history_of(sub.key);
            let id = sub.key.to_string();
            if self.live.contains_key(&sub.key) {
                self.out.push_back(Output::Send(wire::close(&id)));
            }
            let live = Window {
                limit: Some(0),
                ..Window::default()
            };
            self.out
                .push_back(Output::Send(wire::req(&id, &sub.filters, live)));
            self.live.insert(sub.key, (id, sub.filters));
            self.waiting_history.push_back(sub.key);
        }
        self.start_next_history();
    }

    pub fn handle_text(&mut self, text: &str) {
        let message = match wire::parse(text) {
            Ok(m) => m,
            Err(e) => {
                self.out
                    .push_back(Output::Note(format!("malformed frame: {}", e.0)));
                return;
            }
        };
        match message {
            RelayMessage::Event { sub_id, event } => {
                let created_at = event.created_at.as_secs();
                if let Some(h) = self.history.as_mut().filter(|h| h.id == sub_id) {
                    h.received += 1;
                    h.oldest = Some(h.oldest.map_or(created_at, |o| o.min(created_at)));
                } else if self.fetching_id() == Some(sub_id.as_str()) {
                    // A missing event, fetched by id.
                } else if !self.live.values().any(|(id, _)| *id == sub_id) {
                    return; // a subscription we closed, or never opened
                }
                self.out.push_back(Output::Deliver(event));
            }
            RelayMessage::Eose { sub_id } => {
                if self.history.as_ref().is_some_and(|h| h.id == sub_id) {
                    self.page_done();
                } else if self.fetching_id() == Some(sub_id.as_str()) {
                    self.fetch_next();
                }
            }
            RelayMessage::NegMsg { sub_id, message } => {
                if self.exchanging_id() == Some(sub_id.as_str()) {
                    self.negentropy_message(&message);
                }
            }
            RelayMessage::NegErr { sub_id, message } => {
                if self.exchanging_id() == Some(sub_id.as_str()) {
                    self.relay_answered(RelayAnswer::Error(&message));
                }
            }
            RelayMessage::Closed { sub_id, message } => {
                self.out.push_back(Output::Note(format!(
                    "relay closed subscription {sub_id}: {message}"
                )));
                if self.exchanging_id() == Some(sub_id.as_str()) {
                    self.relay_answered(RelayAnswer::Closed(&message));
                } else if self.fetching_id() == Some(sub_id.as_str()) {
                    // The missing events cannot be had here now; the history is as read.
                    self.reconcile_done();
                } else if self.history.as_ref().is_some_and(|h| h.id == sub_id) {
                    self.history = None;
                    self.start_next_history();
                } else {
                    self.live.retain(|_, (id, _)| *id != sub_id);
                }
            }
            RelayMessage::Notice { message } => {
                self.out
                    .push_back(Output::Note(format!("relay notice: {message}")));
                if self.exchanging_id().is_some() {
                    self.relay_answered(RelayAnswer::Notice(&message));
                }
            }
            RelayMessage::Other => {}
        }
    }

    /// Subscriptions open live, and whether history is still being read.
    #[cfg(test)]
    pub fn open_count(&self) -> usize {
        self.live.len()
    }

    #[cfg(test)]
    pub fn reading_history(&self) -> bool {
        self.history.is_some() || self.reconciling.is_some() || !self.waiting_history.is_empty()
    }

    /// The id of the open NEG-OPEN, while one is.
    fn exchanging_id(&self) -> Option<&str> {
        let r = self.reconciling.as_ref()?;
        matches!(r.step, Step::Exchange(_)).then_some(r.neg_id.as_str())
    }

    /// The id of the open REQ by ids, while one is.
    fn fetching_id(&self) -> Option<&str> {
        let r = self.reconciling.as_ref()?;
        matches!(r.step, Step::Fetch(_)).then_some(r.fetch_id.as_str())
    }

    /// A history by negentropy: our items of the first filter are asked for.
    fn start_reconciling(&mut self, key: SubKey, filters: Vec<Filter>) {
        self.out.push_back(Output::NeedItems {
            filter: filters[0].clone(),
            cap: self.reconcile.max_items.saturating_add(1),
        });
        self.reconciling = Some(Reconciling {
            key,
            neg_id: negentropy_id(key),
            fetch_id: history_id(key),
            filters,
            next: 0,
            step: Step::Items,
            missing: BTreeSet::new(),
            rounds: 0,
            started_at: self.now_unix,
            deadline: None,
        });
    }

    /// The relay said something that may end the reconciliation.
    fn relay_answered(&mut self, answer: RelayAnswer<'_>) {
        if let Some(reason) = fallback_reason(answer) {
            self.fall_back(reason, true);
        }
    }

    /// One NEG-MSG from the relay: answer it, or, once the filter is reconciled, go on with
    /// the next filter or fetch what we lack.
    fn negentropy_message(&mut self, hex_message: &str) {
        let Some(r) = self.reconciling.as_mut() else {
            return;
        };
        let Step::Exchange(negentropy) = &mut r.step else {
            return;
        };
        let Some(message) = hex::decode(hex_message) else {
            return self.fall_back("the relay's NEG-MSG is not hex".into(), true);
        };
        let (mut have, mut need) = (Vec::new(), Vec::new());
        let next = match negentropy.reconcile_with_ids(&message, &mut have, &mut need) {
            Ok(next) => next,
            Err(error) => return self.fall_back(format!("negentropy: {error}"), true),
        };
        r.missing.extend(
            need.into_iter()
                .map(|id| EventId::from_byte_array(id.to_bytes())),
        );
        if r.missing.len() > self.reconcile.max_missing {
            return self.fall_back("too many events missing to fetch by id".into(), false);
        }
        if let Some(next) = next {
            if r.rounds >= self.reconcile.max_rounds {
                let reason = format!("no agreement after {} messages", r.rounds);
                return self.fall_back(reason, true);
            }
            r.rounds += 1;
            self.out
                .push_back(Output::Send(wire::neg_msg(&r.neg_id, &hex::encode(&next))));
            r.deadline = Some(answer_deadline(&self.reconcile, self.now));
            return;
        }
        self.out.push_back(Output::Send(wire::neg_close(&r.neg_id)));
        r.deadline = None;
        r.next += 1;
        if r.next < r.filters.len() {
            r.step = Step::Items;
            self.out.push_back(Output::NeedItems {
                filter: r.filters[r.next].clone(),
                cap: self.reconcile.max_items.saturating_add(1),
            });
            return;
        }
        let missing = std::mem::take(&mut r.missing).into_iter().collect();
        let Some(batches) = fetch_batches(&self.reconcile, missing) else {
            return self.fall_back("too many events missing to fetch by id".into(), false);
        };
        self.out.push_back(Output::NegentropyWorked);
        r.step = Step::Fetch(batches.into());
        self.fetch_next();
    }

    /// Asks for the next batch of missing events, or completes the history.
    fn fetch_next(&mut self) {
        let Some(r) = self.reconciling.as_mut() else {
            return;
        };
        let Step::Fetch(batches) = &mut r.step else {
            return;
        };
        match batches.pop_front() {
            Some(batch) => self
                .out
                .push_back(Output::Send(wire::req_ids(&r.fetch_id, &batch))),
            None => self.reconcile_done(),
        }
    }

    /// The history read by negentropy is complete.
    fn reconcile_done(&mut self) {
        let Some(r) = self.reconciling.take() else {
            return;
        };
        if matches!(r.step, Step::Fetch(_)) {
            self.out.push_back(Output::Send(wire::close(&r.fetch_id)));
        }
        let mark = HistoryMark {
            filters: r.filters,
            read_from: r.started_at,
        };
        self.marks.insert(r.key, mark.clone());
        self.out.push_back(Output::HistoryComplete(r.key, mark));
        self.start_next_history();
    }

    /// Gives the reconciliation up and pages its history instead; when `relay_failed`, for
    /// the rest of the connection (and the host remembers it for the relay).
    fn fall_back(&mut self, reason: String, relay_failed: bool) {
        let Some(r) = self.reconciling.take() else {
            return;
        };
        match r.step {
            Step::Exchange(_) => self.out.push_back(Output::Send(wire::neg_close(&r.neg_id))),
            Step::Fetch(_) => self.out.push_back(Output::Send(wire::close(&r.fetch_id))),
            Step::Items => {}
        }
        self.out.push_back(Output::Note(format!(
            "history of {} by negentropy given up ({reason}); paging it",
            r.key
        )));
        if relay_failed {
            self.method = HistoryMethod::Paged;
            self.out.push_back(Output::NegentropyFailed(reason));
        }
        self.start_paged(r.key, r.filters);
    }

    fn page_done(&mut self) {
        let limits = self.limits;
        let Some(h) = self.history.as_mut() else {
            return;
        };
        h.pages += 1;
        let full = h.received >= limits.page_limit;
        if full && h.pages < limits.max_pages {
            // Walk back: `until` is inclusive, so events of the oldest second come again
            // (duplicates are cheap); if a whole page shares one second, step past it.
            let oldest = h.oldest.unwrap_or(0);
            let next = match h.until {
                Some(until) if oldest >= until => until.saturating_sub(1),
                _ => oldest,
            };
            h.until = Some(next);
            h.received = 0;
            h.oldest = None;
            let window = Window {
                since: h.since,
                until: Some(next),
                limit: Some(limits.page_limit),
            };
            self.out
                .push_back(Output::Send(wire::req(&h.id, &h.filters, window)));
            return;
        }
        if full {
            self.out.push_back(Output::Note(format!(
                "history of {} stopped after {} pages",
                h.key, h.pages
            )));
        }
        let h = self.history.take().expect("checked above");
        let mark = HistoryMark {
            filters: h.filters,
            read_from: h.started_at,
        };
        self.marks.insert(h.key, mark.clone());
        self.out.push_back(Output::Send(wire::close(&h.id)));
        self.out.push_back(Output::HistoryComplete(h.key, mark));
        self.start_next_history();
    }

    fn stop_history_of(&mut self, key: SubKey) {
        self.waiting_history.retain(|k| *k != key);
        if self.history.as_ref().is_some_and(|h| h.key == key) {
            let h = self.history.take().expect("checked");
            self.out.push_back(Output::Send(wire::close(&h.id)));
        }
        if self.reconciling.as_ref().is_some_and(|r| r.key == key) {
            let r = self.reconciling.take().expect("checked");
            match r.step {
                Step::Exchange(_) => self.out.push_back(Output::Send(wire::neg_close(&r.neg_id))),
                Step::Fetch(_) => self.out.push_back(Output::Send(wire::close(&r.fetch_id))),
                Step::Items => {}
            }
        }
    }

    fn start_next_history(&mut self) {
        if self.history.is_some() || self.reconciling.is_some() {
            return;
        }
        while let Some(key) = self.waiting_history.pop_front() {
            let Some((_, filters)) = self.live.get(&key) else {
                continue;
            };
            let filters = filters.clone();
            match self.method {
                HistoryMethod::Negentropy if !filters.is_empty() => {
                    self.start_reconciling(key, filters)
                }
                _ => self.start_paged(key, filters),
            }
            return;
        }
    }

    /// Reads a history in pages walking back with `until`, from the mark of an earlier
    /// complete read with the same filters (less the overlap), if any.
    fn start_paged(&mut self, key: SubKey, filters: Vec<Filter>) {
        let id = history_id(key);
        let since = self
            .marks
            .get(&key)
            .filter(|m| m.filters == filters)
            .map(|m| m.read_from.saturating_sub(self.limits.overlap_secs));
        let window = Window {
            since,
            until: None,
            limit: Some(self.limits.page_limit),
        };
        self.out
            .push_back(Output::Send(wire::req(&id, &filters, window)));
        self.history = Some(History {
            key,
            id,
            filters,
            since,
            started_at: self.now_unix,
            until: None,
            oldest: None,
            received: 0,
            pages: 0,
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use graspd_core::follow::TagFilter;
    use nostr::event::Kind;
    use nostr::key::{Keys, SecretKey};
    use nostr::types::Timestamp;

    fn sub(key: SubKey, value: &str) -> Subscription {
        Subscription {
            key,
            filters: vec![Filter {
                kinds: vec![30617],
                tag: Some(TagFilter {
                    letter: 'd',
                    values: vec![value.into()],
                }),
            }],
        }
    }

    fn event_json(sub_id: &str, created_at: u64) -> String {
        use nostr::event::{EventBuilder, FinalizeEvent};
        let keys = Keys::new(SecretKey::from_slice(&[3; 32]).unwrap());
        let event = EventBuilder::new(Kind::from_u16(1), "")
            .custom_created_at(Timestamp::from_secs(created_at))
            .finalize(&keys)
            .unwrap();
        serde_json::json!(["EVENT", sub_id, event]).to_string()
    }

    fn drain(s: &mut ConnectionSession) -> Vec<String> {
        std::iter::from_fn(|| s.poll_output())
            .map(|o| match o {
                Output::Send(text) => text,
                Output::Deliver(e) => format!("deliver@{}", e.created_at.as_secs()),
                Output::HistoryComplete(k, _) => format!("complete {k}"),
                Output::Note(n) => format!("note {n}"),
                Output::NeedItems { .. } => "need items".into(),
                Output::NegentropyFailed(reason) => format!("failed {reason}"),
                Output::NegentropyWorked => "worked".into(),
            })
            .collect()
    }

    #[test]
    fn live_first_then_paged_history_one_subscription_at_a_time() {
        let limits = HistoryLimits {
            page_limit: 2,
            max_pages: 10,
            ..HistoryLimits::default()
        };
        let mut s = ConnectionSession::new(
            vec![sub(SubKey::Repos(0), "a"), sub(SubKey::Repos(1), "b")],
            limits,
            HistoryMarks::new(),
            5_000,
        );
        assert_eq!(
            drain(&mut s),
            [
                r##"["REQ","graspd-repos-0",{"#d":["a"],"kinds":[30617],"limit":0}]"##,
                r##"["REQ","graspd-repos-1",{"#d":["b"],"kinds":[30617],"limit":0}]"##,
                r##"["REQ","graspd-repos-0-h",{"#d":["a"],"kinds":[30617],"limit":2}]"##,
            ]
        );
        s.handle_text(&event_json("graspd-repos-0-h", 50));
        s.handle_text(&event_json("graspd-repos-0-h", 40));
        s.handle_text(r#"["EOSE","graspd-repos-0-h"]"#);
        assert_eq!(
            drain(&mut s),
            [
                "deliver@50",
                "deliver@40",
                r##"["REQ","graspd-repos-0-h",{"#d":["a"],"kinds":[30617],"limit":2,"until":40}]"##,
            ]
        );
        // A page of events all at `until`: step past that second.
        s.handle_text(&event_json("graspd-repos-0-h", 40));
        s.handle_text(&event_json("graspd-repos-0-h", 40));
        s.handle_text(r#"["EOSE","graspd-repos-0-h"]"#);
        assert!(drain(&mut s).last().unwrap().contains(r#""until":39"#));
        // A short page ends the history; the next subscription's history starts.
        s.handle_text(&event_json("graspd-repos-0-h", 30));
        s.handle_text(r#"["EOSE","graspd-repos-0-h"]"#);
        assert_eq!(
            drain(&mut s),
            [
                "deliver@30",
                r#"["CLOSE","graspd-repos-0-h"]"#,
                "complete graspd-repos-0",
                r##"["REQ","graspd-repos-1-h",{"#d":["b"],"kinds":[30617],"limit":2}]"##,
            ]
        );
        // Live events are delivered; events on unknown subscriptions are not.
        s.handle_text(&event_json("graspd-repos-0", 60));
        s.handle_text(&event_json("someone-else", 60));
        assert_eq!(drain(&mut s), ["deliver@60"]);
    }

    #[test]
    fn replacing_and_closing_subscriptions() {
        let mut s = ConnectionSession::new(
            vec![sub(SubKey::Repos(0), "a")],
            HistoryLimits::default(),
            HistoryMarks::new(),
            5_000,
        );
        drain(&mut s);
        s.update(vec![sub(SubKey::Repos(0), "a2")], vec![]);
        assert_eq!(
            drain(&mut s),
            [
                r#"["CLOSE","graspd-repos-0-h"]"#,
                r#"["CLOSE","graspd-repos-0"]"#,
                r##"["REQ","graspd-repos-0",{"#d":["a2"],"kinds":[30617],"limit":0}]"##,
                r##"["REQ","graspd-repos-0-h",{"#d":["a2"],"kinds":[30617],"limit":500}]"##,
            ]
        );
        s.update(vec![], vec![SubKey::Repos(0)]);
        assert_eq!(
            drain(&mut s),
            [
                r#"["CLOSE","graspd-repos-0-h"]"#,
                r#"["CLOSE","graspd-repos-0"]"#
            ]
        );
        assert_eq!(s.open_count(), 0);
        assert!(!s.reading_history());
    }

    #[test]
    fn history_is_bounded_in_pages_and_a_refused_history_moves_on() {
        let limits = HistoryLimits {
            page_limit: 1,
            max_pages: 2,
            ..HistoryLimits::default()
        };
        let mut s = ConnectionSession::new(
            vec![sub(SubKey::Repos(0), "a"), sub(SubKey::Repos(1), "b")],
            limits,
            HistoryMarks::new(),
            5_000,
        );
        drain(&mut s);
        for t in [10, 9] {
            s.handle_text(&event_json("graspd-repos-0-h", t));
            s.handle_text(r#"["EOSE","graspd-repos-0-h"]"#);
        }
        let out = drain(&mut s);
        assert!(out
            .iter()
            .any(|o| o == "note history of graspd-repos-0 stopped after 2 pages"));
        assert!(out.iter().any(|o| o == "complete graspd-repos-0"));
        s.handle_text(r#"["CLOSED","graspd-repos-1-h","rate-limited: slow down"]"#);
        assert_eq!(
            drain(&mut s),
            ["note relay closed subscription graspd-repos-1-h: rate-limited: slow down"]
        );
        assert!(!s.reading_history());
        s.handle_text("not json");
        assert_eq!(drain(&mut s).len(), 1);
    }

    #[test]
    fn a_relay_read_before_is_read_again_only_from_then() {
        let limits = HistoryLimits {
            overlap_secs: 100,
            ..HistoryLimits::default()
        };
        let mut first = ConnectionSession::new(
            vec![sub(SubKey::Repos(0), "a")],
            limits,
            HistoryMarks::new(),
            5_000,
        );
        first.handle_text(r#"["EOSE","graspd-repos-0-h"]"#);
        let mut marks = HistoryMarks::new();
        while let Some(output) = first.poll_output() {
            if let Output::HistoryComplete(key, mark) = output {
                assert_eq!(mark.read_from, 5_000);
                marks.insert(key, mark);
            }
        }
        // Same filters: from the mark less the overlap. Changed filters: everything again.
        let mut again = ConnectionSession::new(
            vec![sub(SubKey::Repos(0), "a"), sub(SubKey::Repos(1), "b")],
            limits,
            marks.clone(),
            9_000,
        );
        assert!(drain(&mut again)[2].contains(r#""since":4900"#));
        let mut changed =
            ConnectionSession::new(vec![sub(SubKey::Repos(0), "a2")], limits, marks, 9_000);
        assert!(!drain(&mut changed)[1].contains("since"));
    }

    /// A relay's side of NIP-77 over `items`, answering the session's frames.
    struct NegRelay(Negentropy<'static, NegentropyStorageVector>);

    impl NegRelay {
        fn new(items: &[(u64, EventId)]) -> NegRelay {
            NegRelay(negentropy_over(items, 0).unwrap())
        }

        /// The NEG-MSG answering a NEG-OPEN or NEG-MSG frame of ours.
        fn answer(&mut self, frame: &str) -> String {
            let value: serde_json::Value = serde_json::from_str(frame).unwrap();
            let at = if value[0] == "NEG-OPEN" { 3 } else { 2 };
            let message = hex::decode(value[at].as_str().unwrap()).unwrap();
            let reply = self.0.reconcile(&message).unwrap();
            serde_json::json!(["NEG-MSG", value[1], hex::encode(&reply)]).to_string()
        }
    }

    fn reconciling_session(key: SubKey) -> ConnectionSession {
        ConnectionSession::reconciling(
            vec![sub(key, "a")],
            HistoryLimits::default(),
            HistoryMarks::new(),
            (
                ReconcileConfig {
                    ids_per_req: 2,
                    ..ReconcileConfig::default()
                },
                HistoryMethod::Negentropy,
            ),
            (Time::from_millis(1_000), 5_000),
        )
    }

    fn outputs(s: &mut ConnectionSession) -> Vec<Output> {
        std::iter::from_fn(|| s.poll_output()).collect()
    }

    fn id(n: u8) -> EventId {
        EventId::from_byte_array([n; 32])
    }

    #[test]
    fn history_by_negentropy_fetches_only_what_we_lack() {
        let mut s = reconciling_session(SubKey::Repos(0));
        let out = outputs(&mut s);
        assert!(matches!(&out[0], Output::Send(t) if t.contains(r#""limit":0"#)));
        assert!(
            matches!(&out[1], Output::NeedItems { filter, cap } if filter.kinds == [30617] && *cap == 100_001),
            "{out:?}"
        );
        let shared = [(10, id(1)), (11, id(2))];
        let mut relay =
            NegRelay::new(&[shared[0], shared[1], (12, id(3)), (13, id(4)), (14, id(5))]);
        s.local_items(Ok(vec![shared[0], shared[1], (9, id(9))]));
        let mut frame = match outputs(&mut s).pop() {
            Some(Output::Send(open)) => open,
            other => panic!("{other:?}"),
        };
        assert!(
            frame.starts_with(r##"["NEG-OPEN","graspd-repos-0-n",{"#d":["a"],"kinds":[30617]}"##),
            "{frame}"
        );
        assert_eq!(s.poll_timeout(), Some(Time::from_millis(11_000)));
        let mut sent = Vec::new();
        for _ in 0..10 {
            s.handle_text(&relay.answer(&frame));
            sent = drain(&mut s);
            match sent.first() {
                Some(next) if next.starts_with(r#"["NEG-MSG""#) => frame = next.clone(),
                _ => break,
            }
        }
        let hex = |n: u8| id(n).to_hex();
        assert_eq!(
            sent,
            [
                r#"["NEG-CLOSE","graspd-repos-0-n"]"#.to_owned(),
                "worked".to_owned(),
                format!(
                    r#"["REQ","graspd-repos-0-h",{{"ids":["{}","{}"]}}]"#,
                    hex(3),
                    hex(4)
                ),
            ],
            "the ids we lack, in batches of 2 (what only we have is not sent)"
        );
        assert_eq!(s.poll_timeout(), None);
        s.handle_text(r#"["EOSE","graspd-repos-0-h"]"#);
        assert_eq!(
            drain(&mut s),
            [format!(
                r#"["REQ","graspd-repos-0-h",{{"ids":["{}"]}}]"#,
                hex(5)
            )]
        );
        s.handle_text(&event_json("graspd-repos-0-h", 14));
        s.handle_text(r#"["EOSE","graspd-repos-0-h"]"#);
        assert_eq!(
            drain(&mut s),
            [
                "deliver@14".to_owned(),
                r#"["CLOSE","graspd-repos-0-h"]"#.to_owned(),
                "complete graspd-repos-0".to_owned()
            ]
        );
        assert!(!s.reading_history());
    }

    /// NEG-ERR, a NOTICE about negentropy and silence each fall back to the paged REQ of the
    /// same subscription, and the next history of the connection is paged at once.
    #[test]
    fn a_relay_that_cannot_reconcile_is_paged() {
        for answer in [
            Some(r#"["NEG-ERR","graspd-repos-0-n","blocked: negentropy is turned off"]"#),
            Some(r#"["NOTICE","ERROR: bad msg: unknown cmd"]"#),
            Some(r#"["CLOSED","graspd-repos-0-n","error: no"]"#),
            None,
        ] {
            let mut s = ConnectionSession::reconciling(
                vec![sub(SubKey::Repos(0), "a"), sub(SubKey::Repos(1), "b")],
                HistoryLimits::default(),
                HistoryMarks::new(),
                (ReconcileConfig::default(), HistoryMethod::Negentropy),
                (Time::from_millis(1_000), 5_000),
            );
            outputs(&mut s);
            s.local_items(Ok(Vec::new()));
            outputs(&mut s);
            // An unrelated notice is not an answer.
            s.handle_text(r#"["NOTICE","rate-limited: slow down"]"#);
            assert_eq!(
                drain(&mut s),
                ["note relay notice: rate-limited: slow down"]
            );
            match answer {
                Some(text) => s.handle_text(text),
                None => {
                    s.handle_timeout(Time::from_millis(10_999));
                    assert!(drain(&mut s).is_empty(), "not yet due");
                    s.handle_timeout(Time::from_millis(11_000));
                }
            }
            let out = outputs(&mut s);
            assert!(
                out.iter().any(|o| matches!(o, Output::NegentropyFailed(_))),
                "{answer:?}: {out:?}"
            );
            assert!(
                matches!(out.last(), Some(Output::Send(t)) if t == r##"["REQ","graspd-repos-0-h",{"#d":["a"],"kinds":[30617],"limit":500}]"##),
                "{answer:?}: {out:?}"
            );
            s.handle_text(r#"["EOSE","graspd-repos-0-h"]"#);
            let next = drain(&mut s);
            assert_eq!(
                next.last().unwrap(),
                r##"["REQ","graspd-repos-1-h",{"#d":["b"],"kinds":[30617],"limit":500}]"##,
                "no second NEG-OPEN on this connection"
            );
        }
    }

    /// Our own store failing, or holding more than `max_items`, pages that history without
    /// blaming the relay.
    #[test]
    fn too_many_items_of_ours_pages_without_blaming_the_relay() {
        let mut s = reconciling_session(SubKey::Repos(0));
        outputs(&mut s);
        s.local_items(Err("disk on fire".into()));
        let out = outputs(&mut s);
        assert!(
            !out.iter().any(|o| matches!(o, Output::NegentropyFailed(_))),
            "{out:?}"
        );
        assert!(matches!(out.last(), Some(Output::Send(t)) if t.contains(r#""limit":500"#)));
    }

    /// A relay that answers every message with the whole range to split again (a wrong
    /// fingerprint) is given up after `max_rounds` messages, and one naming more missing
    /// events than `max_missing` as soon as it does.
    #[test]
    fn a_relay_that_never_agrees_or_names_too_many_ids_is_given_up() {
        let mut s = reconciling_session(SubKey::Repos(0));
        outputs(&mut s);
        s.local_items(Ok(vec![(10, id(1))]));
        outputs(&mut s);
        let mut sent = 1;
        // Version 1, one range to infinity (timestamp 0, empty id), fingerprint mode.
        let mut lie = vec![0x61, 0, 0, 1];
        lie.extend([0xab; 16]);
        let lie = serde_json::json!(["NEG-MSG", "graspd-repos-0-n", hex::encode(&lie)]);
        let failed = loop {
            s.handle_text(&lie.to_string());
            let out = outputs(&mut s);
            if let Some(reason) = out.iter().find_map(|o| match o {
                Output::NegentropyFailed(reason) => Some(reason.clone()),
                _ => None,
            }) {
                break reason;
            }
            assert!(
                matches!(&out[..], [Output::Send(t)] if t.starts_with(r#"["NEG-MSG""#)),
                "{out:?}"
            );
            sent += 1;
            assert!(
                sent <= ReconcileConfig::default().max_rounds,
                "never given up"
            );
        };
        assert_eq!(sent, ReconcileConfig::default().max_rounds);
        assert_eq!(failed, "no agreement after 200 messages");

        let mut s = ConnectionSession::reconciling(
            vec![sub(SubKey::Repos(0), "a")],
            HistoryLimits::default(),
            HistoryMarks::new(),
            (
                ReconcileConfig {
                    max_missing: 3,
                    ..ReconcileConfig::default()
                },
                HistoryMethod::Negentropy,
            ),
            (Time::from_millis(1_000), 5_000),
        );
        outputs(&mut s);
        s.local_items(Ok(vec![]));
        let frame = match outputs(&mut s).pop() {
            Some(Output::Send(open)) => open,
            other => panic!("{other:?}"),
        };
        let many: Vec<(u64, EventId)> = (1..=4).map(|n| (n.into(), id(n))).collect();
        s.handle_text(&NegRelay::new(&many).answer(&frame));
        let out = drain(&mut s);
        assert!(
            out.iter().any(|o| o.contains("too many events missing")),
            "{out:?}"
        );
        assert!(out.last().unwrap().contains(r#""limit":500"#), "{out:?}");
    }
}
