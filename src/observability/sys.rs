//! The `$SYS` publisher: every `sys_interval` it publishes the broker's counters as retained
//! messages under Mosquitto's `$SYS/broker/...` names. The `$` rule keeps them out of `#`.
//! A reload that changes the interval takes effect at once (0 pauses the topics).
//!
//! It sees the broker only through `SysSource`, so it depends on nothing above the counters.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::message::{Message, QoS};
use crate::observability::metrics::Metrics;

/// Figures `$SYS` reports that are not counters.
#[derive(Debug, Clone, Copy, Default)]
pub struct Gauges {
    /// Sessions, connected or not.
    pub clients_total: usize,
    /// Retained messages stored.
    pub retained: usize,
    /// Distinct subscription filters.
    pub subscriptions: usize,
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
        let values = [
            ("uptime", format!("{} seconds", started.elapsed().as_secs())),
            ("clients/connected", s.clients_connected.to_string()),
            ("clients/total", g.clients_total.to_string()),
            ("messages/received", s.messages_received.to_string()),
            ("messages/sent", s.messages_sent.to_string()),
            (
                "messages/dropped",
                (s.dropped_queue_full + s.dropped_mailbox_full).to_string(),
            ),
            ("retained messages/count", g.retained.to_string()),
            ("subscriptions/count", g.subscriptions.to_string()),
            ("connections/refused", s.connections_refused.to_string()),
        ];
        for (name, value) in values {
            publish(&*source, &format!("$SYS/broker/{name}"), value);
        }
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
