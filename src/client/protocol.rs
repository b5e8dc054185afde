//! Protocol rules with no IO: CONNECT checks and client-id rules, PUBLISH checks, and what a
//! SUBSCRIBE is granted. The connection task applies the results.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use bytes::Bytes;

use crate::auth::{may_publish, Acl, Authenticator, Credentials, Policy};
use crate::client::keepalive::KeepAlive;
use crate::codec::{Connect, ConnectReturnCode, LastWill, Protocol, Publish};
use crate::config::MqttConfig;
use crate::hooks::Verdict;
use crate::message::{ClientId, Message, QoS};
use crate::routing::{shared, topic};

/// A protocol violation: the connection is closed without an answer [MQTT-4.8.0-1].
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum ProtocolError {
    /// [MQTT-3.1.0-1]
    #[error("first packet was {0}, not CONNECT")]
    FirstPacketNotConnect(&'static str),
    /// [MQTT-3.1.0-2]
    #[error("second CONNECT on one connection")]
    SecondConnect,
    /// [MQTT-3.3.2-2], [MQTT-4.7.3-1]
    #[error("invalid topic name in PUBLISH")]
    InvalidTopicName,
    /// [MQTT-3.1.3-10] plus the topic-name rules for the will.
    #[error("invalid will topic")]
    InvalidWillTopic,
    /// `retain_available = false` and a retained PUBLISH arrived.
    #[error("retained messages are not available")]
    RetainNotAvailable,
    /// A PUBLISH topic with more levels than `max_topic_levels`.
    #[error("topic has more levels than max_topic_levels")]
    TooManyTopicLevels,
    /// A QoS 2 PUBLISH while `max_awaiting_rel` others wait for their PUBREL.
    #[error("too many QoS 2 messages awaiting PUBREL")]
    TooManyAwaitingRel,
    /// A packet only a server sends (CONNACK, SUBACK, UNSUBACK, PINGRESP).
    #[error("unexpected {0} from a client")]
    UnexpectedPacket(&'static str),
}

/// What a CONNECT gets when it is not accepted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// Answer with this CONNACK code, then close [MQTT-3.2.2-5].
    Connack(ConnectReturnCode),
    /// Close without CONNACK [MQTT-3.1.4-1].
    Close(ProtocolError),
}

/// An accepted CONNECT, ready for the session registry.
#[derive(Debug, Clone)]
pub struct Accepted {
    /// The client id, assigned if the client sent an empty one.
    pub client_id: ClientId,
    /// Clean-session flag.
    pub clean_session: bool,
    /// The keepalive rule.
    pub keep_alive: KeepAlive,
    /// The will, ready to publish.
    pub will: Option<Arc<Message>>,
    /// User name, for ACL checks.
    pub username: Option<String>,
    /// The protocol version spoken: a 3.1 CONNACK has no session-present flag.
    pub protocol: Protocol,
    /// Another broker's bridge: not sent back what it publishes.
    pub bridge: bool,
}

/// Where a client's user name comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Identity {
    /// The CONNECT's user name and password (every listener without
    /// `use_identity_as_username`).
    FromConnect,
    /// The common name of the client's certificate, on a `use_identity_as_username` listener:
    /// it is the user name, and no password is checked (as in Mosquitto).
    Certificate(String),
    /// A `use_identity_as_username` listener got a certificate with no usable common name:
    /// refused with 0x05, never replaced by the CONNECT's user name.
    Unusable,
    /// A bridge's own connection to this broker, from inside the process: trusted, so no
    /// password is checked; the ACL sees its `local_username`, if it has one.
    Internal {
        /// The bridge's `local_username`.
        username: Option<String>,
        /// Its `max_queued_messages`: the limit of the session it makes here.
        max_queued: usize,
    },
}

/// Applies the CONNECT rules of section 3.1 in the order Mosquitto does, with no hooks.
pub fn check_connect(
    c: &Connect,
    identity: &Identity,
    cfg: &MqttConfig,
    auth: &dyn Authenticator,
    acl: &dyn Acl,
) -> Result<Accepted, Refusal> {
    let (client_id, will) = prepare_connect(c, cfg)?;
    let username = user_of(c, identity, &client_id, Verdict::Next, auth)?;
    Ok(accept(c, client_id, will, username, acl))
}

/// The rules before authentication: the client id (assigned if empty), keepalive and will.
pub fn prepare_connect(
    c: &Connect,
    cfg: &MqttConfig,
) -> Result<(String, Option<Arc<Message>>), Refusal> {
    let reject = || Refusal::Connack(ConnectReturnCode::IdentifierRejected);
    let client_id = if c.client_id.is_empty() {
        // [MQTT-3.1.3-7], [MQTT-3.1.3-8]: an empty id needs clean session 1.
        if !c.clean_session || !cfg.allow_zero_length_clientid || c.protocol == Protocol::V31 {
            return Err(reject());
        }
        assign_client_id(&cfg.auto_id_prefix)
    } else {
        // MQTT 3.1 limited ids to 23 characters; 3.1.1 lets the server accept longer
        // [MQTT-3.1.3-5], and we do.
        if c.protocol == Protocol::V31 && c.client_id.len() > 23 {
            return Err(reject());
        }
        c.client_id.clone()
    };
    if c.keep_alive > cfg.max_keepalive {
        return Err(reject());
    }
    let will = match &c.will {
        Some(w) => Some(will_message(w, cfg)?),
        None => None,
    };
    Ok((client_id, will))
}

/// The user name the client is known by, once its credentials are checked: `verdict` is an
/// `authenticate` hook's (`Next` without one), which replaces `auth` unless it is `Next`.
pub fn user_of(
    c: &Connect,
    identity: &Identity,
    client_id: &str,
    verdict: Verdict,
    auth: &dyn Authenticator,
) -> Result<Option<String>, Refusal> {
    let refuse = |code| Err(Refusal::Connack(code));
    match identity {
        Identity::Certificate(_) | Identity::Unusable if verdict == Verdict::Deny => {
            refuse(ConnectReturnCode::NotAuthorized)
        }
        Identity::Certificate(name) => Ok(Some(name.clone())),
        Identity::Internal { username, .. } => Ok(username.clone()),
        Identity::Unusable => refuse(ConnectReturnCode::NotAuthorized),
        Identity::FromConnect => match verdict {
            Verdict::Allow => Ok(c.username.clone()),
            Verdict::Deny if c.username.is_some() => {
                refuse(ConnectReturnCode::BadUserNameOrPassword)
            }
            Verdict::Deny => refuse(ConnectReturnCode::NotAuthorized),
            Verdict::Next => {
                let creds = Credentials {
                    client_id,
                    username: c.username.as_deref(),
                    password: c.password.as_deref(),
                };
                auth.authenticate(&creds).map_err(Refusal::Connack)?;
                Ok(c.username.clone())
            }
        },
    }
}

/// The accepted CONNECT, its will kept only if the client may publish it.
pub fn accept(
    c: &Connect,
    client_id: String,
    will: Option<Arc<Message>>,
    username: Option<String>,
    acl: &dyn Acl,
) -> Accepted {
    let client_id: ClientId = client_id.into();
    // A will the client may not publish is dropped now rather than refused later.
    let will = will.filter(|w| {
        let topic = w.topic_str();
        (c.bridge && crate::auth::is_bridge_state(topic))
            || may_publish(acl, &client_id, username.as_deref(), topic)
    });
    Accepted {
        client_id,
        clean_session: c.clean_session,
        keep_alive: KeepAlive::new(c.keep_alive),
        will,
        username,
        protocol: c.protocol,
        bridge: c.bridge,
    }
}

/// True if `check_connect` will verify a password hash for this CONNECT (slow by design).
pub fn checks_password(c: &Connect, identity: &Identity, policy: &Policy) -> bool {
    *identity == Identity::FromConnect && c.username.is_some() && policy.passwords.is_some()
}

/// The will as a message, under the rules a PUBLISH of it would meet.
fn will_message(w: &LastWill, cfg: &MqttConfig) -> Result<Arc<Message>, Refusal> {
    if !topic::valid_name(&w.topic) {
        return Err(Refusal::Close(ProtocolError::InvalidWillTopic));
    }
    if topic::too_deep(&w.topic, cfg.max_topic_levels) {
        return Err(Refusal::Close(ProtocolError::TooManyTopicLevels));
    }
    if w.retain && !cfg.retain_available {
        return Err(Refusal::Close(ProtocolError::RetainNotAvailable));
    }
    if cfg.message_size_limit > 0 && w.payload.len() > cfg.message_size_limit {
        // As Mosquitto: a will the broker would not accept as a PUBLISH refuses the client.
        return Err(Refusal::Connack(ConnectReturnCode::NotAuthorized));
    }
    // Copied: a will lives as long as its connection and must not pin the CONNECT's buffer.
    Ok(Arc::new(Message {
        topic: Bytes::copy_from_slice(&w.topic),
        payload: Bytes::copy_from_slice(&w.payload),
        qos: w.qos,
        retain: w.retain,
    }))
}

/// Checks a PUBLISH from a client before it is routed.
pub fn check_publish(p: &Publish, cfg: &MqttConfig) -> Result<(), ProtocolError> {
    if !topic::valid_name(&p.topic) {
        return Err(ProtocolError::InvalidTopicName);
    }
    if topic::too_deep(&p.topic, cfg.max_topic_levels) {
        return Err(ProtocolError::TooManyTopicLevels);
    }
    if p.retain && !cfg.retain_available {
        return Err(ProtocolError::RetainNotAvailable);
    }
    Ok(())
}

/// The QoS granted for each requested filter, `None` for 0x80: an invalid filter, or one
/// under which the ACL lets the client read nothing [MQTT-3.8.4-5], [MQTT-3.9.3-1]. A shared
/// subscription's rules and ACL apply to the filter inside its prefix.
pub fn grant(
    filters: Vec<(String, QoS)>,
    cfg: &MqttConfig,
    acl: &dyn Acl,
    client_id: &str,
    username: Option<&str>,
) -> Vec<(String, Option<QoS>)> {
    filters
        .into_iter()
        .map(|(f, q)| {
            let ok = shared::inner_filter(&f).is_some_and(|inner| {
                topic::valid_filter(inner)
                    && !topic::too_deep(inner.as_bytes(), cfg.max_topic_levels)
                    && acl.may_subscribe(client_id, username, inner)
            });
            (f, ok.then_some(q))
        })
        .collect()
}

/// A new client id: the configured prefix, then a process-unique, time-seeded hex number.
pub fn assign_client_id(prefix: &str) -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let t = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0);
    format!("{prefix}{t:016x}{n:08x}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::Policy;
    use bytes::Bytes;

    const OPEN: Policy = Policy {
        allow_anonymous: true,
        passwords: None,
        acl: None,
    };

    fn connect(id: &str, clean: bool) -> Connect {
        Connect {
            protocol: Protocol::V311,
            bridge: false,
            clean_session: clean,
            keep_alive: 60,
            client_id: id.into(),
            will: None,
            username: None,
            password: None,
        }
    }

    fn check(c: &Connect) -> Result<Accepted, Refusal> {
        check_connect(
            c,
            &Identity::FromConnect,
            &MqttConfig::default(),
            &OPEN,
            &OPEN,
        )
    }

    #[test]
    fn certificate_identity_replaces_the_user_name_and_fails_closed() {
        let mut c = connect("c", true);
        c.username = Some("admin".into());
        let cfg = MqttConfig::default();
        let closed = Policy::default();
        let by_cert = check_connect(
            &c,
            &Identity::Certificate("alice".into()),
            &cfg,
            &closed,
            &OPEN,
        )
        .expect("the certificate is the credential");
        assert_eq!(by_cert.username.as_deref(), Some("alice"));
        // No usable common name: refused, never the CONNECT's `admin`, even where any user
        // name would pass.
        for policy in [&OPEN, &closed] {
            assert_eq!(
                check_connect(&c, &Identity::Unusable, &cfg, policy, &OPEN).err(),
                Some(Refusal::Connack(ConnectReturnCode::NotAuthorized))
            );
        }
    }

    #[test]
    fn client_id_rules() {
        // [MQTT-3.1.3-6]
        let a = check(&connect("", true)).expect("accepted");
        assert!(a.client_id.starts_with("auto-"));
        let b = check(&connect("", true)).expect("accepted");
        assert_ne!(a.client_id, b.client_id);
        // [MQTT-3.1.3-8]
        assert_eq!(
            check(&connect("", false)).err(),
            Some(Refusal::Connack(ConnectReturnCode::IdentifierRejected))
        );
        // [MQTT-3.1.3-5]
        let long = "x".repeat(100);
        assert!(check(&connect(&long, true)).is_ok());
        let mut v31 = connect(&long, true);
        v31.protocol = Protocol::V31;
        assert!(check(&v31).is_err());
        let cfg = MqttConfig {
            allow_zero_length_clientid: false,
            ..MqttConfig::default()
        };
        assert!(check_connect(
            &connect("", true),
            &Identity::FromConnect,
            &cfg,
            &OPEN,
            &OPEN
        )
        .is_err());
    }

    #[test]
    fn anonymous_refused_with_0x05() {
        let closed = Policy::default();
        assert_eq!(
            check_connect(
                &connect("c", true),
                &Identity::FromConnect,
                &MqttConfig::default(),
                &closed,
                &OPEN
            )
            .err(),
            Some(Refusal::Connack(ConnectReturnCode::NotAuthorized))
        );
    }

    #[test]
    fn will_topic_must_be_a_name() {
        let mut c = connect("c", true);
        c.will = Some(LastWill {
            topic: Bytes::from_static(b"a/#"),
            payload: Bytes::new(),
            qos: QoS::AtMostOnce,
            retain: false,
        });
        assert_eq!(
            check(&c).err(),
            Some(Refusal::Close(ProtocolError::InvalidWillTopic))
        );
    }

    #[test]
    fn grants() {
        let g = grant(
            vec![
                ("a/+".into(), QoS::AtLeastOnce),
                ("a/#/b".into(), QoS::AtMostOnce),
                ("#".into(), QoS::ExactlyOnce),
                ("a/b/c/d".into(), QoS::AtMostOnce),
            ],
            &MqttConfig {
                max_topic_levels: 3,
                ..MqttConfig::default()
            },
            &OPEN,
            "c",
            None,
        );
        let codes: Vec<Option<QoS>> = g.into_iter().map(|(_, q)| q).collect();
        assert_eq!(
            codes,
            [Some(QoS::AtLeastOnce), None, Some(QoS::ExactlyOnce), None]
        );
    }
}
