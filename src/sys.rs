//! The `$SYS` publisher: every `sys_interval` it publishes the broker's counters as retained
//! messages under Mosquitto's `$SYS/broker/...` names. The `$` rule keeps them out of `#`.
//! A reload that changes the interval takes effect at once (0 pauses the topics).

use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;

use crate::broker::Shared;
use crate::message::{Message, QoS};

/// Publishes `$SYS/broker/...` until shutdown, every `sys_interval` in force.
pub async fn run(shared: Arc<Shared>) {
    let started = Instant::now();
    let mut announced = false;
    let mut next = tokio::time::Instant::now();
    loop {
        let period = shared.config.load().sys.sys_interval;
        // Registered before the interval is acted on, so a reload in between is not missed.
        let reloaded = shared.reloaded.notified();
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
            _ = shared.shutdown.cancelled() => return,
            _ = &mut reloaded => {
                next = tokio::time::Instant::now();
                continue;
            }
            _ = tick => {}
        }
        next = tokio::time::Instant::now() + period;
        if !announced {
            announced = true;
            publish(
                &shared,
                "$SYS/broker/version",
                concat!("tern ", env!("CARGO_PKG_VERSION")).to_owned(),
            );
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
