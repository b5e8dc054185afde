//! The seam between the router and the rest of a cluster (`[cluster]`, see the `cluster`
//! folder): what the router tells other nodes. A single node has none, and the router then
//! makes none of these calls.
//!
//! Each call runs in the publisher's or the subscriber's own task and must not wait: the
//! cluster queues what goes to NATS (bounded, a full queue is a counted drop).

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use crate::message::Message;
use crate::routing::shared::ShareKey;

/// Interest that a SUBSCRIBE on its way holds, let go when dropped.
pub type Hold = Box<dyn std::any::Any + Send>;

/// Ends once NATS knows the interest asked for (or a bound has passed).
pub type Known = Pin<Box<dyn Future<Output = ()> + Send>>;

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

    /// A SUBSCRIBE of `filters` is on its way to its session: this node's interest in them
    /// is held (as if routed) until the hold is dropped, which the connection does once the
    /// session's routes are in. If some interest is not yet known to NATS, the future ends
    /// when it is: the SUBACK waits for it, so a message published on another node after
    /// the SUBACK is not lost for want of a route.
    fn hold(&self, filters: &[&str]) -> (Hold, Option<Known>);

    /// A retained message was set (or, with an empty payload, cleared) by a publish on this
    /// node: every node's retained store follows. The future ends once the cluster holds
    /// it (a QoS 1 or 2 publish is acknowledged then); none if it was dropped.
    fn retained(
        &self,
        msg: &Arc<Message>,
        from: Option<&crate::message::Publisher>,
    ) -> Option<Known>;
}
