//! What the process-level benchmarks share: a raw MQTT connection, a process's resident
//! memory, and starting a broker binary on a config file until it says it is ready.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::process::Stdio;
use std::time::Duration;

use bytes::BytesMut;
use tern::codec::{self, Connect, Packet, Protocol, Subscribe};
use tern::message::QoS;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::process::{Child, Command};

pub type Error = Box<dyn std::error::Error>;

/// A raw MQTT connection.
pub struct Conn {
    pub stream: TcpStream,
    buf: BytesMut,
}

impl Conn {
    pub async fn open(addr: SocketAddr, id: &str, clean: bool) -> Result<Conn, Error> {
        let stream = TcpStream::connect(addr).await?;
        stream.set_nodelay(true)?;
        let mut c = Conn {
            stream,
            buf: BytesMut::new(),
        };
        c.send(&Packet::Connect(Box::new(Connect {
            protocol: Protocol::V311,
            bridge: false,
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

    /// Makes a persistent session `id` subscribed to `filter` at QoS 1, then leaves it
    /// offline, so what is published to `filter` queues for it.
    pub async fn leave_subscribed(addr: SocketAddr, id: &str, filter: &str) -> Result<(), Error> {
        let mut sub = Conn::open(addr, id, false).await?;
        sub.send(&Packet::Subscribe(Subscribe {
            pkid: 1,
            filters: vec![(filter.into(), QoS::AtLeastOnce)],
        }))
        .await?;
        sub.recv().await?;
        sub.send(&Packet::Disconnect).await?;
        Ok(())
    }

    pub async fn send(&mut self, p: &Packet) -> Result<(), Error> {
        let mut buf = BytesMut::new();
        codec::encode(p, &mut buf);
        self.stream.write_all(&buf).await?;
        Ok(())
    }

    pub async fn recv(&mut self) -> Result<Packet, Error> {
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

    pub async fn ping(&mut self) -> Result<(), Error> {
        self.send(&Packet::PingReq).await?;
        match self.recv().await? {
            Packet::PingResp => Ok(()),
            other => Err(format!("expected PINGRESP, got {other:?}").into()),
        }
    }
}

pub fn rss_kib(pid: u32) -> Result<u64, Error> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .ok_or_else(|| "no VmRSS".into())
}

/// Runs `program -c FILE` with `config` in FILE, and waits (10 s at most) for the first line
/// of its log (standard output, or error if `log_on_stderr`) that `ready` makes something of;
/// the log is drained after that.
pub async fn start<T>(
    program: &str,
    file: &str,
    config: &str,
    log_on_stderr: bool,
    ready: impl Fn(&str) -> Option<T>,
    env: &[(&str, &str)],
) -> Result<(Child, T), Error> {
    let dir = std::env::temp_dir().join(format!("tern-bench-{}", std::process::id()));
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
        .envs(env.iter().copied())
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
