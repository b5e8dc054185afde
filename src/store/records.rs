//! How the store lays state out in fjall: one keyspace per kind of record, keys that sort the
//! way recovery wants them (a session's queue by message id, so per-publisher order survives),
//! and small hand-rolled value encodings that reject anything short or malformed.

use std::sync::Arc;

use bytes::Bytes;

use crate::message::{Message, Publisher, QoS};

/// The keyspaces, by name.
pub const SESSIONS: &str = "sessions";
/// Subscriptions: session id + filter -> QoS.
pub const SUBS: &str = "subs";
/// Messages owed to at least one persistent session: message id -> message.
pub const MSGS: &str = "msgs";
/// Per-session queue and inflight state: session id + message id -> entry.
pub const QUEUE: &str = "queue";
/// Inbound QoS 2 ids awaiting PUBREL: session id + packet id.
pub const AWAIT_REL: &str = "await_rel";
/// Retained messages: topic -> message and publisher.
pub const RETAINED: &str = "retained";
/// The store's own bookkeeping: the number of the last batch written (see `mark`).
pub const META: &str = "meta";

/// A record that does not decode: the store is corrupt.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("malformed {what} record")]
pub struct Malformed {
    /// Which kind of record.
    pub what: &'static str,
}

/// A persistent session as stored, keyed by its client id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionRecord {
    /// The session's id in the store (keys of its subscriptions and queue).
    pub sid: u64,
    /// The user name that made it (a session is resumed only by the same one).
    pub username: Option<Arc<str>>,
    /// Wall-clock milliseconds since the epoch at which it was last detached; 0 while a
    /// connection was attached when the broker stopped.
    pub detached_at_ms: u64,
}

/// Where a queued message stands for one session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QueueEntry {
    /// The QoS it is delivered at.
    pub qos: QoS,
    /// Its outbound packet id, once sent (0 = still queued).
    pub pkid: u16,
    /// PUBREC received: only PUBREL is owed.
    pub released: bool,
    /// The outgoing PUBLISH carries RETAIN = 1: it was owed as a retained message on
    /// SUBSCRIBE [MQTT-3.3.1-8], not routed live.
    pub retain: bool,
}

/// Reads fields off a value, failing as `Malformed` on a short one.
struct Reader<'a> {
    rest: &'a [u8],
    what: &'static str,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], Malformed> {
        if self.rest.len() < n {
            return Err(Malformed { what: self.what });
        }
        let (head, tail) = self.rest.split_at(n);
        self.rest = tail;
        Ok(head)
    }

    fn u8(&mut self) -> Result<u8, Malformed> {
        Ok(self.take(1)?[0])
    }

    fn u16(&mut self) -> Result<u16, Malformed> {
        let b = self.take(2)?;
        Ok(u16::from_be_bytes([b[0], b[1]]))
    }

    fn u64(&mut self) -> Result<u64, Malformed> {
        let mut a = [0; 8];
        a.copy_from_slice(self.take(8)?);
        Ok(u64::from_be_bytes(a))
    }

    fn qos(&mut self) -> Result<QoS, Malformed> {
        let what = self.what;
        QoS::from_u8(self.u8()?).ok_or(Malformed { what })
    }

    fn text(&mut self) -> Result<Arc<str>, Malformed> {
        let len = usize::from(self.u16()?);
        let what = self.what;
        std::str::from_utf8(self.take(len)?)
            .map(Arc::from)
            .map_err(|_| Malformed { what })
    }

    fn optional_text(&mut self) -> Result<Option<Arc<str>>, Malformed> {
        match self.u8()? {
            0 => Ok(None),
            _ => self.text().map(Some),
        }
    }

    fn end(self) -> Result<(), Malformed> {
        if self.rest.is_empty() {
            Ok(())
        } else {
            Err(Malformed { what: self.what })
        }
    }
}

fn reader<'a>(bytes: &'a [u8], what: &'static str) -> Reader<'a> {
    Reader { rest: bytes, what }
}

fn put_text(out: &mut Vec<u8>, text: &str) {
    // Client ids, user names and topics are at most 65,535 bytes (MQTT strings).
    out.extend_from_slice(&(text.len().min(65_535) as u16).to_be_bytes());
    out.extend_from_slice(&text.as_bytes()[..text.len().min(65_535)]);
}

fn put_optional_text(out: &mut Vec<u8>, text: Option<&str>) {
    match text {
        None => out.push(0),
        Some(t) => {
            out.push(1);
            put_text(out, t);
        }
    }
}

/// Key of a session's record of one kind: its id, then (for subscriptions, queue entries and
/// awaited ids) what identifies the record within it.
pub fn session_key(sid: u64, rest: &[u8]) -> Vec<u8> {
    let mut key = Vec::with_capacity(8 + rest.len());
    key.extend_from_slice(&sid.to_be_bytes());
    key.extend_from_slice(rest);
    key
}

/// The session id and the rest of a key made by `session_key`.
pub fn split_session_key<'a>(
    key: &'a [u8],
    what: &'static str,
) -> Result<(u64, &'a [u8]), Malformed> {
    let mut r = reader(key, what);
    let sid = r.u64()?;
    Ok((sid, r.rest))
}

impl SessionRecord {
    /// The stored value.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(24);
        out.extend_from_slice(&self.sid.to_be_bytes());
        out.extend_from_slice(&self.detached_at_ms.to_be_bytes());
        put_optional_text(&mut out, self.username.as_deref());
        out
    }

    /// Reads a stored value.
    pub fn decode(bytes: &[u8]) -> Result<SessionRecord, Malformed> {
        let mut r = reader(bytes, "session");
        let sid = r.u64()?;
        let detached_at_ms = r.u64()?;
        let username = r.optional_text()?;
        r.end()?;
        Ok(SessionRecord {
            sid,
            username,
            detached_at_ms,
        })
    }
}

impl QueueEntry {
    /// The stored value.
    pub fn encode(&self) -> [u8; 4] {
        let [a, b] = self.pkid.to_be_bytes();
        let flags = u8::from(self.released) | u8::from(self.retain) << 1;
        [self.qos as u8, a, b, flags]
    }

    /// Reads a stored value.
    pub fn decode(bytes: &[u8]) -> Result<QueueEntry, Malformed> {
        let mut r = reader(bytes, "queue");
        let (qos, pkid, flags) = (r.qos()?, r.u16()?, r.u8()?);
        if flags > 3 {
            return Err(Malformed {
                what: "queue entry flags",
            });
        }
        let entry = QueueEntry {
            qos,
            pkid,
            released: flags & 1 != 0,
            retain: flags & 2 != 0,
        };
        r.end()?;
        Ok(entry)
    }
}

/// A message's stored value.
pub fn encode_message(msg: &Message) -> Vec<u8> {
    let mut out = Vec::with_capacity(4 + msg.topic.len() + msg.payload.len());
    out.push(msg.qos as u8);
    out.push(u8::from(msg.retain));
    put_text(&mut out, msg.topic_str());
    out.extend_from_slice(&msg.payload);
    out
}

/// Reads a message's stored value.
pub fn decode_message(bytes: &[u8]) -> Result<Message, Malformed> {
    let mut r = reader(bytes, "message");
    let qos = r.qos()?;
    let retain = r.u8()? != 0;
    let topic = r.text()?;
    Ok(Message {
        topic: Bytes::copy_from_slice(topic.as_bytes()),
        payload: Bytes::copy_from_slice(r.rest),
        qos,
        retain,
    })
}

/// A retained message's stored value (its topic is the key).
pub fn encode_retained(msg: &Message, from: Option<&Publisher>) -> Vec<u8> {
    let mut out = Vec::with_capacity(16 + msg.payload.len());
    out.push(msg.qos as u8);
    match from {
        None => out.push(0),
        Some(p) => {
            out.push(1);
            put_text(&mut out, &p.client_id);
            put_optional_text(&mut out, p.username.as_deref());
        }
    }
    out.extend_from_slice(&msg.payload);
    out
}

/// Reads a retained message stored under `topic`.
pub fn decode_retained(
    topic: &[u8],
    bytes: &[u8],
) -> Result<(Message, Option<Publisher>), Malformed> {
    let mut r = reader(bytes, "retained");
    let qos = r.qos()?;
    let from = match r.u8()? {
        0 => None,
        _ => Some(Publisher {
            client_id: r.text()?,
            username: r.optional_text()?,
            bridge_session: None,
        }),
    };
    if std::str::from_utf8(topic).is_err() {
        return Err(Malformed { what: "retained" });
    }
    let msg = Message {
        topic: Bytes::copy_from_slice(topic),
        payload: Bytes::copy_from_slice(r.rest),
        qos,
        retain: true,
    };
    Ok((msg, from))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_round_trip_and_short_ones_are_refused() {
        let s = SessionRecord {
            sid: 7,
            username: Some("al/+#ice".into()),
            detached_at_ms: 123,
        };
        assert_eq!(SessionRecord::decode(&s.encode()), Ok(s.clone()));
        let anon = SessionRecord {
            username: None,
            ..s.clone()
        };
        assert_eq!(SessionRecord::decode(&anon.encode()), Ok(anon));
        let enc = s.encode();
        assert!(SessionRecord::decode(&enc[..enc.len() - 1]).is_err());
        let q = QueueEntry {
            qos: QoS::ExactlyOnce,
            pkid: 65_535,
            released: true,
            retain: true,
        };
        assert_eq!(QueueEntry::decode(&q.encode()), Ok(q));
        assert!(QueueEntry::decode(&[3, 0, 0, 0]).is_err(), "QoS 3");
        let m = Message {
            topic: Bytes::from_static(b"a/b"),
            payload: Bytes::from_static(b"\x00payload"),
            qos: QoS::AtLeastOnce,
            retain: false,
        };
        assert_eq!(decode_message(&encode_message(&m)), Ok(m.clone()));
        assert!(
            decode_message(&[1, 0, 0, 9, b'a']).is_err(),
            "topic longer than value"
        );
        let from = Publisher {
            client_id: "c".into(),
            username: None,
            bridge_session: None,
        };
        let (back, who) = decode_retained(b"a/b", &encode_retained(&m, Some(&from))).expect("ok");
        assert_eq!(
            (back.payload, back.retain, who),
            (m.payload, true, Some(from))
        );
        let key = session_key(9, b"f/#");
        assert_eq!(split_session_key(&key, "sub"), Ok((9, &b"f/#"[..])));
    }
}
