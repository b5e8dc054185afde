//! The door: where sockets come in. Each `[[listener]]` gets an accept loop that spawns one
//! connection task (`client`) per socket, after the TLS handshake on a TLS listener and the
//! HTTP upgrade on a WebSocket one.
//!
//! - `listener`: the accept loop and the `Door` (TLS setup, swapped on reload).
//! - `tls`: the rustls acceptor from certfile / keyfile / cafile / crlfile.
//! - `fds`: the descriptor table sized for every connection the listeners may hold.
//! - `websocket`: MQTT over WebSocket, a byte stream over TCP or TLS for the same task.

pub mod fds;
pub mod listener;
pub mod tls;
pub mod websocket;
