//! A session's mailbox and the state it shares with its connections and routes, in one
//! allocation per session.
//!
//! Publishers (through their routes), the session's connection and the registry put commands
//! in; the session actor takes them out. Besides the queue it carries the discard flag, the
//! backlog gauge publishers watch for backpressure, and the inbound QoS 2 ids awaiting PUBREL.
//!
//! It also fences connections: it knows the session's current connection, which an `Attach`
//! changes at the moment it is queued. From then on a command from the old connection is
//! refused (`Superseded`) instead of queued behind the Attach, so the session never acts on a
//! taken-over connection's PUBREC or SUBSCRIBE after the new one attached, and everything the
//! old one queued before is handled before the Attach.
//! A channel crate would cost a separate allocation for each of those plus one per waiting
//! receive; an idle client is the common case, so this keeps it to one small struct and no
//! queue memory at all while nothing is queued.

use std::collections::{BTreeSet, VecDeque};
use std::sync::Arc;
use std::task::{Context, Poll, Waker};

use parking_lot::{Mutex, MutexGuard};
use tokio::sync::Notify;

use crate::message::ConnId;
use crate::routing::router::{Delivery, Inbox, Offered};
use crate::sessions::backlog::Backlog;
use crate::sessions::{Kick, SessionCmd};

/// Why a command was not queued; it is handed back.
#[derive(Debug)]
pub enum TrySendError {
    /// The mailbox holds `cap` commands.
    Full(SessionCmd),
    /// The session has ended.
    Closed(SessionCmd),
    /// The sending connection is no longer the session's: another one attached.
    Superseded(SessionCmd),
}

/// Why a connection's command could not be queued.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SendError {
    /// The session has ended.
    Closed,
    /// Another connection attached to the session.
    Superseded,
}

/// Who is sending a command.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum From {
    /// A publisher's delivery: never fenced.
    Router,
    /// A command of this connection: refused unless it is the current one.
    Conn(ConnId),
    /// This connection's Attach: it becomes the current one.
    Attach(ConnId),
}

/// What the session finds in its mailbox.
#[derive(Debug)]
pub enum Received {
    /// The next command.
    Cmd(SessionCmd),
    /// The session was discarded; its connection, if any, is to be told why.
    Discarded(Kick),
}

/// One session's mailbox; shared as `Arc<Mailbox>`.
#[derive(Debug)]
pub struct Mailbox {
    inner: Mutex<Inner>,
    cap: usize,
    backlog: Backlog,
    /// Inbound QoS 2 ids awaiting PUBREL (Method B, [MQTT-4.3.3-2]): session state that survives
    /// reconnects, checked by the connection directly under a short CPU-only lock.
    awaiting_rel: Mutex<BTreeSet<u16>>,
}

#[derive(Debug, Default)]
struct Inner {
    queue: VecDeque<SessionCmd>,
    /// The session task, when it waits for a command.
    waker: Option<Waker>,
    /// Why the session was discarded, once it is.
    discarded: Option<Kick>,
    closed: bool,
    /// Senders waiting in `send` for room.
    waiting: u32,
    /// Signals room to the connections waiting in `send` (rare: a full mailbox), made when
    /// the first one waits. Its own signal, so taking a command wakes only those, never the
    /// publishers waiting for relief; made on demand, as most sessions never need it.
    room: Option<Arc<Notify>>,
    /// The connection whose commands are accepted (see the module doc).
    current: ConnId,
}

impl Mailbox {
    /// A mailbox of `cap` commands (at least 1) whose backlog reports congestion at `high`,
    /// accepting commands from connection `current`.
    pub fn new(cap: usize, high: usize, current: ConnId) -> Self {
        Mailbox {
            inner: Mutex::new(Inner {
                current,
                ..Inner::default()
            }),
            cap: cap.max(1),
            backlog: Backlog::new(high),
            awaiting_rel: Mutex::new(BTreeSet::new()),
        }
    }

    /// The session's backlog gauge.
    pub fn backlog(&self) -> &Backlog {
        &self.backlog
    }

    /// Queues a delivery unless the mailbox is full or the session has ended.
    pub fn try_send(&self, cmd: SessionCmd) -> Result<(), TrySendError> {
        self.push(cmd, From::Router, false)
    }

    /// Queues connection `conn`'s command unless the mailbox is full, the session has ended
    /// or another connection attached.
    pub fn try_send_from(&self, conn: ConnId, cmd: SessionCmd) -> Result<(), TrySendError> {
        self.push(cmd, From::Conn(conn), false)
    }

    /// As `try_send_from`, waiting for room if the mailbox is full. Callers on a hot path try
    /// `try_send_from` first and box this future, so its state costs nothing while unused.
    pub async fn send_from(&self, conn: ConnId, cmd: SessionCmd) -> Result<(), SendError> {
        self.send(cmd, From::Conn(conn)).await
    }

    /// Queues connection `conn`'s Attach, waiting for room, and makes `conn` the connection
    /// whose commands are accepted.
    pub async fn attach(&self, conn: ConnId, cmd: SessionCmd) -> Result<(), SendError> {
        self.send(cmd, From::Attach(conn)).await
    }

    /// Accepts commands from `conn` again (an Attach that its connection gave up on).
    pub fn fence(&self, conn: ConnId) {
        self.inner.lock().current = conn;
    }

    async fn send(&self, cmd: SessionCmd, from: From) -> Result<(), SendError> {
        // Most sends find room (every Attach goes through here): no signal is made for them.
        let mut cmd = match self.push(cmd, from, false) {
            Ok(()) => return Ok(()),
            Err(TrySendError::Closed(_)) => return Err(SendError::Closed),
            Err(TrySendError::Superseded(_)) => return Err(SendError::Superseded),
            Err(TrySendError::Full(c)) => c,
        };
        let room = self
            .inner
            .lock()
            .room
            .get_or_insert_with(|| Arc::new(Notify::new()))
            .clone();
        loop {
            let notified = room.notified();
            tokio::pin!(notified);
            // Enabled before the check: a command taken after it wakes us.
            notified.as_mut().enable();
            match self.push(cmd, from, true) {
                Ok(()) => return Ok(()),
                Err(TrySendError::Closed(_)) => return Err(SendError::Closed),
                Err(TrySendError::Superseded(_)) => return Err(SendError::Superseded),
                Err(TrySendError::Full(c)) => cmd = c,
            }
            // Counted as waiting until woken, or until this future is dropped.
            let _waiting = Waiting(self);
            notified.await;
        }
    }

    /// Queues `cmd` and wakes the session; when full, `wait` registers the caller as waiting
    /// for room under the same lock, so a command taken at once still wakes it.
    fn push(&self, cmd: SessionCmd, from: From, wait: bool) -> Result<(), TrySendError> {
        let mut inner = self.inner.lock();
        if inner.closed {
            return Err(TrySendError::Closed(cmd));
        }
        if let From::Conn(conn) = from {
            if conn != inner.current {
                return Err(TrySendError::Superseded(cmd));
            }
        }
        if inner.queue.len() >= self.cap {
            if wait {
                inner.waiting += 1;
            }
            return Err(TrySendError::Full(cmd));
        }
        inner.queue.push_back(cmd);
        if let From::Attach(conn) = from {
            inner.current = conn;
        }
        let waker = inner.waker.take();
        drop(inner);
        if let Some(w) = waker {
            w.wake();
        }
        Ok(())
    }

    /// Marks the session discarded, for the reason its connection will be given, and wakes it.
    pub fn discard(&self, why: Kick) {
        let waker = {
            let mut inner = self.inner.lock();
            inner.discarded = Some(why);
            inner.waker.take()
        };
        if let Some(w) = waker {
            w.wake();
        }
    }

    /// True once the session has ended: nothing sent now will be read.
    pub fn is_closed(&self) -> bool {
        self.inner.lock().closed
    }

    /// Records an inbound QoS 2 `pkid`: `Some(true)` if it was not already awaiting PUBREL
    /// (the message is new and must be routed), `None` if `max` ids already await theirs.
    pub fn receive_qos2(&self, pkid: u16, max: usize) -> Option<bool> {
        let mut awaiting = self.awaiting_rel.lock();
        // One search on the common path; the second only at the limit.
        if awaiting.len() >= max && !awaiting.contains(&pkid) {
            return None;
        }
        Some(awaiting.insert(pkid))
    }

    /// True if `pkid` is a QoS 2 message already received and awaiting PUBREL.
    pub fn awaits_rel(&self, pkid: u16) -> bool {
        self.awaiting_rel.lock().contains(&pkid)
    }

    /// Every inbound QoS 2 id awaiting PUBREL.
    pub fn awaiting_rel(&self) -> Vec<u16> {
        self.awaiting_rel.lock().iter().copied().collect()
    }

    /// PUBREL: `pkid` is free again.
    pub fn release_qos2(&self, pkid: u16) {
        self.awaiting_rel.lock().remove(&pkid);
    }

    // The session's side.

    /// The next command, or `Discarded`; registers the session's waker when there is none.
    /// An empty queue gives its memory back before the session sleeps.
    pub fn poll_recv(&self, cx: &mut Context<'_>) -> Poll<Received> {
        let mut inner = self.inner.lock();
        if let Some(why) = inner.discarded {
            return Poll::Ready(Received::Discarded(why));
        }
        let Some(cmd) = inner.queue.pop_front() else {
            if inner.queue.capacity() > 0 {
                inner.queue = VecDeque::new();
            }
            register(&mut inner.waker, cx);
            return Poll::Pending;
        };
        self.taken(inner);
        Poll::Ready(Received::Cmd(cmd))
    }

    /// The next command if one is queued (discarding is seen by `poll_recv`).
    pub fn try_recv(&self) -> Option<SessionCmd> {
        let mut inner = self.inner.lock();
        let cmd = inner.queue.pop_front()?;
        self.taken(inner);
        Some(cmd)
    }

    /// A command was taken: tells senders waiting for room, outside the lock.
    fn taken(&self, inner: MutexGuard<'_, Inner>) {
        let room = (inner.waiting > 0).then(|| inner.room.clone()).flatten();
        drop(inner);
        if let Some(room) = room {
            room.notify_waiters();
        }
    }

    /// The session has ended: drops what is queued and refuses everything from now on.
    pub fn close(&self) -> Vec<SessionCmd> {
        let (queued, room) = {
            let mut inner = self.inner.lock();
            inner.closed = true;
            inner.waker = None;
            (std::mem::take(&mut inner.queue), inner.room.clone())
        };
        if let Some(room) = room {
            room.notify_waiters();
        }
        queued.into()
    }
}

/// Stores `cx`'s waker in `slot` unless it is already there (cloning a waker is not free).
pub(crate) fn register(slot: &mut Option<Waker>, cx: &Context<'_>) {
    if !slot.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
        *slot = Some(cx.waker().clone());
    }
}

/// A waker that records being woken, and the flag it sets: for tests of who wakes whom that
/// poll by hand instead of hoping a spawned task got there first.
/// The router's way into a session: counted in the backlog before it is queued, so the
/// session cannot take it off first (see `backlog.rs`), whether or not anyone waits for it.
impl Inbox for Mailbox {
    fn offer(&self, delivery: Delivery) -> Offered {
        let backlog = self.backlog();
        let congested = backlog.added();
        match self.try_send(SessionCmd::Deliver(delivery)) {
            Ok(()) => Offered::Taken { congested },
            Err(e) => {
                backlog.not_added();
                match e {
                    TrySendError::Full(_) => Offered::Full,
                    TrySendError::Closed(_) | TrySendError::Superseded(_) => Offered::Gone,
                }
            }
        }
    }

    fn keeps_up(&self) -> bool {
        self.backlog().keeps_up()
    }

    fn waiting(&self) -> usize {
        self.backlog().pending()
    }
}

#[cfg(test)]
pub(crate) fn flag_waker() -> (Waker, Arc<std::sync::atomic::AtomicBool>) {
    struct Flag(Arc<std::sync::atomic::AtomicBool>);
    impl std::task::Wake for Flag {
        fn wake(self: Arc<Self>) {
            self.0.store(true, std::sync::atomic::Ordering::SeqCst);
        }
    }
    let woken = Arc::new(std::sync::atomic::AtomicBool::new(false));
    (Waker::from(Arc::new(Flag(woken.clone()))), woken)
}

/// A sender registered in `Inner::waiting`; unregisters on drop.
struct Waiting<'a>(&'a Mailbox);

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.inner.lock().waiting -= 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::time::Duration;

    fn ack(id: u16) -> SessionCmd {
        SessionCmd::PubAck(id)
    }

    fn id(r: Poll<Received>) -> Option<u16> {
        match r {
            Poll::Ready(Received::Cmd(SessionCmd::PubAck(id))) => Some(id),
            _ => None,
        }
    }

    #[test]
    fn bounded_fifo_and_close() {
        let mb = Mailbox::new(2, 10, 1);
        let mut cx = Context::from_waker(Waker::noop());
        assert!(mb.try_send(ack(1)).is_ok());
        assert!(mb.try_send(ack(2)).is_ok());
        assert!(matches!(mb.try_send(ack(3)), Err(TrySendError::Full(_))));
        assert_eq!(id(mb.poll_recv(&mut cx)), Some(1));
        assert!(matches!(mb.try_recv(), Some(SessionCmd::PubAck(2))));
        assert!(mb.poll_recv(&mut cx).is_pending());
        assert_eq!(mb.inner.lock().queue.capacity(), 0, "memory given back");
        mb.close();
        assert!(mb.is_closed());
        assert!(matches!(mb.try_send(ack(4)), Err(TrySendError::Closed(_))));
    }

    #[test]
    fn discard_is_seen_first() {
        let mb = Mailbox::new(4, 10, 1);
        let mut cx = Context::from_waker(Waker::noop());
        assert!(mb.try_send(ack(1)).is_ok());
        mb.discard(Kick::Shutdown);
        assert!(matches!(
            mb.poll_recv(&mut cx),
            Poll::Ready(Received::Discarded(Kick::Shutdown))
        ));
    }

    #[tokio::test]
    async fn an_attach_fences_off_the_previous_connection() {
        let mb = Mailbox::new(8, 10, 1);
        assert!(mb.try_send_from(1, ack(1)).is_ok());
        assert!(matches!(
            mb.try_send_from(2, ack(2)),
            Err(TrySendError::Superseded(_))
        ));
        assert_eq!(mb.attach(2, ack(3)).await, Ok(()));
        // From the moment the Attach is queued, connection 1 is out and 2 is in.
        assert!(matches!(
            mb.try_send_from(1, ack(4)),
            Err(TrySendError::Superseded(_))
        ));
        assert_eq!(mb.send_from(1, ack(4)).await, Err(SendError::Superseded));
        assert!(mb.try_send_from(2, ack(5)).is_ok());
        assert!(mb.try_send(ack(6)).is_ok(), "deliveries are never fenced");
        let order: Vec<_> = std::iter::from_fn(|| match mb.try_recv() {
            Some(SessionCmd::PubAck(id)) => Some(id),
            _ => None,
        })
        .collect();
        assert_eq!(order, [1, 3, 5, 6]);
        // An Attach its connection gave up on: the session lets the old one back in.
        mb.fence(1);
        assert!(mb.try_send_from(1, ack(7)).is_ok());
    }

    #[tokio::test]
    async fn a_send_that_finds_room_makes_no_room_signal() {
        let mb = Mailbox::new(2, 10, 1);
        assert_eq!(mb.attach(1, ack(1)).await, Ok(()));
        assert_eq!(mb.send_from(1, ack(2)).await, Ok(()));
        assert!(
            mb.inner.lock().room.is_none(),
            "made only for a full mailbox"
        );
    }

    #[test]
    fn qos2_ids() {
        let mb = Mailbox::new(4, 10, 1);
        assert_eq!(mb.receive_qos2(7, 2), Some(true));
        assert_eq!(
            mb.receive_qos2(7, 2),
            Some(false),
            "a resend of an id awaiting PUBREL"
        );
        mb.release_qos2(7);
        assert_eq!(mb.receive_qos2(7, 2), Some(true));
        assert_eq!(mb.receive_qos2(8, 2), Some(true));
        assert_eq!(mb.receive_qos2(9, 2), None, "the limit");
        assert_eq!(
            mb.receive_qos2(8, 2),
            Some(false),
            "a resend is still known"
        );
    }

    #[tokio::test]
    async fn receiver_wakes_and_senders_wait_for_room() {
        let mb = Arc::new(Mailbox::new(1, 10, 1));
        let reader = tokio::spawn({
            let mb = mb.clone();
            async move {
                let mut got = Vec::new();
                while got.len() < 3 {
                    if let Received::Cmd(SessionCmd::PubAck(id)) =
                        std::future::poll_fn(|cx| mb.poll_recv(cx)).await
                    {
                        got.push(id);
                    }
                }
                got
            }
        });
        for i in 1..=3 {
            tokio::time::timeout(Duration::from_secs(5), mb.send_from(1, ack(i)))
                .await
                .expect("room")
                .expect("open");
        }
        let got = tokio::time::timeout(Duration::from_secs(5), reader)
            .await
            .expect("woken")
            .expect("task");
        assert_eq!(got, [1, 2, 3]);
        mb.close();
        assert_eq!(mb.send_from(1, ack(9)).await, Err(SendError::Closed));
    }
}
