//! Where a message owed to the session goes: its mqueue, after the read ACL and the offline
//! QoS 0 rule; or, for a shared subscription's message the session cannot use now, another
//! member of the group. A member whose connection goes hands its group messages still
//! queued or awaiting PUBACK/PUBREC to a member that keeps up (one that ends, to any other
//! member), so a group's QoS 1/2 messages do not wait for a client that may never return.

use crate::auth::{Access, Acl, Authz};
use crate::message::{QoS, SessionId};
use crate::observability::metrics::{DropReason, Metrics};
use crate::routing::router::Redispatched;
use crate::sessions::commands::SessionCmd;
use crate::sessions::mqueue::Queued;
use crate::sessions::pending::Pending;
use crate::sessions::session::Session;
use crate::sessions::Shared;
use crate::store::Owed;

/// Hands `q`, a shared subscription's QoS 1/2 message that session `me` (`sid` in the store)
/// lets go, to another member of its group; false if none took it (the session keeps it).
fn hand_on(shared: &Shared, me: SessionId, sid: Option<u64>, q: &Queued, any: bool) -> bool {
    let Some(key) = &q.share else {
        return false;
    };
    if q.qos == QoS::AtMostOnce {
        return false;
    }
    let passed = shared
        .router
        .redispatch(key, &q.msg, q.owed.clone(), me, !any);
    if passed == Redispatched::Kept {
        return false;
    }
    // Its copy here is done with; the publisher's count only if the new member does not
    // carry it on.
    let owed = q.owed.as_deref().filter(|_| passed == Redispatched::Moved);
    match (&shared.store, sid) {
        (Some(store), Some(sid)) if q.stored > 0 => {
            store.done(sid, q.stored, owed);
        }
        _ => {
            if let Some(owed) = owed {
                owed.settle_one();
            }
        }
    }
    true
}

impl Session {
    /// Queues a message owed to this session.
    pub(super) fn deliver(&mut self, q: Queued) {
        let metrics = &self.shared.metrics;
        let (store, sid) = (&self.shared.store, self.sid);
        // A stored message that is not queued after all is done with on disk too.
        let done = |id: u64, owed: Option<&Owed>| {
            if let (Some(store), Some(sid), true) = (store, sid, id > 0) {
                store.done(sid, id, owed);
            }
        };
        // A wildcard subscription may cover topics this client may not read: check each message.
        let policy = self.shared.policy.load();
        let authz = Authz::new(&policy, self.shared.router.hooks());
        if authz.checks_reads()
            && !authz.allowed(
                &self.client_id,
                self.username.as_deref(),
                Access::Read,
                q.msg.topic_str(),
            )
        {
            self.mailbox.backlog().removed(1, false);
            Metrics::incr(&metrics.acl_denied);
            done(q.stored, q.owed.as_deref());
            return;
        }
        // A group's message reaching a member that has gone offline meanwhile.
        if self.link.is_none() && hand_on(&self.shared, self.id, self.sid, &q, false) {
            self.mailbox.backlog().removed(1, false);
            return;
        }
        if self.link.is_none()
            && q.qos == QoS::AtMostOnce
            && !self.config.session.queue_qos0_messages
        {
            self.mailbox.backlog().removed(1, false);
            let router = &self.shared.router;
            router.dropped(DropReason::Qos0Offline, &self.client_id, &q.msg);
            return;
        }
        let (config, client_id, router) = (&self.config, &self.client_id, &self.shared.router);
        let dropped = Pending::made(&mut self.pending, &config.session)
            .mqueue
            .push_with(q, |q| {
                router.dropped(DropReason::QueueFull, client_id, &q.msg);
                done(q.stored, q.owed.as_deref());
            });
        self.mailbox.backlog().removed(dropped, false);
    }

    /// The connection went (`ending`: and the session ends with it): shared subscriptions'
    /// QoS 1/2 messages still queued or unacknowledged go to other members of their groups,
    /// and, if the session ends, so do those still in its mailbox (`left`).
    pub(super) fn hand_back_shared(&mut self, ending: bool, left: Vec<SessionCmd>) {
        let (shared, me, sid) = (self.shared.clone(), self.id, self.sid);
        let mut pass = |q: &Queued| hand_on(&shared, me, sid, q, ending);
        for cmd in left {
            if let SessionCmd::Deliver(d) = cmd {
                pass(&d.into());
            }
        }
        let Some(pending) = &mut self.pending else {
            return;
        };
        let unacked = pending.inflight.remove_where(&mut pass);
        let queued = pending.mqueue.remove_where(&mut pass);
        if unacked + queued > 0 {
            tracing::debug!(
                client_id = &*self.client_id,
                unacked,
                queued,
                "shared subscription messages handed to other members"
            );
        }
        self.mailbox.backlog().removed(queued, false);
    }
}
