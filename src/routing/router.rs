//! The pub/sub router: routes from topic filters to sessions, the retained store, and publish.
//!
//! A shared object, not a task (see the crate doc): the publisher's own task matches
//! and fans out. Exact filters sit in a `DashMap`, wildcard filters in a trie behind a
//! `parking_lot::RwLock` (CPU-only critical sections, never held across `.await`). Route lists
//! are `Arc<Vec<Route>>` sorted by session: readers clone the `Arc` under the lock and send
//! unlocked; a subscribe edits the list in place (`Arc::make_mut`), copying it only while a
//! publisher holds it, so n subscribers to one filter cost O(n log n), not O(n²) copies.
//!
//! One rule makes retained messages exact without a router actor: a retained publish stores
//! the message and matches its subscribers under the retained store's write lock, and a
//! subscribe installs its route and reads the retained messages under its read lock. A new
//! subscriber therefore gets a concurrent retained message once, either from the store or
//! live, never both and never neither [MQTT-3.3.1-6]. Other publishes take no such lock.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use dashmap::DashMap;
use parking_lot::RwLock;

use crate::config::Config;
use crate::hooks::Hooks;
use crate::message::{Message, Publisher, QoS, SessionId};
use crate::observability::metrics::{DropReason, Metrics};
use crate::routing::remote::Remote;
use crate::routing::retain::{RetainOutcome, RetainStore, Retained};
use crate::routing::shared::{self, Form, Pick, ShareKey, SharedSubs};
use smallvec::SmallVec;

#[path = "arriving.rs"]
mod arriving;
#[path = "listing.rs"]
mod listing;
#[path = "redispatch.rs"]
mod redispatch;
use crate::routing::topic;
use crate::routing::trie::Trie;
use crate::store::{Op, Owed, Store, Wait};
pub use redispatch::Redispatched;

use super::route::{upsert, Routes};
pub use super::route::{Deferred, Delivery, Inbox, Offered, Published, Replicated, Route};

/// Routes and retained messages, shared by every connection and session; `I` is where a
/// route delivers.
pub struct Router<I> {
    exact: DashMap<Bytes, Routes<I>>,
    wild: RwLock<Trie<Routes<I>>>,
    /// Lets a publish skip the trie lock while there is no wildcard subscription.
    wild_count: AtomicUsize,
    /// Routes (one per session and filter), for the gauges.
    route_count: AtomicUsize,
    retain: RetainStore,
    /// Shared subscriptions' groups, apart from the routes above.
    shared: SharedSubs<I>,
    metrics: Arc<Metrics>,
    /// The store, with `[persistence]` on.
    store: Option<Store>,
    upgrade_outgoing_qos: AtomicBool,
    /// The embedding application's hooks, if it gave any (`Broker::builder`).
    hooks: Option<Arc<dyn Hooks>>,
    /// The other nodes of this broker's cluster, with `[cluster]`.
    remote: Option<Arc<dyn Remote>>,
}

/// Adds `route` to `list`, or replaces the session's route there; true if it was added.
fn add_route<I>(list: &mut Routes<I>, route: Route<I>) -> bool {
    upsert(Arc::make_mut(list), route)
}

/// Removes `session`'s route from `list`; true if it had one.
fn remove_route<I>(list: &mut Routes<I>, session: SessionId) -> bool {
    match list.binary_search_by_key(&session, |r| r.session) {
        Ok(i) => {
            Arc::make_mut(list).remove(i);
            true
        }
        Err(_) => false,
    }
}

/// What a topic matched: the exact filter's routes and each matching wildcard filter's.
struct Matched<I> {
    exact: Option<Routes<I>>,
    wild: Vec<Routes<I>>,
}

/// Retained messages a subscribe found, at most the limit it was given.
#[derive(Debug, Default)]
pub struct RetainedBatch {
    /// The messages, with their publishers.
    pub messages: Vec<Retained>,
    /// True if more matched than the limit let through.
    pub more: bool,
}

impl<I: Inbox> Router<I> {
    /// An empty router.
    pub fn new(retain: RetainStore, metrics: Arc<Metrics>) -> Self {
        Router {
            exact: DashMap::new(),
            wild: RwLock::new(Trie::new()),
            wild_count: AtomicUsize::new(0),
            route_count: AtomicUsize::new(0),
            retain,
            shared: SharedSubs::default(),
            metrics,
            store: None,
            upgrade_outgoing_qos: AtomicBool::new(false),
            hooks: None,
            remote: None,
        }
    }

    /// The router of a cluster's node: what happens here is told to the other nodes.
    pub fn with_remote(mut self, remote: Option<Arc<dyn Remote>>) -> Self {
        self.remote = remote;
        self
    }

    /// The router of a broker embedded with `hooks`: every other task reads them here.
    pub fn with_hooks(mut self, hooks: Option<Arc<dyn Hooks>>) -> Self {
        self.hooks = hooks;
        self
    }

    /// The embedding application's hooks, if any.
    #[inline]
    pub fn hooks(&self) -> Option<&dyn Hooks> {
        self.hooks.as_deref()
    }

    /// The other nodes of its cluster, if any.
    pub fn remote(&self) -> Option<&dyn Remote> {
        self.remote.as_deref()
    }

    /// Counts (and logs) a dropped message, and tells the hooks: `client_id` lost it.
    pub fn dropped(&self, reason: DropReason, client_id: &str, msg: &Message) {
        self.metrics.dropped(reason, client_id, msg.topic_str());
        if let Some(h) = &self.hooks {
            h.on_message_dropped(client_id, msg, reason);
        }
    }

    /// Writes retained messages (and, later, messages owed to persistent sessions) to `store`.
    pub fn with_store(mut self, store: Store) -> Self {
        self.store = Some(store);
        self
    }

    /// Applies the settings the router follows (`upgrade_outgoing_qos`, the retained limits):
    /// at start and on every reload.
    pub fn configure(&self, config: &Config) {
        let upgrade = config.mqtt.upgrade_outgoing_qos;
        self.upgrade_outgoing_qos.store(upgrade, Ordering::Relaxed);
        self.shared
            .set_strategy(config.mqtt.shared_subscription_strategy);
        let r = &config.retain;
        self.retain.set_limits(
            r.max_retained_messages,
            r.retained_payload_limit,
            r.max_retained_bytes,
        );
    }

    /// Adds or replaces (same session) the route for `filter` (assumed valid) [MQTT-3.8.4-3],
    /// then reads at most `retained_limit` retained messages matching it (see the module doc).
    /// A shared subscription joins its group instead, and gets no retained messages.
    pub fn subscribe(&self, filter: &str, route: Route<I>, retained_limit: usize) -> RetainedBatch {
        if let Form::Shared { filter: inner, .. } = shared::form(filter) {
            let (added, first) = self.shared.add(filter, inner, route);
            if added {
                self.route_count.fetch_add(1, Ordering::Relaxed);
                if let (Some(remote), true) = (&self.remote, first) {
                    remote.shared_interest(filter, inner, true);
                }
            }
            return RetainedBatch::default();
        }
        let (messages, more) = self
            .retain
            .subscribe_then(filter, retained_limit, || self.add(filter, route));
        RetainedBatch { messages, more }
    }

    fn add(&self, filter: &str, route: Route<I>) {
        let (added, first) = if topic::is_wildcard(filter) {
            let mut trie = self.wild.write();
            let list = trie.get_or_insert_with(filter, Routes::default);
            let added = add_route(list, route);
            let first = list.len() == 1;
            self.wild_count.store(trie.len(), Ordering::Release);
            (added, first)
        } else {
            let mut entry = self
                .exact
                .entry(Bytes::copy_from_slice(filter.as_bytes()))
                .or_default();
            let added = add_route(entry.value_mut(), route);
            (added, entry.value().len() == 1)
        };
        if added {
            self.route_count.fetch_add(1, Ordering::Relaxed);
            if let (Some(remote), true) = (&self.remote, first) {
                remote.interest(filter, true);
            }
        }
    }

    /// Removes `session`'s route for exactly `filter` [MQTT-3.10.4-1]; true if there was one.
    pub fn unsubscribe(&self, filter: &str, session: SessionId) -> bool {
        let removed = self.remove(filter, session);
        if removed {
            self.route_count.fetch_sub(1, Ordering::Relaxed);
        }
        removed
    }

    fn remove(&self, filter: &str, session: SessionId) -> bool {
        if let Form::Shared { filter: inner, .. } = shared::form(filter) {
            let (removed, last) = self.shared.remove(filter, inner, session);
            if let (Some(remote), true) = (&self.remote, last) {
                remote.shared_interest(filter, inner, false);
            }
            return removed;
        }
        let (removed, last) = if topic::is_wildcard(filter) {
            let mut trie = self.wild.write();
            let Some(list) = trie.get_mut(filter) else {
                return false;
            };
            let removed = remove_route(list, session);
            let last = list.is_empty();
            if last {
                trie.remove(filter);
            }
            self.wild_count.store(trie.len(), Ordering::Release);
            (removed, last)
        } else {
            let key = filter.as_bytes();
            let removed = self
                .exact
                .get_mut(key)
                .is_some_and(|mut entry| remove_route(entry.value_mut(), session));
            let last = self
                .exact
                .remove_if(key, |_, list| list.is_empty())
                .is_some();
            (removed, last)
        };
        if let (Some(remote), true, true) = (&self.remote, removed, last) {
            remote.interest(filter, false);
        }
        removed
    }

    /// Publishes one of the broker's own messages (`$SYS`); see `publish_from`.
    pub fn publish(&self, msg: Arc<Message>) -> Published {
        self.publish_from(msg, None, None)
    }

    /// Stores a retained message if flagged (with its publisher), then hands `msg` once to
    /// every matching session, at the highest QoS among that session's matching filters
    /// [MQTT-3.3.5-1]. With `congested`, adds to it the mailbox of every session whose backlog
    /// passed its high mark, so the caller can pause its publisher (see `backlog.rs`).
    pub fn publish_from(
        &self,
        msg: Arc<Message>,
        from: Option<&Arc<Publisher>>,
        congested: Option<&mut Vec<Arc<I>>>,
    ) -> Published {
        self.route_message(msg, from, congested, None)
    }

    /// As `publish_from`, but the matching sessions are only planned: the message is stored
    /// (retained, and for persistent sessions) now, and handed out by `deliver_deferred` once
    /// `Published::lsn` is durable. An inbound QoS 2 message of a stored session is routed so:
    /// a crash before its records are on disk then delivers it to nobody, and the publisher's
    /// resend is its first delivery, not a second one.
    pub fn publish_deferred(
        &self,
        msg: Arc<Message>,
        from: Option<&Arc<Publisher>>,
    ) -> (Published, Deferred<I>) {
        let mut later = Deferred(Vec::new());
        let out = self.route_message(msg, from, None, Some(&mut later));
        (out, later)
    }

    fn route_message(
        &self,
        msg: Arc<Message>,
        from: Option<&Arc<Publisher>>,
        congested: Option<&mut Vec<Arc<I>>>,
        deferred: Option<&mut Deferred<I>>,
    ) -> Published {
        // What a client, a will or a bridge published here goes to the other nodes too; the
        // broker's own `$SYS` (no publisher) is this node's alone.
        let remote = self.remote.as_ref().filter(|_| from.is_some());
        let replicated = match (remote, from, msg.retain) {
            (Some(remote), Some(p), true) => Replicated(remote.retained(&msg, Some(p))),
            _ => Replicated::default(),
        };
        let mut out_lsn = 0;
        let matched = if msg.retain {
            let (outcome, (matched, lsn)) = self.retain.set_then(&msg, from, |outcome, stored| {
                // Submitted under the store's lock, so the disk sees the topic's changes in
                // the order memory does. The broker's own values (`$SYS`, no publisher) are
                // made afresh after a start, so they never reach the disk.
                let lsn = self
                    .store
                    .as_ref()
                    .filter(|_| from.is_some())
                    .map_or(0, |store| match (outcome, stored) {
                        (RetainOutcome::Stored, Some(r)) => store.submit(Op::Retain {
                            msg: r.msg.clone(),
                            from: r.from.clone(),
                        }),
                        (RetainOutcome::StoreFull, _) => 0,
                        _ => store.submit(Op::Unretain {
                            topic: msg.topic.clone(),
                        }),
                    });
                (self.matched(&msg.topic), lsn)
            });
            out_lsn = lsn;
            if !matches!(outcome, RetainOutcome::Stored | RetainOutcome::Deleted) {
                self.metrics
                    .retained_refused(msg.topic_str(), outcome.as_str());
            }
            matched
        } else {
            self.matched(&msg.topic)
        };
        let Matched { exact, wild } = matched;
        let mut out = Published {
            wait: Wait::from(out_lsn),
            from_bridge: from.and_then(|p| p.bridge_session),
            replicated,
            ..Published::default()
        };
        if self.shared.is_empty() {
            // Without shared subscriptions the fan-out is monomorphized with nothing chained.
            self.fan_out_matched(
                &msg,
                exact.as_ref(),
                &wild,
                std::iter::empty(),
                &mut out,
                congested,
                deferred,
            );
            if let Some(remote) = remote {
                remote.forward(&msg, &[]);
            }
            return out;
        }
        // One member of each matching group, each delivery tagged with its group.
        let pick = Pick {
            topic: &msg.topic,
            publisher: from.map(|p| &*p.client_id),
        };
        self.shared.with_picks(pick, |picked| {
            let groups = picked.iter().map(|&(r, key)| (r, Some(key)));
            self.fan_out_matched(
                &msg,
                exact.as_ref(),
                &wild,
                groups,
                &mut out,
                congested,
                deferred,
            );
            if let Some(remote) = remote {
                let served: SmallVec<[&ShareKey; 1]> = picked.iter().map(|&(_, k)| k).collect();
                remote.forward(&msg, &served);
            }
        });
        out
    }

    /// Fans `msg` out to the matched routes (one delivery per session, at its highest grant)
    /// and then to `groups`, the shared subscriptions' picks.
    #[allow(clippy::too_many_arguments)]
    fn fan_out_matched<'a>(
        &self,
        msg: &Arc<Message>,
        exact: Option<&'a Routes<I>>,
        wild: &'a [Routes<I>],
        groups: impl Iterator<Item = (&'a Route<I>, Option<&'a ShareKey>)> + Clone,
        out: &mut Published,
        congested: Option<&mut Vec<Arc<I>>>,
        deferred: Option<&mut Deferred<I>>,
    ) {
        let plain = |r| (r, None);
        match (exact, wild.len()) {
            (None, 0) if groups.clone().next().is_none() => {}
            (None, 0) => self.fan_out(msg, groups, out, congested, deferred),
            (Some(list), 0) => {
                let routes = list.iter().map(plain).chain(groups);
                self.fan_out(msg, routes, out, congested, deferred)
            }
            (None, 1) => {
                let routes = wild[0].iter().map(plain).chain(groups);
                self.fan_out(msg, routes, out, congested, deferred)
            }
            (exact, _) => {
                // Several filters matched: one delivery per session, at its highest grant.
                let mut all: Vec<&Route<I>> = exact
                    .into_iter()
                    .chain(wild.iter())
                    .flat_map(|l| l.iter())
                    .collect();
                all.sort_unstable_by(|a, b| a.session.cmp(&b.session).then(b.qos.cmp(&a.qos)));
                all.dedup_by_key(|r| r.session);
                let routes = all.into_iter().map(plain).chain(groups);
                self.fan_out(msg, routes, out, congested, deferred);
            }
        }
    }

    #[inline]
    fn matched(&self, topic: &[u8]) -> Matched<I> {
        let exact = self.exact.get(topic).map(|e| e.value().clone());
        let mut wild = Vec::new();
        if self.wild_count.load(Ordering::Acquire) > 0 {
            self.wild
                .read()
                .for_each_match(topic, |l| wild.push(l.clone()));
        }
        Matched { exact, wild }
    }

    /// Hands `msg` to each route, a group's pick with the group's key; never back to the
    /// bridge that published it.
    fn fan_out<'a>(
        &self,
        msg: &Arc<Message>,
        routes: impl Iterator<Item = (&'a Route<I>, Option<&'a ShareKey>)> + Clone,
        out: &mut Published,
        mut congested: Option<&mut Vec<Arc<I>>>,
        mut deferred: Option<&mut Deferred<I>>,
    ) {
        let bridge = out.from_bridge;
        let routes = routes.filter(move |(r, _)| Some(r.session) != bridge);
        let upgrade = self.upgrade_outgoing_qos.load(Ordering::Relaxed);
        let qos_for = |route: &Route<I>| {
            if upgrade {
                route.qos
            } else {
                msg.qos.min(route.qos)
            }
        };
        // Persistent sessions owed it at QoS 1 or 2 get it on disk first, stored once, in the
        // same batch as the publisher's own records; its acknowledgement waits for them, or
        // for every one of those sessions to be done with it (see `store::owed`).
        let mut stored = 0;
        let mut owed = None;
        if let Some(store) = &self.store {
            let mut lazy = deferred.is_none();
            let sessions: Vec<(u64, QoS)> = routes
                .clone()
                .map(|(r, _)| r)
                .filter(|r| r.stored.is_some() && qos_for(r) != QoS::AtMostOnce)
                .filter_map(|r| {
                    lazy &= r.mailbox.keeps_up();
                    Some((r.stored?, qos_for(r)))
                })
                .collect();
            if !sessions.is_empty() {
                stored = store.new_message_id();
                let count = sessions.len();
                let op = Op::Message {
                    id: stored,
                    msg: msg.clone(),
                    sessions,
                    retain: false,
                };
                // Owed only to sessions that keep up: they will likely have acknowledged it
                // before its batch is cut, and then it is never written.
                let lsn = if lazy {
                    store.submit_lazy(op)
                } else {
                    store.submit(op)
                };
                if deferred.is_some() {
                    // Nobody gets it before it is on disk, so nobody settles it sooner.
                    out.wait = std::mem::take(&mut out.wait).firmly(lsn);
                } else {
                    let o = Owed::new(count);
                    out.wait.message(lsn, o.clone());
                    owed = Some(o);
                }
            }
        }
        for (route, share) in routes {
            let qos = qos_for(route);
            let id = match route.stored {
                Some(_) if stored > 0 && qos != QoS::AtMostOnce => stored,
                _ => 0,
            };
            let delivery = Delivery {
                msg: msg.clone(),
                qos,
                stored: id,
                owed: owed.clone().filter(|_| id > 0),
                share: share.cloned(),
            };
            match deferred.as_deref_mut() {
                Some(later) => later.0.push((route.clone(), delivery)),
                None => self.offer(route, delivery, msg, out, congested.as_deref_mut()),
            }
        }
    }

    /// Hands one delivery to its route's session, and counts what happened.
    fn offer(
        &self,
        route: &Route<I>,
        delivery: Delivery,
        msg: &Arc<Message>,
        out: &mut Published,
        congested: Option<&mut Vec<Arc<I>>>,
    ) {
        let id = delivery.stored;
        let owed = delivery.owed.clone();
        let share = delivery.share.clone();
        let offered = route.mailbox.offer(delivery);
        if let (Some(key), Offered::Full | Offered::Gone) = (&share, offered) {
            // A group's pick that cannot take it: another member may.
            return self.pass_on(key, route, offered, id, owed, msg);
        }
        self.offered(route, offered, id, owed, msg, out, congested);
    }

    /// Counts what an offer did; a delivery a session's limit dropped is done with on disk.
    #[allow(clippy::too_many_arguments)]
    fn offered(
        &self,
        route: &Route<I>,
        offered: Offered,
        id: u64,
        owed: Option<Arc<Owed>>,
        msg: &Message,
        out: &mut Published,
        congested: Option<&mut Vec<Arc<I>>>,
    ) {
        if let (Some(sid), true) = (route.stored, id > 0 && matches!(offered, Offered::Full)) {
            // Dropped by the session's limit: it owes the session nothing on disk either. A
            // session that is going keeps its entry: if it is ending, its end deletes the
            // entry with the rest; if the broker is stopping, a restart delivers it.
            if let Some(store) = &self.store {
                store.done(sid, id, owed.as_deref());
            }
        }
        match offered {
            Offered::Taken { congested: now } => {
                out.delivered += 1;
                if now {
                    if let Some(c) = congested {
                        c.push(route.mailbox.clone());
                    }
                }
            }
            Offered::Full => {
                out.dropped += 1;
                self.dropped(DropReason::MailboxFull, &route.client_id, msg);
            }
            Offered::Gone => {}
        }
    }

    /// Hands out deliveries `publish_deferred` planned, now that their records are durable.
    pub fn deliver_deferred(&self, deferred: Deferred<I>) -> Published {
        let mut out = Published::default();
        for (route, delivery) in deferred.0 {
            let msg = delivery.msg.clone();
            self.offer(&route, delivery, &msg, &mut out, None);
        }
        out
    }
}

#[cfg(test)]
#[path = "router_tests.rs"]
mod tests;
