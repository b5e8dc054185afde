//! One packet from a connected client: protocol checks, routing of PUBLISH, the acks the
//! connection answers itself, and the commands that go to the session.

use std::sync::Arc;
use tokio::sync::oneshot;

use tracing::{debug, trace};

use super::hooked::Resume;
use super::{Client, CloseReason, Connection, Flow, Routed, Transport};
use crate::auth::Authz;
use crate::client::protocol::{self, ProtocolError};
use crate::codec::{self, Packet};
use crate::message::{Message, QoS};
use crate::observability::metrics::{DropReason, Metrics};
use crate::routing::router::Replicated;
use crate::sessions::{Outbound, SessionCmd};
use crate::store::{Op, Store, Wait};

impl<S: Transport> Connection<S> {
    /// Publishes through the router (with its publisher, if retained), noting congested
    /// subscribers when `backpressure` is on.
    /// Submits the op `make` builds for the client's stored session; its LSN, or 0.
    fn stored(&self, client: &Client, make: impl FnOnce(u64) -> Op) -> u64 {
        match (&self.shared.store, client.session.stored) {
            (Some(store), Some(sid)) => store.submit(make(sid)),
            _ => 0,
        }
    }

    /// Routes a message whose deliveries wait for the store (see `Router::publish_deferred`);
    /// the LSN its acknowledgement waits for, at least `after`.
    fn route_later(
        &mut self,
        msg: Arc<Message>,
        client: &mut Client,
        after: u64,
    ) -> (Wait, Replicated) {
        let from = Some(client.publisher());
        let (published, later) = self.shared.router.publish_deferred(msg, from);
        let lsn = published.wait.lsn.max(after);
        self.gated
            .get_or_insert_with(Default::default)
            .defer(lsn, later);
        (Wait::from(lsn), published.replicated)
    }

    /// What its acknowledgement waits for: the store (nothing, without one), and in a
    /// cluster a retained message's write to the cluster's bucket.
    fn route(
        &mut self,
        msg: Arc<Message>,
        client: &mut Client,
        backpressure: bool,
    ) -> (Wait, Replicated) {
        let from = Some(client.publisher());
        let congested = backpressure.then_some(&mut self.congested);
        let out = self.shared.router.publish_from(msg, from, congested);
        (out.wait, out.replicated)
    }

    /// Encodes `ack` behind `wait`, once `replicated` is done if it is pending: the input
    /// after it waits with it, so the client's acknowledgements keep their order.
    fn acknowledge(&mut self, ack: Packet, (wait, replicated): (Wait, Replicated)) -> Flow {
        match replicated.0 {
            None => {
                codec::encode(&ack, self.out(wait));
                Flow::Continue
            }
            Some(written) => Flow::Hook(Box::pin(async move {
                written.await;
                Resume::Ack(ack, wait)
            })),
        }
    }

    #[inline]
    /// `stored_session`: the client's session is on disk, so its QoS 2 PUBLISH and PUBREL go
    /// out only once the session's record of them is (it was submitted before the packet
    /// reached the link, so the store's latest LSN covers it); otherwise a restart would
    /// resend under a new id a message the client already has, or resend a PUBLISH the
    /// client already released. So does a retained QoS 1 message owed on SUBSCRIBE: lost in
    /// a crash, nobody would send it again.
    pub(super) fn encode_outbound(&mut self, out: Outbound, stored_session: bool) {
        let after_records = |conn: &Self| match (&conn.shared.store, stored_session) {
            (Some(store), true) => store.submitted(),
            _ => 0,
        };
        match out {
            Outbound::PubRel(id) => {
                trace!(packet = "PUBREL", id, "sending");
                let lsn = after_records(self);
                codec::encode(&Packet::PubRel(id), self.out(lsn));
            }
            Outbound::Packet(p) => {
                trace!(packet = p.name(), "sending");
                codec::encode(&p, self.out(0));
            }
            Outbound::Stored(reply) => {
                let (p, lsn) = *reply;
                trace!(packet = p.name(), lsn, "sending once stored");
                codec::encode(&p, self.out(lsn));
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
                // A retained message owed on SUBSCRIBE has no publisher to send it again: it
                // goes out once it is on disk, as a QoS 2 one does.
                let lsn = if qos == QoS::ExactlyOnce || (retain && qos == QoS::AtLeastOnce) {
                    after_records(self)
                } else {
                    0
                };
                codec::encode_publish(
                    &msg.topic,
                    &msg.payload,
                    qos,
                    pkid,
                    dup,
                    retain,
                    self.out(lsn),
                );
            }
        }
    }

    /// Handles one packet from the client; what the session must know is returned for the
    /// caller to send (the only step that may wait).
    #[inline]
    pub(super) fn on_packet(
        &mut self,
        packet: Packet,
        client: &mut Client,
    ) -> Result<Flow, CloseReason> {
        let metrics = &self.shared.metrics;
        Metrics::incr(&metrics.packets_received);
        trace!(packet = packet.name(), "received");
        let cmd = match packet {
            Packet::Publish(p) => {
                self.received.add(p.qos, p.payload.len());
                let config = self.config.load();
                protocol::check_publish(&p, &config.mqtt)?;
                let backpressure = !config.session.backpressure_timeout.is_zero();
                let max_awaiting_rel = config.session.max_awaiting_rel;
                let (memory_limit, limit) =
                    (config.mqtt.memory_limit, config.mqtt.message_size_limit);
                let acc = &client.accepted;
                let router = &self.shared.router;
                let msg = Arc::new(Message {
                    topic: p.topic,
                    payload: p.payload,
                    qos: p.qos,
                    retain: p.retain,
                });
                let topic = msg.topic_str();
                if memory_limit > 0 && crate::observability::memory::used() > memory_limit {
                    // Nothing is acknowledged that the broker has no room for: the client goes
                    // (and may come back when there is room), what was acknowledged stays.
                    router.dropped(DropReason::MemoryLimit, &acc.client_id, &msg);
                    return Err(CloseReason::MemoryLimit);
                }
                let allowed = if limit > 0 && msg.payload.len() > limit {
                    // Acknowledged as usual and dropped, as Mosquitto does.
                    router.dropped(DropReason::MessageSizeLimit, &acc.client_id, &msg);
                    false
                } else {
                    let policy = self.shared.policy.load();
                    let authz = Authz::new(&policy, router.hooks());
                    let allowed = (acc.bridge && crate::auth::is_bridge_state(topic))
                        || crate::auth::may_publish(
                            &authz,
                            &acc.client_id,
                            acc.username.as_deref(),
                            topic,
                        );
                    if !allowed {
                        // [MQTT-3.3.5-2] acknowledged as usual, not delivered, counted.
                        router.dropped(DropReason::NotAuthorized, &acc.client_id, &msg);
                        debug!(topic, "publish denied; acknowledged and dropped");
                    }
                    allowed
                };
                let inbound = Inbound {
                    msg: allowed.then_some(msg),
                    qos: p.qos,
                    pkid: p.pkid,
                    backpressure,
                    max_awaiting_rel,
                };
                if self.shared.router.hooks().is_some() {
                    return self.publish_hooked(inbound, client);
                }
                return self.finish_publish(inbound, client);
            }
            Packet::PubAck(id) => SessionCmd::PubAck(id),
            // The caller answers with PUBREL once the session has it.
            Packet::PubRec(id) => SessionCmd::PubRec(id),
            Packet::PubRel(id) => {
                // [MQTT-4.3.3-2] the id is free again; answer with PUBCOMP.
                client.session.mailbox.release_qos2(id);
                // PUBCOMP once the id is free on disk too: a stale id would make the client's
                // next PUBLISH under it look like a duplicate after a restart.
                let lsn = self.stored(client, |sid| Op::Released { sid, pkid: id });
                codec::encode(&Packet::PubComp(id), self.out(lsn));
                return Ok(Flow::Continue);
            }
            Packet::PubComp(id) => SessionCmd::PubComp(id),
            Packet::Subscribe(s) => {
                if self.shared.router.hooks().is_some() {
                    return Ok(self.subscribe_hooked(s.pkid, s.filters, client));
                }
                return Ok(self.subscribe(s.pkid, s.filters, &[], client));
            }
            Packet::Unsubscribe(u) => {
                let (routed, done) = oneshot::channel();
                let cmd = SessionCmd::Unsubscribe {
                    pkid: u.pkid,
                    filters: u.filters.into(),
                    routed,
                };
                return Ok(Flow::ToSessionThenHold(cmd, Routed { done, hold: None }));
            }
            Packet::PingReq => {
                // [MQTT-3.12.4-1]
                codec::encode(&Packet::PingResp, self.out(0));
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

    /// SUBSCRIBE, once any hook has had its say: `refused` are the indices of filters a hook
    /// refused.
    pub(super) fn subscribe(
        &mut self,
        pkid: u16,
        filters: Vec<(String, QoS)>,
        refused: &[usize],
        client: &Client,
    ) -> Flow {
        let acc = &client.accepted;
        let policy = self.shared.policy.load();
        let mut filters = protocol::grant(
            filters,
            &self.config.load().mqtt,
            &Authz::new(&policy, self.shared.router.hooks()),
            &acc.client_id,
            acc.username.as_deref(),
        );
        for &i in refused {
            if let Some((_, granted)) = filters.get_mut(i) {
                *granted = None;
            }
        }
        // In a cluster, the interest is known to NATS before the SUBACK (`Remote::hold`).
        let (hold, known) = match self.shared.router.remote() {
            Some(remote) => {
                let granted: Vec<&str> = filters
                    .iter()
                    .filter(|(_, q)| q.is_some())
                    .map(|(f, _)| f.as_str())
                    .collect();
                let (hold, known) = remote.hold(&granted);
                (Some(hold), known)
            }
            None => (None, None),
        };
        let (routed, done) = oneshot::channel();
        let cmd = SessionCmd::Subscribe {
            pkid,
            filters: filters.into(),
            routed,
        };
        let routed = Routed { done, hold };
        match known {
            None => Flow::ToSessionThenHold(cmd, routed),
            Some(known) => Flow::Hook(Box::pin(async move {
                known.await;
                Resume::Known(cmd, routed)
            })),
        }
    }

    /// Routes a checked PUBLISH (`msg` is `None` if it is to be acknowledged and dropped) and
    /// answers it.
    #[inline]
    pub(super) fn finish_publish(
        &mut self,
        inbound: Inbound,
        client: &mut Client,
    ) -> Result<Flow, CloseReason> {
        let Inbound {
            msg,
            qos,
            pkid,
            backpressure,
            max_awaiting_rel,
        } = inbound;
        // [MQTT-3.3.4-1], [MQTT-2.3.1-6]
        match (qos, pkid) {
            (QoS::AtMostOnce, _) => {
                if let Some(msg) = msg {
                    self.route(msg, client, backpressure);
                }
            }
            (QoS::AtLeastOnce, Some(id)) => {
                // PUBACK only after routing: the message is now owed to every subscriber (and
                // with a store, once its records are durable).
                let wait = msg.map_or_else(Default::default, |msg| {
                    self.route(msg, client, backpressure)
                });
                return Ok(self.acknowledge(Packet::PubAck(id), wait));
            }
            (_, pkid) => {
                let pkid = pkid.unwrap_or(0);
                // [MQTT-4.3.3-2] route once; PUBREC for every copy.
                let max = max_awaiting_rel;
                let wait = match client.session.mailbox.receive_qos2(pkid, max) {
                    Some(true) => {
                        // Its id is kept with the message, so a PUBLISH resent after a restart
                        // is still known as a duplicate; the id and the message's records go to
                        // disk in one batch, or neither does.
                        let store = client
                            .session
                            .stored
                            .and_then(|_| self.shared.store.clone());
                        let _together = store.as_ref().map(Store::together);
                        let awaiting = self.stored(client, |sid| Op::AwaitRel { sid, pkid });
                        match msg {
                            None => (Wait::from(awaiting), Replicated::default()),
                            // Delivered only once on disk with its id: a crash before then
                            // leaves the publisher's resend as its first delivery.
                            Some(msg) if awaiting > 0 => self.route_later(msg, client, awaiting),
                            Some(msg) => self.route(msg, client, backpressure),
                        }
                    }
                    Some(false) => Default::default(),
                    None => return Err(ProtocolError::TooManyAwaitingRel.into()),
                };
                return Ok(self.acknowledge(Packet::PubRec(pkid), wait));
            }
        }
        Ok(Flow::Continue)
    }
}

/// A PUBLISH that passed the checks, on its way to routing.
pub(super) struct Inbound {
    /// The message, or `None` if it is acknowledged and dropped.
    pub(super) msg: Option<Arc<Message>>,
    /// The QoS it came at, which its acknowledgement follows.
    pub(super) qos: QoS,
    pub(super) pkid: Option<u16>,
    pub(super) backpressure: bool,
    pub(super) max_awaiting_rel: usize,
}
