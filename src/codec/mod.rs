//! MQTT 3.1.1 (and 3.1) control packets: the types, and incremental decode / encode.
//!
//! `decode` returns `Ok(None)` until a whole frame is buffered, then splits the frame off the
//! read buffer and freezes it, so topics and payloads are zero-copy `Bytes` slices of it.

mod decode;
mod encode;

use bytes::Bytes;

use crate::message::QoS;

pub use decode::decode;
pub use encode::{encode, encode_publish};

/// The protocol a client connected with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Protocol {
    /// "MQIsdp", level 3.
    V31,
    /// "MQTT", level 4.
    V311,
}

/// The will message a client registers in CONNECT.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LastWill {
    /// Topic the will is published to (validated as a topic name by the protocol layer).
    pub topic: Bytes,
    /// Will payload.
    pub payload: Bytes,
    /// QoS of the will publish.
    pub qos: QoS,
    /// Whether the will is published as retained.
    pub retain: bool,
}

/// A CONNECT packet.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Connect {
    /// Protocol name and level.
    pub protocol: Protocol,
    /// The level's top bit (0x80) set: another broker's bridge (Mosquitto's `try_private`).
    pub bridge: bool,
    /// Clean-session flag.
    pub clean_session: bool,
    /// Keepalive in seconds, 0 = off.
    pub keep_alive: u16,
    /// Client identifier, possibly empty.
    pub client_id: String,
    /// Will message, if the will flag was set.
    pub will: Option<LastWill>,
    /// User name, if the flag was set.
    pub username: Option<String>,
    /// Password (binary), if the flag was set.
    pub password: Option<Bytes>,
}

/// CONNACK return codes of MQTT 3.1.1 section 3.2.2.3.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum ConnectReturnCode {
    /// Connection accepted.
    Accepted = 0,
    /// The protocol level is not supported.
    UnacceptableProtocolVersion = 1,
    /// The client id is not allowed.
    IdentifierRejected = 2,
    /// The service is unavailable.
    ServerUnavailable = 3,
    /// Bad user name or password.
    BadUserNameOrPassword = 4,
    /// Not authorised.
    NotAuthorized = 5,
}

/// A CONNACK packet.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConnAck {
    /// Session-present flag.
    pub session_present: bool,
    /// Return code.
    pub code: ConnectReturnCode,
}

/// A PUBLISH packet.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Publish {
    /// DUP flag.
    pub dup: bool,
    /// QoS of this packet.
    pub qos: QoS,
    /// RETAIN flag.
    pub retain: bool,
    /// Topic name, UTF-8 checked, wildcards not yet checked.
    pub topic: Bytes,
    /// Packet id; `None` at QoS 0.
    pub pkid: Option<u16>,
    /// Payload.
    pub payload: Bytes,
}

/// A SUBSCRIBE packet.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Subscribe {
    /// Packet id (never 0).
    pub pkid: u16,
    /// Filters with their requested QoS; filter syntax is checked by the protocol layer
    /// so that an invalid filter gets SUBACK 0x80 instead of a closed connection.
    pub filters: Vec<(String, QoS)>,
}

/// A SUBACK return code: a granted QoS or failure.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SubAckCode {
    /// Subscription granted at this QoS.
    Granted(QoS),
    /// 0x80: the subscription was refused.
    Failure,
}

/// A SUBACK packet.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SubAck {
    /// Id of the SUBSCRIBE answered.
    pub pkid: u16,
    /// One code per filter, in order.
    pub codes: Vec<SubAckCode>,
}

/// An UNSUBSCRIBE packet.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Unsubscribe {
    /// Packet id (never 0).
    pub pkid: u16,
    /// Filters to remove.
    pub filters: Vec<String>,
}

/// Any of the fourteen MQTT 3.1.1 control packets.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Packet {
    /// 1: client request to connect.
    Connect(Box<Connect>),
    /// 2: connect acknowledgement.
    ConnAck(ConnAck),
    /// 3: publish message.
    Publish(Publish),
    /// 4: QoS 1 acknowledgement.
    PubAck(u16),
    /// 5: QoS 2 part 1.
    PubRec(u16),
    /// 6: QoS 2 part 2.
    PubRel(u16),
    /// 7: QoS 2 part 3.
    PubComp(u16),
    /// 8: subscribe request.
    Subscribe(Subscribe),
    /// 9: subscribe acknowledgement.
    SubAck(SubAck),
    /// 10: unsubscribe request.
    Unsubscribe(Unsubscribe),
    /// 11: unsubscribe acknowledgement.
    UnsubAck(u16),
    /// 12: ping request.
    PingReq,
    /// 13: ping response.
    PingResp,
    /// 14: client is disconnecting.
    Disconnect,
}

impl Packet {
    /// A short name for logs.
    pub fn name(&self) -> &'static str {
        match self {
            Packet::Connect(_) => "CONNECT",
            Packet::ConnAck(_) => "CONNACK",
            Packet::Publish(_) => "PUBLISH",
            Packet::PubAck(_) => "PUBACK",
            Packet::PubRec(_) => "PUBREC",
            Packet::PubRel(_) => "PUBREL",
            Packet::PubComp(_) => "PUBCOMP",
            Packet::Subscribe(_) => "SUBSCRIBE",
            Packet::SubAck(_) => "SUBACK",
            Packet::Unsubscribe(_) => "UNSUBSCRIBE",
            Packet::UnsubAck(_) => "UNSUBACK",
            Packet::PingReq => "PINGREQ",
            Packet::PingResp => "PINGRESP",
            Packet::Disconnect => "DISCONNECT",
        }
    }
}

/// Why a frame could not be decoded; each one closes the connection.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum DecodeError {
    /// The remaining-length field ran past four bytes.
    #[error("malformed remaining length")]
    MalformedRemainingLength,
    /// Packet type 0 or 15.
    #[error("invalid packet type {0}")]
    InvalidPacketType(u8),
    /// Reserved fixed-header flag bits have the wrong value [MQTT-2.2.2-2].
    #[error("invalid fixed-header flags {flags:#06b} for packet type {packet_type}")]
    InvalidFlags {
        /// The packet type.
        packet_type: u8,
        /// The low nibble received.
        flags: u8,
    },
    /// The frame is larger than `max_packet_size`.
    #[error("packet of {size} bytes exceeds the limit of {max}")]
    PacketTooLarge {
        /// Size the frame claims.
        size: usize,
        /// The configured limit.
        max: usize,
    },
    /// A string is not well-formed UTF-8 [MQTT-1.5.3-1].
    #[error("string is not valid UTF-8")]
    BadUtf8,
    /// A string contains U+0000 [MQTT-1.5.3-2].
    #[error("string contains U+0000")]
    NullCharacter,
    /// The protocol name is neither "MQTT" nor "MQIsdp" [MQTT-3.1.2-1].
    #[error("invalid protocol name")]
    InvalidProtocolName,
    /// The protocol level is not one we speak; answered with CONNACK 0x01 [MQTT-3.1.2-2].
    #[error("unsupported protocol level {0}")]
    UnsupportedProtocolLevel(u8),
    /// Reserved connect flag, will flags without a will, or a password without a user name.
    #[error("invalid connect flags {0:#010b}")]
    InvalidConnectFlags(u8),
    /// A QoS field holds 3 or a SUBSCRIBE option byte has reserved bits set.
    #[error("invalid QoS")]
    InvalidQoS,
    /// A packet id of 0 where one is required [MQTT-2.3.1-1].
    #[error("packet id 0")]
    ZeroPacketId,
    /// SUBSCRIBE or UNSUBSCRIBE with no topic filter [MQTT-3.8.3-3, MQTT-3.10.3-2].
    #[error("no topic filters")]
    NoTopicFilters,
    /// The body is shorter or longer than its fields, or otherwise inconsistent.
    #[error("malformed packet: {0}")]
    Malformed(&'static str),
}

#[cfg(test)]
mod tests;
