//! Shared helpers for the integration tests: a real broker on an ephemeral port, a rumqttc
//! client wrapper, a raw-bytes client, and `within` so that every wait has a timeout.
#![allow(dead_code)]

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use rumqttc::{AsyncClient, Event, EventLoop, MqttOptions};
use tern::codec::{
    self, ConnAck, Connect, ConnectReturnCode, Packet, Protocol, Publish, SubAckCode, Subscribe,
};
use tern::message::QoS;
use tern::observability::metrics::Metrics;
use tern::{Broker, Config};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

mod binary;
pub mod bridging;

#[allow(unused_imports)]
pub use binary::BinaryBroker;

/// The default bound on any single wait in a test.
pub const WAIT: Duration = Duration::from_secs(10);

/// Awaits `fut`, failing the test if it takes longer than `dur`.
pub async fn within<F: Future>(dur: Duration, fut: F) -> F::Output {
    match tokio::time::timeout(dur, fut).await {
        Ok(v) => v,
        Err(_) => panic!("timed out after {dur:?}"),
    }
}

/// A broker running inside the test's runtime on 127.0.0.1 and an ephemeral port.
pub struct TestBroker {
    pub addr: SocketAddr,
    /// Every listener's address, in the order of `[[listener]]`.
    addrs: Vec<SocketAddr>,
    /// The HTTP server's address, with `[http] bind`.
    #[allow(dead_code)]
    pub http: Option<SocketAddr>,
    pub metrics: Arc<Metrics>,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<()>>,
    /// The store's directory under `TERN_TEST_PERSISTENCE=1`, removed with the broker.
    _store: Option<tempfile::TempDir>,
}

impl TestBroker {
    /// Starts a broker with the default config.
    pub async fn start() -> TestBroker {
        Self::start_with(|_| {}).await
    }

    /// Starts a broker with the default config changed by `tweak`.
    pub async fn start_with(tweak: impl FnOnce(&mut Config)) -> TestBroker {
        Self::start_hooked(None, tweak).await
    }

    /// Starts a broker embedded with `hooks` (if any), its default config changed by `tweak`.
    pub async fn start_hooked(
        hooks: Option<Arc<dyn tern::hooks::Hooks>>,
        tweak: impl FnOnce(&mut Config),
    ) -> TestBroker {
        let mut config = Config::default();
        config.listener[0].bind = "127.0.0.1:0".parse().expect("address");
        // No $SYS traffic unless a test asks for it: it would add retained messages.
        config.sys.sys_interval = Duration::ZERO;
        tweak(&mut config);
        // `TERN_TEST_PERSISTENCE=1` runs every in-process test with the store on (CI does a
        // second pass so): what holds in memory must hold with acknowledgements gated too.
        let store = std::env::var_os("TERN_TEST_PERSISTENCE")
            .filter(|v| v == "1")
            .map(|_| tempfile::tempdir().expect("temp dir"));
        if let Some(dir) = &store {
            config.persistence.persistence = true;
            config.persistence.persistence_location = dir.path().to_owned();
        }
        let mut builder = Broker::builder(config);
        if let Some(hooks) = hooks {
            builder = builder.hooks(hooks);
        }
        let broker = builder.bind().await.expect("broker binds");
        let addrs = broker.local_addrs();
        let addr = addrs[0];
        let http = broker.http_addr();
        let metrics = broker.metrics();
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(broker.run(async move {
            let _ = stopped.await;
        }));
        TestBroker {
            addr,
            addrs,
            http,
            metrics,
            stop: Some(stop),
            task: Some(task),
            _store: store,
        }
    }

    /// Every listener's address, in the order of `[[listener]]`.
    #[allow(dead_code)]
    pub fn addrs(&self) -> &[SocketAddr] {
        &self.addrs
    }

    /// Stops the broker and waits until `run` has returned.
    pub async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            within(WAIT, task).await.expect("broker task");
        }
    }
}

impl Drop for TestBroker {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

/// A rumqttc client whose event loop runs in its own task, with events delivered to a channel.
pub struct Client {
    pub client: AsyncClient,
    events: mpsc::UnboundedReceiver<Result<Event, String>>,
    task: JoinHandle<()>,
}

impl Client {
    /// Options for a client of `broker` with id `id`.
    pub fn options(addr: SocketAddr, id: &str) -> MqttOptions {
        let mut o = MqttOptions::new(id, addr.ip().to_string(), addr.port());
        o.set_keep_alive(Duration::from_secs(30));
        o
    }

    /// Connects with clean session 1 and waits for CONNACK.
    pub async fn connect(addr: SocketAddr, id: &str) -> Client {
        Self::connect_with(Self::options(addr, id)).await.0
    }

    /// Connects with these options; returns the client and its CONNACK.
    pub async fn connect_with(opts: MqttOptions) -> (Client, rumqttc::ConnAck) {
        let (client, eventloop) = AsyncClient::new(opts, 1000);
        let (tx, events) = mpsc::unbounded_channel();
        let task = tokio::spawn(drive(eventloop, tx));
        let mut c = Client {
            client,
            events,
            task,
        };
        let ack = within(WAIT, async {
            loop {
                match c.events.recv().await {
                    Some(Ok(Event::Incoming(rumqttc::Packet::ConnAck(ack)))) => break ack,
                    Some(Ok(_)) => {}
                    Some(Err(e)) => panic!("connect failed: {e}"),
                    None => panic!("event loop ended before CONNACK"),
                }
            }
        })
        .await;
        (c, ack)
    }

    /// Subscribes and waits for the SUBACK; returns its return codes.
    pub async fn subscribe(
        &mut self,
        filter: &str,
        qos: rumqttc::QoS,
    ) -> Vec<rumqttc::SubscribeReasonCode> {
        self.client
            .subscribe(filter, qos)
            .await
            .expect("subscribe queued");
        within(WAIT, async {
            loop {
                if let rumqttc::Packet::SubAck(ack) = self.next_incoming().await {
                    break ack.return_codes;
                }
            }
        })
        .await
    }

    /// Publishes (the event loop does the QoS handshake).
    pub async fn publish(
        &self,
        topic: &str,
        qos: rumqttc::QoS,
        retain: bool,
        payload: impl Into<Vec<u8>>,
    ) {
        self.client
            .publish(topic, qos, retain, payload.into())
            .await
            .expect("publish queued");
    }

    /// Publishes at QoS 1 and waits for its PUBACK.
    pub async fn publish_acked(&mut self, topic: &str, retain: bool, payload: impl Into<Vec<u8>>) {
        self.publish(topic, rumqttc::QoS::AtLeastOnce, retain, payload)
            .await;
        within(WAIT, async {
            loop {
                if let rumqttc::Packet::PubAck(_) = self.next_incoming().await {
                    break;
                }
            }
        })
        .await
    }

    /// The next incoming packet (waits at most `WAIT`).
    pub async fn next_incoming(&mut self) -> rumqttc::Packet {
        within(WAIT, async {
            loop {
                match self.events.recv().await {
                    Some(Ok(Event::Incoming(p))) => break p,
                    Some(Ok(Event::Outgoing(_))) => {}
                    Some(Err(e)) => panic!("connection error: {e}"),
                    None => panic!("event loop ended"),
                }
            }
        })
        .await
    }

    /// The next PUBLISH received (waits at most `WAIT`).
    pub async fn next_publish(&mut self) -> rumqttc::Publish {
        loop {
            if let rumqttc::Packet::Publish(p) = self.next_incoming().await {
                return p;
            }
        }
    }

    /// Asserts that no PUBLISH arrives within `dur`.
    pub async fn expect_no_publish(&mut self, dur: Duration) {
        let deadline = tokio::time::Instant::now() + dur;
        loop {
            match tokio::time::timeout_at(deadline, self.events.recv()).await {
                Err(_) => return,
                Ok(Some(Ok(Event::Incoming(rumqttc::Packet::Publish(p))))) => {
                    panic!("unexpected publish on {}: {:?}", p.topic, p.payload)
                }
                Ok(Some(Ok(_))) => {}
                Ok(Some(Err(e))) => panic!("connection error: {e}"),
                Ok(None) => panic!("event loop ended"),
            }
        }
    }

    /// Waits until the event loop reports an error (the broker closed the connection).
    pub async fn expect_disconnected(&mut self) {
        within(WAIT, async {
            loop {
                match self.events.recv().await {
                    Some(Err(_)) | None => break,
                    Some(Ok(_)) => {}
                }
            }
        })
        .await
    }

    /// Sends DISCONNECT and waits for it to be written.
    pub async fn disconnect(mut self) {
        let _ = self.client.disconnect().await;
        within(WAIT, async {
            loop {
                match self.events.recv().await {
                    Some(Ok(Event::Outgoing(rumqttc::Outgoing::Disconnect)))
                    | Some(Err(_))
                    | None => break,
                    Some(Ok(_)) => {}
                }
            }
        })
        .await;
        self.task.abort();
    }

    /// Drops the TCP connection without DISCONNECT.
    pub fn kill(self) {
        self.task.abort();
    }
}

async fn drive(mut eventloop: EventLoop, tx: mpsc::UnboundedSender<Result<Event, String>>) {
    loop {
        let ev = eventloop.poll().await.map_err(|e| e.to_string());
        let failed = ev.is_err();
        if tx.send(ev).is_err() || failed {
            return;
        }
    }
}

/// A client speaking raw bytes, for byte-exact and malformed-input tests.
pub struct Raw {
    pub stream: TcpStream,
    buf: BytesMut,
}

impl Raw {
    /// Opens a TCP connection and sends nothing.
    pub async fn open(addr: SocketAddr) -> Raw {
        let stream = within(WAIT, TcpStream::connect(addr))
            .await
            .expect("tcp connect");
        stream.set_nodelay(true).expect("nodelay");
        Raw {
            stream,
            buf: BytesMut::new(),
        }
    }

    /// Wraps a connected stream (one set up by hand, e.g. with a small receive buffer).
    pub fn from_stream(stream: TcpStream) -> Raw {
        Raw {
            stream,
            buf: BytesMut::new(),
        }
    }

    /// Opens a connection, sends CONNECT and returns the CONNACK.
    pub async fn connect(
        addr: SocketAddr,
        id: &str,
        clean: bool,
        keep_alive: u16,
    ) -> (Raw, ConnAck) {
        let mut raw = Raw::open(addr).await;
        raw.send_packet(&connect_packet(id, clean, keep_alive))
            .await;
        match raw.recv().await {
            Packet::ConnAck(ack) => (raw, ack),
            other => panic!("expected CONNACK, got {other:?}"),
        }
    }

    /// Writes raw bytes.
    pub async fn send(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).await.expect("write");
    }

    /// Encodes and writes a packet; false if the socket is closed.
    pub async fn try_send_packet(&mut self, p: &Packet) -> bool {
        let mut buf = BytesMut::new();
        codec::encode(p, &mut buf);
        self.stream.write_all(&buf).await.is_ok()
    }

    /// Encodes and writes a packet.
    pub async fn send_packet(&mut self, p: &Packet) {
        let mut buf = BytesMut::new();
        codec::encode(p, &mut buf);
        self.send(&buf).await;
    }

    /// Reads one packet (waits at most `WAIT`).
    pub async fn recv(&mut self) -> Packet {
        within(WAIT, async {
            loop {
                if let Some(p) =
                    codec::decode(&mut self.buf, usize::MAX).expect("broker sent a valid packet")
                {
                    return p;
                }
                let n = self.stream.read_buf(&mut self.buf).await.expect("read");
                assert!(n > 0, "connection closed while waiting for a packet");
            }
        })
        .await
    }

    /// Sends SUBSCRIBE and returns the SUBACK codes, checking the packet id [MQTT-3.8.4-2].
    pub async fn subscribe(&mut self, pkid: u16, filters: &[(&str, QoS)]) -> Vec<SubAckCode> {
        self.send_packet(&Packet::Subscribe(Subscribe {
            pkid,
            filters: filters.iter().map(|(f, q)| (f.to_string(), *q)).collect(),
        }))
        .await;
        match self.recv().await {
            Packet::SubAck(ack) => {
                assert_eq!(ack.pkid, pkid, "SUBACK carries the SUBSCRIBE's id");
                ack.codes
            }
            other => panic!("expected SUBACK, got {other:?}"),
        }
    }

    /// Sends a PUBLISH.
    pub async fn publish(
        &mut self,
        topic: &str,
        qos: QoS,
        pkid: Option<u16>,
        retain: bool,
        payload: &[u8],
    ) {
        self.send_packet(&Packet::Publish(Publish {
            dup: false,
            qos,
            retain,
            topic: Bytes::copy_from_slice(topic.as_bytes()),
            pkid,
            payload: Bytes::copy_from_slice(payload),
        }))
        .await;
    }

    /// Reads the next packet, which must be a PUBLISH.
    pub async fn recv_publish(&mut self) -> Publish {
        match self.recv().await {
            Packet::Publish(p) => p,
            other => panic!("expected PUBLISH, got {other:?}"),
        }
    }

    /// Reads exactly `n` raw bytes.
    pub async fn recv_bytes(&mut self, n: usize) -> Vec<u8> {
        within(WAIT, async {
            while self.buf.len() < n {
                let got = self.stream.read_buf(&mut self.buf).await.expect("read");
                assert!(
                    got > 0,
                    "connection closed after {} of {n} bytes",
                    self.buf.len()
                );
            }
            self.buf.split_to(n).to_vec()
        })
        .await
    }

    /// Sends DISCONNECT and waits for the broker to close the connection.
    pub async fn disconnect(mut self) {
        self.send(&[0xe0, 0]).await;
        self.read_to_close().await;
    }

    /// Asserts that the broker closes the connection without sending another byte.
    pub async fn expect_closed_silently(&mut self) {
        let extra = self.read_to_close().await;
        assert!(extra.is_empty(), "broker sent {extra:02x?} before closing");
    }

    /// Waits for the broker to close the connection; returns any bytes it sent first.
    pub async fn read_to_close(&mut self) -> Vec<u8> {
        self.read_to_close_within(WAIT).await
    }

    /// As `read_to_close`, waiting at most `limit`.
    pub async fn read_to_close_within(&mut self, limit: Duration) -> Vec<u8> {
        within(limit, async {
            loop {
                match self.stream.read_buf(&mut self.buf).await {
                    Ok(0) | Err(_) => return self.buf.split().to_vec(),
                    Ok(_) => {}
                }
            }
        })
        .await
    }

    /// The next packet, or `None` if the broker closes the connection first.
    pub async fn read_to_close_or_packet(&mut self) -> Option<Packet> {
        within(WAIT, async {
            loop {
                if let Ok(Some(p)) = codec::decode(&mut self.buf, usize::MAX) {
                    return Some(p);
                }
                match self.stream.read_buf(&mut self.buf).await {
                    Ok(0) | Err(_) => return None,
                    Ok(_) => {}
                }
            }
        })
        .await
    }

    /// Asserts that nothing arrives for `dur` and the connection stays open.
    pub async fn expect_silence(&mut self, dur: Duration) {
        match tokio::time::timeout(dur, self.stream.read_buf(&mut self.buf)).await {
            Err(_) => {}
            Ok(Ok(0)) => panic!("connection closed"),
            Ok(r) => panic!("unexpected data: {r:?} {:02x?}", &self.buf[..]),
        }
    }
}

/// Connects with a user name and password; returns the connection and its CONNACK code.
pub async fn login(
    addr: SocketAddr,
    id: &str,
    user: Option<&str>,
    password: Option<&str>,
) -> (Raw, ConnectReturnCode) {
    let (raw, ack) = connect_as(addr, id, true, user, password).await;
    (raw, ack.code)
}

/// Connects with this clean-session flag, user name and password; returns the CONNACK.
pub async fn connect_as(
    addr: SocketAddr,
    id: &str,
    clean: bool,
    user: Option<&str>,
    password: Option<&str>,
) -> (Raw, ConnAck) {
    let mut raw = Raw::open(addr).await;
    raw.send_packet(&Packet::Connect(Box::new(Connect {
        protocol: Protocol::V311,
        bridge: false,
        clean_session: clean,
        keep_alive: 60,
        client_id: id.into(),
        will: None,
        username: user.map(String::from),
        password: password.map(|p| Bytes::copy_from_slice(p.as_bytes())),
    })))
    .await;
    match raw.recv().await {
        Packet::ConnAck(ack) => {
            if ack.code != ConnectReturnCode::Accepted {
                assert!(!ack.session_present, "[MQTT-3.2.2-4]");
            }
            (raw, ack)
        }
        other => panic!("expected CONNACK, got {other:?}"),
    }
}

/// A `$7$` line for `user` with `iterations` rounds, as `mosquitto_passwd` would write it.
pub fn pbkdf2_line(user: &str, password: &str, iterations: u32) -> String {
    let salt = b"0123456789ab";
    let mut hash = [0u8; 64];
    pbkdf2::pbkdf2_hmac::<sha2::Sha512>(password.as_bytes(), salt, iterations, &mut hash);
    let b64 = |b: &[u8]| base64::Engine::encode(&base64::engine::general_purpose::STANDARD, b);
    format!("{user}:$7${iterations}${}${}\n", b64(salt), b64(&hash))
}

/// A broker whose `acl_file` holds `acl`; the directory holding it lives as long as the guard.
pub async fn acl_broker(acl: &str) -> (TestBroker, tempfile::TempDir) {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("acl");
    std::fs::write(&path, acl).expect("write acl");
    let b = TestBroker::start_with(|c| c.auth.acl_file = Some(path.clone())).await;
    (b, dir)
}

/// A CONNECT packet for MQTT 3.1.1.
pub fn connect_packet(id: &str, clean: bool, keep_alive: u16) -> Packet {
    Packet::Connect(Box::new(Connect {
        protocol: Protocol::V311,
        bridge: false,
        clean_session: clean,
        keep_alive,
        client_id: id.into(),
        will: None,
        username: None,
        password: None,
    }))
}

/// The bytes of a minimal MQTT 3.1.1 CONNECT with clean session 1 and keepalive 60.
pub fn connect_bytes(id: &str) -> Vec<u8> {
    let mut buf = BytesMut::new();
    codec::encode(&connect_packet(id, true, 60), &mut buf);
    buf.to_vec()
}

/// A real Mosquitto broker on 127.0.0.1, started from `config`, in which `{port}` stands for
/// the port. It is waited for until it says it runs, so the port is known to be its own; if
/// another process took the port first, Mosquitto exits and another port is tried.
pub async fn start_mosquitto(
    config: &str,
    dir: &std::path::Path,
) -> (tokio::process::Child, SocketAddr) {
    use tokio::io::AsyncBufReadExt;
    for _ in 0..5 {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("free port")
            .port();
        let conf = dir.join("mosquitto.conf");
        let text = config.replace("{port}", &port.to_string());
        std::fs::write(&conf, format!("log_dest stderr\n{text}")).expect("write conf");
        let mut child = tokio::process::Command::new("mosquitto")
            .arg("-c")
            .arg(&conf)
            .stderr(std::process::Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("mosquitto is installed (apt-get install mosquitto)");
        let stderr = child.stderr.take().expect("piped");
        let mut lines = tokio::io::BufReader::new(stderr).lines();
        let running = within(WAIT, async {
            while let Ok(Some(line)) = lines.next_line().await {
                if line.contains(" running") {
                    return true;
                }
            }
            false
        })
        .await;
        if running {
            // Keep reading its log, so a full pipe never blocks it.
            tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
            return (child, SocketAddr::from(([127, 0, 0, 1], port)));
        }
    }
    panic!("mosquitto did not start on any of 5 ports");
}

/// An HTTP answer: status and body.
pub struct HttpReply {
    pub status: u16,
    pub body: String,
    pub content_type: String,
}

impl HttpReply {
    /// The body as JSON.
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.body))
    }
}

/// Sends an HTTP request to the broker's `[http]` server, with optional basic auth and JSON
/// body, within `WAIT`.
pub async fn http(
    addr: SocketAddr,
    method: &str,
    path: &str,
    auth: Option<(&str, &str)>,
    body: Option<serde_json::Value>,
) -> HttpReply {
    let client = reqwest::Client::new();
    let method = reqwest::Method::from_bytes(method.as_bytes()).expect("method");
    let mut req = client.request(method, format!("http://{addr}{path}"));
    if let Some((user, password)) = auth {
        req = req.basic_auth(user, Some(password));
    }
    if let Some(body) = body {
        req = req
            .header("content-type", "application/json")
            .body(body.to_string());
    }
    let resp = within(WAIT, req.send()).await.expect("HTTP request");
    let status = resp.status().as_u16();
    let content_type = resp
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_owned();
    let body = within(WAIT, resp.text()).await.expect("HTTP body");
    HttpReply {
        status,
        body,
        content_type,
    }
}

/// GET without auth.
pub async fn http_get(addr: SocketAddr, path: &str) -> HttpReply {
    http(addr, "GET", path, None, None).await
}

/// A broker with `[http]` on loopback (and `tweak` applied); returns it and the HTTP address.
pub async fn http_broker(tweak: impl FnOnce(&mut Config)) -> (TestBroker, SocketAddr) {
    let broker = TestBroker::start_with(|c| {
        c.http.bind = Some("127.0.0.1:0".parse().expect("address"));
        tweak(c);
    })
    .await;
    let http = broker.http.expect("http bound");
    (broker, http)
}

/// Repeats a request until `done` holds for its answer (within `WAIT`): for state that a
/// session actor or the broker reaches a moment after the event the test awaited.
pub async fn http_until(
    addr: SocketAddr,
    method: &str,
    path: &str,
    done: impl Fn(&HttpReply) -> bool,
) -> HttpReply {
    within(WAIT, async {
        loop {
            let r = http(addr, method, path, None, None).await;
            if done(&r) {
                return r;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
}
