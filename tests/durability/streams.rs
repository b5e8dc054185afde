//! QoS 1 and QoS 2 streams from several publishers to an offline persistent subscriber and a
//! slow online one, cut by kill -9, by SIGTERM, and by two restarts in a row: every
//! acknowledged message arrives (QoS 1 at least once, QoS 2 exactly once over every life of
//! the broker), each publisher's order is kept, sessions are resumed, and the retained topic
//! holds its last acknowledged value. And to two online subscribers, one quick and one slow:
//! their acknowledgements, not the disk, may release the publishers' (`store::Owed`), and a
//! kill still loses nothing either of them was owed.

use std::collections::{BTreeMap, HashSet};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::AsyncWriteExt;
use tokio::sync::Semaphore;

use crate::common::{self, BinaryBroker, Raw};
use crate::helpers::*;
use tern::codec::{Packet, Publish};
use tern::message::QoS;

/// How a life of the broker ends.
#[derive(Clone, Copy, Debug)]
enum Cut {
    Kill,
    Term,
}

/// Messages each publisher has acknowledged before a life is cut.
const PER_LIFE: u32 = 300;
/// Messages each publisher sends in the last life, before the subscribers come back.
const AFTER: u32 = 20;
/// A bound on each stream, whatever happens.
const LIMIT: u32 = 50_000;

/// Writes a packet; false once the connection is gone (the broker was cut).
async fn try_send(raw: &mut Raw, p: &Packet) -> bool {
    let mut buf = bytes::BytesMut::new();
    tern::codec::encode(p, &mut buf);
    raw.stream.write_all(&buf).await.is_ok()
}

/// The next packet; `None` once the connection is gone or stays silent for `idle`.
async fn next(raw: &mut Raw, idle: Duration) -> Option<Packet> {
    tokio::time::timeout(idle, raw.read_to_close_or_packet())
        .await
        .ok()
        .flatten()
}

/// A persistent publisher of "NAME:i" to `t/NAME`, one message at a time, that keeps its
/// session state across the broker's lives as a client must [MQTT-4.4.0-1]: an unacknowledged
/// PUBLISH is sent again with DUP, an unanswered PUBREL again.
struct Publisher {
    name: &'static str,
    qos: QoS,
    retain: bool,
    next: u32,
    /// Sent, not acknowledged (no PUBACK / PUBREC yet).
    unacked: Option<u32>,
    /// PUBREC received, PUBCOMP not yet.
    releasing: Option<u16>,
    /// The highest i acknowledged (PUBACK, or PUBREC for QoS 2).
    acked: u32,
}

fn pkid(i: u32) -> u16 {
    (i % 60_000 + 1) as u16
}

impl Publisher {
    fn publish(&self, i: u32, dup: bool) -> Packet {
        Packet::Publish(Publish {
            dup,
            qos: self.qos,
            retain: self.retain,
            topic: format!("t/{}", self.name).into_bytes().into(),
            pkid: Some(pkid(i)),
            payload: format!("{}:{i}", self.name).into_bytes().into(),
        })
    }

    /// Publishes until `until` is acknowledged or the connection goes; each
    /// acknowledgement adds a permit to `acked`.
    async fn run(mut self, addr: SocketAddr, until: u32, acked: Arc<Semaphore>) -> Self {
        let (mut p, ack) = common::connect_as(addr, self.name, false, None, None).await;
        assert_eq!(ack.session_present, self.next > 1, "{}", self.name);
        let idle = Duration::from_secs(10);
        if let Some(id) = self.releasing {
            if !try_send(&mut p, &Packet::PubRel(id)).await {
                return self;
            }
            match next(&mut p, idle).await {
                Some(Packet::PubComp(got)) if got == id => self.releasing = None,
                Some(other) => panic!("{}: {other:?} for PUBREL {id}", self.name),
                None => return self,
            }
        }
        while self.acked < until && self.next <= LIMIT {
            let (i, dup) = match self.unacked {
                Some(i) => (i, true),
                None => (self.next, false),
            };
            self.unacked = Some(i);
            self.next = self.next.max(i + 1);
            if !try_send(&mut p, &self.publish(i, dup)).await {
                return self;
            }
            let want = match self.qos {
                QoS::ExactlyOnce => Packet::PubRec(pkid(i)),
                _ => Packet::PubAck(pkid(i)),
            };
            match next(&mut p, idle).await {
                Some(got) if got == want => {}
                Some(other) => panic!("{}: {other:?} instead of {want:?}", self.name),
                None => return self,
            }
            (self.unacked, self.acked) = (None, i);
            acked.add_permits(1);
            if self.qos == QoS::ExactlyOnce {
                self.releasing = Some(pkid(i));
                if !try_send(&mut p, &Packet::PubRel(pkid(i))).await {
                    return self;
                }
                match next(&mut p, idle).await {
                    Some(Packet::PubComp(got)) if got == pkid(i) => self.releasing = None,
                    Some(other) => panic!("{}: {other:?} for PUBREL", self.name),
                    None => return self,
                }
            }
        }
        self
    }
}

/// A persistent subscriber to `t/#` and what it took, over all its connections. As a QoS 2
/// receiver it keeps the ids it sent PUBREC for until their PUBREL [MQTT-4.3.3-2]: a PUBLISH
/// under one of them is the same message again, not a new delivery.
#[derive(Default)]
struct Taken {
    payloads: Vec<String>,
    receiving: HashSet<u16>,
}

/// Takes messages as a persistent subscriber until the connection goes or falls silent for
/// `idle`, answering each after `pace`.
async fn take(addr: SocketAddr, id: &str, taken: &Mutex<Taken>, pace: Duration, idle: Duration) {
    let (mut s, ack) = common::connect_as(addr, id, false, None, None).await;
    assert!(ack.session_present, "{id}: [MQTT-3.2.2-2]");
    while let Some(p) = next(&mut s, idle).await {
        let reply = match p {
            Packet::Publish(p) => {
                assert!(!p.retain, "{id}: a live message [MQTT-3.3.1-9]");
                let payload = String::from_utf8_lossy(&p.payload).into_owned();
                let mut t = taken.lock().expect("lock");
                match (p.qos, p.pkid) {
                    (QoS::ExactlyOnce, Some(pkid)) => {
                        if t.receiving.insert(pkid) {
                            t.payloads.push(payload);
                        }
                        Packet::PubRec(pkid)
                    }
                    (_, Some(pkid)) => {
                        t.payloads.push(payload);
                        Packet::PubAck(pkid)
                    }
                    (_, None) => panic!("{id}: QoS 0 on a QoS {:?} stream", p.qos),
                }
            }
            Packet::PubRel(pkid) => {
                taken.lock().expect("lock").receiving.remove(&pkid);
                Packet::PubComp(pkid)
            }
            other => panic!("{id}: unexpected {other:?}"),
        };
        // A slow consumer: its window fills and the rest of the stream queues behind it.
        tokio::time::sleep(pace).await;
        if !try_send(&mut s, &reply).await {
            return;
        }
    }
}

/// Takes what `id` is owed until every acknowledged message of `publishers` is there and
/// nothing more comes for a while (a copy too many would arrive then), or 30 s passed. A
/// sync held up by another test's writes can pause the stream for longer than the quiet
/// spell, so a quiet spell alone does not end it: the client reconnects and goes on.
async fn drain(addr: SocketAddr, id: &str, taken: &Mutex<Taken>, publishers: &[Publisher]) {
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let complete = |t: &Taken| {
        let got: HashSet<&str> = t.payloads.iter().map(String::as_str).collect();
        publishers
            .iter()
            .all(|p| (1..=p.acked).all(|i| got.contains(format!("{}:{i}", p.name).as_str())))
    };
    loop {
        take(addr, id, taken, Duration::ZERO, Duration::from_millis(500)).await;
        if complete(&taken.lock().expect("lock")) || std::time::Instant::now() > deadline {
            return;
        }
    }
}

/// Subscribes `id` (clean_session = 0) to `t/#` at `qos`.
async fn subscribe(addr: SocketAddr, id: &str, qos: QoS) -> Raw {
    let (mut s, _) = common::connect_as(addr, id, false, None, None).await;
    s.subscribe(1, &[("t/#", qos)]).await;
    s
}

/// The value retained on `t/NAME` now.
async fn retained_value(addr: SocketAddr, name: &str) -> u32 {
    let (mut r, _) = Raw::connect(addr, "retained-reader", true, 60).await;
    r.subscribe(1, &[(&format!("t/{name}"), QoS::AtMostOnce)])
        .await;
    let p = r.recv_publish().await;
    assert!(p.retain, "[MQTT-3.3.1-8]");
    let text = String::from_utf8_lossy(&p.payload).into_owned();
    let value = text.strip_prefix(&format!("{name}:")).expect("a value");
    value.parse().expect("a number")
}

/// Every acknowledged message of each publisher is in `got`, in the publisher's order of
/// first arrival; for QoS 2, each message that arrived did so once.
fn check(got: &[String], publishers: &[Publisher], qos: QoS, who: &str) {
    let mut counts: BTreeMap<&str, u32> = BTreeMap::new();
    for g in got {
        *counts.entry(g).or_default() += 1;
    }
    for p in publishers {
        let prefix = format!("{}:", p.name);
        let mut last = 0;
        let mut seen = HashSet::new();
        for v in got.iter().filter_map(|g| g.strip_prefix(&prefix)) {
            let v: u32 = v.parse().expect("number");
            if seen.insert(v) {
                assert!(v > last, "{who}: {}:{v} after {}:{last}", p.name, p.name);
                last = v;
            }
        }
        for i in 1..=p.acked {
            assert!(
                seen.contains(&i),
                "{who}: acknowledged {}:{i} was lost",
                p.name
            );
        }
    }
    if qos == QoS::ExactlyOnce {
        let twice: Vec<_> = counts.iter().filter(|(_, &n)| n > 1).collect();
        assert!(twice.is_empty(), "{who}: QoS 2 delivered twice: {twice:?}");
    }
}

/// Who the stream is for, beside a subscriber that takes 2 ms per message: one that is
/// offline throughout, or two online that take each as it comes. With the two, the writer
/// lets messages wait for their acknowledgements (most of their queue entries are undone
/// within a batch), so a miscount of who still owes one would release its publisher while
/// the slow subscriber is owed a message that is not on disk.
#[derive(Clone, Copy, PartialEq)]
enum To {
    OfflineAndSlow,
    QuickAndSlow,
}

impl To {
    /// The other subscribers' client ids.
    fn others(self) -> &'static [&'static str] {
        match self {
            To::OfflineAndSlow => &["offline"],
            To::QuickAndSlow => &["quick-1", "quick-2"],
        }
    }
}

/// Takes messages for `id` at `pace` during one life of the broker.
fn consume(
    addr: SocketAddr,
    id: &'static str,
    taken: &Arc<Mutex<Taken>>,
    pace: Duration,
) -> tokio::task::JoinHandle<()> {
    let taken = taken.clone();
    tokio::spawn(async move { take(addr, id, &taken, pace, Duration::from_secs(10)).await })
}

/// Runs the stream through one life per `cut`, then a last life, and checks what arrived.
async fn stream(qos: QoS, cuts: &[Cut], to: To) {
    let dir = tempfile::tempdir().expect("temp dir");
    let conf = format!(
        "{}[session]\nmax_queued_messages = 100000\nmax_inflight_messages = 10\n",
        config(dir.path(), "always")
    );
    let mut broker = BinaryBroker::start(&conf).await;
    for id in to.others().iter().chain(&["slow"]) {
        subscribe(broker.addr, id, qos).await.disconnect().await;
    }
    let mut publishers: Vec<Publisher> = ["p1", "p2", "p3"]
        .into_iter()
        .map(|name| Publisher {
            name,
            qos,
            // The first also keeps its last value retained; not with the quick subscriber,
            // whose stream is to have no record someone waits for but the messages'.
            retain: name == "p1" && to == To::OfflineAndSlow,
            next: 1,
            unacked: None,
            releasing: None,
            acked: 0,
        })
        .collect();
    let slow = Arc::new(Mutex::new(Taken::default()));
    let others: Vec<_> = to
        .others()
        .iter()
        .map(|id| (*id, Arc::new(Mutex::new(Taken::default()))))
        .collect();
    for (life, cut) in cuts.iter().enumerate() {
        let acked = Arc::new(Semaphore::new(0));
        let mut consumers = vec![consume(
            broker.addr,
            "slow",
            &slow,
            Duration::from_millis(2),
        )];
        if to == To::QuickAndSlow {
            for (id, taken) in &others {
                consumers.push(consume(broker.addr, id, taken, Duration::ZERO));
            }
        }
        let running: Vec<_> = publishers
            .drain(..)
            .map(|p| tokio::spawn(p.run(broker.addr, LIMIT, acked.clone())))
            .collect();
        // Cut mid-stream, once a few hundred messages more were acknowledged.
        let more = PER_LIFE * running.len() as u32;
        let got = tokio::time::timeout(Duration::from_secs(30), acked.acquire_many(more)).await;
        assert!(got.is_ok(), "life {life}: too few acknowledgements in 30 s");
        match cut {
            Cut::Kill => kill_9(&mut broker).await,
            Cut::Term => stop(&mut broker).await,
        }
        for p in running {
            publishers.push(p.await.expect("publisher"));
        }
        for c in consumers {
            c.await.expect("consumer");
        }
        broker = BinaryBroker::start(&conf).await;
        // The last acknowledged value, or the one sent after it if that reached the disk.
        let p1 = &publishers[0];
        if p1.retain {
            let kept = retained_value(broker.addr, p1.name).await;
            assert!(
                kept == p1.acked || Some(kept) == p1.unacked,
                "life {life} {cut:?}: retained p1:{kept}, last acknowledged p1:{}",
                p1.acked
            );
        }
    }
    // More before the subscribers come back, each publisher to the end of its batch.
    let none = Arc::new(Semaphore::new(0));
    let mut last = Vec::new();
    for p in publishers {
        let until = p.acked + AFTER;
        let p = p.run(broker.addr, until, none.clone()).await;
        assert_eq!(
            p.acked, until,
            "{}: the restarted broker acknowledges",
            p.name
        );
        last.push(p);
    }
    if last[0].retain {
        assert_eq!(retained_value(broker.addr, "p1").await, last[0].acked);
    }
    for (id, taken) in others.iter().chain([&("slow", slow)]) {
        drain(broker.addr, id, taken, &last).await;
        let t = std::mem::take(&mut *taken.lock().expect("lock"));
        check(&t.payloads, &last, qos, id);
        assert!(
            t.receiving.is_empty(),
            "{id}: PUBREL owed for {:?}",
            t.receiving
        );
    }
}

#[tokio::test]
async fn a_qos1_stream_survives_kill_9() {
    stream(QoS::AtLeastOnce, &[Cut::Kill], To::OfflineAndSlow).await;
}

#[tokio::test]
async fn a_qos2_stream_survives_kill_9() {
    stream(QoS::ExactlyOnce, &[Cut::Kill], To::OfflineAndSlow).await;
}

#[tokio::test]
async fn a_qos1_stream_survives_sigterm() {
    stream(QoS::AtLeastOnce, &[Cut::Term], To::OfflineAndSlow).await;
}

#[tokio::test]
async fn a_qos2_stream_survives_sigterm() {
    stream(QoS::ExactlyOnce, &[Cut::Term], To::OfflineAndSlow).await;
}

#[tokio::test]
async fn a_qos1_stream_survives_two_restarts_in_a_row() {
    stream(
        QoS::AtLeastOnce,
        &[Cut::Kill, Cut::Term],
        To::OfflineAndSlow,
    )
    .await;
}

#[tokio::test]
async fn a_qos2_stream_survives_two_kills_in_a_row() {
    stream(
        QoS::ExactlyOnce,
        &[Cut::Kill, Cut::Kill],
        To::OfflineAndSlow,
    )
    .await;
}

#[tokio::test]
async fn a_qos1_stream_to_a_quick_and_a_slow_subscriber_survives_two_kills() {
    stream(QoS::AtLeastOnce, &[Cut::Kill, Cut::Kill], To::QuickAndSlow).await;
}

#[tokio::test]
async fn a_qos2_stream_to_a_quick_and_a_slow_subscriber_survives_two_kills() {
    stream(QoS::ExactlyOnce, &[Cut::Kill, Cut::Kill], To::QuickAndSlow).await;
}
