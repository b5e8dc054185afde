//! TLS set up the way Mosquitto users have it: the chain completed from `cafile`'s
//! intermediates (checked against the real Mosquitto), `crlfile`, and certificates, keys and
//! CRLs rotated by SIGHUP without a restart.

mod common;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::BytesMut;
use common::{connect_packet, within, BinaryBroker, WAIT};
use rcgen::{
    date_time_ymd, BasicConstraints, Certificate, CertificateParams,
    CertificateRevocationListParams, DnType, IsCa, KeyIdMethod, KeyPair, RevocationReason,
    RevokedCertParams, SanType, SerialNumber,
};
use tern::codec::{self, ConnectReturnCode, Packet};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::rustls::pki_types::{PrivateKeyDer, ServerName};
use tokio_rustls::rustls::{ClientConfig, RootCertStore};
use tokio_rustls::TlsConnector;

/// A certificate with its key.
struct Issued {
    cert: Certificate,
    key: KeyPair,
}

fn ca(name: &str, issuer: Option<&Issued>) -> Issued {
    let key = KeyPair::generate().expect("key");
    let mut params = CertificateParams::new(Vec::<String>::new()).expect("params");
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.distinguished_name.push(DnType::CommonName, name);
    let cert = match issuer {
        Some(i) => params.signed_by(&key, &i.cert, &i.key),
        None => params.self_signed(&key),
    }
    .expect("CA");
    Issued { cert, key }
}

fn server(name: &str, issuer: &Issued) -> Issued {
    let key = KeyPair::generate().expect("key");
    let mut params = CertificateParams::new(vec!["localhost".to_string()]).expect("params");
    params.distinguished_name.push(DnType::CommonName, name);
    params
        .subject_alt_names
        .push(SanType::IpAddress("127.0.0.1".parse().expect("ip")));
    let cert = params
        .signed_by(&key, &issuer.cert, &issuer.key)
        .expect("server");
    Issued { cert, key }
}

fn client(name: &str, serial: u64, issuer: &Issued) -> Issued {
    let key = KeyPair::generate().expect("key");
    let mut params = CertificateParams::new(Vec::<String>::new()).expect("params");
    params.distinguished_name.push(DnType::CommonName, name);
    params.serial_number = Some(SerialNumber::from(serial));
    let cert = params
        .signed_by(&key, &issuer.cert, &issuer.key)
        .expect("client");
    Issued { cert, key }
}

/// A CRL of `issuer` revoking the given serial numbers.
fn crl(issuer: &Issued, number: u64, revoked: &[u64]) -> String {
    CertificateRevocationListParams {
        this_update: date_time_ymd(2020, 1, 1),
        next_update: date_time_ymd(2099, 1, 1),
        crl_number: SerialNumber::from(number),
        issuing_distribution_point: None,
        revoked_certs: revoked
            .iter()
            .map(|&s| RevokedCertParams {
                serial_number: SerialNumber::from(s),
                revocation_time: date_time_ymd(2020, 1, 1),
                reason_code: Some(RevocationReason::KeyCompromise),
                invalidity_date: None,
            })
            .collect(),
        key_identifier_method: KeyIdMethod::Sha256,
    }
    .signed_by(&issuer.cert, &issuer.key)
    .expect("crl")
    .pem()
    .expect("pem")
}

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, text).expect("write pem");
    path
}

type Tls = tokio_rustls::client::TlsStream<TcpStream>;

/// A TLS connection to `addr` trusting only `root`, with `client` as the client certificate.
async fn handshake(
    addr: SocketAddr,
    root: &Issued,
    client: Option<&Issued>,
) -> std::io::Result<Tls> {
    let mut roots = RootCertStore::empty();
    roots.add(root.cert.der().clone()).expect("root");
    let builder = ClientConfig::builder().with_root_certificates(roots);
    let config = match client {
        Some(c) => {
            let key = PrivateKeyDer::try_from(c.key.serialize_der()).expect("key");
            builder
                .with_client_auth_cert(vec![c.cert.der().clone()], key)
                .expect("client auth")
        }
        None => builder.with_no_client_auth(),
    };
    let tcp = TcpStream::connect(addr).await?;
    let name = ServerName::try_from("localhost").expect("name");
    TlsConnector::from(Arc::new(config))
        .connect(name, tcp)
        .await
}

/// The connection if a client trusting `root` gets CONNACK 0 from `addr` over TLS (each with
/// a client id of its own, so none takes another over).
async fn connects(
    addr: SocketAddr,
    root: &Issued,
    client: Option<&Issued>,
) -> Option<(Tls, BytesMut)> {
    static N: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let id = format!(
        "tls-{}",
        N.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    );
    let mut s = within(WAIT, handshake(addr, root, client)).await.ok()?;
    let mut wbuf = BytesMut::new();
    codec::encode(&connect_packet(&id, true, 60), &mut wbuf);
    s.write_all(&wbuf).await.ok()?;
    s.flush().await.ok()?;
    let mut buf = BytesMut::new();
    let ack = within(WAIT, async {
        loop {
            if let Ok(Some(p)) = codec::decode(&mut buf, 1 << 20) {
                return Some(p);
            }
            match s.read_buf(&mut buf).await {
                Ok(n) if n > 0 => {}
                _ => return None,
            }
        }
    })
    .await?;
    matches!(ack, Packet::ConnAck(a) if a.code == ConnectReturnCode::Accepted).then_some((s, buf))
}

fn listener_config(dir: &Path, extra: &str) -> String {
    format!(
        "[[listener]]\nbind = \"127.0.0.1:0\"\ncertfile = \"{}\"\nkeyfile = \"{}\"\ncafile = \"{}\"\n{extra}\
         [sys]\nsys_interval = \"0s\"\n",
        dir.join("server.pem").display(),
        dir.join("server.key").display(),
        dir.join("ca.pem").display(),
    )
}

#[tokio::test]
async fn the_server_chain_is_completed_from_cafile_as_mosquitto_does() {
    let dir = tempfile::tempdir().expect("temp dir");
    let root = ca("Tern root", None);
    let intermediate = ca("Tern intermediate", Some(&root));
    let leaf = server("broker", &intermediate);
    // certfile holds the leaf alone; the intermediate is only in cafile, beside the root.
    write(dir.path(), "server.pem", &leaf.cert.pem());
    write(dir.path(), "server.key", &leaf.key.serialize_pem());
    let bundle = format!("{}{}", intermediate.cert.pem(), root.cert.pem());
    write(dir.path(), "ca.pem", &bundle);
    let tern = BinaryBroker::start(&listener_config(dir.path(), "")).await;
    let (s, _) = connects(tern.addr, &root, None)
        .await
        .expect("a client trusting only the root verifies the chain");
    let sent = s.get_ref().1.peer_certificates().expect("server chain");
    assert_eq!(sent.len(), 2, "leaf and intermediate, not the root");
    assert_eq!(sent[1], *intermediate.cert.der());
    let conf = format!(
        "listener {{port}} 127.0.0.1\nallow_anonymous true\ncertfile {}\nkeyfile {}\ncafile {}\n",
        dir.path().join("server.pem").display(),
        dir.path().join("server.key").display(),
        dir.path().join("ca.pem").display(),
    );
    let (_mosquitto, addr) = common::start_mosquitto(&conf, dir.path()).await;
    assert!(connects(addr, &root, None).await.is_some(), "Mosquitto too");
}

#[tokio::test]
async fn certificates_and_crls_rotate_on_sighup() {
    let dir = tempfile::tempdir().expect("temp dir");
    let root = ca("Tern root", None);
    let first = server("first", &root);
    let second = server("second", &root);
    let alice = client("alice", 11, &root);
    let mallory = client("mallory", 12, &root);
    write(dir.path(), "server.pem", &first.cert.pem());
    write(dir.path(), "server.key", &first.key.serialize_pem());
    write(dir.path(), "ca.pem", &root.cert.pem());
    let crlfile = write(dir.path(), "crl.pem", &crl(&root, 1, &[12]));
    let extra = format!(
        "require_certificate = true\ncrlfile = \"{}\"\n",
        crlfile.display()
    );
    let broker = BinaryBroker::start(&listener_config(dir.path(), &extra)).await;
    // A certificate on the CRL is refused; one that is not is let in.
    assert!(connects(broker.addr, &root, Some(&mallory)).await.is_none());
    let (mut kept, mut kept_buf) = connects(broker.addr, &root, Some(&alice))
        .await
        .expect("alice is not revoked");
    let served = |s: &Tls| s.get_ref().1.peer_certificates().expect("chain")[0].clone();
    assert_eq!(served(&kept), *first.cert.der());
    // Rotate the server certificate and revoke alice too.
    write(dir.path(), "server.pem", &second.cert.pem());
    write(dir.path(), "server.key", &second.key.serialize_pem());
    write(dir.path(), "crl.pem", &crl(&root, 2, &[11, 12]));
    broker.reload(1).await;
    assert!(broker.log().contains("configuration and files reloaded"));
    assert!(connects(broker.addr, &root, Some(&alice)).await.is_none());
    // A bad CRL file on reload keeps the files in force.
    write(dir.path(), "crl.pem", "not a crl\n");
    broker.reload(2).await;
    assert!(broker.log().contains("reload failed"));
    assert!(connects(broker.addr, &root, Some(&alice)).await.is_none());
    // New handshakes got the new certificate; the open connection keeps its own and works.
    write(dir.path(), "crl.pem", &crl(&root, 3, &[12]));
    broker.reload(3).await;
    let (fresh, _) = connects(broker.addr, &root, Some(&alice))
        .await
        .expect("alice again");
    assert_eq!(served(&fresh), *second.cert.der());
    assert_eq!(served(&kept), *first.cert.der());
    kept.write_all(&[0xc0, 0]).await.expect("write");
    kept.flush().await.expect("flush");
    let pong = within(WAIT, async {
        loop {
            if let Ok(Some(p)) = codec::decode(&mut kept_buf, 1 << 20) {
                return p;
            }
            assert!(kept.read_buf(&mut kept_buf).await.expect("read") > 0);
        }
    })
    .await;
    assert_eq!(pong, Packet::PingResp);
}
