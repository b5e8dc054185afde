//! `[[bridge]]` against a real Mosquitto as the remote, and Tern to Tern: out and in with
//! prefixes, the remote killed and restarted mid-stream (no QoS 1 loss, the queue drains in
//! order), the notification topic flipping 1/0, and two brokers bridged both ways passing a
//! message once.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::{within, Raw, TestBroker, WAIT};
use tern::codec::Packet;
use tern::config::BridgeConfig;
use tern::message::QoS;

/// A bridge named `up` to `remote` with these topic lines.
fn bridge(remote: SocketAddr, topics: &[&str]) -> BridgeConfig {
    let text = format!(
        "name = \"up\"\naddress = \"{remote}\"\ntopic = {topics:?}\nrestart_timeout = \"1s\"\n"
    );
    toml::from_str(&text).expect("bridge table")
}

/// Waits until the bridge's state topic on `addr` says `want`.
async fn state_is(addr: SocketAddr, want: &[u8]) {
    let (mut s, _) = Raw::connect(addr, "state-watch", true, 0).await;
    s.subscribe(1, &[("$SYS/broker/connection/up/state", QoS::AtMostOnce)])
        .await;
    within(WAIT, async {
        while s.recv_publish().await.payload != want {}
    })
    .await;
}

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
    let b = TestBroker::start_with(|c| c.bridge = vec![bridge(remote, &rules)]).await;
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

/// Starts Mosquitto on `port` (after a restart, the same address the bridge knows).
async fn mosquitto_on(port: u16, dir: &std::path::Path) -> tokio::process::Child {
    let conf = dir.join("fixed.conf");
    std::fs::write(
        &conf,
        format!("listener {port} 127.0.0.1\nallow_anonymous true\n"),
    )
    .expect("write conf");
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

#[tokio::test]
async fn the_remote_restarted_mid_stream_loses_no_qos1_message_and_the_queue_drains_in_order() {
    let dir = tempfile::tempdir().expect("temp dir");
    let (mut mosquitto, remote) = common::start_mosquitto(MOSQUITTO, dir.path()).await;
    let b = TestBroker::start_with(|c| c.bridge = vec![bridge(remote, &["s/# out 1"])]).await;
    state_is(b.addr, b"1").await;
    let mut far = subscriber(remote, "far", "s/#").await;
    let (mut p, _) = Raw::connect(b.addr, "pub", true, 0).await;
    for i in 0..50u16 {
        publish_acked(&mut p, "s/n", i + 1, &i.to_be_bytes()).await;
    }
    for i in 0..50u16 {
        assert_eq!(next(&mut far).await.1, i.to_be_bytes());
    }
    // The remote dies; the state flips to 0; what is published meanwhile is acknowledged
    // here and waits in the bridge's queue.
    mosquitto.kill().await.expect("kill mosquitto");
    state_is(b.addr, b"0").await;
    for i in 50..100u16 {
        publish_acked(&mut p, "s/n", i + 1, &i.to_be_bytes()).await;
    }
    // Back on the same port; the subscriber is there before the bridge's next attempt
    // (restart_timeout 1s).
    let _mosquitto = mosquitto_on(remote.port(), dir.path()).await;
    let mut far = subscriber(remote, "far", "s/#").await;
    state_is(b.addr, b"1").await;
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
