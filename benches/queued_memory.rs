//! Resident memory per message queued for an offline persistent session.
//!
//! A subscriber with clean_session 0 subscribes at QoS 1 and leaves; a slow publisher sends
//! N messages of 4 bytes, one per read (each acknowledged before the next is sent, as a sensor
//! would); the figure is the broker's RSS growth divided by N. It runs against the `tern`
//! binary and, if it is installed, against Mosquitto with the same limits.
//!
//! `cargo bench --bench queued_memory` measures with N = 20,000; under `cargo test` (no
//! `--bench` flag) it makes a short run of 500, to show that it works.

use std::net::SocketAddr;
use std::process::Stdio;
use std::time::Duration;

use bytes::BytesMut;
use tern::codec::{self, Connect, Packet, Protocol, Subscribe};
use tern::message::QoS;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::process::{Child, Command};

type Error = Box<dyn std::error::Error>;

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
    let mut sub = Conn::open(addr, "offline", false).await?;
    sub.send(&Packet::Subscribe(Subscribe {
        pkid: 1,
        filters: vec![("q".into(), QoS::AtLeastOnce)],
    }))
    .await?;
    sub.recv().await?;
    sub.send(&Packet::Disconnect).await?;
    drop(sub);
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

/// A raw MQTT connection.
struct Conn {
    stream: TcpStream,
    buf: BytesMut,
}

impl Conn {
    async fn open(addr: SocketAddr, id: &str, clean: bool) -> Result<Conn, Error> {
        let stream = TcpStream::connect(addr).await?;
        stream.set_nodelay(true)?;
        let mut c = Conn {
            stream,
            buf: BytesMut::new(),
        };
        c.send(&Packet::Connect(Box::new(Connect {
            protocol: Protocol::V311,
            clean_session: clean,
            keep_alive: 0,
            client_id: id.into(),
            will: None,
            username: None,
            password: None,
        })))
        .await?;
        match c.recv().await? {
            Packet::ConnAck(_) => Ok(c),
            other => Err(format!("expected CONNACK, got {other:?}").into()),
        }
    }

    async fn send(&mut self, p: &Packet) -> Result<(), Error> {
        let mut buf = BytesMut::new();
        codec::encode(p, &mut buf);
        self.stream.write_all(&buf).await?;
        Ok(())
    }

    async fn recv(&mut self) -> Result<Packet, Error> {
        let read = async {
            loop {
                if let Some(p) = codec::decode(&mut self.buf, usize::MAX)? {
                    return Ok::<_, Error>(p);
                }
                if self.stream.read_buf(&mut self.buf).await? == 0 {
                    return Err("closed".into());
                }
            }
        };
        tokio::time::timeout(Duration::from_secs(10), read).await?
    }

    async fn ping(&mut self) -> Result<(), Error> {
        self.send(&Packet::PingReq).await?;
        match self.recv().await? {
            Packet::PingResp => Ok(()),
            other => Err(format!("expected PINGRESP, got {other:?}").into()),
        }
    }
}

fn rss_kib(pid: u32) -> Result<u64, Error> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .ok_or_else(|| "no VmRSS".into())
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
    start("mosquitto", "mosquitto.conf", &config, true, |line| {
        line.contains(" running").then_some(addr)
    })
    .await
}

/// Runs `program -c FILE` with `config` in FILE, and waits (10 s at most) for the first line
/// of its log (standard output, or error if `log_on_stderr`) that `ready` makes something of;
/// the log is drained after that.
async fn start<T>(
    program: &str,
    file: &str,
    config: &str,
    log_on_stderr: bool,
    ready: impl Fn(&str) -> Option<T>,
) -> Result<(Child, T), Error> {
    let dir = std::env::temp_dir().join(format!("tern-queued-memory-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let path = dir.join(file);
    std::fs::write(&path, config)?;
    let (out, err) = if log_on_stderr {
        (Stdio::null(), Stdio::piped())
    } else {
        (Stdio::piped(), Stdio::null())
    };
    let mut child = Command::new(program)
        .arg("-c")
        .arg(&path)
        .stdout(out)
        .stderr(err)
        .kill_on_drop(true)
        .spawn()?;
    let log: Box<dyn tokio::io::AsyncRead + Unpin + Send> =
        match (child.stdout.take(), child.stderr.take()) {
            (Some(o), _) => Box::new(o),
            (None, Some(e)) => Box::new(e),
            (None, None) => return Err("no log stream".into()),
        };
    let mut lines = BufReader::new(log).lines();
    let found = tokio::time::timeout(Duration::from_secs(10), async {
        while let Some(line) = lines.next_line().await? {
            if let Some(found) = ready(&line) {
                return Ok::<_, Error>(found);
            }
        }
        Err(format!("{program} exited before it was ready").into())
    })
    .await??;
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    Ok((child, found))
}
