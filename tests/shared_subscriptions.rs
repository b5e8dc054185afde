//! Shared subscriptions (`$share/{group}/{filter}`, `$queue/{filter}`): each message goes to
//! one member of each group, spread by the configured strategy; a member that leaves hands
//! its unacknowledged messages on; retained messages are not sent; the ACL applies to the
//! inner filter; invalid forms get SUBACK 0x80.

mod common;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::Duration;

use common::{within, Raw, TestBroker, WAIT};
use tern::codec::{Packet, SubAckCode};
use tern::config::ShareStrategy;
use tern::message::QoS;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

/// A member: connects as `id`, subscribes to `filter`, and sends `(id, payload)` for every
/// PUBLISH it gets, completing each QoS 1/2 flow (or none, with `ack` false).
async fn member(
    addr: SocketAddr,
    id: &str,
    clean: bool,
    filter: &str,
    qos: QoS,
    ack: bool,
    got: mpsc::UnboundedSender<(String, u32)>,
) -> JoinHandle<()> {
    let (mut raw, _) = Raw::connect(addr, id, clean, 0).await;
    assert_eq!(
        raw.subscribe(1, &[(filter, qos)]).await,
        [SubAckCode::Granted(qos)]
    );
    let id = id.to_owned();
    tokio::spawn(async move {
        loop {
            match raw.recv().await {
                Packet::Publish(p) => {
                    assert!(!p.retain, "no retained message on a shared subscription");
                    let n = u32::from_be_bytes(p.payload[..4].try_into().expect("4 bytes"));
                    if got.send((id.clone(), n)).is_err() {
                        return;
                    }
                    match (ack, p.qos, p.pkid) {
                        (true, QoS::AtLeastOnce, Some(pkid)) => {
                            raw.send_packet(&Packet::PubAck(pkid)).await
                        }
                        (true, QoS::ExactlyOnce, Some(pkid)) => {
                            raw.send_packet(&Packet::PubRec(pkid)).await
                        }
                        _ => {}
                    }
                }
                Packet::PubRel(pkid) => raw.send_packet(&Packet::PubComp(pkid)).await,
                other => panic!("{id}: unexpected {other:?}"),
            }
        }
    })
}

/// Publishes `n` numbered messages to `topic(i)` at `qos` as `id`, with every handshake
/// completed, 50 at a time.
async fn publish_n(addr: SocketAddr, id: &str, n: u32, qos: QoS, topic: impl Fn(u32) -> String) {
    let (mut p, _) = Raw::connect(addr, id, true, 0).await;
    let mut next = 0;
    while next < n {
        let batch: Vec<u32> = (next..(next + 50).min(n)).collect();
        for &i in &batch {
            let pkid = (qos != QoS::AtMostOnce).then_some(i as u16 + 1);
            p.publish(&topic(i), qos, pkid, false, &i.to_be_bytes())
                .await;
        }
        if qos != QoS::AtMostOnce {
            for _ in &batch {
                match p.recv().await {
                    Packet::PubAck(_) => {}
                    Packet::PubRec(id) => p.send_packet(&Packet::PubRel(id)).await,
                    other => panic!("unexpected {other:?}"),
                }
            }
        }
        if qos == QoS::ExactlyOnce {
            for _ in &batch {
                assert!(matches!(p.recv().await, Packet::PubComp(_)));
            }
        }
        next += batch.len() as u32;
    }
}

/// Receives until `n` messages came, then checks a short while that no more do; returns
/// how many each member got, asserting each message came exactly once.
async fn collect(got: &mut mpsc::UnboundedReceiver<(String, u32)>, n: u32) -> HashMap<String, u32> {
    let mut seen = vec![0u32; n as usize];
    let mut per: HashMap<String, u32> = HashMap::new();
    within(WAIT, async {
        for _ in 0..n {
            let (id, i) = got.recv().await.expect("members running");
            seen[i as usize] += 1;
            *per.entry(id).or_default() += 1;
        }
    })
    .await;
    if let Ok(Some((id, i))) = tokio::time::timeout(Duration::from_millis(300), got.recv()).await {
        panic!("{id} got message {i} more than once in all");
    }
    let wrong: Vec<usize> = (0..n as usize).filter(|&i| seen[i] != 1).collect();
    assert!(wrong.is_empty(), "not exactly once: {wrong:?}");
    per
}

/// Members sharing one channel; their tasks end with it.
struct Group {
    rx: mpsc::UnboundedReceiver<(String, u32)>,
    tasks: Vec<JoinHandle<()>>,
}

impl Drop for Group {
    fn drop(&mut self) {
        self.tasks.iter().for_each(JoinHandle::abort);
    }
}

/// Clean-session members `ids` of `filter` at `qos` that acknowledge what they get.
async fn group(addr: SocketAddr, ids: &[&str], filter: &str, qos: QoS) -> Group {
    let (tx, rx) = mpsc::unbounded_channel();
    let mut tasks = Vec::new();
    for id in ids {
        tasks.push(member(addr, id, true, filter, qos, true, tx.clone()).await);
    }
    Group { rx, tasks }
}

async fn broker(strategy: ShareStrategy) -> TestBroker {
    TestBroker::start_with(|c| c.mqtt.shared_subscription_strategy = strategy).await
}

#[tokio::test]
async fn a_group_of_three_gets_each_qos1_message_once_in_turn() {
    let b = broker(ShareStrategy::RoundRobin).await;
    let mut g = group(
        b.addr,
        &["m1", "m2", "m3"],
        "$share/g/jobs/#",
        QoS::AtLeastOnce,
    )
    .await;
    publish_n(b.addr, "pub", 1000, QoS::AtLeastOnce, |i| {
        format!("jobs/{}", i % 7)
    })
    .await;
    let per = collect(&mut g.rx, 1000).await;
    // In turn: each of the three took a third, give or take those passed over while a
    // member's backlog was past its mark.
    assert_eq!(per.len(), 3, "{per:?}");
    assert!(per.values().all(|&c| c >= 250), "{per:?}");
}

#[tokio::test]
async fn each_strategy_spreads_as_named() {
    let ids = ["a", "b", "c"];
    for (strategy, one_member) in [
        (ShareStrategy::HashClientid, true),
        (ShareStrategy::HashTopic, true),
        (ShareStrategy::Sticky, true),
        (ShareStrategy::Random, false),
    ] {
        let b = broker(strategy).await;
        let mut g = group(b.addr, &ids, "$share/g/s/+", QoS::AtLeastOnce).await;
        // One publisher, one topic: hashing either, or sticking, picks one member.
        publish_n(b.addr, "p", 300, QoS::AtLeastOnce, |_| "s/x".into()).await;
        let per = collect(&mut g.rx, 300).await;
        if one_member {
            assert_eq!(per.len(), 1, "{strategy:?}: {per:?}");
        } else {
            assert!(per.len() >= 2, "{strategy:?}: {per:?}");
        }
    }
    // By publisher: each publisher's messages go to one member, and six publishers do not all
    // land on the same one.
    let b = broker(ShareStrategy::HashClientid).await;
    let mut g = group(b.addr, &ids, "$share/g/s/+", QoS::AtLeastOnce).await;
    let mut owner = HashMap::new();
    for p in 0..6u32 {
        let (mut raw, _) = Raw::connect(b.addr, &format!("publisher-{p}"), true, 0).await;
        for i in 0..20u32 {
            let n = p * 20 + i;
            let pkid = i as u16 + 1;
            raw.publish("s/x", QoS::AtLeastOnce, Some(pkid), false, &n.to_be_bytes())
                .await;
            assert_eq!(raw.recv().await, Packet::PubAck(pkid));
        }
    }
    for _ in 0..120 {
        let (id, n) = within(WAIT, g.rx.recv()).await.expect("members running");
        let first = owner.entry(n / 20).or_insert_with(|| id.clone());
        assert_eq!(*first, id, "publisher {}'s messages split", n / 20);
    }
    let members: std::collections::HashSet<_> = owner.values().collect();
    assert!(members.len() >= 2, "{owner:?}");
    drop(g);
    // By topic: the members' shares follow the topics, whoever publishes.
    let b = broker(ShareStrategy::HashTopic).await;
    let mut g = group(b.addr, &ids, "$share/g/s/+", QoS::AtLeastOnce).await;
    publish_n(b.addr, "p1", 100, QoS::AtLeastOnce, |i| {
        format!("s/{}", i % 2)
    })
    .await;
    let first = collect(&mut g.rx, 100).await;
    publish_n(b.addr, "p2", 100, QoS::AtLeastOnce, |i| {
        format!("s/{}", i % 2)
    })
    .await;
    assert_eq!(collect(&mut g.rx, 100).await, first);
}

#[tokio::test]
async fn two_groups_and_a_plain_subscriber_each_get_every_message_once() {
    let b = broker(ShareStrategy::RoundRobin).await;
    let q = QoS::AtLeastOnce;
    let mut groups = vec![
        group(b.addr, &["g1a", "g1b"], "$share/g1/t/#", q).await,
        group(b.addr, &["g2a", "g2b"], "$share/g2/t/#", q).await,
        group(b.addr, &["plain"], "t/#", q).await,
    ];
    publish_n(b.addr, "pub", 200, q, |_| "t/1".into()).await;
    for g in &mut groups {
        collect(&mut g.rx, 200).await;
    }
}

#[tokio::test]
async fn qos2_reaches_the_group_exactly_once() {
    let b = broker(ShareStrategy::RoundRobin).await;
    let mut g = group(b.addr, &["q1", "q2"], "$share/g/x", QoS::ExactlyOnce).await;
    publish_n(b.addr, "pub", 500, QoS::ExactlyOnce, |_| "x".into()).await;
    let per = collect(&mut g.rx, 500).await;
    assert_eq!(per.len(), 2, "{per:?}");
}

#[tokio::test]
async fn queue_prefix_is_one_group_for_all() {
    let b = broker(ShareStrategy::RoundRobin).await;
    let mut g = group(b.addr, &["w1", "w2"], "$queue/work/+", QoS::AtLeastOnce).await;
    publish_n(b.addr, "pub", 100, QoS::AtLeastOnce, |i| {
        format!("work/{i}")
    })
    .await;
    assert_eq!(collect(&mut g.rx, 100).await.len(), 2);
}

/// A member that takes messages and never acknowledges them leaves: everything it held goes
/// to the member that stays, whether the one that left ends (clean) or stays offline.
#[tokio::test]
async fn a_member_that_leaves_hands_its_unacknowledged_messages_on() {
    for clean in [true, false] {
        let b = TestBroker::start_with(|c| c.session.max_inflight_messages = 10).await;
        let (tx, mut rx) = mpsc::unbounded_channel();
        let (silent_tx, mut silent_rx) = mpsc::unbounded_channel();
        let silent = member(
            b.addr,
            "silent",
            clean,
            "$share/g/k",
            QoS::AtLeastOnce,
            false,
            silent_tx,
        )
        .await;
        let stays = member(
            b.addr,
            "stays",
            true,
            "$share/g/k",
            QoS::AtLeastOnce,
            true,
            tx,
        )
        .await;
        publish_n(b.addr, "pub", 300, QoS::AtLeastOnce, |_| "k".into()).await;
        // It took some (its window's worth), acknowledged none.
        within(WAIT, silent_rx.recv())
            .await
            .expect("the silent member got one");
        silent.abort();
        let per = collect(&mut rx, 300).await;
        assert_eq!(per.get("stays"), Some(&300), "clean = {clean}");
        stays.abort();
    }
}

#[tokio::test]
async fn retained_messages_are_not_sent_on_a_shared_subscription() {
    let b = TestBroker::start().await;
    let (mut p, _) = Raw::connect(b.addr, "pub", true, 0).await;
    p.publish("r/1", QoS::AtLeastOnce, Some(1), true, b"kept")
        .await;
    assert_eq!(p.recv().await, Packet::PubAck(1));
    let (mut shared, _) = Raw::connect(b.addr, "shared", true, 0).await;
    shared
        .subscribe(1, &[("$share/g/r/#", QoS::AtLeastOnce)])
        .await;
    let (mut plain, _) = Raw::connect(b.addr, "plain", true, 0).await;
    plain.subscribe(1, &[("r/#", QoS::AtLeastOnce)]).await;
    // [MQTT-3.3.1-6] for the plain one; the shared one gets none.
    assert!(plain.recv_publish().await.retain);
    shared.expect_silence(Duration::from_millis(300)).await;
    // A live message still reaches the group (retain cleared, as on any live delivery).
    p.publish("r/1", QoS::AtMostOnce, None, false, b"live")
        .await;
    assert_eq!(&shared.recv_publish().await.payload[..], b"live");
}

#[tokio::test]
async fn invalid_shared_forms_get_suback_failure() {
    let b = TestBroker::start().await;
    let (mut raw, _) = Raw::connect(b.addr, "c", true, 0).await;
    let filters = [
        "$share//t",
        "$share/g+/t",
        "$share/g#/t",
        "$share/g",
        "$share/g/",
        "$share/g/a/#/b",
        "$queue/",
        "$share/g/a/#",
        "$queue/a/+",
    ];
    let ask: Vec<(&str, QoS)> = filters.iter().map(|f| (*f, QoS::AtLeastOnce)).collect();
    let codes = raw.subscribe(1, &ask).await;
    let ok = SubAckCode::Granted(QoS::AtLeastOnce);
    // [MQTT-3.8.4-5]: one code per filter, in order; 0x80 for each one refused.
    assert_eq!(
        codes,
        [[SubAckCode::Failure; 7].as_slice(), &[ok, ok]].concat()
    );
}

#[tokio::test]
async fn the_acl_applies_to_the_filter_inside_the_prefix() {
    let (b, _dir) = common::acl_broker("topic read jobs/#\n").await;
    let (mut raw, _) = Raw::connect(b.addr, "c", true, 0).await;
    let codes = raw
        .subscribe(
            1,
            &[
                ("$share/g/jobs/+", QoS::AtMostOnce),
                ("$share/jobs/secret/x", QoS::AtMostOnce),
                ("$queue/jobs/a", QoS::AtMostOnce),
            ],
        )
        .await;
    let ok = SubAckCode::Granted(QoS::AtMostOnce);
    assert_eq!(codes, [ok, SubAckCode::Failure, ok]);
}
