//! Runs the embedding example (`examples/tagging.rs`): its broker, with its hooks, serving
//! real rumqttc clients on an ephemeral port.

mod common;

use std::sync::Arc;

use rumqttc::QoS;
use tern::Config;

use common::Client;

#[path = "../examples/tagging.rs"]
#[allow(dead_code)]
mod tagging;

#[tokio::test]
async fn the_example_tags_and_counts_every_message() {
    let mut config = Config::default();
    config.listener[0].bind = "127.0.0.1:0".parse().expect("address");
    config.sys.sys_interval = std::time::Duration::ZERO;
    let tagger = Arc::new(tagging::Tagger::default());
    let broker = tagging::bind(config, tagger.clone())
        .await
        .expect("the example's broker binds");
    let addr = broker.local_addrs()[0];
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(broker.run(async move {
        let _ = stopped.await;
    }));

    let mut watch = Client::connect(addr, "watch").await;
    watch.subscribe("sensors/#", QoS::AtLeastOnce).await;
    let mut thermo = Client::connect(addr, "thermo-1").await;
    let mut hygro = Client::connect(addr, "hygro-2").await;
    for v in ["21.5", "21.7", "22.0"] {
        thermo.publish_acked("sensors/temp", false, v).await;
    }
    hygro.publish_acked("sensors/humidity", false, "40").await;
    let mut got = Vec::new();
    for _ in 0..4 {
        let p = watch.next_publish().await;
        got.push(format!(
            "{} {}",
            p.topic,
            String::from_utf8_lossy(&p.payload)
        ));
    }
    assert_eq!(
        got,
        [
            "sensors/temp thermo-1: 21.5",
            "sensors/temp thermo-1: 21.7",
            "sensors/temp thermo-1: 22.0",
            "sensors/humidity hygro-2: 40",
        ]
    );
    assert_eq!(tagger.count("thermo-1"), 3);
    assert_eq!(tagger.count("hygro-2"), 1);
    assert_eq!(
        tagger.counts(),
        [("thermo-1".to_string(), 3), ("hygro-2".to_string(), 1)]
    );
    let _ = stop.send(());
    common::within(common::WAIT, task)
        .await
        .expect("broker task");
}
