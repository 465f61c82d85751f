//! Metric names and descriptions. Everything goes through the `metrics` facade; the
//! binary installs the exporter.

use metrics::{Unit, describe_counter, describe_gauge};

/// Gauge, label `backend`: 1 while active checks consider the backend healthy (or checks
/// are off for it), 0 otherwise.
pub const BACKEND_HEALTH_STATUS: &str = "backend_health_status";
/// Gauge, label `backend`: circuit state, 0 closed, 1 open, 2 half-open (probe out).
pub const BACKEND_CIRCUIT_STATE: &str = "backend_circuit_state";
/// Counter, labels `backend`, `kind` (`active` or `circuit`) and `to` (the new state).
pub const BACKEND_HEALTH_TRANSITIONS_TOTAL: &str = "backend_health_transitions_total";
/// Counter, labels `backend` and `reason` (`circuit` or `rate_limited`): passive ejections.
pub const BACKEND_EJECTIONS_TOTAL: &str = "backend_ejections_total";
/// Counter: active probes, labels `backend` and `result` (`ok`, `warming`, `failed`).
pub const BACKEND_HEALTH_PROBES_TOTAL: &str = "backend_health_probes_total";
/// Counter: requests admitted to an ejected backend because too many were ejected.
pub const HEALTH_PANIC_ADMISSIONS_TOTAL: &str = "health_panic_admissions_total";
/// Counter: retries the budget granted.
pub const RETRIES_TOTAL: &str = "retries_total";
/// Counter: retries the budget refused.
pub const RETRY_BUDGET_EXHAUSTED_TOTAL: &str = "retry_budget_exhausted_total";

/// Describe every metric of this crate to the installed recorder; call once at start-up,
/// after installing it.
pub fn describe_metrics() {
    describe_gauge!(
        BACKEND_HEALTH_STATUS,
        "1 if active health checks pass for the backend, else 0"
    );
    describe_gauge!(BACKEND_CIRCUIT_STATE, "circuit breaker state: 0 closed, 1 open, 2 half-open");
    describe_counter!(BACKEND_HEALTH_TRANSITIONS_TOTAL, "backend health and circuit state changes");
    describe_counter!(
        BACKEND_EJECTIONS_TOTAL,
        "backends taken out by the circuit breaker or a 429"
    );
    describe_counter!(BACKEND_HEALTH_PROBES_TOTAL, Unit::Count, "active health probes by result");
    describe_counter!(
        HEALTH_PANIC_ADMISSIONS_TOTAL,
        "requests sent to an ejected backend because more than max_ejection_percent were ejected"
    );
    describe_counter!(RETRIES_TOTAL, "upstream retries granted by the retry budget");
    describe_counter!(
        RETRY_BUDGET_EXHAUSTED_TOTAL,
        "retries refused because the retry budget was spent"
    );
}
