//! Password files, ACL files (Mosquitto's formats, made by the real mosquitto_passwd), the
//! `tern passwd` command, and reloading on SIGHUP.

mod common;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::{login, BinaryBroker, TestBroker};
use tern::codec::{ConnectReturnCode, Packet, SubAckCode};
use tern::message::QoS;

const QUIET: Duration = Duration::from_millis(300);

fn mosquitto_passwd(args: &[&str]) {
    let status = Command::new("mosquitto_passwd")
        .args(args)
        .status()
        .expect("mosquitto_passwd is installed (apt-get install mosquitto; see .ci/run)");
    assert!(status.success(), "mosquitto_passwd {args:?}");
}

fn tern_passwd(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_tern"))
        .arg("passwd")
        .args(args)
        .output()
        .expect("run tern passwd")
}

fn path_str(p: &Path) -> &str {
    p.to_str().expect("utf-8 path")
}

#[tokio::test]
async fn mosquitto_password_files_work_unchanged() {
    // [MQTT-3.2.2-4], [MQTT-3.2.2-5]
    let dir = tempfile::tempdir().expect("temp dir");
    let file = dir.path().join("passwd");
    mosquitto_passwd(&["-c", "-b", path_str(&file), "alice", "secret"]);
    mosquitto_passwd(&["-H", "sha512", "-b", path_str(&file), "bob", "hunter2"]);
    let b = TestBroker::start_with(|c| {
        c.auth.allow_anonymous = false;
        c.auth.password_file = Some(file.clone());
    })
    .await;
    for (user, password, want) in [
        (Some("alice"), Some("secret"), ConnectReturnCode::Accepted),
        (Some("bob"), Some("hunter2"), ConnectReturnCode::Accepted),
        (
            Some("alice"),
            Some("hunter2"),
            ConnectReturnCode::BadUserNameOrPassword,
        ),
        (
            Some("alice"),
            None,
            ConnectReturnCode::BadUserNameOrPassword,
        ),
        (
            Some("mallory"),
            Some("secret"),
            ConnectReturnCode::BadUserNameOrPassword,
        ),
        (None, None, ConnectReturnCode::NotAuthorized),
    ] {
        let (mut raw, code) = login(b.addr, "c", user, password).await;
        assert_eq!(code, want, "{user:?}/{password:?}");
        if code != ConnectReturnCode::Accepted {
            raw.expect_closed_silently().await;
        }
    }
}

#[tokio::test]
async fn tern_passwd_files_work_with_mosquitto_and_tern() {
    let dir = tempfile::tempdir().expect("temp dir");
    let file = dir.path().join("passwd");
    let out = tern_passwd(&["-c", "-b", path_str(&file), "carol", "pw1"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(tern_passwd(&["-b", path_str(&file), "dave", "pw2"])
        .status
        .success());
    // The real Mosquitto accepts the file tern wrote.
    // `user root`: run as root, Mosquitto would switch to its own user, which may not read a
    // file tern wrote with owner-only permissions.
    let (mut mosquitto, addr) = common::start_mosquitto(
        &format!(
            "listener {{port}} 127.0.0.1\nuser root\nallow_anonymous false\npassword_file {}\n",
            file.display()
        ),
        dir.path(),
    )
    .await;
    assert_eq!(
        login(addr, "m", Some("carol"), Some("pw1")).await.1,
        ConnectReturnCode::Accepted
    );
    assert_eq!(
        login(addr, "m", Some("dave"), Some("pw2")).await.1,
        ConnectReturnCode::Accepted
    );
    assert_ne!(
        login(addr, "m", Some("carol"), Some("pw2")).await.1,
        ConnectReturnCode::Accepted
    );
    let _ = mosquitto.kill().await;
    // Deleting a user.
    assert!(tern_passwd(&["-D", path_str(&file), "dave"])
        .status
        .success());
    let missing = tern_passwd(&["-D", path_str(&file), "dave"]);
    assert!(!missing.status.success(), "deleting an absent user fails");
    let b = TestBroker::start_with(|c| c.auth.password_file = Some(file.clone())).await;
    assert_eq!(
        login(b.addr, "t", Some("carol"), Some("pw1")).await.1,
        ConnectReturnCode::Accepted
    );
    assert_eq!(
        login(b.addr, "t", Some("dave"), Some("pw2")).await.1,
        ConnectReturnCode::BadUserNameOrPassword
    );
}

const ACL: &str = "\
# anonymous clients may only read public topics
topic read public/#

user alice
topic readwrite alice/#
topic deny alice/secret
topic read shared/#
pattern read clients/%c/#

user admin
topic readwrite #
";

async fn acl_broker() -> (TestBroker, tempfile::TempDir) {
    common::acl_broker(ACL).await
}

#[tokio::test]
async fn denied_filters_get_0x80() {
    let (b, _dir) = acl_broker().await;
    let (mut alice, _) = login(b.addr, "alice-dev", Some("alice"), None).await;
    let codes = alice
        .subscribe(
            1,
            &[
                ("alice/#", QoS::AtLeastOnce),
                ("bob/#", QoS::AtLeastOnce),
                ("shared/+", QoS::AtMostOnce),
                ("clients/alice-dev/#", QoS::AtMostOnce),
                ("clients/other/#", QoS::AtMostOnce),
                ("#", QoS::AtMostOnce),
                ("alice/secret", QoS::AtMostOnce),
            ],
        )
        .await;
    // Refused: filters under which alice may read nothing; `#` is granted (and filtered).
    assert_eq!(
        codes,
        [
            SubAckCode::Granted(QoS::AtLeastOnce),
            SubAckCode::Failure,
            SubAckCode::Granted(QoS::AtMostOnce),
            SubAckCode::Granted(QoS::AtMostOnce),
            SubAckCode::Failure,
            SubAckCode::Granted(QoS::AtMostOnce),
            SubAckCode::Failure,
        ]
    );
    let (mut anon, _) = login(b.addr, "anon", None, None).await;
    let codes = anon
        .subscribe(
            1,
            &[("public/#", QoS::AtMostOnce), ("alice/#", QoS::AtMostOnce)],
        )
        .await;
    assert_eq!(
        codes,
        [SubAckCode::Granted(QoS::AtMostOnce), SubAckCode::Failure]
    );
}

#[tokio::test]
async fn wildcards_and_retained_never_leak_a_denied_topic() {
    let (b, _dir) = acl_broker().await;
    let (mut admin, _) = login(b.addr, "admin", Some("admin"), None).await;
    // A retained message on a topic alice may not read, and one she may.
    admin
        .publish("alice/secret", QoS::AtLeastOnce, Some(1), true, b"hidden")
        .await;
    assert_eq!(admin.recv().await, Packet::PubAck(1));
    admin
        .publish("alice/open", QoS::AtLeastOnce, Some(2), true, b"visible")
        .await;
    assert_eq!(admin.recv().await, Packet::PubAck(2));
    let (mut alice, _) = login(b.addr, "alice-dev", Some("alice"), None).await;
    alice.subscribe(1, &[("alice/#", QoS::AtMostOnce)]).await;
    let p = alice.recv_publish().await;
    assert_eq!((&p.topic[..], p.retain), (&b"alice/open"[..], true));
    alice.expect_silence(QUIET).await;
    // Live messages: the denied one is withheld, the next one arrives.
    admin
        .publish("alice/secret", QoS::AtMostOnce, None, false, b"hidden")
        .await;
    admin
        .publish("alice/news", QoS::AtMostOnce, None, false, b"ok")
        .await;
    let p = alice.recv_publish().await;
    assert_eq!(&p.topic[..], b"alice/news");
    alice.expect_silence(QUIET).await;
    assert!(b.metrics.snapshot().acl_denied >= 2);
}

#[tokio::test]
async fn denied_publish_is_acknowledged_and_dropped() {
    // [MQTT-3.3.5-2]
    let (b, _dir) = acl_broker().await;
    let (mut admin, _) = login(b.addr, "admin", Some("admin"), None).await;
    admin.subscribe(1, &[("#", QoS::AtLeastOnce)]).await;
    let (mut anon, _) = login(b.addr, "anon", None, None).await;
    anon.publish("public/x", QoS::AtLeastOnce, Some(5), false, b"read-only")
        .await;
    assert_eq!(anon.recv().await, Packet::PubAck(5));
    anon.publish("public/x", QoS::ExactlyOnce, Some(6), false, b"read-only")
        .await;
    assert_eq!(anon.recv().await, Packet::PubRec(6));
    let (mut alice, _) = login(b.addr, "alice-dev", Some("alice"), None).await;
    alice
        .publish("alice/secret", QoS::AtLeastOnce, Some(7), false, b"denied")
        .await;
    assert_eq!(alice.recv().await, Packet::PubAck(7));
    alice
        .publish("alice/fine", QoS::AtLeastOnce, Some(8), false, b"allowed")
        .await;
    assert_eq!(alice.recv().await, Packet::PubAck(8));
    let p = admin.recv_publish().await;
    assert_eq!(&p.payload[..], b"allowed");
    admin
        .send_packet(&Packet::PubAck(p.pkid.expect("id")))
        .await;
    admin.expect_silence(QUIET).await;
    assert_eq!(b.metrics.snapshot().acl_denied, 3);
}

/// Runs `tern --check-config` on a config whose `[auth] KEY` names a file holding `text`;
/// checks it fails with status 2 and one line naming `file:line`, and returns that line.
fn check_auth_file(key: &str, text: &str, line: usize) -> String {
    let dir = tempfile::tempdir().expect("temp dir");
    let file = dir.path().join("auth-file");
    std::fs::write(&file, text).expect("write");
    let conf = dir.path().join("tern.toml");
    std::fs::write(&conf, format!("[auth]\n{key} = \"auth-file\"\n")).expect("write");
    let out = Command::new(env!("CARGO_BIN_EXE_tern"))
        .args(["--check-config", "-c"])
        .arg(&conf)
        .output()
        .expect("run tern");
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(err.contains(&format!("{}:{line}", file.display())), "{err}");
    assert_eq!(err.lines().count(), 1, "{err}");
    err
}

#[test]
fn bad_files_stop_the_broker_with_the_file_and_line_named() {
    check_auth_file("acl_file", "topic read ok/#\nallow everything\n", 2);
}

#[test]
fn a_password_line_with_an_empty_hash_is_a_load_error() {
    // Accepted as is, `admin:$7$101$c2FsdA==$` would let any password in.
    let err = check_auth_file("password_file", "# users\nadmin:$7$101$c2FsdA==$\n", 2);
    assert!(err.contains("hash is 0 bytes"), "{err}");
}

#[tokio::test]
async fn sighup_reloads_the_password_file_without_dropping_clients() {
    let dir = tempfile::tempdir().expect("temp dir");
    let file = dir.path().join("passwd");
    assert!(tern_passwd(&["-c", "-b", path_str(&file), "erin", "old"])
        .status
        .success());
    let broker = BinaryBroker::start(&format!(
        "[auth]\nallow_anonymous = false\npassword_file = \"{}\"\n",
        file.display()
    ))
    .await;
    let (mut kept, code) = login(broker.addr, "kept", Some("erin"), Some("old")).await;
    assert_eq!(code, ConnectReturnCode::Accepted);
    assert!(tern_passwd(&["-b", path_str(&file), "erin", "new"])
        .status
        .success());
    let hup = || {
        let status = Command::new("kill")
            .args(["-HUP", &broker.pid().to_string()])
            .status()
            .expect("kill");
        assert!(status.success());
    };
    hup();
    // The reload is asynchronous: wait for the broker to report it.
    broker.wait_for_log("files reloaded", 1).await;
    assert_eq!(
        login(broker.addr, "new", Some("erin"), Some("new")).await.1,
        ConnectReturnCode::Accepted
    );
    assert_eq!(
        login(broker.addr, "x", Some("erin"), Some("old")).await.1,
        ConnectReturnCode::BadUserNameOrPassword
    );
    // A broken file on reload keeps the policy in force: here an empty hash, which would
    // accept any password if it were loaded.
    std::fs::write(&file, "erin:$7$101$c2FsdA==$\n").expect("write");
    hup();
    // Only once the broker has rejected the file does the next check mean anything.
    broker.wait_for_log("reload failed", 1).await;
    assert_eq!(
        login(broker.addr, "y", Some("erin"), Some("new")).await.1,
        ConnectReturnCode::Accepted
    );
    assert_eq!(
        login(broker.addr, "z", Some("erin"), Some("anything"))
            .await
            .1,
        ConnectReturnCode::BadUserNameOrPassword
    );
    // The first client never noticed.
    kept.send(&[0xc0, 0]).await;
    assert_eq!(kept.recv().await, Packet::PingResp);
}

#[tokio::test]
async fn sighup_reloads_the_acl_file_for_new_and_existing_subscriptions() {
    let dir = tempfile::tempdir().expect("temp dir");
    let acl = dir.path().join("acl");
    std::fs::write(&acl, "topic read open/#\n").expect("write");
    let broker = BinaryBroker::start(&format!("[auth]\nacl_file = \"{}\"\n", acl.display())).await;
    let (mut reader, _) = login(broker.addr, "reader", None, None).await;
    assert_eq!(
        reader
            .subscribe(
                1,
                &[("open/#", QoS::AtMostOnce), ("news/#", QoS::AtMostOnce)]
            )
            .await,
        [SubAckCode::Granted(QoS::AtMostOnce), SubAckCode::Failure]
    );
    // The new file grants news/# and takes open/# away; anonymous clients may also write.
    std::fs::write(&acl, "topic readwrite news/#\ntopic write open/#\n").expect("write");
    let status = Command::new("kill")
        .args(["-HUP", &broker.pid().to_string()])
        .status()
        .expect("kill");
    assert!(status.success());
    broker.wait_for_log("files reloaded", 1).await;
    assert_eq!(
        reader.subscribe(2, &[("news/#", QoS::AtMostOnce)]).await,
        [SubAckCode::Granted(QoS::AtMostOnce)]
    );
    let (mut writer, _) = login(broker.addr, "writer", None, None).await;
    // Every delivery is checked against the rules in force: open/# is no longer readable,
    // though the subscription was granted under the old file.
    writer
        .publish("open/x", QoS::AtMostOnce, None, false, b"old")
        .await;
    writer
        .publish("news/x", QoS::AtMostOnce, None, false, b"new")
        .await;
    let p = reader.recv_publish().await;
    assert_eq!(&p.topic[..], b"news/x");
    reader.expect_silence(QUIET).await;
}

#[tokio::test]
async fn assigned_client_ids_use_the_configured_prefix() {
    // [MQTT-3.1.3-6] an empty id with clean session 1 gets one made up, here "edge-...".
    let broker = BinaryBroker::start("[mqtt]\nauto_id_prefix = \"edge-\"\n").await;
    let (_raw, code) = login(broker.addr, "", None, None).await;
    assert_eq!(code, ConnectReturnCode::Accepted);
    broker
        .wait_for_log_lines(1, |l| {
            l.contains("client connected") && l.contains("client_id=\"edge-")
        })
        .await;
}
