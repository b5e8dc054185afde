//! The `$SYS` publisher: every `sys_interval` it publishes the broker's counters as retained
//! messages under Mosquitto's `$SYS/broker/...` names. The `$` rule keeps them out of `#`.

use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;

use crate::broker::Shared;
use crate::message::{Message, QoS};

/// Publishes `$SYS/broker/...` until shutdown; returns at once if the interval is zero.
pub async fn run(shared: Arc<Shared>) {
    let period = shared.config.sys.sys_interval;
    if period.is_zero() {
        return;
    }
    let started = Instant::now();
    publish(
        &shared,
        "$SYS/broker/version",
        concat!("tern ", env!("CARGO_PKG_VERSION")).to_owned(),
    );
    let mut tick = tokio::time::interval(period);
    loop {
        tokio::select! {
            _ = shared.shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        let s = shared.metrics.snapshot();
        let values = [
            ("uptime", format!("{} seconds", started.elapsed().as_secs())),
            ("clients/connected", s.clients_connected.to_string()),
            ("clients/total", shared.registry.len().to_string()),
            ("messages/received", s.messages_received.to_string()),
            ("messages/sent", s.messages_sent.to_string()),
            (
                "messages/dropped",
                (s.dropped_queue_full + s.dropped_mailbox_full).to_string(),
            ),
            (
                "retained messages/count",
                shared.router.retain_store().len().to_string(),
            ),
            (
                "subscriptions/count",
                shared.router.filter_count().to_string(),
            ),
            ("connections/refused", s.connections_refused.to_string()),
        ];
        for (name, value) in values {
            publish(&shared, &format!("$SYS/broker/{name}"), value);
        }
    }
}

fn publish(shared: &Shared, topic: &str, value: String) {
    shared.router.publish(Arc::new(Message {
        topic: Bytes::copy_from_slice(topic.as_bytes()),
        payload: Bytes::from(value),
        qos: QoS::AtMostOnce,
        retain: true,
    }));
}
