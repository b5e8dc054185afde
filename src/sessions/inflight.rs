//! The outbound window: QoS 1/2 messages sent to the client and not yet acknowledged, by
//! packet id, with the id allocator and the order for resends. It is bounded by count and,
//! if configured, by the payload bytes it holds (one message always fits).
//!
//! Packet ids are never 0 and never reused while in flight [MQTT-2.3.1-4]; they count up and
//! wrap from 65535 to 1.

use std::collections::BTreeMap;
use std::sync::Arc;

use crate::sessions::mqueue::Queued;
use crate::store::Owed;

/// Where an outbound QoS 1/2 flow stands.
#[derive(Debug, Clone)]
pub enum Flight {
    /// PUBLISH sent; waiting for PUBACK (QoS 1) or PUBREC (QoS 2).
    Publish(Queued),
    /// PUBREL sent; waiting for PUBCOMP. The message itself is no longer kept [MQTT-4.3.3-1],
    /// only its id in the store (0 if it is not stored) and what its publisher waits on.
    PubRel(u64, Option<Arc<Owed>>),
}

/// The inflight table of one session.
#[derive(Debug)]
pub struct Inflight {
    /// A B-tree: no memory while empty and small in every session; a window holds at most a
    /// few hundred ids.
    entries: BTreeMap<u16, (u64, Flight)>,
    max: u16,
    next_id: u16,
    seq: u64,
    /// Payload bytes of the messages held (PUBREL flows hold none).
    bytes: usize,
    /// Most payload bytes in flight; 0 = unlimited.
    max_bytes: usize,
}

impl Inflight {
    /// An empty window of `max` slots (at least 1, at most 65535) and `max_bytes` payload
    /// bytes (0 = unlimited).
    pub fn new(max: usize, max_bytes: usize) -> Self {
        Inflight {
            entries: BTreeMap::new(),
            max: max.clamp(1, 65_535) as u16,
            next_id: 0,
            seq: 0,
            bytes: 0,
            max_bytes,
        }
    }

    /// Flows in progress.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// True if nothing is in flight.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// True if another flow may start: a free slot, and bytes to spare (as Mosquitto's
    /// `max_inflight_bytes`, a message may take the window past the limit, so one always goes).
    pub fn has_room(&self) -> bool {
        self.entries.len() < usize::from(self.max)
            && (self.max_bytes == 0 || self.bytes < self.max_bytes)
    }

    /// Starts a flow for `item`: allocates a free packet id, or `None` if the window is full.
    pub fn insert(&mut self, item: Queued) -> Option<u16> {
        if !self.has_room() {
            return None;
        }
        let id = self.free_id();
        self.seq += 1;
        self.bytes += item.msg.payload.len();
        self.entries.insert(id, (self.seq, Flight::Publish(item)));
        Some(id)
    }

    fn free_id(&mut self) -> u16 {
        loop {
            self.next_id = self.next_id.checked_add(1).unwrap_or(1);
            if !self.entries.contains_key(&self.next_id) {
                return self.next_id;
            }
        }
    }

    /// PUBACK: ends a QoS 1 flow. False if the id was not awaiting a PUBACK.
    pub fn puback(&mut self, id: u16) -> bool {
        match self.entries.get(&id) {
            Some((_, Flight::Publish(q))) => {
                self.bytes -= q.msg.payload.len();
                self.entries.remove(&id).is_some()
            }
            _ => false,
        }
    }

    /// PUBREC: the QoS 2 flow moves to awaiting PUBCOMP. False if the id was not awaiting one.
    pub fn pubrec(&mut self, id: u16) -> bool {
        match self.entries.get_mut(&id) {
            Some((_, flight @ Flight::Publish(_))) => {
                let rel = Flight::PubRel(0, None);
                if let Flight::Publish(q) = std::mem::replace(flight, rel) {
                    self.bytes -= q.msg.payload.len();
                    *flight = Flight::PubRel(q.stored, q.owed);
                }
                true
            }
            Some((_, Flight::PubRel(..))) => true,
            None => false,
        }
    }

    /// PUBCOMP: ends a QoS 2 flow. False if the id was not awaiting one.
    pub fn pubcomp(&mut self, id: u16) -> bool {
        match self.entries.get(&id) {
            Some((_, Flight::PubRel(..))) => self.entries.remove(&id).is_some(),
            _ => false,
        }
    }

    /// The store id of the message in flight as `id` (0: none, or not stored), and what its
    /// publisher waits on.
    pub fn stored(&self, id: u16) -> (u64, Option<Arc<Owed>>) {
        match self.entries.get(&id) {
            Some((_, Flight::Publish(q))) => (q.stored, q.owed.clone()),
            Some((_, Flight::PubRel(s, owed))) => (*s, owed.clone()),
            None => (0, None),
        }
    }

    /// Puts back a flow read from the store, under its original packet id (resent in the
    /// order restored, after the others).
    pub fn restore(&mut self, id: u16, flight: Flight) {
        if id == 0 || self.entries.contains_key(&id) {
            return;
        }
        if let Flight::Publish(q) = &flight {
            self.bytes += q.msg.payload.len();
        }
        self.seq += 1;
        self.entries.insert(id, (self.seq, flight));
    }

    /// Ends, in the order they started, the flows still awaiting PUBACK or PUBREC whose
    /// message `take` picks (it sees each once); how many.
    pub fn remove_where(&mut self, mut take: impl FnMut(&Queued) -> bool) -> usize {
        // `take` may hand the message on: it sees them in the order they started.
        let ids: Vec<u16> = self
            .in_order()
            .into_iter()
            .filter(|(_, f)| matches!(f, Flight::Publish(q) if take(q)))
            .map(|(id, _)| id)
            .collect();
        for &id in &ids {
            if let Some((_, Flight::Publish(q))) = self.entries.remove(&id) {
                self.bytes -= q.msg.payload.len();
            }
        }
        ids.len()
    }

    /// Every flow in the order it started, for resending after a reconnect [MQTT-4.4.0-1].
    pub fn in_order(&self) -> Vec<(u16, &Flight)> {
        let mut all: Vec<(u64, u16, &Flight)> = self
            .entries
            .iter()
            .map(|(id, (seq, f))| (*seq, *id, f))
            .collect();
        all.sort_unstable_by_key(|(seq, _, _)| *seq);
        all.into_iter().map(|(_, id, f)| (id, f)).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::message::{Message, QoS};
    use bytes::Bytes;
    use std::sync::Arc;

    fn item() -> Queued {
        sized(0)
    }

    fn sized(len: usize) -> Queued {
        Queued {
            msg: Arc::new(Message {
                topic: Bytes::from_static(b"t"),
                payload: Bytes::from(vec![0; len]),
                qos: QoS::AtLeastOnce,
                retain: false,
            }),
            qos: QoS::AtLeastOnce,
            retain: false,
            stored: 0,
            owed: None,
            share: None,
        }
    }

    #[test]
    fn window_limit() {
        let mut f = Inflight::new(2, 0);
        assert_eq!(f.insert(item()), Some(1));
        assert_eq!(f.insert(item()), Some(2));
        assert_eq!(f.insert(item()), None);
        assert!(f.puback(1));
        assert!(!f.puback(1), "already acknowledged");
        assert_eq!(f.insert(item()), Some(3));
    }

    #[test]
    fn byte_limit_beside_the_count() {
        let mut f = Inflight::new(10, 100);
        let big = f.insert(sized(150)).expect("one message always goes");
        assert!(!f.has_room());
        assert_eq!(f.insert(sized(1)), None);
        assert!(f.puback(big));
        let a = f.insert(sized(60)).expect("room");
        let b = f.insert(sized(60)).expect("still under 100 before it");
        assert_eq!(f.insert(sized(1)), None, "120 bytes in flight");
        assert!(f.pubrec(a), "a PUBREL flow holds no payload");
        assert!(f.has_room());
        assert!(f.pubrec(b));
        assert_eq!(f.bytes, 0);
    }

    #[test]
    fn ids_wrap_skip_zero_and_in_use() {
        // [MQTT-2.3.1-4]
        let mut f = Inflight::new(3, 0);
        let held = f.insert(item()).expect("room");
        assert_eq!(held, 1);
        let mut seen = 0u32;
        for _ in 0..70_000u32 {
            let id = f.insert(item()).expect("room");
            assert_ne!(id, 0);
            assert_ne!(id, held, "id 1 is still in flight");
            assert!(f.puback(id));
            seen += 1;
        }
        assert_eq!(seen, 70_000);
    }

    #[test]
    fn qos2_states_and_order() {
        let mut f = Inflight::new(10, 0);
        let a = f.insert(item()).expect("room");
        let b = f.insert(item()).expect("room");
        let c = f.insert(item()).expect("room");
        assert!(f.pubrec(b));
        assert!(!f.pubcomp(a), "a awaits PUBACK/PUBREC, not PUBCOMP");
        assert!(!f.puback(b), "b awaits PUBCOMP");
        let order: Vec<u16> = f.in_order().iter().map(|(id, _)| *id).collect();
        assert_eq!(order, [a, b, c]);
        assert!(matches!(f.in_order()[1].1, Flight::PubRel(..)));
        assert!(f.pubcomp(b));
        assert_eq!(f.len(), 2);
    }
}
