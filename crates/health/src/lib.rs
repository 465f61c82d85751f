//! Backend health for Switchyard: which backends a request may go to right now, and how
//! many retries the router may afford.
//!
//! This crate owns:
//!
//! - **Active health checks** ([`HealthChecker`]): one tokio task per backend calls the
//!   zero-token [`Backend::probe`](switchyard_core::Backend::probe) on a timer. The first
//!   probe runs at start-up and decides alone; after that a backend flips only after
//!   `unhealthy_threshold` / `healthy_threshold` *consecutive* results. A probe answered
//!   with [`ErrorCode::Overloaded`](switchyard_core::ErrorCode::Overloaded) (a 503 while a
//!   model loads) means "warming up": probed every `warmup_interval` until healthy.
//! - **Passive outlier detection** ([`HealthRegistry::admit`], [`Admission::record`]): a
//!   circuit breaker per backend (closed, open with exponential backoff, half-open letting
//!   exactly one probe request through), and 429 `Retry-After` ejection.
//! - **A lock-free read view** ([`HealthRegistry::is_available`]) for the request path:
//!   atomics only, no lock, no clock read while a backend is healthy and closed.
//! - **Retry support**: [`backoff`] (exponential, jittered, pure) and [`RetryBudget`].
//! - **The admin view** ([`HealthSnapshot`]) and metrics ([`metrics`]).
//!
//! It does not send requests, pick backends, pre-warm connections or decide which errors
//! are retried: the server does, with this crate's answers. It depends on
//! `switchyard-core` and tokio only (no HTTP stack): backends come in as
//! `Arc<dyn Backend>`.
//!
//! # Availability rules
//!
//! A tracked backend is available when all hold:
//!
//! 1. active checks consider it up ([`ActiveState::Healthy`], or checks are off for it:
//!    [`ActiveState::Unchecked`]); before its first probe answers it is
//!    [`ActiveState::Unknown`] and **not** available;
//! 2. its circuit is closed, or half-open with the probe permit free;
//! 3. no 429 holds it out.
//!
//! **Panic routing.** Rules 2 and 3 are *passive ejections*. Among the backends that pass
//! rule 1, at most `max(1, up * max_ejection_percent / 100)` may be passively ejected at
//! once. When more are, the registry is in panic mode: rules 2 and 3 are ignored for every
//! backend (requests go to ejected backends as ordinary requests, counted in
//! `health_panic_admissions_total`) until enough recover. Rule 1 always holds: a backend
//! whose probes fail is never routed to, and when none is left the server answers at once
//! (or falls back). [`HealthRegistry`] counts over all its backends; a [`HealthPool`]
//! (one per model, from [`HealthRegistry::pool`]) counts over that model's backends only,
//! which is what `max_ejection_percent` "of a model's backends" means. Either way a
//! model whose only backend is ejected is unavailable and falls back.
//! `max_ejection_percent: 100` turns panic routing off.
//!
//! **Active recovery resets the circuit.** When active checks bring a backend from
//! unhealthy to healthy, its circuit closes and its backoff is forgotten.
//!
//! # Using it on the request path
//!
//! ```
//! use std::time::Duration;
//! use switchyard_core::BackendId;
//! use switchyard_health::{
//!     FailureKind, HealthRegistry, HealthSettings, Outcome, RetryBudget, RetrySettings,
//! };
//!
//! let mut settings = HealthSettings::default();
//! settings.checks.enabled = false; // passive only; no checker needed
//! settings.breaker.consecutive_failures = 2;
//! let (a, b) = (BackendId::new("a"), BackendId::new("b"));
//! let health = HealthRegistry::new(&settings, [a.clone(), b.clone()])?;
//! let retry = RetrySettings::default();
//! let budget = RetryBudget::new(&retry.budget);
//!
//! budget.deposit(); // once per client request
//! for _ in 0..2 {
//!     let admission = health.admit(&a).expect("closed circuit admits");
//!     admission.record(Outcome::Failure(FailureKind::Connect), Duration::from_millis(3));
//! }
//! assert!(!health.is_available(&a), "two failures in a row open the circuit");
//! assert!(health.is_available(&b));
//! assert!(budget.try_withdraw(), "the budget allows this retry on b");
//! let delay = retry.backoff(0); // jittered, at most `backoff.initial`
//! assert!(delay <= retry.backoff.initial);
//!
//! let snapshot = health.snapshot();
//! assert_eq!(snapshot.backends[0].circuit, switchyard_health::CircuitState::Open);
//! # Ok::<(), switchyard_health::Error>(())
//! ```

mod active;
mod breaker;
mod checker;
mod error;
pub mod metrics;
mod registry;
mod retry;
mod settings;

pub use active::ActiveState;
pub use checker::HealthChecker;
pub use error::{Error, Result};
pub use registry::{
    Admission, BackendHealth, Change, CircuitState, FailureKind, HealthPool, HealthRegistry,
    HealthSnapshot, Outcome, Transition,
};
pub use retry::{RetryBudget, backoff, jitter};
pub use settings::{
    BackoffSettings, BreakerSettings, CheckOverride, CheckSettings, HealthSettings,
    RetryBudgetSettings, RetrySettings,
};
