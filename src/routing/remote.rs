//! The seam between the router and the rest of a cluster (`[cluster]`, see the `cluster`
//! folder): what the router tells other nodes. A single node has none, and the router then
//! makes none of these calls.
//!
//! Each call runs in the publisher's or the subscriber's own task and must not wait: the
//! cluster queues what goes to NATS (bounded, a full queue is a counted drop).

use std::sync::Arc;

use crate::message::Message;
use crate::routing::shared::ShareKey;

/// What the router tells the other nodes of its cluster.
pub trait Remote: Send + Sync + 'static {
    /// `msg` was published on this node (by a client, a will or a bridge) and delivered here,
    /// to a member of each shared subscription's group in `served`: the nodes with interest
    /// in its topic get it too (and those groups no second member).
    fn forward(&self, msg: &Arc<Message>, served: &[&ShareKey]);

    /// `filter` got its first route on this node (`added`) or lost its last: this node's
    /// interest in the topics it matches starts or ends.
    fn interest(&self, filter: &str, added: bool);

    /// The shared subscription `key` (its group's `$share/...` filter; `inner` inside it)
    /// got its first member on this node, or lost its last.
    fn shared_interest(&self, key: &str, inner: &str, added: bool);

    /// A retained message was set (or, with an empty payload, cleared) by a publish on this
    /// node: every node's retained store follows.
    fn retained(&self, msg: &Arc<Message>, from: Option<&crate::message::Publisher>);
}
