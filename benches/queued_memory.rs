//! Resident memory per message queued for an offline persistent session.
//!
//! A subscriber with clean_session 0 subscribes at QoS 1 and leaves; a slow publisher sends
//! N messages of 4 bytes, one per read (each acknowledged before the next is sent, as a sensor
//! would); the figure is the broker's RSS growth divided by N. It runs against the `tern`
//! binary and, if it is installed, against Mosquitto with the same limits.
//!
//! `cargo bench --bench queued_memory` measures with N = 20,000; under `cargo test` (no
//! `--bench` flag) it makes a short run of 500, to show that it works.

mod support;

use std::net::SocketAddr;
use std::time::Duration;

use bytes::BytesMut;
use support::{rss_kib, start, Conn, Error};
use tern::codec::{self, Packet};
use tern::message::QoS;
use tokio::io::AsyncWriteExt;
use tokio::process::Child;

fn main() -> Result<(), Error> {
    let full = std::env::args().any(|a| a == "--bench");
    let n = if full { 20_000 } else { 500 };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        let (tern, addr) = start_tern(n).await?;
        report("tern", n, measure(&tern, addr, n).await?);
        match start_mosquitto(n).await {
            Ok((mosquitto, addr)) => report("mosquitto", n, measure(&mosquitto, addr, n).await?),
            Err(e) => println!("mosquitto: not measured ({e})"),
        }
        Ok(())
    })
}

fn report(broker: &str, n: usize, grown_kib: u64) {
    let per_message = grown_kib * 1024 / n as u64;
    println!(
        "{broker}: {n} queued 4-byte messages, RSS +{grown_kib} KiB, {per_message} B per message"
    );
}

/// The broker's RSS growth in KiB while `n` messages are queued for an offline session.
async fn measure(broker: &Child, addr: SocketAddr, n: usize) -> Result<u64, Error> {
    let pid = broker.id().ok_or("broker exited")?;
    Conn::leave_subscribed(addr, "offline", "q").await?;
    let mut publisher = Conn::open(addr, "sensor", true).await?;
    // Warm up the publisher's own buffers before the baseline.
    publisher.ping().await?;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let before = rss_kib(pid)?;
    for i in 0..n {
        let id = (i % 65_000) as u16 + 1;
        let mut frame = BytesMut::new();
        codec::encode_publish(
            b"q",
            b"4byt",
            QoS::AtLeastOnce,
            Some(id),
            false,
            false,
            &mut frame,
        );
        publisher.stream.write_all(&frame).await?;
        match publisher.recv().await? {
            Packet::PubAck(got) if got == id => {}
            other => return Err(format!("expected PUBACK {id}, got {other:?}").into()),
        }
    }
    publisher.ping().await?;
    // The session takes the last deliveries from its mailbox after the PUBACKs went out.
    tokio::time::sleep(Duration::from_millis(300)).await;
    Ok(rss_kib(pid)?.saturating_sub(before))
}

/// The `tern` binary with room for `n` queued messages, on a port it picks and logs.
async fn start_tern(n: usize) -> Result<(Child, SocketAddr), Error> {
    let config = format!(
        "[[listener]]\nbind = \"127.0.0.1:0\"\n[session]\nmax_queued_messages = {n}\n\
         [sys]\nsys_interval = \"0s\"\n[log]\nlevel = \"info\"\n"
    );
    start(
        env!("CARGO_BIN_EXE_tern"),
        "tern.toml",
        &config,
        false,
        |line| line.split("listening addr=").nth(1)?.trim().parse().ok(),
        &[],
    )
    .await
}

/// Mosquitto with the same queue limit, once it says it runs.
async fn start_mosquitto(n: usize) -> Result<(Child, SocketAddr), Error> {
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let config = format!(
        "log_dest stderr\nlistener {port} 127.0.0.1\nallow_anonymous true\n\
         max_queued_messages {n}\nmax_inflight_messages 20\npersistence false\n"
    );
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    // Its stdout is block-buffered into a pipe; its log on stderr is not.
    start(
        "mosquitto",
        "mosquitto.conf",
        &config,
        true,
        |line| line.contains(" running").then_some(addr),
        &[],
    )
    .await
}
