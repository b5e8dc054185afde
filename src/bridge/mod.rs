//! `[[bridge]]`: connections to other brokers. Each bridge is one task that is an MQTT client
//! twice: of the remote broker, over TCP or TLS, and of this broker, over an in-process pipe
//! served by the ordinary connection task (`client::serve`), so its local side is a session
//! like any other (routes, queue, inflight window, persistence). Messages matching an `out`
//! rule reach the bridge's local session and are published to the remote; those matching an
//! `in` rule on the remote are published here.
//!
//! - A QoS 1/2 message going out is acknowledged to this broker only once the remote has
//!   acknowledged it; one coming in is acknowledged to the remote once this broker has.
//! - Both CONNECTs carry the bridge bit (the remote's with `try_private`), so neither broker
//!   sends the bridge back what it published: two brokers bridged both ways pass a message
//!   once, and retained messages keep their flag across.
//! - The local connection lives only while the remote one does. The bridge's session here
//!   is made at start, before the listeners serve (subscribed, then left offline), so from
//!   the first moment, while the remote is unreachable, it queues what the out rules match,
//!   up to `max_queued_messages` (counted drops beyond), on disk too with persistence on;
//!   the next connection drains it in order. The bridge itself holds no state between
//!   connections. (With `clean_session = true` nothing waits: the session ends with each
//!   connection.)
//! - Connection state goes to `notification_topic`, retained, `1` and `0`; connecting again
//!   waits `restart_timeout`, doubling up to its cap while attempts fail.

mod peer;
mod remote;
mod run;

use std::sync::Arc;

use tokio_rustls::TlsConnector;

use crate::config::{BridgeConfig, Config};
use crate::sessions::Shared;

/// Why a bridge's connection ended or could not start.
#[derive(Debug, thiserror::Error)]
pub enum BridgeError {
    /// Reading or writing failed.
    #[error("{side}: {error}")]
    Io {
        /// "remote" or "local".
        side: &'static str,
        /// The OS error.
        error: std::io::Error,
    },
    /// The other side closed the connection.
    #[error("{side}: connection closed")]
    Closed {
        /// "remote" or "local".
        side: &'static str,
    },
    /// A CONNACK refused the bridge.
    #[error("{side}: CONNACK refused with code {code}")]
    Refused {
        /// "remote" or "local".
        side: &'static str,
        /// The return code.
        code: u8,
    },
    /// The other side broke the protocol.
    #[error("{side}: {what}")]
    Protocol {
        /// "remote" or "local".
        side: &'static str,
        /// What it did.
        what: String,
    },
    /// The remote did not answer in time (connect, or keepalive).
    #[error("remote: timed out")]
    Timeout,
    /// The TLS settings cannot be used.
    #[error("TLS: {msg}")]
    Tls {
        /// What is wrong (the file is named).
        msg: String,
    },
}

/// The configured bridges, their TLS files read: ready to start.
pub struct Bridges(Vec<(BridgeConfig, Option<TlsConnector>)>);

impl Bridges {
    /// Reads every bridge's TLS files; one that cannot be used is an error before anything
    /// starts.
    pub fn prepare(config: &Config) -> Result<Bridges, BridgeError> {
        let mut ready = Vec::new();
        for cfg in &config.bridge {
            let tls = remote::tls_connector(cfg).map_err(|e| BridgeError::Tls {
                msg: format!("bridge {}: {e}", cfg.name),
            })?;
            ready.push((cfg.clone(), tls));
        }
        Ok(Bridges(ready))
    }

    /// Makes each persistent bridge's session, then starts each bridge's task; before the
    /// listeners serve, so nothing published from the first moment misses a bridge.
    pub async fn start(self, shared: &Arc<Shared>) {
        for (cfg, tls) in self.0 {
            let stats = run::stats(&cfg);
            run::make_session(shared, &cfg, &stats).await;
            shared
                .tracker
                .spawn(run::run(shared.clone(), cfg, tls, stats));
        }
    }
}
