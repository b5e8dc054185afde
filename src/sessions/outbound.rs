//! The session -> connection link: a bounded queue of packets filled by the session and
//! drained by the connection, plus the session's order to close (a kick).
//!
//! A tokio channel allocates about 1.2 KB when it is made, and a oneshot for the kick another
//! allocation; this link is one small struct that holds no queue memory until something is
//! queued and gives it back when the connection goes idle. Both ends wait by registering a
//! waker in it (the connection for packets and kicks, the session for room), so neither keeps
//! a waiting future in its task.

use std::collections::VecDeque;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};

use parking_lot::Mutex;

use crate::sessions::mailbox::register;
use crate::sessions::{Kick, Outbound};

#[derive(Debug)]
struct Shared {
    inner: Mutex<Inner>,
    cap: usize,
}

#[derive(Debug)]
struct Inner {
    queue: VecDeque<Outbound>,
    kick: Option<Kick>,
    /// The connection, waiting for a packet or a kick.
    conn_waker: Option<Waker>,
    /// The session, watching for the connection to go (its end dropped on any exit, a
    /// failed handshake or a panic included, so it detaches without being told) and, when
    /// `room_wanted`, waiting for room.
    session_waker: Option<Waker>,
    room_wanted: bool,
    tx_alive: bool,
    rx_alive: bool,
}

/// The receiver is gone: the connection has closed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Closed;

/// Why the connection must close, from its link.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Event {
    /// The session told the connection to close.
    Kick(Kick),
    /// The session dropped the link without a kick.
    Gone,
}

/// A link queueing at most `cap` packets (at least 1).
pub fn channel(cap: usize) -> (OutboundTx, OutboundRx) {
    let shared = Arc::new(Shared {
        inner: Mutex::new(Inner {
            queue: VecDeque::new(),
            kick: None,
            conn_waker: None,
            session_waker: None,
            room_wanted: false,
            tx_alive: true,
            rx_alive: true,
        }),
        cap: cap.max(1),
    });
    (OutboundTx(shared.clone()), OutboundRx(shared))
}

/// The session's end.
#[derive(Debug)]
pub struct OutboundTx(Arc<Shared>);

impl Drop for OutboundTx {
    fn drop(&mut self) {
        let waker = {
            let mut inner = self.0.inner.lock();
            inner.tx_alive = false;
            inner.session_waker = None;
            inner.conn_waker.take()
        };
        if let Some(w) = waker {
            w.wake();
        }
    }
}

impl OutboundTx {
    /// Queues what `next` yields while there is room, under one lock, and wakes the
    /// connection once. `next` is only called when there is room, so nothing it yields is
    /// lost. `Ok(true)` if it stopped because the queue is full.
    pub fn fill(&self, mut next: impl FnMut() -> Option<Outbound>) -> Result<bool, Closed> {
        let (waker, full) = {
            let mut inner = self.0.inner.lock();
            if !inner.rx_alive {
                return Err(Closed);
            }
            let before = inner.queue.len();
            let full = loop {
                if inner.queue.len() >= self.0.cap {
                    break true;
                }
                match next() {
                    Some(item) => inner.queue.push_back(item),
                    None => break false,
                }
            };
            let added = inner.queue.len() > before;
            (added.then(|| inner.conn_waker.take()).flatten(), full)
        };
        if let Some(w) = waker {
            w.wake();
        }
        Ok(full)
    }

    /// Ready when there is room, or the receiver is gone; otherwise the session is woken
    /// when the connection takes a packet.
    pub fn poll_room(&self, cx: &mut Context<'_>) -> Poll<()> {
        let mut inner = self.0.inner.lock();
        if !inner.rx_alive || inner.queue.len() < self.0.cap {
            return Poll::Ready(());
        }
        register(&mut inner.session_waker, cx);
        inner.room_wanted = true;
        Poll::Pending
    }

    /// Ready once the connection's end is dropped; otherwise the session is woken then.
    pub fn poll_gone(&self, cx: &mut Context<'_>) -> Poll<()> {
        let mut inner = self.0.inner.lock();
        if !inner.rx_alive {
            return Poll::Ready(());
        }
        register(&mut inner.session_waker, cx);
        Poll::Pending
    }

    /// Tells the connection to close, and drops the link.
    pub fn kick(self, kick: Kick) {
        let waker = {
            let mut inner = self.0.inner.lock();
            inner.kick = Some(kick);
            inner.conn_waker.take()
        };
        if let Some(w) = waker {
            w.wake();
        }
    }
}

/// The connection's end.
#[derive(Debug)]
pub struct OutboundRx(Arc<Shared>);

impl Drop for OutboundRx {
    fn drop(&mut self) {
        let (wakers, queued) = {
            let mut inner = self.0.inner.lock();
            inner.rx_alive = false;
            inner.conn_waker = None;
            (inner.session_waker.take(), std::mem::take(&mut inner.queue))
        };
        drop(queued);
        if let Some(w) = wakers {
            w.wake();
        }
    }
}

impl OutboundRx {
    /// Ready with a kick, or `Gone` once the session dropped the link and the queue is
    /// empty; otherwise registers the connection's waker.
    pub fn poll_kick(&mut self, cx: &mut Context<'_>) -> Poll<Event> {
        let mut inner = self.0.inner.lock();
        if let Some(k) = inner.kick.take() {
            return Poll::Ready(Event::Kick(k));
        }
        if !inner.tx_alive && inner.queue.is_empty() {
            return Poll::Ready(Event::Gone);
        }
        register(&mut inner.conn_waker, cx);
        Poll::Pending
    }

    /// The next packet; otherwise registers the connection's waker.
    pub fn poll_recv(&mut self, cx: &mut Context<'_>) -> Poll<Outbound> {
        self.take(Some(cx)).map_or(Poll::Pending, Poll::Ready)
    }

    /// The next packet if one is queued.
    pub fn try_recv(&mut self) -> Option<Outbound> {
        self.take(None)
    }

    /// Pops the next packet and wakes a session waiting for room, outside the lock; when none
    /// is queued, registers `cx`'s waker if given.
    fn take(&mut self, cx: Option<&Context<'_>>) -> Option<Outbound> {
        let (item, waker) = {
            let mut inner = self.0.inner.lock();
            let Some(item) = inner.queue.pop_front() else {
                if let Some(cx) = cx {
                    register(&mut inner.conn_waker, cx);
                }
                return None;
            };
            // Only a session waiting for room is woken (it registers again when it next
            // waits, for room or for the connection to go).
            let waker = if std::mem::take(&mut inner.room_wanted) {
                inner.session_waker.take()
            } else {
                None
            };
            (item, waker)
        };
        if let Some(w) = waker {
            w.wake();
        }
        Some(item)
    }

    /// If nothing is queued (the connection is idle), frees the queue's memory and returns
    /// true.
    pub fn release_if_idle(&mut self) -> bool {
        let mut inner = self.0.inner.lock();
        if !inner.queue.is_empty() {
            return false;
        }
        if inner.queue.capacity() > 0 {
            inner.queue = VecDeque::new();
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::Packet;

    fn item(id: u16) -> Outbound {
        Outbound::PubRel(id)
    }

    fn id(o: Option<Outbound>) -> Option<u16> {
        match o {
            Some(Outbound::PubRel(id)) => Some(id),
            _ => None,
        }
    }

    fn recv(rx: &mut OutboundRx) -> Option<u16> {
        match rx.poll_recv(&mut Context::from_waker(Waker::noop())) {
            Poll::Ready(o) => id(Some(o)),
            Poll::Pending => None,
        }
    }

    fn kick(rx: &mut OutboundRx) -> Poll<Event> {
        rx.poll_kick(&mut Context::from_waker(Waker::noop()))
    }

    #[test]
    fn bounded_fifo() {
        let (tx, mut rx) = channel(2);
        let mut items = (1..=3).map(item);
        assert_eq!(tx.fill(|| items.next()), Ok(true), "stops when full");
        assert_eq!(id(items.next()), Some(3), "the third was never taken");
        assert!(!rx.release_if_idle(), "packets queued: not idle");
        assert!(tx
            .poll_room(&mut Context::from_waker(Waker::noop()))
            .is_pending());
        assert_eq!(id(rx.try_recv()), Some(1));
        assert_eq!(tx.fill(|| None), Ok(false));
        assert_eq!(recv(&mut rx), Some(2));
        assert!(rx.try_recv().is_none());
        assert_eq!(recv(&mut rx), None);
        assert!(kick(&mut rx).is_pending());
        assert!(rx.release_if_idle());
        assert_eq!(rx.0.inner.lock().queue.capacity(), 0);
        drop(rx);
        let mut offered = false;
        let r = tx.fill(|| {
            offered = true;
            Some(Outbound::Packet(Box::new(Packet::PingResp)))
        });
        assert_eq!(r, Err(Closed));
        assert!(!offered, "nothing taken for a closed connection");
    }

    #[test]
    fn kick_comes_first_and_a_dropped_sender_is_gone() {
        let (tx, mut rx) = channel(4);
        let mut one = Some(item(1));
        assert_eq!(tx.fill(|| one.take()), Ok(false));
        tx.kick(Kick::TakenOver);
        assert_eq!(kick(&mut rx), Poll::Ready(Event::Kick(Kick::TakenOver)));
        assert!(kick(&mut rx).is_pending(), "a packet is still queued");
        assert_eq!(recv(&mut rx), Some(1));
        assert_eq!(kick(&mut rx), Poll::Ready(Event::Gone));
    }

    #[tokio::test]
    async fn both_ends_are_woken() {
        let (tx, mut rx) = channel(1);
        let reader = tokio::spawn(async move {
            let mut got = Vec::new();
            while got.len() < 3 {
                let o = std::future::poll_fn(|cx| rx.poll_recv(cx)).await;
                got.extend(id(Some(o)));
            }
            let gone = std::future::poll_fn(|cx| rx.poll_kick(cx)).await;
            (got, gone)
        });
        for i in 1..=3 {
            tokio::time::timeout(
                std::time::Duration::from_secs(5),
                std::future::poll_fn(|cx| tx.poll_room(cx)),
            )
            .await
            .expect("room");
            let mut one = Some(item(i));
            assert!(tx.fill(|| one.take()).is_ok());
            assert!(one.is_none(), "queued");
        }
        drop(tx);
        let got = tokio::time::timeout(std::time::Duration::from_secs(5), reader)
            .await
            .expect("woken")
            .expect("task");
        assert_eq!(got, ([1, 2, 3].to_vec(), Event::Gone));
    }

    #[test]
    fn the_session_is_woken_when_the_connection_goes() {
        let (tx, rx) = channel(1);
        let (waker, woken) = crate::sessions::mailbox::flag_waker();
        assert!(tx.poll_gone(&mut Context::from_waker(&waker)).is_pending());
        assert!(!woken.load(std::sync::atomic::Ordering::SeqCst));
        drop(rx);
        assert!(woken.load(std::sync::atomic::Ordering::SeqCst), "woken");
        assert!(tx.poll_gone(&mut Context::from_waker(&waker)).is_ready());
    }
}
