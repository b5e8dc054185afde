//! Sessions, subscriptions and retained messages across restarts, and a store that cannot be
//! used.

use std::time::Duration;

use crate::common::{self, BinaryBroker, Raw};
use crate::helpers::*;
use tern::codec::Packet;
use tern::message::QoS;

#[tokio::test]
async fn acknowledged_retained_messages_survive_kill_9_and_sigterm() {
    for sync in ["always", "interval", "never"] {
        let dir = tempfile::tempdir().expect("temp dir");
        let conf = config(dir.path(), sync);
        let mut broker = BinaryBroker::start(&conf).await;
        publish_retained(broker.addr, "r/t", 50).await;
        // SIGKILL right after the last PUBACK: what was acknowledged is on disk.
        kill_9(&mut broker).await;
        let mut broker = BinaryBroker::start(&conf).await;
        let want = vec![("r/t".to_owned(), "50".to_owned())];
        assert_eq!(retained(broker.addr).await, want, "sync = {sync}");
        // A graceful stop, then a second restart on the same directory.
        publish_retained(broker.addr, "r/t", 7).await;
        stop(&mut broker).await;
        let broker = BinaryBroker::start(&conf).await;
        let want = vec![("r/t".to_owned(), "7".to_owned())];
        assert_eq!(retained(broker.addr).await, want, "sync = {sync}");
    }
}

#[tokio::test]
async fn a_store_that_cannot_be_used_stops_the_start_with_one_line() {
    let dir = tempfile::tempdir().expect("temp dir");
    let conf = config(dir.path(), "always");
    // Locked by a running broker.
    let _running = BinaryBroker::start(&conf).await;
    let (code, err) = start_fails(&conf);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("locked by another process"), "{err}");
    assert!(err.contains(&dir.path().display().to_string()), "{err}");
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    // A location that cannot be a directory.
    let file = dir.path().join("a-file");
    std::fs::write(&file, "x").expect("write");
    let (code, err) = start_fails(&config(&file.join("store"), "always"));
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("a-file"), "{err}");
    assert_eq!(err.trim().lines().count(), 1, "{err}");
}

#[tokio::test]
async fn persistent_sessions_and_subscriptions_survive_and_clean_ones_leave_nothing() {
    let dir = tempfile::tempdir().expect("temp dir");
    let conf = config(dir.path(), "always");
    let mut broker = BinaryBroker::start(&conf).await;
    let (mut sub, ack) = common::connect_as(broker.addr, "keeper", false, None, None).await;
    assert!(!ack.session_present);
    // Each SUBACK came once its record was durable: kill -9 right after keeps them.
    sub.subscribe(1, &[("a/#", QoS::AtLeastOnce), ("b", QoS::AtLeastOnce)])
        .await;
    sub.send_packet(&Packet::Unsubscribe(tern::codec::Unsubscribe {
        pkid: 2,
        filters: vec!["b".into()],
    }))
    .await;
    assert_eq!(sub.recv().await, Packet::UnsubAck(2));
    let (_clean, _) = common::connect_as(broker.addr, "passer", true, None, None).await;
    kill_9(&mut broker).await;

    let mut broker = BinaryBroker::start(&conf).await;
    // Published before the subscriber is back: the restored subscription is in the router.
    let (mut publ, _) = Raw::connect(broker.addr, "pub", true, 60).await;
    for (i, topic) in [(1u16, "a/1"), (2, "b")] {
        publ.publish(topic, QoS::AtLeastOnce, Some(i), false, topic.as_bytes())
            .await;
        assert_eq!(publ.recv().await, Packet::PubAck(i));
    }
    // [MQTT-3.2.2-2] the stored session is resumed.
    let (mut sub, ack) = common::connect_as(broker.addr, "keeper", false, None, None).await;
    assert!(ack.session_present);
    let p = sub.recv_publish().await;
    assert_eq!(&p.topic[..], b"a/1");
    sub.send_packet(&Packet::PubAck(p.pkid.expect("id"))).await;
    sub.expect_silence(Duration::from_millis(300)).await;
    // A clean session leaves nothing: its client id starts afresh.
    let (_, ack) = common::connect_as(broker.addr, "passer", false, None, None).await;
    assert!(!ack.session_present);
    stop(&mut broker).await;
    // Two restarts in a row change nothing.
    let broker = BinaryBroker::start(&conf).await;
    let (_, ack) = common::connect_as(broker.addr, "keeper", false, None, None).await;
    assert!(ack.session_present);
}

#[tokio::test]
async fn shared_subscriptions_of_persistent_sessions_survive_kill_9() {
    let dir = tempfile::tempdir().expect("temp dir");
    let conf = config(dir.path(), "always");
    let mut broker = BinaryBroker::start(&conf).await;
    let mut members = Vec::new();
    for id in ["w1", "w2"] {
        let (mut m, _) = common::connect_as(broker.addr, id, false, None, None).await;
        let codes = m
            .subscribe(1, &[("$share/g/jobs/+", QoS::AtLeastOnce)])
            .await;
        assert_eq!(codes, [tern::codec::SubAckCode::Granted(QoS::AtLeastOnce)]);
        members.push(m);
    }
    kill_9(&mut broker).await;
    let broker = BinaryBroker::start(&conf).await;
    // Both offline: each message waits in one member's queue, none is lost or doubled.
    let (mut publ, _) = Raw::connect(broker.addr, "pub", true, 60).await;
    for i in 1..=10u16 {
        publ.publish("jobs/a", QoS::AtLeastOnce, Some(i), false, &i.to_be_bytes())
            .await;
        assert_eq!(publ.recv().await, Packet::PubAck(i));
    }
    let (mut w1, ack1) = common::connect_as(broker.addr, "w1", false, None, None).await;
    let (mut w2, ack2) = common::connect_as(broker.addr, "w2", false, None, None).await;
    assert!(
        ack1.session_present && ack2.session_present,
        "[MQTT-3.2.2-2]"
    );
    let mut got = Vec::new();
    while got.len() < 10 {
        let (p, m) = tokio::select! {
            p = w1.recv() => (p, &mut w1),
            p = w2.recv() => (p, &mut w2),
        };
        let Packet::Publish(p) = p else {
            panic!("unexpected {p:?}");
        };
        got.push(u16::from_be_bytes([p.payload[0], p.payload[1]]));
        m.send_packet(&Packet::PubAck(p.pkid.expect("id"))).await;
    }
    w1.expect_silence(Duration::from_millis(300)).await;
    w2.expect_silence(Duration::from_millis(300)).await;
    got.sort_unstable();
    assert_eq!(got, (1..=10).collect::<Vec<u16>>());
}

#[tokio::test]
async fn what_waits_for_a_bridge_survives_kill_9() {
    let dir = tempfile::tempdir().expect("temp dir");
    // The remote is down from the start; its address is reserved for later.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port();
    // The bridge's own queue limit, not the broker's, holds across the restart.
    let conf = format!(
        "{}[session]\nmax_queued_messages = 5\n[[bridge]]\nname = \"up\"\naddress = \"127.0.0.1:{port}\"\ntopic = [\"b/# out 1\"]\nrestart_timeout = \"200ms\"\nmax_queued_messages = 25\n",
        config(dir.path(), "always")
    );
    let mut edge = BinaryBroker::start(&conf).await;
    // The bridge's session is made at start, so what its rules match waits even though the
    // remote was never reached; each PUBACK came once the message was on disk.
    let (mut p, _) = Raw::connect(edge.addr, "pub", true, 60).await;
    for i in 1..=20u16 {
        p.publish("b/n", QoS::AtLeastOnce, Some(i), false, &i.to_be_bytes())
            .await;
        assert_eq!(p.recv().await, Packet::PubAck(i));
    }
    kill_9(&mut edge).await;
    let remote = common::TestBroker::start_with(|c| {
        c.listener[0].bind = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    })
    .await;
    let (mut far, _) = Raw::connect(remote.addr, "far", true, 60).await;
    far.subscribe(1, &[("b/#", QoS::AtLeastOnce)]).await;
    let _edge = BinaryBroker::start(&conf).await;
    for i in 1..=20u16 {
        let m = far.recv_publish().await;
        assert_eq!(&m.payload[..], i.to_be_bytes(), "in order, none lost");
        far.send_packet(&Packet::PubAck(m.pkid.expect("id"))).await;
    }
    far.expect_silence(Duration::from_millis(300)).await;
}

#[tokio::test]
async fn an_expired_session_is_gone_after_a_restart() {
    let dir = tempfile::tempdir().expect("temp dir");
    let conf = format!(
        "{}[session]\npersistent_client_expiration = \"1s\"\n",
        config(dir.path(), "always")
    );
    let mut broker = BinaryBroker::start(&conf).await;
    let (sub, _) = common::connect_as(broker.addr, "brief", false, None, None).await;
    sub.disconnect().await;
    // Graceful: every record, the detach time included, is written before the exit.
    stop(&mut broker).await;
    // Wall-clock time has to pass here, and nothing signals it: its expiry is measured from when it was detached, across the restart.
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let broker = BinaryBroker::start(&conf).await;
    let (_, ack) = common::connect_as(broker.addr, "brief", false, None, None).await;
    assert!(!ack.session_present, "expired while the broker was down");
}

#[tokio::test]
async fn a_filter_too_long_to_store_is_refused_and_the_store_lives_on() {
    let dir = tempfile::tempdir().expect("temp dir");
    let broker = BinaryBroker::start(&config(dir.path(), "always")).await;
    let (mut sub, _) = common::connect_as(broker.addr, "long", false, None, None).await;
    // The longest a SUBSCRIBE can carry: 65,535 bytes, past what one stored key holds.
    let longest = "f".repeat(65_535);
    let fits = "f".repeat(tern::store::MAX_FILTER_LEN);
    let codes = sub
        .subscribe(
            1,
            &[(&longest, QoS::AtLeastOnce), (&fits, QoS::AtLeastOnce)],
        )
        .await;
    use tern::codec::SubAckCode::{Failure, Granted};
    assert_eq!(codes, [Failure, Granted(QoS::AtLeastOnce)]);
    // Still acknowledging: the store did not fail.
    sub.subscribe(2, &[("ok", QoS::AtLeastOnce)]).await;
    sub.send(&[0xc0, 0]).await;
    assert_eq!(sub.recv().await, Packet::PingResp);
}

#[tokio::test]
async fn a_client_that_closes_its_sending_side_still_gets_every_acknowledgement() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let dir = tempfile::tempdir().expect("temp dir");
    let broker = BinaryBroker::start(&config(dir.path(), "always")).await;
    let (mut sub, _) = common::connect_as(broker.addr, "owed", false, None, None).await;
    sub.subscribe(1, &[("h", QoS::AtLeastOnce)]).await;
    sub.disconnect().await;
    // 200 PUBLISHes, then FIN: each PUBACK waits for the store, and the connection must
    // not close before they have all gone out (Mosquitto answers all of them too).
    let (mut p, _) = Raw::connect(broker.addr, "half", true, 60).await;
    let mut frames = bytes::BytesMut::new();
    for id in 1..=200u16 {
        let (qos, retain, dup) = (QoS::AtLeastOnce, false, false);
        tern::codec::encode_publish(b"h", b"x", qos, Some(id), retain, dup, &mut frames);
    }
    p.stream.write_all(&frames).await.expect("publish");
    p.stream.shutdown().await.expect("half close");
    let mut rest = Vec::new();
    let read = p.stream.read_to_end(&mut rest);
    tokio::time::timeout(Duration::from_secs(10), read)
        .await
        .expect("closed in time")
        .expect("read");
    let want: Vec<u8> = (1..=200u16)
        .flat_map(|id| [0x40, 2, (id >> 8) as u8, id as u8])
        .collect();
    // Counted first, so a failure says how many came rather than print 800 bytes.
    assert_eq!(
        rest.len() / 4,
        200,
        "[MQTT-4.3.2-2] a PUBACK for every PUBLISH"
    );
    assert!(rest == want, "PUBACKs in order");
}
