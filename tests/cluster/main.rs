//! Tern nodes as one broker over a real NATS cluster with JetStream (three `nats-server`
//! processes): messages across nodes at every QoS without duplicates, retained messages
//! everywhere, client ids taken over across nodes. Each test has its own NATS cluster.

#[path = "../common/mod.rs"]
mod common;
mod harness;
mod moving;
mod partition;
mod retained;
mod secured;

use std::time::Duration;

use tern::codec::{ConnectReturnCode, Packet, SubAckCode};
use tern::message::QoS;

use common::{within, Raw, WAIT};
use harness::{client, next, nodes, routed, Nats};

#[tokio::test]
async fn a_message_crosses_nodes_at_every_qos() {
    let nats = Nats::start(3).await;
    let n = nodes(&nats, "qos").await;
    let mut sub = client(n[1].addr, "sub").await;
    sub.subscribe(1, &[("t/#", QoS::ExactlyOnce)]).await;
    let mut publisher = client(n[0].addr, "pub").await;
    routed(&mut publisher, &mut sub, "t/probe").await;
    for (i, qos) in [QoS::AtMostOnce, QoS::AtLeastOnce, QoS::ExactlyOnce]
        .into_iter()
        .enumerate()
    {
        let id = (qos != QoS::AtMostOnce).then_some(i as u16);
        publisher.publish("t/x", qos, id, false, &[i as u8]).await;
        match qos {
            QoS::AtMostOnce => {}
            QoS::AtLeastOnce => assert_eq!(publisher.recv().await, Packet::PubAck(1)),
            QoS::ExactlyOnce => {
                assert_eq!(publisher.recv().await, Packet::PubRec(2));
                publisher.send_packet(&Packet::PubRel(2)).await;
                assert_eq!(publisher.recv().await, Packet::PubComp(2));
            }
        }
        // Each client's QoS with its own node holds: the subscriber gets it at its QoS.
        assert_eq!(next(&mut sub).await, ("t/x".into(), vec![i as u8], qos));
    }
    // [MQTT-4.3.3-1] the QoS 2 delivery's flow ends as usual.
    match sub.recv().await {
        Packet::PubRel(id) => sub.send_packet(&Packet::PubComp(id)).await,
        other => panic!("expected PUBREL, got {other:?}"),
    }
    sub.expect_silence(Duration::from_millis(300)).await;
}

#[tokio::test]
async fn a_message_published_on_another_node_right_after_the_suback_arrives() {
    let nats = Nats::start(3).await;
    let n = nodes(&nats, "suback").await;
    let mut publisher = client(n[0].addr, "pub").await;
    // A fresh filter each round: its interest is new to the cluster when the SUBSCRIBE comes.
    for round in 1..=20u16 {
        let mut sub = client(n[1 + usize::from(round % 2)].addr, &format!("sub{round}")).await;
        let filter = if round % 3 == 0 {
            format!("fresh/{round}/#")
        } else {
            format!("fresh/{round}")
        };
        let codes = sub
            .subscribe(1, &[(filter.as_str(), QoS::AtLeastOnce)])
            .await;
        assert_eq!(codes, vec![SubAckCode::Granted(QoS::AtLeastOnce)]);
        // No probe: the SUBACK itself says other nodes will route to it.
        let topic = format!("fresh/{round}");
        publisher
            .publish(&topic, QoS::AtLeastOnce, Some(round), false, b"right after")
            .await;
        assert_eq!(publisher.recv().await, Packet::PubAck(round));
        let (got, payload, _) = next(&mut sub).await;
        assert_eq!(
            (got.as_str(), &payload[..]),
            (topic.as_str(), &b"right after"[..])
        );
    }
}

#[tokio::test]
async fn overlapping_filters_on_other_nodes_get_each_message_once() {
    let nats = Nats::start(3).await;
    let n = nodes(&nats, "overlap").await;
    // One session with three overlapping filters, and sessions on two other nodes.
    let mut many = client(n[1].addr, "many").await;
    many.subscribe(
        1,
        &[
            ("a/#", QoS::AtLeastOnce),
            ("a/+", QoS::AtMostOnce),
            ("a/b", QoS::AtLeastOnce),
        ],
    )
    .await;
    let mut exact = client(n[1].addr, "exact").await;
    exact.subscribe(1, &[("a/b", QoS::AtLeastOnce)]).await;
    let mut far = client(n[2].addr, "far").await;
    far.subscribe(1, &[("+/b", QoS::AtLeastOnce), ("#", QoS::AtLeastOnce)])
        .await;
    let mut publisher = client(n[0].addr, "pub").await;
    routed(&mut publisher, &mut exact, "a/b").await;
    routed(&mut publisher, &mut far, "a/b").await;
    // Probes that reached `many` meanwhile are skipped by `next`.
    for i in 0..20u8 {
        publisher
            .publish("a/b", QoS::AtLeastOnce, Some(1 + i as u16), false, &[i])
            .await;
        assert_eq!(publisher.recv().await, Packet::PubAck(1 + i as u16));
    }
    for s in [&mut many, &mut exact, &mut far] {
        for i in 0..20u8 {
            let (topic, payload, _) = next(s).await;
            assert_eq!(
                (topic.as_str(), payload),
                ("a/b", vec![i]),
                "in order, once"
            );
        }
    }
    for s in [&mut many, &mut exact, &mut far] {
        // Late probes may still come; nothing else may.
        let quiet = async {
            let (t, p, _) = next(s).await;
            panic!("a second copy: {t} {p:?}");
        };
        let _ = tokio::time::timeout(Duration::from_millis(300), quiet).await;
    }
}

#[tokio::test]
async fn a_client_id_moves_to_another_node_and_its_old_connection_leaves_a_will() {
    let nats = Nats::start(3).await;
    let n = nodes(&nats, "takeover").await;
    let mut watch = client(n[0].addr, "watch").await;
    watch.subscribe(1, &[("wills/#", QoS::AtLeastOnce)]).await;
    let mut old = harness::with_will(n[1].addr, "mover", "wills/mover", b"gone").await;
    let mut p2 = client(n[1].addr, "probe-pub").await;
    routed(&mut p2, &mut watch, "wills/probe").await;
    // [MQTT-3.1.4-2] the same id on another node: the old connection is closed.
    let _new = client(n[2].addr, "mover").await;
    old.expect_closed_silently().await;
    // [MQTT-3.1.2-8] it did not say goodbye: its will is published.
    let (topic, payload, _) = next(&mut watch).await;
    assert_eq!(
        (topic.as_str(), &payload[..]),
        ("wills/mover", &b"gone"[..])
    );
}

#[tokio::test]
async fn two_connects_with_one_id_on_two_nodes_leave_exactly_one() {
    let nats = Nats::start(3).await;
    let n = nodes(&nats, "race").await;
    for round in 0..3 {
        let id = format!("twin-{round}");
        let (a, b) = tokio::join!(
            Raw::connect(n[0].addr, &id, true, 60),
            Raw::connect(n[1].addr, &id, true, 60)
        );
        let mut open = Vec::new();
        for (raw, ack) in [a, b] {
            if ack.code == ConnectReturnCode::Accepted {
                open.push(raw);
            }
        }
        assert!(!open.is_empty(), "at least one got in");
        // Whoever got in first is closed by the other's takeover: one stays.
        within(WAIT, async {
            loop {
                let mut alive = 0;
                for raw in open.iter_mut() {
                    if !raw.try_send_packet(&Packet::PingReq).await {
                        continue;
                    }
                    if let Ok(Some(Packet::PingResp)) = tokio::time::timeout(
                        Duration::from_millis(500),
                        raw.read_to_close_or_packet(),
                    )
                    .await
                    {
                        alive += 1;
                    }
                }
                assert!(alive >= 1, "both were closed");
                if alive == 1 {
                    return;
                }
            }
        })
        .await;
    }
}

#[tokio::test]
async fn a_nats_server_killed_leaves_the_nodes_serving() {
    let mut nats = Nats::start(3).await;
    let n = nodes(&nats, "natskill").await;
    let mut sub = client(n[2].addr, "sub").await;
    sub.subscribe(1, &[("k/#", QoS::AtLeastOnce)]).await;
    let mut publisher = client(n[0].addr, "pub").await;
    routed(&mut publisher, &mut sub, "k/probe").await;
    nats.kill(0).await;
    // Whichever node was on the killed server reconnects to another: messages cross again.
    routed(&mut publisher, &mut sub, "k/probe").await;
    publisher
        .publish("k/after", QoS::AtLeastOnce, Some(1), false, b"x")
        .await;
    assert_eq!(publisher.recv().await, Packet::PubAck(1));
    assert_eq!(next(&mut sub).await.0, "k/after");
    // Two of three servers keep the buckets' quorum: once a bucket whose leader was on the
    // killed server has elected another (0x03 meanwhile), a new client id is claimed.
    let _new = harness::connect_until_accepted(n[1].addr, "after-kill", true).await;
    // No node went down with the server: each takes a new client.
    for (i, node) in n.iter().enumerate() {
        let _c = harness::connect_until_accepted(node.addr, &format!("still-{i}"), true).await;
    }
    nats.restart(0).await;
    let _again = harness::connect_until_accepted(n[0].addr, "after-restart", true).await;
}

#[tokio::test]
async fn a_node_killed_leaves_its_wills_published_and_its_clients_move() {
    let nats = Nats::start(3).await;
    let n1 = harness::nodes(&nats, "kill").await;
    // The node to kill is a process of its own; the others are in this one.
    let mut victim_node = harness::binary_node(&nats, "doomed", "kill", "127.0.0.6").await;
    harness::warm(&[victim_node.addr]).await;
    let mut watch = client(n1[0].addr, "watch").await;
    watch.subscribe(1, &[("wills/#", QoS::AtLeastOnce)]).await;
    let mut from_far = client(n1[2].addr, "far-pub").await;
    routed(&mut from_far, &mut watch, "wills/probe").await;
    let _victim = harness::with_will(victim_node.addr, "victim", "wills/victim", b"lost").await;
    let mut data = client(victim_node.addr, "data-sub").await;
    data.subscribe(1, &[("data/#", QoS::AtLeastOnce)]).await;
    // A persistent session there, whose client is away when the node dies.
    let (mut away, _) = Raw::connect(victim_node.addr, "away", false, 60).await;
    away.subscribe(1, &[("durable/#", QoS::AtLeastOnce)]).await;
    away.disconnect().await;
    let mut publisher = client(n1[0].addr, "pub").await;
    routed(&mut publisher, &mut data, "data/probe").await;
    // The will is in the cluster's bucket before the node dies: a PINGREQ round trip after
    // CONNACK is no proof, so wait for the bucket to hold it.
    harness::wait_for_will(&nats, "kill", "doomed").await;
    victim_node.child.start_kill().expect("kill -9");
    let _ = victim_node.child.wait().await;
    // Dead to the others once its lease is `dead_after` old; the one that buries it publishes
    // its wills first.
    harness::wait_buried(&nats, "kill", "doomed").await;
    // [MQTT-3.1.2-8] its node is gone without a DISCONNECT: a survivor publishes the will.
    let (topic, payload, _) = next(&mut watch).await;
    assert_eq!(
        (topic.as_str(), &payload[..]),
        ("wills/victim", &b"lost"[..])
    );
    // Its clients come back on another node, under the same ids.
    let _victim = harness::connect_until_accepted(n1[1].addr, "victim", true).await;
    let (mut data, _) = harness::connect_until_accepted(n1[1].addr, "data-sub", true).await;
    data.subscribe(1, &[("data/#", QoS::AtLeastOnce)]).await;
    // No topic is left black-holed: the dead node's interest went with its connection.
    routed(&mut publisher, &mut data, "data/probe").await;
    publisher
        .publish("data/x", QoS::AtLeastOnce, Some(1), false, b"after")
        .await;
    assert_eq!(publisher.recv().await, Packet::PubAck(1));
    assert_eq!(next(&mut data).await.1, b"after");
    // The persistent session came back on a survivor, from the dead node's record: its
    // client finds it, and its subscription routes without a new SUBSCRIBE.
    let (mut away, ack) = harness::connect_until_accepted(n1[2].addr, "away", false).await;
    assert!(
        ack.session_present,
        "[MQTT-3.2.2-2] restored from the dead node's record"
    );
    let mut p2 = client(n1[1].addr, "durable-pub").await;
    routed(&mut p2, &mut away, "durable/probe").await;
    p2.publish("durable/x", QoS::AtLeastOnce, Some(1), false, b"kept")
        .await;
    assert_eq!(p2.recv().await, Packet::PubAck(1));
    assert_eq!(next(&mut away).await.1, b"kept");
    // One will, once.
    let quiet = async {
        let (t, p, _) = next(&mut watch).await;
        panic!("unexpected {t} {p:?}");
    };
    let _ = tokio::time::timeout(Duration::from_millis(500), quiet).await;
}

#[tokio::test]
async fn a_node_cut_off_from_nats_fences_itself_in_time_and_serves_again_after() {
    let mut nats = Nats::start(3).await;
    let _others = nodes(&nats, "fence").await;
    // This node knows only server 1: killing it cuts the node off; servers 0 and 2 keep the
    // buckets' quorum for the others.
    let mut cfg = harness::cluster_config(&nats, "lonely", "fence");
    cfg.nats = vec![nats.urls()[1].clone()];
    cfg.nats_discover = false;
    // Cut off for good, not electing a leader: it may fence sooner than the others.
    cfg.fence_after = Duration::from_millis(1500);
    cfg.dead_after = Duration::from_millis(2500);
    let fence_after = cfg.fence_after;
    let lease = cfg.lease_interval;
    let lonely = common::TestBroker::start_with(|c| {
        c.listener[0].bind = "127.0.0.7:0".parse().expect("address");
        c.cluster = Some(cfg);
    })
    .await;
    let mut held = client(lonely.addr, "held").await;
    let cut = tokio::time::Instant::now();
    nats.kill(1).await;
    // Its clients are closed within fence_after (plus the lease ticks around it).
    held.expect_closed_silently().await;
    let took = cut.elapsed();
    assert!(
        took <= fence_after + lease * 3,
        "fenced after {took:?}, more than fence_after {fence_after:?}"
    );
    // While fenced it takes nobody: 0x03.
    let (_, ack) = Raw::connect(lonely.addr, "refused", true, 60).await;
    assert_eq!(ack.code, ConnectReturnCode::ServerUnavailable);
    // Back in reach, it serves again.
    nats.restart(1).await;
    let _back = harness::connect_until_accepted(lonely.addr, "back", true).await;
}

/// Takes what arrives at each of `subs` until `total` non-probe messages came, acknowledging
/// them; how many each got, and every payload.
async fn gather(subs: &mut [Raw], total: usize) -> (Vec<usize>, Vec<u8>) {
    let mut counts = vec![0; subs.len()];
    let mut all = Vec::new();
    within(WAIT, async {
        while all.len() < total {
            for (i, s) in subs.iter_mut().enumerate() {
                if let Ok((_, p, _)) =
                    tokio::time::timeout(Duration::from_millis(20), next(s)).await
                {
                    counts[i] += 1;
                    all.extend(p);
                }
            }
        }
    })
    .await;
    (counts, all)
}

#[tokio::test]
async fn a_shared_subscription_spans_the_cluster_one_member_per_message() {
    let nats = Nats::start(3).await;
    let n = nodes(&nats, "shared").await;
    let mut members = Vec::new();
    for (i, node) in [1usize, 1, 2].into_iter().enumerate() {
        let mut m = client(n[node].addr, &format!("worker-{i}")).await;
        m.subscribe(1, &[("$share/g/jobs/#", QoS::AtLeastOnce)])
            .await;
        members.push(m);
    }
    let mut publisher = client(n[0].addr, "pub").await;
    // Both nodes' queue subscriptions have reached the publisher's server once each has
    // had a probe.
    within(WAIT, async {
        let (mut on2, mut on3) = (false, false);
        while !(on2 && on3) {
            publisher
                .publish("jobs/probe", QoS::AtMostOnce, None, false, b"probe")
                .await;
            for (i, m) in members.iter_mut().enumerate() {
                if let Ok(Packet::Publish(_)) =
                    tokio::time::timeout(Duration::from_millis(20), m.recv()).await
                {
                    if i < 2 {
                        on2 = true;
                    } else {
                        on3 = true;
                    }
                }
            }
        }
    })
    .await;
    for i in 0..30u8 {
        let id = 1 + i as u16;
        publisher
            .publish("jobs/x", QoS::AtLeastOnce, Some(id), false, &[i])
            .await;
        assert_eq!(publisher.recv().await, Packet::PubAck(id));
    }
    let (counts, mut all) = gather(&mut members, 30).await;
    all.sort_unstable();
    assert_eq!(
        all,
        (0..30).collect::<Vec<u8>>(),
        "each message once, in the whole cluster"
    );
    assert!(
        counts[0] + counts[1] > 0 && counts[2] > 0,
        "both nodes took some: {counts:?}"
    );
    // A publisher on a node with members of the group: they take it, no other node does.
    let mut local = client(n[1].addr, "local-pub").await;
    for i in 0..10u8 {
        let id = 1 + i as u16;
        local
            .publish("jobs/y", QoS::AtLeastOnce, Some(id), false, &[100 + i])
            .await;
        assert_eq!(local.recv().await, Packet::PubAck(id));
    }
    let (counts, mut all) = gather(&mut members, 10).await;
    all.sort_unstable();
    assert_eq!(all, (100..110).collect::<Vec<u8>>());
    assert_eq!(counts[2], 0, "served on the publisher's node: {counts:?}");
    for m in members.iter_mut() {
        let quiet = async {
            let (t, p, _) = next(m).await;
            panic!("a second copy: {t} {p:?}");
        };
        let _ = tokio::time::timeout(Duration::from_millis(200), quiet).await;
    }
}

#[tokio::test]
async fn cluster_status_lists_every_node_and_its_client_ids() {
    let nats = Nats::start(3).await;
    let n = nodes(&nats, "status").await;
    let _a = client(n[0].addr, "a").await;
    let _b = client(n[1].addr, "b").await;
    let _c = client(n[1].addr, "c").await;
    let cfg = harness::cluster_config(&nats, "node1", "status");
    let text = format!(
        "[cluster]\nnats = {:?}\nnode_name = \"{}\"\nprefix = \"status\"\n",
        cfg.nats, cfg.node_name
    );
    let file = tempfile::NamedTempFile::new().expect("temp file");
    std::fs::write(file.path(), text).expect("write config");
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_tern"))
        .args(["cluster", "status", "-c"])
        .arg(file.path())
        .output();
    let out = within(WAIT, out).await.expect("tern cluster status runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    let ids = |node: &str| -> Option<u64> {
        let line = text
            .lines()
            .find(|l| l.split_whitespace().next() == Some(node))?;
        line.split_whitespace().last()?.parse().ok()
    };
    assert_eq!(ids("node1"), Some(1), "{text}");
    assert_eq!(ids("node2"), Some(2), "{text}");
    assert_eq!(ids("node3"), Some(0), "{text}");
    // Without a [cluster] section it says so, and fails.
    std::fs::write(file.path(), "[mqtt]\n").expect("write config");
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_tern"))
        .args(["cluster", "status", "-c"])
        .arg(file.path())
        .output();
    let out = within(WAIT, out).await.expect("runs");
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("no [cluster] section"));
}

#[tokio::test]
async fn a_partition_fences_the_minority_the_majority_serves_and_healing_leaves_no_id_twice() {
    let hosts = partition::Hosts::create(3);
    let _nats = Nats::start_on(&hosts, 3).await;
    let mut n = Vec::new();
    for i in 0..3 {
        n.push(harness::node_on(&hosts, i, &format!("host{i}"), "part").await);
    }
    harness::warm(&n.iter().map(|b| b.addr).collect::<Vec<_>>()).await;
    let mut held = client(n[0].addr, "split").await;
    let _other = client(n[1].addr, "other").await;
    hosts.isolate(0);
    // [host 0] alone: it cannot renew its lease, so it fences: its client is closed and a
    // new one refused with 0x03.
    let last = held.read_to_close_within(harness::SLOW).await;
    assert!(last.is_empty(), "closed without a word");
    let (_, ack) = Raw::connect(n[0].addr, "newcomer", true, 60).await;
    assert_eq!(
        ack.code,
        ConnectReturnCode::ServerUnavailable,
        "the minority refuses"
    );
    // [hosts 1 and 2] the majority serves, and takes the cut-off node's client id once its
    // lease is dead.
    let _fresh = client(n[2].addr, "fresh").await;
    let (mut moved, _) = harness::connect_until_accepted(n[2].addr, "split", true).await;
    hosts.heal(0);
    // Healed: host 0 serves again; the id is connected once, wherever it last connected.
    let (mut back, _) = harness::connect_until_accepted(n[0].addr, "split", true).await;
    moved.expect_closed_silently().await;
    assert!(back.try_send_packet(&Packet::PingReq).await);
    assert_eq!(back.recv().await, Packet::PingResp);
}

#[tokio::test]
async fn dollar_topics_keep_their_rule_across_nodes() {
    let nats = Nats::start(3).await;
    let n = nodes(&nats, "dollar").await;
    // [MQTT-4.7.2-1] `#` does not match a topic starting with `$`; `$app/#` does.
    let mut all = client(n[1].addr, "all").await;
    all.subscribe(1, &[("#", QoS::AtMostOnce)]).await;
    let mut dollar = client(n[1].addr, "dollar").await;
    dollar.subscribe(1, &[("$app/#", QoS::AtMostOnce)]).await;
    let mut publisher = client(n[0].addr, "pub").await;
    routed(&mut publisher, &mut dollar, "$app/probe").await;
    routed(&mut publisher, &mut all, "plain/probe").await;
    publisher
        .publish("$app/x", QoS::AtLeastOnce, Some(1), false, b"d")
        .await;
    assert_eq!(publisher.recv().await, Packet::PubAck(1));
    assert_eq!(
        next(&mut dollar).await,
        ("$app/x".into(), b"d".to_vec(), QoS::AtMostOnce)
    );
    let quiet = async {
        loop {
            let (t, _, _) = next(&mut all).await;
            assert!(!t.starts_with('$'), "`#` got {t}");
        }
    };
    let _ = tokio::time::timeout(Duration::from_millis(300), quiet).await;
}
