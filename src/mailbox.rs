//! A session's mailbox and the state it shares with its connections and routes, in one
//! allocation per session.
//!
//! Publishers (through their routes), the session's connection and the registry put commands
//! in; the session actor takes them out. Besides the queue it carries the discard flag, the
//! backlog gauge publishers watch for backpressure, and the inbound QoS 2 ids awaiting PUBREL.
//! A channel crate would cost a separate allocation for each of those plus one per waiting
//! receive; an idle client is the common case, so this keeps it to one small struct and no
//! queue memory at all while nothing is queued.

use std::collections::{BTreeSet, VecDeque};
use std::task::{Context, Poll, Waker};

use parking_lot::{Mutex, MutexGuard};

use crate::backlog::Backlog;
use crate::session::{Kick, SessionCmd};

/// Why a command was not queued; it is handed back.
#[derive(Debug)]
pub enum TrySendError {
    /// The mailbox holds `cap` commands.
    Full(SessionCmd),
    /// The session has ended.
    Closed(SessionCmd),
}

/// The session has ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Closed;

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
    /// Its notifier also signals room when a command is taken while a sender waits for it.
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
}

impl Mailbox {
    /// A mailbox of `cap` commands (at least 1) whose backlog reports congestion at `high`.
    pub fn new(cap: usize, high: usize) -> Self {
        Mailbox {
            inner: Mutex::new(Inner::default()),
            cap: cap.max(1),
            backlog: Backlog::new(high),
            awaiting_rel: Mutex::new(BTreeSet::new()),
        }
    }

    /// The session's backlog gauge.
    pub fn backlog(&self) -> &Backlog {
        &self.backlog
    }

    /// Queues `cmd` unless the mailbox is full or the session has ended.
    pub fn try_send(&self, cmd: SessionCmd) -> Result<(), TrySendError> {
        self.push(cmd, false)
    }

    /// Queues `cmd`, waiting for room if the mailbox is full. Callers on a hot path try
    /// `try_send` first and box this future, so its state costs nothing while unused.
    pub async fn send(&self, mut cmd: SessionCmd) -> Result<(), Closed> {
        loop {
            let notified = self.backlog.notifier().notified();
            tokio::pin!(notified);
            // Enabled before the check: a command taken after it wakes us.
            notified.as_mut().enable();
            match self.push(cmd, true) {
                Ok(()) => return Ok(()),
                Err(TrySendError::Closed(_)) => return Err(Closed),
                Err(TrySendError::Full(c)) => cmd = c,
            }
            // Counted as waiting until woken, or until this future is dropped.
            let _waiting = Waiting(self);
            notified.await;
        }
    }

    /// Queues `cmd` and wakes the session; when full, `wait` registers the caller as waiting
    /// for room under the same lock, so a command taken at once still wakes it.
    fn push(&self, cmd: SessionCmd, wait: bool) -> Result<(), TrySendError> {
        let mut inner = self.inner.lock();
        if inner.closed {
            return Err(TrySendError::Closed(cmd));
        }
        if inner.queue.len() >= self.cap {
            if wait {
                inner.waiting += 1;
            }
            return Err(TrySendError::Full(cmd));
        }
        inner.queue.push_back(cmd);
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

    /// Records an inbound QoS 2 `pkid`; true if it was not already awaiting PUBREL (the
    /// message is new and must be routed).
    pub fn receive_qos2(&self, pkid: u16) -> bool {
        self.awaiting_rel.lock().insert(pkid)
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
        let notify = inner.waiting > 0;
        drop(inner);
        if notify {
            self.backlog.notifier().notify_waiters();
        }
    }

    /// The session has ended: drops what is queued and refuses everything from now on.
    pub fn close(&self) {
        let queued = {
            let mut inner = self.inner.lock();
            inner.closed = true;
            inner.waker = None;
            std::mem::take(&mut inner.queue)
        };
        drop(queued);
        self.backlog.notifier().notify_waiters();
    }
}

/// Stores `cx`'s waker in `slot` unless it is already there (cloning a waker is not free).
pub(crate) fn register(slot: &mut Option<Waker>, cx: &Context<'_>) {
    if !slot.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
        *slot = Some(cx.waker().clone());
    }
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
        let mb = Mailbox::new(2, 10);
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
        let mb = Mailbox::new(4, 10);
        let mut cx = Context::from_waker(Waker::noop());
        assert!(mb.try_send(ack(1)).is_ok());
        mb.discard(Kick::Shutdown);
        assert!(matches!(
            mb.poll_recv(&mut cx),
            Poll::Ready(Received::Discarded(Kick::Shutdown))
        ));
    }

    #[test]
    fn qos2_ids() {
        let mb = Mailbox::new(4, 10);
        assert!(mb.receive_qos2(7));
        assert!(!mb.receive_qos2(7), "a resend of an id awaiting PUBREL");
        mb.release_qos2(7);
        assert!(mb.receive_qos2(7));
    }

    #[tokio::test]
    async fn receiver_wakes_and_senders_wait_for_room() {
        let mb = Arc::new(Mailbox::new(1, 10));
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
            tokio::time::timeout(Duration::from_secs(5), mb.send(ack(i)))
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
        assert_eq!(mb.send(ack(9)).await, Err(Closed));
    }
}
