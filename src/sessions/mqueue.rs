//! The session's pending queue: messages waiting behind the inflight window or for an offline
//! client.
//!
//! ```text
//!  deliveries ──> [ q0 q1 q1 q2 q0 ... ] ──> inflight window ──> connection
//!                 bounded by max_queued_messages and max_queued_bytes;
//!                 when full: evict the oldest QoS 0 first, then apply the overflow policy
//! ```

use std::collections::VecDeque;
use std::sync::Arc;

use crate::config::QueueOverflow;
use crate::message::{Message, QoS};
use crate::routing::route::Delivery;
use crate::routing::shared::ShareKey;
use crate::store::Owed;

/// A message owed to this session, at the QoS it will be delivered with.
#[derive(Debug, Clone)]
pub struct Queued {
    /// The shared message.
    pub msg: Arc<Message>,
    /// Delivery QoS: `min(published, granted)`.
    pub qos: QoS,
    /// RETAIN flag for the outgoing PUBLISH (1 only for retained-on-subscribe deliveries).
    pub retain: bool,
    /// Its id in the store, for a persistent session (0: not stored).
    pub stored: u64,
    /// What its publisher waits on, settled once this session is done with it.
    pub owed: Option<Arc<Owed>>,
    /// The shared subscription's group it came through, if it did.
    pub share: Option<ShareKey>,
}

impl From<Delivery> for Queued {
    fn from(d: Delivery) -> Queued {
        Queued {
            msg: d.msg,
            qos: d.qos,
            retain: false,
            stored: d.stored,
            owed: d.owed,
            share: d.share,
        }
    }
}

/// A bounded FIFO of `Queued` messages with an overflow policy.
#[derive(Debug)]
pub struct MQueue {
    items: VecDeque<Queued>,
    max_len: usize,
    max_bytes: usize,
    bytes: usize,
    qos0: usize,
    overflow: QueueOverflow,
}

impl MQueue {
    /// An empty queue; `max_bytes` of 0 means no byte limit.
    pub fn new(max_len: usize, max_bytes: usize, overflow: QueueOverflow) -> Self {
        MQueue {
            items: VecDeque::new(),
            max_len: max_len.max(1),
            max_bytes,
            bytes: 0,
            qos0: 0,
            overflow,
        }
    }

    /// The queued messages, oldest first.
    pub fn iter(&self) -> impl Iterator<Item = &Queued> {
        self.items.iter()
    }

    /// Messages queued.
    pub fn len(&self) -> usize {
        self.items.len()
    }

    /// True if nothing is queued.
    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    /// Payload bytes queued.
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// How many more messages fit before the length limit.
    pub fn room(&self) -> usize {
        self.max_len.saturating_sub(self.items.len())
    }

    /// The next message to send, without removing it.
    pub fn front(&self) -> Option<&Queued> {
        self.items.front()
    }

    /// Appends `item`, dropping by policy if the queue is full; returns how many messages
    /// (the new one or queued ones) were dropped.
    pub fn push(&mut self, item: Queued) -> usize {
        self.push_with(item, |_| {})
    }

    /// As `push`, and shows each dropped message to `on_drop` before it goes.
    pub fn push_with(&mut self, item: Queued, mut on_drop: impl FnMut(&Queued)) -> usize {
        let size = item.msg.payload.len();
        if self.max_bytes > 0 && size > self.max_bytes {
            on_drop(&item);
            return 1;
        }
        let mut dropped = 0;
        while self.full_for(size) {
            let evicted = if self.qos0 > 0 {
                self.evict_oldest_qos0()
            } else if item.qos == QoS::AtMostOnce || self.overflow == QueueOverflow::DropNew {
                on_drop(&item);
                return dropped + 1;
            } else {
                self.pop()
            };
            if let Some(old) = evicted {
                on_drop(&old);
            }
            dropped += 1;
        }
        self.account_in(&item);
        self.items.push_back(item);
        dropped
    }

    /// Removes and returns the oldest message.
    pub fn pop(&mut self) -> Option<Queued> {
        let item = self.items.pop_front()?;
        self.account_out(&item);
        Some(item)
    }

    /// Removes, in order, every message `take` picks (it sees each once); how many. In
    /// place: a queue with nothing to take is only read.
    pub fn remove_where(&mut self, mut take: impl FnMut(&Queued) -> bool) -> usize {
        let (mut n, mut bytes, mut qos0) = (0, 0, 0);
        self.items.retain(|item| {
            let gone = take(item);
            if gone {
                n += 1;
                bytes += item.msg.payload.len();
                qos0 += usize::from(item.qos == QoS::AtMostOnce);
            }
            !gone
        });
        self.bytes -= bytes;
        self.qos0 -= qos0;
        n
    }

    fn full_for(&self, size: usize) -> bool {
        self.items.len() >= self.max_len
            || (self.max_bytes > 0 && self.bytes + size > self.max_bytes)
    }

    fn evict_oldest_qos0(&mut self) -> Option<Queued> {
        let i = self.items.iter().position(|q| q.qos == QoS::AtMostOnce)?;
        let item = self.items.remove(i)?;
        self.account_out(&item);
        Some(item)
    }

    fn account_in(&mut self, item: &Queued) {
        self.bytes += item.msg.payload.len();
        if item.qos == QoS::AtMostOnce {
            self.qos0 += 1;
        }
    }

    fn account_out(&mut self, item: &Queued) {
        self.bytes -= item.msg.payload.len();
        if item.qos == QoS::AtMostOnce {
            self.qos0 -= 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    fn q(payload: &str, qos: QoS) -> Queued {
        Queued {
            msg: Arc::new(Message {
                topic: Bytes::from_static(b"t"),
                payload: Bytes::copy_from_slice(payload.as_bytes()),
                qos,
                retain: false,
            }),
            qos,
            retain: false,
            stored: 0,
            owed: None,
            share: None,
        }
    }

    fn payloads(m: &mut MQueue) -> Vec<String> {
        let mut out = Vec::new();
        while let Some(i) = m.pop() {
            out.push(String::from_utf8_lossy(&i.msg.payload).into_owned());
        }
        out
    }

    #[test]
    fn fifo_order() {
        let mut m = MQueue::new(10, 0, QueueOverflow::DropNew);
        for p in ["a", "b", "c"] {
            assert_eq!(m.push(q(p, QoS::AtLeastOnce)), 0);
        }
        assert_eq!(
            m.front().map(|f| f.msg.payload.clone()),
            Some(Bytes::from_static(b"a"))
        );
        assert_eq!(payloads(&mut m), ["a", "b", "c"]);
        assert_eq!(m.bytes(), 0);
    }

    #[test]
    fn drop_new_keeps_the_old() {
        let mut m = MQueue::new(2, 0, QueueOverflow::DropNew);
        m.push(q("a", QoS::AtLeastOnce));
        m.push(q("b", QoS::ExactlyOnce));
        assert_eq!(m.push(q("c", QoS::AtLeastOnce)), 1);
        assert_eq!(payloads(&mut m), ["a", "b"]);
    }

    #[test]
    fn drop_oldest_keeps_the_new() {
        let mut m = MQueue::new(2, 0, QueueOverflow::DropOldest);
        m.push(q("a", QoS::AtLeastOnce));
        m.push(q("b", QoS::AtLeastOnce));
        assert_eq!(m.push(q("c", QoS::AtLeastOnce)), 1);
        assert_eq!(payloads(&mut m), ["b", "c"]);
    }

    #[test]
    fn qos0_is_evicted_first() {
        for policy in [QueueOverflow::DropNew, QueueOverflow::DropOldest] {
            let mut m = MQueue::new(3, 0, policy);
            m.push(q("a", QoS::AtLeastOnce));
            m.push(q("z", QoS::AtMostOnce));
            m.push(q("b", QoS::AtLeastOnce));
            assert_eq!(m.push(q("c", QoS::AtLeastOnce)), 1);
            assert_eq!(payloads(&mut m), ["a", "b", "c"], "{policy:?}");
            // A new QoS 0 message into a queue of QoS 1 is the one dropped.
            let mut m = MQueue::new(1, 0, policy);
            m.push(q("a", QoS::AtLeastOnce));
            assert_eq!(m.push(q("z", QoS::AtMostOnce)), 1);
            assert_eq!(payloads(&mut m), ["a"]);
        }
    }

    #[test]
    fn byte_limit() {
        let mut m = MQueue::new(100, 5, QueueOverflow::DropOldest);
        m.push(q("aa", QoS::AtLeastOnce));
        m.push(q("bb", QoS::AtLeastOnce));
        assert_eq!(m.push(q("ccc", QoS::AtLeastOnce)), 1, "evicts aa to fit");
        assert_eq!(m.bytes(), 5);
        assert_eq!(m.push(q("dddddd", QoS::AtLeastOnce)), 1, "never fits");
        assert_eq!(payloads(&mut m), ["bb", "ccc"]);
    }

    #[test]
    fn each_dropped_message_is_shown_before_it_goes() {
        let seen = |m: &mut MQueue, p: &str, qos: QoS| {
            let mut gone = Vec::new();
            let n = m.push_with(q(p, qos), |d| {
                gone.push(String::from_utf8_lossy(&d.msg.payload).into_owned())
            });
            assert_eq!(n, gone.len());
            gone
        };
        let mut m = MQueue::new(2, 4, QueueOverflow::DropOldest);
        assert!(seen(&mut m, "a", QoS::AtLeastOnce).is_empty());
        assert!(seen(&mut m, "z", QoS::AtMostOnce).is_empty());
        assert_eq!(seen(&mut m, "b", QoS::AtLeastOnce), ["z"], "QoS 0 first");
        assert_eq!(
            seen(&mut m, "c", QoS::AtLeastOnce),
            ["a"],
            "then the oldest"
        );
        assert_eq!(
            seen(&mut m, "y", QoS::AtMostOnce),
            ["y"],
            "a new QoS 0 into QoS 1s"
        );
        assert_eq!(seen(&mut m, "toolong", QoS::AtLeastOnce), ["toolong"]);
        assert_eq!(payloads(&mut m), ["b", "c"]);
    }
}
