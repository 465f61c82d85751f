//! Per-backend (and per backend and model) statistics: in-flight count, request and
//! error counts, moving averages of latency and success. Written by the caller through
//! an [`InFlight`] guard, read by the strategies, shown by `/admin/backends`.
//!
//! Every cell is an atomic: recording and reading never lock. The [`StatsRegistry`]
//! hands the same cells to every selector built for a backend, so rebuilding selectors
//! on reload keeps in-flight counts and averages. Its map (behind a mutex) is touched
//! only when selectors are built and snapshots taken, never per request.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Weak};
use std::time::Duration;

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
/// Finish it with [`InFlight::success`] or [`InFlight::failure`]; dropping it unfinished
/// (the client went away, the request was cancelled) only ends the in-flight count,
/// blaming nobody.
#[derive(Debug)]
#[must_use = "dropping the guard ends the request at once"]
pub struct InFlight {
    backend: Arc<BackendStats>,
    model: Option<Arc<LatencyStats>>,
    alpha: f64,
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
    /// Moving average of successful requests' latency, if any finished yet.
    #[serde(rename = "ewma_latency_ms", serialize_with = "millis")]
    pub ewma_latency: Option<Duration>,
    /// Requests started since the router started.
    pub requests: u64,
    /// Requests that failed.
    pub errors: u64,
    /// Moving average of the success rate, 1.0 before any request.
    pub success_rate: f64,
    /// Latency per model, for selectors built with [`Selector::for_model`](crate::Selector::for_model).
    pub models: Vec<ModelSnapshot>,
}

/// One backend's latency for one model.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ModelSnapshot {
    /// The model.
    pub model: String,
    /// Moving average of successful requests' latency for this model.
    #[serde(rename = "ewma_latency_ms", serialize_with = "millis")]
    pub ewma_latency: Option<Duration>,
    /// Successful requests measured.
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

/// An exponentially weighted moving average of an `f64`, lock-free.
#[derive(Debug)]
pub(crate) struct Ewma(AtomicU64);

#[derive(Debug, Default)]
struct RegistryMap {
    backends: HashMap<BackendId, Weak<BackendStats>>,
    models: HashMap<(BackendId, Arc<str>), Weak<LatencyStats>>,
}

/// The bit pattern meaning "no sample yet": a NaN no arithmetic produces.
const EMPTY: u64 = u64::MAX;

impl StatsRegistry {
    /// An empty registry.
    pub fn new() -> Self {
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
                    ewma_latency: cell.ewma.get().map(Duration::from_secs_f64),
                    samples: cell.samples.load(Relaxed),
                })
            })
            .collect();
        models.sort_by(|a, b| a.model.cmp(&b.model));
        BackendSnapshot {
            id: stats.id.clone(),
            weight: stats.weight.load(Relaxed),
            in_flight: stats.in_flight.load(Relaxed),
            ewma_latency: stats.latency.ewma.get().map(Duration::from_secs_f64),
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
        alpha: f64,
        index: usize,
    ) -> Self {
        backend.in_flight.fetch_add(1, Relaxed);
        backend.requests.fetch_add(1, Relaxed);
        InFlight { backend: Arc::clone(backend), model: model.cloned(), alpha, index }
    }

    /// The backend's index in the selector that started the request.
    pub fn index(&self) -> usize {
        self.index
    }

    /// The backend.
    pub fn backend(&self) -> &BackendId {
        &self.backend.id
    }

    /// The request succeeded after `latency`. Record time to the response head (the
    /// first byte of a stream): it measures the backend, not the answer's length.
    pub fn success(self, latency: Duration) {
        let seconds = latency.as_secs_f64();
        self.backend.latency.record(seconds, self.alpha);
        if let Some(model) = &self.model {
            model.record(seconds, self.alpha);
        }
        self.backend.success.record(1.0, self.alpha);
    }

    /// The request failed because of the backend (refused, timed out, 5xx, garbage).
    /// Its latency is not recorded: a fast failure must not look like a fast backend.
    pub fn failure(self) {
        self.backend.errors.fetch_add(1, Relaxed);
        self.backend.success.record(0.0, self.alpha);
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

    fn record(&self, seconds: f64, alpha: f64) {
        self.ewma.record(seconds, alpha);
        self.samples.fetch_add(1, Relaxed);
    }
}

impl Ewma {
    pub(crate) fn new() -> Self {
        Ewma(AtomicU64::new(EMPTY))
    }

    /// The average, or `None` before the first sample.
    pub(crate) fn get(&self) -> Option<f64> {
        let bits = self.0.load(Relaxed);
        (bits != EMPTY).then(|| f64::from_bits(bits))
    }

    /// Fold in `sample` with weight `alpha`; the first sample is taken as is.
    pub(crate) fn record(&self, sample: f64, alpha: f64) {
        // A CAS loop: concurrent recorders retry instead of losing a sample.
        let _ = self.0.fetch_update(Relaxed, Relaxed, |bits| {
            let next = if bits == EMPTY {
                sample
            } else {
                f64::from_bits(bits) * (1.0 - alpha) + sample * alpha
            };
            Some(next.to_bits())
        });
    }
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

    #[test]
    fn ewma_takes_the_first_sample_then_smooths() {
        let e = Ewma::new();
        assert_eq!(e.get(), None);
        e.record(1.0, 0.5);
        assert_eq!(e.get(), Some(1.0));
        e.record(3.0, 0.5);
        assert_eq!(e.get(), Some(2.0));
        e.record(0.0, 0.25);
        assert_eq!(e.get(), Some(1.5));
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
        let ok = InFlight::start(&stats, Some(&model), 0.5, 0);
        let bad = InFlight::start(&stats, None, 0.5, 0);
        let gone = InFlight::start(&stats, None, 0.5, 0);
        assert_eq!(registry.get(&id).unwrap().in_flight, 3);
        ok.success(Duration::from_millis(200));
        bad.failure();
        drop(gone);

        let snap = registry.get(&id).unwrap();
        assert_eq!(snap.in_flight, 0);
        assert_eq!(snap.requests, 3);
        assert_eq!(snap.errors, 1);
        assert_eq!(snap.weight, 3);
        assert_eq!(snap.ewma_latency, Some(Duration::from_millis(200)));
        assert_eq!(snap.success_rate, 0.5);
        assert_eq!(snap.models.len(), 1);
        assert_eq!(snap.models[0].samples, 1);

        let json = serde_json::to_value(&snap).unwrap();
        assert_eq!(json["id"], "b1");
        assert_eq!(json["ewma_latency_ms"], 200.0);
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
                        InFlight::start(&stats, None, 0.1, 0).success(Duration::from_millis(5));
                    }
                });
            }
        });
        let snap = registry.get(&id).unwrap();
        assert_eq!((snap.requests, snap.in_flight, snap.errors), (20_000, 0, 0));
        assert_eq!(snap.ewma_latency, Some(Duration::from_millis(5)));
    }
}
