//! MQTT.js in headless Chromium (Debian's `chromium`, driven by `puppeteer-core`; `.ci/run`
//! installs both, and `npm ci` in `tests/browser` brings MQTT.js): a page subscribes over
//! `ws://` and over `wss://` (a test CA's certificate, pinned by its key), receives QoS 0, 1
//! and 2 messages that `mosquitto_pub` publishes over TCP, and publishes one back. And the
//! dashboard: its figures match the API, its forms browse and publish, its kick button
//! disconnects a client, and its screenshot is saved under `target/artifacts`.

mod common;

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use base64::Engine;
use common::{within, Raw, TestBroker};
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair, SanType};
use sha2::Digest;
use tern::message::QoS;
use tokio::io::{AsyncBufReadExt, BufReader};

/// What the page and its browser get, in all.
const BOUND: Duration = Duration::from_secs(60);

/// A server certificate for 127.0.0.1 from a test CA (PEM files in `dir`), and the base64
/// SHA-256 of its public key, which Chromium is told to accept.
fn server_cert(dir: &Path) -> String {
    let ca_key = KeyPair::generate().expect("key");
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).expect("params");
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "Tern browser test CA");
    let ca = ca_params.self_signed(&ca_key).expect("CA");
    let key = KeyPair::generate().expect("key");
    let mut params = CertificateParams::new(vec!["localhost".to_string()]).expect("params");
    params
        .subject_alt_names
        .push(SanType::IpAddress("127.0.0.1".parse().expect("ip")));
    let cert = params.signed_by(&key, &ca, &ca_key).expect("server cert");
    std::fs::write(
        dir.join("server.pem"),
        format!("{}{}", cert.pem(), ca.pem()),
    )
    .expect("write cert");
    std::fs::write(dir.join("server.key"), key.serialize_pem()).expect("write key");
    let spki = sha2::Sha256::digest(key.public_key_der());
    base64::engine::general_purpose::STANDARD.encode(spki)
}

/// The page's script and Chromium, or a panic that says how to get them.
fn page_script() -> PathBuf {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/browser");
    let chromium = std::env::var("CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into());
    assert!(
        Path::new(&chromium).exists() && dir.join("node_modules/mqtt").exists(),
        "the browser tests need Debian's chromium and `npm ci` in tests/browser (see .ci/run)"
    );
    dir.join("mqtt_page.mjs")
}

#[tokio::test]
async fn the_dashboard_shows_the_api_figures_and_kicks_publishes_and_browses() {
    let script = page_script().with_file_name("dashboard.mjs");
    let (broker, http) = common::http_broker(|_| {}).await;
    // Traffic first, then silence, so the page and the API must agree exactly.
    let (mut watcher, _) = Raw::connect(broker.addr, "dash-watcher", true, 60).await;
    watcher.subscribe(1, &[("dash/#", QoS::AtLeastOnce)]).await;
    let mut publisher = common::Client::connect(broker.addr, "dash-publisher").await;
    for i in 0..20 {
        publisher
            .publish_acked("dash/load", false, format!("m{i}"))
            .await;
    }
    publisher.publish_acked("dash/kept", true, "kept").await;
    for _ in 0..21 {
        let p = watcher.recv_publish().await;
        if let Some(id) = p.pkid {
            watcher.send_packet(&tern::codec::Packet::PubAck(id)).await;
        }
    }
    let victim = tern::codec::Connect {
        protocol: tern::codec::Protocol::V311,
        bridge: false,
        clean_session: true,
        keep_alive: 60,
        client_id: "dash-victim".into(),
        will: Some(tern::codec::LastWill {
            topic: bytes::Bytes::from_static(b"dash/will"),
            payload: bytes::Bytes::from_static(b"kicked"),
            qos: QoS::AtLeastOnce,
            retain: false,
        }),
        username: None,
        password: None,
    };
    let mut victim_conn = Raw::open(broker.addr).await;
    victim_conn
        .send_packet(&tern::codec::Packet::Connect(Box::new(victim)))
        .await;
    assert!(matches!(
        victim_conn.recv().await,
        tern::codec::Packet::ConnAck(_)
    ));

    let shot = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/artifacts/dashboard.png");
    let mut node = tokio::process::Command::new("node")
        .arg(&script)
        .arg(format!("http://{http}/"))
        .arg("dash-victim")
        .arg(&shot)
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("node runs");
    let mut lines = BufReader::new(node.stdout.take().expect("stdout")).lines();
    let mut steps = Vec::new();
    within(BOUND, async {
        while let Some(line) = lines.next_line().await.expect("read") {
            if let Some(why) = line.strip_prefix("FAIL ") {
                panic!("the dashboard failed: {why}");
            }
            if let Some(step) = line.strip_prefix("OK ") {
                steps.push(step.split(' ').next().unwrap_or("").to_owned());
                if step.starts_with("published") {
                    // The form's message reaches a real subscriber at the QoS chosen.
                    let p = watcher.recv_publish().await;
                    assert_eq!(
                        (&p.topic[..], &p.payload[..], p.qos),
                        (
                            &b"dash/from-page"[..],
                            &b"hello from the dashboard"[..],
                            QoS::AtLeastOnce
                        )
                    );
                    if let Some(id) = p.pkid {
                        watcher.send_packet(&tern::codec::Packet::PubAck(id)).await;
                    }
                }
            }
            if line == "DONE" {
                break;
            }
        }
    })
    .await;
    let status = within(BOUND, node.wait()).await.expect("node exits");
    assert!(status.success(), "the dashboard run failed: {status}");
    assert_eq!(
        steps,
        ["stats", "retained", "published", "screenshot", "kicked"]
    );
    // The kick closed the victim's connection and published its will.
    victim_conn.read_to_close().await;
    let will = watcher.recv_publish().await;
    assert_eq!(
        (&will.topic[..], &will.payload[..]),
        (&b"dash/will"[..], &b"kicked"[..])
    );
    assert!(std::fs::metadata(&shot).expect("screenshot").len() > 10_000);
    broker.stop().await;
}

/// Runs the page against `url`, publishing QoS 0, 1 and 2 messages once it has subscribed;
/// the messages it got, as (QoS, topic, payload).
async fn browser_round(url: &str, spki: Option<&str>, tcp_port: u16) -> Vec<(u8, String, String)> {
    let mut cmd = tokio::process::Command::new("node");
    cmd.arg(page_script()).arg(url).arg("3");
    if let Some(spki) = spki {
        cmd.arg(spki);
    }
    let mut node = cmd
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("node runs");
    let mut lines = BufReader::new(node.stdout.take().expect("stdout")).lines();
    let mut got = Vec::new();
    within(BOUND, async {
        while let Some(line) = lines.next_line().await.expect("read") {
            if line == "READY" {
                for qos in 0..3 {
                    let status = tokio::process::Command::new("mosquitto_pub")
                        .args(["-h", "127.0.0.1", "-p", &tcp_port.to_string()])
                        .args(["-q", &qos.to_string(), "-t", &format!("browser/in/q{qos}")])
                        .args(["-m", &format!("qos {qos} from mosquitto_pub")])
                        .status()
                        .await
                        .expect("mosquitto_pub runs");
                    assert!(status.success(), "mosquitto_pub failed");
                }
            } else if let Some(rest) = line.strip_prefix("GOT ") {
                let mut parts = rest.splitn(3, ' ');
                let qos = parts.next().and_then(|q| q.parse().ok()).expect("qos");
                let topic = parts.next().expect("topic").to_owned();
                got.push((qos, topic, parts.next().unwrap_or("").to_owned()));
            } else if line == "DONE" {
                break;
            } else if let Some(why) = line.strip_prefix("FAIL ") {
                panic!("the page failed over {url}: {why}");
            }
        }
    })
    .await;
    let status = within(BOUND, node.wait()).await.expect("node exits");
    assert!(
        status.success(),
        "the page's run over {url} failed: {status}"
    );
    got.sort();
    got
}

#[tokio::test]
async fn mqtt_js_in_chromium_talks_to_tern_over_ws_and_wss() {
    let dir = tempfile::tempdir().expect("temp dir");
    let spki = server_cert(dir.path());
    let broker = TestBroker::start_with(|c| {
        let tcp = c.listener[0].clone();
        let mut ws = tcp.clone();
        ws.protocol = "websockets".into();
        let mut wss = ws.clone();
        wss.certfile = Some(dir.path().join("server.pem"));
        wss.keyfile = Some(dir.path().join("server.key"));
        c.listener = vec![tcp, ws, wss];
    })
    .await;
    let addrs = broker.addrs().to_vec();
    let (mut back, _) = Raw::connect(addrs[0], "back", true, 60).await;
    back.subscribe(1, &[("browser/out", QoS::AtLeastOnce)])
        .await;
    let want: Vec<(u8, String, String)> = (0..3)
        .map(|q| {
            (
                q,
                format!("browser/in/q{q}"),
                format!("qos {q} from mosquitto_pub"),
            )
        })
        .collect();
    for (url, pin) in [
        (format!("ws://127.0.0.1:{}/mqtt", addrs[1].port()), None),
        (
            format!("wss://127.0.0.1:{}/mqtt", addrs[2].port()),
            Some(spki.as_str()),
        ),
    ] {
        let got = browser_round(&url, pin, addrs[0].port()).await;
        assert_eq!(got, want, "over {url}");
        let p = back.recv_publish().await;
        assert_eq!(
            (&p.topic[..], &p.payload[..], p.qos),
            (
                &b"browser/out"[..],
                &b"from the browser"[..],
                QoS::AtLeastOnce
            ),
            "published back over {url}"
        );
        if let Some(id) = p.pkid {
            back.send_packet(&tern::codec::Packet::PubAck(id)).await;
        }
    }
    broker.stop().await;
}
