//! Persistent sessions moving between nodes: with their messages in flight and queued, with
//! session present, and, on a node with persistence, on its disk before its CONNACK.

use std::time::Duration;

use tern::codec::{ConnectReturnCode, Packet};
use tern::message::QoS;

use crate::common::{within, Raw, WAIT};
use crate::harness::{self, client, next, nodes, routed, Nats};

#[tokio::test]
async fn a_persistent_session_moves_with_its_messages_and_session_present() {
    let nats = Nats::start(3).await;
    let n = nodes(&nats, "handover").await;
    let (mut sub, ack) = Raw::connect(n[1].addr, "mobile", false, 60).await;
    assert!(!ack.session_present);
    sub.subscribe(1, &[("s/#", QoS::AtLeastOnce)]).await;
    let mut publisher = client(n[0].addr, "pub").await;
    routed(&mut publisher, &mut sub, "s/probe").await;
    // Five reach the subscriber and are never acknowledged: in flight on node 2.
    send(&mut publisher, 0, 5).await;
    for i in 0..5u8 {
        loop {
            let p = sub.recv_publish().await;
            if p.payload[..] != b"probe"[..] {
                assert_eq!(p.payload[..], [i]);
                break;
            }
        }
    }
    drop(sub);
    // Five more wait in its queue there.
    send(&mut publisher, 5, 10).await;
    within(WAIT, async {
        while n[1].metrics.snapshot().clients_connected > 1 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    // [MQTT-3.2.2-2] resumed on node 3: session present, every message, in order, once.
    let (mut moved, ack) = Raw::connect(n[2].addr, "mobile", false, 60).await;
    assert_eq!(ack.code, ConnectReturnCode::Accepted);
    assert!(ack.session_present, "the session came along");
    for i in 0..10u8 {
        let p = moved.recv_publish().await;
        // [MQTT-4.4.0-1] what was in flight is resent with DUP, under its packet id.
        assert_eq!(
            (p.payload[..].to_vec(), p.dup),
            (vec![i], i < 5),
            "message {i}"
        );
        moved
            .send_packet(&Packet::PubAck(p.pkid.expect("QoS 1")))
            .await;
    }
    moved.expect_silence(Duration::from_millis(300)).await;
    // Its subscription lives on node 3 now: new messages come there.
    let mut watcher = client(n[2].addr, "watch").await;
    watcher.subscribe(1, &[("s/#", QoS::AtMostOnce)]).await;
    routed(&mut publisher, &mut watcher, "s/probe").await;
    publisher
        .publish("s/x", QoS::AtLeastOnce, Some(20), false, b"new")
        .await;
    assert_eq!(publisher.recv().await, Packet::PubAck(20));
    assert_eq!(next(&mut moved).await.1, b"new");
}

/// Publishes payloads `from..to` to `s/x` at QoS 1, each acknowledged.
async fn send(publisher: &mut Raw, from: u8, to: u8) {
    for i in from..to {
        let id = 1 + i as u16;
        publisher
            .publish("s/x", QoS::AtLeastOnce, Some(id), false, &[i])
            .await;
        assert_eq!(publisher.recv().await, Packet::PubAck(id));
    }
}

/// The `tern` binary as node `keeper` on 127.0.0.6, with its store in `dir`.
async fn keeper(nats: &Nats, prefix: &str, dir: &std::path::Path) -> crate::common::BinaryBroker {
    let store = format!(
        "[persistence]\npersistence = true\npersistence_location = \"{}\"\nsync = \"always\"\n",
        dir.display()
    );
    harness::binary_node_with(nats, "keeper", prefix, "127.0.0.6", &store).await
}

#[tokio::test]
async fn a_session_moved_to_a_node_with_persistence_survives_its_kill_9() {
    let nats = Nats::start(3).await;
    let n = nodes(&nats, "keep").await;
    let dir = tempfile::tempdir().expect("temp dir");
    let mut keeper = keeper(&nats, "keep", dir.path()).await;
    harness::warm(&[keeper.addr]).await;
    // A persistent session on node 1, away, with six messages from node 2 waiting for it.
    let (mut sub, _) = Raw::connect(n[0].addr, "traveller", false, 60).await;
    sub.subscribe(1, &[("t/#", QoS::AtLeastOnce)]).await;
    let mut publisher = client(n[1].addr, "pub").await;
    routed(&mut publisher, &mut sub, "t/probe").await;
    sub.disconnect().await;
    let before = n[0].metrics.snapshot().cluster_received;
    for i in 0..6u8 {
        let id = 1 + u16::from(i);
        publisher
            .publish("t/x", QoS::AtLeastOnce, Some(id), false, &[i])
            .await;
        assert_eq!(publisher.recv().await, Packet::PubAck(id));
    }
    within(WAIT, async {
        while n[0].metrics.snapshot().cluster_received < before + 6 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    // It moves to the node with a store; they are sent and left unacknowledged there.
    let (mut moved, ack) = Raw::connect(keeper.addr, "traveller", false, 60).await;
    assert_eq!(ack.code, ConnectReturnCode::Accepted);
    assert!(ack.session_present, "the session came along");
    for i in 0..2u8 {
        assert_eq!(moved.recv_publish().await.payload[..], [i]);
    }
    drop(moved);
    // Killed at once: what came along was on its disk before the CONNACK.
    keeper.child.start_kill().expect("kill -9");
    let _ = keeper.child.wait().await;
    // Back under its name before the others bury it: it still owns the client id.
    let keeper = self::keeper(&nats, "keep", dir.path()).await;
    let (mut back, ack) = harness::connect_until_accepted(keeper.addr, "traveller", false).await;
    assert!(ack.session_present, "the session survived the kill");
    // [MQTT-4.4.0-1] all six, in order, once. (Whether one comes with DUP depends on whether
    // the mark that it was sent reached the disk before the kill: it is written lazily.)
    for i in 0..6u8 {
        let p = back.recv_publish().await;
        assert_eq!(p.payload[..], [i], "message {i}");
        back.send_packet(&Packet::PubAck(p.pkid.expect("QoS 1")))
            .await;
    }
    back.expect_silence(Duration::from_millis(300)).await;
}

#[tokio::test]
async fn a_node_back_after_it_was_buried_leaves_its_restored_sessions_to_the_survivor() {
    let nats = Nats::start(3).await;
    let n = nodes(&nats, "settle").await;
    let dir = tempfile::tempdir().expect("temp dir");
    let mut keeper = keeper(&nats, "settle", dir.path()).await;
    harness::warm(&[keeper.addr]).await;
    let (mut roamer, ack) = Raw::connect(keeper.addr, "roamer", false, 60).await;
    assert_eq!(ack.code, ConnectReturnCode::Accepted);
    roamer.subscribe(1, &[("r/#", QoS::AtLeastOnce)]).await;
    roamer.disconnect().await;
    keeper.child.start_kill().expect("kill -9");
    let _ = keeper.child.wait().await;
    // A survivor buries it and restores the session, claiming its id.
    harness::wait_owned_elsewhere(&nats, "settle", "roamer", "keeper").await;
    // Back with the session in its store: it leaves the id to the survivor.
    let keeper = self::keeper(&nats, "settle", dir.path()).await;
    keeper
        .wait_for_log("a stored session's client id is another node's now", 1)
        .await;
    // One session for the id in the cluster: the survivor's, with the subscription, which a
    // CONNECT anywhere takes over.
    let (mut roamer, ack) = harness::connect_until_accepted(n[1].addr, "roamer", false).await;
    assert!(ack.session_present, "the restored session");
    let mut publisher = client(n[0].addr, "pub").await;
    routed(&mut publisher, &mut roamer, "r/probe").await;
    publisher
        .publish("r/x", QoS::AtLeastOnce, Some(1), false, b"once")
        .await;
    assert_eq!(publisher.recv().await, Packet::PubAck(1));
    assert_eq!(next(&mut roamer).await.1, b"once");
    roamer.expect_silence(Duration::from_millis(300)).await;
}
