//! The messages that cross between a connection and its session, here where both sides see
//! them: commands in the session's mailbox, what the session sends back on the outbound link,
//! and the link itself.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::SystemTime;

use tokio::sync::oneshot;

use crate::codec::Packet;
use crate::message::{ClientId, ConnId, Message, QoS};
use crate::observability::metrics::ListenerStats;
use crate::routing::router::Delivery;
use crate::sessions::outbound::OutboundTx;

/// Commands from a connection to its session.
#[derive(Debug)]
pub enum SessionCmd {
    /// A connection takes the session over; any earlier connection is kicked. Boxed, like
    /// the other large variants, to keep every mailbox slot small. (There is no Detach: the
    /// session sees its connection go when the connection's end of the link is dropped.)
    Attach(Box<Attach>),
    /// SUBSCRIBE, already checked: `None` marks a refused filter (SUBACK 0x80).
    Subscribe {
        /// SUBSCRIBE packet id.
        pkid: u16,
        /// Filters in request order with the QoS to grant.
        filters: Box<[(String, Option<QoS>)]>,
        /// Answered (or dropped) once the routes are installed; the connection holds its
        /// later input until then.
        routed: oneshot::Sender<()>,
    },
    /// UNSUBSCRIBE.
    Unsubscribe {
        /// UNSUBSCRIBE packet id.
        pkid: u16,
        /// Filters to remove.
        filters: Box<[String]>,
        /// Answered (or dropped) once the routes are gone.
        routed: oneshot::Sender<()>,
    },
    /// PUBACK from the client for one of our QoS 1 deliveries.
    PubAck(u16),
    /// PUBREC from the client for one of our QoS 2 deliveries.
    PubRec(u16),
    /// PUBCOMP from the client.
    PubComp(u16),
    /// A message from the router (publishers `try_send` it; a full mailbox is a counted drop).
    Deliver(Delivery),
    /// From the HTTP API (`try_send`, like deliveries): tell what the session holds, or close
    /// its connection.
    Admin(Box<Admin>),
}

/// What the HTTP API asks of a session.
#[derive(Debug)]
pub enum Admin {
    /// Answer with the session's state.
    Inspect(oneshot::Sender<SessionInfo>),
    /// Close the connection as if the network had dropped it: its will is published, and a
    /// persistent session stays.
    Kick(oneshot::Sender<bool>),
    /// Another node of the cluster takes the session over: close the connection (its will
    /// is published), answer with what the session holds, and end here.
    Export(oneshot::Sender<super::handover::Handover>),
}

/// A session's state as the HTTP API shows it.
#[derive(Debug, Clone)]
pub struct SessionInfo {
    /// The client id.
    pub client_id: ClientId,
    /// The user name of its latest connection.
    pub username: Option<Arc<str>>,
    /// clean_session = 0.
    pub persistent: bool,
    /// Its connection, if it has one.
    pub connection: Option<Arc<ConnInfo>>,
    /// Its filters with their granted QoS.
    pub subscriptions: Vec<(String, QoS)>,
    /// Messages in its mqueue.
    pub queued: usize,
    /// Payload bytes in its mqueue.
    pub queued_bytes: usize,
    /// Messages sent and not yet acknowledged.
    pub inflight: usize,
}

/// What a connection tells its session about itself, for the HTTP API.
#[derive(Debug)]
pub struct ConnInfo {
    /// The client's address.
    pub peer: SocketAddr,
    /// The listener it came in on (its address and transport).
    pub listener: Arc<ListenerStats>,
    /// "MQTT 3.1.1" or "MQTT 3.1".
    pub protocol: &'static str,
    /// The keepalive it asked for, in seconds.
    pub keepalive: u16,
    /// When its CONNECT was accepted.
    pub since: SystemTime,
    /// Another broker's bridge: live messages keep their RETAIN flag, so retained messages
    /// propagate (as Mosquitto does for a bridge with `try_private`).
    pub bridge: bool,
    /// The queue limit of a session this connection makes, in place of
    /// `session.max_queued_messages` (this broker's own bridges).
    pub max_queued: Option<usize>,
}

/// Why a connection is told to close by its session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kick {
    /// Another connection with the same client id took the session [MQTT-3.1.4-2].
    TakenOver,
    /// An operator closed the connection (HTTP API); the will is published.
    Kicked,
    /// The session was discarded by a clean-session CONNECT elsewhere.
    Discarded,
    /// The broker is shutting down.
    Shutdown,
}

/// What an `Attach` command carries.
#[derive(Debug)]
pub struct Attach {
    /// How to reach the new connection.
    pub link: ConnLink,
    /// Answered just before the link is stored and the resends are queued in it; the
    /// connection writes CONNACK first and only then takes from the link. Not answered if
    /// the connection had given up waiting.
    pub reply: oneshot::Sender<()>,
}

/// What the session sends to its connection, the socket's only writer. Kept to 16 bytes:
/// every connection's outbound mailbox allocates slots for it up front.
#[derive(Debug)]
pub enum Outbound {
    /// SUBACK or UNSUBACK (rare, so boxed).
    Packet(Box<Packet>),
    /// A reply that may go out only once the store's LSN beside it is durable (a SUBACK or
    /// UNSUBACK of a persistent session).
    Stored(Box<(Packet, u64)>),
    /// PUBREL for an outbound QoS 2 flow.
    PubRel(u16),
    /// A PUBLISH of a shared message.
    Publish {
        /// The message.
        msg: Arc<Message>,
        /// Delivery QoS.
        qos: QoS,
        /// Packet id, for QoS 1/2.
        pkid: Option<u16>,
        /// DUP flag: set only on a resend [MQTT-3.3.1-1].
        dup: bool,
        /// RETAIN flag: set only for retained-on-subscribe [MQTT-3.3.1-8, MQTT-3.3.1-9].
        retain: bool,
    },
}

/// A session's way to its current connection.
#[derive(Debug)]
pub struct ConnLink {
    /// The connection's id, for the mailbox's fence (see `mailbox.rs`).
    pub conn: ConnId,
    /// The user name the connection authenticated as, for ACL checks on deliveries.
    pub username: Option<Arc<str>>,
    /// The connection's outbound queue, and the way to make it close.
    pub outbound: OutboundTx,
    /// Who the connection is, for the HTTP API.
    pub info: Arc<ConnInfo>,
}
