//! TLS listeners: MQTT over TLS with a rustls client and the real mosquitto clients, client
//! certificates, and use_identity_as_username.

mod common;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::BytesMut;
use common::{connect_packet, within, TestBroker, WAIT};
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, IsCa, KeyPair, SanType,
};
use tern::codec::{self, ConnectReturnCode, Packet, SubAckCode, Subscribe};
use tern::message::QoS;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio_rustls::rustls::{ClientConfig, RootCertStore};
use tokio_rustls::TlsConnector;

/// A client certificate and its key.
struct ClientCert {
    cert: CertificateDer<'static>,
    key: Vec<u8>,
}

/// A test CA, a server certificate for 127.0.0.1/localhost, a client certificate with
/// common name "alice" (written as PEM files) and one with no common name at all (a DNS name
/// only, as many device certificates have).
struct Pki {
    dir: tempfile::TempDir,
    ca: CertificateDer<'static>,
    alice: ClientCert,
    nameless: ClientCert,
}

impl Pki {
    fn new() -> Pki {
        let dir = tempfile::tempdir().expect("temp dir");
        let ca_key = KeyPair::generate().expect("key");
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).expect("params");
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(DnType::CommonName, "Tern test CA");
        let ca = ca_params.self_signed(&ca_key).expect("CA");
        let server_key = KeyPair::generate().expect("key");
        let mut server_params =
            CertificateParams::new(vec!["localhost".to_string()]).expect("params");
        server_params
            .subject_alt_names
            .push(SanType::IpAddress("127.0.0.1".parse().expect("ip")));
        let server = server_params
            .signed_by(&server_key, &ca, &ca_key)
            .expect("server cert");
        let client_key = KeyPair::generate().expect("key");
        let mut client_params = CertificateParams::new(Vec::<String>::new()).expect("params");
        client_params
            .distinguished_name
            .push(DnType::CommonName, "alice");
        let client = client_params
            .signed_by(&client_key, &ca, &ca_key)
            .expect("client cert");
        let nameless_key = KeyPair::generate().expect("key");
        let mut nameless_params =
            CertificateParams::new(vec!["device7.example".to_string()]).expect("params");
        // rcgen fills in a common name unless told otherwise.
        nameless_params.distinguished_name = DistinguishedName::new();
        let nameless = nameless_params
            .signed_by(&nameless_key, &ca, &ca_key)
            .expect("client cert without CN");
        for (name, pem) in [
            ("ca.pem", ca.pem()),
            ("server.pem", server.pem()),
            ("server.key", server_key.serialize_pem()),
            ("client.pem", client.pem()),
            ("client.key", client_key.serialize_pem()),
        ] {
            std::fs::write(dir.path().join(name), pem).expect("write pem");
        }
        Pki {
            ca: ca.der().clone(),
            alice: ClientCert {
                cert: client.der().clone(),
                key: client_key.serialize_der(),
            },
            nameless: ClientCert {
                cert: nameless.der().clone(),
                key: nameless_key.serialize_der(),
            },
            dir,
        }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// A broker whose listener speaks TLS; `client_certs` adds cafile and
    /// require_certificate + use_identity_as_username.
    async fn broker(&self, client_certs: bool, acl: Option<&Path>) -> TestBroker {
        TestBroker::start_with(|c| {
            let l = &mut c.listener[0];
            l.certfile = Some(self.path("server.pem"));
            l.keyfile = Some(self.path("server.key"));
            if client_certs {
                l.cafile = Some(self.path("ca.pem"));
                l.require_certificate = true;
                l.use_identity_as_username = true;
            }
            c.auth.acl_file = acl.map(Path::to_path_buf);
        })
        .await
    }

    fn connector(&self, client: Option<&ClientCert>) -> TlsConnector {
        let mut roots = RootCertStore::empty();
        roots.add(self.ca.clone()).expect("root");
        let builder = ClientConfig::builder().with_root_certificates(roots);
        let config = match client {
            Some(c) => {
                let key = PrivateKeyDer::try_from(c.key.clone()).expect("key");
                builder
                    .with_client_auth_cert(vec![c.cert.clone()], key)
                    .expect("client auth")
            }
            None => builder.with_no_client_auth(),
        };
        TlsConnector::from(Arc::new(config))
    }
}

type Tls = tokio_rustls::client::TlsStream<TcpStream>;

async fn send(stream: &mut Tls, p: &Packet) {
    let mut buf = BytesMut::new();
    codec::encode(p, &mut buf);
    stream.write_all(&buf).await.expect("write");
    stream.flush().await.expect("flush");
}

async fn recv(stream: &mut Tls, buf: &mut BytesMut) -> Packet {
    within(WAIT, async {
        loop {
            if let Some(p) = codec::decode(buf, usize::MAX).expect("valid") {
                return p;
            }
            assert!(stream.read_buf(buf).await.expect("read") > 0, "closed");
        }
    })
    .await
}

async fn tls_connect(pki: &Pki, b: &TestBroker, with_client_cert: bool) -> std::io::Result<Tls> {
    tls_connect_as(pki, b, with_client_cert.then_some(&pki.alice)).await
}

async fn tls_connect_as(
    pki: &Pki,
    b: &TestBroker,
    client: Option<&ClientCert>,
) -> std::io::Result<Tls> {
    let tcp = TcpStream::connect(b.addr).await?;
    let name = ServerName::try_from("localhost").expect("name");
    pki.connector(client).connect(name, tcp).await
}

/// A TLS connection with CONNECT accepted; returns it and its read buffer.
async fn mqtt_session(
    pki: &Pki,
    b: &TestBroker,
    with_client_cert: bool,
    id: &str,
) -> (Tls, BytesMut) {
    let mut s = tls_connect(pki, b, with_client_cert)
        .await
        .expect("handshake");
    let mut buf = BytesMut::new();
    send(&mut s, &connect_packet(id, true, 60)).await;
    let ack = recv(&mut s, &mut buf).await;
    assert!(
        matches!(ack, Packet::ConnAck(a) if a.code == ConnectReturnCode::Accepted),
        "{ack:?}"
    );
    (s, buf)
}

/// A TLS session (no client certificate) subscribed to `filter` at QoS 1.
async fn subscribed(pki: &Pki, b: &TestBroker, id: &str, filter: &str) -> (Tls, BytesMut) {
    let (mut s, mut buf) = mqtt_session(pki, b, false, id).await;
    send(
        &mut s,
        &Packet::Subscribe(Subscribe {
            pkid: 1,
            filters: vec![(filter.into(), QoS::AtLeastOnce)],
        }),
    )
    .await;
    assert!(matches!(recv(&mut s, &mut buf).await, Packet::SubAck(_)));
    (s, buf)
}

#[tokio::test]
async fn mqtt_over_tls() {
    let pki = Pki::new();
    let b = pki.broker(false, None).await;
    let (mut s, mut buf) = subscribed(&pki, &b, "tls-client", "secure/#").await;
    let mut publish = BytesMut::new();
    codec::encode_publish(
        b"secure/x",
        b"over tls",
        QoS::AtLeastOnce,
        Some(9),
        false,
        false,
        &mut publish,
    );
    s.write_all(&publish).await.expect("write");
    s.flush().await.expect("flush");
    let mut got_ack = false;
    let mut got_msg = false;
    while !(got_ack && got_msg) {
        match recv(&mut s, &mut buf).await {
            Packet::PubAck(9) => got_ack = true,
            Packet::Publish(p) => {
                assert_eq!(&p.payload[..], b"over tls");
                got_msg = true;
            }
            other => panic!("unexpected {other:?}"),
        }
    }
}

#[tokio::test]
async fn plain_mqtt_on_a_tls_listener_is_refused() {
    let pki = Pki::new();
    let b = pki.broker(false, None).await;
    let mut raw = common::Raw::open(b.addr).await;
    raw.send(&common::connect_bytes("plain")).await;
    // The TLS handshake fails: no CONNACK, just a close (an alert at most).
    let bytes = raw.read_to_close().await;
    assert!(!bytes.starts_with(&[0x20, 0x02]), "{bytes:02x?}");
}

#[tokio::test]
async fn mosquitto_clients_over_tls() {
    let pki = Pki::new();
    let b = pki.broker(false, None).await;
    let port = b.addr.port().to_string();
    let ca = pki.path("ca.pem");
    let ca = ca.to_str().expect("utf-8");
    let server = ["-h", "127.0.0.1", "-p", &port, "--cafile", ca];
    let status = within(
        WAIT,
        tokio::process::Command::new("mosquitto_pub")
            .args(server)
            .args(["-q", "1", "-r", "-t", "tls/retained", "-m", "hello"])
            .status(),
    )
    .await
    .expect("mosquitto_pub");
    assert!(status.success());
    let out = within(
        WAIT,
        tokio::process::Command::new("mosquitto_sub")
            .args(server)
            .args(["-t", "tls/#", "-v", "-C", "1", "-W", "5"])
            .output(),
    )
    .await
    .expect("mosquitto_sub");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "tls/retained hello"
    );
}

#[tokio::test]
async fn client_certificate_required_and_used_as_user_name() {
    let pki = Pki::new();
    let acl = pki.path("acl");
    std::fs::write(&acl, "user alice\ntopic readwrite alice/#\n").expect("acl");
    let b = pki.broker(true, Some(&acl)).await;
    // Without a certificate: no session.
    let refused = async {
        let mut s = tls_connect(&pki, &b, false).await?;
        send(&mut s, &connect_packet("nocert", true, 60)).await;
        let mut byte = [0u8; 1];
        s.read_exact(&mut byte).await.map(|_| byte)
    };
    assert!(
        within(WAIT, refused).await.is_err(),
        "a client without a certificate is refused"
    );
    // With one: the certificate's common name is the user name for the ACL.
    let (mut s, mut buf) = mqtt_session(&pki, &b, true, "with-cert").await;
    send(
        &mut s,
        &Packet::Subscribe(Subscribe {
            pkid: 2,
            filters: vec![
                ("alice/#".into(), QoS::AtMostOnce),
                ("bob/#".into(), QoS::AtMostOnce),
            ],
        }),
    )
    .await;
    match recv(&mut s, &mut buf).await {
        Packet::SubAck(ack) => assert_eq!(
            ack.codes,
            [SubAckCode::Granted(QoS::AtMostOnce), SubAckCode::Failure]
        ),
        other => panic!("expected SUBACK, got {other:?}"),
    }
}

#[tokio::test]
async fn a_certificate_without_a_common_name_is_refused_not_replaced_by_the_user_name() {
    // [MQTT-3.2.2-5] refused with 0x05 (not authorized), then closed.
    let pki = Pki::new();
    let b = pki.broker(true, None).await;
    let mut s = tls_connect_as(&pki, &b, Some(&pki.nameless))
        .await
        .expect("the CA signed it: the handshake succeeds");
    let mut connect = connect_packet("device7", true, 60);
    if let Packet::Connect(c) = &mut connect {
        c.username = Some("admin".into());
    }
    send(&mut s, &connect).await;
    let mut buf = BytesMut::new();
    match recv(&mut s, &mut buf).await {
        Packet::ConnAck(a) => {
            assert_eq!(a.code, ConnectReturnCode::NotAuthorized);
            assert!(!a.session_present, "[MQTT-3.2.2-4]");
        }
        other => panic!("expected CONNACK, got {other:?}"),
    }
    let closed = within(WAIT, s.read_buf(&mut buf)).await;
    assert!(matches!(closed, Ok(0) | Err(_)), "{closed:?}");
}

#[tokio::test]
async fn bulk_qos1_over_tls_arrives_whole_and_in_order() {
    // Many 1 KiB messages both ways at once: batched writes larger than a TLS record, partial
    // writes and flushes of what rustls buffers must lose nothing. [MQTT-4.6.0-5], [MQTT-4.6.0-6]
    const N: u16 = 5_000;
    let pki = Pki::new();
    let b = pki.broker(false, None).await;
    let (mut sub, mut sub_buf) = subscribed(&pki, &b, "bulk-sub", "bulk/#").await;
    let (publisher, mut pub_buf) = mqtt_session(&pki, &b, false, "bulk-pub").await;
    let (mut pub_rx, mut pub_tx) = tokio::io::split(publisher);
    let writer = tokio::spawn(async move {
        let payload = vec![7u8; 1024];
        let mut out = BytesMut::new();
        for id in 1..=N {
            let mut p = payload.clone();
            p[..2].copy_from_slice(&id.to_be_bytes());
            codec::encode_publish(
                b"bulk/x",
                &p,
                QoS::AtLeastOnce,
                Some(id),
                false,
                false,
                &mut out,
            );
            if out.len() > 32 * 1024 {
                pub_tx.write_all(&out).await.expect("write");
                out.clear();
            }
        }
        pub_tx.write_all(&out).await.expect("write");
        pub_tx.flush().await.expect("flush");
        pub_tx
    });
    let acks = tokio::spawn(async move {
        let mut acked = 0u16;
        within(WAIT * 4, async {
            while acked < N {
                if let Some(p) = codec::decode(&mut pub_buf, usize::MAX).expect("valid") {
                    assert_eq!(p, Packet::PubAck(acked + 1), "PUBACKs in order");
                    acked += 1;
                    continue;
                }
                assert!(
                    pub_rx.read_buf(&mut pub_buf).await.expect("read") > 0,
                    "closed"
                );
            }
        })
        .await;
        acked
    });
    let mut next = 1u16;
    within(WAIT * 4, async {
        while next <= N {
            match recv(&mut sub, &mut sub_buf).await {
                Packet::Publish(p) => {
                    assert_eq!(p.payload.len(), 1024);
                    assert_eq!(u16::from_be_bytes([p.payload[0], p.payload[1]]), next);
                    if let Some(id) = p.pkid {
                        send(&mut sub, &Packet::PubAck(id)).await;
                    }
                    next += 1;
                }
                other => panic!("unexpected {other:?}"),
            }
        }
    })
    .await;
    assert_eq!(acks.await.expect("acks"), N);
    let _ = writer.await.expect("writer");
}
