//! What the router hands around: a route (one session's subscription to one filter), the
//! delivery it makes, the `Inbox` seam a session's mailbox implements, and what a publish did.

use std::sync::Arc;

use crate::message::{ClientId, Message, QoS, SessionId};
use crate::routing::shared::ShareKey;
use crate::store::{Owed, Wait};

/// A message on its way from the router to one session, at the QoS it is owed.
#[derive(Debug, Clone)]
pub struct Delivery {
    /// The shared message.
    pub msg: Arc<Message>,
    /// `min(published QoS, granted QoS)`.
    pub qos: QoS,
    /// Its id in the store when it was written there for this (persistent) session; 0 if not.
    pub stored: u64,
    /// The count its publisher waits on, settled when this session is done with it.
    pub owed: Option<Arc<Owed>>,
    /// The shared subscription's group it was picked for, if it was.
    pub share: Option<ShareKey>,
}

/// Where the router hands a delivery, without waiting: a session's mailbox
/// (`sessions::Mailbox`). The router is generic over it, so it knows nothing of sessions and
/// a delivery is a direct call.
pub trait Inbox: Send + Sync + 'static {
    /// Offers one delivery.
    fn offer(&self, delivery: Delivery) -> Offered;

    /// True if the receiver is connected and keeping up, so what it is offered now will
    /// likely be acknowledged soon.
    fn keeps_up(&self) -> bool;

    /// Messages offered that the receiver has not yet taken on (0: it is idle).
    fn waiting(&self) -> usize;
}

/// What an `Inbox` did with a delivery.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Offered {
    /// Taken; `congested` if the receiver's backlog is now past its mark (see `backlog.rs`),
    /// so the publisher should wait for it.
    Taken {
        /// The receiver is congested.
        congested: bool,
    },
    /// Full: the delivery is dropped (and counted as `mailbox_full`).
    Full,
    /// The receiver is ending; its routes are about to go.
    Gone,
}

/// One session's subscription to one filter.
#[derive(Debug)]
pub struct Route<I> {
    /// The subscribing session; a filter has at most one route per session.
    pub session: SessionId,
    /// Its client id, for drop logs.
    pub client_id: ClientId,
    /// Granted QoS.
    pub qos: QoS,
    /// The session's id in the store, for a persistent session with `[persistence]` on: QoS 1
    /// and 2 messages for it are written there before they are acknowledged.
    pub stored: Option<u64>,
    /// The session's mailbox, with its backlog gauge for publisher backpressure.
    pub mailbox: Arc<I>,
}

impl<I> Clone for Route<I> {
    fn clone(&self) -> Self {
        Route {
            session: self.session,
            client_id: self.client_id.clone(),
            qos: self.qos,
            stored: self.stored,
            mailbox: self.mailbox.clone(),
        }
    }
}

/// Adds `route` to `list` (sorted by session), or replaces the session's route there; true
/// if it was added.
pub(super) fn upsert<I>(list: &mut Vec<Route<I>>, route: Route<I>) -> bool {
    match list.binary_search_by_key(&route.session, |r| r.session) {
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

/// A filter's routes, shared with publishers while they fan out.
pub(super) type Routes<I> = Arc<Vec<Route<I>>>;

/// Deliveries planned by `Router::publish_deferred`, to hand out once they are on disk.
pub struct Deferred<I>(pub(super) Vec<(Route<I>, Delivery)>);

/// What a publish did.
#[derive(Debug, Default)]
pub struct Published {
    /// Sessions the message was handed to.
    pub delivered: usize,
    /// Sessions whose mailbox was full (counted as `mailbox_full`).
    pub dropped: usize,
    /// What must be on disk (or settled) before the message is acknowledged; nothing if
    /// the store wrote nothing.
    pub wait: Wait,
    /// The session of the bridge that published it, which it is not handed back to.
    pub from_bridge: Option<SessionId>,
    /// In a cluster, a retained message's write to the cluster's bucket, which its
    /// acknowledgement waits for too.
    pub replicated: Replicated,
}

/// A retained message on its way to the cluster's bucket (`Remote::retained`).
#[derive(Default)]
pub struct Replicated(pub Option<crate::routing::remote::Known>);

impl std::fmt::Debug for Replicated {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.0.is_some() { "pending" } else { "none" })
    }
}
