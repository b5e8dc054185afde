//! Replies that wait for the disk. With `[persistence]` on, a PUBACK or PUBREC may go out only
//! once the store's records for its message are durable. Such a reply is encoded into a group
//! tagged with the LSN it waits for; everything encoded while any group waits goes behind it
//! (MQTT keeps acknowledgements in order), and groups move to the write buffer as the store's
//! durable LSN passes theirs. Without a store nothing is ever gated and this costs nothing.

use std::collections::VecDeque;
use std::task::{Context, Poll};

use bytes::BytesMut;

use crate::store::Store;

/// Encoded packets waiting for the store, in order.
#[derive(Default)]
pub(super) struct Gated {
    groups: VecDeque<(u64, BytesMut)>,
}

impl Gated {
    /// The buffer for a packet that may go out once `lsn` is durable.
    pub(super) fn tail(&mut self, lsn: u64) -> &mut BytesMut {
        let last = self.groups.back().map_or(0, |(l, _)| *l);
        if self.groups.is_empty() || lsn > last {
            self.groups.push_back((lsn.max(last), BytesMut::new()));
        }
        match self.groups.back_mut() {
            Some((_, buf)) => buf,
            None => unreachable!("a group was just pushed"),
        }
    }

    /// Bytes waiting.
    pub(super) fn len(&self) -> usize {
        self.groups.iter().map(|(_, b)| b.len()).sum()
    }

    /// Moves every group whose LSN is durable to `wbuf`: `Ready(Ok(true))` if any moved and
    /// none waits any more, `Ready(Err(()))` if the store failed (they never will).
    pub(super) fn poll_release(
        &mut self,
        store: &Store,
        wbuf: &mut BytesMut,
        cx: &mut Context<'_>,
    ) -> Poll<Result<bool, ()>> {
        let mut moved = false;
        while let Some((lsn, _)) = self.groups.front() {
            match store.poll_durable(*lsn, cx) {
                Poll::Ready(true) => {
                    if let Some((_, buf)) = self.groups.pop_front() {
                        wbuf.extend_from_slice(&buf);
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

    /// True if nothing waits.
    pub(super) fn is_empty(&self) -> bool {
        self.groups.is_empty()
    }
}
