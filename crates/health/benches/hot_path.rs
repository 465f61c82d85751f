//! The request path's health work: availability checks, admissions with outcome
//! recording, and the retry budget. `cargo bench -p switchyard-health`.

#![allow(missing_docs, clippy::expect_used, reason = "a benchmark harness, not library code")]

use std::hint::black_box;
use std::time::Duration;

use criterion::{Criterion, criterion_group, criterion_main};
use switchyard_core::BackendId;
use switchyard_health::{
    FailureKind, HealthRegistry, HealthSettings, Outcome, RetryBudget, RetryBudgetSettings,
};

fn registry(n: usize) -> (HealthRegistry, Vec<BackendId>) {
    let mut settings = HealthSettings::default();
    settings.checks.enabled = false;
    settings.breaker.consecutive_failures = 1;
    settings.breaker.base_open = Duration::from_secs(3600);
    settings.breaker.max_open = Duration::from_secs(3600);
    let ids: Vec<BackendId> = (0..n).map(|i| BackendId::new(&format!("backend-{i}"))).collect();
    let reg = HealthRegistry::new(&settings, ids.clone()).expect("valid settings");
    (reg, ids)
}

fn availability(c: &mut Criterion) {
    let (reg, ids) = registry(8);
    let id = &ids[3];
    c.bench_function("is_available/closed", |b| b.iter(|| reg.is_available(black_box(id))));
    c.bench_function("admit+record/closed", |b| {
        b.iter(|| {
            let adm = reg.admit(black_box(id)).expect("closed");
            adm.record(Outcome::Success, Duration::from_micros(800));
        });
    });
    c.bench_function("record/success", |b| {
        b.iter(|| reg.record(black_box(id), Outcome::Success, Duration::from_micros(800)));
    });

    // One open circuit among 100: the ejected path reads the clock and counts ejections.
    let (reg, ids) = registry(100);
    reg.record(&ids[0], Outcome::Failure(FailureKind::Connect), Duration::ZERO);
    c.bench_function("is_available/open_of_100", |b| {
        b.iter(|| reg.is_available(black_box(&ids[0])))
    });
    let pool = reg.pool(&ids[..4]);
    c.bench_function("pool_is_available/open_of_4", |b| {
        b.iter(|| pool.is_available(black_box(&ids[0])))
    });
    c.bench_function("record/failure_while_open", |b| {
        b.iter(|| {
            reg.record(black_box(&ids[0]), Outcome::Failure(FailureKind::Status), Duration::ZERO)
        });
    });
}

fn budget(c: &mut Criterion) {
    let budget = RetryBudget::new(&RetryBudgetSettings::default());
    c.bench_function("retry_budget/deposit", |b| b.iter(|| budget.deposit()));
    c.bench_function("retry_budget/deposit+try_withdraw", |b| {
        b.iter(|| {
            budget.deposit();
            black_box(budget.try_withdraw())
        });
    });
}

/// Reference points: every ejected-path read and every budget operation reads the clock.
/// (Bench builds enable tokio's `test-util` through dev-dependencies, which makes
/// `tokio::time::Instant::now` dearer here than in the release binary.)
fn clock(c: &mut Criterion) {
    c.bench_function("clock/std_instant_now", |b| b.iter(std::time::Instant::now));
    c.bench_function("clock/tokio_instant_now", |b| b.iter(tokio::time::Instant::now));
}

criterion_group!(benches, availability, budget, clock);
criterion_main!(benches);
