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

use super::{lease::Leases, Cluster};
use crate::codec::ConnectReturnCode;
use crate::sessions::Shared;

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
    pub(super) async fn claim(&self, client_id: &str) -> Result<u64, ConnectReturnCode> {
        let key = key_of(client_id);
        let mut races = 0;
        let mut pause = Duration::from_millis(50);
        while races < ATTEMPTS {
            match self.try_claim(&key, client_id).await? {
                Step::Won(rev) => return Ok(rev),
                Step::Lost => races += 1,
                Step::Unanswered => {
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(Duration::from_millis(500));
                }
            }
        }
        Err(ConnectReturnCode::ServerUnavailable)
    }

    async fn try_claim(&self, key: &str, client_id: &str) -> Result<Step, ConnectReturnCode> {
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
            self.take_from(&owner, client_id).await?;
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

    /// Asks `owner` to give `client_id` up; fine too if `owner` is dead.
    async fn take_from(&self, owner: &str, client_id: &str) -> Result<(), ConnectReturnCode> {
        let subject = takeover_subject(&self.prefix, owner);
        let asked = self
            .client
            .request(subject, Bytes::copy_from_slice(client_id.as_bytes()));
        match tokio::time::timeout(TAKEOVER_TIMEOUT, asked).await {
            Ok(Ok(_)) => Ok(()),
            _ if self.leases.is_dead(owner) => {
                tracing::info!(owner, client_id, "client id taken from a dead node");
                Ok(())
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
        let client_id = String::from_utf8_lossy(&req.payload);
        let had = shared.registry.take_over(&client_id);
        tracing::info!(
            client_id = &*client_id,
            had,
            "client id taken over by another node"
        );
        if let Some(reply) = req.reply {
            let _ = cluster
                .client
                .publish(reply, Bytes::from_static(b"ok"))
                .await;
        }
    }
}
