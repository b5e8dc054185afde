//! Graceful shutdown and listener limits.

mod common;

use common::{within, Raw, TestBroker, WAIT};
use tern::codec::Packet;

#[tokio::test]
async fn shutdown_closes_clients_and_returns() {
    let b = TestBroker::start().await;
    let (mut one, _) = Raw::connect(b.addr, "one", true, 60).await;
    let (mut two, _) = Raw::connect(b.addr, "two", false, 60).await;
    let addr = b.addr;
    within(WAIT, b.stop()).await;
    one.read_to_close().await;
    two.read_to_close().await;
    // Nothing listens any more.
    assert!(tokio::net::TcpStream::connect(addr).await.is_err());
}

#[tokio::test]
async fn max_connections_refuses_extra_sockets_and_counts_them() {
    let b = TestBroker::start_with(|c| c.listener[0].max_connections = 2).await;
    let (one, _) = Raw::connect(b.addr, "one", true, 60).await;
    let (_two, _) = Raw::connect(b.addr, "two", true, 60).await;
    let mut third = Raw::open(b.addr).await;
    third.expect_closed_silently().await;
    assert_eq!(b.metrics.snapshot().connections_refused, 1);
    // Closing one frees a slot.
    one.disconnect().await;
    let ok = within(WAIT, async {
        loop {
            let mut raw = Raw::open(b.addr).await;
            raw.send_packet(&common::connect_packet("three", true, 60))
                .await;
            let bytes = raw.read_to_close_or_packet().await;
            if let Some(Packet::ConnAck(ack)) = bytes {
                break ack;
            }
        }
    })
    .await;
    assert_eq!(ok.code, tern::codec::ConnectReturnCode::Accepted);
}

/// A client whose retained will ("gone", on `wills/ID`) is too large to store with
/// `retained_payload_limit = 1`: each will published is counted in `retained_refused`.
async fn mortal(b: &TestBroker, id: &str) -> Raw {
    let mut raw = Raw::open(b.addr).await;
    let mut connect = common::connect_packet(id, true, 60);
    if let Packet::Connect(c) = &mut connect {
        c.will = Some(tern::codec::LastWill {
            topic: bytes::Bytes::from(format!("wills/{id}")),
            payload: bytes::Bytes::from_static(b"gone"),
            qos: tern::message::QoS::AtMostOnce,
            retain: true,
        });
    }
    raw.send_packet(&connect).await;
    assert!(matches!(raw.recv().await, Packet::ConnAck(_)));
    raw
}

#[tokio::test]
async fn the_will_is_not_published_on_shutdown() {
    // The broker going away is not the client's failure (Mosquitto does the same).
    let b = TestBroker::start_with(|c| c.retain.retained_payload_limit = 1).await;
    let metrics = b.metrics.clone();
    // The control: a client that dies before shutdown has its will published.
    let dies = mortal(&b, "dies").await;
    drop(dies);
    within(WAIT, async {
        while metrics.snapshot().retained_refused == 0 {
            tokio::task::yield_now().await;
        }
    })
    .await;
    let mut stays = mortal(&b, "stays").await;
    within(WAIT, b.stop()).await;
    stays.read_to_close().await;
    assert_eq!(
        metrics.snapshot().retained_refused,
        1,
        "only the control's will"
    );
}
