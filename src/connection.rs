//! The connection task: one per socket. It owns the socket (its only reader and writer),
//! decodes frames, applies protocol checks, publishes through the router, hands session work
//! to the session actor, keeps the will, and enforces keepalive.
//!
//! Once connected, the task (`ConnTask`, a hand-written future) polls the socket, the link
//! from the session and the keepalive timer directly; everything rare (the handshake, a wait
//! for room in a full mailbox, a backpressure pause) runs in a boxed future that exists only
//! while it is needed. An idle client's task is therefore a few hundred bytes.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use bytes::{Buf, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::{oneshot, OwnedSemaphorePermit};
use tokio::time::{sleep_until, timeout, Instant, Sleep};
use tracing::{debug, info, trace, Instrument};

use crate::broker::Shared;
use crate::codec::{self, ConnAck, ConnectReturnCode, DecodeError, Packet};
use crate::mailbox::{Mailbox, SendError, TrySendError};
use crate::message::{next_id, ConnId, Message, QoS};
use crate::metrics::Metrics;
use crate::outbound::{self, Event, OutboundRx};
use crate::protocol::{self, Accepted, Identity, ProtocolError, Refusal};
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
    /// True if the client broke the protocol (counted in `protocol_errors`).
    fn is_protocol_error(&self) -> bool {
        matches!(self, CloseReason::Decode(_) | CloseReason::Protocol(_))
    }

    /// True if the will is published for this close [MQTT-3.1.2-8], [MQTT-3.14.4-3].
    fn publishes_will(&self) -> bool {
        !matches!(self, CloseReason::Disconnect | CloseReason::Shutdown)
    }

    /// True if what is already written for the client is flushed before the socket closes:
    /// the peer is still there and did nothing wrong.
    fn flushes(&self) -> bool {
        matches!(
            self,
            CloseReason::Disconnect
                | CloseReason::Shutdown
                | CloseReason::TakenOver
                | CloseReason::Discarded
        )
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

/// Serves one accepted socket to completion; `permit` (the listener's `max_connections`
/// slot) is held until then.
///
/// `identity` says where the user name comes from: the CONNECT, or the TLS client
/// certificate on a `use_identity_as_username` listener.
///
/// Not an `async fn`: its arguments would stay in the task's future beside the connection
/// they were moved into.
pub fn serve<S: Transport + 'static>(
    stream: S,
    peer: SocketAddr,
    shared: Arc<Shared>,
    identity: Identity,
    permit: Option<OwnedSemaphorePermit>,
) -> impl Future<Output = ()> + Send {
    let conn_id = next_id();
    // A debug-level span: at info, the connect and disconnect lines carry these fields
    // themselves, and an enabled span would cost every connection its stored fields.
    let span = tracing::debug_span!("conn", %peer, conn_id, client_id = tracing::field::Empty);
    let conn = Connection {
        stream,
        congested: Vec::new(),
        rbuf: BytesMut::new(),
        wbuf: BytesMut::new(),
        flushing: false,
        shared,
        conn_id,
        _permit: permit,
    };
    ConnTask::Handshake(Box::pin(conn.handshake_phase(identity, peer))).instrument(span)
}

/// A boxed future the task holds only while it runs.
type Boxed<T> = Pin<Box<dyn Future<Output = T> + Send>>;

/// The connection's task, a hand-written future: an `async fn` would keep the state of every
/// wait it has, the rare ones included, for the task's whole life. The handshake and the
/// closing steps are boxed futures that exist only while they run.
// Not boxed: the connected state is the one the task is in for its whole life.
#[allow(clippy::large_enum_variant)]
enum ConnTask<S> {
    Handshake(Boxed<Option<Connected<S>>>),
    Connected(Connected<S>),
    Closing(Boxed<()>),
    Done,
}

impl<S: Transport + 'static> Future for ConnTask<S> {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let this = self.get_mut();
        loop {
            match this {
                ConnTask::Handshake(f) => match ready!(f.as_mut().poll(cx)) {
                    Some(c) => *this = ConnTask::Connected(c),
                    None => *this = ConnTask::Done,
                },
                ConnTask::Connected(c) => {
                    let reason = ready!(c.poll_serve(cx));
                    if let ConnTask::Connected(c) = std::mem::replace(this, ConnTask::Done) {
                        if let Some(flush) = c.close(reason) {
                            *this = ConnTask::Closing(flush);
                        }
                    }
                }
                ConnTask::Closing(f) => {
                    ready!(f.as_mut().poll(cx));
                    *this = ConnTask::Done;
                }
                ConnTask::Done => return Poll::Ready(()),
            }
        }
    }
}

struct Connection<S> {
    stream: S,
    /// Subscribers that passed their high mark since the last read; reading pauses until they
    /// drain (see `backlog.rs`).
    congested: Vec<Arc<Mailbox>>,
    rbuf: BytesMut,
    wbuf: BytesMut,
    /// Bytes were written and not yet flushed (TLS keeps them in its own buffer until then).
    flushing: bool,
    shared: Arc<Shared>,
    conn_id: ConnId,
    _permit: Option<OwnedSemaphorePermit>,
}

/// The state of a connected client.
struct Client {
    accepted: Accepted,
    session: SessionHandle,
    outbound: OutboundRx,
}

/// A connected client's connection: what the task holds while it serves one.
struct Connected<S> {
    conn: Connection<S>,
    client: Client,
    /// Fires at the keepalive deadline; none without keepalive.
    timer: Option<Pin<Box<Sleep>>>,
    last_packet: Instant,
    /// A backpressure pause: while a subscriber we fed is congested, read nothing more, so
    /// TCP slows this publisher down instead of the subscriber losing messages.
    relief: Option<Boxed<()>>,
    /// A command waiting for room in a full session mailbox; input waits with it.
    sending: Option<Boxed<Result<(), SendError>>>,
    /// The PUBREC whose PUBREL goes out once the session has it (after `sending`, if full).
    pubrec: Option<u16>,
    /// Reading and writing take turns being looked at first, so neither starves the other.
    read_first: bool,
    got_packet: bool,
}

enum Flow {
    Continue,
    Disconnect,
    /// Hand this command to the session.
    ToSession(SessionCmd),
}

/// A byte stream the connection reads from. TCP waits for readability before it reserves a
/// read buffer, so an idle client costs no buffer memory; TLS (which buffers inside rustls)
/// reads into a reserved buffer.
pub trait Transport: AsyncRead + AsyncWrite + Unpin + Send {
    /// Reads what is available into `buf`; `Ok(0)` is EOF. When nothing is, registers the
    /// task's waker and returns `Pending`, keeping no state between calls.
    fn poll_read_some(
        &mut self,
        cx: &mut Context<'_>,
        buf: &mut BytesMut,
    ) -> Poll<io::Result<usize>>;
}

impl Transport for TcpStream {
    fn poll_read_some(
        &mut self,
        cx: &mut Context<'_>,
        buf: &mut BytesMut,
    ) -> Poll<io::Result<usize>> {
        loop {
            ready!(self.poll_read_ready(cx))?;
            buf.reserve(READ_CHUNK);
            match self.try_read_buf(buf) {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    // A false readiness: hold no buffer while waiting again.
                    if buf.is_empty() {
                        *buf = BytesMut::new();
                    }
                }
                r => return Poll::Ready(r),
            }
        }
    }
}

impl Transport for tokio_rustls::server::TlsStream<TcpStream> {
    fn poll_read_some(
        &mut self,
        cx: &mut Context<'_>,
        buf: &mut BytesMut,
    ) -> Poll<io::Result<usize>> {
        buf.reserve(READ_CHUNK);
        tokio_util::io::poll_read_buf(Pin::new(self), cx, buf)
    }
}

/// Bytes reserved for each read; the buffer is released again once it holds no partial frame.
const READ_CHUNK: usize = 16 * 1024;

impl<S: Transport> Connection<S> {
    /// The handshake, boxed by the task; the connected state if it succeeded.
    async fn handshake_phase(
        mut self,
        identity: Identity,
        peer: SocketAddr,
    ) -> Option<Connected<S>> {
        let client = match self.handshake(identity, peer).await {
            Ok(c) => c,
            Err(reason) => {
                if reason.is_protocol_error() {
                    Metrics::incr(&self.shared.metrics.protocol_errors);
                }
                debug!(%reason, "connection closed before CONNECT completed");
                return None;
            }
        };
        Metrics::incr(&self.shared.metrics.clients_connected);
        let last_packet = Instant::now();
        let timer = client
            .accepted
            .keep_alive
            .deadline(last_packet.into_std())
            .map(|d| Box::pin(sleep_until(Instant::from_std(d))));
        Some(Connected {
            conn: self,
            client,
            timer,
            last_packet,
            relief: None,
            sending: None,
            pubrec: None,
            read_first: true,
            got_packet: false,
        })
    }

    /// Reads CONNECT, applies the rules, attaches the session and writes CONNACK.
    async fn handshake(
        &mut self,
        identity: Identity,
        peer: SocketAddr,
    ) -> Result<Client, CloseReason> {
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
        // A password check costs a PBKDF2 run (up to 10^6 iterations, as the file says): it
        // runs on the blocking pool, so a burst of logins cannot stall the async workers.
        let hashes = protocol::checks_password(&connect, &identity, &policy);
        let check = {
            let shared = shared.clone();
            move || {
                protocol::check_connect(
                    &connect,
                    &identity,
                    &shared.config.mqtt,
                    policy.as_ref(),
                    policy.as_ref(),
                )
            }
        };
        let checked = if hashes {
            match tokio::task::spawn_blocking(check).await {
                Ok(r) => r,
                Err(_) => return Err(CloseReason::SessionUnavailable),
            }
        } else {
            check()
        };
        let accepted = match checked {
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
        let mut attached = None;
        // If the session ended between lookup and attach, or never answered, look again once,
        // with a new link (the old one went with the command).
        for _ in 0..2 {
            let (out_tx, out_rx) = outbound::channel(capacity);
            let link = ConnLink {
                conn: self.conn_id,
                username: accepted.username.as_deref().map(Arc::from),
                outbound: out_tx,
            };
            let opened =
                shared
                    .registry
                    .open(&shared, &accepted.client_id, accepted.clean_session, link);
            let (session, link) = match opened {
                // A new session starts attached to us: no round trip.
                Opened::Fresh(session) => {
                    attached = Some((session, false, out_rx));
                    break;
                }
                Opened::Existing(session, link) => (session, link),
            };
            let (reply_tx, reply_rx) = oneshot::channel();
            let attach = SessionCmd::Attach(Box::new(Attach {
                link,
                reply: reply_tx,
            }));
            // A session whose mailbox stays full is as unavailable as one that never answers.
            let answered = timeout(ATTACH_TIMEOUT, async {
                session.mailbox.attach(self.conn_id, attach).await.is_ok() && reply_rx.await.is_ok()
            });
            if answered.await == Ok(true) {
                attached = Some((session, true, out_rx));
                break;
            }
        }
        let Some((session, present, outbound)) = attached else {
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
            %peer,
            conn_id = self.conn_id,
            client_id = &*accepted.client_id,
            clean_session = accepted.clean_session,
            keep_alive = ?accepted.keep_alive.grace(),
            session_present = present,
            "client connected"
        );
        Ok(Client {
            accepted,
            session,
            outbound,
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
            let max_packet = self.shared.config.mqtt.max_packet_size;
            if let Some(p) = codec::decode(&mut self.rbuf, max_packet)? {
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

    /// Publishes through the router, noting congested subscribers when backpressure is on.
    fn route(&mut self, msg: Arc<Message>) {
        if self.shared.config.session.backpressure_timeout.is_zero() {
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

    /// Handles one packet from the client; what the session must know is returned for the
    /// caller to send (the only step that may wait).
    fn on_packet(&mut self, packet: Packet, client: &mut Client) -> Result<Flow, CloseReason> {
        let metrics = &self.shared.metrics;
        Metrics::incr(&metrics.packets_received);
        trace!(packet = packet.name(), "received");
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
                        let max = self.shared.config.session.max_awaiting_rel;
                        match client.session.mailbox.receive_qos2(pkid, max) {
                            Some(true) => {
                                if let Some(msg) = msg {
                                    self.route(msg);
                                }
                            }
                            Some(false) => {}
                            None => return Err(ProtocolError::TooManyAwaitingRel.into()),
                        }
                        codec::encode(&Packet::PubRec(pkid), &mut self.wbuf);
                    }
                }
                return Ok(Flow::Continue);
            }
            Packet::PubAck(id) => SessionCmd::PubAck(id),
            // The caller answers with PUBREL once the session has it.
            Packet::PubRec(id) => SessionCmd::PubRec(id),
            Packet::PubRel(id) => {
                // [MQTT-4.3.3-2] the id is free again; answer with PUBCOMP.
                client.session.mailbox.release_qos2(id);
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
        Ok(Flow::ToSession(cmd))
    }
}

/// Iterations of the serving loop in one poll before the task yields to others.
const TURNS_PER_POLL: usize = 32;

impl<S: Transport + 'static> Connected<S> {
    /// The connected phase: until DISCONNECT, an error, a kick (takeover, discard, shutdown)
    /// or keepalive. Every source is polled directly and keeps our waker; nothing is stored
    /// between polls but this struct.
    fn poll_serve(&mut self, cx: &mut Context<'_>) -> Poll<CloseReason> {
        for _ in 0..TURNS_PER_POLL {
            // Input waiting for room in the session's mailbox comes first: nothing more is
            // read (and no kick seen) until it is through, so no packet is handled out of turn.
            if self.sending.is_some() {
                if let Err(reason) = ready!(self.poll_input(cx)) {
                    return Poll::Ready(reason);
                }
            }
            match self.client.outbound.poll_kick(cx) {
                Poll::Ready(Event::Kick(k)) => return Poll::Ready(kicked(k)),
                Poll::Ready(Event::Gone) => return Poll::Ready(CloseReason::Discarded),
                Poll::Pending => {}
            }
            // A client that neither reads nor sends must still time out.
            if let Some(timer) = &mut self.timer {
                if timer.as_mut().poll(cx).is_ready() {
                    let keep_alive = self.client.accepted.keep_alive;
                    let last = self.last_packet.into_std();
                    if keep_alive.expired(last, Instant::now().into_std()) {
                        return Poll::Ready(CloseReason::KeepaliveTimeout);
                    }
                    if let Some(d) = keep_alive.deadline(last) {
                        timer.as_mut().reset(Instant::from_std(d));
                    }
                    continue;
                }
            }
            let conn = &mut self.conn;
            if !conn.wbuf.is_empty() || conn.flushing {
                match ready!(poll_write_out(
                    &mut conn.stream,
                    cx,
                    &mut conn.wbuf,
                    &mut conn.flushing
                )) {
                    Err(e) => return Poll::Ready(e.into()),
                    Ok(()) => {
                        // Hold no buffer while idle; keep it while more is queued.
                        if self.client.outbound.release_if_idle() {
                            conn.wbuf = BytesMut::new();
                        }
                    }
                }
                continue;
            }
            self.read_first = !self.read_first;
            if !self.read_first && self.poll_outbound(cx).is_ready() {
                continue;
            }
            match &mut self.relief {
                Some(r) => {
                    if r.as_mut().poll(cx).is_ready() {
                        self.relief = None;
                        continue;
                    }
                }
                None => {
                    if let Poll::Ready(r) = self.conn.stream.poll_read_some(cx, &mut self.conn.rbuf)
                    {
                        match r {
                            Ok(0) => return Poll::Ready(CloseReason::PeerClosed),
                            Ok(_) => {}
                            Err(e) => return Poll::Ready(e.into()),
                        }
                        if let Err(reason) = ready!(self.poll_input(cx)) {
                            return Poll::Ready(reason);
                        }
                        continue;
                    }
                }
            }
            if self.read_first && self.poll_outbound(cx).is_ready() {
                continue;
            }
            return Poll::Pending;
        }
        cx.waker().wake_by_ref();
        Poll::Pending
    }

    /// Takes a batch of packets from the session into the write buffer.
    fn poll_outbound(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        let out = ready!(self.client.outbound.poll_recv(cx));
        self.conn.encode_outbound(out);
        let mut n = 1;
        while n < WRITE_BATCH_PACKETS && self.conn.wbuf.len() < WRITE_BATCH_BYTES {
            match self.client.outbound.try_recv() {
                Some(out) => self.conn.encode_outbound(out),
                None => break,
            }
            n += 1;
        }
        Poll::Ready(())
    }

    /// Handles every whole packet in the read buffer. `Pending` only while a command waits
    /// for room in the session's mailbox; the rest of the buffer waits with it.
    fn poll_input(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), CloseReason>> {
        let max_packet = self.conn.shared.config.mqtt.max_packet_size;
        loop {
            if let Some(send) = &mut self.sending {
                let sent = ready!(send.as_mut().poll(cx));
                self.sending = None;
                match sent {
                    Ok(()) => {}
                    Err(SendError::Closed) => return Poll::Ready(Err(CloseReason::Discarded)),
                    Err(SendError::Superseded) => {
                        self.pubrec = None;
                        return Poll::Ready(Err(CloseReason::TakenOver));
                    }
                }
            }
            // [MQTT-4.3.3-1] for a PUBREC, the session moves the flow to "PUBREL sent"; we
            // answer once the mailbox has taken the command, even for an id the session no
            // longer knows, so the client can finish its side. Taken means queued before any
            // later Attach (the mailbox refuses a taken-over connection's commands), so a
            // resend after a reconnect or a takeover is the PUBREL, never the PUBLISH.
            if let Some(id) = self.pubrec.take() {
                codec::encode(&Packet::PubRel(id), &mut self.conn.wbuf);
            }
            let packet = match codec::decode(&mut self.conn.rbuf, max_packet) {
                Ok(Some(p)) => p,
                Ok(None) => break,
                Err(e) => return Poll::Ready(Err(e.into())),
            };
            self.got_packet = true;
            let cmd = match self.conn.on_packet(packet, &mut self.client) {
                Ok(Flow::Continue) => continue,
                Ok(Flow::Disconnect) => return Poll::Ready(Err(CloseReason::Disconnect)),
                Ok(Flow::ToSession(cmd)) => cmd,
                Err(reason) => return Poll::Ready(Err(reason)),
            };
            if let SessionCmd::PubRec(id) = cmd {
                self.pubrec = Some(id);
            }
            let conn = self.conn.conn_id;
            match self.client.session.mailbox.try_send_from(conn, cmd) {
                Ok(()) => {}
                Err(TrySendError::Closed(_)) => return Poll::Ready(Err(CloseReason::Discarded)),
                Err(TrySendError::Superseded(_)) => {
                    self.pubrec = None;
                    return Poll::Ready(Err(CloseReason::TakenOver));
                }
                Err(TrySendError::Full(cmd)) => {
                    let mailbox = self.client.session.mailbox.clone();
                    self.sending =
                        Some(Box::pin(async move { mailbox.send_from(conn, cmd).await }));
                }
            }
        }
        // Hold no buffer while idle; a partial frame keeps it.
        if self.conn.rbuf.is_empty() {
            self.conn.rbuf = BytesMut::new();
        }
        // Reset on whole packets, not bytes: a dribbled frame still times out.
        if std::mem::take(&mut self.got_packet) {
            self.last_packet = Instant::now();
        }
        if !self.conn.congested.is_empty() {
            let patience = self.conn.shared.config.session.backpressure_timeout;
            let congested = std::mem::take(&mut self.conn.congested);
            self.relief = Some(Box::pin(relieve(congested, Instant::now() + patience)));
        }
        Poll::Ready(Ok(()))
    }

    /// After the connected phase: the will unless the client said goodbye. Dropping the
    /// client's link here is what tells the session (on every exit, a panic included). What
    /// is left is the goodbye flush, if there is one.
    fn close(self, reason: CloseReason) -> Option<Boxed<()>> {
        let Connected {
            mut conn,
            mut client,
            ..
        } = self;
        let shared = &conn.shared;
        if reason.is_protocol_error() {
            Metrics::incr(&shared.metrics.protocol_errors);
        }
        if reason.publishes_will() {
            if let Some(will) = client.accepted.will.take() {
                debug!(topic = will.topic_str(), "publishing will");
                shared.router.publish(will);
            }
        }
        Metrics::decr(&shared.metrics.clients_connected);
        info!(
            conn_id = conn.conn_id,
            client_id = &*client.accepted.client_id,
            %reason,
            "client disconnected"
        );
        drop(client);
        // Acks already encoded (a PUBACK before DISCONNECT or before shutdown) still go out,
        // within the goodbye timeout; a broken or silent peer gets nothing more.
        if !reason.flushes() || (conn.wbuf.is_empty() && !conn.flushing) {
            return None;
        }
        Some(Box::pin(async move {
            let goodbye = async {
                conn.stream.write_all_buf(&mut conn.wbuf).await?;
                conn.stream.flush().await
            };
            let _ = timeout(GOODBYE_TIMEOUT, goodbye).await;
        }))
    }
}

/// Writes the whole buffer, then flushes; progress is kept in `wbuf` and `flushing`, so this
/// can be polled again from scratch after any `Pending`.
fn poll_write_out<S: Transport>(
    stream: &mut S,
    cx: &mut Context<'_>,
    wbuf: &mut BytesMut,
    flushing: &mut bool,
) -> Poll<io::Result<()>> {
    while !wbuf.is_empty() {
        let n = ready!(Pin::new(&mut *stream).poll_write(cx, wbuf))?;
        if n == 0 {
            return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
        }
        wbuf.advance(n);
        *flushing = true;
    }
    if *flushing {
        ready!(Pin::new(&mut *stream).poll_flush(cx))?;
        *flushing = false;
    }
    Poll::Ready(Ok(()))
}

/// Waits until every congested backlog is relieved, or `deadline`; a backlog that made no
/// progress by then is marked stuck, so publishers stop waiting for it.
async fn relieve(mut congested: Vec<Arc<Mailbox>>, deadline: Instant) {
    congested.sort_unstable_by_key(|m| Arc::as_ptr(m) as usize);
    congested.dedup_by(|a, b| Arc::ptr_eq(a, b));
    let seen: Vec<u64> = congested.iter().map(|m| m.backlog().progress()).collect();
    for (mailbox, before) in congested.iter().zip(seen) {
        let backlog = mailbox.backlog();
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

fn kicked(k: Kick) -> CloseReason {
    match k {
        Kick::TakenOver => CloseReason::TakenOver,
        Kick::Discarded => CloseReason::Discarded,
        Kick::Shutdown => CloseReason::Shutdown,
    }
}
