//! The session -> connection queue: bounded, filled by the session, drained by the connection.
//!
//! A tokio channel allocates about 1.2 KB when it is made; this queue allocates nothing until
//! something is queued and gives its memory back when the connection goes idle, so an idle
//! client costs only the small shared struct. The session never waits on a push: it checks
//! `has_room`, and when the queue is full it waits for `room` as one branch of its select.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;

use parking_lot::Mutex;
use tokio::sync::Notify;

use crate::session::Outbound;

#[derive(Debug)]
struct Shared {
    queue: Mutex<VecDeque<Outbound>>,
    cap: usize,
    senders: AtomicUsize,
    receiver_alive: AtomicBool,
    /// Signalled when an item is queued or the last sender goes.
    readable: Notify,
    /// Signalled when an item is taken or the receiver goes.
    writable: Notify,
}

impl Shared {
    fn pop(&self) -> Option<Outbound> {
        let item = self.queue.lock().pop_front()?;
        self.writable.notify_one();
        Some(item)
    }
}

/// The receiver is gone: the connection has closed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Closed;

/// A bounded queue of `cap` packets (at least 1).
pub fn channel(cap: usize) -> (OutboundTx, OutboundRx) {
    let shared = Arc::new(Shared {
        queue: Mutex::new(VecDeque::new()),
        cap: cap.max(1),
        senders: AtomicUsize::new(1),
        receiver_alive: AtomicBool::new(true),
        readable: Notify::new(),
        writable: Notify::new(),
    });
    (OutboundTx(shared.clone()), OutboundRx(shared))
}

/// The session's end.
#[derive(Debug)]
pub struct OutboundTx(Arc<Shared>);

impl Clone for OutboundTx {
    fn clone(&self) -> Self {
        self.0.senders.fetch_add(1, Ordering::Relaxed);
        OutboundTx(self.0.clone())
    }
}

impl Drop for OutboundTx {
    fn drop(&mut self) {
        if self.0.senders.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.0.readable.notify_one();
        }
    }
}

impl OutboundTx {
    /// True if a push would be accepted now.
    pub fn has_room(&self) -> Result<bool, Closed> {
        if !self.0.receiver_alive.load(Ordering::Acquire) {
            return Err(Closed);
        }
        Ok(self.0.queue.lock().len() < self.0.cap)
    }

    /// Queues `item`; gives it back if the queue is full or the receiver is gone.
    pub fn try_send(&self, item: Outbound) -> Result<(), Outbound> {
        if !self.0.receiver_alive.load(Ordering::Acquire) {
            return Err(item);
        }
        {
            let mut q = self.0.queue.lock();
            if q.len() >= self.0.cap {
                return Err(item);
            }
            q.push_back(item);
        }
        self.0.readable.notify_one();
        Ok(())
    }

    /// Completes when there is room, or the receiver is gone.
    pub async fn room(&self) {
        loop {
            let notified = self.0.writable.notified();
            if !matches!(self.has_room(), Ok(false)) {
                return;
            }
            notified.await;
        }
    }
}

/// The connection's end.
#[derive(Debug)]
pub struct OutboundRx(Arc<Shared>);

impl Drop for OutboundRx {
    fn drop(&mut self) {
        self.0.receiver_alive.store(false, Ordering::Release);
        self.0.writable.notify_one();
    }
}

impl OutboundRx {
    /// The next packet, waiting for one; `None` once every sender is gone and the queue is
    /// empty. Cancel-safe: a packet is only taken when this returns it.
    pub async fn recv(&mut self) -> Option<Outbound> {
        let shared = &*self.0;
        loop {
            let notified = shared.readable.notified();
            if let Some(item) = shared.pop() {
                return Some(item);
            }
            if shared.senders.load(Ordering::Acquire) == 0 {
                return None;
            }
            notified.await;
        }
    }

    /// The next packet if one is queued.
    pub fn try_recv(&mut self) -> Option<Outbound> {
        self.0.pop()
    }

    /// True if nothing is queued.
    pub fn is_empty(&self) -> bool {
        self.0.queue.lock().is_empty()
    }

    /// Frees the queue's memory if it is empty (the connection is idle).
    pub fn release(&mut self) {
        let mut q = self.0.queue.lock();
        if q.is_empty() && q.capacity() > 0 {
            *q = VecDeque::new();
        }
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

    #[test]
    fn bounded_fifo() {
        let (tx, mut rx) = channel(2);
        assert_eq!(tx.has_room(), Ok(true));
        assert!(tx.try_send(item(1)).is_ok());
        assert!(tx.try_send(item(2)).is_ok());
        assert_eq!(tx.has_room(), Ok(false));
        assert!(tx.try_send(item(3)).is_err());
        assert_eq!(id(rx.try_recv()), Some(1));
        assert_eq!(tx.has_room(), Ok(true));
        assert_eq!(id(rx.try_recv()), Some(2));
        assert!(rx.try_recv().is_none());
        assert!(rx.is_empty());
        rx.release();
        assert_eq!(rx.0.queue.lock().capacity(), 0);
        drop(rx);
        assert_eq!(tx.has_room(), Err(Closed));
        assert!(tx
            .try_send(Outbound::Packet(Box::new(Packet::PingResp)))
            .is_err());
    }

    #[tokio::test]
    async fn recv_waits_and_ends_with_the_senders() {
        let (tx, mut rx) = channel(4);
        let tx2 = tx.clone();
        let reader = tokio::spawn(async move {
            let mut got = Vec::new();
            while let Some(o) = rx.recv().await {
                got.extend(id(Some(o)));
            }
            got
        });
        tokio::task::yield_now().await;
        assert!(tx.try_send(item(7)).is_ok());
        assert!(tx2.try_send(item(8)).is_ok());
        drop(tx);
        drop(tx2);
        let got = tokio::time::timeout(std::time::Duration::from_secs(5), reader)
            .await
            .expect("reader ends")
            .expect("task");
        assert_eq!(got, [7, 8]);
    }

    #[tokio::test]
    async fn room_wakes_when_drained() {
        let (tx, mut rx) = channel(1);
        assert!(tx.try_send(item(1)).is_ok());
        let waiter = tokio::spawn(async move {
            tx.room().await;
            tx.has_room()
        });
        tokio::task::yield_now().await;
        assert_eq!(id(rx.try_recv()), Some(1));
        let r = tokio::time::timeout(std::time::Duration::from_secs(5), waiter)
            .await
            .expect("woken")
            .expect("task");
        assert_eq!(r, Ok(true));
    }
}
