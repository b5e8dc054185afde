//! The handshake: CONNECT read under `connect_timeout`, checked (the password off the async
//! workers), the session found or made and attached, CONNACK written.

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::BytesMut;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::oneshot;
use tokio::time::timeout;
use tracing::{debug, info, trace};

use super::{
    Client, CloseReason, Connected, Connection, Transport, ATTACH_TIMEOUT, GOODBYE_TIMEOUT,
};
use crate::auth::Authz;
use crate::client::protocol::{self, Accepted, Identity, ProtocolError, Refusal};
use crate::codec::{self, ConnAck, Connect, ConnectReturnCode, DecodeError, Packet, Protocol};
use crate::hooks::{ConnectInfo, Hooks, Reply, Verdict};
use crate::observability::metrics::Metrics;
use crate::sessions::outbound;
use crate::sessions::registry::Opened;
use crate::sessions::{Attach, ConnInfo, ConnLink, SessionCmd, Shared};

impl<S: Transport + 'static> Connection<S> {
    /// The handshake, boxed by the task; the connected state if it succeeded.
    pub(super) async fn handshake_phase(
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
        self.shared.metrics.connected();
        Some(Connected::new(self, client))
    }

    /// Reads CONNECT, applies the rules, attaches the session and writes CONNACK.
    async fn handshake(
        &mut self,
        identity: Identity,
        peer: SocketAddr,
    ) -> Result<Client, CloseReason> {
        let deadline = self.config.load().mqtt.connect_timeout;
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
        let max_queued = match &identity {
            Identity::Internal { max_queued, .. } => Some(*max_queued),
            _ => None,
        };
        let accepted = match check(&shared, connect, identity, peer).await? {
            Ok(a) => a,
            Err(Refusal::Connack(code)) => {
                if matches!(
                    code,
                    ConnectReturnCode::BadUserNameOrPassword | ConnectReturnCode::NotAuthorized
                ) {
                    Metrics::incr(&shared.metrics.auth_failures);
                }
                // [MQTT-3.2.2-4], [MQTT-3.2.2-5], [MQTT-3.1.4-5]: answer, close, read no more.
                self.refuse(code).await;
                return Err(CloseReason::Refused(code));
            }
            Err(Refusal::Close(e)) => return Err(e.into()),
        };
        tracing::Span::current().record("client_id", &*accepted.client_id);
        // In a cluster the id must be this node's first: taken over from the node that has
        // it, or refused while that cannot be done safely.
        // This broker's own bridges are each node's own, under the same ids on every node.
        let claim = match (&shared.cluster, max_queued) {
            (None, _) | (_, Some(_)) => 0,
            (Some(ids), None) => {
                let claimed = match ids.serving() {
                    false => Err(ConnectReturnCode::ServerUnavailable),
                    true => {
                        // Answered (0x03 if need be) well before a client gives up waiting.
                        let limit = self.config.load().mqtt.connect_timeout.min(CLAIM_TIMEOUT);
                        let clean = accepted.clean_session;
                        timeout(limit, ids.claim(&accepted.client_id, clean))
                            .await
                            .unwrap_or(Err(ConnectReturnCode::ServerUnavailable))
                    }
                };
                match claimed {
                    Ok(c) => {
                        if let Some(h) = c.handover {
                            debug!(
                                messages = h.messages.len(),
                                "session handed over by another node"
                            );
                            let lsn = shared.registry.adopt(&shared, h);
                            // On disk here before the client hears session present.
                            if let (Some(store), true) = (&shared.store, lsn > 0) {
                                if !store.wait(lsn).await {
                                    return Err(CloseReason::StoreFailed);
                                }
                            }
                        }
                        c.token
                    }
                    Err(code) => {
                        debug!(?code, "the cluster refused the client id");
                        self.refuse(code).await;
                        return Err(CloseReason::Refused(code));
                    }
                }
            }
        };

        let username: Option<Arc<str>> = accepted.username.as_deref().map(Arc::from);
        let capacity = shared.config.load().session.max_inflight_messages + 64;
        let info = Arc::new(ConnInfo {
            peer,
            listener: self.slot.open.listener().clone(),
            protocol: protocol_name(accepted.protocol),
            keepalive: accepted.keep_alive.secs(),
            since: std::time::SystemTime::now(),
            bridge: accepted.bridge,
            max_queued,
        });
        let mut attached = None;
        // If the session ended between lookup and attach, or never answered, look again once,
        // with a new link (the old one went with the command).
        for _ in 0..2 {
            let (out_tx, out_rx) = outbound::channel(capacity);
            let link = ConnLink {
                conn: self.conn_id,
                username: username.clone(),
                outbound: out_tx,
                info: info.clone(),
            };
            let opened =
                shared
                    .registry
                    .open(&shared, &accepted.client_id, accepted.clean_session, link);
            let (session, link) = match opened {
                // A new session starts attached to us: no round trip.
                Opened::Fresh(session, lsn) => {
                    // A new persistent session is on disk before the client hears of it.
                    if lsn > 0 {
                        let stored = match &shared.store {
                            Some(store) => store.wait(lsn).await,
                            None => true,
                        };
                        if !stored {
                            return Err(CloseReason::StoreFailed);
                        }
                    }
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
        // [MQTT-3.2.2-1], [MQTT-3.2.2-2], [MQTT-3.2.2-3]; MQTT 3.1 has no session-present
        // flag, and its acknowledge-flags byte is reserved (0).
        let present = present && accepted.protocol == Protocol::V311;
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
        // Its will waits in the cluster too, in case this node dies before it is due.
        if let (Some(ids), true, Some(will)) = (&shared.cluster, claim > 0, &accepted.will) {
            ids.will(&accepted.client_id, claim, Some((will, username.as_ref())));
        }
        Ok(Client {
            accepted,
            claim,
            publisher: None,
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
            let max_packet = self.config.load().mqtt.max_packet_size;
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
}

/// The longest a CONNECT waits for its cluster to give it its client id.
const CLAIM_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

/// The protocol's name, as the API and the hooks show it.
fn protocol_name(p: Protocol) -> &'static str {
    match p {
        Protocol::V31 => "MQTT 3.1",
        Protocol::V311 => "MQTT 3.1.1",
    }
}

/// The CONNECT's rules, the hooks (if any) and the credentials: the accepted client or the
/// refusal, or the connection's end.
async fn check(
    shared: &Arc<Shared>,
    connect: Box<Connect>,
    identity: Identity,
    peer: SocketAddr,
) -> Result<Result<Accepted, Refusal>, CloseReason> {
    let config = shared.config.load_full();
    let (client_id, will) = match protocol::prepare_connect(&connect, &config.mqtt) {
        Ok(p) => p,
        Err(r) => return Ok(Err(r)),
    };
    let verdict = match shared.router.hooks() {
        None => Verdict::Next,
        Some(hooks) => {
            let asked = ask_hooks(hooks, &connect, &identity, &client_id, peer);
            // A hook that never answers must not hold the socket forever.
            match timeout(config.mqtt.connect_timeout, asked).await {
                Ok(Ok(v)) => v,
                Ok(Err(code)) => return Ok(Err(Refusal::Connack(code))),
                Err(_) => {
                    debug!("a connect hook did not answer within connect_timeout");
                    let code = ConnectReturnCode::ServerUnavailable;
                    return Ok(Err(Refusal::Connack(code)));
                }
            }
        }
    };
    let policy = shared.policy.load_full();
    // A password check costs a PBKDF2 run (up to 10^6 iterations, as the file says): it
    // runs on the blocking pool, so a burst of logins cannot stall the async workers.
    let hashes =
        verdict == Verdict::Next && protocol::checks_password(&connect, &identity, &policy);
    let finish = {
        let shared = shared.clone();
        move || {
            let (p, hooks) = (policy.as_ref(), shared.router.hooks());
            let username = protocol::user_of(&connect, &identity, &client_id, verdict, p)?;
            let authz = Authz::new(p, hooks);
            Ok(protocol::accept(
                &connect, client_id, will, username, &authz,
            ))
        }
    };
    if hashes {
        tokio::task::spawn_blocking(finish)
            .await
            .map_err(|_| CloseReason::SessionUnavailable)
    } else {
        Ok(finish())
    }
}

/// `on_connect`, then `authenticate` (for a client that has credentials to check): the
/// latter's verdict, or the code to refuse with.
async fn ask_hooks(
    hooks: &dyn Hooks,
    c: &Connect,
    identity: &Identity,
    client_id: &str,
    peer: SocketAddr,
) -> Result<Verdict, ConnectReturnCode> {
    let username = match identity {
        Identity::FromConnect => c.username.as_deref(),
        Identity::Certificate(name) => Some(name.as_str()),
        Identity::Internal { username, .. } => username.as_deref(),
        Identity::Unusable => None,
    };
    let internal = matches!(identity, Identity::Internal { .. });
    let info = ConnectInfo {
        client_id,
        username,
        password: c.password.as_deref(),
        peer,
        clean_session: c.clean_session,
        keep_alive: c.keep_alive,
        protocol: protocol_name(c.protocol),
        bridge: c.bridge || internal,
    };
    let connected = match hooks.on_connect(&info) {
        Reply::Now(r) => r,
        Reply::Later(f) => f.await,
    };
    match connected {
        Ok(()) => {}
        // "Refused with Accepted" is no refusal the client would understand: fail closed.
        Err(ConnectReturnCode::Accepted) => return Err(ConnectReturnCode::NotAuthorized),
        Err(code) => return Err(code),
    }
    if internal || *identity == Identity::Unusable {
        return Ok(Verdict::Next);
    }
    Ok(match hooks.authenticate(&info) {
        Reply::Now(v) => v,
        Reply::Later(f) => f.await,
    })
}
