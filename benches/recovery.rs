//! A restart with a million messages queued on disk: how long until the broker serves again,
//! and its resident memory after recovery against before the kill.
//!
//! A subscriber with clean_session 0 subscribes at QoS 1 and leaves; publishers queue N
//! messages of 64 bytes for it (each acknowledged, so each on disk); the broker is killed
//! with SIGKILL and started again on the same directory. The figures: the time from the new
//! process's start to its listening line and to the subscriber's CONNACK (session present),
//! RSS before the kill and after recovery, and that all N arrive after it.
//!
//! `cargo bench --bench recovery` measures with N = 1,000,000 (about a minute); under
//! `cargo test` it makes a short run of 2,000, to show that it works.

mod support;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use support::{rss_kib, start, Conn, Error};
use tern::codec::{self, Packet};
use tern::message::QoS;
use tokio::io::AsyncWriteExt;
use tokio::process::Child;

/// Unacknowledged publishes each publisher keeps in flight.
const WINDOW: usize = 100;
const PUBLISHERS: usize = 4;

fn main() -> Result<(), Error> {
    let full = std::env::args().any(|a| a == "--bench");
    let n = if full { 1_000_000 } else { 2_000 };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    rt.block_on(run(n))
}

async fn run(n: usize) -> Result<(), Error> {
    let dir = tempfile::tempdir()?;
    let config = format!(
        "[[listener]]\nbind = \"127.0.0.1:0\"\n[session]\nmax_queued_messages = {}\n\
         [sys]\nsys_interval = \"0s\"\n[log]\nlevel = \"info\"\n\
         [persistence]\npersistence = true\npersistence_location = \"{}\"\nsync = \"never\"\n",
        n + 1000,
        dir.path().display()
    );
    let (mut broker, addr) = start_tern(&config).await?;
    Conn::leave_subscribed(addr, "offline", "q/#").await?;
    let began = Instant::now();
    let fill: Vec<_> = (0..PUBLISHERS)
        .map(|i| tokio::spawn(publish(addr, i, n / PUBLISHERS)))
        .collect();
    for f in fill {
        f.await
            .map_err(|e| e.to_string())?
            .map_err(|e| e.to_string())?;
    }
    let fill_s = began.elapsed().as_secs_f64();
    let pid = broker.id().ok_or("broker exited")?;
    // The session takes the last deliveries from its mailbox after the PUBACKs went out.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let before = rss_kib(pid)?;
    broker.start_kill()?;
    broker.wait().await?;

    let restarted = Instant::now();
    let (broker, addr) = start_tern(&config).await?;
    let listening_s = restarted.elapsed().as_secs_f64();
    let pid = broker.id().ok_or("broker exited")?;
    let after = rss_kib(pid)?;
    let mut sub = Conn::open(addr, "offline", false).await?;
    let connack_s = restarted.elapsed().as_secs_f64();
    let got = drain(&mut sub, n).await?;
    println!(
        "recovery: {n} queued messages of 64 B (filled in {fill_s:.1} s); after kill -9 the \
         broker listened in {listening_s:.2} s and resumed the session in {connack_s:.2} s; \
         RSS {before} KiB before, {after} KiB after recovery ({:.2}x); {got} of {n} delivered",
        after as f64 / before.max(1) as f64
    );
    if got != n {
        return Err(format!("{} queued messages lost", n - got).into());
    }
    drop(broker);
    Ok(())
}

async fn start_tern(config: &str) -> Result<(Child, SocketAddr), Error> {
    let (child, addr) = start(
        env!("CARGO_BIN_EXE_tern"),
        "tern.toml",
        config,
        false,
        |line| line.split("listening addr=").nth(1)?.trim().parse().ok(),
        &[],
    )
    .await?;
    Ok((child, addr))
}

/// Publishes `n` QoS 1 messages to `q/I`, `WINDOW` at a time, each batch acknowledged.
async fn publish(addr: SocketAddr, i: usize, n: usize) -> Result<(), String> {
    let mut p = Conn::open(addr, &format!("filler-{i}"), true)
        .await
        .map_err(|e| e.to_string())?;
    let topic = format!("q/{i}");
    let payload = [b'x'; 64];
    let mut sent = 0;
    while sent < n {
        let batch = WINDOW.min(n - sent);
        let mut frames = BytesMut::new();
        for k in 0..batch {
            let id = ((sent + k) % 65_000) as u16 + 1;
            let (qos, retain, dup) = (QoS::AtLeastOnce, false, false);
            codec::encode_publish(
                topic.as_bytes(),
                &payload,
                qos,
                Some(id),
                retain,
                dup,
                &mut frames,
            );
        }
        p.stream
            .write_all(&frames)
            .await
            .map_err(|e| e.to_string())?;
        for _ in 0..batch {
            match p.recv().await.map_err(|e| e.to_string())? {
                Packet::PubAck(_) => {}
                other => return Err(format!("expected PUBACK, got {other:?}")),
            }
        }
        sent += batch;
    }
    Ok(())
}

/// Takes deliveries (acknowledging each) until `n` arrived or none came for 5 s.
async fn drain(sub: &mut Conn, n: usize) -> Result<usize, Error> {
    let mut got = 0;
    while got < n {
        let Ok(p) = tokio::time::timeout(Duration::from_secs(5), sub.recv()).await else {
            break;
        };
        if let Packet::Publish(p) = p? {
            got += 1;
            if let Some(id) = p.pkid {
                sub.send(&Packet::PubAck(id)).await?;
            }
        }
    }
    Ok(got)
}
