//! Interoperability with the real `mosquitto_sub` and `mosquitto_pub` clients
//! (Debian's mosquitto-clients, installed by .ci/run).

mod common;

use std::process::Stdio;
use std::time::Duration;

use common::{within, TestBroker, WAIT};
use tokio::io::{AsyncBufReadExt, BufReader, Lines};
use tokio::process::{Child, ChildStdout, Command};

fn binary(name: &str) -> &str {
    let found = std::process::Command::new("which")
        .arg(name)
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    assert!(
        found,
        "{name} is not installed: apt-get install mosquitto-clients (see .ci/run)"
    );
    name
}

/// Starts mosquitto_sub with `-d` so its SUBACK is visible, and waits for that SUBACK.
async fn subscriber(b: &TestBroker, args: &[&str]) -> (Child, Lines<BufReader<ChildStdout>>) {
    // stdbuf: mosquitto_sub block-buffers stdout into a pipe.
    let mut child = Command::new("stdbuf")
        .args(["-oL", binary("mosquitto_sub")])
        .args([
            "-h",
            "127.0.0.1",
            "-p",
            &b.addr.port().to_string(),
            "-d",
            "-v",
        ])
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn mosquitto_sub");
    let stdout = child.stdout.take().expect("stdout");
    let mut lines = BufReader::new(stdout).lines();
    within(WAIT, async {
        while let Some(line) = lines.next_line().await.expect("read") {
            if line.contains("SUBACK") {
                return;
            }
        }
        panic!("mosquitto_sub ended before its SUBACK");
    })
    .await;
    (child, lines)
}

/// The next "topic payload" line, skipping mosquitto_sub's debug lines.
async fn next_message(lines: &mut Lines<BufReader<ChildStdout>>) -> String {
    within(WAIT, async {
        while let Some(line) = lines.next_line().await.expect("read") {
            if !line.starts_with("Client ") && !line.starts_with("Subscribed (mid") {
                return line;
            }
        }
        panic!("mosquitto_sub ended");
    })
    .await
}

async fn publish(b: &TestBroker, args: &[&str]) {
    let status = within(
        WAIT,
        Command::new(binary("mosquitto_pub"))
            .args(["-h", "127.0.0.1", "-p", &b.addr.port().to_string()])
            .args(args)
            .status(),
    )
    .await
    .expect("run mosquitto_pub");
    assert!(status.success(), "mosquitto_pub {args:?}: {status:?}");
}

/// Runs `mosquitto_sub -C count -W secs` on `filter` and returns what it printed.
async fn subscribe_once(b: &TestBroker, filter: &str, count: u32, secs: u32) -> String {
    let out = within(
        WAIT,
        Command::new(binary("mosquitto_sub"))
            .args([
                "-h",
                "127.0.0.1",
                "-p",
                &b.addr.port().to_string(),
                "-v",
                "-t",
                filter,
            ])
            .args(["-C", &count.to_string(), "-W", &secs.to_string()])
            .output(),
    )
    .await
    .expect("mosquitto_sub");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[tokio::test]
async fn mosquitto_clients_exchange_qos0_and_qos1_with_wildcards() {
    // [MQTT-3.8.3-2], [MQTT-3.3.2-3], [MQTT-3.3.4-1]
    let b = TestBroker::start().await;
    let (mut sub, mut lines) =
        subscriber(&b, &["-q", "1", "-t", "sensors/+/temp", "-t", "alarms/#"]).await;
    publish(&b, &["-q", "1", "-t", "sensors/kitchen/temp", "-m", "21.5"]).await;
    publish(
        &b,
        &["-q", "0", "-t", "sensors/kitchen/humidity", "-m", "40"],
    )
    .await;
    publish(&b, &["-q", "1", "-t", "alarms/door/front", "-m", "open"]).await;
    publish(&b, &["-q", "0", "-t", "sensors/hall/temp", "-m", "19"]).await;
    assert_eq!(next_message(&mut lines).await, "sensors/kitchen/temp 21.5");
    assert_eq!(next_message(&mut lines).await, "alarms/door/front open");
    assert_eq!(next_message(&mut lines).await, "sensors/hall/temp 19");
    let _ = sub.kill().await;
}

#[tokio::test]
async fn mosquitto_clients_see_retained_messages() {
    // [MQTT-3.3.1-5], [MQTT-3.3.1-6], [MQTT-3.3.1-10]
    let b = TestBroker::start().await;
    publish(&b, &["-q", "1", "-r", "-t", "status/boiler", "-m", "on"]).await;
    publish(&b, &["-q", "1", "-r", "-t", "status/pump", "-m", "off"]).await;
    publish(
        &b,
        &["-q", "1", "-r", "-t", "status/boiler", "-m", "standby"],
    )
    .await;
    let text = subscribe_once(&b, "status/#", 2, 5).await;
    let mut got: Vec<&str> = text.lines().collect();
    got.sort_unstable();
    assert_eq!(got, ["status/boiler standby", "status/pump off"]);
    // Deleting with an empty retained payload: the next subscriber times out with nothing.
    publish(&b, &["-q", "1", "-r", "-t", "status/boiler", "-n"]).await;
    publish(&b, &["-q", "1", "-r", "-t", "status/pump", "-n"]).await;
    let text = subscribe_once(&b, "status/#", 1, 1).await;
    assert!(text.is_empty(), "{text}");
}

#[tokio::test]
async fn mosquitto_pub_stream_arrives_in_order() {
    // [MQTT-4.6.0-5]: mosquitto_pub -l sends one message per stdin line on one connection.
    use tokio::io::AsyncWriteExt;
    let b = TestBroker::start().await;
    let (mut sub, mut lines) = subscriber(&b, &["-q", "1", "-t", "lines"]).await;
    let mut publisher = Command::new(binary("mosquitto_pub"))
        .args([
            "-h",
            "127.0.0.1",
            "-p",
            &b.addr.port().to_string(),
            "-q",
            "1",
            "-t",
            "lines",
            "-l",
        ])
        .stdin(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn mosquitto_pub");
    let mut stdin = publisher.stdin.take().expect("stdin");
    let text: String = (0..200).map(|i| format!("{i}\n")).collect();
    stdin.write_all(text.as_bytes()).await.expect("write");
    drop(stdin);
    for i in 0..200 {
        assert_eq!(next_message(&mut lines).await, format!("lines {i}"));
    }
    within(Duration::from_secs(10), publisher.wait())
        .await
        .expect("mosquitto_pub exits");
    let _ = sub.kill().await;
}
