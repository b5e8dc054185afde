//! Tern: an MQTT 3.1.1 broker with an emqttd-style actor design.
//!
//! - `listener` accepts sockets and spawns one `connection` task per socket.
//! - `connection` owns the socket: it decodes frames (`codec`), applies the rules of
//!   `protocol`, enforces `keepalive`, keeps the will, and publishes through the `router`.
//! - `session` is an actor per client id, found or created by the `registry`; it owns the
//!   subscriptions, the `inflight` window and the `mqueue`, and outlives its connection when
//!   clean_session = 0. Its inbound QoS 2 ids live in its `mailbox`, so the connection
//!   checks them without a round trip.
//! - `router` is a shared object, not a task: exact filters in a map, wildcard filters in the
//!   `trie`, retained messages in `retain`. The publisher's own task matches and hands each
//!   matching session one `Delivery` with `try_send`, so it never blocks on a subscriber; a
//!   connected subscriber congested by a PUBLISH (`backlog`) makes the publisher's connection
//!   hold its next PUBLISHes instead (its acks are still read), unless that subscriber is
//!   stuck. A retained publish and a subscribe's retained read are made atomic under the
//!   retained store's lock, so a new subscriber gets a concurrent retained message once.
//! - Channels: one session `mailbox` for the connection's commands (awaited, always drained)
//!   and the router's deliveries (try_send, counted drops); session -> connection `outbound`
//!   (the session checks for room and never awaits a push; it also carries the kick). No cycle
//!   of awaited sends exists.
//! - Lifecycle: a connection never says goodbye to its session; the session sees the
//!   connection's end of `outbound` dropped (on every exit: a failed handshake, a reset, a
//!   panic) and detaches. An Attach fences the mailbox against the connection it replaces, so
//!   a taken-over connection's late commands are refused, not applied to the new one's
//!   session. A session dropped without ending cleans up after itself (a drop guard).
//! - Memory: both tasks are hand-written futures that wait by polling their sources directly,
//!   so an idle client costs its two small tasks, its socket registration, its mailbox and its
//!   link; anything rare (handshake, a full mailbox, a backpressure pause) is boxed while it
//!   runs.
//! - `auth` (password and ACL files) and `tls` guard the door; `sys` publishes `$SYS` topics.
//! - Every queue is bounded by `config`; every drop is counted in `metrics`.
//!
//! The library exposes `Broker::bind(config)` and `broker.run(shutdown)`, which `main` and the
//! integration tests both use.

pub mod auth;
pub mod broker;
pub mod client;
pub mod codec;
pub mod config;
pub mod door;
pub mod message;
pub mod observability;
pub mod routing;
pub mod sessions;

pub use broker::{Broker, StartError};
pub use config::Config;
