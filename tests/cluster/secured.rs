//! Nodes reaching a NATS that asks who they are: user and password, a token, TLS with a
//! client certificate. The right credentials let a node in (and messages cross between two
//! such nodes); wrong or missing ones keep it out with an error that says so.

use std::time::Duration;

use tern::config::{ClusterConfig, Config};
use tern::message::QoS;

use crate::common::{self, TestBroker};
use crate::harness::{self, client, next, routed, Nats};

/// `[cluster]` for node `name` on a single NATS server, changed by `tweak`.
fn config(nats: &Nats, name: &str, tweak: &impl Fn(&mut ClusterConfig)) -> ClusterConfig {
    let mut c = harness::cluster_config(nats, name, "secured");
    c.replicas = 1;
    tweak(&mut c);
    c
}

/// Two nodes with `tweak`'s credentials: a message crosses from one to the other.
async fn two_nodes_serve(nats: &Nats, tweak: impl Fn(&mut ClusterConfig)) {
    let mut nodes = Vec::new();
    for i in 0..2u8 {
        let cluster = config(nats, &format!("node{}", i + 1), &tweak);
        nodes.push(
            TestBroker::start_with(|c| {
                c.listener[0].bind = std::net::SocketAddr::from(([127, 0, 0, 2 + i], 0));
                c.cluster = Some(cluster);
            })
            .await,
        );
    }
    let addrs: Vec<_> = nodes.iter().map(|n| n.addr).collect();
    harness::warm(&addrs).await;
    let mut sub = client(addrs[1], "sub").await;
    sub.subscribe(1, &[("sec/#", QoS::AtLeastOnce)]).await;
    let mut publisher = client(addrs[0], "pub").await;
    routed(&mut publisher, &mut sub, "sec/probe").await;
    publisher
        .publish("sec/x", QoS::AtMostOnce, None, false, b"across")
        .await;
    assert_eq!(next(&mut sub).await.1, b"across");
}

/// A node with `tweak`'s credentials does not start; the error it gives.
async fn refused(nats: &Nats, tweak: impl Fn(&mut ClusterConfig)) -> String {
    let mut config = Config::default();
    config.listener[0].bind = "127.0.0.5:0".parse().expect("address");
    let mut cluster = self::config(nats, "intruder", &tweak);
    cluster.connect_timeout = Duration::from_secs(1);
    config.cluster = Some(cluster);
    let started = common::within(common::WAIT, tern::broker::Broker::bind(config)).await;
    match started {
        Ok(_) => panic!("a node with wrong credentials joined"),
        Err(e) => e.to_string(),
    }
}

#[tokio::test]
async fn a_user_and_password_let_nodes_in_and_a_wrong_password_keeps_one_out() {
    let nats = Nats::single(&["--user", "tern", "--pass", "s3cret"]).await;
    two_nodes_serve(&nats, |c| {
        c.nats_user = Some("tern".into());
        c.nats_password = Some("s3cret".into());
    })
    .await;
    let error = refused(&nats, |c| {
        c.nats_user = Some("tern".into());
        c.nats_password = Some("guess".into());
    })
    .await;
    assert!(error.contains("authorization violation"), "{error}");
    let error = refused(&nats, |_| {}).await;
    assert!(error.contains("authorization violation"), "{error}");
}

#[tokio::test]
async fn a_token_lets_nodes_in_and_a_wrong_one_keeps_one_out() {
    let nats = Nats::single(&["--auth", "t0ken"]).await;
    two_nodes_serve(&nats, |c| c.nats_token = Some("t0ken".into())).await;
    let error = refused(&nats, |c| c.nats_token = Some("other".into())).await;
    assert!(error.contains("authorization violation"), "{error}");
}

#[tokio::test]
async fn tls_with_a_client_certificate_lets_nodes_in_and_none_keeps_one_out() {
    let pki = tempfile::tempdir().expect("temp dir");
    common::bridging::pki(pki.path(), "127.0.0.1");
    let file = |name: &str| pki.path().join(name);
    let (cert, key, ca) = (file("server.pem"), file("server.key"), file("ca.pem"));
    let nats = Nats::single(&[
        "--tls",
        "--tlscert",
        cert.to_str().expect("path"),
        "--tlskey",
        key.to_str().expect("path"),
        "--tlsverify",
        "--tlscacert",
        ca.to_str().expect("path"),
    ])
    .await;
    two_nodes_serve(&nats, |c| {
        c.nats_cafile = Some(file("ca.pem"));
        c.nats_certfile = Some(file("client.pem"));
        c.nats_keyfile = Some(file("client.key"));
    })
    .await;
    // The server's certificate checked, but no client certificate to show.
    let error = refused(&nats, |c| c.nats_cafile = Some(file("ca.pem"))).await;
    assert!(error.contains("cannot reach NATS"), "{error}");
}

#[tokio::test]
async fn a_credentials_file_that_is_not_one_is_named_in_the_error() {
    let nats = Nats::single(&[]).await;
    let dir = tempfile::tempdir().expect("temp dir");
    let creds = dir.path().join("node.creds");
    std::fs::write(&creds, "not a credentials file\n").expect("write");
    let error = refused(&nats, |c| c.nats_creds = Some(creds.clone())).await;
    assert!(
        error.contains("nats_creds") && error.contains("node.creds"),
        "{error}"
    );
    let error = refused(&nats, |c| {
        c.nats_creds = Some(dir.path().join("missing.creds"))
    })
    .await;
    assert!(error.contains("missing.creds"), "{error}");
}
