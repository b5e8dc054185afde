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
    let (mut one, _) = Raw::connect(b.addr, "one", true, 60).await;
    let (_two, _) = Raw::connect(b.addr, "two", true, 60).await;
    let mut third = Raw::open(b.addr).await;
    third.expect_closed_silently().await;
    assert_eq!(b.metrics.snapshot().connections_refused, 1);
    // Closing one frees a slot.
    one.send(&[0xe0, 0]).await;
    one.read_to_close().await;
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
