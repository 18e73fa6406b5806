//! What one instance tells the others sharing its database: the ids of the events each
//! commit put in purgatory or served, sent with `pg_notify` inside that commit (so a peer
//! hears of exactly what committed, never of a rolled-back write), and the listener that
//! hears the other instances' notifications.
//!
//! A notification carries ids only (the payload limit is 8000 bytes): the sender's token,
//! then up to [`MAX_IDS_PER_NOTIFICATION`] entries, `w<id hex>` (now waiting) or
//! `s<id hex>` (now served). A commit with more sends several notifications, in order. The
//! listener owns one connection of its own, outside the pool, on a thread of its own; it
//! hands each notification's ids to a bounded queue, and what does not fit is dropped and
//! counted (the events stay in the database: a peer that misses one learns of it at its next
//! start, or when a push or fetch touches its repository).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use nostr::prelude::EventId;
use postgres::fallible_iterator::FallibleIterator;

/// The channel every instance on one database notifies and listens on.
pub const CHANNEL: &str = "graspd_events";

/// Entries per notification: 100 entries of 66 bytes and the token stay far below
/// PostgreSQL's 8000-byte payload limit.
pub const MAX_IDS_PER_NOTIFICATION: usize = 100;

/// The listener's first wait before connecting again after its connection failed.
const RECONNECT_FIRST: Duration = Duration::from_millis(100);
/// The longest wait between two connection attempts.
const RECONNECT_MAX: Duration = Duration::from_secs(5);
/// How often the listener wakes with nothing heard, to notice that nobody reads any more.
const POLL: Duration = Duration::from_millis(500);

/// What a commit did to an event, as the other instances hear it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Changed {
    /// Put in purgatory (acknowledged, waiting for its git data).
    Waiting(EventId),
    /// Served: accepted, released from purgatory, or learned from a relay.
    Served(EventId),
    /// Dropped from purgatory unreleased: expired, deleted by its author, or withdrawn by the
    /// operator's policy.
    Gone(EventId),
}

impl Changed {
    pub fn id(&self) -> EventId {
        match self {
            Changed::Waiting(id) | Changed::Served(id) | Changed::Gone(id) => *id,
        }
    }

    fn tag(&self) -> char {
        match self {
            Changed::Waiting(_) => 'w',
            Changed::Served(_) => 's',
            Changed::Gone(_) => 'g',
        }
    }
}

/// A token naming this process among the instances on one database, so its listener skips
/// what it sent itself. Random (the standard library's per-process hash keys) and the pid.
pub fn instance_token() -> String {
    use std::hash::{BuildHasher, Hasher};
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u32(std::process::id());
    format!("{:016x}", hasher.finish())
}

/// The payloads announcing `changes`, in order, at most [`MAX_IDS_PER_NOTIFICATION`] each.
pub fn payloads(token: &str, changes: &[Changed]) -> Vec<String> {
    changes
        .chunks(MAX_IDS_PER_NOTIFICATION)
        .map(|chunk| {
            let mut text = String::with_capacity(token.len() + chunk.len() * 66);
            text.push_str(token);
            for change in chunk {
                text.push(' ');
                text.push(change.tag());
                text.push_str(&crate::hex::encode(change.id().as_bytes()));
            }
            text
        })
        .collect()
}

/// A payload's sender token and entries; malformed entries are skipped.
pub fn parse(payload: &str) -> (&str, Vec<Changed>) {
    let mut parts = payload.split(' ');
    let token = parts.next().unwrap_or("");
    let changes = parts
        .take(MAX_IDS_PER_NOTIFICATION)
        .filter_map(|entry| {
            let (tag, hex) = entry.split_at_checked(1)?;
            let id = EventId::from_hex(hex).ok()?;
            match tag {
                "w" => Some(Changed::Waiting(id)),
                "s" => Some(Changed::Served(id)),
                "g" => Some(Changed::Gone(id)),
                _ => None,
            }
        })
        .collect();
    (token, changes)
}

/// What the listener heard, dropped and went through, for metrics.
#[derive(Debug, Default)]
pub struct ListenCounters {
    /// Entries handed on from other instances.
    pub received: AtomicU64,
    /// Entries dropped because the queue was full.
    pub dropped: AtomicU64,
    /// Times the listening connection was (re)established after the first.
    pub reconnects: AtomicU64,
    /// Whether the listening connection is up now (0 or 1).
    pub connected: AtomicU64,
}

/// A snapshot of [`ListenCounters`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ListenStats {
    pub received: u64,
    pub dropped: u64,
    pub reconnects: u64,
    pub connected: bool,
}

impl ListenCounters {
    pub fn stats(&self) -> ListenStats {
        ListenStats {
            received: self.received.load(Ordering::Relaxed),
            dropped: self.dropped.load(Ordering::Relaxed),
            reconnects: self.reconnects.load(Ordering::Relaxed),
            connected: self.connected.load(Ordering::Relaxed) == 1,
        }
    }
}

/// Listens on [`CHANNEL`] on a thread of its own until `queue` is closed, handing the other
/// instances' entries on, one notification's at a time. A lost connection is made again,
/// backing off from [`RECONNECT_FIRST`] to [`RECONNECT_MAX`]; what was sent meanwhile is not
/// heard (logged).
pub fn spawn_listener(
    config: postgres::Config,
    label: String,
    token: String,
    queue: async_channel::Sender<Vec<Changed>>,
    counters: Arc<ListenCounters>,
) -> std::io::Result<()> {
    std::thread::Builder::new()
        .name("graspd-pg-listen".into())
        .spawn(move || listen(&config, &label, &token, &queue, &counters))
        .map(|_| ())
}

fn listen(
    config: &postgres::Config,
    label: &str,
    token: &str,
    queue: &async_channel::Sender<Vec<Changed>>,
    counters: &ListenCounters,
) {
    let mut delay = RECONNECT_FIRST;
    let mut connections = 0u64;
    while !queue.is_closed() {
        let mut client = match config.connect(postgres::NoTls) {
            Ok(client) => client,
            Err(error) => {
                tracing::warn!(database = %label, %error, retry_ms = delay.as_millis() as u64,
                    "cannot listen for other instances' events; retrying");
                std::thread::sleep(delay);
                delay = (delay * 2).min(RECONNECT_MAX);
                continue;
            }
        };
        if let Err(error) = client.batch_execute(&format!("LISTEN {CHANNEL}")) {
            tracing::warn!(database = %label, %error, "LISTEN failed; retrying");
            std::thread::sleep(delay);
            delay = (delay * 2).min(RECONNECT_MAX);
            continue;
        }
        if connections > 0 {
            counters.reconnects.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(database = %label,
                "listening for other instances' events again; what they sent meanwhile was not heard");
        } else {
            tracing::info!(database = %label, "listening for other instances' events");
        }
        connections += 1;
        counters.connected.store(1, Ordering::Relaxed);
        delay = RECONNECT_FIRST;
        let lost = hear(&mut client, token, queue, counters);
        counters.connected.store(0, Ordering::Relaxed);
        if let Some(error) = lost {
            tracing::warn!(database = %label, %error, "lost the connection listening for other instances' events");
            std::thread::sleep(delay);
            delay = (delay * 2).min(RECONNECT_MAX);
        }
    }
}

/// Hands notifications on until the connection fails (why) or the queue closes.
fn hear(
    client: &mut postgres::Client,
    token: &str,
    queue: &async_channel::Sender<Vec<Changed>>,
    counters: &ListenCounters,
) -> Option<String> {
    while !queue.is_closed() {
        if client.is_closed() {
            return Some("the connection closed".into());
        }
        let mut notifications = client.notifications();
        let mut heard = notifications.timeout_iter(POLL);
        loop {
            match heard.next() {
                Ok(Some(notification)) => {
                    let (sender, changes) = parse(notification.payload());
                    if sender == token || changes.is_empty() {
                        continue;
                    }
                    let count = changes.len() as u64;
                    match queue.try_send(changes) {
                        Ok(()) => {
                            counters.received.fetch_add(count, Ordering::Relaxed);
                        }
                        Err(async_channel::TrySendError::Full(_)) => {
                            let before = counters.dropped.fetch_add(count, Ordering::Relaxed);
                            // Logged at the first drop and then once per 1000, not per entry.
                            if before / 1000 != (before + count) / 1000 || before == 0 {
                                tracing::warn!(
                                    dropped_total = before + count,
                                    "other instances' events dropped: their queue is full"
                                );
                            }
                        }
                        Err(async_channel::TrySendError::Closed(_)) => return None,
                    }
                }
                Ok(None) => break,
                Err(error) => return Some(error.to_string()),
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payloads_round_trip_in_order_and_stay_under_the_limit() {
        let changes: Vec<Changed> = (0..=MAX_IDS_PER_NOTIFICATION as u8)
            .map(|n| {
                let id = EventId::from_byte_array([n; 32]);
                match n % 3 {
                    0 => Changed::Served(id),
                    1 => Changed::Waiting(id),
                    _ => Changed::Gone(id),
                }
            })
            .collect();
        let sent = payloads("abc", &changes);
        assert_eq!(sent.len(), 2, "101 entries make two notifications");
        assert!(sent.iter().all(|p| p.len() < 8000));
        let heard: Vec<Changed> = sent
            .iter()
            .flat_map(|p| {
                let (token, changes) = parse(p);
                assert_eq!(token, "abc");
                changes
            })
            .collect();
        assert_eq!(heard, changes);
    }

    #[test]
    fn malformed_entries_are_skipped() {
        let good = "ab".repeat(32);
        let payload = format!("t x{good} w12 s{good} {good}");
        let (token, changes) = parse(&payload);
        assert_eq!(token, "t");
        assert_eq!(
            changes,
            vec![Changed::Served(EventId::from_hex(&good).unwrap())]
        );
    }
}
