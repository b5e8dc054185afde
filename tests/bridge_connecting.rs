//! How a bridge gets connected: `try_private`'s fallback to a plain CONNECT when the remote
//! refuses the bridge bit, `restart_timeout`'s backoff while the remote keeps failing, and
//! TLS with `insecure` (the chain checked, the name not).

mod common;

use std::time::Duration;

use bytes::BytesMut;
use common::bridging::{bridge, pki, state_of};
use common::{within, TestBroker, WAIT};
use tern::codec::{self, ConnAck, ConnectReturnCode, Packet};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::Instant;

/// Reads the CONNECT a bridge sends to this end of a socket.
async fn read_connect(s: &mut TcpStream) -> Box<tern::codec::Connect> {
    let mut buf = BytesMut::new();
    within(WAIT, async {
        loop {
            if let Some(p) = codec::decode(&mut buf, usize::MAX).expect("a valid packet") {
                match p {
                    Packet::Connect(c) => return c,
                    other => panic!("expected CONNECT, got {other:?}"),
                }
            }
            assert!(s.read_buf(&mut buf).await.expect("read") > 0, "EOF");
        }
    })
    .await
}

async fn answer(s: &mut TcpStream, code: ConnectReturnCode) {
    let mut out = BytesMut::new();
    let ack = ConnAck {
        session_present: false,
        code,
    };
    codec::encode(&Packet::ConnAck(ack), &mut out);
    s.write_all(&out).await.expect("write");
}

/// A remote that refuses protocol level 0x84, as a broker that knows no bridges does: the
/// bridge tries again at once with a plain CONNECT, and is up with it.
#[tokio::test]
async fn try_private_falls_back_to_a_plain_connect_when_the_remote_refuses_the_bridge_bit() {
    let remote = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = remote.local_addr().expect("address");
    let edge = TestBroker::start_with(|c| c.bridge = vec![bridge(addr, &["t/# out 1"])]).await;
    let (mut first, _) = within(WAIT, remote.accept()).await.expect("accept");
    let c = read_connect(&mut first).await;
    assert!(
        c.bridge,
        "try_private is on by default: the bridge bit is set"
    );
    // [MQTT-3.1.2-2] the refusal a broker that knows no bridge bit answers with.
    answer(&mut first, ConnectReturnCode::UnacceptableProtocolVersion).await;
    drop(first);
    let started = Instant::now();
    let (mut second, _) = within(WAIT, remote.accept()).await.expect("accept");
    let c = read_connect(&mut second).await;
    assert!(!c.bridge, "the second CONNECT is a plain one");
    assert!(
        started.elapsed() < Duration::from_millis(900),
        "tried again at once, not after restart_timeout (1 s)"
    );
    answer(&mut second, ConnectReturnCode::Accepted).await;
    state_of(edge.addr, "up", b"1").await;
}

/// A remote that refuses every CONNECT: the waits between attempts start at the base and
/// double up to the cap.
#[tokio::test]
async fn restart_timeout_doubles_up_to_its_cap_while_the_remote_fails() {
    let remote = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = remote.local_addr().expect("address");
    let mut b = bridge(addr, &["t/# out 1"]);
    b.try_private = false;
    b.restart_timeout = (Duration::from_millis(100), Duration::from_millis(400));
    let _edge = TestBroker::start_with(|c| c.bridge = vec![b]).await;
    let mut attempts = Vec::new();
    for _ in 0..6 {
        let (mut s, _) = within(WAIT, remote.accept()).await.expect("accept");
        read_connect(&mut s).await;
        attempts.push(Instant::now());
        answer(&mut s, ConnectReturnCode::ServerUnavailable).await;
    }
    let gaps: Vec<u128> = attempts
        .windows(2)
        .map(|w| (w[1] - w[0]).as_millis())
        .collect();
    let least = [100, 200, 400, 400, 400];
    for (gap, least) in gaps.iter().zip(least) {
        assert!(*gap >= least, "waits {gaps:?} ms: each at least {least}");
    }
    // Capped: the last waits do not go on doubling (800, 1600 ms).
    assert!(gaps[3] < 800 && gaps[4] < 800, "waits {gaps:?} ms");
}

/// The remote's certificate is for another name: refused unless `insecure`, which still
/// wants the chain to lead to `cafile`.
#[tokio::test]
async fn insecure_accepts_a_remote_certificate_for_another_name_and_only_then() {
    let dir = tempfile::tempdir().expect("temp dir");
    pki(dir.path(), "central.example");
    let file = |name: &str| Some(dir.path().join(name));
    let central = TestBroker::start_with(|c| {
        let l = &mut c.listener[0];
        l.certfile = file("server.pem");
        l.keyfile = file("server.key");
    })
    .await;
    let mut strict = bridge(central.addr, &["t/# out 1"]);
    strict.name = "strict".into();
    strict.cafile = file("ca.pem");
    let mut lax = strict.clone();
    lax.name = "lax".into();
    lax.insecure = true;
    let stranger = tempfile::tempdir().expect("temp dir");
    pki(stranger.path(), "central.example");
    // Insecure, but the chain leads to a CA this bridge does not trust: still refused.
    let mut untrusted = lax.clone();
    untrusted.name = "untrusted".into();
    untrusted.cafile = Some(stranger.path().join("ca.pem"));
    let edge = TestBroker::start_with(|c| c.bridge = vec![strict, lax, untrusted]).await;
    state_of(edge.addr, "lax", b"1").await;
    // The other two have each tried twice (restart_timeout 1 s): 1 + 2 x 2 sockets.
    within(WAIT, async {
        while central.metrics.snapshot().connections_accepted < 5 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    assert_eq!(central.metrics.snapshot().clients_connected, 1, "only lax");
    for name in ["strict", "untrusted"] {
        let (mut w, _) = common::Raw::connect(edge.addr, "watch", true, 0).await;
        let topic = format!("$SYS/broker/connection/{name}/state");
        w.subscribe(1, &[(&topic, tern::message::QoS::AtMostOnce)])
            .await;
        assert_eq!(
            &w.recv_publish().await.payload[..],
            b"0",
            "{name} stays down"
        );
    }
}
