//! The routing layer: who gets a published message, and what is kept for later. It knows
//! nothing of sessions: a route names an `Inbox` (the session mailbox implements it), and the
//! router is generic over it.
//!
//! - `router`: routes by filter (exact filters in a map, wildcards in the trie), publish and
//!   fan-out, the retained store under the same lock for exactness.
//! - `route`: a route, the delivery it makes, the `Inbox` seam, what a publish did.
//! - `shared`: shared subscriptions' groups (`$share/`, `$queue/`) and how a member is picked.
//! - `trie`: the wildcard subscription tree; `levels`, a node's children.
//! - `retain`: the retained-message store and its limits.
//! - `topic`: topic name and filter rules (validation, matching, covering, overlap).
//! - `remote`: the seam to the other nodes of a cluster (forwarded messages, interest,
//!   retained changes); `arriving` (a child of `router`): what other nodes send, delivered;
//!   `listing` (another): what the router holds, for the gauges and the API.

pub mod levels;
pub mod remote;
pub mod retain;
pub mod route;
pub mod router;
pub mod shared;
pub mod topic;
pub mod trie;
