//! A session's backlog gauge, shared with the publishers that feed it: how many messages wait
//! for the session (mailbox + mqueue), and whether it is still making progress.
//!
//! Publishers use it for backpressure: when a PUBLISH takes a subscriber's backlog to the high
//! mark, the publishing connection holds its further PUBLISHes (it still reads the client's
//! acks, see `client::serving`) until the backlog falls below the low mark, so a slow
//! subscriber slows its publishers (through TCP) instead of losing messages. A
//! subscriber that makes no progress for `backpressure_timeout` is stuck: publishers stop
//! waiting for it, and its queue overflows by the configured policy, counted. A session with
//! no connection cannot make progress at all, so it never makes a publisher wait: its queue
//! fills and overflows by the same policy while it is offline.
//!
//! Invariant: `pending` counts the Delivers in the mailbox plus the messages in the mqueue.
//! A publisher adds before it queues its Deliver (and takes it back if the mailbox refused
//! it), so the session, which removes when it sends or drops one, can never remove first.

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};

use std::sync::Arc;

use tokio::sync::Notify;
use tokio::time::Instant;

use crate::sessions::mailbox::Mailbox;

/// The shared gauge of one session.
#[derive(Debug)]
pub struct Backlog {
    pending: AtomicUsize,
    /// Messages handed to the connection so far.
    progress: AtomicU64,
    /// `progress + 1` when a publisher gave up waiting for this session; 0 otherwise.
    stuck_at: AtomicU64,
    /// The marks, in messages (a queue holds at most 10^7).
    high: u32,
    low: u32,
    drained: Notify,
    /// The session has a connection (see the module doc).
    attached: AtomicBool,
    /// Messages in the session's inflight window, for the gauges (only the session writes).
    inflight: AtomicU32,
}

impl Backlog {
    /// A gauge that reports congestion at `high` pending messages and relief below `high / 2`.
    pub fn new(high: usize) -> Self {
        let high = u32::try_from(high.max(1)).unwrap_or(u32::MAX);
        Backlog {
            pending: AtomicUsize::new(0),
            progress: AtomicU64::new(0),
            stuck_at: AtomicU64::new(0),
            high,
            low: high / 2,
            drained: Notify::new(),
            attached: AtomicBool::new(true),
            inflight: AtomicU32::new(0),
        }
    }

    /// Messages waiting for the session.
    pub fn pending(&self) -> usize {
        self.pending.load(Ordering::Relaxed)
    }

    /// Messages sent and not yet acknowledged, as the session last said.
    pub fn inflight(&self) -> usize {
        self.inflight.load(Ordering::Relaxed) as usize
    }

    /// The session's inflight window now holds `n` messages.
    pub fn set_inflight(&self, n: usize) {
        let n = u32::try_from(n).unwrap_or(u32::MAX);
        // Written only when it changed: the line is the publishers' too.
        if self.inflight.load(Ordering::Relaxed) != n {
            self.inflight.store(n, Ordering::Relaxed);
        }
    }

    /// True if the session has a connection.
    pub fn attached(&self) -> bool {
        self.attached.load(Ordering::Relaxed)
    }

    /// A publisher is about to hand the session a message; true if the session is now
    /// congested (and connected, and not known to be stuck), so the publisher should wait.
    pub fn added(&self) -> bool {
        let now = self.pending.fetch_add(1, Ordering::Relaxed) + 1;
        now >= self.high as usize && self.attached.load(Ordering::Relaxed) && !self.is_stuck()
    }

    /// The message counted by `added` was not queued after all (a full or closed mailbox).
    pub fn not_added(&self) {
        self.pending.fetch_sub(1, Ordering::Relaxed);
    }

    /// The session got (true) or lost (false) its connection.
    pub fn set_attached(&self, attached: bool) {
        self.attached.store(attached, Ordering::Relaxed);
        if !attached {
            // Publishers waiting for this session stop waiting.
            self.drained.notify_waiters();
        }
    }

    /// The session queued a message that did not come through the mailbox (retained).
    pub fn added_directly(&self) {
        self.pending.fetch_add(1, Ordering::Relaxed);
    }

    /// `n` messages left the backlog: sent to the connection, or dropped.
    pub fn removed(&self, n: usize, sent: bool) {
        if n == 0 {
            return;
        }
        let before = self.pending.fetch_sub(n, Ordering::Relaxed);
        if sent {
            self.progress.fetch_add(n as u64, Ordering::Relaxed);
        }
        let low = self.low as usize;
        if before >= low && before - n < low {
            self.drained.notify_waiters();
        }
    }

    /// True if the backlog is below the low mark, or the session has no connection.
    pub fn relieved(&self) -> bool {
        self.pending() < self.low as usize || !self.attached.load(Ordering::Relaxed)
    }

    /// True if the session has a connection that takes messages about as fast as they come.
    pub fn keeps_up(&self) -> bool {
        self.attached.load(Ordering::Relaxed)
            && self.pending() < self.high as usize
            && !self.is_stuck()
    }

    /// Messages sent so far; a waiting publisher compares it to see progress.
    pub fn progress(&self) -> u64 {
        self.progress.load(Ordering::Relaxed)
    }

    /// Marks the session stuck at progress `seen`: no publisher waits for it until it moves.
    pub fn mark_stuck(&self, seen: u64) {
        self.stuck_at.store(seen + 1, Ordering::Relaxed);
    }

    /// True if a publisher found the session stuck and it has not moved since.
    pub fn is_stuck(&self) -> bool {
        let s = self.stuck_at.load(Ordering::Relaxed);
        s != 0 && self.progress() == s - 1
    }

    /// Completes when the backlog falls below the low mark (call `relieved` first: a
    /// notification sent before this future exists is not seen).
    pub async fn wait_drained(&self) {
        let notified = self.drained.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        if self.relieved() {
            return;
        }
        notified.await;
    }
}

/// Waits until every congested backlog is relieved, or `deadline`; a backlog that made no
/// progress by then is marked stuck, so publishers stop waiting for it.
pub async fn relieve(mut congested: Vec<Arc<Mailbox>>, deadline: Instant) {
    congested.sort_unstable_by_key(|m| Arc::as_ptr(m) as usize);
    congested.dedup_by(|a, b| Arc::ptr_eq(a, b));
    let seen: Vec<u64> = congested.iter().map(|m| m.backlog().progress()).collect();
    for (mailbox, before) in congested.iter().zip(seen) {
        let backlog = mailbox.backlog();
        while !backlog.relieved() && !backlog.is_stuck() {
            if tokio::time::timeout_at(deadline, backlog.wait_drained())
                .await
                .is_err()
            {
                if backlog.progress() == before {
                    backlog.mark_stuck(before);
                }
                break;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::future::Future;

    #[test]
    fn congestion_relief_and_stuck() {
        let b = Backlog::new(4);
        assert!(!b.added());
        assert!(!b.added());
        assert!(!b.added());
        assert!(b.added(), "fourth reaches the high mark");
        assert!(!b.relieved());
        b.removed(2, true);
        assert!(!b.relieved(), "2 left, low mark is 2");
        b.removed(1, true);
        assert!(b.relieved());
        assert_eq!(b.progress(), 3);
        b.mark_stuck(b.progress());
        assert!(b.is_stuck());
        for _ in 0..5 {
            assert!(!b.added(), "no waiting for a stuck session");
        }
        b.removed(1, true);
        assert!(!b.is_stuck(), "progress clears it");
        b.removed(1, false);
        assert_eq!(b.pending(), 4);
    }

    #[test]
    fn wait_drained_is_woken_by_relief_and_by_detach() {
        for detach in [false, true] {
            let b = Backlog::new(2);
            b.added();
            b.added();
            let (waker, woken) = crate::sessions::mailbox::flag_waker();
            let mut cx = std::task::Context::from_waker(&waker);
            let mut wait = Box::pin(b.wait_drained());
            // Polled (and so waiting) before the relief: the wake-up itself is tested.
            assert!(wait.as_mut().poll(&mut cx).is_pending());
            if detach {
                b.set_attached(false);
            } else {
                b.removed(2, true);
            }
            assert!(woken.load(Ordering::SeqCst), "woken (detach: {detach})");
            assert!(wait.as_mut().poll(&mut cx).is_ready());
        }
    }

    #[test]
    fn a_detached_session_never_congests() {
        let b = Backlog::new(2);
        b.set_attached(false);
        for _ in 0..10 {
            assert!(!b.added());
        }
        assert!(b.relieved());
        b.set_attached(true);
        assert!(b.added());
        b.not_added();
        assert_eq!(b.pending(), 10);
    }
}
