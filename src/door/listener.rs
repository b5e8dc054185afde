//! The accept loop of one `[[listener]]`: `max_connections`, `TCP_NODELAY`, a short linger
//! after each connection, and one spawned connection task per socket (nothing slow ever runs in
//! the loop itself).

use std::net::SocketAddr;
use std::sync::Arc;
use std::task::Poll;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio_rustls::TlsAcceptor;
use tracing::{debug, warn};

use crate::client;
use crate::client::protocol::Identity;
use crate::config::ListenerConfig;
use crate::door::websocket;
use crate::observability::metrics::{ListenerStats, Metrics, OpenSocket};
use crate::sessions::Shared;

/// How a listener serves its new connections: the TLS acceptor (for TLS listeners) and the
/// identity rule, built from its `[[listener]]` and swapped whole on reload, so certificates
/// rotate without a restart while open connections keep theirs.
pub struct Door {
    /// `None` for plain TCP.
    pub tls: Option<TlsAcceptor>,
    /// The client certificate's common name is the user name.
    pub use_identity_as_username: bool,
    /// MQTT over WebSocket (`protocol = "websockets"`), not bare on the stream.
    pub websockets: bool,
}

impl Door {
    /// The transport's name in `/metrics`: "tcp", "tls", "ws" or "wss".
    pub fn transport(cfg: &ListenerConfig) -> &'static str {
        let tls = cfg.certfile.is_some() && cfg.keyfile.is_some();
        match (cfg.protocol == "websockets", tls) {
            (false, false) => "tcp",
            (false, true) => "tls",
            (true, false) => "ws",
            (true, true) => "wss",
        }
    }

    /// Reads the listener's certificate, key, CA and CRL files.
    pub fn new(cfg: &ListenerConfig) -> Result<Door, crate::door::tls::TlsError> {
        Ok(Door {
            tls: crate::door::tls::acceptor(cfg)?,
            use_identity_as_username: cfg.use_identity_as_username,
            websockets: cfg.protocol == "websockets",
        })
    }
}

/// Pause after an accept error (such as running out of file descriptors) before retrying.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// How long the loop keeps looking for the next connection after one arrives before it lets the
/// worker sleep. Connections come in bursts (a fleet reconnecting), and waking a sleeping worker
/// costs each connecting peer's side an interrupt (a VM exit under virtualisation): with the
/// linger, a burst of 15,000 connects made ~150 such wake-ups instead of ~4,500. Costs at most
/// this much polling per burst.
const ACCEPT_LINGER: Duration = Duration::from_micros(50);

/// One accept attempt that never waits: `None` when no connection is queued.
async fn try_accept(listener: &TcpListener) -> Option<std::io::Result<(TcpStream, SocketAddr)>> {
    std::future::poll_fn(|cx| match listener.poll_accept(cx) {
        Poll::Ready(r) => Poll::Ready(Some(r)),
        Poll::Pending => Poll::Ready(None),
    })
    .await
}

/// Accepts sockets until shutdown, serving each with what `door` holds at that moment.
pub async fn accept_loop(
    listener: TcpListener,
    cfg: ListenerConfig,
    door: Arc<ArcSwap<Door>>,
    shared: Arc<Shared>,
    stats: Arc<ListenerStats>,
) {
    let limit = (cfg.max_connections > 0).then(|| Arc::new(Semaphore::new(cfg.max_connections)));
    let shutdown = shared.shutdown.clone();
    let mut linger_until: Option<Instant> = None;
    loop {
        let accepted = match linger_until {
            Some(until) if Instant::now() < until && !shutdown.is_cancelled() => {
                match try_accept(&listener).await {
                    Some(r) => r,
                    None => {
                        // Lets every other task run and the runtime poll its sockets without
                        // blocking, then looks again.
                        tokio::task::yield_now().await;
                        continue;
                    }
                }
            }
            _ => tokio::select! {
                _ = shutdown.cancelled() => break,
                r = listener.accept() => r,
            },
        };
        linger_until = accepted.is_ok().then(|| Instant::now() + ACCEPT_LINGER);
        let (socket, peer) = match accepted {
            Ok(s) => s,
            Err(e) => {
                warn!(error = %e, "accept failed; backing off");
                tokio::time::sleep(ACCEPT_BACKOFF).await;
                continue;
            }
        };
        let permit = match &limit {
            Some(sem) => match sem.clone().try_acquire_owned() {
                Ok(p) => Some(p),
                Err(_) => {
                    Metrics::incr(&shared.metrics.connections_refused);
                    debug!(%peer, max_connections = cfg.max_connections, "connection refused: listener full");
                    continue;
                }
            },
            None => None,
        };
        Metrics::incr(&shared.metrics.connections_accepted);
        let slot = client::Slot {
            open: OpenSocket::new(&stats),
            permit,
        };
        // Batching is the writer's job; Nagle would add latency to every small ack. Linux
        // sockets inherit it from the listener (see `broker::listen`).
        #[cfg(not(target_os = "linux"))]
        if let Err(e) = socket.set_nodelay(true) {
            debug!(%peer, error = %e, "could not set TCP_NODELAY");
        }
        let shared = shared.clone();
        let tracker = shared.tracker.clone();
        // Two separate spawns: one future holding both the plain and the TLS paths would make
        // every plain connection's task as large as a TLS one (rustls state is kilobytes).
        let door = door.load_full();
        // The TLS handshake and the WebSocket upgrade run in the connection's own task, both
        // within connect_timeout of the accept.
        let deadline = tokio::time::Instant::now() + shared.config.load().mqtt.connect_timeout;
        match (door.tls.clone(), door.websockets) {
            (None, false) => {
                tracker.spawn(client::serve(
                    socket,
                    peer,
                    shared,
                    Identity::FromConnect,
                    slot,
                ));
            }
            (None, true) => {
                tracker.spawn(websocket::serve(
                    socket,
                    peer,
                    shared,
                    Identity::FromConnect,
                    slot,
                    deadline,
                ));
            }
            (Some(acceptor), websockets) => {
                let use_identity = door.use_identity_as_username;
                tracker.spawn(async move {
                    // Boxed, as the WebSocket upgrade: the handshake's state would otherwise
                    // stay in the task for the connection's whole life.
                    let handshake =
                        Box::pin(tokio::time::timeout_at(deadline, acceptor.accept(socket)));
                    match handshake.await {
                        Ok(Ok(stream)) => {
                            let identity = if use_identity {
                                match crate::door::tls::identity(stream.get_ref().1) {
                                    Some(name) => Identity::Certificate(name),
                                    None => Identity::Unusable,
                                }
                            } else {
                                Identity::FromConnect
                            };
                            if websockets {
                                websocket::serve(stream, peer, shared, identity, slot, deadline)
                                    .await;
                            } else {
                                client::serve(stream, peer, shared, identity, slot).await;
                            }
                        }
                        Ok(Err(e)) => debug!(%peer, error = %e, "TLS handshake failed"),
                        Err(_) => debug!(%peer, "TLS handshake timed out"),
                    }
                });
            }
        }
    }
}
