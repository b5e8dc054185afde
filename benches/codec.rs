//! Decode and encode of PUBLISH packets at 16 B, 1 KiB and 64 KiB payloads.

use bytes::BytesMut;
use criterion::{criterion_group, criterion_main, BatchSize, BenchmarkId, Criterion, Throughput};
use tern::codec::{decode, encode_publish};
use tern::message::QoS;

fn frame(size: usize) -> BytesMut {
    let mut buf = BytesMut::new();
    encode_publish(
        b"sensors/kitchen/temperature",
        &vec![0xab; size],
        QoS::AtLeastOnce,
        Some(42),
        false,
        false,
        &mut buf,
    );
    buf
}

fn codec(c: &mut Criterion) {
    let mut group = c.benchmark_group("publish");
    for size in [16usize, 1024, 65_536] {
        let encoded = frame(size);
        group.throughput(Throughput::Bytes(encoded.len() as u64));
        group.bench_with_input(BenchmarkId::new("decode", size), &encoded, |b, encoded| {
            // The copy of the frame is set-up, not measured.
            b.iter_batched(
                || encoded.clone(),
                |mut buf| {
                    decode(&mut buf, usize::MAX)
                        .expect("valid")
                        .expect("complete")
                },
                BatchSize::SmallInput,
            )
        });
        let payload = vec![0xab; size];
        let mut out = BytesMut::with_capacity(size + 64);
        group.bench_with_input(BenchmarkId::new("encode", size), &payload, |b, payload| {
            b.iter(|| {
                out.clear();
                encode_publish(
                    b"sensors/kitchen/temperature",
                    payload,
                    QoS::AtLeastOnce,
                    Some(42),
                    false,
                    false,
                    &mut out,
                );
                out.len()
            })
        });
    }
    group.finish();
}

criterion_group!(benches, codec);
criterion_main!(benches);
