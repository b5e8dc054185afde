//! Sessions and connections part cleanly on every exit: a socket reset during the handshake
//! leaves no session behind, and a taken-over connection's late packets never act on the
//! session its successor now holds.

mod common;

use std::time::Duration;

use bytes::Bytes;
use common::{pbkdf2_line, within, Raw, TestBroker, WAIT};
use tern::codec::{Connect, ConnectReturnCode, Packet, Protocol};
use tern::message::QoS;

/// Connects `id` once the listener has a free slot (`max_connections = 1` refuses at accept
/// while another connection's task is alive): so the previous connection has ended.
async fn connect_when_free(addr: std::net::SocketAddr, id: &str) -> Raw {
    within(WAIT, async {
        loop {
            let mut raw = Raw::open(addr).await;
            raw.send_packet(&common::connect_packet(id, true, 60)).await;
            match raw.read_to_close_or_packet().await {
                Some(Packet::ConnAck(a)) if a.code == ConnectReturnCode::Accepted => return raw,
                Some(other) => panic!("unexpected {other:?}"),
                // Refused at accept: the listener is still full; try again shortly.
                None => tokio::time::sleep(Duration::from_millis(20)).await,
            }
        }
    })
    .await
}

#[tokio::test]
async fn a_reset_right_after_connect_leaves_no_session() {
    // The password check (PBKDF2, ~0.3 s here) holds the handshake open, so the reset arrives
    // before the broker writes CONNACK and that write fails.
    let dir = tempfile::tempdir().expect("temp dir");
    let file = dir.path().join("passwd");
    std::fs::write(&file, pbkdf2_line("slow", "pw", 20_000)).expect("write");
    let b = TestBroker::start_with(|c| {
        c.auth.password_file = Some(file.clone());
        c.listener[0].max_connections = 1;
        c.sys.sys_interval = Duration::from_millis(100);
    })
    .await;
    for _ in 0..3 {
        let mut raw = Raw::open(b.addr).await;
        raw.send_packet(&Packet::Connect(Box::new(Connect {
            protocol: Protocol::V311,
            bridge: false,
            clean_session: true,
            keep_alive: 60,
            // An assigned id: nothing would ever reuse a leaked session.
            client_id: String::new(),
            will: None,
            username: Some("slow".into()),
            password: Some(Bytes::from_static(b"pw")),
        })))
        .await;
        // Time is the subject: the broker must have read the CONNECT before the reset.
        tokio::time::sleep(Duration::from_millis(50)).await;
        #[allow(deprecated)]
        raw.stream.set_linger(Some(Duration::ZERO)).expect("linger");
        drop(raw);
        // The doomed handshake has ended once the one connection slot is free again.
        drop(connect_when_free(b.addr, "probe").await);
    }
    let mut probe = connect_when_free(b.addr, "probe").await;
    probe
        .subscribe(1, &[("$SYS/broker/clients/total", QoS::AtMostOnce)])
        .await;
    // The first live value (not the retained one) is counted after every handshake ended.
    let total = within(WAIT, async {
        loop {
            let p = probe.recv_publish().await;
            if !p.retain {
                return p.payload;
            }
        }
    })
    .await;
    assert_eq!(&total[..], b"1", "only the probe's session is left");
}
