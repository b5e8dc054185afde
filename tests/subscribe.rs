//! SUBSCRIBE / UNSUBSCRIBE: SUBACK codes, wildcards, the `$` rule, replacement and removal.

mod common;

use std::time::Duration;

use common::{Client, Raw, TestBroker};
use rumqttc::SubscribeReasonCode as Code;
use tern::codec::{Packet, SubAckCode, Unsubscribe};
use tern::message::QoS;

const QUIET: Duration = Duration::from_millis(300);

#[tokio::test]
async fn suback_has_one_code_per_filter_in_order() {
    // [MQTT-3.8.4-1], [MQTT-3.8.4-2], [MQTT-3.8.4-4], [MQTT-3.8.4-5], [MQTT-3.9.3-1], [MQTT-2.3.1-7]
    // [MQTT-4.7.1-2], [MQTT-4.7.1-3]: malformed filters get 0x80.
    let b = TestBroker::start().await;
    let (mut raw, _) = Raw::connect(b.addr, "codes", true, 60).await;
    let codes = raw
        .subscribe(
            0x1234,
            &[
                ("a/+", QoS::AtLeastOnce),
                ("a/#/b", QoS::AtMostOnce),
                ("#", QoS::ExactlyOnce),
                ("a+/b", QoS::AtMostOnce),
                ("x", QoS::AtMostOnce),
            ],
        )
        .await;
    assert_eq!(
        codes,
        [
            SubAckCode::Granted(QoS::AtLeastOnce),
            SubAckCode::Failure,
            SubAckCode::Granted(QoS::ExactlyOnce),
            SubAckCode::Failure,
            SubAckCode::Granted(QoS::AtMostOnce),
        ]
    );
}

#[tokio::test]
async fn suback_bytes_are_exact() {
    // [MQTT-3.9.3-2]
    let b = TestBroker::start().await;
    let (mut raw, _) = Raw::connect(b.addr, "bytes", true, 60).await;
    // Filters "a" at QoS 1 and "a#b" (invalid) at QoS 2.
    raw.send(&[
        0x82, 0x0c, 0x12, 0x34, 0, 1, b'a', 1, 0, 3, b'a', b'#', b'b', 2,
    ])
    .await;
    assert_eq!(
        raw.recv_bytes(6).await,
        [0x90, 0x04, 0x12, 0x34, 0x01, 0x80]
    );
}

#[tokio::test]
async fn wildcards_match_as_the_spec_says() {
    // [MQTT-3.8.3-2], [MQTT-3.3.2-3]
    let b = TestBroker::start().await;
    let mut sub = Client::connect(b.addr, "wild").await;
    sub.subscribe("sport/tennis/+", rumqttc::QoS::AtMostOnce)
        .await;
    sub.subscribe("finance/#", rumqttc::QoS::AtMostOnce).await;
    let mut publisher = Client::connect(b.addr, "pub").await;
    for topic in [
        "sport/tennis/player1",
        "sport/tennis/player1/ranking",
        "finance",
        "finance/eur/usd",
        "sport/golf",
    ] {
        publisher
            .publish_acked(topic, false, topic.as_bytes())
            .await;
    }
    let mut got = Vec::new();
    for _ in 0..3 {
        got.push(sub.next_publish().await.topic);
    }
    got.sort();
    assert_eq!(got, ["finance", "finance/eur/usd", "sport/tennis/player1"]);
    sub.expect_no_publish(QUIET).await;
}

#[tokio::test]
async fn dollar_topics_are_not_matched_by_leading_wildcards() {
    // [MQTT-4.7.2-1]
    let b = TestBroker::start().await;
    let mut hash = Client::connect(b.addr, "hash").await;
    hash.subscribe("#", rumqttc::QoS::AtMostOnce).await;
    let mut plus = Client::connect(b.addr, "plus").await;
    plus.subscribe("+/status", rumqttc::QoS::AtMostOnce).await;
    let mut dollar = Client::connect(b.addr, "dollar").await;
    dollar
        .subscribe("$internal/#", rumqttc::QoS::AtMostOnce)
        .await;
    let mut publisher = Client::connect(b.addr, "pub").await;
    publisher
        .publish_acked("$internal/status", false, "d")
        .await;
    assert_eq!(dollar.next_publish().await.topic, "$internal/status");
    hash.expect_no_publish(QUIET).await;
    plus.expect_no_publish(QUIET).await;
}

#[tokio::test]
async fn clients_cannot_publish_to_sys() {
    // Our choice, as Mosquitto: $SYS belongs to the broker; a client's PUBLISH there is
    // acknowledged and dropped [MQTT-3.3.5-2].
    let b = TestBroker::start().await;
    let mut sys = Client::connect(b.addr, "sys").await;
    sys.subscribe("$SYS/broker/fake", rumqttc::QoS::AtMostOnce)
        .await;
    let mut publisher = Client::connect(b.addr, "pub").await;
    publisher
        .publish_acked("$SYS/broker/fake", false, "x")
        .await;
    sys.expect_no_publish(QUIET).await;
}

#[tokio::test]
async fn resubscribe_replaces_the_qos() {
    // [MQTT-3.8.4-3]
    let b = TestBroker::start().await;
    let mut sub = Client::connect(b.addr, "re").await;
    assert_eq!(
        sub.subscribe("t", rumqttc::QoS::AtMostOnce).await,
        [Code::Success(rumqttc::QoS::AtMostOnce)]
    );
    assert_eq!(
        sub.subscribe("t", rumqttc::QoS::AtLeastOnce).await,
        [Code::Success(rumqttc::QoS::AtLeastOnce)]
    );
    let mut publisher = Client::connect(b.addr, "pub").await;
    publisher.publish_acked("t", false, "once").await;
    let p = sub.next_publish().await;
    assert_eq!(p.qos, rumqttc::QoS::AtLeastOnce);
    sub.expect_no_publish(QUIET).await;
}

#[tokio::test]
async fn unsubscribe_stops_delivery_and_matches_exactly() {
    // [MQTT-3.10.4-1], [MQTT-3.10.4-2], [MQTT-3.10.4-4], [MQTT-3.10.4-5], [MQTT-3.10.4-6]
    let b = TestBroker::start().await;
    let (mut raw, _) = Raw::connect(b.addr, "unsub", true, 60).await;
    raw.subscribe(1, &[("a/b", QoS::AtMostOnce), ("c", QoS::AtMostOnce)])
        .await;
    // "a/+" was never subscribed: nothing removed, still UNSUBACK with the id.
    raw.send_packet(&Packet::Unsubscribe(Unsubscribe {
        pkid: 7,
        filters: vec!["a/+".into(), "nothing".into()],
    }))
    .await;
    assert_eq!(raw.recv_bytes(4).await, [0xb0, 0x02, 0x00, 0x07]);
    let mut publisher = Client::connect(b.addr, "pub").await;
    publisher.publish_acked("a/b", false, "1").await;
    assert_eq!(&raw.recv_publish().await.payload[..], b"1");
    raw.send_packet(&Packet::Unsubscribe(Unsubscribe {
        pkid: 8,
        filters: vec!["a/b".into(), "c".into()],
    }))
    .await;
    assert_eq!(raw.recv().await, Packet::UnsubAck(8));
    publisher.publish_acked("a/b", false, "2").await;
    publisher.publish_acked("c", false, "3").await;
    raw.expect_silence(QUIET).await;
}

#[tokio::test]
async fn bad_subscribe_packets_close_the_connection() {
    // [MQTT-3.8.3-3] no filters, [MQTT-3.8.3-4] QoS 3, [MQTT-3.8.1-1] wrong flags,
    // [MQTT-3.10.3-2] UNSUBSCRIBE with no filters, [MQTT-3.10.1-1] wrong flags,
    // [MQTT-3.8.3-1], [MQTT-3.10.3-1] invalid UTF-8.
    let b = TestBroker::start().await;
    let cases: &[&[u8]] = &[
        &[0x82, 2, 0, 1],
        &[0x82, 6, 0, 1, 0, 1, b'a', 3],
        &[0x80, 6, 0, 1, 0, 1, b'a', 0],
        &[0xa2, 2, 0, 1],
        &[0xa0, 5, 0, 1, 0, 1, b'a'],
        &[0x82, 6, 0, 1, 0, 1, 0xff, 0],
        &[0xa2, 5, 0, 1, 0, 1, 0xff],
    ];
    for bytes in cases {
        let (mut raw, _) = Raw::connect(b.addr, "bad", true, 60).await;
        raw.send(bytes).await;
        raw.expect_closed_silently().await;
    }
}

#[tokio::test]
async fn sys_topics_are_published_and_not_matched_by_leading_wildcards() {
    // [MQTT-4.7.2-1]: "$SYS/..." gets the broker's status; "#" and "+/broker/#" do not.
    let b = TestBroker::start_with(|c| c.sys.sys_interval = Duration::from_millis(100)).await;
    let mut hash = Client::connect(b.addr, "hash").await;
    hash.subscribe("#", rumqttc::QoS::AtMostOnce).await;
    let mut plus = Client::connect(b.addr, "plus").await;
    plus.subscribe("+/broker/#", rumqttc::QoS::AtMostOnce).await;
    let mut sys = Client::connect(b.addr, "sys").await;
    sys.subscribe("$SYS/broker/clients/connected", rumqttc::QoS::AtMostOnce)
        .await;
    // The first one may be the retained value from before we connected; updates follow.
    loop {
        let p = sys.next_publish().await;
        assert_eq!(p.topic, "$SYS/broker/clients/connected");
        let text = String::from_utf8_lossy(&p.payload).into_owned();
        let connected: u64 = text.parse().expect("a number");
        if connected == 3 {
            break;
        }
    }
    hash.expect_no_publish(QUIET).await;
    plus.expect_no_publish(QUIET).await;
}

/// One QoS 1 PUBLISH to the client's own topic: its PUBACK and the delivery, acknowledged.
/// The topic starts with `$`, so a `#` subscriber does not see it [MQTT-4.7.2-1].
async fn echo_round_trip(c: &mut Raw, id: u16) -> Duration {
    let t = std::time::Instant::now();
    c.publish("$echo", QoS::AtLeastOnce, Some(id), false, b"e")
        .await;
    let (mut acked, mut delivered) = (false, false);
    while !(acked && delivered) {
        match c.recv().await {
            Packet::PubAck(i) if i == id => acked = true,
            Packet::Publish(p) => {
                c.send_packet(&Packet::PubAck(p.pkid.expect("QoS 1"))).await;
                delivered = true;
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    t.elapsed()
}

#[tokio::test]
async fn a_subscribe_of_100000_copies_of_one_filter_is_one_subscription() {
    // [MQTT-3.8.4-3], [MQTT-3.8.4-5]: each copy replaces the one before and gets its code; the
    // retained messages are sent once, no more than the session's queue holds.
    let b = TestBroker::start().await;
    let (mut publisher, _) = Raw::connect(b.addr, "retainer", true, 60).await;
    for i in 0..2_000 {
        publisher
            .publish(&format!("r/{i}"), QoS::AtMostOnce, None, true, b"v")
            .await;
    }
    publisher.send(&[0xc0, 0]).await;
    assert_eq!(publisher.recv().await, Packet::PingResp);
    let (mut echo, _) = Raw::connect(b.addr, "echo", true, 60).await;
    echo.subscribe(1, &[("$echo", QoS::AtLeastOnce)]).await;
    let calm = echo_round_trip(&mut echo, 1).await;

    let (mut hog, _) = Raw::connect(b.addr, "hog", true, 60).await;
    let filters = vec![("#".to_string(), QoS::AtMostOnce); 100_000];
    let packet = Packet::Subscribe(tern::codec::Subscribe { pkid: 7, filters });
    let mut bytes = bytes::BytesMut::new();
    tern::codec::encode(&packet, &mut bytes);
    let hog_task = tokio::spawn(async move {
        hog.send(&bytes).await;
        match hog.recv().await {
            Packet::SubAck(a) => {
                assert_eq!(a.pkid, 7);
                assert_eq!(a.codes.len(), 100_000);
                assert!(a
                    .codes
                    .iter()
                    .all(|c| *c == SubAckCode::Granted(QoS::AtMostOnce)));
            }
            other => panic!("expected SUBACK, got {other:?}"),
        }
        let mut got = 0;
        while tokio::time::timeout(QUIET, hog.recv_publish())
            .await
            .is_ok()
        {
            got += 1;
        }
        got
    });
    // Another client's round trips go on while the SUBSCRIBE is handled.
    let mut worst = Duration::ZERO;
    let mut id = 1u16;
    while !hog_task.is_finished() {
        id = id % 60_000 + 1;
        worst = worst.max(echo_round_trip(&mut echo, id).await);
    }
    let got = common::within(common::WAIT, hog_task).await.expect("hog");
    assert_eq!(
        got, 1_000,
        "max_queued_messages of the 2,000 retained, once each"
    );
    assert_eq!(
        b.metrics.snapshot().dropped_queue_full,
        1,
        "the rest, counted"
    );
    assert!(
        worst < Duration::from_secs(1) + calm * 10,
        "a round trip took {worst:?} while the SUBSCRIBE was handled"
    );
}

/// SUBSCRIBE, then PUBLISHes to it, all in one write: each PUBLISH reaches the new
/// subscription (as on Mosquitto), and after an UNSUBSCRIBE in the same write none does.
#[tokio::test]
async fn a_publish_right_behind_a_subscribe_sees_it() {
    // [MQTT-3.8.4-1], [MQTT-3.10.4-1]
    let b = TestBroker::start().await;
    let (mut raw, _) = Raw::connect(b.addr, "pipelined", true, 60).await;
    let mut wire = bytes::BytesMut::new();
    let sub = tern::codec::Subscribe {
        pkid: 1,
        filters: vec![("pipe/#".into(), QoS::AtMostOnce)],
    };
    tern::codec::encode(&Packet::Subscribe(sub), &mut wire);
    let publish = |i: u32, wire: &mut bytes::BytesMut| {
        let p = tern::codec::Publish {
            dup: false,
            qos: QoS::AtMostOnce,
            retain: false,
            topic: bytes::Bytes::from_static(b"pipe/x"),
            pkid: None,
            payload: bytes::Bytes::from(format!("m{i}")),
        };
        tern::codec::encode(&Packet::Publish(p), wire);
    };
    for i in 0..20 {
        publish(i, &mut wire);
    }
    raw.send(&wire).await;
    assert!(matches!(raw.recv().await, Packet::SubAck(_)));
    for i in 0..20 {
        let p = raw.recv_publish().await;
        assert_eq!(&p.payload[..], format!("m{i}").as_bytes());
    }
    let mut wire = bytes::BytesMut::new();
    let unsub = Unsubscribe {
        pkid: 2,
        filters: vec!["pipe/#".into()],
    };
    tern::codec::encode(&Packet::Unsubscribe(unsub), &mut wire);
    publish(99, &mut wire);
    raw.send(&wire).await;
    assert_eq!(raw.recv().await, Packet::UnsubAck(2));
    raw.expect_silence(QUIET).await;
    b.stop().await;
}
