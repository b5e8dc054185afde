//! PUBLISH at QoS 0 and 1 in both directions, QoS downgrade, overlapping subscriptions,
//! the inflight window, topic-name rules and ordering.

mod common;

use std::time::Duration;

use common::{within, Client, Raw, TestBroker, WAIT};
use tern::codec::{Packet, SubAckCode};
use tern::message::QoS;

const QUIET: Duration = Duration::from_millis(300);

#[tokio::test]
async fn qos0_both_directions_has_no_packet_id_and_dup_0() {
    // [MQTT-2.3.1-5], [MQTT-3.3.1-2], [MQTT-4.3.1-1], [MQTT-3.3.4-1]
    let b = TestBroker::start().await;
    let (mut sub, _) = Raw::connect(b.addr, "sub", true, 60).await;
    sub.subscribe(1, &[("t", QoS::AtLeastOnce)]).await;
    let (mut publisher, _) = Raw::connect(b.addr, "pub", true, 60).await;
    publisher
        .publish("t", QoS::AtMostOnce, None, false, b"hi")
        .await;
    // 0x30, remaining 5 = topic (2+1) + payload 2: no packet id, no DUP, QoS 0.
    assert_eq!(
        sub.recv_bytes(7).await,
        [0x30, 0x05, 0x00, 0x01, b't', b'h', b'i']
    );
    // The publisher gets nothing back at QoS 0.
    publisher.expect_silence(QUIET).await;
}

#[tokio::test]
async fn qos1_both_directions_with_puback_ids() {
    // [MQTT-3.3.4-1], [MQTT-2.3.1-6], [MQTT-4.3.2-1], [MQTT-4.3.2-2], [MQTT-3.3.1-3]
    let b = TestBroker::start().await;
    let (mut sub, _) = Raw::connect(b.addr, "sub", true, 60).await;
    sub.subscribe(1, &[("t", QoS::AtLeastOnce)]).await;
    let (mut publisher, _) = Raw::connect(b.addr, "pub", true, 60).await;
    // The incoming DUP flag does not carry over to the delivery.
    publisher
        .send_packet(&Packet::Publish(tern::codec::Publish {
            dup: true,
            qos: QoS::AtLeastOnce,
            retain: false,
            topic: bytes::Bytes::from_static(b"t"),
            pkid: Some(0x0102),
            payload: bytes::Bytes::from_static(b"one"),
        }))
        .await;
    assert_eq!(publisher.recv_bytes(4).await, [0x40, 0x02, 0x01, 0x02]);
    let p = sub.recv_publish().await;
    assert_eq!(p.qos, QoS::AtLeastOnce);
    assert!(!p.dup, "first delivery has DUP=0");
    let first_id = p.pkid.expect("QoS 1 has an id");
    assert_ne!(first_id, 0);
    sub.send_packet(&Packet::PubAck(first_id)).await;
    // After PUBACK, the same packet id is a new message and is delivered again.
    publisher
        .publish("t", QoS::AtLeastOnce, Some(0x0102), false, b"two")
        .await;
    assert_eq!(publisher.recv().await, Packet::PubAck(0x0102));
    let p = sub.recv_publish().await;
    assert_eq!(&p.payload[..], b"two");
}

#[tokio::test]
async fn rumqttc_qos1_round_trip() {
    let b = TestBroker::start().await;
    let mut sub = Client::connect(b.addr, "sub").await;
    sub.subscribe("room/+", rumqttc::QoS::AtLeastOnce).await;
    let mut publisher = Client::connect(b.addr, "pub").await;
    publisher.publish_acked("room/1", false, "hello").await;
    let p = sub.next_publish().await;
    assert_eq!(
        (p.topic.as_str(), &p.payload[..], p.qos),
        ("room/1", &b"hello"[..], rumqttc::QoS::AtLeastOnce)
    );
}

#[tokio::test]
async fn delivery_qos_is_the_minimum_of_publish_and_grant() {
    // [MQTT-3.8.4-6]
    let b = TestBroker::start().await;
    let (mut sub0, _) = Raw::connect(b.addr, "sub0", true, 60).await;
    sub0.subscribe(1, &[("t", QoS::AtMostOnce)]).await;
    let (mut sub1, _) = Raw::connect(b.addr, "sub1", true, 60).await;
    sub1.subscribe(1, &[("t", QoS::AtLeastOnce)]).await;
    let (mut publisher, _) = Raw::connect(b.addr, "pub", true, 60).await;
    publisher
        .publish("t", QoS::AtLeastOnce, Some(1), false, b"q1")
        .await;
    assert_eq!(publisher.recv().await, Packet::PubAck(1));
    publisher
        .publish("t", QoS::AtMostOnce, None, false, b"q0")
        .await;
    assert_eq!(sub0.recv_publish().await.qos, QoS::AtMostOnce);
    assert_eq!(sub0.recv_publish().await.qos, QoS::AtMostOnce);
    let p = sub1.recv_publish().await;
    assert_eq!(p.qos, QoS::AtLeastOnce);
    sub1.send_packet(&Packet::PubAck(p.pkid.expect("id"))).await;
    assert_eq!(sub1.recv_publish().await.qos, QoS::AtMostOnce);
}

#[tokio::test]
async fn overlapping_subscriptions_deliver_once_at_the_highest_qos() {
    // [MQTT-3.3.5-1]
    let b = TestBroker::start().await;
    let (mut sub, _) = Raw::connect(b.addr, "overlap", true, 60).await;
    let codes = sub
        .subscribe(
            1,
            &[
                ("a/#", QoS::AtMostOnce),
                ("a/b", QoS::AtLeastOnce),
                ("+/b", QoS::AtMostOnce),
            ],
        )
        .await;
    assert_eq!(codes.len(), 3);
    let (mut publisher, _) = Raw::connect(b.addr, "pub", true, 60).await;
    publisher
        .publish("a/b", QoS::AtLeastOnce, Some(9), false, b"x")
        .await;
    assert_eq!(publisher.recv().await, Packet::PubAck(9));
    let p = sub.recv_publish().await;
    assert_eq!(p.qos, QoS::AtLeastOnce);
    sub.send_packet(&Packet::PubAck(p.pkid.expect("id"))).await;
    sub.expect_silence(QUIET).await;
}

#[tokio::test]
async fn inflight_window_holds_until_puback() {
    // [MQTT-4.3.2-1], [MQTT-2.3.1-4]: at most max_inflight unacknowledged, ids distinct.
    let b = TestBroker::start_with(|c| c.session.max_inflight_messages = 2).await;
    let (mut sub, _) = Raw::connect(b.addr, "slow", true, 60).await;
    sub.subscribe(1, &[("t", QoS::AtLeastOnce)]).await;
    let (mut publisher, _) = Raw::connect(b.addr, "pub", true, 60).await;
    for i in 1..=4u16 {
        publisher
            .publish("t", QoS::AtLeastOnce, Some(i), false, &[i as u8])
            .await;
        assert_eq!(publisher.recv().await, Packet::PubAck(i));
    }
    let a = sub.recv_publish().await;
    let c = sub.recv_publish().await;
    assert_ne!(a.pkid, c.pkid);
    assert_eq!((&a.payload[..], &c.payload[..]), (&[1u8][..], &[2u8][..]));
    sub.expect_silence(QUIET).await;
    sub.send_packet(&Packet::PubAck(a.pkid.expect("id"))).await;
    let d = sub.recv_publish().await;
    assert_eq!(&d.payload[..], &[3u8]);
    sub.expect_silence(QUIET).await;
    sub.send_packet(&Packet::PubAck(c.pkid.expect("id"))).await;
    sub.send_packet(&Packet::PubAck(d.pkid.expect("id"))).await;
    assert_eq!(&sub.recv_publish().await.payload[..], &[4u8]);
}

#[tokio::test]
async fn invalid_topic_names_close_the_connection() {
    // [MQTT-3.3.2-2], [MQTT-4.7.1-1], [MQTT-4.7.3-1], [MQTT-3.3.2-1], [MQTT-4.7.3-2], [MQTT-3.3.1-4]
    let b = TestBroker::start().await;
    let cases: &[&[u8]] = &[
        &[0x30, 5, 0, 3, b'a', b'/', b'+'],
        &[0x30, 3, 0, 1, b'#'],
        &[0x30, 2, 0, 0],
        &[0x30, 4, 0, 2, 0xc3, 0x28],
        &[0x30, 4, 0, 2, b'a', 0],
        &[0x36, 5, 0, 1, b't', 0, 1],
    ];
    for bytes in cases {
        let (mut raw, _) = Raw::connect(b.addr, "bad-topic", true, 60).await;
        raw.send(bytes).await;
        raw.expect_closed_silently().await;
    }
}

#[tokio::test]
async fn topics_match_without_normalisation() {
    // [MQTT-4.7.3-4], [MQTT-1.5.3-3]
    let b = TestBroker::start().await;
    let (mut sub, _) = Raw::connect(b.addr, "norm", true, 60).await;
    sub.subscribe(
        1,
        &[("a/b", QoS::AtMostOnce), ("\u{FEFF}t", QoS::AtMostOnce)],
    )
    .await;
    let (mut publisher, _) = Raw::connect(b.addr, "pub", true, 60).await;
    for topic in ["A/b", "a//b", "a/b/", "t"] {
        publisher
            .publish(topic, QoS::AtMostOnce, None, false, b"no")
            .await;
    }
    publisher
        .publish("\u{FEFF}t", QoS::AtMostOnce, None, false, b"bom")
        .await;
    publisher
        .publish("a/b", QoS::AtMostOnce, None, false, b"yes")
        .await;
    let p = sub.recv_publish().await;
    assert_eq!(
        (&p.topic[..], &p.payload[..]),
        ("\u{FEFF}t".as_bytes(), &b"bom"[..])
    );
    let p = sub.recv_publish().await;
    assert_eq!((&p.topic[..], &p.payload[..]), (&b"a/b"[..], &b"yes"[..]));
    sub.expect_silence(QUIET).await;
}

#[tokio::test]
async fn many_messages_from_one_publisher_arrive_in_order() {
    // [MQTT-4.6.0-5], [MQTT-4.6.0-6]
    const N: u32 = 10_000;
    // The publisher is not paced by the subscriber, so give the queue room for the whole burst:
    // this test is about order, the overflow policy has its own tests.
    let b = TestBroker::start_with(|c| c.session.max_queued_messages = N as usize).await;
    let mut sub = Client::connect(b.addr, "ordered-sub").await;
    sub.subscribe("seq", rumqttc::QoS::AtLeastOnce).await;
    let publisher = Client::connect(b.addr, "ordered-pub").await;
    let sender = tokio::spawn(async move {
        for i in 0..N {
            publisher
                .publish("seq", rumqttc::QoS::AtLeastOnce, false, i.to_be_bytes())
                .await;
        }
        publisher
    });
    within(Duration::from_secs(60), async {
        for i in 0..N {
            let p = sub.next_publish().await;
            assert_eq!(&p.payload[..], &i.to_be_bytes(), "message {i} out of order");
        }
    })
    .await;
    let _publisher = within(WAIT, sender).await.expect("sender task");
    assert_eq!(b.metrics.snapshot().dropped_queue_full, 0);
}

#[tokio::test]
async fn a_client_receives_its_own_publish() {
    let b = TestBroker::start().await;
    let (mut raw, _) = Raw::connect(b.addr, "self", true, 60).await;
    assert_eq!(
        raw.subscribe(1, &[("me", QoS::AtLeastOnce)]).await,
        [SubAckCode::Granted(QoS::AtLeastOnce)]
    );
    raw.publish("me", QoS::AtMostOnce, None, false, b"echo")
        .await;
    assert_eq!(&raw.recv_publish().await.payload[..], b"echo");
}

#[tokio::test]
async fn acks_already_due_are_sent_before_the_close_after_disconnect() {
    // [MQTT-3.3.4-1] the PUBACK is owed for a PUBLISH that arrived before the DISCONNECT;
    // written in one go, both are handled in one pass, and the goodbye flush sends the
    // PUBACK before the socket closes (the same flush serves a broker shutdown).
    let b = TestBroker::start().await;
    let (mut sub, _) = Raw::connect(b.addr, "listener", true, 60).await;
    sub.subscribe(1, &[("last/words", QoS::AtLeastOnce)]).await;
    let (mut raw, _) = Raw::connect(b.addr, "leaving", true, 60).await;
    let mut bytes = bytes::BytesMut::new();
    tern::codec::encode_publish(
        b"last/words",
        b"bye",
        QoS::AtLeastOnce,
        Some(9),
        false,
        false,
        &mut bytes,
    );
    bytes.extend_from_slice(&[0xe0, 0x00]);
    raw.send(&bytes).await;
    assert_eq!(
        raw.read_to_close().await,
        [0x40, 0x02, 0x00, 0x09],
        "PUBACK, then closed"
    );
    assert_eq!(&sub.recv_publish().await.payload[..], b"bye");
}
