//! ACL patterns end to end: `%c` and `%u` substitution, and clients whose id or user name
//! would turn a pattern into a wildcard or a path into another client's subtree.

mod common;

use std::time::Duration;

use common::{login, TestBroker};
use tern::codec::{ConnectReturnCode, Packet, SubAckCode};
use tern::message::QoS;

const QUIET: Duration = Duration::from_millis(300);

const ACL: &str = "\
user admin
topic readwrite #

pattern readwrite clients/%c/#
pattern write devices/%c/cmd
pattern read inbox/%u/#
";

async fn acl_broker() -> (TestBroker, tempfile::TempDir) {
    common::acl_broker(ACL).await
}

#[tokio::test]
async fn client_ids_with_wildcards_or_slashes_get_nothing_from_a_pattern() {
    let (b, _dir) = acl_broker().await;
    let (mut admin, code) = login(b.addr, "admin-1", Some("admin"), None).await;
    assert_eq!(code, ConnectReturnCode::Accepted);
    // The owner of clients/a/# reads its own subtree.
    let (mut owner, _) = login(b.addr, "a", None, None).await;
    assert_eq!(
        owner
            .subscribe(1, &[("clients/a/#", QoS::AtMostOnce)])
            .await,
        [SubAckCode::Granted(QoS::AtMostOnce)]
    );
    let mut thieves = Vec::new();
    for id in ["+", "#", "a/b"] {
        let (mut t, code) = login(b.addr, id, None, None).await;
        assert_eq!(code, ConnectReturnCode::Accepted, "{id}");
        // Mosquitto 1.4.12+ (CVE-2017-7650) skips the pattern for + and #; Tern for / too.
        let codes = t
            .subscribe(
                1,
                &[
                    ("clients/+/#", QoS::AtMostOnce),
                    ("clients/#", QoS::AtMostOnce),
                    ("clients/a/#", QoS::AtMostOnce),
                    (&format!("clients/{id}/#"), QoS::AtMostOnce),
                ],
            )
            .await;
        assert!(
            codes.iter().all(|c| *c == SubAckCode::Failure),
            "{id}: {codes:?}"
        );
        // Nor may it write through `devices/%c/cmd`.
        t.publish("devices/victim/cmd", QoS::AtLeastOnce, Some(2), false, b"x")
            .await;
        assert_eq!(t.recv().await, Packet::PubAck(2), "acknowledged, dropped");
        thieves.push(t);
    }
    admin.subscribe(1, &[("devices/#", QoS::AtMostOnce)]).await;
    admin
        .publish("clients/victim/secret", QoS::AtMostOnce, None, false, b"s")
        .await;
    admin
        .publish("clients/a/b/secret", QoS::AtMostOnce, None, false, b"s")
        .await;
    let p = owner.recv_publish().await;
    assert_eq!(&p.topic[..], b"clients/a/b/secret");
    for t in &mut thieves {
        t.expect_silence(QUIET).await;
    }
    admin.expect_silence(QUIET).await;
    // One denied PUBLISH per thief (refused filters are not deliveries).
    assert_eq!(b.metrics.snapshot().acl_denied, 3);
}

#[tokio::test]
async fn user_name_patterns_apply_end_to_end() {
    let (b, _dir) = acl_broker().await;
    let (mut admin, _) = login(b.addr, "admin-1", Some("admin"), None).await;
    let (mut bob, _) = login(b.addr, "bob-phone", Some("bob"), None).await;
    let (mut anon, _) = login(b.addr, "anon", None, None).await;
    let (mut plus, _) = login(b.addr, "p", Some("+"), None).await;
    assert_eq!(
        bob.subscribe(
            1,
            &[
                ("inbox/bob/#", QoS::AtMostOnce),
                ("inbox/+/x", QoS::AtMostOnce)
            ]
        )
        .await,
        // The second is wider than bob's pattern, so granted and filtered per message.
        [
            SubAckCode::Granted(QoS::AtMostOnce),
            SubAckCode::Granted(QoS::AtMostOnce)
        ]
    );
    // A pattern naming %u never applies to a client without a user name, nor to user `+`.
    assert_eq!(
        anon.subscribe(1, &[("inbox//#", QoS::AtMostOnce)]).await,
        [SubAckCode::Failure]
    );
    assert_eq!(
        plus.subscribe(1, &[("inbox/+/#", QoS::AtMostOnce)]).await,
        [SubAckCode::Failure]
    );
    admin
        .publish("inbox/alice/x", QoS::AtMostOnce, None, false, b"not bob's")
        .await;
    admin
        .publish("inbox/bob/1", QoS::AtMostOnce, None, false, b"hi")
        .await;
    assert_eq!(&bob.recv_publish().await.payload[..], b"hi");
    anon.expect_silence(QUIET).await;
    plus.expect_silence(QUIET).await;
}

const WIDE_ACL: &str = "\
user admin
topic readwrite #

user alice
topic readwrite sec/#
topic readwrite test/#
topic deny test/nosubscribe
";

/// alice's `#` on the broker at `addr`: granted, and only what she may read arrives.
async fn wide_subscription_is_granted_and_filtered(addr: std::net::SocketAddr) {
    let (mut admin, _) = login(addr, "admin-1", Some("admin"), None).await;
    let (mut alice, _) = login(addr, "alice-1", Some("alice"), None).await;
    assert_eq!(
        alice.subscribe(1, &[("#", QoS::AtMostOnce)]).await,
        [SubAckCode::Granted(QoS::AtMostOnce)]
    );
    for topic in ["other/x", "test/nosubscribe", "sec/a"] {
        admin
            .publish(topic, QoS::AtMostOnce, None, false, topic.as_bytes())
            .await;
    }
    assert_eq!(&alice.recv_publish().await.topic[..], b"sec/a");
    alice.expect_silence(QUIET).await;
}

#[tokio::test]
async fn a_wide_filter_is_granted_and_filtered_and_a_denied_one_refused() {
    // [MQTT-3.8.4-5]: the SUBACK has a code per filter; 0x80 only where the ACL lets the client
    // read nothing the filter matches.
    let (b, _dir) = common::acl_broker(WIDE_ACL).await;
    wide_subscription_is_granted_and_filtered(b.addr).await;
    let (mut alice, _) = login(b.addr, "alice-2", Some("alice"), None).await;
    assert_eq!(
        alice
            .subscribe(
                2,
                &[
                    ("test/nosubscribe", QoS::AtMostOnce),
                    ("test/#", QoS::AtMostOnce),
                    ("elsewhere/#", QoS::AtMostOnce),
                ]
            )
            .await,
        [
            SubAckCode::Failure,
            SubAckCode::Granted(QoS::AtMostOnce),
            SubAckCode::Failure
        ]
    );
    // Mosquitto grants and filters `#` the same way.
    let dir = tempfile::tempdir().expect("temp dir");
    std::fs::write(dir.path().join("acl"), WIDE_ACL).expect("write acl");
    let conf = format!(
        "listener {{port}} 127.0.0.1\nallow_anonymous true\nacl_file {}\n",
        dir.path().join("acl").display()
    );
    let (_mosquitto, addr) = common::start_mosquitto(&conf, dir.path()).await;
    wide_subscription_is_granted_and_filtered(addr).await;
}
