//! The sessions layer: one session actor per client id and everything it owns or is reached
//! by. It sits under the client layer (connections talk to it) and over routing (it installs
//! its routes and receives deliveries through its mailbox, which implements the router's
//! `Inbox`).
//!
//! - `session`: the actor (subscriptions, inflight window, mqueue; outlives its connection when
//!   clean_session = 0), with `pending`, what waits for its connection.
//! - `delivering`: what the session does with a message owed to it, and how a member of a
//!   shared subscription hands its group's messages on when its connection goes.
//! - `commands`: the messages between a connection and its session.
//! - `mailbox`: the session's inbox, bounded, with the fence against a replaced connection
//!   and the inbound QoS 2 ids; `backlog`: the congestion gauge publishers read.
//! - `outbound`: the session -> connection link, which the session never awaits.
//! - `inflight`, `mqueue`: the outbound window and the queue behind it.
//! - `registry`: sessions by client id (takeover, discard, resume by user name).
//! - `shared`: what every task of the broker shares.
//! - `claims`: the seam to a cluster's client-id registry (`ClientIds`); `handover`: a
//!   persistent session moving between nodes.

pub mod backlog;
pub mod claims;
pub mod commands;
mod delivering;
mod durable;
pub mod handover;
pub mod inflight;
pub mod mailbox;
pub mod mqueue;
pub mod outbound;
mod pending;
pub mod registry;
pub mod session;
mod shared;
mod subscribing;

pub use commands::{Admin, Attach, ConnInfo, ConnLink, Kick, Outbound, SessionCmd, SessionInfo};
pub use session::Session;
pub use shared::Shared;
