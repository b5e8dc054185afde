//! Retained messages in the bucket `PREFIX_retained`, followed by every node's own store:
//! key = a hash of the topic, value = who set it (origin and sequence), the QoS, the topic,
//! the publisher and the payload. A cleared topic is written as a value with an empty
//! payload, so a node can tell its own changes from others'.
//!
//! A node applies its own change to its store at once (a subscriber here sees it with no
//! round trip) and sends it to the bucket (a QoS 1 or 2 publish is acknowledged once the
//! bucket has it: `Remote::retained`'s future); until the bucket gives that change back, the
//! watch skips the key, so an older value in flight cannot undo a newer one here. The
//! bucket's order is the cluster's: whatever it holds last, every node ends up holding.

use std::collections::HashMap;
use std::sync::Arc;

use async_nats::jetstream::kv::{self, Operation};
use bytes::{Buf, BufMut, Bytes, BytesMut};
use futures_util::StreamExt;
use parking_lot::Mutex;
use sha2::{Digest, Sha256};

use super::latest::WRITES_AT_ONCE;
use super::link::{RetainedChange, RetainedQueue};
use super::{Cluster, ClusterError};
use crate::message::{Message, Publisher, QoS};
use crate::observability::metrics::Metrics;
use crate::sessions::Shared;

/// Keys with a change of this node's in flight, and the sequence number of the last one.
pub(super) type Pending = Mutex<HashMap<String, u64>>;

fn key_of(topic: &[u8]) -> String {
    let digest = Sha256::digest(topic);
    digest.iter().map(|b| format!("{b:02x}")).collect()
}

/// One stored value, decoded.
pub(super) struct Value {
    pub(super) epoch: u64,
    pub(super) seq: u64,
    pub(super) msg: Message,
    pub(super) from: Option<Publisher>,
}

/// A message with who published it, as the buckets hold it (retained messages, wills).
pub(super) fn encode(epoch: u64, seq: u64, change: &RetainedChange) -> Bytes {
    let m = &change.msg;
    let id = change.client_id.as_deref().unwrap_or("");
    let user = change.username.as_deref();
    let mut b = BytesMut::with_capacity(32 + m.topic.len() + id.len() + m.payload.len());
    b.put_u64(epoch);
    b.put_u64(seq);
    b.put_u8(m.qos as u8 | u8::from(m.retain) << 2);
    b.put_u32(m.topic.len() as u32);
    b.put_slice(&m.topic);
    b.put_u16(id.len().min(u16::MAX as usize) as u16);
    b.put_slice(&id.as_bytes()[..id.len().min(u16::MAX as usize)]);
    match user {
        None => b.put_u16(u16::MAX),
        Some(u) => {
            let n = u.len().min(u16::MAX as usize - 1);
            b.put_u16(n as u16);
            b.put_slice(&u.as_bytes()[..n]);
        }
    }
    b.put_slice(&m.payload);
    b.freeze()
}

/// What `encode` wrote.
pub(super) fn decode(mut v: Bytes) -> Option<Value> {
    if v.len() < 8 + 8 + 1 + 4 {
        return None;
    }
    let epoch = v.get_u64();
    let seq = v.get_u64();
    let flags = v.get_u8();
    let qos = QoS::from_u8(flags & 3)?;
    let topic_len = v.get_u32() as usize;
    if v.len() < topic_len + 2 {
        return None;
    }
    let topic = v.split_to(topic_len);
    let id_len = v.get_u16() as usize;
    if v.len() < id_len + 2 {
        return None;
    }
    let id = std::str::from_utf8(&v.split_to(id_len)).ok()?.to_owned();
    let user = match v.get_u16() {
        u16::MAX => None,
        n if v.len() >= n as usize => Some(
            std::str::from_utf8(&v.split_to(n as usize))
                .ok()?
                .to_owned(),
        ),
        _ => return None,
    };
    let from = (!id.is_empty()).then(|| Publisher {
        client_id: id.into(),
        username: user.map(Arc::from),
        bridge_session: None,
    });
    Some(Value {
        epoch,
        seq,
        msg: Message {
            topic,
            payload: v,
            qos,
            retain: flags & 4 != 0,
        },
        from,
    })
}

/// Reads every retained message the bucket holds into this node's store; the watch that
/// goes on from there.
pub(super) async fn load(cluster: &Cluster, shared: &Shared) -> Result<kv::Watch, ClusterError> {
    let bucket = &cluster.buckets.retained;
    let fail = |e: &dyn std::fmt::Display| ClusterError::Retained(e.to_string());
    let status = bucket.status().await.map_err(|e| fail(&e))?;
    // Every key's current value first, then each change.
    let mut watch = bucket.watch_with_history(">").await.map_err(|e| fail(&e))?;
    if status.values() == 0 {
        return Ok(watch);
    }
    let deadline = tokio::time::Instant::now() + cluster.cfg.connect_timeout;
    loop {
        let next = tokio::time::timeout_at(deadline, watch.next())
            .await
            .map_err(|_| ClusterError::Retained("timed out".into()))?;
        let Some(entry) = next else {
            return Err(ClusterError::Retained("the watch ended".into()));
        };
        let entry = entry.map_err(|e| fail(&e))?;
        let last = entry.delta == 0;
        apply(shared, &cluster.pending_retained, entry, cluster.epoch);
        if last {
            return Ok(watch);
        }
    }
}

/// One change from the bucket, into this node's store (unless one of ours is in flight).
fn apply(shared: &Shared, pending: &Pending, entry: kv::Entry, epoch: u64) {
    let value = match entry.operation {
        Operation::Put => match decode(entry.value) {
            Some(v) => v,
            None => {
                tracing::warn!(key = entry.key, "a retained value this node cannot read");
                return;
            }
        },
        // Deleted by hand (`nats kv del`): the topic is unknown here but by its key.
        Operation::Delete | Operation::Purge => return,
    };
    {
        let mut p = pending.lock();
        if let Some(&mine) = p.get(&entry.key) {
            if value.epoch == epoch && value.seq >= mine {
                p.remove(&entry.key);
            }
            return;
        }
    }
    if value.epoch == epoch {
        // Ours, and already applied when it was made.
        return;
    }
    let from = value.from.map(Arc::new);
    shared.router.retain_store().restore(&value.msg, from);
}

/// Sends this node's retained changes to the bucket, each topic as it is now.
pub(super) async fn write(
    cluster: Arc<Cluster>,
    queue: Arc<RetainedQueue>,
    stop: tokio_util::sync::CancellationToken,
) {
    let mut seq = 0u64;
    loop {
        let batch = tokio::select! {
            b = queue.next_batch(WRITES_AT_ONCE) => b,
            _ = stop.cancelled() => break,
        };
        let writes = batch.into_iter().map(|(_, (change, acks))| {
            seq += 1;
            let key = key_of(&change.msg.topic);
            cluster.pending_retained.lock().insert(key.clone(), seq);
            let value = encode(cluster.epoch, seq, &change);
            let cluster = &cluster;
            async move {
                if let Err(e) = cluster.buckets.retained.put(&key, value).await {
                    cluster.pending_retained.lock().remove(&key);
                    Metrics::incr(&cluster.metrics.cluster_dropped);
                    tracing::warn!(topic = change.msg.topic_str(), error = %e, "retained change not stored in the cluster");
                    return;
                }
                for written in acks {
                    let _ = written.send(());
                }
            }
        });
        futures_util::future::join_all(writes.collect::<Vec<_>>()).await;
    }
}

/// Follows the bucket, until shutdown; a watch that ends is made again from where it was.
pub(super) async fn watch(cluster: Arc<Cluster>, shared: Arc<Shared>, mut entries: kv::Watch) {
    let mut last = 0u64;
    loop {
        let next = tokio::select! {
            e = entries.next() => e,
            _ = shared.shutdown.cancelled() => return,
        };
        match next {
            Some(Ok(entry)) => {
                last = entry.revision;
                apply(&shared, &cluster.pending_retained, entry, cluster.epoch);
            }
            Some(Err(e)) => tracing::debug!(error = %e, "retained watch"),
            None => loop {
                let again = cluster
                    .buckets
                    .retained
                    .watch_all_from_revision(last + 1)
                    .await;
                match again {
                    Ok(w) => {
                        entries = w;
                        break;
                    }
                    Err(e) => {
                        tracing::debug!(error = %e, "retained watch not made again yet");
                        tokio::select! {
                            _ = tokio::time::sleep(cluster.cfg.lease_interval) => {}
                            _ = shared.shutdown.cancelled() => return,
                        }
                    }
                }
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_value_round_trips() {
        let change = RetainedChange {
            msg: Arc::new(Message {
                topic: Bytes::from_static(b"a/b"),
                payload: Bytes::from_static(b"21.5"),
                qos: QoS::AtLeastOnce,
                retain: true,
            }),
            client_id: Some("c1".into()),
            username: None,
        };
        let v = decode(encode(7, 9, &change)).expect("decodes");
        assert_eq!((v.epoch, v.seq), (7, 9));
        assert_eq!(&v.msg.topic[..], b"a/b");
        assert_eq!(&v.msg.payload[..], b"21.5");
        assert_eq!(v.msg.qos, QoS::AtLeastOnce);
        let from = v.from.expect("publisher");
        assert_eq!((&*from.client_id, from.username), ("c1", None));
        assert!(decode(Bytes::from_static(b"short")).is_none());
    }
}
