//! `[cluster]`: this broker as one node of a Tern cluster over NATS with JetStream, so that
//! several nodes act as one broker. Without the section none of this exists, and the router
//! and the handshake make no call into it (`routing::remote`, `sessions::claims`).
//!
//! Each node keeps its own trie, sessions and fast path; NATS carries what crosses nodes:
//!
//! | what | where | module |
//! |---|---|---|
//! | messages to other nodes | core NATS, subject = the topic, interest = the route table | `routes` |
//! | which node has a client id | KV bucket `PREFIX_clients`, changed only by compare-and-set | `claims` |
//! | which nodes are alive | KV bucket `PREFIX_nodes`: each node renews its lease | `lease` |
//! | retained messages | KV bucket `PREFIX_retained`, every node's store follows it | `retained` |
//! | wills, persistent sessions' subscriptions | KV buckets `PREFIX_wills`, `PREFIX_sessions` | `wills`, `sessions` |
//!
//! What goes to a bucket waits as the newest state per key (`latest`) and is written up to
//! `latest::WRITES_AT_ONCE` keys per round trip, so a burst never drops a key's last state.
//!
//! Between nodes delivery is at most once (as in EMQX and VerneMQ); each client's QoS with its
//! own node is unchanged. A node that cannot renew its lease for `fence_after` closes its
//! clients and refuses new ones until it can again, so the others may take its client ids
//! once its lease is `dead_after` old.
//!
//! Tasks, all on the broker's tracker: `routes::forward` (router -> NATS), `routes::run`
//! (NATS subscriptions and what they bring), `retained::write` and `retained::watch`,
//! `wills::write`, `sessions::write`,
//! `claims::serve` (other nodes' takeover requests), `routes::answer_sync` (other nodes'
//! interest round trips) and `lease::run`.

mod claims;
mod frame;
mod latest;
mod lease;
mod link;
mod moving;
mod retained;
mod routes;
mod sessions;
pub mod status;
pub mod subject;
mod wills;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_nats::jetstream::{self, kv};
use parking_lot::Mutex;

use crate::config::ClusterConfig;
use crate::message::{ClientId, Message};
use crate::observability::metrics::Metrics;
use crate::routing::remote::Remote;
use crate::sessions::claims::{Claiming, ClientIds};
use crate::sessions::Shared;

use link::{Link, Queues};

/// Why this node cannot join its cluster.
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    /// No NATS server answered.
    #[error("cluster: cannot reach NATS at {servers}: {reason}")]
    Connect {
        /// The configured servers.
        servers: String,
        /// The last error.
        reason: String,
    },
    /// A key-value bucket cannot be made or opened (no JetStream, no quorum, bad options).
    #[error("cluster: cannot open the bucket {bucket}: {reason}")]
    Bucket {
        /// The bucket.
        bucket: String,
        /// What NATS said.
        reason: String,
    },
    /// The retained messages could not be read at start.
    #[error("cluster: cannot read the retained messages: {0}")]
    Retained(String),
    /// A file named in `[cluster]` cannot be used.
    #[error("cluster: {0}")]
    File(String),
}

/// The cluster's key-value buckets.
#[derive(Clone)]
struct Buckets {
    clients: kv::Store,
    nodes: kv::Store,
    retained: kv::Store,
    wills: kv::Store,
    sessions: kv::Store,
}

/// This node's place in its cluster.
pub struct Cluster {
    cfg: ClusterConfig,
    client: async_nats::Client,
    buckets: Buckets,
    link: Arc<Link>,
    /// This process's id among every node's past and present ones (random), so a restarted
    /// node's sequence numbers are new.
    epoch: u64,
    metrics: Arc<Metrics>,
    /// Set while this node could not renew its lease for `fence_after`.
    fenced: AtomicBool,
    leases: Arc<lease::Leases>,
    /// Retained changes of this node's on their way to the bucket (see `retained`).
    pending_retained: retained::Pending,
    /// What the tasks take when the cluster starts.
    queues: Mutex<Option<Queues>>,
}

impl Cluster {
    /// Connects to NATS (trying for `connect_timeout`) and opens the buckets.
    pub async fn connect(
        cfg: &ClusterConfig,
        metrics: Arc<Metrics>,
    ) -> Result<Arc<Cluster>, ClusterError> {
        let client = connect_nats(cfg, format!("tern {}", cfg.node_name), true).await?;
        let buckets = open_buckets(cfg, &client).await?;
        let (link, queues) = Link::new(cfg.max_forward_queue, metrics.clone());
        let mut epoch = [0u8; 8];
        getrandom::getrandom(&mut epoch).map_err(|e| ClusterError::File(e.to_string()))?;
        let epoch = u64::from_le_bytes(epoch) | 1;
        tracing::info!(node = %cfg.node_name, epoch = format!("{epoch:x}"), "joined the cluster's NATS");
        Ok(Arc::new(Cluster {
            leases: Arc::new(lease::Leases::new(cfg.dead_after)),
            cfg: cfg.clone(),
            client,
            buckets,
            link: Arc::new(link),
            epoch,
            metrics,
            fenced: AtomicBool::new(false),
            pending_retained: Default::default(),
            queues: Mutex::new(Some(queues)),
        }))
    }

    /// The router's handle: what it tells the other nodes.
    pub fn remote(&self) -> Arc<dyn Remote> {
        self.link.clone()
    }

    /// Reads the cluster's retained messages into this node's store, then starts the tasks
    /// (see the module doc); before the listeners serve.
    pub async fn start(self: &Arc<Self>, shared: &Arc<Shared>) -> Result<(), ClusterError> {
        let Some(queues) = self.queues.lock().take() else {
            return Ok(());
        };
        lease::renew_once(self, shared).await;
        sessions::settle_restored(self, shared).await;
        let watch = retained::load(self, shared).await?;
        // Wills an earlier run of this node left when it died.
        wills::publish_left(self, shared, &self.cfg.node_name).await;
        let t = &shared.tracker;
        let stop = shared.shutdown.clone();
        t.spawn(routes::forward(self.clone(), queues.forward, stop.clone()));
        t.spawn(routes::run(self.clone(), shared.clone()));
        t.spawn(retained::write(self.clone(), queues.retained, stop.clone()));
        t.spawn(wills::write(self.clone(), queues.wills, stop.clone()));
        t.spawn(sessions::write(self.clone(), queues.sessions, stop));
        t.spawn(retained::watch(self.clone(), shared.clone(), watch));
        t.spawn(claims::serve(self.clone(), shared.clone()));
        t.spawn(routes::answer_sync(self.clone(), shared.clone()));
        t.spawn(lease::run(self.clone(), shared.clone()));
        Ok(())
    }
}

impl ClientIds for Cluster {
    fn claim(&self, client_id: &ClientId, clean: bool) -> Claiming {
        let claims = claims::Claims::of(self);
        let client_id = client_id.clone();
        Box::pin(async move { claims.claim(&client_id, clean).await })
    }

    fn release(&self, client_id: &ClientId, token: u64) {
        let clients = self.buckets.clients.clone();
        let key = claims::key_of(client_id);
        tokio::spawn(async move {
            // Only if still ours: a takeover since has a newer revision.
            let _ = clients.delete_expect_revision(key, Some(token)).await;
        });
    }

    fn will(
        &self,
        client_id: &ClientId,
        token: u64,
        will: Option<(&Arc<Message>, Option<&Arc<str>>)>,
    ) {
        self.link.will(wills::WillChange {
            client_id: client_id.clone(),
            token,
            will: will.map(|(m, u)| (m.clone(), u.cloned())),
        });
    }

    fn session(&self, client_id: &ClientId, state: Option<crate::sessions::handover::Handover>) {
        self.link.session(sessions::SessionChange {
            client_id: client_id.clone(),
            state,
        });
    }

    fn serving(&self) -> bool {
        !self.fenced.load(Ordering::Acquire)
    }
}

/// `key`'s value in `bucket`, unless it is deleted (or the bucket does not answer).
async fn current(bucket: &kv::Store, key: &str) -> Option<kv::Entry> {
    let entry = bucket.entry(key).await.ok()??;
    (entry.operation == kv::Operation::Put).then_some(entry)
}

/// Takes `key` out of `bucket` if it is still at `revision`, the one read: true for the one
/// node that gets there first, which then acts on it (publishes a will, restores a session).
async fn take_first(bucket: &kv::Store, key: &str, revision: u64) -> bool {
    bucket
        .delete_expect_revision(key, Some(revision))
        .await
        .is_ok()
}

/// The keys of `bucket` that belong to `node` (`NODE.`...).
async fn keys_of(bucket: &kv::Store, node: &str) -> Vec<String> {
    use futures_util::StreamExt;
    let prefix = format!("{node}.");
    let mut keys = match bucket.keys().await {
        Ok(k) => k,
        Err(e) => {
            tracing::warn!(node, error = %e, "cannot list a bucket's keys");
            return Vec::new();
        }
    };
    let mut mine = Vec::new();
    while let Some(key) = keys.next().await {
        match key {
            Ok(k) if k.starts_with(&prefix) => mine.push(k),
            Ok(_) => {}
            Err(_) => break,
        }
    }
    mine
}

fn bucket_name(prefix: &str, what: &str) -> String {
    format!("{prefix}_{what}")
}

/// A NATS connection as `[cluster]` says; `no_echo` for a node (it never gets its own
/// messages back), not for `tern cluster status`.
async fn connect_nats(
    cfg: &ClusterConfig,
    name: String,
    node: bool,
) -> Result<async_nats::Client, ClusterError> {
    let servers = cfg.nats.join(", ");
    let deadline = Instant::now() + cfg.connect_timeout;
    loop {
        let mut opts = async_nats::ConnectOptions::new()
            .name(&name)
            .connection_timeout(Duration::from_secs(2).min(cfg.connect_timeout))
            .request_timeout(Some(Duration::from_secs(2)))
            .max_reconnects(None)
            .subscription_capacity(routes::SUBSCRIPTION_CAPACITY)
            .event_callback(|event| async move {
                match event {
                    async_nats::Event::Connected => tracing::info!(%event, "NATS"),
                    _ => tracing::warn!(%event, "NATS"),
                }
            });
        if node {
            opts = opts.no_echo();
        }
        if !cfg.nats_discover {
            opts = opts.ignore_discovered_servers();
        }
        if let (Some(u), Some(p)) = (&cfg.nats_user, &cfg.nats_password) {
            opts = opts.user_and_password(u.clone(), p.clone());
        }
        if let Some(t) = &cfg.nats_token {
            opts = opts.token(t.clone());
        }
        if let Some(creds) = &cfg.nats_creds {
            opts = opts
                .credentials_file(creds)
                .await
                .map_err(|e| ClusterError::File(format!("nats_creds {}: {e}", creds.display())))?;
        }
        if let Some(ca) = &cfg.nats_cafile {
            opts = opts.add_root_certificates(ca.clone()).require_tls(true);
        }
        if let (Some(cert), Some(key)) = (&cfg.nats_certfile, &cfg.nats_keyfile) {
            opts = opts.add_client_certificate(cert.clone(), key.clone());
        }
        let urls: Vec<&str> = cfg.nats.iter().map(String::as_str).collect();
        let last = match opts.connect(urls.as_slice()).await {
            Ok(c) => return Ok(c),
            Err(e) => e.to_string(),
        };
        if Instant::now() >= deadline {
            return Err(ClusterError::Connect {
                servers,
                reason: last,
            });
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Makes (or opens, with the same options) the three buckets.
async fn open_buckets(
    cfg: &ClusterConfig,
    client: &async_nats::Client,
) -> Result<Buckets, ClusterError> {
    let js = jetstream::new(client.clone());
    let open = |what: &'static str| {
        let js = js.clone();
        let bucket = bucket_name(&cfg.prefix, what);
        let replicas = cfg.replicas;
        let deadline = Instant::now() + cfg.connect_timeout;
        async move {
            // A new cluster may still be electing its JetStream leader: try until the deadline.
            loop {
                match open_bucket(&js, &bucket, replicas).await {
                    Ok(store) => return Ok(store),
                    Err(e) if Instant::now() < deadline => {
                        tracing::debug!(bucket, error = %e, "bucket not ready yet");
                        tokio::time::sleep(Duration::from_millis(250)).await;
                    }
                    Err(e) => {
                        return Err(ClusterError::Bucket {
                            bucket,
                            reason: e.to_string(),
                        })
                    }
                }
            }
        }
    };
    Ok(Buckets {
        clients: open("clients").await?,
        nodes: open("nodes").await?,
        retained: open("retained").await?,
        wills: open("wills").await?,
        sessions: open("sessions").await?,
    })
}

/// Makes the bucket's stream as a KV bucket's (the client's own `create_key_value` first asks
/// for account details Debian's nats-server 2.9 does not give), then opens it.
async fn open_bucket(
    js: &jetstream::Context,
    bucket: &str,
    replicas: usize,
) -> Result<kv::Store, async_nats::Error> {
    use jetstream::stream::{Config, DiscardPolicy, StorageType};
    let config = Config {
        name: format!("KV_{bucket}"),
        subjects: vec![format!("$KV.{bucket}.>")],
        max_messages_per_subject: 1,
        storage: StorageType::File,
        num_replicas: replicas,
        allow_rollup: true,
        deny_delete: true,
        // Reads go to the leader, never to a replica that a partition cut off (NATS would
        // still route a direct get there, and it would go unanswered).
        allow_direct: false,
        discard: DiscardPolicy::New,
        ..Default::default()
    };
    js.get_or_create_stream(config).await?;
    Ok(js.get_key_value(bucket).await?)
}
