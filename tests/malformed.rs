//! Malformed and hostile input: each bad connection is closed, and a well-behaved pair of
//! clients keeps exchanging messages throughout.

mod common;

use common::{connect_bytes, Raw, TestBroker};
use tern::codec::Packet;
use tern::message::QoS;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// (name, bytes sent after a valid CONNECT, or before any CONNECT when `pre_connect`)
const AFTER_CONNECT: &[(&str, &[u8])] = &[
    // [MQTT-4.8.0-1]
    (
        "remaining length over 4 bytes",
        &[0x30, 0xff, 0xff, 0xff, 0xff, 0x01],
    ),
    // [MQTT-2.2.2-2]
    ("reserved flags on PUBACK", &[0x41, 0x02, 0x00, 0x01]),
    ("reserved flags on PINGREQ", &[0xc3, 0x00]),
    // [MQTT-3.6.1-1]
    ("PUBREL with flags 0000", &[0x60, 0x02, 0x00, 0x01]),
    // [MQTT-1.5.3-1]
    (
        "invalid UTF-8 topic",
        &[0x30, 0x05, 0x00, 0x03, 0xed, 0xa0, 0x80],
    ),
    // max_packet_size: refused from the header alone
    ("256 MB length claim", &[0x30, 0xff, 0xff, 0xff, 0x7f]),
    // [MQTT-2.3.1-1]
    ("packet id 0", &[0x32, 0x05, 0x00, 0x01, b't', 0x00, 0x00]),
    // [MQTT-3.8.3-4]
    (
        "SUBSCRIBE with QoS 3",
        &[0x82, 0x06, 0x00, 0x01, 0x00, 0x01, b't', 0x03],
    ),
    // [MQTT-3.3.2-2]
    (
        "wildcard in PUBLISH topic",
        &[0x30, 0x05, 0x00, 0x03, b'a', b'/', b'+'],
    ),
    ("packet type 15", &[0xf0, 0x00]),
    ("CONNACK from a client", &[0x20, 0x02, 0x00, 0x00]),
    ("truncated field", &[0x30, 0x01, 0x00]),
];

#[tokio::test]
async fn bad_packets_close_only_their_connection() {
    let b = TestBroker::start().await;
    let (mut sub, _) = Raw::connect(b.addr, "good-sub", true, 60).await;
    sub.subscribe(1, &[("good", QoS::AtLeastOnce)]).await;
    let (mut publisher, _) = Raw::connect(b.addr, "good-pub", true, 60).await;
    for (i, (name, bytes)) in AFTER_CONNECT.iter().enumerate() {
        let mut bad = Raw::open(b.addr).await;
        bad.send(&connect_bytes(&format!("bad-{i}"))).await;
        assert!(matches!(bad.recv().await, Packet::ConnAck(_)), "{name}");
        bad.send(bytes).await;
        let extra = bad.read_to_close().await;
        assert!(
            extra.is_empty(),
            "{name}: broker answered {extra:02x?} before closing"
        );
        // The good pair notices nothing.
        let pkid = i as u16 + 1;
        publisher
            .publish("good", QoS::AtLeastOnce, Some(pkid), false, name.as_bytes())
            .await;
        assert_eq!(publisher.recv().await, Packet::PubAck(pkid), "{name}");
        let p = sub.recv_publish().await;
        assert_eq!(&p.payload[..], name.as_bytes());
        sub.send_packet(&Packet::PubAck(p.pkid.expect("id"))).await;
    }
    assert!(b.metrics.snapshot().protocol_errors >= AFTER_CONNECT.len() as u64);
}

#[tokio::test]
async fn garbage_before_connect_is_closed() {
    // [MQTT-3.1.0-1], [MQTT-3.1.4-1]
    let b = TestBroker::start().await;
    let cases: &[&[u8]] = &[
        b"GET / HTTP/1.1\r\nHost: x\r\n\r\n",
        &[0x30, 0x03, 0x00, 0x01, b't'],
        &[0x10, 0xff, 0xff, 0xff, 0xff, 0xff],
        &[0x00; 16],
    ];
    for bytes in cases {
        let mut raw = Raw::open(b.addr).await;
        raw.send(bytes).await;
        raw.expect_closed_silently().await;
    }
    // The broker still serves.
    let (_ok, ack) = Raw::connect(b.addr, "after", true, 60).await;
    assert_eq!(ack.code, tern::codec::ConnectReturnCode::Accepted);
}

#[tokio::test]
async fn oversized_packet_is_refused() {
    let b = TestBroker::start_with(|c| c.mqtt.max_packet_size = 1024).await;
    let (mut raw, _) = Raw::connect(b.addr, "big", true, 60).await;
    raw.publish("t", QoS::AtMostOnce, None, false, &[0u8; 1000])
        .await;
    raw.send(&[0xc0, 0]).await;
    assert_eq!(
        raw.recv().await,
        Packet::PingResp,
        "under the limit is fine"
    );
    raw.publish("t", QoS::AtMostOnce, None, false, &[0u8; 1100])
        .await;
    raw.expect_closed_silently().await;
}

/// 40 connections each holding a 600 KB part of a frame that claims 900 KB (ids `hog-ROUND-i`).
async fn hogs(addr: std::net::SocketAddr, round: usize) -> Vec<Raw> {
    let mut hogs = Vec::new();
    for i in 0..40 {
        let mut raw = Raw::open(addr).await;
        raw.send(&connect_bytes(&format!("hog-{round}-{i}"))).await;
        assert!(matches!(raw.recv().await, Packet::ConnAck(_)));
        let mut frame = vec![0x30, 0x80, 0xf8, 0x36, 0x00, 0x01, b't'];
        frame.resize(600_000, b'x');
        raw.send(&frame).await;
        hogs.push(raw);
    }
    hogs
}

/// Hostile connections (issue #5's list), each on its own socket while a well-behaved pair
/// keeps exchanging messages; the broker (its own process) must close each and return to its
/// memory baseline.
#[tokio::test]
async fn hostile_connections_leave_others_and_memory_untouched() {
    use common::BinaryBroker;
    use std::time::Duration;
    let broker =
        BinaryBroker::start("[mqtt]\nconnect_timeout = \"1s\"\n[sys]\nsys_interval = \"0s\"\n")
            .await;
    let addr = broker.addr;
    let (mut sub, _) = Raw::connect(addr, "good-sub", true, 60).await;
    sub.subscribe(1, &[("good", QoS::AtLeastOnce)]).await;
    let (mut publisher, _) = Raw::connect(addr, "good-pub", true, 60).await;
    let baseline_kib = broker.rss_kib();

    // Half-sent frames that claim 900 KB each: the broker buffers what arrives, nothing more.
    let mut hogs = hogs(addr, 0).await;
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("CONNECT never sent", vec![]),
        ("PUBLISH before CONNECT", vec![0x30, 0x03, 0x00, 0x01, b't']),
        (
            "256 MB length claim before CONNECT",
            vec![0x10, 0xff, 0xff, 0xff, 0x7f],
        ),
        ("half a CONNECT", connect_bytes("half")[..6].to_vec()),
    ];
    for (name, bytes) in &cases {
        let mut raw = Raw::open(addr).await;
        raw.send(bytes).await;
        let extra = raw.read_to_close().await;
        assert!(extra.is_empty(), "{name}: {extra:02x?}");
    }
    // A frame dribbled one byte a second after CONNECT with keepalive 1: closed by keepalive.
    let (mut dribbler, _) = Raw::connect(addr, "dribbler", true, 1).await;
    let dribble = async {
        let (mut rd, mut wr) = dribbler.stream.split();
        let mut buf = [0u8; 8];
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        for byte in [0x30u8, 0x10, 0x00, 0x01, b't', b'x', b'x', b'x'] {
            tokio::select! {
                _ = tick.tick() => { let _ = wr.write_all(&[byte]).await; }
                r = rd.read(&mut buf) => {
                    assert!(matches!(r, Ok(0) | Err(_)), "no answer to a dribble");
                    return;
                }
            }
        }
        let r = rd.read(&mut buf).await;
        assert!(matches!(r, Ok(0) | Err(_)), "closed by keepalive");
    };
    // Meanwhile the good pair exchanges messages.
    let exchange = async {
        for i in 1..=20u16 {
            publisher
                .publish("good", QoS::AtLeastOnce, Some(i), false, &i.to_be_bytes())
                .await;
            assert_eq!(publisher.recv().await, Packet::PubAck(i));
            let p = sub.recv_publish().await;
            assert_eq!(&p.payload[..], &i.to_be_bytes());
            sub.send_packet(&Packet::PubAck(p.pkid.expect("id"))).await;
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    };
    common::within(Duration::from_secs(30), async {
        tokio::join!(dribble, exchange)
    })
    .await;
    let peak_kib = broker.rss_kib();
    assert!(
        peak_kib < baseline_kib + 40 * 1024 + 16 * 1024,
        "40 hogs of 600 KB took {} KiB",
        peak_kib - baseline_kib
    );
    // Freed when they go: whether the allocator gives the pages back to the OS is its own
    // choice, so what is checked is that a second round of hogs reuses them.
    hogs.clear();
    broker
        .wait_for_log_lines(40, |l| {
            l.contains("client disconnected") && l.contains("hog-0-")
        })
        .await;
    hogs = self::hogs(addr, 1).await;
    let second_kib = broker.rss_kib();
    assert!(
        second_kib < peak_kib + 8 * 1024,
        "a second round of hogs grew the broker from {peak_kib} to {second_kib} KiB"
    );
    drop(hogs);
    publisher
        .publish("good", QoS::AtLeastOnce, Some(99), false, b"still")
        .await;
    assert_eq!(publisher.recv().await, Packet::PubAck(99));
    assert_eq!(&sub.recv_publish().await.payload[..], b"still");
}
