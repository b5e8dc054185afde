//! Wills: published when the connection closes for any reason but DISCONNECT.

mod common;

use std::time::Duration;

use bytes::Bytes;
use common::{Raw, TestBroker};
use tern::codec::{Connect, LastWill, Packet, Protocol};
use tern::message::QoS;

const QUIET: Duration = Duration::from_millis(300);

fn connect_with_will(id: &str, keep_alive: u16, qos: QoS, retain: bool) -> Packet {
    Packet::Connect(Box::new(Connect {
        protocol: Protocol::V311,
        bridge: false,
        clean_session: true,
        keep_alive,
        client_id: id.into(),
        will: Some(LastWill {
            topic: Bytes::from_static(b"will/topic"),
            payload: Bytes::from_static(b"gone"),
            qos,
            retain,
        }),
        username: None,
        password: None,
    }))
}

async fn will_client(b: &TestBroker, id: &str, keep_alive: u16, qos: QoS, retain: bool) -> Raw {
    let mut raw = Raw::open(b.addr).await;
    raw.send_packet(&connect_with_will(id, keep_alive, qos, retain))
        .await;
    assert!(
        matches!(raw.recv().await, Packet::ConnAck(a) if a.code == tern::codec::ConnectReturnCode::Accepted)
    );
    raw
}

async fn watcher(b: &TestBroker) -> Raw {
    let (mut w, _) = Raw::connect(b.addr, "watcher", true, 60).await;
    w.subscribe(1, &[("will/#", QoS::AtLeastOnce)]).await;
    w
}

#[tokio::test]
async fn will_is_published_when_the_socket_closes_without_disconnect() {
    // [MQTT-3.1.2-8], [MQTT-3.1.2-16]
    let b = TestBroker::start().await;
    let mut w = watcher(&b).await;
    let raw = will_client(&b, "dies", 60, QoS::AtLeastOnce, false).await;
    drop(raw);
    let p = w.recv_publish().await;
    assert_eq!(
        (&p.topic[..], &p.payload[..], p.qos, p.retain),
        (&b"will/topic"[..], &b"gone"[..], QoS::AtLeastOnce, false)
    );
    w.send_packet(&Packet::PubAck(p.pkid.expect("id"))).await;
    // [MQTT-3.1.2-10] only once.
    w.expect_silence(QUIET).await;
    // Not retained: a later subscriber gets nothing.
    let (mut later, _) = Raw::connect(b.addr, "later", true, 60).await;
    later.subscribe(1, &[("will/#", QoS::AtLeastOnce)]).await;
    later.expect_silence(QUIET).await;
}

#[tokio::test]
async fn will_is_not_published_after_disconnect() {
    // [MQTT-3.14.4-3], [MQTT-3.1.2-10]
    let b = TestBroker::start().await;
    let mut w = watcher(&b).await;
    let mut raw = will_client(&b, "polite", 60, QoS::AtMostOnce, false).await;
    raw.send(&[0xe0, 0x00]).await;
    raw.expect_closed_silently().await;
    w.expect_silence(QUIET).await;
}

#[tokio::test]
async fn will_is_published_on_keepalive_timeout() {
    // [MQTT-3.1.2-24]
    let b = TestBroker::start().await;
    let mut w = watcher(&b).await;
    let mut raw = will_client(&b, "silent", 1, QoS::AtMostOnce, false).await;
    raw.expect_closed_silently().await;
    assert_eq!(&w.recv_publish().await.payload[..], b"gone");
}

#[tokio::test]
async fn will_is_published_on_protocol_error() {
    // [MQTT-3.14.1-1]: DISCONNECT with reserved flags is a violation, not a DISCONNECT.
    let b = TestBroker::start().await;
    let mut w = watcher(&b).await;
    let mut raw = will_client(&b, "rude", 60, QoS::AtMostOnce, false).await;
    raw.send(&[0xe1, 0x00]).await;
    raw.expect_closed_silently().await;
    assert_eq!(&w.recv_publish().await.payload[..], b"gone");
}

#[tokio::test]
async fn will_is_published_on_takeover() {
    // Our choice (README, "Behaviour where the spec leaves a choice"): the old connection
    // closed without DISCONNECT, so its will goes out.
    let b = TestBroker::start().await;
    let mut w = watcher(&b).await;
    let mut old = will_client(&b, "twin", 60, QoS::AtMostOnce, false).await;
    let (_new, _) = Raw::connect(b.addr, "twin", true, 60).await;
    old.expect_closed_silently().await;
    assert_eq!(&w.recv_publish().await.payload[..], b"gone");
}

#[tokio::test]
async fn retained_will_is_kept_for_later_subscribers() {
    // [MQTT-3.1.2-17]
    let b = TestBroker::start().await;
    let raw = will_client(&b, "legacy", 60, QoS::AtLeastOnce, true).await;
    let mut w = watcher(&b).await;
    drop(raw);
    let live = w.recv_publish().await;
    assert!(!live.retain);
    w.send_packet(&Packet::PubAck(live.pkid.expect("id"))).await;
    let (mut later, _) = Raw::connect(b.addr, "later", true, 60).await;
    later
        .subscribe(1, &[("will/topic", QoS::AtLeastOnce)])
        .await;
    let p = later.recv_publish().await;
    assert!(p.retain);
    assert_eq!(&p.payload[..], b"gone");
}

#[tokio::test]
async fn will_with_wildcard_topic_is_refused() {
    // [MQTT-3.1.3-10] plus [MQTT-4.7.1-1]: closed without CONNACK.
    let b = TestBroker::start().await;
    let mut raw = Raw::open(b.addr).await;
    raw.send_packet(&Packet::Connect(Box::new(Connect {
        protocol: Protocol::V311,
        bridge: false,
        clean_session: true,
        keep_alive: 60,
        client_id: "w".into(),
        will: Some(LastWill {
            topic: Bytes::from_static(b"will/#"),
            payload: Bytes::new(),
            qos: QoS::AtMostOnce,
            retain: false,
        }),
        username: None,
        password: None,
    })))
    .await;
    raw.expect_closed_silently().await;
}

#[tokio::test]
async fn will_is_published_on_a_socket_error() {
    // [MQTT-3.1.2-8]: a connection reset is a network failure like any other.
    let b = TestBroker::start().await;
    let mut w = watcher(&b).await;
    let raw = will_client(&b, "reset", 60, QoS::AtMostOnce, false).await;
    // A zero linger makes close send RST at once; the deprecation is about blocking on a
    // non-zero linger.
    #[allow(deprecated)]
    raw.stream.set_linger(Some(Duration::ZERO)).expect("linger");
    drop(raw);
    assert_eq!(&w.recv_publish().await.payload[..], b"gone");
}

#[tokio::test]
async fn no_will_flag_means_no_will() {
    // [MQTT-3.1.2-12]
    let b = TestBroker::start().await;
    let mut w = watcher(&b).await;
    let (raw, _) = Raw::connect(b.addr, "no-will", true, 60).await;
    drop(raw);
    w.expect_silence(QUIET).await;
}

/// A CONNECT whose retained QoS 0 will goes to `topic`.
fn deep_will(id: &str, topic: String) -> Packet {
    let mut p = connect_with_will(id, 60, QoS::AtMostOnce, true);
    if let Packet::Connect(c) = &mut p {
        if let Some(w) = &mut c.will {
            w.topic = Bytes::from(topic);
        }
    }
    p
}

#[tokio::test]
async fn will_topics_obey_the_topic_level_limits() {
    // `a/a/...` 65,535 bytes long: 32,768 levels, which a retained will would have built into
    // the retained tree, to be walked by the next `#` subscriber's recursion.
    let deep = vec!["a"; 32_768].join("/");
    for max in [128, 0] {
        let b = TestBroker::start_with(|c| c.mqtt.max_topic_levels = max).await;
        let mut raw = Raw::open(b.addr).await;
        raw.send_packet(&deep_will("deep", deep.clone())).await;
        raw.expect_closed_silently().await;
        assert_eq!(b.metrics.snapshot().protocol_errors, 1, "max {max}");
        // Even with "no limit", 1,024 levels is the most any topic may have; that many is fine.
        if max == 0 {
            let cap = vec!["a"; tern::routing::topic::MAX_LEVELS].join("/");
            let (mut live, _) = Raw::connect(b.addr, "live", true, 60).await;
            live.subscribe(1, &[("#", QoS::AtMostOnce)]).await;
            let mut raw = Raw::open(b.addr).await;
            raw.send_packet(&deep_will("cap", cap.clone())).await;
            assert!(matches!(raw.recv().await, Packet::ConnAck(_)));
            drop(raw);
            // Stored before it is routed: once it arrives live, it is retained.
            assert_eq!(live.recv_publish().await.topic.len(), cap.len());
            let (mut sub, _) = Raw::connect(b.addr, "sub", true, 60).await;
            sub.subscribe(1, &[("#", QoS::AtMostOnce)]).await;
            let p = sub.recv_publish().await;
            assert_eq!((p.topic.len(), p.retain), (cap.len(), true));
        }
    }
}
