//! What a password check costs the rest of the broker: PBKDF2 runs off the async workers, and
//! an unknown user name costs as much as a wrong password.

mod common;

use std::time::{Duration, Instant};

use common::{login, pbkdf2_line, within, Raw, TestBroker, WAIT};
use tern::codec::{ConnectReturnCode, Packet};
use tern::message::QoS;

/// How long a refused login takes, CONNECT to CONNACK.
async fn refusal_time(addr: std::net::SocketAddr, user: &str) -> Duration {
    let t = Instant::now();
    let (_, code) = login(addr, "probe", Some(user), Some("wrong")).await;
    assert_eq!(code, ConnectReturnCode::BadUserNameOrPassword);
    t.elapsed()
}

/// One QoS 1 PUBLISH to a topic the client itself subscribes to: PUBACK and the delivery.
async fn round_trip(c: &mut Raw, id: u16) -> Duration {
    let t = Instant::now();
    c.publish("echo", QoS::AtLeastOnce, Some(id), false, b"x")
        .await;
    let mut got = (false, false);
    while got != (true, true) {
        match c.recv().await {
            Packet::PubAck(i) if i == id => got.0 = true,
            Packet::Publish(p) => {
                c.send_packet(&Packet::PubAck(p.pkid.expect("QoS 1"))).await;
                got.1 = true;
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    t.elapsed()
}

#[tokio::test]
async fn slow_password_checks_do_not_stall_other_clients() {
    // The test runtime has one thread, as the broker would with every worker busy hashing: a
    // check on an async worker would stop every other client for its whole length.
    let dir = tempfile::tempdir().expect("temp dir");
    let file = dir.path().join("passwd");
    std::fs::write(&file, pbkdf2_line("slow", "pw", 20_000)).expect("write");
    let b = TestBroker::start_with(|c| c.auth.password_file = Some(file.clone())).await;
    let check = refusal_time(b.addr, "slow").await;
    // An unknown user pays for a PBKDF2 run too, so refusals do not tell which names exist.
    let unknown = refusal_time(b.addr, "nobody").await;
    assert!(
        unknown * 2 >= check,
        "unknown user refused in {unknown:?}, wrong password in {check:?}"
    );

    let (mut echo, ack) = Raw::connect(b.addr, "echo", true, 60).await;
    assert_eq!(ack.code, ConnectReturnCode::Accepted);
    echo.subscribe(1, &[("echo", QoS::AtLeastOnce)]).await;
    let burst: Vec<_> = (0..4)
        .map(|_| tokio::spawn(refusal_time(b.addr, "slow")))
        .collect();
    let (mut worst, mut trips, mut id) = (Duration::ZERO, 0, 1u16);
    while !burst.iter().all(|h| h.is_finished()) {
        worst = worst.max(round_trip(&mut echo, id).await);
        trips += 1;
        id += 1;
    }
    for h in burst {
        within(WAIT, h).await.expect("login task");
    }
    assert!(trips >= 2, "{trips} round trips during the burst");
    assert!(
        worst * 2 < check,
        "a round trip took {worst:?} during logins that take {check:?} each"
    );
}
