//! Disk use follows live data: a long stream of acknowledged messages through a persistent
//! subscriber leaves the store at most one journal above what is live. Its own test target,
//! so its 150 MB of writes do not slow the syncs of the other durability tests.

mod common;
#[path = "durability/helpers.rs"]
mod helpers;

use std::path::Path;
use std::time::Duration;

use common::{BinaryBroker, Raw};
use helpers::{config, noise};
use tern::codec::Packet;
use tern::message::QoS;

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
