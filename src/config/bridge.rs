//! `[[bridge]]`: a connection to another broker, with Mosquitto's `connection` options under
//! their names where they exist, and its `topic` lines: `PATTERN [in|out|both [QOS
//! [LOCAL_PREFIX REMOTE_PREFIX]]]`, `""` for an empty word. A rule covers the local topics
//! `LOCAL_PREFIX + PATTERN` and the remote topics `REMOTE_PREFIX + PATTERN`; a message crossing
//! the bridge has one prefix swapped for the other.

use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Deserializer};

use crate::message::QoS;

/// One `[[bridge]]` table.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BridgeConfig {
    /// The connection's name: in logs, the client id's default and the notification topic.
    pub name: String,
    /// The remote broker, `host:port` (port 1883 if left out); several are tried in turn.
    #[serde(deserialize_with = "one_or_many")]
    pub address: Vec<String>,
    /// The client id on the remote; default `tern.NAME`.
    #[serde(default)]
    pub client_id: Option<String>,
    /// The client id of the bridge's own session on this broker; default `local.CLIENT_ID`.
    #[serde(default)]
    pub local_client_id: Option<String>,
    /// The user name the ACL sees for the bridge on this broker (no password: the bridge is
    /// inside the broker); none = anonymous.
    #[serde(default)]
    pub local_username: Option<String>,
    /// Connect with clean session 1, on both brokers (Mosquitto's `cleansession`; default
    /// false, so each keeps the bridge's subscriptions and its QoS 1/2 messages while the
    /// other is away).
    #[serde(default)]
    pub clean_session: bool,
    /// Keepalive on the remote connection, in seconds.
    #[serde(default = "keepalive")]
    pub keepalive: u16,
    /// User name on the remote.
    #[serde(default)]
    pub username: Option<String>,
    /// Password on the remote (needs `username`).
    #[serde(default)]
    pub password: Option<String>,
    /// PEM CA certificates to check the remote's certificate with: TLS on.
    #[serde(default)]
    pub cafile: Option<PathBuf>,
    /// PEM client certificate for the remote (needs `keyfile` and `cafile`).
    #[serde(default)]
    pub certfile: Option<PathBuf>,
    /// PEM private key of `certfile`.
    #[serde(default)]
    pub keyfile: Option<PathBuf>,
    /// Skip checking that the remote's certificate names its host (never in production).
    #[serde(default)]
    pub insecure: bool,
    /// The topic rules; at least one.
    #[serde(deserialize_with = "rules")]
    pub topic: Vec<TopicRule>,
    /// Set the protocol level's top bit (0x80), as Mosquitto does, so a remote that knows
    /// bridges does not send the bridge back its own messages.
    #[serde(default = "yes")]
    pub try_private: bool,
    /// Publish the connection's state, retained, `1` when up and `0` when down, on
    /// `notification_topic` locally.
    #[serde(default = "yes")]
    pub notifications: bool,
    /// Publish the notifications on the local broker only; false publishes them on the
    /// remote too (with a will there that says `0`).
    #[serde(default = "yes")]
    pub notifications_local_only: bool,
    /// Where the state goes; default `$SYS/broker/connection/NAME/state`.
    #[serde(default)]
    pub notification_topic: Option<String>,
    /// How long to wait before connecting again: one duration (always that), or two (a
    /// backoff from the first, doubling up to the second).
    #[serde(default = "restart", deserialize_with = "backoff")]
    pub restart_timeout: (Duration, Duration),
    /// Messages to the remote held while it is unreachable; beyond, the oldest QoS 0 and then
    /// the newest are dropped, counted.
    #[serde(default = "queued")]
    pub max_queued_messages: usize,
}

/// Which way a topic rule carries messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// Local messages go to the remote.
    Out,
    /// Remote messages come in.
    In,
    /// Both.
    Both,
}

/// One `topic` line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicRule {
    /// The filter between the prefixes; empty when the prefixes name one topic each.
    pub pattern: String,
    /// Which way it carries messages.
    pub direction: Direction,
    /// The most QoS a message keeps over the bridge.
    pub qos: QoS,
    /// Put before `pattern` on this broker.
    pub local_prefix: String,
    /// Put before `pattern` on the remote.
    pub remote_prefix: String,
    /// `local_prefix + pattern`, made once: every message crossing is matched against it.
    local: String,
    /// `remote_prefix + pattern`.
    remote: String,
}

impl TopicRule {
    /// Reads a `topic` line; `Err` says what is wrong with it.
    pub fn parse(line: &str) -> Result<TopicRule, String> {
        let words = words(line)?;
        let word = |i: usize| words.get(i).map(String::as_str);
        let pattern = word(0).ok_or("an empty topic line")?.to_owned();
        let direction = match word(1) {
            None | Some("out") => Direction::Out,
            Some("in") => Direction::In,
            Some("both") => Direction::Both,
            Some(other) => return Err(format!("direction {other:?}: expected in, out or both")),
        };
        let qos = match word(2) {
            None | Some("0") => QoS::AtMostOnce,
            Some("1") => QoS::AtLeastOnce,
            Some("2") => QoS::ExactlyOnce,
            Some(other) => return Err(format!("QoS {other:?}: expected 0, 1 or 2")),
        };
        let (local_prefix, remote_prefix) = match (word(3), word(4)) {
            (None, None) => (String::new(), String::new()),
            (Some(l), Some(r)) => (l.to_owned(), r.to_owned()),
            _ => return Err("a local prefix needs a remote prefix after it".into()),
        };
        if words.len() > 5 {
            return Err(format!("{} words; at most 5", words.len()));
        }
        for (what, prefix) in [("local", &local_prefix), ("remote", &remote_prefix)] {
            if prefix.contains(['+', '#']) {
                return Err(format!("the {what} prefix {prefix:?} holds a wildcard"));
            }
        }
        let rule = TopicRule {
            local: format!("{local_prefix}{pattern}"),
            remote: format!("{remote_prefix}{pattern}"),
            pattern,
            direction,
            qos,
            local_prefix,
            remote_prefix,
        };
        if rule.pattern.is_empty()
            && (rule.local_prefix.is_empty() || rule.remote_prefix.is_empty())
        {
            return Err("an empty pattern needs both prefixes (each then names one topic)".into());
        }
        for filter in [rule.local_filter(), rule.remote_filter()] {
            if !crate::message::valid_filter(filter) {
                return Err(format!("{filter:?} is not a valid topic filter"));
            }
        }
        Ok(rule)
    }

    /// What the rule covers on this broker.
    pub fn local_filter(&self) -> &str {
        &self.local
    }

    /// What the rule covers on the remote.
    pub fn remote_filter(&self) -> &str {
        &self.remote
    }

    /// The remote topic for local topic `topic`, which the local filter matches.
    pub fn to_remote(&self, topic: &str) -> Option<String> {
        let rest = topic.strip_prefix(self.local_prefix.as_str())?;
        Some(format!("{}{rest}", self.remote_prefix))
    }

    /// The local topic for remote topic `topic`, which the remote filter matches.
    pub fn to_local(&self, topic: &str) -> Option<String> {
        let rest = topic.strip_prefix(self.remote_prefix.as_str())?;
        Some(format!("{}{rest}", self.local_prefix))
    }

    /// True if the rule carries local messages out.
    pub fn goes_out(&self) -> bool {
        self.direction != Direction::In
    }

    /// True if the rule carries remote messages in.
    pub fn comes_in(&self) -> bool {
        self.direction != Direction::Out
    }
}

/// A topic line's words: split on white space, `""` an empty word.
fn words(line: &str) -> Result<Vec<String>, String> {
    line.split_whitespace()
        .map(|w| match w {
            "\"\"" => Ok(String::new()),
            w if w.contains('"') => Err(format!("{w:?}: only \"\" may be quoted (an empty word)")),
            w => Ok(w.to_owned()),
        })
        .collect()
}

impl BridgeConfig {
    /// The client id on the remote.
    pub fn remote_client_id(&self) -> String {
        self.client_id
            .clone()
            .unwrap_or_else(|| format!("tern.{}", self.name))
    }

    /// The client id of the bridge's session on this broker.
    pub fn local_client_id(&self) -> String {
        self.local_client_id
            .clone()
            .unwrap_or_else(|| format!("local.{}", self.remote_client_id()))
    }

    /// Where the connection state is published.
    pub fn state_topic(&self) -> String {
        self.notification_topic
            .clone()
            .unwrap_or_else(|| format!("$SYS/broker/connection/{}/state", self.name))
    }

    /// Checks what the types cannot: `Err((key, problem))`.
    pub fn validate(&self) -> Result<(), (&'static str, String)> {
        if self.name.is_empty() || self.name.contains(['/', '+', '#']) {
            return Err((
                "bridge.name",
                format!(
                    "{:?}: must be non-empty, without '/', '+' or '#'",
                    self.name
                ),
            ));
        }
        if self.address.is_empty() {
            return Err(("bridge.address", "at least one host:port".into()));
        }
        for a in &self.address {
            let port = a.rsplit_once(':').map(|(_, p)| p);
            if a.is_empty() || port.is_some_and(|p| p.parse::<u16>().map_or(true, |p| p == 0)) {
                return Err((
                    "bridge.address",
                    format!("{a:?}: expected host or host:port"),
                ));
            }
        }
        if self.client_id.as_deref() == Some("") {
            return Err(("bridge.client_id", "must not be empty".into()));
        }
        if self.password.is_some() && self.username.is_none() {
            return Err(("bridge.password", "needs username".into()));
        }
        if self.certfile.is_some() != self.keyfile.is_some() {
            return Err(("bridge.certfile", "certfile and keyfile go together".into()));
        }
        for (key, set) in [
            ("bridge.certfile", self.certfile.is_some()),
            ("bridge.insecure", self.insecure),
        ] {
            if set && self.cafile.is_none() {
                return Err((key, "needs cafile (TLS)".into()));
            }
        }
        if self.topic.is_empty() {
            return Err(("bridge.topic", "at least one topic rule".into()));
        }
        if self.max_queued_messages == 0 {
            return Err(("bridge.max_queued_messages", "must be at least 1".into()));
        }
        let (base, cap) = self.restart_timeout;
        if base.is_zero() || cap < base || cap > Duration::from_secs(86_400) {
            return Err((
                "bridge.restart_timeout",
                "must be above 0, the second at least the first and at most a day".into(),
            ));
        }
        let topic = self.state_topic();
        if self.notifications && !crate::message::valid_topic_name(topic.as_bytes()) {
            return Err((
                "bridge.notification_topic",
                format!("{topic:?}: not a topic name"),
            ));
        }
        Ok(())
    }
}

fn yes() -> bool {
    true
}

fn keepalive() -> u16 {
    60
}

fn restart() -> (Duration, Duration) {
    (Duration::from_secs(5), Duration::from_secs(5))
}

fn queued() -> usize {
    1000
}

pub(super) fn one_or_many<'de, D: Deserializer<'de>>(de: D) -> Result<Vec<String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum OneOrMany {
        One(String),
        Many(Vec<String>),
    }
    Ok(match OneOrMany::deserialize(de)? {
        OneOrMany::One(a) => vec![a],
        OneOrMany::Many(v) => v,
    })
}

fn rules<'de, D: Deserializer<'de>>(de: D) -> Result<Vec<TopicRule>, D::Error> {
    one_or_many(de)?
        .iter()
        .map(|line| {
            TopicRule::parse(line)
                .map_err(|e| serde::de::Error::custom(format!("topic {line:?}: {e}")))
        })
        .collect()
}

fn backoff<'de, D: Deserializer<'de>>(de: D) -> Result<(Duration, Duration), D::Error> {
    let parse = |text: &str| {
        humantime::parse_duration(text).map_err(|e| {
            serde::de::Error::custom(format!(
                "invalid duration {text:?} ({e}); write e.g. \"5s\" or [\"5s\", \"5m\"]"
            ))
        })
    };
    match one_or_many(de)?.as_slice() {
        [one] => parse(one).map(|d| (d, d)),
        [base, cap] => Ok((parse(base)?, parse(cap)?)),
        _ => Err(serde::de::Error::custom(
            "one duration, or two: [\"BASE\", \"CAP\"]",
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(line: &str) -> TopicRule {
        TopicRule::parse(line).expect(line)
    }

    #[test]
    fn topic_lines_read_as_mosquitto_reads_them() {
        let r = rule("sensors/#");
        assert_eq!((r.direction, r.qos), (Direction::Out, QoS::AtMostOnce));
        assert_eq!(
            (r.local_filter(), r.remote_filter()),
            ("sensors/#", "sensors/#")
        );
        let r = rule("# both 1 edge/ central/site1/");
        assert_eq!(r.local_filter(), "edge/#");
        assert_eq!(r.remote_filter(), "central/site1/#");
        assert_eq!(
            r.to_remote("edge/a/b").as_deref(),
            Some("central/site1/a/b")
        );
        assert_eq!(r.to_local("central/site1/a").as_deref(), Some("edge/a"));
        assert!(r.goes_out() && r.comes_in());
        let r = rule("\"\" in 2 local/one remote/other");
        assert_eq!(
            (r.local_filter(), r.remote_filter()),
            ("local/one", "remote/other")
        );
        assert_eq!(r.to_local("remote/other").as_deref(), Some("local/one"));
        assert!(!r.goes_out() && r.comes_in());
        let r = rule("a/+ out 2 \"\" up/");
        assert_eq!(r.to_remote("a/x").as_deref(), Some("up/a/x"));
    }

    #[test]
    fn bad_topic_lines_say_what_is_wrong() {
        for (line, says) in [
            ("", "empty"),
            ("a sideways", "direction"),
            ("a in 3", "QoS"),
            ("a in 1 local/", "remote prefix"),
            ("a in 1 l/ r/ extra", "at most 5"),
            ("a in 1 l/+/ r/", "wildcard"),
            ("\"\" in 1", "both prefixes"),
            ("a/#/b", "not a valid topic filter"),
            ("a in 1 \"x\" r/", "quoted"),
        ] {
            let err = TopicRule::parse(line).expect_err(line);
            assert!(err.contains(says), "{line}: {err}");
        }
    }
}
