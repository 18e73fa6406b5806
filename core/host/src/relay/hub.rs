//! Live delivery: the fan-out of newly served events to the connections that want them.
//!
//! The driver calls [`Hub::publish`] for every event the moment it becomes served (stored and
//! out of purgatory; never for waiting events). Each connection's [`Session`] keeps the hub
//! told which filters it has open, so `publish` queues an event only for connections with a
//! matching subscription. Each connection's queue is bounded ([`RelayLimits::live_queue`]):
//! a connection whose queue is full is dropped from the hub, and its [`LiveFeed`] reports
//! [`Live::TooSlow`] so the driver sends a NOTICE and closes it, instead of memory growing.
//!
//! [`Session`]: super::Session
//! [`RelayLimits::live_queue`]: super::RelayLimits::live_queue

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use async_channel::{Receiver, Sender, TryRecvError, TrySendError};
use nostr::prelude::{Event, Filter, MatchEventOptions};

/// The live fan-out; cheap to clone, one per server.
#[derive(Clone, Default)]
pub struct Hub {
    shared: Arc<Mutex<Members>>,
}

#[derive(Default)]
struct Members {
    next_id: u64,
    by_id: BTreeMap<u64, Member>,
}

struct Member {
    /// Every filter of every open subscription of the connection.
    interest: Vec<Filter>,
    sender: Sender<Arc<Event>>,
    too_slow: Arc<AtomicBool>,
}

/// What a connection's live feed yields.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Live {
    /// A served event matching at least one of the connection's subscriptions; pass it to
    /// [`Session::live_event`](super::Session::live_event).
    Event(Arc<Event>),
    /// The connection fell behind and was dropped from the hub: send
    /// [`messages::TOO_SLOW`](super::messages::TOO_SLOW) as a NOTICE and close it.
    TooSlow,
    /// The hub ended the feed ([`Hub::close_all`], at shutdown): close the connection.
    Closed,
}

impl Hub {
    pub fn new() -> Hub {
        Hub::default()
    }

    /// Queues `event` for every connection with a matching subscription; returns how many.
    /// Never blocks: a connection whose queue is full is dropped (see the module docs).
    pub fn publish(&self, event: Event) -> usize {
        let event = Arc::new(event);
        let options = MatchEventOptions::new().nip50(false);
        let mut members = self.lock();
        let mut delivered = 0;
        let mut too_slow = Vec::new();
        for (id, member) in &members.by_id {
            if !member
                .interest
                .iter()
                .any(|f| f.match_event(&event, options))
            {
                continue;
            }
            match member.sender.try_send(event.clone()) {
                Ok(()) => delivered += 1,
                Err(TrySendError::Full(_)) => too_slow.push(*id),
                Err(TrySendError::Closed(_)) => {}
            }
        }
        for id in too_slow {
            if let Some(member) = members.by_id.remove(&id) {
                member.too_slow.store(true, Ordering::Release);
                member.sender.close();
                tracing::info!(connection = id, "live queue full; dropping slow connection");
            }
        }
        delivered
    }

    /// Ends every live feed (they yield [`Live::Closed`]), for shutdown.
    pub fn close_all(&self) {
        let members = std::mem::take(&mut self.lock().by_id);
        for member in members.values() {
            member.sender.close();
        }
    }

    /// Connections currently listening.
    pub fn connections(&self) -> usize {
        self.lock().by_id.len()
    }

    pub(super) fn join(&self, queue: usize) -> (Membership, LiveFeed) {
        let (sender, receiver) = async_channel::bounded(queue.max(1));
        let too_slow = Arc::new(AtomicBool::new(false));
        let mut members = self.lock();
        let id = members.next_id;
        members.next_id += 1;
        members.by_id.insert(
            id,
            Member {
                interest: Vec::new(),
                sender,
                too_slow: too_slow.clone(),
            },
        );
        let membership = Membership {
            hub: self.clone(),
            id,
        };
        (membership, LiveFeed { receiver, too_slow })
    }

    fn lock(&self) -> MutexGuard<'_, Members> {
        // A panic while holding the lock leaves the map consistent (every edit is one call).
        self.shared
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// A session's registration in the hub; leaving is automatic on drop.
pub(super) struct Membership {
    hub: Hub,
    id: u64,
}

impl Membership {
    pub(super) fn set_interest(&self, interest: Vec<Filter>) {
        if let Some(member) = self.hub.lock().by_id.get_mut(&self.id) {
            member.interest = interest;
        }
    }
}

impl Drop for Membership {
    fn drop(&mut self) {
        self.hub.lock().by_id.remove(&self.id);
    }
}

/// The receiving end of one connection's live queue. Runtime-agnostic: `next` is a plain
/// future that any executor can poll.
pub struct LiveFeed {
    receiver: Receiver<Arc<Event>>,
    too_slow: Arc<AtomicBool>,
}

impl LiveFeed {
    /// Waits for the next live event (or the end of the feed).
    pub async fn next(&self) -> Live {
        if self.too_slow.load(Ordering::Acquire) {
            return Live::TooSlow;
        }
        match self.receiver.recv().await {
            Ok(event) => Live::Event(event),
            Err(_) => self.ended(),
        }
    }

    /// The next live event if one is queued, without waiting.
    pub fn try_next(&self) -> Option<Live> {
        if self.too_slow.load(Ordering::Acquire) {
            return Some(Live::TooSlow);
        }
        match self.receiver.try_recv() {
            Ok(event) => Some(Live::Event(event)),
            Err(TryRecvError::Empty) => None,
            Err(TryRecvError::Closed) => Some(self.ended()),
        }
    }

    fn ended(&self) -> Live {
        if self.too_slow.load(Ordering::Acquire) {
            Live::TooSlow
        } else {
            Live::Closed
        }
    }
}
