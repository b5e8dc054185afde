//! The top: `Broker` binds the listeners, makes the state every task shares, spawns the
//! accept loops and the `$SYS` task, and runs until told to stop; `reload` puts a re-read
//! configuration in force. `Broker::builder` is how an application embedding Tern gives it
//! hooks. Nothing below imports this folder.

pub mod reload;

pub use reload::Reloader;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::{TcpListener, TcpSocket};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use arc_swap::ArcSwap;

use crate::auth::{AuthError, Policy};
use crate::bridge::Bridges;
use crate::cluster::Cluster;
use crate::config::{Config, ListenerConfig, SyncMode};
use crate::door::listener::{self, Door};
use crate::hooks::Hooks;
use crate::http::{Http, HttpHandle};
use crate::observability::metrics::{ListenerStats, Metrics};
use crate::routing::retain::RetainStore;
use crate::routing::router::Router;
use crate::sessions::registry::Registry;
use crate::sessions::Shared;
use crate::store::{Store, SyncPolicy};

/// Why the broker could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// A listener address could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The configured address.
        addr: SocketAddr,
        /// The OS error.
        source: std::io::Error,
    },
    /// The password or ACL file cannot be used.
    #[error("{0}")]
    Auth(AuthError),
    /// A TLS listener's certificate, key or CA file cannot be used.
    #[error("{0}")]
    Tls(#[from] crate::door::tls::TlsError),
    /// `memory_limit` is set but this program does not count its heap.
    #[error("{0}")]
    Memory(#[from] crate::observability::memory::NotCounting),
    /// The store cannot be opened (locked, unreadable, corrupt).
    #[error("persistence: {0}")]
    Store(#[from] crate::store::StoreError),
    /// The HTTP server cannot start.
    #[error("{0}")]
    Http(#[from] crate::http::HttpError),
    /// A bridge's TLS files cannot be used.
    #[error(transparent)]
    Bridge(#[from] crate::bridge::BridgeError),
    /// `[cluster]` is set and the cluster cannot be joined.
    #[error(transparent)]
    Cluster(#[from] crate::cluster::ClusterError),
}

/// A bound, not yet running broker.
pub struct Broker {
    shared: Arc<Shared>,
    listeners: Vec<(TcpListener, ListenerConfig, Arc<ListenerStats>)>,
    /// Each listener's TLS setup for new connections, in listener order; swapped on reload.
    doors: Doors,
    /// The HTTP server, with `[http] bind`.
    http: Option<Http>,
    http_handle: Option<HttpHandle>,
    /// `[[bridge]]`, started by `run`.
    bridges: Bridges,
}

/// Every listener's door, in listener order.
pub type Doors = Arc<Vec<Arc<ArcSwap<Door>>>>;

/// How long `run` waits for connections and sessions to finish after shutdown starts.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// A broker to be bound: its configuration and, when it is embedded, the application's hooks.
pub struct Builder {
    config: Config,
    hooks: Option<Arc<dyn Hooks>>,
}

impl Builder {
    /// Calls `hooks` at every client event (see [`crate::hooks`]); the caller may keep a
    /// clone to read what its hooks gathered.
    pub fn hooks(mut self, hooks: Arc<dyn Hooks>) -> Builder {
        self.hooks = Some(hooks);
        self
    }

    /// Binds every configured listener.
    pub async fn bind(self) -> Result<Broker, StartError> {
        Broker::bind_with(self.config, self.hooks).await
    }
}

impl Broker {
    /// A broker for `config`, to be given hooks and bound.
    pub fn builder(config: Config) -> Builder {
        Builder {
            config,
            hooks: None,
        }
    }

    /// Binds every configured listener (a broker with no hooks).
    pub async fn bind(config: Config) -> Result<Broker, StartError> {
        Broker::bind_with(config, None).await
    }

    async fn bind_with(
        config: Config,
        hooks: Option<Arc<dyn Hooks>>,
    ) -> Result<Broker, StartError> {
        crate::observability::memory::start(config.mqtt.memory_limit)?;
        let (store, recovered) = open_store(&config)?;
        let metrics = Arc::new(Metrics::default());
        let mut listeners = Vec::with_capacity(config.listener.len());
        let mut doors = Vec::with_capacity(config.listener.len());
        for l in &config.listener {
            doors.push(Arc::new(ArcSwap::from_pointee(Door::new(l)?)));
            let socket = listen(l.bind).map_err(|source| StartError::Bind {
                addr: l.bind,
                source,
            })?;
            let bound = socket.local_addr().map_or(l.bind, |a| a);
            let stats = metrics.listener(bound.to_string(), Door::transport(l));
            listeners.push((socket, l.clone(), stats));
        }
        let cluster = match &config.cluster {
            Some(c) => Some(Cluster::connect(c, metrics.clone()).await?),
            None => None,
        };
        let mut router = Router::new(RetainStore::default(), metrics.clone())
            .with_hooks(hooks)
            .with_remote(cluster.as_ref().map(|c| c.remote()));
        router.configure(&config);
        if let Some(store) = &store {
            router = router.with_store(store.clone());
        }
        // In a cluster the retained messages are the cluster's (read from its bucket below),
        // not what this node's disk held when it stopped.
        if let (Some(recovered), None) = (&recovered, &cluster) {
            for (msg, from) in &recovered.retained {
                router
                    .retain_store()
                    .restore(msg, from.clone().map(Arc::new));
            }
        }
        let policy = Policy::load(&config.auth).map_err(StartError::Auth)?;
        let shared = Arc::new(Shared {
            router,
            store,
            registry: Registry::new(),
            metrics,
            policy: ArcSwap::from_pointee(policy),
            shutdown: CancellationToken::new(),
            tracker: TaskTracker::new(),
            config: Arc::new(ArcSwap::from_pointee(config)),
            reloaded: tokio::sync::Notify::new(),
            cluster: cluster
                .clone()
                .map(|c| c as Arc<dyn crate::sessions::claims::ClientIds>),
        });
        if let Some(recovered) = recovered {
            for session in recovered.sessions {
                shared.registry.restore(&shared, session);
            }
        }
        if let Some(cluster) = &cluster {
            cluster.start(&shared).await?;
        }
        let http_config = shared.config.load().http.clone();
        let http = Http::bind(&http_config, &shared).await?;
        let http_handle = http.as_ref().map(Http::handle);
        let bridges = Bridges::prepare(&shared.config.load())?;
        Ok(Broker {
            shared,
            listeners,
            doors: Arc::new(doors),
            http,
            http_handle,
            bridges,
        })
    }

    /// The addresses actually bound, in listener order (useful with port 0).
    pub fn local_addrs(&self) -> Vec<SocketAddr> {
        self.listeners
            .iter()
            .filter_map(|(l, _, _)| l.local_addr().ok())
            .collect()
    }

    /// The HTTP server's address, with `[http] bind`.
    pub fn http_addr(&self) -> Option<SocketAddr> {
        self.http.as_ref().and_then(Http::local_addr)
    }

    /// A handle that reloads the configuration (and the files it names) while the broker runs.
    pub fn reloader(&self) -> Reloader {
        Reloader::new(
            self.shared.clone(),
            self.doors.clone(),
            self.http_handle.clone(),
        )
    }

    /// The broker's counters.
    pub fn metrics(&self) -> Arc<Metrics> {
        self.shared.metrics.clone()
    }

    /// Serves until `shutdown` completes, then closes every connection and session and waits
    /// (at most a few seconds) for them to finish.
    pub async fn run(self, shutdown: impl Future<Output = ()>) {
        let shared = self.shared;
        self.bridges.start(&shared).await;
        for ((socket, cfg, stats), door) in self.listeners.into_iter().zip(self.doors.iter()) {
            if let Ok(addr) = socket.local_addr() {
                tracing::info!(%addr, "listening");
            }
            let door = door.clone();
            shared.tracker.spawn(listener::accept_loop(
                socket,
                cfg,
                door,
                shared.clone(),
                stats,
            ));
        }
        shared
            .tracker
            .spawn(crate::observability::sys::run(shared.clone()));
        if let Some(http) = self.http {
            shared.tracker.spawn(http.serve());
        }
        if let Some(h) = &self.http_handle {
            h.ready.store(true, std::sync::atomic::Ordering::Release);
        }
        shutdown.await;
        tracing::info!("shutting down");
        shared.shutdown.cancel();
        shared.registry.discard_all();
        shared.tracker.close();
        if tokio::time::timeout(SHUTDOWN_GRACE, shared.tracker.wait())
            .await
            .is_err()
        {
            tracing::warn!("some tasks did not finish within the shutdown grace period");
        }
        if let Some(store) = shared.store.clone() {
            // Everything submitted is written and synced before the process goes.
            let _ = tokio::task::spawn_blocking(move || store.close()).await;
        }
    }

    /// Completes with the reason if the store fails (a write or sync error): from then on
    /// nothing more is acknowledged, and the program should stop. Never completes without a
    /// store.
    pub fn store_failure(&self) -> impl Future<Output = String> + Send + 'static {
        let store = self.shared.store.clone();
        async move {
            let Some(store) = store else {
                return std::future::pending().await;
            };
            let mut durable = store.durable();
            loop {
                if let Some(reason) = store.failed() {
                    return reason;
                }
                if durable.changed().await.is_err() {
                    return store.failed().unwrap_or_else(|| "the store stopped".into());
                }
            }
        }
    }
}

/// Opens the store if `[persistence]` is on, and reads back what it holds.
fn open_store(
    config: &Config,
) -> Result<(Option<Store>, Option<crate::store::Recovered>), StartError> {
    let p = &config.persistence;
    if !p.persistence {
        return Ok((None, None));
    }
    let sync = match p.sync {
        SyncMode::Always => SyncPolicy::Always,
        SyncMode::Interval => SyncPolicy::Interval(p.sync_interval),
        SyncMode::Never => SyncPolicy::Never,
    };
    let (store, recovered) = Store::open(&p.persistence_location, sync)?;
    tracing::info!(
        dir = %p.persistence_location.display(),
        sessions = recovered.sessions.len(),
        retained = recovered.retained.len(),
        "store opened"
    );
    Ok((Some(store), Some(recovered)))
}

/// Pending connections the kernel queues for one listener before refusing more.
const LISTEN_BACKLOG: u32 = 1024;

/// A listening socket as `TcpListener::bind` makes one (SO_REUSEADDR on Unix), plus
/// TCP_NODELAY and, on Linux, delayed ACKs. Linux passes both on to every accepted socket, so
/// no system call per connection sets them; on other systems the accept loop sets NODELAY.
fn listen(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = match addr {
        SocketAddr::V4(_) => TcpSocket::new_v4()?,
        SocketAddr::V6(_) => TcpSocket::new_v6()?,
    };
    #[cfg(unix)]
    socket.set_reuseaddr(true)?;
    socket.set_nodelay(true)?;
    socket.bind(addr)?;
    let l = socket.listen(LISTEN_BACKLOG)?;
    // The ACK of a client's CONNECT can ride on the CONNACK instead of going out as a packet of
    // its own: one packet less per connection, for both ends. Accepted sockets inherit the
    // delayed-ACK mode, which `listen` resets, so it is set after.
    #[cfg(target_os = "linux")]
    socket2::SockRef::from(&l).set_tcp_quickack(false)?;
    Ok(l)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Linux passes these options from the listener to every accepted socket.
    #[cfg(target_os = "linux")]
    #[tokio::test]
    async fn accepted_sockets_inherit_nodelay_and_delayed_acks() {
        let listener = listen("127.0.0.1:0".parse().expect("address")).expect("listen");
        let addr = listener.local_addr().expect("address");
        let _client = tokio::net::TcpStream::connect(addr).await.expect("connect");
        let (accepted, _) = listener.accept().await.expect("accept");
        assert!(accepted.nodelay().expect("getsockopt"), "TCP_NODELAY");
        let quickack = socket2::SockRef::from(&accepted)
            .tcp_quickack()
            .expect("getsockopt");
        assert!(!quickack, "so the CONNECT's ACK can ride on the CONNACK");
    }
}
