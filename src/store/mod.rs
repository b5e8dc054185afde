//! Durable state (`[persistence]`): persistent sessions, their subscriptions, queued and
//! inflight messages, inbound QoS 2 ids awaiting PUBREL, and retained messages, in a fjall
//! database under `persistence_location`.
//!
//! Producers (connections and sessions) hand the store `Op`s; each gets back a log sequence
//! number (LSN). One writer thread (`writer`) takes everything submitted so far as one batch,
//! commits it, syncs it as `sync` says, and then publishes the highest LSN that is durable on
//! a watch channel. An acknowledgement that must wait for its records (PUBACK, PUBREC,
//! PUBCOMP, SUBACK, CONNACK of a new persistent session) is held until that LSN passes its
//! own: group commit, with one sync for every record that arrived while the last one ran.
//! A write or sync error is fatal: nothing more becomes durable, the error is reported once,
//! and the broker stops; an fsync is never retried (the kernel may have dropped the pages).
//!
//! A message is stored once, with a queue entry per persistent session it was routed to; the
//! writer counts the entries and deletes the message with the last one, so the disk holds only
//! live state (fjall's compaction reclaims the rest in the background). A publisher's reply
//! may also go once every session owed the message acknowledged it (`owed`), and ops that
//! nobody waits for go in lazily, so that such a message is mostly never written (`batch`). `recover` reads it all
//! back before the listeners open; `inspect` reads it for the `tern store` tools.

mod batch;
mod inspect;
mod mark;
mod owed;
mod records;
mod recover;
#[cfg(test)]
mod tests;
mod writer;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::message::{Message, Publisher, QoS};

pub use inspect::{inspect, Contents, Stats};
pub use owed::{Owed, Wait};
pub use records::QueueEntry;
pub use recover::{Recovered, RecoveredSession};
pub use writer::SyncPolicy;

/// The longest subscription filter a stored session may hold: a subscription's key is its
/// session id (8 bytes) and the filter, and fjall keys are at most 65,535 bytes. (Client
/// ids and topics, at most 65,535 bytes, always fit.)
pub const MAX_FILTER_LEN: usize = 65_535 - 8;

/// Why the store cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// Another process holds the store.
    #[error("{}: the store is locked by another process", path.display())]
    Locked {
        /// The store's directory.
        path: PathBuf,
    },
    /// The directory cannot be created, read or written, or fjall failed.
    #[error("{}: {reason}", path.display())]
    Io {
        /// The store's directory.
        path: PathBuf,
        /// What failed.
        reason: String,
    },
    /// A record does not decode.
    #[error("{}: corrupt store: {what}", path.display())]
    Corrupt {
        /// The store's directory.
        path: PathBuf,
        /// What is wrong.
        what: String,
    },
}

/// A change to durable state.
#[derive(Debug, Clone)]
pub enum Op {
    /// A persistent session was made (or its record changed: user name, detach time).
    Session {
        /// Its id in the store.
        sid: u64,
        /// Its client id.
        client_id: Arc<str>,
        /// The user name that made it.
        username: Option<Arc<str>>,
        /// Wall-clock milliseconds at which it was detached; 0 while attached.
        detached_at_ms: u64,
    },
    /// A persistent session ended (discarded, expired, or replaced by a clean session).
    SessionEnd {
        /// Its id.
        sid: u64,
        /// Its client id.
        client_id: Arc<str>,
    },
    /// A subscription was made or its QoS changed.
    Subscribe {
        /// The session.
        sid: u64,
        /// The filter.
        filter: Arc<str>,
        /// The granted QoS.
        qos: QoS,
    },
    /// A subscription was removed.
    Unsubscribe {
        /// The session.
        sid: u64,
        /// The filter.
        filter: Arc<str>,
    },
    /// A message routed to persistent sessions, stored once, queued for each.
    Message {
        /// Its id in the store.
        id: u64,
        /// The message.
        msg: Arc<Message>,
        /// The sessions it is owed to, with the QoS each gets.
        sessions: Vec<(u64, QoS)>,
        /// Owed as a retained message on SUBSCRIBE (sent with RETAIN = 1).
        retain: bool,
    },
    /// A queued message was sent with this packet id.
    Sent {
        /// The session.
        sid: u64,
        /// The message.
        id: u64,
        /// Its entry now.
        entry: QueueEntry,
    },
    /// A queued message is done for a session (acknowledged, or dropped by a limit).
    Done {
        /// The session.
        sid: u64,
        /// The message.
        id: u64,
    },
    /// An inbound QoS 2 packet id now awaits its PUBREL.
    AwaitRel {
        /// The session.
        sid: u64,
        /// The packet id.
        pkid: u16,
    },
    /// Its PUBREL arrived.
    Released {
        /// The session.
        sid: u64,
        /// The packet id.
        pkid: u16,
    },
    /// A retained message was stored (replacing the topic's older one).
    Retain {
        /// The message (its topic is the key).
        msg: Arc<Message>,
        /// Who published it.
        from: Option<Arc<Publisher>>,
    },
    /// A topic's retained message was deleted.
    Unretain {
        /// The topic.
        topic: bytes::Bytes,
    },
}

/// The store: submit changes, learn when they are durable.
#[derive(Clone)]
pub struct Store {
    writer: Arc<writer::Writer>,
    next_sid: Arc<std::sync::atomic::AtomicU64>,
    next_message_id: Arc<std::sync::atomic::AtomicU64>,
}

impl Store {
    /// Opens (or creates) the store in `dir` and reads back what it holds.
    pub fn open(dir: &Path, sync: SyncPolicy) -> Result<(Store, Recovered), StoreError> {
        let (db, recovered) = recover::open(dir)?;
        let writer = writer::Writer::start(db, dir.to_owned(), sync, &recovered)?;
        let next_sid = Arc::new(std::sync::atomic::AtomicU64::new(recovered.next_sid));
        let next_message_id =
            Arc::new(std::sync::atomic::AtomicU64::new(recovered.next_message_id));
        Ok((
            Store {
                writer: Arc::new(writer),
                next_sid,
                next_message_id,
            },
            recovered,
        ))
    }

    /// A session id no stored session has.
    pub fn new_sid(&self) -> u64 {
        self.next_sid
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    }

    /// A message id no stored message has (never 0).
    pub fn new_message_id(&self) -> u64 {
        self.next_message_id
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    }

    /// Stores `msg` for one session at `qos` now (not lazily: something is about to wait for
    /// it, or must not be later than what was submitted before) and returns its new id;
    /// `retain` marks a retained message owed on SUBSCRIBE.
    pub fn submit_for_one(&self, msg: &Arc<Message>, sid: u64, qos: QoS, retain: bool) -> u64 {
        let id = self.new_message_id();
        self.submit(Op::Message {
            id,
            msg: msg.clone(),
            sessions: vec![(sid, qos)],
            retain,
        });
        id
    }

    /// Adds `op` to the open batch, which the writer takes at once; the LSN that `durable`
    /// must reach for it to be on disk.
    pub fn submit(&self, op: Op) -> u64 {
        self.writer.submit(op, false)
    }

    /// As `submit`, for an op nobody waits for, or whose waiter will likely be settled
    /// first (see `Owed`): it may wait in the open batch for up to `batch::LINGER`, so that
    /// what undoes it (a session's acknowledgement) can join it there and neither is written.
    pub fn submit_lazy(&self, op: Op) -> u64 {
        self.writer.submit(op, true)
    }

    /// A session is done with stored message `id` (acknowledged, or dropped by a limit): its
    /// entry goes, and its publisher, if it waits on `owed`, hears that one fewer is owed it.
    pub fn done(&self, sid: u64, id: u64, owed: Option<&Owed>) -> u64 {
        if let Some(owed) = owed {
            owed.settle_one();
        }
        self.submit_lazy(Op::Done { sid, id })
    }

    /// The highest LSN on disk (as the sync policy promises), as it advances.
    pub fn durable(&self) -> tokio::sync::watch::Receiver<u64> {
        self.writer.durable()
    }

    /// `Ready(true)` once `lsn` is durable, `Ready(false)` if it never will be (the store
    /// failed); otherwise the task is woken when the next batch is.
    pub fn poll_durable(&self, lsn: u64, cx: &mut std::task::Context<'_>) -> std::task::Poll<bool> {
        self.writer.poll_durable(lsn, cx)
    }

    /// The LSN of the last op submitted by anyone: waiting for it covers every op this
    /// thread submitted before.
    pub fn submitted(&self) -> u64 {
        self.writer.submitted()
    }

    /// While the guard lives, every op submitted lands in the same batch: they are written
    /// all or none. For records that are only right together, such as an inbound QoS 2 id
    /// awaiting PUBREL and the message it brought (apart, a crash could keep the id and lose
    /// the message, and the publisher's resend would be taken for a duplicate). Hold it only
    /// across submits, never across a wait.
    pub fn together(&self) -> impl Drop + '_ {
        self.writer.together()
    }

    /// The highest durable LSN now.
    pub fn durable_lsn(&self) -> u64 {
        self.writer.durable_lsn()
    }

    /// Waits until `lsn` is durable; false if it never will be.
    pub async fn wait(&self, lsn: u64) -> bool {
        std::future::poll_fn(|cx| self.poll_durable(lsn, cx)).await
    }

    /// Set once a write or sync failed: nothing more will become durable.
    pub fn failed(&self) -> Option<String> {
        self.writer.failed()
    }

    /// Writes and syncs everything submitted, then stops the writer (on shutdown).
    pub fn close(&self) {
        self.writer.close();
    }

    /// Messages the writer counts as still owed (for tests).
    #[cfg(test)]
    fn writer_message_count(&self) -> usize {
        self.writer.message_count()
    }
}
