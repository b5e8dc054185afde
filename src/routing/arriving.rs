//! Messages arriving from the other nodes of a cluster (`cluster::routes` hands them over):
//! delivered to the routes here as a local publish would be, but never stored as retained
//! (the cluster's bucket carries that) nor forwarded back out. A child of `router`, so it
//! uses the router's own matching and fan-out.

use std::sync::Arc;

use super::{Inbox, Matched, Published, Router};
use crate::message::Message;
use crate::routing::shared::Pick;

impl<I: Inbox> Router<I> {
    /// Delivers a message another node of the cluster published to the routes here (shared
    /// subscriptions' groups take it through the cluster's own path): never into the retained
    /// store (the cluster's bucket carries that) nor back out to the cluster.
    /// With `congested`, adds to it the mailbox of every session whose backlog passed its
    /// high mark, as a local publish does.
    pub fn publish_remote(
        &self,
        msg: Arc<Message>,
        congested: Option<&mut Vec<Arc<I>>>,
    ) -> Published {
        let Matched { exact, wild } = self.matched(&msg.topic);
        let mut out = Published::default();
        let none = std::iter::empty();
        self.fan_out_matched(&msg, exact.as_ref(), &wild, none, &mut out, congested, None);
        out
    }

    /// Delivers a message another node of the cluster published to one member here of the
    /// shared subscription `key`, the member NATS's queue group chose this node for.
    pub fn publish_shared_remote(&self, key: &str, msg: Arc<Message>) -> Published {
        let mut out = Published::default();
        let pick = Pick {
            topic: &msg.topic,
            publisher: None,
        };
        if let Some((route, key)) = self.shared.pick_other(key, pick, 0, false) {
            let one = std::iter::once((&route, Some(&key)));
            self.fan_out(&msg, one, &mut out, None, None);
        }
        out
    }
}
