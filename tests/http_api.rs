//! The HTTP server: health checks, the JSON API (stats, clients, kick, subscriptions, retained,
//! publish) and its access rule, against a real broker with real MQTT clients.

mod common;

use std::time::Duration;

use common::{http, http_broker, http_get, http_until, Client, Raw, TestBroker};
use rumqttc::{LastWill, QoS};
use serde_json::json;

#[tokio::test]
async fn health_answers_live_and_ready() {
    let (broker, addr) = http_broker(|_| {}).await;
    let live = http_get(addr, "/health/live").await;
    assert_eq!((live.status, live.body.as_str()), (200, "ok"));
    // Ready once the listeners serve: `run` sets it before the test gets the broker.
    let ready = http_until(addr, "GET", "/health/ready", |r| r.status == 200).await;
    assert_eq!(ready.body, "ready");
    assert_eq!(http_get(addr, "/nothing/here").await.status, 404);
    broker.stop().await;
}

#[tokio::test]
async fn no_http_section_binds_nothing() {
    let broker = TestBroker::start().await;
    assert!(broker.http.is_none());
    broker.stop().await;
}

#[tokio::test]
async fn stats_count_what_clients_did() {
    let (broker, addr) = http_broker(|_| {}).await;
    let mut sub = Client::connect(broker.addr, "stats-sub").await;
    sub.subscribe("s/#", QoS::AtLeastOnce).await;
    let mut publ = Client::connect(broker.addr, "stats-pub").await;
    for i in 0..5 {
        publ.publish_acked("s/x", false, format!("m{i}")).await;
    }
    for _ in 0..5 {
        sub.next_publish().await;
    }
    let stats = http_get(addr, "/api/v1/stats").await.json();
    assert_eq!(stats["clients"]["connected"], 2, "{stats}");
    assert_eq!(stats["clients"]["sessions"], 2);
    assert_eq!(stats["messages"]["received_by_qos"][1], 5);
    assert_eq!(stats["messages"]["sent_by_qos"][1], 5);
    assert_eq!(stats["messages"]["received"], 5);
    assert_eq!(stats["subscriptions"], 1);
    assert_eq!(stats["connections"]["listeners"][0]["transport"], "tcp");
    assert_eq!(stats["connections"]["listeners"][0]["connections"], 2);
    assert!(stats["bytes"]["received"].as_u64().expect("number") > 0);
    assert_eq!(stats["bytes"]["payload_received"], 10);
    broker.stop().await;
}

#[tokio::test]
async fn clients_are_paged_in_client_id_order_with_hostile_ids() {
    let (broker, addr) = http_broker(|_| {}).await;
    // Ids a URL must escape: '/', '+', '#', a space, and non-ASCII.
    let ids = ["c/1", "c+2", "c#3", "c 4", "c-ü5"];
    let mut clients = Vec::new();
    for id in ids {
        clients.push(Client::connect(broker.addr, id).await);
    }
    let mut seen = Vec::new();
    for page in 1..=3 {
        let r = http_get(addr, &format!("/api/v1/clients?limit=2&page={page}")).await;
        assert_eq!(r.status, 200, "{}", r.body);
        let v = r.json();
        assert_eq!(v["meta"]["count"], 5);
        for c in v["data"].as_array().expect("data") {
            assert_eq!(c["connected"], true, "{c}");
            assert_eq!(c["protocol"], "MQTT 3.1.1");
            assert_eq!(c["transport"], "tcp");
            assert_eq!(c["keepalive"], 30, "the keepalive of common::Client");
            assert!(c["peer"].as_str().expect("peer").starts_with("127.0.0.1:"));
            seen.push(c["client_id"].as_str().expect("id").to_owned());
        }
    }
    let mut want: Vec<String> = ids.iter().map(|s| s.to_string()).collect();
    want.sort();
    assert_eq!(seen, want, "every client once, sorted");
    // One client by id, escaped in the path.
    let r = http_get(addr, "/api/v1/clients/c%2F1").await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.json()["client_id"], "c/1");
    assert_eq!(http_get(addr, "/api/v1/clients/nobody").await.status, 404);
    broker.stop().await;
}

#[tokio::test]
async fn a_client_shows_its_subscriptions_queue_and_session() {
    let (broker, addr) = http_broker(|_| {}).await;
    let mut sub = Client::connect_with({
        let mut o = Client::options(broker.addr, "holder");
        o.set_clean_session(false);
        o
    })
    .await
    .0;
    sub.subscribe("q/+", QoS::AtLeastOnce).await;
    sub.subscribe("r/#", QoS::AtMostOnce).await;
    let v = http_get(addr, "/api/v1/clients/holder").await.json();
    assert_eq!(v["persistent"], true);
    assert_eq!(
        v["subscriptions"],
        json!([{ "filter": "q/+", "qos": 1 }, { "filter": "r/#", "qos": 0 }])
    );
    // Offline, the session stays and queues.
    sub.disconnect().await;
    let mut publ = Client::connect(broker.addr, "feeder").await;
    for _ in 0..3 {
        publ.publish_acked("q/a", false, "x").await;
    }
    let path = "/api/v1/clients/holder";
    let v = http_until(addr, "GET", path, |r| r.json()["queued"] == 3)
        .await
        .json();
    assert_eq!(v["connected"], false);
    assert!(v["peer"].is_null());
    let stats = http_get(addr, "/api/v1/stats").await.json();
    assert_eq!(stats["clients"]["offline"], 1);
    assert_eq!(stats["messages"]["queued"], 3);
    broker.stop().await;
}

#[tokio::test]
async fn kick_closes_the_connection_and_publishes_the_will() {
    let (broker, addr) = http_broker(|_| {}).await;
    let mut watcher = Client::connect(broker.addr, "watcher").await;
    watcher.subscribe("wills/#", QoS::AtLeastOnce).await;
    let mut opts = Client::options(broker.addr, "victim");
    opts.set_last_will(LastWill::new(
        "wills/victim",
        "gone",
        QoS::AtLeastOnce,
        false,
    ));
    let (mut victim, _) = Client::connect_with(opts).await;
    let r = http(addr, "DELETE", "/api/v1/clients/victim", None, None).await;
    assert_eq!(r.status, 204, "{}", r.body);
    victim.expect_disconnected().await;
    let will = watcher.next_publish().await;
    assert_eq!(
        (will.topic.as_str(), &will.payload[..]),
        ("wills/victim", &b"gone"[..])
    );
    // A clean session goes with its connection: nothing left to kick.
    let path = "/api/v1/clients/victim";
    let again = http_until(addr, "DELETE", path, |r| r.status == 404).await;
    assert!(again.json()["error"].is_string());
    broker.stop().await;
}

#[tokio::test]
async fn subscriptions_are_listed_and_searched() {
    let (broker, addr) = http_broker(|_| {}).await;
    let mut a = Client::connect(broker.addr, "sa").await;
    a.subscribe("home/+/temp", QoS::AtLeastOnce).await;
    a.subscribe("home/kitchen", QoS::AtMostOnce).await;
    let mut b = Client::connect(broker.addr, "sb").await;
    b.subscribe("home/+/temp", QoS::ExactlyOnce).await;
    b.subscribe("#", QoS::AtMostOnce).await;
    let all = http_get(addr, "/api/v1/subscriptions").await.json();
    assert_eq!(all["meta"]["count"], 4, "{all}");
    let temp = http_get(addr, "/api/v1/subscriptions?filter=temp")
        .await
        .json();
    assert_eq!(
        temp["data"],
        json!([
            { "filter": "home/+/temp", "client_id": "sa", "qos": 1 },
            { "filter": "home/+/temp", "client_id": "sb", "qos": 2 },
        ])
    );
    let of_b = http_get(addr, "/api/v1/subscriptions?client_id=sb&limit=1&page=2")
        .await
        .json();
    assert_eq!(of_b["meta"]["count"], 2);
    assert_eq!(
        of_b["data"],
        json!([{ "filter": "home/+/temp", "client_id": "sb", "qos": 2 }])
    );
    broker.stop().await;
}

#[tokio::test]
async fn retained_messages_are_browsed_by_filter() {
    let (broker, addr) = http_broker(|_| {}).await;
    let mut p = Client::connect(broker.addr, "retainer").await;
    p.publish_acked("dev/1/state", true, "on").await;
    p.publish_acked("dev/2/state", true, vec![0xff, 0x00]).await;
    p.publish_acked("other", true, "x").await;
    let v = http_get(addr, "/api/v1/retained?topic=dev/%2B/state")
        .await
        .json();
    assert_eq!(v["meta"]["count"], 2, "{v}");
    assert_eq!(v["data"][0]["topic"], "dev/1/state");
    assert_eq!(
        (
            v["data"][0]["payload"].clone(),
            v["data"][0]["encoding"].clone()
        ),
        (json!("on"), json!("plain"))
    );
    assert_eq!(v["data"][1]["encoding"], "base64");
    assert_eq!(v["data"][1]["payload"], "/wA=");
    let all = http_get(addr, "/api/v1/retained").await.json();
    assert_eq!(all["meta"]["count"], 3);
    let bad = http_get(addr, "/api/v1/retained?topic=a/%23/b").await;
    assert_eq!(bad.status, 400);
    broker.stop().await;
}

#[tokio::test]
async fn publish_reaches_subscribers_and_bad_requests_are_refused() {
    let (broker, addr) = http_broker(|_| {}).await;
    let mut sub = Client::connect(broker.addr, "listener").await;
    sub.subscribe("api/#", QoS::ExactlyOnce).await;
    let body = json!({ "topic": "api/one", "payload": "hello", "qos": 2 });
    let r = http(addr, "POST", "/api/v1/publish", None, Some(body)).await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.json()["delivered"], 1);
    let got = sub.next_publish().await;
    assert_eq!(
        (got.topic.as_str(), &got.payload[..], got.qos),
        ("api/one", &b"hello"[..], QoS::ExactlyOnce)
    );
    // Retained and base64: a later subscriber gets it.
    let body = json!({ "topic": "api/kept", "payload": "AAEC", "encoding": "base64", "retain": true, "qos": 1 });
    assert_eq!(
        http(addr, "POST", "/api/v1/publish", None, Some(body))
            .await
            .status,
        200
    );
    assert_eq!(&sub.next_publish().await.payload[..], &[0u8, 1, 2][..]);
    let mut late = Client::connect(broker.addr, "late").await;
    late.subscribe("api/kept", QoS::AtLeastOnce).await;
    let kept = late.next_publish().await;
    assert_eq!((&kept.payload[..], kept.retain), (&[0u8, 1, 2][..], true));
    for bad in [
        json!({ "topic": "a/+", "payload": "x" }),
        json!({ "topic": "", "payload": "x" }),
        json!({ "topic": "a", "qos": 3 }),
        json!({ "topic": "a", "payload": "!!", "encoding": "base64" }),
        json!({ "topic": "a", "encoding": "hex" }),
        json!({ "topic": "a", "extra": 1 }),
        json!({ "payload": "no topic" }),
        // Over max_packet_size (1 MiB by default) as a PUBLISH.
        json!({ "topic": "a", "payload": "x".repeat(1 << 20) }),
    ] {
        let r = http(addr, "POST", "/api/v1/publish", None, Some(bad.clone())).await;
        assert!(
            r.status == 400 || r.status == 422,
            "{bad} -> {} {}",
            r.status,
            r.body
        );
    }
    sub.expect_no_publish(Duration::from_millis(100)).await;
    broker.stop().await;
}

#[tokio::test]
async fn a_password_file_requires_basic_auth() {
    let dir = tempfile::tempdir().expect("temp dir");
    let file = dir.path().join("http-users");
    std::fs::write(&file, common::pbkdf2_line("admin", "s3cret", 101)).expect("write");
    let (broker, addr) = http_broker(|c| c.http.password_file = Some(file.clone())).await;
    let none = http_get(addr, "/api/v1/stats").await;
    assert_eq!(none.status, 401);
    let wrong = http(addr, "GET", "/metrics", Some(("admin", "nope")), None).await;
    assert_eq!(wrong.status, 401);
    let stranger = http(addr, "GET", "/", Some(("root", "s3cret")), None).await;
    assert_eq!(stranger.status, 401);
    let right = http(
        addr,
        "GET",
        "/api/v1/stats",
        Some(("admin", "s3cret")),
        None,
    )
    .await;
    assert_eq!(right.status, 200);
    // The MQTT side is not affected: the HTTP users are not MQTT users.
    let (_raw, code) = common::login(broker.addr, "mqtt-anon", None, None).await;
    assert_eq!(code, tern::codec::ConnectReturnCode::Accepted);
    broker.stop().await;
}

#[tokio::test]
async fn kicked_persistent_sessions_stay_and_resume() {
    let (broker, addr) = http_broker(|_| {}).await;
    let mut opts = Client::options(broker.addr, "sticky");
    opts.set_clean_session(false);
    let (mut c, _) = Client::connect_with(opts.clone()).await;
    c.subscribe("st/#", QoS::AtLeastOnce).await;
    assert_eq!(
        http(addr, "DELETE", "/api/v1/clients/sticky", None, None)
            .await
            .status,
        204
    );
    c.expect_disconnected().await;
    let v = http_get(addr, "/api/v1/clients/sticky").await.json();
    assert_eq!(
        (v["connected"].clone(), v["persistent"].clone()),
        (json!(false), json!(true))
    );
    drop(c);
    // [MQTT-3.2.2-2]: the session is still there.
    let mut raw = Raw::open(broker.addr).await;
    raw.send_packet(&common::connect_packet("sticky", false, 30))
        .await;
    match raw.recv().await {
        tern::codec::Packet::ConnAck(a) => assert!(a.session_present),
        other => panic!("expected CONNACK, got {other:?}"),
    }
    broker.stop().await;
}
