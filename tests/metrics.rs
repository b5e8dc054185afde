//! `/metrics` in Prometheus' format, parsed the way a scraper would, and the `$SYS` topics
//! fed by the same counters.

mod common;

use std::collections::HashMap;
use std::time::Duration;

use common::{http_broker, http_get, within, Client, WAIT};
use rumqttc::QoS;

/// Parses a scrape; each sample as "name{sorted labels}" -> value.
fn scrape(body: &str) -> (prometheus_parse::Scrape, HashMap<String, f64>) {
    let lines = body.lines().map(|l| Ok(l.to_owned()));
    let parsed = prometheus_parse::Scrape::parse(lines).expect("a valid exposition");
    let mut samples = HashMap::new();
    for s in &parsed.samples {
        let mut labels: Vec<String> = s.labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
        labels.sort();
        let value = match s.value {
            prometheus_parse::Value::Counter(v)
            | prometheus_parse::Value::Gauge(v)
            | prometheus_parse::Value::Untyped(v) => v,
            _ => panic!("unexpected sample kind: {s:?}"),
        };
        samples.insert(format!("{}{{{}}}", s.metric, labels.join(",")), value);
    }
    (parsed, samples)
}

#[tokio::test]
async fn metrics_parse_and_count_traffic_by_qos_listener_and_reason() {
    let (broker, addr) = http_broker(|_| {}).await;
    let mut sub = Client::connect(broker.addr, "m-sub").await;
    sub.subscribe("m/#", QoS::AtLeastOnce).await;
    let mut publ = Client::connect(broker.addr, "m-pub").await;
    for _ in 0..3 {
        publ.publish_acked("m/a", false, "1234").await;
    }
    publ.publish("m/b", QoS::AtMostOnce, false, "xy").await;
    for _ in 0..4 {
        sub.next_publish().await;
    }
    let reply = http_get(addr, "/metrics").await;
    assert_eq!(reply.status, 200);
    assert!(
        reply
            .content_type
            .starts_with("application/openmetrics-text"),
        "{}",
        reply.content_type
    );
    let (parsed, samples) = scrape(&reply.body);
    let get = |k: &str| {
        *samples
            .get(k)
            .unwrap_or_else(|| panic!("no {k} in\n{}", reply.body))
    };
    assert_eq!(get("tern_messages_received_total{qos=1}"), 3.0);
    assert_eq!(get("tern_messages_received_total{qos=0}"), 1.0);
    assert_eq!(get("tern_messages_sent_total{qos=1}"), 3.0);
    assert_eq!(get("tern_payload_bytes_received_total{qos=1}"), 12.0);
    assert_eq!(get("tern_clients_connected{}"), 2.0);
    assert_eq!(get("tern_subscriptions{}"), 1.0);
    let listener = format!("listener={},transport=tcp", broker.addr);
    assert_eq!(get(&format!("tern_connections{{{listener}}}")), 2.0);
    assert_eq!(
        get(&format!("tern_connections_accepted_total{{{listener}}}")),
        2.0
    );
    assert_eq!(get("tern_sessions{state=online}"), 2.0);
    assert_eq!(get("tern_messages_dropped_total{reason=queue_full}"), 0.0);
    assert!(get("tern_bytes_received_total{}") > 0.0);
    assert!(get("tern_uptime_seconds{}") >= 0.0);
    // With persistence (the second pass), the store's figures are there too.
    if std::env::var_os("TERN_TEST_PERSISTENCE").is_some_and(|v| v == "1") {
        assert_eq!(get("tern_store_failed{}"), 0.0);
        let durable = get("tern_store_ops_durable_total{}");
        assert!(durable <= get("tern_store_ops_submitted_total{}"));
    }
    // Every family has its help text, and names are Prometheus style.
    for s in &parsed.samples {
        assert!(s.metric.starts_with("tern_"), "{}", s.metric);
        assert!(
            s.metric.chars().all(|c| c.is_ascii_lowercase() || c == '_'),
            "{}",
            s.metric
        );
        let family = s.metric.strip_suffix("_total").unwrap_or(&s.metric);
        assert!(
            reply.body.contains(&format!("# HELP {family} ")),
            "no HELP for {}",
            s.metric
        );
    }
    broker.stop().await;
}

#[tokio::test]
async fn connections_are_counted_per_listener_and_transport() {
    let (broker, addr) = http_broker(|c| {
        let mut ws = c.listener[0].clone();
        ws.protocol = "websockets".into();
        c.listener.push(ws);
    })
    .await;
    let ws_addr = broker.addrs()[1];
    let _tcp = Client::connect(broker.addr, "over-tcp").await;
    let (mut ws, _) = tokio_tungstenite::client_async(
        format!("ws://{ws_addr}/mqtt"),
        tokio::net::TcpStream::connect(ws_addr)
            .await
            .expect("connect"),
    )
    .await
    .expect("upgrade");
    use futures_util::SinkExt;
    let connect = common::connect_bytes("over-ws");
    ws.send(tokio_tungstenite::tungstenite::Message::binary(connect))
        .await
        .expect("send CONNECT");
    let connected = |r: &common::HttpReply| scrape(&r.body).1["tern_clients_connected{}"] == 2.0;
    let (_, samples) = scrape(
        &common::http_until(addr, "GET", "/metrics", connected)
            .await
            .body,
    );
    let tcp = format!("tern_connections{{listener={},transport=tcp}}", broker.addr);
    let wsl = format!("tern_connections{{listener={ws_addr},transport=ws}}");
    assert_eq!((samples[&tcp], samples[&wsl]), (1.0, 1.0));
    drop(ws);
    broker.stop().await;
}

#[tokio::test]
async fn drops_and_offline_sessions_show_in_metrics() {
    let (broker, addr) = http_broker(|c| c.session.max_queued_messages = 2).await;
    let mut opts = Client::options(broker.addr, "offline-sub");
    opts.set_clean_session(false);
    let (mut sub, _) = Client::connect_with(opts).await;
    sub.subscribe("d/#", QoS::AtLeastOnce).await;
    sub.disconnect().await;
    let mut publ = Client::connect(broker.addr, "d-pub").await;
    for _ in 0..5 {
        publ.publish_acked("d/x", false, "x").await;
    }
    let (_, samples) = scrape(&http_get(addr, "/metrics").await.body);
    assert_eq!(
        samples["tern_messages_dropped_total{reason=queue_full}"],
        3.0
    );
    assert_eq!(samples["tern_queued_messages{}"], 2.0);
    assert_eq!(samples["tern_sessions{state=offline}"], 1.0);
    broker.stop().await;
}

#[tokio::test]
async fn sys_publishes_mosquittos_broker_topics() {
    let broker =
        common::TestBroker::start_with(|c| c.sys.sys_interval = Duration::from_millis(200)).await;
    let mut sys = Client::connect(broker.addr, "sys-reader").await;
    sys.subscribe("$SYS/broker/#", QoS::AtMostOnce).await;
    let want = [
        "$SYS/broker/version",
        "$SYS/broker/uptime",
        "$SYS/broker/bytes/received",
        "$SYS/broker/bytes/sent",
        "$SYS/broker/clients/total",
        "$SYS/broker/clients/active",
        "$SYS/broker/clients/inactive",
        "$SYS/broker/clients/maximum",
        "$SYS/broker/subscriptions/count",
        "$SYS/broker/retained messages/count",
        "$SYS/broker/heap/current",
        "$SYS/broker/heap/maximum",
        "$SYS/broker/load/messages/received/1min",
        "$SYS/broker/load/messages/sent/5min",
        "$SYS/broker/load/bytes/received/15min",
        "$SYS/broker/load/connections/1min",
        "$SYS/broker/publish/messages/received",
        "$SYS/broker/messages/inflight",
    ];
    let mut values: HashMap<String, String> = HashMap::new();
    within(WAIT, async {
        // Until a round after our subscription: the retained round before it counted none.
        while want.iter().any(|t| !values.contains_key(*t))
            || values["$SYS/broker/subscriptions/count"] != "1"
        {
            let p = sys.next_publish().await;
            values.insert(
                p.topic.clone(),
                String::from_utf8_lossy(&p.payload).into_owned(),
            );
        }
    })
    .await;
    assert_eq!(values["$SYS/broker/clients/total"], "1");
    assert_eq!(values["$SYS/broker/clients/maximum"], "1");
    assert_eq!(values["$SYS/broker/subscriptions/count"], "1");
    assert!(
        values["$SYS/broker/heap/current"]
            .parse::<u64>()
            .expect("number")
            > 0
    );
    assert!(values["$SYS/broker/load/messages/received/1min"]
        .parse::<f64>()
        .is_ok());
    assert!(values["$SYS/broker/version"].starts_with("tern "));
    broker.stop().await;
}
