//! Takeover: a CONNECT with a client id that is connected closes the old connection and hands
//! the session to the new one, with nothing lost and nothing duplicated at QoS 2, while
//! messages keep flowing.

mod common;

use std::collections::HashSet;
use std::net::SocketAddr;
use std::time::Duration;

use common::{within, Raw, TestBroker};
use tern::codec::{Packet, Publish};
use tern::message::QoS;

const N: u32 = 2000;
const WINDOW: u32 = 50;

/// Streams `N` numbered messages with full QoS 1 or QoS 2 handshakes, `WINDOW` at a time.
async fn stream(addr: SocketAddr, id: &str, topic: &'static str, qos: QoS) {
    let (mut p, _) = Raw::connect(addr, id, true, 0).await;
    let mut next = 0u32;
    while next < N {
        let batch: Vec<u32> = (next..(next + WINDOW).min(N)).collect();
        for &i in &batch {
            p.publish(topic, qos, Some(pkid(i)), false, &i.to_be_bytes())
                .await;
        }
        for &i in &batch {
            match (qos, p.recv().await) {
                (QoS::AtLeastOnce, Packet::PubAck(id)) => assert_eq!(id, pkid(i)),
                (QoS::ExactlyOnce, Packet::PubRec(id)) => {
                    assert_eq!(id, pkid(i));
                    p.send_packet(&Packet::PubRel(id)).await;
                }
                (_, other) => panic!("unexpected {other:?}"),
            }
        }
        if qos == QoS::ExactlyOnce {
            for &i in &batch {
                assert_eq!(p.recv().await, Packet::PubComp(pkid(i)));
            }
        }
        next += batch.len() as u32;
    }
}

fn pkid(i: u32) -> u16 {
    (i % 65_000) as u16 + 1
}

/// A subscriber that keeps its MQTT session state across connections, as a client with
/// clean session 0 must: QoS 2 ids awaiting PUBREL are not delivered twice (Method B).
#[derive(Default)]
struct Receiver {
    qos1: HashSet<u32>,
    qos2: HashSet<u32>,
    awaiting_rel: HashSet<u16>,
}

impl Receiver {
    async fn handle(&mut self, raw: &mut Raw, packet: Packet) {
        match packet {
            Packet::Publish(p) => {
                let v = value(&p);
                let id = p.pkid.expect("QoS > 0");
                match p.qos {
                    QoS::AtLeastOnce => {
                        self.qos1.insert(v);
                        raw.send_packet(&Packet::PubAck(id)).await;
                    }
                    QoS::ExactlyOnce => {
                        if self.awaiting_rel.insert(id) {
                            assert!(self.qos2.insert(v), "QoS 2 message {v} delivered twice");
                        }
                        raw.send_packet(&Packet::PubRec(id)).await;
                    }
                    QoS::AtMostOnce => panic!("QoS 0 on a QoS 1/2 stream"),
                }
            }
            Packet::PubRel(id) => {
                self.awaiting_rel.remove(&id);
                raw.send_packet(&Packet::PubComp(id)).await;
            }
            other => panic!("unexpected {other:?}"),
        }
    }

    fn done(&self) -> bool {
        self.qos1.len() == N as usize && self.qos2.len() == N as usize
    }
}

fn value(p: &Publish) -> u32 {
    u32::from_be_bytes(p.payload[..].try_into().expect("4-byte payload"))
}

async fn big_queue_broker() -> TestBroker {
    TestBroker::start_with(|c| {
        c.session.max_queued_messages = 4 * N as usize;
        // The QoS 2 publisher below leaves up to N/2 flows waiting for PUBREL at once.
        c.session.max_awaiting_rel = N as usize;
    })
    .await
}

#[tokio::test]
async fn subscriber_takeover_under_a_qos1_and_qos2_stream() {
    // [MQTT-3.1.4-2], [MQTT-4.3.3-1], [MQTT-4.3.3-2], [MQTT-4.4.0-1]
    let b = big_queue_broker().await;
    let (mut old, _) = Raw::connect(b.addr, "taker", false, 0).await;
    old.subscribe(
        1,
        &[("load/1", QoS::AtLeastOnce), ("load/2", QoS::ExactlyOnce)],
    )
    .await;
    let p1 = tokio::spawn(stream(b.addr, "pub1", "load/1", QoS::AtLeastOnce));
    let p2 = tokio::spawn(stream(b.addr, "pub2", "load/2", QoS::ExactlyOnce));
    let mut rx = Receiver::default();
    within(Duration::from_secs(60), async {
        let mut takeovers = 0;
        let mut current = old;
        while !rx.done() || !rx.awaiting_rel.is_empty() {
            // Take over twice while the streams run.
            let received = rx.qos1.len() + rx.qos2.len();
            if (takeovers == 0 && received > N as usize / 2)
                || (takeovers == 1 && received > N as usize)
            {
                let (new, ack) = Raw::connect(b.addr, "taker", false, 0).await;
                assert!(ack.session_present);
                let mut stale = std::mem::replace(&mut current, new);
                stale.read_to_close().await;
                takeovers += 1;
            }
            let packet = current.recv().await;
            rx.handle(&mut current, packet).await;
        }
        assert_eq!(takeovers, 2);
    })
    .await;
    p1.await.expect("QoS 1 publisher");
    p2.await.expect("QoS 2 publisher");
    assert_eq!(b.metrics.snapshot().dropped_queue_full, 0);
    assert_eq!(b.metrics.snapshot().dropped_mailbox_full, 0);
}

/// Sends message `i` on "exact" at QoS 2 with its packet id.
async fn send_exact(raw: &mut Raw, i: u32, dup: bool) {
    raw.send_packet(&Packet::Publish(Publish {
        dup,
        qos: QoS::ExactlyOnce,
        retain: false,
        topic: bytes::Bytes::from_static(b"exact"),
        pkid: Some(pkid(i)),
        payload: bytes::Bytes::copy_from_slice(&i.to_be_bytes()),
    }))
    .await;
}

#[tokio::test]
async fn publisher_takeover_mid_qos2_stream_duplicates_nothing() {
    // [MQTT-4.3.3-2]: the new connection resends what the old one left unfinished.
    let b = big_queue_broker().await;
    let (mut sub, _) = Raw::connect(b.addr, "counter", true, 0).await;
    sub.subscribe(1, &[("exact", QoS::ExactlyOnce)]).await;
    let addr = b.addr;
    let publisher = tokio::spawn(async move {
        let (mut p, _) = Raw::connect(addr, "pub-taker", false, 0).await;
        // Send PUBLISH for the first half and PUBREL for a quarter; leave the rest hanging.
        for i in 0..N / 2 {
            send_exact(&mut p, i, false).await;
        }
        for i in 0..N / 4 {
            assert_eq!(p.recv().await, Packet::PubRec(pkid(i)));
            p.send_packet(&Packet::PubRel(pkid(i))).await;
        }
        // Takeover by a new connection of the same client.
        let (mut q, ack) = Raw::connect(addr, "pub-taker", false, 0).await;
        assert!(ack.session_present);
        p.read_to_close().await;
        // The client does not know which PUBRELs arrived: it resends PUBLISH (DUP) for every
        // unfinished id, as the spec allows, then finishes each flow.
        for i in N / 4..N / 2 {
            send_exact(&mut q, i, true).await;
        }
        for i in 0..N / 4 {
            q.send_packet(&Packet::PubRel(pkid(i))).await;
        }
        for i in N / 2..N {
            send_exact(&mut q, i, false).await;
        }
        let mut open: HashSet<u16> = (0..N).map(pkid).collect();
        while !open.is_empty() {
            match q.recv().await {
                Packet::PubRec(id) => q.send_packet(&Packet::PubRel(id)).await,
                Packet::PubComp(id) => {
                    open.remove(&id);
                }
                other => panic!("unexpected {other:?}"),
            }
        }
    });
    let mut rx = Receiver::default();
    within(Duration::from_secs(60), async {
        while rx.qos2.len() < N as usize || !rx.awaiting_rel.is_empty() {
            let packet = sub.recv().await;
            rx.handle(&mut sub, packet).await;
        }
    })
    .await;
    within(Duration::from_secs(30), publisher)
        .await
        .expect("publisher");
    sub.expect_silence(Duration::from_millis(300)).await;
}
