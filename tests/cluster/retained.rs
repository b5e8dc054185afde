//! Retained messages across nodes: set and cleared on one node, seen on every node, read by
//! a node that starts later, and a burst of changes that outruns the bucket still arriving
//! whole.

use std::time::Duration;

use tern::codec::Packet;
use tern::message::QoS;

use crate::common::{self, within, WAIT};
use crate::harness::{self, client, nodes, Nats};

/// Subscribes on `addr` and returns the retained message on `topic` if one comes.
async fn retained_at(addr: std::net::SocketAddr, topic: &str) -> Option<Vec<u8>> {
    let mut s = client(addr, "retained-check").await;
    s.subscribe(1, &[(topic, QoS::AtMostOnce)]).await;
    match tokio::time::timeout(Duration::from_millis(200), s.recv()).await {
        Ok(Packet::Publish(p)) => Some(p.payload.to_vec()),
        _ => None,
    }
}

/// Waits until a new subscriber on `addr` gets `want` as `topic`'s retained message.
async fn retained_becomes(addr: std::net::SocketAddr, topic: &str, want: Option<&[u8]>) {
    within(WAIT, async {
        while retained_at(addr, topic).await.as_deref() != want {}
    })
    .await
}

#[tokio::test]
async fn retained_set_and_cleared_on_one_node_is_seen_on_every_node() {
    let nats = Nats::start(3).await;
    let n = nodes(&nats, "retain").await;
    let mut p = client(n[0].addr, "pub").await;
    p.publish("r/x", QoS::AtLeastOnce, Some(1), true, b"v1")
        .await;
    assert_eq!(p.recv().await, Packet::PubAck(1));
    for node in &n {
        retained_becomes(node.addr, "r/x", Some(b"v1")).await;
    }
    // [MQTT-3.3.1-10] an empty retained message clears it, from another node.
    let mut q = client(n[2].addr, "clear").await;
    q.publish("r/x", QoS::AtLeastOnce, Some(1), true, b"").await;
    assert_eq!(q.recv().await, Packet::PubAck(1));
    for node in &n {
        retained_becomes(node.addr, "r/x", None).await;
    }
    // A node started later reads what the bucket holds.
    p.publish("r/y", QoS::AtLeastOnce, Some(2), true, b"late")
        .await;
    assert_eq!(p.recv().await, Packet::PubAck(2));
    retained_becomes(n[1].addr, "r/y", Some(b"late")).await;
    let cfg = harness::cluster_config(&nats, "node4", "retain");
    let late = common::TestBroker::start_with(|c| {
        c.listener[0].bind = "127.0.0.5:0".parse().expect("address");
        c.cluster = Some(cfg);
    })
    .await;
    assert_eq!(
        retained_at(late.addr, "r/y").await.as_deref(),
        Some(&b"late"[..])
    );
    assert_eq!(retained_at(late.addr, "r/x").await, None);
}

/// How many retained messages under `filters` new subscribers on `addr` get, and the
/// payload of `last` among them. (A subscriber each: a session queues at most 1,000.)
async fn retained_under(
    addr: std::net::SocketAddr,
    filters: &[String],
    last: &str,
) -> (usize, Vec<u8>) {
    let (mut n, mut payload) = (0, Vec::new());
    for filter in filters {
        let mut s = client(addr, "retained-count").await;
        s.subscribe(1, &[(filter.as_str(), QoS::AtMostOnce)]).await;
        while let Ok(Packet::Publish(p)) =
            tokio::time::timeout(Duration::from_millis(300), s.recv()).await
        {
            assert!(p.retain, "only retained messages are published here");
            n += 1;
            if p.topic[..] == *last.as_bytes() {
                payload = p.payload.to_vec();
            }
        }
        s.disconnect().await;
    }
    (n, payload)
}

#[tokio::test]
async fn a_burst_of_retained_changes_faster_than_the_bucket_arrives_whole() {
    // More topics than a queue of changes used to hold, and one topic changed again and
    // again: each topic's last value is what every node ends up with.
    const TOPICS: usize = 5000;
    const CHANGES: usize = 2000;
    let nats = Nats::start(3).await;
    let n = nodes(&nats, "burst").await;
    let mut p = client(n[0].addr, "burster").await;
    for i in 0..TOPICS {
        let topic = format!("burst/{}/{i}", i / 500);
        p.publish(
            &topic,
            QoS::AtMostOnce,
            None,
            true,
            i.to_string().as_bytes(),
        )
        .await;
    }
    for i in 0..=CHANGES {
        p.publish(
            "burst/last",
            QoS::AtMostOnce,
            None,
            true,
            i.to_string().as_bytes(),
        )
        .await;
    }
    p.publish("burst/last", QoS::AtLeastOnce, Some(1), true, b"final")
        .await;
    assert_eq!(p.recv().await, Packet::PubAck(1));
    let want = (TOPICS + 1, b"final".to_vec());
    let mut filters: Vec<String> = (0..TOPICS / 500).map(|g| format!("burst/{g}/#")).collect();
    filters.push("burst/last".into());
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let got = retained_under(n[1].addr, &filters, "burst/last").await;
        if got == want {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "node 2 holds {} retained messages, last {:?}",
            got.0,
            String::from_utf8_lossy(&got.1)
        );
    }
}

#[tokio::test]
async fn a_retained_message_is_in_the_cluster_when_its_acknowledgement_comes() {
    let nats = Nats::start(3).await;
    let n = nodes(&nats, "held").await;
    let mut p = client(n[0].addr, "pub").await;
    let bucket = harness::retained_bucket(&nats, "held").await;
    let read = |topic: String| {
        let bucket = bucket.clone();
        async move {
            let key = harness::retained_key(&topic);
            bucket.get(key).await.expect("the bucket answers")
        }
    };
    for round in 1..=10u16 {
        let topic = format!("held/{round}");
        let payload = format!("value {round}");
        // [MQTT-3.3.1-5] stored as the topic's retained message, by the time of the PUBACK in
        // the whole cluster: a node that dies right after it cannot lose it.
        p.publish(
            &topic,
            QoS::AtLeastOnce,
            Some(round),
            true,
            payload.as_bytes(),
        )
        .await;
        assert_eq!(p.recv().await, Packet::PubAck(round));
        let held = read(topic.clone()).await;
        assert!(
            held.is_some_and(|v| v.ends_with(payload.as_bytes())),
            "round {round}: not in the bucket at PUBACK"
        );
        // And at PUBREC, for QoS 2.
        let payload = format!("exactly {round}");
        p.publish(
            &topic,
            QoS::ExactlyOnce,
            Some(100 + round),
            true,
            payload.as_bytes(),
        )
        .await;
        assert_eq!(p.recv().await, Packet::PubRec(100 + round));
        let held = read(topic.clone()).await;
        assert!(
            held.is_some_and(|v| v.ends_with(payload.as_bytes())),
            "round {round}: not in the bucket at PUBREC"
        );
        p.send_packet(&Packet::PubRel(100 + round)).await;
        assert_eq!(p.recv().await, Packet::PubComp(100 + round));
    }
}
