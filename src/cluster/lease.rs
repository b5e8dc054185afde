//! Node leases in the bucket `PREFIX_nodes`: each node puts `n.NAME` every `lease_interval`.
//! One that fails to for `fence_after` fences itself: it closes every client (their wills
//! published here) and refuses new ones until a renewal succeeds. The others watch the
//! bucket and count a node dead once its lease has not changed for `dead_after`, measured on
//! their own clock (so no two clocks are compared); a dead node's client ids may then be
//! taken without its answer.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_nats::jetstream::kv::Operation;
use bytes::Bytes;
use futures_util::StreamExt;
use parking_lot::Mutex;

use super::Cluster;
use crate::sessions::Shared;

/// What this node has seen of every node's lease.
pub(super) struct Leases {
    /// Node -> its lease's revision and when this node saw it change; `None` once deleted.
    seen: Mutex<HashMap<String, Option<(u64, Instant)>>>,
    /// The watch has read every lease there was at its start.
    loaded: AtomicBool,
    dead_after: Duration,
}

impl Leases {
    pub(super) fn new(dead_after: Duration) -> Leases {
        Leases {
            seen: Mutex::default(),
            loaded: AtomicBool::new(false),
            dead_after,
        }
    }

    /// True if `node` is known to be dead: its lease unchanged for `dead_after`, deleted, or
    /// never there at all.
    pub(super) fn is_dead(&self, node: &str) -> bool {
        match self.seen.lock().get(node) {
            Some(Some((_, changed))) => changed.elapsed() > self.dead_after,
            Some(None) => true,
            None => self.loaded.load(Ordering::Acquire),
        }
    }

    /// Nodes whose lease changed within `within`: those that are renewing it.
    pub(super) fn renewing(&self, within: Duration) -> Vec<String> {
        self.seen
            .lock()
            .iter()
            .filter_map(|(node, seen)| match seen {
                Some((_, changed)) if changed.elapsed() <= within => Some(node.clone()),
                _ => None,
            })
            .collect()
    }

    /// Nodes whose lease has aged past `dead_after` (not those that gave it up), each with
    /// the lease's revision.
    fn aged_out(&self) -> Vec<(String, u64)> {
        self.seen
            .lock()
            .iter()
            .filter_map(|(node, seen)| match seen {
                Some((rev, changed)) if changed.elapsed() > self.dead_after => {
                    Some((node.clone(), *rev))
                }
                _ => None,
            })
            .collect()
    }

    fn saw(&self, node: &str, revision: Option<u64>) {
        let mut seen = self.seen.lock();
        let now = Instant::now();
        match (seen.get_mut(node), revision) {
            (Some(Some((rev, changed))), Some(r)) if *rev != r => {
                *rev = r;
                *changed = now;
            }
            (Some(Some(_)), Some(_)) => {}
            (_, r) => {
                seen.insert(node.to_owned(), r.map(|r| (r, now)));
            }
        }
    }
}

fn key_of(node: &str) -> String {
    format!("n.{node}")
}

/// The lease's value: `EPOCH CLIENTS` (hex epoch, sessions here).
fn value(cluster: &Cluster, shared: &Shared) -> Bytes {
    Bytes::from(format!("{:x} {}", cluster.epoch, shared.registry.len()))
}

/// Puts this node's lease once (at start, before it serves); true if it was written.
pub(super) async fn renew_once(cluster: &Cluster, shared: &Shared) -> bool {
    let nodes = &cluster.buckets.nodes;
    let put = nodes.put(key_of(&cluster.cfg.node_name), value(cluster, shared));
    match tokio::time::timeout(cluster.cfg.lease_interval, put).await {
        Ok(Ok(_)) => true,
        Ok(Err(e)) => {
            tracing::debug!(error = %e, "lease not renewed");
            false
        }
        Err(_) => false,
    }
}

/// Renews the lease, fences and unfences, and watches the others' leases, until shutdown.
pub(super) async fn run(cluster: Arc<Cluster>, shared: Arc<Shared>) {
    shared.tracker.spawn(watch(cluster.clone(), shared.clone()));
    let mut last_ok = Instant::now();
    let mut tick = tokio::time::interval(cluster.cfg.lease_interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = shared.shutdown.cancelled() => break,
        }
        if renew_once(&cluster, &shared).await {
            last_ok = Instant::now();
            if cluster.fenced.swap(false, Ordering::AcqRel) {
                tracing::warn!("the cluster is reachable again: serving");
            }
            bury(&cluster, &shared).await;
        } else if last_ok.elapsed() >= cluster.cfg.fence_after
            && !cluster.fenced.swap(true, Ordering::AcqRel)
        {
            tracing::error!(
                after = ?cluster.cfg.fence_after,
                "lease not renewed: fencing (clients closed, new ones refused)"
            );
            shared.registry.kick_all();
        }
    }
    // A graceful stop publishes no will (as a single broker's does not), and gives the
    // lease up at once, so others need not wait for it to age.
    let cleared = super::wills::clear_mine(&cluster);
    let _ = tokio::time::timeout(Duration::from_secs(2), cleared).await;
    let gone = cluster.buckets.nodes.delete(key_of(&cluster.cfg.node_name));
    let _ = tokio::time::timeout(Duration::from_secs(1), gone).await;
}

/// Takes care of every node whose lease aged out: the one survivor that makes its `dead`
/// marker publishes the wills it left, then removes its lease.
async fn bury(cluster: &Cluster, shared: &Arc<Shared>) {
    let nodes = &cluster.buckets.nodes;
    for (node, rev) in cluster.leases.aged_out() {
        if node == cluster.cfg.node_name {
            continue;
        }
        let marker = format!("dead.{node}.{rev}");
        let epoch = Bytes::from(format!("{:x}", cluster.epoch));
        if nodes.create(&marker, epoch).await.is_err() {
            // Another survivor has it (or the bucket did not answer: next time).
            continue;
        }
        tracing::warn!(node, "node dead: publishing the wills it left");
        super::wills::publish_left(cluster, shared, &node).await;
        super::sessions::restore_left(cluster, shared, &node).await;
        let _ = nodes.delete_expect_revision(key_of(&node), Some(rev)).await;
    }
}

/// Follows every node's lease.
async fn watch(cluster: Arc<Cluster>, shared: Arc<Shared>) {
    let nodes = &cluster.buckets.nodes;
    loop {
        let mut entries = match nodes.watch_with_history(">").await {
            Ok(w) => w,
            Err(e) => {
                tracing::debug!(error = %e, "cannot watch the leases yet");
                tokio::select! {
                    _ = tokio::time::sleep(cluster.cfg.lease_interval) => continue,
                    _ = shared.shutdown.cancelled() => return,
                }
            }
        };
        // An empty bucket sends nothing to say so: no lease there at the start is its own
        // answer once one interval has passed.
        let loaded_by = Instant::now() + cluster.cfg.lease_interval;
        loop {
            let next = tokio::select! {
                e = entries.next() => e,
                _ = tokio::time::sleep_until(loaded_by.into()),
                    if !cluster.leases.loaded.load(Ordering::Acquire) => {
                    cluster.leases.loaded.store(true, Ordering::Release);
                    continue;
                }
                _ = shared.shutdown.cancelled() => return,
            };
            let Some(Ok(entry)) = next else { break };
            if let Some(node) = entry.key.strip_prefix("n.") {
                let revision = (entry.operation == Operation::Put).then_some(entry.revision);
                cluster.leases.saw(node, revision);
            }
            if entry.delta == 0 {
                cluster.leases.loaded.store(true, Ordering::Release);
            }
        }
    }
}
