//! One side of a bridge as an MQTT client: a stream (the remote broker's socket, or the
//! in-process pipe to this broker), with the codec over it. Both sides speak the same
//! protocol, so the bridge is one client twice.

use bytes::BytesMut;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::codec::{self, ConnAck, Connect, Packet};

use super::BridgeError;

/// A stream a bridge side talks over.
pub trait Stream: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Stream for T {}

/// An MQTT client connection.
pub struct Peer {
    stream: Box<dyn Stream>,
    rbuf: BytesMut,
    wbuf: BytesMut,
    /// Which side this is, for errors.
    side: &'static str,
    max_packet: usize,
}

impl Peer {
    /// Sends CONNECT over `stream` and waits for an accepting CONNACK.
    pub async fn connect(
        stream: Box<dyn Stream>,
        connect: Connect,
        side: &'static str,
        max_packet: usize,
    ) -> Result<(Peer, ConnAck), BridgeError> {
        let mut peer = Peer {
            stream,
            rbuf: BytesMut::new(),
            wbuf: BytesMut::new(),
            side,
            max_packet,
        };
        peer.queue(&Packet::Connect(Box::new(connect)));
        peer.flush().await?;
        match peer.recv().await? {
            Packet::ConnAck(ack) if ack.code == codec::ConnectReturnCode::Accepted => {
                Ok((peer, ack))
            }
            Packet::ConnAck(ack) => Err(BridgeError::Refused {
                side,
                code: ack.code as u8,
            }),
            other => Err(BridgeError::Protocol {
                side,
                what: format!("expected CONNACK, got {}", other.name()),
            }),
        }
    }

    /// Encodes `packet` for the next `flush`.
    pub fn queue(&mut self, packet: &Packet) {
        codec::encode(packet, &mut self.wbuf);
    }

    /// Writes what was queued.
    pub async fn flush(&mut self) -> Result<(), BridgeError> {
        if self.wbuf.is_empty() {
            return Ok(());
        }
        let side = self.side;
        self.stream
            .write_all(&self.wbuf)
            .await
            .map_err(|e| BridgeError::Io { side, error: e })?;
        self.wbuf.clear();
        Ok(())
    }

    /// The next packet. Cancel-safe: what was read stays in the buffer.
    pub async fn recv(&mut self) -> Result<Packet, BridgeError> {
        let side = self.side;
        loop {
            match codec::decode(&mut self.rbuf, self.max_packet) {
                Ok(Some(p)) => return Ok(p),
                Ok(None) => {}
                Err(e) => {
                    return Err(BridgeError::Protocol {
                        side,
                        what: e.to_string(),
                    })
                }
            }
            let n = self
                .stream
                .read_buf(&mut self.rbuf)
                .await
                .map_err(|e| BridgeError::Io { side, error: e })?;
            if n == 0 {
                return Err(BridgeError::Closed { side });
            }
        }
    }
}
