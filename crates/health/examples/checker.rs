// cargo run -p switchyard-health --example checker
//! A fake backend that warms up, serves, breaks and recovers, watched by the active
//! checker while a little request loop feeds the circuit breaker.
#![allow(clippy::print_stdout, reason = "an example prints what happens")]

use std::sync::Arc;
use std::sync::atomic::{AtomicU8, Ordering};
use std::time::Duration;

use switchyard_core::openai::Model;
use switchyard_core::{
    Backend, BackendError, BackendId, BackendRequest, BackendResponse, BoxFuture, ErrorCode,
};
use switchyard_health::{
    FailureKind, HealthChecker, HealthRegistry, HealthSettings, Outcome, RetryBudget, RetrySettings,
};

const WARMING: u8 = 0;
const UP: u8 = 1;
const DOWN: u8 = 2;

/// A backend whose state the program flips.
struct Flaky {
    id: BackendId,
    state: AtomicU8,
}

impl Backend for Flaky {
    fn id(&self) -> &BackendId {
        &self.id
    }

    fn send(&self, _: BackendRequest) -> BoxFuture<'_, Result<BackendResponse, BackendError>> {
        Box::pin(async { Err(BackendError::new(ErrorCode::Unsupported, "not in this example")) })
    }

    fn models(&self) -> BoxFuture<'_, Result<Vec<Model>, BackendError>> {
        Box::pin(async { Ok(Vec::new()) })
    }

    fn probe(&self) -> BoxFuture<'_, Result<(), BackendError>> {
        let state = self.state.load(Ordering::SeqCst);
        Box::pin(async move {
            match state {
                UP => Ok(()),
                WARMING => Err(BackendError::new(ErrorCode::Overloaded, "loading model")),
                _ => Err(BackendError::new(ErrorCode::UpstreamUnavailable, "connection refused")),
            }
        })
    }
}

impl Flaky {
    /// One "request": the outcome the real server would record.
    fn call(&self) -> Outcome {
        match self.state.load(Ordering::SeqCst) {
            UP => Outcome::Success,
            _ => Outcome::Failure(FailureKind::Connect),
        }
    }
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), switchyard_health::Error> {
    let mut settings = HealthSettings::default();
    settings.checks.interval = Duration::from_millis(400);
    settings.checks.warmup_interval = Duration::from_millis(100);
    settings.checks.timeout = Duration::from_millis(100);
    settings.breaker.consecutive_failures = 3;
    settings.breaker.base_open = Duration::from_millis(200);
    let flaky = Arc::new(Flaky { id: BackendId::new("flaky"), state: AtomicU8::new(WARMING) });
    let health = HealthRegistry::new(&settings, [flaky.id.clone()])?;

    // The server would pre-warm connections on every recovery.
    let mut transitions = health.subscribe();
    tokio::spawn(async move {
        while let Ok(t) = transitions.recv().await {
            let note = if t.is_recovery() { "  <- pre-warm connections now" } else { "" };
            println!("transition {}: {:?}{note}", t.backend, t.change);
        }
    });

    let checker = HealthChecker::spawn(&health, [Arc::clone(&flaky) as Arc<dyn Backend>])?;
    checker.ready().await;
    println!("after the first probe: available = {}", health.is_available(&flaky.id));

    tokio::time::sleep(Duration::from_millis(250)).await;
    flaky.state.store(UP, Ordering::SeqCst);
    println!("model loaded; probed every 100 ms while warming");
    tokio::time::sleep(Duration::from_millis(300)).await;

    // Requests: it breaks under us, the breaker opens, retries come out of the budget.
    let retry = RetrySettings::default();
    let budget = RetryBudget::new(&retry.budget);
    let (mut served, mut refused, mut retried) = (0, 0, 0);
    for i in 0..60 {
        if i == 10 {
            flaky.state.store(DOWN, Ordering::SeqCst);
            println!("backend killed at request {i}");
        }
        if i == 40 {
            flaky.state.store(UP, Ordering::SeqCst);
            println!("backend restarted at request {i}");
        }
        budget.deposit();
        match health.admit(&flaky.id) {
            Some(admission) => {
                let probe = admission.is_probe();
                let outcome = flaky.call();
                admission.record(outcome, Duration::from_millis(2));
                if outcome == Outcome::Success {
                    served += 1;
                } else if budget.try_withdraw() {
                    retried += 1;
                }
                if probe {
                    println!("request {i} was the half-open probe: {outcome:?}");
                }
            }
            None => refused += 1,
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    println!("served {served}, refused fast {refused}, retries granted {retried}");
    let snapshot = serde_json::to_string_pretty(&health.snapshot()).unwrap_or_default();
    println!("GET /admin/health:\n{snapshot}");
    checker.shutdown().await;
    Ok(())
}
