//! One relay connection's subscriptions, sans-IO: which REQ and CLOSE frames to send, and what
//! the relay's answers mean.
//!
//! Every subscription is opened live at once (`limit: 0`, id `<key>`), so nothing published
//! while history is read is missed; its stored history is then read one subscription at a
//! time (id `<key>-h`), in pages of `page_limit` events walking back with `until`. A
//! subscription whose history was read before with the same filters (an earlier connection to
//! the same relay) only reads back to then, less `overlap`.

use std::collections::{BTreeMap, VecDeque};

use graspd_core::follow::{Filter, SubKey, Subscription};
use nostr::event::Event;

use super::wire::{self, RelayMessage, Window};

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
    limits: HistoryLimits,
    marks: HistoryMarks,
    now_unix: u64,
    out: VecDeque<Output>,
}

impl ConnectionSession {
    /// A session opening `subscriptions`, knowing how far this relay was read before.
    pub fn new(
        subscriptions: Vec<Subscription>,
        limits: HistoryLimits,
        marks: HistoryMarks,
        now_unix: u64,
    ) -> ConnectionSession {
        let mut session = ConnectionSession {
            live: BTreeMap::new(),
            waiting_history: VecDeque::new(),
            history: None,
            limits,
            marks,
            now_unix,
            out: VecDeque::new(),
        };
        session.update(subscriptions, Vec::new());
        session
    }

    /// The wall clock (unix seconds) for the marks of histories started from now on.
    pub fn set_now(&mut self, now_unix: u64) {
        self.now_unix = now_unix;
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
                } else if !self.live.values().any(|(id, _)| *id == sub_id) {
                    return; // a subscription we closed, or never opened
                }
                self.out.push_back(Output::Deliver(event));
            }
            RelayMessage::Eose { sub_id } => {
                if self.history.as_ref().is_some_and(|h| h.id == sub_id) {
                    self.page_done();
                }
            }
            RelayMessage::Closed { sub_id, message } => {
                self.out.push_back(Output::Note(format!(
                    "relay closed subscription {sub_id}: {message}"
                )));
                if self.history.as_ref().is_some_and(|h| h.id == sub_id) {
                    self.history = None;
                    self.start_next_history();
                } else {
                    self.live.retain(|_, (id, _)| *id != sub_id);
                }
            }
            RelayMessage::Notice { message } => {
                self.out
                    .push_back(Output::Note(format!("relay notice: {message}")));
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
        self.history.is_some() || !self.waiting_history.is_empty()
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
    }

    fn start_next_history(&mut self) {
        if self.history.is_some() {
            return;
        }
        while let Some(key) = self.waiting_history.pop_front() {
            let Some((_, filters)) = self.live.get(&key) else {
                continue;
            };
            let id = format!("{key}-h");
            let since = self
                .marks
                .get(&key)
                .filter(|m| m.filters == *filters)
                .map(|m| m.read_from.saturating_sub(self.limits.overlap_secs));
            let window = Window {
                since,
                until: None,
                limit: Some(self.limits.page_limit),
            };
            self.out
                .push_back(Output::Send(wire::req(&id, filters, window)));
            self.history = Some(History {
                key,
                id,
                filters: filters.clone(),
                since,
                started_at: self.now_unix,
                until: None,
                oldest: None,
                received: 0,
                pages: 0,
            });
            return;
        }
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
}
