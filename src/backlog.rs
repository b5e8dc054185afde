//! A session's backlog gauge, shared with the publishers that feed it: how many messages wait
//! for the session (mailbox + mqueue), and whether it is still making progress.
//!
//! Publishers use it for backpressure: when a subscriber's backlog passes the high mark, the
//! publishing connection stops reading its socket until the backlog falls below the low mark,
//! so a slow subscriber slows its publishers (through TCP) instead of losing messages. A
//! subscriber that makes no progress for `backpressure_timeout` is stuck: publishers stop
//! waiting for it, and its queue overflows by the configured policy, counted.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use tokio::sync::Notify;

/// The shared gauge of one session.
#[derive(Debug)]
pub struct Backlog {
    pending: AtomicUsize,
    /// Messages handed to the connection so far.
    progress: AtomicU64,
    /// `progress + 1` when a publisher gave up waiting for this session; 0 otherwise.
    stuck_at: AtomicU64,
    high: usize,
    low: usize,
    drained: Notify,
}

impl Backlog {
    /// A gauge that reports congestion at `high` pending messages and relief below `high / 2`.
    pub fn new(high: usize) -> Self {
        let high = high.max(1);
        Backlog {
            pending: AtomicUsize::new(0),
            progress: AtomicU64::new(0),
            stuck_at: AtomicU64::new(0),
            high,
            low: high / 2,
            drained: Notify::new(),
        }
    }

    /// Messages waiting for the session.
    pub fn pending(&self) -> usize {
        self.pending.load(Ordering::Relaxed)
    }

    /// A publisher handed the session a message; true if the session is now congested (and
    /// not known to be stuck), so the publisher should wait.
    pub fn added(&self) -> bool {
        let now = self.pending.fetch_add(1, Ordering::Relaxed) + 1;
        now >= self.high && !self.is_stuck()
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
        if before >= self.low && before - n < self.low {
            self.drained.notify_waiters();
        }
    }

    /// True if the backlog is below the low mark.
    pub fn relieved(&self) -> bool {
        self.pending() < self.low
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

    /// The notifier of relief. The session's mailbox also signals room on it (rarely needed,
    /// so it shares this one rather than add a second to every session); waiters recheck.
    pub fn notifier(&self) -> &Notify {
        &self.drained
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

#[cfg(test)]
mod tests {
    use super::*;

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

    #[tokio::test]
    async fn wait_drained_wakes_on_relief() {
        let b = std::sync::Arc::new(Backlog::new(2));
        b.added();
        b.added();
        let waiter = tokio::spawn({
            let b = b.clone();
            async move { b.wait_drained().await }
        });
        tokio::task::yield_now().await;
        b.removed(2, true);
        tokio::time::timeout(std::time::Duration::from_secs(5), waiter)
            .await
            .expect("woken")
            .expect("task");
    }
}
