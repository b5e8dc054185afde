//! Publisher backpressure: a slow subscriber slows its publishers down instead of losing
//! messages, a stuck one does not, and clients whose own acks sit behind a pause are never
//! paused by it.

mod common;

use std::time::{Duration, Instant};

use common::{within, Client, Raw, TestBroker, WAIT};
use tern::codec::Packet;
use tern::message::QoS;

/// No message was dropped anywhere in the broker.
fn assert_no_drops(b: &TestBroker) {
    let m = b.metrics.snapshot();
    assert_eq!(
        (m.dropped_queue_full, m.dropped_mailbox_full),
        (0, 0),
        "dropped"
    );
}

/// Receives `n` publishes on `c`, checking they carry 0, 1, 2, ... in order.
async fn receive_numbered(c: &mut Client, n: u32) {
    within(Duration::from_secs(60), async {
        for i in 0..n {
            let p = c.next_publish().await;
            assert_eq!(&p.payload[..], i.to_be_bytes(), "in order, none lost");
        }
    })
    .await;
}

/// Publishes `n` numbered QoS 1 messages to `topic` as fast as the client's window allows.
fn publish_numbered(c: &Client, topic: &'static str, n: u32) -> tokio::task::JoinHandle<()> {
    let client = c.client.clone();
    tokio::spawn(async move {
        for i in 0..n {
            client
                .publish(
                    topic,
                    rumqttc::QoS::AtLeastOnce,
                    false,
                    i.to_be_bytes().to_vec(),
                )
                .await
                .expect("queued");
        }
    })
}

/// `n` PUBLISH packets to `topic` in one buffer: ids 1..=n (QoS 1 and 2), and as payload
/// `payload` or, without one, the id as two big-endian bytes.
fn burst(topic: &[u8], qos: QoS, n: u16, payload: Option<&[u8]>) -> bytes::BytesMut {
    let mut buf = bytes::BytesMut::new();
    for i in 1..=n {
        let pkid = (qos != QoS::AtMostOnce).then_some(i);
        let numbered = i.to_be_bytes();
        let body = payload.unwrap_or(&numbered);
        tern::codec::encode_publish(topic, body, qos, pkid, false, false, &mut buf);
    }
    buf
}

/// Receives the `n` numbered publishes of a `burst` in order at `qos` (0 or 1), acknowledging
/// them at QoS 1, slow but moving: 10 ms of rest every 100 messages.
async fn receive_slowly(sub: &mut Raw, n: u16, qos: QoS) {
    within(Duration::from_secs(60), async {
        for i in 1..=n {
            let p = sub.recv_publish().await;
            assert_eq!(&p.payload[..], i.to_be_bytes(), "in order, none lost");
            assert_eq!(p.qos, qos);
            if qos == QoS::AtLeastOnce {
                sub.send_packet(&Packet::PubAck(p.pkid.expect("QoS 1")))
                    .await;
            }
            if i % 100 == 0 {
                // The subject of the test is the subscriber's pace.
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    })
    .await;
}

#[tokio::test]
async fn a_self_subscribed_qos1_publisher_at_full_speed_is_not_paused_by_its_own_acks() {
    // [MQTT-4.3.2-1]: its session waits for the PUBACKs of its deliveries, which come on the
    // socket a pause would stop reading; they are read during the pause.
    const N: u32 = 10_000;
    let b = TestBroker::start().await;
    let mut c = Client::connect(b.addr, "narcissus").await;
    c.subscribe("self/t", rumqttc::QoS::AtLeastOnce).await;
    let started = Instant::now();
    let publisher = publish_numbered(&c, "self/t", N);
    receive_numbered(&mut c, N).await;
    within(WAIT, publisher).await.expect("publisher");
    assert_no_drops(&b);
    // Stalled on its own acks, each burst past the high mark waited backpressure_timeout
    // (1 s) for about one inflight window (20): that would be minutes here.
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "{N} messages took {:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn two_clients_subscribed_to_each_other_are_not_paused_by_their_acks() {
    const N: u32 = 10_000;
    let b = TestBroker::start().await;
    let mut alice = Client::connect(b.addr, "alice").await;
    let mut bob = Client::connect(b.addr, "bob").await;
    alice.subscribe("to/alice", rumqttc::QoS::AtLeastOnce).await;
    bob.subscribe("to/bob", rumqttc::QoS::AtLeastOnce).await;
    let started = Instant::now();
    let a = publish_numbered(&alice, "to/bob", N);
    let b2 = publish_numbered(&bob, "to/alice", N);
    tokio::join!(
        receive_numbered(&mut alice, N),
        receive_numbered(&mut bob, N)
    );
    within(WAIT, a).await.expect("alice publishes");
    within(WAIT, b2).await.expect("bob publishes");
    assert_no_drops(&b);
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "took {:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn a_slow_but_moving_subscriber_loses_nothing_to_a_bursty_publisher() {
    // The whole burst arrives in a few reads of the publisher's socket: backpressure must
    // act per PUBLISH, not per read, for the default queue (1,000) to suffice.
    const N: u16 = 5_000;
    let b = TestBroker::start().await;
    let (mut sub, _) = Raw::connect(b.addr, "slow", true, 60).await;
    sub.subscribe(1, &[("burst", QoS::AtLeastOnce)]).await;
    let (mut publisher, _) = Raw::connect(b.addr, "bursty", true, 60).await;
    let burst = burst(b"burst", QoS::AtLeastOnce, N, None);
    let acks = tokio::spawn(async move {
        publisher.send(&burst).await;
        for i in 1..=N {
            assert_eq!(publisher.recv().await, Packet::PubAck(i));
        }
    });
    receive_slowly(&mut sub, N, QoS::AtLeastOnce).await;
    within(WAIT, acks).await.expect("publisher");
    assert_no_drops(&b);
}

#[tokio::test]
async fn backpressure_timeout_0s_never_makes_a_publisher_wait() {
    // Mosquitto's behaviour: a subscriber that does not read loses what its queue cannot
    // hold, counted, and its publishers go on at full speed.
    const N: u16 = 3_000;
    let b = TestBroker::start_with(|c| c.session.backpressure_timeout = Duration::ZERO).await;
    let (mut stuck, _) = Raw::connect(b.addr, "stuck", true, 60).await;
    stuck.subscribe(1, &[("t", QoS::AtLeastOnce)]).await;
    let (mut publisher, _) = Raw::connect(b.addr, "fast", true, 60).await;
    let burst = burst(b"t", QoS::AtLeastOnce, N, Some(b"x"));
    let started = Instant::now();
    publisher.send(&burst).await;
    for i in 1..=N {
        assert_eq!(publisher.recv().await, Packet::PubAck(i));
    }
    let waited = started.elapsed();
    // Held by the stuck session: its inflight window (20) and its queue (1,000).
    let m = b.metrics.snapshot();
    assert_eq!(
        m.dropped_queue_full + m.dropped_mailbox_full,
        u64::from(N) - 1_020
    );
    // With backpressure on, the publisher would wait backpressure_timeout for the stuck
    // subscriber before going on; here it never waits.
    assert!(waited < Duration::from_millis(900), "waited {waited:?}");
}

#[tokio::test]
async fn what_a_paused_publisher_sent_before_closing_is_still_delivered() {
    // A QoS 0 publisher writes its burst and closes the socket at once. Its PUBLISHes wait
    // behind a pause while the slow subscriber drains; the close must not drop them.
    const N: u16 = 5_000;
    let b = TestBroker::start().await;
    let (mut sub, _) = Raw::connect(b.addr, "slow0", true, 60).await;
    sub.subscribe(1, &[("burst0", QoS::AtMostOnce)]).await;
    let (mut publisher, _) = Raw::connect(b.addr, "fire-and-forget", true, 60).await;
    let burst = burst(b"burst0", QoS::AtMostOnce, N, None);
    publisher.send(&burst).await;
    drop(publisher);
    receive_slowly(&mut sub, N, QoS::AtMostOnce).await;
    assert_no_drops(&b);
}

#[tokio::test]
async fn a_publisher_held_by_a_long_pause_is_not_dropped_for_keepalive() {
    // [MQTT-3.1.2-24]: its PUBLISHes wait unhandled behind the pause, but they were sent.
    let b = TestBroker::start_with(|c| {
        c.session.max_inflight_messages = 1;
        c.session.max_queued_messages = 4;
        c.session.backpressure_timeout = Duration::from_secs(4);
    })
    .await;
    // Never acknowledges: after one in flight and two queued, its backlog is congested.
    let (mut stuck, _) = Raw::connect(b.addr, "stuck", true, 60).await;
    stuck.subscribe(1, &[("t", QoS::AtLeastOnce)]).await;
    // Keepalive 1 s: closed after 1.5 s without a packet.
    let (mut publisher, _) = Raw::connect(b.addr, "patient", true, 1).await;
    let started = Instant::now();
    let mut id = 0;
    while started.elapsed() < Duration::from_secs(3) {
        id += 1;
        publisher
            .publish("t", QoS::AtLeastOnce, Some(id), false, b"x")
            .await;
        // Time is the subject: a steady publisher, slower than its keepalive needs.
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    publisher.send(&[0xc0, 0]).await;
    within(WAIT, async {
        loop {
            match publisher.recv().await {
                Packet::PubAck(_) => {}
                Packet::PingResp => break,
                other => panic!("unexpected {other:?}"),
            }
        }
    })
    .await;
}

#[tokio::test]
async fn an_offline_session_never_makes_its_publishers_wait() {
    // It cannot make progress, so waiting for it would only stall the publisher; its queue
    // fills and overflows by the policy instead, counted.
    const N: u16 = 100;
    let b = TestBroker::start_with(|c| {
        c.session.max_queued_messages = 10;
        c.session.backpressure_timeout = Duration::from_secs(5);
    })
    .await;
    let (mut away, _) = Raw::connect(b.addr, "away", false, 60).await;
    away.subscribe(1, &[("t", QoS::AtLeastOnce)]).await;
    away.disconnect().await;
    let (mut publisher, _) = Raw::connect(b.addr, "busy", true, 60).await;
    let burst = burst(b"t", QoS::AtLeastOnce, N, Some(b"x"));
    // Two bursts: a pause would start after the first and hold the second.
    let started = Instant::now();
    for _ in 0..2 {
        publisher.send(&burst).await;
        for i in 1..=N {
            assert_eq!(publisher.recv().await, Packet::PubAck(i));
        }
    }
    let waited = started.elapsed();
    assert!(
        waited < Duration::from_secs(2),
        "waited {waited:?} for an offline session"
    );
    let m = b.metrics.snapshot();
    assert_eq!(
        m.dropped_queue_full,
        2 * u64::from(N) - 10,
        "all but the queue's 10, counted"
    );
    let (mut back, ack) = Raw::connect(b.addr, "away", false, 60).await;
    assert!(ack.session_present);
    for _ in 0..10 {
        let p = back.recv_publish().await;
        back.send_packet(&Packet::PubAck(p.pkid.expect("id"))).await;
    }
}
