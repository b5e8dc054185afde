//! Keepalive: 1.5 x the client's value, reset by whole packets only; PINGREQ/PINGRESP.

mod common;

use std::time::{Duration, Instant};

use common::{within, Raw, TestBroker, WAIT};
use tern::codec::Packet;
use tern::message::QoS;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[tokio::test]
async fn pingreq_gets_pingresp() {
    // [MQTT-3.12.4-1]
    let b = TestBroker::start().await;
    let (mut raw, _) = Raw::connect(b.addr, "ping", true, 60).await;
    raw.send(&[0xc0, 0x00]).await;
    assert_eq!(raw.recv_bytes(2).await, [0xd0, 0x00]);
}

#[tokio::test]
async fn silent_client_is_closed_after_one_and_a_half_keepalives() {
    // [MQTT-3.1.2-24]
    let b = TestBroker::start().await;
    let started = Instant::now();
    let (mut raw, _) = Raw::connect(b.addr, "silent", true, 1).await;
    raw.expect_closed_silently().await;
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_millis(1400),
        "closed too early: {waited:?}"
    );
    // 1.5 s, checked on a timer: well before a second one would have passed.
    assert!(
        waited < Duration::from_secs(3),
        "closed too late: {waited:?}"
    );
}

#[tokio::test]
async fn a_client_on_a_slow_downlink_is_kept_alive_by_its_pingreqs() {
    // [MQTT-3.1.2-24] is about what the client sent: while a backlog drains to it for far
    // longer than 1.5 x keepalive, the PINGREQs it keeps sending are read and answered.
    const MESSAGES: u16 = 12;
    let payload = vec![7u8; 1_000_000];
    let b = TestBroker::start().await;
    let socket = tokio::net::TcpSocket::new_v4().expect("socket");
    // A small window, so the broker's writes block on this client's pace once the kernel's
    // send buffer (a few MB at most) is full; the backlog is larger than that.
    socket.set_recv_buffer_size(8 * 1024).expect("rcvbuf");
    let stream = within(WAIT, socket.connect(b.addr)).await.expect("connect");
    let mut sub = Raw::from_stream(stream);
    sub.send_packet(&common::connect_packet("slow-link", true, 1))
        .await;
    assert!(matches!(sub.recv().await, Packet::ConnAck(_)));
    sub.subscribe(1, &[("bulk", QoS::AtMostOnce)]).await;
    let (mut publisher, _) = Raw::connect(b.addr, "bulk-pub", true, 60).await;
    for i in 1..=MESSAGES {
        publisher
            .publish("bulk", QoS::AtLeastOnce, Some(i), false, &payload)
            .await;
        assert_eq!(publisher.recv().await, Packet::PubAck(i));
    }
    // About 1 MB/s for 4 s, a PINGREQ every 300 ms: a broker that stops reading while its
    // write is blocked drops this client at 1.5 s.
    let started = Instant::now();
    let mut last_ping = Instant::now();
    let (mut bytes, mut pongs, mut pending) = (0, 0, bytes::BytesMut::new());
    let mut chunk = vec![0u8; 8 * 1024];
    while started.elapsed() < Duration::from_secs(4) {
        if last_ping.elapsed() >= Duration::from_millis(300) {
            sub.stream.write_all(&[0xc0, 0]).await.expect("PINGREQ");
            last_ping = Instant::now();
        }
        let n = within(WAIT, sub.stream.read(&mut chunk))
            .await
            .expect("read");
        assert!(n > 0, "closed after {bytes} bytes, {:?}", started.elapsed());
        bytes += n;
        pending.extend_from_slice(&chunk[..n]);
        while let Some(p) = tern::codec::decode(&mut pending, usize::MAX).expect("valid") {
            match p {
                Packet::Publish(p) => assert_eq!(p.payload.len(), payload.len()),
                Packet::PingResp => pongs += 1,
                other => panic!("unexpected {other:?}"),
            }
        }
        // The subject of the test is this client's slow pace.
        tokio::time::sleep(Duration::from_millis(8)).await;
    }
    assert!(
        bytes > 2_000_000,
        "the backlog was moving: {bytes} bytes in 4 s"
    );
    // Each PINGRESP waits behind what was already written (megabytes, here); read at full
    // speed now, they arrive.
    within(WAIT, async {
        while pongs == 0 {
            let n = sub.stream.read(&mut chunk).await.expect("read");
            assert!(n > 0, "closed");
            pending.extend_from_slice(&chunk[..n]);
            while let Some(p) = tern::codec::decode(&mut pending, usize::MAX).expect("valid") {
                pongs += usize::from(p == Packet::PingResp);
            }
        }
    })
    .await;
}

#[tokio::test]
async fn pings_keep_the_connection_alive() {
    // [MQTT-3.1.2-24]: any packet resets the deadline.
    let b = TestBroker::start().await;
    let (mut raw, _) = Raw::connect(b.addr, "pinger", true, 1).await;
    let started = Instant::now();
    while started.elapsed() < Duration::from_millis(3000) {
        raw.expect_silence(Duration::from_millis(700)).await;
        raw.send(&[0xc0, 0x00]).await;
        assert_eq!(raw.recv().await, Packet::PingResp);
    }
    // Then silence: closed.
    raw.expect_closed_silently().await;
}

#[tokio::test]
async fn a_dribbled_frame_does_not_reset_the_deadline() {
    // Bytes that never complete a packet are not activity.
    let b = TestBroker::start().await;
    let (mut raw, _) = Raw::connect(b.addr, "dribble", true, 1).await;
    let started = Instant::now();
    // A PUBLISH that claims 100 bytes, then one byte every 200 ms.
    raw.send(&[0x30, 100]).await;
    let (mut rd, mut wr) = raw.stream.split();
    within(WAIT, async {
        let mut tick = tokio::time::interval(Duration::from_millis(200));
        let mut buf = [0u8; 16];
        loop {
            tokio::select! {
                _ = tick.tick() => {
                    let _ = wr.write_all(b"x").await;
                }
                r = rd.read(&mut buf) => match r {
                    Ok(0) | Err(_) => break,
                    Ok(n) => panic!("unexpected bytes {:02x?}", &buf[..n]),
                },
            }
        }
    })
    .await;
    let waited = started.elapsed();
    assert!(
        waited < Duration::from_secs(4),
        "not closed by keepalive: {waited:?}"
    );
}

#[tokio::test]
async fn keepalive_zero_means_no_timeout() {
    let b = TestBroker::start().await;
    let (mut raw, _) = Raw::connect(b.addr, "forever", true, 0).await;
    raw.expect_silence(Duration::from_millis(2000)).await;
    raw.send(&[0xc0, 0x00]).await;
    assert_eq!(raw.recv().await, Packet::PingResp);
}

#[tokio::test]
async fn a_client_that_neither_reads_nor_sends_times_out_while_writes_are_blocked() {
    // [MQTT-3.1.2-24] holds even while the broker is stuck writing to the client.
    let b = TestBroker::start().await;
    let (mut stuck, _) = Raw::connect(b.addr, "stuck", true, 1).await;
    stuck.subscribe(1, &[("big", QoS::AtMostOnce)]).await;
    let (mut publisher, _) = Raw::connect(b.addr, "pub", true, 0).await;
    // 16 MiB of QoS 0 traffic: more than the socket buffers hold.
    let payload = vec![0u8; 64 * 1024];
    for _ in 0..256 {
        publisher
            .publish("big", QoS::AtMostOnce, None, false, &payload)
            .await;
    }
    publisher.send(&[0xc0, 0]).await;
    assert_eq!(publisher.recv().await, Packet::PingResp);
    // Neither reading nor sending, the stuck client must be gone once its keepalive (1.5 s)
    // passes: the broker's count is the only thing that can be watched without reading.
    within(Duration::from_secs(5), async {
        while b.metrics.snapshot().clients_connected != 1 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    assert_eq!(
        b.metrics.snapshot().clients_connected,
        1,
        "only the publisher is left"
    );
}
