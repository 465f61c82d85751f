//! The health registry: per-backend state in atomics, read lock-free on every request.

use std::collections::HashMap;
use std::fmt;
use std::hash::{BuildHasherDefault, Hasher};
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, AtomicU64, Ordering};
use std::time::Duration;

use parking_lot::Mutex;
use serde::Serialize;
use switchyard_core::{BackendError, BackendId, ErrorCode};
use tokio::sync::broadcast;
use tokio::time::Instant;

use crate::active::{ActiveState, ProbeResult, Tracker};
use crate::breaker::{self, Circuit, Policy, ProbeEnd, millis_ceil};
use crate::error::{Error, Result};
use crate::metrics;
use crate::settings::{BreakerSettings, HealthSettings, ResolvedCheck};

const TRANSITION_CAPACITY: usize = 256;
const LATENCY_ALPHA: f64 = 0.2;

/// The health of every backend, shared by the checker, the request path and the admin API.
///
/// Cheap to clone (one `Arc`). Reads ([`is_available`](Self::is_available), and
/// [`admit`](Self::admit) for a closed circuit) are a hash lookup and a few atomic
/// loads; they take no lock and do not read the clock unless the backend is ejected.
#[derive(Clone)]
pub struct HealthRegistry {
    inner: Arc<Inner>,
}

/// The registry seen from one model's backends: the same state, but panic routing counts
/// ejections among these backends only (`max_ejection_percent` "of a model's backends").
/// Build one per model when the configuration loads; cheap to clone.
#[derive(Clone)]
pub struct HealthPool {
    inner: Arc<Inner>,
    members: Arc<[usize]>,
}

/// Permission to send one request to a backend, from [`HealthRegistry::admit`].
///
/// Report how it went with [`record`](Self::record). If the circuit was half-open this is
/// its one probe permit: the outcome closes or re-opens the circuit, and dropping it
/// without an outcome (the client went away) lets the next request probe instead.
#[must_use = "record the outcome, or drop the admission if the request was abandoned"]
pub struct Admission {
    inner: Option<Arc<Inner>>,
    index: usize,
    probe: Option<u64>,
}

/// How one request to a backend went, as passive health counts it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Outcome {
    /// The backend answered: a 2xx, or a 4xx about the request itself (other than 429).
    Success,
    /// It failed in a way that says something about its health.
    Failure(FailureKind),
    /// It asked us to back off (429, or an overload with `Retry-After`): it takes no
    /// requests for `retry_after` (or `breaker.default_retry_after`), capped at
    /// `breaker.max_retry_after`. Neither a success nor a failure for the circuit.
    RateLimited {
        /// The backend's `Retry-After`.
        retry_after: Option<Duration>,
    },
}

/// The kinds of failure that count towards opening a circuit.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum FailureKind {
    /// Connection refused, reset or DNS failure before a response.
    Connect,
    /// No response (or no first byte) in time.
    Timeout,
    /// A 5xx status other than 503.
    Status,
    /// 503, or the local model's queue is full, without `Retry-After`.
    Overloaded,
    /// A response we could not use (garbage, wrong shape).
    Invalid,
    /// A streamed response was cut after it started.
    Interrupted,
}

/// A backend's circuit, as the admin API shows it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum CircuitState {
    /// Requests flow.
    Closed,
    /// No requests until the backoff elapses.
    Open,
    /// The backoff elapsed: the next request is the one probe (or it is already out).
    HalfOpen,
}

/// A change in a backend's health, published on [`HealthRegistry::subscribe`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Transition {
    /// Which backend.
    pub backend: BackendId,
    /// What changed.
    pub change: Change,
}

/// What changed in a [`Transition`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Change {
    /// Active checks moved the backend between states.
    Active {
        /// The old state.
        from: ActiveState,
        /// The new state.
        to: ActiveState,
    },
    /// The circuit breaker changed state.
    Circuit {
        /// The old state.
        from: CircuitState,
        /// The new state.
        to: CircuitState,
    },
    /// The backend was taken out for `duration` after a 429.
    RateLimited {
        /// How long it is out.
        duration: Duration,
    },
}

/// Everything `GET /admin/health` shows.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct HealthSnapshot {
    /// Whether more than the allowed share of backends is passively ejected, so passive
    /// ejections are being ignored.
    pub panic: bool,
    /// Backends that active checks consider up but passive detection has ejected.
    pub ejected: usize,
    /// How many of those may be ejected before panic routing starts.
    pub max_ejected: usize,
    /// One entry per backend, in registration order.
    pub backends: Vec<BackendHealth>,
}

/// One backend in a [`HealthSnapshot`].
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct BackendHealth {
    /// The backend's name.
    pub backend: String,
    /// What [`HealthRegistry::is_available`] says right now.
    pub available: bool,
    /// What active checks say.
    pub state: ActiveState,
    /// Whether its last probe said it is warming up (probed at `warmup_interval`).
    pub warming: bool,
    /// Milliseconds since the last probe finished; `None` before the first.
    pub last_check_ms_ago: Option<u64>,
    /// The last probe's error, if it failed.
    pub last_error: Option<String>,
    /// Consecutive good probes.
    pub consecutive_successes: u32,
    /// Consecutive failed probes.
    pub consecutive_failures: u32,
    /// The circuit breaker's state.
    pub circuit: CircuitState,
    /// Consecutive failed requests while the circuit is closed.
    pub circuit_failures: u32,
    /// Milliseconds until an open circuit goes half-open.
    pub circuit_open_ms: Option<u64>,
    /// Milliseconds until a 429 ejection ends.
    pub ejected_for_ms: Option<u64>,
    /// Moving average of successful request latency, in milliseconds.
    pub latency_ms: Option<f64>,
}

struct Inner {
    epoch: Instant,
    slots: Box<[Slot]>,
    index: HashMap<BackendId, usize, BuildHasherDefault<Fnv>>,
    breaker: BreakerSettings,
    policy: Policy,
    transitions: broadcast::Sender<Transition>,
}

/// One backend. The first cache line holds what the read path loads.
#[repr(align(64))]
struct Slot {
    active: AtomicU8,
    circuit: AtomicU64,
    /// Registry milliseconds until which a 429 keeps it out; 0 for none.
    rate_limited_until: AtomicU64,
    id: BackendId,
    check: ResolvedCheck,
    probe_seq: AtomicU64,
    /// Written on every success, so on a line of its own.
    latency_us: CacheLine<AtomicU64>,
    detail: Mutex<Detail>,
    health_gauge: ::metrics::Gauge,
    circuit_gauge: ::metrics::Gauge,
}

/// Checker-side detail, read only by snapshots.
struct Detail {
    tracker: Tracker,
    last_check: Option<Instant>,
    last_error: Option<String>,
    /// Consecutive good probes seen while the circuit was not closed.
    open_streak: u32,
}

#[repr(align(64))]
struct CacheLine<T>(T);

/// FNV-1a: backend names are short, and SipHash costs more than the rest of a lookup.
#[derive(Default)]
struct Fnv(u64);

impl HealthRegistry {
    /// A registry tracking `backends` (names must be unique). Backends with active checks
    /// start [`ActiveState::Unknown`] and are not available until their first probe
    /// passes; start a [`HealthChecker`](crate::HealthChecker) and await its
    /// [`ready`](crate::HealthChecker::ready) before serving.
    pub fn new(
        settings: &HealthSettings,
        backends: impl IntoIterator<Item = BackendId>,
    ) -> Result<Self> {
        settings.validate()?;
        let (transitions, _) = broadcast::channel(TRANSITION_CAPACITY);
        let inner = Inner::build(settings, backends, Instant::now(), transitions, None)?;
        Ok(HealthRegistry { inner: Arc::new(inner) })
    }

    /// A new registry for a reloaded configuration. Backends in both keep their state
    /// (health, counts, circuit, ejections); new ones start as in [`new`](Self::new).
    /// Subscribers keep receiving transitions. Admissions taken from the old registry
    /// record into the old one; start a new checker on the new registry.
    pub fn reconfigure(
        &self,
        settings: &HealthSettings,
        backends: impl IntoIterator<Item = BackendId>,
    ) -> Result<Self> {
        settings.validate()?;
        let old = &*self.inner;
        let inner =
            Inner::build(settings, backends, old.epoch, old.transitions.clone(), Some(old))?;
        Ok(HealthRegistry { inner: Arc::new(inner) })
    }

    /// Whether a request may go to `id` now: active checks pass, and its circuit is
    /// closed or half-open with the probe permit free, and no 429 holds it out, or too
    /// many backends are ejected (panic routing). Unknown ids are available: the registry
    /// vetoes only what it tracks. Takes nothing; [`admit`](Self::admit) before sending.
    pub fn is_available(&self, id: &BackendId) -> bool {
        match self.inner.index.get(id) {
            Some(&i) => self.inner.available(i, None),
            None => true,
        }
    }

    /// Admit one request to `id`, or `None` if it is unavailable. When its circuit is
    /// half-open exactly one caller gets the probe permit
    /// ([`Admission::is_probe`]); everyone else gets `None` until that probe ends.
    pub fn admit(&self, id: &BackendId) -> Option<Admission> {
        match self.inner.index.get(id) {
            Some(&i) => Inner::admit(&self.inner, i, None),
            None => Some(Admission { inner: None, index: 0, probe: None }),
        }
    }

    /// A view over `backends` (ids the registry does not track are left out) whose panic
    /// routing counts only them. Take it again after [`reconfigure`](Self::reconfigure).
    pub fn pool<'a>(&self, backends: impl IntoIterator<Item = &'a BackendId>) -> HealthPool {
        let mut members: Vec<usize> =
            backends.into_iter().filter_map(|id| self.inner.index.get(id).copied()).collect();
        members.sort_unstable();
        members.dedup();
        HealthPool { inner: Arc::clone(&self.inner), members: members.into() }
    }

    /// Record an outcome that no [`Admission`] carries (a stream cut after its admission
    /// was recorded, a model-list fetch). It never resolves a half-open probe.
    pub fn record(&self, id: &BackendId, outcome: Outcome, latency: Duration) {
        if let Some(&i) = self.inner.index.get(id) {
            self.inner.record(i, outcome, latency, None);
        }
    }

    /// Transitions from now on: health flips, circuit changes, 429 ejections. A receiver
    /// that falls more than 256 behind loses the oldest. Use
    /// [`Transition::is_recovery`] to pre-warm connections.
    pub fn subscribe(&self) -> broadcast::Receiver<Transition> {
        self.inner.transitions.subscribe()
    }

    /// The state of every backend, for `GET /admin/health`.
    pub fn snapshot(&self) -> HealthSnapshot {
        self.inner.snapshot()
    }

    /// The tracked backends, in registration order.
    pub fn backends(&self) -> impl Iterator<Item = &BackendId> + '_ {
        self.inner.slots.iter().map(|s| &s.id)
    }

    pub(crate) fn index_of(&self, id: &BackendId) -> Option<usize> {
        self.inner.index.get(id).copied()
    }

    pub(crate) fn check_settings(&self, index: usize) -> ResolvedCheck {
        self.inner.slots[index].check
    }

    pub(crate) fn observe_probe(
        &self,
        index: usize,
        result: std::result::Result<(), BackendError>,
    ) -> Duration {
        self.inner.observe_probe(index, result)
    }
}

impl HealthPool {
    /// [`HealthRegistry::is_available`], with panic routing decided within this pool.
    pub fn is_available(&self, id: &BackendId) -> bool {
        match self.inner.index.get(id) {
            Some(&i) => self.inner.available(i, Some(&self.members)),
            None => true,
        }
    }

    /// [`HealthRegistry::admit`], with panic routing decided within this pool.
    pub fn admit(&self, id: &BackendId) -> Option<Admission> {
        match self.inner.index.get(id) {
            Some(&i) => Inner::admit(&self.inner, i, Some(&self.members)),
            None => Some(Admission { inner: None, index: 0, probe: None }),
        }
    }

    /// Whether more than `max_ejection_percent` of this pool is passively ejected.
    pub fn is_panicking(&self) -> bool {
        self.inner.panic(self.inner.now_ms(), Some(&self.members)).0
    }
}

impl Admission {
    /// Whether this is the half-open circuit's single probe.
    pub fn is_probe(&self) -> bool {
        self.probe.is_some()
    }

    /// Report how the request went. `latency` is time to the response head (or to the
    /// failure); it feeds the snapshot's moving average on success.
    pub fn record(mut self, outcome: Outcome, latency: Duration) {
        if let Some(inner) = self.inner.take() {
            inner.record(self.index, outcome, latency, self.probe.take());
        }
    }
}

impl Drop for Admission {
    fn drop(&mut self) {
        if let (Some(inner), Some(seq)) = (&self.inner, self.probe) {
            inner.end_probe(self.index, seq, ProbeEnd::Released);
        }
    }
}

impl Outcome {
    /// Classify a backend error: retryable upstream codes are failures, 429s (and
    /// overloads that carry `Retry-After`) are rate limits, and errors about the request
    /// itself are successes, because the backend answered.
    pub fn from_error(error: &BackendError) -> Outcome {
        match error.code {
            ErrorCode::RateLimited => Outcome::RateLimited { retry_after: error.retry_after },
            ErrorCode::Overloaded if error.retry_after.is_some() => {
                Outcome::RateLimited { retry_after: error.retry_after }
            }
            ErrorCode::Overloaded => Outcome::Failure(FailureKind::Overloaded),
            ErrorCode::UpstreamUnavailable => Outcome::Failure(FailureKind::Connect),
            ErrorCode::UpstreamTimeout => Outcome::Failure(FailureKind::Timeout),
            ErrorCode::UpstreamInvalid => Outcome::Failure(FailureKind::Invalid),
            ErrorCode::UpstreamStatus => Outcome::Failure(FailureKind::Status),
            _ => Outcome::Success,
        }
    }

    /// Classify a response status: 429 is a rate limit, 503 an overload (a rate limit if
    /// it carries `Retry-After`), other 5xx failures, anything else a success.
    pub fn from_status(status: u16, retry_after: Option<Duration>) -> Outcome {
        match status {
            429 => Outcome::RateLimited { retry_after },
            503 if retry_after.is_some() => Outcome::RateLimited { retry_after },
            503 => Outcome::Failure(FailureKind::Overloaded),
            500..=599 => Outcome::Failure(FailureKind::Status),
            _ => Outcome::Success,
        }
    }
}

impl FailureKind {
    /// A short name for logs and metric labels.
    pub const fn as_str(self) -> &'static str {
        match self {
            FailureKind::Connect => "connect",
            FailureKind::Timeout => "timeout",
            FailureKind::Status => "status",
            FailureKind::Overloaded => "overloaded",
            FailureKind::Invalid => "invalid",
            FailureKind::Interrupted => "interrupted",
        }
    }
}

impl CircuitState {
    /// The name used in snapshots and metric labels.
    pub const fn as_str(self) -> &'static str {
        match self {
            CircuitState::Closed => "closed",
            CircuitState::Open => "open",
            CircuitState::HalfOpen => "half_open",
        }
    }

    const fn gauge(self) -> f64 {
        match self {
            CircuitState::Closed => 0.0,
            CircuitState::Open => 1.0,
            CircuitState::HalfOpen => 2.0,
        }
    }

    fn of(circuit: Circuit, now: u64) -> CircuitState {
        match circuit {
            Circuit::Closed { .. } => CircuitState::Closed,
            Circuit::Open { until, .. } if until > now => CircuitState::Open,
            Circuit::Open { .. } | Circuit::Probing { .. } => CircuitState::HalfOpen,
        }
    }
}

impl Transition {
    /// Whether the backend just became usable again (active checks passed, including the
    /// first pass at start-up, or its circuit closed): the moment to pre-warm connections.
    pub fn is_recovery(&self) -> bool {
        matches!(
            self.change,
            Change::Active { to: ActiveState::Healthy, .. }
                | Change::Circuit { to: CircuitState::Closed, .. }
        )
    }
}

impl Inner {
    fn build(
        settings: &HealthSettings,
        backends: impl IntoIterator<Item = BackendId>,
        epoch: Instant,
        transitions: broadcast::Sender<Transition>,
        previous: Option<&Inner>,
    ) -> Result<Inner> {
        let mut slots = Vec::new();
        let mut index = HashMap::default();
        for id in backends {
            if index.insert(id.clone(), slots.len()).is_some() {
                return Err(Error::DuplicateBackend(id));
            }
            let mut check = settings.checks.resolve(&id);
            check.enabled &= settings.checks.enabled;
            let checked = check.enabled;
            let old = previous.and_then(|p| p.index.get(&id).map(|&i| &p.slots[i]));
            slots.push(Slot::new(id, check, checked, old));
        }
        let b = &settings.breaker;
        Ok(Inner {
            epoch,
            slots: slots.into_boxed_slice(),
            index,
            breaker: b.clone(),
            policy: Policy::new(b.consecutive_failures, b.base_open, b.max_open),
            transitions,
        })
    }

    /// Milliseconds on the registry clock, starting at 1 so 0 can mean "never".
    fn now_ms(&self) -> u64 {
        let e = self.epoch.elapsed();
        // Not `as_millis`: u128 arithmetic shows up on this path.
        e.as_secs()
            .saturating_mul(1000)
            .saturating_add(u64::from(e.subsec_millis()))
            .min(u64::MAX / 4)
            + 1
    }

    fn available(&self, i: usize, scope: Option<&[usize]>) -> bool {
        let s = &self.slots[i];
        if !s.active_up() {
            return false;
        }
        let c = s.circuit.load(Ordering::Acquire);
        let r = s.rate_limited_until.load(Ordering::Acquire);
        if breaker::is_closed(c) && r == 0 {
            return true;
        }
        let now = self.now_ms();
        if !s.rate_limited(r, now)
            && match Circuit::decode(c) {
                Circuit::Closed { .. } => true,
                Circuit::Open { until, .. } => until <= now,
                Circuit::Probing { .. } => false,
            }
        {
            return true;
        }
        self.panic(now, scope).0
    }

    fn admit(this: &Arc<Inner>, i: usize, scope: Option<&[usize]>) -> Option<Admission> {
        let s = &this.slots[i];
        if !s.active_up() {
            return None;
        }
        let plain = || Some(Admission { inner: Some(Arc::clone(this)), index: i, probe: None });
        let mut c = s.circuit.load(Ordering::Acquire);
        let r = s.rate_limited_until.load(Ordering::Acquire);
        if breaker::is_closed(c) && r == 0 {
            return plain();
        }
        let now = this.now_ms();
        if s.rate_limited(r, now) {
            return this.panic_admit(i, now, scope);
        }
        loop {
            match Circuit::decode(c) {
                Circuit::Closed { .. } => return plain(),
                open @ Circuit::Open { until, .. } if until <= now => {
                    let seq = s.probe_seq.fetch_add(1, Ordering::Relaxed).wrapping_add(1);
                    let probing = open.try_probe(now, seq)?;
                    match s.circuit.compare_exchange(
                        c,
                        probing.encode(),
                        Ordering::AcqRel,
                        Ordering::Acquire,
                    ) {
                        Ok(_) => {
                            this.circuit_changed(s, CircuitState::Open, CircuitState::HalfOpen);
                            let probe = probing.permit();
                            return Some(Admission {
                                inner: Some(Arc::clone(this)),
                                index: i,
                                probe,
                            });
                        }
                        Err(actual) => c = actual,
                    }
                }
                _ => return this.panic_admit(i, now, scope),
            }
        }
    }

    fn panic_admit(
        self: &Arc<Self>,
        i: usize,
        now: u64,
        scope: Option<&[usize]>,
    ) -> Option<Admission> {
        if !self.panic(now, scope).0 {
            return None;
        }
        ::metrics::counter!(metrics::HEALTH_PANIC_ADMISSIONS_TOTAL).increment(1);
        Some(Admission { inner: Some(Arc::clone(self)), index: i, probe: None })
    }

    /// (panic, ejected, allowed): passive ejections among the backends of `scope` (all
    /// when `None`) that active checks consider up, against
    /// `max(1, up * max_ejection_percent / 100)`.
    fn panic(&self, now: u64, scope: Option<&[usize]>) -> (bool, usize, usize) {
        let (mut up, mut ejected) = (0usize, 0usize);
        let members: &mut dyn Iterator<Item = &Slot> = match scope {
            Some(members) => &mut members.iter().map(|&i| &self.slots[i]),
            None => &mut self.slots.iter(),
        };
        for s in members.filter(|s| s.active_up()) {
            up += 1;
            let r = s.rate_limited_until.load(Ordering::Acquire);
            if r > now || Circuit::decode(s.circuit.load(Ordering::Acquire)).is_ejecting(now) {
                ejected += 1;
            }
        }
        let pct = usize::from(self.breaker.max_ejection_percent.min(100));
        let allowed = (up * pct / 100).max(1);
        (pct < 100 && ejected > allowed, ejected, allowed)
    }

    fn record(&self, i: usize, outcome: Outcome, latency: Duration, probe: Option<u64>) {
        let s = &self.slots[i];
        if outcome == Outcome::Success {
            s.observe_latency(latency);
        }
        if !self.breaker.enabled {
            return;
        }
        match outcome {
            Outcome::Success => match probe {
                Some(seq) => self.end_probe(i, seq, ProbeEnd::Success),
                None => {
                    if s.circuit.load(Ordering::Relaxed) != breaker::CLOSED {
                        let _ = s.circuit.fetch_update(Ordering::AcqRel, Ordering::Acquire, |w| {
                            let next = Circuit::decode(w).on_success().encode();
                            (next != w).then_some(next)
                        });
                    }
                }
            },
            Outcome::Failure(_) => match probe {
                Some(seq) => self.end_probe(i, seq, ProbeEnd::Failure),
                None => {
                    let now = self.now_ms();
                    let changed =
                        s.circuit.fetch_update(Ordering::AcqRel, Ordering::Acquire, |w| {
                            let next = Circuit::decode(w).on_failure(now, &self.policy).encode();
                            (next != w).then_some(next)
                        });
                    if let Ok(prev) = changed {
                        let from = Circuit::decode(prev);
                        if matches!(
                            (from, from.on_failure(now, &self.policy)),
                            (Circuit::Closed { .. }, Circuit::Open { .. })
                        ) {
                            self.ejected(s, "circuit");
                            self.circuit_changed(s, CircuitState::Closed, CircuitState::Open);
                        }
                    }
                }
            },
            Outcome::RateLimited { retry_after } => {
                let now = self.now_ms();
                let wait = retry_after
                    .unwrap_or(self.breaker.default_retry_after)
                    .min(self.breaker.max_retry_after);
                let until = now.saturating_add(millis_ceil(wait).max(1));
                let prev = s.rate_limited_until.fetch_max(until, Ordering::AcqRel);
                if prev <= now {
                    self.ejected(s, "rate_limited");
                    self.publish(s, Change::RateLimited { duration: wait });
                }
                if let Some(seq) = probe {
                    self.end_probe(i, seq, ProbeEnd::Released);
                }
            }
        }
    }

    fn end_probe(&self, i: usize, seq: u64, end: ProbeEnd) {
        let s = &self.slots[i];
        let now = self.now_ms();
        let changed = s.circuit.fetch_update(Ordering::AcqRel, Ordering::Acquire, |w| {
            Circuit::decode(w).end_probe(seq, end, now, &self.policy).map(Circuit::encode)
        });
        if changed.is_ok() {
            match end {
                ProbeEnd::Success => {
                    self.circuit_changed(s, CircuitState::HalfOpen, CircuitState::Closed)
                }
                ProbeEnd::Failure => {
                    self.ejected(s, "circuit");
                    self.circuit_changed(s, CircuitState::HalfOpen, CircuitState::Open);
                }
                ProbeEnd::Released => {}
            }
        }
    }

    fn observe_probe(&self, i: usize, result: std::result::Result<(), BackendError>) -> Duration {
        let s = &self.slots[i];
        let kind = match &result {
            Ok(()) => ProbeResult::Ok,
            Err(e) if e.code == ErrorCode::Overloaded => ProbeResult::Warming,
            Err(_) => ProbeResult::Failed,
        };
        let circuit_closed = breaker::is_closed(s.circuit.load(Ordering::Acquire));
        let (change, next, uneject) = {
            let mut d = s.detail.lock();
            let from = d.tracker.state;
            let change = d.tracker.observe(kind, &s.check).map(|to| (from, to));
            if let Some((_, to)) = change {
                s.active.store(to.to_u8(), Ordering::Release);
            }
            d.last_check = Some(Instant::now());
            d.last_error = result.err().map(|e| format!("{}: {}", e.code, e.message));
            // A passively ejected backend that passes `healthy_threshold` consecutive
            // active checks after its ejection is taken back (like Envoy's
            // `successful_active_health_check_uneject_host`): a restarted backend rejoins
            // after that many good checks even when active checks never saw it down.
            d.open_streak = match (circuit_closed, kind) {
                (false, ProbeResult::Ok) => d.open_streak.saturating_add(1),
                _ => 0,
            };
            let uneject = d.open_streak >= s.check.healthy_threshold;
            if uneject {
                d.open_streak = 0;
            }
            (change, d.tracker.next_interval(&s.check), uneject)
        };
        if uneject && change.is_none() {
            let prev = Circuit::decode(s.circuit.swap(breaker::CLOSED, Ordering::AcqRel));
            let was = CircuitState::of(prev, self.now_ms());
            if was != CircuitState::Closed {
                self.circuit_changed(s, was, CircuitState::Closed);
            }
        }
        let label = match kind {
            ProbeResult::Ok => "ok",
            ProbeResult::Warming => "warming",
            ProbeResult::Failed => "failed",
        };
        ::metrics::counter!(metrics::BACKEND_HEALTH_PROBES_TOTAL, "backend" => s.id.to_string(), "result" => label)
            .increment(1);
        if let Some((from, to)) = change {
            s.health_gauge.set(if to.is_up() { 1.0 } else { 0.0 });
            ::metrics::counter!(
                metrics::BACKEND_HEALTH_TRANSITIONS_TOTAL,
                "backend" => s.id.to_string(), "kind" => "active", "to" => to.as_str()
            )
            .increment(1);
            self.publish(s, Change::Active { from, to });
            if from == ActiveState::Unhealthy && to == ActiveState::Healthy {
                // Independent evidence of recovery: forget the circuit's backoff.
                let prev = Circuit::decode(s.circuit.swap(breaker::CLOSED, Ordering::AcqRel));
                let was = CircuitState::of(prev, self.now_ms());
                if was != CircuitState::Closed {
                    self.circuit_changed(s, was, CircuitState::Closed);
                }
            }
        }
        next
    }

    fn circuit_changed(&self, s: &Slot, from: CircuitState, to: CircuitState) {
        s.circuit_gauge.set(to.gauge());
        ::metrics::counter!(
            metrics::BACKEND_HEALTH_TRANSITIONS_TOTAL,
            "backend" => s.id.to_string(), "kind" => "circuit", "to" => to.as_str()
        )
        .increment(1);
        self.publish(s, Change::Circuit { from, to });
    }

    fn ejected(&self, s: &Slot, reason: &'static str) {
        ::metrics::counter!(metrics::BACKEND_EJECTIONS_TOTAL, "backend" => s.id.to_string(), "reason" => reason)
            .increment(1);
    }

    fn publish(&self, s: &Slot, change: Change) {
        // No subscriber is fine.
        let _ = self.transitions.send(Transition { backend: s.id.clone(), change });
    }

    fn snapshot(&self) -> HealthSnapshot {
        let now = self.now_ms();
        let (panic, ejected, max_ejected) = self.panic(now, None);
        let backends = self
            .slots
            .iter()
            .enumerate()
            .map(|(i, s)| {
                let (tracker, last_check, last_error) = {
                    let d = s.detail.lock();
                    (d.tracker, d.last_check, d.last_error.clone())
                };
                let circuit = Circuit::decode(s.circuit.load(Ordering::Acquire));
                let r = s.rate_limited_until.load(Ordering::Acquire);
                let latency = f64::from_bits(s.latency_us.0.load(Ordering::Relaxed));
                BackendHealth {
                    backend: s.id.to_string(),
                    available: self.available(i, None),
                    state: s.active_state(),
                    warming: tracker.warming,
                    last_check_ms_ago: last_check.map(|t| millis_ceil(t.elapsed())),
                    last_error,
                    consecutive_successes: tracker.successes,
                    consecutive_failures: tracker.failures,
                    circuit: CircuitState::of(circuit, now),
                    circuit_failures: match circuit {
                        Circuit::Closed { failures } => u32::from(failures),
                        _ => 0,
                    },
                    circuit_open_ms: match circuit {
                        Circuit::Open { until, .. } if until > now => Some(until - now),
                        _ => None,
                    },
                    ejected_for_ms: (r > now).then(|| r - now),
                    latency_ms: (latency > 0.0).then_some(latency / 1000.0),
                }
            })
            .collect();
        HealthSnapshot { panic, ejected, max_ejected, backends }
    }
}

impl Slot {
    fn new(id: BackendId, check: ResolvedCheck, checked: bool, old: Option<&Slot>) -> Slot {
        let label = id.to_string();
        let mut tracker = Tracker::new(checked);
        let mut detail = Detail { tracker, last_check: None, last_error: None, open_streak: 0 };
        if let Some(old) = old {
            let d = old.detail.lock();
            // Keep the counts only if the backend stays checked (or unchecked).
            let was_checked = d.tracker.state != ActiveState::Unchecked;
            if was_checked == checked {
                tracker = d.tracker;
                detail = Detail {
                    tracker,
                    last_check: d.last_check,
                    last_error: d.last_error.clone(),
                    open_streak: 0,
                };
            }
        }
        let slot = Slot {
            active: AtomicU8::new(tracker.state.to_u8()),
            circuit: AtomicU64::new(
                old.map_or(breaker::CLOSED, |o| o.circuit.load(Ordering::Acquire)),
            ),
            rate_limited_until: AtomicU64::new(
                old.map_or(0, |o| o.rate_limited_until.load(Ordering::Acquire)),
            ),
            id,
            check,
            probe_seq: AtomicU64::new(old.map_or(0, |o| o.probe_seq.load(Ordering::Relaxed))),
            latency_us: CacheLine(AtomicU64::new(
                old.map_or(0, |o| o.latency_us.0.load(Ordering::Relaxed)),
            )),
            detail: Mutex::new(detail),
            health_gauge: ::metrics::gauge!(metrics::BACKEND_HEALTH_STATUS, "backend" => label.clone()),
            circuit_gauge: ::metrics::gauge!(metrics::BACKEND_CIRCUIT_STATE, "backend" => label),
        };
        slot.health_gauge.set(if tracker.state.is_up() { 1.0 } else { 0.0 });
        slot.circuit_gauge.set(
            CircuitState::of(Circuit::decode(slot.circuit.load(Ordering::Relaxed)), 0).gauge(),
        );
        slot
    }

    fn active_state(&self) -> ActiveState {
        ActiveState::from_u8(self.active.load(Ordering::Acquire))
    }

    fn active_up(&self) -> bool {
        self.active_state().is_up()
    }

    /// Whether a 429 holds it out at `now`; clears an expired mark so later reads take
    /// the fast path again.
    fn rate_limited(&self, until: u64, now: u64) -> bool {
        if until == 0 {
            return false;
        }
        if until > now {
            return true;
        }
        let _ =
            self.rate_limited_until.compare_exchange(until, 0, Ordering::AcqRel, Ordering::Relaxed);
        false
    }

    /// A racy moving average: a lost update under contention only drops one sample.
    fn observe_latency(&self, latency: Duration) {
        let sample = latency.as_secs_f64() * 1e6;
        let old = f64::from_bits(self.latency_us.0.load(Ordering::Relaxed));
        let new = if old > 0.0 {
            old + LATENCY_ALPHA * (sample - old)
        } else {
            sample.max(f64::MIN_POSITIVE)
        };
        self.latency_us.0.store(new.to_bits(), Ordering::Relaxed);
    }
}

impl Hasher for Fnv {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        let mut hash = if self.0 == 0 { 0xcbf2_9ce4_8422_2325 } else { self.0 };
        for &b in bytes {
            hash ^= u64::from(b);
            hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
        }
        self.0 = hash;
    }
}

impl fmt::Debug for HealthRegistry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HealthRegistry")
            .field("backends", &self.inner.slots.len())
            .finish_non_exhaustive()
    }
}

impl fmt::Debug for HealthPool {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ids: Vec<&BackendId> = self.members.iter().map(|&i| &self.inner.slots[i].id).collect();
        f.debug_struct("HealthPool").field("backends", &ids).finish()
    }
}

impl fmt::Debug for Admission {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let backend = self.inner.as_ref().map(|i| &i.slots[self.index].id);
        f.debug_struct("Admission")
            .field("backend", &backend)
            .field("probe", &self.probe.is_some())
            .finish()
    }
}
