//! A persistent session moving between the nodes of a cluster: the node it leaves takes
//! what it holds from the session actor (`Admin::Export`), which then ends; the node it joins
//! makes it again, detached, from that (`Registry::adopt`), and the client's CONNECT attaches
//! to it there with session present = 1.
//!
//! What moves: the user name it belongs to, its subscriptions, the inbound QoS 2 ids still
//! awaiting PUBREL, and its messages, in order: those in flight with their packet ids (resent
//! with DUP on attach [MQTT-4.4.0-1]) and those queued. Shared subscriptions' messages stay
//! and go to another member of their group, as when any member leaves. On a node with
//! persistence the adopted session, its subscriptions, ids and messages (each stored as if
//! routed to it alone, at the state it moved in) are written in one batch, and the CONNECT
//! that asked for it waits for that batch before its CONNACK.

use std::collections::BTreeMap;
use std::sync::Arc;

use super::inflight::Flight;
use super::mqueue::Queued;
use super::registry::SessionHandle;
use super::session::Session;
use super::Shared;
use crate::message::{ClientId, Message, QoS};
use crate::store::{Op, QueueEntry, RecoveredSession};

/// A persistent session on its way to another node.
#[derive(Debug, Clone, PartialEq)]
pub struct Handover {
    /// Its client id.
    pub client_id: ClientId,
    /// The user name that made it: only the same user resumes it.
    pub username: Option<Arc<str>>,
    /// Its subscriptions.
    pub subscriptions: Vec<(String, QoS)>,
    /// Inbound QoS 2 ids awaiting PUBREL.
    pub awaiting_rel: Vec<u16>,
    /// Its messages: in flight first, in the order they were sent, then queued.
    pub messages: Vec<Moved>,
}

/// One message of a session that moves.
#[derive(Debug, Clone, PartialEq)]
pub struct Moved {
    /// The message (for a QoS 2 one whose PUBREC came, only its id matters).
    pub msg: Arc<Message>,
    /// The QoS it is delivered at.
    pub qos: QoS,
    /// Its outgoing RETAIN flag.
    pub retain: bool,
    /// Its packet id, once sent (0 = queued).
    pub pkid: u16,
    /// PUBREC received: only PUBREL is owed.
    pub released: bool,
}

impl Session {
    /// What this session holds, for another node.
    pub(super) fn export(&self) -> Handover {
        let mut messages = Vec::new();
        let moved = |q: &Queued, pkid: u16, released: bool| Moved {
            msg: q.msg.clone(),
            qos: q.qos,
            retain: q.retain,
            pkid,
            released,
        };
        if let Some(p) = self.pending.as_deref() {
            for (pkid, flight) in p.inflight.in_order() {
                match flight {
                    Flight::Publish(q) if q.share.is_none() => {
                        messages.push(moved(q, pkid, false));
                    }
                    Flight::Publish(_) => {}
                    Flight::PubRel(..) => messages.push(Moved {
                        msg: Arc::new(Message {
                            topic: bytes::Bytes::new(),
                            payload: bytes::Bytes::new(),
                            qos: QoS::ExactlyOnce,
                            retain: false,
                        }),
                        qos: QoS::ExactlyOnce,
                        retain: false,
                        pkid,
                        released: true,
                    }),
                }
            }
            for q in p.mqueue.iter().filter(|q| q.share.is_none()) {
                messages.push(moved(q, 0, false));
            }
        }
        Handover {
            client_id: self.client_id.clone(),
            username: self.username.clone(),
            subscriptions: self
                .subscriptions
                .iter()
                .map(|(f, q)| (f.clone(), *q))
                .collect(),
            awaiting_rel: self.mailbox.awaiting_rel(),
            messages,
        }
    }

    /// Tells the cluster this persistent session's subscriptions (for another node to restore
    /// if this one dies).
    pub(super) fn tell_cluster(&self) {
        if let (Some(ids), true) = (&self.shared.cluster, self.persistent) {
            let mut state = self.export();
            state.messages.clear();
            state.awaiting_rel.clear();
            ids.session(&self.client_id, Some(state));
        }
    }

    /// Starts, detached, a session that came from another node (see the module doc); the
    /// LSN its records are durable at (0 without a store).
    pub(super) fn adopt(shared: &Arc<Shared>, h: Handover) -> (SessionHandle, u64) {
        let store = shared.store.as_ref();
        let sid = store.map(|s| s.new_sid());
        // All of it in one batch, its messages before its actor can acknowledge any.
        let together = store.map(|s| s.together());
        let subscriptions: BTreeMap<String, QoS> = h.subscriptions.into_iter().collect();
        let mut queue = Vec::with_capacity(h.messages.len());
        for m in h.messages {
            let entry = QueueEntry {
                qos: m.qos,
                pkid: m.pkid,
                released: m.released,
                retain: m.retain,
            };
            // Stored here as a message routed to this session alone, at the state it moved in.
            let id = match (store, sid) {
                (Some(store), Some(sid)) => {
                    let id = store.submit_for_one(&m.msg, sid, m.qos, m.retain);
                    if entry.pkid != 0 {
                        store.submit(Op::Sent { sid, id, entry });
                    }
                    id
                }
                _ => 0,
            };
            queue.push((id, m.msg, entry));
        }
        if let (Some(store), Some(sid)) = (store, sid) {
            for &pkid in &h.awaiting_rel {
                store.submit(Op::AwaitRel { sid, pkid });
            }
            for (filter, qos) in &subscriptions {
                store.submit(Op::Subscribe {
                    sid,
                    filter: filter.as_str().into(),
                    qos: *qos,
                });
            }
        }
        let stored = RecoveredSession {
            client_id: h.client_id,
            sid: sid.unwrap_or(0),
            username: h.username,
            // Written afresh here: as if attached when the broker stopped.
            detached_at_ms: 0,
            subscriptions: subscriptions
                .iter()
                .map(|(f, q)| (Arc::from(f.as_str()), *q))
                .collect(),
            queue,
            awaiting_rel: h.awaiting_rel,
        };
        // Its record (`restore_as`, as for a session that was attached) joins the batch.
        let handle = Session::restore_as(shared, stored, sid);
        drop(together);
        (handle, store.map_or(0, |s| s.submitted()))
    }
}
