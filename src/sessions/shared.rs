//! What every task of one broker shares: the configuration in force, the router, the session
//! registry, the counters, the auth policy, and the shutdown signal and task tracker. It lives
//! in the sessions layer, the lowest whose state it holds (the registry), so the door, the
//! client and the sessions all reach it downward.

use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::claims::ClientIds;
use super::mailbox::Mailbox;
use super::registry::Registry;
use crate::auth::Policy;
use crate::config::Config;
use crate::observability::metrics::Metrics;
use crate::observability::sys::{Gauges, SysSource};
use crate::routing::router::Router;
use crate::store::Store;

/// State shared by every task of one broker.
pub struct Shared {
    /// The configuration in force, swapped whole on reload (SIGHUP). A session keeps the one
    /// it was made with; a connection reads it at each use.
    pub config: Arc<ArcSwap<Config>>,
    /// Notified after every successful reload (the `$SYS` task re-reads its interval).
    pub reloaded: tokio::sync::Notify,
    /// Routes and retained messages.
    pub router: Router<Mailbox>,
    /// Durable state, with `[persistence]` on.
    pub store: Option<Store>,
    /// Sessions by client id.
    pub registry: Registry,
    /// Counters.
    pub metrics: Arc<Metrics>,
    /// Who may connect and which topics they may use; swapped whole on reload (SIGHUP).
    pub policy: ArcSwap<Policy>,
    /// Cancelled on shutdown (then every session is discarded, and kicks its connection).
    pub shutdown: CancellationToken,
    /// Every listener, connection and session task, so shutdown can wait for them.
    pub tracker: TaskTracker,
    /// The cluster's client-id registry, with `[cluster]`.
    pub cluster: Option<Arc<dyn ClientIds>>,
}

impl SysSource for Shared {
    fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    fn gauges(&self) -> Gauges {
        let (queued, inflight) = self.registry.backlogs();
        let retain = self.router.retain_store();
        Gauges {
            clients_total: self.registry.len(),
            retained: retain.len(),
            retained_bytes: retain.bytes(),
            subscriptions: self.router.route_count(),
            filters: self.router.filter_count(),
            queued,
            inflight,
        }
    }

    fn interval(&self) -> Duration {
        self.config.load().sys.sys_interval
    }

    fn reloaded(&self) -> &tokio::sync::Notify {
        &self.reloaded
    }

    fn shutdown(&self) -> &CancellationToken {
        &self.shutdown
    }

    fn publish(&self, msg: crate::message::Message) {
        self.router.publish(Arc::new(msg));
    }
}
