//! What the durability tests share: the config, stopping the broker (kill -9, SIGTERM), a
//! start that must fail, the `tern store` tools, and retained values published and read back.
// Shared with tests/disk_use.rs, which uses a few of them.
#![allow(dead_code)]

use std::path::Path;
use std::time::Duration;

use crate::common::{BinaryBroker, Raw};
use tern::codec::Packet;
use tern::message::QoS;

pub fn config(dir: &Path, sync: &str) -> String {
    format!(
        "[persistence]\npersistence = true\npersistence_location = \"{}\"\nsync = \"{sync}\"\n\
         [sys]\nsys_interval = \"0s\"\n",
        dir.display()
    )
}

/// Publishes retained QoS 1 values 1..=n to `topic`, each waited for; then an empty
/// payload to `gone` (deleting it) after a value.
pub async fn publish_retained(addr: std::net::SocketAddr, topic: &str, n: u16) {
    let (mut p, _) = Raw::connect(addr, "retainer", true, 60).await;
    for i in 1..=n {
        p.publish(
            topic,
            QoS::AtLeastOnce,
            Some(i),
            true,
            i.to_string().as_bytes(),
        )
        .await;
        assert_eq!(p.recv().await, Packet::PubAck(i));
    }
    p.publish("gone", QoS::AtLeastOnce, Some(1), true, b"x")
        .await;
    assert_eq!(p.recv().await, Packet::PubAck(1));
    p.publish("gone", QoS::AtLeastOnce, Some(2), true, b"")
        .await;
    assert_eq!(p.recv().await, Packet::PubAck(2));
}

/// The retained payloads a fresh subscriber to `#` gets.
pub async fn retained(addr: std::net::SocketAddr) -> Vec<(String, String)> {
    let (mut s, _) = Raw::connect(addr, "reader", true, 60).await;
    s.subscribe(1, &[("#", QoS::AtMostOnce)]).await;
    let mut got = Vec::new();
    while let Ok(p) = tokio::time::timeout(Duration::from_millis(300), s.recv()).await {
        if let Packet::Publish(p) = p {
            got.push((
                String::from_utf8_lossy(&p.topic).into_owned(),
                String::from_utf8_lossy(&p.payload).into_owned(),
            ));
        }
    }
    got.sort();
    got
}

/// Runs `tern -c FILE -p 0` with `config`; its exit status and standard error.
pub fn start_fails(config: &str) -> (Option<i32>, String) {
    let dir = tempfile::tempdir().expect("temp dir");
    let file = dir.path().join("tern.toml");
    std::fs::write(&file, config).expect("write config");
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_tern"))
        .arg("-c")
        .arg(&file)
        .args(["-p", "0"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("run tern");
    // Bounded: a broker that starts after all is stopped, and says so.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let status = loop {
        match child.try_wait().expect("wait for tern") {
            Some(status) => break Some(status),
            None if std::time::Instant::now() > deadline => break None,
            None => std::thread::sleep(std::time::Duration::from_millis(10)),
        }
    };
    if status.is_none() {
        let _ = child.kill();
        let _ = child.wait();
    }
    let mut err = String::new();
    if let Some(mut stderr) = child.stderr.take() {
        use std::io::Read;
        let _ = stderr.read_to_string(&mut err);
    }
    match status {
        Some(status) => (status.code(), err),
        None => (None, format!("still running after 10 s; stderr: {err}")),
    }
}

/// SIGKILL, and waits for the process to be gone.
pub async fn kill_9(broker: &mut BinaryBroker) {
    broker.child.start_kill().expect("kill -9");
    let _ = broker.child.wait().await;
}

/// SIGTERM, and waits for a clean exit.
pub async fn stop(broker: &mut BinaryBroker) {
    let status = std::process::Command::new("kill")
        .args(["-TERM", &broker.pid().to_string()])
        .status()
        .expect("kill");
    assert!(status.success());
    let exit = broker.child.wait().await.expect("exits");
    assert!(exit.success(), "{exit}");
}

/// Runs `tern store WHAT -c FILE`: its exit status, standard output and standard error.
pub fn store_tool(what: &str, config: &Path) -> (Option<i32>, String, String) {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_tern"))
        .args(["store", what, "-c"])
        .arg(config)
        .output()
        .expect("run tern store");
    let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
    (out.status.code(), text(&out.stdout), text(&out.stderr))
}

/// Bytes that no compressor shrinks, so they sit in the journal as they are.
pub fn noise(n: usize) -> Vec<u8> {
    let mut x: u32 = 0x9e37_79b9;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            x as u8
        })
        .collect()
}
