//! A client whose CONNECT sets the protocol level's top bit is another broker's bridge
//! (Mosquitto's `try_private`): it is not sent back what it publishes, so two brokers bridged
//! both ways pass a message once, and live messages reach it with their RETAIN flag, so
//! retained messages propagate.

mod common;

use std::time::Duration;

use common::{Raw, TestBroker};
use tern::codec::{Connect, ConnectReturnCode, Packet, Protocol};
use tern::message::QoS;

/// Connects as a bridge (level 0x84).
async fn bridge(addr: std::net::SocketAddr, id: &str) -> Raw {
    let mut raw = Raw::open(addr).await;
    raw.send_packet(&Packet::Connect(Box::new(Connect {
        protocol: Protocol::V311,
        bridge: true,
        clean_session: true,
        keep_alive: 0,
        client_id: id.into(),
        will: None,
        username: None,
        password: None,
    })))
    .await;
    match raw.recv().await {
        Packet::ConnAck(ack) => assert_eq!(ack.code, ConnectReturnCode::Accepted),
        other => panic!("expected CONNACK, got {other:?}"),
    }
    raw
}

#[tokio::test]
async fn a_bridge_is_not_sent_back_what_it_publishes() {
    let b = TestBroker::start().await;
    let mut br = bridge(b.addr, "edge-bridge").await;
    br.subscribe(1, &[("t/#", QoS::AtLeastOnce)]).await;
    let (mut plain, _) = Raw::connect(b.addr, "plain", true, 0).await;
    plain.subscribe(1, &[("t/#", QoS::AtLeastOnce)]).await;
    br.publish("t/1", QoS::AtLeastOnce, Some(7), false, b"from the bridge")
        .await;
    assert_eq!(br.recv().await, Packet::PubAck(7));
    assert_eq!(&plain.recv_publish().await.payload[..], b"from the bridge");
    br.expect_silence(Duration::from_millis(300)).await;
    // What others publish reaches it.
    plain
        .publish("t/2", QoS::AtMostOnce, None, false, b"to the bridge")
        .await;
    assert_eq!(&br.recv_publish().await.payload[..], b"to the bridge");
    // An ordinary client still gets its own messages back (MQTT 3.1.1 has no "no local").
    assert_eq!(&plain.recv_publish().await.payload[..], b"to the bridge");
}

#[tokio::test]
async fn a_bridge_gets_live_messages_with_their_retain_flag() {
    let b = TestBroker::start().await;
    let mut br = bridge(b.addr, "edge-bridge").await;
    br.subscribe(1, &[("r/#", QoS::AtMostOnce)]).await;
    let (mut plain, _) = Raw::connect(b.addr, "plain", true, 0).await;
    plain.subscribe(1, &[("r/#", QoS::AtMostOnce)]).await;
    let (mut p, _) = Raw::connect(b.addr, "pub", true, 0).await;
    p.publish("r/1", QoS::AtLeastOnce, Some(1), true, b"state")
        .await;
    assert_eq!(p.recv().await, Packet::PubAck(1));
    // [MQTT-3.3.1-9]: an ordinary subscriber's live copy has RETAIN 0; the bridge's keeps it.
    assert!(!plain.recv_publish().await.retain);
    assert!(br.recv_publish().await.retain);
    p.publish("r/1", QoS::AtMostOnce, None, false, b"live")
        .await;
    assert!(!br.recv_publish().await.retain);
}
