//! The store against a model: what is submitted and made durable is what comes back.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;

use super::*;

fn msg(topic: &str, payload: &str, qos: QoS) -> Arc<Message> {
    Arc::new(Message {
        topic: Bytes::copy_from_slice(topic.as_bytes()),
        payload: Bytes::copy_from_slice(payload.as_bytes()),
        qos,
        retain: false,
    })
}

fn session(sid: u64, id: &str) -> Op {
    Op::Session {
        sid,
        client_id: id.into(),
        username: Some("u".into()),
        detached_at_ms: 0,
    }
}

/// Submits `ops` and waits (bounded) until the last one is durable.
async fn write(store: &Store, ops: Vec<Op>) {
    let mut lsn = 0;
    for op in ops {
        lsn = store.submit(op);
    }
    let mut durable = store.durable();
    tokio::time::timeout(Duration::from_secs(10), durable.wait_for(|&d| d >= lsn))
        .await
        .expect("durable in time")
        .expect("writer alive");
}

fn reopen(dir: &std::path::Path, store: Store) -> Recovered {
    store.close();
    drop(store);
    Store::open(dir, SyncPolicy::Always).expect("reopens").1
}

#[tokio::test]
async fn what_was_made_durable_is_recovered_in_order() {
    let dir = tempfile::tempdir().expect("temp dir");
    let (store, empty) = Store::open(dir.path(), SyncPolicy::Always).expect("opens");
    assert!(empty.sessions.is_empty() && empty.retained.is_empty());
    assert_eq!((empty.next_sid, empty.next_message_id), (1, 1));
    let retained = Arc::new(Message {
        retain: true,
        ..(*msg("r/1", "last", QoS::AtLeastOnce)).clone()
    });
    write(
        &store,
        vec![
            session(1, "a"),
            session(2, "b"),
            Op::Subscribe {
                sid: 1,
                filter: "t/#".into(),
                qos: QoS::ExactlyOnce,
            },
            Op::Subscribe {
                sid: 2,
                filter: "t/1".into(),
                qos: QoS::AtLeastOnce,
            },
            Op::Unsubscribe {
                sid: 2,
                filter: "t/1".into(),
            },
            Op::Message {
                id: 10,
                msg: msg("t/1", "one", QoS::ExactlyOnce),
                sessions: vec![(1, QoS::ExactlyOnce), (2, QoS::AtLeastOnce)],
                retain: false,
            },
            Op::Message {
                id: 11,
                msg: msg("t/2", "two", QoS::AtLeastOnce),
                sessions: vec![(1, QoS::AtLeastOnce)],
                retain: true,
            },
            Op::Sent {
                sid: 1,
                id: 10,
                entry: QueueEntry {
                    qos: QoS::ExactlyOnce,
                    pkid: 7,
                    released: true,
                    retain: false,
                },
            },
            Op::Done { sid: 2, id: 10 },
            Op::AwaitRel { sid: 1, pkid: 3 },
            Op::AwaitRel { sid: 1, pkid: 4 },
            Op::Released { sid: 1, pkid: 3 },
            Op::Retain {
                msg: retained.clone(),
                from: Some(Arc::new(Publisher {
                    client_id: "p".into(),
                    username: None,
                    bridge_session: None,
                })),
            },
        ],
    )
    .await;
    let got = reopen(dir.path(), store);
    assert_eq!((got.next_sid, got.next_message_id), (3, 12));
    let a = &got.sessions[0];
    assert_eq!(
        (&*a.client_id, a.sid, a.username.as_deref()),
        ("a", 1, Some("u"))
    );
    assert_eq!(a.subscriptions, [("t/#".into(), QoS::ExactlyOnce)]);
    let queue: Vec<(u64, &[u8], u16, bool)> = a
        .queue
        .iter()
        .map(|(id, m, e)| (*id, &m.payload[..], e.pkid, e.released))
        .collect();
    assert_eq!(
        queue,
        [(10, &b"one"[..], 7, true), (11, &b"two"[..], 0, false)]
    );
    assert_eq!(a.awaiting_rel, [4]);
    let b = &got.sessions[1];
    assert!(b.subscriptions.is_empty() && b.queue.is_empty());
    assert_eq!(got.retained.len(), 1);
    assert_eq!(&got.retained[0].0.payload[..], b"last");
    assert_eq!(got.retained[0].1.as_ref().map(|p| &*p.client_id), Some("p"));
}

#[tokio::test]
async fn a_message_goes_with_its_last_entry_and_an_ended_session_leaves_nothing() {
    let dir = tempfile::tempdir().expect("temp dir");
    let (store, _) = Store::open(dir.path(), SyncPolicy::Never).expect("opens");
    write(
        &store,
        vec![
            session(1, "a"),
            session(2, "b"),
            Op::Message {
                id: 1,
                msg: msg("t", "x", QoS::AtLeastOnce),
                sessions: vec![(1, QoS::AtLeastOnce), (2, QoS::AtLeastOnce)],
                retain: false,
            },
            Op::Done { sid: 1, id: 1 },
        ],
    )
    .await;
    assert_eq!(store.writer_message_count(), 1, "b still owes it");
    write(
        &store,
        vec![Op::SessionEnd {
            sid: 2,
            client_id: "b".into(),
        }],
    )
    .await;
    assert_eq!(store.writer_message_count(), 0);
    let got = reopen(dir.path(), store);
    assert_eq!(got.sessions.len(), 1);
    assert!(got.sessions[0].queue.is_empty());
}

#[tokio::test]
async fn a_second_process_is_refused_and_every_policy_reports_durability() {
    let dir = tempfile::tempdir().expect("temp dir");
    for policy in [
        SyncPolicy::Always,
        SyncPolicy::Interval(Duration::from_millis(5)),
        SyncPolicy::Never,
    ] {
        let (store, _) = Store::open(dir.path(), policy).expect("opens");
        assert!(matches!(
            Store::open(dir.path(), policy),
            Err(StoreError::Locked { .. })
        ));
        write(&store, vec![session(1, "a")]).await;
        assert!(store.failed().is_none());
        store.close();
    }
}

#[test]
fn a_record_that_does_not_decode_refuses_the_start() {
    let dir = tempfile::tempdir().expect("temp dir");
    {
        let (spaces, _) = recover::open(dir.path()).expect("opens");
        spaces.sessions.insert("broken", [1, 2, 3]).expect("insert");
        spaces
            .db
            .persist(fjall::PersistMode::SyncAll)
            .expect("persist");
    }
    let err = Store::open(dir.path(), SyncPolicy::Always)
        .err()
        .expect("refused");
    assert!(matches!(err, StoreError::Corrupt { .. }), "{err}");
    assert!(
        err.to_string().contains("malformed session record"),
        "{err}"
    );
}

#[test]
fn what_a_batch_undoes_is_never_written_and_released_once() {
    let dir = tempfile::tempdir().expect("temp dir");
    let (spaces, _) = recover::open(dir.path()).expect("opens");
    let end = |sid: u64, id: &str| Op::SessionEnd {
        sid,
        client_id: id.into(),
    };
    let message = |id: u64| Op::Message {
        id,
        msg: msg("t", "x", QoS::AtLeastOnce),
        sessions: vec![(1, QoS::AtLeastOnce), (2, QoS::AtLeastOnce)],
        retain: false,
    };
    let refs = writer::commit_batches(
        spaces.clone(),
        vec![
            vec![session(1, "a"), session(2, "b")],
            // Stored and done in one batch (session 2 ends in it): nothing reaches the disk.
            vec![message(1), Op::Done { sid: 1, id: 1 }, end(2, "b")],
            vec![session(2, "b2")],
            // Stored for both; then in one batch session 2 is done with it and ends: its
            // entry is released once, so session 1 still has the message.
            vec![message(2)],
            vec![Op::Done { sid: 2, id: 2 }, end(2, "b2")],
        ],
    );
    assert_eq!(refs.into_iter().collect::<Vec<_>>(), vec![(2, 1)]);
    assert!(spaces
        .msgs
        .get(1u64.to_be_bytes())
        .expect("reads")
        .is_none());
    assert!(spaces
        .msgs
        .get(2u64.to_be_bytes())
        .expect("reads")
        .is_some());
    assert_eq!(spaces.queue.len().expect("reads"), 1);
}

#[tokio::test]
async fn ops_submitted_together_are_never_cut_apart() {
    let dir = tempfile::tempdir().expect("temp dir");
    let (store, _) = Store::open(dir.path(), SyncPolicy::Never).expect("opens");
    let held = store.together();
    let first = store.submit(session(1, "a"));
    // The writer would commit `first` on its own at once; held, it must wait for the rest.
    // Nothing signals that it did not: a bounded look, as for any "nothing happens".
    std::thread::sleep(Duration::from_millis(200));
    assert!(
        store.durable_lsn() < first,
        "a batch was cut between ops held together"
    );
    let second = store.submit(session(2, "b"));
    drop(held);
    assert!(store.wait(second).await);
    let got = reopen(dir.path(), store);
    assert_eq!(got.sessions.len(), 2);
}

#[tokio::test]
async fn lazy_ops_become_durable_alone_or_with_the_next_urgent_op_from_any_thread() {
    let dir = tempfile::tempdir().expect("temp dir");
    let (store, _) = Store::open(dir.path(), SyncPolicy::Never).expect("opens");
    // Alone: the writer, idle and waiting, hears of the first op and cuts the batch once it
    // has lingered.
    assert!(store.wait(store.submit(session(1, "a"))).await);
    let idle = tokio::time::timeout(Duration::from_secs(10), async {
        while !store.writer.listening() {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    });
    assert!(idle.await.is_ok(), "the writer never went back to waiting");
    let lazy = store.submit_lazy(session(1, "a"));
    let alone = tokio::time::timeout(Duration::from_secs(10), store.wait(lazy)).await;
    assert_eq!(
        alone.ok(),
        Some(true),
        "a lazy op alone never became durable"
    );
    // Mixed, from several threads: producers wake the writer only when it listens and the
    // op changes its plan, so a lost wake-up would leave an urgent op waiting here.
    let threads: Vec<_> = (0..4u64)
        .map(|t| {
            let store = store.clone();
            std::thread::spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_time()
                    .build()
                    .expect("runtime");
                for i in 0..300u64 {
                    let sid = 10 + t * 1000 + i;
                    store.submit_lazy(session(sid, "lazy"));
                    if i % 3 == 0 {
                        let lsn = store.submit(session(sid, "urgent"));
                        let waited = rt.block_on(async {
                            tokio::time::timeout(Duration::from_secs(10), store.wait(lsn)).await
                        });
                        assert_eq!(waited.ok(), Some(true), "thread {t}: op {i} never durable");
                    }
                }
            })
        })
        .collect();
    for t in threads {
        t.join().expect("producer");
    }
}
