//! The session actor: one per client id, owning subscriptions, the inflight window and the
//! mqueue (its inbound QoS 2 ids live in its mailbox). It outlives its connection when
//! clean_session = 0.
//!
//! It never awaits a send to its connection: it fills the outbound queue while there is room
//! (`OutboundTx::fill`), and only when the queue is full does it wait for room as one source
//! among the others, so it keeps draining control commands and deliveries.
//!
//! An idle session is a parked task that is just this struct (`Actor`, a hand-written
//! future): it waits by polling its mailbox and link directly, which keep its waker, instead of
//! holding a select of channel futures and a timer; what is pending (`pending`) is boxed only
//! while something is.

use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use tokio::sync::oneshot;
use tokio::time::{Instant, Sleep};

use crate::codec::Packet;
use crate::config::Config;
use crate::message::{next_id, ClientId, ConnId, QoS, SessionId};
use crate::observability::metrics::Tally;
use crate::routing::router::Route;
use crate::sessions::inflight::{Flight, Inflight};
use crate::sessions::mailbox::{Mailbox, Received};
use crate::sessions::mqueue::Queued;
use crate::sessions::outbound::{Closed, OutboundTx};
use crate::sessions::registry::SessionHandle;
use crate::sessions::Shared;

use super::commands::{Admin, Attach, ConnInfo, ConnLink, Kick, Outbound, SessionCmd, SessionInfo};
use super::pending::Pending;
use crate::store::{Op, QueueEntry};

use super::durable::{stored_reply, wall_clock_ms};

/// The current connection, as the session keeps it.
pub(super) struct Linked {
    conn: ConnId,
    outbound: OutboundTx,
    info: Arc<ConnInfo>,
}

impl ConnLink {
    /// The user name, and the part of the link the session keeps.
    fn split(self) -> (Option<Arc<str>>, Linked) {
        let linked = Linked {
            conn: self.conn,
            outbound: self.outbound,
            info: self.info,
        };
        (self.username, linked)
    }
}

/// The session actor's state.
pub struct Session {
    pub(super) id: SessionId,
    pub(super) client_id: ClientId,
    /// User name of the latest connection: deliveries are checked against the ACL as it.
    pub(super) username: Option<Arc<str>>,
    pub(super) persistent: bool,
    /// Its id in the store: a persistent session with `[persistence]` on.
    pub(super) sid: Option<u64>,
    pub(super) shared: Arc<Shared>,
    /// The configuration in force when the session was made: its limits stay those.
    pub(super) config: Arc<Config>,
    /// A B-tree: smaller than a hash map in every session, and no hashing of client input.
    pub(super) subscriptions: BTreeMap<String, QoS>,
    /// Our mailbox; its backlog gauge (mailbox + mqueue length, and progress) is shared with
    /// publishers.
    pub(super) mailbox: Arc<Mailbox>,
    /// Boxed, and only while something is pending: most sessions are idle most of the time,
    /// and this is over half of a session's size.
    pub(super) pending: Option<Box<Pending>>,
    pub(super) link: Option<Linked>,
    /// True when the last `fill` found the outbound queue full with work left.
    pub(super) blocked: bool,
    /// Fires when a detached persistent session is discarded (`persistent_client_expiration`).
    /// Boxed and only while detached: a timer is the largest thing a waiting task can hold.
    pub(super) expiry: Option<Pin<Box<Sleep>>>,
}

/// Deliveries handled per wake before the outbound is pumped.
const DELIVERY_BATCH: usize = 64;

/// The configuration a session is made with: the one in force, with a bridge's own queue
/// limit (`max_queued`) if it is one of this broker's bridges.
pub(super) fn session_config(config: Arc<Config>, max_queued: Option<usize>) -> Arc<Config> {
    match max_queued {
        Some(n) if n != config.session.max_queued_messages => {
            let mut own = (*config).clone();
            own.session.max_queued_messages = n;
            Arc::new(own)
        }
        _ => config,
    }
}

impl Session {
    /// Starts a session actor attached to `link` and returns its handle.
    pub fn spawn(
        shared: &Arc<Shared>,
        client_id: ClientId,
        persistent: bool,
        link: ConnLink,
    ) -> (SessionHandle, u64) {
        let sid = shared
            .store
            .as_ref()
            .filter(|_| persistent)
            .map(|s| s.new_sid());
        let config = session_config(shared.config.load_full(), link.info.max_queued);
        let cfg = &config.session;
        let mailbox = Arc::new(Mailbox::new(
            cfg.max_queued_messages.max(64) + 64,
            cfg.max_queued_messages / 2,
            link.conn,
        ));
        let id = next_id();
        let (username, linked) = link.split();
        let session = Session {
            id,
            client_id,
            persistent,
            sid,
            shared: shared.clone(),
            config,
            subscriptions: BTreeMap::new(),
            mailbox: mailbox.clone(),
            pending: None,
            username,
            link: Some(linked),
            blocked: false,
            expiry: None,
        };
        // The CONNACK of a new persistent session waits for its record.
        let lsn = session.record(0);
        shared.tracker.spawn(Actor(Some(session)));
        let handle = SessionHandle {
            id,
            mailbox,
            persistent,
            stored: sid,
        };
        (handle, lsn)
    }

    /// This session's route at `qos`.
    pub(super) fn route(&self, qos: QoS) -> Route<Mailbox> {
        Route {
            session: self.id,
            client_id: self.client_id.clone(),
            qos,
            stored: self.sid.filter(|_| self.shared.store.is_some()),
            mailbox: self.mailbox.clone(),
        }
    }

    /// What woke the session, if anything did; registers its waker with every source.
    fn poll_event(&mut self, cx: &mut Context<'_>) -> Poll<Event> {
        match self.mailbox.poll_recv(cx) {
            Poll::Ready(Received::Discarded(why)) => return Poll::Ready(Event::Discarded(why)),
            Poll::Ready(Received::Cmd(cmd)) => return Poll::Ready(Event::Cmd(cmd)),
            Poll::Pending => {}
        }
        if let Some(expiry) = &mut self.expiry {
            if expiry.as_mut().poll(cx).is_ready() {
                return Poll::Ready(Event::Expired);
            }
        }
        // Seen only once the mailbox is empty: whatever the connection queued comes first.
        if let Some(link) = &self.link {
            if link.outbound.poll_gone(cx).is_ready() {
                return Poll::Ready(Event::LinkLost);
            }
        }
        // Room again (or the connection is gone: pump finds out).
        if self.blocked && self.has_work() {
            if let Some(link) = &self.link {
                if link.outbound.poll_room(cx).is_ready() {
                    return Poll::Ready(Event::Room);
                }
            }
        }
        Poll::Pending
    }

    /// Acts on one event; `Some` when the session ends: discarded (with the reason for its
    /// connection) or not.
    fn on_event(&mut self, event: Event) -> Option<Option<Kick>> {
        match event {
            Event::Discarded(why) => return Some(Some(why)),
            Event::Expired => {
                tracing::info!(client_id = &*self.client_id, "persistent session expired");
                return Some(None);
            }
            Event::Room => self.blocked = false,
            Event::LinkLost => self.unlink(None),
            Event::Cmd(cmd) => {
                self.handle(cmd);
                // Deliveries and acks come in bursts: take what is there, then pump once.
                for _ in 1..DELIVERY_BATCH {
                    match self.mailbox.try_recv() {
                        Some(cmd) => self.handle(cmd),
                        None => break,
                    }
                }
            }
        }
        if !self.persistent && self.link.is_none() {
            return Some(None);
        }
        self.pump();
        None
    }

    /// Handles one command.
    fn handle(&mut self, cmd: SessionCmd) {
        match cmd {
            SessionCmd::Attach(a) => {
                let Attach { link, reply } = *a;
                self.attach(link, reply);
            }
            SessionCmd::Subscribe {
                pkid,
                filters,
                routed,
            } => {
                self.subscribe(pkid, &filters);
                let _ = routed.send(());
                self.tell_cluster();
            }
            SessionCmd::Unsubscribe {
                pkid,
                filters,
                routed,
            } => {
                let mut lsn = 0;
                for f in filters.iter() {
                    if self.subscriptions.remove(f).is_some() {
                        self.shared.router.unsubscribe(f, self.id);
                        lsn = self.store_op(|sid| Op::Unsubscribe {
                            sid,
                            filter: f.as_str().into(),
                        });
                    }
                }
                let _ = routed.send(());
                self.tell_cluster();
                // [MQTT-3.10.4-4], [MQTT-3.10.4-5]
                let reply = Packet::UnsubAck(pkid);
                self.pending().control.push_back(stored_reply(reply, lsn));
            }
            SessionCmd::PubAck(id) => self.finish(id, Inflight::puback),
            SessionCmd::PubRec(id) => {
                // The connection has answered with PUBREL, unless the session is stored.
                let sid = self.sid;
                let known = self.pending.as_mut().map(|p| {
                    let stored = if sid.is_some() {
                        p.inflight.stored(id).0
                    } else {
                        0
                    };
                    (stored, p.inflight.pubrec(id))
                });
                if let Some((stored, true)) = known {
                    if stored > 0 {
                        let entry = QueueEntry {
                            qos: QoS::ExactlyOnce,
                            pkid: id,
                            released: true,
                            retain: false,
                        };
                        self.store_op(|sid| Op::Sent {
                            sid,
                            id: stored,
                            entry,
                        });
                    }
                }
                // A stored session answers with PUBREL itself, after its record (for an id it
                // no longer knows too, so the client can finish its side).
                if self.sid.is_some() && self.shared.store.is_some() {
                    self.pending().control.push_back(Outbound::PubRel(id));
                }
            }
            SessionCmd::PubComp(id) => self.finish(id, Inflight::pubcomp),
            SessionCmd::Deliver(d) => {
                let mut q = Queued::from(d);
                q.retain = q.msg.retain && self.link.as_ref().is_some_and(|l| l.info.bridge);
                self.deliver(q)
            }
            SessionCmd::Admin(a) => match *a {
                Admin::Inspect(reply) => {
                    let _ = reply.send(self.info());
                }
                Admin::Kick(reply) => {
                    let _ = reply.send(self.link.is_some());
                    self.unlink(Some(Kick::Kicked));
                }
                Admin::Export(reply) => {
                    self.unlink(Some(Kick::TakenOver));
                    let _ = reply.send(self.export());
                    // It lives on on another node now.
                    self.mailbox.discard(Kick::TakenOver);
                }
            },
        }
    }

    /// The session's state for the HTTP API.
    fn info(&self) -> SessionInfo {
        let p = self.pending.as_deref();
        SessionInfo {
            client_id: self.client_id.clone(),
            username: self.username.clone(),
            persistent: self.persistent,
            connection: self.link.as_ref().map(|l| l.info.clone()),
            subscriptions: self
                .subscriptions
                .iter()
                .map(|(f, q)| (f.clone(), *q))
                .collect(),
            queued: p.map_or(0, |p| p.mqueue.len()),
            queued_bytes: p.map_or(0, |p| p.mqueue.bytes()),
            inflight: p.map_or(0, |p| p.inflight.len()),
        }
    }

    /// Ends the flow of packet id `id` with `end` (PUBACK or PUBCOMP); a stored message is
    /// then done on disk too.
    fn finish(&mut self, id: u16, end: fn(&mut Inflight, u16) -> bool) {
        let Some(p) = &mut self.pending else { return };
        // One more search of the window, only for a stored session.
        let (stored, owed) = if self.sid.is_some() {
            p.inflight.stored(id)
        } else {
            (0, None)
        };
        if end(&mut p.inflight, id) && stored > 0 {
            if let (Some(store), Some(sid)) = (&self.shared.store, self.sid) {
                store.done(sid, stored, owed.as_deref());
            }
        }
    }

    fn attach(&mut self, link: ConnLink, reply: oneshot::Sender<()>) {
        if reply.is_closed() {
            // The new connection gave up waiting (and answered its client 0x03): the current
            // one, if any, stays, and its commands are let in again.
            if let Some(current) = &self.link {
                self.mailbox.fence(current.conn);
            }
            return;
        }
        // Whatever was queued for the old connection is void; inflight is resent below.
        self.unlink(Some(Kick::TakenOver));
        if reply.send(()).is_err() {
            // It gave up just now: the session stays detached, its expiry running.
            return;
        }
        let (username, linked) = link.split();
        self.username = username;
        self.link = Some(linked);
        self.expiry = None;
        self.record(0);
        self.mailbox.backlog().set_attached(true);
        // [MQTT-4.4.0-1] resend unacknowledged PUBLISH (DUP=1, same id) and PUBREL, in order.
        let Some(p) = &mut self.pending else {
            return;
        };
        let Pending {
            inflight, control, ..
        } = &mut **p;
        for (id, flight) in inflight.in_order() {
            control.push_back(match flight {
                Flight::Publish(q) => Outbound::Publish {
                    msg: q.msg.clone(),
                    qos: q.qos,
                    pkid: Some(id),
                    dup: true,
                    retain: q.retain,
                },
                Flight::PubRel(..) => Outbound::PubRel(id),
            });
        }
    }

    fn has_work(&self) -> bool {
        self.pending.as_ref().is_some_and(|p| p.has_work())
    }

    /// The pending state, made when first needed.
    pub(super) fn pending(&mut self) -> &mut Pending {
        Pending::made(&mut self.pending, &self.config.session)
    }

    /// Moves work into the outbound channel while it has room; gives the pending state back
    /// once nothing is pending.
    fn pump(&mut self) {
        self.send_pending();
        let inflight = self.pending.as_ref().map_or(0, |p| p.inflight.len());
        self.mailbox.backlog().set_inflight(inflight);
        if self.pending.as_ref().is_some_and(|p| p.is_empty()) {
            self.pending = None;
        }
    }

    fn send_pending(&mut self) {
        let (Some(link), Some(pending)) = (&self.link, &mut self.pending) else {
            return;
        };
        let (metrics, backlog) = (&self.shared.metrics, self.mailbox.backlog());
        let (store, sid) = (&self.shared.store, self.sid);
        // A stored message given a packet id: on disk, so a restart resends it under that id.
        let mut on_sent = |q: &Queued, pkid: u16| {
            if let (Some(store), Some(sid)) = (store, sid) {
                let entry = QueueEntry {
                    qos: q.qos,
                    pkid,
                    released: false,
                    retain: q.retain,
                };
                let op = Op::Sent {
                    sid,
                    id: q.stored,
                    entry,
                };
                // A QoS 2 PUBLISH goes out only once its packet id is on disk, and so does
                // a retained one owed on SUBSCRIBE; any other QoS 1 one need not wait (its
                // publisher sends it again if a crash loses it), so its record may wait for
                // its acknowledgement.
                if q.qos == QoS::ExactlyOnce || q.retain {
                    store.submit(op);
                } else {
                    store.submit_lazy(op);
                }
            }
        };
        let mut sent = Tally::default();
        let hooks = self.shared.router.hooks();
        let who = crate::hooks::ClientRef {
            client_id: &self.client_id,
            username: self.username.as_deref(),
        };
        let filled = match hooks {
            None => link
                .outbound
                .fill(|| pending.next(&mut sent, backlog, &mut on_sent)),
            Some(h) => link.outbound.fill(|| {
                let out = pending.next(&mut sent, backlog, &mut on_sent);
                if let Some(Outbound::Publish { msg, qos, .. }) = &out {
                    h.on_deliver(who, msg, *qos);
                }
                out
            }),
        };
        metrics.flush_sent(&mut sent);
        match filled {
            Ok(full) => self.blocked = full && pending.has_work(),
            Err(Closed) => self.unlink(None),
        }
    }

    /// Lets the current connection go (telling it why, if `kick` says) and starts the expiry
    /// of the now detached session; what was queued for the connection is void.
    fn unlink(&mut self, kick: Option<Kick>) {
        if let Some(link) = self.link.take() {
            self.mailbox.backlog().set_attached(false);
            // A new connection takes over at once, and gets them resent.
            if kick != Some(Kick::TakenOver) {
                self.hand_back_shared(false, Vec::new());
            }
            let expiry = self.config.session.persistent_client_expiration;
            self.expiry = expiry.map(|e| Box::pin(tokio::time::sleep_until(Instant::now() + e)));
            // When it went, so its expiry can be measured across a restart.
            self.record(wall_clock_ms());
            if let Some(k) = kick {
                link.outbound.kick(k);
            }
        }
        self.blocked = false;
        if let Some(p) = &mut self.pending {
            p.control.clear();
        }
    }

    /// Ends the session. `discarded` says why its connection, if any, must close; a session
    /// that ends by itself (expired, or clean and left) takes itself out of the registry.
    fn close(mut self, discarded: Option<Kick>) {
        // Nothing sent from now on is read; queued deliveries go with the session, but for
        // those of shared subscriptions.
        let left = self.mailbox.close();
        if let Some(link) = self.link.take() {
            link.outbound.kick(discarded.unwrap_or(Kick::Discarded));
            // Still attached when the broker stops (its connection's goodbye may not have
            // reached it yet): it is detached now, and its expiry after a restart counts
            // from here, not from the restart.
            if discarded == Some(Kick::Shutdown) {
                self.record(wall_clock_ms());
            }
        }
        if discarded != Some(Kick::Shutdown) {
            self.hand_back_shared(true, left);
        }
        // A stored session keeps its routes while the broker stops: a message acknowledged
        // in that window is still written to its queue on disk (the offer itself is refused),
        // so the next start delivers it.
        if discarded != Some(Kick::Shutdown) || self.sid.is_none() {
            for filter in self.subscriptions.keys() {
                self.shared.router.unsubscribe(filter, self.id);
            }
        }
        // On shutdown a persistent session stays on disk for the next start, and in the
        // cluster's record for another node, should this one not come back.
        if let (Some(ids), true, true) = (
            &self.shared.cluster,
            self.persistent,
            discarded != Some(Kick::Shutdown),
        ) {
            ids.session(&self.client_id, None);
        }
        if discarded != Some(Kick::Shutdown) {
            self.store_op(|sid| Op::SessionEnd {
                sid,
                client_id: self.client_id.clone(),
            });
        }
        if discarded.is_none() {
            self.shared.registry.remove_if(&self.client_id, self.id);
        }
        tracing::debug!(client_id = &*self.client_id, ?discarded, "session ended");
    }
}

/// The session's task: a hand-written future that is exactly the session's state, where an
/// `async fn` would add the state of its waits (and keep its argument twice).
pub(super) struct Actor(pub(super) Option<Session>);

/// The drop guard: a session dropped without ending (a panic while handling an event, or the
/// runtime going away) still closes its mailbox, drops its routes and leaves the registry,
/// so its client id stays usable.
impl Drop for Actor {
    fn drop(&mut self) {
        if let Some(session) = self.0.take() {
            session.close(None);
        }
    }
}

/// Events handled in one poll before the task yields to others on its worker.
const EVENTS_PER_POLL: usize = 32;

impl Future for Actor {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let this = self.get_mut();
        let Some(session) = &mut this.0 else {
            return Poll::Ready(());
        };
        for _ in 0..EVENTS_PER_POLL {
            let Poll::Ready(event) = session.poll_event(cx) else {
                return Poll::Pending;
            };
            if let Some(discarded) = session.on_event(event) {
                if let Some(session) = this.0.take() {
                    session.close(discarded);
                }
                return Poll::Ready(());
            }
        }
        cx.waker().wake_by_ref();
        Poll::Pending
    }
}

/// What woke a waiting session.
enum Event {
    Cmd(SessionCmd),
    Discarded(Kick),
    Expired,
    Room,
    /// The connection's end of the link was dropped: it is gone.
    LinkLost,
}
