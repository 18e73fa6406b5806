//! One WebSocket connection's NIP-01 state, sans-IO.

use std::collections::BTreeMap;

use nostr::prelude::{Event, EventId, Filter, MatchEventOptions};
use serde_json::Value;

use super::hub::{Hub, LiveFeed, Membership};
use super::negentropy::{ReconcileOpen, Reconciliations, Reply};
use super::{messages, RelayLimits};
use crate::refusals::Limit;

/// Correlates a [`Query`] with its results (a REQ may be replaced or closed while its stored
/// events are being read).
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Debug)]
pub struct QueryId(pub u64);

/// An EVENT's event before anything about it is checked, but the id it claims.
#[derive(Debug, PartialEq, Eq)]
pub struct Unverified {
    raw: Value,
    claimed_id: Option<EventId>,
}

impl Unverified {
    /// The answer to an EVENT refused before it was verified: `OK false` for the id it claims
    /// (a NOTICE when it claims none).
    pub fn refusal(&self, reason: &str) -> String {
        match &self.claimed_id {
            Some(id) => messages::ok(id, false, reason),
            None => messages::notice(reason),
        }
    }

    /// Checks an admitted EVENT: well-formed, its id the hash of its content, its signature
    /// its author's. The event if so, to decide (engine, store) and then answer with
    /// [`Verdict::message`]; else the `OK false` (or NOTICE) frame to send.
    pub fn verify(self) -> Result<Box<Event>, String> {
        let Unverified { raw, claimed_id } = self;
        let event: Event = match serde_json::from_value(raw) {
            Ok(event) => event,
            Err(error) => {
                let reason = format!(
                    "invalid: malformed event: {}",
                    truncate(&error.to_string(), 120)
                );
                return Err(match claimed_id {
                    Some(id) => messages::ok(&id, false, &reason),
                    None => messages::notice(&reason),
                });
            }
        };
        if !event.verify_id() {
            return Err(messages::ok(&event.id, false, "invalid: bad event id"));
        }
        if !event.verify_signature() {
            return Err(messages::ok(&event.id, false, "invalid: bad signature"));
        }
        Ok(Box::new(event))
    }
}

/// What the driver must do about one client message.
#[derive(Debug, PartialEq, Eq)]
pub enum Action {
    /// Send this text frame to the client.
    Send(String),
    /// An EVENT, parsed as JSON and nothing more. Ask the rate limits first (they cost
    /// nothing, a signature check does): over them, send [`Unverified::refusal`]; else
    /// [`Unverified::verify`] it: decide the event it gives, or send the frame.
    Admit(Unverified),
    /// A subscription was opened (already live: matching events published from now on are
    /// delivered). Read its stored events off the async thread with
    /// `store.query_ids(&query.filters, query.cap)` and `store.load_json` in chunks, send
    /// [`Session::stored_event`] for each as the client takes them, then
    /// [`Session::end_of_stored`].
    Query(Query),
    /// A NIP-77 `NEG-OPEN` was accepted: read the `(created_at, id)` of the served events it
    /// names off the async thread (`store.query_items(&open.filters, open.cap)`), then send
    /// [`Session::start_reconciliation`]'s answer.
    Reconcile(ReconcileOpen),
    /// Send this frame: a limit refused what the client asked (count and log it).
    Refused { frame: String, limit: Limit },
}

impl From<Reply> for Action {
    fn from(reply: Reply) -> Action {
        match reply.refused {
            Some(limit) => Action::Refused {
                frame: reply.frame,
                limit,
            },
            None => Action::Send(reply.frame),
        }
    }
}

/// The stored-events half of a REQ.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Query {
    pub id: QueryId,
    pub subscription_id: String,
    pub filters: Vec<Filter>,
    /// Most events per filter ([`RelayLimits::max_limit`]).
    pub cap: usize,
}

/// The answer to an EVENT, as the driver decided it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Verdict {
    pub accepted: bool,
    /// Empty, or a NIP-01 machine-readable prefix and a human text, e.g.
    /// `"purgatory: won't be served until git data arrives"`, `"duplicate: already have this
    /// event"`, `"blocked: not related to any repository on this server"`.
    pub message: String,
}

impl Verdict {
    pub fn accepted(message: impl Into<String>) -> Verdict {
        Verdict {
            accepted: true,
            message: message.into(),
        }
    }

    pub fn rejected(message: impl Into<String>) -> Verdict {
        Verdict {
            accepted: false,
            message: message.into(),
        }
    }

    /// The `OK` frame answering `event_id`.
    pub fn message(&self, event_id: &EventId) -> String {
        messages::ok(event_id, self.accepted, &self.message)
    }
}

struct Subscription {
    filters: Vec<Filter>,
    query: QueryId,
}

/// The NIP-01 state of one connection: parses client frames, keeps its subscriptions within
/// [`RelayLimits`], verifies events, and formats stored and live events for it.
///
/// [`run_connection`](super::run_connection) is the usual driver; in outline (any runtime):
///
/// ```text
/// let (mut session, feed) = Session::new(limits, &hub);
/// loop { select {
///   text frame  => match session.handle_text(&text) {
///       Some(Action::Send(frame))  => send(frame),
///       Some(Action::Admit(e))     => if over_rate() { send(e.refusal(..)) } else { match e.verify() {
///                                       Ok(event) => { let v = decide(*event).await; send(v.message(&id)) }
///                                       Err(frame) => send(frame) } }
///       Some(Action::Query(q))     => { let ids = blocking(store.query_ids(&q.filters, q.cap)).await;
///                                       for chunk of ids: for json in blocking(store.load_json(chunk)).await
///                                           { send(session.stored_event(q.id, &json)) }
///                                       send(session.end_of_stored(q.id)) }
///       None => {} }
///   binary frame => send(session.handle_binary())
///   feed.next()  => match live { Live::Event(e) => for f in session.live_event(&e) { send(f) },
///                                Live::TooSlow  => { send(messages::notice(messages::TOO_SLOW)); close },
///                                Live::Closed   => close } } }
/// ```
pub struct Session {
    limits: RelayLimits,
    subscriptions: BTreeMap<String, Subscription>,
    next_query: u64,
    membership: Membership,
    reconciliations: Reconciliations,
}

impl Session {
    /// A new connection, registered with the hub; the feed yields its live events.
    pub fn new(limits: RelayLimits, hub: &Hub) -> (Session, LiveFeed) {
        let (membership, feed) = hub.join(limits.live_queue);
        let session = Session {
            limits,
            subscriptions: BTreeMap::new(),
            next_query: 0,
            membership,
            reconciliations: Reconciliations::default(),
        };
        (session, feed)
    }

    /// Handles one text frame from the client.
    pub fn handle_text(&mut self, text: &str) -> Option<Action> {
        if text.len() > self.limits.max_message_bytes {
            return Some(notice(&format!(
                "invalid: message of {} bytes is over the {} byte limit",
                text.len(),
                self.limits.max_message_bytes
            )));
        }
        let Ok(Value::Array(mut items)) = serde_json::from_str::<Value>(text) else {
            return Some(notice("invalid: a message must be a JSON array"));
        };
        let command = match items.first() {
            Some(Value::String(command)) => command.clone(),
            _ => {
                return Some(notice(
                    "invalid: a message must start with a command string",
                ))
            }
        };
        match command.as_str() {
            "EVENT" => Some(self.handle_event(&mut items)),
            "REQ" => Some(self.handle_req(&mut items)),
            "CLOSE" => self.handle_close(&items),
            "NEG-OPEN" => Some(self.handle_neg_open(&mut items)),
            "NEG-MSG" => Some(self.handle_neg_msg(&items)),
            "NEG-CLOSE" => self.handle_neg_close(&items),
            "AUTH" | "COUNT" => Some(notice(&format!(
                "unsupported: {command} is not supported by this relay"
            ))),
            _ => Some(notice(&format!(
                "invalid: unknown command {:?}",
                truncate(&command, 32)
            ))),
        }
    }

    /// Handles a binary frame: NIP-01 is text only.
    pub fn handle_binary(&mut self) -> Action {
        notice("invalid: binary messages are not supported; send JSON text")
    }

    /// The frame delivering one stored event (its JSON text as the store holds it) of query
    /// `id`, or `None` if the subscription has since been closed or replaced by a newer REQ
    /// with the same id.
    pub fn stored_event(&self, id: QueryId, event_json: &str) -> Option<String> {
        let subscription_id = self.subscription_of(id)?;
        Some(messages::event_json(subscription_id, event_json))
    }

    /// EOSE for query `id` once its stored events are sent, or `None` if the subscription
    /// has moved on.
    pub fn end_of_stored(&self, id: QueryId) -> Option<String> {
        self.subscription_of(id).map(messages::eose)
    }

    fn subscription_of(&self, id: QueryId) -> Option<&str> {
        self.subscriptions
            .iter()
            .find(|(_, sub)| sub.query == id)
            .map(|(subscription_id, _)| subscription_id.as_str())
    }

    /// Ends the subscription of query `id` after its stored events could not be read: the
    /// `CLOSED` frame to send, or nothing if the subscription has moved on.
    pub fn query_failed(&mut self, id: QueryId, reason: &str) -> Option<String> {
        let subscription_id = self
            .subscriptions
            .iter()
            .find(|(_, sub)| sub.query == id)
            .map(|(subscription_id, _)| subscription_id.clone())?;
        self.subscriptions.remove(&subscription_id);
        self.publish_interest();
        Some(messages::closed(
            &subscription_id,
            &format!("error: {reason}"),
        ))
    }

    /// The answer to the initial message of `open` (an [`Action::Reconcile`]), given the
    /// items the driver read for it.
    pub fn start_reconciliation(
        &mut self,
        open: ReconcileOpen,
        items: &[(u64, EventId)],
    ) -> Action {
        self.reconciliations
            .start(&self.limits.negentropy, open, items)
            .into()
    }

    /// Open NIP-77 reconciliations.
    pub fn reconciliation_count(&self) -> usize {
        self.reconciliations.len()
    }

    /// Frames delivering a live event to each open subscription it matches.
    pub fn live_event(&self, event: &Event) -> Vec<String> {
        let options = MatchEventOptions::new().nip50(false);
        self.subscriptions
            .iter()
            .filter(|(_, sub)| sub.filters.iter().any(|f| f.match_event(event, options)))
            .map(|(id, _)| messages::event(id, event))
            .collect()
    }

    /// Open subscriptions.
    pub fn subscription_count(&self) -> usize {
        self.subscriptions.len()
    }

    fn handle_event(&mut self, items: &mut [Value]) -> Action {
        if items.len() != 2 {
            return notice("invalid: EVENT takes exactly one event");
        }
        let raw = items[1].take();
        let claimed_id = raw
            .get("id")
            .and_then(Value::as_str)
            .and_then(|id| EventId::from_hex(id).ok());
        Action::Admit(Unverified { raw, claimed_id })
    }

    fn handle_req(&mut self, items: &mut [Value]) -> Action {
        let Some(subscription_id) = self.subscription_id(items.get(1)) else {
            return notice(&format!(
                "invalid: REQ needs a subscription id of 1 to {} characters",
                self.limits.max_subscription_id_chars
            ));
        };
        let filters = &mut items[2..];
        if filters.is_empty() {
            return closed(&subscription_id, "invalid: REQ needs at least one filter");
        }
        if filters.len() > self.limits.max_filters {
            return closed(
                &subscription_id,
                &format!(
                    "invalid: {} filters in one REQ, the limit is {}",
                    filters.len(),
                    self.limits.max_filters
                ),
            );
        }
        let is_new = !self.subscriptions.contains_key(&subscription_id);
        if is_new && self.subscriptions.len() >= self.limits.max_subscriptions {
            return closed(
                &subscription_id,
                &format!(
                    "error: too many open subscriptions (limit {}); CLOSE one first",
                    self.limits.max_subscriptions
                ),
            );
        }
        let mut parsed = Vec::with_capacity(filters.len());
        for raw in filters {
            match self.parse_filter(raw) {
                Ok(filter) => parsed.extend(filter),
                Err(reason) => return closed(&subscription_id, &reason),
            }
        }
        let id = QueryId(self.next_query);
        self.next_query += 1;
        self.subscriptions.insert(
            subscription_id.clone(),
            Subscription {
                filters: parsed.clone(),
                query: id,
            },
        );
        self.publish_interest();
        Action::Query(Query {
            id,
            subscription_id,
            filters: parsed,
            cap: self.limits.max_limit,
        })
    }

    /// One filter of a REQ or NEG-OPEN: `None` if it matches nothing (`"ids": []`), or the
    /// reason it is refused.
    fn parse_filter(&self, raw: &mut Value) -> Result<Option<Filter>, String> {
        if !raw.is_object() {
            return Err("invalid: a filter must be a JSON object".into());
        }
        let matches_nothing = lists_nothing(raw);
        match serde_json::from_value::<Filter>(raw.take()) {
            Ok(filter) if filter.search.is_some() => {
                Err("unsupported: search (NIP-50) is not supported by this relay".into())
            }
            Ok(filter) if largest_field(&filter) > self.limits.max_filter_values => Err(format!(
                "invalid: a filter field lists more than {} values",
                self.limits.max_filter_values
            )),
            // Still validated above; it adds nothing.
            Ok(_) if matches_nothing => Ok(None),
            Ok(filter) => Ok(Some(filter)),
            Err(error) => Err(format!(
                "invalid: bad filter: {}",
                truncate(&error.to_string(), 120)
            )),
        }
    }

    /// `["NEG-OPEN", <subscription id>, <filter>, <hex initial message>]` (NIP-77).
    fn handle_neg_open(&mut self, items: &mut [Value]) -> Action {
        let Some(subscription_id) = self.subscription_id(items.get(1)) else {
            return notice(&format!(
                "invalid: NEG-OPEN needs a subscription id of 1 to {} characters",
                self.limits.max_subscription_id_chars
            ));
        };
        let (4, Some(Value::String(initial))) = (items.len(), items.get(3).cloned()) else {
            self.reconciliations.close(&subscription_id);
            return neg_err(
                &subscription_id,
                "invalid: NEG-OPEN takes a subscription id, one filter and a hex initial message",
            );
        };
        let filters = match self.parse_filter(&mut items[2]) {
            Ok(filter) => filter.into_iter().collect(),
            Err(reason) => {
                self.reconciliations.close(&subscription_id);
                return neg_err(&subscription_id, &reason);
            }
        };
        match self
            .reconciliations
            .open(&self.limits.negentropy, subscription_id, filters, &initial)
        {
            Ok(open) => Action::Reconcile(open),
            Err(reply) => reply.into(),
        }
    }

    /// `["NEG-MSG", <subscription id>, <hex message>]` (NIP-77).
    fn handle_neg_msg(&mut self, items: &[Value]) -> Action {
        let Some(subscription_id) = self.subscription_id(items.get(1)) else {
            return notice(&format!(
                "invalid: NEG-MSG needs a subscription id of 1 to {} characters",
                self.limits.max_subscription_id_chars
            ));
        };
        let (3, Some(Value::String(message))) = (items.len(), items.get(2)) else {
            self.reconciliations.close(&subscription_id);
            return neg_err(
                &subscription_id,
                "invalid: NEG-MSG takes a subscription id and a hex message",
            );
        };
        self.reconciliations
            .message(&subscription_id, message)
            .into()
    }

    /// `["NEG-CLOSE", <subscription id>]` (NIP-77): nothing is answered.
    fn handle_neg_close(&mut self, items: &[Value]) -> Option<Action> {
        match self.subscription_id(items.get(1)) {
            Some(subscription_id) if items.len() == 2 => {
                self.reconciliations.close(&subscription_id);
                None
            }
            _ => Some(notice(
                "invalid: NEG-CLOSE takes exactly one subscription id",
            )),
        }
    }

    fn handle_close(&mut self, items: &[Value]) -> Option<Action> {
        if items.len() != 2 {
            return Some(notice("invalid: CLOSE takes exactly one subscription id"));
        }
        let Some(subscription_id) = self.subscription_id(items.get(1)) else {
            return Some(notice(&format!(
                "invalid: CLOSE needs a subscription id of 1 to {} characters",
                self.limits.max_subscription_id_chars
            )));
        };
        if self.subscriptions.remove(&subscription_id).is_some() {
            self.publish_interest();
        }
        None
    }

    fn subscription_id(&self, value: Option<&Value>) -> Option<String> {
        let id = value?.as_str()?;
        let chars = id.chars().count();
        (1..=self.limits.max_subscription_id_chars)
            .contains(&chars)
            .then(|| id.to_owned())
    }

    /// Tells the hub every filter this connection has open, so it only queues matches.
    fn publish_interest(&self) {
        let interest = self
            .subscriptions
            .values()
            .flat_map(|sub| sub.filters.iter().cloned())
            .collect();
        self.membership.set_interest(interest);
    }
}

/// Whether a filter has an empty list (`"ids": []`, `"kinds": []`, `"#e": []`): no event has
/// a value in an empty list, so the filter matches nothing (it must not be read as "any").
fn lists_nothing(raw: &Value) -> bool {
    raw.as_object().is_some_and(|fields| {
        fields.iter().any(|(name, value)| {
            let is_list_field =
                matches!(name.as_str(), "ids" | "authors" | "kinds") || name.starts_with('#');
            is_list_field && value.as_array().is_some_and(Vec::is_empty)
        })
    })
}

/// The number of values in the filter's longest list.
fn largest_field(filter: &Filter) -> usize {
    let ids = filter.ids.as_ref().map_or(0, |v| v.len());
    let authors = filter.authors.as_ref().map_or(0, |v| v.len());
    let kinds = filter.kinds.as_ref().map_or(0, |v| v.len());
    let tags = filter.generic_tags.values().map(|v| v.len());
    tags.chain([ids, authors, kinds]).max().unwrap_or(0)
}

fn notice(message: &str) -> Action {
    Action::Send(messages::notice(message))
}

fn neg_err(subscription_id: &str, reason: &str) -> Action {
    Action::Send(messages::neg_err(subscription_id, reason))
}

fn closed(subscription_id: &str, message: &str) -> Action {
    Action::Send(messages::closed(subscription_id, message))
}

/// At most `max` characters of untrusted text, for echoing it back.
fn truncate(text: &str, max: usize) -> String {
    let mut out: String = text.chars().take(max).collect();
    if out.len() < text.len() {
        out.push('…');
    }
    out
}
