//! Replies that wait for the disk. With `[persistence]` on, a PUBACK or PUBREC may go out only
//! once the store's records for its message are durable. Such a reply is encoded into a group
//! tagged with the LSN it waits for; everything encoded while any group waits goes behind it
//! (MQTT keeps acknowledgements in order), and groups move to the write buffer as the store's
//! durable LSN passes theirs. A group can also hold deliveries planned for later (an inbound
//! QoS 2 message of a stored session), handed out just before its bytes. Without a store
//! nothing is ever gated and this costs nothing.

use std::collections::VecDeque;
use std::task::{Context, Poll};

use bytes::BytesMut;

use crate::routing::router::{Deferred, Router};
use crate::sessions::mailbox::Mailbox;
use crate::store::Store;

/// One LSN's worth: deliveries to hand out, then bytes to write.
struct Group {
    lsn: u64,
    deliveries: Vec<Deferred<Mailbox>>,
    bytes: BytesMut,
}

/// Encoded packets waiting for the store, in order.
#[derive(Default)]
pub(super) struct Gated {
    groups: VecDeque<Group>,
}

impl Gated {
    /// The buffer for a packet that may go out once `lsn` is durable.
    pub(super) fn tail(&mut self, lsn: u64) -> &mut BytesMut {
        &mut self.group(lsn).bytes
    }

    /// Deliveries to hand out once `lsn` is durable.
    pub(super) fn defer(&mut self, lsn: u64, deliveries: Deferred<Mailbox>) {
        self.group(lsn).deliveries.push(deliveries);
    }

    fn group(&mut self, lsn: u64) -> &mut Group {
        let last = self.groups.back().map_or(0, |g| g.lsn);
        if self.groups.is_empty() || lsn > last {
            self.groups.push_back(Group {
                lsn: lsn.max(last),
                deliveries: Vec::new(),
                bytes: BytesMut::new(),
            });
        }
        match self.groups.back_mut() {
            Some(g) => g,
            None => unreachable!("a group was just pushed"),
        }
    }

    /// Bytes waiting.
    pub(super) fn len(&self) -> usize {
        self.groups.iter().map(|g| g.bytes.len()).sum()
    }

    /// Moves every group whose LSN is durable to `wbuf`: `Ready(Ok(true))` if any moved and
    /// none waits any more, `Ready(Err(()))` if the store failed (they never will).
    pub(super) fn poll_release(
        &mut self,
        store: &Store,
        router: &Router<Mailbox>,
        wbuf: &mut BytesMut,
        cx: &mut Context<'_>,
    ) -> Poll<Result<bool, ()>> {
        let mut moved = false;
        while let Some(group) = self.groups.front() {
            match store.poll_durable(group.lsn, cx) {
                Poll::Ready(true) => {
                    if let Some(group) = self.groups.pop_front() {
                        for deliveries in group.deliveries {
                            router.deliver_deferred(deliveries);
                        }
                        wbuf.extend_from_slice(&group.bytes);
                    }
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
