//! What the types alone cannot check: ranges, settings that need each other, and values the
//! broker could not honour. `Err((key, problem))`, which `parse` turns into a `ConfigError`.

use std::time::Duration;

use super::Config;

/// The largest frame MQTT can express: a 268,435,455-byte body plus a 5-byte header.
const MAX_FRAME: usize = 268_435_460;

impl Config {
    /// Checks values the types alone cannot: `Err((key, problem))`.
    pub fn validate(&self) -> Result<(), (&'static str, String)> {
        // Deadlines are computed as now + duration: keep them far from overflow.
        let century = Duration::from_secs(100 * 365 * 86_400);
        for (key, d) in [
            ("mqtt.connect_timeout", Some(self.mqtt.connect_timeout)),
            (
                "session.backpressure_timeout",
                Some(self.session.backpressure_timeout),
            ),
            (
                "session.persistent_client_expiration",
                self.session.persistent_client_expiration,
            ),
            ("sys.sys_interval", Some(self.sys.sys_interval)),
            (
                "persistence.sync_interval",
                Some(self.persistence.sync_interval),
            ),
        ] {
            if d.is_some_and(|d| d > century) {
                return Err((key, "must be at most 100 years".into()));
            }
        }
        if self.listener.is_empty() {
            return Err(("listener", "at least one [[listener]] is needed".into()));
        }
        for l in &self.listener {
            if l.protocol != "mqtt" && l.protocol != "websockets" {
                return Err((
                    "listener.protocol",
                    format!(
                        "unsupported protocol {:?}; expected \"mqtt\" or \"websockets\"",
                        l.protocol
                    ),
                ));
            }
            if l.certfile.is_some() != l.keyfile.is_some() {
                return Err((
                    "listener.certfile",
                    "certfile and keyfile go together".into(),
                ));
            }
            // Without a certificate the listener is plain TCP: a TLS-only option there would
            // promise client authentication that nothing performs, so it is refused.
            if l.certfile.is_none() {
                for (key, set) in [
                    ("listener.cafile", l.cafile.is_some()),
                    ("listener.crlfile", l.crlfile.is_some()),
                    ("listener.require_certificate", l.require_certificate),
                    (
                        "listener.use_identity_as_username",
                        l.use_identity_as_username,
                    ),
                ] {
                    if set {
                        return Err((key, "needs certfile and keyfile (TLS)".into()));
                    }
                }
            }
            if l.crlfile.is_some() && l.cafile.is_none() {
                return Err(("listener.crlfile", "needs cafile".into()));
            }
            if l.require_certificate && l.cafile.is_none() {
                return Err(("listener.require_certificate", "needs cafile".into()));
            }
            if l.use_identity_as_username && !l.require_certificate {
                return Err((
                    "listener.use_identity_as_username",
                    "needs require_certificate = true".into(),
                ));
            }
        }
        if !(64..=MAX_FRAME).contains(&self.mqtt.max_packet_size) {
            return Err((
                "mqtt.max_packet_size",
                format!(
                    "must be between 64 and {MAX_FRAME}, got {}",
                    self.mqtt.max_packet_size
                ),
            ));
        }
        if self.mqtt.connect_timeout.is_zero() {
            return Err(("mqtt.connect_timeout", "must be greater than 0s".into()));
        }
        if self.session.max_inflight_messages == 0 || self.session.max_inflight_messages > 65_535 {
            return Err((
                "session.max_inflight_messages",
                "must be between 1 and 65535 (an unlimited window is not allowed)".into(),
            ));
        }
        if self.mqtt.max_topic_levels > crate::message::MAX_TOPIC_LEVELS {
            return Err((
                "mqtt.max_topic_levels",
                format!("must be at most {}", crate::message::MAX_TOPIC_LEVELS),
            ));
        }
        if !(1..=65_535).contains(&self.session.max_awaiting_rel) {
            return Err((
                "session.max_awaiting_rel",
                "must be between 1 and 65535".into(),
            ));
        }
        if !(1..=10_000_000).contains(&self.session.max_queued_messages) {
            return Err((
                "session.max_queued_messages",
                "must be between 1 and 10000000".into(),
            ));
        }
        let p = &self.persistence;
        if p.persistence && p.persistence_location.as_os_str().is_empty() {
            return Err((
                "persistence.persistence_location",
                "must name a directory".into(),
            ));
        }
        if p.sync == super::SyncMode::Interval && p.sync_interval.is_zero() {
            return Err((
                "persistence.sync_interval",
                "must be greater than 0s with sync = \"interval\"".into(),
            ));
        }
        let mut names = std::collections::HashSet::new();
        for b in &self.bridge {
            b.validate()?;
            if !names.insert(b.name.as_str()) {
                return Err(("bridge.name", format!("{:?} names two bridges", b.name)));
            }
        }
        if let Some(c) = &self.cluster {
            c.validate()?;
        }
        let h = &self.http;
        if h.password_file.is_some() && h.bind.is_none() {
            return Err(("http.password_file", "needs http.bind".into()));
        }
        if let Some(bind) = h.bind {
            if !bind.ip().is_loopback() && h.password_file.is_none() {
                return Err((
                    "http.bind",
                    format!(
                        "{bind} is reachable from other machines: set http.password_file, \
                         or bind to 127.0.0.1"
                    ),
                ));
            }
        }
        if let Err(e) = tracing_subscriber::EnvFilter::try_new(&self.log.level) {
            return Err((
                "log.level",
                format!("invalid filter {:?}: {e}", self.log.level),
            ));
        }
        Ok(())
    }
}
