//! Shared subscriptions: `$share/{group}/{filter}` and emqttd's `$queue/{filter}` (one group
//! that every `$queue` subscriber joins). A group is its name and its filter: each message
//! matching the filter goes to one member of each group, chosen by
//! `[mqtt] shared_subscription_strategy` among the members that keep up (connected, backlog
//! under its mark, not stuck); only when none does, to the strategy's own pick, whose queue
//! then holds it (dropped, counted, only at its limit).
//!
//! Groups live apart from the ordinary routes, in a trie of their own behind a count the
//! publish path reads once, so a broker without shared subscriptions pays one atomic load
//! per publish. A delivery made for a group carries the group's key (the filter as
//! subscribed), so a member that leaves can hand its unacknowledged messages of that group to
//! another member (`Router::redispatch`).

use std::hash::{Hash, Hasher};
use std::sync::atomic::{AtomicU32, AtomicU64, AtomicU8, AtomicUsize, Ordering};
use std::sync::Arc;

use parking_lot::RwLock;
use smallvec::SmallVec;

use crate::config::ShareStrategy;
use crate::message::SessionId;
use crate::routing::route::{upsert, Inbox, Route};
use crate::routing::trie::Trie;

/// What a subscription filter is, as far as sharing goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Form<'a> {
    /// An ordinary filter.
    Plain,
    /// A shared subscription: `group` shares `filter`.
    Shared {
        /// The group name (`$queue` for `$queue/`).
        group: &'a str,
        /// The filter inside the prefix.
        filter: &'a str,
    },
    /// `$share/` with an empty group, a group with `+` or `#`, or no filter.
    Invalid,
}

/// The group every `$queue/` subscriber joins.
pub const QUEUE_GROUP: &str = "$queue";

/// Reads `filter`'s sharing form; the inner filter's own rules are the caller's to check.
pub fn form(filter: &str) -> Form<'_> {
    if let Some(rest) = filter.strip_prefix("$share/") {
        let Some((group, inner)) = rest.split_once('/') else {
            return Form::Invalid;
        };
        if group.is_empty() || group.contains(['+', '#']) || inner.is_empty() {
            return Form::Invalid;
        }
        return Form::Shared {
            group,
            filter: inner,
        };
    }
    match filter.strip_prefix("$queue/") {
        Some("") => Form::Invalid,
        Some(inner) => Form::Shared {
            group: QUEUE_GROUP,
            filter: inner,
        },
        None => Form::Plain,
    }
}

/// The filter a subscription reads: the one inside a shared prefix, or the filter itself.
pub fn inner_filter(filter: &str) -> Option<&str> {
    match form(filter) {
        Form::Plain => Some(filter),
        Form::Shared { filter, .. } => Some(filter),
        Form::Invalid => None,
    }
}

/// A group's key as deliveries carry it: the filter as subscribed (`$share/g/a/+`). A thin
/// pointer, so every queued message pays 8 bytes for it, not 16.
pub type ShareKey = Arc<String>;

/// The members one publish picked, borrowed from the groups: most topics match at most one
/// group, kept inline.
pub type Picked<'a, I> = SmallVec<[(&'a Route<I>, &'a ShareKey); 1]>;

/// One group on one filter.
struct Group<I> {
    key: ShareKey,
    /// Sorted by session; never empty while the group exists.
    members: Vec<Route<I>>,
    /// The round-robin turn: the member whose turn it is.
    next: AtomicUsize,
    /// Messages the member whose turn it is has taken in this turn.
    run: AtomicU32,
    /// The sticky member's session, 0 before the first pick.
    sticky: AtomicU64,
}

/// Every shared subscription: groups by inner filter.
pub struct SharedSubs<I> {
    trie: RwLock<Trie<Vec<Group<I>>>>,
    /// Members of all groups; 0 lets a publish skip the trie.
    members: AtomicUsize,
    strategy: AtomicU8,
}

impl<I> Default for SharedSubs<I> {
    fn default() -> Self {
        SharedSubs {
            trie: RwLock::new(Trie::new()),
            members: AtomicUsize::new(0),
            strategy: AtomicU8::new(ShareStrategy::RoundRobin as u8),
        }
    }
}

/// What a publish needs to pick members: the topic and who published it.
#[derive(Clone, Copy)]
pub struct Pick<'a> {
    /// The message's topic.
    pub topic: &'a [u8],
    /// The publisher's client id (`hash_clientid`); `None` for the broker's own messages.
    pub publisher: Option<&'a str>,
}

fn hash_of(v: impl Hash) -> usize {
    let mut h = rustc_hash::FxHasher::default();
    v.hash(&mut h);
    h.finish() as usize
}

impl<I: Inbox> SharedSubs<I> {
    /// Sets the strategy (at start and on reload).
    pub fn set_strategy(&self, strategy: ShareStrategy) {
        self.strategy.store(strategy as u8, Ordering::Relaxed);
    }

    fn strategy(&self) -> ShareStrategy {
        ShareStrategy::from_u8(self.strategy.load(Ordering::Relaxed))
    }

    /// True if no group has a member.
    pub fn is_empty(&self) -> bool {
        self.members.load(Ordering::Acquire) == 0
    }

    /// Adds `route` to group `group` of `filter`, or replaces the session's route there;
    /// `key` is the filter as subscribed. True if it was added, and beside it true if it is
    /// the group's first member here.
    pub fn add(&self, key: &str, filter: &str, route: Route<I>) -> (bool, bool) {
        let mut trie = self.trie.write();
        let groups = trie.get_or_insert_with(filter, Vec::new);
        let at = match groups.iter().position(|g| g.key.as_str() == key) {
            Some(at) => at,
            None => {
                groups.push(Group {
                    key: Arc::new(key.to_owned()),
                    members: Vec::new(),
                    next: AtomicUsize::new(0),
                    run: AtomicU32::new(0),
                    sticky: AtomicU64::new(0),
                });
                groups.len() - 1
            }
        };
        let added = upsert(&mut groups[at].members, route);
        if added {
            self.members.fetch_add(1, Ordering::Release);
        }
        (added, groups[at].members.len() == 1)
    }

    /// Removes `session` from the group `key` of `filter`; true if it was a member, and
    /// beside it true if it was the group's last member here.
    pub fn remove(&self, key: &str, filter: &str, session: SessionId) -> (bool, bool) {
        let mut trie = self.trie.write();
        let Some(groups) = trie.get_mut(filter) else {
            return (false, false);
        };
        let Some(at) = groups.iter().position(|g| g.key.as_str() == key) else {
            return (false, false);
        };
        let members = &mut groups[at].members;
        let Ok(i) = members.binary_search_by_key(&session, |r| r.session) else {
            return (false, false);
        };
        members.remove(i);
        let last = members.is_empty();
        if last {
            groups.swap_remove(at);
        }
        if groups.is_empty() {
            trie.remove(filter);
        }
        self.members.fetch_sub(1, Ordering::Release);
        (true, last)
    }

    /// Picks one member of every group whose filter matches `pick.topic`, with its group's key,
    /// and calls `then` with them, under the groups' read lock: the picks are borrowed, not
    /// cloned. `then` may call `pick_other` (a recursive read), never `add` or `remove`.
    pub fn with_picks<R>(&self, pick: Pick<'_>, then: impl FnOnce(&Picked<'_, I>) -> R) -> R {
        let strategy = self.strategy();
        let trie = self.trie.read();
        let mut picked = Picked::new();
        trie.for_each_match(pick.topic, |groups| {
            for g in groups {
                if let Some(r) = choose(g, strategy, pick, None) {
                    picked.push((r, &g.key));
                }
            }
        });
        then(&picked)
    }

    /// A member of group `key` other than `except`, for a message that member leaves
    /// behind, with the group's key; with `keeping_up`, only one that keeps up.
    pub fn pick_other(
        &self,
        key: &str,
        pick: Pick<'_>,
        except: SessionId,
        keeping_up: bool,
    ) -> Option<(Route<I>, ShareKey)> {
        let filter = inner_filter(key)?;
        // Recursive: a publish that holds the read lock (`with_picks`) may pass a message on,
        // and a plain read would wait behind a waiting writer that waits for the publish.
        let trie = self.trie.read_recursive();
        let g = trie.get(filter)?.iter().find(|g| g.key.as_str() == key)?;
        let r = choose(g, self.strategy(), pick, Some(except))?;
        (!keeping_up || r.mailbox.keeps_up()).then(|| (r.clone(), g.key.clone()))
    }

    /// Calls `visit` with every member and its group's key, under the trie's read lock.
    pub fn for_each(&self, mut visit: impl FnMut(&str, &Route<I>)) {
        self.trie.read().for_each(|_, groups| {
            for g in groups {
                for r in &g.members {
                    visit(g.key.as_str(), r);
                }
            }
        });
    }
}

/// Messages one member may take in a row in `round_robin`.
const RUN: u32 = 16;

/// Whose turn it is. A turn is one message, or, while the member has not yet taken the
/// messages it was given (its session has not run since: under load), up to `RUN`: the
/// session then handles them in one wake and its connection writes them together, as one
/// subscriber's would, instead of eight sessions each waking for every eighth message.
fn round_robin<I: Inbox>(g: &Group<I>, n: usize) -> usize {
    let (turn, run) = (
        g.next.load(Ordering::Relaxed),
        g.run.load(Ordering::Relaxed),
    );
    if run == 0 || (run < RUN && g.members[turn % n].mailbox.waiting() > 0) {
        g.run.store(run + 1, Ordering::Relaxed);
        return turn;
    }
    let turn = turn.wrapping_add(1);
    g.next.store(turn, Ordering::Relaxed);
    g.run.store(1, Ordering::Relaxed);
    turn
}

/// The member of `g` that gets a message: from the strategy's starting point, the first
/// that keeps up, else the starting point itself; never `except`.
fn choose<'g, I: Inbox>(
    g: &'g Group<I>,
    strategy: ShareStrategy,
    pick: Pick<'_>,
    except: Option<SessionId>,
) -> Option<&'g Route<I>> {
    let n = g.members.len();
    if n == 0 {
        return None;
    }
    let start = match strategy {
        ShareStrategy::RoundRobin => round_robin(g, n),
        ShareStrategy::Random => fastrand::usize(..n),
        ShareStrategy::HashClientid => hash_of(pick.publisher.unwrap_or("")),
        ShareStrategy::HashTopic => hash_of(pick.topic),
        ShareStrategy::Sticky => {
            let s = g.sticky.load(Ordering::Relaxed);
            match g.members.binary_search_by_key(&s, |r| r.session) {
                Ok(i) => i,
                Err(_) => fastrand::usize(..n),
            }
        }
    } % n;
    let allowed = |r: &&Route<I>| Some(r.session) != except;
    let first = &g.members[start];
    // Usually the strategy's own pick keeps up: no scan.
    let chosen = if allowed(&first) && first.mailbox.keeps_up() {
        first
    } else {
        let mut candidates = (0..n).map(|i| &g.members[(start + i) % n]).filter(allowed);
        let fallback = candidates.clone().next()?;
        candidates
            .find(|r| r.mailbox.keeps_up())
            .unwrap_or(fallback)
    };
    if strategy == ShareStrategy::Sticky && g.sticky.load(Ordering::Relaxed) != chosen.session {
        g.sticky.store(chosen.session, Ordering::Relaxed);
    }
    Some(chosen)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forms() {
        assert_eq!(form("a/b"), Form::Plain);
        assert_eq!(form("$share"), Form::Plain);
        assert_eq!(form("$queue"), Form::Plain);
        assert_eq!(form("$sharex/g/t"), Form::Plain);
        assert_eq!(
            form("$share/g/a/+"),
            Form::Shared {
                group: "g",
                filter: "a/+"
            }
        );
        assert_eq!(
            form("$queue/a/#"),
            Form::Shared {
                group: QUEUE_GROUP,
                filter: "a/#"
            }
        );
        for bad in [
            "$share/",
            "$share//t",
            "$share/g",
            "$share/g/",
            "$share/+/t",
        ] {
            assert_eq!(form(bad), Form::Invalid, "{bad}");
        }
        assert_eq!(form("$share/a#/t"), Form::Invalid);
        assert_eq!(form("$queue/"), Form::Invalid);
        assert_eq!(inner_filter("$share/g/x/y"), Some("x/y"));
        assert_eq!(inner_filter("x/y"), Some("x/y"));
        assert_eq!(inner_filter("$share/g"), None);
    }
}
