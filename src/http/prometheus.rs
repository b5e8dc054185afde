//! `GET /metrics`: every counter and gauge the broker keeps, in the OpenMetrics text format
//! Prometheus scrapes, encoded by prometheus-client from a snapshot taken per scrape (the
//! broker's own atomics stay the only counters; nothing is counted twice).

use std::sync::Arc;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;

use super::HttpState;
use crate::observability::metrics::Snapshot;
use crate::observability::sys::{Gauges, SysSource};

/// The figures of one scrape.
#[derive(Debug)]
struct Figures {
    s: Snapshot,
    g: Gauges,
    /// (listener, transport, accepted, open) per listener.
    listeners: Vec<(String, &'static str, u64, u64)>,
    heap: u64,
    uptime: f64,
    /// With persistence: ops submitted, ops durable, and whether the store failed.
    store: Option<(u64, u64, bool)>,
}

/// One metric family: (labels, value) per series.
type Series<'a> = Vec<(Vec<(&'static str, String)>, u64)>;

fn family(
    enc: &mut DescriptorEncoder<'_>,
    name: &str,
    help: &str,
    kind: MetricType,
    series: Series<'_>,
) -> Result<(), std::fmt::Error> {
    let mut metric = enc.encode_descriptor(name, help, None, kind)?;
    for (labels, value) in &series {
        let one = metric.encode_family(labels)?;
        match kind {
            MetricType::Counter => ConstCounter::new(*value).encode(one)?,
            _ => ConstGauge::new(i64::try_from(*value).unwrap_or(i64::MAX)).encode(one)?,
        }
    }
    Ok(())
}

/// One series without labels.
fn one(value: u64) -> Series<'static> {
    vec![(Vec::new(), value)]
}

/// One series per QoS.
fn by_qos(values: [u64; 3]) -> Series<'static> {
    (0..3)
        .map(|q| (vec![("qos", q.to_string())], values[q]))
        .collect()
}

impl Collector for Figures {
    fn encode(&self, mut enc: DescriptorEncoder<'_>) -> Result<(), std::fmt::Error> {
        use MetricType::{Counter, Gauge};
        let (s, g) = (&self.s, &self.g);
        let e = &mut enc;
        let listener = |l: &(String, &'static str, u64, u64)| {
            vec![("listener", l.0.clone()), ("transport", l.1.to_string())]
        };
        family(
            e,
            "tern_connections",
            "Sockets open now (handshaking or connected), by listener and transport",
            Gauge,
            self.listeners.iter().map(|l| (listener(l), l.3)).collect(),
        )?;
        family(
            e,
            "tern_connections_accepted",
            "Sockets accepted, by listener and transport",
            Counter,
            self.listeners.iter().map(|l| (listener(l), l.2)).collect(),
        )?;
        family(
            e,
            "tern_connections_refused",
            "Sockets refused because a listener's max_connections was reached",
            Counter,
            one(s.connections_refused),
        )?;
        family(
            e,
            "tern_clients_connected",
            "Clients connected now (CONNACK sent)",
            Gauge,
            one(s.clients_connected),
        )?;
        family(
            e,
            "tern_clients_maximum",
            "Most clients connected at once since the start",
            Gauge,
            one(s.clients_maximum),
        )?;
        let offline = (g.clients_total as u64).saturating_sub(s.clients_connected);
        family(
            e,
            "tern_sessions",
            "Sessions, by state: online (connected) or offline (persistent, disconnected)",
            Gauge,
            vec![
                (vec![("state", "online".into())], s.clients_connected),
                (vec![("state", "offline".into())], offline),
            ],
        )?;
        family(
            e,
            "tern_packets_received",
            "Control packets received",
            Counter,
            one(s.packets_received),
        )?;
        family(
            e,
            "tern_messages_received",
            "PUBLISH packets received from clients, by QoS",
            Counter,
            by_qos(s.messages_received),
        )?;
        family(
            e,
            "tern_messages_sent",
            "PUBLISH packets sent to clients, by delivery QoS",
            Counter,
            by_qos(s.messages_sent),
        )?;
        family(
            e,
            "tern_payload_bytes_received",
            "Payload bytes of the PUBLISH packets received, by QoS",
            Counter,
            by_qos(s.payload_bytes_received),
        )?;
        family(
            e,
            "tern_payload_bytes_sent",
            "Payload bytes of the PUBLISH packets sent, by delivery QoS",
            Counter,
            by_qos(s.payload_bytes_sent),
        )?;
        family(
            e,
            "tern_bytes_received",
            "MQTT bytes read from connected clients",
            Counter,
            one(s.bytes_received),
        )?;
        family(
            e,
            "tern_bytes_sent",
            "MQTT bytes written to connected clients",
            Counter,
            one(s.bytes_sent),
        )?;
        let drops = [
            ("queue_full", s.dropped_queue_full),
            ("mailbox_full", s.dropped_mailbox_full),
            ("qos0_offline", s.dropped_qos0_offline),
            ("message_size_limit", s.dropped_oversize),
            ("memory_limit", s.dropped_memory_limit),
            ("cluster", s.cluster_dropped),
        ];
        family(
            e,
            "tern_messages_dropped",
            "Messages dropped by a configured limit, by reason",
            Counter,
            drops
                .iter()
                .map(|(r, v)| (vec![("reason", r.to_string())], *v))
                .collect(),
        )?;
        family(
            e,
            "tern_cluster_messages_forwarded",
            "Messages sent to the other nodes of the cluster",
            Counter,
            one(s.cluster_forwarded),
        )?;
        family(
            e,
            "tern_cluster_messages_received",
            "Messages from the other nodes of the cluster delivered here",
            Counter,
            one(s.cluster_received),
        )?;
        family(
            e,
            "tern_acl_denied",
            "PUBLISHes refused and deliveries withheld by the ACL",
            Counter,
            one(s.acl_denied),
        )?;
        family(
            e,
            "tern_auth_failures",
            "CONNECTs refused for a bad user name or password or as not authorised",
            Counter,
            one(s.auth_failures),
        )?;
        family(
            e,
            "tern_protocol_errors",
            "Connections closed for a protocol violation or a malformed packet",
            Counter,
            one(s.protocol_errors),
        )?;
        family(
            e,
            "tern_retained_refused",
            "Retained messages not stored because of the retained store's limits",
            Counter,
            one(s.retained_refused),
        )?;
        let gauges = [
            (
                "tern_retained_messages",
                "Retained messages stored",
                g.retained,
            ),
            (
                "tern_retained_bytes",
                "Payload bytes of the retained messages",
                g.retained_bytes,
            ),
            (
                "tern_subscriptions",
                "Subscriptions: every session's filters added up",
                g.subscriptions,
            ),
            (
                "tern_subscription_filters",
                "Distinct subscription filters",
                g.filters,
            ),
            (
                "tern_queued_messages",
                "Messages queued for sessions (mailboxes and mqueues)",
                g.queued,
            ),
            (
                "tern_inflight_messages",
                "Messages sent to clients and not yet acknowledged",
                g.inflight,
            ),
            (
                "tern_heap_bytes",
                "Heap bytes in use if counted (memory_limit set), else the resident set size",
                self.heap as usize,
            ),
        ];
        for (name, help, value) in gauges {
            family(e, name, help, Gauge, one(value as u64))?;
        }
        if let Some((submitted, durable, failed)) = self.store {
            family(
                e,
                "tern_store_ops_submitted",
                "Store operations submitted (records to write; with persistence)",
                Counter,
                one(submitted),
            )?;
            family(
                e,
                "tern_store_ops_durable",
                "Store operations written and synced as `sync` asks",
                Counter,
                one(durable),
            )?;
            family(
                e,
                "tern_store_failed",
                "1 once a write or sync failed: nothing more is acknowledged",
                Gauge,
                one(u64::from(failed)),
            )?;
        }
        let mut up = e.encode_descriptor(
            "tern_uptime_seconds",
            "Seconds since the broker started",
            None,
            Gauge,
        )?;
        ConstGauge::new(self.uptime).encode(up.encode_family(&Vec::<(&str, &str)>::new())?)?;
        Ok(())
    }
}

/// `GET /metrics`.
pub(super) async fn metrics(State(state): State<Arc<HttpState>>) -> impl IntoResponse {
    let shared = &state.shared;
    let figures = Figures {
        s: shared.metrics.snapshot(),
        g: shared.gauges(),
        listeners: shared
            .metrics
            .listeners()
            .iter()
            .map(|l| {
                let r =
                    |c: &std::sync::atomic::AtomicU64| c.load(std::sync::atomic::Ordering::Relaxed);
                (l.listener.clone(), l.transport, r(&l.accepted), r(&l.open))
            })
            .collect(),
        heap: crate::observability::memory::heap_or_resident() as u64,
        uptime: state.started.elapsed().as_secs_f64(),
        store: shared
            .store
            .as_ref()
            .map(|s| (s.submitted(), s.durable_lsn(), s.failed().is_some())),
    };
    let mut registry = Registry::default();
    registry.register_collector(Box::new(figures));
    let mut body = String::new();
    if prometheus_client::encoding::text::encode(&mut body, &registry).is_err() {
        return (
            StatusCode::INTERNAL_SERVER_ERROR,
            [(header::CONTENT_TYPE, "text/plain")],
            String::new(),
        );
    }
    (
        StatusCode::OK,
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        body,
    )
}
