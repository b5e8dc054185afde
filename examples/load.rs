//! A load generator for any MQTT 3.1.1 broker: fan-in, fan-out, pairs, latency and connection
//! scenarios over TCP, bounded in count and time, verifying every delivery.
//!
//! ```text
//! cargo run --release --example load -- --port 1883 fanin --publishers 4 --count 50000 --qos 1
//! cargo run --release --example load -- --port 1883 --broker-pid 1234 connections --clients 15000
//! ```
//! Each run prints one line of `key=value` pairs: the rate, lost / duplicated / out-of-order
//! counts per scenario, the generator's own CPU time and, given `--broker-pid`, the broker's
//! CPU time and resident memory.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Buf, BufMut, BytesMut};
use clap::{Parser, Subcommand};
use tern::codec::{self, Connect, Packet, Protocol, Subscribe};
use tern::message::QoS;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpSocket, TcpStream};
use tokio::sync::Notify;

#[derive(Debug, Parser)]
struct Args {
    /// Broker host (an IPv4 address).
    #[arg(long, default_value = "127.0.0.1")]
    host: Ipv4Addr,
    /// Broker port.
    #[arg(long, default_value_t = 1883)]
    port: u16,
    /// The broker's pid, to report its CPU time and resident memory.
    #[arg(long)]
    broker_pid: Option<u32>,
    /// Give up waiting for deliveries after this many seconds.
    #[arg(long, default_value_t = 60)]
    timeout: u64,
    #[command(subcommand)]
    scenario: Scenario,
}

#[derive(Debug, Clone, clap::Args)]
struct Flow {
    /// QoS of publishes and subscriptions.
    #[arg(long, default_value_t = 0)]
    qos: u8,
    /// Payload bytes (at least 20: publisher id, sequence number, timestamp).
    #[arg(long, default_value_t = 64)]
    payload: usize,
    /// Messages per publisher.
    #[arg(long, default_value_t = 50_000)]
    count: u64,
    /// Unacknowledged QoS 1/2 publishes per publisher.
    #[arg(long, default_value_t = 100)]
    window: usize,
}

#[derive(Debug, Subcommand)]
enum Scenario {
    /// P publishers to one wildcard subscriber.
    Fanin {
        #[arg(long, default_value_t = 4)]
        publishers: usize,
        #[command(flatten)]
        flow: Flow,
    },
    /// One publisher to S subscribers of the same topic.
    Fanout {
        #[arg(long, default_value_t = 8)]
        subscribers: usize,
        #[command(flatten)]
        flow: Flow,
    },
    /// N publisher/subscriber pairs, each on its own topic.
    Pairs {
        #[arg(long, default_value_t = 4)]
        pairs: usize,
        #[command(flatten)]
        flow: Flow,
    },
    /// One publisher at a fixed rate to one subscriber; end-to-end latency percentiles.
    Latency {
        /// Messages per second.
        #[arg(long, default_value_t = 2000)]
        rate: u64,
        /// Seconds to run.
        #[arg(long, default_value_t = 10)]
        seconds: u64,
        #[command(flatten)]
        flow: Flow,
    },
    /// C idle clients: connect rate and the broker's memory per connection.
    Connections {
        #[arg(long, default_value_t = 10_000)]
        clients: usize,
        /// Connection attempts in flight at once.
        #[arg(long, default_value_t = 200)]
        concurrency: usize,
    },
}

/// The generator's clock: nanoseconds since start, carried in payloads.
static START: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();

fn now_ns() -> u64 {
    START.get_or_init(Instant::now).elapsed().as_nanos() as u64
}

type Result<T> = std::result::Result<T, Box<dyn std::error::Error + Send + Sync>>;

#[tokio::main]
async fn main() -> Result<()> {
    let args = Args::parse();
    // A descriptor table that doubles mid-run stalls every socket call for an RCU grace period
    // (~10 ms each time, 60-100 ms over 15,000 connects): grown once here, before measuring.
    tern::door::fds::reserve(tern::door::fds::MAX_RESERVED)?;
    now_ns();
    let broker = SocketAddr::new(IpAddr::V4(args.host), args.port);
    let deadline = Duration::from_secs(args.timeout);
    let before = args.broker_pid.map(proc_stats);
    let started = Instant::now();
    let mut line = match args.scenario {
        Scenario::Fanin { publishers, flow } => {
            let topics: Vec<String> = (0..publishers).map(|i| format!("load/fanin/{i}")).collect();
            run_flow(
                "fanin",
                broker,
                &flow,
                topics,
                vec!["load/fanin/+".into()],
                deadline,
            )
            .await?
        }
        Scenario::Fanout { subscribers, flow } => {
            let subs = vec!["load/fanout".to_string(); subscribers];
            run_flow(
                "fanout",
                broker,
                &flow,
                vec!["load/fanout".into()],
                subs,
                deadline,
            )
            .await?
        }
        Scenario::Pairs { pairs, flow } => {
            let topics: Vec<String> = (0..pairs).map(|i| format!("load/pair/{i}")).collect();
            run_flow("pairs", broker, &flow, topics.clone(), topics, deadline).await?
        }
        Scenario::Latency {
            rate,
            seconds,
            flow,
        } => latency(broker, &flow, rate, seconds, deadline).await?,
        Scenario::Connections {
            clients,
            concurrency,
        } => connections(broker, clients, concurrency, args.broker_pid).await?,
    };
    let wall = started.elapsed().as_secs_f64();
    let me = proc_stats(std::process::id());
    line.push_str(&format!(" wall_s={wall:.2} gen_cpu_s={:.2}", me.cpu_s));
    if let (Some(pid), Some(before)) = (args.broker_pid, before) {
        let after = proc_stats(pid);
        line.push_str(&format!(
            " broker_cpu_s={:.2} broker_rss_kib={} broker_peak_rss_kib={}",
            after.cpu_s - before.cpu_s,
            after.rss_kib,
            after.peak_rss_kib
        ));
    }
    println!("{line}");
    Ok(())
}

/// CPU seconds and memory of a process, from /proc.
struct ProcStats {
    cpu_s: f64,
    rss_kib: u64,
    peak_rss_kib: u64,
}

fn proc_stats(pid: u32) -> ProcStats {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the parenthesised command name; utime and stime are the 12th and 13th.
    let rest = stat.rsplit(')').next().unwrap_or("");
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    let cpu_s = (ticks(11) + ticks(12)) / 100.0;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let kib = |key: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(key))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap_or(0)
    };
    ProcStats {
        cpu_s,
        rss_kib: kib("VmRSS:"),
        peak_rss_kib: kib("VmHWM:"),
    }
}

/// Busy and total clock ticks of each CPU so far, from /proc/stat (empty where it is missing).
fn cpu_ticks() -> Vec<(u64, u64)> {
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    stat.lines()
        .filter(|l| l.starts_with("cpu") && !l.starts_with("cpu "))
        .map(|l| {
            let v: Vec<u64> = l
                .split_whitespace()
                .skip(1)
                .filter_map(|f| f.parse().ok())
                .collect();
            let total: u64 = v.iter().sum();
            // idle and iowait are the 4th and 5th.
            let idle = v.get(3).copied().unwrap_or(0) + v.get(4).copied().unwrap_or(0);
            (total - idle, total)
        })
        .collect()
}

/// Each CPU's busy share between two `cpu_ticks` readings, as "cpu0:71,cpu1:93" (percent).
fn cpu_busy(before: &[(u64, u64)], after: &[(u64, u64)]) -> String {
    before
        .iter()
        .zip(after)
        .enumerate()
        .map(|(i, ((b0, t0), (b1, t1)))| {
            let pct = 100 * (b1 - b0) / (t1 - t0).max(1);
            format!("cpu{i}:{pct}")
        })
        .collect::<Vec<_>>()
        .join(",")
}

fn qos_of(q: u8) -> QoS {
    QoS::from_u8(q.min(2)).unwrap_or(QoS::AtMostOnce)
}

/// Lets connect() choose the source port for the whole address pair, instead of bind()
/// reserving one port for the address alone (Linux's IP_BIND_ADDRESS_NO_PORT).
fn no_port_at_bind(socket: &TcpSocket) -> Result<()> {
    use std::os::fd::AsRawFd;
    let on: libc::c_int = 1;
    // SAFETY: a valid socket descriptor, and a pointer to a c_int with its size.
    let r = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::IPPROTO_IP,
            libc::IP_BIND_ADDRESS_NO_PORT,
            (&on as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if r != 0 {
        return Err(std::io::Error::last_os_error().into());
    }
    Ok(())
}

/// Connects and completes CONNECT/CONNACK, from a chosen local address.
async fn connect(broker: SocketAddr, local: Option<IpAddr>, id: &str) -> Result<TcpStream> {
    let socket = TcpSocket::new_v4()?;
    if let Some(ip) = local {
        no_port_at_bind(&socket)?;
        socket.bind(SocketAddr::new(ip, 0))?;
    }
    let mut stream = socket.connect(broker).await?;
    stream.set_nodelay(true)?;
    let mut buf = BytesMut::new();
    codec::encode(
        &Packet::Connect(Box::new(Connect {
            protocol: Protocol::V311,
            clean_session: true,
            // Some brokers (rumqttd) refuse keepalive 0; runs are far shorter than this.
            keep_alive: 600,
            client_id: id.into(),
            will: None,
            username: None,
            password: None,
        })),
        &mut buf,
    );
    stream.write_all(&buf).await?;
    let mut ack = [0u8; 4];
    stream.read_exact(&mut ack).await?;
    if ack != [0x20, 2, 0, 0] {
        return Err(format!("CONNACK refused: {ack:02x?}").into());
    }
    Ok(stream)
}

/// Per-publisher delivery accounting at one subscriber.
#[derive(Default, Clone)]
struct Tally {
    seen: Vec<u64>,
    max_seq: Option<u64>,
    unique: u64,
    dup: u64,
    out_of_order: u64,
}

impl Tally {
    fn record(&mut self, seq: u64) {
        let (word, bit) = ((seq / 64) as usize, seq % 64);
        if self.seen.len() <= word {
            self.seen.resize(word + 1, 0);
        }
        if self.seen[word] & (1 << bit) != 0 {
            self.dup += 1;
            return;
        }
        self.seen[word] |= 1 << bit;
        self.unique += 1;
        if self.max_seq.is_some_and(|m| seq < m) {
            self.out_of_order += 1;
        }
        self.max_seq = Some(self.max_seq.map_or(seq, |m| m.max(seq)));
    }
}

/// What one subscriber saw.
struct SubReport {
    tallies: Vec<Tally>,
    latencies_us: Vec<u32>,
    last_ns: u64,
}

async fn subscribe(stream: &mut TcpStream, filter: &str, qos: QoS) -> Result<()> {
    let mut buf = BytesMut::new();
    codec::encode(
        &Packet::Subscribe(Subscribe {
            pkid: 1,
            filters: vec![(filter.into(), qos)],
        }),
        &mut buf,
    );
    stream.write_all(&buf).await?;
    let mut ack = [0u8; 5];
    stream.read_exact(&mut ack).await?;
    if ack[0] != 0x90 || ack[4] == 0x80 {
        return Err(format!("SUBACK refused: {ack:02x?}").into());
    }
    Ok(())
}

/// Reads deliveries until `expected` unique messages arrived or `deadline` passed.
async fn subscriber(
    mut stream: TcpStream,
    publishers: usize,
    expected: u64,
    keep_latencies: bool,
    deadline: Instant,
) -> Result<SubReport> {
    let mut tallies = vec![Tally::default(); publishers];
    let mut latencies_us = Vec::new();
    let mut rbuf = BytesMut::with_capacity(64 * 1024);
    let mut wbuf = BytesMut::new();
    let mut unique = 0u64;
    let mut last_ns = 0;
    while unique < expected {
        // Stop at the deadline, or after 5 s without a delivery: what is missing is lost.
        let left = deadline
            .saturating_duration_since(Instant::now())
            .min(Duration::from_secs(5));
        let n = match tokio::time::timeout(left, stream.read_buf(&mut rbuf)).await {
            Ok(r) => r?,
            Err(_) => break,
        };
        if n == 0 {
            return Err("broker closed a subscriber".into());
        }
        while let Some(packet) = codec::decode(&mut rbuf, usize::MAX)? {
            match packet {
                Packet::Publish(p) => {
                    let mut header = &p.payload[..];
                    if header.len() < 20 {
                        continue;
                    }
                    let publisher = header.get_u32() as usize;
                    let seq = header.get_u64();
                    let sent = header.get_u64();
                    last_ns = now_ns();
                    if keep_latencies {
                        latencies_us.push(((last_ns.saturating_sub(sent)) / 1000) as u32);
                    }
                    if let Some(t) = tallies.get_mut(publisher) {
                        let before = t.unique;
                        t.record(seq);
                        unique += t.unique - before;
                    }
                    match (p.qos, p.pkid) {
                        (QoS::AtLeastOnce, Some(id)) => {
                            codec::encode(&Packet::PubAck(id), &mut wbuf)
                        }
                        (QoS::ExactlyOnce, Some(id)) => {
                            codec::encode(&Packet::PubRec(id), &mut wbuf)
                        }
                        _ => {}
                    }
                }
                Packet::PubRel(id) => codec::encode(&Packet::PubComp(id), &mut wbuf),
                _ => {}
            }
        }
        if !wbuf.is_empty() {
            stream.write_all(&wbuf).await?;
            wbuf.clear();
        }
    }
    Ok(SubReport {
        tallies,
        latencies_us,
        last_ns,
    })
}

/// Publisher state shared by its writer and its acknowledgement reader.
struct Window {
    inflight: AtomicUsize,
    acked: AtomicU64,
    wake: Notify,
    pubrels: parking_lot::Mutex<Vec<u16>>,
}

/// Publishes `count` messages; `rate` of 0 means as fast as the window allows.
async fn publisher(
    stream: TcpStream,
    index: u32,
    topic: String,
    flow: Flow,
    rate: u64,
) -> Result<u64> {
    let qos = qos_of(flow.qos);
    let (rd, mut wr) = stream.into_split();
    let window = Arc::new(Window {
        inflight: AtomicUsize::new(0),
        acked: AtomicU64::new(0),
        wake: Notify::new(),
        pubrels: parking_lot::Mutex::new(Vec::new()),
    });
    let reader =
        (qos != QoS::AtMostOnce).then(|| tokio::spawn(read_acks(rd, window.clone(), flow.count)));
    let mut payload = vec![0u8; flow.payload.max(20)];
    let mut wbuf = BytesMut::with_capacity(64 * 1024);
    let started = Instant::now();
    let mut seq = 0u64;
    while seq < flow.count {
        for id in window.pubrels.lock().drain(..) {
            codec::encode(&Packet::PubRel(id), &mut wbuf);
        }
        let mut allowed = flow.count - seq;
        if rate > 0 {
            let due = (started.elapsed().as_secs_f64() * rate as f64) as u64;
            allowed = allowed.min(due.saturating_sub(seq));
        }
        if qos != QoS::AtMostOnce {
            let room = flow
                .window
                .saturating_sub(window.inflight.load(Ordering::Acquire));
            allowed = allowed.min(room as u64);
        }
        let batch = allowed.min(64);
        for _ in 0..batch {
            let mut head = &mut payload[..20];
            head.put_u32(index);
            head.put_u64(seq);
            head.put_u64(now_ns());
            let pkid = (qos != QoS::AtMostOnce).then_some((seq % 65_535) as u16 + 1);
            codec::encode_publish(
                topic.as_bytes(),
                &payload,
                qos,
                pkid,
                false,
                false,
                &mut wbuf,
            );
            if pkid.is_some() {
                window.inflight.fetch_add(1, Ordering::AcqRel);
            }
            seq += 1;
        }
        if !wbuf.is_empty() {
            wr.write_all(&wbuf).await?;
            wbuf.clear();
        } else if rate > 0 && qos == QoS::AtMostOnce {
            tokio::time::sleep(Duration::from_millis(1)).await;
        } else {
            // Wait for an acknowledgement (or the next rate tick).
            let _ = tokio::time::timeout(Duration::from_millis(1), window.wake.notified()).await;
        }
    }
    if let Some(reader) = reader {
        // Finish outstanding QoS 2 handshakes while the reader collects the last acks.
        while window.acked.load(Ordering::Acquire) < flow.count {
            let rels: Vec<u16> = window.pubrels.lock().drain(..).collect();
            for id in rels {
                codec::encode(&Packet::PubRel(id), &mut wbuf);
            }
            if !wbuf.is_empty() {
                wr.write_all(&wbuf).await?;
                wbuf.clear();
            }
            let _ = tokio::time::timeout(Duration::from_millis(1), window.wake.notified()).await;
            if reader.is_finished() {
                break;
            }
        }
        reader.await??;
    }
    Ok(seq)
}

async fn read_acks(mut rd: OwnedReadHalf, window: Arc<Window>, count: u64) -> Result<()> {
    let mut buf = BytesMut::with_capacity(16 * 1024);
    while window.acked.load(Ordering::Acquire) < count {
        if rd.read_buf(&mut buf).await? == 0 {
            return Err("broker closed a publisher".into());
        }
        while let Some(p) = codec::decode(&mut buf, usize::MAX)? {
            match p {
                Packet::PubAck(_) | Packet::PubComp(_) => {
                    window.inflight.fetch_sub(1, Ordering::AcqRel);
                    window.acked.fetch_add(1, Ordering::AcqRel);
                }
                Packet::PubRec(id) => window.pubrels.lock().push(id),
                _ => {}
            }
        }
        window.wake.notify_one();
    }
    Ok(())
}

/// Runs publishers on `topics` (one each) and subscribers on `filters` (one each); every
/// subscriber is owed every message of every publisher whose topic its filter matches.
async fn run_flow(
    name: &str,
    broker: SocketAddr,
    flow: &Flow,
    topics: Vec<String>,
    filters: Vec<String>,
    deadline: Duration,
) -> Result<String> {
    let qos = qos_of(flow.qos);
    let pairs = name == "pairs";
    let mut subs = Vec::new();
    for (i, filter) in filters.iter().enumerate() {
        let mut s = connect(broker, None, &format!("load-sub-{i}")).await?;
        subscribe(&mut s, filter, qos).await?;
        let expected = if pairs {
            flow.count
        } else {
            flow.count * topics.len() as u64
        };
        subs.push((s, expected));
    }
    let mut pubs = Vec::new();
    for (i, _) in topics.iter().enumerate() {
        pubs.push(connect(broker, None, &format!("load-pub-{i}")).await?);
    }
    let until = Instant::now() + deadline;
    let started_ns = now_ns();
    let sub_tasks: Vec<_> = subs
        .into_iter()
        .map(|(s, expected)| tokio::spawn(subscriber(s, topics.len(), expected, false, until)))
        .collect();
    let pub_tasks: Vec<_> = pubs
        .into_iter()
        .zip(topics.iter().cloned())
        .enumerate()
        .map(|(i, (s, topic))| tokio::spawn(publisher(s, i as u32, topic, flow.clone(), 0)))
        .collect();
    for t in pub_tasks {
        t.await??;
    }
    let mut delivered = 0u64;
    let (mut lost, mut dup, mut ooo) = (0u64, 0u64, 0u64);
    let mut last_ns = started_ns;
    for (i, t) in sub_tasks.into_iter().enumerate() {
        let report = t.await??;
        last_ns = last_ns.max(report.last_ns);
        for (p, tally) in report.tallies.iter().enumerate() {
            if pairs && p != i {
                continue;
            }
            delivered += tally.unique;
            lost += flow.count - tally.unique;
            dup += tally.dup;
            ooo += tally.out_of_order;
        }
    }
    let secs = (last_ns - started_ns) as f64 / 1e9;
    Ok(format!(
        "scenario={name} qos={} payload={} publishers={} subscribers={} delivered={delivered} rate_msg_s={:.0} lost={lost} dup={dup} out_of_order={ooo}",
        flow.qos,
        flow.payload.max(20),
        topics.len(),
        filters.len(),
        delivered as f64 / secs.max(1e-9),
    ))
}

async fn latency(
    broker: SocketAddr,
    flow: &Flow,
    rate: u64,
    seconds: u64,
    deadline: Duration,
) -> Result<String> {
    let qos = qos_of(flow.qos);
    let count = rate * seconds;
    let mut s = connect(broker, None, "load-lat-sub").await?;
    subscribe(&mut s, "load/latency", qos).await?;
    let p = connect(broker, None, "load-lat-pub").await?;
    let until = Instant::now() + deadline + Duration::from_secs(seconds);
    let sub = tokio::spawn(subscriber(s, 1, count, true, until));
    let flow = Flow {
        count,
        ..flow.clone()
    };
    tokio::spawn(publisher(p, 0, "load/latency".into(), flow.clone(), rate)).await??;
    let mut report = sub.await??;
    let tally = &report.tallies[0];
    let l = &mut report.latencies_us;
    l.sort_unstable();
    let pct = |q: f64| percentile(l, q);
    Ok(format!(
        "scenario=latency qos={} payload={} rate_msg_s={rate} delivered={} lost={} dup={} out_of_order={} p50_us={} p99_us={} p999_us={} max_us={}",
        flow.qos,
        flow.payload.max(20),
        tally.unique,
        count - tally.unique,
        tally.dup,
        tally.out_of_order,
        pct(0.50),
        pct(0.99),
        pct(0.999),
        l.last().copied().unwrap_or(0),
    ))
}

/// The `q` quantile of sorted `values` (the default if empty).
fn percentile<T: Copy + Default>(values: &[T], q: f64) -> T {
    values
        .get(((values.len() as f64 * q) as usize).min(values.len().saturating_sub(1)))
        .copied()
        .unwrap_or_default()
}

async fn connections(
    broker: SocketAddr,
    clients: usize,
    concurrency: usize,
    pid: Option<u32>,
) -> Result<String> {
    let before = pid.map(proc_stats);
    let rss_before = before.as_ref().map_or(0, |s| s.rss_kib);
    let ticks_before = cpu_ticks();
    let started = Instant::now();
    let next = Arc::new(AtomicUsize::new(0));
    let mut workers = Vec::new();
    for _ in 0..concurrency.max(1) {
        let next = next.clone();
        workers.push(tokio::spawn(async move {
            let mut held: Vec<(OwnedReadHalf, OwnedWriteHalf)> = Vec::new();
            let mut took_us: Vec<u64> = Vec::new();
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= clients {
                    return Ok::<_, Box<dyn std::error::Error + Send + Sync>>((held, took_us));
                }
                // Source addresses spread over 127.0.0.2-33: connect() picks a port per address,
                // so no search runs through thousands of ports already in use toward the
                // broker (that search made the generator, not the broker, set the rate), and
                // past 64k connections each address still has ports of its own.
                let local = Some(IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2 + (i % 32) as u8)));
                let began = Instant::now();
                let s = connect(broker, local, &format!("idle-{i}")).await?;
                took_us.push(began.elapsed().as_micros() as u64);
                held.push(s.into_split());
            }
        }));
    }
    let mut held = Vec::new();
    let mut took_us = Vec::new();
    for w in workers {
        let (h, t) = w.await??;
        held.push(h);
        took_us.extend(t);
    }
    took_us.sort_unstable();
    let secs = started.elapsed().as_secs_f64();
    // Which side was saturated while connecting (the kernel's handshake work lands on both).
    let busy = cpu_busy(&ticks_before, &cpu_ticks());
    // The broker's CPU time for the connects alone (the run's total includes the closes).
    let connect_cpu = match (&before, pid.map(proc_stats)) {
        (Some(b), Some(a)) => a.cpu_s - b.cpu_s,
        _ => 0.0,
    };
    // Let the broker settle before reading its memory.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let rss_after = pid.map(|p| proc_stats(p).rss_kib).unwrap_or(0);
    let per_conn = (rss_after.saturating_sub(rss_before)) as f64 * 1024.0 / clients as f64;
    drop(held);
    Ok(format!(
        "scenario=connections clients={clients} connect_rate_s={:.0} connect_p50_us={} connect_p99_us={} broker_connect_cpu_s={connect_cpu:.2} cpu_busy_pct={busy} rss_before_kib={rss_before} rss_after_kib={rss_after} bytes_per_conn={per_conn:.0}",
        clients as f64 / secs,
        percentile(&took_us, 0.50),
        percentile(&took_us, 0.99),
    ))
}
