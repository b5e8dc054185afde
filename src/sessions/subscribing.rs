//! SUBSCRIBE in the session: one subscription per distinct filter, `max_subscriptions`, the
//! SUBACK (held for a stored session until its subscriptions are on disk), and the retained
//! messages each new route is owed, read under the retained store's lock.

use std::collections::HashMap;

use super::durable::stored_reply;
use super::session::Session;
use crate::auth::Authz;
use crate::codec::{Packet, SubAck, SubAckCode};
use crate::message::QoS;
use crate::observability::metrics::{DropReason, Metrics};
use crate::routing::retain::Retained;
use crate::sessions::mqueue::Queued;
use crate::store::Op;

impl Session {
    pub(super) fn subscribe(&mut self, pkid: u16, filters: &[(String, Option<QoS>)]) {
        let max = self.config.session.max_subscriptions;
        let mut codes = Vec::with_capacity(filters.len());
        // Copies of one filter in one SUBSCRIBE are one subscription, at the QoS of the last
        // copy (each replaces the one before [MQTT-3.8.4-3]); every copy gets its code.
        let mut granted: Vec<(&str, QoS)> = Vec::new();
        let mut index: HashMap<&str, usize> = HashMap::new();
        // Filters this SUBSCRIBE adds to those the session holds, for `max_subscriptions`.
        let mut added = 0;
        let stored = self.sid.is_some() && self.shared.store.is_some();
        for (filter, qos) in filters.iter() {
            // A stored subscription's key is the session id and the filter, and keys have
            // a size limit: a longer filter is refused rather than fail the store.
            let too_long = stored && filter.len() > crate::store::MAX_FILTER_LEN;
            let Some(qos) = qos.filter(|_| !too_long) else {
                codes.push(SubAckCode::Failure);
                continue;
            };
            if let Some(&i) = index.get(filter.as_str()) {
                granted[i].1 = qos;
                codes.push(SubAckCode::Granted(qos));
                continue;
            }
            let known = self.subscriptions.contains_key(filter);
            if max > 0 && !known && self.subscriptions.len() + added >= max {
                codes.push(SubAckCode::Failure);
                continue;
            }
            added += usize::from(!known);
            index.insert(filter, granted.len());
            granted.push((filter, qos));
            codes.push(SubAckCode::Granted(qos));
        }
        // A persistent session's SUBACK waits for its subscriptions' records.
        let mut lsn = 0;
        for (filter, qos) in &granted {
            lsn = self.store_op(|sid| Op::Subscribe {
                sid,
                filter: (*filter).into(),
                qos: *qos,
            });
        }
        // [MQTT-3.8.4-1], [MQTT-3.8.4-4], [MQTT-3.8.4-5]: one SUBACK, codes in order, and it goes
        // out before the retained messages of these filters.
        let reply = Packet::SubAck(SubAck { pkid, codes });
        self.pending().control.push_back(stored_reply(reply, lsn));
        let live = self.shared.config.load();
        let upgrade = live.mqtt.upgrade_outgoing_qos;
        let policy = live
            .auth
            .check_retain_source
            .then(|| self.shared.policy.load());
        for (filter, qos) in granted {
            // The retained messages owed are read with the route installed, so none is missed
            // [MQTT-3.3.1-6]; no more than the queue has room for, so one SUBSCRIBE cannot
            // make the session walk and drop the whole store.
            let room = self.pending().mqueue.room();
            let route = self.route(qos);
            let batch = self.shared.router.subscribe(filter, route, room);
            tracing::debug!(client_id = &*self.client_id, filter, ?qos, "subscribed");
            self.subscriptions.insert(filter.to_owned(), qos);
            for Retained { msg, from } in batch.messages {
                // `check_retain_source`: only while its publisher may still publish it.
                if let (Some(policy), Some(from)) = (&policy, &from) {
                    let (id, user) = (&from.client_id, from.username.as_deref());
                    let authz = Authz::new(policy, self.shared.router.hooks());
                    if !crate::auth::may_publish(&authz, id, user, msg.topic_str()) {
                        Metrics::incr(&self.shared.metrics.acl_denied);
                        continue;
                    }
                }
                // As a live delivery would be [MQTT-3.8.4-6], or upgraded if so configured.
                let q = if upgrade { qos } else { msg.qos.min(qos) };
                // Owed to a stored session like any other message: on disk too, so a restart
                // before it is acknowledged sends it again.
                let stored = match (&self.shared.store, self.sid) {
                    // Its PUBLISH waits for it (see `encode_outbound`): no publisher would
                    // send it again if a crash lost it.
                    (Some(store), Some(sid)) if q != QoS::AtMostOnce => {
                        store.submit_for_one(&msg, sid, q, true)
                    }
                    _ => 0,
                };
                self.mailbox.backlog().added_directly();
                self.deliver(Queued {
                    msg,
                    qos: q,
                    retain: true,
                    stored,
                    owed: None,
                    share: None,
                });
            }
            if batch.more {
                // At least one more retained message matched than the queue could take.
                let metrics = &self.shared.metrics;
                metrics.dropped(DropReason::QueueFull, &self.client_id, filter);
            }
        }
    }
}
