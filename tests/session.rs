//! Persistent sessions: queueing while offline, redelivery with DUP and the original ids,
//! session-present in every case, clean-session discard, expiry, and order across reconnects.

mod common;

use std::collections::HashSet;
use std::time::Duration;

use common::{connect_as, within, Raw, TestBroker};
use tern::codec::Packet;
use tern::message::QoS;

const QUIET: Duration = Duration::from_millis(300);

/// Publishes from a fresh clean client and waits for the QoS handshake to finish.
async fn publish(b: &TestBroker, topic: &str, qos: QoS, payloads: &[&[u8]]) {
    let (mut p, _) = Raw::connect(b.addr, "publisher", true, 60).await;
    for (i, payload) in payloads.iter().enumerate() {
        let id = i as u16 + 1;
        match qos {
            QoS::AtMostOnce => p.publish(topic, qos, None, false, payload).await,
            QoS::AtLeastOnce => {
                p.publish(topic, qos, Some(id), false, payload).await;
                assert_eq!(p.recv().await, Packet::PubAck(id));
            }
            QoS::ExactlyOnce => {
                p.publish(topic, qos, Some(id), false, payload).await;
                assert_eq!(p.recv().await, Packet::PubRec(id));
                p.send_packet(&Packet::PubRel(id)).await;
                assert_eq!(p.recv().await, Packet::PubComp(id));
            }
        }
    }
    // A ping round trip: everything above has been processed.
    p.send(&[0xc0, 0]).await;
    assert_eq!(p.recv().await, Packet::PingResp);
}

/// Connects a persistent raw client; returns it and the session-present flag.
async fn persistent(b: &TestBroker, id: &str) -> (Raw, bool) {
    let (raw, ack) = Raw::connect(b.addr, id, false, 60).await;
    assert_eq!(ack.code, tern::codec::ConnectReturnCode::Accepted);
    (raw, ack.session_present)
}

#[tokio::test]
async fn session_present_in_every_case() {
    // [MQTT-3.2.2-1], [MQTT-3.2.2-2], [MQTT-3.2.2-3], [MQTT-3.1.2-4], [MQTT-3.1.2-6], [MQTT-3.1.4-3]
    let b = TestBroker::start().await;
    let (raw, present) = persistent(&b, "p").await;
    assert!(!present, "no stored session yet");
    raw.disconnect().await;
    let (raw, present) = persistent(&b, "p").await;
    assert!(present, "stored session resumed");
    raw.disconnect().await;
    let (raw, ack) = Raw::connect(b.addr, "p", true, 60).await;
    assert!(!ack.session_present, "clean session never reports one");
    raw.disconnect().await;
    let (_raw, present) = persistent(&b, "p").await;
    assert!(
        !present,
        "the clean session discarded the old one and left nothing"
    );
}

#[tokio::test]
async fn messages_published_while_offline_are_delivered_on_return() {
    // [MQTT-3.1.2-5], [MQTT-4.5.0-1], [MQTT-4.1.0-1], [MQTT-3.1.2-4]
    let b = TestBroker::start().await;
    let (mut raw, _) = persistent(&b, "offline").await;
    raw.subscribe(1, &[("news/#", QoS::ExactlyOnce)]).await;
    raw.disconnect().await;
    publish(&b, "news/a", QoS::AtLeastOnce, &[b"q1"]).await;
    publish(&b, "news/b", QoS::ExactlyOnce, &[b"q2"]).await;
    publish(&b, "news/c", QoS::AtMostOnce, &[b"q0"]).await;
    let (mut raw, present) = persistent(&b, "offline").await;
    assert!(present);
    let p = raw.recv_publish().await;
    assert_eq!(
        (&p.payload[..], p.qos, p.dup),
        (&b"q1"[..], QoS::AtLeastOnce, false)
    );
    raw.send_packet(&Packet::PubAck(p.pkid.expect("id"))).await;
    let p = raw.recv_publish().await;
    assert_eq!((&p.payload[..], p.qos), (&b"q2"[..], QoS::ExactlyOnce));
    let id = p.pkid.expect("id");
    raw.send_packet(&Packet::PubRec(id)).await;
    assert_eq!(raw.recv().await, Packet::PubRel(id));
    raw.send_packet(&Packet::PubComp(id)).await;
    // QoS 0 is not queued for offline sessions by default.
    raw.expect_silence(QUIET).await;
    assert_eq!(b.metrics.snapshot().dropped_qos0_offline, 1);
}

#[tokio::test]
async fn qos0_is_queued_offline_when_configured() {
    let b = TestBroker::start_with(|c| c.session.queue_qos0_messages = true).await;
    let (mut raw, _) = persistent(&b, "q0").await;
    raw.subscribe(1, &[("t", QoS::AtMostOnce)]).await;
    raw.disconnect().await;
    publish(&b, "t", QoS::AtMostOnce, &[b"a", b"b"]).await;
    let (mut raw, _) = persistent(&b, "q0").await;
    assert_eq!(&raw.recv_publish().await.payload[..], b"a");
    assert_eq!(&raw.recv_publish().await.payload[..], b"b");
}

#[tokio::test]
async fn unacknowledged_messages_are_resent_with_dup_and_the_same_ids() {
    // [MQTT-4.4.0-1], [MQTT-3.3.1-1], [MQTT-2.3.1-4], [MQTT-4.3.2-1]
    let b = TestBroker::start_with(|c| c.session.max_inflight_messages = 3).await;
    let (mut raw, _) = persistent(&b, "resend").await;
    raw.subscribe(1, &[("t", QoS::AtLeastOnce)]).await;
    publish(&b, "t", QoS::AtLeastOnce, &[b"1", b"2", b"3", b"4", b"5"]).await;
    let mut first = Vec::new();
    for _ in 0..3 {
        let p = raw.recv_publish().await;
        assert!(!p.dup);
        first.push((p.pkid.expect("id"), p.payload));
    }
    // Acknowledge only the second, then drop the connection without DISCONNECT.
    raw.send_packet(&Packet::PubAck(first[1].0)).await;
    let p4 = raw.recv_publish().await;
    assert_eq!(&p4.payload[..], b"4");
    drop(raw);
    let (mut raw, present) = persistent(&b, "resend").await;
    assert!(present);
    // Resends first, in their original order, DUP=1, same ids; then the queue.
    for (id, payload) in [&first[0], &first[2]]
        .into_iter()
        .cloned()
        .chain([(p4.pkid.expect("id"), p4.payload)])
    {
        let p = raw.recv_publish().await;
        assert!(p.dup, "resend has DUP=1");
        assert_eq!((p.pkid, &p.payload), (Some(id), &payload));
        raw.send_packet(&Packet::PubAck(id)).await;
    }
    let p = raw.recv_publish().await;
    assert_eq!((&p.payload[..], p.dup), (&b"5"[..], false));
}

#[tokio::test]
async fn pubrel_is_resent_not_the_publish_after_pubrec() {
    // [MQTT-4.3.3-1], [MQTT-4.4.0-1]
    let b = TestBroker::start().await;
    let (mut raw, _) = persistent(&b, "rel").await;
    raw.subscribe(1, &[("t", QoS::ExactlyOnce)]).await;
    publish(&b, "t", QoS::ExactlyOnce, &[b"x"]).await;
    let p = raw.recv_publish().await;
    let id = p.pkid.expect("id");
    raw.send_packet(&Packet::PubRec(id)).await;
    assert_eq!(raw.recv().await, Packet::PubRel(id));
    drop(raw);
    let (mut raw, present) = persistent(&b, "rel").await;
    assert!(present);
    assert_eq!(raw.recv().await, Packet::PubRel(id));
    raw.send_packet(&Packet::PubComp(id)).await;
    raw.expect_silence(QUIET).await;
}

#[tokio::test]
async fn inbound_qos2_state_survives_a_reconnect() {
    // [MQTT-4.3.3-2]: the DUP resend after reconnecting is acknowledged but not routed again.
    let b = TestBroker::start().await;
    let (mut sub, _) = Raw::connect(b.addr, "watch", true, 60).await;
    sub.subscribe(1, &[("t", QoS::AtMostOnce)]).await;
    let (mut publisher, _) = persistent(&b, "q2pub").await;
    publisher
        .publish("t", QoS::ExactlyOnce, Some(77), false, b"exactly")
        .await;
    assert_eq!(publisher.recv().await, Packet::PubRec(77));
    drop(publisher);
    let (mut publisher, present) = persistent(&b, "q2pub").await;
    assert!(present);
    publisher
        .send_packet(&Packet::Publish(tern::codec::Publish {
            dup: true,
            qos: QoS::ExactlyOnce,
            retain: false,
            topic: bytes::Bytes::from_static(b"t"),
            pkid: Some(77),
            payload: bytes::Bytes::from_static(b"exactly"),
        }))
        .await;
    assert_eq!(publisher.recv().await, Packet::PubRec(77));
    publisher.send_packet(&Packet::PubRel(77)).await;
    assert_eq!(publisher.recv().await, Packet::PubComp(77));
    assert_eq!(&sub.recv_publish().await.payload[..], b"exactly");
    sub.expect_silence(QUIET).await;
}

#[tokio::test]
async fn clean_session_leaves_nothing_behind() {
    // [MQTT-3.1.2-6]
    let b = TestBroker::start().await;
    let (mut raw, _) = persistent(&b, "c").await;
    raw.subscribe(1, &[("t", QoS::AtLeastOnce)]).await;
    raw.disconnect().await;
    let (mut clean, ack) = Raw::connect(b.addr, "c", true, 60).await;
    assert!(!ack.session_present);
    publish(&b, "t", QoS::AtLeastOnce, &[b"lost"]).await;
    clean.expect_silence(QUIET).await;
    clean.disconnect().await;
    let (mut raw, present) = persistent(&b, "c").await;
    assert!(!present);
    raw.expect_silence(QUIET).await;
}

#[tokio::test]
async fn idle_persistent_sessions_expire() {
    let b = TestBroker::start_with(|c| {
        c.session.persistent_client_expiration = Some(Duration::from_millis(200))
    })
    .await;
    let (mut raw, _) = persistent(&b, "exp").await;
    raw.subscribe(1, &[("t", QoS::AtLeastOnce)]).await;
    raw.disconnect().await;
    // Time itself is what is tested here: let the expiry pass.
    tokio::time::sleep(Duration::from_millis(600)).await;
    let (mut raw, present) = persistent(&b, "exp").await;
    assert!(!present, "expired");
    publish(&b, "t", QoS::AtLeastOnce, &[b"x"]).await;
    raw.expect_silence(QUIET).await;
    // A session that reconnects in time is kept: "in time" is a minute here, so a slow
    // machine cannot turn the reconnect itself into an expiry.
    let b = TestBroker::start_with(|c| {
        c.session.persistent_client_expiration = Some(Duration::from_secs(60))
    })
    .await;
    let (mut raw, _) = persistent(&b, "exp").await;
    raw.subscribe(2, &[("t", QoS::AtLeastOnce)]).await;
    raw.disconnect().await;
    let (_raw, present) = persistent(&b, "exp").await;
    assert!(present);
}

#[tokio::test]
async fn another_user_never_inherits_a_persistent_session() {
    // [MQTT-3.1.2-4] resumes the session of the same client; a different user name taking
    // the id gets a fresh one (session present 0), not what was checked for the first user.
    let b = TestBroker::start().await;
    let (mut alice, ack) = connect_as(b.addr, "shared-id", false, Some("alice"), None).await;
    assert!(!ack.session_present);
    alice.subscribe(1, &[("t", QoS::AtLeastOnce)]).await;
    publish(&b, "t", QoS::AtLeastOnce, &[b"in flight"]).await;
    let p = alice.recv_publish().await;
    assert_eq!(&p.payload[..], b"in flight");
    alice.disconnect().await;
    publish(&b, "t", QoS::AtLeastOnce, &[b"queued"]).await;
    // Mallory takes the id, offline and then live: nothing of alice's session reaches her.
    let (mut mallory, ack) = connect_as(b.addr, "shared-id", false, Some("mallory"), None).await;
    assert!(!ack.session_present, "a fresh session for another user");
    mallory.expect_silence(QUIET).await;
    let (_alice, ack) = connect_as(b.addr, "shared-id", false, Some("alice"), None).await;
    assert!(
        !ack.session_present,
        "mallory's CONNECT discarded alice's session"
    );
    mallory.read_to_close().await;
    // The same user resumes as before.
    let (mut bob, _) = connect_as(b.addr, "bob-id", false, Some("bob"), None).await;
    bob.subscribe(1, &[("b", QoS::AtLeastOnce)]).await;
    bob.disconnect().await;
    publish(&b, "b", QoS::AtLeastOnce, &[b"for bob"]).await;
    let (mut bob, ack) = connect_as(b.addr, "bob-id", false, Some("bob"), None).await;
    assert!(ack.session_present);
    assert_eq!(&bob.recv_publish().await.payload[..], b"for bob");
}

#[tokio::test]
async fn order_is_kept_across_a_reconnect() {
    // [MQTT-4.6.0-6]
    const N: u32 = 300;
    let b = TestBroker::start_with(|c| c.session.max_queued_messages = 1000).await;
    let (mut raw, _) = persistent(&b, "ord").await;
    raw.subscribe(1, &[("s", QoS::AtLeastOnce)]).await;
    let addr = b.addr;
    let publisher = tokio::spawn(async move {
        let (mut p, _) = Raw::connect(addr, "streamer", true, 60).await;
        for i in 0..N {
            let id = (i % 60_000) as u16 + 1;
            p.publish("s", QoS::AtLeastOnce, Some(id), false, &i.to_be_bytes())
                .await;
            assert_eq!(p.recv().await, Packet::PubAck(id));
        }
    });
    let mut seen: Vec<u32> = Vec::new();
    let value =
        |p: &tern::codec::Publish| u32::from_be_bytes(p.payload[..].try_into().expect("4 bytes"));
    // Read a third, acknowledging, then drop the connection mid-stream.
    while seen.len() < (N / 3) as usize {
        let p = raw.recv_publish().await;
        seen.push(value(&p));
        raw.send_packet(&Packet::PubAck(p.pkid.expect("id"))).await;
    }
    drop(raw);
    let (mut raw, present) = persistent(&b, "ord").await;
    assert!(present);
    within(Duration::from_secs(30), async {
        while seen.last() != Some(&(N - 1)) {
            let p = raw.recv_publish().await;
            let v = value(&p);
            // A resend (DUP) may repeat what was already seen; anything new must be next.
            if !(p.dup && seen.contains(&v)) {
                assert_eq!(
                    v,
                    seen.last().map_or(0, |l| l + 1),
                    "out of order after {:?}",
                    seen.last()
                );
                seen.push(v);
            }
            raw.send_packet(&Packet::PubAck(p.pkid.expect("id"))).await;
        }
    })
    .await;
    publisher.await.expect("publisher");
    assert_eq!(seen.len(), N as usize);
}

#[tokio::test]
async fn unsubscribe_completes_deliveries_already_started() {
    // [MQTT-3.10.4-3]
    let b = TestBroker::start_with(|c| c.session.max_inflight_messages = 1).await;
    let (mut raw, _) = Raw::connect(b.addr, "unsub-inflight", true, 60).await;
    raw.subscribe(1, &[("t", QoS::AtLeastOnce)]).await;
    publish(&b, "t", QoS::AtLeastOnce, &[b"started"]).await;
    let p = raw.recv_publish().await;
    raw.send_packet(&Packet::Unsubscribe(tern::codec::Unsubscribe {
        pkid: 2,
        filters: vec!["t".into()],
    }))
    .await;
    assert_eq!(raw.recv().await, Packet::UnsubAck(2));
    raw.send_packet(&Packet::PubAck(p.pkid.expect("id"))).await;
    // The slot was freed: a new subscription flows at once with a window of one.
    raw.subscribe(3, &[("t", QoS::AtLeastOnce)]).await;
    publish(&b, "t", QoS::AtLeastOnce, &[b"next"]).await;
    assert_eq!(&raw.recv_publish().await.payload[..], b"next");
}

#[tokio::test]
async fn packet_ids_wrap_and_are_never_reused_while_in_flight() {
    // [MQTT-2.3.1-4]: 70,000 QoS 1 deliveries, ids never 0, never two in flight at once.
    const N: u32 = 70_000;
    let b = TestBroker::start_with(|c| {
        c.session.max_inflight_messages = 16;
        c.session.max_queued_messages = N as usize;
    })
    .await;
    let (mut sub, _) = Raw::connect(b.addr, "wrap", true, 0).await;
    sub.subscribe(1, &[("w", QoS::AtLeastOnce)]).await;
    let addr = b.addr;
    let publisher = tokio::spawn(async move {
        let (mut p, _) = Raw::connect(addr, "wrap-pub", true, 0).await;
        let mut sent = 0u32;
        while sent < N {
            let batch = 1000.min(N - sent);
            for i in 0..batch {
                p.publish("w", QoS::AtLeastOnce, Some(i as u16 + 1), false, b"")
                    .await;
            }
            for _ in 0..batch {
                assert!(matches!(p.recv().await, Packet::PubAck(_)));
            }
            sent += batch;
        }
    });
    let mut in_flight = HashSet::new();
    let mut max_id = 0u16;
    within(Duration::from_secs(120), async {
        for _ in 0..N {
            let p = sub.recv_publish().await;
            let id = p.pkid.expect("id");
            assert_ne!(id, 0);
            assert!(in_flight.insert(id), "id {id} reused while in flight");
            max_id = max_id.max(id);
            // Acknowledge lazily, keeping several in flight.
            if in_flight.len() >= 8 {
                for id in in_flight.drain() {
                    sub.send_packet(&Packet::PubAck(id)).await;
                }
            }
        }
    })
    .await;
    publisher.await.expect("publisher");
    assert_eq!(max_id, 65_535, "ids reached the top and wrapped");
    assert_eq!(b.metrics.snapshot().dropped_queue_full, 0);
}

/// CONNACK bytes for an MQTT 3.1 ("MQIsdp") client resuming a persistent session.
async fn v31_resume_connack(addr: std::net::SocketAddr) -> Vec<u8> {
    let connect = Packet::Connect(Box::new(tern::codec::Connect {
        protocol: tern::codec::Protocol::V31,
        bridge: false,
        clean_session: false,
        keep_alive: 60,
        client_id: "old-client".into(),
        will: None,
        username: None,
        password: None,
    }));
    let mut first = Raw::open(addr).await;
    first.send_packet(&connect).await;
    assert_eq!(first.recv_bytes(4).await, [0x20, 0x02, 0x00, 0x00]);
    first.disconnect().await;
    let mut again = Raw::open(addr).await;
    again.send_packet(&connect).await;
    again.recv_bytes(4).await
}

#[tokio::test]
async fn an_mqtt_31_connack_never_says_session_present() {
    // MQTT 3.1 has no session-present flag: the acknowledge-flags byte is 0 even when the
    // session was resumed (3.1.1 says 1 there [MQTT-3.2.2-2]). Mosquitto answers the same.
    let b = TestBroker::start().await;
    assert_eq!(v31_resume_connack(b.addr).await, [0x20, 0x02, 0x00, 0x00]);
    let dir = tempfile::tempdir().expect("temp dir");
    let (_mosquitto, addr) = common::start_mosquitto(
        "listener {port} 127.0.0.1\nallow_anonymous true\n",
        dir.path(),
    )
    .await;
    assert_eq!(v31_resume_connack(addr).await, [0x20, 0x02, 0x00, 0x00]);
}
