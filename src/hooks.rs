//! The extension seam for embedding Tern as a library: [`Hooks`], whose methods the broker
//! calls at each client event, given to [`crate::broker::Builder::hooks`].
//!
//! Each hook runs in the task that has the event, with no hop to another task:
//!
//! | hook | runs in | may |
//! |---|---|---|
//! | `on_connect`, `authenticate` | the connection task, during the handshake | refuse (any CONNACK code); accept or refuse instead of the password file, or leave it to the file (`Verdict::Next`) |
//! | `authorize` | wherever the ACL file is asked: the publisher's connection (PUBLISH, will), the subscriber's connection (SUBSCRIBE), its session (each delivery) | allow or deny instead of the ACL file, or leave it to the file |
//! | `on_subscribe` | the subscriber's connection, before the filter is checked | keep, refuse (SUBACK 0x80) or replace a filter |
//! | `on_publish` | the publisher's connection, after the checks, before routing | keep, drop or rewrite topic and payload |
//! | `on_deliver` | the subscriber's session, as a message first goes to its connection | watch |
//! | `on_disconnect` | the connection task, as it ends (after the will) | watch |
//! | `on_message_dropped` | where the drop happens (the publisher's connection, the router, a session) | watch |
//!
//! The four that may decide answer with a [`Reply`]: `Reply::Now` costs nothing more than the
//! call; `Reply::Later` gives a future that the client's own connection task awaits while its
//! input waits behind it, so a slow hook slows only that client (its packets keep their
//! order). The watching hooks and `authorize` are plain calls: they run on paths that must
//! never wait (a session's delivery, the router). A broker built without hooks makes none of
//! these calls: each event costs one test of an `Option`.

use std::fmt;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;

use bytes::Bytes;

use crate::codec::ConnectReturnCode;
use crate::message::{Message, QoS};

pub use crate::observability::metrics::DropReason;

/// A future a hook answers with later, awaited by the client's connection task.
pub type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send + 'static>>;

/// A hook's answer: now, or from a future the client's own task awaits.
pub enum Reply<T> {
    /// The answer.
    Now(T),
    /// The answer, once the future completes; the client's further input waits for it.
    Later(BoxFuture<T>),
}

impl<T> Reply<T> {
    /// An answer `f` gives later (it must own what it uses: clone from the hook's arguments).
    pub fn later(f: impl Future<Output = T> + Send + 'static) -> Reply<T> {
        Reply::Later(Box::pin(f))
    }
}

impl<T> From<T> for Reply<T> {
    fn from(t: T) -> Reply<T> {
        Reply::Now(t)
    }
}

impl<T> fmt::Debug for Reply<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Reply::Now(_) => "Reply::Now",
            Reply::Later(_) => "Reply::Later",
        })
    }
}

/// The client an event is about.
#[derive(Debug, Clone, Copy)]
pub struct ClientRef<'a> {
    /// Its client id (after any assignment).
    pub client_id: &'a str,
    /// The user name it authenticated with (or its certificate's, or a bridge's
    /// `local_username`).
    pub username: Option<&'a str>,
}

/// A CONNECT that passed the protocol's rules, as `on_connect` and `authenticate` see it.
#[derive(Debug, Clone, Copy)]
pub struct ConnectInfo<'a> {
    /// The client id, assigned if the client sent an empty one.
    pub client_id: &'a str,
    /// The user name: the CONNECT's, or the certificate's on a `use_identity_as_username`
    /// listener.
    pub username: Option<&'a str>,
    /// The password, if the CONNECT had one.
    pub password: Option<&'a [u8]>,
    /// The client's address.
    pub peer: SocketAddr,
    /// Clean-session flag.
    pub clean_session: bool,
    /// Keepalive, in seconds.
    pub keep_alive: u16,
    /// `MQTT 3.1` or `MQTT 3.1.1`.
    pub protocol: &'static str,
    /// Another broker's bridge (the CONNECT had the bridge bit), or one of this broker's own.
    pub bridge: bool,
}

impl ConnectInfo<'_> {
    /// The client this CONNECT makes.
    pub fn client(&self) -> ClientRef<'_> {
        ClientRef {
            client_id: self.client_id,
            username: self.username,
        }
    }
}

/// What `authenticate` and `authorize` decide.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Accepted, whatever the password or ACL file says.
    Allow,
    /// Refused, whatever the files say (CONNACK 0x04 with a user name, 0x05 without; an ACL
    /// denial is acknowledged and dropped, or SUBACK 0x80).
    Deny,
    /// Left to the files (`[auth]`), as if there were no hook: the chained case.
    Next,
}

/// What an `authorize` question is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Publishing to a topic name (a PUBLISH or a will).
    Publish,
    /// Subscribing to a filter (the filter inside a `$share/` or `$queue/` prefix).
    Subscribe,
    /// Receiving a message on a topic name; asked per delivery.
    Receive,
}

/// What `on_subscribe` does with one requested filter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SubscribeAction {
    /// Subscribe as asked (the usual checks and the ACL still apply).
    Keep,
    /// SUBACK 0x80 for this filter.
    Refuse,
    /// Subscribe to this filter at this maximum QoS instead (checked as the client's would
    /// be; the SUBACK code is for it).
    Replace(String, QoS),
}

/// What `on_publish` does with a message before it is routed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PublishAction {
    /// Route it as it is.
    Keep,
    /// Do not route it (a QoS 1/2 one is still acknowledged, as an ACL denial is).
    Drop,
    /// Route this instead, with the same QoS and retain flag. A topic that is not a valid
    /// topic name (empty, wildcards, too many levels) drops the message, logged.
    Rewrite {
        /// The new topic name.
        topic: String,
        /// The new payload.
        payload: Bytes,
    },
}

/// The events an embedding application can change or watch. Every method has a default that
/// changes nothing, so an implementation names only what it needs. See the module doc for
/// where each runs.
pub trait Hooks: Send + Sync + 'static {
    /// A CONNECT passed the protocol's rules; `Err(code)` refuses it with that CONNACK code
    /// (any but `Accepted`). Runs before `authenticate`.
    fn on_connect(&self, connect: &ConnectInfo<'_>) -> Reply<Result<(), ConnectReturnCode>> {
        let _ = connect;
        Reply::Now(Ok(()))
    }

    /// Checks the CONNECT's credentials: `Allow` or `Deny` replaces the password file and
    /// `allow_anonymous`, `Next` leaves the decision to them. Not asked for this broker's own
    /// bridges or where a certificate is the identity without a usable name.
    fn authenticate(&self, connect: &ConnectInfo<'_>) -> Reply<Verdict> {
        let _ = connect;
        Reply::Now(Verdict::Next)
    }

    /// May `client` do `action` on `topic` (a filter for `Subscribe`)? `Next` asks the ACL
    /// file. `$SYS` stays read-only to clients whatever this says.
    fn authorize(&self, client: ClientRef<'_>, action: Action, topic: &str) -> Verdict {
        let _ = (client, action, topic);
        Verdict::Next
    }

    /// One filter of a SUBSCRIBE, before it is checked and granted.
    fn on_subscribe(
        &self,
        client: ClientRef<'_>,
        filter: &str,
        qos: QoS,
    ) -> Reply<SubscribeAction> {
        let _ = (client, filter, qos);
        Reply::Now(SubscribeAction::Keep)
    }

    /// A message `client` published (or its will), after the checks and before routing.
    fn on_publish(&self, client: ClientRef<'_>, msg: &Message) -> Reply<PublishAction> {
        let _ = (client, msg);
        Reply::Now(PublishAction::Keep)
    }

    /// `msg` goes to `client`'s connection for the first time (a resend after a reconnect is
    /// not reported again), at `qos`.
    fn on_deliver(&self, client: ClientRef<'_>, msg: &Message, qos: QoS) {
        let _ = (client, msg, qos);
    }

    /// `client`'s connection ended, for `reason` (its will, if any, is already published).
    fn on_disconnect(&self, client: ClientRef<'_>, reason: &dyn fmt::Display) {
        let _ = (client, reason);
    }

    /// A message was dropped, counted in the metrics under `reason`. `client_id` is the
    /// subscriber's that lost it, or for a PUBLISH refused whole (`MessageSizeLimit`,
    /// `MemoryLimit`, `NotAuthorized`) the publisher's.
    fn on_message_dropped(&self, client_id: &str, msg: &Message, reason: DropReason) {
        let _ = (client_id, msg, reason);
    }
}
