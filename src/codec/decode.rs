//! Frame splitting and body parsing.

use bytes::{Buf, Bytes, BytesMut};

use super::{Connect, DecodeError, LastWill, Packet, Protocol, Publish, Subscribe, Unsubscribe};
use crate::message::QoS;

/// Decodes one packet from the front of `buf`.
///
/// Returns `Ok(None)` while the frame is incomplete, leaving `buf` untouched, so the caller can
/// read more and retry. A frame larger than `max_packet_size` is refused as soon as its length
/// is known, before its bytes arrive, so a peer cannot make us buffer what it claims.
pub fn decode(buf: &mut BytesMut, max_packet_size: usize) -> Result<Option<Packet>, DecodeError> {
    // Judge the first byte as soon as it arrives: a bad one need not wait for its body.
    if let Some(&first) = buf.first() {
        check_flags(first >> 4, first & 0x0f)?;
    }
    let Some((header_len, remaining)) = frame_header(buf)? else {
        return Ok(None);
    };
    let total = header_len + remaining;
    if total > max_packet_size {
        return Err(DecodeError::PacketTooLarge {
            size: total,
            max: max_packet_size,
        });
    }
    if buf.len() < total {
        return Ok(None);
    }
    let first = buf[0];
    let mut frame = buf.split_to(total).freeze();
    frame.advance(header_len);
    parse(first, frame).map(Some)
}

/// Parses the fixed header: `(header length, remaining length)`, `None` if incomplete.
fn frame_header(buf: &[u8]) -> Result<Option<(usize, usize)>, DecodeError> {
    let mut remaining = 0usize;
    for i in 0..4 {
        let Some(&byte) = buf.get(1 + i) else {
            return Ok(None);
        };
        remaining |= usize::from(byte & 0x7f) << (7 * i);
        if byte & 0x80 == 0 {
            return Ok(Some((2 + i, remaining)));
        }
    }
    Err(DecodeError::MalformedRemainingLength)
}

/// Checks the reserved flag bits of the fixed header [MQTT-2.2.2-2].
fn check_flags(packet_type: u8, flags: u8) -> Result<(), DecodeError> {
    let expected = match packet_type {
        3 => return Ok(()),
        6 | 8 | 10 => 0b0010,
        1..=14 => 0,
        _ => return Err(DecodeError::InvalidPacketType(packet_type)),
    };
    if flags == expected {
        Ok(())
    } else {
        Err(DecodeError::InvalidFlags { packet_type, flags })
    }
}

fn parse(first: u8, mut body: Bytes) -> Result<Packet, DecodeError> {
    let packet_type = first >> 4;
    let flags = first & 0x0f;
    let packet = match packet_type {
        1 => Packet::Connect(Box::new(parse_connect(&mut body)?)),
        2 => {
            let ack = take_u8(&mut body)?;
            let code = take_u8(&mut body)?;
            if ack & 0xfe != 0 {
                return Err(DecodeError::Malformed("CONNACK reserved bits set"));
            }
            Packet::ConnAck(super::ConnAck {
                session_present: ack & 1 == 1,
                code: return_code(code)?,
            })
        }
        3 => Packet::Publish(parse_publish(flags, &mut body)?),
        4 => Packet::PubAck(take_pkid(&mut body)?),
        5 => Packet::PubRec(take_pkid(&mut body)?),
        6 => Packet::PubRel(take_pkid(&mut body)?),
        7 => Packet::PubComp(take_pkid(&mut body)?),
        8 => Packet::Subscribe(parse_subscribe(&mut body)?),
        9 => {
            let pkid = take_pkid(&mut body)?;
            let mut codes = Vec::with_capacity(body.len());
            while body.has_remaining() {
                codes.push(match body.get_u8() {
                    0x80 => super::SubAckCode::Failure,
                    q => {
                        super::SubAckCode::Granted(QoS::from_u8(q).ok_or(DecodeError::InvalidQoS)?)
                    }
                });
            }
            Packet::SubAck(super::SubAck { pkid, codes })
        }
        10 => Packet::Unsubscribe(parse_unsubscribe(&mut body)?),
        11 => Packet::UnsubAck(take_pkid(&mut body)?),
        12 => Packet::PingReq,
        13 => Packet::PingResp,
        _ => Packet::Disconnect,
    };
    if body.has_remaining() {
        return Err(DecodeError::Malformed("trailing bytes after packet body"));
    }
    Ok(packet)
}

fn return_code(code: u8) -> Result<super::ConnectReturnCode, DecodeError> {
    use super::ConnectReturnCode::*;
    Ok(match code {
        0 => Accepted,
        1 => UnacceptableProtocolVersion,
        2 => IdentifierRejected,
        3 => ServerUnavailable,
        4 => BadUserNameOrPassword,
        5 => NotAuthorized,
        _ => return Err(DecodeError::Malformed("unknown CONNACK return code")),
    })
}

fn parse_connect(body: &mut Bytes) -> Result<Connect, DecodeError> {
    let name = take_bytes(body)?;
    let level = take_u8(body)?;
    // The top bit is Mosquitto's bridge mark (`try_private`): the client is another broker.
    let bridge = level & 0x80 != 0;
    let protocol = match (&name[..], level & 0x7f) {
        (b"MQTT", 4) => Protocol::V311,
        (b"MQIsdp", 3) => Protocol::V31,
        (b"MQTT", l) | (b"MQIsdp", l) => return Err(DecodeError::UnsupportedProtocolLevel(l)),
        _ => return Err(DecodeError::InvalidProtocolName),
    };
    let flags = take_u8(body)?;
    let will_flag = flags & 0x04 != 0;
    let will_qos = (flags >> 3) & 0x03;
    let will_retain = flags & 0x20 != 0;
    let password_flag = flags & 0x40 != 0;
    let username_flag = flags & 0x80 != 0;
    // [MQTT-3.1.2-3] reserved bit; [MQTT-3.1.2-11/13/15] will QoS/retain need the will flag;
    // [MQTT-3.1.2-22] a password needs a user name.
    if flags & 0x01 != 0
        || (!will_flag && (will_qos != 0 || will_retain))
        || (password_flag && !username_flag)
    {
        return Err(DecodeError::InvalidConnectFlags(flags));
    }
    let keep_alive = take_u16(body)?;
    let client_id = take_string(body)?;
    let will = if will_flag {
        // [MQTT-3.1.2-14] will QoS 3.
        let qos = QoS::from_u8(will_qos).ok_or(DecodeError::InvalidQoS)?;
        let topic = take_utf8(body)?;
        let payload = take_bytes(body)?;
        Some(LastWill {
            topic,
            payload,
            qos,
            retain: will_retain,
        })
    } else {
        None
    };
    let username = if username_flag {
        Some(take_string(body)?)
    } else {
        None
    };
    let password = if password_flag {
        Some(take_bytes(body)?)
    } else {
        None
    };
    Ok(Connect {
        protocol,
        bridge,
        clean_session: flags & 0x02 != 0,
        keep_alive,
        client_id,
        will,
        username,
        password,
    })
}

fn parse_publish(flags: u8, body: &mut Bytes) -> Result<Publish, DecodeError> {
    // [MQTT-3.3.1-4] both QoS bits set.
    let qos = QoS::from_u8((flags >> 1) & 0x03).ok_or(DecodeError::InvalidQoS)?;
    let topic = take_utf8(body)?;
    let pkid = if qos == QoS::AtMostOnce {
        None
    } else {
        Some(take_pkid(body)?)
    };
    Ok(Publish {
        dup: flags & 0x08 != 0,
        qos,
        retain: flags & 0x01 != 0,
        topic,
        pkid,
        payload: body.split_off(0),
    })
}

fn parse_subscribe(body: &mut Bytes) -> Result<Subscribe, DecodeError> {
    let pkid = take_pkid(body)?;
    let mut filters = Vec::new();
    while body.has_remaining() {
        let filter = take_string(body)?;
        let options = take_u8(body)?;
        // [MQTT-3.8.3-4] reserved bits and QoS 3.
        if options & 0xfc != 0 {
            return Err(DecodeError::InvalidQoS);
        }
        let qos = QoS::from_u8(options).ok_or(DecodeError::InvalidQoS)?;
        filters.push((filter, qos));
    }
    if filters.is_empty() {
        return Err(DecodeError::NoTopicFilters);
    }
    Ok(Subscribe { pkid, filters })
}

fn parse_unsubscribe(body: &mut Bytes) -> Result<Unsubscribe, DecodeError> {
    let pkid = take_pkid(body)?;
    let mut filters = Vec::new();
    while body.has_remaining() {
        filters.push(take_string(body)?);
    }
    if filters.is_empty() {
        return Err(DecodeError::NoTopicFilters);
    }
    Ok(Unsubscribe { pkid, filters })
}

const TRUNCATED: DecodeError = DecodeError::Malformed("field runs past the end of the packet");

fn take_u8(body: &mut Bytes) -> Result<u8, DecodeError> {
    if body.remaining() < 1 {
        return Err(TRUNCATED);
    }
    Ok(body.get_u8())
}

fn take_u16(body: &mut Bytes) -> Result<u16, DecodeError> {
    if body.remaining() < 2 {
        return Err(TRUNCATED);
    }
    Ok(body.get_u16())
}

fn take_pkid(body: &mut Bytes) -> Result<u16, DecodeError> {
    match take_u16(body)? {
        0 => Err(DecodeError::ZeroPacketId),
        id => Ok(id),
    }
}

/// A length-prefixed binary field.
fn take_bytes(body: &mut Bytes) -> Result<Bytes, DecodeError> {
    let len = usize::from(take_u16(body)?);
    if body.remaining() < len {
        return Err(TRUNCATED);
    }
    Ok(body.split_to(len))
}

/// A length-prefixed UTF-8 string, kept as bytes [MQTT-1.5.3-1, MQTT-1.5.3-2].
fn take_utf8(body: &mut Bytes) -> Result<Bytes, DecodeError> {
    let raw = take_bytes(body)?;
    check_utf8(&raw)?;
    Ok(raw)
}

fn take_string(body: &mut Bytes) -> Result<String, DecodeError> {
    let raw = take_bytes(body)?;
    check_utf8(&raw)?;
    // check_utf8 just proved it is UTF-8.
    Ok(String::from_utf8_lossy(&raw).into_owned())
}

/// Rust's UTF-8 check already refuses encoded surrogates and overlong forms.
fn check_utf8(raw: &[u8]) -> Result<(), DecodeError> {
    let s = std::str::from_utf8(raw).map_err(|_| DecodeError::BadUtf8)?;
    if s.contains('\0') {
        return Err(DecodeError::NullCharacter);
    }
    Ok(())
}
