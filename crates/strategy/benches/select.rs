//! One selection (the first acceptable candidate) for every strategy over 10 and 100
//! backends, with statistics populated and some requests in flight. Target: under
//! 1 µs at 100 backends.
// cargo bench -p switchyard-strategy

#![allow(missing_docs, clippy::expect_used)] // reason: a benchmark harness, not library code

use std::hint::black_box;
use std::time::Duration;

use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use switchyard_strategy::{
    BackendSpec, InFlight, RequestKey, Selector, StatsRegistry, StrategyKind, StrategySettings,
};

fn setup(kind: StrategyKind, n: usize) -> (Selector, Vec<InFlight>) {
    let backends: Vec<BackendSpec> = (0..n)
        .map(|i| BackendSpec {
            weight: 1 + (i % 4) as u32,
            ..BackendSpec::new(&format!("backend-{i}"), &format!("http://10.0.0.{i}:8000"))
        })
        .collect();
    let settings = StrategySettings { strategy: kind, ..Default::default() };
    let selector = Selector::new(&settings, &backends, &StatsRegistry::new()).expect("valid");
    let mut guards = Vec::new();
    for i in 0..n {
        let mut done = selector.start(i);
        done.record_latency(Duration::from_millis(50 + (i as u64 * 37) % 400));
        done.success();
        guards.extend((0..i % 3).map(|_| selector.start(i)));
    }
    (selector, guards)
}

fn select(c: &mut Criterion) {
    let keys: Vec<RequestKey> =
        (0..1024).map(|i| RequestKey::from_str(&format!("session-{i}"))).collect();
    let mut group = c.benchmark_group("select");
    group.warm_up_time(Duration::from_millis(500));
    group.measurement_time(Duration::from_secs(2));
    for n in [10, 100] {
        for kind in StrategyKind::ALL {
            let (selector, _guards) = setup(kind, n);
            group.bench_with_input(BenchmarkId::new(kind.as_str(), n), &n, |b, _| {
                let mut k = 0;
                b.iter(|| {
                    k = (k + 1) & 1023;
                    selector.select_with(black_box(&keys[k]), |_, _| true)
                })
            });
        }
    }
    group.finish();

    // A retry path: the first two candidates rejected (unhealthy), the third taken.
    let mut group = c.benchmark_group("select_third");
    group.warm_up_time(Duration::from_millis(500));
    group.measurement_time(Duration::from_secs(2));
    for kind in StrategyKind::ALL {
        let (selector, _guards) = setup(kind, 100);
        group.bench_with_input(BenchmarkId::new(kind.as_str(), 100), &100, |b, _| {
            let mut k = 0;
            b.iter(|| {
                k = (k + 1) & 1023;
                let mut seen = 0;
                selector.select_with(black_box(&keys[k]), |_, _| {
                    seen += 1;
                    seen == 3
                })
            })
        });
    }
    group.finish();

    // Start and finish a request: the recording path.
    let (selector, _guards) = setup(StrategyKind::LeastLatency, 100);
    c.bench_function("record/start_latency_success", |b| {
        b.iter(|| {
            let mut guard = selector.start(black_box(7));
            guard.record_latency(Duration::from_millis(80));
            guard.success();
        })
    });
}

criterion_group!(benches, select);
criterion_main!(benches);
