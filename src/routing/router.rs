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
use crate::message::{Message, Publisher, QoS, SessionId};
use crate::observability::metrics::{DropReason, Metrics};
use crate::routing::retain::{RetainOutcome, RetainStore, Retained};
use crate::routing::topic;
use crate::routing::trie::Trie;
use crate::store::{Op, Owed, Store, Wait};

use super::route::Routes;
pub use super::route::{Deferred, Delivery, Inbox, Offered, Published, Route};

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
    metrics: Arc<Metrics>,
    /// The store, with `[persistence]` on.
    store: Option<Store>,
    upgrade_outgoing_qos: AtomicBool,
}

/// Adds `route` to `list`, or replaces the session's route there; true if it was added.
fn add_route<I>(list: &mut Routes<I>, route: Route<I>) -> bool {
    let at = list.binary_search_by_key(&route.session, |r| r.session);
    let list = Arc::make_mut(list);
    match at {
        Ok(i) => {
            list[i] = route;
            false
        }
        Err(i) => {
            list.insert(i, route);
            true
        }
    }
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
            metrics,
            store: None,
            upgrade_outgoing_qos: AtomicBool::new(false),
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
        let r = &config.retain;
        self.retain.set_limits(
            r.max_retained_messages,
            r.retained_payload_limit,
            r.max_retained_bytes,
        );
    }

    /// Adds or replaces (same session) the route for `filter` (assumed valid) [MQTT-3.8.4-3],
    /// then reads at most `retained_limit` retained messages matching it (see the module doc).
    pub fn subscribe(&self, filter: &str, route: Route<I>, retained_limit: usize) -> RetainedBatch {
        let (messages, more) = self
            .retain
            .subscribe_then(filter, retained_limit, || self.add(filter, route));
        RetainedBatch { messages, more }
    }

    fn add(&self, filter: &str, route: Route<I>) {
        let added = if topic::is_wildcard(filter) {
            let mut trie = self.wild.write();
            let added = add_route(trie.get_or_insert_with(filter, Routes::default), route);
            self.wild_count.store(trie.len(), Ordering::Release);
            added
        } else {
            let mut entry = self
                .exact
                .entry(Bytes::copy_from_slice(filter.as_bytes()))
                .or_default();
            add_route(entry.value_mut(), route)
        };
        if added {
            self.route_count.fetch_add(1, Ordering::Relaxed);
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
        if topic::is_wildcard(filter) {
            let mut trie = self.wild.write();
            let Some(list) = trie.get_mut(filter) else {
                return false;
            };
            let removed = remove_route(list, session);
            if list.is_empty() {
                trie.remove(filter);
            }
            self.wild_count.store(trie.len(), Ordering::Release);
            removed
        } else {
            let key = filter.as_bytes();
            let removed = self
                .exact
                .get_mut(key)
                .is_some_and(|mut entry| remove_route(entry.value_mut(), session));
            self.exact.remove_if(key, |_, list| list.is_empty());
            removed
        }
    }

    /// The retained store.
    pub fn retain_store(&self) -> &RetainStore {
        &self.retain
    }

    /// Number of routes: every session's subscriptions added up.
    pub fn route_count(&self) -> usize {
        self.route_count.load(Ordering::Relaxed)
    }

    /// Calls `visit` with every route and its filter: exact filters first, then wildcards.
    /// Each is visited under its own shard or trie lock, so `visit` must not subscribe.
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
    }

    /// Number of distinct filters with routes.
    pub fn filter_count(&self) -> usize {
        self.exact.len() + self.wild_count.load(Ordering::Acquire)
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
            ..Published::default()
        };
        match (exact, wild.len()) {
            (None, 0) => {}
            (Some(list), 0) => self.fan_out(&msg, list.iter(), &mut out, congested, deferred),
            (None, 1) => self.fan_out(&msg, wild[0].iter(), &mut out, congested, deferred),
            (exact, _) => {
                // Several filters matched: one delivery per session, at its highest grant.
                let mut all: Vec<&Route<I>> = exact
                    .iter()
                    .chain(wild.iter())
                    .flat_map(|l| l.iter())
                    .collect();
                all.sort_unstable_by(|a, b| a.session.cmp(&b.session).then(b.qos.cmp(&a.qos)));
                all.dedup_by_key(|r| r.session);
                self.fan_out(&msg, all.into_iter(), &mut out, congested, deferred);
            }
        }
        out
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

    fn fan_out<'a>(
        &self,
        msg: &Arc<Message>,
        routes: impl Iterator<Item = &'a Route<I>> + Clone,
        out: &mut Published,
        mut congested: Option<&mut Vec<Arc<I>>>,
        mut deferred: Option<&mut Deferred<I>>,
    ) {
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
        for route in routes {
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
        msg: &Message,
        out: &mut Published,
        congested: Option<&mut Vec<Arc<I>>>,
    ) {
        let id = delivery.stored;
        let owed = delivery.owed.clone();
        let offered = route.mailbox.offer(delivery);
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
                self.metrics
                    .dropped(DropReason::MailboxFull, &route.client_id, msg.topic_str());
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
mod tests {
    use super::*;
    use parking_lot::Mutex;

    /// An inbox of `cap` deliveries.
    struct TestInbox {
        cap: usize,
        got: Mutex<std::collections::VecDeque<Delivery>>,
    }

    impl Inbox for TestInbox {
        fn offer(&self, delivery: Delivery) -> Offered {
            let mut got = self.got.lock();
            if got.len() >= self.cap {
                return Offered::Full;
            }
            got.push_back(delivery);
            Offered::Taken { congested: false }
        }

        fn keeps_up(&self) -> bool {
            true
        }
    }

    fn router() -> Router<TestInbox> {
        Router::new(RetainStore::default(), Arc::new(Metrics::default()))
    }

    fn route(session: SessionId, qos: QoS, cap: usize) -> (Route<TestInbox>, Arc<TestInbox>) {
        let mailbox = Arc::new(TestInbox {
            cap,
            got: Mutex::default(),
        });
        (
            Route {
                session,
                client_id: format!("c{session}").into(),
                qos,
                stored: None,
                mailbox: mailbox.clone(),
            },
            mailbox,
        )
    }

    /// The next delivery in an inbox.
    fn next(rx: &TestInbox) -> Option<Delivery> {
        rx.got.lock().pop_front()
    }

    fn msg(topic: &str, qos: QoS) -> Arc<Message> {
        Arc::new(Message {
            topic: Bytes::copy_from_slice(topic.as_bytes()),
            payload: Bytes::from_static(b"p"),
            qos,
            retain: false,
        })
    }

    #[test]
    fn overlapping_filters_deliver_once_at_highest_qos() {
        // [MQTT-3.3.5-1]
        let r = router();
        let (a0, rx) = route(1, QoS::AtMostOnce, 8);
        let a2 = Route {
            qos: QoS::ExactlyOnce,
            ..a0.clone()
        };
        let a1 = Route {
            qos: QoS::AtLeastOnce,
            ..a0.clone()
        };
        r.subscribe("a/#", a0, 0);
        r.subscribe("a/b", a2, 0);
        r.subscribe("+/b", a1, 0);
        let out = r.publish(msg("a/b", QoS::ExactlyOnce));
        assert_eq!((1, 0, 0), (out.delivered, out.dropped, out.wait.lsn),);
        let d = next(&rx).expect("one delivery");
        assert_eq!(d.qos, QoS::ExactlyOnce);
        assert!(next(&rx).is_none());
    }

    #[test]
    fn qos_is_downgraded_to_the_grant() {
        // [MQTT-3.8.4-6]
        let r = router();
        let (a, rx) = route(1, QoS::AtLeastOnce, 8);
        r.subscribe("t", a, 0);
        r.publish(msg("t", QoS::ExactlyOnce));
        r.publish(msg("t", QoS::AtMostOnce));
        assert_eq!(next(&rx).map(|d| d.qos), Some(QoS::AtLeastOnce));
        assert_eq!(next(&rx).map(|d| d.qos), Some(QoS::AtMostOnce));
    }

    #[test]
    fn resubscribe_replaces_and_unsubscribe_is_exact() {
        // [MQTT-3.8.4-3], [MQTT-3.10.4-1]
        let r = router();
        let (a, rx) = route(1, QoS::AtMostOnce, 8);
        r.subscribe("a/+", a.clone(), 0);
        r.subscribe(
            "a/+",
            Route {
                qos: QoS::AtLeastOnce,
                ..a.clone()
            },
            0,
        );
        r.subscribe("a/b", a, 0);
        assert_eq!(r.filter_count(), 2);
        assert!(!r.unsubscribe("a/#", 1));
        assert!(r.unsubscribe("a/b", 1));
        assert!(!r.unsubscribe("a/b", 1));
        r.publish(msg("a/b", QoS::AtLeastOnce));
        assert_eq!(next(&rx).map(|d| d.qos), Some(QoS::AtLeastOnce));
        assert!(next(&rx).is_none(), "one route only");
        assert!(r.unsubscribe("a/+", 1));
        assert_eq!(r.filter_count(), 0);
        assert_eq!(r.publish(msg("a/b", QoS::AtLeastOnce)).delivered, 0);
    }

    #[test]
    fn full_mailbox_is_counted_not_blocking() {
        let metrics = Arc::new(Metrics::default());
        let r: Router<TestInbox> = Router::new(RetainStore::default(), metrics.clone());
        let (a, _rx) = route(1, QoS::AtMostOnce, 1);
        let (b, rxb) = route(2, QoS::AtMostOnce, 8);
        r.subscribe("t", a, 0);
        r.subscribe("t", b, 0);
        for _ in 0..3 {
            r.publish(msg("t", QoS::AtMostOnce));
        }
        assert_eq!(metrics.snapshot().dropped_mailbox_full, 2);
        let mut got = 0;
        while next(&rxb).is_some() {
            got += 1;
        }
        assert_eq!(got, 3, "the other subscriber is unaffected");
    }

    #[test]
    fn dollar_topics_and_wildcards() {
        // [MQTT-4.7.2-1]
        let r = router();
        let (a, rx) = route(1, QoS::AtMostOnce, 8);
        r.subscribe("#", a, 0);
        assert_eq!(r.publish(msg("$SYS/x", QoS::AtMostOnce)).delivered, 0);
        assert_eq!(r.publish(msg("x", QoS::AtMostOnce)).delivered, 1);
        assert!(next(&rx).is_some());
    }
}
