//! QoS 2 in both directions (spec 4.3.3, Method B on the inbound side).

mod common;

use std::time::Duration;

use common::{Client, Raw, TestBroker};
use tern::codec::{Packet, Publish};
use tern::message::QoS;

const QUIET: Duration = Duration::from_millis(300);

fn publish2(pkid: u16, dup: bool, payload: &'static [u8]) -> Packet {
    Packet::Publish(Publish {
        dup,
        qos: QoS::ExactlyOnce,
        retain: false,
        topic: bytes::Bytes::from_static(b"q2"),
        pkid: Some(pkid),
        payload: bytes::Bytes::from_static(payload),
    })
}

#[tokio::test]
async fn inbound_qos2_is_delivered_once_despite_a_dup_resend() {
    // [MQTT-4.3.3-2], [MQTT-3.3.4-1], [MQTT-2.3.1-6]
    let b = TestBroker::start().await;
    let (mut sub, _) = Raw::connect(b.addr, "sub", true, 60).await;
    sub.subscribe(1, &[("q2", QoS::AtMostOnce)]).await;
    let (mut publisher, _) = Raw::connect(b.addr, "pub", true, 60).await;
    publisher.send_packet(&publish2(10, false, b"once")).await;
    assert_eq!(
        publisher.recv_bytes(4).await,
        [0x50, 0x02, 0x00, 0x0a],
        "PUBREC with the id"
    );
    // A resend before PUBREL is answered again but not routed again.
    publisher.send_packet(&publish2(10, true, b"once")).await;
    assert_eq!(publisher.recv().await, Packet::PubRec(10));
    publisher.send(&[0x62, 0x02, 0x00, 0x0a]).await;
    assert_eq!(
        publisher.recv_bytes(4).await,
        [0x70, 0x02, 0x00, 0x0a],
        "PUBCOMP with the id"
    );
    assert_eq!(&sub.recv_publish().await.payload[..], b"once");
    sub.expect_silence(QUIET).await;
    // After PUBREL the id is free: the same id is a new message.
    publisher.send_packet(&publish2(10, false, b"twice")).await;
    assert_eq!(publisher.recv().await, Packet::PubRec(10));
    publisher.send_packet(&Packet::PubRel(10)).await;
    assert_eq!(publisher.recv().await, Packet::PubComp(10));
    assert_eq!(&sub.recv_publish().await.payload[..], b"twice");
}

#[tokio::test]
async fn outbound_qos2_flow_pubrec_pubrel_pubcomp() {
    // [MQTT-4.3.3-1], [MQTT-3.3.1-1] (DUP 0 on first send), [MQTT-2.3.1-6]
    let b = TestBroker::start_with(|c| c.session.max_inflight_messages = 1).await;
    let (mut sub, _) = Raw::connect(b.addr, "sub", true, 60).await;
    sub.subscribe(1, &[("q2", QoS::ExactlyOnce)]).await;
    let (mut publisher, _) = Raw::connect(b.addr, "pub", true, 60).await;
    for (id, payload) in [(1u16, &b"a"[..]), (2, b"b")] {
        publisher
            .publish("q2", QoS::ExactlyOnce, Some(id), false, payload)
            .await;
        assert_eq!(publisher.recv().await, Packet::PubRec(id));
        publisher.send_packet(&Packet::PubRel(id)).await;
        assert_eq!(publisher.recv().await, Packet::PubComp(id));
    }
    let p = sub.recv_publish().await;
    assert_eq!(
        (p.qos, p.dup, &p.payload[..]),
        (QoS::ExactlyOnce, false, &b"a"[..])
    );
    let id = p.pkid.expect("id");
    sub.send_packet(&Packet::PubRec(id)).await;
    assert_eq!(sub.recv().await, Packet::PubRel(id));
    // The window of one is still held until PUBCOMP.
    sub.expect_silence(QUIET).await;
    sub.send_packet(&Packet::PubComp(id)).await;
    let p = sub.recv_publish().await;
    assert_eq!(&p.payload[..], b"b");
}

#[tokio::test]
async fn qos2_is_downgraded_by_the_grant() {
    // [MQTT-3.8.4-6]
    let b = TestBroker::start().await;
    let (mut sub, _) = Raw::connect(b.addr, "sub", true, 60).await;
    sub.subscribe(1, &[("q2", QoS::AtLeastOnce)]).await;
    let (mut publisher, _) = Raw::connect(b.addr, "pub", true, 60).await;
    publisher.send_packet(&publish2(3, false, b"x")).await;
    assert_eq!(publisher.recv().await, Packet::PubRec(3));
    assert_eq!(sub.recv_publish().await.qos, QoS::AtLeastOnce);
}

#[tokio::test]
async fn rumqttc_qos2_round_trip() {
    let b = TestBroker::start().await;
    let mut sub = Client::connect(b.addr, "sub").await;
    sub.subscribe("q2/#", rumqttc::QoS::ExactlyOnce).await;
    let publisher = Client::connect(b.addr, "pub").await;
    for i in 0..50u8 {
        publisher
            .publish("q2/x", rumqttc::QoS::ExactlyOnce, false, vec![i])
            .await;
    }
    for i in 0..50u8 {
        let p = sub.next_publish().await;
        assert_eq!(
            (p.qos, &p.payload[..]),
            (rumqttc::QoS::ExactlyOnce, &[i][..])
        );
    }
    sub.expect_no_publish(QUIET).await;
}

#[tokio::test]
async fn qos2_ids_awaiting_pubrel_are_capped() {
    // A client that never sends PUBREL would otherwise keep up to 65,535 ids for the life of
    // its session: it gets `max_awaiting_rel` of them, and the next one closes it.
    let b = TestBroker::start().await;
    let (mut sub, _) = Raw::connect(b.addr, "sub", true, 60).await;
    sub.subscribe(1, &[("q2", QoS::AtMostOnce)]).await;
    let (mut hog, _) = Raw::connect(b.addr, "hog", false, 60).await;
    let mut all = bytes::BytesMut::new();
    for id in 1..=u16::MAX {
        tern::codec::encode(&publish2(id, false, b"x"), &mut all);
    }
    // Written whole while the broker reads: it closes part way, so the write may fail.
    let _ = tokio::io::AsyncWriteExt::write_all(&mut hog.stream, &all).await;
    // Closed: the PUBRECs that arrive come in order (a close with unread input is a reset, so
    // some may be lost on the way); the subscriber's count is the exact one.
    let mut recs = 0;
    while let Some(p) = hog.read_to_close_or_packet().await {
        assert_eq!(p, Packet::PubRec(recs + 1), "in order, then closed");
        recs += 1;
    }
    assert!(recs <= 100, "{recs}");
    for _ in 0..100 {
        assert_eq!(&sub.recv_publish().await.payload[..], b"x");
    }
    sub.expect_silence(QUIET).await;
    assert_eq!(b.metrics.snapshot().protocol_errors, 1);
    // The session keeps its 100 ids; releasing one makes room for one more.
    let (mut hog, ack) = Raw::connect(b.addr, "hog", false, 60).await;
    assert!(ack.session_present);
    hog.send_packet(&Packet::PubRel(1)).await;
    assert_eq!(hog.recv().await, Packet::PubComp(1));
    hog.send_packet(&publish2(1000, false, b"y")).await;
    assert_eq!(hog.recv().await, Packet::PubRec(1000));
    hog.send_packet(&publish2(1001, false, b"z")).await;
    assert_eq!(hog.read_to_close_or_packet().await, None);
}
