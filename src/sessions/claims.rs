//! The seam between a connection and its cluster's client-id registry (`[cluster]`, see the
//! `cluster` folder): before a CONNECT gets a session here, this node must own its client id
//! in the whole cluster. A single node has none, and the handshake makes none of these calls.

use std::future::Future;
use std::pin::Pin;

use crate::codec::ConnectReturnCode;
use std::sync::Arc;

use crate::message::{ClientId, Message};
use crate::sessions::handover::Handover;

/// A future a claim answers with.
pub type Claiming = Pin<Box<dyn Future<Output = Result<Claimed, ConnectReturnCode>> + Send>>;

/// A client id this node now owns.
#[derive(Debug)]
pub struct Claimed {
    /// The claim's token, for `release`.
    pub token: u64,
    /// The persistent session the previous owner handed over, to adopt before attaching.
    pub handover: Option<Handover>,
}

/// The cluster's registry of which node has which client id.
pub trait ClientIds: Send + Sync + 'static {
    /// Makes this node the owner of `client_id`, taking it over from the node that has it (it
    /// closes that connection, its will published, and hands its persistent session over
    /// unless the CONNECT is `clean`): the claim, or the CONNACK code to refuse with (0x03
    /// while the owner cannot be reached and is not known to be dead).
    fn claim(&self, client_id: &ClientId, clean: bool) -> Claiming;

    /// The session made under `token` ended here: the id is free again, unless another
    /// connection has claimed it since.
    fn release(&self, client_id: &ClientId, token: u64);

    /// `client_id`'s connection of claim `token` has this will and user name, or (`None`)
    /// no longer has one (it ended here): kept in the cluster, so that another node
    /// publishes it if this one dies.
    fn will(
        &self,
        client_id: &ClientId,
        token: u64,
        will: Option<(&Arc<Message>, Option<&Arc<str>>)>,
    );

    /// `client_id`'s persistent session here has these subscriptions (`Some`, with no
    /// messages), or ended here (`None`): kept in the cluster, so that another node restores
    /// its subscriptions if this one dies.
    fn session(&self, client_id: &ClientId, state: Option<Handover>);

    /// False while this node is cut off from its cluster (fenced): it takes no client.
    fn serving(&self) -> bool;
}
