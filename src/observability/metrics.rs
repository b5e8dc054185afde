//! Broker-wide counters and gauges: lock-free atomics, read as a consistent-enough snapshot.
//! `$SYS`, `/metrics` and the HTTP API all read them from here.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::message::QoS;

/// Why a message was dropped: not delivered to a subscriber that was owed it (the first
/// three), or not routed at all (the rest).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DropReason {
    /// The session's mqueue was full (`max_queued_messages` / `max_queued_bytes`).
    QueueFull,
    /// The session's delivery mailbox was full: the session actor is starved.
    MailboxFull,
    /// QoS 0 for an offline session with `queue_qos0_messages = false`.
    Qos0Offline,
    /// A PUBLISH over `message_size_limit` (acknowledged and dropped).
    MessageSizeLimit,
    /// A PUBLISH while the heap was over `memory_limit` (the client is disconnected).
    MemoryLimit,
    /// A PUBLISH (or will) the ACL or an `authorize` hook denied (acknowledged and dropped).
    NotAuthorized,
}

impl DropReason {
    /// The name used in logs.
    pub fn as_str(self) -> &'static str {
        match self {
            DropReason::QueueFull => "queue_full",
            DropReason::MailboxFull => "mailbox_full",
            DropReason::Qos0Offline => "qos0_offline",
            DropReason::MessageSizeLimit => "message_size_limit",
            DropReason::MemoryLimit => "memory_limit",
            DropReason::NotAuthorized => "not_authorized",
        }
    }
}

/// The broker's counters; one instance shared by every task.
#[derive(Default, Debug)]
pub struct Metrics {
    /// Sockets accepted.
    pub connections_accepted: AtomicU64,
    /// Sockets refused at accept because `max_connections` was reached.
    pub connections_refused: AtomicU64,
    /// Clients currently connected (CONNACK 0 sent, not yet closed).
    pub clients_connected: AtomicU64,
    /// Control packets decoded.
    pub packets_received: AtomicU64,
    /// PUBLISH packets received from clients, by QoS.
    pub messages_received: [AtomicU64; 3],
    /// PUBLISH packets handed to clients' connections, by delivery QoS.
    pub messages_sent: [AtomicU64; 3],
    /// Payload bytes of the PUBLISH packets received, by QoS.
    pub payload_bytes_received: [AtomicU64; 3],
    /// Payload bytes of the PUBLISH packets sent, by delivery QoS.
    pub payload_bytes_sent: [AtomicU64; 3],
    /// Bytes read from client sockets once connected (TLS and WebSocket framing excluded).
    pub bytes_received: AtomicU64,
    /// Bytes written to client sockets once connected.
    pub bytes_sent: AtomicU64,
    /// CONNECTs refused for a bad user name or password, or as not authorised.
    pub auth_failures: AtomicU64,
    /// Most clients connected at once since the start.
    pub clients_maximum: AtomicU64,
    /// Deliveries dropped because a session's queue was full.
    pub dropped_queue_full: AtomicU64,
    /// Deliveries dropped because a session's mailbox was full.
    pub dropped_mailbox_full: AtomicU64,
    /// QoS 0 deliveries not queued for offline sessions.
    pub dropped_qos0_offline: AtomicU64,
    /// Retained messages refused by the store's limits.
    pub retained_refused: AtomicU64,
    /// PUBLISHes (and wills) dropped for a payload over `message_size_limit`.
    pub dropped_oversize: AtomicU64,
    /// PUBLISHes dropped, and their clients disconnected, above `memory_limit`.
    pub dropped_memory_limit: AtomicU64,
    /// Messages sent to the other nodes of the cluster.
    pub cluster_forwarded: AtomicU64,
    /// Messages from other nodes of the cluster delivered here.
    pub cluster_received: AtomicU64,
    /// Messages for other nodes dropped: the queue to NATS was full, the topic too long for
    /// a subject, or NATS refused it.
    pub cluster_dropped: AtomicU64,
    /// Connections closed for a protocol violation or malformed packet.
    pub protocol_errors: AtomicU64,
    /// PUBLISHes refused and deliveries withheld by the ACL.
    pub acl_denied: AtomicU64,
    /// Milliseconds after `epoch` before which no further drop warning is logged.
    next_drop_warning_ms: AtomicU64,
    epoch: Epoch,
    /// One entry per listener, in listener order.
    listeners: parking_lot::Mutex<Vec<Arc<ListenerStats>>>,
}

/// The connections of one listener, for `/metrics` (`tern_connections{listener, transport}`).
#[derive(Debug)]
pub struct ListenerStats {
    /// The configured `bind` address.
    pub listener: String,
    /// "tcp", "tls", "ws" or "wss".
    pub transport: &'static str,
    /// Sockets accepted.
    pub accepted: AtomicU64,
    /// Sockets open now (handshaking or connected).
    pub open: AtomicU64,
}

/// PUBLISH packets and their payload bytes by QoS, and socket bytes, counted by one task over
/// a batch (the reads and packets of one input step, the messages of one fill) and added to
/// the shared counters once per batch: the counters are shared by every core, and one atomic
/// add per message per counter cost measurable throughput at QoS 0.
#[derive(Debug, Default, Clone, Copy)]
pub struct Tally {
    messages: [u64; 3],
    bytes: [u64; 3],
    wire: u64,
}

impl Tally {
    /// Counts one PUBLISH.
    #[inline]
    pub fn add(&mut self, qos: QoS, payload: usize) {
        let q = qos as usize;
        self.messages[q] += 1;
        self.bytes[q] += payload as u64;
    }

    /// Counts `n` bytes read from a socket.
    #[inline]
    pub fn read(&mut self, n: usize) {
        self.wire += n as u64;
    }

    fn flush(&mut self, messages: &[AtomicU64; 3], bytes: &[AtomicU64; 3], wire: &AtomicU64) {
        if self.wire > 0 {
            Metrics::add(wire, self.wire);
        }
        for q in 0..3 {
            if self.messages[q] > 0 {
                Metrics::add(&messages[q], self.messages[q]);
                Metrics::add(&bytes[q], self.bytes[q]);
            }
        }
        *self = Tally::default();
    }
}

/// One open socket of a listener: counted while it lives.
#[derive(Debug)]
pub struct OpenSocket(Arc<ListenerStats>);

impl OpenSocket {
    /// Counts a socket just accepted on `listener`.
    pub fn new(listener: &Arc<ListenerStats>) -> Self {
        Metrics::incr(&listener.accepted);
        Metrics::incr(&listener.open);
        OpenSocket(listener.clone())
    }
}

impl OpenSocket {
    /// The listener the socket came in on.
    pub fn listener(&self) -> &Arc<ListenerStats> {
        &self.0
    }
}

impl Drop for OpenSocket {
    fn drop(&mut self) {
        Metrics::decr(&self.0.open);
    }
}

/// The instant the metrics were created, so warning times fit in an atomic.
#[derive(Debug)]
struct Epoch(Instant);

impl Default for Epoch {
    fn default() -> Self {
        Epoch(Instant::now())
    }
}

/// A point-in-time copy of the counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Snapshot {
    /// See [`Metrics::connections_accepted`].
    pub connections_accepted: u64,
    /// See [`Metrics::connections_refused`].
    pub connections_refused: u64,
    /// See [`Metrics::clients_connected`].
    pub clients_connected: u64,
    /// See [`Metrics::packets_received`].
    pub packets_received: u64,
    /// See [`Metrics::messages_received`].
    pub messages_received: [u64; 3],
    /// See [`Metrics::messages_sent`].
    pub messages_sent: [u64; 3],
    /// See [`Metrics::payload_bytes_received`].
    pub payload_bytes_received: [u64; 3],
    /// See [`Metrics::payload_bytes_sent`].
    pub payload_bytes_sent: [u64; 3],
    /// See [`Metrics::bytes_received`].
    pub bytes_received: u64,
    /// See [`Metrics::bytes_sent`].
    pub bytes_sent: u64,
    /// See [`Metrics::auth_failures`].
    pub auth_failures: u64,
    /// See [`Metrics::clients_maximum`].
    pub clients_maximum: u64,
    /// See [`Metrics::dropped_queue_full`].
    pub dropped_queue_full: u64,
    /// See [`Metrics::dropped_mailbox_full`].
    pub dropped_mailbox_full: u64,
    /// See [`Metrics::dropped_qos0_offline`].
    pub dropped_qos0_offline: u64,
    /// See [`Metrics::retained_refused`].
    pub retained_refused: u64,
    /// See [`Metrics::dropped_oversize`].
    pub dropped_oversize: u64,
    /// See [`Metrics::dropped_memory_limit`].
    pub dropped_memory_limit: u64,
    /// See [`Metrics::cluster_forwarded`].
    pub cluster_forwarded: u64,
    /// See [`Metrics::cluster_received`].
    pub cluster_received: u64,
    /// See [`Metrics::cluster_dropped`].
    pub cluster_dropped: u64,
    /// See [`Metrics::protocol_errors`].
    pub protocol_errors: u64,
    /// See [`Metrics::acl_denied`].
    pub acl_denied: u64,
}

impl Snapshot {
    /// Every PUBLISH received.
    pub fn received_total(&self) -> u64 {
        self.messages_received.iter().sum()
    }

    /// Every PUBLISH sent.
    pub fn sent_total(&self) -> u64 {
        self.messages_sent.iter().sum()
    }

    /// Every delivery dropped by a limit (queue, mailbox, offline QoS 0).
    pub fn dropped_total(&self) -> u64 {
        self.dropped_queue_full + self.dropped_mailbox_full + self.dropped_qos0_offline
    }
}

/// Drop warnings are logged at most once per this interval; the counters keep the totals.
const DROP_WARN_INTERVAL: Duration = Duration::from_secs(5);

impl Metrics {
    /// Adds one to a counter.
    pub fn incr(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }

    /// Adds `n` to a counter.
    pub fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    /// Adds what a connection received and resets the tally.
    pub fn flush_received(&self, t: &mut Tally) {
        t.flush(
            &self.messages_received,
            &self.payload_bytes_received,
            &self.bytes_received,
        );
    }

    /// Adds what a session sent and resets the tally.
    pub fn flush_sent(&self, t: &mut Tally) {
        t.flush(
            &self.messages_sent,
            &self.payload_bytes_sent,
            &self.bytes_sent,
        );
    }

    /// Counts a client that just connected.
    pub fn connected(&self) {
        let now = self.clients_connected.fetch_add(1, Ordering::Relaxed) + 1;
        self.clients_maximum.fetch_max(now, Ordering::Relaxed);
    }

    /// Registers a listener; its connections are counted in what this returns.
    pub fn listener(&self, listener: String, transport: &'static str) -> Arc<ListenerStats> {
        let stats = Arc::new(ListenerStats {
            listener,
            transport,
            accepted: AtomicU64::new(0),
            open: AtomicU64::new(0),
        });
        self.listeners.lock().push(stats.clone());
        stats
    }

    /// Every listener's connection counts.
    pub fn listeners(&self) -> Vec<Arc<ListenerStats>> {
        self.listeners.lock().clone()
    }

    /// Subtracts one from a gauge.
    pub fn decr(counter: &AtomicU64) {
        counter.fetch_sub(1, Ordering::Relaxed);
    }

    /// Counts a dropped message and logs it, at most one warning per interval.
    pub fn dropped(&self, reason: DropReason, client_id: &str, topic: &str) {
        let counter = match reason {
            DropReason::QueueFull => &self.dropped_queue_full,
            DropReason::MailboxFull => &self.dropped_mailbox_full,
            DropReason::Qos0Offline => &self.dropped_qos0_offline,
            DropReason::MessageSizeLimit => &self.dropped_oversize,
            DropReason::MemoryLimit => &self.dropped_memory_limit,
            DropReason::NotAuthorized => &self.acl_denied,
        };
        Metrics::incr(counter);
        match reason {
            // Expected behaviour, not a fault: no warning.
            DropReason::Qos0Offline | DropReason::NotAuthorized => return,
            DropReason::MessageSizeLimit | DropReason::MemoryLimit => {
                if self.may_warn() {
                    let why = reason.as_str();
                    tracing::warn!(client_id, topic, why, "PUBLISH dropped");
                }
                return;
            }
            DropReason::QueueFull | DropReason::MailboxFull => {}
        }
        if self.may_warn() {
            let s = self.snapshot();
            tracing::warn!(
                reason = reason.as_str(),
                client_id,
                topic,
                queue_full = s.dropped_queue_full,
                mailbox_full = s.dropped_mailbox_full,
                "dropping messages for a slow subscriber"
            );
        }
    }

    /// Counts a retained message the store's limits refused, and logs it (rate-limited).
    pub fn retained_refused(&self, topic: &str, outcome: &str) {
        Metrics::incr(&self.retained_refused);
        if self.may_warn() {
            tracing::warn!(
                topic,
                outcome,
                refused = self.retained_refused.load(Ordering::Relaxed),
                "retained message not stored (the message is still delivered live)"
            );
        }
    }

    /// True at most once per `DROP_WARN_INTERVAL`: drops come in floods, so one compare per
    /// drop, and one thread wins the right to warn.
    fn may_warn(&self) -> bool {
        let now_ms = self.epoch.0.elapsed().as_millis() as u64;
        let next = self.next_drop_warning_ms.load(Ordering::Relaxed);
        let interval_ms = DROP_WARN_INTERVAL.as_millis() as u64;
        now_ms >= next
            && self
                .next_drop_warning_ms
                .compare_exchange(
                    next,
                    now_ms + interval_ms,
                    Ordering::Relaxed,
                    Ordering::Relaxed,
                )
                .is_ok()
    }

    /// Reads every counter.
    pub fn snapshot(&self) -> Snapshot {
        let r = |c: &AtomicU64| c.load(Ordering::Relaxed);
        let r3 = |c: &[AtomicU64; 3]| [r(&c[0]), r(&c[1]), r(&c[2])];
        Snapshot {
            connections_accepted: r(&self.connections_accepted),
            connections_refused: r(&self.connections_refused),
            clients_connected: r(&self.clients_connected),
            packets_received: r(&self.packets_received),
            messages_received: r3(&self.messages_received),
            messages_sent: r3(&self.messages_sent),
            payload_bytes_received: r3(&self.payload_bytes_received),
            payload_bytes_sent: r3(&self.payload_bytes_sent),
            bytes_received: r(&self.bytes_received),
            bytes_sent: r(&self.bytes_sent),
            auth_failures: r(&self.auth_failures),
            clients_maximum: r(&self.clients_maximum),
            dropped_queue_full: r(&self.dropped_queue_full),
            dropped_mailbox_full: r(&self.dropped_mailbox_full),
            dropped_qos0_offline: r(&self.dropped_qos0_offline),
            retained_refused: r(&self.retained_refused),
            dropped_oversize: r(&self.dropped_oversize),
            dropped_memory_limit: r(&self.dropped_memory_limit),
            cluster_forwarded: r(&self.cluster_forwarded),
            cluster_received: r(&self.cluster_received),
            cluster_dropped: r(&self.cluster_dropped),
            protocol_errors: r(&self.protocol_errors),
            acl_denied: r(&self.acl_denied),
        }
    }
}
