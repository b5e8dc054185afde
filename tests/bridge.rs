//! `[[bridge]]` against a real Mosquitto as the remote, and Tern to Tern: out and in with
//! prefixes, the remote killed and restarted mid-stream (no QoS 1 loss, the queue drains in
//! order), the notification topic flipping 1/0, and two brokers bridged both ways passing a
//! message once.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::bridging::{bridge, pki, state_is, state_of};
use common::{within, Raw, TestBroker, WAIT};
use tern::codec::Packet;
use tern::message::QoS;

/// A subscriber on `addr` to `filter` at QoS 1 that acknowledges what it gets.
async fn subscriber(addr: SocketAddr, id: &str, filter: &str) -> Raw {
    let (mut s, _) = Raw::connect(addr, id, true, 0).await;
    s.subscribe(1, &[(filter, QoS::AtLeastOnce)]).await;
    s
}

/// The next PUBLISH's topic and payload, acknowledged.
async fn next(s: &mut Raw) -> (String, Vec<u8>) {
    let p = s.recv_publish().await;
    if let Some(id) = p.pkid {
        s.send_packet(&Packet::PubAck(id)).await;
    }
    (
        String::from_utf8_lossy(&p.topic).into_owned(),
        p.payload.to_vec(),
    )
}

async fn publish_acked(p: &mut Raw, topic: &str, i: u16, payload: &[u8]) {
    p.publish(topic, QoS::AtLeastOnce, Some(i), false, payload)
        .await;
    assert_eq!(p.recv().await, Packet::PubAck(i));
}

const MOSQUITTO: &str = "listener {port} 127.0.0.1\nallow_anonymous true\n";

#[tokio::test]
async fn out_and_in_with_prefixes_through_mosquitto() {
    let dir = tempfile::tempdir().expect("temp dir");
    let (_mosquitto, remote) = common::start_mosquitto(MOSQUITTO, dir.path()).await;
    let rules = [
        "# out 1 edge/ central/site1/",
        "# in 1 edge/cmd/ central/cmd/site1/",
    ];
    let mut up = bridge(remote, &rules);
    // Addresses are tried in turn: the first has nobody listening.
    up.address.insert(0, format!("127.0.0.1:{}", free_port()));
    let b = TestBroker::start_with(|c| c.bridge = vec![up]).await;
    state_is(b.addr, b"1").await;
    // Out: edge/... here is central/site1/... there.
    let mut far = subscriber(remote, "far", "central/site1/#").await;
    let (mut p, _) = Raw::connect(b.addr, "pub", true, 0).await;
    publish_acked(&mut p, "edge/temp", 1, b"21.5").await;
    assert_eq!(
        next(&mut far).await,
        ("central/site1/temp".into(), b"21.5".to_vec())
    );
    // In: central/cmd/site1/... there is edge/cmd/... here.
    let mut near = subscriber(b.addr, "near", "edge/cmd/#").await;
    let (mut q, _) = Raw::connect(remote, "far-pub", true, 0).await;
    publish_acked(&mut q, "central/cmd/site1/reboot", 1, b"now").await;
    assert_eq!(
        next(&mut near).await,
        ("edge/cmd/reboot".into(), b"now".to_vec())
    );
    // What came in is not carried back out (edge/cmd/reboot matches the out rule too).
    far.expect_silence(Duration::from_millis(300)).await;
    // Outside every rule: not carried.
    publish_acked(&mut p, "elsewhere/x", 2, b"stay").await;
    far.expect_silence(Duration::from_millis(300)).await;
}

/// Starts Mosquitto on `port` (after a restart, the same address the bridge knows), its
/// sessions kept in `dir` across a graceful stop.
async fn mosquitto_on(port: u16, dir: &std::path::Path) -> tokio::process::Child {
    let conf = dir.join("fixed.conf");
    // `user root`: started as root, Mosquitto would otherwise become user mosquitto and could
    // not write its sessions here (ignored when not started as root).
    let text = format!(
        "listener {port} 127.0.0.1\nallow_anonymous true\nuser root\npersistence true\npersistence_location {}/\n",
        dir.display()
    );
    std::fs::write(&conf, text).expect("write conf");
    let child = tokio::process::Command::new("mosquitto")
        .arg("-c")
        .arg(&conf)
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("mosquitto is installed");
    within(WAIT, async {
        while tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_err()
        {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    child
}

/// Stops Mosquitto with SIGTERM, so it writes its sessions to disk.
async fn stop_mosquitto(mut child: tokio::process::Child) {
    let pid = child.id().expect("running").to_string();
    let killed = std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status();
    assert!(killed.expect("kill").success());
    within(WAIT, child.wait()).await.expect("mosquitto exits");
}

/// A free port on 127.0.0.1.
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port()
}

/// A persistent subscriber on `addr` to `filter` at QoS 1.
async fn persistent_subscriber(addr: SocketAddr, id: &str, filter: &str) -> Raw {
    let (mut s, _) = Raw::connect(addr, id, false, 0).await;
    s.subscribe(1, &[(filter, QoS::AtLeastOnce)]).await;
    s
}

#[tokio::test]
async fn the_remote_restarted_mid_stream_loses_no_qos1_message_and_the_queue_drains_in_order() {
    let dir = tempfile::tempdir().expect("temp dir");
    let port = free_port();
    let remote = SocketAddr::from(([127, 0, 0, 1], port));
    let mosquitto = mosquitto_on(port, dir.path()).await;
    let b = TestBroker::start_with(|c| c.bridge = vec![bridge(remote, &["s/# out 1"])]).await;
    state_is(b.addr, b"1").await;
    let mut far = persistent_subscriber(remote, "far", "s/#").await;
    let (mut p, _) = Raw::connect(b.addr, "pub", true, 0).await;
    for i in 0..50u16 {
        publish_acked(&mut p, "s/n", i + 1, &i.to_be_bytes()).await;
    }
    for i in 0..50u16 {
        assert_eq!(next(&mut far).await.1, i.to_be_bytes());
    }
    // The remote goes; the state flips to 0; what is published meanwhile is acknowledged
    // here and waits in the bridge's queue.
    stop_mosquitto(mosquitto).await;
    state_is(b.addr, b"0").await;
    for i in 50..100u16 {
        publish_acked(&mut p, "s/n", i + 1, &i.to_be_bytes()).await;
    }
    let _mosquitto = mosquitto_on(port, dir.path()).await;
    state_is(b.addr, b"1").await;
    // The subscriber's session was kept over there: it gets the rest, in order, once each.
    let (mut far, ack) = Raw::connect(remote, "far", false, 0).await;
    assert!(ack.session_present);
    for i in 50..100u16 {
        assert_eq!(
            next(&mut far).await.1,
            i.to_be_bytes(),
            "in order, none lost"
        );
    }
    far.expect_silence(Duration::from_millis(300)).await;
}

#[tokio::test]
async fn two_terns_bridged_both_ways_pass_a_message_once() {
    let central = TestBroker::start().await;
    let edge =
        TestBroker::start_with(|c| c.bridge = vec![bridge(central.addr, &["# both 1"])]).await;
    state_is(edge.addr, b"1").await;
    let mut at_edge = subscriber(edge.addr, "at-edge", "t/#").await;
    let mut at_central = subscriber(central.addr, "at-central", "t/#").await;
    for (from, name) in [(edge.addr, "edge"), (central.addr, "central")] {
        let (mut p, _) = Raw::connect(from, &format!("pub-{name}"), true, 0).await;
        publish_acked(&mut p, "t/x", 1, name.as_bytes()).await;
        assert_eq!(next(&mut at_edge).await.1, name.as_bytes());
        assert_eq!(next(&mut at_central).await.1, name.as_bytes());
        // Once each: no copy comes back around the bridge.
        at_edge.expect_silence(Duration::from_millis(300)).await;
        at_central.expect_silence(Duration::from_millis(300)).await;
    }
}

#[tokio::test]
async fn a_bridge_over_tls_with_a_client_certificate() {
    let dir = tempfile::tempdir().expect("temp dir");
    pki(dir.path(), "127.0.0.1");
    let file = |name: &str| Some(dir.path().join(name));
    // The remote speaks only TLS and wants a certificate, whose name is the user name.
    let central = TestBroker::start_with(|c| {
        let l = &mut c.listener[0];
        l.certfile = file("server.pem");
        l.keyfile = file("server.key");
        l.cafile = file("ca.pem");
        l.require_certificate = true;
        l.use_identity_as_username = true;
    })
    .await;
    let mut b = bridge(central.addr, &["t/# out 1"]);
    b.cafile = file("ca.pem");
    b.certfile = file("client.pem");
    b.keyfile = file("client.key");
    let edge = TestBroker::start_with(|c| c.bridge = vec![b]).await;
    state_is(edge.addr, b"1").await;
    // The far side is TLS-only: watch it through the edge's own in rule instead, so the
    // test needs no TLS client: a second bridge carries it back in under another prefix.
    let mut back = bridge(central.addr, &["t/# in 1 back/ \"\""]);
    back.name = "back".into();
    back.cafile = file("ca.pem");
    back.certfile = file("client.pem");
    back.keyfile = file("client.key");
    let watcher = TestBroker::start_with(|c| c.bridge = vec![back]).await;
    state_of(watcher.addr, "back", b"1").await;
    let mut s = subscriber(watcher.addr, "watch", "back/#").await;
    let (mut p, _) = Raw::connect(edge.addr, "pub", true, 0).await;
    publish_acked(&mut p, "t/secure", 1, b"over tls").await;
    assert_eq!(
        next(&mut s).await,
        ("back/t/secure".into(), b"over tls".to_vec())
    );
}

#[tokio::test]
async fn what_waits_for_an_unreachable_remote_is_bounded_and_counted() {
    let dir = tempfile::tempdir().expect("temp dir");
    let port = free_port();
    let remote = SocketAddr::from(([127, 0, 0, 1], port));
    let mut b = bridge(remote, &["q/# out 1"]);
    b.max_queued_messages = 10;
    let mosquitto = mosquitto_on(port, dir.path()).await;
    let edge = TestBroker::start_with(|c| c.bridge = vec![b]).await;
    state_is(edge.addr, b"1").await;
    drop(persistent_subscriber(remote, "far", "q/#").await);
    stop_mosquitto(mosquitto).await;
    state_is(edge.addr, b"0").await;
    let (mut p, _) = Raw::connect(edge.addr, "pub", true, 0).await;
    for i in 0..30u16 {
        publish_acked(&mut p, "q/n", i + 1, &i.to_be_bytes()).await;
    }
    let dropped = edge.metrics.snapshot().dropped_queue_full;
    assert_eq!(dropped, 20, "beyond max_queued_messages, counted");
    let _mosquitto = mosquitto_on(port, dir.path()).await;
    state_is(edge.addr, b"1").await;
    let (mut far, _) = Raw::connect(remote, "far", false, 0).await;
    for i in 0..10u16 {
        assert_eq!(
            next(&mut far).await.1,
            i.to_be_bytes(),
            "the first ten, in order"
        );
    }
    far.expect_silence(Duration::from_millis(300)).await;
}

#[tokio::test]
async fn notifications_on_the_remote_too_when_asked() {
    let central = TestBroker::start().await;
    let mut b = bridge(central.addr, &["x/# out 0"]);
    b.notifications_local_only = false;
    let edge = TestBroker::start_with(|c| c.bridge = vec![b]).await;
    state_is(edge.addr, b"1").await;
    // Retained on the remote: a subscriber that comes later still sees it.
    state_is(central.addr, b"1").await;
    // The edge goes without a goodbye: the remote publishes the bridge's will, 0.
    edge.stop().await;
    state_is(central.addr, b"0").await;
}

#[tokio::test]
async fn a_message_this_broker_would_refuse_is_dropped_not_looped() {
    let central = TestBroker::start().await;
    let edge = TestBroker::start_with(|c| {
        c.mqtt.max_packet_size = 200;
        c.bridge = vec![bridge(central.addr, &["# in 1 edge/ \"\""])];
    })
    .await;
    state_is(edge.addr, b"1").await;
    let mut near = subscriber(edge.addr, "near", "edge/#").await;
    let (mut p, _) = Raw::connect(central.addr, "far-pub", true, 0).await;
    // Over the edge's max_packet_size once the prefix is added: acknowledged there, dropped
    // here, counted; the bridge stays up and carries the next one.
    publish_acked(&mut p, "big", 1, &[7u8; 190]).await;
    publish_acked(&mut p, "small", 2, b"fits").await;
    assert_eq!(
        next(&mut near).await,
        ("edge/small".into(), b"fits".to_vec())
    );
    assert_eq!(edge.metrics.snapshot().dropped_oversize, 1);
}
