//! CONNECT and CONNACK: return codes, client-id rules, first-packet and second-CONNECT rules,
//! the connect timeout and takeover.

mod common;

use std::time::Duration;

use common::{connect_bytes, connect_packet, within, Client, Raw, TestBroker, WAIT};
use tern::codec::{ConnectReturnCode, Packet, Publish};
use tern::message::QoS;

#[tokio::test]
async fn accepted_connack_is_byte_exact() {
    // [MQTT-3.1.4-4], [MQTT-3.2.2-1], [MQTT-3.2.0-1]
    let b = TestBroker::start().await;
    let mut raw = Raw::open(b.addr).await;
    raw.send(&connect_bytes("exact")).await;
    assert_eq!(raw.recv_bytes(4).await, [0x20, 0x02, 0x00, 0x00]);
}

#[tokio::test]
async fn unsupported_protocol_level_gets_0x01_then_close() {
    // [MQTT-3.1.2-2], [MQTT-3.2.2-4], [MQTT-3.2.2-5]
    let b = TestBroker::start().await;
    let mut raw = Raw::open(b.addr).await;
    raw.send(&[
        0x10, 13, 0, 4, b'M', b'Q', b'T', b'T', 5, 0x02, 0, 60, 0, 1, b'c',
    ])
    .await;
    assert_eq!(raw.recv_bytes(4).await, [0x20, 0x02, 0x00, 0x01]);
    raw.expect_closed_silently().await;
}

#[tokio::test]
async fn mqtt_3_1_is_accepted() {
    let b = TestBroker::start().await;
    let mut raw = Raw::open(b.addr).await;
    raw.send(&[
        0x10, 15, 0, 6, b'M', b'Q', b'I', b's', b'd', b'p', 3, 0x02, 0, 60, 0, 1, b'c',
    ])
    .await;
    assert_eq!(raw.recv_bytes(4).await, [0x20, 0x02, 0x00, 0x00]);
}

#[tokio::test]
async fn wrong_protocol_name_closes_without_connack() {
    // [MQTT-3.1.2-1], [MQTT-3.1.4-1], [MQTT-3.2.2-6]
    let b = TestBroker::start().await;
    let mut raw = Raw::open(b.addr).await;
    raw.send(&[
        0x10, 13, 0, 4, b'M', b'Q', b'T', b'X', 4, 0x02, 0, 60, 0, 1, b'c',
    ])
    .await;
    raw.expect_closed_silently().await;
}

#[tokio::test]
async fn malformed_connect_flags_close_without_connack() {
    // [MQTT-3.1.2-3] reserved bit, [MQTT-3.1.2-11] will QoS without will flag,
    // [MQTT-3.1.2-15] will retain without will flag, [MQTT-3.1.2-22] password without user name.
    let b = TestBroker::start().await;
    for flags in [0x03u8, 0x0a, 0x22, 0x42] {
        let mut raw = Raw::open(b.addr).await;
        raw.send(&[
            0x10, 13, 0, 4, b'M', b'Q', b'T', b'T', 4, flags, 0, 60, 0, 1, b'c',
        ])
        .await;
        raw.expect_closed_silently().await;
    }
}

#[tokio::test]
async fn empty_client_id_with_clean_session_0_gets_0x02() {
    // [MQTT-3.1.3-8], [MQTT-3.1.3-7], [MQTT-3.1.3-9], [MQTT-3.2.2-4]
    let b = TestBroker::start().await;
    let mut raw = Raw::open(b.addr).await;
    raw.send_packet(&connect_packet("", false, 60)).await;
    assert_eq!(raw.recv_bytes(4).await, [0x20, 0x02, 0x00, 0x02]);
    raw.expect_closed_silently().await;
}

#[tokio::test]
async fn empty_client_ids_are_assigned_and_coexist() {
    // [MQTT-3.1.3-6]
    let b = TestBroker::start().await;
    let (mut one, ack1) = Raw::connect(b.addr, "", true, 60).await;
    let (mut two, ack2) = Raw::connect(b.addr, "", true, 60).await;
    assert_eq!(ack1.code, ConnectReturnCode::Accepted);
    assert_eq!(ack2.code, ConnectReturnCode::Accepted);
    // Both stay connected: neither took the other over.
    one.send(&[0xc0, 0]).await;
    two.send(&[0xc0, 0]).await;
    assert_eq!(one.recv().await, Packet::PingResp);
    assert_eq!(two.recv().await, Packet::PingResp);
}

#[tokio::test]
async fn empty_client_id_refused_when_configured() {
    let b = TestBroker::start_with(|c| c.mqtt.allow_zero_length_clientid = false).await;
    let (_raw, ack) = Raw::connect(b.addr, "", true, 60).await;
    assert_eq!(ack.code, ConnectReturnCode::IdentifierRejected);
}

#[tokio::test]
async fn long_client_ids_are_accepted() {
    // [MQTT-3.1.3-5]: 23 characters must be accepted; we accept longer.
    let b = TestBroker::start().await;
    for id in ["abcdefghijklmnopqrstuvw".to_string(), "x".repeat(100)] {
        let (_raw, ack) = Raw::connect(b.addr, &id, true, 60).await;
        assert_eq!(ack.code, ConnectReturnCode::Accepted);
    }
}

#[tokio::test]
async fn client_id_with_nul_or_bad_utf8_closes() {
    // [MQTT-1.5.3-2], [MQTT-3.1.3-4], [MQTT-1.5.3-1]
    let b = TestBroker::start().await;
    for id in [&[b'a', 0][..], &[0xed, 0xa0, 0x80][..]] {
        let mut raw = Raw::open(b.addr).await;
        let mut frame = vec![
            0x10,
            12 + id.len() as u8,
            0,
            4,
            b'M',
            b'Q',
            b'T',
            b'T',
            4,
            2,
            0,
            60,
            0,
            id.len() as u8,
        ];
        frame.extend_from_slice(id);
        raw.send(&frame).await;
        raw.expect_closed_silently().await;
    }
}

#[tokio::test]
async fn anonymous_refused_with_0x05_when_configured() {
    // [MQTT-3.2.2-4], [MQTT-3.2.2-5]
    let b = TestBroker::start_with(|c| c.auth.allow_anonymous = false).await;
    let mut raw = Raw::open(b.addr).await;
    raw.send(&connect_bytes("anon")).await;
    assert_eq!(raw.recv_bytes(4).await, [0x20, 0x02, 0x00, 0x05]);
    raw.expect_closed_silently().await;
}

#[tokio::test]
async fn nothing_after_a_refused_connect_is_processed() {
    // [MQTT-3.1.4-5]: CONNECT (refused) and PUBLISH in one write; the PUBLISH goes nowhere.
    let b = TestBroker::start_with(|c| c.auth.allow_anonymous = false).await;
    // A user name is enough to pass the anonymous rule, so the subscriber can connect.
    let mut opts = Client::options(b.addr, "watcher");
    opts.set_credentials("user", "pw");
    let (mut sub, _) = Client::connect_with(opts).await;
    sub.subscribe("t", rumqttc::QoS::AtMostOnce).await;
    let mut bytes = connect_bytes("refused");
    let mut publish = bytes::BytesMut::new();
    tern::codec::encode(
        &Packet::Publish(Publish {
            dup: false,
            qos: QoS::AtMostOnce,
            retain: false,
            topic: bytes::Bytes::from_static(b"t"),
            pkid: None,
            payload: bytes::Bytes::from_static(b"sneaky"),
        }),
        &mut publish,
    );
    bytes.extend_from_slice(&publish);
    let mut raw = Raw::open(b.addr).await;
    raw.send(&bytes).await;
    assert_eq!(raw.recv_bytes(4).await, [0x20, 0x02, 0x00, 0x05]);
    raw.expect_closed_silently().await;
    sub.expect_no_publish(Duration::from_millis(300)).await;
}

#[tokio::test]
async fn first_packet_must_be_connect() {
    // [MQTT-3.1.0-1]
    let b = TestBroker::start().await;
    for first in [
        &[0xc0u8, 0][..],
        &[0x30, 3, 0, 1, b't'][..],
        &[0x82, 6, 0, 1, 0, 1, b't', 0][..],
    ] {
        let mut raw = Raw::open(b.addr).await;
        raw.send(first).await;
        raw.expect_closed_silently().await;
    }
}

#[tokio::test]
async fn second_connect_closes_the_connection() {
    // [MQTT-3.1.0-2]
    let b = TestBroker::start().await;
    let (mut raw, ack) = Raw::connect(b.addr, "twice", true, 60).await;
    assert_eq!(ack.code, ConnectReturnCode::Accepted);
    raw.send(&connect_bytes("twice")).await;
    raw.expect_closed_silently().await;
}

#[tokio::test]
async fn connect_timeout_closes_a_silent_socket() {
    let b = TestBroker::start_with(|c| c.mqtt.connect_timeout = Duration::from_millis(300)).await;
    let mut raw = Raw::open(b.addr).await;
    raw.expect_closed_silently().await;
    // A half-sent CONNECT is no better than none.
    let mut raw = Raw::open(b.addr).await;
    raw.send(&connect_bytes("slow")[..5]).await;
    raw.expect_closed_silently().await;
}

#[tokio::test]
async fn keepalive_above_max_keepalive_is_refused() {
    let b = TestBroker::start_with(|c| c.mqtt.max_keepalive = 60).await;
    let (_raw, ack) = Raw::connect(b.addr, "k", true, 61).await;
    assert_eq!(ack.code, ConnectReturnCode::IdentifierRejected);
    let (_raw, ack) = Raw::connect(b.addr, "k", true, 60).await;
    assert_eq!(ack.code, ConnectReturnCode::Accepted);
}

#[tokio::test]
async fn same_client_id_takes_over_the_old_connection() {
    // [MQTT-3.1.4-2], [MQTT-3.1.3-2]
    let b = TestBroker::start().await;
    let (mut old, _) = Raw::connect(b.addr, "same", true, 60).await;
    let (mut other, _) = Raw::connect(b.addr, "different", true, 60).await;
    let (mut new, ack) = Raw::connect(b.addr, "same", true, 60).await;
    assert_eq!(ack.code, ConnectReturnCode::Accepted);
    old.expect_closed_silently().await;
    // The new connection and the unrelated client are fine.
    new.send(&[0xc0, 0]).await;
    assert_eq!(new.recv().await, Packet::PingResp);
    other.send(&[0xc0, 0]).await;
    assert_eq!(other.recv().await, Packet::PingResp);
}

#[tokio::test]
async fn clean_session_connect_reports_no_session() {
    // [MQTT-3.2.2-1], [MQTT-3.2.2-3], [MQTT-4.1.0-2]
    let b = TestBroker::start().await;
    let (_raw, ack) = Raw::connect(b.addr, "fresh", true, 60).await;
    assert!(!ack.session_present);
    let (_raw2, ack) = Raw::connect(b.addr, "fresh-persistent", false, 60).await;
    assert!(!ack.session_present);
}

#[tokio::test]
async fn rumqttc_connects() {
    let b = TestBroker::start().await;
    let (client, ack) = Client::connect_with(Client::options(b.addr, "rumqttc")).await;
    assert_eq!(ack.code, rumqttc::ConnectReturnCode::Success);
    within(WAIT, client.disconnect()).await;
}

#[tokio::test]
async fn malformed_connect_payloads_close_without_connack() {
    // [MQTT-3.1.4-1] with: [MQTT-3.1.2-14] will QoS 3; [MQTT-3.1.2-19] user name flag without
    // the field; [MQTT-3.1.2-21] password flag without the field; [MQTT-3.1.3-3] no client id;
    // [MQTT-3.1.3-11] user name not UTF-8; [MQTT-3.1.2-9] will flag without will topic/message.
    let b = TestBroker::start().await;
    let head = |flags: u8| vec![0, 4, b'M', b'Q', b'T', b'T', 4, flags, 0, 60];
    let cases: Vec<(u8, Vec<u8>)> = vec![
        (0x1e, vec![0, 1, b'c', 0, 1, b't', 0, 0]),
        (0x82, vec![0, 1, b'c']),
        (0xc2, vec![0, 1, b'c', 0, 1, b'u']),
        (0x02, vec![]),
        (0x82, vec![0, 1, b'c', 0, 2, 0xc3, 0x28]),
        (0x06, vec![0, 1, b'c']),
    ];
    for (flags, rest) in cases {
        let mut body = head(flags);
        body.extend_from_slice(&rest);
        let mut frame = vec![0x10, body.len() as u8];
        frame.extend_from_slice(&body);
        let mut raw = Raw::open(b.addr).await;
        raw.send(&frame).await;
        raw.expect_closed_silently().await;
    }
}

#[tokio::test]
async fn connect_with_every_field_is_accepted() {
    // [MQTT-3.1.3-1] payload order: client id, will topic, will message, user name, password;
    // [MQTT-3.1.2-18], [MQTT-3.1.2-20] the flags say which fields are present.
    let b = TestBroker::start().await;
    let mut raw = Raw::open(b.addr).await;
    raw.send_packet(&Packet::Connect(Box::new(tern::codec::Connect {
        protocol: tern::codec::Protocol::V311,
        bridge: false,
        clean_session: true,
        keep_alive: 30,
        client_id: "full".into(),
        will: Some(tern::codec::LastWill {
            topic: bytes::Bytes::from_static(b"w"),
            payload: bytes::Bytes::from_static(b"m"),
            qos: QoS::AtLeastOnce,
            retain: false,
        }),
        username: Some("user".into()),
        password: Some(bytes::Bytes::from_static(b"secret")),
    })))
    .await;
    assert_eq!(raw.recv_bytes(4).await, [0x20, 0x02, 0x00, 0x00]);
}

#[tokio::test]
async fn a_burst_of_connections_is_answered_and_so_is_one_after_it() {
    // The accept loop keeps polling for a moment after a connection arrives, then sleeps; both
    // ways must take every connection.
    let b = TestBroker::start().await;
    let burst: Vec<_> = (0..200)
        .map(|i| {
            let addr = b.addr;
            tokio::spawn(async move { Raw::connect(addr, &format!("burst-{i}"), true, 60).await })
        })
        .collect();
    let mut held = Vec::new();
    for c in burst {
        let (raw, ack) = within(WAIT, c).await.expect("connect task");
        assert_eq!(ack.code, ConnectReturnCode::Accepted);
        held.push(raw);
    }
    // Long after the burst, so the loop is asleep again.
    tokio::time::sleep(Duration::from_millis(50)).await;
    let (_late, ack) = Raw::connect(b.addr, "after-burst", true, 60).await;
    assert_eq!(ack.code, ConnectReturnCode::Accepted);
    assert_eq!(held.len(), 200);
}
