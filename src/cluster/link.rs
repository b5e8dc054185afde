//! The router's side of the cluster (`routing::remote::Remote`): it never waits, so what it
//! hands over goes into bounded queues (a full one is a counted drop) and a table of this
//! node's interest, which the tasks that talk to NATS drain. Messages queue in order;
//! changes of state for a bucket (retained messages, wills, session records) wait as the
//! newest per key (`latest`), so a burst of them is never what loses a key's last state.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use parking_lot::Mutex;
use tokio::sync::{mpsc, Notify};

use crate::message::{Message, Publisher};
use crate::observability::metrics::Metrics;
use crate::routing::remote::{Hold, Known, Remote};
use crate::routing::shared::ShareKey;
use smallvec::SmallVec;

use super::latest::Latest;
use super::sessions::SessionChange;
use super::wills::WillChange;
use crate::message::ClientId;

/// A retained message set (or cleared) here, for the cluster's bucket.
pub(super) struct RetainedChange {
    pub(super) msg: Arc<Message>,
    pub(super) client_id: Option<Arc<str>>,
    pub(super) username: Option<Arc<str>>,
}

/// Who waits for a retained change to be in the bucket (the PUBACK of its publish).
pub(super) type Acks = Vec<tokio::sync::oneshot::Sender<()>>;
/// Retained changes waiting for the bucket, by topic.
pub(super) type RetainedQueue = Latest<bytes::Bytes, (RetainedChange, Acks)>;
/// Will changes waiting for the bucket, by client id.
pub(super) type WillQueue = Latest<ClientId, WillChange>;
/// Session records waiting for the bucket, by client id.
pub(super) type SessionQueue = Latest<ClientId, SessionChange>;

/// What the tasks take when the cluster starts.
pub(super) struct Queues {
    pub(super) forward: mpsc::Receiver<Outgoing>,
    pub(super) retained: Arc<RetainedQueue>,
    pub(super) wills: Arc<WillQueue>,
    pub(super) sessions: Arc<SessionQueue>,
}

/// What this node subscribes to in NATS for.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(super) enum Want {
    /// Routes of an ordinary filter.
    Filter(String),
    /// Members of a shared subscription's group (its `$share/...` key, and the filter in it):
    /// a NATS queue group, so one node in the cluster gets each message.
    Group(String, String),
}

/// Filters and groups with routes here, as a count that the router moves by one when one
/// gets its first route or loses its last (so the calls may arrive in any order and the sum
/// is still right), and a SUBSCRIBE on its way moves too (`Remote::hold`); those whose
/// wanting changed since the routes task last looked; and how many such changes there were.
#[derive(Default)]
struct Interest {
    counts: HashMap<Want, i64>,
    dirty: HashSet<Want>,
    requested: u64,
}

/// This node's interest, shared by the router's side and the SUBSCRIBEs that hold some.
struct Table {
    interest: Mutex<Interest>,
    /// Wakes the routes task when `interest` changed.
    changed: Notify,
    /// The last of `Interest::requested` that NATS knows of (the routes task's round trip).
    known: tokio::sync::watch::Sender<u64>,
}

impl Table {
    /// Moves `want`'s count by one; the number of changes there have been, if it changed
    /// whether this node wants it.
    fn count(&self, want: &Want, added: bool) -> Option<u64> {
        let changed = {
            let mut i = self.interest.lock();
            let n = i.counts.entry(want.clone()).or_default();
            let before = *n > 0;
            *n += if added { 1 } else { -1 };
            if before == (*n > 0) {
                None
            } else {
                i.dirty.insert(want.clone());
                i.requested += 1;
                Some(i.requested)
            }
        };
        if changed.is_some() {
            self.changed.notify_one();
        }
        changed
    }
}

/// Interest a SUBSCRIBE on its way holds in its filters, let go when dropped (once its
/// session's routes hold it).
struct Held {
    table: Arc<Table>,
    wants: Vec<Want>,
}

impl Drop for Held {
    fn drop(&mut self) {
        for w in &self.wants {
            self.table.count(w, false);
        }
    }
}

/// What `filter` makes this node subscribe to in NATS.
fn want_of(filter: &str) -> Want {
    match crate::routing::shared::form(filter) {
        crate::routing::shared::Form::Shared { filter: inner, .. } => {
            Want::Group(filter.to_owned(), inner.to_owned())
        }
        _ => Want::Filter(filter.to_owned()),
    }
}

/// How long a SUBSCRIBE waits for NATS to know its interest, or a retained publish for the
/// bucket; past it (NATS unreachable), its SUBACK or PUBACK goes anyway.
const KNOWN_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(2);

/// A message to send to the other nodes, and the shared subscriptions' groups (by
/// `group_hash`) that a member here already got it for.
pub(super) struct Outgoing {
    pub(super) msg: Arc<Message>,
    pub(super) served: SmallVec<[u64; 1]>,
}

/// A group's name in NATS (its queue group) and in the `served` header: a hash of its key,
/// the same on every node.
pub(super) fn group_hash(key: &str) -> u64 {
    use std::hash::Hasher;
    let mut h = rustc_hash::FxHasher::default();
    h.write(key.as_bytes());
    h.finish()
}

/// The router's handle on the cluster.
pub(super) struct Link {
    forward: mpsc::Sender<Outgoing>,
    retained: Arc<RetainedQueue>,
    wills: Arc<WillQueue>,
    sessions: Arc<SessionQueue>,
    table: Arc<Table>,
    metrics: Arc<Metrics>,
}

impl Link {
    /// A link whose queues hold `max_forward` messages, or changes of as many keys each.
    pub(super) fn new(max_forward: usize, metrics: Arc<Metrics>) -> (Link, Queues) {
        let (forward, forward_rx) = mpsc::channel(max_forward);
        let retained = Arc::new(Latest::new(max_forward));
        let wills = Arc::new(Latest::new(max_forward));
        let sessions = Arc::new(Latest::new(max_forward));
        let link = Link {
            forward,
            retained: retained.clone(),
            wills: wills.clone(),
            sessions: sessions.clone(),
            table: Arc::new(Table {
                interest: Mutex::default(),
                changed: Notify::new(),
                known: tokio::sync::watch::Sender::new(0),
            }),
            metrics,
        };
        let queues = Queues {
            forward: forward_rx,
            retained,
            wills,
            sessions,
        };
        (link, queues)
    }

    /// The filters whose interest changed since the last call, each with whether this node
    /// has routes for it now, and the number of changes they make up (for `known`).
    pub(super) fn take_changes(&self) -> (Vec<(Want, bool)>, u64) {
        let mut i = self.table.interest.lock();
        let dirty = std::mem::take(&mut i.dirty);
        let changes = dirty
            .into_iter()
            .map(|f| {
                let n = i.counts.get(&f).copied().unwrap_or(0);
                // A count below zero is a removal that came before its add: kept.
                if n == 0 {
                    i.counts.remove(&f);
                }
                (f, n > 0)
            })
            .collect();
        (changes, i.requested)
    }

    /// What the routes task waits on for a change of interest.
    pub(super) fn changed(&self) -> tokio::sync::futures::Notified<'_> {
        self.table.changed.notified()
    }

    /// NATS knows this node's interest up to change `n`.
    pub(super) fn known(&self, n: u64) {
        self.table.known.send_if_modified(|k| {
            let newer = n > *k;
            *k = (*k).max(n);
            newer
        });
    }

    /// A connection's will set or cleared, for the wills bucket. Claim tokens grow with each
    /// claim of an id, so the end of an older connection never undoes a newer one's will
    /// waiting here (which replaces the older will in the bucket anyway).
    pub(super) fn will(&self, change: WillChange) {
        let merge = |waiting: Option<WillChange>, new: WillChange| match waiting {
            Some(w) if new.will.is_none() && w.token > new.token => w,
            _ => new,
        };
        if !self.wills.put(change.client_id.clone(), change, merge) {
            Metrics::incr(&self.metrics.cluster_dropped);
            tracing::warn!("will change not sent to the cluster: its queue is full");
        }
    }

    /// A persistent session's record set or cleared, for the sessions bucket.
    pub(super) fn session(&self, change: SessionChange) {
        if !self
            .sessions
            .put(change.client_id.clone(), change, |_, new| new)
        {
            Metrics::incr(&self.metrics.cluster_dropped);
            tracing::warn!("session record not sent to the cluster: its queue is full");
        }
    }

    fn drop_one(&self, what: &str, topic: &str) {
        Metrics::incr(&self.metrics.cluster_dropped);
        tracing::debug!(topic, what, "the queue to the cluster is full; dropped");
    }
}

impl Remote for Link {
    fn forward(&self, msg: &Arc<Message>, served: &[&ShareKey]) {
        let out = Outgoing {
            msg: msg.clone(),
            served: served.iter().map(|k| group_hash(k)).collect(),
        };
        if self.forward.try_send(out).is_err() {
            self.drop_one("message", msg.topic_str());
        }
    }

    fn interest(&self, filter: &str, added: bool) {
        self.table.count(&Want::Filter(filter.to_owned()), added);
    }

    fn shared_interest(&self, key: &str, inner: &str, added: bool) {
        self.table
            .count(&Want::Group(key.to_owned(), inner.to_owned()), added);
    }

    fn hold(&self, filters: &[&str]) -> (Hold, Option<Known>) {
        let wants: Vec<Want> = filters.iter().map(|f| want_of(f)).collect();
        let mut last = None;
        for w in &wants {
            last = self.table.count(w, true).or(last);
        }
        let held: Hold = Box::new(Held {
            table: self.table.clone(),
            wants,
        });
        // None of them new: wait only if some change before is still on its way.
        let wanted = last.unwrap_or_else(|| self.table.interest.lock().requested);
        let mut known = self.table.known.subscribe();
        if *known.borrow() >= wanted {
            return (held, None);
        }
        let wait: Known = Box::pin(async move {
            let _ = tokio::time::timeout(KNOWN_TIMEOUT, known.wait_for(|k| *k >= wanted)).await;
        });
        (held, Some(wait))
    }

    fn retained(&self, msg: &Arc<Message>, from: Option<&Publisher>) -> Option<Known> {
        let change = RetainedChange {
            msg: msg.clone(),
            client_id: from.map(|p| p.client_id.clone()),
            username: from.and_then(|p| p.username.clone()),
        };
        // Only a QoS 1 or 2 publish waits (its PUBACK or PUBREC).
        let (acks, known) = if msg.qos == crate::message::QoS::AtMostOnce {
            (Vec::new(), None)
        } else {
            let (written, known) = tokio::sync::oneshot::channel();
            (vec![written], Some(known))
        };
        // A newer change of the topic written answers for the older ones it replaced; those
        // nobody waits for any more (a will's, a publisher gone) are let go here, so a topic
        // changed again and again holds no more than its waiting publishers.
        let merge = |waiting: Option<(RetainedChange, Acks)>, (change, mut acks): (_, Acks)| {
            if let Some((_, older)) = waiting {
                acks.extend(older.into_iter().filter(|a| !a.is_closed()));
            }
            (change, acks)
        };
        if !self.retained.put(msg.topic.clone(), (change, acks), merge) {
            tracing::warn!(
                topic = msg.topic_str(),
                "retained change not sent to the cluster"
            );
            self.drop_one("retained", msg.topic_str());
            return None;
        }
        let known = known?;
        Some(Box::pin(async move {
            // Answered (or dropped, if the write failed) by the task that writes the bucket.
            let _ = tokio::time::timeout(KNOWN_TIMEOUT, known).await;
        }))
    }
}
