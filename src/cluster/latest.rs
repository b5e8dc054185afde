//! Changes waiting for a bucket, kept as the newest per key. A bucket holds state (a will, a
//! session's record, a topic's retained message), not events: a key that changes again
//! before it was written needs writing once, as it is now. So a storm of connects or of
//! retained publishes grows this by one entry per distinct key, not per change, and the
//! newest state of a key is never the one dropped; past `limit` distinct keys a new key is
//! refused (the caller counts it), while a key already waiting still takes its newer state.

use std::collections::{HashMap, VecDeque};
use std::hash::Hash;

use parking_lot::Mutex;
use tokio::sync::Notify;

/// Writes a bucket task has in flight at once: one round trip to JetStream is then shared
/// by this many keys, instead of each waiting for the one before it.
pub(super) const WRITES_AT_ONCE: usize = 64;

/// A bounded set of keys waiting for their write, each with its newest state, in the order
/// the keys first arrived.
pub(super) struct Latest<K, V> {
    inner: Mutex<Waiting<K, V>>,
    ready: Notify,
    limit: usize,
}

struct Waiting<K, V> {
    order: VecDeque<K>,
    values: HashMap<K, V>,
}

impl<K: Hash + Eq + Clone, V> Latest<K, V> {
    /// Holds at most `limit` keys.
    pub(super) fn new(limit: usize) -> Latest<K, V> {
        Latest {
            inner: Mutex::new(Waiting {
                order: VecDeque::new(),
                values: HashMap::new(),
            }),
            ready: Notify::new(),
            limit,
        }
    }

    /// Sets `key`'s waiting state to what `merge` makes of the one waiting (if any) and the
    /// new one; false if the key was not waiting and the set is full.
    pub(super) fn put(&self, key: K, new: V, merge: impl FnOnce(Option<V>, V) -> V) -> bool {
        {
            let mut w = self.inner.lock();
            match w.values.remove(&key) {
                Some(old) => {
                    let v = merge(Some(old), new);
                    w.values.insert(key, v);
                }
                None if w.values.len() >= self.limit => return false,
                None => {
                    let v = merge(None, new);
                    w.order.push_back(key.clone());
                    w.values.insert(key, v);
                }
            }
        }
        self.ready.notify_one();
        true
    }

    /// The oldest waiting keys (at least one, at most `max`) and their newest states, taken
    /// out. The keys of one batch differ, so their writes may go together; a key changed
    /// meanwhile is in a later batch, which the caller writes after this one.
    pub(super) async fn next_batch(&self, max: usize) -> Vec<(K, V)> {
        loop {
            let notified = self.ready.notified();
            let batch = self.take(max);
            if !batch.is_empty() {
                return batch;
            }
            notified.await;
        }
    }

    fn take(&self, max: usize) -> Vec<(K, V)> {
        let mut w = self.inner.lock();
        let mut out = Vec::new();
        while out.len() < max {
            let Some(key) = w.order.pop_front() else {
                break;
            };
            if let Some(v) = w.values.remove(&key) {
                out.push((key, v));
            }
        }
        out
    }

    /// How many keys wait.
    #[cfg(test)]
    fn len(&self) -> usize {
        self.inner.lock().values.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn newest(_: Option<u32>, new: u32) -> u32 {
        new
    }

    #[tokio::test]
    async fn a_key_changed_twice_is_written_once_as_it_is_now() {
        let l = Latest::new(2);
        assert!(l.put("a", 1, newest));
        assert!(l.put("b", 1, newest));
        assert!(l.put("a", 2, newest));
        assert_eq!(l.len(), 2);
        // Full: a new key is refused, one waiting still changes.
        assert!(!l.put("c", 1, newest));
        assert!(l.put("b", 3, newest));
        assert_eq!(l.next_batch(8).await, vec![("a", 2), ("b", 3)]);
        assert!(l.put("c", 1, newest));
        assert!(l.put("d", 1, newest));
        assert_eq!(l.next_batch(1).await, vec![("c", 1)]);
        assert_eq!(l.next_batch(1).await, vec![("d", 1)]);
        assert_eq!(l.len(), 0);
    }

    #[tokio::test]
    async fn next_waits_for_a_put() {
        let l = std::sync::Arc::new(Latest::new(4));
        let waiter = tokio::spawn({
            let l = l.clone();
            async move { l.next_batch(8).await }
        });
        tokio::task::yield_now().await;
        assert!(l.put("k", 7, |old, new| old.unwrap_or(0) + new));
        let got = tokio::time::timeout(std::time::Duration::from_secs(5), waiter)
            .await
            .expect("woken")
            .expect("joined");
        assert_eq!(got, vec![("k", 7)]);
    }
}
