//! The wire form of messages forwarded between nodes: one NATS message carries every message
//! on one topic that was waiting to go out (under load many, at a low rate one), so NATS's
//! cost per message is shared by the batch. Its payload:
//!
//! | field | bytes |
//! |---|---|
//! | version (1) | 1 |
//! | origin: the sending process's `epoch` | 8 |
//! | sequence number of this frame from that origin | 8 |
//! | groups served on the origin's node (`group_hash`es) | 1 + 8 each |
//! | messages: each its flags (QoS, 4 = retained) and length, then its payload | 2 + (1 + 4 + n) each |
//!
//! The topic is the subject's. Payloads come out as slices of the frame (no copy).

use bytes::{Buf, BufMut, Bytes, BytesMut};

use crate::message::{Message, QoS};

const VERSION: u8 = 1;

/// Most messages in one frame.
pub(super) const MAX_MESSAGES: usize = 1024;

/// A frame's header, as read back.
#[derive(Debug, PartialEq, Eq)]
pub(super) struct Header {
    pub(super) origin: u64,
    pub(super) seq: u64,
    pub(super) served: Vec<u64>,
}

/// Encodes `msgs` (all on one topic) as one frame.
pub(super) fn encode(origin: u64, seq: u64, served: &[u64], msgs: &[&Message]) -> Bytes {
    let body: usize = msgs.iter().map(|m| 5 + m.payload.len()).sum();
    let mut b = BytesMut::with_capacity(20 + served.len() * 8 + body);
    b.put_u8(VERSION);
    b.put_u64(origin);
    b.put_u64(seq);
    b.put_u8(served.len().min(255) as u8);
    for h in served.iter().take(255) {
        b.put_u64(*h);
    }
    b.put_u16(msgs.len() as u16);
    for m in msgs {
        b.put_u8(m.qos as u8 | u8::from(m.retain) << 2);
        b.put_u32(m.payload.len() as u32);
        b.put_slice(&m.payload);
    }
    b.freeze()
}

/// The header and messages of a frame for `topic`; `None` if it is not a frame of ours.
pub(super) fn decode(topic: &Bytes, mut b: Bytes) -> Option<(Header, Vec<Message>)> {
    if b.remaining() < 1 + 8 + 8 + 1 || b.get_u8() != VERSION {
        return None;
    }
    let origin = b.get_u64();
    let seq = b.get_u64();
    let n = b.get_u8() as usize;
    if b.remaining() < n * 8 + 2 {
        return None;
    }
    let served = (0..n).map(|_| b.get_u64()).collect();
    let count = b.get_u16() as usize;
    let mut msgs = Vec::with_capacity(count.min(MAX_MESSAGES));
    for _ in 0..count {
        if b.remaining() < 5 {
            return None;
        }
        let flags = b.get_u8();
        let len = b.get_u32() as usize;
        if b.remaining() < len {
            return None;
        }
        msgs.push(Message {
            topic: topic.clone(),
            payload: b.split_to(len),
            qos: QoS::from_u8(flags & 3)?,
            retain: flags & 4 != 0,
        });
    }
    Some((
        Header {
            origin,
            seq,
            served,
        },
        msgs,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_frame_round_trips() {
        let topic = Bytes::from_static(b"a/b");
        let m = |p: &'static [u8], qos, retain| Message {
            topic: topic.clone(),
            payload: Bytes::from_static(p),
            qos,
            retain,
        };
        let (a, b) = (
            m(b"one", QoS::AtMostOnce, false),
            m(b"", QoS::ExactlyOnce, true),
        );
        let frame = encode(7, 9, &[3, 4], &[&a, &b]);
        let (h, msgs) = decode(&topic, frame).expect("decodes");
        assert_eq!(
            h,
            Header {
                origin: 7,
                seq: 9,
                served: vec![3, 4]
            }
        );
        assert_eq!(msgs, [a, b]);
        assert_eq!(decode(&topic, Bytes::from_static(b"\x02")), None);
        let short = encode(7, 9, &[], &[&m(b"payload", QoS::AtMostOnce, false)]);
        assert_eq!(decode(&topic, short.slice(..short.len() - 1)), None);
    }
}
