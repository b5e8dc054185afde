//! Packet serialisation into a write buffer; reserved flags as the spec fixes them [MQTT-2.2.2-1].

use bytes::{BufMut, BytesMut};

use super::{Connect, Packet, Protocol, SubAckCode};
use crate::message::QoS;

/// Appends `packet` to `buf`.
pub fn encode(packet: &Packet, buf: &mut BytesMut) {
    match packet {
        Packet::Connect(c) => encode_connect(c, buf),
        Packet::ConnAck(ack) => {
            buf.put_slice(&[0x20, 0x02, u8::from(ack.session_present), ack.code as u8]);
        }
        Packet::Publish(p) => {
            encode_publish(&p.topic, &p.payload, p.qos, p.pkid, p.dup, p.retain, buf)
        }
        Packet::PubAck(id) => ack(0x40, *id, buf),
        Packet::PubRec(id) => ack(0x50, *id, buf),
        Packet::PubRel(id) => ack(0x62, *id, buf),
        Packet::PubComp(id) => ack(0x70, *id, buf),
        Packet::Subscribe(s) => {
            let len = 2 + s.filters.iter().map(|(f, _)| 3 + f.len()).sum::<usize>();
            header(0x82, len, buf);
            buf.put_u16(s.pkid);
            for (f, q) in &s.filters {
                put_str(f.as_bytes(), buf);
                buf.put_u8(*q as u8);
            }
        }
        Packet::SubAck(s) => {
            header(0x90, 2 + s.codes.len(), buf);
            buf.put_u16(s.pkid);
            for c in &s.codes {
                buf.put_u8(match c {
                    SubAckCode::Granted(q) => *q as u8,
                    SubAckCode::Failure => 0x80,
                });
            }
        }
        Packet::Unsubscribe(u) => {
            let len = 2 + u.filters.iter().map(|f| 2 + f.len()).sum::<usize>();
            header(0xa2, len, buf);
            buf.put_u16(u.pkid);
            for f in &u.filters {
                put_str(f.as_bytes(), buf);
            }
        }
        Packet::UnsubAck(id) => ack(0xb0, *id, buf),
        Packet::PingReq => buf.put_slice(&[0xc0, 0]),
        Packet::PingResp => buf.put_slice(&[0xd0, 0]),
        Packet::Disconnect => buf.put_slice(&[0xe0, 0]),
    }
}

/// Appends a PUBLISH built from its parts, so outbound messages need no `Packet` of their own.
pub fn encode_publish(
    topic: &[u8],
    payload: &[u8],
    qos: QoS,
    pkid: Option<u16>,
    dup: bool,
    retain: bool,
    buf: &mut BytesMut,
) {
    let id_len = if qos == QoS::AtMostOnce { 0 } else { 2 };
    let len = 2 + topic.len() + id_len + payload.len();
    let first = 0x30 | (u8::from(dup) << 3) | ((qos as u8) << 1) | u8::from(retain);
    buf.reserve(len + 5);
    header(first, len, buf);
    put_str(topic, buf);
    if qos != QoS::AtMostOnce {
        buf.put_u16(pkid.unwrap_or(0));
    }
    buf.put_slice(payload);
}

fn encode_connect(c: &Connect, buf: &mut BytesMut) {
    let (name, level): (&[u8], u8) = match c.protocol {
        Protocol::V311 => (b"MQTT", 4),
        Protocol::V31 => (b"MQIsdp", 3),
    };
    let level = level | if c.bridge { 0x80 } else { 0 };
    let mut flags = u8::from(c.clean_session) << 1;
    let mut len = 2 + name.len() + 4 + 2 + c.client_id.len();
    if let Some(w) = &c.will {
        flags |= 0x04 | ((w.qos as u8) << 3) | (u8::from(w.retain) << 5);
        len += 4 + w.topic.len() + w.payload.len();
    }
    if let Some(u) = &c.username {
        flags |= 0x80;
        len += 2 + u.len();
    }
    if let Some(p) = &c.password {
        flags |= 0x40;
        len += 2 + p.len();
    }
    header(0x10, len, buf);
    put_str(name, buf);
    buf.put_u8(level);
    buf.put_u8(flags);
    buf.put_u16(c.keep_alive);
    put_str(c.client_id.as_bytes(), buf);
    if let Some(w) = &c.will {
        put_str(&w.topic, buf);
        put_str(&w.payload, buf);
    }
    if let Some(u) = &c.username {
        put_str(u.as_bytes(), buf);
    }
    if let Some(p) = &c.password {
        put_str(p, buf);
    }
}

fn ack(first: u8, id: u16, buf: &mut BytesMut) {
    let [hi, lo] = id.to_be_bytes();
    buf.put_slice(&[first, 2, hi, lo]);
}

fn header(first: u8, mut remaining: usize, buf: &mut BytesMut) {
    buf.put_u8(first);
    loop {
        let mut byte = (remaining & 0x7f) as u8;
        remaining >>= 7;
        if remaining > 0 {
            byte |= 0x80;
        }
        buf.put_u8(byte);
        if remaining == 0 {
            break;
        }
    }
}

/// Callers guarantee `s.len() <= 65535`: topics and strings come from decoded packets.
fn put_str(s: &[u8], buf: &mut BytesMut) {
    buf.put_u16(s.len() as u16);
    buf.put_slice(s);
}
