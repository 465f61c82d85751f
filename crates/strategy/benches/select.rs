//! One selection (the first acceptable candidate) for every strategy over 10 and 100
//! backends, with statistics populated and some requests in flight. Target: under
//! 1 µs at 100 backends.
//!
//! `select/*` is wall time, as criterion measures by default. On a shared machine wall
//! time includes the time other processes held the CPU, so `select_cpu/*` measures the
//! same selections in this thread's CPU time (Linux `/proc/thread-self/schedstat`, which
//! the kernel updates at scheduler ticks, hence few long samples; wall time elsewhere).
// cargo bench -p switchyard-strategy

#![allow(missing_docs, clippy::expect_used)] // reason: a benchmark harness, not library code

use std::hint::black_box;
use std::time::{Duration, Instant};

use criterion::measurement::{Measurement, ValueFormatter};
use criterion::{
    BenchmarkId, Criterion, SamplingMode, Throughput, criterion_group, criterion_main,
};
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

fn select_cpu(c: &mut Criterion<ThreadCpu>) {
    let keys: Vec<RequestKey> =
        (0..1024).map(|i| RequestKey::from_str(&format!("session-{i}"))).collect();
    let mut group = c.benchmark_group("select_cpu");
    // The kernel accounts thread CPU time at scheduler ticks (a few ms): few, long,
    // equal samples keep that granularity below 1% of each.
    group.sampling_mode(SamplingMode::Flat);
    group.sample_size(10);
    group.warm_up_time(Duration::from_millis(500));
    group.measurement_time(Duration::from_secs(5));
    for kind in StrategyKind::ALL {
        let (selector, _guards) = setup(kind, 100);
        group.bench_with_input(BenchmarkId::new(kind.as_str(), 100), &100, |b, _| {
            let mut k = 0;
            b.iter(|| {
                k = (k + 1) & 1023;
                selector.select_with(black_box(&keys[k]), |_, _| true)
            })
        });
    }
    group.finish();
}

/// CPU time of the benchmarking thread, in nanoseconds.
struct ThreadCpu;

impl ThreadCpu {
    fn now() -> Option<u64> {
        let text = std::fs::read_to_string("/proc/thread-self/schedstat").ok()?;
        text.split_whitespace().next()?.parse().ok()
    }
}

impl Measurement for ThreadCpu {
    type Intermediate = (Option<u64>, Instant);
    type Value = f64;

    fn start(&self) -> Self::Intermediate {
        (ThreadCpu::now(), Instant::now())
    }
    fn end(&self, (cpu, wall): Self::Intermediate) -> f64 {
        match (cpu, ThreadCpu::now()) {
            (Some(a), Some(b)) => b.saturating_sub(a) as f64,
            _ => wall.elapsed().as_nanos() as f64,
        }
    }
    fn add(&self, a: &f64, b: &f64) -> f64 {
        a + b
    }
    fn zero(&self) -> f64 {
        0.0
    }
    fn to_f64(&self, value: &f64) -> f64 {
        *value
    }
    fn formatter(&self) -> &dyn ValueFormatter {
        self
    }
}

impl ValueFormatter for ThreadCpu {
    fn scale_values(&self, ns: f64, values: &mut [f64]) -> &'static str {
        let (factor, unit) = if ns < 1e3 { (1.0, "ns") } else { (1e-3, "µs") };
        values.iter_mut().for_each(|v| *v *= factor);
        unit
    }
    fn scale_throughputs(
        &self,
        _: f64,
        throughput: &Throughput,
        values: &mut [f64],
    ) -> &'static str {
        let per = match *throughput {
            Throughput::Bytes(n) | Throughput::BytesDecimal(n) | Throughput::Elements(n) => {
                n as f64
            }
        };
        values.iter_mut().for_each(|v| *v = per * 1e9 / *v);
        "/s"
    }
    fn scale_for_machines(&self, _: &mut [f64]) -> &'static str {
        "ns"
    }
}

criterion_group!(benches, select);
criterion_group! {
    name = cpu;
    config = Criterion::default().with_measurement(ThreadCpu);
    targets = select_cpu
}
criterion_main!(benches, cpu);
