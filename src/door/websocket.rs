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

/// Bytes tungstenite reserves for reading at once, per connection: small, so an idle
/// WebSocket client costs at most twice an idle TCP one; a frame larger than this is read
/// into room reserved for its whole length. Measured (benches/README.md): 1 KiB cost 2.4x
/// an idle TCP client's memory, 64 B cost a third of the throughput; 256 B is both within
/// target.
const READ_BUFFER: usize = 256;

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
        let n = this.rest.len().min(out.remaining());
        out.put_slice(&this.rest[..n]);
        this.rest.advance(n);
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
) -> Result<WsStream<S>, WsError> {
    let max = max_packet_size.saturating_add(FRAME_SLACK);
    let mut config = WebSocketConfig::default();
    config.read_buffer_size = READ_BUFFER;
    // Written at once: the connection already batches its writes.
    config.write_buffer_size = 0;
    config.max_frame_size = Some(max);
    config.max_message_size = Some(max);
    let ws =
        tokio_tungstenite::accept_hdr_async_with_config(stream, select_subprotocol, Some(config))
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
    match tokio::time::timeout_at(deadline, accept(stream, max_packet_size)).await {
        Ok(Ok(ws)) => client::serve(ws, peer, shared, identity, slot).await,
        Ok(Err(e)) => debug!(%peer, error = %e, "WebSocket upgrade failed"),
        Err(_) => debug!(%peer, "WebSocket upgrade timed out"),
    }
}
