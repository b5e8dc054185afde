//! What is on disk: a damaged journal refuses the start (a batch failing its checksum, or
//! synced batches cut away behind damage of another kind), a torn last batch is dropped and
//! logged, and the `tern store` tools list what a stopped broker kept.

use std::path::{Path, PathBuf};

use crate::common::{self, BinaryBroker, Raw};
use crate::helpers::*;
use tern::codec::Packet;
use tern::message::QoS;

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
    let mangled = dir.path().join("mangled");
    let mut broker = BinaryBroker::start(&config(&damaged, "always")).await;
    let big = noise(4096);
    let (mut p, _) = Raw::connect(broker.addr, "retainer", true, 60).await;
    retain(&mut p, "r/big", 1, &big).await;
    retain(&mut p, "r/last", 2, b"first").await;
    retain(&mut p, "r/last", 3, b"second").await;
    kill_9(&mut broker).await;
    copy_dir(&damaged, &torn);
    copy_dir(&damaged, &mangled);

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

    // The length of the second retained message's value mangled (both copies in its entry
    // header, the real and the on-disk size, which precede the key): fjall takes the journal
    // to end there, as if torn, and would drop the two acknowledged batches from there on
    // without a word; the note of the last synced batch tells, and the start stops.
    let file = journal(&mangled);
    let mut bytes = std::fs::read(&file).expect("journal");
    let first = bytes
        .windows(5)
        .position(|w| w == b"first")
        .expect("the second message is in the journal");
    let key = bytes[..first]
        .windows(6)
        .rposition(|w| w == b"r/last")
        .expect("its key is before it");
    for len in [key - 8, key - 4] {
        bytes[len] ^= 0x40;
    }
    std::fs::write(&file, bytes).expect("write journal");
    let (code, err) = start_fails(&config(&mangled, "always"));
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("corrupt"), "{err}");
    assert!(err.contains("lost synced batches"), "{err}");
    assert!(err.contains(&mangled.display().to_string()), "{err}");
    assert_eq!(err.trim().lines().count(), 1, "{err}");

    // The last batch cut short, as a crash in the middle of its write leaves it: dropped,
    // logged, and everything before it kept. (fjall grows its journal ahead with zeros.)
    // Such a batch was never synced, so the note beside the store names the one before it.
    let note = torn.join("tern-synced");
    let synced = std::fs::read(&note).expect("the note of the last synced batch");
    let last = u64::from_be_bytes(synced[..8].try_into().expect("8 bytes"));
    let before = last - 1;
    let rewound = [before.to_be_bytes(), (!before).to_be_bytes()].concat();
    std::fs::write(&note, rewound).expect("write note");
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
