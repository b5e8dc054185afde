//! The wire form of a session moving between nodes (`sessions::handover`): the takeover
//! request says whether the new CONNECT is clean, and the answer carries the session, if it
//! moves. A session too large for one NATS message moves with as many of its messages as
//! fit (the oldest first); the rest are dropped and counted.

use std::sync::Arc;

use bytes::{Buf, BufMut, Bytes, BytesMut};

use crate::message::{Message, QoS};
use crate::sessions::handover::{Handover, Moved};

/// A takeover request: the flag, then the client id.
pub(super) fn request(client_id: &str, clean: bool) -> Bytes {
    let mut b = BytesMut::with_capacity(1 + client_id.len());
    b.put_u8(u8::from(clean));
    b.put_slice(client_id.as_bytes());
    b.freeze()
}

/// The client id and the clean flag of a takeover request.
pub(super) fn read_request(b: &[u8]) -> Option<(String, bool)> {
    let (&flag, id) = b.split_first()?;
    Some((String::from_utf8_lossy(id).into_owned(), flag == 1))
}

fn put_str16(b: &mut BytesMut, s: &str) {
    let n = s.len().min(u16::MAX as usize);
    b.put_u16(n as u16);
    b.put_slice(&s.as_bytes()[..n]);
}

/// `h` in at most `limit` bytes, and how many of its messages did not fit.
pub(super) fn encode(h: &Handover, limit: usize) -> (Bytes, usize) {
    let mut b = BytesMut::new();
    match &h.username {
        None => b.put_u16(u16::MAX),
        Some(u) => put_str16(&mut b, &u[..u.len().min(u16::MAX as usize - 1)]),
    }
    b.put_u32(h.subscriptions.len() as u32);
    for (filter, qos) in &h.subscriptions {
        put_str16(&mut b, filter);
        b.put_u8(*qos as u8);
    }
    b.put_u32(h.awaiting_rel.len() as u32);
    for id in &h.awaiting_rel {
        b.put_u16(*id);
    }
    let count_at = b.len();
    b.put_u32(0);
    let mut sent = 0u32;
    for m in &h.messages {
        let size = 1 + 1 + 2 + 1 + 4 + m.msg.topic.len() + 4 + m.msg.payload.len();
        if b.len() + size > limit {
            break;
        }
        b.put_u8(m.qos as u8);
        b.put_u8(u8::from(m.retain));
        b.put_u16(m.pkid);
        b.put_u8(u8::from(m.released));
        b.put_u32(m.msg.topic.len() as u32);
        b.put_slice(&m.msg.topic);
        b.put_u32(m.msg.payload.len() as u32);
        b.put_slice(&m.msg.payload);
        sent += 1;
    }
    b[count_at..count_at + 4].copy_from_slice(&sent.to_be_bytes());
    (b.freeze(), h.messages.len() - sent as usize)
}

fn take_str16(b: &mut Bytes) -> Option<String> {
    if b.remaining() < 2 {
        return None;
    }
    let n = b.get_u16() as usize;
    if b.remaining() < n {
        return None;
    }
    String::from_utf8(b.split_to(n).to_vec()).ok()
}

fn take_bytes32(b: &mut Bytes) -> Option<Bytes> {
    if b.remaining() < 4 {
        return None;
    }
    let n = b.get_u32() as usize;
    (b.remaining() >= n).then(|| b.split_to(n))
}

/// The session `b` carries for `client_id`; `None` if it is malformed.
pub(super) fn decode(client_id: &str, mut b: Bytes) -> Option<Handover> {
    if b.remaining() < 2 {
        return None;
    }
    let username = if b[..2] == [0xff, 0xff] {
        b.advance(2);
        None
    } else {
        Some(Arc::from(take_str16(&mut b)?))
    };
    let count = |b: &mut Bytes| (b.remaining() >= 4).then(|| b.get_u32() as usize);
    let n = count(&mut b)?;
    let mut subscriptions = Vec::with_capacity(n.min(1024));
    for _ in 0..n {
        let filter = take_str16(&mut b)?;
        if !b.has_remaining() {
            return None;
        }
        subscriptions.push((filter, QoS::from_u8(b.get_u8())?));
    }
    let n = count(&mut b)?;
    let mut awaiting_rel = Vec::with_capacity(n.min(1024));
    for _ in 0..n {
        if b.remaining() < 2 {
            return None;
        }
        awaiting_rel.push(b.get_u16());
    }
    let n = count(&mut b)?;
    let mut messages = Vec::with_capacity(n.min(1024));
    for _ in 0..n {
        if b.remaining() < 5 {
            return None;
        }
        let qos = QoS::from_u8(b.get_u8())?;
        let retain = b.get_u8() == 1;
        let pkid = b.get_u16();
        let released = b.get_u8() == 1;
        let topic = take_bytes32(&mut b)?;
        let payload = take_bytes32(&mut b)?;
        messages.push(Moved {
            msg: Arc::new(Message {
                topic,
                payload,
                qos,
                retain,
            }),
            qos,
            retain,
            pkid,
            released,
        });
    }
    Some(Handover {
        client_id: client_id.into(),
        username,
        subscriptions,
        awaiting_rel,
        messages,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Handover {
        // The message's own RETAIN flag travels as the delivery's.
        let msg = |t: &'static [u8], p: &'static [u8], retain| {
            Arc::new(Message {
                topic: Bytes::from_static(t),
                payload: Bytes::from_static(p),
                qos: QoS::AtLeastOnce,
                retain,
            })
        };
        Handover {
            client_id: "c".into(),
            username: Some("alice".into()),
            subscriptions: vec![
                ("a/#".into(), QoS::AtLeastOnce),
                ("b".into(), QoS::ExactlyOnce),
            ],
            awaiting_rel: vec![7, 9],
            messages: vec![
                Moved {
                    msg: msg(b"a/1", b"in flight", false),
                    qos: QoS::AtLeastOnce,
                    retain: false,
                    pkid: 3,
                    released: false,
                },
                Moved {
                    msg: msg(b"a/2", b"queued", true),
                    qos: QoS::AtLeastOnce,
                    retain: true,
                    pkid: 0,
                    released: false,
                },
            ],
        }
    }

    #[test]
    fn a_session_round_trips_and_what_does_not_fit_is_counted() {
        let h = sample();
        let (b, left) = encode(&h, usize::MAX);
        assert_eq!(left, 0);
        assert_eq!(decode("c", b), Some(h.clone()));
        let (b, left) = encode(&h, 40);
        assert_eq!(left, 2, "neither message fits in 40 bytes");
        let small = decode("c", b).expect("decodes");
        assert_eq!(small.subscriptions, h.subscriptions);
        assert!(small.messages.is_empty());
        assert_eq!(decode("c", Bytes::from_static(b"\x00")), None);
        assert_eq!(
            read_request(&request("id/+#", true)),
            Some(("id/+#".into(), true))
        );
    }
}
