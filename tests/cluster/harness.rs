//! A NATS cluster with JetStream (real `nats-server` processes, their own ports and store
//! directories) and Tern nodes on it, on 127.0.0.2, 127.0.0.3 and 127.0.0.4.

use std::net::SocketAddr;
use std::time::Duration;

use tern::config::ClusterConfig;
use tern::message::QoS;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::common::{within, Raw, TestBroker, WAIT};

/// A free TCP port on 127.0.0.1, never the same twice in this process: ports the kernel
/// hands out for `:0` can be handed out again before the server that was given one binds it,
/// and tests here start many servers at once.
pub fn free_port() -> u16 {
    use std::sync::atomic::{AtomicU32, Ordering};
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let start = (std::process::id() % 400) * 100;
    loop {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let port = (20_000 + (start + n) % 40_000) as u16;
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
}

/// One `nats-server` of the cluster.
struct Server {
    child: Option<tokio::process::Child>,
    args: Vec<String>,
    /// Its address, and the network namespace it runs in (none: this one, 127.0.0.1).
    host: String,
    netns: Option<String>,
    port: u16,
    monitor: u16,
}

/// A NATS cluster of `n` servers with JetStream, each with its own store directory.
pub struct Nats {
    servers: Vec<Server>,
    _dir: tempfile::TempDir,
}

impl Nats {
    /// Starts `n` servers routed to each other and waits until each answers its health
    /// check with JetStream on.
    pub async fn start(n: usize) -> Nats {
        Nats::start_with(n, &[]).await
    }

    /// As `start`, each server with `extra` arguments too.
    async fn start_with(n: usize, extra: &[&str]) -> Nats {
        let dir = tempfile::tempdir().expect("temp dir");
        let ports: Vec<(u16, u16, u16)> = (0..n)
            .map(|_| (free_port(), free_port(), free_port()))
            .collect();
        let routes: Vec<String> = ports
            .iter()
            .map(|(_, c, _)| format!("nats://127.0.0.1:{c}"))
            .collect();
        let mut servers = Vec::new();
        for (i, (port, cluster, monitor)) in ports.iter().enumerate() {
            let store = dir.path().join(format!("n{i}"));
            let mut args: Vec<String> = vec![
                "-js".into(),
                "-sd".into(),
                store.display().to_string(),
                "--server_name".into(),
                format!("n{i}"),
                "-a".into(),
                "127.0.0.1".into(),
                "-p".into(),
                port.to_string(),
                "-m".into(),
                monitor.to_string(),
            ];
            args.extend(extra.iter().map(|a| a.to_string()));
            if n > 1 {
                let others: Vec<&str> = routes
                    .iter()
                    .enumerate()
                    .filter(|(j, _)| *j != i)
                    .map(|(_, r)| r.as_str())
                    .collect();
                args.extend([
                    "--cluster_name".into(),
                    "tern-test".into(),
                    "--cluster".into(),
                    format!("nats://127.0.0.1:{cluster}"),
                    "--routes".into(),
                    others.join(","),
                ]);
            }
            servers.push(Server {
                child: None,
                args,
                host: "127.0.0.1".into(),
                netns: None,
                port: *port,
                monitor: *monitor,
            });
        }
        Nats::launch(servers, dir).await
    }

    /// One server with JetStream on 127.0.0.1, with `args` too (authorization, TLS).
    pub async fn single(args: &[&str]) -> Nats {
        Nats::start_with(1, args).await
    }

    /// One server on each of `hosts`, in its namespace, routed to the others.
    pub async fn start_on(hosts: &crate::partition::Hosts, n: usize) -> Nats {
        let dir = tempfile::tempdir().expect("temp dir");
        let routes: Vec<String> = (0..n)
            .map(|i| format!("nats://{}:6222", hosts.addr(i)))
            .collect();
        let mut servers = Vec::new();
        for i in 0..n {
            let store = dir.path().join(format!("n{i}"));
            let others: Vec<&str> = routes
                .iter()
                .enumerate()
                .filter(|(j, _)| *j != i)
                .map(|(_, r)| r.as_str())
                .collect();
            let args: Vec<String> = [
                "-js",
                "-sd",
                &store.display().to_string(),
                "--server_name",
                &format!("n{i}"),
                "-a",
                &hosts.addr(i),
                "-p",
                "4222",
                "-m",
                "8222",
                "--cluster_name",
                "tern-part",
                "--cluster",
                &format!("nats://{}:6222", hosts.addr(i)),
                "--routes",
                &others.join(","),
            ]
            .iter()
            .map(|s| s.to_string())
            .collect();
            servers.push(Server {
                child: None,
                args,
                host: hosts.addr(i),
                netns: Some(hosts.ns(i)),
                port: 4222,
                monitor: 8222,
            });
        }
        Nats::launch(servers, dir).await
    }

    /// Starts every server and waits until each is healthy.
    async fn launch(servers: Vec<Server>, dir: tempfile::TempDir) -> Nats {
        let mut nats = Nats { servers, _dir: dir };
        for i in 0..nats.servers.len() {
            nats.spawn(i);
        }
        for i in 0..nats.servers.len() {
            nats.healthy(i).await;
        }
        nats
    }

    fn spawn(&mut self, i: usize) {
        let s = &mut self.servers[i];
        let mut command = match &s.netns {
            None => tokio::process::Command::new("nats-server"),
            Some(ns) => {
                let mut c = tokio::process::Command::new("ip");
                c.args(["netns", "exec", ns, "nats-server"]);
                c
            }
        };
        let child = command
            .args(&s.args)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("nats-server is installed (apt-get install nats-server)");
        s.child = Some(child);
    }

    /// Waits until server `i` says it is healthy with JetStream on.
    async fn healthy(&self, i: usize) {
        within(SLOW, self.poll_healthy(i)).await
    }

    async fn poll_healthy(&self, i: usize) {
        let (host, monitor) = (self.servers[i].host.clone(), self.servers[i].monitor);
        async {
            loop {
                if let Ok(mut s) = TcpStream::connect((host.as_str(), monitor)).await {
                    // The full check: JetStream on and its cluster's leader known.
                    let req = "GET /healthz HTTP/1.0\r\n\r\n";
                    if s.write_all(req.as_bytes()).await.is_ok() {
                        let mut reply = String::new();
                        let _ = s.read_to_string(&mut reply).await;
                        if reply.starts_with("HTTP/1.0 200") || reply.starts_with("HTTP/1.1 200") {
                            return;
                        }
                    }
                }
                // A process starting up has no event to await: look again shortly.
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
        .await
    }

    /// Every server's client URL.
    pub fn urls(&self) -> Vec<String> {
        self.servers
            .iter()
            .map(|s| format!("nats://{}:{}", s.host, s.port))
            .collect()
    }

    /// Kills server `i` with SIGKILL.
    pub async fn kill(&mut self, i: usize) {
        if let Some(mut c) = self.servers[i].child.take() {
            let _ = c.start_kill();
            let _ = within(WAIT, c.wait()).await;
        }
    }

    /// Starts server `i` again (same ports, same store).
    pub async fn restart(&mut self, i: usize) {
        self.spawn(i);
        self.healthy(i).await;
    }
}

/// How long a test waits for what takes the cluster's timings: a node is dead to the others
/// after `DEAD_AFTER`.
pub const SLOW: Duration = Duration::from_secs(40);

/// `dead_after` in the tests; `fence_after` is `FENCE_AFTER`. Fencing must wait out a
/// JetStream leader election (up to about 9 s on nats-server), or a node on the majority
/// side would fence itself while a bucket it writes to elects a new leader.
pub const DEAD_AFTER: &str = "13s";
pub const FENCE_AFTER: &str = "10s";

/// `[cluster]` for node `name` on `nats`, with a short lease interval.
pub fn cluster_config(nats: &Nats, name: &str, prefix: &str) -> ClusterConfig {
    let text = format!(
        "nats = {:?}\nnode_name = \"{name}\"\nprefix = \"{prefix}\"\nreplicas = 3\n\
         lease_interval = \"250ms\"\nfence_after = \"{FENCE_AFTER}\"\n\
         dead_after = \"{DEAD_AFTER}\"\nconnect_timeout = \"30s\"\n",
        nats.urls()
    );
    toml::from_str(&text).expect("cluster table")
}

/// Three Tern nodes, in this process, on 127.0.0.2..4, joined to `nats` under `prefix`.
pub async fn nodes(nats: &Nats, prefix: &str) -> Vec<TestBroker> {
    let mut out = Vec::new();
    for i in 0..3 {
        let cluster = cluster_config(nats, &format!("node{}", i + 1), prefix);
        let b = TestBroker::start_with(|c| {
            c.listener[0].bind = SocketAddr::from(([127, 0, 0, 2 + i as u8], 0));
            c.cluster = Some(cluster);
        })
        .await;
        out.push(b);
    }
    warm(&out.iter().map(|b| b.addr).collect::<Vec<_>>()).await;
    out
}

/// Waits until each node has claimed a client id once: a new cluster's buckets may still be
/// electing their leaders.
pub async fn warm(addrs: &[SocketAddr]) {
    for (i, addr) in addrs.iter().enumerate() {
        let (raw, _) = connect_until_accepted(*addr, &format!("warmup-{i}"), true).await;
        raw.disconnect().await;
    }
}

/// A clean-session client of `addr`.
pub async fn client(addr: SocketAddr, id: &str) -> Raw {
    let (raw, ack) = Raw::connect(addr, id, true, 60).await;
    assert_eq!(ack.code, tern::codec::ConnectReturnCode::Accepted, "{id}");
    raw
}

/// Waits until what `publisher` publishes to `probe` reaches `subscriber`, whose filter must
/// cover it: the other node's interest has reached the publisher's NATS server. Probes
/// still in flight afterwards are skipped by `next`.
pub async fn routed(publisher: &mut Raw, subscriber: &mut Raw, probe: &str) {
    within(WAIT, async {
        loop {
            publisher
                .publish(probe, QoS::AtMostOnce, None, false, b"probe")
                .await;
            let got = tokio::time::timeout(Duration::from_millis(100), subscriber.recv()).await;
            if let Ok(tern::codec::Packet::Publish(p)) = got {
                if p.payload[..] == b"probe"[..] {
                    return;
                }
            }
        }
    })
    .await
}

/// The next PUBLISH that is not a probe, acknowledged; its topic, payload and QoS.
pub async fn next(s: &mut Raw) -> (String, Vec<u8>, QoS) {
    loop {
        let p = match s.recv().await {
            tern::codec::Packet::Publish(p) => p,
            tern::codec::Packet::PubRel(id) => {
                s.send_packet(&tern::codec::Packet::PubComp(id)).await;
                continue;
            }
            other => panic!("expected PUBLISH, got {other:?}"),
        };
        if let Some(id) = p.pkid {
            let ack = if p.qos == QoS::ExactlyOnce {
                tern::codec::Packet::PubRec(id)
            } else {
                tern::codec::Packet::PubAck(id)
            };
            s.send_packet(&ack).await;
        }
        if p.payload[..] == b"probe"[..] {
            continue;
        }
        return (
            String::from_utf8_lossy(&p.topic).into_owned(),
            p.payload.to_vec(),
            p.qos,
        );
    }
}

/// The `tern` binary as node `name` on `ip`, joined to `nats` under `prefix`.
pub async fn binary_node(
    nats: &Nats,
    name: &str,
    prefix: &str,
    ip: &str,
) -> crate::common::BinaryBroker {
    binary_node_with(nats, name, prefix, ip, "").await
}

/// As `binary_node`, with `tables` (more TOML tables) in its configuration.
pub async fn binary_node_with(
    nats: &Nats,
    name: &str,
    prefix: &str,
    ip: &str,
    tables: &str,
) -> crate::common::BinaryBroker {
    let text = format!(
        "[[listener]]\nbind = \"{ip}:1883\"\n[sys]\nsys_interval = \"0s\"\n{tables}[cluster]\n\
         nats = {:?}\nnode_name = \"{name}\"\nprefix = \"{prefix}\"\nreplicas = 3\n\
         lease_interval = \"250ms\"\nfence_after = \"{FENCE_AFTER}\"\n\
         dead_after = \"{DEAD_AFTER}\"\nconnect_timeout = \"30s\"\n",
        nats.urls()
    );
    crate::common::BinaryBroker::start(&text).await
}

/// Connects `id` to `addr` until it is accepted (a node answers 0x03 while the id's owner
/// is unreachable and not yet known dead).
pub async fn connect_until_accepted(
    addr: SocketAddr,
    id: &str,
    clean: bool,
) -> (Raw, tern::codec::ConnAck) {
    within(SLOW, async {
        loop {
            let (raw, ack) = Raw::connect(addr, id, clean, 60).await;
            if ack.code == tern::codec::ConnectReturnCode::Accepted {
                return (raw, ack);
            }
            assert_eq!(ack.code, tern::codec::ConnectReturnCode::ServerUnavailable);
            // A refused client tries again after a while, as clients do.
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    })
    .await
}

/// Waits until the cluster's wills bucket under `prefix` holds a will of `node`'s.
pub async fn wait_for_will(nats: &Nats, prefix: &str, node: &str) {
    use futures_util::StreamExt;
    let wills = bucket(nats, prefix, "wills").await;
    within(WAIT, async {
        loop {
            if let Ok(mut keys) = wills.keys().await {
                while let Some(Ok(k)) = keys.next().await {
                    if k.starts_with(&format!("{node}.")) {
                        return;
                    }
                }
            }
            // The bucket has no event for "a key appeared" short of a watch: look again.
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await
}

/// A clean-session client of `addr` with a QoS 1 will on `topic`.
pub async fn with_will(addr: SocketAddr, id: &str, topic: &str, payload: &[u8]) -> Raw {
    let mut raw = Raw::open(addr).await;
    let mut connect = match crate::common::connect_packet(id, true, 60) {
        tern::codec::Packet::Connect(c) => c,
        _ => unreachable!("a CONNECT"),
    };
    connect.will = Some(tern::codec::LastWill {
        topic: bytes::Bytes::copy_from_slice(topic.as_bytes()),
        payload: bytes::Bytes::copy_from_slice(payload),
        qos: QoS::AtLeastOnce,
        retain: false,
    });
    raw.send_packet(&tern::codec::Packet::Connect(connect))
        .await;
    match raw.recv().await {
        tern::codec::Packet::ConnAck(a) => {
            assert_eq!(a.code, tern::codec::ConnectReturnCode::Accepted, "{id}")
        }
        other => panic!("expected CONNACK, got {other:?}"),
    }
    raw
}

/// The `tern` binary as node `name` inside host `i`'s namespace, on that host's NATS server.
pub async fn node_on(
    hosts: &crate::partition::Hosts,
    i: usize,
    name: &str,
    prefix: &str,
) -> crate::common::BinaryBroker {
    let addr = hosts.addr(i);
    let text = format!(
        "[[listener]]\nbind = \"{addr}:1883\"\n[sys]\nsys_interval = \"0s\"\n[cluster]\n\
         nats = [\"nats://{addr}:4222\"]\nnode_name = \"{name}\"\nprefix = \"{prefix}\"\n\
         replicas = 3\nlease_interval = \"250ms\"\nfence_after = \"{FENCE_AFTER}\"\n\
         dead_after = \"{DEAD_AFTER}\"\nconnect_timeout = \"30s\"\n"
    );
    crate::common::BinaryBroker::start_in(Some(&hosts.ns(i)), &text, &[]).await
}

/// Waits until the cluster under `prefix` has buried `node`: its lease is gone.
pub async fn wait_buried(nats: &Nats, prefix: &str, node: &str) {
    let nodes = bucket(nats, prefix, "nodes").await;
    within(SLOW, async {
        // Aging is measured on the nodes' clocks: there is no event to await here.
        while let Ok(Some(_)) = nodes.get(format!("n.{node}")).await {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await
}

/// The cluster's bucket `what` under `prefix`, read straight from NATS.
async fn bucket(nats: &Nats, prefix: &str, what: &str) -> async_nats::jetstream::kv::Store {
    let client = async_nats::connect(nats.urls()[0].as_str())
        .await
        .expect("NATS");
    async_nats::jetstream::new(client)
        .get_key_value(format!("{prefix}_{what}"))
        .await
        .expect("the bucket")
}

/// Waits until the cluster under `prefix` has `client_id` claimed by a node other than `not`.
pub async fn wait_owned_elsewhere(nats: &Nats, prefix: &str, client_id: &str, not: &str) {
    use sha2::Digest;
    let clients = bucket(nats, prefix, "clients").await;
    let key: String = sha2::Sha256::digest(client_id.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    within(SLOW, async {
        loop {
            if let Ok(Some(owner)) = clients.get(&key).await {
                if owner[..] != *not.as_bytes() {
                    return;
                }
            }
            // Another node's doing, on its clock: there is no event to await here.
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await
}

/// The cluster's retained bucket under `prefix`, read straight from NATS; `get` with
/// `retained_key` (the value is encoded: the payload is at its end).
pub async fn retained_bucket(nats: &Nats, prefix: &str) -> async_nats::jetstream::kv::Store {
    bucket(nats, prefix, "retained").await
}

/// The key of `topic` in the retained bucket.
pub fn retained_key(topic: &str) -> String {
    use sha2::Digest;
    sha2::Sha256::digest(topic.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}
