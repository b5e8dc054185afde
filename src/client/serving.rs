//! The connected phase: one hand-written poll loop over the connection's sources.
//!
//! | source | polled | what it does |
//! |---|---|---|
//! | kick (`outbound`) | every turn | takeover, discard or shutdown: close |
//! | keepalive timer | every turn | 1.5 x keepalive without a whole packet: close |
//! | write (`wbuf`) | while it holds bytes | a pending write never stops reading (below) |
//! | fill (`outbound`) | when `wbuf` is empty | the session's next batch into `wbuf` |
//! | read | unless a command waits for room in the mailbox, or reading would grow an unread `wbuf` past `ACKS_WHILE_WRITING`, or a pause holds `PAUSE_LIMIT` | packets in, one at a time |
//!
//! Fill and read take turns going first, so neither starves the other.
//!
//! Keepalive is judged by what the client sent [MQTT-3.1.2-24]: input is read while a slow
//! downlink drains a backlog, so its PINGREQs are seen. Reading stops only when the acks it
//! produces would pile up unwritten, which is TCP flow control for a client that sends but
//! does not read.
//!
//! Backpressure (see `backlog.rs`) is checked after every PUBLISH: the first one that
//! congests a subscriber starts a pause, and the rest of the input waits. During the pause
//! acks of this client's own deliveries (PUBACK, PUBREC, PUBCOMP) and PINGREQ are still
//! handled as they arrive; everything else is held, in order, up to `PAUSE_LIMIT`. So a
//! client subscribed to its own topics, or two clients subscribed to each other's, are never
//! paused waiting for acks that sit behind the pause itself. A client that closes its socket
//! while input is held still has that input handled (a QoS 0 publisher often writes its
//! burst and closes at once); the connection closes after it.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use bytes::{Buf, BytesMut};

use tokio::io::AsyncWriteExt;
use tokio::time::{sleep_until, timeout, Instant, Sleep};
use tracing::info;

use super::{
    Boxed, CloseReason, Connection, Flow, Transport, GOODBYE_TIMEOUT, WRITE_BATCH_BYTES,
    WRITE_BATCH_PACKETS,
};
use crate::codec::{self, Packet};
use crate::observability::metrics::Metrics;
use crate::sessions::mailbox::{SendError, TrySendError};
use crate::sessions::outbound::Event;
use crate::sessions::{Kick, SessionCmd};

use super::Client;

mod pause;

use pause::Pause;

/// Iterations of the serving loop in one poll before the task yields to others.
const TURNS_PER_POLL: usize = 32;
/// Bytes of acks reading may add to an unflushed `wbuf` before reading waits for the write.
const ACKS_WHILE_WRITING: usize = 64 * 1024;
/// A read of at most this many bytes into an empty buffer is copied into one of its own size.
/// Decoded messages share the buffer they were read into, and each read reserves a fresh one
/// (an idle connection holds none): a sensor's one small message per read, queued for an
/// offline session, would keep a whole 16 KiB buffer alive. A larger read stays zero-copy;
/// its buffer is shared by the frames (or the payload) that came in it. Copying more than
/// this cost measurable throughput where reads of one or two 1 KiB messages are common.
const COPY_READS_UP_TO: usize = 512;
/// Frame bytes (or packets) a pause holds before reading stops altogether.
const PAUSE_LIMIT: usize = 64 * 1024;
const PAUSE_PACKETS: usize = 1024;

/// A connected client's connection: what the task holds while it serves one.
pub(super) struct Connected<S> {
    conn: Connection<S>,
    client: Client,
    /// Fires at the keepalive deadline; none without keepalive.
    timer: Option<Pin<Box<Sleep>>>,
    last_packet: Instant,
    /// Input held back by a backpressure pause; boxed, and only while there is one.
    pause: Option<Box<Pause>>,
    /// A command waiting for room in a full session mailbox; input waits with it.
    sending: Option<Boxed<Result<(), SendError>>>,
    /// A packet waiting for a hook's answer; input waits with it.
    hooked: Option<Boxed<super::hooked::Resume>>,
    /// The PUBREC whose PUBREL goes out once the session has it (after `sending`, if full).
    pubrec: Option<u16>,
    /// Bytes reading added to `wbuf` since it was last written out whole.
    acked: usize,
    /// Reading and filling take turns being looked at first.
    read_first: bool,
    got_packet: bool,
    /// The client closed its side while input was held: what it sent before is handled
    /// first, then the connection closes.
    peer_closed: bool,
}

/// What one look at the sources found.
enum Step {
    /// Something moved: look again.
    Progress,
    /// Every source is waiting, with the task's waker.
    Idle,
    /// The connection ends.
    Close(CloseReason),
}

impl<S: Transport + 'static> Connected<S> {
    /// The serving state of a client that has just been sent its CONNACK.
    pub(super) fn new(conn: Connection<S>, client: Client) -> Self {
        let last_packet = Instant::now();
        let timer = client
            .accepted
            .keep_alive
            .deadline(last_packet.into_std())
            .map(|d| Box::pin(sleep_until(Instant::from_std(d))));
        Connected {
            conn,
            client,
            timer,
            last_packet,
            pause: None,
            sending: None,
            hooked: None,
            pubrec: None,
            acked: 0,
            read_first: true,
            got_packet: false,
            peer_closed: false,
        }
    }

    /// The connected phase: until DISCONNECT, an error, a kick (takeover, discard, shutdown)
    /// or keepalive. Every source is polled directly and keeps our waker; nothing is stored
    /// between polls but this struct.
    pub(super) fn poll_serve(&mut self, cx: &mut Context<'_>) -> Poll<CloseReason> {
        for _ in 0..TURNS_PER_POLL {
            match self.poll_once(cx) {
                Step::Progress => {}
                Step::Idle => return Poll::Pending,
                Step::Close(reason) => return Poll::Ready(reason),
            }
        }
        cx.waker().wake_by_ref();
        Poll::Pending
    }

    /// One look at every source, in the order of the module doc's table.
    fn poll_once(&mut self, cx: &mut Context<'_>) -> Step {
        match self.client.outbound.poll_kick(cx) {
            Poll::Ready(Event::Kick(k)) => return Step::Close(kicked(k)),
            Poll::Ready(Event::Gone) => return Step::Close(CloseReason::Discarded),
            Poll::Pending => {}
        }
        if let Some(step) = self.poll_keepalive(cx) {
            return step;
        }
        if let Some(step) = self.poll_gated(cx) {
            return step;
        }
        let writing = match self.poll_flush(cx) {
            Err(e) => return Step::Close(e.into()),
            Ok(Poll::Ready(true)) => return Step::Progress,
            Ok(Poll::Ready(false)) => false,
            Ok(Poll::Pending) => true,
        };
        self.read_first = !self.read_first;
        // While replies wait for the store, the session's packets wait in its link (bounded)
        // rather than pile up behind them here.
        let fill = !writing && self.conn.gated.is_none();
        if fill && !self.read_first && self.poll_fill(cx).is_ready() {
            return Step::Progress;
        }
        match self.poll_read(cx) {
            Step::Idle => {}
            step => return step,
        }
        if fill && self.read_first && self.poll_fill(cx).is_ready() {
            return Step::Progress;
        }
        Step::Idle
    }

    /// Replies whose records became durable move to the write buffer.
    fn poll_gated(&mut self, cx: &mut Context<'_>) -> Option<Step> {
        let conn = &mut self.conn;
        let (Some(gated), Some(store)) = (&mut conn.gated, &conn.shared.store) else {
            return None;
        };
        let released = gated.poll_release(store, &conn.shared.router, &mut conn.wbuf, cx);
        if gated.is_empty() {
            conn.gated = None;
        }
        match released {
            Poll::Ready(Err(())) => Some(Step::Close(CloseReason::StoreFailed)),
            Poll::Ready(Ok(true)) => Some(Step::Progress),
            Poll::Ready(Ok(false)) | Poll::Pending => None,
        }
    }

    /// A client that neither reads nor sends must still time out.
    fn poll_keepalive(&mut self, cx: &mut Context<'_>) -> Option<Step> {
        let timer = self.timer.as_mut()?;
        if timer.as_mut().poll(cx).is_pending() {
            return None;
        }
        let keep_alive = self.client.accepted.keep_alive;
        let last = self.last_packet.into_std();
        if keep_alive.expired(last, Instant::now().into_std()) {
            return Some(Step::Close(CloseReason::KeepaliveTimeout));
        }
        if let Some(d) = keep_alive.deadline(last) {
            timer.as_mut().reset(Instant::from_std(d));
        }
        Some(Step::Progress)
    }

    /// Writes `wbuf` out: `Ready(true)` when it just emptied, `Ready(false)` when there was
    /// nothing to write, `Pending` while the socket takes no more.
    fn poll_flush(&mut self, cx: &mut Context<'_>) -> io::Result<Poll<bool>> {
        let conn = &mut self.conn;
        if conn.wbuf.is_empty() && !conn.flushing {
            return Ok(Poll::Ready(false));
        }
        let before = conn.wbuf.len();
        let written = poll_write_out(&mut conn.stream, cx, &mut conn.wbuf, &mut conn.flushing);
        let n = before - conn.wbuf.len();
        if n > 0 {
            Metrics::add(&conn.shared.metrics.bytes_sent, n as u64);
        }
        match written {
            Poll::Pending => Ok(Poll::Pending),
            Poll::Ready(Err(e)) => Err(e),
            Poll::Ready(Ok(())) => {
                // What waits for the store still counts against reading on.
                self.acked = conn.gated.as_ref().map_or(0, |g| g.len());
                // Hold no buffer while idle; keep it while more is queued.
                if self.client.outbound.release_if_idle() {
                    conn.wbuf = BytesMut::new();
                }
                Ok(Poll::Ready(true))
            }
        }
    }

    /// Takes a batch of packets from the session into the (empty) write buffer.
    fn poll_fill(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        let out = ready!(self.client.outbound.poll_recv(cx));
        let stored = self.client.session.stored.is_some();
        self.conn.encode_outbound(out, stored);
        let mut n = 1;
        while n < WRITE_BATCH_PACKETS && self.conn.wbuf.len() < WRITE_BATCH_BYTES {
            match self.client.outbound.try_recv() {
                Some(out) => self.conn.encode_outbound(out, stored),
                None => break,
            }
            n += 1;
        }
        Poll::Ready(())
    }

    /// Input: a command waiting for room first, then the end of a pause, then the socket.
    fn poll_read(&mut self, cx: &mut Context<'_>) -> Step {
        if self.sending.is_none() && self.hooked.is_none() {
            if let Some(relief) = self.pause.as_mut().and_then(|p| p.relief.as_mut()) {
                if relief.as_mut().poll(cx).is_ready() {
                    if let Some(p) = &mut self.pause {
                        p.relief = None;
                    }
                    return self.input_step(cx);
                }
            }
            if !self.may_read() {
                return self.after_peer_closed().unwrap_or(Step::Idle);
            }
            match self.conn.stream.poll_read_some(cx, &mut self.conn.rbuf) {
                Poll::Pending => return Step::Idle,
                Poll::Ready(Ok(0)) if self.pause.is_none() && self.conn.gated.is_none() => {
                    return Step::Close(CloseReason::PeerClosed)
                }
                Poll::Ready(Ok(0)) => {
                    // Everything it sent before the FIN is still owed its handling, and the
                    // acknowledgements waiting for the store are still owed to it.
                    self.peer_closed = true;
                    return Step::Progress;
                }
                Poll::Ready(Err(e)) => return Step::Close(e.into()),
                Poll::Ready(Ok(n)) => {
                    self.conn.received.read(n);
                    if n <= COPY_READS_UP_TO && self.conn.rbuf.len() == n {
                        self.conn.rbuf = BytesMut::from(&self.conn.rbuf[..]);
                    }
                }
            }
        }
        self.input_step(cx)
    }

    /// Once the client has closed its side and its input is handled: close when no reply
    /// waits for the store any more (`poll_gated` wakes the task when one is released).
    fn after_peer_closed(&self) -> Option<Step> {
        match (
            self.peer_closed && self.pause.is_none(),
            self.conn.gated.is_none(),
        ) {
            (true, true) => Some(Step::Close(CloseReason::PeerClosed)),
            _ => None,
        }
    }

    /// True if more input may be read now (see the module doc).
    fn may_read(&self) -> bool {
        if self.acked >= ACKS_WHILE_WRITING || self.peer_closed {
            return false;
        }
        self.pause.as_ref().is_none_or(|p| {
            p.held_bytes + self.conn.rbuf.len() < PAUSE_LIMIT && p.held.len() < PAUSE_PACKETS
        })
    }

    fn input_step(&mut self, cx: &mut Context<'_>) -> Step {
        let before = self.conn.unwritten();
        let handled = self.poll_input(cx);
        self.conn
            .shared
            .metrics
            .flush_received(&mut self.conn.received);
        self.acked += self.conn.unwritten().saturating_sub(before);
        match handled {
            Poll::Pending => Step::Idle,
            Poll::Ready(Ok(())) if self.peer_closed && self.pause.is_none() => {
                self.after_peer_closed().unwrap_or(Step::Idle)
            }
            Poll::Ready(Ok(())) => Step::Progress,
            Poll::Ready(Err(reason)) => Step::Close(reason),
        }
    }

    /// Handles the input there is: held packets once their pause is over, then the read
    /// buffer. `Pending` only while a command waits for room in the session's mailbox; the
    /// rest of the input waits with it.
    fn poll_input(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), CloseReason>> {
        let max_packet = self.conn.config.load().mqtt.max_packet_size;
        loop {
            if let Some(send) = &mut self.sending {
                let sent = ready!(send.as_mut().poll(cx));
                self.sending = None;
                if let Err(e) = sent {
                    return Poll::Ready(Err(self.refused(e)));
                }
            }
            // [MQTT-4.3.3-1] for a PUBREC, the session moves the flow to "PUBREL sent"; we
            // answer once the mailbox has taken the command, even for an id the session no
            // longer knows, so the client can finish its side. Taken means queued before any
            // later Attach (the mailbox refuses a taken-over connection's commands), so a
            // resend after a reconnect or a takeover is the PUBREL, never the PUBLISH.
            // (A stored session sends that PUBREL itself, once its record of the PUBREC is
            // submitted; see `encode_outbound`.)
            if let Some(id) = self.pubrec.take() {
                if self.client.session.stored.is_none() {
                    codec::encode(&Packet::PubRel(id), self.conn.out(0));
                }
            }
            let flow = if let Some(hook) = &mut self.hooked {
                let resumed = ready!(hook.as_mut().poll(cx));
                self.hooked = None;
                self.conn.resume(resumed, &mut self.client)
            } else {
                let next = if self.pause.is_none() {
                    codec::decode(&mut self.conn.rbuf, max_packet)
                } else {
                    self.next_with_pause(max_packet)
                };
                let packet = match next {
                    Ok(Some(p)) => p,
                    Ok(None) => break,
                    Err(e) => return Poll::Ready(Err(e.into())),
                };
                self.got_packet = true;
                self.conn.on_packet(packet, &mut self.client)
            };
            match flow {
                Ok(Flow::Continue) => {}
                Ok(Flow::Hook(hook)) => self.hooked = Some(hook),
                Ok(Flow::Disconnect) => return Poll::Ready(Err(CloseReason::Disconnect)),
                Ok(Flow::ToSession(cmd)) => {
                    if let Err(reason) = self.hand_to_session(cmd) {
                        return Poll::Ready(Err(reason));
                    }
                }
                Ok(Flow::ToSessionThenHold(cmd, routed)) => {
                    if let Err(reason) = self.hand_to_session(cmd) {
                        return Poll::Ready(Err(reason));
                    }
                    self.hold_until_routed(routed);
                }
                Err(reason) => return Poll::Ready(Err(reason)),
            }
            // Backpressure is judged per packet: the PUBLISH that congested a subscriber
            // was routed (and acknowledged); the input after it waits.
            if !self.conn.congested.is_empty() {
                self.start_pause();
            }
        }
        if let Some(p) = &self.pause {
            if p.relief.is_none() && p.held.is_empty() {
                self.pause = None;
            }
        }
        // Hold no buffer while idle; a partial frame keeps it.
        if self.conn.rbuf.is_empty() {
            self.conn.rbuf = BytesMut::new();
        }
        // Reset on whole packets, not bytes: a dribbled frame still times out.
        if std::mem::take(&mut self.got_packet) {
            self.last_packet = Instant::now();
        }
        Poll::Ready(Ok(()))
    }

    /// Hands `cmd` to the session, or parks it until the mailbox has room.
    fn hand_to_session(&mut self, cmd: SessionCmd) -> Result<(), CloseReason> {
        if let SessionCmd::PubRec(id) = cmd {
            self.pubrec = Some(id);
        }
        let conn = self.conn.conn_id;
        match self.client.session.mailbox.try_send_from(conn, cmd) {
            Ok(()) => Ok(()),
            Err(TrySendError::Closed(_)) => Err(self.refused(SendError::Closed)),
            Err(TrySendError::Superseded(_)) => Err(self.refused(SendError::Superseded)),
            Err(TrySendError::Full(cmd)) => {
                let mailbox = self.client.session.mailbox.clone();
                self.sending = Some(Box::pin(async move { mailbox.send_from(conn, cmd).await }));
                Ok(())
            }
        }
    }

    /// Why the connection closes when the mailbox refused its command. A PUBREC the session
    /// never got is not answered with PUBREL: the PUBLISH is resent instead.
    fn refused(&mut self, e: SendError) -> CloseReason {
        self.pubrec = None;
        match e {
            SendError::Closed => CloseReason::Discarded,
            SendError::Superseded => CloseReason::TakenOver,
        }
    }

    /// After the connected phase: the will unless the client said goodbye. Dropping the
    /// client's link here is what tells the session (on every exit, a panic included). What
    /// is left is the goodbye flush, if there is one.
    pub(super) fn close(self, reason: CloseReason) -> Option<Boxed<()>> {
        let Connected {
            mut conn,
            mut client,
            ..
        } = self;
        let shared = &conn.shared;
        if reason.is_protocol_error() {
            Metrics::incr(&shared.metrics.protocol_errors);
        }
        // Deliveries that waited for the store go out now: their records are submitted, and
        // the publisher's resend would be taken for a duplicate (its id awaits PUBREL).
        if let Some(gated) = conn.gated.take() {
            gated.deliver_all(&shared.router);
        }
        let later = super::hooked::goodbye(shared, &mut client, &reason);
        // A clean session ends with its connection: the id is free in the cluster again (a
        // taken-over one's token is stale by now and frees nothing).
        if let (Some(ids), true) = (&shared.cluster, client.claim > 0) {
            // Published above or discarded: either way no other node is to publish it.
            ids.will(&client.accepted.client_id, client.claim, None);
        }
        let clean = client.accepted.clean_session && client.claim > 0;
        if let (Some(ids), true) = (&shared.cluster, clean) {
            ids.release(&client.accepted.client_id, client.claim);
        }
        Metrics::decr(&shared.metrics.clients_connected);
        info!(
            conn_id = conn.conn_id,
            client_id = &*client.accepted.client_id,
            %reason,
            "client disconnected"
        );
        drop(client);
        // Acks already encoded (a PUBACK before DISCONNECT or before shutdown) still go out,
        // within the goodbye timeout; a broken or silent peer gets nothing more.
        if !reason.flushes() || (conn.wbuf.is_empty() && !conn.flushing) {
            return later.map(|l| -> Boxed<()> {
                Box::pin(async move {
                    let _ = timeout(GOODBYE_TIMEOUT, l).await;
                })
            });
        }
        Some(Box::pin(async move {
            // The will waits for its hook's answer (bounded, as any goodbye).
            if let Some(later) = later {
                let _ = timeout(GOODBYE_TIMEOUT, later).await;
            }
            let goodbye = async {
                conn.stream.write_all_buf(&mut conn.wbuf).await?;
                conn.stream.flush().await
            };
            let _ = timeout(GOODBYE_TIMEOUT, goodbye).await;
        }))
    }
}

/// Writes the whole buffer, then flushes; progress is kept in `wbuf` and `flushing`, so this
/// can be polled again from scratch after any `Pending`.
fn poll_write_out<S: Transport>(
    stream: &mut S,
    cx: &mut Context<'_>,
    wbuf: &mut BytesMut,
    flushing: &mut bool,
) -> Poll<io::Result<()>> {
    while !wbuf.is_empty() {
        let n = ready!(Pin::new(&mut *stream).poll_write(cx, wbuf))?;
        if n == 0 {
            return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
        }
        wbuf.advance(n);
        *flushing = true;
    }
    if *flushing {
        ready!(Pin::new(&mut *stream).poll_flush(cx))?;
        *flushing = false;
    }
    Poll::Ready(Ok(()))
}

fn kicked(k: Kick) -> CloseReason {
    match k {
        Kick::TakenOver => CloseReason::TakenOver,
        Kick::Kicked => CloseReason::Kicked,
        Kick::Discarded => CloseReason::Discarded,
        Kick::Shutdown => CloseReason::Shutdown,
    }
}
