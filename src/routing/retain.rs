//! The retained-message store: one message per topic, in a topic-level tree so a wildcard
//! subscription walks only the branches it matches. Each message keeps who published it (for
//! `check_retain_source`); the store counts its payload bytes against `max_retained_bytes`.
//! Its limits are atomics, so a reload changes them without taking the lock.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use parking_lot::RwLock;

use crate::message::{Message, Publisher};

/// A stored retained message and its publisher (`None` for the broker's own, `$SYS`).
#[derive(Debug, Clone)]
pub struct Retained {
    /// The message.
    pub msg: Arc<Message>,
    /// Who published it.
    pub from: Option<Arc<Publisher>>,
}

/// What `RetainStore::set` did with a retained PUBLISH.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RetainOutcome {
    /// Stored, replacing any earlier message for the topic.
    Stored,
    /// An empty payload removed the topic's message (or there was none) [MQTT-3.3.1-10].
    Deleted,
    /// Not stored: the store holds `max_retained_messages` already.
    StoreFull,
    /// Not stored: it would take the store's payload over `max_retained_bytes`; any older
    /// message of the topic is deleted.
    BytesFull,
    /// Not stored: the payload is over `retained_payload_limit`; any older message of the
    /// topic is deleted.
    PayloadTooLarge,
}

impl RetainOutcome {
    /// The name used in logs.
    pub fn as_str(self) -> &'static str {
        match self {
            RetainOutcome::Stored => "stored",
            RetainOutcome::Deleted => "deleted",
            RetainOutcome::StoreFull => "max_retained_messages",
            RetainOutcome::BytesFull => "max_retained_bytes",
            RetainOutcome::PayloadTooLarge => "retained_payload_limit",
        }
    }
}

/// What a retained PUBLISH does to its topic, decided before the store is locked.
enum Change {
    /// Remove the topic's message, with this outcome (an empty payload, or one too large).
    Delete(RetainOutcome),
    /// Store this copy.
    Store(Retained),
}

#[derive(Default)]
struct Node {
    children: HashMap<Box<[u8]>, Node>,
    message: Option<Retained>,
}

impl Node {
    fn is_empty(&self) -> bool {
        self.children.is_empty() && self.message.is_none()
    }

    fn collect_all(&self, out: &mut Vec<Retained>, limit: usize) -> Walk {
        take(&self.message, out, limit)?;
        for child in self.children.values() {
            child.collect_all(out, limit)?;
        }
        Walk::Continue(())
    }
}

#[derive(Default)]
struct Tree {
    root: Node,
    len: usize,
    /// Payload bytes of every stored message.
    bytes: usize,
}

/// Retained messages by topic, with the configured limits (0 = unlimited).
#[derive(Default)]
pub struct RetainStore {
    tree: RwLock<Tree>,
    max_messages: AtomicUsize,
    payload_limit: AtomicUsize,
    max_bytes: AtomicUsize,
}

impl RetainStore {
    /// An empty store; a limit of 0 means unlimited.
    pub fn new(max_messages: usize, payload_limit: usize, max_bytes: usize) -> Self {
        let store = RetainStore::default();
        store.set_limits(max_messages, payload_limit, max_bytes);
        store
    }

    /// Changes the limits for messages stored from now on; what is stored stays.
    pub fn set_limits(&self, max_messages: usize, payload_limit: usize, max_bytes: usize) {
        self.max_messages.store(max_messages, Ordering::Relaxed);
        self.payload_limit.store(payload_limit, Ordering::Relaxed);
        self.max_bytes.store(max_bytes, Ordering::Relaxed);
    }

    /// Number of retained messages.
    pub fn len(&self) -> usize {
        self.tree.read().len
    }

    /// Payload bytes of all retained messages.
    pub fn bytes(&self) -> usize {
        self.tree.read().bytes
    }

    /// True if nothing is retained.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Stores, replaces or (for an empty payload) deletes the topic's retained message
    /// [MQTT-3.3.1-5, MQTT-3.3.1-7, MQTT-3.3.1-10, MQTT-3.3.1-11].
    pub fn set(&self, msg: &Message) -> RetainOutcome {
        self.set_then(msg, None, |_, _| ()).0
    }

    /// As `set`, then runs `then` with the outcome and the copy stored, if one was (the
    /// publisher writing it to disk and matching its subscribers) under the same
    /// lock as `subscribe_then` takes: a subscriber either finds the message stored and is
    /// not matched, or is matched and does not find it, never both (one copy, not two).
    pub fn set_then<R>(
        &self,
        msg: &Message,
        from: Option<&Arc<Publisher>>,
        then: impl FnOnce(RetainOutcome, Option<&Retained>) -> R,
    ) -> (RetainOutcome, R) {
        let payload_limit = self.payload_limit.load(Ordering::Relaxed);
        let change = if msg.payload.is_empty() {
            Change::Delete(RetainOutcome::Deleted)
        } else if payload_limit > 0 && msg.payload.len() > payload_limit {
            // [MQTT-3.3.1-7] the older message is discarded all the same: a newer value was
            // published, and serving the stale one would be worse than none.
            Change::Delete(RetainOutcome::PayloadTooLarge)
        } else {
            // Copied out of the read buffer (before the lock), so a small retained message
            // does not pin a large frame.
            Change::Store(Retained {
                msg: Arc::new(Message {
                    topic: Bytes::copy_from_slice(&msg.topic),
                    payload: Bytes::copy_from_slice(&msg.payload),
                    ..msg.clone()
                }),
                from: from.cloned(),
            })
        };
        let stored = match &change {
            Change::Store(r) => Some(r.clone()),
            Change::Delete(_) => None,
        };
        let mut tree = self.tree.write();
        let outcome = self.apply(&mut tree, &msg.topic, change);
        let stored = stored.filter(|_| outcome == RetainOutcome::Stored);
        (outcome, then(outcome, stored.as_ref()))
    }

    fn apply(&self, tree: &mut Tree, topic: &[u8], change: Change) -> RetainOutcome {
        let stored = match change {
            Change::Delete(outcome) => {
                tree.delete(topic);
                return outcome;
            }
            Change::Store(stored) => stored,
        };
        let max_messages = self.max_messages.load(Ordering::Relaxed);
        let max_bytes = self.max_bytes.load(Ordering::Relaxed);
        let full = max_messages > 0 && tree.len >= max_messages;
        let (len, bytes) = (tree.len, tree.bytes);
        let mut node = &mut tree.root;
        for level in topic.split(|&b| b == b'/') {
            node = node.children.entry(level.into()).or_default();
        }
        let old = node.message.as_ref().map_or(0, |r| r.msg.payload.len());
        let new = stored.msg.payload.len();
        let refused = if node.message.is_none() && full {
            Some(RetainOutcome::StoreFull)
        } else if max_bytes > 0 && bytes - old + new > max_bytes {
            Some(RetainOutcome::BytesFull)
        } else {
            None
        };
        if let Some(outcome) = refused {
            // Drop the older message (as for a payload too large) and undo the empty branch
            // the walk may have created.
            tree.delete(topic);
            return outcome;
        }
        let added = node.message.is_none();
        node.message = Some(stored);
        tree.len = len + usize::from(added);
        tree.bytes = bytes - old + new;
        RetainOutcome::Stored
    }

    /// Puts back a retained message read from the store at start (limits apply as to any).
    pub fn restore(&self, msg: &Message, from: Option<Arc<Publisher>>) -> RetainOutcome {
        self.set_then(msg, from.as_ref(), |_, _| ()).0
    }

    /// Every retained message whose topic matches `filter` (assumed valid); wildcards at the
    /// first level skip `$` topics [MQTT-4.7.2-1].
    pub fn matching(&self, filter: &str) -> Vec<Arc<Message>> {
        let found = self.subscribe_then(filter, usize::MAX, || ()).0;
        found.into_iter().map(|r| r.msg).collect()
    }

    /// Runs `first` (installing a route), then collects at most `limit` retained messages
    /// matching `filter`, under one lock (see `set_then`). True beside them if more matched.
    pub fn subscribe_then(
        &self,
        filter: &str,
        limit: usize,
        first: impl FnOnce(),
    ) -> (Vec<Retained>, bool) {
        let levels: Vec<&str> = filter.split('/').collect();
        let mut out = Vec::new();
        let tree = self.tree.read();
        first();
        let more = collect(&tree.root, &levels, true, &mut out, limit).is_break();
        (out, more)
    }
}

impl Tree {
    /// Removes the topic's message, if any, and prunes the branches left empty.
    fn delete(&mut self, topic: &[u8]) {
        let levels: Vec<&[u8]> = topic.split(|&b| b == b'/').collect();
        if let Some(removed) = remove_at(&mut self.root, &levels) {
            self.len -= 1;
            self.bytes -= removed.msg.payload.len();
        }
    }
}

/// Removes the message at `levels`, pruning empty nodes; the message if there was one.
fn remove_at(node: &mut Node, levels: &[&[u8]]) -> Option<Retained> {
    let Some((&level, rest)) = levels.split_first() else {
        return node.message.take();
    };
    let child = node.children.get_mut(level)?;
    let removed = remove_at(child, rest);
    if child.is_empty() {
        node.children.remove(level);
    }
    removed
}

/// Adds `message` to `out` unless it holds `limit` already: then stops the walk.
fn take(message: &Option<Retained>, out: &mut Vec<Retained>, limit: usize) -> Walk {
    if let Some(m) = message {
        if out.len() >= limit {
            return Walk::Break(());
        }
        out.push(m.clone());
    }
    Walk::Continue(())
}

/// Whether a walk goes on (`Break` once `limit` messages were found and one more matched).
type Walk = std::ops::ControlFlow<()>;

fn collect(
    node: &Node,
    levels: &[&str],
    root: bool,
    out: &mut Vec<Retained>,
    limit: usize,
) -> Walk {
    let Some((&level, rest)) = levels.split_first() else {
        return take(&node.message, out, limit);
    };
    let visible = |name: &[u8]| !(root && name.first() == Some(&b'$'));
    match level {
        "#" => {
            // "a/#" matches "a" itself too.
            if !root {
                take(&node.message, out, limit)?;
            }
            for (name, child) in &node.children {
                if visible(name) {
                    child.collect_all(out, limit)?;
                }
            }
        }
        "+" => {
            for (name, child) in &node.children {
                if visible(name) {
                    collect(child, rest, false, out, limit)?;
                }
            }
        }
        l => {
            if let Some(child) = node.children.get(l.as_bytes()) {
                collect(child, rest, false, out, limit)?;
            }
        }
    }
    Walk::Continue(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::message::QoS;

    fn msg(topic: &str, payload: &str) -> Message {
        Message {
            topic: Bytes::copy_from_slice(topic.as_bytes()),
            payload: Bytes::copy_from_slice(payload.as_bytes()),
            qos: QoS::AtLeastOnce,
            retain: true,
        }
    }

    fn topics(store: &RetainStore, filter: &str) -> Vec<String> {
        let mut t: Vec<String> = store
            .matching(filter)
            .iter()
            .map(|m| m.topic_str().to_owned())
            .collect();
        t.sort();
        t
    }

    #[test]
    fn set_replace_delete() {
        let s = RetainStore::new(0, 0, 0);
        assert_eq!(s.set(&msg("a/b", "1")), RetainOutcome::Stored);
        assert_eq!(s.set(&msg("a/b", "2")), RetainOutcome::Stored);
        assert_eq!(s.len(), 1);
        assert_eq!(&s.matching("a/b")[0].payload[..], b"2");
        // [MQTT-3.3.1-10], [MQTT-3.3.1-11]
        assert_eq!(s.set(&msg("a/b", "")), RetainOutcome::Deleted);
        assert!(s.is_empty());
        assert!(s.matching("#").is_empty());
        assert!(s.tree.read().root.is_empty(), "pruned");
    }

    #[test]
    fn wildcard_queries() {
        let s = RetainStore::new(0, 0, 0);
        for t in ["a", "a/b", "a/c", "a/b/c", "x/b", "$SYS/up", "/lead"] {
            s.set(&msg(t, "p"));
        }
        assert_eq!(
            topics(&s, "#"),
            ["/lead", "a", "a/b", "a/b/c", "a/c", "x/b"]
        );
        assert_eq!(topics(&s, "a/#"), ["a", "a/b", "a/b/c", "a/c"]);
        assert_eq!(topics(&s, "+/b"), ["a/b", "x/b"]);
        assert_eq!(topics(&s, "+"), ["a"]);
        assert_eq!(topics(&s, "$SYS/#"), ["$SYS/up"]);
        assert_eq!(topics(&s, "+/lead"), ["/lead"]);
        assert!(topics(&s, "a/b/c/d").is_empty());
    }

    #[test]
    fn limits() {
        let s = RetainStore::new(2, 4, 0);
        assert_eq!(s.set(&msg("a", "12345")), RetainOutcome::PayloadTooLarge);
        assert_eq!(s.set(&msg("a", "1")), RetainOutcome::Stored);
        assert_eq!(s.set(&msg("b", "1")), RetainOutcome::Stored);
        assert_eq!(s.set(&msg("c/d", "1")), RetainOutcome::StoreFull);
        assert_eq!(
            s.set(&msg("a", "2")),
            RetainOutcome::Stored,
            "replacing is allowed"
        );
        assert_eq!(s.len(), 2);
        assert_eq!(topics(&s, "#"), ["a", "b"]);
        // [MQTT-3.3.1-7] too large to keep, but newer: the old "a" goes.
        assert_eq!(s.set(&msg("a", "12345")), RetainOutcome::PayloadTooLarge);
        assert_eq!(topics(&s, "#"), ["b"]);
        assert_eq!(s.len(), 1);
    }

    #[test]
    fn the_byte_limit_refuses_new_topics_and_keeps_the_count() {
        let s = RetainStore::new(0, 0, 10);
        assert_eq!(s.set(&msg("a", "123456")), RetainOutcome::Stored);
        assert_eq!(s.set(&msg("b", "12345")), RetainOutcome::BytesFull);
        assert_eq!(s.set(&msg("b", "1234")), RetainOutcome::Stored);
        assert_eq!(s.bytes(), 10);
        assert_eq!(
            s.set(&msg("a", "12")),
            RetainOutcome::Stored,
            "smaller fits"
        );
        assert_eq!(s.bytes(), 6);
        // Growing a topic past the limit: the newer value is refused, the stale one goes.
        assert_eq!(s.set(&msg("a", "1234567")), RetainOutcome::BytesFull);
        assert_eq!((topics(&s, "#"), s.bytes()), (vec!["b".to_owned()], 4));
        assert_eq!(s.set(&msg("b", "")), RetainOutcome::Deleted);
        assert_eq!((s.len(), s.bytes()), (0, 0));
        s.set_limits(0, 0, 0);
        assert_eq!(
            s.set(&msg("c", "x".repeat(100).as_str())),
            RetainOutcome::Stored
        );
    }

    #[test]
    fn the_deepest_topic_allowed_is_walked_and_dropped_on_a_worker_sized_stack() {
        // The walks recurse once per level: `topic::MAX_LEVELS` keeps that well inside the
        // 2 MiB of a tokio worker, even in a debug build (4,096 levels overflow it there).
        let run = std::thread::Builder::new()
            .stack_size(2 << 20)
            .spawn(|| {
                let s = RetainStore::new(0, 0, 0);
                let topic = vec!["a"; crate::routing::topic::MAX_LEVELS].join("/");
                assert_eq!(s.set(&msg(&topic, "x")), RetainOutcome::Stored);
                assert_eq!(s.matching("#").len(), 1);
                assert_eq!(s.matching(&format!("{topic}/#")).len(), 1);
                assert_eq!(s.set(&msg(&topic, "")), RetainOutcome::Deleted);
                s.set(&msg(&topic, "x"));
                drop(s);
            })
            .expect("thread");
        assert!(run.join().is_ok());
    }

    #[test]
    fn a_limited_walk_stops_and_says_so() {
        let s = RetainStore::new(0, 0, 0);
        for t in ["a/1", "a/2", "a/3"] {
            s.set(&msg(t, "p"));
        }
        let (got, more) = s.subscribe_then("a/#", 2, || ());
        assert_eq!((got.len(), more), (2, true));
        let (got, more) = s.subscribe_then("a/+", 3, || ());
        assert_eq!((got.len(), more), (3, false));
        let (got, more) = s.subscribe_then("a/1", 0, || ());
        assert_eq!((got.len(), more), (0, true));
        let (got, more) = s.subscribe_then("b/#", 0, || ());
        assert!(got.is_empty() && !more);
    }

    #[test]
    fn stored_payload_is_copied() {
        let s = RetainStore::new(0, 0, 0);
        let m = msg("a", "xyz");
        s.set(&m);
        assert_ne!(s.matching("a")[0].payload.as_ptr(), m.payload.as_ptr());
    }
}
