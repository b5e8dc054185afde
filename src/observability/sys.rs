//! The `$SYS` publisher: every `sys_interval` it publishes the broker's figures as retained
//! messages under Mosquitto's `$SYS/broker/...` names. The `$` rule keeps them out of `#`.
//! A reload that changes the interval takes effect at once (0 pauses the topics).
//!
//! It sees the broker only through `SysSource`, so it depends on nothing above the counters.
//! Where Tern's figures differ from Mosquitto's the README says so: `messages/*` count
//! PUBLISH packets (as `publish/messages/*` do), and `heap/*` is the resident set size when
//! the heap is not counted (no `memory_limit`).

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::message::{Message, QoS};
use crate::observability::load::Load;
use crate::observability::metrics::{Metrics, Snapshot};

/// Figures the broker reports that are not counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Gauges {
    /// Sessions, connected or not.
    pub clients_total: usize,
    /// Retained messages stored.
    pub retained: usize,
    /// Payload bytes of the retained messages.
    pub retained_bytes: usize,
    /// Subscriptions: every session's filters added up.
    pub subscriptions: usize,
    /// Distinct subscription filters.
    pub filters: usize,
    /// Messages queued for sessions (mailboxes and mqueues).
    pub queued: usize,
    /// Messages sent and not yet acknowledged.
    pub inflight: usize,
}

/// The broker as `$SYS` sees it.
pub trait SysSource: Send + Sync + 'static {
    /// The counters.
    fn metrics(&self) -> &Metrics;
    /// The gauges, now.
    fn gauges(&self) -> Gauges;
    /// `sys_interval` in force.
    fn interval(&self) -> Duration;
    /// Notified when the configuration is reloaded.
    fn reloaded(&self) -> &Notify;
    /// Cancelled on shutdown.
    fn shutdown(&self) -> &CancellationToken;
    /// Publishes one of the broker's own messages.
    fn publish(&self, msg: Message);
}

/// Publishes `$SYS/broker/...` until shutdown, every `sys_interval` in force.
pub async fn run<S: SysSource>(source: Arc<S>) {
    let started = Instant::now();
    let mut announced = false;
    let mut next = tokio::time::Instant::now();
    let mut loads = Loads::default();
    loop {
        let period = source.interval();
        // Registered before the interval is acted on, so a reload in between is not missed.
        let reloaded = source.reloaded().notified();
        tokio::pin!(reloaded);
        reloaded.as_mut().enable();
        let tick = async {
            if period.is_zero() {
                std::future::pending::<()>().await
            } else {
                tokio::time::sleep_until(next).await
            }
        };
        tokio::select! {
            _ = source.shutdown().cancelled() => return,
            _ = &mut reloaded => {
                next = tokio::time::Instant::now();
                continue;
            }
            _ = tick => {}
        }
        next = tokio::time::Instant::now() + period;
        if !announced {
            announced = true;
            let version = concat!("tern ", env!("CARGO_PKG_VERSION")).to_owned();
            publish(&*source, "$SYS/broker/version", version);
        }
        let s = source.metrics().snapshot();
        let g = source.gauges();
        let heap = crate::observability::memory::heap_or_resident();
        loads.heap_max = loads.heap_max.max(heap);
        let mut values = figures(&s, &g, started.elapsed());
        values.push(("heap/current".into(), heap.to_string()));
        values.push(("heap/maximum".into(), loads.heap_max.to_string()));
        values.extend(loads.update(&s));
        for (name, value) in values {
            publish(&*source, &format!("$SYS/broker/{name}"), value);
        }
    }
}

/// Every `$SYS/broker/` figure but the heap and the loads, as (name, value).
fn figures(s: &Snapshot, g: &Gauges, uptime: Duration) -> Vec<(String, String)> {
    let connected = s.clients_connected as usize;
    let inactive = g.clients_total.saturating_sub(connected);
    let received: u64 = s.payload_bytes_received.iter().sum();
    let sent: u64 = s.payload_bytes_sent.iter().sum();
    let dropped = s.dropped_queue_full + s.dropped_mailbox_full;
    let values: [(&str, String); 24] = [
        ("uptime", format!("{} seconds", uptime.as_secs())),
        ("clients/connected", connected.to_string()),
        ("clients/active", connected.to_string()),
        ("clients/total", g.clients_total.to_string()),
        ("clients/disconnected", inactive.to_string()),
        ("clients/inactive", inactive.to_string()),
        ("clients/maximum", s.clients_maximum.to_string()),
        ("messages/received", s.received_total().to_string()),
        ("messages/sent", s.sent_total().to_string()),
        ("messages/dropped", dropped.to_string()),
        ("messages/inflight", g.inflight.to_string()),
        ("messages/stored", (g.queued + g.retained).to_string()),
        ("publish/messages/received", s.received_total().to_string()),
        ("publish/messages/sent", s.sent_total().to_string()),
        ("publish/messages/dropped", dropped.to_string()),
        ("publish/bytes/received", received.to_string()),
        ("publish/bytes/sent", sent.to_string()),
        ("bytes/received", s.bytes_received.to_string()),
        ("bytes/sent", s.bytes_sent.to_string()),
        ("retained messages/count", g.retained.to_string()),
        ("store/messages/count", (g.queued + g.retained).to_string()),
        ("store/messages/bytes", g.retained_bytes.to_string()),
        ("subscriptions/count", g.subscriptions.to_string()),
        ("connections/refused", s.connections_refused.to_string()),
    ];
    values.into_iter().map(|(n, v)| (n.to_owned(), v)).collect()
}

/// The counters behind `$SYS/broker/load/...`, with the time of the last tick.
#[derive(Default)]
struct Loads {
    at: Option<Instant>,
    heap_max: usize,
    each: [Load; 9],
}

impl Loads {
    /// Takes the counters of this tick; the figures under `load/`.
    fn update(&mut self, s: &Snapshot) -> Vec<(String, String)> {
        let now = Instant::now();
        let elapsed = self.at.replace(now).map_or(Duration::ZERO, |at| now - at);
        let dropped = s.dropped_queue_full + s.dropped_mailbox_full;
        let counters = [
            ("messages/received", s.received_total()),
            ("messages/sent", s.sent_total()),
            ("publish/received", s.received_total()),
            ("publish/sent", s.sent_total()),
            ("publish/dropped", dropped),
            ("bytes/received", s.bytes_received),
            ("bytes/sent", s.bytes_sent),
            ("connections", s.connections_accepted),
            ("sockets", s.connections_accepted + s.connections_refused),
        ];
        let mut out = Vec::new();
        for (load, (name, value)) in self.each.iter_mut().zip(counters) {
            load.update(value, elapsed);
            out.extend(load.figures().map(|(w, v)| (format!("load/{name}/{w}"), v)));
        }
        out
    }
}

fn publish(source: &impl SysSource, topic: &str, value: String) {
    source.publish(Message {
        topic: Bytes::copy_from_slice(topic.as_bytes()),
        payload: Bytes::from(value),
        qos: QoS::AtMostOnce,
        retain: true,
    });
}
