//! Pauses of a connection's input: while a subscriber it fed is congested (backpressure),
//! and behind a SUBSCRIBE or UNSUBSCRIBE until the session has changed its routes. During a
//! pause acks and PINGREQ are still handled; everything else is held, in order (see the
//! parent module's doc).

use std::collections::VecDeque;
use std::time::Duration;

use tokio::time::{timeout, Instant};

use super::Connected;
use crate::client::{Boxed, Routed, Transport};
use crate::codec::{self, DecodeError, Packet};

/// The longest a SUBSCRIBE or UNSUBSCRIBE holds the input after it.
const ROUTED_TIMEOUT: Duration = Duration::from_secs(5);

/// A backpressure pause: while a subscriber this client fed is congested, its further input
/// waits, so TCP slows the publisher down instead of the subscriber losing messages.
pub(super) struct Pause {
    /// Completes when the congested subscribers drained (or were found stuck); `None` once
    /// it has, while the held packets are handled.
    pub(super) relief: Option<Boxed<()>>,
    /// Packets read during the pause that must keep their order: all but acks and PINGREQ.
    pub(super) held: VecDeque<Packet>,
    /// Frame bytes in `held`.
    pub(super) held_bytes: usize,
}

impl<S: Transport + 'static> Connected<S> {
    /// The next packet to handle while there is a pause: during it, the next ack or PINGREQ
    /// in the read buffer (the rest is held); after it, the held packets first.
    #[cold]
    #[inline(never)]
    pub(super) fn next_with_pause(
        &mut self,
        max_packet: usize,
    ) -> Result<Option<Packet>, DecodeError> {
        let Some(pause) = &mut self.pause else {
            return codec::decode(&mut self.conn.rbuf, max_packet);
        };
        if pause.relief.is_none() {
            if let Some(p) = pause.held.pop_front() {
                return Ok(Some(p));
            }
            return codec::decode(&mut self.conn.rbuf, max_packet);
        }
        loop {
            let len = self.conn.rbuf.len();
            match codec::decode(&mut self.conn.rbuf, max_packet)? {
                Some(p) if !is_ack(&p) => {
                    pause.held_bytes += len - self.conn.rbuf.len();
                    pause.held.push_back(p);
                    // Received, if not yet handled: keepalive counts what the client sent.
                    self.got_packet = true;
                }
                next => return Ok(next),
            }
        }
    }

    /// Holds the input after a SUBSCRIBE or UNSUBSCRIBE until the session has changed its
    /// routes (a pause, as for backpressure: acks and PINGREQ still go through). Handled only
    /// when no pause waits, so it replaces no relief.
    pub(super) fn hold_until_routed(&mut self, routed: Routed) {
        let relief: Boxed<()> = Box::pin(async move {
            // A session that never answers is gone; the mailbox then closes the connection.
            let _ = timeout(ROUTED_TIMEOUT, routed.done).await;
            // Its routes hold the cluster interest now.
            drop(routed.hold);
        });
        self.pause_with(relief);
    }

    /// Starts (or renews) a pause for the subscribers the last PUBLISH congested.
    pub(super) fn start_pause(&mut self) {
        let patience = self.conn.config.load().session.backpressure_timeout;
        let congested = std::mem::take(&mut self.conn.congested);
        self.pause_with(Box::pin(crate::sessions::backlog::relieve(
            congested,
            Instant::now() + patience,
        )));
    }

    /// Holds further input (but acks and PINGREQ) until `relief` completes.
    fn pause_with(&mut self, relief: Boxed<()>) {
        match &mut self.pause {
            Some(p) => p.relief = Some(relief),
            None => {
                self.pause = Some(Box::new(Pause {
                    relief: Some(relief),
                    held: VecDeque::new(),
                    held_bytes: 0,
                }))
            }
        }
    }
}

/// True for the packets a pause does not hold back: acks of this client's deliveries, which
/// free the session it may be waiting for, and PINGREQ, which keeps it alive.
fn is_ack(p: &Packet) -> bool {
    matches!(
        p,
        Packet::PubAck(_) | Packet::PubRec(_) | Packet::PubComp(_) | Packet::PingReq
    )
}
