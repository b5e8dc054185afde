//! One bridge's life: connect to the remote (addresses in turn, backing off while it fails),
//! then to this broker through a pipe, subscribe both ways, and carry messages until either
//! side goes; then report the state and start again.

use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tokio::time::{sleep, Instant};
use tokio_rustls::TlsConnector;

use super::peer::Peer;
use super::{remote, BridgeError};
use crate::client::protocol::Identity;
use crate::client::{self, Slot};
use crate::codec::{Connect, LastWill, Packet, Protocol, Publish, Subscribe};
use crate::config::{BridgeConfig, TopicRule};
use crate::message::{Message, QoS};
use crate::observability::metrics::{ListenerStats, Metrics, OpenSocket};
use crate::routing::topic;
use crate::sessions::Shared;

/// The pipe between the bridge and this broker's connection task.
const PIPE_BYTES: usize = 64 * 1024;

/// The bridge's connections here, as the listeners' counters count them.
pub fn stats(cfg: &BridgeConfig) -> Arc<ListenerStats> {
    Arc::new(ListenerStats {
        listener: format!("bridge {}", cfg.name),
        transport: "bridge",
        accepted: AtomicU64::new(0),
        open: AtomicU64::new(0),
    })
}

/// How long making a bridge's session may hold the broker's start.
const PRIME_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

/// Makes a persistent bridge's session here (`prime`), before the listeners serve: what a
/// client publishes from the first moment then waits for the remote.
pub async fn make_session(shared: &Arc<Shared>, cfg: &BridgeConfig, stats: &Arc<ListenerStats>) {
    if cfg.clean_session {
        return;
    }
    match tokio::time::timeout(PRIME_TIMEOUT, prime(shared, cfg, stats)).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => tracing::warn!(bridge = %cfg.name, error = %e, "bridge session not made"),
        Err(_) => tracing::warn!(bridge = %cfg.name, "bridge session not made in time"),
    }
}

/// Runs the bridge until the broker stops.
pub async fn run(
    shared: Arc<Shared>,
    cfg: BridgeConfig,
    tls: Option<TlsConnector>,
    stats: Arc<ListenerStats>,
) {
    let (base, cap) = cfg.restart_timeout;
    let mut wait = base;
    notify(&shared, &cfg, false);
    for attempt in 0usize.. {
        let address = &cfg.address[attempt % cfg.address.len()];
        let mut connected = false;
        let ended = tokio::select! {
            r = connection(&shared, &cfg, tls.as_ref(), address, &stats, &mut connected) => r,
            _ = shared.shutdown.cancelled() => break,
        };
        if connected {
            notify(&shared, &cfg, false);
            wait = base;
        }
        match ended {
            Ok(()) => tracing::info!(bridge = %cfg.name, address, "bridge connection ended"),
            Err(e) => tracing::warn!(bridge = %cfg.name, address, error = %e, "bridge down"),
        }
        tokio::select! {
            _ = sleep(wait) => {}
            _ = shared.shutdown.cancelled() => break,
        }
        if !connected {
            wait = (wait * 2).min(cap);
        }
    }
    notify(&shared, &cfg, false);
}

/// Publishes the connection state here, retained.
fn notify(shared: &Shared, cfg: &BridgeConfig, up: bool) {
    if !cfg.notifications {
        return;
    }
    shared.router.publish(Arc::new(Message {
        topic: Bytes::from(cfg.state_topic()),
        payload: Bytes::from_static(if up { b"1" } else { b"0" }),
        qos: QoS::AtLeastOnce,
        retain: true,
    }));
}

/// A QoS 1/2 message on its way across, by the packet id it has on the side it goes to.
#[derive(Clone, Copy)]
struct Crossing {
    /// Its packet id on the side it came from.
    from: u16,
    /// The QoS it came with there (what that side's acknowledgement must be).
    qos: QoS,
}

/// Packet ids in use toward one side.
#[derive(Default)]
struct Ids {
    next: u16,
    open: HashMap<u16, Crossing>,
}

impl Ids {
    /// A free packet id for `c`; an error once all 65,535 are in flight (a side that never
    /// acknowledges), which ends the connection instead of searching forever.
    fn take(&mut self, c: Crossing, side: &'static str) -> Result<u16, BridgeError> {
        if self.open.len() >= usize::from(u16::MAX) {
            return Err(BridgeError::Protocol {
                side,
                what: "65,535 messages unacknowledged".into(),
            });
        }
        loop {
            self.next = self.next.checked_add(1).unwrap_or(1);
            if !self.open.contains_key(&self.next) {
                self.open.insert(self.next, c);
                return Ok(self.next);
            }
        }
    }
}

/// One connection to the remote and one to this broker, until one of them ends.
async fn connection(
    shared: &Arc<Shared>,
    cfg: &BridgeConfig,
    tls: Option<&TlsConnector>,
    address: &str,
    stats: &Arc<ListenerStats>,
    connected: &mut bool,
) -> Result<(), BridgeError> {
    let max_packet = shared.config.load().mqtt.max_packet_size;
    // What comes in may be larger than this broker takes by the prefixes swapped (a topic is
    // at most 65,535 bytes): read it, and let `coming_in` judge it after the swap.
    let mut remote = connect_remote(cfg, tls, address, max_packet.saturating_add(65_535)).await?;
    let mut local = connect_local(shared, cfg, stats).await?;
    // Up once both sides have answered their SUBSCRIBE: from then on what the rules match
    // is carried. Messages may cross before (a resumed session resends what was in flight).
    let ins = cfg.topic.iter().filter(|r| r.comes_in());
    let mut subacks = usize::from(subscribe(&mut remote, ins, TopicRule::remote_filter));
    let outs = cfg.topic.iter().filter(|r| r.goes_out());
    subacks += usize::from(subscribe(&mut local, outs, TopicRule::local_filter));
    remote.flush().await?;
    local.flush().await?;
    let mut up = || {
        *connected = true;
        tracing::info!(bridge = %cfg.name, address, "bridge up");
        notify(shared, cfg, true);
        (!cfg.notifications_local_only).then(|| state_publish(cfg, true))
    };
    let mut remote_note = None;
    if subacks == 0 {
        remote_note = up();
    }
    if let Some(note) = remote_note.take() {
        remote.queue(&note);
        remote.flush().await?;
    }
    let link = Link {
        cfg,
        max_local: max_packet,
        metrics: &shared.metrics,
        subacks,
        up: &mut up,
    };
    carry(link, &mut local, &mut remote).await
}

/// What `carry` needs besides the two sides.
struct Link<'a, F: FnMut() -> Option<Packet>> {
    cfg: &'a BridgeConfig,
    /// This broker's `max_packet_size`: what comes in must fit.
    max_local: usize,
    /// Where a message refused here is counted.
    metrics: &'a Metrics,
    /// SUBACKs still to come before the bridge is up.
    subacks: usize,
    /// Declares the bridge up; what to tell the remote, if anything.
    up: &'a mut F,
}

/// Connects to this broker through a pipe its own connection task serves.
async fn connect_local(
    shared: &Arc<Shared>,
    cfg: &BridgeConfig,
    stats: &Arc<ListenerStats>,
) -> Result<Peer, BridgeError> {
    let (ours, theirs) = tokio::io::duplex(PIPE_BYTES);
    let identity = Identity::Internal {
        username: cfg.local_username.clone(),
        max_queued: cfg.max_queued_messages,
    };
    let slot = Slot {
        open: OpenSocket::new(stats),
        permit: None,
    };
    let peer = SocketAddr::from((Ipv4Addr::LOCALHOST, 0));
    shared
        .tracker
        .spawn(client::serve(theirs, peer, shared.clone(), identity, slot));
    let local_connect = Connect {
        protocol: Protocol::V311,
        bridge: true,
        clean_session: cfg.clean_session,
        keep_alive: 0,
        client_id: cfg.local_client_id(),
        will: None,
        username: None,
        password: None,
    };
    let (local, _) = Peer::connect(Box::new(ours), local_connect, "local", usize::MAX).await?;
    Ok(local)
}

/// Makes the bridge's persistent session here, subscribed to the out rules, and leaves it
/// offline: what they match then waits for the remote from the start, even if the remote
/// was never reached.
async fn prime(
    shared: &Arc<Shared>,
    cfg: &BridgeConfig,
    stats: &Arc<ListenerStats>,
) -> Result<(), BridgeError> {
    let mut local = connect_local(shared, cfg, stats).await?;
    let outs = cfg.topic.iter().filter(|r| r.goes_out());
    if subscribe(&mut local, outs, TopicRule::local_filter) {
        local.flush().await?;
        while !matches!(local.recv().await?, Packet::SubAck(_)) {}
    }
    local.queue(&Packet::Disconnect);
    local.flush().await
}

/// Dials `address` and connects, with the bridge bit if `try_private` (and without it once
/// if the remote refuses the level, as Mosquitto does).
async fn connect_remote(
    cfg: &BridgeConfig,
    tls: Option<&TlsConnector>,
    address: &str,
    max_packet: usize,
) -> Result<Peer, BridgeError> {
    let will = (!cfg.notifications_local_only && cfg.notifications).then(|| LastWill {
        topic: Bytes::from(cfg.state_topic()),
        payload: Bytes::from_static(b"0"),
        qos: QoS::AtLeastOnce,
        retain: true,
    });
    let mut bridge_bit = cfg.try_private;
    loop {
        let connect = Connect {
            protocol: Protocol::V311,
            bridge: bridge_bit,
            clean_session: cfg.clean_session,
            keep_alive: cfg.keepalive,
            client_id: cfg.remote_client_id(),
            will: will.clone(),
            username: cfg.username.clone(),
            password: cfg.password.clone().map(Bytes::from),
        };
        let stream = remote::dial(address, tls).await?;
        let connecting = Peer::connect(stream, connect, "remote", max_packet);
        match tokio::time::timeout(Duration::from_secs(10), connecting).await {
            Err(_) => return Err(BridgeError::Timeout),
            Ok(Err(BridgeError::Refused { code: 1, .. })) if bridge_bit => bridge_bit = false,
            Ok(r) => return r.map(|(peer, _)| peer),
        }
    }
}

fn state_publish(cfg: &BridgeConfig, up: bool) -> Packet {
    Packet::Publish(Publish {
        dup: false,
        qos: QoS::AtMostOnce,
        retain: true,
        topic: Bytes::from(cfg.state_topic()),
        pkid: None,
        payload: Bytes::from_static(if up { b"1" } else { b"0" }),
    })
}

/// Queues one SUBSCRIBE of every rule's filter on `side`, at the rule's QoS; false if there
/// is none.
fn subscribe<'a>(
    side: &mut Peer,
    rules: impl Iterator<Item = &'a TopicRule>,
    filter: impl Fn(&TopicRule) -> &str,
) -> bool {
    let filters: Vec<(String, QoS)> = rules.map(|r| (filter(r).to_owned(), r.qos)).collect();
    if filters.is_empty() {
        return false;
    }
    side.queue(&Packet::Subscribe(Subscribe { pkid: 1, filters }));
    true
}

/// Carries messages both ways until one side ends.
async fn carry<F: FnMut() -> Option<Packet>>(
    mut link: Link<'_, F>,
    local: &mut Peer,
    remote: &mut Peer,
) -> Result<(), BridgeError> {
    let cfg = link.cfg;
    // Toward the remote: its packet ids, each with the local one it answers.
    let mut out = Ids::default();
    // Toward this broker: its packet ids, each with the remote one it answers.
    let mut inn = Ids::default();
    let keepalive = Duration::from_secs(u64::from(cfg.keepalive));
    let mut last_heard = Instant::now();
    let mut ping = tokio::time::interval(if keepalive.is_zero() {
        Duration::from_secs(3600)
    } else {
        keepalive / 2
    });
    ping.tick().await;
    loop {
        tokio::select! {
            p = local.recv() => match p? {
                Packet::Publish(p) => going_out(cfg, p, local, remote, &mut out)?,
                Packet::PubRel(id) => local.queue(&Packet::PubComp(id)),
                Packet::PubAck(id) | Packet::PubComp(id) => {
                    if let Some(c) = inn.open.remove(&id) {
                        remote.queue(&ack_for(c));
                    }
                }
                Packet::PubRec(id) => {
                    local.queue(&Packet::PubRel(id));
                    if let Some(c) = inn.open.remove(&id) {
                        remote.queue(&ack_for(c));
                    }
                }
                Packet::SubAck(ack) => suback(&mut link, "local", &ack.codes, remote),
                _ => {}
            },
            p = remote.recv() => {
                last_heard = Instant::now();
                match p? {
                    Packet::Publish(p) => coming_in(&link, p, local, remote, &mut inn)?,
                    Packet::PubRel(id) => remote.queue(&Packet::PubComp(id)),
                    Packet::PubAck(id) => {
                        if let Some(c) = out.open.remove(&id) {
                            local.queue(&ack_for(c));
                        }
                    }
                    Packet::PubRec(id) => {
                        // The remote has it now: release it here, finish there.
                        remote.queue(&Packet::PubRel(id));
                        if let Some(c) = out.open.remove(&id) {
                            local.queue(&ack_for(c));
                        }
                    }
                    Packet::SubAck(ack) => suback(&mut link, "remote", &ack.codes, remote),
                    _ => {}
                }
            }
            _ = ping.tick() => {
                if last_heard.elapsed() > keepalive + keepalive / 2 {
                    return Err(BridgeError::Timeout);
                }
                remote.queue(&Packet::PingReq);
            }
        }
        remote.flush().await?;
        local.flush().await?;
    }
}

/// The acknowledgement that releases a crossing message on the side it came from.
fn ack_for(c: Crossing) -> Packet {
    match c.qos {
        QoS::ExactlyOnce => Packet::PubRec(c.from),
        _ => Packet::PubAck(c.from),
    }
}

/// A side answered the bridge's SUBSCRIBE: after both, the bridge is up.
fn suback<F: FnMut() -> Option<Packet>>(
    link: &mut Link<'_, F>,
    side: &str,
    codes: &[crate::codec::SubAckCode],
    remote: &mut Peer,
) {
    if codes.contains(&crate::codec::SubAckCode::Failure) {
        let name = &link.cfg.name;
        tracing::warn!(bridge = %name, side, ?codes, "a bridge subscription was refused");
    }
    link.subacks = link.subacks.saturating_sub(1);
    if link.subacks == 0 {
        if let Some(note) = (link.up)() {
            remote.queue(&note);
        }
    }
}

/// A message from this broker: to the remote under the first out rule that covers it.
fn going_out(
    cfg: &BridgeConfig,
    p: Publish,
    local: &mut Peer,
    remote: &mut Peer,
    out: &mut Ids,
) -> Result<(), BridgeError> {
    let topic = std::str::from_utf8(&p.topic).unwrap_or_default();
    let rule = cfg
        .topic
        .iter()
        .find(|r| r.goes_out() && topic::matches(r.local_filter(), &p.topic));
    let Some(to) = rule.and_then(|r| r.to_remote(topic)) else {
        // Not ours after all (an overlap the rules do not cover): acknowledged, not carried.
        if let Some(id) = p.pkid {
            local.queue(&ack_for(Crossing {
                from: id,
                qos: p.qos,
            }));
        }
        return Ok(());
    };
    let pkid = match p.pkid.filter(|_| p.qos != QoS::AtMostOnce) {
        Some(from) => Some(out.take(Crossing { from, qos: p.qos }, "remote")?),
        None => None,
    };
    remote.queue(&Packet::Publish(Publish {
        dup: false,
        qos: p.qos,
        retain: p.retain,
        topic: Bytes::from(to),
        pkid,
        payload: p.payload,
    }));
    Ok(())
}

/// A message from the remote: here under the first in rule that covers it, at most at the
/// rule's QoS. One this broker would refuse (a topic with a wildcard, or a packet over its
/// `max_packet_size` once the prefix is swapped) is acknowledged and dropped, counted: carried,
/// it would close the bridge's connection here, and the remote would send it again forever.
fn coming_in<F: FnMut() -> Option<Packet>>(
    link: &Link<'_, F>,
    p: Publish,
    local: &mut Peer,
    remote: &mut Peer,
    inn: &mut Ids,
) -> Result<(), BridgeError> {
    let topic = std::str::from_utf8(&p.topic).unwrap_or_default();
    let rule = link
        .cfg
        .topic
        .iter()
        .find(|r| r.comes_in() && topic::matches(r.remote_filter(), &p.topic));
    let crossing = p.pkid.map(|from| Crossing { from, qos: p.qos });
    let (Some(rule), Some(to)) = (rule, rule.and_then(|r| r.to_local(topic))) else {
        if let Some(c) = crossing {
            remote.queue(&ack_for(c));
        }
        return Ok(());
    };
    // Fixed header (5 at most), topic length (2), packet id (2).
    let size = 9 + to.len() + p.payload.len();
    if !topic::valid_name(to.as_bytes()) || (link.max_local > 0 && size > link.max_local) {
        let name = &link.cfg.name;
        tracing::debug!(bridge = %name, topic = to, size, "refused here: dropped");
        Metrics::incr(&link.metrics.dropped_oversize);
        if let Some(c) = crossing {
            remote.queue(&ack_for(c));
        }
        return Ok(());
    }
    let qos = p.qos.min(rule.qos);
    let pkid = match (qos, crossing) {
        (QoS::AtMostOnce, Some(c)) => {
            // Carried at QoS 0: nothing here will acknowledge it.
            remote.queue(&ack_for(c));
            None
        }
        (_, Some(c)) => Some(inn.take(c, "local")?),
        (_, None) => None,
    };
    local.queue(&Packet::Publish(Publish {
        dup: false,
        qos,
        retain: p.retain,
        topic: Bytes::from(to),
        pkid,
        payload: p.payload,
    }));
    Ok(())
}
