//! The route table between nodes is NATS's interest: this node holds one NATS subscription
//! per distinct filter that has routes here (two for a filter ending in `#`), made and
//! dropped as the router reports interest. What arrives on them was published on another
//! node; it goes through this node's own trie, as a publish here would, but is never
//! forwarded again nor stored as retained (the cluster's bucket does that).
//!
//! Overlapping filters (`a/#` and `a/+`) mean two subscriptions and so two copies of one
//! message: each carries its origin (a process id, `epoch`) and a sequence number, and a
//! window of the last `WINDOW` numbers per origin keeps only the first copy. All copies
//! reach this one task, within a bounded distance of each other (NATS sends them in order on
//! the one connection; each subscription's channel holds `SUBSCRIPTION_CAPACITY`).
//!
//! The messages to forward go out here too: subject from the topic, payload a `frame` of
//! every message on that topic waiting to go.
//!
//! A SUBSCRIBE that makes new interest waits for it to be known (`Remote::hold`): after its
//! NATS subscriptions, this task makes a round trip to every other live node
//! (`known_to_nats`), and only then tells the link the interest is known.

use std::collections::HashMap;
use std::sync::Arc;

use bytes::Bytes;
use futures_util::stream::{SelectAll, StreamExt};
use smallvec::SmallVec;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::link::{group_hash, Outgoing, Want};
use super::{frame, subject, Cluster};
use crate::message::Message;
use crate::observability::metrics::Metrics;
use crate::sessions::Shared;

/// Sequence numbers remembered per origin.
const WINDOW: u64 = 1 << 16;

/// Messages one NATS subscription holds before the client reports a slow consumer.
pub(super) const SUBSCRIPTION_CAPACITY: usize = 8192;

/// The longest subject sent: NATS refuses a protocol line over 4 KiB by default.
const MAX_SUBJECT: usize = 3900;

/// Origins remembered; the one heard from longest ago goes first.
const ORIGINS: usize = 64;

/// Which sequence numbers of one origin arrived, within a sliding window.
struct Window {
    base: u64,
    bits: Vec<u64>,
    last_heard: u64,
}

impl Window {
    fn new() -> Window {
        Window {
            base: 0,
            bits: vec![0; (WINDOW / 64) as usize],
            last_heard: 0,
        }
    }

    /// True the first time `seq` is seen; false for a copy, or for one older than the window.
    fn first(&mut self, seq: u64) -> bool {
        if seq < self.base {
            return false;
        }
        if seq >= self.base + WINDOW {
            let new_base = seq + 1 - WINDOW;
            if new_base - self.base >= WINDOW {
                self.bits.iter_mut().for_each(|w| *w = 0);
            } else {
                for s in self.base..new_base {
                    self.bits[((s % WINDOW) / 64) as usize] &= !(1 << (s % 64));
                }
            }
            self.base = new_base;
        }
        let (word, bit) = (((seq % WINDOW) / 64) as usize, seq % 64);
        let fresh = self.bits[word] & (1 << bit) == 0;
        self.bits[word] |= 1 << bit;
        fresh
    }
}

/// First copies per origin.
#[derive(Default)]
struct Seen {
    origins: HashMap<u64, Window>,
    clock: u64,
}

impl Seen {
    fn first(&mut self, origin: u64, seq: u64) -> bool {
        self.clock += 1;
        if !self.origins.contains_key(&origin) && self.origins.len() >= ORIGINS {
            let oldest = self
                .origins
                .iter()
                .min_by_key(|(_, w)| w.last_heard)
                .map(|(o, _)| *o);
            if let Some(o) = oldest {
                self.origins.remove(&o);
            }
        }
        let w = self.origins.entry(origin).or_insert_with(Window::new);
        w.last_heard = self.clock;
        w.first(seq)
    }
}

/// Sends what the router forwards, until shutdown: what waits is taken at once (up to
/// `frame::MAX_MESSAGES`), and each topic's messages go out, in order, as one frame.
pub(super) async fn forward(
    cluster: Arc<Cluster>,
    mut queue: mpsc::Receiver<Outgoing>,
    stop: CancellationToken,
) {
    let metrics = cluster.metrics.clone();
    let mut seq: u64 = 0;
    let mut waiting: Vec<Outgoing> = Vec::new();
    loop {
        let first = tokio::select! {
            m = queue.recv() => m,
            _ = stop.cancelled() => None,
        };
        let Some(first) = first else { break };
        waiting.push(first);
        while waiting.len() < frame::MAX_MESSAGES {
            match queue.try_recv() {
                Ok(o) => waiting.push(o),
                Err(_) => break,
            }
        }
        // Topic by topic, keeping each topic's order; the order between topics is not kept
        // across nodes anyway (each filter is its own NATS subscription).
        // One pass: a batch of 1,024 messages on as many topics must not cost a million
        // comparisons.
        let mut groups: Vec<Vec<Outgoing>> = Vec::new();
        let mut index: HashMap<(Bytes, SmallVec<[u64; 1]>), usize> = HashMap::new();
        for o in waiting.drain(..) {
            let at = *index
                .entry((o.msg.topic.clone(), o.served.clone()))
                .or_insert_with(|| {
                    groups.push(Vec::new());
                    groups.len() - 1
                });
            groups[at].push(o);
        }
        for same in groups {
            let (topic, served) = (&same[0].msg.topic, &same[0].served);
            let n = same.len() as u64;
            seq += 1;
            let subject = subject::of_topic(&cluster.cfg.prefix, topic);
            if subject.len() > MAX_SUBJECT {
                Metrics::add(&metrics.cluster_dropped, n);
                tracing::debug!(
                    topic = same[0].msg.topic_str(),
                    "topic too long for the cluster"
                );
                continue;
            }
            let msgs: Vec<&Message> = same.iter().map(|o| &*o.msg).collect();
            let payload = frame::encode(cluster.epoch, seq, served, &msgs);
            match cluster.client.publish(subject, payload).await {
                Ok(()) => Metrics::add(&metrics.cluster_forwarded, n),
                Err(e) => {
                    Metrics::add(&metrics.cluster_dropped, n);
                    tracing::debug!(error = %e, "not forwarded to the cluster");
                }
            }
        }
    }
}

/// A NATS subscription's messages, tagged with the shared subscription's group they are
/// for (`None`: ordinary routes).
type Tagged = std::pin::Pin<
    Box<dyn futures_util::Stream<Item = (Option<Arc<str>>, async_nats::Message)> + Send>,
>;

/// Keeps this node's NATS subscriptions in step with its interest and delivers what they
/// bring, until shutdown.
pub(super) async fn run(cluster: Arc<Cluster>, shared: Arc<Shared>) {
    let prefix = cluster.cfg.prefix.clone();
    let mut subscribed: HashMap<Want, CancellationToken> = HashMap::new();
    let mut streams: SelectAll<Tagged> = SelectAll::new();
    let mut seen = Seen::default();
    let mut congested = Vec::new();
    loop {
        // A subscriber here that falls behind holds what comes from the other nodes, as it
        // would hold a publisher here (bounded by `backpressure_timeout`; one that makes no
        // progress is marked stuck and nobody waits for it). Meanwhile NATS buffers.
        if !congested.is_empty() {
            let patience = shared.config.load().session.backpressure_timeout;
            let waiting = std::mem::take(&mut congested);
            let deadline = tokio::time::Instant::now() + patience;
            tokio::select! {
                _ = crate::sessions::backlog::relieve(waiting, deadline) => {}
                _ = shared.shutdown.cancelled() => break,
            }
        }
        let changed = cluster.link.changed();
        let (changes, requested) = cluster.link.take_changes();
        if !changes.is_empty() {
            for (want, wanted) in changes {
                match (wanted, subscribed.contains_key(&want)) {
                    (true, false) => {
                        let stop = CancellationToken::new();
                        subscribe(&cluster, &want, &stop, &mut streams).await;
                        subscribed.insert(want, stop);
                    }
                    (false, true) => {
                        if let Some(stop) = subscribed.remove(&want) {
                            stop.cancel();
                        }
                    }
                    _ => {}
                }
            }
            // Off this task, which meanwhile goes on delivering what NATS brings: a later
            // round trip answered first covers the earlier changes too (it went behind them).
            let asking = cluster.clone();
            shared.tracker.spawn(async move {
                known_to_nats(&asking).await;
                asking.link.known(requested);
            });
            continue;
        }
        tokio::select! {
            _ = changed => {}
            Some((group, m)) = streams.next(), if !streams.is_empty() => {
                let backpressure = !shared.config.load().session.backpressure_timeout.is_zero();
                let congested = backpressure.then_some(&mut congested);
                deliver(&prefix, &shared, &mut seen, group.as_deref(), m, congested);
            }
            _ = shared.shutdown.cancelled() => break,
        }
    }
}

/// The subject `node` answers interest round trips on.
fn sync_subject(prefix: &str, node: &str) -> String {
    format!("{prefix}.ctl.{node}.sync")
}

/// How long a round trip to another node may take; one that does not answer in time (cut
/// off, its subscription not yet gone) is not waited for longer.
const SYNC_TIMEOUT: std::time::Duration = std::time::Duration::from_millis(500);

/// Waits until every other live node's NATS server knows the SUBSCRIBEs and UNSUBSCRIBEs
/// this node sent before. NATS keeps order on a connection and on a route: a request sent
/// behind them reaches the other node's server behind the interest they made, so its answer
/// (or the "no responders" of this node's own server, when there is no other node) says
/// that server has it.
async fn known_to_nats(cluster: &Cluster) {
    let (prefix, me) = (&cluster.cfg.prefix, &cluster.cfg.node_name);
    let mut nodes = cluster.leases.renewing(cluster.cfg.lease_interval * 3);
    nodes.retain(|n| n != me);
    if nodes.is_empty() {
        // This node's own subject: with `no_echo`, its server answers "no responders".
        nodes.push(me.clone());
    }
    let asks = nodes.iter().map(|node| {
        let asked = cluster
            .client
            .request(sync_subject(prefix, node), Bytes::new());
        async move {
            match tokio::time::timeout(SYNC_TIMEOUT, asked).await {
                Ok(Ok(_)) => {}
                Ok(Err(e)) if e.kind() == async_nats::RequestErrorKind::NoResponders => {}
                Ok(Err(e)) => tracing::debug!(node, error = %e, "interest round trip"),
                Err(_) => tracing::debug!(node, "interest round trip not answered in time"),
            }
        }
    });
    futures_util::future::join_all(asks).await;
}

/// Answers other nodes' interest round trips (`known_to_nats`), until shutdown.
pub(super) async fn answer_sync(cluster: Arc<Cluster>, shared: Arc<Shared>) {
    let subject = sync_subject(&cluster.cfg.prefix, &cluster.cfg.node_name);
    let mut asked = match cluster.client.subscribe(subject).await {
        Ok(s) => s,
        Err(e) => {
            tracing::error!(error = %e, "cannot answer interest round trips");
            return;
        }
    };
    loop {
        let req = tokio::select! {
            r = asked.next() => r,
            _ = shared.shutdown.cancelled() => break,
        };
        let Some(req) = req else { break };
        if let Some(reply) = req.reply {
            let _ = cluster.client.publish(reply, Bytes::new()).await;
        }
    }
}

/// The NATS subscriptions for `want`, until `stop`: one per subject of its filter, in a
/// queue group for a shared subscription's group.
async fn subscribe(
    cluster: &Cluster,
    want: &Want,
    stop: &CancellationToken,
    streams: &mut SelectAll<Tagged>,
) {
    let prefix = &cluster.cfg.prefix;
    let (filter, group) = match want {
        Want::Filter(f) => (f.as_str(), None),
        Want::Group(key, inner) => (inner.as_str(), Some(key.as_str())),
    };
    for s in subject::of_filter(prefix, filter) {
        let made = match group {
            None => cluster.client.subscribe(s).await,
            Some(key) => {
                let queue = format!("{prefix}.g.{:x}", group_hash(key));
                cluster.client.queue_subscribe(s, queue).await
            }
        };
        match made {
            Ok(sub) => {
                let tag: Option<Arc<str>> = group.map(Arc::from);
                let until = stop.clone().cancelled_owned();
                let tagged = sub.take_until(until).map(move |m| (tag.clone(), m));
                streams.push(Box::pin(tagged));
            }
            Err(e) => tracing::warn!(filter, error = %e, "NATS subscribe failed"),
        }
    }
}

/// Delivers a frame from another node here, once: to the ordinary routes, or to one
/// member of `group` unless the publisher's node served that group itself.
fn deliver(
    prefix: &str,
    shared: &Shared,
    seen: &mut Seen,
    group: Option<&str>,
    m: async_nats::Message,
    mut congested: Option<&mut Vec<Arc<crate::sessions::mailbox::Mailbox>>>,
) {
    let Some(topic) = subject::to_topic(prefix, m.subject.as_str()) else {
        return;
    };
    let topic = Bytes::from(topic);
    let Some((header, msgs)) = frame::decode(&topic, m.payload) else {
        tracing::debug!(
            subject = m.subject.as_str(),
            "not a frame of this cluster's"
        );
        return;
    };
    if let Some(key) = group {
        if header.served.contains(&group_hash(key)) {
            return;
        }
    } else if !seen.first(header.origin, header.seq) {
        return;
    }
    Metrics::add(&shared.metrics.cluster_received, msgs.len() as u64);
    for msg in msgs {
        let msg = Arc::new(msg);
        match group {
            None => shared.router.publish_remote(msg, congested.as_deref_mut()),
            Some(key) => shared.router.publish_shared_remote(key, msg),
        };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_copy_is_seen_once_within_the_window_and_out_of_order() {
        let mut s = Seen::default();
        assert!(s.first(1, 5));
        assert!(!s.first(1, 5));
        assert!(
            s.first(1, 3),
            "an earlier number arriving later is still new"
        );
        assert!(s.first(2, 5), "another origin");
        assert!(s.first(1, 5 + WINDOW));
        assert!(
            !s.first(1, 5),
            "slid out of the window: dropped, not repeated"
        );
        assert!(s.first(1, 6 + WINDOW));
        assert!(!s.first(1, 6 + WINDOW));
        assert!(s.first(1, 10 * WINDOW), "a jump clears the window");
        assert!(!s.first(1, 10 * WINDOW));
    }
}
