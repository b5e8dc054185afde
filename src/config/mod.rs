//! The TOML configuration: typed sections and their defaults (here), reading (`load`) and the
//! checks the types cannot make (`validate`), with errors that name the file, the key and the
//! problem. Key names follow mosquitto.conf.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Deserializer};

mod bridge;
mod cluster;
mod load;
mod validate;

pub use bridge::{BridgeConfig, Direction, TopicRule};
pub use cluster::ClusterConfig;

/// The shipped default configuration file, printed by `tern --print-default-config`.
pub const DEFAULT_CONFIG_TOML: &str = include_str!("../../config/tern.toml");

/// A configuration problem: which file, which key, what is wrong.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("{}: {}{msg}", path.display(), if key.is_empty() { String::new() } else { format!("key `{key}`: ") })]
pub struct ConfigError {
    /// The file read (or `<defaults>`).
    pub path: PathBuf,
    /// Dotted key path, e.g. `mqtt.max_packet_size`; empty for a file-level problem.
    pub key: String,
    /// What is wrong with it.
    pub msg: String,
}

/// Why a configuration file cannot be used.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum LoadError {
    /// The file cannot be read at all.
    #[error("cannot read {}: {reason}", path.display())]
    Unreadable {
        /// The file.
        path: PathBuf,
        /// The OS error.
        reason: String,
    },
    /// The file is read, but does not parse or a value is wrong.
    #[error(transparent)]
    Invalid(#[from] ConfigError),
}

/// The whole broker configuration.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Network listeners (`[[listener]]`).
    pub listener: Vec<ListenerConfig>,
    /// Protocol limits (`[mqtt]`).
    pub mqtt: MqttConfig,
    /// Per-session limits (`[session]`).
    pub session: SessionConfig,
    /// Retained-store limits (`[retain]`).
    pub retain: RetainConfig,
    /// Authentication (`[auth]`).
    pub auth: AuthConfig,
    /// Logging (`[log]`).
    pub log: LogConfig,
    /// The `$SYS` topics (`[sys]`).
    pub sys: SysConfig,
    /// Durable state (`[persistence]`).
    pub persistence: PersistenceConfig,
    /// Metrics, health, the JSON API and the dashboard (`[http]`).
    pub http: HttpConfig,
    /// Connections to other brokers (`[[bridge]]`).
    pub bridge: Vec<BridgeConfig>,
    /// This broker as a node of a cluster (`[cluster]`); none = a single node.
    pub cluster: Option<ClusterConfig>,
    /// Where this configuration was read from, so SIGHUP can read it again.
    #[serde(skip)]
    pub origin: Origin,
}

/// The file a configuration came from and the command-line override applied to it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Origin {
    /// The file; `None` for the built-in defaults.
    pub file: Option<PathBuf>,
    /// `-p PORT`: replaces the first listener's port.
    pub port: Option<u16>,
}

/// One `[[listener]]`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ListenerConfig {
    /// Address and port to listen on.
    pub bind: SocketAddr,
    /// Wire protocol: "mqtt" (MQTT on TCP) or "websockets" (MQTT over WebSocket); either
    /// inside TLS with `certfile` and `keyfile`.
    pub protocol: String,
    /// Most simultaneous connections on this listener; 0 = unlimited.
    pub max_connections: usize,
    /// PEM certificate chain; with `keyfile`, the listener speaks TLS.
    pub certfile: Option<PathBuf>,
    /// PEM private key for `certfile`.
    pub keyfile: Option<PathBuf>,
    /// PEM CA certificates that client certificates are checked against; its intermediates
    /// also complete the chain the server sends.
    pub cafile: Option<PathBuf>,
    /// PEM certificate revocation lists: client certificates listed are refused.
    pub crlfile: Option<PathBuf>,
    /// Refuse clients without a valid certificate (needs `cafile`).
    pub require_certificate: bool,
    /// Use the client certificate's common name as the user name (needs
    /// `require_certificate`); no password is checked then.
    pub use_identity_as_username: bool,
}

/// `[mqtt]`: protocol-level limits and choices.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MqttConfig {
    /// Largest accepted control packet in bytes, header included.
    pub max_packet_size: usize,
    /// Largest keepalive a client may ask for, in seconds; larger is refused with CONNACK 0x02.
    pub max_keepalive: u16,
    /// Time a new socket has to send CONNECT.
    #[serde(deserialize_with = "duration")]
    pub connect_timeout: Duration,
    /// Accept a zero-length client id (with clean session 1) and assign one.
    pub allow_zero_length_clientid: bool,
    /// Prefix of assigned client ids.
    pub auto_id_prefix: String,
    /// Accept retained messages; if false a retained PUBLISH closes the connection.
    pub retain_available: bool,
    /// Deliver at the subscription's QoS even when the message was published lower.
    pub upgrade_outgoing_qos: bool,
    /// How a shared subscription's group picks the member that gets a message.
    pub shared_subscription_strategy: ShareStrategy,
    /// Most levels in a topic name or filter; a deeper PUBLISH closes the connection, a deeper
    /// filter gets SUBACK 0x80. 0 = no limit.
    pub max_topic_levels: usize,
    /// Largest PUBLISH (or will) payload accepted; a larger one is acknowledged and dropped
    /// (a will: CONNACK 0x05). 0 = no limit.
    pub message_size_limit: usize,
    /// Heap bytes the broker may use; above it an incoming PUBLISH is dropped and its client
    /// disconnected. 0 = no limit.
    pub memory_limit: usize,
}

/// How a shared subscription's group picks the member that gets a message; a member that
/// does not keep up is passed over whatever the strategy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ShareStrategy {
    /// Each member in turn (EMQX's default).
    RoundRobin,
    /// A member at random.
    Random,
    /// By the publisher's client id: one publisher's messages go to one member.
    HashClientid,
    /// By topic: one topic's messages go to one member.
    HashTopic,
    /// One member, until it leaves or falls behind.
    Sticky,
}

impl ShareStrategy {
    /// The strategy stored as `self as u8`.
    pub fn from_u8(v: u8) -> ShareStrategy {
        match v {
            1 => ShareStrategy::Random,
            2 => ShareStrategy::HashClientid,
            3 => ShareStrategy::HashTopic,
            4 => ShareStrategy::Sticky,
            _ => ShareStrategy::RoundRobin,
        }
    }
}

/// What a full session queue discards.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum QueueOverflow {
    /// Refuse the new message (Mosquitto).
    DropNew,
    /// Evict the oldest queued message (emqttd).
    DropOldest,
}

/// `[session]`: per-client delivery limits.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SessionConfig {
    /// QoS 1/2 messages sent and not yet acknowledged, per client.
    pub max_inflight_messages: usize,
    /// Payload bytes of QoS 1/2 messages in flight per client; 0 = unlimited.
    pub max_inflight_bytes: usize,
    /// Messages waiting behind the inflight window, per client.
    pub max_queued_messages: usize,
    /// Payload bytes waiting behind the inflight window, per client; 0 = unlimited.
    pub max_queued_bytes: usize,
    /// Queue QoS 0 messages for offline persistent sessions.
    pub queue_qos0_messages: bool,
    /// What a full queue discards; QoS 0 messages are always evicted first.
    pub queue_overflow: QueueOverflow,
    /// Most subscriptions one client may hold; more get SUBACK 0x80. 0 = no limit.
    pub max_subscriptions: usize,
    /// Inbound QoS 2 messages of one client awaiting PUBREL; one more closes the connection.
    pub max_awaiting_rel: usize,
    /// How long a publisher waits for a congested subscriber that makes no progress before
    /// treating it as stuck; 0 never waits (messages beyond the queue are dropped at once).
    #[serde(deserialize_with = "duration")]
    pub backpressure_timeout: Duration,
    /// How long a disconnected persistent session is kept; `None` (absent) = forever.
    #[serde(deserialize_with = "optional_duration")]
    pub persistent_client_expiration: Option<Duration>,
}

/// `[retain]`: limits of the retained store.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RetainConfig {
    /// Most retained topics; 0 = unlimited.
    pub max_retained_messages: usize,
    /// Largest retained payload in bytes; 0 = unlimited.
    pub retained_payload_limit: usize,
    /// Payload bytes of all retained messages together; 0 = unlimited.
    pub max_retained_bytes: usize,
}

/// `[auth]`: who may connect, and to which topics.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuthConfig {
    /// Accept clients without a user name.
    pub allow_anonymous: bool,
    /// A Mosquitto password file; relative paths are relative to the config file.
    pub password_file: Option<PathBuf>,
    /// A Mosquitto ACL file; relative paths are relative to the config file.
    pub acl_file: Option<PathBuf>,
    /// Deliver a retained message only while its publisher may still publish it.
    pub check_retain_source: bool,
}

/// `[log]`: logging.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    /// A tracing filter such as "info" or "tern=debug"; `RUST_LOG` overrides it.
    pub level: String,
}

/// `[sys]`: the `$SYS/broker/...` status topics.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SysConfig {
    /// How often the `$SYS` topics are updated; 0 turns them off.
    #[serde(deserialize_with = "duration")]
    pub sys_interval: Duration,
}

/// When an acknowledgement may go out, relative to the disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SyncMode {
    /// After fdatasync.
    Always,
    /// After the write; the disk is synced every `sync_interval`.
    Interval,
    /// After the write; the OS flushes.
    Never,
}

/// `[http]`: `/metrics`, `/health/*`, the JSON API under `/api/v1` and the dashboard at `/`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HttpConfig {
    /// Address and port to serve on; none = no HTTP server.
    pub bind: Option<SocketAddr>,
    /// Mosquitto-format password file: every request needs HTTP basic auth as one of its users.
    /// Without it only loopback clients are served, and `bind` must be a loopback address.
    pub password_file: Option<PathBuf>,
}

/// `[persistence]`: sessions and retained messages on disk.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PersistenceConfig {
    /// Keep state on disk; false = everything in memory (Mosquitto's `persistence`).
    pub persistence: bool,
    /// The store's directory; relative paths are relative to the config file.
    pub persistence_location: PathBuf,
    /// When acknowledgements wait for the disk.
    pub sync: SyncMode,
    /// With `sync = "interval"`, how often the disk is synced.
    #[serde(deserialize_with = "duration")]
    pub sync_interval: Duration,
}

impl Default for PersistenceConfig {
    fn default() -> Self {
        PersistenceConfig {
            persistence: false,
            persistence_location: PathBuf::from("tern-data"),
            sync: SyncMode::Always,
            sync_interval: Duration::from_millis(10),
        }
    }
}

impl Default for SysConfig {
    fn default() -> Self {
        SysConfig {
            sys_interval: Duration::from_secs(10),
        }
    }
}

impl Default for Config {
    fn default() -> Self {
        Config {
            listener: vec![ListenerConfig::default()],
            mqtt: MqttConfig::default(),
            session: SessionConfig::default(),
            retain: RetainConfig::default(),
            auth: AuthConfig::default(),
            log: LogConfig::default(),
            sys: SysConfig::default(),
            persistence: PersistenceConfig::default(),
            http: HttpConfig::default(),
            bridge: Vec::new(),
            cluster: None,
            origin: Origin::default(),
        }
    }
}

impl Default for ListenerConfig {
    fn default() -> Self {
        ListenerConfig {
            bind: SocketAddr::from(([127, 0, 0, 1], 1883)),
            protocol: "mqtt".into(),
            max_connections: 0,
            certfile: None,
            keyfile: None,
            cafile: None,
            crlfile: None,
            require_certificate: false,
            use_identity_as_username: false,
        }
    }
}

impl Default for MqttConfig {
    fn default() -> Self {
        MqttConfig {
            max_packet_size: 1_048_576,
            max_keepalive: 65_535,
            connect_timeout: Duration::from_secs(10),
            allow_zero_length_clientid: true,
            auto_id_prefix: "auto-".into(),
            retain_available: true,
            upgrade_outgoing_qos: false,
            shared_subscription_strategy: ShareStrategy::RoundRobin,
            max_topic_levels: 200,
            message_size_limit: 0,
            memory_limit: 0,
        }
    }
}

impl Default for SessionConfig {
    fn default() -> Self {
        SessionConfig {
            max_inflight_messages: 20,
            max_inflight_bytes: 0,
            max_queued_messages: 1000,
            max_queued_bytes: 0,
            queue_qos0_messages: false,
            queue_overflow: QueueOverflow::DropNew,
            max_subscriptions: 10_000,
            max_awaiting_rel: 100,
            backpressure_timeout: Duration::from_secs(1),
            persistent_client_expiration: None,
        }
    }
}

impl Default for RetainConfig {
    fn default() -> Self {
        RetainConfig {
            max_retained_messages: 100_000,
            retained_payload_limit: 65_536,
            max_retained_bytes: 256 << 20,
        }
    }
}

impl Default for AuthConfig {
    fn default() -> Self {
        AuthConfig {
            allow_anonymous: true,
            password_file: None,
            acl_file: None,
            check_retain_source: false,
        }
    }
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            level: "info".into(),
        }
    }
}

/// Reads durations written as "10s", "5m", "500ms" or "14d".
fn duration<'de, D: Deserializer<'de>>(de: D) -> Result<Duration, D::Error> {
    let text = String::deserialize(de)?;
    humantime::parse_duration(&text).map_err(|e| {
        serde::de::Error::custom(format!(
            "invalid duration {text:?} ({e}); write e.g. \"10s\", \"5m\" or \"14d\""
        ))
    })
}

fn optional_duration<'de, D: Deserializer<'de>>(de: D) -> Result<Option<Duration>, D::Error> {
    duration(de).map(Some)
}
