//! The session's side of `[persistence]`: a stored session restored at start (routes,
//! queue, flows in progress, awaited PUBREL ids, expiry across the restart), its record, and
//! the ops it submits under its store id.

use std::collections::BTreeMap;
use std::sync::Arc;

use tokio::time::Instant;

use super::commands::Outbound;
use super::inflight::Flight;
use super::mailbox::Mailbox;
use super::mqueue::Queued;
use super::pending::Pending;
use super::registry::SessionHandle;
use super::session::{Actor, Session};
use super::Shared;
use crate::codec::Packet;
use crate::message::next_id;
use crate::observability::metrics::DropReason;
use crate::store::{Op, RecoveredSession};

impl Session {
    /// Starts, detached, a persistent session read back from the store: its subscriptions go
    /// back into the router before any client is served.
    pub fn restore(shared: &Arc<Shared>, stored: RecoveredSession) -> SessionHandle {
        let sid = Some(stored.sid);
        Session::restore_as(shared, stored, sid)
    }

    /// As `restore`, under store id `sid` (none: a node without persistence adopting a
    /// session from another node).
    pub(super) fn restore_as(
        shared: &Arc<Shared>,
        stored: RecoveredSession,
        sid: Option<u64>,
    ) -> SessionHandle {
        let config = shared.config.load_full();
        // A bridge's session keeps its own queue limit across the restart.
        let max_queued = config
            .bridge
            .iter()
            .find(|b| *b.local_client_id() == *stored.client_id)
            .map(|b| b.max_queued_messages);
        let config = super::session::session_config(config, max_queued);
        let cfg = &config.session;
        let mailbox = Arc::new(Mailbox::new(
            cfg.max_queued_messages.max(64) + 64,
            cfg.max_queued_messages / 2,
            0,
        ));
        mailbox.backlog().set_attached(false);
        let id = next_id();
        // Expiry runs from when it was detached, across the restart.
        let now_ms = wall_clock_ms();
        let expiry = cfg.persistent_client_expiration.map(|e| {
            let since = if stored.detached_at_ms == 0 {
                std::time::Duration::ZERO
            } else {
                std::time::Duration::from_millis(now_ms.saturating_sub(stored.detached_at_ms))
            };
            Box::pin(tokio::time::sleep_until(
                Instant::now() + e.saturating_sub(since),
            ))
        });

        // Inbound QoS 2 ids still awaiting their PUBREL: a resent PUBLISH is a duplicate.
        for pkid in &stored.awaiting_rel {
            mailbox.receive_qos2(*pkid, usize::MAX);
        }
        let mut session = Session {
            id,
            client_id: stored.client_id,
            persistent: true,
            sid,
            shared: shared.clone(),
            config,
            subscriptions: BTreeMap::new(),
            mailbox: mailbox.clone(),
            pending: None,
            username: stored.username,
            link: None,
            blocked: false,
            expiry,
        };
        for (filter, qos) in stored.subscriptions {
            let route = session.route(qos);
            // A restored subscription owes no retained messages: they were sent when it was made.
            shared.router.subscribe(&filter, route, 0);
            session.subscriptions.insert(filter.to_string(), qos);
        }
        if stored.detached_at_ms == 0 {
            session.record(now_ms);
        }
        // Its messages, in the order they were stored: those sent go back in flight under
        // their packet ids (resent with DUP on attach [MQTT-4.4.0-1]), the rest queue.
        for (id, msg, entry) in stored.queue {
            let queued = Queued {
                msg,
                qos: entry.qos,
                retain: entry.retain,
                stored: id,
                owed: None,
                share: None,
            };
            if entry.pkid == 0 {
                session.mailbox.backlog().added_directly();
                session.deliver_restored(queued);
            } else {
                let flight = if entry.released {
                    Flight::PubRel(id, None)
                } else {
                    Flight::Publish(queued)
                };
                session.pending().inflight.restore(entry.pkid, flight);
            }
        }
        session.tell_cluster();
        shared.tracker.spawn(Actor(Some(session)));
        SessionHandle {
            id,
            mailbox,
            persistent: true,
            stored: sid,
        }
    }

    /// Writes the session's record (detached at `detached_at_ms`, 0 = attached); the LSN to
    /// wait for, 0 without a store.
    pub(super) fn record(&self, detached_at_ms: u64) -> u64 {
        self.store_op(|sid| Op::Session {
            sid,
            client_id: self.client_id.clone(),
            username: self.username.clone(),
            detached_at_ms,
        })
    }

    /// Submits the op `make` builds for a stored session; its LSN, or 0.
    pub(super) fn store_op(&self, make: impl FnOnce(u64) -> Op) -> u64 {
        match (&self.shared.store, self.sid) {
            (Some(store), Some(sid)) => store.submit(make(sid)),
            _ => 0,
        }
    }

    /// Queues a message read back from the store (limits apply; a drop is done on disk).
    fn deliver_restored(&mut self, queued: Queued) {
        let (store, sid) = (&self.shared.store, self.sid);
        let (router, client_id) = (&self.shared.router, &self.client_id);
        let dropped = Pending::made(&mut self.pending, &self.config.session)
            .mqueue
            .push_with(queued, |q| {
                router.dropped(DropReason::QueueFull, client_id, &q.msg);
                if let (Some(store), Some(sid)) = (store, sid) {
                    store.done(sid, q.stored, None);
                }
            });
        self.mailbox.backlog().removed(dropped, false);
    }
}

/// A reply that waits for `lsn` (0: sent as soon as it can be).
pub(super) fn stored_reply(packet: Packet, lsn: u64) -> Outbound {
    if lsn == 0 {
        Outbound::Packet(Box::new(packet))
    } else {
        Outbound::Stored(Box::new((packet, lsn)))
    }
}

/// Milliseconds since the Unix epoch (0 if the clock is before it).
pub(super) fn wall_clock_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}
