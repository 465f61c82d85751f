//! Integration tests: the checker against fake backends and the registry's timing rules,
//! all on tokio's paused clock (except the thread race for the half-open permit).

#![allow(clippy::unwrap_used, clippy::expect_used, reason = "test helpers panic on setup failures")]

mod util;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Barrier};

use proptest::prelude::*;
use switchyard_core::{Backend, BackendError, BackendId, ErrorCode};
use switchyard_health::{
    ActiveState, Change, CircuitState, Error, FailureKind, HealthChecker, HealthRegistry,
    HealthSettings, Outcome, Transition,
};
use tokio::sync::broadcast;
use tokio::time::{Duration, Instant, advance, sleep_until};
use util::{FakeBackend, Step, TestRecorder};

const FAIL: Outcome = Outcome::Failure(FailureKind::Connect);

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

fn checked(unhealthy: u32, healthy: u32) -> HealthSettings {
    let mut s = HealthSettings::default();
    s.checks.interval = ms(10_000);
    s.checks.timeout = ms(1_000);
    s.checks.warmup_interval = ms(1_000);
    s.checks.unhealthy_threshold = unhealthy;
    s.checks.healthy_threshold = healthy;
    s
}

/// Passive only: checks off, circuit opens after `failures`, backoff 1 s doubling to 4 s.
fn passive(failures: u32) -> HealthSettings {
    let mut s = HealthSettings::default();
    s.checks.enabled = false;
    s.breaker.consecutive_failures = failures;
    s.breaker.base_open = ms(1_000);
    s.breaker.max_open = ms(4_000);
    s
}

fn ids(names: &[&str]) -> Vec<BackendId> {
    names.iter().map(|n| BackendId::new(n)).collect()
}

fn fail(reg: &HealthRegistry, id: &BackendId, times: usize) {
    for _ in 0..times {
        reg.admit(id).expect("admitted").record(FAIL, Duration::ZERO);
    }
}

fn drain(rx: &mut broadcast::Receiver<Transition>) -> Vec<(String, Change)> {
    let mut out = Vec::new();
    while let Ok(t) = rx.try_recv() {
        out.push((t.backend.to_string(), t.change));
    }
    out
}

/// Let spawned checker tasks run to their next await.
async fn settle() {
    for _ in 0..10 {
        tokio::task::yield_now().await;
    }
}

// ---------------------------------------------------------------------------------------
// Active checks.

#[tokio::test(start_paused = true)]
async fn first_probe_runs_at_start_up_so_a_dead_backend_is_never_routed_to_first() {
    let live = FakeBackend::new("live", [], Step::Ok);
    let dead = FakeBackend::new("dead", [], Step::Fail);
    let reg = HealthRegistry::new(&checked(3, 2), [live.id().clone(), dead.id().clone()]).unwrap();
    assert!(!reg.is_available(live.id()), "unknown until the first probe answers");
    assert!(reg.admit(dead.id()).is_none());
    let start = Instant::now();
    let checker = HealthChecker::spawn(&reg, [live.as_dyn(), dead.as_dyn()]).unwrap();
    checker.ready().await;
    assert_eq!(start.elapsed(), Duration::ZERO, "no interval waited before the first probe");
    assert!(reg.is_available(live.id()), "one good probe is enough at start-up");
    assert!(!reg.is_available(dead.id()), "one failed probe is enough at start-up");
    assert_eq!(live.probe_times(start), [0]);
    assert_eq!(dead.probe_times(start), [0]);
    checker.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn state_flips_only_after_consecutive_results() {
    use Step::{Fail, Ok};
    let b = FakeBackend::new("b", [Ok, Fail, Fail, Ok, Fail, Fail, Fail, Ok, Ok], Ok);
    let reg = HealthRegistry::new(&checked(3, 2), [b.id().clone()]).unwrap();
    let mut rx = reg.subscribe();
    let start = Instant::now();
    let checker = HealthChecker::spawn(&reg, [b.as_dyn()]).unwrap();
    // After the probe at k * 10 s: available?
    let expected = [true, true, true, true, true, true, false, false, true, true];
    for (k, want) in expected.iter().enumerate() {
        sleep_until(start + ms(k as u64 * 10_000 + 1)).await;
        assert_eq!(reg.is_available(b.id()), *want, "after probe {k}");
    }
    assert_eq!(b.probe_times(start), (0..10).map(|k| k * 10_000).collect::<Vec<_>>());
    let snap = reg.snapshot();
    assert_eq!(snap.backends[0].consecutive_successes, 3);
    assert_eq!(snap.backends[0].consecutive_failures, 0);
    assert_eq!(snap.backends[0].last_check_ms_ago, Some(1));
    let changes: Vec<_> = drain(&mut rx).into_iter().map(|(_, c)| c).collect();
    assert_eq!(
        changes,
        [
            Change::Active { from: ActiveState::Unknown, to: ActiveState::Healthy },
            Change::Active { from: ActiveState::Healthy, to: ActiveState::Unhealthy },
            Change::Active { from: ActiveState::Unhealthy, to: ActiveState::Healthy },
        ]
    );
    checker.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn a_warming_backend_is_probed_at_the_warmup_interval_until_ready() {
    use Step::{Ok, Warming};
    let b = FakeBackend::new("local", [Warming, Warming, Warming, Ok], Ok);
    let mut s = checked(3, 2);
    s.checks.interval = ms(30_000);
    let reg = HealthRegistry::new(&s, [b.id().clone()]).unwrap();
    let start = Instant::now();
    let checker = HealthChecker::spawn(&reg, [b.as_dyn()]).unwrap();
    checker.ready().await;
    assert!(!reg.is_available(b.id()));
    assert!(reg.snapshot().backends[0].warming);
    sleep_until(start + ms(3_999)).await;
    assert!(!reg.is_available(b.id()), "one good probe of two");
    sleep_until(start + ms(4_001)).await;
    assert!(reg.is_available(b.id()));
    assert!(!reg.snapshot().backends[0].warming);
    sleep_until(start + ms(40_000)).await;
    assert_eq!(b.probe_times(start), [0, 1_000, 2_000, 3_000, 4_000, 34_000]);
    checker.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn a_probe_that_never_answers_fails_at_the_timeout_and_intervals_run_start_to_start() {
    use Step::{Hang, Ok, Slow};
    let b = FakeBackend::new("b", [Ok, Slow(ms(800)), Hang, Hang], Ok);
    let reg = HealthRegistry::new(&checked(2, 2), [b.id().clone()]).unwrap();
    let start = Instant::now();
    let checker = HealthChecker::spawn(&reg, [b.as_dyn()]).unwrap();
    sleep_until(start + ms(30_999)).await;
    assert!(reg.is_available(b.id()), "one timeout of two");
    sleep_until(start + ms(31_001)).await;
    assert!(!reg.is_available(b.id()), "second timeout at 30 s + 1 s");
    let snap = reg.snapshot();
    assert_eq!(snap.backends[0].state, ActiveState::Unhealthy);
    let error = snap.backends[0].last_error.clone().unwrap();
    assert!(error.contains("upstream_timeout") && error.contains("timed out"), "{error}");
    assert_eq!(
        b.probe_times(start),
        [0, 10_000, 20_000, 30_000],
        "a slow probe does not delay the next"
    );
    checker.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn shutdown_and_drop_both_stop_probing() {
    let a = FakeBackend::new("a", [], Step::Ok);
    let reg = HealthRegistry::new(&checked(3, 2), [a.id().clone()]).unwrap();
    let start = Instant::now();
    let checker = HealthChecker::spawn(&reg, [a.as_dyn()]).unwrap();
    sleep_until(start + ms(15_000)).await;
    checker.shutdown().await;
    sleep_until(start + ms(60_000)).await;
    assert_eq!(a.probe_times(start), [0, 10_000]);

    let b = FakeBackend::new("a", [], Step::Hang);
    let reg = HealthRegistry::new(&checked(3, 2), [b.id().clone()]).unwrap();
    let checker = HealthChecker::spawn(&reg, [b.as_dyn()]).unwrap();
    settle().await;
    drop(checker);
    sleep_until(start + ms(200_000)).await;
    assert_eq!(b.probe_times(start), [60_000], "the hung probe was dropped, no more followed");
    assert_eq!(reg.snapshot().backends[0].state, ActiveState::Unknown);
}

#[tokio::test(start_paused = true)]
async fn a_killed_backend_goes_out_and_rejoins_after_healthy_threshold_with_a_recovery_event() {
    let a = FakeBackend::new("a", [], Step::Ok);
    let mut s = checked(3, 2);
    s.breaker.consecutive_failures = 2;
    s.breaker.base_open = ms(100_000);
    s.breaker.max_open = ms(100_000);
    let reg = HealthRegistry::new(&s, [a.id().clone()]).unwrap();
    let mut rx = reg.subscribe();
    let start = Instant::now();
    let checker = HealthChecker::spawn(&reg, [a.as_dyn()]).unwrap();
    checker.ready().await;
    assert!(
        drain(&mut rx)[0].1
            == Change::Active { from: ActiveState::Unknown, to: ActiveState::Healthy }
    );

    // Killed: requests fail at once and open the circuit; probes at 10, 20, 30 s fail.
    a.set(Step::Fail);
    fail(&reg, a.id(), 2);
    assert!(!reg.is_available(a.id()));
    sleep_until(start + ms(30_001)).await;
    assert_eq!(reg.snapshot().backends[0].state, ActiveState::Unhealthy);
    // Restarted: good probes at 40 and 50 s bring it back, circuit forgotten.
    a.set(Step::Ok);
    sleep_until(start + ms(49_999)).await;
    assert!(!reg.is_available(a.id()));
    sleep_until(start + ms(50_001)).await;
    assert!(reg.is_available(a.id()), "circuit reset by active recovery");
    let events = drain(&mut rx);
    let changes: Vec<_> = events.iter().map(|(_, c)| *c).collect();
    assert_eq!(
        changes,
        [
            Change::Circuit { from: CircuitState::Closed, to: CircuitState::Open },
            Change::Active { from: ActiveState::Healthy, to: ActiveState::Unhealthy },
            Change::Active { from: ActiveState::Unhealthy, to: ActiveState::Healthy },
            Change::Circuit { from: CircuitState::Open, to: CircuitState::Closed },
        ]
    );
    let recoveries: Vec<bool> = events
        .iter()
        .map(|(b, c)| Transition { backend: BackendId::new(b), change: *c }.is_recovery())
        .collect();
    assert_eq!(recoveries, [false, false, true, true]);
    checker.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn a_passively_ejected_backend_rejoins_after_healthy_threshold_good_checks() {
    // Restarted quickly: active checks never saw it down, requests opened its circuit.
    let a = FakeBackend::new("a", [], Step::Ok);
    let mut s = checked(3, 2);
    s.breaker.consecutive_failures = 2;
    s.breaker.base_open = ms(100_000);
    s.breaker.max_open = ms(100_000);
    let reg = HealthRegistry::new(&s, [a.id().clone()]).unwrap();
    let start = Instant::now();
    let checker = HealthChecker::spawn(&reg, [a.as_dyn()]).unwrap();
    checker.ready().await;
    let mut rx = reg.subscribe();

    sleep_until(start + ms(5_000)).await;
    fail(&reg, a.id(), 2);
    assert!(!reg.is_available(a.id()));
    // Good probes at 10 s and 20 s: the second is the healthy_threshold-th since it opened.
    sleep_until(start + ms(19_999)).await;
    assert!(!reg.is_available(a.id()), "one good check is not enough");
    sleep_until(start + ms(20_001)).await;
    assert!(reg.is_available(a.id()), "two good checks take it back");
    assert_eq!(reg.snapshot().backends[0].state, ActiveState::Healthy);
    let changes: Vec<_> = drain(&mut rx).into_iter().map(|(_, c)| c).collect();
    assert_eq!(
        changes,
        [
            Change::Circuit { from: CircuitState::Closed, to: CircuitState::Open },
            Change::Circuit { from: CircuitState::Open, to: CircuitState::Closed },
        ]
    );

    // A failed check in between restarts the count.
    fail(&reg, a.id(), 2);
    a.set(Step::Fail);
    sleep_until(start + ms(30_001)).await;
    a.set(Step::Ok);
    sleep_until(start + ms(40_001)).await;
    assert!(!reg.is_available(a.id()), "the count restarted after the failed check");
    sleep_until(start + ms(50_001)).await;
    assert!(reg.is_available(a.id()));
    checker.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn per_backend_overrides_apply() {
    let fast = FakeBackend::new("fast", [], Step::Ok);
    let off = FakeBackend::new("off", [], Step::Fail);
    let mut s = checked(3, 2);
    s.checks.overrides.insert(
        "fast".into(),
        switchyard_health::CheckOverride { interval: Some(ms(1_000)), ..Default::default() },
    );
    s.checks.overrides.insert(
        "off".into(),
        switchyard_health::CheckOverride { enabled: Some(false), ..Default::default() },
    );
    let reg = HealthRegistry::new(&s, [fast.id().clone(), off.id().clone()]).unwrap();
    assert!(reg.is_available(off.id()), "unchecked backends count as healthy");
    let start = Instant::now();
    let checker = HealthChecker::spawn(&reg, [fast.as_dyn(), off.as_dyn()]).unwrap();
    sleep_until(start + ms(3_500)).await;
    assert_eq!(fast.probe_times(start), [0, 1_000, 2_000, 3_000]);
    assert!(off.probe_times(start).is_empty());
    assert_eq!(reg.snapshot().backends[1].state, ActiveState::Unchecked);
    checker.shutdown().await;
}

#[test]
fn the_checker_reports_set_up_mistakes() {
    let a = FakeBackend::new("a", [], Step::Ok);
    let reg = HealthRegistry::new(&checked(3, 2), ids(&["a", "b"])).unwrap();
    assert!(matches!(HealthChecker::spawn(&reg, [a.as_dyn()]), Err(Error::NoRuntime)));
    let rt = tokio::runtime::Builder::new_current_thread().enable_time().build().unwrap();
    rt.block_on(async {
        let err = HealthChecker::spawn(&reg, [a.as_dyn()]).unwrap_err();
        assert_eq!(
            err.to_string(),
            "backend `b` has health checks on but nothing to probe it with"
        );
        let stranger = FakeBackend::new("c", [], Step::Ok);
        let err = HealthChecker::spawn(&reg, [stranger.as_dyn()]).unwrap_err();
        assert!(matches!(err, Error::UnknownBackend(id) if id.as_str() == "c"));
    });
    assert!(matches!(
        HealthRegistry::new(&checked(3, 2), ids(&["a", "a"])),
        Err(Error::DuplicateBackend(_))
    ));
    assert!(matches!(
        HealthRegistry::new(&checked(0, 2), ids(&["a"])),
        Err(Error::InvalidSettings { .. })
    ));
}

// ---------------------------------------------------------------------------------------
// Circuit breaker and ejection.

#[tokio::test(start_paused = true)]
async fn consecutive_failures_open_the_circuit_and_a_success_resets_the_count() {
    let reg = HealthRegistry::new(&passive(3), ids(&["a", "b", "c"])).unwrap();
    let a = BackendId::new("a");
    fail(&reg, &a, 2);
    reg.admit(&a).unwrap().record(Outcome::Success, ms(5));
    fail(&reg, &a, 2);
    assert!(reg.is_available(&a), "2 + 2 failures, not 3 in a row");
    assert_eq!(reg.snapshot().backends[0].circuit_failures, 2);
    // Timeouts, 5xx and cut streams count too.
    reg.record(&a, Outcome::Failure(FailureKind::Interrupted), ms(1));
    assert!(!reg.is_available(&a));
    assert!(reg.admit(&a).is_none());
    let snap = reg.snapshot();
    assert_eq!(snap.backends[0].circuit, CircuitState::Open);
    assert_eq!(snap.backends[0].circuit_open_ms, Some(1_000));
}

#[tokio::test(start_paused = true)]
async fn backoff_doubles_per_failed_probe_up_to_the_cap_and_resets_after_success() {
    let reg = HealthRegistry::new(&passive(1), ids(&["a", "b", "c"])).unwrap();
    let a = BackendId::new("a");
    fail(&reg, &a, 1);
    for open_ms in [1_000, 2_000, 4_000, 4_000] {
        advance(ms(open_ms - 1)).await;
        assert!(!reg.is_available(&a), "still open 1 ms before {open_ms}");
        advance(ms(1)).await;
        assert!(reg.is_available(&a), "half-open after exactly {open_ms} ms");
        assert_eq!(reg.snapshot().backends[0].circuit, CircuitState::HalfOpen);
        let probe = reg.admit(&a).unwrap();
        assert!(probe.is_probe());
        probe.record(Outcome::Failure(FailureKind::Timeout), ms(1));
    }
    advance(ms(4_000)).await;
    reg.admit(&a).unwrap().record(Outcome::Success, ms(1));
    assert_eq!(reg.snapshot().backends[0].circuit, CircuitState::Closed);
    fail(&reg, &a, 1);
    advance(ms(999)).await;
    assert!(!reg.is_available(&a));
    advance(ms(1)).await;
    assert!(reg.is_available(&a), "backoff back to base after closing");
}

#[tokio::test(start_paused = true)]
async fn half_open_admits_one_probe_and_a_dropped_permit_lets_the_next_request_probe() {
    let reg = HealthRegistry::new(&passive(1), ids(&["a", "b", "c"])).unwrap();
    let a = BackendId::new("a");
    fail(&reg, &a, 1);
    advance(ms(1_000)).await;
    let probe = reg.admit(&a).unwrap();
    assert!(probe.is_probe());
    assert!(!reg.is_available(&a), "the permit is out");
    assert!(reg.admit(&a).is_none());
    // Ordinary outcomes from before the circuit opened change nothing now.
    reg.record(&a, Outcome::Success, ms(1));
    reg.record(&a, FAIL, ms(1));
    assert!(reg.admit(&a).is_none());
    drop(probe); // client went away
    let probe = reg.admit(&a).unwrap();
    assert!(probe.is_probe(), "released: the next request probes, no new backoff");
    // A 429 on the probe is not a verdict either: the permit comes back after the wait.
    probe.record(Outcome::RateLimited { retry_after: Some(ms(500)) }, ms(1));
    assert!(!reg.is_available(&a));
    advance(ms(500)).await;
    let probe = reg.admit(&a).unwrap();
    assert!(probe.is_probe());
    probe.record(Outcome::Success, ms(1));
    assert_eq!(reg.snapshot().backends[0].circuit, CircuitState::Closed);
    assert!(!reg.admit(&a).unwrap().is_probe());
}

#[test]
fn exactly_one_of_many_racing_requests_gets_the_half_open_permit() {
    let mut s = passive(1);
    s.breaker.base_open = ms(1);
    let reg = HealthRegistry::new(&s, ids(&["a"])).unwrap();
    let a = BackendId::new("a");
    fail(&reg, &a, 1);
    std::thread::sleep(ms(5));
    const THREADS: usize = 8;
    for round in 0..200 {
        let barrier = Barrier::new(THREADS);
        let admitted = AtomicUsize::new(0);
        let probes = AtomicUsize::new(0);
        let permits: Vec<_> = std::thread::scope(|scope| {
            let handles: Vec<_> = (0..THREADS)
                .map(|_| {
                    scope.spawn(|| {
                        barrier.wait();
                        let admission = reg.admit(&a);
                        if let Some(adm) = &admission {
                            admitted.fetch_add(1, Ordering::SeqCst);
                            if adm.is_probe() {
                                probes.fetch_add(1, Ordering::SeqCst);
                            }
                        }
                        admission
                    })
                })
                .collect();
            handles.into_iter().filter_map(|h| h.join().unwrap()).collect()
        });
        assert_eq!(admitted.load(Ordering::SeqCst), 1, "round {round}");
        assert_eq!(probes.load(Ordering::SeqCst), 1, "round {round}");
        drop(permits); // released: half-open again for the next round
    }
}

#[tokio::test(start_paused = true)]
async fn a_429_takes_the_backend_out_for_exactly_retry_after() {
    let reg = HealthRegistry::new(&passive(5), ids(&["a", "b", "c"])).unwrap();
    let a = BackendId::new("a");
    let mut rx = reg.subscribe();
    reg.admit(&a).unwrap().record(Outcome::RateLimited { retry_after: Some(ms(7_000)) }, ms(1));
    assert_eq!(drain(&mut rx), [("a".to_owned(), Change::RateLimited { duration: ms(7_000) })]);
    assert_eq!(reg.snapshot().backends[0].ejected_for_ms, Some(7_000));
    advance(ms(6_999)).await;
    assert!(!reg.is_available(&a));
    assert!(reg.admit(&a).is_none());
    advance(ms(1)).await;
    assert!(reg.is_available(&a));
    assert_eq!(reg.snapshot().backends[0].ejected_for_ms, None);
    assert_eq!(reg.snapshot().backends[0].circuit, CircuitState::Closed, "a 429 is not a failure");

    // No Retry-After: the default; an absurd one: the cap.
    reg.record(&a, Outcome::RateLimited { retry_after: None }, ms(1));
    advance(ms(999)).await;
    assert!(!reg.is_available(&a));
    advance(ms(1)).await;
    assert!(reg.is_available(&a));
    reg.record(&a, Outcome::from_status(429, Some(Duration::from_secs(86_400))), ms(1));
    advance(Duration::from_secs(300)).await;
    assert!(reg.is_available(&a), "capped at max_retry_after");
}

#[tokio::test(start_paused = true)]
async fn never_more_than_max_ejection_percent_is_ejected_beyond_it_everything_is_routed() {
    // Four backends at 50 %: two may be ejected.
    let reg = HealthRegistry::new(&passive(1), ids(&["a", "b", "c", "d"])).unwrap();
    let [a, b, c, d] = ["a", "b", "c", "d"].map(BackendId::new);
    fail(&reg, &a, 1);
    reg.record(&b, Outcome::RateLimited { retry_after: Some(ms(10_000)) }, ms(1));
    assert_eq!([&a, &b, &c, &d].map(|id| reg.is_available(id)), [false, false, true, true]);
    let snap = reg.snapshot();
    assert_eq!((snap.panic, snap.ejected, snap.max_ejected), (false, 2, 2));

    fail(&reg, &c, 1);
    assert_eq!([&a, &b, &c, &d].map(|id| reg.is_available(id)), [true; 4], "panic routing");
    let snap = reg.snapshot();
    assert_eq!((snap.panic, snap.ejected), (true, 3));
    assert!(snap.backends.iter().all(|b| b.available));
    let adm = reg.admit(&b).unwrap();
    assert!(!adm.is_probe(), "panic admissions are ordinary requests");
    drop(adm);

    // a's and c's backoffs end: half-open counts as available, only b is ejected.
    advance(ms(1_000)).await;
    let snap = reg.snapshot();
    assert_eq!((snap.panic, snap.ejected), (false, 1));
    assert_eq!([&b, &c].map(|id| reg.is_available(id)), [false, true], "c's backoff ended too");
}

#[tokio::test(start_paused = true)]
async fn a_pool_decides_panic_routing_among_one_models_backends() {
    let reg = HealthRegistry::new(&passive(1), ids(&["a", "b", "c", "d"])).unwrap();
    let [a, b, c, d] = ["a", "b", "c", "d"].map(BackendId::new);
    let x = reg.pool([&a, &b]);
    let y = reg.pool([&c, &d, &BackendId::new("not-tracked")]);
    fail(&reg, &a, 1);
    assert!(!x.is_available(&a) && !x.is_panicking(), "one of two may be ejected");
    fail(&reg, &b, 1);
    assert!(!reg.is_available(&a) && !reg.is_available(&b), "two of four registry-wide is allowed");
    assert!(x.is_panicking());
    assert!(x.is_available(&a) && x.is_available(&b), "both of model x's backends: panic");
    assert!(!x.admit(&a).unwrap().is_probe());
    assert!(!y.is_panicking());
    assert!(y.is_available(&c) && y.is_available(&d));
    fail(&reg, &c, 1);
    assert!(!y.is_available(&c), "y has one of two ejected");
    assert!(format!("{x:?}").contains("\"a\""));
}

#[tokio::test(start_paused = true)]
async fn panic_never_routes_to_backends_that_fail_active_checks() {
    let alive = FakeBackend::new("alive", [], Step::Ok);
    let dead = FakeBackend::new("dead", [], Step::Fail);
    let mut s = checked(3, 2);
    s.breaker.consecutive_failures = 1;
    let reg = HealthRegistry::new(&s, [alive.id().clone(), dead.id().clone()]).unwrap();
    let checker = HealthChecker::spawn(&reg, [alive.as_dyn(), dead.as_dyn()]).unwrap();
    checker.ready().await;
    // The only backend up is ejected: one may always be ejected, so no panic.
    fail(&reg, alive.id(), 1);
    assert!(!reg.is_available(alive.id()));
    assert!(!reg.is_available(dead.id()));
    let snap = reg.snapshot();
    assert_eq!((snap.panic, snap.ejected, snap.max_ejected), (false, 1, 1));
    checker.shutdown().await;

    // A lone backend can be ejected: the server then fails fast or falls back.
    let reg = HealthRegistry::new(&passive(1), ids(&["only"])).unwrap();
    fail(&reg, &BackendId::new("only"), 1);
    assert!(!reg.is_available(&BackendId::new("only")));

    // 100 % turns panic routing off.
    let mut s = passive(1);
    s.breaker.max_ejection_percent = 100;
    let reg = HealthRegistry::new(&s, ids(&["a", "b"])).unwrap();
    fail(&reg, &BackendId::new("a"), 1);
    fail(&reg, &BackendId::new("b"), 1);
    assert!(!reg.is_available(&BackendId::new("a")) && !reg.is_available(&BackendId::new("b")));
}

#[tokio::test(start_paused = true)]
async fn snapshot_serialises_for_the_admin_api() {
    let reg = HealthRegistry::new(&passive(2), ids(&["gpu-1", "gpu-2", "gpu-3"])).unwrap();
    let gpu1 = BackendId::new("gpu-1");
    reg.admit(&gpu1).unwrap().record(Outcome::Success, ms(40));
    reg.admit(&gpu1).unwrap().record(Outcome::Success, ms(90));
    fail(&reg, &gpu1, 2);
    advance(ms(250)).await;
    let json = serde_json::to_value(reg.snapshot()).unwrap();
    assert_eq!(json["panic"], false);
    let b = &json["backends"][0];
    assert_eq!(b["backend"], "gpu-1");
    assert_eq!(b["available"], false);
    assert_eq!(b["state"], "unchecked");
    assert_eq!(b["circuit"], "open");
    assert_eq!(b["circuit_open_ms"], 750);
    assert_eq!(b["ejected_for_ms"], serde_json::Value::Null);
    assert_eq!(b["last_check_ms_ago"], serde_json::Value::Null);
    assert!((b["latency_ms"].as_f64().unwrap() - 50.0).abs() < 1e-9, "{b}");
    assert_eq!(json["backends"][1]["circuit"], "closed");
    for key in [
        "consecutive_successes",
        "consecutive_failures",
        "circuit_failures",
        "warming",
        "last_error",
    ] {
        assert!(b.get(key).is_some(), "missing {key}");
    }
}

#[tokio::test(start_paused = true)]
async fn reconfigure_keeps_the_state_of_backends_that_stay() {
    let reg = HealthRegistry::new(&passive(1), ids(&["a", "b", "c"])).unwrap();
    let mut rx = reg.subscribe();
    fail(&reg, &BackendId::new("a"), 1);
    let next = reg.reconfigure(&passive(1), ids(&["a", "d", "e"])).unwrap();
    assert!(!next.is_available(&BackendId::new("a")), "a's open circuit carried over");
    assert!(next.is_available(&BackendId::new("d")));
    assert_eq!(next.backends().map(BackendId::as_str).collect::<Vec<_>>(), ["a", "d", "e"]);
    advance(ms(1_000)).await;
    next.admit(&BackendId::new("a")).unwrap().record(Outcome::Success, ms(1));
    let changes: Vec<_> = drain(&mut rx).into_iter().map(|(_, c)| c).collect();
    assert_eq!(changes.len(), 3, "old subscribers see the new registry's transitions: {changes:?}");
}

#[test]
fn outcomes_classify_statuses_and_backend_errors() {
    assert_eq!(Outcome::from_status(200, None), Outcome::Success);
    assert_eq!(Outcome::from_status(400, None), Outcome::Success, "the backend answered");
    assert_eq!(Outcome::from_status(500, None), Outcome::Failure(FailureKind::Status));
    assert_eq!(Outcome::from_status(503, None), Outcome::Failure(FailureKind::Overloaded));
    assert_eq!(
        Outcome::from_status(503, Some(ms(2_000))),
        Outcome::RateLimited { retry_after: Some(ms(2_000)) }
    );
    assert_eq!(Outcome::from_status(429, None), Outcome::RateLimited { retry_after: None });
    let e = |code| BackendError::new(code, "x");
    assert_eq!(Outcome::from_error(&e(ErrorCode::UpstreamUnavailable)), FAIL);
    assert_eq!(
        Outcome::from_error(&e(ErrorCode::UpstreamTimeout)),
        Outcome::Failure(FailureKind::Timeout)
    );
    assert_eq!(
        Outcome::from_error(&e(ErrorCode::UpstreamInvalid)),
        Outcome::Failure(FailureKind::Invalid)
    );
    assert_eq!(Outcome::from_error(&e(ErrorCode::ContextLengthExceeded)), Outcome::Success);
    assert_eq!(
        Outcome::from_error(&e(ErrorCode::RateLimited).with_retry_after(Some(ms(3)))),
        Outcome::RateLimited { retry_after: Some(ms(3)) }
    );
}

#[test]
fn metrics_report_health_circuit_transitions_and_retries() {
    let recorder = Arc::new(TestRecorder::default());
    let _guard = metrics::set_default_local_recorder(&*recorder);
    switchyard_health::metrics::describe_metrics();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .unwrap();
    rt.block_on(async {
        let a = FakeBackend::new("a", [Step::Ok], Step::Fail);
        let mut s = checked(1, 1);
        s.breaker.consecutive_failures = 1;
        let reg = HealthRegistry::new(&s, [a.id().clone(), BackendId::new("b")]).unwrap();
        let b = FakeBackend::new("b", [], Step::Ok);
        assert_eq!(recorder.get("backend_health_status{backend=a}"), Some(0.0));
        let checker = HealthChecker::spawn(&reg, [a.as_dyn(), b.as_dyn()]).unwrap();
        checker.ready().await;
        assert_eq!(recorder.get("backend_health_status{backend=a}"), Some(1.0));
        fail(&reg, &BackendId::new("b"), 1);
        assert_eq!(recorder.get("backend_circuit_state{backend=b}"), Some(1.0));
        assert_eq!(recorder.get("backend_ejections_total{backend=b,reason=circuit}"), Some(1.0));
        tokio::time::sleep(ms(10_001)).await;
        assert_eq!(recorder.get("backend_health_status{backend=a}"), Some(0.0));
        assert_eq!(
            recorder.get("backend_health_transitions_total{backend=a,kind=active,to=unhealthy}"),
            Some(1.0)
        );
        assert_eq!(recorder.get("backend_health_probes_total{backend=a,result=failed}"), Some(1.0));
        let budget = switchyard_health::RetryBudget::new(&Default::default());
        let granted = (0..5).filter(|_| budget.try_withdraw()).count();
        assert_eq!(granted, 3);
        assert_eq!(recorder.get("retries_total"), Some(3.0));
        assert_eq!(recorder.get("retry_budget_exhausted_total"), Some(2.0));
        checker.shutdown().await;
    });
}

proptest! {
    /// Whatever requests do (admit, succeed, fail, 429, abandon) and however time moves,
    /// at most one probe permit is ever out, and while it is, nothing else is admitted
    /// unless the registry is in panic mode.
    #[test]
    fn at_most_one_probe_is_ever_out(ops in proptest::collection::vec((0u8..6, 0u64..1500), 1..200)) {
        let rt = tokio::runtime::Builder::new_current_thread().enable_time().start_paused(true).build().unwrap();
        rt.block_on(async move {
            let reg = HealthRegistry::new(&passive(2), ids(&["a", "b", "c"])).unwrap();
            let a = BackendId::new("a");
            let mut held = Vec::new();
            for (op, n) in ops {
                match op {
                    0 | 1 => {
                        let probe_out = held.iter().any(switchyard_health::Admission::is_probe);
                        let panic = reg.snapshot().panic;
                        if let Some(adm) = reg.admit(&a) {
                            prop_assert!(!(adm.is_probe() && probe_out), "second permit");
                            prop_assert!(!probe_out || panic, "admitted beside the probe");
                            held.push(adm);
                        }
                    }
                    2 => if let Some(adm) = held.pop() { adm.record(Outcome::Success, ms(1)) },
                    3 => if let Some(adm) = held.pop() { adm.record(FAIL, ms(1)) },
                    4 => if !held.is_empty() {
                        let adm = held.remove(n as usize % held.len());
                        if n % 7 == 0 {
                            adm.record(Outcome::RateLimited { retry_after: Some(ms(n)) }, ms(1));
                        } else {
                            drop(adm);
                        }
                    },
                    _ => advance(ms(n)).await,
                }
                let probes = held.iter().filter(|a| a.is_probe()).count();
                prop_assert!(probes <= 1);
                let snap = reg.snapshot();
                if probes == 1 {
                    prop_assert_eq!(snap.backends[0].circuit, CircuitState::HalfOpen);
                }
            }
            Ok(())
        })?;
    }
}
