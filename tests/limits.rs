//! Slow and stuck subscribers: bounded queues, the overflow policies, counted drops, and a
//! broker whose memory stays bounded while a subscriber stops reading.

mod common;

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use common::{within, BinaryBroker, Raw, TestBroker};
use tern::codec::{self, Packet};
use tern::message::QoS;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::Notify;

const QUIET: Duration = Duration::from_millis(300);

/// Publishes payloads 1..=n (one byte each) at QoS 1 from a fresh client.
async fn publish_numbered(addr: std::net::SocketAddr, n: u8) {
    let (mut p, _) = Raw::connect(addr, "numbered", true, 60).await;
    for i in 1..=n {
        p.publish("q", QoS::AtLeastOnce, Some(u16::from(i)), false, &[i])
            .await;
        assert_eq!(p.recv().await, Packet::PubAck(u16::from(i)));
    }
}

/// Reads everything owed to `raw`, acknowledging as it goes, until it falls quiet.
async fn drain(raw: &mut Raw, expect: usize) -> Vec<u8> {
    let mut got = Vec::new();
    for _ in 0..expect {
        let p = raw.recv_publish().await;
        got.push(p.payload[0]);
        raw.send_packet(&Packet::PubAck(p.pkid.expect("id"))).await;
    }
    raw.expect_silence(QUIET).await;
    got
}

#[tokio::test]
async fn drop_new_keeps_the_oldest_and_counts_the_rest() {
    let b = TestBroker::start_with(|c| {
        c.session.max_inflight_messages = 1;
        c.session.max_queued_messages = 5;
    })
    .await;
    let (mut slow, _) = Raw::connect(b.addr, "slow", true, 60).await;
    slow.subscribe(1, &[("q", QoS::AtLeastOnce)]).await;
    publish_numbered(b.addr, 10).await;
    // 1 in flight + 5 queued; 4 dropped.
    assert_eq!(drain(&mut slow, 6).await, [1, 2, 3, 4, 5, 6]);
    assert_eq!(b.metrics.snapshot().dropped_queue_full, 4);
}

#[tokio::test]
async fn drop_oldest_keeps_the_newest_and_counts_the_rest() {
    let b = TestBroker::start_with(|c| {
        c.session.max_inflight_messages = 1;
        c.session.max_queued_messages = 5;
        c.session.queue_overflow = tern::config::QueueOverflow::DropOldest;
    })
    .await;
    let (mut slow, _) = Raw::connect(b.addr, "slow", true, 60).await;
    slow.subscribe(1, &[("q", QoS::AtLeastOnce)]).await;
    publish_numbered(b.addr, 10).await;
    assert_eq!(drain(&mut slow, 6).await, [1, 6, 7, 8, 9, 10]);
    assert_eq!(b.metrics.snapshot().dropped_queue_full, 4);
}

#[tokio::test]
async fn byte_limit_bounds_the_queue() {
    let b = TestBroker::start_with(|c| {
        c.session.max_inflight_messages = 1;
        c.session.max_queued_bytes = 3;
    })
    .await;
    let (mut slow, _) = Raw::connect(b.addr, "slow", true, 60).await;
    slow.subscribe(1, &[("q", QoS::AtLeastOnce)]).await;
    publish_numbered(b.addr, 10).await;
    assert_eq!(drain(&mut slow, 4).await, [1, 2, 3, 4]);
    assert_eq!(b.metrics.snapshot().dropped_queue_full, 6);
}

/// Reads a `u64` counter from the broker's retained `$SYS` topic.
async fn sys_counter(addr: std::net::SocketAddr, topic: &str) -> u64 {
    let (mut raw, _) = Raw::connect(addr, "sys-reader", true, 60).await;
    raw.subscribe(1, &[(topic, QoS::AtMostOnce)]).await;
    let p = raw.recv_publish().await;
    String::from_utf8_lossy(&p.payload)
        .parse()
        .expect("a number")
}

#[tokio::test]
async fn a_stuck_subscriber_does_not_stall_others_or_grow_the_broker() {
    const TOTAL: u32 = 100_000;
    const PAYLOAD: usize = 1024;
    const AHEAD: u32 = 500;
    // The broker runs as its own process so its resident memory can be read from /proc.
    let broker = BinaryBroker::start(
        "[session]\nmax_inflight_messages = 20\nmax_queued_messages = 1000\n[sys]\nsys_interval = \"100ms\"\n",
    )
    .await;
    let addr = broker.addr;
    let baseline_kib = broker.rss_kib();

    // The stuck subscriber: subscribes at QoS 1, then never reads its socket.
    let (mut stuck, _) = Raw::connect(addr, "stuck", true, 0).await;
    stuck.subscribe(1, &[("flood", QoS::AtLeastOnce)]).await;

    // A healthy subscriber that reads and acknowledges everything.
    let (mut healthy, _) = Raw::connect(addr, "healthy", true, 0).await;
    healthy.subscribe(1, &[("flood", QoS::AtLeastOnce)]).await;
    let received = Arc::new(AtomicU32::new(0));
    let progress = Arc::new(Notify::new());
    let reader = {
        let (received, progress) = (received.clone(), progress.clone());
        tokio::spawn(async move {
            for i in 0..TOTAL {
                let p = healthy.recv_publish().await;
                assert_eq!(
                    &p.payload[..4],
                    &i.to_be_bytes(),
                    "healthy subscriber: order or loss at {i}"
                );
                healthy
                    .send_packet(&Packet::PubAck(p.pkid.expect("id")))
                    .await;
                received.store(i + 1, Ordering::Release);
                progress.notify_one();
            }
        })
    };

    // The publisher: QoS 1, acknowledgements read on their own half of the socket. It stays at
    // most AHEAD messages ahead of the healthy subscriber, so that one is owed everything.
    let publisher = {
        let (received, progress) = (received.clone(), progress.clone());
        tokio::spawn(async move {
            let mut stream = TcpStream::connect(addr).await.expect("connect");
            let mut buf = BytesMut::new();
            codec::encode(&common::connect_packet("flooder", true, 0), &mut buf);
            stream.write_all(&buf).await.expect("write");
            let mut ack = [0u8; 4];
            stream.read_exact(&mut ack).await.expect("connack");
            assert_eq!(ack, [0x20, 2, 0, 0]);
            let (mut rd, mut wr) = stream.into_split();
            let acks = tokio::spawn(async move {
                let mut buf = BytesMut::new();
                let mut n = 0;
                while n < TOTAL {
                    while let Some(p) = codec::decode(&mut buf, usize::MAX).expect("valid") {
                        assert!(matches!(p, Packet::PubAck(_)));
                        n += 1;
                    }
                    if n < TOTAL {
                        assert!(rd.read_buf(&mut buf).await.expect("read") > 0, "closed");
                    }
                }
            });
            let mut payload = vec![0u8; PAYLOAD];
            for i in 0..TOTAL {
                while received.load(Ordering::Acquire) + AHEAD < i {
                    progress.notified().await;
                }
                payload[..4].copy_from_slice(&i.to_be_bytes());
                buf.clear();
                let id = (i % 65_535) as u16 + 1;
                codec::encode_publish(
                    b"flood",
                    &payload,
                    QoS::AtLeastOnce,
                    Some(id),
                    false,
                    false,
                    &mut buf,
                );
                wr.write_all(&buf).await.expect("write");
            }
            acks.await.expect("every publish acknowledged");
        })
    };

    within(Duration::from_secs(240), async {
        publisher.await.expect("publisher finishes");
        reader.await.expect("healthy subscriber gets everything");
    })
    .await;

    // Memory: 100,000 x 1 KiB went through; the stuck subscriber may hold only its window and
    // queue (20 + 1000 messages, about 1 MiB) beside the broker's working buffers (3-4 MiB
    // measured). An unbounded queue would hold ~100 MiB.
    let grown_kib = broker.rss_kib().saturating_sub(baseline_kib);
    assert!(grown_kib < 16 * 1024, "broker grew by {grown_kib} KiB");

    // Now the stuck subscriber wakes up: what it receives plus what was dropped for it is
    // exactly what was published.
    let mut got = 0u32;
    loop {
        match tokio::time::timeout(Duration::from_millis(500), stuck.recv()).await {
            Ok(Packet::Publish(p)) => {
                got += 1;
                stuck
                    .send_packet(&Packet::PubAck(p.pkid.expect("id")))
                    .await;
            }
            Ok(other) => panic!("unexpected {other:?}"),
            Err(_) => break,
        }
    }
    assert_eq!(got, 1020, "window + queue");
    // The broker's own count, read from $SYS once it has caught up.
    let dropped = within(common::WAIT, async {
        loop {
            let d = sys_counter(addr, "$SYS/broker/messages/dropped").await;
            if d >= u64::from(TOTAL - got) {
                break d;
            }
        }
    })
    .await;
    assert_eq!(
        dropped,
        u64::from(TOTAL - got),
        "every undelivered message is counted"
    );
}

#[tokio::test]
async fn subscriptions_per_client_are_capped() {
    let b = TestBroker::start_with(|c| c.session.max_subscriptions = 2).await;
    let (mut raw, _) = Raw::connect(b.addr, "many", true, 60).await;
    let codes = raw
        .subscribe(
            1,
            &[
                ("a", QoS::AtMostOnce),
                ("b", QoS::AtMostOnce),
                ("c", QoS::AtMostOnce),
            ],
        )
        .await;
    use tern::codec::SubAckCode::{Failure, Granted};
    assert_eq!(
        codes,
        [Granted(QoS::AtMostOnce), Granted(QoS::AtMostOnce), Failure]
    );
    // Replacing an existing subscription is still allowed at the cap.
    assert_eq!(
        raw.subscribe(2, &[("a", QoS::AtLeastOnce)]).await,
        [Granted(QoS::AtLeastOnce)]
    );
}

#[tokio::test]
async fn topic_levels_are_capped() {
    let b = TestBroker::start_with(|c| c.mqtt.max_topic_levels = 3).await;
    let (mut raw, _) = Raw::connect(b.addr, "deep", true, 60).await;
    use tern::codec::SubAckCode::{Failure, Granted};
    let codes = raw
        .subscribe(
            1,
            &[("a/b/c", QoS::AtMostOnce), ("a/b/c/d", QoS::AtMostOnce)],
        )
        .await;
    assert_eq!(codes, [Granted(QoS::AtMostOnce), Failure]);
    raw.publish("a/b/c", QoS::AtMostOnce, None, false, b"ok")
        .await;
    assert_eq!(&raw.recv_publish().await.payload[..], b"ok");
    raw.publish("a/b/c/d", QoS::AtMostOnce, None, false, b"too deep")
        .await;
    raw.expect_closed_silently().await;
}

#[tokio::test]
async fn small_messages_queued_offline_do_not_pin_their_read_buffers() {
    // A sensor's messages arrive one per read; queued for an offline session, each used to
    // keep its whole 16 KiB read buffer alive (4,317 B of RSS per 4-byte message, measured).
    // `benches/queued_memory.rs` measures the figure; this bounds it.
    const N: u16 = 5_000;
    let broker = BinaryBroker::start(&format!(
        "[session]\nmax_queued_messages = {N}\n[sys]\nsys_interval = \"0s\"\n"
    ))
    .await;
    let (mut sub, _) = Raw::connect(broker.addr, "offline", false, 60).await;
    sub.subscribe(1, &[("q", QoS::AtLeastOnce)]).await;
    sub.disconnect().await;
    let (mut sensor, _) = Raw::connect(broker.addr, "sensor", true, 60).await;
    let baseline_kib = broker.rss_kib();
    for id in 1..=N {
        sensor
            .publish("q", QoS::AtLeastOnce, Some(id), false, b"4byt")
            .await;
        assert_eq!(sensor.recv().await, Packet::PubAck(id));
    }
    let grown = broker.rss_kib().saturating_sub(baseline_kib) * 1024;
    let per_message = grown / u64::from(N);
    assert!(
        per_message < 1024,
        "{per_message} B of RSS per queued 4-byte message"
    );
    // All of them are there for the session's return.
    let (mut sub, ack) = Raw::connect(broker.addr, "offline", false, 60).await;
    assert!(ack.session_present);
    for _ in 0..N {
        let p = sub.recv_publish().await;
        assert_eq!(&p.payload[..], b"4byt");
        sub.send_packet(&Packet::PubAck(p.pkid.expect("id"))).await;
    }
}

#[tokio::test]
async fn the_default_topic_level_limit_is_mosquittos() {
    // Mosquitto accepts topics of up to 200 levels; so do Tern's defaults, and no deeper.
    let b = TestBroker::start().await;
    let (mut raw, _) = Raw::connect(b.addr, "deep", true, 60).await;
    let deep = vec!["l"; 200].join("/");
    let deeper = vec!["l"; 201].join("/");
    use tern::codec::SubAckCode::{Failure, Granted};
    let codes = raw
        .subscribe(1, &[(&deep, QoS::AtMostOnce), (&deeper, QoS::AtMostOnce)])
        .await;
    assert_eq!(codes, [Granted(QoS::AtMostOnce), Failure]);
    raw.publish(&deep, QoS::AtMostOnce, None, false, b"ok")
        .await;
    assert_eq!(&raw.recv_publish().await.payload[..], b"ok");
}
