//! Retained messages: stored per topic, replaced, deleted by an empty payload, sent on
//! subscribe with RETAIN=1 after the SUBACK, forwarded live with RETAIN=0.

mod common;

use std::time::Duration;

use common::{Client, Raw, TestBroker};
use tern::codec::Packet;
use tern::message::QoS;

const QUIET: Duration = Duration::from_millis(300);

/// Publishes a retained QoS 1 message from a raw client and waits for its PUBACK.
async fn retain(b: &TestBroker, topic: &str, qos: QoS, payload: &[u8]) {
    let (mut p, _) = Raw::connect(b.addr, "retainer", true, 60).await;
    let pkid = (qos != QoS::AtMostOnce).then_some(1);
    p.publish(topic, qos, pkid, true, payload).await;
    if pkid.is_some() {
        assert_eq!(p.recv().await, Packet::PubAck(1));
    } else {
        // A PINGREQ round trip proves the QoS 0 publish was processed.
        p.send(&[0xc0, 0]).await;
        assert_eq!(p.recv().await, Packet::PingResp);
    }
}

#[tokio::test]
async fn retained_message_is_sent_on_subscribe_with_retain_1_after_suback() {
    // [MQTT-3.3.1-5], [MQTT-3.3.1-8], [MQTT-3.1.2-7]: it outlives the publisher's session.
    let b = TestBroker::start().await;
    retain(&b, "r/t", QoS::AtLeastOnce, b"kept").await;
    let (mut sub, _) = Raw::connect(b.addr, "late", true, 60).await;
    // Raw::subscribe reads the next packet and requires it to be the SUBACK.
    sub.subscribe(3, &[("r/t", QoS::AtLeastOnce)]).await;
    let p = sub.recv_publish().await;
    assert!(p.retain, "RETAIN=1 on a subscription's retained message");
    assert_eq!(p.qos, QoS::AtLeastOnce);
    assert_eq!(&p.payload[..], b"kept");
}

#[tokio::test]
async fn retained_qos_is_downgraded_to_the_grant() {
    // [MQTT-3.3.1-5], [MQTT-3.8.4-6]
    let b = TestBroker::start().await;
    retain(&b, "r/q", QoS::AtLeastOnce, b"q1").await;
    let (mut sub, _) = Raw::connect(b.addr, "q0", true, 60).await;
    sub.subscribe(1, &[("r/q", QoS::AtMostOnce)]).await;
    let p = sub.recv_publish().await;
    assert_eq!((p.qos, p.retain), (QoS::AtMostOnce, true));
}

#[tokio::test]
async fn live_forward_has_retain_0() {
    // [MQTT-3.3.1-9]
    let b = TestBroker::start().await;
    let (mut sub, _) = Raw::connect(b.addr, "live", true, 60).await;
    sub.subscribe(1, &[("r/live", QoS::AtMostOnce)]).await;
    retain(&b, "r/live", QoS::AtLeastOnce, b"now").await;
    let p = sub.recv_publish().await;
    assert!(!p.retain);
    assert_eq!(&p.payload[..], b"now");
}

#[tokio::test]
async fn wildcard_subscription_gets_every_matching_retained_message() {
    // [MQTT-3.3.1-6]
    let b = TestBroker::start().await;
    for t in ["home/a", "home/b", "home/c/d", "office/a"] {
        retain(&b, t, QoS::AtLeastOnce, t.as_bytes()).await;
    }
    let mut sub = Client::connect(b.addr, "wild").await;
    sub.subscribe("home/#", rumqttc::QoS::AtLeastOnce).await;
    let mut topics = Vec::new();
    for _ in 0..3 {
        let p = sub.next_publish().await;
        assert!(p.retain);
        topics.push(p.topic);
    }
    topics.sort();
    assert_eq!(topics, ["home/a", "home/b", "home/c/d"]);
    sub.expect_no_publish(QUIET).await;
}

#[tokio::test]
async fn newer_retained_message_replaces_the_old_even_at_qos0() {
    // [MQTT-3.3.1-7]
    let b = TestBroker::start().await;
    retain(&b, "r/x", QoS::AtLeastOnce, b"old").await;
    retain(&b, "r/x", QoS::AtMostOnce, b"new").await;
    let (mut sub, _) = Raw::connect(b.addr, "replace", true, 60).await;
    sub.subscribe(1, &[("r/x", QoS::AtLeastOnce)]).await;
    let p = sub.recv_publish().await;
    assert_eq!((&p.payload[..], p.qos), (&b"new"[..], QoS::AtMostOnce));
    sub.expect_silence(QUIET).await;
}

#[tokio::test]
async fn empty_retained_payload_is_delivered_and_deletes() {
    // [MQTT-3.3.1-10], [MQTT-3.3.1-11]
    let b = TestBroker::start().await;
    retain(&b, "r/d", QoS::AtLeastOnce, b"doomed").await;
    let (mut live, _) = Raw::connect(b.addr, "live", true, 60).await;
    live.subscribe(1, &[("r/d", QoS::AtMostOnce)]).await;
    assert_eq!(&live.recv_publish().await.payload[..], b"doomed");
    retain(&b, "r/d", QoS::AtLeastOnce, b"").await;
    let p = live.recv_publish().await;
    assert!(
        p.payload.is_empty(),
        "the delete is delivered as a normal message"
    );
    let (mut later, _) = Raw::connect(b.addr, "later", true, 60).await;
    later.subscribe(1, &[("r/#", QoS::AtMostOnce)]).await;
    later.expect_silence(QUIET).await;
}

#[tokio::test]
async fn non_retained_publish_leaves_the_retained_message() {
    // [MQTT-3.3.1-12]
    let b = TestBroker::start().await;
    retain(&b, "r/k", QoS::AtLeastOnce, b"keep").await;
    let (mut p, _) = Raw::connect(b.addr, "plain", true, 60).await;
    p.publish("r/k", QoS::AtLeastOnce, Some(1), false, b"")
        .await;
    assert_eq!(p.recv().await, Packet::PubAck(1));
    p.publish("r/k", QoS::AtLeastOnce, Some(2), false, b"transient")
        .await;
    assert_eq!(p.recv().await, Packet::PubAck(2));
    let (mut sub, _) = Raw::connect(b.addr, "check", true, 60).await;
    sub.subscribe(1, &[("r/k", QoS::AtMostOnce)]).await;
    assert_eq!(&sub.recv_publish().await.payload[..], b"keep");
}

#[tokio::test]
async fn resubscribing_resends_retained_messages() {
    // [MQTT-3.8.4-3]
    let b = TestBroker::start().await;
    retain(&b, "r/again", QoS::AtLeastOnce, b"r").await;
    let (mut sub, _) = Raw::connect(b.addr, "again", true, 60).await;
    for pkid in [1u16, 2] {
        sub.subscribe(pkid, &[("r/again", QoS::AtMostOnce)]).await;
        let p = sub.recv_publish().await;
        assert!(p.retain);
    }
}

#[tokio::test]
async fn retained_store_limits_are_counted() {
    let b = TestBroker::start_with(|c| {
        c.retain.max_retained_messages = 1;
        c.retain.retained_payload_limit = 4;
    })
    .await;
    retain(&b, "r/1", QoS::AtLeastOnce, b"1").await;
    retain(&b, "r/2", QoS::AtLeastOnce, b"2").await;
    let (mut sub, _) = Raw::connect(b.addr, "limits", true, 60).await;
    sub.subscribe(1, &[("r/#", QoS::AtMostOnce)]).await;
    assert_eq!(&sub.recv_publish().await.payload[..], b"1");
    sub.expect_silence(QUIET).await;
    // [MQTT-3.3.1-7] a newer retained message replaces the old one even when it is too large
    // to keep: the old one is discarded, never served in its place.
    retain(&b, "r/1", QoS::AtLeastOnce, b"too long").await;
    assert_eq!(b.metrics.snapshot().retained_refused, 2);
    let (mut sub, _) = Raw::connect(b.addr, "limits2", true, 60).await;
    sub.subscribe(1, &[("r/#", QoS::AtMostOnce)]).await;
    sub.expect_silence(QUIET).await;
    // With the store's one place free again, a new topic fits.
    retain(&b, "r/3", QoS::AtLeastOnce, b"3").await;
    let (mut sub, _) = Raw::connect(b.addr, "limits3", true, 60).await;
    sub.subscribe(1, &[("r/#", QoS::AtMostOnce)]).await;
    assert_eq!(&sub.recv_publish().await.payload[..], b"3");
    sub.expect_silence(QUIET).await;
}

#[tokio::test]
async fn retain_unavailable_closes_on_retained_publish() {
    let b = TestBroker::start_with(|c| c.mqtt.retain_available = false).await;
    let (mut p, _) = Raw::connect(b.addr, "noretain", true, 60).await;
    p.publish("r", QoS::AtMostOnce, None, true, b"x").await;
    p.expect_closed_silently().await;
    // A retained will is refused the same way, at CONNECT (as Mosquitto does).
    let mut w = Raw::open(b.addr).await;
    w.send_packet(&will_connect("r/will", true)).await;
    w.expect_closed_silently().await;
    assert_eq!(b.metrics.snapshot().protocol_errors, 2);
}

/// A CONNECT with a QoS 0 will on `topic`.
fn will_connect(topic: &str, retain: bool) -> Packet {
    Packet::Connect(Box::new(tern::codec::Connect {
        will: Some(tern::codec::LastWill {
            topic: bytes::Bytes::copy_from_slice(topic.as_bytes()),
            payload: bytes::Bytes::from_static(b"gone"),
            qos: QoS::AtMostOnce,
            retain,
        }),
        ..match common::connect_packet("will-client", true, 60) {
            Packet::Connect(c) => *c,
            _ => unreachable!("connect_packet makes a CONNECT"),
        }
    }))
}

#[tokio::test]
async fn upgrade_outgoing_qos_applies_to_retained_and_live_messages_alike() {
    // Non-standard (as Mosquitto's option): deliver at the subscription's QoS.
    let b = TestBroker::start_with(|c| c.mqtt.upgrade_outgoing_qos = true).await;
    retain(&b, "up/r", QoS::AtMostOnce, b"retained").await;
    let (mut sub, _) = Raw::connect(b.addr, "upgraded", true, 60).await;
    sub.subscribe(1, &[("up/#", QoS::AtLeastOnce)]).await;
    let p = sub.recv_publish().await;
    assert_eq!(
        (&p.payload[..], p.qos, p.retain),
        (&b"retained"[..], QoS::AtLeastOnce, true)
    );
    sub.send_packet(&Packet::PubAck(p.pkid.expect("id"))).await;
    let (mut publisher, _) = Raw::connect(b.addr, "p0", true, 60).await;
    publisher
        .publish("up/live", QoS::AtMostOnce, None, false, b"live")
        .await;
    let p = sub.recv_publish().await;
    assert_eq!(
        (&p.payload[..], p.qos, p.retain),
        (&b"live"[..], QoS::AtLeastOnce, false)
    );
}
