//! Replies that wait for the disk. With `[persistence]` on, a PUBACK or PUBREC may go out only
//! once the store's records for its message are durable, or every persistent session owed it
//! is done with it (`store::Wait`). Such a reply is encoded into a group tagged with what it
//! waits for; everything encoded while any group waits goes behind it (MQTT keeps
//! acknowledgements in order), and groups move to the write buffer, in order, as theirs is
//! met. A group can also hold deliveries planned for later (an inbound QoS 2 message of a
//! stored session), handed out just before its bytes. The groups share one buffer, so a
//! reply costs no allocation of its own. Without a store nothing is ever gated and this costs
//! nothing.

use std::collections::VecDeque;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::{Buf, BytesMut};

use crate::routing::router::{Deferred, Router};
use crate::sessions::mailbox::Mailbox;
use crate::store::{Owed, Store, Wait};

/// One wait's worth: deliveries to hand out, then its bytes.
struct Group {
    /// Enough once durable.
    lsn: u64,
    /// Or this durable, and every one of `owed` and `more_owed` settled (none: `lsn` only).
    firm: u64,
    owed: Option<Arc<Owed>>,
    /// Beyond the first, for replies that joined the group (rare).
    more_owed: Vec<Arc<Owed>>,
    deliveries: Vec<Deferred<Mailbox>>,
    /// Where its bytes start, counted over everything ever encoded into the buffer.
    start: usize,
}

impl Group {
    fn poll_ready(&mut self, store: &Store, cx: &mut Context<'_>) -> Poll<bool> {
        match store.poll_durable(self.lsn, cx) {
            Poll::Pending if self.owed.is_some() && store.durable_lsn() >= self.firm => {
                self.more_owed.retain(|o| o.poll_settled(cx).is_pending());
                if self
                    .owed
                    .as_ref()
                    .is_some_and(|o| o.poll_settled(cx).is_ready())
                {
                    self.owed = self.more_owed.pop();
                }
                if self.owed.is_none() {
                    Poll::Ready(true)
                } else {
                    Poll::Pending
                }
            }
            polled => polled,
        }
    }
}

/// Encoded packets waiting for the store, in order.
#[derive(Default)]
pub(super) struct Gated {
    groups: VecDeque<Group>,
    bytes: BytesMut,
    /// Bytes moved out of `bytes` so far.
    released: usize,
}

impl Gated {
    /// The buffer for a packet that may go out once `wait` is met.
    pub(super) fn tail(&mut self, wait: Wait) -> &mut BytesMut {
        self.group(wait);
        &mut self.bytes
    }

    /// Deliveries to hand out once `lsn` is durable.
    pub(super) fn defer(&mut self, lsn: u64, deliveries: Deferred<Mailbox>) {
        self.group(Wait::from(lsn)).deliveries.push(deliveries);
    }

    /// The last group, if `wait` can join it (it waits for no more than the group does), or
    /// a new one behind it.
    fn group(&mut self, wait: Wait) -> &mut Group {
        let joins = self.groups.back().is_some_and(|g| wait.lsn <= g.lsn);
        if !joins {
            self.groups.push_back(Group {
                lsn: wait.lsn,
                firm: 0,
                owed: None,
                more_owed: Vec::new(),
                deliveries: Vec::new(),
                start: self.released + self.bytes.len(),
            });
        }
        let Some(group) = self.groups.back_mut() else {
            unreachable!("a group was just pushed")
        };
        match wait.owed {
            Some(owed) => {
                group.firm = group.firm.max(wait.firm);
                match &group.owed {
                    None if !joins => group.owed = Some(owed),
                    // A reply without one already joined: it waits for the LSN alone.
                    None => group.firm = group.lsn,
                    Some(_) => group.more_owed.push(owed),
                }
            }
            None => group.firm = group.firm.max(wait.lsn),
        }
        group
    }

    /// Bytes waiting.
    pub(super) fn len(&self) -> usize {
        self.bytes.len()
    }

    /// Moves every group whose wait is met to `wbuf`: `Ready(Ok(true))` if any moved and
    /// none waits any more, `Ready(Err(()))` if the store failed (they never will).
    pub(super) fn poll_release(
        &mut self,
        store: &Store,
        router: &Router<Mailbox>,
        wbuf: &mut BytesMut,
        cx: &mut Context<'_>,
    ) -> Poll<Result<bool, ()>> {
        let mut moved = false;
        while let Some(group) = self.groups.front_mut() {
            match group.poll_ready(store, cx) {
                Poll::Ready(true) => {
                    if let Some(group) = self.groups.pop_front() {
                        for deliveries in group.deliveries {
                            router.deliver_deferred(deliveries);
                        }
                    }
                    let end = self
                        .groups
                        .front()
                        .map_or(self.released + self.bytes.len(), |g| g.start);
                    let n = end - self.released;
                    wbuf.extend_from_slice(&self.bytes[..n]);
                    self.bytes.advance(n);
                    self.released = end;
                    moved = true;
                }
                Poll::Ready(false) => return Poll::Ready(Err(())),
                Poll::Pending if moved => return Poll::Ready(Ok(false)),
                Poll::Pending => return Poll::Pending,
            }
        }
        Poll::Ready(Ok(moved))
    }

    /// Hands out every planned delivery at once (the connection is closing); the bytes go.
    pub(super) fn deliver_all(self, router: &Router<Mailbox>) {
        for group in self.groups {
            for deliveries in group.deliveries {
                router.deliver_deferred(deliveries);
            }
        }
    }

    /// True if nothing waits.
    pub(super) fn is_empty(&self) -> bool {
        self.groups.is_empty()
    }
}
