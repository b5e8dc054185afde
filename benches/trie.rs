//! Wildcard-trie matching with 10, 10,000 and 1,000,000 filters (exact levels, `+` and `#`).

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use tern::routing::trie::Trie;

/// Filters like `site/7/+/temp`, `site/7/dev3/#` and `site/+/dev3/temp`.
fn filters(n: usize) -> Vec<String> {
    (0..n)
        .map(|i| match i % 3 {
            0 => format!("site/{}/+/temp", i / 3),
            1 => format!("site/{}/dev{}/#", i / 3, i % 10),
            _ => format!("site/+/dev{}/m{}", i % 10, i / 3),
        })
        .collect()
}

fn trie(c: &mut Criterion) {
    let mut group = c.benchmark_group("trie_match");
    for n in [10usize, 10_000, 1_000_000] {
        let mut t = Trie::new();
        for (i, f) in filters(n).iter().enumerate() {
            t.insert(f, i);
        }
        let topic = format!("site/{}/dev1/temp", n / 6);
        group.bench_with_input(BenchmarkId::from_parameter(n), &topic, |b, topic| {
            b.iter(|| {
                let mut hits = 0usize;
                t.for_each_match(topic.as_bytes(), |_| hits += 1);
                hits
            })
        });
    }
    group.finish();
}

criterion_group!(benches, trie);
criterion_main!(benches);
