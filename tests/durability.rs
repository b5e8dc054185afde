//! Durable state with the real binary on a temporary directory: what is wired so far
//! (retained messages, acknowledged only once on disk) survives kill -9 and SIGTERM, and a
//! store that cannot be used stops the start with one line.
//!
//! `persistence = true` is refused until sessions and their queues are stored too; these tests
//! set `TERN_UNFINISHED_PERSISTENCE=1` to reach what exists.

mod common;

use std::path::Path;
use std::time::Duration;

use common::{BinaryBroker, Raw};
use tern::codec::Packet;
use tern::message::QoS;

const UNFINISHED: [(&str, &str); 1] = [("TERN_UNFINISHED_PERSISTENCE", "1")];

fn config(dir: &Path, sync: &str) -> String {
    format!(
        "[persistence]\npersistence = true\npersistence_location = \"{}\"\nsync = \"{sync}\"\n\
         [sys]\nsys_interval = \"0s\"\n",
        dir.display()
    )
}

/// Publishes retained QoS 1 values 1..=n to `topic`, each waited for; then an empty
/// payload to `gone` (deleting it) after a value.
async fn publish_retained(addr: std::net::SocketAddr, topic: &str, n: u16) {
    let (mut p, _) = Raw::connect(addr, "retainer", true, 60).await;
    for i in 1..=n {
        p.publish(
            topic,
            QoS::AtLeastOnce,
            Some(i),
            true,
            i.to_string().as_bytes(),
        )
        .await;
        assert_eq!(p.recv().await, Packet::PubAck(i));
    }
    p.publish("gone", QoS::AtLeastOnce, Some(1), true, b"x")
        .await;
    assert_eq!(p.recv().await, Packet::PubAck(1));
    p.publish("gone", QoS::AtLeastOnce, Some(2), true, b"")
        .await;
    assert_eq!(p.recv().await, Packet::PubAck(2));
}

/// The retained payloads a fresh subscriber to `#` gets.
async fn retained(addr: std::net::SocketAddr) -> Vec<(String, String)> {
    let (mut s, _) = Raw::connect(addr, "reader", true, 60).await;
    s.subscribe(1, &[("#", QoS::AtMostOnce)]).await;
    let mut got = Vec::new();
    while let Ok(p) = tokio::time::timeout(Duration::from_millis(300), s.recv()).await {
        if let Packet::Publish(p) = p {
            got.push((
                String::from_utf8_lossy(&p.topic).into_owned(),
                String::from_utf8_lossy(&p.payload).into_owned(),
            ));
        }
    }
    got.sort();
    got
}

#[tokio::test]
async fn acknowledged_retained_messages_survive_kill_9_and_sigterm() {
    for sync in ["always", "interval", "never"] {
        let dir = tempfile::tempdir().expect("temp dir");
        let conf = config(dir.path(), sync);
        let mut broker = BinaryBroker::start_with_env(&conf, &UNFINISHED).await;
        publish_retained(broker.addr, "r/t", 50).await;
        // SIGKILL right after the last PUBACK: what was acknowledged is on disk.
        broker.child.start_kill().expect("kill -9");
        let _ = broker.child.wait().await;
        let mut broker = BinaryBroker::start_with_env(&conf, &UNFINISHED).await;
        let want = vec![("r/t".to_owned(), "50".to_owned())];
        assert_eq!(retained(broker.addr).await, want, "sync = {sync}");
        // A graceful stop, then a second restart on the same directory.
        publish_retained(broker.addr, "r/t", 7).await;
        let status = std::process::Command::new("kill")
            .args(["-TERM", &broker.pid().to_string()])
            .status()
            .expect("kill");
        assert!(status.success());
        let exit = broker.child.wait().await.expect("exits");
        assert!(exit.success(), "{exit}");
        let broker = BinaryBroker::start_with_env(&conf, &UNFINISHED).await;
        let want = vec![("r/t".to_owned(), "7".to_owned())];
        assert_eq!(retained(broker.addr).await, want, "sync = {sync}");
    }
}

/// Runs `tern -c FILE -p 0` with `config`; its exit status and standard error.
fn start_fails(config: &str, env: &[(&str, &str)]) -> (Option<i32>, String) {
    let dir = tempfile::tempdir().expect("temp dir");
    let file = dir.path().join("tern.toml");
    std::fs::write(&file, config).expect("write config");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_tern"))
        .arg("-c")
        .arg(&file)
        .args(["-p", "0"])
        .env_remove("TERN_UNFINISHED_PERSISTENCE")
        .envs(env.iter().copied())
        .output()
        .expect("run tern");
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    (out.status.code(), err)
}

#[tokio::test]
async fn a_store_that_cannot_be_used_stops_the_start_with_one_line() {
    let dir = tempfile::tempdir().expect("temp dir");
    let conf = config(dir.path(), "always");
    // Not yet available without the switch: refused rather than half kept.
    let (code, err) = start_fails(&conf, &[]);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("not available yet"), "{err}");
    // Locked by a running broker.
    let _running = BinaryBroker::start_with_env(&conf, &UNFINISHED).await;
    let (code, err) = start_fails(&conf, &UNFINISHED);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("locked by another process"), "{err}");
    assert!(err.contains(&dir.path().display().to_string()), "{err}");
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    // A location that cannot be a directory.
    let file = dir.path().join("a-file");
    std::fs::write(&file, "x").expect("write");
    let (code, err) = start_fails(&config(&file.join("store"), "always"), &UNFINISHED);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("a-file"), "{err}");
}

/// SIGKILL, and waits for the process to be gone.
async fn kill_9(broker: &mut BinaryBroker) {
    broker.child.start_kill().expect("kill -9");
    let _ = broker.child.wait().await;
}

/// SIGTERM, and waits for a clean exit.
async fn stop(broker: &mut BinaryBroker) {
    let status = std::process::Command::new("kill")
        .args(["-TERM", &broker.pid().to_string()])
        .status()
        .expect("kill");
    assert!(status.success());
    let exit = broker.child.wait().await.expect("exits");
    assert!(exit.success(), "{exit}");
}

#[tokio::test]
async fn persistent_sessions_and_subscriptions_survive_and_clean_ones_leave_nothing() {
    let dir = tempfile::tempdir().expect("temp dir");
    let conf = config(dir.path(), "always");
    let mut broker = BinaryBroker::start_with_env(&conf, &UNFINISHED).await;
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

    let mut broker = BinaryBroker::start_with_env(&conf, &UNFINISHED).await;
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
    let broker = BinaryBroker::start_with_env(&conf, &UNFINISHED).await;
    let (_, ack) = common::connect_as(broker.addr, "keeper", false, None, None).await;
    assert!(ack.session_present);
}

#[tokio::test]
async fn an_expired_session_is_gone_after_a_restart() {
    let dir = tempfile::tempdir().expect("temp dir");
    let conf = format!(
        "{}[session]\npersistent_client_expiration = \"1s\"\n",
        config(dir.path(), "always")
    );
    let mut broker = BinaryBroker::start_with_env(&conf, &UNFINISHED).await;
    let (sub, _) = common::connect_as(broker.addr, "brief", false, None, None).await;
    sub.disconnect().await;
    // Graceful: every record, the detach time included, is written before the exit.
    stop(&mut broker).await;
    // Wall-clock time has to pass here, and nothing signals it: its expiry is measured from when it was detached, across the restart.
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let broker = BinaryBroker::start_with_env(&conf, &UNFINISHED).await;
    let (_, ack) = common::connect_as(broker.addr, "brief", false, None, None).await;
    assert!(!ack.session_present, "expired while the broker was down");
}

/// A publisher sending QoS 1 messages "P:i" to `t/P`, one at a time, until its connection
/// goes; the highest i acknowledged. Each acknowledgement is counted in `acked`.
async fn publish_until_cut(
    addr: std::net::SocketAddr,
    name: &'static str,
    from: u32,
    limit: u32,
    acked: std::sync::Arc<tokio::sync::Semaphore>,
) -> u32 {
    let (mut p, _) = Raw::connect(addr, name, true, 60).await;
    let mut last = 0;
    for i in from..from + limit {
        let payload = format!("{name}:{i}");
        let pkid = (i % 60_000 + 1) as u16;
        let sent = tokio::time::timeout(
            Duration::from_secs(10),
            tern_send(&mut p, &format!("t/{name}"), pkid, payload.as_bytes()),
        )
        .await;
        match sent {
            Ok(true) => {
                last = i;
                acked.add_permits(1);
            }
            _ => break,
        }
    }
    last
}

/// One QoS 1 PUBLISH and its PUBACK; false if the connection went first.
async fn tern_send(p: &mut Raw, topic: &str, pkid: u16, payload: &[u8]) -> bool {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut buf = bytes::BytesMut::new();
    tern::codec::encode(
        &Packet::Publish(tern::codec::Publish {
            dup: false,
            qos: QoS::AtLeastOnce,
            retain: false,
            topic: bytes::Bytes::copy_from_slice(topic.as_bytes()),
            pkid: Some(pkid),
            payload: bytes::Bytes::copy_from_slice(payload),
        }),
        &mut buf,
    );
    if p.stream.write_all(&buf).await.is_err() {
        return false;
    }
    let mut ack = [0u8; 4];
    match p.stream.read_exact(&mut ack).await {
        Ok(_) => ack == [0x40, 0x02, (pkid >> 8) as u8, pkid as u8],
        Err(_) => false,
    }
}

/// Reconnects `id` (clean_session = 0) and takes every message until it falls quiet,
/// acknowledging each; the payloads in arrival order.
async fn drain_session(addr: std::net::SocketAddr, id: &str) -> Vec<String> {
    let (mut s, ack) = common::connect_as(addr, id, false, None, None).await;
    assert!(ack.session_present, "{id}: [MQTT-3.2.2-2]");
    let mut got = Vec::new();
    while let Ok(p) = tokio::time::timeout(Duration::from_millis(500), s.recv()).await {
        let Packet::Publish(p) = p else { continue };
        got.push(String::from_utf8_lossy(&p.payload).into_owned());
        if let Some(pkid) = p.pkid {
            s.send_packet(&Packet::PubAck(pkid)).await;
        }
    }
    got
}

/// Every acknowledged value of each publisher arrived, in order of first arrival.
fn check_delivery(got: &[String], acked: &[(&str, std::ops::RangeInclusive<u32>)], who: &str) {
    for (name, range) in acked {
        let mut seen = std::collections::BTreeSet::new();
        let mut last = 0;
        for v in got
            .iter()
            .filter_map(|g| g.strip_prefix(&format!("{name}:")))
        {
            let v: u32 = v.parse().expect("number");
            if seen.insert(v) {
                assert!(v > last, "{who}: {name}:{v} after {name}:{last}");
                last = v;
            }
        }
        for i in range.clone() {
            assert!(seen.contains(&i), "{who}: acknowledged {name}:{i} was lost");
        }
    }
}

#[tokio::test]
async fn acknowledged_qos1_messages_survive_kill_9_for_offline_and_slow_subscribers() {
    let dir = tempfile::tempdir().expect("temp dir");
    let conf = format!(
        "{}[session]\nmax_queued_messages = 100000\n",
        config(dir.path(), "always")
    );
    let mut broker = BinaryBroker::start_with_env(&conf, &UNFINISHED).await;
    for id in ["offline", "slow"] {
        let (mut s, _) = common::connect_as(broker.addr, id, false, None, None).await;
        s.subscribe(1, &[("t/#", QoS::AtLeastOnce)]).await;
        if id == "offline" {
            s.disconnect().await;
        } else {
            // Online and never acknowledging: its window fills, the rest queues.
            std::mem::forget(s);
        }
    }
    let acked = std::sync::Arc::new(tokio::sync::Semaphore::new(0));
    let publishers: Vec<_> = ["p1", "p2", "p3"]
        .into_iter()
        .map(|name| {
            let (addr, acked) = (broker.addr, acked.clone());
            tokio::spawn(
                async move { (name, publish_until_cut(addr, name, 1, 100_000, acked).await) },
            )
        })
        .collect();
    // Killed mid-stream, once a few hundred messages were acknowledged.
    let _ = tokio::time::timeout(Duration::from_secs(20), acked.acquire_many(300)).await;
    kill_9(&mut broker).await;
    let mut before = Vec::new();
    for p in publishers {
        before.push(p.await.expect("publisher"));
    }
    let broker = BinaryBroker::start_with_env(&conf, &UNFINISHED).await;
    // More before the subscribers come back.
    let mut after = Vec::new();
    for (name, last) in &before {
        let sem = std::sync::Arc::new(tokio::sync::Semaphore::new(0));
        let upto = publish_until_cut(broker.addr, name, last + 1, 20, sem).await;
        assert_eq!(upto, last + 20);
        after.push((*name, 1..=upto));
    }
    assert!(before.iter().all(|(_, last)| *last > 0), "{before:?}");
    for id in ["offline", "slow"] {
        let got = drain_session(broker.addr, id).await;
        check_delivery(&got, &after, id);
    }
}

#[tokio::test]
async fn a_qos2_message_acknowledged_with_pubrec_is_delivered_once_across_a_kill() {
    let dir = tempfile::tempdir().expect("temp dir");
    let conf = config(dir.path(), "always");
    let mut broker = BinaryBroker::start_with_env(&conf, &UNFINISHED).await;
    let (mut sub, _) = common::connect_as(broker.addr, "q2-sub", false, None, None).await;
    sub.subscribe(1, &[("q2", QoS::ExactlyOnce)]).await;
    sub.disconnect().await;
    // A persistent publisher gets its PUBREC; then the broker is killed before the PUBREL.
    let (mut publ, _) = common::connect_as(broker.addr, "q2-pub", false, None, None).await;
    publ.publish("q2", QoS::ExactlyOnce, Some(5), false, b"once")
        .await;
    assert_eq!(publ.recv().await, Packet::PubRec(5));
    kill_9(&mut broker).await;
    let broker = BinaryBroker::start_with_env(&conf, &UNFINISHED).await;
    // The publisher, not sure of anything, sends it again (DUP) and then PUBREL
    // [MQTT-4.3.3-2]: id 5 still awaits its PUBREL, so the copy is not routed again.
    let (mut publ, ack) = common::connect_as(broker.addr, "q2-pub", false, None, None).await;
    assert!(ack.session_present);
    publ.send_packet(&Packet::Publish(tern::codec::Publish {
        dup: true,
        qos: QoS::ExactlyOnce,
        retain: false,
        topic: bytes::Bytes::from_static(b"q2"),
        pkid: Some(5),
        payload: bytes::Bytes::from_static(b"once"),
    }))
    .await;
    assert_eq!(publ.recv().await, Packet::PubRec(5));
    publ.send_packet(&Packet::PubRel(5)).await;
    assert_eq!(publ.recv().await, Packet::PubComp(5));
    // Id 5 is free again: a new message under it is a new message.
    publ.publish("q2", QoS::ExactlyOnce, Some(5), false, b"twice")
        .await;
    assert_eq!(publ.recv().await, Packet::PubRec(5));
    publ.send_packet(&Packet::PubRel(5)).await;
    assert_eq!(publ.recv().await, Packet::PubComp(5));
    let (mut sub, ack) = common::connect_as(broker.addr, "q2-sub", false, None, None).await;
    assert!(ack.session_present);
    let mut got = Vec::new();
    while let Ok(p) = tokio::time::timeout(Duration::from_millis(500), sub.recv()).await {
        match p {
            Packet::Publish(p) => {
                got.push(p.payload.to_vec());
                sub.send_packet(&Packet::PubRec(p.pkid.expect("id"))).await;
            }
            Packet::PubRel(id) => sub.send_packet(&Packet::PubComp(id)).await,
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(got, [b"once".to_vec(), b"twice".to_vec()]);
}

#[tokio::test]
async fn an_outbound_qos2_flow_resumes_under_its_packet_id_after_a_kill() {
    let dir = tempfile::tempdir().expect("temp dir");
    let conf = config(dir.path(), "always");
    let mut broker = BinaryBroker::start_with_env(&conf, &UNFINISHED).await;
    let (mut sub, _) = common::connect_as(broker.addr, "q2-out", false, None, None).await;
    sub.subscribe(1, &[("o/#", QoS::ExactlyOnce)]).await;
    let (mut publ, _) = Raw::connect(broker.addr, "o-pub", true, 60).await;
    for (i, topic) in [(1u16, "o/released"), (2, "o/unanswered")] {
        publ.publish(topic, QoS::ExactlyOnce, Some(i), false, topic.as_bytes())
            .await;
        assert_eq!(publ.recv().await, Packet::PubRec(i));
        publ.send_packet(&Packet::PubRel(i)).await;
        assert_eq!(publ.recv().await, Packet::PubComp(i));
    }
    // The first is taken up to PUBREL (so the client has released it); the second is only
    // received.
    let first = sub.recv_publish().await;
    let second = sub.recv_publish().await;
    let (a, b) = (first.pkid.expect("id"), second.pkid.expect("id"));
    sub.send_packet(&Packet::PubRec(a)).await;
    assert_eq!(sub.recv().await, Packet::PubRel(a));
    kill_9(&mut broker).await;
    let broker = BinaryBroker::start_with_env(&conf, &UNFINISHED).await;
    let (mut sub, ack) = common::connect_as(broker.addr, "q2-out", false, None, None).await;
    assert!(ack.session_present);
    // [MQTT-4.4.0-1] the PUBREL again for the first, the PUBLISH again (DUP, same id) for
    // the second; never the first PUBLISH under a new id.
    assert_eq!(sub.recv().await, Packet::PubRel(a));
    let again = sub.recv_publish().await;
    assert_eq!(
        (again.pkid, again.dup, &again.topic[..]),
        (Some(b), true, &b"o/unanswered"[..])
    );
    sub.send_packet(&Packet::PubComp(a)).await;
    sub.send_packet(&Packet::PubRec(b)).await;
    assert_eq!(sub.recv().await, Packet::PubRel(b));
    sub.send_packet(&Packet::PubComp(b)).await;
    sub.expect_silence(Duration::from_millis(300)).await;
}

#[tokio::test]
async fn a_stored_publishers_qos2_messages_reach_online_subscribers_once_they_are_on_disk() {
    let dir = tempfile::tempdir().expect("temp dir");
    let broker = BinaryBroker::start_with_env(&config(dir.path(), "always"), &UNFINISHED).await;
    let (mut live, _) = Raw::connect(broker.addr, "live", true, 60).await;
    live.subscribe(1, &[("d", QoS::AtMostOnce)]).await;
    let (mut publ, _) = common::connect_as(broker.addr, "d-pub", false, None, None).await;
    for i in 1..=50u16 {
        publ.publish("d", QoS::ExactlyOnce, Some(i), false, &i.to_be_bytes())
            .await;
        // The PUBREC comes once it is on disk, and the delivery no earlier.
        assert_eq!(publ.recv().await, Packet::PubRec(i));
        publ.send_packet(&Packet::PubRel(i)).await;
        assert_eq!(publ.recv().await, Packet::PubComp(i));
    }
    for i in 1..=50u16 {
        assert_eq!(&live.recv_publish().await.payload[..], &i.to_be_bytes());
    }
    live.expect_silence(Duration::from_millis(300)).await;
}

#[tokio::test]
async fn a_retained_message_owed_on_subscribe_is_sent_again_after_a_kill() {
    let dir = tempfile::tempdir().expect("temp dir");
    let conf = config(dir.path(), "always");
    let mut broker = BinaryBroker::start_with_env(&conf, &UNFINISHED).await;
    publish_retained(broker.addr, "kept", 1).await;
    let (mut sub, _) = common::connect_as(broker.addr, "late", false, None, None).await;
    sub.subscribe(1, &[("kept", QoS::AtLeastOnce)]).await;
    // Received, never acknowledged; then the broker dies.
    let first = sub.recv_publish().await;
    assert!(first.retain);
    kill_9(&mut broker).await;
    let broker = BinaryBroker::start_with_env(&conf, &UNFINISHED).await;
    let (mut sub, ack) = common::connect_as(broker.addr, "late", false, None, None).await;
    assert!(ack.session_present);
    // [MQTT-4.4.0-1] sent again, under the same packet id.
    let again = sub.recv_publish().await;
    assert_eq!(
        (&again.payload[..], again.pkid, again.dup),
        (&b"1"[..], first.pkid, true)
    );
}

#[tokio::test]
async fn a_filter_too_long_to_store_is_refused_and_the_store_lives_on() {
    let dir = tempfile::tempdir().expect("temp dir");
    let broker = BinaryBroker::start_with_env(&config(dir.path(), "always"), &UNFINISHED).await;
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
