//! What a session has waiting for its connection: control packets (acks, resends), the
//! inflight window and the mqueue, boxed by the session only while any of it holds something.

use std::collections::VecDeque;

use super::Outbound;
use crate::config::SessionConfig;
use crate::message::QoS;
use crate::observability::metrics::Tally;
use crate::sessions::backlog::Backlog;
use crate::sessions::inflight::Inflight;
use crate::sessions::mqueue::{MQueue, Queued};

/// Everything waiting to be sent to the connection, or for its acknowledgement.
pub(super) struct Pending {
    pub(super) inflight: Inflight,
    pub(super) mqueue: MQueue,
    /// Packets that go before any queued PUBLISH: acks and resends.
    pub(super) control: VecDeque<Outbound>,
}

impl Pending {
    /// The pending state in `slot`, made when first needed.
    pub(super) fn made<'a>(
        slot: &'a mut Option<Box<Pending>>,
        cfg: &SessionConfig,
    ) -> &'a mut Pending {
        slot.get_or_insert_with(|| {
            Box::new(Pending {
                inflight: Inflight::new(cfg.max_inflight_messages, cfg.max_inflight_bytes),
                mqueue: MQueue::new(
                    cfg.max_queued_messages,
                    cfg.max_queued_bytes,
                    cfg.queue_overflow,
                ),
                control: VecDeque::new(),
            })
        })
    }

    /// True if nothing is queued or in flight.
    pub(super) fn is_empty(&self) -> bool {
        self.control.is_empty() && self.mqueue.is_empty() && self.inflight.is_empty()
    }

    /// True if `next` would produce a packet now.
    pub(super) fn has_work(&self) -> bool {
        !self.control.is_empty()
            || self
                .mqueue
                .front()
                .is_some_and(|q| q.qos == QoS::AtMostOnce || self.inflight.has_room())
    }

    /// The next packet for the connection: control first, then the queue head if the
    /// inflight window lets it go.
    /// `on_sent` hears of each stored message given a packet id.
    pub(super) fn next(
        &mut self,
        sent: &mut Tally,
        backlog: &Backlog,
        on_sent: &mut impl FnMut(&Queued, u16),
    ) -> Option<Outbound> {
        if let Some(out) = self.control.pop_front() {
            return Some(out);
        }
        let front = self.mqueue.front()?;
        let pkid = if front.qos == QoS::AtMostOnce {
            None
        } else {
            Some(self.inflight.insert(front.clone())?)
        };
        let q = self.mqueue.pop()?;
        if let Some(id) = pkid {
            if q.stored > 0 {
                on_sent(&q, id);
            }
        }
        backlog.removed(1, true);
        sent.add(q.qos, q.msg.payload.len());
        Some(Outbound::Publish {
            msg: q.msg,
            qos: q.qos,
            pkid,
            dup: false,
            retain: q.retain,
        })
    }
}
