//! `tern cluster status`: the cluster as NATS holds it: every node's lease (its age, its
//! sessions) and how many client ids each node owns.

use std::collections::BTreeMap;
use std::time::Duration;

use async_nats::jetstream::{self, kv::Operation};
use futures_util::StreamExt;

use super::{bucket_name, connect_nats, ClusterError};
use crate::config::ClusterConfig;

/// One node as the status shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeStatus {
    /// Its `node_name`.
    pub name: String,
    /// How long ago it last renewed its lease, by the NATS server's clock.
    pub lease_age: Duration,
    /// Sessions it reported with its lease.
    pub sessions: u64,
    /// Client ids the registry says it owns.
    pub client_ids: u64,
}

/// Reads the status from NATS.
pub async fn read(cfg: &ClusterConfig) -> Result<Vec<NodeStatus>, ClusterError> {
    let client = connect_nats(cfg, "tern cluster status".into(), false).await?;
    let js = jetstream::new(client);
    let open = |what: &str| {
        let js = js.clone();
        let bucket = bucket_name(&cfg.prefix, what);
        async move {
            js.get_key_value(&bucket)
                .await
                .map_err(|e| ClusterError::Bucket {
                    bucket,
                    reason: e.to_string(),
                })
        }
    };
    let nodes = open("nodes").await?;
    let clients = open("clients").await?;
    let mut out: BTreeMap<String, NodeStatus> = BTreeMap::new();
    let fail = |e: &dyn std::fmt::Display| ClusterError::Bucket {
        bucket: bucket_name(&cfg.prefix, "nodes"),
        reason: e.to_string(),
    };
    let mut keys = nodes.keys().await.map_err(|e| fail(&e))?;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    while let Some(key) = keys.next().await {
        let key = key.map_err(|e| fail(&e))?;
        let Some(name) = key.strip_prefix("n.") else {
            continue;
        };
        let Some(entry) = nodes.entry(key.clone()).await.map_err(|e| fail(&e))? else {
            continue;
        };
        if entry.operation != Operation::Put {
            continue;
        }
        let text = String::from_utf8_lossy(&entry.value).into_owned();
        let sessions = text
            .split(' ')
            .nth(1)
            .and_then(|n| n.parse().ok())
            .unwrap_or(0);
        let created = Duration::from_nanos(entry.created.unix_timestamp_nanos().max(0) as u64);
        out.insert(
            name.to_owned(),
            NodeStatus {
                name: name.to_owned(),
                lease_age: now.saturating_sub(created),
                sessions,
                client_ids: 0,
            },
        );
    }
    let mut keys = clients.keys().await.map_err(|e| fail(&e))?;
    while let Some(key) = keys.next().await {
        let key = key.map_err(|e| fail(&e))?;
        if let Ok(Some(owner)) = clients.get(key).await {
            let owner = String::from_utf8_lossy(&owner).into_owned();
            let node = out.entry(owner.clone()).or_insert(NodeStatus {
                name: owner,
                lease_age: Duration::MAX,
                sessions: 0,
                client_ids: 0,
            });
            node.client_ids += 1;
        }
    }
    Ok(out.into_values().collect())
}
