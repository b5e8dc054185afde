//! The connection task: one per socket. It owns the socket (its only reader and writer),
//! decodes frames, applies protocol checks, publishes through the router, hands session work
//! to the session actor, keeps the will, and enforces keepalive.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::oneshot;
use tokio::time::{sleep_until, timeout, Instant, Sleep};
use tracing::{debug, info, trace, Instrument};

use crate::backlog::Backlog;
use crate::broker::Shared;
use crate::codec::{self, ConnAck, ConnectReturnCode, DecodeError, Packet};
use crate::keepalive::KeepAlive;
use crate::message::{next_id, ConnId, Message, QoS};
use crate::metrics::Metrics;
use crate::outbound::{self, OutboundRx};
use crate::protocol::{self, Accepted, ProtocolError, Refusal};
use crate::registry::{Opened, SessionHandle};
use crate::session::{Attach, ConnLink, Kick, Outbound, SessionCmd};

/// Why a connection ended; logged once per connection.
#[derive(Debug, thiserror::Error)]
pub enum CloseReason {
    /// The client sent DISCONNECT.
    #[error("client disconnected")]
    Disconnect,
    /// The socket reached EOF without DISCONNECT.
    #[error("connection closed by peer")]
    PeerClosed,
    /// A socket error.
    #[error("I/O error: {0}")]
    Io(#[from] std::io::Error),
    /// A frame could not be decoded.
    #[error("malformed packet: {0}")]
    Decode(#[from] DecodeError),
    /// A protocol rule was broken.
    #[error("protocol violation: {0}")]
    Protocol(#[from] ProtocolError),
    /// No CONNECT within `connect_timeout`.
    #[error("no CONNECT within the connect timeout")]
    ConnectTimeout,
    /// Nothing received for 1.5 x keepalive [MQTT-3.1.2-24].
    #[error("keepalive timeout")]
    KeepaliveTimeout,
    /// CONNECT refused with this CONNACK code.
    #[error("connection refused: {0:?}")]
    Refused(ConnectReturnCode),
    /// The session could not be reached to attach.
    #[error("session unavailable")]
    SessionUnavailable,
    /// A new connection with the same client id took over [MQTT-3.1.4-2].
    #[error("session taken over by a new connection")]
    TakenOver,
    /// The session was discarded.
    #[error("session discarded")]
    Discarded,
    /// The broker is shutting down.
    #[error("broker shutting down")]
    Shutdown,
}

impl CloseReason {
    /// True if the will is published for this close [MQTT-3.1.2-8], [MQTT-3.14.4-3].
    fn publishes_will(&self) -> bool {
        !matches!(self, CloseReason::Disconnect | CloseReason::Shutdown)
    }
}

/// Bytes of encoded outbound packets gathered before one write.
const WRITE_BATCH_BYTES: usize = 64 * 1024;
/// Outbound packets gathered before one write.
const WRITE_BATCH_PACKETS: usize = 256;
/// How long a connection waits for its session to accept it.
const ATTACH_TIMEOUT: Duration = Duration::from_secs(5);
/// How long goodbye bytes (a refusing CONNACK) may take to write.
const GOODBYE_TIMEOUT: Duration = Duration::from_secs(2);

/// Serves one accepted socket to completion.
///
/// `identity` is the TLS client certificate's name when the listener has
/// `use_identity_as_username`: it replaces the CONNECT's user name and no password is checked.
pub async fn serve<S: Transport>(
    stream: S,
    peer: SocketAddr,
    shared: Arc<Shared>,
    identity: Option<String>,
) {
    let conn_id = next_id();
    let span = tracing::info_span!("conn", %peer, conn_id, client_id = tracing::field::Empty);
    let conn = Connection {
        stream,
        identity,
        congested: Vec::new(),
        patience: shared.config.session.backpressure_timeout,
        rbuf: BytesMut::new(),
        wbuf: BytesMut::new(),
        max_packet: shared.config.mqtt.max_packet_size,
        shared,
        conn_id,
    };
    conn.run().instrument(span).await;
}

struct Connection<S> {
    stream: S,
    /// TLS certificate identity used as the user name (`use_identity_as_username`).
    identity: Option<String>,
    /// Subscribers that passed their high mark since the last read; reading pauses until they
    /// drain (see `backlog.rs`).
    congested: Vec<Arc<Backlog>>,
    /// `backpressure_timeout`: the longest pause for a subscriber that makes no progress.
    patience: Duration,
    rbuf: BytesMut,
    wbuf: BytesMut,
    max_packet: usize,
    shared: Arc<Shared>,
    conn_id: ConnId,
}

/// The state of a connected client.
struct Client {
    accepted: Accepted,
    session: SessionHandle,
    outbound: OutboundRx,
    kick: oneshot::Receiver<Kick>,
}

enum Flow {
    Continue,
    Disconnect,
}

/// What woke the connected loop.
enum Wake {
    Tick,
    Relieved,
    Readable(io::Result<usize>),
    Outbound(Outbound),
}

/// A byte stream the connection reads from. TCP waits for readability before it reserves a
/// read buffer, so an idle client costs no buffer memory; TLS (which buffers inside rustls)
/// reads into a reserved buffer.
pub trait Transport: AsyncRead + AsyncWrite + Unpin + Send {
    /// Reads what is available into `buf`, waiting until something is; `Ok(0)` is EOF.
    /// Cancel-safe: nothing is lost if the future is dropped.
    fn read_some<'a>(
        &'a mut self,
        buf: &'a mut BytesMut,
    ) -> impl Future<Output = io::Result<usize>> + Send + 'a;
}

impl Transport for TcpStream {
    async fn read_some(&mut self, buf: &mut BytesMut) -> io::Result<usize> {
        loop {
            self.readable().await?;
            buf.reserve(READ_CHUNK);
            match self.try_read_buf(buf) {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                r => return r,
            }
        }
    }
}

impl Transport for tokio_rustls::server::TlsStream<TcpStream> {
    async fn read_some(&mut self, buf: &mut BytesMut) -> io::Result<usize> {
        buf.reserve(READ_CHUNK);
        self.read_buf(buf).await
    }
}

/// Bytes reserved for each read; the buffer is released again once it holds no partial frame.
const READ_CHUNK: usize = 16 * 1024;

impl<S: Transport> Connection<S> {
    async fn run(mut self) {
        // Boxed: the handshake's state would otherwise enlarge every connection's future for
        // its whole life.
        let mut client = match Box::pin(self.handshake()).await {
            Ok(c) => c,
            Err(reason) => {
                if matches!(reason, CloseReason::Decode(_) | CloseReason::Protocol(_)) {
                    Metrics::incr(&self.shared.metrics.protocol_errors);
                }
                debug!(%reason, "connection closed before CONNECT completed");
                return;
            }
        };
        Metrics::incr(&self.shared.metrics.clients_connected);
        let reason = self.serve_client(&mut client).await;
        if matches!(reason, CloseReason::Decode(_) | CloseReason::Protocol(_)) {
            Metrics::incr(&self.shared.metrics.protocol_errors);
        }
        if reason.publishes_will() {
            if let Some(will) = client.accepted.will.take() {
                debug!(topic = will.topic_str(), "publishing will");
                self.shared.router.publish(will);
            }
        }
        let _ = client
            .session
            .ctrl
            .send_async(SessionCmd::Detach { conn: self.conn_id })
            .await;
        Metrics::decr(&self.shared.metrics.clients_connected);
        info!(%reason, "client disconnected");
    }

    /// Reads CONNECT, applies the rules, attaches the session and writes CONNACK.
    async fn handshake(&mut self) -> Result<Client, CloseReason> {
        let deadline = self.shared.config.mqtt.connect_timeout;
        let first = match timeout(deadline, self.read_packet()).await {
            Err(_) => return Err(CloseReason::ConnectTimeout),
            Ok(Err(CloseReason::Decode(DecodeError::UnsupportedProtocolLevel(level)))) => {
                // [MQTT-3.1.2-2]
                self.refuse(ConnectReturnCode::UnacceptableProtocolVersion)
                    .await;
                return Err(DecodeError::UnsupportedProtocolLevel(level).into());
            }
            Ok(r) => r?,
        };
        let connect = match first {
            Packet::Connect(c) => c,
            // [MQTT-3.1.0-1]
            other => return Err(ProtocolError::FirstPacketNotConnect(other.name()).into()),
        };
        let shared = self.shared.clone();
        let policy = shared.policy.load_full();
        let accepted = match protocol::check_connect(
            &connect,
            self.identity.as_deref(),
            &shared.config.mqtt,
            policy.as_ref(),
            policy.as_ref(),
        ) {
            Ok(a) => a,
            Err(Refusal::Connack(code)) => {
                // [MQTT-3.2.2-4], [MQTT-3.2.2-5], [MQTT-3.1.4-5]: answer, close, read no more.
                self.refuse(code).await;
                return Err(CloseReason::Refused(code));
            }
            Err(Refusal::Close(e)) => return Err(e.into()),
        };
        tracing::Span::current().record("client_id", &*accepted.client_id);

        let capacity = shared.config.session.max_inflight_messages + 64;
        let (out_tx, out_rx) = outbound::channel(capacity);
        let mut attached = None;
        for _ in 0..2 {
            let (kick_tx, kick_rx) = oneshot::channel();
            let link = ConnLink {
                conn: self.conn_id,
                username: accepted.username.as_deref().map(Arc::from),
                outbound: out_tx.clone(),
                kick: kick_tx,
            };
            let opened =
                shared
                    .registry
                    .open(&shared, &accepted.client_id, accepted.clean_session, link);
            let (session, link) = match opened {
                // A new session starts attached to us: no round trip.
                Opened::Fresh(session) => {
                    attached = Some((session, false, kick_rx));
                    break;
                }
                Opened::Existing(session, link) => (session, link),
            };
            let (reply_tx, reply_rx) = oneshot::channel();
            let attach = SessionCmd::Attach(Box::new(Attach {
                link,
                reply: reply_tx,
            }));
            if session.ctrl.send_async(attach).await.is_err() {
                // The session ended between lookup and attach; look again once.
                continue;
            }
            if let Ok(Ok(())) = timeout(ATTACH_TIMEOUT, reply_rx).await {
                attached = Some((session, true, kick_rx));
                break;
            }
        }
        let Some((session, present, kick)) = attached else {
            self.refuse(ConnectReturnCode::ServerUnavailable).await;
            return Err(CloseReason::SessionUnavailable);
        };
        // [MQTT-3.2.0-1] CONNACK is written before anything from the session.
        // [MQTT-3.2.2-1], [MQTT-3.2.2-2], [MQTT-3.2.2-3]
        codec::encode(
            &Packet::ConnAck(ConnAck {
                session_present: present,
                code: ConnectReturnCode::Accepted,
            }),
            &mut self.wbuf,
        );
        self.stream.write_all_buf(&mut self.wbuf).await?;
        self.stream.flush().await?;
        self.wbuf = BytesMut::new();
        if self.rbuf.is_empty() {
            self.rbuf = BytesMut::new();
        }
        info!(
            clean_session = accepted.clean_session,
            keep_alive = ?accepted.keep_alive.grace(),
            session_present = present,
            "client connected"
        );
        Ok(Client {
            accepted,
            session,
            outbound: out_rx,
            kick,
        })
    }

    /// Writes a refusing CONNACK (session present 0) and gives up on the socket.
    async fn refuse(&mut self, code: ConnectReturnCode) {
        codec::encode(
            &Packet::ConnAck(ConnAck {
                session_present: false,
                code,
            }),
            &mut self.wbuf,
        );
        let goodbye = async {
            self.stream.write_all_buf(&mut self.wbuf).await?;
            self.stream.flush().await
        };
        let _ = timeout(GOODBYE_TIMEOUT, goodbye).await;
        let _ = timeout(GOODBYE_TIMEOUT, self.stream.shutdown()).await;
    }

    /// Reads until one whole packet is decoded (used before CONNECT).
    async fn read_packet(&mut self) -> Result<Packet, CloseReason> {
        loop {
            // [MQTT-3.1.0-1] known from the first byte; no need to wait for the rest.
            if let Some(&first) = self.rbuf.first() {
                if first >> 4 != 1 {
                    return Err(ProtocolError::FirstPacketNotConnect(
                        "a packet other than CONNECT",
                    )
                    .into());
                }
            }
            if let Some(p) = codec::decode(&mut self.rbuf, self.max_packet)? {
                Metrics::incr(&self.shared.metrics.packets_received);
                trace!(packet = p.name(), "received");
                return Ok(p);
            }
            self.rbuf.reserve(4096);
            tokio::select! {
                _ = self.shared.shutdown.cancelled() => return Err(CloseReason::Shutdown),
                n = self.stream.read_buf(&mut self.rbuf) => {
                    if n? == 0 {
                        return Err(CloseReason::PeerClosed);
                    }
                }
            }
        }
    }

    /// The connected phase: until DISCONNECT, an error, a kick, keepalive or shutdown.
    async fn serve_client(&mut self, client: &mut Client) -> CloseReason {
        let keep_alive = client.accepted.keep_alive;
        let mut last_packet = Instant::now();
        let far = Instant::now() + Duration::from_secs(86_400 * 365);
        let timer = sleep_until(
            keep_alive
                .deadline(last_packet.into_std())
                .map_or(far, Instant::from_std),
        );
        tokio::pin!(timer);
        let shutdown = self.shared.shutdown.clone();
        let mut seen_progress: Vec<u64> = Vec::new();
        let mut pause_until = Instant::now();
        loop {
            if !self.wbuf.is_empty() {
                // A client that neither reads nor sends must still time out.
                tokio::select! {
                    biased;
                    _ = shutdown.cancelled() => return CloseReason::Shutdown,
                    k = &mut client.kick => return kicked(k),
                    _ = &mut timer, if keep_alive.grace().is_some() => {
                        if rearm(keep_alive, last_packet, timer.as_mut()) {
                            return CloseReason::KeepaliveTimeout;
                        }
                    }
                    // Flush: TLS keeps written bytes in its own buffer until then.
                    r = write_out(&mut self.stream, &mut self.wbuf) => {
                        if let Err(e) = r {
                            return e.into();
                        }
                        // Hold no buffer while idle; keep it while more is queued.
                        if client.outbound.is_empty() {
                            self.wbuf = BytesMut::new();
                            client.outbound.release();
                        }
                    }
                }
                continue;
            }
            // The select only says what woke us; the work happens after it, so the state of
            // `on_packet` does not sit on top of the select's futures in this task's memory.
            let wake = tokio::select! {
                biased;
                _ = shutdown.cancelled() => return CloseReason::Shutdown,
                k = &mut client.kick => return kicked(k),
                _ = &mut timer, if keep_alive.grace().is_some() => Wake::Tick,
                // While a subscriber we fed is congested, read nothing more: TCP then slows
                // this publisher down instead of the subscriber losing messages.
                _ = relieve(&self.congested, &seen_progress, pause_until), if !self.congested.is_empty() => Wake::Relieved,
                r = self.stream.read_some(&mut self.rbuf), if self.congested.is_empty() => Wake::Readable(r),
                Some(out) = client.outbound.recv() => Wake::Outbound(out),
            };
            match wake {
                Wake::Tick => {
                    if rearm(keep_alive, last_packet, timer.as_mut()) {
                        return CloseReason::KeepaliveTimeout;
                    }
                }
                Wake::Relieved => self.congested.clear(),
                Wake::Outbound(out) => {
                    self.encode_outbound(out);
                    let mut n = 1;
                    while n < WRITE_BATCH_PACKETS && self.wbuf.len() < WRITE_BATCH_BYTES {
                        match client.outbound.try_recv() {
                            Some(out) => self.encode_outbound(out),
                            None => break,
                        }
                        n += 1;
                    }
                }
                Wake::Readable(r) => {
                    match r {
                        Ok(0) => return CloseReason::PeerClosed,
                        Ok(_) => {}
                        Err(e) => return e.into(),
                    }
                    let mut got_packet = false;
                    loop {
                        let packet = match codec::decode(&mut self.rbuf, self.max_packet) {
                            Ok(Some(p)) => p,
                            Ok(None) => break,
                            Err(e) => return e.into(),
                        };
                        got_packet = true;
                        match self.on_packet(packet, client).await {
                            Ok(Flow::Continue) => {}
                            Ok(Flow::Disconnect) => return CloseReason::Disconnect,
                            Err(reason) => return reason,
                        }
                    }
                    // Hold no buffer while idle; a partial frame keeps it.
                    if self.rbuf.is_empty() {
                        self.rbuf = BytesMut::new();
                    }
                    // Reset on whole packets, not bytes: a dribbled frame still times out.
                    if got_packet {
                        last_packet = Instant::now();
                    }
                    if !self.congested.is_empty() {
                        self.congested
                            .sort_unstable_by_key(|b| Arc::as_ptr(b) as usize);
                        self.congested.dedup_by(|a, b| Arc::ptr_eq(a, b));
                        seen_progress = self.congested.iter().map(|b| b.progress()).collect();
                        pause_until = Instant::now() + self.patience;
                    }
                }
            }
        }
    }

    /// Publishes through the router, noting congested subscribers when backpressure is on.
    fn route(&mut self, msg: Arc<Message>) {
        if self.patience.is_zero() {
            self.shared.router.publish(msg);
        } else {
            self.shared.router.publish_with(msg, &mut self.congested);
        }
    }

    fn encode_outbound(&mut self, out: Outbound) {
        match out {
            Outbound::PubRel(id) => {
                trace!(packet = "PUBREL", id, "sending");
                codec::encode(&Packet::PubRel(id), &mut self.wbuf);
            }
            Outbound::Packet(p) => {
                trace!(packet = p.name(), "sending");
                codec::encode(&p, &mut self.wbuf);
            }
            Outbound::Publish {
                msg,
                qos,
                pkid,
                dup,
                retain,
            } => {
                trace!(
                    topic = msg.topic_str(),
                    ?qos,
                    ?pkid,
                    dup,
                    retain,
                    "sending PUBLISH"
                );
                codec::encode_publish(
                    &msg.topic,
                    &msg.payload,
                    qos,
                    pkid,
                    dup,
                    retain,
                    &mut self.wbuf,
                );
            }
        }
    }

    async fn on_packet(
        &mut self,
        packet: Packet,
        client: &mut Client,
    ) -> Result<Flow, CloseReason> {
        let metrics = &self.shared.metrics;
        Metrics::incr(&metrics.packets_received);
        trace!(packet = packet.name(), "received");
        let ctrl = &client.session.ctrl;
        let cmd = match packet {
            Packet::Publish(p) => {
                Metrics::incr(&metrics.messages_received);
                protocol::check_publish(&p, &self.shared.config.mqtt)?;
                let acc = &client.accepted;
                let topic = std::str::from_utf8(&p.topic).unwrap_or("");
                let allowed = protocol::may_publish(
                    self.shared.policy.load().as_ref(),
                    &acc.client_id,
                    acc.username.as_deref(),
                    topic,
                );
                if !allowed {
                    // [MQTT-3.3.5-2] acknowledged as usual, not delivered, counted.
                    Metrics::incr(&metrics.acl_denied);
                    debug!(topic, "publish denied; acknowledged and dropped");
                }
                let msg = allowed.then(|| {
                    Arc::new(Message {
                        topic: p.topic,
                        payload: p.payload,
                        qos: p.qos,
                        retain: p.retain,
                        from: acc.client_id.clone(),
                    })
                });
                // [MQTT-3.3.4-1], [MQTT-2.3.1-6]
                match (p.qos, p.pkid) {
                    (QoS::AtMostOnce, _) => {
                        if let Some(msg) = msg {
                            self.route(msg);
                        }
                    }
                    (QoS::AtLeastOnce, Some(id)) => {
                        // PUBACK only after routing: the message is now owed to every subscriber.
                        if let Some(msg) = msg {
                            self.route(msg);
                        }
                        codec::encode(&Packet::PubAck(id), &mut self.wbuf);
                    }
                    (_, pkid) => {
                        let pkid = pkid.unwrap_or(0);
                        // [MQTT-4.3.3-2] route once; PUBREC for every copy.
                        if client.session.awaiting_rel.receive(pkid) {
                            if let Some(msg) = msg {
                                self.route(msg);
                            }
                        }
                        codec::encode(&Packet::PubRec(pkid), &mut self.wbuf);
                    }
                }
                return Ok(Flow::Continue);
            }
            Packet::PubAck(id) => SessionCmd::PubAck(id),
            Packet::PubRec(id) => {
                // [MQTT-4.3.3-1] the session moves the flow to "PUBREL sent" (queued before
                // any Detach, so a resend after a reconnect is the PUBREL, never the PUBLISH);
                // we answer at once, even for an id the session no longer knows, so the client
                // can finish its side.
                if ctrl.send_async(SessionCmd::PubRec(id)).await.is_err() {
                    return Err(CloseReason::Discarded);
                }
                codec::encode(&Packet::PubRel(id), &mut self.wbuf);
                return Ok(Flow::Continue);
            }
            Packet::PubRel(id) => {
                // [MQTT-4.3.3-2] the id is free again; answer with PUBCOMP.
                client.session.awaiting_rel.release(id);
                codec::encode(&Packet::PubComp(id), &mut self.wbuf);
                return Ok(Flow::Continue);
            }
            Packet::PubComp(id) => SessionCmd::PubComp(id),
            Packet::Subscribe(s) => {
                let acc = &client.accepted;
                let filters = protocol::grant(
                    s.filters,
                    &self.shared.config.mqtt,
                    self.shared.policy.load().as_ref(),
                    &acc.client_id,
                    acc.username.as_deref(),
                );
                SessionCmd::Subscribe {
                    pkid: s.pkid,
                    filters: filters.into(),
                }
            }
            Packet::Unsubscribe(u) => SessionCmd::Unsubscribe {
                pkid: u.pkid,
                filters: u.filters.into(),
            },
            Packet::PingReq => {
                // [MQTT-3.12.4-1]
                codec::encode(&Packet::PingResp, &mut self.wbuf);
                return Ok(Flow::Continue);
            }
            Packet::Disconnect => {
                // [MQTT-3.14.4-3] the will is discarded.
                client.accepted.will = None;
                return Ok(Flow::Disconnect);
            }
            // [MQTT-3.1.0-2]
            Packet::Connect(_) => return Err(ProtocolError::SecondConnect.into()),
            other @ (Packet::ConnAck(_)
            | Packet::SubAck(_)
            | Packet::UnsubAck(_)
            | Packet::PingResp) => return Err(ProtocolError::UnexpectedPacket(other.name()).into()),
        };
        if ctrl.send_async(cmd).await.is_err() {
            return Err(CloseReason::Discarded);
        }
        Ok(Flow::Continue)
    }
}

/// Writes the whole buffer and flushes it; cancel-safe as far as `wbuf` records progress.
async fn write_out<S: Transport>(stream: &mut S, wbuf: &mut BytesMut) -> io::Result<()> {
    stream.write_all_buf(wbuf).await?;
    stream.flush().await
}

/// Waits until every congested backlog is relieved, or `deadline`; a backlog that made no
/// progress by then is marked stuck, so publishers stop waiting for it.
async fn relieve(congested: &[Arc<Backlog>], seen: &[u64], deadline: Instant) {
    for (backlog, &before) in congested.iter().zip(seen) {
        while !backlog.relieved() && !backlog.is_stuck() {
            if tokio::time::timeout_at(deadline, backlog.wait_drained())
                .await
                .is_err()
            {
                if backlog.progress() == before {
                    backlog.mark_stuck(before);
                }
                break;
            }
        }
    }
}

/// On a keepalive timer wake: true if the client has been silent too long [MQTT-3.1.2-24];
/// otherwise the timer is moved to the deadline that the last packet set.
fn rearm(keep_alive: KeepAlive, last_packet: Instant, timer: Pin<&mut Sleep>) -> bool {
    if keep_alive.expired(last_packet.into_std(), Instant::now().into_std()) {
        return true;
    }
    if let Some(d) = keep_alive.deadline(last_packet.into_std()) {
        timer.reset(Instant::from_std(d));
    }
    false
}

fn kicked(k: Result<Kick, oneshot::error::RecvError>) -> CloseReason {
    match k {
        Ok(Kick::TakenOver) => CloseReason::TakenOver,
        _ => CloseReason::Discarded,
    }
}
