//! What the writer does with one batch beyond writing it: what it can leave out (`Undone`),
//! and how long it lets lazy ops gather first (`Linger`).

use std::time::{Duration, Instant};

use super::Op;

/// How long a lazy op may wait in the open batch: longer than a connected subscriber that
/// keeps up takes to acknowledge a message under load, and short enough that a publisher
/// whose subscriber does not is held up little (and `Linger` stops waiting if it does not pay).
pub const LINGER: Duration = Duration::from_millis(10);

/// What a batch need not write because a later op in the same batch undoes it: a queue entry
/// made and done within the batch (a subscriber that keeps up acknowledges most messages
/// before the batch that stores them is written), and every entry of a session that ends in
/// the batch. The batch is atomic, so the disk ends in the same state with less written.
pub(super) struct Undone {
    /// Queue entries (session, message) stored and done within the batch.
    entries: rustc_hash::FxHashSet<(u64, u64)>,
    /// Sessions that end within the batch.
    ended: rustc_hash::FxHashSet<u64>,
    /// Queue entries the batch's messages would make.
    made: usize,
}

impl Undone {
    pub(super) fn find(ops: &[Op]) -> Undone {
        let mut fresh = rustc_hash::FxHashSet::default();
        let mut undone = Undone {
            entries: Default::default(),
            ended: Default::default(),
            made: 0,
        };
        for op in ops {
            match op {
                Op::Message { id, sessions, .. } => {
                    fresh.insert(*id);
                    undone.made += sessions.len();
                }
                Op::Done { sid, id } if fresh.contains(id) => {
                    undone.entries.insert((*sid, *id));
                }
                Op::SessionEnd { sid, .. } => {
                    undone.ended.insert(*sid);
                }
                _ => {}
            }
        }
        undone
    }

    /// The entry of message `id` for session `sid` is not to be written (or removed) here.
    pub(super) fn entry(&self, sid: u64, id: u64) -> bool {
        self.ended.contains(&sid) || self.entries.contains(&(sid, id))
    }
}

/// How long lazy ops wait in the open batch: `LINGER` while that pays (at least a quarter of
/// the queue entries a batch that waited so long would make are undone within it, so those
/// messages are never written), no time at all while it does not (subscribers that
/// acknowledge slowly would only hold their publishers up), tried again every `RETRY`.
pub(super) struct Linger {
    pays: bool,
    since: Instant,
}

/// How long lingering stays off once it did not pay.
const RETRY: Duration = Duration::from_millis(250);

impl Linger {
    pub(super) fn new() -> Linger {
        Linger {
            pays: true,
            since: Instant::now(),
        }
    }

    /// How long the first lazy op of a batch may wait now.
    pub(super) fn wait(&mut self) -> Duration {
        if !self.pays && self.since.elapsed() >= RETRY {
            self.pays = true;
        }
        if self.pays {
            LINGER
        } else {
            Duration::ZERO
        }
    }

    /// What the batch just taken showed; `lingered`: it was cut because its first lazy op
    /// had waited `LINGER` (a batch cut sooner by an op someone waits for says little).
    pub(super) fn learn(&mut self, undone: &Undone, lingered: bool) {
        if lingered && undone.made > 0 {
            let pays = undone.entries.len() * 4 >= undone.made;
            if self.pays && !pays {
                self.since = Instant::now();
            }
            self.pays = pays;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::message::{Message, QoS};
    use std::sync::Arc;

    /// A batch of `n` messages owed to one session each, of which the first `done` are
    /// acknowledged within it.
    fn batch(n: u64, done: u64) -> Undone {
        let msg = Arc::new(Message {
            topic: bytes::Bytes::from_static(b"t"),
            payload: bytes::Bytes::new(),
            qos: QoS::AtLeastOnce,
            retain: false,
        });
        let mut ops: Vec<Op> = (1..=n)
            .map(|id| Op::Message {
                id,
                msg: msg.clone(),
                sessions: vec![(1, QoS::AtLeastOnce)],
                retain: false,
            })
            .collect();
        ops.extend((1..=done).map(|id| Op::Done { sid: 1, id }));
        Undone::find(&ops)
    }

    #[test]
    fn lingering_goes_on_while_a_quarter_of_the_entries_are_undone_and_is_tried_again() {
        let mut linger = Linger::new();
        assert_eq!(linger.wait(), LINGER, "it starts on");
        linger.learn(&batch(4, 1), true);
        assert_eq!(linger.wait(), LINGER, "a quarter undone pays");
        linger.learn(&batch(4, 0), false);
        assert_eq!(linger.wait(), LINGER, "a batch cut early teaches nothing");
        linger.learn(&batch(5, 1), true);
        assert_eq!(linger.wait(), Duration::ZERO, "a fifth does not pay");
        linger.since = Instant::now() - RETRY;
        assert_eq!(linger.wait(), LINGER, "tried again after RETRY");
    }
}
