//! The router's unit tests: routes, QoS, limits and the `$` rule.

use super::*;
use parking_lot::Mutex;

/// An inbox of `cap` deliveries.
struct TestInbox {
    cap: usize,
    got: Mutex<std::collections::VecDeque<Delivery>>,
}

impl Inbox for TestInbox {
    fn offer(&self, delivery: Delivery) -> Offered {
        let mut got = self.got.lock();
        if got.len() >= self.cap {
            return Offered::Full;
        }
        got.push_back(delivery);
        Offered::Taken { congested: false }
    }

    fn keeps_up(&self) -> bool {
        true
    }

    fn waiting(&self) -> usize {
        self.got.lock().len()
    }
}

fn router() -> Router<TestInbox> {
    Router::new(RetainStore::default(), Arc::new(Metrics::default()))
}

fn route(session: SessionId, qos: QoS, cap: usize) -> (Route<TestInbox>, Arc<TestInbox>) {
    let mailbox = Arc::new(TestInbox {
        cap,
        got: Mutex::default(),
    });
    (
        Route {
            session,
            client_id: format!("c{session}").into(),
            qos,
            stored: None,
            mailbox: mailbox.clone(),
        },
        mailbox,
    )
}

/// The next delivery in an inbox.
fn next(rx: &TestInbox) -> Option<Delivery> {
    rx.got.lock().pop_front()
}

fn msg(topic: &str, qos: QoS) -> Arc<Message> {
    Arc::new(Message {
        topic: Bytes::copy_from_slice(topic.as_bytes()),
        payload: Bytes::from_static(b"p"),
        qos,
        retain: false,
    })
}

#[test]
fn overlapping_filters_deliver_once_at_highest_qos() {
    // [MQTT-3.3.5-1]
    let r = router();
    let (a0, rx) = route(1, QoS::AtMostOnce, 8);
    let a2 = Route {
        qos: QoS::ExactlyOnce,
        ..a0.clone()
    };
    let a1 = Route {
        qos: QoS::AtLeastOnce,
        ..a0.clone()
    };
    r.subscribe("a/#", a0, 0);
    r.subscribe("a/b", a2, 0);
    r.subscribe("+/b", a1, 0);
    let out = r.publish(msg("a/b", QoS::ExactlyOnce));
    assert_eq!((1, 0, 0), (out.delivered, out.dropped, out.wait.lsn),);
    let d = next(&rx).expect("one delivery");
    assert_eq!(d.qos, QoS::ExactlyOnce);
    assert!(next(&rx).is_none());
}

#[test]
fn qos_is_downgraded_to_the_grant() {
    // [MQTT-3.8.4-6]
    let r = router();
    let (a, rx) = route(1, QoS::AtLeastOnce, 8);
    r.subscribe("t", a, 0);
    r.publish(msg("t", QoS::ExactlyOnce));
    r.publish(msg("t", QoS::AtMostOnce));
    assert_eq!(next(&rx).map(|d| d.qos), Some(QoS::AtLeastOnce));
    assert_eq!(next(&rx).map(|d| d.qos), Some(QoS::AtMostOnce));
}

#[test]
fn resubscribe_replaces_and_unsubscribe_is_exact() {
    // [MQTT-3.8.4-3], [MQTT-3.10.4-1]
    let r = router();
    let (a, rx) = route(1, QoS::AtMostOnce, 8);
    r.subscribe("a/+", a.clone(), 0);
    r.subscribe(
        "a/+",
        Route {
            qos: QoS::AtLeastOnce,
            ..a.clone()
        },
        0,
    );
    r.subscribe("a/b", a, 0);
    assert_eq!(r.filter_count(), 2);
    assert!(!r.unsubscribe("a/#", 1));
    assert!(r.unsubscribe("a/b", 1));
    assert!(!r.unsubscribe("a/b", 1));
    r.publish(msg("a/b", QoS::AtLeastOnce));
    assert_eq!(next(&rx).map(|d| d.qos), Some(QoS::AtLeastOnce));
    assert!(next(&rx).is_none(), "one route only");
    assert!(r.unsubscribe("a/+", 1));
    assert_eq!(r.filter_count(), 0);
    assert_eq!(r.publish(msg("a/b", QoS::AtLeastOnce)).delivered, 0);
}

#[test]
fn full_mailbox_is_counted_not_blocking() {
    let metrics = Arc::new(Metrics::default());
    let r: Router<TestInbox> = Router::new(RetainStore::default(), metrics.clone());
    let (a, _rx) = route(1, QoS::AtMostOnce, 1);
    let (b, rxb) = route(2, QoS::AtMostOnce, 8);
    r.subscribe("t", a, 0);
    r.subscribe("t", b, 0);
    for _ in 0..3 {
        r.publish(msg("t", QoS::AtMostOnce));
    }
    assert_eq!(metrics.snapshot().dropped_mailbox_full, 2);
    let mut got = 0;
    while next(&rxb).is_some() {
        got += 1;
    }
    assert_eq!(got, 3, "the other subscriber is unaffected");
}

#[test]
fn dollar_topics_and_wildcards() {
    // [MQTT-4.7.2-1]
    let r = router();
    let (a, rx) = route(1, QoS::AtMostOnce, 8);
    r.subscribe("#", a, 0);
    assert_eq!(r.publish(msg("$SYS/x", QoS::AtMostOnce)).delivered, 0);
    assert_eq!(r.publish(msg("x", QoS::AtMostOnce)).delivered, 1);
    assert!(next(&rx).is_some());
}

#[test]
fn a_group_gets_each_message_once_and_a_full_member_passes_it_on() {
    let metrics = Arc::new(Metrics::default());
    let r: Router<TestInbox> = Router::new(RetainStore::default(), metrics.clone());
    let (full, _) = route(1, QoS::AtLeastOnce, 0);
    let (b, rxb) = route(2, QoS::AtLeastOnce, 8);
    let (c, rxc) = route(3, QoS::AtLeastOnce, 8);
    r.subscribe("$share/g/a/+", full, 0);
    r.subscribe("$share/g/a/+", b, 0);
    r.subscribe("$share/g/a/+", c, 0);
    assert_eq!(r.route_count(), 3);
    // Members that take each message at once: one message per turn.
    let (mut nb, mut nc) = (0, 0);
    for _ in 0..6 {
        r.publish(msg("a/x", QoS::AtLeastOnce));
        while let Some(d) = next(&rxb) {
            assert_eq!(d.share.as_deref().map(String::as_str), Some("$share/g/a/+"));
            nb += 1;
        }
        while next(&rxc).is_some() {
            nc += 1;
        }
    }
    assert_eq!(
        nb + nc,
        6,
        "each message once, none lost to the full member"
    );
    assert!(nb >= 2 && nc >= 2, "in turn: {nb} {nc}");
    assert_eq!(metrics.snapshot().dropped_mailbox_full, 0);
    assert!(r.unsubscribe("$share/g/a/+", 2));
    assert!(r.unsubscribe("$share/g/a/+", 3));
    // Only the full member is left: now the message is dropped, counted.
    r.publish(msg("a/x", QoS::AtLeastOnce));
    assert_eq!(metrics.snapshot().dropped_mailbox_full, 1);
    assert!(r.unsubscribe("$share/g/a/+", 1));
    assert_eq!(r.route_count(), 0);
}

#[test]
fn under_load_a_turn_is_a_run_of_messages() {
    let r = router();
    let (a, rxa) = route(1, QoS::AtMostOnce, 100);
    let (b, rxb) = route(2, QoS::AtMostOnce, 100);
    r.subscribe("$share/g/t", a, 0);
    r.subscribe("$share/g/t", b, 0);
    // Nobody takes anything meanwhile: each turn lasts 16 messages.
    for _ in 0..40 {
        r.publish(msg("t", QoS::AtMostOnce));
    }
    let count = |rx: &TestInbox| std::iter::from_fn(|| next(rx)).count();
    assert_eq!((count(&rxa), count(&rxb)), (24, 16));
    // Idle members: one message each in turn.
    let mut order = Vec::new();
    for _ in 0..4 {
        r.publish(msg("t", QoS::AtMostOnce));
        match (next(&rxa), next(&rxb)) {
            (Some(_), None) => order.push('a'),
            (None, Some(_)) => order.push('b'),
            other => panic!("one delivery, to one member: {other:?}"),
        }
    }
    assert!(order.windows(2).all(|w| w[0] != w[1]), "{order:?}");
}
