//! Router fan-out: one publish to 1, 100 and 10,000 subscribers of an exact topic, each with its
//! own delivery mailbox, drained after every publish as the sessions would.

use std::sync::Arc;

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use tern::message::{Message, QoS};
use tern::observability::metrics::Metrics;
use tern::routing::retain::RetainStore;
use tern::routing::router::{Route, Router};
use tern::sessions::mailbox::Mailbox;

fn fanout(c: &mut Criterion) {
    let mut group = c.benchmark_group("router_fanout");
    for n in [1usize, 100, 10_000] {
        let router = Router::new(RetainStore::default(), Arc::new(Metrics::default()));
        let mut mailboxes = Vec::with_capacity(n);
        for i in 0..n {
            let mailbox = Arc::new(Mailbox::new(16, usize::MAX / 2, 0));
            router.subscribe(
                "sensors/kitchen/temperature",
                Route {
                    session: i as u64 + 1,
                    client_id: format!("c{i}").into(),
                    qos: QoS::AtLeastOnce,
                    stored: None,
                    mailbox: mailbox.clone(),
                },
                0,
            );
            mailboxes.push(mailbox);
        }
        let msg = Arc::new(Message {
            topic: Bytes::from_static(b"sensors/kitchen/temperature"),
            payload: Bytes::from_static(&[0u8; 64]),
            qos: QoS::AtLeastOnce,
            retain: false,
        });
        group.throughput(Throughput::Elements(n as u64));
        group.bench_function(BenchmarkId::from_parameter(n), |b| {
            b.iter(|| {
                let out = router.publish(msg.clone());
                for mailbox in &mailboxes {
                    while mailbox.try_recv().is_some() {
                        mailbox.backlog().removed(1, true);
                    }
                }
                out.delivered
            })
        });
    }
    group.finish();
}

criterion_group!(benches, fanout);
criterion_main!(benches);
