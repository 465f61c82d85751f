//! Per-backend (and per backend and model) statistics: in-flight count, request and
//! error counts, moving averages of latency and success. Written by the caller through
//! an [`InFlight`] guard, read by the strategies, shown by `/admin/backends`.
//!
//! Averages decay with time, not with sample count: a sample's weight falls to 1/e
//! after `decay` whatever the request rate, so a quiet backend's old figures fade.
//! The total weight is capped at 20 samples, so on a busy backend the average still
//! follows a sudden slowdown within a few requests.
//!
//! Every cell is an atomic: recording and reading never lock. The [`StatsRegistry`]
//! hands the same cells to every selector built for a backend, so rebuilding selectors
//! on reload keeps in-flight counts and averages. Its map (behind a mutex) is touched
//! only when selectors are built and snapshots taken, never per request.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, OnceLock, Weak};
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use serde::{Serialize, Serializer};
use switchyard_core::BackendId;

/// Statistics shared by every selector built with it; clone it freely (one `Arc`).
///
/// Entries live as long as a selector or an in-flight request uses them: build the new
/// selectors before dropping the old ones (as an `ArcSwap::store` does) and nothing is
/// lost across a reload.
#[derive(Clone, Debug, Default)]
pub struct StatsRegistry {
    inner: Arc<Mutex<RegistryMap>>,
}

/// Records one request to one backend: counts it in flight until dropped.
///
/// When the response head arrives, [`record_latency`](InFlight::record_latency); keep
/// the guard while the body streams (the backend is still busy), then finish with
/// [`InFlight::success`] or [`InFlight::failure`]. Dropping it unfinished (the client
/// went away, the request was cancelled) only ends the in-flight count, blaming nobody.
#[derive(Debug)]
#[must_use = "dropping the guard ends the request at once"]
pub struct InFlight {
    backend: Arc<BackendStats>,
    model: Option<Arc<LatencyStats>>,
    decay: Duration,
    index: usize,
}

/// One backend's statistics at one moment, for `/admin/backends`.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct BackendSnapshot {
    /// The backend.
    #[serde(serialize_with = "id_as_str")]
    pub id: BackendId,
    /// The weight the strategy uses (after `routing.weights`).
    pub weight: u32,
    /// Requests sent and not finished yet.
    pub in_flight: u64,
    /// Time-decayed average latency (to the response head), if any was recorded.
    #[serde(rename = "ewma_latency_ms", serialize_with = "millis")]
    pub ewma_latency: Option<Duration>,
    /// Requests started since the router started.
    pub requests: u64,
    /// Requests that failed.
    pub errors: u64,
    /// Time-decayed average success rate, 1.0 before any request finished.
    pub success_rate: f64,
    /// Latency per model, for selectors built with [`Selector::for_model`](crate::Selector::for_model).
    pub models: Vec<ModelSnapshot>,
}

/// One backend's latency for one model.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ModelSnapshot {
    /// The model.
    pub model: String,
    /// Time-decayed average latency for this model.
    #[serde(rename = "ewma_latency_ms", serialize_with = "millis")]
    pub ewma_latency: Option<Duration>,
    /// Latency samples recorded.
    pub samples: u64,
}

/// A backend's cells.
#[derive(Debug)]
pub(crate) struct BackendStats {
    pub(crate) id: BackendId,
    pub(crate) weight: AtomicU32,
    pub(crate) in_flight: AtomicU64,
    requests: AtomicU64,
    errors: AtomicU64,
    pub(crate) latency: LatencyStats,
    pub(crate) success: Ewma,
}

/// A latency average and its sample count.
#[derive(Debug)]
pub(crate) struct LatencyStats {
    pub(crate) ewma: Ewma,
    samples: AtomicU64,
}

/// A time-decayed average, lock-free: the mean of all samples, each weighted by
/// `exp(-age / decay)`, with the total weight capped at [`MAX_WEIGHT`]. The mean and the total weight share one atomic word (two
/// `f32`s) so they change together; the time of the last update is claimed separately
/// with `fetch_max`, so each interval of decay is applied exactly once.
#[derive(Debug)]
pub(crate) struct Ewma {
    /// `f32` mean in the high half, `f32` total weight in the low half; weight 0 = empty.
    packed: AtomicU64,
    /// Nanoseconds since [`epoch`] of the latest sample.
    last: AtomicU64,
}
#[derive(Debug, Default)]
struct RegistryMap {
    backends: HashMap<BackendId, Weak<BackendStats>>,
    models: HashMap<(BackendId, Arc<str>), Weak<LatencyStats>>,
}

/// Most total weight an average carries: at high request rates it spans the last ~20
/// samples rather than the whole decay period, so a sudden slowdown shows within a few
/// requests instead of after thousands.
const MAX_WEIGHT: f64 = 20.0;

/// The instant statistics count time from: the first registry's creation.
fn epoch() -> Instant {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    *EPOCH.get_or_init(Instant::now)
}

impl StatsRegistry {
    /// An empty registry.
    pub fn new() -> Self {
        epoch();
        StatsRegistry::default()
    }

    /// Every backend some selector or request still uses, sorted by name.
    pub fn snapshot(&self) -> Vec<BackendSnapshot> {
        let map = self.inner.lock();
        let mut out: Vec<BackendSnapshot> =
            map.backends.values().filter_map(Weak::upgrade).map(|b| map.snapshot(&b)).collect();
        out.sort_by(|a, b| a.id.cmp(&b.id));
        out
    }

    /// One backend's statistics, if some selector or request still uses it.
    pub fn get(&self, id: &BackendId) -> Option<BackendSnapshot> {
        let map = self.inner.lock();
        let stats = map.backends.get(id)?.upgrade()?;
        Some(map.snapshot(&stats))
    }

    /// Run `f` with the map locked: used once per selector build.
    pub(crate) fn attach<T>(&self, f: impl FnOnce(&mut Attach<'_>) -> T) -> T {
        let mut map = self.inner.lock();
        map.backends.retain(|_, weak| weak.strong_count() > 0);
        map.models.retain(|_, weak| weak.strong_count() > 0);
        f(&mut Attach { map: &mut map })
    }
}

/// The locked registry during a selector build.
pub(crate) struct Attach<'a> {
    map: &'a mut RegistryMap,
}

impl Attach<'_> {
    /// The cells of backend `id`, created if new, with its weight updated.
    pub(crate) fn backend(&mut self, id: &BackendId, weight: u32) -> Arc<BackendStats> {
        let stats = match self.map.backends.get(id).and_then(Weak::upgrade) {
            Some(stats) => stats,
            None => {
                let stats = Arc::new(BackendStats::new(id.clone()));
                self.map.backends.insert(id.clone(), Arc::downgrade(&stats));
                stats
            }
        };
        stats.weight.store(weight, Relaxed);
        stats
    }

    /// The latency cells of backend `id` for `model`, created if new.
    pub(crate) fn model(&mut self, id: &BackendId, model: &Arc<str>) -> Arc<LatencyStats> {
        let key = (id.clone(), Arc::clone(model));
        if let Some(stats) = self.map.models.get(&key).and_then(Weak::upgrade) {
            return stats;
        }
        let stats = Arc::new(LatencyStats::new());
        self.map.models.insert(key, Arc::downgrade(&stats));
        stats
    }
}

impl RegistryMap {
    fn snapshot(&self, stats: &BackendStats) -> BackendSnapshot {
        let mut models: Vec<ModelSnapshot> = self
            .models
            .iter()
            .filter(|((id, _), _)| *id == stats.id)
            .filter_map(|((_, model), weak)| {
                let cell = weak.upgrade()?;
                Some(ModelSnapshot {
                    model: model.to_string(),
                    ewma_latency: cell.ewma.get().map(micros),
                    samples: cell.samples.load(Relaxed),
                })
            })
            .collect();
        models.sort_by(|a, b| a.model.cmp(&b.model));
        BackendSnapshot {
            id: stats.id.clone(),
            weight: stats.weight.load(Relaxed),
            in_flight: stats.in_flight.load(Relaxed),
            ewma_latency: stats.latency.ewma.get().map(micros),
            requests: stats.requests.load(Relaxed),
            errors: stats.errors.load(Relaxed),
            success_rate: stats.success.get().unwrap_or(1.0),
            models,
        }
    }
}

impl InFlight {
    /// Start counting a request. Crate-internal: callers go through
    /// [`Selector::start`](crate::Selector::start).
    pub(crate) fn start(
        backend: &Arc<BackendStats>,
        model: Option<&Arc<LatencyStats>>,
        decay: Duration,
        index: usize,
    ) -> Self {
        backend.in_flight.fetch_add(1, Relaxed);
        backend.requests.fetch_add(1, Relaxed);
        InFlight { backend: Arc::clone(backend), model: model.cloned(), decay, index }
    }

    /// The backend's index in the selector that started the request.
    pub fn index(&self) -> usize {
        self.index
    }

    /// The backend.
    pub fn backend(&self) -> &BackendId {
        &self.backend.id
    }

    /// Record the time to the response head (the first byte of a stream): it measures
    /// the backend, not the length of the answer. Call it once, when the head arrives.
    pub fn record_latency(&mut self, latency: Duration) {
        self.record_latency_at(latency, Instant::now());
    }

    /// [`record_latency`](InFlight::record_latency) with the current time given, for
    /// callers that just read the clock and for simulations.
    pub fn record_latency_at(&mut self, latency: Duration, now: Instant) {
        let seconds = latency.as_secs_f64();
        self.backend.latency.record(seconds, now, self.decay);
        if let Some(model) = &self.model {
            model.record(seconds, now, self.decay);
        }
    }

    /// A request whose head and end came together (a whole body): its latency and
    /// its success, recorded at one reading of the clock.
    pub fn succeeded(mut self, latency: Duration) {
        let now = Instant::now();
        self.record_latency_at(latency, now);
        self.success_at(now);
    }

    /// The request completed normally.
    pub fn success(self) {
        self.success_at(Instant::now());
    }

    fn success_at(self, now: Instant) {
        self.backend.success.record(1.0, now, self.decay);
    }

    /// The request failed because of the backend (refused, timed out, 5xx, garbage,
    /// cut mid-stream). Failures lower the success rate, which LeastLatency divides by;
    /// their latency is never recorded, so a fast failure cannot look like a fast backend.
    pub fn failure(self) {
        self.backend.errors.fetch_add(1, Relaxed);
        self.backend.success.record(0.0, Instant::now(), self.decay);
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.backend.in_flight.fetch_sub(1, Relaxed);
    }
}

impl BackendStats {
    fn new(id: BackendId) -> Self {
        BackendStats {
            id,
            weight: AtomicU32::new(1),
            in_flight: AtomicU64::new(0),
            requests: AtomicU64::new(0),
            errors: AtomicU64::new(0),
            latency: LatencyStats::new(),
            success: Ewma::new(),
        }
    }
}

impl LatencyStats {
    fn new() -> Self {
        LatencyStats { ewma: Ewma::new(), samples: AtomicU64::new(0) }
    }

    fn record(&self, seconds: f64, now: Instant, decay: Duration) {
        self.ewma.record(seconds, now, decay);
        self.samples.fetch_add(1, Relaxed);
    }
}

impl Ewma {
    pub(crate) fn new() -> Self {
        Ewma { packed: AtomicU64::new(0), last: AtomicU64::new(0) }
    }

    /// The average, or `None` before the first sample.
    pub(crate) fn get(&self) -> Option<f64> {
        let (mean, weight) = unpack(self.packed.load(Relaxed));
        (weight > 0.0).then_some(f64::from(mean))
    }

    /// Fold in `sample`, observed at `now`, after decaying the old weight by
    /// `exp(-elapsed / decay)`.
    pub(crate) fn record(&self, sample: f64, now: Instant, decay: Duration) {
        let at =
            u64::try_from(now.saturating_duration_since(epoch()).as_nanos()).unwrap_or(u64::MAX);
        let previous = self.last.fetch_max(at, Relaxed);
        let elapsed = at.saturating_sub(previous) as f64;
        let keep = (-elapsed / decay.as_nanos().max(1) as f64).exp();
        // A CAS loop: concurrent recorders retry instead of losing a sample.
        let _ = self.packed.fetch_update(Relaxed, Relaxed, |bits| {
            let (mean, weight) = unpack(bits);
            let old = (f64::from(weight) * keep).min(MAX_WEIGHT - 1.0);
            let total = old + 1.0;
            let next = (f64::from(mean) * old + sample) / total;
            Some(pack(next as f32, total as f32))
        });
    }
}

fn pack(mean: f32, weight: f32) -> u64 {
    (u64::from(mean.to_bits()) << 32) | u64::from(weight.to_bits())
}

fn unpack(bits: u64) -> (f32, f32) {
    (f32::from_bits((bits >> 32) as u32), f32::from_bits(bits as u32))
}

/// Seconds to a `Duration` rounded to the microsecond: the average is an `f32`, whose
/// last digits are noise.
fn micros(seconds: f64) -> Duration {
    Duration::from_micros((seconds * 1e6).round() as u64)
}

fn id_as_str<S: Serializer>(id: &BackendId, serializer: S) -> Result<S::Ok, S::Error> {
    serializer.serialize_str(id.as_str())
}

fn millis<S: Serializer>(value: &Option<Duration>, serializer: S) -> Result<S::Ok, S::Error> {
    match value {
        Some(d) => serializer.serialize_some(&(d.as_secs_f64() * 1000.0)),
        None => serializer.serialize_none(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TAU: Duration = Duration::from_secs(10);

    #[test]
    fn ewma_averages_equally_at_once_and_forgets_with_time() {
        // Times are measured from the process epoch and clamp at it: a `t0` read before
        // the epoch is set would shorten the first gap by the difference (a flake seen in
        // CI), so start at the epoch itself, as every recorder in the router does.
        let t0 = epoch();
        let e = Ewma::new();
        assert_eq!(e.get(), None);
        e.record(1.0, t0, TAU);
        assert_eq!(e.get(), Some(1.0));
        e.record(3.0, t0, TAU);
        assert_eq!(e.get(), Some(2.0));
        // One decay constant later the old pair weighs 2/e = 0.74 against the new 1.
        e.record(0.0, t0 + TAU, TAU);
        let expected = 2.0 * 2.0 * (-1f64).exp() / (2.0 * (-1f64).exp() + 1.0);
        assert!((e.get().unwrap() - expected).abs() < 1e-6, "{:?}", e.get());
        // Long silence: the next sample replaces the past.
        e.record(5.0, t0 + 100 * TAU, TAU);
        assert!((e.get().unwrap() - 5.0).abs() < 1e-3);
        // A clock read before the last sample decays nothing.
        e.record(5.0, t0, TAU);
        assert!((e.get().unwrap() - 5.0).abs() < 1e-3);
    }

    #[test]
    fn a_busy_average_follows_a_slowdown_within_a_few_samples() {
        let t0 = epoch();
        let e = Ewma::new();
        for _ in 0..10_000 {
            e.record(0.005, t0, TAU);
        }
        for _ in 0..5 {
            e.record(0.100, t0, TAU);
        }
        // 19 parts of 5ms, then five samples of 100ms each worth 1/20.
        let mean = e.get().unwrap();
        assert!(mean > 0.02, "{mean}");
    }

    #[test]
    fn guard_counts_in_flight_requests_and_errors() {
        let registry = StatsRegistry::new();
        let id = BackendId::new("b1");
        let (stats, model) = registry.attach(|a| {
            let stats = a.backend(&id, 3);
            let model = a.model(&id, &Arc::from("m"));
            (stats, model)
        });
        let mut ok = InFlight::start(&stats, Some(&model), TAU, 0);
        let bad = InFlight::start(&stats, None, TAU, 0);
        let gone = InFlight::start(&stats, None, TAU, 0);
        let whole = InFlight::start(&stats, Some(&model), TAU, 0);
        assert_eq!(registry.get(&id).unwrap().in_flight, 4);
        ok.record_latency(Duration::from_millis(200));
        // Still streaming: still in flight.
        assert_eq!(registry.get(&id).unwrap().in_flight, 4);
        ok.success();
        bad.failure();
        drop(gone);
        whole.succeeded(Duration::from_millis(200));

        let snap = registry.get(&id).unwrap();
        assert_eq!(snap.in_flight, 0);
        assert_eq!(snap.requests, 4);
        assert_eq!(snap.errors, 1);
        assert_eq!(snap.weight, 3);
        assert_eq!(snap.ewma_latency, Some(Duration::from_millis(200)));
        assert!((snap.success_rate - 2.0 / 3.0).abs() < 1e-3, "{}", snap.success_rate);
        assert_eq!(snap.models.len(), 1);
        assert_eq!(snap.models[0].samples, 2);

        let json = serde_json::to_value(&snap).unwrap();
        assert_eq!(json["id"], "b1");
        assert!((json["ewma_latency_ms"].as_f64().unwrap() - 200.0).abs() < 1e-3);
        assert_eq!(json["models"][0]["model"], "m");
    }

    #[test]
    fn entries_live_while_used_and_are_shared() {
        let registry = StatsRegistry::new();
        let id = BackendId::new("b1");
        let first = registry.attach(|a| a.backend(&id, 1));
        let again = registry.attach(|a| a.backend(&id, 2));
        assert!(Arc::ptr_eq(&first, &again));
        assert_eq!(registry.snapshot().len(), 1);
        drop((first, again));
        assert!(registry.snapshot().is_empty());
        assert!(registry.get(&id).is_none());
    }

    #[test]
    fn concurrent_recording_loses_nothing() {
        let registry = StatsRegistry::new();
        let id = BackendId::new("b1");
        let stats = registry.attach(|a| a.backend(&id, 1));
        std::thread::scope(|s| {
            for _ in 0..2 {
                s.spawn(|| {
                    for _ in 0..10_000 {
                        let mut guard = InFlight::start(&stats, None, TAU, 0);
                        guard.record_latency(Duration::from_millis(5));
                        guard.success();
                    }
                });
            }
        });
        let snap = registry.get(&id).unwrap();
        assert_eq!((snap.requests, snap.in_flight, snap.errors), (20_000, 0, 0));
        let ms = snap.ewma_latency.unwrap().as_secs_f64() * 1000.0;
        assert!((ms - 5.0).abs() < 1e-3, "{ms}");
        assert_eq!(snap.success_rate, 1.0);
    }
}
