//! The model-list cache against a scriptable backend.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use switchyard_cache::{CacheSettings, ModelCache};
use switchyard_core::openai::Model;
use switchyard_core::{
    Backend, BackendError, BackendId, BackendRequest, BackendResponse, BoxFuture, ErrorCode,
};

struct FakeBackend {
    id: BackendId,
    models: Vec<&'static str>,
    down: AtomicBool,
    delay: Duration,
    calls: AtomicUsize,
}

impl FakeBackend {
    fn new(name: &str, models: Vec<&'static str>, delay: Duration) -> Arc<Self> {
        Arc::new(FakeBackend {
            id: BackendId::new(name),
            models,
            down: AtomicBool::new(false),
            delay,
            calls: AtomicUsize::new(0),
        })
    }
}

impl Backend for FakeBackend {
    fn id(&self) -> &BackendId {
        &self.id
    }

    fn send(
        &self,
        _request: BackendRequest,
    ) -> BoxFuture<'_, Result<BackendResponse, BackendError>> {
        Box::pin(async { Err(BackendError::new(ErrorCode::Unsupported, "not in this test")) })
    }

    fn models(&self) -> BoxFuture<'_, Result<Vec<Model>, BackendError>> {
        Box::pin(async move {
            self.calls.fetch_add(1, Ordering::SeqCst);
            tokio::time::sleep(self.delay).await;
            if self.down.load(Ordering::SeqCst) {
                return Err(BackendError::new(
                    ErrorCode::UpstreamUnavailable,
                    "connection refused",
                ));
            }
            Ok(self.models.iter().map(|id| Model::new(*id, self.id.as_str())).collect())
        })
    }

    fn probe(&self) -> BoxFuture<'_, Result<(), BackendError>> {
        Box::pin(async { Ok(()) })
    }
}

fn settings() -> CacheSettings {
    CacheSettings {
        model_cache_ttl: Duration::from_secs(300),
        model_cache_max_stale: Duration::from_secs(600),
        model_fetch_timeout: Duration::from_secs(2),
        ..CacheSettings::default()
    }
}

fn ids(list: &switchyard_core::openai::ModelList) -> Vec<&str> {
    list.data.iter().map(|m| m.id.as_str()).collect()
}

#[tokio::test(start_paused = true)]
async fn serves_fresh_then_stale_while_revalidating() {
    let cache = ModelCache::new(&settings());
    let a = FakeBackend::new("a", vec!["m1", "m2"], Duration::from_millis(50));
    let b = FakeBackend::new("b", vec!["m2", "m3"], Duration::from_millis(50));
    let backends: Vec<Arc<dyn Backend>> = vec![a.clone(), b.clone()];

    // Cold: concurrent requests wait for one fetch per backend.
    let (x, y) = tokio::join!(cache.list(&backends), cache.list(&backends));
    assert_eq!(ids(&x), ["m1", "m2", "m3"], "merged, first backend wins a shared id");
    assert_eq!(ids(&y), ids(&x));
    assert_eq!(x.data[1].owned_by, "a");
    assert_eq!((a.calls.load(Ordering::SeqCst), b.calls.load(Ordering::SeqCst)), (1, 1));

    // Fresh: no backend calls.
    tokio::time::advance(Duration::from_secs(299)).await;
    assert_eq!(ids(&cache.list(&backends).await), ["m1", "m2", "m3"]);
    assert_eq!(a.calls.load(Ordering::SeqCst), 1);

    // Stale: served at once, refreshed in the background, once.
    tokio::time::advance(Duration::from_secs(2)).await;
    let started = tokio::time::Instant::now();
    let lookup = cache.lookup(&backends).await;
    assert_eq!(started.elapsed(), Duration::ZERO, "no waiting for a stale list");
    assert!(lookup.iter().all(|entry| entry.stale));
    cache.list(&backends).await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(a.calls.load(Ordering::SeqCst), 2);
    let lookup = cache.lookup(&backends).await;
    assert!(lookup.iter().all(|entry| !entry.stale), "refreshed");
    let stats = cache.stats();
    assert_eq!((stats.misses, stats.refreshes), (4, 4));
}

#[tokio::test(start_paused = true)]
async fn a_down_backend_keeps_its_last_good_list_until_max_stale() {
    let cache = ModelCache::new(&settings());
    let up = FakeBackend::new("up", vec!["u"], Duration::from_millis(10));
    let flaky = FakeBackend::new("flaky", vec!["f"], Duration::from_millis(10));
    let backends: Vec<Arc<dyn Backend>> = vec![up.clone(), flaky.clone()];
    assert_eq!(ids(&cache.list(&backends).await), ["u", "f"]);
    flaky.down.store(true, Ordering::SeqCst);

    // Past the TTL and within max_stale: still listed, refreshes failing behind it.
    for _ in 0..60 {
        tokio::time::advance(Duration::from_secs(10)).await;
        assert_eq!(ids(&cache.list(&backends).await), ["u", "f"]);
    }
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert!(cache.stats().refresh_failures >= 1);
    // Failing refreshes are rate-limited: at most one per 5 s, not one per request.
    let attempts = flaky.calls.load(Ordering::SeqCst);
    assert!(attempts <= 1 + 600 / 5, "{attempts} attempts");

    // Past ttl + max_stale (900 s since the last good list): dropped.
    tokio::time::advance(Duration::from_secs(301)).await;
    assert_eq!(ids(&cache.list(&backends).await), ["u"]);
    // Back up: listed again.
    flaky.down.store(false, Ordering::SeqCst);
    tokio::time::advance(Duration::from_secs(5)).await;
    assert_eq!(ids(&cache.list(&backends).await), ["u", "f"]);
}

#[tokio::test(start_paused = true)]
async fn hit_rate_over_an_hour_of_traffic_is_far_above_eighty_percent() {
    let cache = ModelCache::new(&settings());
    let backends: Vec<Arc<dyn Backend>> = (0..3)
        .map(|i| {
            FakeBackend::new(&format!("b{i}"), vec!["m"], Duration::from_millis(20))
                as Arc<dyn Backend>
        })
        .collect();
    // One /v1/models request every 2 s for an hour.
    for _ in 0..1800 {
        cache.list(&backends).await;
        tokio::time::advance(Duration::from_secs(2)).await;
    }
    let stats = cache.stats();
    let rate = stats.hits as f64 / (stats.hits + stats.misses) as f64;
    assert!(rate > 0.99, "hit rate {rate:.4} ({stats:?})");
    assert_eq!(stats.misses, 3, "only the cold start waits");
}

#[tokio::test(start_paused = true)]
async fn a_hanging_backend_costs_at_most_the_fetch_timeout() {
    let cache = ModelCache::new(&settings());
    let hung = FakeBackend::new("hung", vec!["h"], Duration::from_secs(3600));
    let backends: Vec<Arc<dyn Backend>> = vec![hung];
    let started = tokio::time::Instant::now();
    assert!(cache.list(&backends).await.data.is_empty());
    assert_eq!(started.elapsed(), Duration::from_secs(2));
}
