//! The application message and the small identifiers every actor shares.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use bytes::Bytes;

/// Most levels in any topic name or filter the broker accepts, whatever `max_topic_levels`
/// says: the retained tree and the subscription trie are walked (and dropped) by recursion,
/// one call per level, and this keeps that far inside a worker thread's stack.
pub const MAX_TOPIC_LEVELS: usize = 1024;

/// True if `name` may be published to: non-empty, no wildcards [MQTT-3.3.2-2, MQTT-4.7.1-1,
/// MQTT-4.7.3-1].
pub fn valid_topic_name(name: &[u8]) -> bool {
    !name.is_empty() && !name.iter().any(|&b| b == b'+' || b == b'#')
}

/// True if `filter` is a well-formed subscription filter: non-empty, `#` only as the whole last
/// level, `+` only as a whole level [MQTT-4.7.1-2, MQTT-4.7.1-3, MQTT-4.7.3-1].
pub fn valid_filter(filter: &str) -> bool {
    if filter.is_empty() {
        return false;
    }
    let mut levels = filter.split('/').peekable();
    while let Some(level) = levels.next() {
        let last = levels.peek().is_none();
        match level {
            "#" if last => {}
            "+" => {}
            l if l.contains(['+', '#']) => return false,
            _ => {}
        }
    }
    true
}

/// Quality of service of a PUBLISH or a subscription; ordered so `min` downgrades.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[repr(u8)]
pub enum QoS {
    /// Fire and forget.
    AtMostOnce = 0,
    /// Acknowledged with PUBACK; may arrive twice.
    AtLeastOnce = 1,
    /// Four-way handshake; arrives exactly once.
    ExactlyOnce = 2,
}

impl QoS {
    /// The QoS for the two-bit field value, `None` for the forbidden value 3.
    pub fn from_u8(v: u8) -> Option<QoS> {
        match v {
            0 => Some(QoS::AtMostOnce),
            1 => Some(QoS::AtLeastOnce),
            2 => Some(QoS::ExactlyOnce),
            _ => None,
        }
    }
}

/// A client identifier, cheap to clone into routes, logs and messages.
pub type ClientId = Arc<str>;

/// Identifies one session actor; a new session for the same client id gets a new one,
/// so a stale route or registry entry can be recognised.
pub type SessionId = u64;

/// Identifies one network connection; a session's mailbox accepts commands only from the
/// current one.
pub type ConnId = u64;

static NEXT_ID: AtomicU64 = AtomicU64::new(1);

/// A process-unique, never-zero id for sessions and connections.
pub fn next_id() -> u64 {
    NEXT_ID.fetch_add(1, Ordering::Relaxed)
}

/// An application message as the router sees it: shared by every subscriber, queue and
/// inflight table through one `Arc`, never copied per subscriber.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    /// Topic name: validated UTF-8 with no wildcards, kept as bytes of the read buffer.
    pub topic: Bytes,
    /// Application payload, a slice of the read buffer (or a copy for retained messages).
    pub payload: Bytes,
    /// QoS the publisher used; each subscriber gets `min(qos, granted)`.
    pub qos: QoS,
    /// RETAIN flag as published.
    pub retain: bool,
}

impl Message {
    /// The topic as text (it was validated as UTF-8 when decoded).
    pub fn topic_str(&self) -> &str {
        std::str::from_utf8(&self.topic).unwrap_or("")
    }
}

/// Who published a message, as the ACL knows them: kept with a retained message for
/// `check_retain_source`, one per connection and shared by everything it retains.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Publisher {
    /// The publisher's client id.
    pub client_id: ClientId,
    /// The user name it authenticated as.
    pub username: Option<Arc<str>>,
    /// The session of a bridge (its CONNECT carried the bridge bit, Mosquitto's
    /// `try_private`): what it publishes is not delivered back to it, so two brokers bridged
    /// both ways pass a message once. Not stored.
    pub bridge_session: Option<SessionId>,
}
