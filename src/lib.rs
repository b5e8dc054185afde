//! Tern: an MQTT 3.1.1 broker with an emqttd-style actor design. This is its architecture as
//! built; each folder's module doc goes into its layer.
//!
//! # Layers
//!
//! `src/` is in folders by layer, and imports point one way, down this list (a loop may stay
//! only inside a folder):
//!
//! | folder | what it is |
//! |---|---|
//! | [`broker`] | the top: binds, wires and runs everything; reloads the configuration |
//! | [`bridge`] | `[[bridge]]`: connections to other brokers, each an MQTT client of the remote and, through an in-process pipe, of this broker |
//! | [`door`] | listeners, TLS, WebSocket, the descriptor table: where sockets come in |
//! | [`http`] | `[http]`: `/metrics`, health, the JSON API and the dashboard (axum), beside the door |
//! | [`client`] | the connection task (one per socket) and the protocol rules |
//! | [`cluster`] | `[cluster]`: this broker as one node of a cluster over NATS JetStream (routes as NATS interest, client ids, leases, retained messages, wills) |
//! | [`sessions`] | the session actor (one per client id), its mailbox, link, inflight, mqueue, the registry, and `Shared` |
//! | [`auth`] | password and ACL files behind the `Authenticator` and `Acl` seams |
//! | [`routing`] | the router, the subscription trie, shared subscriptions' groups, the retained store, topic rules |
//! | [`codec`], [`observability`], [`config`], [`store`], [`hooks`] | packets; counters, `$SYS` and the heap count; the TOML configuration; durable state on disk (fjall); the embedding application's extension seam |
//! | [`message`] | the application message and the ids every layer shares |
//!
//! Seams keep the lower layers ignorant of the upper ones: the router delivers to an
//! [`routing::router::Inbox`] (the session mailbox implements it), `$SYS` reads the broker
//! through [`observability::sys::SysSource`], and a cluster is reached through
//! [`routing::remote::Remote`] (the router tells other nodes what happened here) and
//! [`sessions::claims::ClientIds`] (a CONNECT claims its client id in the whole cluster).
//! A single node has neither, and the router and the handshake make no call into them.
//!
//! # Tasks and who owns what
//!
//! - One accept loop per listener ([`door::listener`]). It spawns a connection task per
//!   socket; on a TLS listener the handshake runs inside that task, under `connect_timeout`,
//!   and so does the HTTP upgrade on a WebSocket one, whose frames then become one more
//!   `client::Transport` ([`door::websocket`]): the MQTT code path is the same for all.
//! - One connection task per socket ([`client`]): the socket's only reader and writer. It owns
//!   the read and write buffers, the keepalive timer and the will, and answers what needs no
//!   session state itself: PUBACK/PUBREC/PUBCOMP for inbound messages, PINGRESP. It publishes
//!   through the router from its own task.
//! - One session actor per client id ([`sessions::session`]), found or made by the
//!   [`sessions::registry`]: it owns the subscriptions, the outbound inflight window and the
//!   mqueue, and outlives its connection when clean_session = 0. Its inbound QoS 2 ids live in
//!   its mailbox, so the connection checks them without a round trip.
//! - The router ([`routing::router`]) is a shared object, not a task: exact filters in a map,
//!   wildcards in the trie, retained messages beside them.
//! - One task per `[[bridge]]` ([`bridge`]): a client of the remote broker, and of this one
//!   through a `tokio::io::duplex` pipe that an ordinary connection task serves, so the
//!   bridge's local side is a session like any other (its queue holds what waits for the
//!   remote). Both CONNECTs carry the bridge bit: a broker does not send a bridge back what it
//!   published (`Publisher::bridge_session`), and gives it live messages with their RETAIN flag.
//! - With `[cluster]`, the [`cluster`]'s tasks: one sends what the router forwards to NATS,
//!   one keeps this node's NATS subscriptions in step with its routes and delivers what they
//!   bring (through the router, as a publish here would be, never forwarded again), one each
//!   writes and follows the retained bucket, one writes wills, one answers other nodes'
//!   takeover requests (ending or exporting a session: `sessions::handover`), and one renews
//!   this node's lease, fences it when it cannot, and publishes a dead node's wills.
//! - One `$SYS` task, and a SIGHUP task in the binary.
//! - With `[http]`, one axum server ([`http`]). It reads the counters and the router
//!   directly and asks sessions through their mailboxes (`SessionCmd::Admin`, with
//!   `try_send`, as the router does), so it never waits on a session and no session waits on
//!   it; a kick is the session closing its own connection (the will is published).
//! - [`sessions::Shared`] is what they all share: the configuration in force (swapped whole on
//!   reload), the router, the registry, the counters, the auth policy, the shutdown token and
//!   the task tracker.
//!
//! # Channels, and why no cycle of awaited sends exists
//!
//! - connection -> session: the session's [`sessions::mailbox`] (bounded). The connection
//!   awaits room for its commands (acks, SUBSCRIBE); the session always drains its mailbox.
//! - router -> session: the same mailbox, with `try_send` only; a full mailbox is a counted
//!   drop (`mailbox_full`), never a wait.
//! - session -> connection: the [`sessions::outbound`] link (bounded). The session never
//!   awaits it: it fills it while there is room and otherwise waits for room as one event
//!   among its others, so it keeps draining its mailbox meanwhile. The link also carries the
//!   session's order to close (a kick: takeover, discard, shutdown).
//!
//! The only awaited send is connection -> session, and the session never awaits anything
//! that its connection must do first, so no two tasks can wait on each other.
//!
//! Lifecycle: a connection never says goodbye to its session; the session sees the
//! connection's end of the link dropped (on every exit: a failed handshake, a reset, a panic)
//! and detaches. An Attach fences the mailbox against the connection it replaces, so a
//! taken-over connection's late commands are refused, not applied to the new one's session. A
//! session dropped without ending cleans up after itself (a drop guard).
//!
//! # The PUBLISH path, socket to socket
//!
//! 1. The publisher's connection task reads a frame into its read buffer and decodes it
//!    ([`codec`]); topic and payload are slices of that buffer, not copies.
//! 2. It checks the PUBLISH ([`client::protocol`]: topic, levels, retain), the limits
//!    (`message_size_limit`, `memory_limit`) and the ACL ([`auth`]); a denied or over-size
//!    message is acknowledged and dropped, counted (above `memory_limit` the client is
//!    disconnected instead).
//! 3. It calls the router ([`routing::router`]): a retained message is stored first (a copy,
//!    so it does not pin the frame), then the matching routes are found (one delivery per
//!    session, at its highest grant, and one for a member of each matching shared
//!    subscription's group, picked among those that keep up: [`routing::shared`]) and each
//!    session's mailbox is offered one `Delivery`
//!    holding an `Arc` of the one message. Only then is PUBACK (QoS 1) or PUBREC (QoS 2)
//!    encoded: an acknowledged message is owed to every subscriber that matched.
//! 4. Each subscriber's session takes the delivery, checks it against its client's ACL, and
//!    queues it in its mqueue; when the inflight window has room it gives it a packet id and
//!    puts it on the outbound link.
//! 5. The subscriber's connection task takes it from the link, encodes it into its write
//!    buffer and writes many packets per system call.
//!
//! # Durable state
//!
//! With `[persistence]` on, the router writes retained messages to the [`store`] (under the
//! retained store's lock, so the disk sees a topic's changes in memory's order) and returns
//! the LSN the acknowledgement waits for; the connection encodes that PUBACK or PUBREC into a
//! group that goes out once the store's durable LSN passes it, and everything it encodes
//! meanwhile goes behind (`client::gated`). One writer thread commits whatever was submitted
//! as one batch and syncs it per `sync`. Persistent sessions write their record (the CONNACK
//! of a new one waits for it) and their subscriptions (SUBACK and UNSUBACK wait, as
//! `Outbound::Stored`), and are restored detached, routes installed, before the listeners
//! serve. A QoS 1/2 message routed to persistent sessions is written once, with an entry per
//! session (`Route::stored`, `Delivery::stored`), in the batch the publisher's PUBACK waits
//! for; the session records its packet id, its PUBREC and its end (acknowledged or dropped),
//! and a restored session queues its messages again in order or puts them back in flight.
//! The connection writes the inbound QoS 2 ids awaiting PUBREL, and delivers an inbound QoS 2
//! message of a stored session only once it is durable (`Router::publish_deferred`, held in
//! the connection's gated groups); a stored session's QoS 2 PUBLISH and PUBREL wait for its
//! records. The writer leaves out of a batch what a later op in the same batch undoes (an
//! entry stored and acknowledged within it, every entry of a session that ends in it), and
//! deletes a message with its last entry, so the disk holds live state plus at most fjall's
//! journals (64 MiB) and tables not yet compacted. Each stored message carries a
//! `store::Owed` count of the sessions still to acknowledge it, held by their deliveries: the
//! publisher's reply waits for the LSN *or* for that count to reach zero (`store::Wait`),
//! since a message no session is owed need not be on disk. So that the count usually wins,
//! a message owed only to sessions that keep up is submitted lazily: the writer lets it wait
//! in the open batch (up to 10 ms, while that pays, see the store's `batch` module) unless an
//! op someone waits for cuts the batch first, and a subscriber that keeps up then costs no
//! write at all. On a graceful stop a stored session keeps
//! its routes until the process ends, so a message acknowledged in that window is still
//! queued on disk. `tern store stats` and `tern store dump` read a stopped broker's store
//! (`store::inspect`).
//!
//! # Backpressure and memory bounds
//!
//! - Every queue is bounded by [`config`]: the mailbox, the mqueue (`max_queued_messages`,
//!   `max_queued_bytes`), the inflight window (`max_inflight_messages`, `max_inflight_bytes`),
//!   inbound QoS 2 (`max_awaiting_rel`), subscriptions, topic levels, the retained store
//!   (`max_retained_messages`, `max_retained_bytes`), the packet size, and the whole heap if
//!   `memory_limit` is set ([`observability::memory`]). Every drop is counted in
//!   [`observability::metrics`] and logged (rate-limited).
//! - A connected subscriber whose backlog (mailbox + mqueue, [`sessions::backlog`]) passes
//!   its high mark makes the publishing connection hold its next PUBLISH until the backlog
//!   falls (it still reads and answers acks meanwhile, up to a bound), so a slow subscriber
//!   slows its publishers through TCP instead of losing messages. One that makes no progress
//!   for `backpressure_timeout` is stuck: nobody waits for it, and its queue overflows by
//!   `queue_overflow`, counted. An offline session never makes anyone wait.
//! - Idle costs little: both per-client tasks are hand-written futures that wait by polling
//!   their sources directly, so an idle client is its two small tasks, its socket
//!   registration, its mailbox and its link; anything rare (handshake, a full mailbox, a
//!   backpressure pause) is boxed while it runs.
//! - A shared subscription's delivery carries its group's key: a member that cannot take it
//!   (full mailbox, ending) or that loses its connection with it unacknowledged hands it to
//!   another member (`Router::redispatch`, `sessions::delivering`), so a group's QoS 1/2
//!   message is dropped only when no member can take it.
//! - A retained publish and a subscribe's retained read are atomic under the retained store's
//!   lock, so a new subscriber gets a concurrent retained message once.
//!
//! # Embedding
//!
//! The library exposes `Broker::bind(config)` and `broker.run(shutdown)`, which `main` and the
//! integration tests both use, and `Broker::builder(config).hooks(h).bind()` for an
//! application that embeds Tern and changes or watches what clients do through
//! [`hooks::Hooks`]. The router holds the hooks (`Router::hooks`), so every task reaches them
//! where it already reaches the router; each hook runs in the task that has its event, and one
//! that answers later (`hooks::Reply::Later`) holds only its own client's input
//! (`client::hooked`). Without hooks each event costs one `Option` test.

pub mod auth;
pub mod bridge;
pub mod broker;
pub mod client;
pub mod cluster;
pub mod codec;
pub mod config;
pub mod door;
pub mod hooks;
pub mod http;
pub mod message;
pub mod observability;
pub mod routing;
pub mod sessions;
pub mod store;

pub use broker::{Broker, Builder, StartError};
pub use config::Config;
