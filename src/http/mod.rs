//! The HTTP server (`[http]`): Prometheus metrics, health checks, the JSON API under
//! `/api/v1` and the dashboard at `/`, on axum. It sits beside the door, over the sessions
//! and the router, which it reads through `Shared`; only the broker layer imports it.
//!
//! - `access`: who may ask: HTTP basic auth against a Mosquitto password file, or, without
//!   one, loopback clients only.
//! - `prometheus`: `/metrics`, every counter and gauge in the exposition format.
//! - `api`: the JSON API; it asks session actors through their mailbox (`SessionCmd::Admin`),
//!   never locks them, and publishes through the router like any client.
//! - `dashboard`: the page at `/`, embedded in the binary, which reads only the JSON API.
//!
//! A broker without `[http]` binds nothing and spawns nothing here.

mod access;
mod api;
mod dashboard;
mod prometheus;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use axum::Router;
use tokio::net::TcpListener;

use crate::auth::{AuthError, PasswordFile};
use crate::config::HttpConfig;
use crate::sessions::Shared;

pub use access::Users;

/// Why the HTTP server cannot start.
#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    /// The address cannot be bound.
    #[error("http.bind: cannot listen on {addr}: {source}")]
    Bind {
        /// The configured address.
        addr: SocketAddr,
        /// The OS error.
        source: std::io::Error,
    },
    /// The password file cannot be used.
    #[error("http.password_file: {0}")]
    Users(#[from] AuthError),
}

/// What every request handler sees.
pub(crate) struct HttpState {
    shared: Arc<Shared>,
    users: Arc<Users>,
    /// Listeners serving (set by the broker once they are).
    ready: Arc<AtomicBool>,
    started: Instant,
}

/// A bound, not yet serving HTTP server.
pub struct Http {
    listener: TcpListener,
    state: Arc<HttpState>,
}

/// The server's handles the broker keeps: readiness, and the users for reloads.
#[derive(Clone)]
pub struct HttpHandle {
    /// Set once every listener serves; `/health/ready` answers 200 only then.
    pub ready: Arc<AtomicBool>,
    /// The password file in force, swapped on reload.
    pub users: Arc<Users>,
}

impl Http {
    /// Binds `[http]` if configured, with its password file read.
    pub async fn bind(cfg: &HttpConfig, shared: &Arc<Shared>) -> Result<Option<Http>, HttpError> {
        let Some(addr) = cfg.bind else {
            return Ok(None);
        };
        let users = Arc::new(Users::new(load_users(cfg)?));
        let listener = TcpListener::bind(addr)
            .await
            .map_err(|source| HttpError::Bind { addr, source })?;
        let state = Arc::new(HttpState {
            shared: shared.clone(),
            users,
            ready: Arc::new(AtomicBool::new(false)),
            started: Instant::now(),
        });
        Ok(Some(Http { listener, state }))
    }

    /// The address actually bound.
    pub fn local_addr(&self) -> Option<SocketAddr> {
        self.listener.local_addr().ok()
    }

    /// Readiness and users, for the broker to keep.
    pub fn handle(&self) -> HttpHandle {
        HttpHandle {
            ready: self.state.ready.clone(),
            users: self.state.users.clone(),
        }
    }

    /// Serves until the broker shuts down.
    pub async fn serve(self) {
        let state = self.state;
        let shutdown = state.shared.shutdown.clone();
        let app = Router::new()
            .route("/health/live", get(|| async { "ok" }))
            .route("/health/ready", get(ready))
            .route("/metrics", get(prometheus::metrics))
            .merge(api::routes())
            .merge(dashboard::routes())
            .layer(axum::middleware::from_fn_with_state(
                state.clone(),
                access::check,
            ))
            .with_state(state);
        if let Ok(addr) = self.listener.local_addr() {
            tracing::info!(%addr, "http listening");
        }
        let served = axum::serve(
            self.listener,
            app.into_make_service_with_connect_info::<SocketAddr>(),
        )
        .with_graceful_shutdown(async move { shutdown.cancelled().await })
        .await;
        if let Err(e) = served {
            tracing::warn!(error = %e, "http server stopped");
        }
    }
}

/// Reads `[http] password_file`, if set.
pub fn load_users(cfg: &HttpConfig) -> Result<Option<PasswordFile>, AuthError> {
    cfg.password_file
        .as_deref()
        .map(PasswordFile::load)
        .transpose()
}

/// `/health/ready`: 200 once the listeners serve (the store recovered before them), 503
/// before, while stopping, and once the store failed.
async fn ready(State(state): State<Arc<HttpState>>) -> (StatusCode, &'static str) {
    let shared = &state.shared;
    let store_ok = shared.store.as_ref().is_none_or(|s| s.failed().is_none());
    if state.ready.load(Ordering::Acquire) && !shared.shutdown.is_cancelled() && store_ok {
        (StatusCode::OK, "ready")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "not ready")
    }
}
