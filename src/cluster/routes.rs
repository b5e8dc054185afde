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
//! The messages to forward go out here too: subject from the topic, the origin, sequence,
//! QoS and retain flag in one header.

use std::collections::HashMap;
use std::sync::Arc;

use bytes::Bytes;
use futures_util::stream::{SelectAll, StreamExt};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::link::{group_hash, Outgoing, Want};
use super::{subject, Cluster};
use crate::message::{Message, QoS};
use crate::observability::metrics::Metrics;
use crate::sessions::Shared;

/// The header a forwarded message carries: `EPOCH.SEQ.FLAGS` (epoch in hex; flags = QoS,
/// plus 4 if retained).
pub(super) const HEADER: &str = "Tern";

/// The header listing the shared subscriptions' groups (hex `group_hash`es) a member on the
/// publisher's node already got the message for.
const SERVED: &str = "Tern-Served";

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

/// Parses `EPOCH.SEQ.FLAGS`.
fn parse_header(v: &str) -> Option<(u64, u64, QoS, bool)> {
    let mut parts = v.split('.');
    let epoch = u64::from_str_radix(parts.next()?, 16).ok()?;
    let seq = parts.next()?.parse().ok()?;
    let flags: u8 = parts.next()?.parse().ok()?;
    Some((epoch, seq, QoS::from_u8(flags & 3)?, flags & 4 != 0))
}

/// Sends what the router forwards, in order, until shutdown.
pub(super) async fn forward(
    cluster: Arc<Cluster>,
    mut queue: mpsc::Receiver<Outgoing>,
    stop: CancellationToken,
) {
    let metrics = cluster.metrics.clone();
    let mut seq: u64 = 0;
    loop {
        let out = tokio::select! {
            m = queue.recv() => m,
            _ = stop.cancelled() => None,
        };
        let Some(Outgoing { msg, served }) = out else {
            break;
        };
        let subject = subject::of_topic(&cluster.cfg.prefix, &msg.topic);
        if subject.len() > MAX_SUBJECT {
            Metrics::incr(&metrics.cluster_dropped);
            tracing::debug!(topic = msg.topic_str(), "topic too long for the cluster");
            continue;
        }
        seq += 1;
        let flags = msg.qos as u8 | if msg.retain { 4 } else { 0 };
        let mut headers = async_nats::HeaderMap::new();
        headers.insert(
            HEADER,
            format!("{:x}.{seq}.{flags}", cluster.epoch).as_str(),
        );
        if !served.is_empty() {
            let list: Vec<String> = served.iter().map(|h| format!("{h:x}")).collect();
            headers.insert(SERVED, list.join(",").as_str());
        }
        let payload = msg.payload.clone();
        match cluster
            .client
            .publish_with_headers(subject, headers, payload)
            .await
        {
            Ok(()) => Metrics::incr(&metrics.cluster_forwarded),
            Err(e) => {
                Metrics::incr(&metrics.cluster_dropped);
                tracing::debug!(error = %e, "not forwarded to the cluster");
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
    loop {
        let changed = cluster.link.changed.notified();
        let changes = cluster.link.take_changes();
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
            if let Err(e) = cluster.client.flush().await {
                tracing::debug!(error = %e, "NATS flush failed");
            }
            continue;
        }
        tokio::select! {
            _ = changed => {}
            Some((group, m)) = streams.next(), if !streams.is_empty() => {
                deliver(&prefix, &shared, &mut seen, group.as_deref(), m);
            }
            _ = shared.shutdown.cancelled() => break,
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

/// Delivers one message from another node here, once: to the ordinary routes, or to one
/// member of `group` unless the publisher's node served that group itself.
fn deliver(
    prefix: &str,
    shared: &Shared,
    seen: &mut Seen,
    group: Option<&str>,
    m: async_nats::Message,
) {
    let Some(topic) = subject::to_topic(prefix, m.subject.as_str()) else {
        return;
    };
    let headers = m.headers.as_ref();
    let header = headers.and_then(|h| h.get(HEADER));
    let Some((origin, seq, qos, retain)) = header.and_then(|v| parse_header(v.as_str())) else {
        tracing::debug!(subject = m.subject.as_str(), "a message without its header");
        return;
    };
    if let Some(key) = group {
        let mine = format!("{:x}", group_hash(key));
        let served = headers.and_then(|h| h.get(SERVED));
        if served.is_some_and(|v| v.as_str().split(',').any(|h| h == mine)) {
            return;
        }
    } else if !seen.first(origin, seq) {
        return;
    }
    Metrics::incr(&shared.metrics.cluster_received);
    let msg = Arc::new(Message {
        topic: Bytes::from(topic),
        payload: m.payload,
        qos,
        retain,
    });
    match group {
        None => shared.router.publish_remote(msg),
        Some(key) => shared.router.publish_shared_remote(key, msg),
    };
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

    #[test]
    fn the_header_round_trips() {
        assert_eq!(
            parse_header("ff.42.6"),
            Some((255, 42, QoS::ExactlyOnce, true))
        );
        assert_eq!(parse_header("ff.42.3"), None);
        assert_eq!(parse_header("zz.1.0"), None);
    }
}
