//! Helpers for the bridge tests: a bridge table, its state topic, and a small PKI.

use std::net::SocketAddr;

use tern::config::BridgeConfig;
use tern::message::QoS;

use super::{within, Raw, WAIT};

/// A bridge named `up` to `remote` with these topic lines.
pub fn bridge(remote: SocketAddr, topics: &[&str]) -> BridgeConfig {
    let text = format!(
        "name = \"up\"\naddress = \"{remote}\"\ntopic = {topics:?}\nrestart_timeout = \"1s\"\n"
    );
    toml::from_str(&text).expect("bridge table")
}

/// Waits until bridge `up`'s state topic on `addr` says `want`.
pub async fn state_is(addr: SocketAddr, want: &[u8]) {
    state_of(addr, "up", want).await
}

/// Waits until bridge `name`'s state topic on `addr` says `want` (1: connected and
/// subscribed on both sides).
pub async fn state_of(addr: SocketAddr, name: &str, want: &[u8]) {
    let (mut s, _) = Raw::connect(addr, "state-watch", true, 0).await;
    let topic = format!("$SYS/broker/connection/{name}/state");
    s.subscribe(1, &[(&topic, QoS::AtMostOnce)]).await;
    within(WAIT, async {
        while s.recv_publish().await.payload != want {}
    })
    .await;
}

/// A CA and, signed by it, a server certificate for `host` (an IP address or a DNS name) and
/// a client certificate with common name `edge`, as PEM files in `dir`.
pub fn pki(dir: &std::path::Path, host: &str) {
    use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair, SanType};
    let ca_key = KeyPair::generate().expect("key");
    let mut ca = CertificateParams::new(Vec::<String>::new()).expect("params");
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.distinguished_name
        .push(DnType::CommonName, "bridge test CA");
    let ca = ca.self_signed(&ca_key).expect("CA");
    let server_key = KeyPair::generate().expect("key");
    let mut server = CertificateParams::new(Vec::<String>::new()).expect("params");
    let san = match host.parse() {
        Ok(ip) => SanType::IpAddress(ip),
        Err(_) => SanType::DnsName(host.try_into().expect("dns name")),
    };
    server.subject_alt_names.push(san);
    let server = server.signed_by(&server_key, &ca, &ca_key).expect("server");
    let client_key = KeyPair::generate().expect("key");
    let mut client = CertificateParams::new(Vec::<String>::new()).expect("params");
    client.distinguished_name.push(DnType::CommonName, "edge");
    let client = client.signed_by(&client_key, &ca, &ca_key).expect("client");
    for (name, pem) in [
        ("ca.pem", ca.pem()),
        ("server.pem", server.pem()),
        ("server.key", server_key.serialize_pem()),
        ("client.pem", client.pem()),
        ("client.key", client_key.serialize_pem()),
    ] {
        std::fs::write(dir.join(name), pem).expect("write pem");
    }
}
