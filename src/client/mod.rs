//! The client layer: the connection task, one per socket, and the protocol rules it applies.
//! It sits under the door (which spawns it) and over the sessions (which it talks to through
//! the session's mailbox and the outbound link) and the router (which it publishes through).
//!
//! The task owns the socket (its only reader and writer), decodes frames, applies protocol
//! checks, publishes through the router, hands session work to the session actor, keeps the
//! will, and enforces keepalive.
//!
//! Once connected, the task (`ConnTask`, a hand-written future) polls the socket, the link
//! from the session and the keepalive timer directly; everything rare (the handshake, a wait
//! for room in a full mailbox, a backpressure pause) runs in a boxed future that exists only
//! while it is needed. An idle client's task is therefore a few hundred bytes.
//!
//! - `handshake`: CONNECT to CONNACK.
//! - `inbound`: one packet from the client.
//! - `hooked`: the embedding application's hooks this task runs (`on_publish`,
//!   `on_subscribe`, `on_disconnect`), and where a packet goes on when one answers later.
//! - `serving`: the connected loop: which source is polled when, keepalive, backpressure;
//!   `serving::pause` holds input back (backpressure, and behind SUBSCRIBE/UNSUBSCRIBE).
//! - `protocol`: the CONNECT, PUBLISH and SUBSCRIBE rules, with no IO.
//! - `keepalive`: the 1.5 x keepalive rule.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use arc_swap::{ArcSwap, Cache};
use bytes::BytesMut;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio::sync::OwnedSemaphorePermit;

use crate::observability::metrics::{OpenSocket, Tally};
use tracing::Instrument;

mod gated;
mod handshake;
mod hooked;
mod inbound;
pub mod keepalive;
pub mod protocol;
mod serving;

use serving::Connected;

use crate::client::protocol::{Accepted, Identity, ProtocolError};
use crate::codec::{ConnectReturnCode, DecodeError};
use crate::config::Config;
use crate::message::Publisher;
use crate::message::{next_id, ConnId};
use crate::sessions::mailbox::Mailbox;
use crate::sessions::outbound::OutboundRx;
use crate::sessions::registry::SessionHandle;
use crate::sessions::SessionCmd;
use crate::sessions::Shared;
use crate::store::Wait;

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
    /// An operator closed the connection (HTTP API).
    #[error("kicked by an operator")]
    Kicked,
    /// The session was discarded.
    #[error("session discarded")]
    Discarded,
    /// The broker is shutting down.
    #[error("broker shutting down")]
    Shutdown,
    /// A PUBLISH arrived while the heap was over `memory_limit`.
    #[error("memory limit reached")]
    MemoryLimit,
    /// The store failed: nothing waiting for it will be acknowledged.
    #[error("the store failed")]
    StoreFailed,
}

impl CloseReason {
    /// True if the client broke the protocol (counted in `protocol_errors`).
    fn is_protocol_error(&self) -> bool {
        matches!(self, CloseReason::Decode(_) | CloseReason::Protocol(_))
    }

    /// True if the will is published for this close [MQTT-3.1.2-8], [MQTT-3.14.4-3].
    pub(super) fn publishes_will(&self) -> bool {
        !matches!(self, CloseReason::Disconnect | CloseReason::Shutdown)
    }

    /// True if what is already written for the client is flushed before the socket closes:
    /// the peer is still there, or has only closed its sending side, and did nothing wrong.
    fn flushes(&self) -> bool {
        matches!(
            self,
            CloseReason::Disconnect
                | CloseReason::PeerClosed
                | CloseReason::Shutdown
                | CloseReason::TakenOver
                | CloseReason::Kicked
                | CloseReason::Discarded
                | CloseReason::MemoryLimit
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

/// What an accepted socket holds while it lives: its place in its listener's count and, with
/// `max_connections`, its slot.
#[derive(Debug)]
pub struct Slot {
    /// Counted in the listener's open connections.
    pub open: OpenSocket,
    /// The listener's `max_connections` permit.
    pub permit: Option<OwnedSemaphorePermit>,
}

/// Serves one accepted socket to completion; `slot` is held until then.
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
    slot: Slot,
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
        gated: None,
        config: Cache::new(shared.config.clone()),
        shared,
        conn_id,
        received: Tally::default(),
        slot,
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
    /// Subscribers the last PUBLISH took past their high mark; the input after it waits until
    /// they drain (see `backlog.rs` and `serving`).
    congested: Vec<Arc<Mailbox>>,
    rbuf: BytesMut,
    wbuf: BytesMut,
    /// Bytes were written and not yet flushed (TLS keeps them in its own buffer until then).
    flushing: bool,
    /// Replies waiting for the store (only with `[persistence]`, and only while any waits).
    gated: Option<Box<gated::Gated>>,
    shared: Arc<Shared>,
    /// The configuration in force: re-read only when a reload swapped it (a pointer compare
    /// per use instead of an `ArcSwap` load).
    config: Cache<Arc<ArcSwap<Config>>, Arc<Config>>,
    conn_id: ConnId,
    /// PUBLISHes and bytes received since the counters were last added to (once per input
    /// step).
    received: Tally,
    /// Held while the socket lives (see `Slot`).
    slot: Slot,
}

/// The state of a connected client.
struct Client {
    accepted: Accepted,
    /// The cluster's token for this client id (0 without a cluster), given back when a clean
    /// session ends.
    claim: u64,
    /// The client as the ACL knows it, passed with what it publishes; made by its first
    /// PUBLISH or its will.
    publisher: Option<Arc<Publisher>>,
    session: SessionHandle,
    outbound: OutboundRx,
}

impl<S> Connection<S> {
    /// Where the next encoded packet goes: the write buffer, or behind the replies that wait
    /// for the store if any does or this one must (`wait` not yet met; an LSN of 0 =
    /// nothing to wait for).
    fn out(&mut self, wait: impl Into<Wait>) -> &mut BytesMut {
        let wait = wait.into();
        let ready = wait.lsn == 0
            || self
                .shared
                .store
                .as_ref()
                .is_none_or(|s| wait.ready(s.durable_lsn()));
        if ready && self.gated.is_none() {
            return &mut self.wbuf;
        }
        self.gated.get_or_insert_with(Default::default).tail(wait)
    }

    /// Bytes encoded and not yet written: the write buffer and what waits for the store.
    fn unwritten(&self) -> usize {
        self.wbuf.len() + self.gated.as_ref().map_or(0, |g| g.len())
    }
}

impl Client {
    /// The publisher to store with a retained message (made on first use).
    fn publisher(&mut self) -> &Arc<Publisher> {
        let (accepted, session) = (&self.accepted, self.session.id);
        self.publisher.get_or_insert_with(|| {
            Arc::new(Publisher {
                client_id: accepted.client_id.clone(),
                username: accepted.username.as_deref().map(Arc::from),
                bridge_session: accepted.bridge.then_some(session),
            })
        })
    }
}

enum Flow {
    Continue,
    Disconnect,
    /// Hand this command to the session.
    ToSession(SessionCmd),
    /// Hand this command (SUBSCRIBE, UNSUBSCRIBE) to the session, and hold the input after
    /// it until the session has changed its routes: a PUBLISH sent right behind a SUBSCRIBE
    /// then reaches the new subscription, as it would on a broker with one thread.
    ToSessionThenHold(SessionCmd, Routed),
    /// A hook answers later: the input after this packet waits for the answer, and the
    /// packet goes on from there (`Connection::resume`).
    Hook(Boxed<hooked::Resume>),
}

/// What a connection waits for after a SUBSCRIBE or UNSUBSCRIBE: the session's word that its
/// routes changed, and the cluster interest held until then.
pub(crate) struct Routed {
    done: tokio::sync::oneshot::Receiver<()>,
    hold: Option<crate::routing::remote::Hold>,
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

/// Streams that buffer their own reads (TLS; the in-process pipe this broker's bridges
/// reach it through): read into the buffer directly.
macro_rules! buffered_transport {
    ($($t:ty),*) => {$(
        impl Transport for $t {
            fn poll_read_some(
                &mut self,
                cx: &mut Context<'_>,
                buf: &mut BytesMut,
            ) -> Poll<io::Result<usize>> {
                buf.reserve(READ_CHUNK);
                tokio_util::io::poll_read_buf(Pin::new(self), cx, buf)
            }
        }
    )*};
}

buffered_transport!(
    tokio_rustls::server::TlsStream<TcpStream>,
    tokio::io::DuplexStream
);

/// Bytes reserved for each read; the buffer is released again once it holds no partial frame.
const READ_CHUNK: usize = 16 * 1024;
