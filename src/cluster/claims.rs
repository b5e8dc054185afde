//! Which node has which client id: the bucket `PREFIX_clients`, key = a hash of the id, value
//! = the owning node's name, changed only by compare-and-set (create, or update at the
//! revision read), so two nodes can never both believe they won. A CONNECT for an id another
//! node has asks that node to give it up (`PREFIX.ctl.NODE.takeover`): it ends the session
//! there (the connection closes, its will published) and answers; only then is the id
//! updated to this node. An owner that does not answer is waited for until its lease says
//! it is dead (0x03 meanwhile, so the client tries again).

use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::kv::{self, CreateErrorKind, Operation, UpdateErrorKind};
use bytes::Bytes;
use futures_util::StreamExt;
use sha2::{Digest, Sha256};

use super::{lease::Leases, moving, Cluster};
use crate::codec::ConnectReturnCode;
use crate::sessions::claims::Claimed;
use crate::sessions::handover::Handover;
use crate::sessions::Shared;
use std::sync::atomic::Ordering;

/// How long an owner has to answer a takeover request.
const TAKEOVER_TIMEOUT: Duration = Duration::from_secs(2);

/// Attempts before a claim gives up (each lost race reads the entry again).
const ATTEMPTS: usize = 8;

/// The key of a client id: ids may hold anything, keys only a few characters.
pub(super) fn key_of(client_id: &str) -> String {
    let digest = Sha256::digest(client_id.as_bytes());
    digest.iter().map(|b| format!("{b:02x}")).collect()
}

/// The subject other nodes ask `node` to give up a client id on.
fn takeover_subject(prefix: &str, node: &str) -> String {
    format!("{prefix}.ctl.{node}.takeover")
}

/// What a claim needs, owned, so its future is `'static`.
pub(super) struct Claims {
    client: async_nats::Client,
    clients: kv::Store,
    node: Bytes,
    prefix: String,
    leases: Arc<Leases>,
}

impl Claims {
    pub(super) fn of(c: &Cluster) -> Claims {
        Claims {
            client: c.client.clone(),
            clients: c.buckets.clients.clone(),
            node: Bytes::from(c.cfg.node_name.clone()),
            prefix: c.cfg.prefix.clone(),
            leases: c.leases.clone(),
        }
    }

    /// Makes this node the owner of `client_id`: its revision, or the code to refuse with.
    /// A bucket that does not answer (its leader lost, being elected again) is asked again
    /// until the caller's deadline; a lost race reads the entry again, `ATTEMPTS` times.
    pub(super) async fn claim(
        &self,
        client_id: &str,
        clean: bool,
    ) -> Result<Claimed, ConnectReturnCode> {
        let key = key_of(client_id);
        let mut races = 0;
        let mut pause = Duration::from_millis(50);
        // A session handed over is kept across a lost race: its old owner ended it.
        let mut handover = None;
        while races < ATTEMPTS {
            match self
                .try_claim(&key, client_id, clean, &mut handover)
                .await?
            {
                Step::Won(token) => return Ok(Claimed { token, handover }),
                Step::Lost => races += 1,
                Step::Unanswered => {
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(Duration::from_millis(500));
                }
            }
        }
        Err(ConnectReturnCode::ServerUnavailable)
    }

    async fn try_claim(
        &self,
        key: &str,
        client_id: &str,
        clean: bool,
        handover: &mut Option<Handover>,
    ) -> Result<Step, ConnectReturnCode> {
        let entry = match self.clients.entry(key).await {
            Ok(e) => e,
            Err(e) => return Ok(unanswered(e)),
        };
        let Some(e) = entry.filter(|e| e.operation == Operation::Put) else {
            return Ok(match self.clients.create(key, self.node.clone()).await {
                Ok(rev) => Step::Won(rev),
                Err(e) if e.kind() == CreateErrorKind::AlreadyExists => Step::Lost,
                Err(e) => unanswered(e),
            });
        };
        if e.value != self.node {
            let owner = String::from_utf8_lossy(&e.value).into_owned();
            if let Some(h) = self.take_from(&owner, client_id, clean).await? {
                *handover = Some(h);
            }
        }
        let updated = self
            .clients
            .update(key, self.node.clone(), e.revision)
            .await;
        Ok(match updated {
            Ok(rev) => Step::Won(rev),
            Err(e) if e.kind() == UpdateErrorKind::WrongLastRevision => Step::Lost,
            Err(e) => unanswered(e),
        })
    }

    /// The node that owns `client_id` now, if any (and the bucket answers).
    pub(super) async fn owner(&self, client_id: &str) -> Option<String> {
        let entry = self.clients.entry(key_of(client_id)).await.ok()??;
        (entry.operation == Operation::Put)
            .then(|| String::from_utf8_lossy(&entry.value).into_owned())
    }

    /// Asks `owner` to give `client_id` up (and its persistent session, unless `clean`);
    /// fine too if `owner` is dead.
    async fn take_from(
        &self,
        owner: &str,
        client_id: &str,
        clean: bool,
    ) -> Result<Option<Handover>, ConnectReturnCode> {
        let subject = takeover_subject(&self.prefix, owner);
        let asked = self
            .client
            .request(subject, moving::request(client_id, clean));
        match tokio::time::timeout(TAKEOVER_TIMEOUT, asked).await {
            Ok(Ok(reply)) if reply.payload.is_empty() => Ok(None),
            Ok(Ok(reply)) => {
                let h = moving::decode(client_id, reply.payload);
                if h.is_none() {
                    tracing::warn!(owner, client_id, "a handed-over session could not be read");
                }
                Ok(h)
            }
            _ if self.leases.is_dead(owner) => {
                tracing::info!(owner, client_id, "client id taken from a dead node");
                Ok(None)
            }
            _ => {
                tracing::debug!(owner, client_id, "owner of the client id did not answer");
                Err(ConnectReturnCode::ServerUnavailable)
            }
        }
    }
}

/// One try at a claim.
enum Step {
    /// The id is this node's, at this revision.
    Won(u64),
    /// Another change came first: read again.
    Lost,
    /// The bucket did not answer: try again shortly.
    Unanswered,
}

fn unanswered(e: impl std::fmt::Display) -> Step {
    tracing::debug!(error = %e, "the client-id bucket did not answer");
    Step::Unanswered
}

/// Answers other nodes' takeover requests for this node's client ids, until shutdown.
pub(super) async fn serve(cluster: Arc<Cluster>, shared: Arc<Shared>) {
    let subject = takeover_subject(&cluster.cfg.prefix, &cluster.cfg.node_name);
    let mut requests = match cluster.client.subscribe(subject).await {
        Ok(s) => s,
        Err(e) => {
            tracing::error!(error = %e, "cannot serve takeover requests");
            return;
        }
    };
    loop {
        let req = tokio::select! {
            r = requests.next() => r,
            _ = shared.shutdown.cancelled() => break,
        };
        let Some(req) = req else { break };
        let Some((client_id, clean)) = moving::read_request(&req.payload) else {
            continue;
        };
        let moved = shared.registry.hand_over(&client_id, clean).await;
        let answer = match &moved {
            None => Bytes::new(),
            Some(h) => {
                let max = cluster.client.server_info().max_payload;
                let (b, left) = moving::encode(h, max.saturating_sub(1024));
                if left > 0 {
                    let dropped = &cluster.metrics.cluster_dropped;
                    dropped.fetch_add(left as u64, Ordering::Relaxed);
                    tracing::warn!(client_id, left, "session too large to move whole");
                }
                b
            }
        };
        let moved = moved.is_some();
        tracing::info!(client_id, moved, "client id taken over by another node");
        if let Some(reply) = req.reply {
            let _ = cluster.client.publish(reply, answer).await;
        }
    }
}
