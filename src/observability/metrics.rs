//! Broker-wide counters and gauges: lock-free atomics, read as a consistent-enough snapshot.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// Why a message was not delivered to a subscriber that was owed it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DropReason {
    /// The session's mqueue was full (`max_queued_messages` / `max_queued_bytes`).
    QueueFull,
    /// The session's delivery mailbox was full: the session actor is starved.
    MailboxFull,
    /// QoS 0 for an offline session with `queue_qos0_messages = false`.
    Qos0Offline,
}

impl DropReason {
    /// The name used in logs.
    pub fn as_str(self) -> &'static str {
        match self {
            DropReason::QueueFull => "queue_full",
            DropReason::MailboxFull => "mailbox_full",
            DropReason::Qos0Offline => "qos0_offline",
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
    /// PUBLISH packets received from clients.
    pub messages_received: AtomicU64,
    /// PUBLISH packets written to clients.
    pub messages_sent: AtomicU64,
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
    /// Connections closed for a protocol violation or malformed packet.
    pub protocol_errors: AtomicU64,
    /// PUBLISHes refused and deliveries withheld by the ACL.
    pub acl_denied: AtomicU64,
    /// Milliseconds after `epoch` before which no further drop warning is logged.
    next_drop_warning_ms: AtomicU64,
    epoch: Epoch,
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
    pub messages_received: u64,
    /// See [`Metrics::messages_sent`].
    pub messages_sent: u64,
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
    /// See [`Metrics::protocol_errors`].
    pub protocol_errors: u64,
    /// See [`Metrics::acl_denied`].
    pub acl_denied: u64,
}

/// Drop warnings are logged at most once per this interval; the counters keep the totals.
const DROP_WARN_INTERVAL: Duration = Duration::from_secs(5);

impl Metrics {
    /// Adds one to a counter.
    pub fn incr(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }

    /// Subtracts one from a gauge.
    pub fn decr(counter: &AtomicU64) {
        counter.fetch_sub(1, Ordering::Relaxed);
    }

    /// Counts a dropped delivery and logs it, at most one warning per interval.
    pub fn dropped(&self, reason: DropReason, client_id: &str, topic: &str) {
        let counter = match reason {
            DropReason::QueueFull => &self.dropped_queue_full,
            DropReason::MailboxFull => &self.dropped_mailbox_full,
            DropReason::Qos0Offline => &self.dropped_qos0_offline,
        };
        Metrics::incr(counter);
        if reason == DropReason::Qos0Offline {
            // Expected behaviour, not a fault: no warning.
            return;
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

    /// Counts a PUBLISH dropped for a limit, and logs it (rate-limited).
    pub fn publish_dropped(&self, counter: &AtomicU64, client_id: &str, topic: &str, why: &str) {
        Metrics::incr(counter);
        if self.may_warn() {
            tracing::warn!(client_id, topic, why, "PUBLISH dropped");
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
        Snapshot {
            connections_accepted: r(&self.connections_accepted),
            connections_refused: r(&self.connections_refused),
            clients_connected: r(&self.clients_connected),
            packets_received: r(&self.packets_received),
            messages_received: r(&self.messages_received),
            messages_sent: r(&self.messages_sent),
            dropped_queue_full: r(&self.dropped_queue_full),
            dropped_mailbox_full: r(&self.dropped_mailbox_full),
            dropped_qos0_offline: r(&self.dropped_qos0_offline),
            retained_refused: r(&self.retained_refused),
            dropped_oversize: r(&self.dropped_oversize),
            dropped_memory_limit: r(&self.dropped_memory_limit),
            protocol_errors: r(&self.protocol_errors),
            acl_denied: r(&self.acl_denied),
        }
    }
}
