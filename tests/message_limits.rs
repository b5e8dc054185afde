//! Mosquitto's per-message limits: `message_size_limit` (payloads acknowledged and dropped,
//! wills refused) and `max_inflight_bytes` (the outbound window bounded in bytes), checked
//! against the real Mosquitto where both can run the same bytes.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use common::{Raw, TestBroker};
use tern::codec::{Connect, ConnectReturnCode, LastWill, Packet, Protocol};
use tern::message::QoS;

const QUIET: Duration = Duration::from_millis(300);

/// With a 10-byte `message_size_limit` at `addr`: larger PUBLISHes are acknowledged as usual
/// and not delivered, at every QoS; one of 10 bytes is.
async fn oversize_publishes_are_acked_and_dropped(addr: SocketAddr) {
    let (mut sub, _) = Raw::connect(addr, "size-sub", true, 60).await;
    sub.subscribe(1, &[("t", QoS::ExactlyOnce)]).await;
    let (mut publ, _) = Raw::connect(addr, "size-pub", true, 60).await;
    let big = [b'x'; 11];
    publ.publish("t", QoS::AtMostOnce, None, false, &big).await;
    // [MQTT-3.3.4-1] the acknowledgement the QoS asks for, though the message is dropped.
    publ.publish("t", QoS::AtLeastOnce, Some(1), false, &big)
        .await;
    assert_eq!(publ.recv().await, Packet::PubAck(1));
    publ.publish("t", QoS::ExactlyOnce, Some(2), false, &big)
        .await;
    assert_eq!(publ.recv().await, Packet::PubRec(2));
    publ.send_packet(&Packet::PubRel(2)).await;
    assert_eq!(publ.recv().await, Packet::PubComp(2));
    publ.publish("t", QoS::AtMostOnce, None, false, b"0123456789")
        .await;
    assert_eq!(&sub.recv_publish().await.payload[..], b"0123456789");
    sub.expect_silence(QUIET).await;
}

/// A CONNECT at `addr` whose will payload is `len` bytes; the CONNACK code.
async fn connect_with_will(addr: SocketAddr, len: usize) -> ConnectReturnCode {
    let mut raw = Raw::open(addr).await;
    raw.send_packet(&Packet::Connect(Box::new(Connect {
        protocol: Protocol::V311,
        bridge: false,
        clean_session: true,
        keep_alive: 60,
        client_id: format!("will-{len}"),
        will: Some(LastWill {
            topic: Bytes::from_static(b"w"),
            payload: Bytes::from(vec![b'w'; len]),
            qos: QoS::AtMostOnce,
            retain: false,
        }),
        username: None,
        password: None,
    })))
    .await;
    match raw.recv().await {
        Packet::ConnAck(ack) => ack.code,
        other => panic!("expected CONNACK, got {other:?}"),
    }
}

#[tokio::test]
async fn message_size_limit_drops_large_payloads_and_refuses_large_wills() {
    let b = TestBroker::start_with(|c| c.mqtt.message_size_limit = 10).await;
    oversize_publishes_are_acked_and_dropped(b.addr).await;
    assert_eq!(b.metrics.snapshot().dropped_oversize, 3);
    assert_eq!(
        connect_with_will(b.addr, 11).await,
        ConnectReturnCode::NotAuthorized
    );
    assert_eq!(
        connect_with_will(b.addr, 10).await,
        ConnectReturnCode::Accepted
    );
    // The same bytes against Mosquitto.
    let dir = tempfile::tempdir().expect("temp dir");
    let (_mosquitto, addr) = common::start_mosquitto(
        "listener {port} 127.0.0.1\nallow_anonymous true\nmessage_size_limit 10\n",
        dir.path(),
    )
    .await;
    oversize_publishes_are_acked_and_dropped(addr).await;
    assert_eq!(
        connect_with_will(addr, 11).await,
        ConnectReturnCode::NotAuthorized
    );
}

#[tokio::test]
async fn message_size_limit_is_not_max_packet_size() {
    // With no payload limit, max_packet_size still closes the connection.
    let b = TestBroker::start_with(|c| c.mqtt.max_packet_size = 64).await;
    let (mut publ, _) = Raw::connect(b.addr, "p", true, 60).await;
    publ.publish("t", QoS::AtMostOnce, None, false, &[0; 100])
        .await;
    publ.expect_closed_silently().await;
    assert_eq!(b.metrics.snapshot().dropped_oversize, 0);
}

/// At `addr` (100 payload bytes in flight at most): a subscriber that acknowledges nothing
/// gets two 60-byte QoS 1 messages (one always goes; the second starts under the limit), and
/// the next only once one is acknowledged.
async fn inflight_is_bounded_in_bytes(addr: SocketAddr) {
    let (mut sub, _) = Raw::connect(addr, "bytes-sub", true, 60).await;
    sub.subscribe(1, &[("t", QoS::AtLeastOnce)]).await;
    let (mut publ, _) = Raw::connect(addr, "bytes-pub", true, 60).await;
    for i in 1..=4u8 {
        publ.publish("t", QoS::AtLeastOnce, Some(u16::from(i)), false, &[i; 60])
            .await;
        assert_eq!(publ.recv().await, Packet::PubAck(u16::from(i)));
    }
    let first = sub.recv_publish().await;
    let second = sub.recv_publish().await;
    assert_eq!((first.payload[0], second.payload[0]), (1, 2));
    sub.expect_silence(QUIET).await;
    sub.send_packet(&Packet::PubAck(first.pkid.expect("id")))
        .await;
    assert_eq!(sub.recv_publish().await.payload[0], 3);
}

#[tokio::test]
async fn max_inflight_bytes_bounds_the_window_beside_the_count() {
    let b = TestBroker::start_with(|c| c.session.max_inflight_bytes = 100).await;
    // As Mosquitto's documentation describes the option. (Mosquitto 2.0.11 itself, given the
    // same bytes, sends the third message too: its check adds the queued bytes in.)
    inflight_is_bounded_in_bytes(b.addr).await;
}
