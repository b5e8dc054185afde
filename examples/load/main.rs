//! A load generator for any MQTT 3.1.1 broker: fan-in, fan-out, pairs, latency and connection
//! scenarios over TCP, bounded in count and time, verifying every delivery.
//!
//! ```text
//! cargo run --release --example load -- --port 1883 fanin --publishers 4 --count 50000 --qos 1
//! cargo run --release --example load -- --port 1883 --broker-pid 1234 fanin --qos 1 --persistent-subscriber
//! cargo run --release --example load -- --port 1883 --broker-pid 1234 connections --clients 15000
//! ```
//! Each run prints one line of `key=value` pairs: the rate, lost / duplicated / out-of-order
//! counts per scenario, the PUBACK/PUBREC latency (`ack_p50_us`, `ack_p99_us`), the
//! generator's own CPU time and, given `--broker-pid`, the broker's CPU time, resident memory
//! and bytes it wrote to storage per message published (`broker_disk_bytes_per_msg`).

mod connections;
mod flow;
mod stats;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use bytes::BytesMut;
use clap::{Parser, Subcommand};
use tern::codec::{self, Connect, Packet, Protocol};
use tern::message::QoS;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpSocket;

use stats::proc_stats;

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
    /// Speak MQTT over WebSocket (path /mqtt, subprotocol mqtt) instead of bare TCP.
    #[arg(long)]
    websocket: bool,
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
    /// Subscribers connect to this port instead: a second broker, at the far end of a
    /// bridge from the first.
    #[arg(long)]
    subscribe_port: Option<u16>,
    /// Wait this long between subscribing and publishing: a cluster's other nodes learn a
    /// new subscription's interest asynchronously.
    #[arg(long, default_value_t = 0)]
    warmup_ms: u64,
    /// Subscribers keep a persistent session (clean_session = 0), so a broker with
    /// persistence writes every QoS 1/2 message they are owed.
    #[arg(long)]
    persistent_subscriber: bool,
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
    /// P publishers to a shared subscription group (`$share/load/...`) of M members.
    Shared {
        #[arg(long, default_value_t = 4)]
        publishers: usize,
        #[arg(long, default_value_t = 8)]
        members: usize,
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

/// A scenario's result line, and how many messages it published.
struct Ran {
    line: String,
    published: u64,
}

pub type Result<T> = std::result::Result<T, Box<dyn std::error::Error + Send + Sync>>;

/// A connection to the broker: bare TCP, or MQTT over WebSocket on it (`--websocket`).
pub type Conn = Box<dyn Duplex>;

/// What a connection is: bytes both ways.
pub trait Duplex: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Duplex for T {}

/// Set once from `--websocket`.
static WEBSOCKET: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

#[tokio::main]
async fn main() -> Result<()> {
    let args = Args::parse();
    WEBSOCKET.store(args.websocket, std::sync::atomic::Ordering::Relaxed);
    // A descriptor table that doubles mid-run stalls every socket call for an RCU grace period
    // (~10 ms each time, 60-100 ms over 15,000 connects): grown once here, before measuring.
    tern::door::fds::reserve(tern::door::fds::MAX_RESERVED)?;
    now_ns();
    let broker = SocketAddr::new(IpAddr::V4(args.host), args.port);
    let deadline = Duration::from_secs(args.timeout);
    let before = args.broker_pid.map(proc_stats);
    let started = Instant::now();
    let ran = match args.scenario {
        Scenario::Fanin { publishers, flow } => {
            let topics: Vec<String> = (0..publishers).map(|i| format!("load/fanin/{i}")).collect();
            flow::run_flow(
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
            flow::run_flow(
                "fanout",
                broker,
                &flow,
                vec!["load/fanout".into()],
                subs,
                deadline,
            )
            .await?
        }
        Scenario::Shared {
            publishers,
            members,
            flow,
        } => {
            let topics: Vec<String> = (0..publishers).map(|i| format!("load/fanin/{i}")).collect();
            let group = vec!["$share/load/load/fanin/+".to_string(); members];
            flow::run_flow("shared", broker, &flow, topics, group, deadline).await?
        }
        Scenario::Pairs { pairs, flow } => {
            let topics: Vec<String> = (0..pairs).map(|i| format!("load/pair/{i}")).collect();
            flow::run_flow("pairs", broker, &flow, topics.clone(), topics, deadline).await?
        }
        Scenario::Latency {
            rate,
            seconds,
            flow,
        } => flow::latency(broker, &flow, rate, seconds, deadline).await?,
        Scenario::Connections {
            clients,
            concurrency,
        } => Ran {
            line: connections::connections(broker, clients, concurrency, args.broker_pid).await?,
            published: 0,
        },
    };
    let (mut line, published) = (ran.line, ran.published);
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
        // What the broker wrote toward the disk, per message published.
        if published > 0 {
            let per = |a: u64, b: u64| a.saturating_sub(b) as f64 / published as f64;
            line.push_str(&format!(
                " broker_disk_bytes_per_msg={:.0}",
                per(after.disk_write_bytes, before.disk_write_bytes),
            ));
        }
    }
    println!("{line}");
    Ok(())
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
async fn connect(broker: SocketAddr, local: Option<IpAddr>, id: &str) -> Result<Conn> {
    open(broker, local, id, true).await
}

/// Connects with this clean-session flag; a persistent session is made afresh (a clean
/// connect first drops what an earlier run left).
async fn connect_session(broker: SocketAddr, id: &str, clean: bool) -> Result<Conn> {
    if !clean {
        let mut old = open(broker, None, id, true).await?;
        let mut buf = BytesMut::new();
        codec::encode(&Packet::Disconnect, &mut buf);
        old.write_all(&buf).await?;
        // The broker closes after DISCONNECT: wait for it, so the session is gone first.
        let mut rest = [0u8; 16];
        while old.read(&mut rest).await? > 0 {}
    }
    open(broker, None, id, clean).await
}

/// One connection and its CONNECT/CONNACK.
async fn open(broker: SocketAddr, local: Option<IpAddr>, id: &str, clean: bool) -> Result<Conn> {
    let socket = TcpSocket::new_v4()?;
    if let Some(ip) = local {
        no_port_at_bind(&socket)?;
        socket.bind(SocketAddr::new(ip, 0))?;
    }
    let tcp = socket.connect(broker).await?;
    tcp.set_nodelay(true)?;
    let mut stream: Conn = if WEBSOCKET.load(std::sync::atomic::Ordering::Relaxed) {
        use tokio_tungstenite::tungstenite::client::IntoClientRequest;
        let mut req = format!("ws://{broker}/mqtt").into_client_request()?;
        req.headers_mut()
            .insert("sec-websocket-protocol", "mqtt".parse()?);
        // Frames go out as they are written: the scenarios write without flushing, as on TCP.
        let mut config = tokio_tungstenite::tungstenite::protocol::WebSocketConfig::default();
        config.write_buffer_size = 0;
        let (ws, _) = tokio_tungstenite::client_async_with_config(req, tcp, Some(config)).await?;
        Box::new(tern::door::websocket::WsStream::new(ws))
    } else {
        Box::new(tcp)
    };
    let mut buf = BytesMut::new();
    codec::encode(
        &Packet::Connect(Box::new(Connect {
            protocol: Protocol::V311,
            bridge: false,
            clean_session: clean,
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
