//! The embedding seam: a real broker built with `Broker::builder(config).hooks(..)`, and real
//! clients (raw bytes, for exact acks and codes) seeing what each hook decides.

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use parking_lot::Mutex;
use tern::codec::{ConnectReturnCode, Packet, SubAckCode};
use tern::hooks::{
    Action, ClientRef, ConnectInfo, DropReason, Hooks, PublishAction, Reply, SubscribeAction,
    Verdict,
};
use tern::message::{Message, QoS};
use tokio::sync::Notify;

use common::{login, pbkdf2_line, within, Raw, TestBroker, WAIT};

/// What the hooks saw, in order, and a way to wait for it.
#[derive(Default)]
struct Log {
    events: Mutex<Vec<String>>,
    changed: Notify,
}

impl Log {
    fn push(&self, e: String) {
        self.events.lock().push(e);
        self.changed.notify_waiters();
    }

    fn has(&self, e: &str) -> bool {
        self.events.lock().iter().any(|x| x == e)
    }

    fn count(&self, prefix: &str) -> usize {
        self.events
            .lock()
            .iter()
            .filter(|x| x.starts_with(prefix))
            .count()
    }

    /// Waits (at most `WAIT`) until an event equal to `e` was logged.
    async fn wait_for(&self, e: &str) {
        within(WAIT, async {
            loop {
                let changed = self.changed.notified();
                if self.has(e) {
                    return;
                }
                changed.await;
            }
        })
        .await
    }
}

async fn broker(hooks: Arc<dyn Hooks>) -> TestBroker {
    TestBroker::start_hooked(Some(hooks), |_| {}).await
}

async fn connected(addr: std::net::SocketAddr, id: &str) -> Raw {
    let (raw, ack) = Raw::connect(addr, id, true, 60).await;
    assert_eq!(ack.code, ConnectReturnCode::Accepted);
    raw
}

fn payload(p: &tern::codec::Publish) -> String {
    String::from_utf8_lossy(&p.payload).into_owned()
}

fn topic(p: &tern::codec::Publish) -> String {
    String::from_utf8_lossy(&p.topic).into_owned()
}

struct Gate {
    log: Log,
}

impl Hooks for Gate {
    fn on_connect(&self, c: &ConnectInfo<'_>) -> Reply<Result<(), ConnectReturnCode>> {
        self.log.push(format!(
            "connect {} {} {}",
            c.client_id,
            c.peer.ip(),
            c.protocol
        ));
        if c.client_id.starts_with("banned") {
            return Reply::Now(Err(ConnectReturnCode::IdentifierRejected));
        }
        Reply::Now(Ok(()))
    }
}

#[tokio::test]
async fn on_connect_refuses_with_its_own_code() {
    let hooks = Arc::new(Gate {
        log: Log::default(),
    });
    let b = broker(hooks.clone()).await;
    // [MQTT-3.2.2-5] the refusing CONNACK, then the connection closes.
    let (mut raw, ack) = Raw::connect(b.addr, "banned-1", true, 60).await;
    assert_eq!(ack.code, ConnectReturnCode::IdentifierRejected);
    assert!(!ack.session_present, "[MQTT-3.2.2-4]");
    raw.expect_closed_silently().await;
    let _ok = connected(b.addr, "welcome").await;
    assert!(hooks.log.has("connect welcome 127.0.0.1 MQTT 3.1.1"));
    assert!(hooks.log.has("connect banned-1 127.0.0.1 MQTT 3.1.1"));
}

/// Tokens the application knows; the password file knows the rest.
struct Tokens {
    /// Held by `slow` until notified: an authentication service that takes its time.
    release: Arc<Notify>,
}

impl Hooks for Tokens {
    fn authenticate(&self, c: &ConnectInfo<'_>) -> Reply<Verdict> {
        match c.username {
            Some("token") if c.password == Some(b"t0k3n") => Reply::Now(Verdict::Allow),
            Some("token") => Reply::Now(Verdict::Deny),
            // In the file, with the right password, and still refused: the hook replaces it.
            Some("bob") => Reply::Now(Verdict::Deny),
            Some("slow") => {
                let release = self.release.clone();
                Reply::later(async move {
                    release.notified().await;
                    Verdict::Allow
                })
            }
            _ => Reply::Now(Verdict::Next),
        }
    }
}

#[tokio::test]
async fn authenticate_replaces_or_chains_with_the_password_file() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("passwd");
    let lines = pbkdf2_line("alice", "secret", 10) + &pbkdf2_line("bob", "builder", 10);
    std::fs::write(&path, lines).expect("write passwd");
    let hooks = Arc::new(Tokens {
        release: Arc::new(Notify::new()),
    });
    let b = TestBroker::start_hooked(Some(hooks.clone()), |c| {
        c.auth.allow_anonymous = false;
        c.auth.password_file = Some(path.clone());
    })
    .await;
    let code = |user: &'static str, pass: &'static str| {
        let addr = b.addr;
        async move { login(addr, user, Some(user), Some(pass)).await.1 }
    };
    let accepted = ConnectReturnCode::Accepted;
    let bad = ConnectReturnCode::BadUserNameOrPassword;
    // Replaced: a user the file does not know, let in by the hook...
    assert_eq!(code("token", "t0k3n").await, accepted);
    assert_eq!(code("token", "guess").await, bad);
    // ... and one the file would let in, kept out.
    assert_eq!(code("bob", "builder").await, bad);
    // Chained: `Next` leaves it to the file and `allow_anonymous`.
    assert_eq!(code("alice", "secret").await, accepted);
    assert_eq!(code("alice", "wrong").await, bad);
    let (_, anonymous) = login(b.addr, "anon", None, None).await;
    assert_eq!(anonymous, ConnectReturnCode::NotAuthorized);
    assert_eq!(b.metrics.snapshot().auth_failures, 4);
}

#[tokio::test]
async fn a_slow_authenticate_hook_holds_only_its_own_client() {
    let hooks = Arc::new(Tokens {
        release: Arc::new(Notify::new()),
    });
    let b = broker(hooks.clone()).await;
    let addr = b.addr;
    let slow = tokio::spawn(async move { login(addr, "slow", Some("slow"), Some("x")).await });
    // While the slow client's hook waits, others connect and exchange messages.
    let mut sub = connected(b.addr, "sub").await;
    sub.subscribe(1, &[("t", QoS::AtLeastOnce)]).await;
    let mut publisher = connected(b.addr, "pub").await;
    publisher
        .publish("t", QoS::AtLeastOnce, Some(1), false, b"meanwhile")
        .await;
    assert_eq!(publisher.recv().await, Packet::PubAck(1));
    assert_eq!(payload(&sub.recv_publish().await), "meanwhile");
    assert!(!slow.is_finished(), "the slow client is still waiting");
    hooks.release.notify_one();
    let (_raw, code) = within(WAIT, slow).await.expect("slow client");
    assert_eq!(code, ConnectReturnCode::Accepted);
}

/// Decides some topics itself and leaves the rest to the ACL file.
struct Rules;

impl Hooks for Rules {
    fn authorize(&self, client: ClientRef<'_>, action: Action, topic: &str) -> Verdict {
        match (action, topic) {
            (_, t) if t.starts_with("hooked/") => Verdict::Allow,
            (Action::Subscribe, "open/private") => Verdict::Deny,
            (Action::Receive, "open/hidden") if client.client_id == "sub" => Verdict::Deny,
            _ => Verdict::Next,
        }
    }
}

#[tokio::test]
async fn authorize_decides_before_the_acl_file() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("acl");
    std::fs::write(&path, "topic readwrite open/#\n").expect("write acl");
    let b = TestBroker::start_hooked(Some(Arc::new(Rules)), |c| {
        c.auth.acl_file = Some(path.clone())
    })
    .await;
    let mut sub = connected(b.addr, "sub").await;
    let mut other = connected(b.addr, "other").await;
    let codes = sub
        .subscribe(
            1,
            &[
                ("hooked/#", QoS::AtLeastOnce),
                ("open/#", QoS::AtLeastOnce),
                ("open/private", QoS::AtLeastOnce),
                ("closed/#", QoS::AtLeastOnce),
            ],
        )
        .await;
    // [MQTT-3.9.3-1] one code per filter, in order: the hook allows what the file does not
    // know, denies what it would allow, and leaves the rest to it.
    let granted = SubAckCode::Granted(QoS::AtLeastOnce);
    assert_eq!(
        codes,
        [granted, granted, SubAckCode::Failure, SubAckCode::Failure]
    );
    other.subscribe(1, &[("open/#", QoS::AtLeastOnce)]).await;
    let mut publisher = connected(b.addr, "pub").await;
    for (i, t) in ["hooked/a", "closed/a", "open/hidden", "open/a"]
        .iter()
        .enumerate()
    {
        let id = i as u16 + 1;
        publisher
            .publish(t, QoS::AtLeastOnce, Some(id), false, t.as_bytes())
            .await;
        // [MQTT-3.3.5-2] a denied PUBLISH is acknowledged all the same.
        assert_eq!(publisher.recv().await, Packet::PubAck(id));
    }
    // `closed/a` was denied to the publisher (the file); `open/hidden` to `sub` only (the
    // hook, at delivery).
    assert_eq!(topic(&sub.recv_publish().await), "hooked/a");
    assert_eq!(topic(&sub.recv_publish().await), "open/a");
    assert_eq!(topic(&other.recv_publish().await), "open/hidden");
    assert_eq!(topic(&other.recv_publish().await), "open/a");
    sub.expect_silence(Duration::from_millis(100)).await;
}

/// Moves old filters to new ones, refuses some, and takes its time over others.
struct Filters;

impl Hooks for Filters {
    fn on_subscribe(&self, _: ClientRef<'_>, filter: &str, _: QoS) -> Reply<SubscribeAction> {
        match filter {
            "legacy/+" => Reply::Now(SubscribeAction::Replace("v2/+".into(), QoS::AtMostOnce)),
            "forbidden/#" => Reply::Now(SubscribeAction::Refuse),
            "slow/#" => Reply::later(async {
                tokio::time::sleep(Duration::from_millis(50)).await;
                SubscribeAction::Keep
            }),
            _ => Reply::Now(SubscribeAction::Keep),
        }
    }
}

#[tokio::test]
async fn on_subscribe_replaces_refuses_or_answers_later() {
    let b = broker(Arc::new(Filters)).await;
    let mut sub = connected(b.addr, "sub").await;
    let codes = sub
        .subscribe(
            1,
            &[
                ("legacy/+", QoS::ExactlyOnce),
                ("forbidden/#", QoS::AtMostOnce),
                ("plain", QoS::AtLeastOnce),
            ],
        )
        .await;
    assert_eq!(
        codes,
        [
            SubAckCode::Granted(QoS::AtMostOnce),
            SubAckCode::Failure,
            SubAckCode::Granted(QoS::AtLeastOnce)
        ]
    );
    let mut publisher = connected(b.addr, "pub").await;
    for t in ["legacy/x", "v2/x", "forbidden/x"] {
        publisher
            .publish(t, QoS::AtMostOnce, None, false, b"")
            .await;
    }
    let got = sub.recv_publish().await;
    assert_eq!((topic(&got), got.qos), ("v2/x".into(), QoS::AtMostOnce));
    sub.expect_silence(Duration::from_millis(100)).await;
    // A SUBSCRIBE whose hook answers later holds what the client sends after it: its own
    // PUBLISH right behind reaches the new subscription.
    let mut both = connected(b.addr, "both").await;
    both.send_packet(&Packet::Subscribe(tern::codec::Subscribe {
        pkid: 7,
        filters: vec![("slow/#".into(), QoS::AtMostOnce)],
    }))
    .await;
    both.publish("slow/a", QoS::AtMostOnce, None, false, b"behind")
        .await;
    match both.recv().await {
        Packet::SubAck(ack) => assert_eq!(ack.codes, [SubAckCode::Granted(QoS::AtMostOnce)]),
        other => panic!("expected SUBACK, got {other:?}"),
    }
    assert_eq!(payload(&both.recv_publish().await), "behind");
}

/// Drops, rewrites, and answers some messages later.
struct Editor {
    seen: AtomicUsize,
}

impl Hooks for Editor {
    fn on_publish(&self, client: ClientRef<'_>, msg: &Message) -> Reply<PublishAction> {
        self.seen.fetch_add(1, Ordering::Relaxed);
        let t = msg.topic_str();
        if t.starts_with("drop/") {
            return Reply::Now(PublishAction::Drop);
        }
        if t == "bad" {
            return Reply::Now(PublishAction::Rewrite {
                topic: "a/+".into(),
                payload: Bytes::new(),
            });
        }
        if let Some(rest) = t.strip_prefix("rename/") {
            let payload = format!(
                "{}:{}",
                client.client_id,
                String::from_utf8_lossy(&msg.payload)
            );
            return Reply::Now(PublishAction::Rewrite {
                topic: format!("renamed/{rest}"),
                payload: payload.into(),
            });
        }
        if let Some(n) = t.strip_prefix("slow/") {
            // The first answers last: order must still hold.
            let delay = match n {
                "0" => 60,
                "1" => 30,
                _ => 0,
            };
            return Reply::later(async move {
                tokio::time::sleep(Duration::from_millis(delay)).await;
                PublishAction::Keep
            });
        }
        Reply::Now(PublishAction::Keep)
    }
}

#[tokio::test]
async fn on_publish_drops_rewrites_and_keeps_order_when_it_answers_later() {
    let hooks = Arc::new(Editor {
        seen: AtomicUsize::new(0),
    });
    let b = broker(hooks.clone()).await;
    let mut sub = connected(b.addr, "sub").await;
    sub.subscribe(1, &[("#", QoS::AtLeastOnce)]).await;
    let mut publisher = connected(b.addr, "pub").await;
    let sent = [
        ("drop/x", QoS::AtLeastOnce),
        ("bad", QoS::AtLeastOnce),
        ("rename/x", QoS::AtLeastOnce),
        ("slow/0", QoS::AtLeastOnce),
        ("slow/1", QoS::ExactlyOnce),
        ("slow/2", QoS::AtMostOnce),
        ("plain", QoS::AtLeastOnce),
    ];
    for (i, (t, qos)) in sent.iter().enumerate() {
        let pkid = (*qos != QoS::AtMostOnce).then_some(i as u16 + 1);
        publisher.publish(t, *qos, pkid, false, b"p").await;
    }
    // Every acknowledgement, in order, dropped messages' included.
    for (i, (_, qos)) in sent.iter().enumerate() {
        let id = i as u16 + 1;
        match qos {
            QoS::AtMostOnce => {}
            QoS::AtLeastOnce => assert_eq!(publisher.recv().await, Packet::PubAck(id)),
            QoS::ExactlyOnce => assert_eq!(publisher.recv().await, Packet::PubRec(id)),
        }
    }
    let mut got = Vec::new();
    for _ in 0..5 {
        let p = sub.recv_publish().await;
        if let Some(id) = p.pkid {
            sub.send_packet(&Packet::PubAck(id)).await;
        }
        got.push(format!("{} {}", topic(&p), payload(&p)));
    }
    assert_eq!(
        got,
        [
            "renamed/x pub:p",
            "slow/0 p",
            "slow/1 p",
            "slow/2 p",
            "plain p"
        ]
    );
    sub.expect_silence(Duration::from_millis(100)).await;
    // [MQTT-4.3.3-2] a QoS 2 resend is a duplicate: PUBREC again, no second hook call.
    let before = hooks.seen.load(Ordering::Relaxed);
    publisher
        .publish("slow/1", QoS::ExactlyOnce, Some(5), false, b"p")
        .await;
    assert_eq!(publisher.recv().await, Packet::PubRec(5));
    assert_eq!(hooks.seen.load(Ordering::Relaxed), before);
}

/// Watches deliveries and goodbyes, and tags wills.
struct Watcher {
    log: Log,
}

impl Hooks for Watcher {
    fn on_publish(&self, _: ClientRef<'_>, msg: &Message) -> Reply<PublishAction> {
        if msg.topic_str() == "wills/p" {
            return Reply::Now(PublishAction::Rewrite {
                topic: "wills/p".into(),
                payload: Bytes::from_static(b"tagged will"),
            });
        }
        Reply::Now(PublishAction::Keep)
    }

    fn on_deliver(&self, client: ClientRef<'_>, msg: &Message, qos: QoS) {
        let e = format!(
            "deliver {} {} {}",
            client.client_id,
            msg.topic_str(),
            qos as u8
        );
        self.log.push(e);
    }

    fn on_disconnect(&self, client: ClientRef<'_>, reason: &dyn std::fmt::Display) {
        self.log
            .push(format!("disconnect {} {reason}", client.client_id));
    }
}

#[tokio::test]
async fn on_deliver_and_on_disconnect_watch_and_wills_go_through_on_publish() {
    let hooks = Arc::new(Watcher {
        log: Log::default(),
    });
    let b = broker(hooks.clone()).await;
    let mut sub = connected(b.addr, "sub").await;
    sub.subscribe(1, &[("wills/#", QoS::AtLeastOnce), ("t", QoS::AtMostOnce)])
        .await;
    let mut raw = Raw::open(b.addr).await;
    let mut connect = match common::connect_packet("p", true, 60) {
        Packet::Connect(c) => c,
        _ => unreachable!(),
    };
    connect.will = Some(tern::codec::LastWill {
        topic: Bytes::from_static(b"wills/p"),
        payload: Bytes::from_static(b"gone"),
        qos: QoS::AtLeastOnce,
        retain: false,
    });
    raw.send_packet(&Packet::Connect(connect)).await;
    assert!(matches!(raw.recv().await, Packet::ConnAck(_)));
    raw.publish("t", QoS::AtLeastOnce, Some(1), false, b"x")
        .await;
    assert_eq!(raw.recv().await, Packet::PubAck(1));
    assert_eq!(topic(&sub.recv_publish().await), "t");
    hooks.log.wait_for("deliver sub t 0").await;
    // [MQTT-3.1.2-8] the connection drops without DISCONNECT: the will is published, as the
    // hook rewrote it.
    drop(raw);
    let will = sub.recv_publish().await;
    assert_eq!(payload(&will), "tagged will");
    hooks
        .log
        .wait_for("disconnect p connection closed by peer")
        .await;
    if let Some(id) = will.pkid {
        sub.send_packet(&Packet::PubAck(id)).await;
    }
    sub.disconnect().await;
    hooks
        .log
        .wait_for("disconnect sub client disconnected")
        .await;
    assert_eq!(hooks.log.count("deliver sub wills/p"), 1);
}

/// Counts drops by reason and client.
struct Drops {
    log: Log,
}

impl Hooks for Drops {
    fn on_message_dropped(&self, client_id: &str, msg: &Message, reason: DropReason) {
        let e = format!("{} {client_id} {}", reason.as_str(), msg.topic_str());
        self.log.push(e);
    }
}

#[tokio::test]
async fn on_message_dropped_names_the_reason_and_who_lost_it() {
    let hooks = Arc::new(Drops {
        log: Log::default(),
    });
    let b = TestBroker::start_hooked(Some(hooks.clone()), |c| {
        c.mqtt.message_size_limit = 8;
        c.session.max_queued_messages = 2;
    })
    .await;
    // A persistent subscriber goes offline; two of four messages fit its queue.
    let (mut sub, _) = Raw::connect(b.addr, "away", false, 60).await;
    sub.subscribe(1, &[("q", QoS::AtLeastOnce)]).await;
    sub.disconnect().await;
    let mut publisher = connected(b.addr, "pub").await;
    for id in 1..=4u16 {
        publisher
            .publish("q", QoS::AtLeastOnce, Some(id), false, b"m")
            .await;
        assert_eq!(publisher.recv().await, Packet::PubAck(id));
    }
    publisher
        .publish("big", QoS::AtLeastOnce, Some(5), false, b"far too long")
        .await;
    // Acknowledged and dropped, as Mosquitto does.
    assert_eq!(publisher.recv().await, Packet::PubAck(5));
    hooks.log.wait_for("message_size_limit pub big").await;
    hooks.log.wait_for("queue_full away q").await;
    let s = b.metrics.snapshot();
    assert_eq!(
        hooks.log.count("queue_full away"),
        s.dropped_queue_full as usize
    );
    assert_eq!(s.dropped_queue_full, 2);
    assert_eq!(s.dropped_oversize, 1);
}
