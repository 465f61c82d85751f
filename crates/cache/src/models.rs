//! The model-list cache behind `GET /v1/models`: per backend, fresh lists are served
//! from memory, stale ones are served while a background task refreshes them
//! (stale-while-revalidate), and a backend that stops answering keeps its last good
//! list for `model_cache_max_stale` past the TTL.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use metrics::{Counter, counter};
use parking_lot::Mutex;
use switchyard_core::openai::{Model, ModelList};
use switchyard_core::{Backend, BackendId};
use tokio::sync::Notify;
use tokio::time::Instant;

use crate::metrics::{HITS, MISSES, MODEL_REFRESHES};
use crate::settings::CacheSettings;

/// The longest pause between refresh attempts of a failing backend.
const MAX_RETRY_INTERVAL: Duration = Duration::from_secs(5);

/// Cached model lists, per backend. Cheap to clone; clones share the cache.
#[derive(Clone)]
pub struct ModelCache {
    inner: Arc<ModelsInner>,
}

/// One backend's list as served.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct BackendModels {
    /// The backend.
    pub backend: BackendId,
    /// Its models, as it last reported them.
    pub models: Arc<[Model]>,
    /// How long ago it reported them.
    pub age: Duration,
    /// Whether the list is older than the TTL (a refresh is due or failing).
    pub stale: bool,
}

/// Counters of a [`ModelCache`]; one lookup is one backend's list for one request.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct ModelCacheStats {
    /// Lookups served from memory, fresh or stale.
    pub hits: u64,
    /// Lookups that had to wait for the backend, or found nothing usable.
    pub misses: u64,
    /// Successful fetches.
    pub refreshes: u64,
    /// Failed or timed-out fetches.
    pub refresh_failures: u64,
}

struct ModelsInner {
    ttl: Duration,
    max_stale: Duration,
    fetch_timeout: Duration,
    retry_interval: Duration,
    entries: Mutex<HashMap<BackendId, Arc<Entry>>>,
    hits: AtomicU64,
    misses: AtomicU64,
    refreshes: AtomicU64,
    failures: AtomicU64,
    metrics: ModelMetrics,
}

struct ModelMetrics {
    hits: Counter,
    misses: Counter,
    ok: Counter,
    error: Counter,
}

#[derive(Default)]
struct Entry {
    state: Mutex<EntryState>,
    refreshed: Notify,
}

#[derive(Default)]
struct EntryState {
    models: Option<Arc<[Model]>>,
    fetched_at: Option<Instant>,
    attempted_at: Option<Instant>,
    failed: bool,
    refreshing: bool,
}

enum Step {
    Serve(BackendModels, bool),
    Wait(bool),
    Unavailable,
}

/// Clears `refreshing` if a refresh ends without recording a result (a panic).
struct RefreshGuard {
    entry: Arc<Entry>,
}

impl ModelCache {
    /// A cache following `model_cache_ttl`, `model_cache_max_stale` and
    /// `model_fetch_timeout` from `settings`. A failing backend is retried at most
    /// every `min(ttl, 5 s)`.
    pub fn new(settings: &CacheSettings) -> Self {
        let ttl = settings.model_cache_ttl;
        ModelCache {
            inner: Arc::new(ModelsInner {
                ttl,
                max_stale: settings.model_cache_max_stale,
                fetch_timeout: settings.model_fetch_timeout,
                retry_interval: ttl.min(MAX_RETRY_INTERVAL),
                entries: Mutex::new(HashMap::new()),
                hits: AtomicU64::new(0),
                misses: AtomicU64::new(0),
                refreshes: AtomicU64::new(0),
                failures: AtomicU64::new(0),
                metrics: ModelMetrics {
                    hits: counter!(HITS, "cache" => "models", "tier" => "memory"),
                    misses: counter!(MISSES, "cache" => "models"),
                    ok: counter!(MODEL_REFRESHES, "cache" => "models", "result" => "ok"),
                    error: counter!(MODEL_REFRESHES, "cache" => "models", "result" => "error"),
                },
            }),
        }
    }

    /// Each backend's usable list, in the order given; a backend with none (never
    /// answered, or down for longer than the max staleness) is left out. Backends
    /// are looked up concurrently; only a backend without a usable list is waited
    /// for, at most `model_fetch_timeout`.
    pub async fn lookup(&self, backends: &[Arc<dyn Backend>]) -> Vec<BackendModels> {
        let lookups = backends.iter().map(|backend| self.lookup_one(Arc::clone(backend)));
        futures_util::future::join_all(lookups).await.into_iter().flatten().collect()
    }

    /// The aggregated `/v1/models` answer: every backend's models, the first backend
    /// listing an id winning.
    pub async fn list(&self, backends: &[Arc<dyn Backend>]) -> ModelList {
        let mut seen = HashSet::new();
        let mut data = Vec::new();
        for entry in self.lookup(backends).await {
            for model in entry.models.iter() {
                if seen.insert(model.id.clone()) {
                    data.push(model.clone());
                }
            }
        }
        ModelList::new(data)
    }

    /// Forget a backend's list (after a configuration change).
    pub fn invalidate(&self, backend: &BackendId) {
        self.inner.entries.lock().remove(backend);
    }

    /// The counters.
    pub fn stats(&self) -> ModelCacheStats {
        ModelCacheStats {
            hits: self.inner.hits.load(Ordering::Relaxed),
            misses: self.inner.misses.load(Ordering::Relaxed),
            refreshes: self.inner.refreshes.load(Ordering::Relaxed),
            refresh_failures: self.inner.failures.load(Ordering::Relaxed),
        }
    }

    async fn lookup_one(&self, backend: Arc<dyn Backend>) -> Option<BackendModels> {
        let entry = Arc::clone(self.inner.entries.lock().entry(backend.id().clone()).or_default());
        let notified = entry.refreshed.notified();
        let now = Instant::now();
        let step = {
            let mut st = entry.state.lock();
            let limit = self.inner.ttl.saturating_add(self.inner.max_stale);
            let usable = match (&st.models, st.fetched_at) {
                (Some(models), Some(at)) if now.duration_since(at) <= limit => {
                    Some((Arc::clone(models), now.duration_since(at)))
                }
                _ => None,
            };
            let may_retry = !st.failed
                || st
                    .attempted_at
                    .is_none_or(|at| now.duration_since(at) >= self.inner.retry_interval);
            match usable {
                Some((models, age)) => {
                    let stale = age >= self.inner.ttl;
                    let refresh = stale && !st.refreshing && may_retry;
                    if refresh {
                        st.refreshing = true;
                        st.attempted_at = Some(now);
                    }
                    let served =
                        BackendModels { backend: backend.id().clone(), models, age, stale };
                    Step::Serve(served, refresh)
                }
                None if st.refreshing => Step::Wait(false),
                None if may_retry => {
                    st.refreshing = true;
                    st.attempted_at = Some(now);
                    Step::Wait(true)
                }
                None => Step::Unavailable,
            }
        };
        match step {
            Step::Serve(served, refresh) => {
                self.inner.hits.fetch_add(1, Ordering::Relaxed);
                self.inner.metrics.hits.increment(1);
                if refresh {
                    self.spawn_refresh(Arc::clone(&entry), backend);
                }
                Some(served)
            }
            Step::Unavailable => {
                self.miss();
                None
            }
            Step::Wait(start) => {
                self.miss();
                if start {
                    self.spawn_refresh(Arc::clone(&entry), Arc::clone(&backend));
                }
                // The refresh runs in its own task: giving up here leaves it running.
                let _ = tokio::time::timeout(self.inner.fetch_timeout, notified).await;
                let st = entry.state.lock();
                let (models, at) = (st.models.clone()?, st.fetched_at?);
                let age = Instant::now().duration_since(at);
                (age <= self.inner.ttl.saturating_add(self.inner.max_stale)).then(|| {
                    BackendModels {
                        backend: backend.id().clone(),
                        models,
                        age,
                        stale: age >= self.inner.ttl,
                    }
                })
            }
        }
    }

    fn miss(&self) {
        self.inner.misses.fetch_add(1, Ordering::Relaxed);
        self.inner.metrics.misses.increment(1);
    }

    fn spawn_refresh(&self, entry: Arc<Entry>, backend: Arc<dyn Backend>) {
        let inner = Arc::clone(&self.inner);
        // Made before the task, so even a task that never runs clears `refreshing`.
        let guard = RefreshGuard { entry };
        let refresh = async move {
            let result = tokio::time::timeout(inner.fetch_timeout, backend.models()).await;
            {
                let mut st = guard.entry.state.lock();
                st.refreshing = false;
                match result {
                    Ok(Ok(models)) => {
                        st.models = Some(models.into());
                        st.fetched_at = Some(Instant::now());
                        st.failed = false;
                        inner.refreshes.fetch_add(1, Ordering::Relaxed);
                        inner.metrics.ok.increment(1);
                    }
                    Ok(Err(error)) => {
                        st.failed = true;
                        inner.failures.fetch_add(1, Ordering::Relaxed);
                        inner.metrics.error.increment(1);
                        tracing::debug!(backend = %backend.id(), error = %error, "model list refresh failed");
                    }
                    Err(_) => {
                        st.failed = true;
                        inner.failures.fetch_add(1, Ordering::Relaxed);
                        inner.metrics.error.increment(1);
                        tracing::debug!(backend = %backend.id(), "model list refresh timed out");
                    }
                }
            }
            guard.entry.refreshed.notify_waiters();
        };
        match tokio::runtime::Handle::try_current() {
            Ok(runtime) => {
                runtime.spawn(refresh);
            }
            Err(_) => tracing::warn!("model cache used outside a tokio runtime; not refreshing"),
        }
    }
}

impl Drop for RefreshGuard {
    fn drop(&mut self) {
        let mut st = self.entry.state.lock();
        if st.refreshing {
            st.refreshing = false;
            st.failed = true;
            drop(st);
            self.entry.refreshed.notify_waiters();
        }
    }
}
