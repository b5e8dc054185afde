//! Wills in the bucket `PREFIX_wills`, so that a client's will is published even if its node
//! dies: key `NODE.HASH` (a hash of the client id), value the will and its publisher. A
//! connection's will is put when it connects and deleted when its connection ends here
//! (published there, or discarded by DISCONNECT or a graceful stop). The wills a dead node
//! left are published by the one survivor that wins that node's `dead` marker (`lease`), and
//! a node that starts publishes what an earlier run of it left.

use std::collections::HashMap;
use std::sync::Arc;

use sha2::{Digest, Sha256};
use tokio_util::sync::CancellationToken;

use super::latest::WRITES_AT_ONCE;
use super::link::{RetainedChange, WillQueue};
use super::{retained, Cluster};
use crate::message::{ClientId, Message};
use crate::sessions::Shared;

/// A connection's will changing: set at connect, cleared (`None`) when it ends.
pub(super) struct WillChange {
    pub(super) client_id: ClientId,
    /// The connection's claim: only the connection that put a will clears it.
    pub(super) token: u64,
    pub(super) will: Option<(Arc<Message>, Option<Arc<str>>)>,
}

fn key_of(node: &str, client_id: &str) -> String {
    let digest = Sha256::digest(client_id.as_bytes());
    let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
    format!("{node}.{hex}")
}

/// Sends this node's will changes to the bucket until shutdown. A will is deleted only at
/// the revision this node put it at, and only by the end of its connection or of a later one
/// (claim tokens grow), so an old connection's end never deletes the will of a newer one.
pub(super) async fn write(cluster: Arc<Cluster>, queue: Arc<WillQueue>, stop: CancellationToken) {
    let bucket = &cluster.buckets.wills;
    // Key -> the claim of the connection whose will it is, and the revision it is at.
    let mut revisions: HashMap<String, (u64, u64)> = HashMap::new();
    loop {
        let batch = tokio::select! {
            b = queue.next_batch(WRITES_AT_ONCE) => b,
            _ = stop.cancelled() => break,
        };
        let mut writes = Vec::with_capacity(batch.len());
        for (client_id, change) in batch {
            let key = key_of(&cluster.cfg.node_name, &client_id);
            match change.will {
                Some((msg, username)) => {
                    let value = retained::encode(
                        cluster.epoch,
                        0,
                        &RetainedChange {
                            msg,
                            client_id: Some(client_id),
                            username,
                        },
                    );
                    writes.push(futures_util::future::Either::Left(async move {
                        match bucket.put(&key, value).await {
                            Ok(rev) => Some((key, (change.token, rev))),
                            Err(e) => {
                                tracing::warn!(error = %e, "will not stored in the cluster");
                                None
                            }
                        }
                    }));
                }
                None => {
                    let ours = revisions.get(&key).is_some_and(|(t, _)| *t <= change.token);
                    if let Some((_, rev)) = ours.then(|| revisions.remove(&key)).flatten() {
                        writes.push(futures_util::future::Either::Right(async move {
                            let _ = bucket.delete_expect_revision(&key, Some(rev)).await;
                            None
                        }));
                    }
                }
            }
        }
        for (key, at) in futures_util::future::join_all(writes)
            .await
            .into_iter()
            .flatten()
        {
            revisions.insert(key, at);
        }
    }
}

/// Deletes every will of this node's (a graceful stop publishes none).
pub(super) async fn clear_mine(cluster: &Cluster) {
    for key in super::keys_of(&cluster.buckets.wills, &cluster.cfg.node_name).await {
        let _ = cluster.buckets.wills.delete(&key).await;
    }
}

/// Publishes every will `node` left in the bucket, through this node's router (and so to
/// the whole cluster), and deletes it; how many.
pub(super) async fn publish_left(cluster: &Cluster, shared: &Shared, node: &str) -> usize {
    let bucket = &cluster.buckets.wills;
    let mut published = 0;
    for key in super::keys_of(bucket, node).await {
        let Some(entry) = super::current(bucket, &key).await else {
            continue;
        };
        // Deleted first, at the revision read: if another node got there, it publishes.
        if !super::take_first(bucket, &key, entry.revision).await {
            continue;
        }
        if let Some(v) = retained::decode(entry.value) {
            let from = v.from.map(Arc::new);
            tracing::info!(
                node,
                topic = v.msg.topic_str(),
                "publishing a will a node left"
            );
            shared
                .router
                .publish_from(Arc::new(v.msg), from.as_ref(), None);
            published += 1;
        }
    }
    published
}
