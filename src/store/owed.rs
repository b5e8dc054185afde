//! Acknowledgements that need not wait for the disk. A message owed to persistent sessions is
//! on disk before its publisher hears PUBACK or PUBREC, so a crash cannot lose what a session
//! is still owed. Once every one of those sessions has acknowledged it, none is owed it any
//! more, and the publisher may be answered whether or not its records were written: the
//! writer then leaves them out of the batch too (see `Undone`), so a subscriber that keeps up
//! costs neither a write nor a wait.
//!
//! `Owed` counts the sessions still to acknowledge one message; the router makes it, each
//! session's delivery holds it, and the publisher's connection waits on it beside the LSN.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll, Waker};

/// Persistent sessions that have yet to acknowledge one stored message, and the connection
/// of its publisher, woken when the last one has.
#[derive(Debug)]
pub struct Owed {
    left: AtomicU32,
    waker: parking_lot::Mutex<Option<Waker>>,
}

impl Owed {
    /// Owed to `sessions` sessions.
    pub fn new(sessions: usize) -> Arc<Owed> {
        Arc::new(Owed {
            left: AtomicU32::new(u32::try_from(sessions).unwrap_or(u32::MAX)),
            waker: parking_lot::Mutex::new(None),
        })
    }

    /// One session is done with the message (acknowledged it, or a counted limit dropped it).
    pub fn settle_one(&self) {
        // Never below zero: a count that cannot settle leaves the publisher on the LSN.
        let before = self
            .left
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| n.checked_sub(1));
        if before == Ok(1) {
            if let Some(waker) = self.waker.lock().take() {
                waker.wake();
            }
        }
    }

    /// True once no session is owed the message.
    pub fn settled(&self) -> bool {
        self.left.load(Ordering::Acquire) == 0
    }

    /// `Ready` once settled; otherwise the task is woken when it is.
    pub fn poll_settled(&self, cx: &mut Context<'_>) -> Poll<()> {
        if self.settled() {
            return Poll::Ready(());
        }
        let mut waker = self.waker.lock();
        if !waker.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
            *waker = Some(cx.waker().clone());
        }
        drop(waker);
        // Checked again after the waker is in place: a settle in between is not missed.
        if self.settled() {
            Poll::Ready(())
        } else {
            Poll::Pending
        }
    }
}

/// What a reply waits for before it may go out: `lsn` durable; or, if `owed` is set, `firm`
/// durable and every session settled (the records between `firm` and `lsn` are then moot).
#[derive(Debug, Clone, Default)]
pub struct Wait {
    /// Enough on its own once durable.
    pub lsn: u64,
    /// What must be durable in any case (the publisher's other records: retained, QoS 2 id).
    pub firm: u64,
    /// The message's sessions, if settling them may stand in for the rest of `lsn`.
    pub owed: Option<Arc<Owed>>,
}

impl From<u64> for Wait {
    fn from(lsn: u64) -> Wait {
        Wait {
            lsn,
            firm: lsn,
            owed: None,
        }
    }
}

impl Wait {
    /// Also waits for the records of a stored message (`lsn`), which `owed` settling makes moot.
    pub fn message(&mut self, lsn: u64, owed: Arc<Owed>) {
        self.lsn = self.lsn.max(lsn);
        self.owed = Some(owed);
    }

    /// Also waits for `lsn`, whatever settles.
    pub fn firmly(mut self, lsn: u64) -> Wait {
        self.lsn = self.lsn.max(lsn);
        self.firm = self.firm.max(lsn);
        self
    }

    /// True if it may go out with `durable` on disk.
    pub fn ready(&self, durable: u64) -> bool {
        self.lsn <= durable
            || (self.firm <= durable && self.owed.as_ref().is_some_and(|o| o.settled()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_wait_is_met_by_its_lsn_or_by_its_firm_part_and_every_session_settling() {
        let owed = Owed::new(2);
        let mut wait = Wait::from(3);
        wait.message(9, owed.clone());
        assert!(!wait.ready(8));
        assert!(wait.ready(9));
        owed.settle_one();
        assert!(!wait.ready(3), "one session still owed it");
        owed.settle_one();
        assert!(wait.ready(3));
        assert!(!wait.ready(2), "the firm part is not durable yet");
        // More settles than sessions never wrap around.
        owed.settle_one();
        assert!(owed.settled());
    }

    #[test]
    fn the_last_settle_wakes_the_waiting_task() {
        struct Flag(std::sync::atomic::AtomicBool);
        impl std::task::Wake for Flag {
            fn wake(self: Arc<Self>) {
                self.0.store(true, Ordering::SeqCst);
            }
        }
        let flag = Arc::new(Flag(false.into()));
        let waker = Waker::from(flag.clone());
        let mut cx = Context::from_waker(&waker);
        let owed = Owed::new(2);
        assert!(owed.poll_settled(&mut cx).is_pending());
        owed.settle_one();
        assert!(!flag.0.load(Ordering::SeqCst));
        owed.settle_one();
        assert!(flag.0.load(Ordering::SeqCst));
        assert!(owed.poll_settled(&mut cx).is_ready());
    }
}
