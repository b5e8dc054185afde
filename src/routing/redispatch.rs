//! A shared subscription's message that its member cannot keep goes to another member of the
//! group: one whose mailbox was full or closing when it was picked, or one that left with the
//! message unacknowledged (the session hands it back, as EMQX does). A child of `router`, so
//! it uses the router's own offer and store.

use std::sync::Arc;

use super::{Delivery, Inbox, Offered, Published, Route, Router};
use crate::message::{Message, QoS, SessionId};
use crate::observability::metrics::DropReason;
use crate::routing::shared::Pick;
use crate::store::Owed;

/// What `Router::redispatch` did with a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Redispatched {
    /// No other member could take it: the caller keeps it.
    Kept,
    /// Another member has it (or its limit dropped it, counted); the caller settles what
    /// the publisher waits on.
    Moved,
    /// Another (persistent) member has it and carries on what the publisher waits on.
    Carried,
}

impl<I: Inbox> Router<I> {
    /// Hands a message that member `except` of group `key` cannot keep to another member
    /// (with `keeping_up`, only to one that keeps up). For a persistent member it is stored
    /// anew before it is offered, in a batch no later than the leaving member's copy, and
    /// carries `owed` on (the publisher may still wait on it): the caller is then done with
    /// its own copy without settling it.
    pub fn redispatch(
        &self,
        key: &str,
        msg: &Arc<Message>,
        owed: Option<Arc<Owed>>,
        except: SessionId,
        keeping_up: bool,
    ) -> Redispatched {
        let pick = Pick {
            topic: &msg.topic,
            publisher: None,
        };
        let Some((route, key)) = self.shared.pick_other(key, pick, except, keeping_up) else {
            return Redispatched::Kept;
        };
        let qos = self.qos_for(msg, &route);
        let stored = match (&self.store, route.stored) {
            // Not lazy: it cuts the open batch, so a leaving member's copy not yet on disk
            // lands in the same batch as this one.
            (Some(store), Some(sid)) if qos != QoS::AtMostOnce => {
                store.submit_for_one(msg, sid, qos, false)
            }
            _ => 0,
        };
        let owed = owed.filter(|_| stored > 0);
        let carried = owed.is_some();
        let delivery = Delivery {
            msg: msg.clone(),
            qos,
            stored,
            owed: owed.clone(),
            share: Some(key),
        };
        // Offered once: a second member that cannot take it either does not pass it on, so
        // a message never circles between full members.
        let offered = route.mailbox.offer(delivery);
        let mut out = Published::default();
        self.offered(&route, offered, stored, owed, msg, &mut out, None);
        if carried {
            Redispatched::Carried
        } else {
            Redispatched::Moved
        }
    }

    /// A group's pick that refused its delivery (`offered`): another member gets it if one
    /// can, else it is dropped (a full mailbox, counted) or left to the going session.
    pub(super) fn pass_on(
        &self,
        key: &str,
        route: &Route<I>,
        offered: Offered,
        id: u64,
        owed: Option<Arc<Owed>>,
        msg: &Arc<Message>,
    ) {
        let full = offered == Offered::Full;
        if let (true, Some(store), Some(sid), true) = (full, &self.store, route.stored, id > 0) {
            // Its copy for the full session goes; what the publisher waits on goes on.
            store.done(sid, id, None);
        }
        let passed = self.redispatch(key, msg, owed.clone(), route.session, false);
        // A going session keeps its entry (a restart may deliver it), so its count stays.
        if full && passed != Redispatched::Carried {
            if let Some(owed) = owed {
                owed.settle_one();
            }
        }
        if full && passed == Redispatched::Kept {
            self.dropped(DropReason::MailboxFull, &route.client_id, msg);
        }
    }

    /// The QoS `route` gets `msg` at.
    pub(super) fn qos_for(&self, msg: &Message, route: &Route<I>) -> QoS {
        if self
            .upgrade_outgoing_qos
            .load(std::sync::atomic::Ordering::Relaxed)
        {
            route.qos
        } else {
            msg.qos.min(route.qos)
        }
    }
}
