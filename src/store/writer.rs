//! The store's one writer thread: group commit. Producers append `Op`s to the open batch under
//! a short lock and get an LSN; the thread takes the whole batch, applies it to fjall as one
//! atomic write batch, syncs as the policy says, and publishes the batch's last LSN.
//!
//! An op someone waits for (an acknowledgement's record) makes the thread take the batch at
//! once. A lazy op, one that nobody waits for or that will likely stop mattering soon (a
//! message owed only to sessions that keep up, its packet id, its end), waits in the open
//! batch for at most `batch::LINGER` (while that pays, see `Linger`), or until an op someone
//! waits for takes it along: most messages are then acknowledged by their sessions before
//! their batch is cut, and `Undone` leaves them out of it.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Condvar, Mutex, MutexGuard, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use fjall::{OwnedWriteBatch as WriteBatch, PersistMode};
use tokio::sync::watch;

use super::batch::{Linger, Undone};
use super::mark::{Mark, BATCH};
use super::records::{self, QueueEntry, SessionRecord};
use super::recover::{Recovered, Spaces};
use super::{Op, StoreError};

/// Stored messages' counts of queue entries (the writer hashes a few per op: Fx, not SipHash;
/// the keys are the store's own ids, not a peer's).
pub(super) type Refs = rustc_hash::FxHashMap<u64, u32>;

/// When an acknowledgement may go out, relative to the disk (`[persistence] sync`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SyncPolicy {
    /// After fdatasync: nothing acknowledged is lost on kill -9 or power loss.
    Always,
    /// After the write; the disk is synced every this often (power loss loses at most that).
    Interval(Duration),
    /// After the write; the OS flushes when it likes (kill -9 safe, power loss not).
    Never,
}

/// The most room for ops kept from one batch to the next.
const MAX_KEPT_OPS: usize = 65_536;

struct Open {
    ops: Vec<Op>,
    /// LSN of the last op in `ops` (LSNs count ops from 1).
    last: u64,
    closing: bool,
    /// Some op in `ops` is waited for: take the batch now.
    urgent: bool,
    /// When the first op of `ops` came.
    since: Option<Instant>,
    /// The thread waits on `wake` and wants to hear of the next op that changes its plan
    /// (the first, or the first urgent one); producers wake it only then.
    listening: bool,
}

struct Inner {
    open: Mutex<Open>,
    /// The highest durable LSN, for `poll_durable` (the watch channel serves async waiters).
    durable_lsn: std::sync::atomic::AtomicU64,
    /// The LSN of the last op submitted.
    submitted: std::sync::atomic::AtomicU64,
    /// Tasks waiting for `durable_lsn` to move; woken (and dropped) after every batch.
    waiters: Mutex<Vec<std::task::Waker>>,
    /// Held shared by a producer whose ops must land in one batch (`Store::together`), and
    /// exclusively by the thread while it takes the batch: it never cuts between them.
    gate: parking_lot::RwLock<()>,
    /// The writer's count of stored messages, published after each batch (for tests).
    #[cfg(test)]
    messages: std::sync::atomic::AtomicUsize,
    wake: Condvar,
    durable: watch::Sender<u64>,
    failed: Mutex<Option<String>>,
}

/// The writer thread and the batch it takes from.
pub struct Writer {
    inner: std::sync::Arc<Inner>,
    thread: Mutex<Option<JoinHandle<()>>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A producer that panicked while appending leaves a consistent Vec: go on.
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Writer {
    /// Starts the thread over an opened store.
    pub(super) fn start(
        spaces: Spaces,
        dir: PathBuf,
        sync: SyncPolicy,
        recovered: &Recovered,
    ) -> Result<Writer, StoreError> {
        let inner = std::sync::Arc::new(Inner {
            open: Mutex::new(Open {
                ops: Vec::new(),
                last: 0,
                closing: false,
                urgent: false,
                since: None,
                listening: false,
            }),
            wake: Condvar::new(),
            durable_lsn: std::sync::atomic::AtomicU64::new(0),
            submitted: std::sync::atomic::AtomicU64::new(0),
            waiters: Mutex::new(Vec::new()),
            gate: parking_lot::RwLock::new(()),
            durable: watch::channel(0).0,
            failed: Mutex::new(None),
            #[cfg(test)]
            messages: std::sync::atomic::AtomicUsize::new(0),
        });
        let refs = recovered.message_refs();
        let (mark, batches) = (Mark::open(&dir)?, recovered.batches);
        let owners = recovered
            .sessions
            .iter()
            .map(|s| (s.client_id.clone(), s.sid))
            .collect();
        let thread_inner = inner.clone();
        let thread = std::thread::Builder::new()
            .name("tern-store".into())
            .spawn(move || {
                let mut state = State {
                    spaces,
                    refs,
                    dir,
                    owners,
                    batches,
                    mark,
                };
                let ran = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                    state.run(&thread_inner, sync)
                }));
                if ran.is_err() {
                    // As fatal as a failed write: nothing more becomes durable, and the
                    // waiters hear so instead of waiting forever.
                    *lock(&thread_inner.failed) = Some("the store's writer panicked".into());
                    thread_inner.durable.send_modify(|_| {});
                    thread_inner.wake_waiters();
                }
            })
            .map_err(|e| StoreError::Io {
                path: PathBuf::new(),
                reason: format!("cannot start the store's writer thread: {e}"),
            })?;
        Ok(Writer {
            inner,
            thread: Mutex::new(Some(thread)),
        })
    }

    /// Adds `op` to the open batch; `lazy`: it may wait there (see the module doc).
    pub(super) fn submit(&self, op: Op, lazy: bool) -> u64 {
        let mut open = lock(&self.inner.open);
        if open.ops.is_empty() {
            open.since = Some(Instant::now());
        }
        let news = open.ops.is_empty() || (!lazy && !open.urgent);
        open.ops.push(op);
        open.urgent |= !lazy;
        open.last += 1;
        let lsn = open.last;
        self.inner
            .submitted
            .store(lsn, std::sync::atomic::Ordering::Release);
        // A wake-up is a system call: only when the thread listens and this changes its plan.
        let wake = news && std::mem::take(&mut open.listening);
        drop(open);
        if wake {
            self.inner.wake.notify_one();
        }
        lsn
    }

    pub(super) fn together(&self) -> parking_lot::RwLockReadGuard<'_, ()> {
        self.inner.gate.read()
    }

    pub(super) fn durable(&self) -> watch::Receiver<u64> {
        self.inner.durable.subscribe()
    }

    pub(super) fn failed(&self) -> Option<String> {
        lock(&self.inner.failed).clone()
    }

    /// `Ready(true)` once `lsn` is durable, `Ready(false)` if the store failed (it never will
    /// be); otherwise registers the task's waker.
    pub(super) fn poll_durable(
        &self,
        lsn: u64,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<bool> {
        use std::sync::atomic::Ordering;
        use std::task::Poll;
        if self.inner.durable_lsn.load(Ordering::Acquire) >= lsn {
            return Poll::Ready(true);
        }
        let mut waiters = lock(&self.inner.waiters);
        // Checked again under the lock the writer wakes under, so no wake-up is missed.
        if self.inner.durable_lsn.load(Ordering::Acquire) >= lsn {
            return Poll::Ready(true);
        }
        if lock(&self.inner.failed).is_some() {
            return Poll::Ready(false);
        }
        if !waiters.iter().any(|w| w.will_wake(cx.waker())) {
            waiters.push(cx.waker().clone());
        }
        Poll::Pending
    }

    /// The LSN of the last op submitted.
    pub(super) fn submitted(&self) -> u64 {
        self.inner
            .submitted
            .load(std::sync::atomic::Ordering::Acquire)
    }

    /// The highest durable LSN.
    pub(super) fn durable_lsn(&self) -> u64 {
        self.inner
            .durable_lsn
            .load(std::sync::atomic::Ordering::Acquire)
    }

    /// True while the thread waits for news of ops (for tests of its wake-ups).
    #[cfg(test)]
    pub(super) fn listening(&self) -> bool {
        lock(&self.inner.open).listening
    }

    #[cfg(test)]
    pub(super) fn message_count(&self) -> usize {
        self.inner
            .messages
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    pub(super) fn close(&self) {
        {
            let mut open = lock(&self.inner.open);
            open.closing = true;
            open.urgent = true;
        }
        self.inner.wake.notify_one();
        if let Some(thread) = lock(&self.thread).take() {
            let _ = thread.join();
        }
    }
}

impl Inner {
    fn wake_waiters(&self) {
        let waiters = std::mem::take(&mut *lock(&self.waiters));
        for w in waiters {
            w.wake();
        }
    }
}

impl Drop for Writer {
    fn drop(&mut self) {
        self.close();
    }
}

/// What the thread owns.
struct State {
    spaces: Spaces,
    /// Which session each stored client id belongs to: a session that ends after another
    /// took its client id must not delete the newer one's record.
    owners: HashMap<std::sync::Arc<str>, u64>,
    /// Queue entries per stored message: the message goes with its last entry.
    refs: Refs,
    dir: PathBuf,
    /// The number of the last batch written, which each batch carries (see `mark`).
    batches: u64,
    mark: Mark,
}

impl State {
    fn run(&mut self, inner: &Inner, sync: SyncPolicy) {
        let mut unsynced_since: Option<Instant> = None;
        let mut ops = Vec::new();
        let mut linger = Linger::new();
        // The batch was cut because it had lingered long enough.
        let mut lingered;
        loop {
            let (last, closing) = {
                let mut open = lock(&inner.open);
                lingered = false;
                while !open.urgent {
                    let (wait, lingering) = match (open.since, sync, unsynced_since) {
                        // Lazy ops only: until the first has waited long enough.
                        (Some(first), ..) => {
                            let linger = linger.wait();
                            (linger.saturating_sub(first.elapsed()), !linger.is_zero())
                        }
                        // With `interval`, wake to sync what was written, even if nothing
                        // arrives.
                        (None, SyncPolicy::Interval(every), Some(since)) => {
                            (every.saturating_sub(since.elapsed()), false)
                        }
                        _ => (Duration::from_secs(3600), false),
                    };
                    if wait.is_zero() {
                        lingered = lingering;
                        break;
                    }
                    open.listening = true;
                    open = inner
                        .wake
                        .wait_timeout(open, wait)
                        .unwrap_or_else(PoisonError::into_inner)
                        .0;
                    open.listening = false;
                }
                drop(open);
                // Not while a producer is between ops that belong together; its ops are few
                // and its section never waits, so this is short.
                let _gate = inner.gate.write();
                let mut open = lock(&inner.open);
                open.urgent = open.closing;
                open.since = None;
                // The producers go on in the room the last batch left, so a steady stream
                // does not regrow the Vec every batch; a burst's room is not kept.
                if ops.capacity() > MAX_KEPT_OPS {
                    ops = Vec::new();
                }
                std::mem::swap(&mut open.ops, &mut ops);
                (open.last, open.closing)
            };
            let result = self.commit(&mut ops).and_then(|(wrote, undone)| {
                linger.learn(&undone, lingered && !closing);
                if wrote && unsynced_since.is_none() {
                    unsynced_since = Some(Instant::now());
                }
                let due = match sync {
                    SyncPolicy::Always => wrote,
                    SyncPolicy::Interval(every) => {
                        closing || unsynced_since.is_some_and(|s| s.elapsed() >= every)
                    }
                    SyncPolicy::Never => closing,
                };
                if due && unsynced_since.is_some() {
                    self.spaces
                        .db
                        .persist(PersistMode::SyncData)
                        .map_err(|e| format!("sync failed: {e}"))?;
                    self.mark.synced(self.batches);
                    unsynced_since = None;
                }
                Ok(())
            });
            if let Err(reason) = result {
                // Fatal: nothing after this is durable, and an fsync is never retried.
                tracing::error!(dir = %self.dir.display(), %reason, "store write failed; no further acknowledgements");
                *lock(&inner.failed) = Some(reason);
                // Wakes the waiters, who find `failed` set.
                inner.durable.send_modify(|_| {});
                inner.wake_waiters();
                return;
            }
            #[cfg(test)]
            inner
                .messages
                .store(self.refs.len(), std::sync::atomic::Ordering::Relaxed);
            inner
                .durable_lsn
                .store(last, std::sync::atomic::Ordering::Release);
            inner.durable.send_replace(last);
            inner.wake_waiters();
            if closing && lock(&inner.open).ops.is_empty() {
                return;
            }
        }
    }

    /// Applies `ops` (emptied, its room kept for the next batch) as one atomic batch; true
    /// if anything was written, and what the batch left out.
    fn commit(&mut self, ops: &mut Vec<Op>) -> Result<(bool, Undone), String> {
        let undone = Undone::find(ops);
        if ops.is_empty() {
            return Ok((false, undone));
        }
        let mut batch = self.spaces.db.batch();
        for op in ops.drain(..) {
            self.apply(&mut batch, op, &undone)?;
        }
        // Everything in it undone by something later in it: nothing to write or sync.
        if batch.is_empty() {
            return Ok((false, undone));
        }
        self.batches += 1;
        batch.insert(&self.spaces.meta, BATCH, self.batches.to_be_bytes());
        batch.commit().map_err(|e| format!("write failed: {e}"))?;
        Ok((true, undone))
    }

    fn apply(&mut self, batch: &mut WriteBatch, op: Op, undone: &Undone) -> Result<(), String> {
        // Borrowed field by field: the handles are not cloned per op.
        let s = &self.spaces;
        let refs = &mut self.refs;
        match op {
            Op::Session {
                sid,
                client_id,
                username,
                detached_at_ms,
            } => {
                let record = SessionRecord {
                    sid,
                    username,
                    detached_at_ms,
                };
                batch.insert(&s.sessions, client_id.as_bytes(), record.encode());
                self.owners.insert(client_id, sid);
            }
            Op::SessionEnd { sid, client_id } => {
                if self.owners.get(&client_id) == Some(&sid) {
                    self.owners.remove(&client_id);
                    batch.remove(&s.sessions, client_id.as_bytes());
                }
                let prefix = sid.to_be_bytes();
                for space in [&s.subs, &s.await_rel] {
                    for kv in space.prefix(prefix) {
                        let (key, _) = kv.into_inner().map_err(|e| e.to_string())?;
                        batch.remove(space, key);
                    }
                }
                for kv in s.queue.prefix(prefix) {
                    let (key, _) = kv.into_inner().map_err(|e| e.to_string())?;
                    if let Ok((_, rest)) = records::split_session_key(&key, "queue") {
                        if let Ok(id) = <[u8; 8]>::try_from(rest) {
                            release(refs, &s.msgs, batch, u64::from_be_bytes(id));
                        }
                    }
                    batch.remove(&s.queue, key);
                }
            }
            Op::Subscribe { sid, filter, qos } => {
                let key = records::session_key(sid, filter.as_bytes());
                batch.insert(&s.subs, key, [qos as u8]);
            }
            Op::Unsubscribe { sid, filter } => {
                batch.remove(&s.subs, records::session_key(sid, filter.as_bytes()));
            }
            Op::Message {
                id,
                msg,
                sessions,
                retain,
            } => {
                let mut live = sessions;
                live.retain(|&(sid, _)| !undone.entry(sid, id));
                if live.is_empty() {
                    return Ok(());
                }
                batch.insert(&s.msgs, id.to_be_bytes(), records::encode_message(&msg));
                for (sid, qos) in &live {
                    let entry = QueueEntry {
                        qos: *qos,
                        pkid: 0,
                        released: false,
                        retain,
                    };
                    let key = records::session_key(*sid, &id.to_be_bytes());
                    batch.insert(&s.queue, key, entry.encode());
                }
                *refs.entry(id).or_default() += live.len() as u32;
            }
            Op::Sent { sid, id, entry } => {
                if !undone.entry(sid, id) {
                    let key = records::session_key(sid, &id.to_be_bytes());
                    batch.insert(&s.queue, key, entry.encode());
                }
            }
            Op::Done { sid, id } => {
                // An entry of a session ending in this batch goes with the session's end,
                // which releases it once.
                if !undone.entry(sid, id) {
                    batch.remove(&s.queue, records::session_key(sid, &id.to_be_bytes()));
                    release(refs, &s.msgs, batch, id);
                }
            }
            Op::AwaitRel { sid, pkid } => {
                batch.insert(
                    &s.await_rel,
                    records::session_key(sid, &pkid.to_be_bytes()),
                    [],
                );
            }
            Op::Released { sid, pkid } => {
                batch.remove(&s.await_rel, records::session_key(sid, &pkid.to_be_bytes()));
            }
            Op::Retain { msg, from } => {
                let value = records::encode_retained(&msg, from.as_deref());
                batch.insert(&s.retained, msg.topic.as_ref(), value);
            }
            Op::Unretain { topic } => batch.remove(&s.retained, topic.as_ref()),
        }
        Ok(())
    }
}

/// One queue entry of message `id` is gone; the message goes with its last one.
fn release(refs: &mut Refs, msgs: &fjall::Keyspace, batch: &mut WriteBatch, id: u64) {
    if let Some(n) = refs.get_mut(&id) {
        *n = n.saturating_sub(1);
        if *n == 0 {
            refs.remove(&id);
            batch.remove(msgs, id.to_be_bytes());
        }
    }
}

/// Commits each of `batches` as one batch, as the thread would, on a store opened by
/// `recover::open`; the message reference counts after.
#[cfg(test)]
pub(super) fn commit_batches(spaces: Spaces, batches: Vec<Vec<Op>>) -> Refs {
    let mut state = State {
        spaces,
        owners: HashMap::new(),
        refs: Refs::default(),
        dir: PathBuf::new(),
        batches: 0,
        mark: Mark::none(),
    };
    for ops in batches {
        state.commit(&mut { ops }).expect("commits");
    }
    state.refs
}
