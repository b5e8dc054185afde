//! What is on disk: a damaged journal refuses the start, a torn last batch is dropped and
//! logged, the `tern store` tools list what a stopped broker kept, and disk use follows live
//! data under a stream of acknowledged messages.

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::common::{self, BinaryBroker, Raw};
use crate::helpers::*;
use tern::codec::Packet;
use tern::message::QoS;

/// Bytes that no compressor shrinks, so they sit in the journal as they are.
fn noise(n: usize) -> Vec<u8> {
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

/// The store's journal file (the one `.jnl` in the directory).
fn journal(dir: &Path) -> PathBuf {
    let mut found: Vec<PathBuf> = std::fs::read_dir(dir)
        .expect("store dir")
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "jnl"))
        .collect();
    found.sort();
    found.pop().expect("a journal")
}

/// Publishes a retained QoS 1 message and waits for its PUBACK.
async fn retain(p: &mut Raw, topic: &str, pkid: u16, payload: &[u8]) {
    p.publish(topic, QoS::AtLeastOnce, Some(pkid), true, payload)
        .await;
    assert_eq!(p.recv().await, Packet::PubAck(pkid));
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).expect("mkdir");
    for e in std::fs::read_dir(from)
        .expect("read dir")
        .filter_map(Result::ok)
    {
        let target = to.join(e.file_name());
        if e.file_type().expect("type").is_dir() {
            copy_dir(&e.path(), &target);
        } else {
            std::fs::copy(e.path(), target).expect("copy");
        }
    }
}

#[tokio::test]
async fn a_damaged_journal_refuses_the_start_and_a_torn_last_batch_is_dropped() {
    let dir = tempfile::tempdir().expect("temp dir");
    let (damaged, torn) = (dir.path().join("damaged"), dir.path().join("torn"));
    let mut broker = BinaryBroker::start(&config(&damaged, "always")).await;
    let big = noise(4096);
    let (mut p, _) = Raw::connect(broker.addr, "retainer", true, 60).await;
    retain(&mut p, "r/big", 1, &big).await;
    retain(&mut p, "r/last", 2, b"first").await;
    retain(&mut p, "r/last", 3, b"second").await;
    kill_9(&mut broker).await;
    copy_dir(&damaged, &torn);

    // One bit flipped inside the first message's payload: an earlier batch fails its
    // checksum, so the store cannot be trusted and the start stops.
    let file = journal(&damaged);
    let mut bytes = std::fs::read(&file).expect("journal");
    let at = bytes
        .windows(64)
        .position(|w| w == &big[1000..1064])
        .expect("the payload is in the journal as published");
    bytes[at + 10] ^= 0x01;
    std::fs::write(&file, bytes).expect("write journal");
    let (code, err) = start_fails(&config(&damaged, "always"));
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("corrupt"), "{err}");
    assert!(err.contains(&damaged.display().to_string()), "{err}");
    assert_eq!(err.trim().lines().count(), 1, "{err}");

    // The last batch cut short, as a crash in the middle of its write leaves it: dropped,
    // logged, and everything before it kept. (fjall grows its journal ahead with zeros.)
    let file = journal(&torn);
    let bytes = std::fs::read(&file).expect("journal");
    let written = bytes.iter().rposition(|&b| b != 0).expect("written") + 1;
    let cut = std::fs::OpenOptions::new()
        .write(true)
        .open(&file)
        .expect("journal");
    cut.set_len(written as u64 - 3).expect("truncate");
    let broker = BinaryBroker::start(&config(&torn, "always")).await;
    broker.wait_for_log("torn last batch was dropped", 1).await;
    let (mut s, _) = Raw::connect(broker.addr, "reader", true, 60).await;
    s.subscribe(1, &[("r/+", QoS::AtMostOnce)]).await;
    let mut got = [s.recv_publish().await, s.recv_publish().await];
    got.sort_by(|a, b| a.topic.cmp(&b.topic));
    assert_eq!(
        (&got[0].topic[..], &got[0].payload[..]),
        (&b"r/big"[..], &big[..])
    );
    assert_eq!(
        (&got[1].topic[..], &got[1].payload[..]),
        (&b"r/last"[..], &b"first"[..])
    );
}

#[tokio::test]
async fn the_store_tools_list_what_a_stopped_broker_kept() {
    let dir = tempfile::tempdir().expect("temp dir");
    let conf = config(dir.path(), "always");
    let mut broker = BinaryBroker::start(&conf).await;
    let (mut sub, _) = common::connect_as(broker.addr, "keeper", false, None, None).await;
    sub.subscribe(1, &[("a/#", QoS::AtLeastOnce), ("b", QoS::ExactlyOnce)])
        .await;
    sub.disconnect().await;
    let (mut p, _) = Raw::connect(broker.addr, "pub", true, 60).await;
    for i in 1..=3u16 {
        p.publish("a/x", QoS::AtLeastOnce, Some(i), false, b"queued\x00\x1b")
            .await;
        assert_eq!(p.recv().await, Packet::PubAck(i));
    }
    retain(&mut p, "r", 4, b"kept").await;
    // A running broker holds the store: the tools say so rather than read a moving target.
    let (code, _, err) = store_tool("stats", broker.config_path());
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("locked by another process"), "{err}");
    let config_file = tempfile::NamedTempFile::new().expect("config");
    std::fs::write(config_file.path(), &conf).expect("write");
    stop(&mut broker).await;

    let (code, out, err) = store_tool("stats", config_file.path());
    assert_eq!(code, Some(0), "{err}");
    for line in [
        "sessions:      1 (1 detached)",
        "subscriptions: 2",
        "queued:        3 entries of 3 messages (0 inflight)",
        "retained:      1",
    ] {
        assert!(out.contains(line), "{line:?} in {out}");
    }
    let (code, out, err) = store_tool("dump", config_file.path());
    assert_eq!(code, Some(0), "{err}");
    assert!(out.contains("session \"keeper\" sid 1 detached"), "{out}");
    assert!(out.contains("  subscription \"a/#\" qos 1"), "{out}");
    assert!(out.contains("  subscription \"b\" qos 2"), "{out}");
    // Payloads from peers are escaped: no raw control byte reaches the terminal.
    let queued = "queued qos 1 topic \"a/x\" published qos 1 8 bytes \"queued\\x00\\x1b\"";
    assert_eq!(out.matches(queued).count(), 3, "{out}");
    assert!(!out.contains('\u{1b}'), "{out}");
    assert!(out.contains("retained qos 1 topic \"r\" retain"), "{out}");

    // No store at the location: said, and nothing is created there.
    let nowhere = dir.path().join("nowhere");
    std::fs::write(config_file.path(), config(&nowhere, "always")).expect("write");
    let (code, _, err) = store_tool("stats", config_file.path());
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("no store here"), "{err}");
    assert!(!nowhere.exists());
}

/// Bytes the files under `dir` take on disk (allocated blocks, as `du` counts them).
fn disk_use(dir: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    entries
        .filter_map(Result::ok)
        .map(|e| match e.metadata() {
            Ok(m) if m.is_dir() => disk_use(&e.path()),
            Ok(m) => m.blocks() * 512,
            Err(_) => 0,
        })
        .sum()
}

/// Takes QoS 1 deliveries on `raw` and acknowledges each, until `n` arrived.
async fn take_and_ack(mut raw: Raw, n: usize) -> usize {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (mut buf, mut acks, mut got) = (bytes::BytesMut::new(), bytes::BytesMut::new(), 0);
    while got < n {
        let read = tokio::time::timeout(Duration::from_secs(10), raw.stream.read_buf(&mut buf));
        match read.await {
            Ok(Ok(r)) if r > 0 => {}
            _ => break,
        }
        while let Ok(Some(p)) = tern::codec::decode(&mut buf, usize::MAX) {
            if let Packet::Publish(p) = p {
                got += 1;
                tern::codec::encode(&Packet::PubAck(p.pkid.expect("QoS 1")), &mut acks);
            }
        }
        if raw.stream.write_all(&acks).await.is_err() {
            break;
        }
        acks.clear();
    }
    got
}

#[tokio::test]
async fn disk_use_follows_live_data_under_a_stream_of_acknowledged_messages() {
    use tokio::io::AsyncWriteExt;
    // 150 MB through a persistent subscriber that keeps up: what it acknowledged is deleted,
    // and the store keeps at most one journal (64 MiB) on top of what is live.
    const N: usize = 150_000;
    const WINDOW: usize = 100;
    let dir = tempfile::tempdir().expect("temp dir");
    let conf = format!(
        "{}[session]\nmax_queued_messages = {N}\n",
        config(dir.path(), "never")
    );
    let broker = BinaryBroker::start(&conf).await;
    let (mut sub, _) = common::connect_as(broker.addr, "drain", false, None, None).await;
    sub.subscribe(1, &[("d/#", QoS::AtLeastOnce)]).await;
    let subscriber = tokio::spawn(take_and_ack(sub, N));
    let (mut p, _) = Raw::connect(broker.addr, "stream", true, 60).await;
    let payload = noise(1024);
    for start in (0..N).step_by(WINDOW) {
        let mut frames = bytes::BytesMut::new();
        for i in start..start + WINDOW {
            let id = (i % 60_000) as u16 + 1;
            let qos = QoS::AtLeastOnce;
            tern::codec::encode_publish(b"d/x", &payload, qos, Some(id), false, false, &mut frames);
        }
        p.stream.write_all(&frames).await.expect("publish");
        for _ in 0..WINDOW {
            assert!(matches!(p.recv().await, Packet::PubAck(_)));
        }
    }
    assert_eq!(
        subscriber.await.expect("subscriber"),
        N,
        "every message arrived"
    );
    // Compaction runs in the background and nothing signals its end: look until disk use is
    // within bounds (bounded in time). Without deletes the store would hold over 150 MB.
    let bound = 64 * 1024 * 1024 + 40 * 1024 * 1024;
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let mut used = disk_use(dir.path());
    while used > bound && std::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(200)).await;
        used = disk_use(dir.path());
    }
    assert!(
        used <= bound,
        "store takes {used} bytes after {N} acknowledged messages"
    );
}
