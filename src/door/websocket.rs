//! MQTT over WebSocket (`protocol = "websockets"`, Mosquitto's word), plain or inside the
//! listener's TLS. After the HTTP upgrade (any path; the `mqtt` subprotocol is selected when
//! offered, else `mqttv3.1`), the frames are a byte stream to the same connection task as
//! TCP: binary frames carry MQTT bytes, one frame may hold part of a packet or several
//! [MQTT-6.0.0-2], and a text frame closes the connection [MQTT-6.0.0-1]. tungstenite answers
//! pings and close frames itself.

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};

use bytes::{Buf, Bytes, BytesMut};
use futures_util::{Sink, Stream};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_tungstenite::tungstenite::handshake::server::{ErrorResponse, Request, Response};
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};
use tokio_tungstenite::WebSocketStream;
use tracing::debug;

use crate::client::{self, protocol::Identity, Transport};
use crate::sessions::Shared;

/// Bytes tungstenite reserves for reading at once, per connection, and so holds while the
/// client is idle: small, so an idle WebSocket client costs at most twice an idle TCP one.
/// Its reads are served from `ReadAhead`, so their size no longer sets the syscall count.
const READ_BUFFER: usize = 64;

/// Bytes `ReadAhead` asks the socket for at first: a handshake or a lone packet fits, and a
/// connection that only ever sends those never holds more.
const READ_AHEAD_MIN: usize = 512;

/// The most `ReadAhead` asks for at once, as the TCP path reads; reached by doubling each
/// time a read fills what was asked.
const READ_AHEAD_MAX: usize = 16 * 1024;

/// The largest frame written: the connection's buffer goes out in frames of this size.
const MAX_FRAME: usize = 16 * 1024;

/// Room for frame bytes beyond `max_packet_size`: a frame may carry several packets.
const FRAME_SLACK: usize = 64 * 1024;

/// The subprotocols a client may offer, in the order they are preferred [MQTT-6.0.0-4].
const SUBPROTOCOLS: [&str; 2] = ["mqtt", "mqttv3.1"];

/// A WebSocket connection as the byte stream MQTT reads and writes.
pub struct WsStream<S> {
    ws: WebSocketStream<S>,
    /// What `poll_read` has not handed out yet of the last binary frame.
    rest: Bytes,
}

/// The stream under tungstenite: reads the socket in chunks (growing from `READ_AHEAD_MIN`
/// to `READ_AHEAD_MAX` while reads fill them) and hands them out in the small pieces
/// tungstenite asks for, holding a chunk only while it has bytes left or the socket keeps
/// delivering; an idle connection holds none.
pub struct ReadAhead<S> {
    inner: S,
    ahead: BytesMut,
    chunk: usize,
}

impl<S> ReadAhead<S> {
    /// `inner` with nothing read ahead yet.
    pub fn new(inner: S) -> ReadAhead<S> {
        ReadAhead {
            inner,
            ahead: BytesMut::new(),
            chunk: READ_AHEAD_MIN,
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for ReadAhead<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        out: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.ahead.is_empty() {
            this.ahead.reserve(this.chunk);
            match tokio_util::io::poll_read_buf(Pin::new(&mut this.inner), cx, &mut this.ahead) {
                Poll::Pending => {
                    this.ahead = BytesMut::new();
                    return Poll::Pending;
                }
                Poll::Ready(r) => {
                    if r? >= this.chunk {
                        this.chunk = (this.chunk * 2).min(READ_AHEAD_MAX);
                    }
                }
            }
        }
        hand_out(&mut this.ahead, out);
        Poll::Ready(Ok(()))
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for ReadAhead<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, data)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

/// Moves as much of `src` (one contiguous buffer) as `out` has room for.
fn hand_out(src: &mut impl Buf, out: &mut ReadBuf<'_>) {
    let n = src.remaining().min(out.remaining());
    out.put_slice(&src.chunk()[..n]);
    src.advance(n);
}

/// Why a frame did not become bytes.
fn io_error(e: WsError) -> io::Error {
    match e {
        WsError::Io(e) => e,
        other => io::Error::new(io::ErrorKind::InvalidData, other),
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> WsStream<S> {
    /// The byte stream over an upgraded connection, either side (the load generator uses
    /// the client's).
    pub fn new(ws: WebSocketStream<S>) -> WsStream<S> {
        WsStream {
            ws,
            rest: Bytes::new(),
        }
    }

    /// The next binary frame's bytes; `None` at the end of the stream (a close frame, or the
    /// connection gone after one).
    fn poll_frame(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<Option<Bytes>>> {
        loop {
            match ready!(Pin::new(&mut self.ws).poll_next(cx)) {
                None | Some(Ok(Message::Close(_))) => return Poll::Ready(Ok(None)),
                Some(Err(WsError::ConnectionClosed | WsError::AlreadyClosed)) => {
                    return Poll::Ready(Ok(None))
                }
                Some(Err(e)) => return Poll::Ready(Err(io_error(e))),
                Some(Ok(Message::Binary(b))) if b.is_empty() => {}
                Some(Ok(Message::Binary(b))) => return Poll::Ready(Ok(Some(b))),
                // [MQTT-6.0.0-1]
                Some(Ok(Message::Text(_))) => {
                    return Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        "a text frame: MQTT travels in binary frames",
                    )))
                }
                // Pings are answered by tungstenite; pongs and raw frames carry nothing.
                Some(Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_))) => {}
            }
        }
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin + Send> Transport for WsStream<S> {
    fn poll_read_some(
        &mut self,
        cx: &mut Context<'_>,
        buf: &mut BytesMut,
    ) -> Poll<io::Result<usize>> {
        if !self.rest.is_empty() {
            let rest = std::mem::take(&mut self.rest);
            buf.extend_from_slice(&rest);
            return Poll::Ready(Ok(rest.len()));
        }
        match ready!(self.poll_frame(cx))? {
            None => Poll::Ready(Ok(0)),
            Some(frame) => {
                buf.extend_from_slice(&frame);
                Poll::Ready(Ok(frame.len()))
            }
        }
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncRead for WsStream<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        out: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.rest.is_empty() {
            match ready!(this.poll_frame(cx))? {
                None => return Poll::Ready(Ok(())),
                Some(frame) => this.rest = frame,
            }
        }
        hand_out(&mut this.rest, out);
        Poll::Ready(Ok(()))
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncWrite for WsStream<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        let ws = &mut self.get_mut().ws;
        ready!(Pin::new(&mut *ws).poll_ready(cx)).map_err(io_error)?;
        // One binary frame per write, of at most MAX_FRAME: tungstenite keeps the room of
        // the largest frame it ever had to hold back, for the connection's whole life.
        let n = data.len().min(MAX_FRAME);
        Pin::new(&mut *ws)
            .start_send(Message::Binary(Bytes::copy_from_slice(&data[..n])))
            .map_err(io_error)?;
        Poll::Ready(Ok(n))
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().ws)
            .poll_flush(cx)
            .map_err(io_error)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match ready!(Pin::new(&mut self.get_mut().ws).poll_close(cx)) {
            Ok(()) | Err(WsError::ConnectionClosed | WsError::AlreadyClosed) => Poll::Ready(Ok(())),
            Err(e) => Poll::Ready(Err(io_error(e))),
        }
    }
}

/// Selects the first of `SUBPROTOCOLS` the client offers; none if it offers neither.
// The callback's signature is tungstenite's; it never fails.
#[allow(clippy::result_large_err)]
fn select_subprotocol(req: &Request, mut resp: Response) -> Result<Response, ErrorResponse> {
    let offered: Vec<&str> = req
        .headers()
        .get_all("sec-websocket-protocol")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .collect();
    if let Some(chosen) = SUBPROTOCOLS.iter().find(|p| offered.contains(p)) {
        resp.headers_mut()
            .insert("sec-websocket-protocol", HeaderValue::from_static(chosen));
    }
    Ok(resp)
}

/// The WebSocket upgrade over `stream`, with frames bounded by `max_packet_size`.
pub async fn accept<S: AsyncRead + AsyncWrite + Unpin>(
    stream: S,
    max_packet_size: usize,
) -> Result<WsStream<ReadAhead<S>>, WsError> {
    let max = max_packet_size.saturating_add(FRAME_SLACK);
    let mut config = WebSocketConfig::default();
    config.read_buffer_size = READ_BUFFER;
    // Written at once: the connection already batches its writes.
    config.write_buffer_size = 0;
    config.max_frame_size = Some(max);
    config.max_message_size = Some(max);
    let ws = tokio_tungstenite::accept_hdr_async_with_config(
        ReadAhead::new(stream),
        select_subprotocol,
        Some(config),
    )
    .await?;
    Ok(WsStream::new(ws))
}

/// Upgrades `stream` (TCP, or TLS already accepted) and serves MQTT over it; the upgrade
/// runs in the connection's own task, within what is left of `connect_timeout` at `deadline`.
pub async fn serve<S: AsyncRead + AsyncWrite + Unpin + Send + 'static>(
    stream: S,
    peer: SocketAddr,
    shared: Arc<Shared>,
    identity: Identity,
    slot: client::Slot,
    deadline: tokio::time::Instant,
) {
    let max_packet_size = shared.config.load().mqtt.max_packet_size;
    // Boxed: the upgrade's state (request, response, a read buffer) is about 900 B, and inline
    // it would stay in the task for the connection's whole life.
    let upgrade = Box::pin(tokio::time::timeout_at(
        deadline,
        accept(stream, max_packet_size),
    ));
    match upgrade.await {
        Ok(Ok(ws)) => client::serve(ws, peer, shared, identity, slot).await,
        Ok(Err(e)) => debug!(%peer, error = %e, "WebSocket upgrade failed"),
        Err(_) => debug!(%peer, "WebSocket upgrade timed out"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::future::poll_fn;
    use tokio::io::AsyncWriteExt;

    /// Bytes written in one burst come out whole through tungstenite-sized reads, the chunk
    /// grows while reads fill it, and a drained, waiting stream holds no buffer.
    #[tokio::test]
    async fn read_ahead_hands_out_small_pieces_and_releases_when_idle() {
        let (mut writer, reader) = tokio::io::duplex(64 * 1024);
        let sent: Vec<u8> = (0..40_000u32).map(|i| (i % 251) as u8).collect();
        writer.write_all(&sent).await.unwrap();
        let mut ahead = ReadAhead::new(reader);
        let mut got = Vec::new();
        while got.len() < sent.len() {
            let mut piece = [0u8; READ_BUFFER];
            let mut out = ReadBuf::new(&mut piece);
            poll_fn(|cx| Pin::new(&mut ahead).poll_read(cx, &mut out))
                .await
                .unwrap();
            assert!(!out.filled().is_empty());
            got.extend_from_slice(out.filled());
        }
        assert_eq!(got, sent);
        assert_eq!(ahead.chunk, READ_AHEAD_MAX);
        let mut piece = [0u8; READ_BUFFER];
        let waiting = poll_fn(|cx| {
            let mut out = ReadBuf::new(&mut piece);
            Poll::Ready(Pin::new(&mut ahead).poll_read(cx, &mut out).is_pending())
        })
        .await;
        assert!(waiting);
        assert_eq!(ahead.ahead.capacity(), 0);
    }
}
