//! MQTT over WebSocket (`protocol = "websockets"`), byte by byte with a Rust WebSocket
//! client: the upgrade on any path with the `mqtt` subprotocol, packets split across frames
//! and several in one frame, a text frame, an oversize frame, a slow upgrade, pings, and
//! messages between WebSocket and TCP clients.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use bytes::BytesMut;
use common::{connect_packet, within, Raw, TestBroker, WAIT};
use futures_util::{SinkExt, StreamExt};
use tern::codec::{self, Packet, Publish, Subscribe};
use tern::message::QoS;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

/// A broker whose listener speaks MQTT over WebSocket.
async fn ws_broker(tweak: impl FnOnce(&mut tern::config::Config)) -> TestBroker {
    TestBroker::start_with(|c| {
        c.listener[0].protocol = "websockets".into();
        tweak(c);
    })
    .await
}

/// A WebSocket client and the MQTT bytes it has read but not decoded.
struct Ws {
    ws: WebSocketStream<TcpStream>,
    buf: BytesMut,
    /// The subprotocol the broker selected.
    protocol: Option<String>,
}

impl Ws {
    /// Upgrades a TCP connection on `path`, offering `protocols`.
    async fn open(addr: SocketAddr, path: &str, protocols: &[&str]) -> Ws {
        let tcp = within(WAIT, TcpStream::connect(addr))
            .await
            .expect("tcp connect");
        let mut req = format!("ws://{addr}{path}")
            .into_client_request()
            .expect("request");
        if !protocols.is_empty() {
            let offered = HeaderValue::from_str(&protocols.join(", ")).expect("header");
            req.headers_mut().insert("sec-websocket-protocol", offered);
        }
        let (ws, resp) = within(WAIT, tokio_tungstenite::client_async(req, tcp))
            .await
            .expect("upgrade");
        let protocol = resp
            .headers()
            .get("sec-websocket-protocol")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        Ws {
            ws,
            buf: BytesMut::new(),
            protocol,
        }
    }

    /// Sends `bytes` as one binary frame.
    async fn frame(&mut self, bytes: &[u8]) {
        self.ws
            .send(Message::Binary(bytes.to_vec().into()))
            .await
            .expect("send");
    }

    /// The next packet, across however many frames it came in.
    async fn recv(&mut self) -> Packet {
        within(WAIT, async {
            loop {
                if let Some(p) = codec::decode(&mut self.buf, usize::MAX).expect("valid packet") {
                    return p;
                }
                match self.ws.next().await {
                    Some(Ok(Message::Binary(b))) => self.buf.extend_from_slice(&b),
                    Some(Ok(Message::Text(t))) => panic!("a text frame from the broker: {t}"),
                    Some(Ok(_)) => {}
                    other => panic!("connection ended while waiting for a packet: {other:?}"),
                }
            }
        })
        .await
    }

    /// Waits (bounded) until the broker ends the connection, without sending MQTT.
    async fn expect_closed(&mut self) {
        within(WAIT, async {
            loop {
                match self.ws.next().await {
                    None | Some(Err(_)) | Some(Ok(Message::Close(_))) => return,
                    Some(Ok(Message::Binary(b))) => panic!("MQTT bytes instead of a close: {b:?}"),
                    Some(Ok(_)) => {}
                }
            }
        })
        .await
    }
}

fn bytes(p: &Packet) -> Vec<u8> {
    let mut buf = BytesMut::new();
    codec::encode(p, &mut buf);
    buf.to_vec()
}

fn subscribe(pkid: u16, filter: &str, qos: QoS) -> Packet {
    Packet::Subscribe(Subscribe {
        pkid,
        filters: vec![(filter.into(), qos)],
    })
}

fn publish(topic: &str, qos: QoS, pkid: Option<u16>, payload: &[u8]) -> Packet {
    Packet::Publish(Publish {
        dup: false,
        qos,
        retain: false,
        topic: topic.as_bytes().to_vec().into(),
        pkid,
        payload: payload.to_vec().into(),
    })
}

#[tokio::test]
async fn packets_split_across_frames_and_coalesced_in_one_are_read_as_a_stream() {
    let broker = ws_broker(|_| {}).await;
    let mut ws = Ws::open(broker.addr, "/mqtt", &["mqtt"]).await;
    // [MQTT-6.0.0-4]
    assert_eq!(ws.protocol.as_deref(), Some("mqtt"));
    // [MQTT-6.0.0-2] CONNECT in three frames, one of them a single byte.
    let connect = bytes(&connect_packet("ws-1", true, 60));
    ws.frame(&connect[..1]).await;
    ws.frame(&connect[1..5]).await;
    ws.frame(&connect[5..]).await;
    assert!(
        matches!(ws.recv().await, Packet::ConnAck(a) if a.code == codec::ConnectReturnCode::Accepted)
    );
    ws.frame(&bytes(&subscribe(1, "t/ws", QoS::AtMostOnce)))
        .await;
    assert!(matches!(ws.recv().await, Packet::SubAck(s) if s.pkid == 1));
    // Two PUBLISHes to itself and a PINGREQ in one frame.
    let mut three = bytes(&publish("t/ws", QoS::AtLeastOnce, Some(2), b"one"));
    three.extend(bytes(&publish("t/ws", QoS::AtLeastOnce, Some(3), b"two")));
    three.extend(bytes(&Packet::PingReq));
    ws.frame(&three).await;
    let mut got = Vec::new();
    for _ in 0..5 {
        got.push(ws.recv().await);
    }
    for want in [Packet::PubAck(2), Packet::PubAck(3), Packet::PingResp] {
        assert!(got.contains(&want), "{want:?} missing from {got:?}");
    }
    let payloads: Vec<&[u8]> = got
        .iter()
        .filter_map(|p| match p {
            Packet::Publish(m) => Some(&m.payload[..]),
            _ => None,
        })
        .collect();
    assert_eq!(payloads, [&b"one"[..], &b"two"[..]]);
    broker.stop().await;
}

#[tokio::test]
async fn any_path_is_accepted_and_mqttv31_or_no_subprotocol_is_answered_in_kind() {
    let broker = ws_broker(|_| {}).await;
    let ws = Ws::open(broker.addr, "/", &["mqttv3.1"]).await;
    assert_eq!(ws.protocol.as_deref(), Some("mqttv3.1"));
    let ws = Ws::open(broker.addr, "/any/path?x=1", &["other", "mqtt"]).await;
    assert_eq!(ws.protocol.as_deref(), Some("mqtt"), "mqtt is preferred");
    let mut ws = Ws::open(broker.addr, "/mqtt", &[]).await;
    assert_eq!(ws.protocol, None);
    ws.frame(&bytes(&connect_packet("ws-none", true, 60))).await;
    assert!(matches!(ws.recv().await, Packet::ConnAck(_)));
    broker.stop().await;
}

#[tokio::test]
async fn a_text_frame_closes_the_connection() {
    let broker = ws_broker(|_| {}).await;
    let mut ws = Ws::open(broker.addr, "/mqtt", &["mqtt"]).await;
    ws.frame(&bytes(&connect_packet("ws-text", true, 60))).await;
    assert!(matches!(ws.recv().await, Packet::ConnAck(_)));
    // [MQTT-6.0.0-1]
    ws.ws
        .send(Message::Text("hello".into()))
        .await
        .expect("send");
    ws.expect_closed().await;
    broker.stop().await;
}

#[tokio::test]
async fn an_oversize_frame_or_packet_closes_the_connection() {
    let broker = ws_broker(|c| c.mqtt.max_packet_size = 1024).await;
    // A frame far beyond the packet limit (and the room for several packets in one frame).
    let mut ws = Ws::open(broker.addr, "/mqtt", &["mqtt"]).await;
    ws.frame(&vec![0x30; 200 * 1024]).await;
    ws.expect_closed().await;
    // A packet over the limit, sent in small frames: the MQTT decoder refuses it as on TCP.
    let mut ws = Ws::open(broker.addr, "/mqtt", &["mqtt"]).await;
    ws.frame(&bytes(&connect_packet("ws-big", true, 60))).await;
    assert!(matches!(ws.recv().await, Packet::ConnAck(_)));
    let big = bytes(&publish("t/big", QoS::AtMostOnce, None, &[7; 4096]));
    for chunk in big.chunks(512) {
        if ws
            .ws
            .send(Message::Binary(chunk.to_vec().into()))
            .await
            .is_err()
        {
            break;
        }
    }
    ws.expect_closed().await;
    broker.stop().await;
}

#[tokio::test]
async fn an_upgrade_that_never_comes_is_dropped_after_connect_timeout() {
    let broker = ws_broker(|c| c.mqtt.connect_timeout = Duration::from_millis(300)).await;
    let mut raw = Raw::open(broker.addr).await;
    // Half a request, then nothing.
    raw.send(b"GET /mqtt HTTP/1.1\r\nHost: x\r\n").await;
    let rest = raw.read_to_close().await;
    assert!(
        rest.is_empty() || rest.starts_with(b"HTTP/1.1 4"),
        "{rest:?}"
    );
    broker.stop().await;
}

#[tokio::test]
async fn pings_are_answered_and_messages_flow_between_websocket_and_tcp_clients() {
    let tcp_broker = TestBroker::start_with(|c| {
        let mut ws = c.listener[0].clone();
        ws.protocol = "websockets".into();
        c.listener.push(ws);
    })
    .await;
    // The second listener is the WebSocket one.
    let addrs = tcp_broker.addrs();
    let (tcp_addr, ws_addr) = (addrs[0], addrs[1]);
    let mut ws = Ws::open(ws_addr, "/mqtt", &["mqtt"]).await;
    ws.frame(&bytes(&connect_packet("ws-sub", true, 60))).await;
    assert!(matches!(ws.recv().await, Packet::ConnAck(_)));
    ws.ws
        .send(Message::Ping(b"are you there".to_vec().into()))
        .await
        .expect("ping");
    let pong = within(WAIT, async {
        loop {
            match ws.ws.next().await {
                Some(Ok(Message::Pong(p))) => return p,
                Some(Ok(_)) => {}
                other => panic!("no pong: {other:?}"),
            }
        }
    })
    .await;
    assert_eq!(&pong[..], b"are you there");
    ws.frame(&bytes(&subscribe(1, "x/#", QoS::ExactlyOnce)))
        .await;
    assert!(matches!(ws.recv().await, Packet::SubAck(_)));
    let (mut tcp, _) = Raw::connect(tcp_addr, "tcp-pub", true, 60).await;
    tcp.subscribe(1, &[("back", QoS::AtLeastOnce)]).await;
    for (i, qos) in [QoS::AtMostOnce, QoS::AtLeastOnce, QoS::ExactlyOnce]
        .into_iter()
        .enumerate()
    {
        let pkid = (qos != QoS::AtMostOnce).then_some(10 + i as u16);
        tcp.publish(&format!("x/{i}"), qos, pkid, false, b"from tcp")
            .await;
        match (qos, pkid) {
            (QoS::AtLeastOnce, Some(id)) => assert_eq!(tcp.recv().await, Packet::PubAck(id)),
            (QoS::ExactlyOnce, Some(id)) => {
                assert_eq!(tcp.recv().await, Packet::PubRec(id));
                tcp.send_packet(&Packet::PubRel(id)).await;
                assert_eq!(tcp.recv().await, Packet::PubComp(id));
            }
            _ => {}
        }
        let p = loop {
            match ws.recv().await {
                Packet::Publish(p) => break p,
                Packet::PubRel(id) => ws.frame(&bytes(&Packet::PubComp(id))).await,
                _ => {}
            }
        };
        assert_eq!((p.qos, &p.payload[..]), (qos, &b"from tcp"[..]));
        match (qos, p.pkid) {
            (QoS::AtLeastOnce, Some(id)) => ws.frame(&bytes(&Packet::PubAck(id))).await,
            (QoS::ExactlyOnce, Some(id)) => ws.frame(&bytes(&Packet::PubRec(id))).await,
            _ => {}
        }
    }
    ws.frame(&bytes(&publish(
        "back",
        QoS::AtLeastOnce,
        Some(5),
        b"from ws",
    )))
    .await;
    let back = tcp.recv_publish().await;
    assert_eq!(&back.payload[..], b"from ws");
    tcp_broker.stop().await;
}
