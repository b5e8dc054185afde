//! Durable state with the real `tern` binary on a temporary directory: acknowledged messages,
//! sessions, subscriptions and retained messages survive kill -9, SIGTERM and restarts in a
//! row; a store that cannot be used stops the start with one line; the `tern store` tools
//! read what is on disk.

#[path = "../common/mod.rs"]
mod common;
mod disk;
mod helpers;
mod qos2;
mod state;
mod streams;
