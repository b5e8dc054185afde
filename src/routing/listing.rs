//! What the router holds, read for the gauges, `$SYS`, the HTTP API and the cluster: the
//! retained store, how many routes and filters, and every route. A child of `router`.

use std::sync::atomic::Ordering;

use super::{Inbox, Route, Router};
use crate::routing::retain::RetainStore;

impl<I: Inbox> Router<I> {
    /// The retained store.
    pub fn retain_store(&self) -> &RetainStore {
        &self.retain
    }

    /// Number of routes: every session's subscriptions added up.
    pub fn route_count(&self) -> usize {
        self.route_count.load(Ordering::Relaxed)
    }

    /// Calls `visit` with every route and its filter: exact filters first, then wildcards,
    /// then shared subscriptions (under their `$share/` filter). Each is visited under its own
    /// shard or trie lock, so `visit` must not subscribe.
    pub fn for_each_route(&self, mut visit: impl FnMut(&str, &Route<I>)) {
        for entry in self.exact.iter() {
            let filter = String::from_utf8_lossy(entry.key());
            for route in entry.value().iter() {
                visit(&filter, route);
            }
        }
        self.wild.read().for_each(|filter, routes| {
            for route in routes.iter() {
                visit(filter, route);
            }
        });
        self.shared.for_each(visit);
    }

    /// Number of distinct filters with routes.
    pub fn filter_count(&self) -> usize {
        self.exact.len() + self.wild_count.load(Ordering::Acquire)
    }
}
