//! Persistent sessions' subscriptions in the bucket `PREFIX_sessions`, so a dead node's
//! sessions come back on a survivor: key `NODE.HASH` (a hash of the client id), value the
//! session without its messages (`moving`'s form). A node puts a session's record when its
//! subscriptions change (and when it restores or adopts one) and deletes it when the session
//! ends there. The survivor that buries a dead node (`lease`) adopts each of its sessions,
//! detached, claims their client ids, and so routes what they subscribed to from then on; the
//! messages that were queued in the dead node's memory are not there (they come back with the
//! node only if it used persistence and restarts).

use std::sync::Arc;

use sha2::{Digest, Sha256};
use tokio_util::sync::CancellationToken;

use super::latest::WRITES_AT_ONCE;
use super::link::SessionQueue;
use super::{claims, moving, Cluster};
use crate::message::ClientId;
use crate::sessions::handover::Handover;
use crate::sessions::Shared;

/// A persistent session's record changing: its subscriptions, or (`None`) its end here.
pub(super) struct SessionChange {
    pub(super) client_id: ClientId,
    pub(super) state: Option<Handover>,
}

fn key_of(node: &str, client_id: &str) -> String {
    let digest = Sha256::digest(client_id.as_bytes());
    let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
    format!("{node}.{hex}")
}

/// The record's value: the client id, then the session as `moving` writes it.
fn value(h: &Handover) -> bytes::Bytes {
    let (state, _) = moving::encode(h, usize::MAX);
    let mut b = bytes::BytesMut::with_capacity(2 + h.client_id.len() + state.len());
    bytes::BufMut::put_u16(&mut b, h.client_id.len().min(u16::MAX as usize) as u16);
    bytes::BufMut::put_slice(
        &mut b,
        &h.client_id.as_bytes()[..h.client_id.len().min(u16::MAX as usize)],
    );
    bytes::BufMut::put_slice(&mut b, &state);
    b.freeze()
}

fn read(mut v: bytes::Bytes) -> Option<Handover> {
    use bytes::Buf;
    if v.remaining() < 2 {
        return None;
    }
    let n = v.get_u16() as usize;
    if v.remaining() < n {
        return None;
    }
    let id = String::from_utf8(v.split_to(n).to_vec()).ok()?;
    moving::decode(&id, v)
}

/// Sends this node's session records to the bucket, each as it is now, until shutdown.
pub(super) async fn write(
    cluster: Arc<Cluster>,
    queue: Arc<SessionQueue>,
    stop: CancellationToken,
) {
    let bucket = &cluster.buckets.sessions;
    loop {
        let batch = tokio::select! {
            b = queue.next_batch(WRITES_AT_ONCE) => b,
            _ = stop.cancelled() => break,
        };
        let node = &cluster.cfg.node_name;
        let writes = batch.into_iter().map(|(_, change)| async move {
            let key = key_of(node, &change.client_id);
            let done = match change.state {
                Some(h) => bucket
                    .put(&key, value(&h))
                    .await
                    .map(|_| ())
                    .map_err(|e| e.to_string()),
                None => bucket.delete(&key).await.map_err(|e| e.to_string()),
            };
            if let Err(e) = done {
                tracing::warn!(error = e, "session record not stored in the cluster");
            }
        });
        futures_util::future::join_all(writes.collect::<Vec<_>>()).await;
    }
}

/// Adopts here, detached, every persistent session dead `node` left, claiming its client
/// id; how many.
pub(super) async fn restore_left(cluster: &Cluster, shared: &Arc<Shared>, node: &str) -> usize {
    let bucket = &cluster.buckets.sessions;
    let left = super::keys_of(bucket, node).await;
    let mut restored = 0;
    for key in left {
        let Some(entry) = super::current(bucket, &key).await else {
            continue;
        };
        let Some(h) = read(entry.value) else {
            continue;
        };
        let claims = claims::Claims::of(cluster);
        // Its client came back elsewhere already: that session is the one that counts.
        let back = claims.owner(&h.client_id).await;
        if back.is_some_and(|owner| owner != node) {
            super::take_first(bucket, &key, entry.revision).await;
            continue;
        }
        // Ours from now on: claimed, so a CONNECT anywhere takes it over from here.
        if claims.claim(&h.client_id, false).await.is_err() {
            continue;
        }
        if !super::take_first(bucket, &key, entry.revision).await {
            continue;
        }
        tracing::info!(
            node,
            client_id = &*h.client_id,
            "session of a dead node restored here"
        );
        shared.registry.adopt(shared, h);
        restored += 1;
    }
    restored
}

/// Settles the sessions this node read back from its own store with the cluster, before it
/// serves: one whose client id another node owns now (it buried this node and restored the
/// session there, or the client came back there) ends here, so no id has two sessions (what
/// this node still held for it is lost, and logged); the others are claimed again, so a
/// CONNECT elsewhere takes them over from here.
pub(super) async fn settle_restored(cluster: &Cluster, shared: &Arc<Shared>) {
    let claims = claims::Claims::of(cluster);
    for (client_id, handle) in shared.registry.sorted() {
        if !handle.persistent {
            continue;
        }
        match claims.owner(&client_id).await {
            Some(owner) if owner == cluster.cfg.node_name => {}
            Some(owner) => {
                tracing::warn!(
                    client_id = &*client_id,
                    owner,
                    queued = handle.mailbox.backlog().pending(),
                    inflight = handle.mailbox.backlog().inflight(),
                    "a stored session's client id is another node's now: ended here"
                );
                shared.registry.take_over(&client_id);
            }
            None => {
                if claims.claim(&client_id, false).await.is_err() {
                    tracing::warn!(
                        client_id = &*client_id,
                        "a stored session's client id not claimed again"
                    );
                }
            }
        }
    }
}
