//! The QoS 2 handshake across a kill: an inbound id awaiting PUBREL, an outbound flow resumed
//! under its packet id, deliveries held until durable, and a retained message owed on
//! SUBSCRIBE.

use std::time::Duration;

use crate::common::{self, BinaryBroker, Raw};
use crate::helpers::*;
use tern::codec::Packet;
use tern::message::QoS;

#[tokio::test]
async fn a_qos2_message_acknowledged_with_pubrec_is_delivered_once_across_a_kill() {
    let dir = tempfile::tempdir().expect("temp dir");
    let conf = config(dir.path(), "always");
    let mut broker = BinaryBroker::start(&conf).await;
    let (mut sub, _) = common::connect_as(broker.addr, "q2-sub", false, None, None).await;
    sub.subscribe(1, &[("q2", QoS::ExactlyOnce)]).await;
    sub.disconnect().await;
    // A persistent publisher gets its PUBREC; then the broker is killed before the PUBREL.
    let (mut publ, _) = common::connect_as(broker.addr, "q2-pub", false, None, None).await;
    publ.publish("q2", QoS::ExactlyOnce, Some(5), false, b"once")
        .await;
    assert_eq!(publ.recv().await, Packet::PubRec(5));
    kill_9(&mut broker).await;
    let broker = BinaryBroker::start(&conf).await;
    // The publisher, not sure of anything, sends it again (DUP) and then PUBREL
    // [MQTT-4.3.3-2]: id 5 still awaits its PUBREL, so the copy is not routed again.
    let (mut publ, ack) = common::connect_as(broker.addr, "q2-pub", false, None, None).await;
    assert!(ack.session_present);
    publ.send_packet(&Packet::Publish(tern::codec::Publish {
        dup: true,
        qos: QoS::ExactlyOnce,
        retain: false,
        topic: bytes::Bytes::from_static(b"q2"),
        pkid: Some(5),
        payload: bytes::Bytes::from_static(b"once"),
    }))
    .await;
    assert_eq!(publ.recv().await, Packet::PubRec(5));
    publ.send_packet(&Packet::PubRel(5)).await;
    assert_eq!(publ.recv().await, Packet::PubComp(5));
    // Id 5 is free again: a new message under it is a new message.
    publ.publish("q2", QoS::ExactlyOnce, Some(5), false, b"twice")
        .await;
    assert_eq!(publ.recv().await, Packet::PubRec(5));
    publ.send_packet(&Packet::PubRel(5)).await;
    assert_eq!(publ.recv().await, Packet::PubComp(5));
    let (mut sub, ack) = common::connect_as(broker.addr, "q2-sub", false, None, None).await;
    assert!(ack.session_present);
    let mut got = Vec::new();
    while let Ok(p) = tokio::time::timeout(Duration::from_millis(500), sub.recv()).await {
        match p {
            Packet::Publish(p) => {
                got.push(p.payload.to_vec());
                sub.send_packet(&Packet::PubRec(p.pkid.expect("id"))).await;
            }
            Packet::PubRel(id) => sub.send_packet(&Packet::PubComp(id)).await,
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(got, [b"once".to_vec(), b"twice".to_vec()]);
}

#[tokio::test]
async fn an_outbound_qos2_flow_resumes_under_its_packet_id_after_a_kill() {
    let dir = tempfile::tempdir().expect("temp dir");
    let conf = config(dir.path(), "always");
    let mut broker = BinaryBroker::start(&conf).await;
    let (mut sub, _) = common::connect_as(broker.addr, "q2-out", false, None, None).await;
    sub.subscribe(1, &[("o/#", QoS::ExactlyOnce)]).await;
    let (mut publ, _) = Raw::connect(broker.addr, "o-pub", true, 60).await;
    for (i, topic) in [(1u16, "o/released"), (2, "o/unanswered")] {
        publ.publish(topic, QoS::ExactlyOnce, Some(i), false, topic.as_bytes())
            .await;
        assert_eq!(publ.recv().await, Packet::PubRec(i));
        publ.send_packet(&Packet::PubRel(i)).await;
        assert_eq!(publ.recv().await, Packet::PubComp(i));
    }
    // The first is taken up to PUBREL (so the client has released it); the second is only
    // received.
    let first = sub.recv_publish().await;
    let second = sub.recv_publish().await;
    let (a, b) = (first.pkid.expect("id"), second.pkid.expect("id"));
    sub.send_packet(&Packet::PubRec(a)).await;
    assert_eq!(sub.recv().await, Packet::PubRel(a));
    kill_9(&mut broker).await;
    let broker = BinaryBroker::start(&conf).await;
    let (mut sub, ack) = common::connect_as(broker.addr, "q2-out", false, None, None).await;
    assert!(ack.session_present);
    // [MQTT-4.4.0-1] the PUBREL again for the first, the PUBLISH again (DUP, same id) for
    // the second; never the first PUBLISH under a new id.
    assert_eq!(sub.recv().await, Packet::PubRel(a));
    let again = sub.recv_publish().await;
    assert_eq!(
        (again.pkid, again.dup, &again.topic[..]),
        (Some(b), true, &b"o/unanswered"[..])
    );
    sub.send_packet(&Packet::PubComp(a)).await;
    sub.send_packet(&Packet::PubRec(b)).await;
    assert_eq!(sub.recv().await, Packet::PubRel(b));
    sub.send_packet(&Packet::PubComp(b)).await;
    sub.expect_silence(Duration::from_millis(300)).await;
}

#[tokio::test]
async fn a_stored_publishers_qos2_messages_reach_online_subscribers_once_they_are_on_disk() {
    let dir = tempfile::tempdir().expect("temp dir");
    let broker = BinaryBroker::start(&config(dir.path(), "always")).await;
    let (mut live, _) = Raw::connect(broker.addr, "live", true, 60).await;
    live.subscribe(1, &[("d", QoS::AtMostOnce)]).await;
    let (mut publ, _) = common::connect_as(broker.addr, "d-pub", false, None, None).await;
    for i in 1..=50u16 {
        publ.publish("d", QoS::ExactlyOnce, Some(i), false, &i.to_be_bytes())
            .await;
        // The PUBREC comes once it is on disk, and the delivery no earlier.
        assert_eq!(publ.recv().await, Packet::PubRec(i));
        publ.send_packet(&Packet::PubRel(i)).await;
        assert_eq!(publ.recv().await, Packet::PubComp(i));
    }
    for i in 1..=50u16 {
        assert_eq!(&live.recv_publish().await.payload[..], &i.to_be_bytes());
    }
    live.expect_silence(Duration::from_millis(300)).await;
}

#[tokio::test]
async fn a_retained_message_owed_on_subscribe_is_sent_again_after_a_kill() {
    let dir = tempfile::tempdir().expect("temp dir");
    let conf = config(dir.path(), "always");
    let mut broker = BinaryBroker::start(&conf).await;
    publish_retained(broker.addr, "kept", 1).await;
    let (mut sub, _) = common::connect_as(broker.addr, "late", false, None, None).await;
    sub.subscribe(1, &[("kept", QoS::AtLeastOnce)]).await;
    // Received, never acknowledged; then the broker dies.
    let first = sub.recv_publish().await;
    assert!(first.retain);
    kill_9(&mut broker).await;
    let broker = BinaryBroker::start(&conf).await;
    let (mut sub, ack) = common::connect_as(broker.addr, "late", false, None, None).await;
    assert!(ack.session_present);
    // [MQTT-4.4.0-1] sent again, under the same packet id, and still as a retained
    // message [MQTT-3.3.1-8].
    let again = sub.recv_publish().await;
    assert_eq!(
        (&again.payload[..], again.pkid, again.dup, again.retain),
        (&b"1"[..], first.pkid, true, true)
    );
}
