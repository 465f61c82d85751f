//! Shared state of a running router: settings, the routing spec, the route table that
//! discovery keeps current, and request ids.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use arc_swap::ArcSwap;
use bytes::Bytes;
use http::{HeaderName, HeaderValue};
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use switchyard_cache::{CacheSettings, Caches};
use switchyard_config::{AdminConfig, MetricsConfig, RateLimitConfig, TlsConfig};
use switchyard_core::Backend;
use switchyard_core::openai::{Model, ModelList};
use switchyard_health::{HealthRegistry, HealthSettings, RetryBudget, RetrySettings};
use switchyard_strategy::{Selector, StatsRegistry, StrategySettings};

use crate::auth::{Auth, AuthSettings};
use crate::metrics::BackendMetrics;
use crate::ratelimit::RateLimiter;
use crate::routes::{RouteTable, RouterSpec, Routing};

/// Settings of the HTTP server and request pipeline (the server's own settings struct;
/// `switchyard_config` values are converted into it).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct ServerSettings {
    /// Where to listen. Default `127.0.0.1:8080`.
    pub bind_address: SocketAddr,
    /// Largest accepted request body in bytes. Default 10 MiB.
    pub max_request_size: usize,
    /// Time a client has to send request headers (slowloris guard). Default 10 s.
    pub header_read_timeout: Duration,
    /// Time a client has to send the request body. Default 30 s.
    pub body_read_timeout: Duration,
    /// Idle time before a kept-alive client connection is closed. Default 75 s.
    pub keepalive_timeout: Duration,
    /// How long SIGTERM waits for in-flight requests before closing. Default 30 s.
    pub shutdown_grace_period: Duration,
    /// Most client connections at once; further connections wait in the backlog.
    /// Default 10,000.
    pub max_connections: usize,
    /// Retries on another candidate after a failure before the first byte: how many,
    /// the backoff between them and the retry budget.
    pub retry: RetrySettings,
    /// Active health checks and the circuit breaker.
    pub health: HealthSettings,
    /// Load-balancing strategy and its tuning.
    pub routing: StrategySettings,
    /// Model-list cache, de-duplication, response cache and Redis.
    pub cache: CacheSettings,
    /// Client API keys and the admin key (`auth`). Default: no keys, auth off.
    pub auth: AuthSettings,
    /// Token-bucket rate limits (`rate_limit`). Default: off.
    pub rate_limit: RateLimitConfig,
    /// The Prometheus endpoint and its basic auth (`metrics`). Default: `/metrics`, open.
    pub metrics: MetricsConfig,
    /// Whether `/admin/*` is served (`admin`). Default: served.
    pub admin: AdminConfig,
    /// TLS termination (`server.tls`). Default: none (plain HTTP/1.1 and h2c).
    pub tls: Option<TlsConfig>,
    /// Add `x-switchyard-overhead-us` to every response. Default false.
    pub expose_overhead_header: bool,
}

/// Everything a request handler needs.
pub(crate) struct AppState {
    pub(crate) settings: ServerSettings,
    pub(crate) spec: RouterSpec,
    pub(crate) health: HealthRegistry,
    pub(crate) budget: Arc<RetryBudget>,
    pub(crate) stats: StatsRegistry,
    table: ArcSwap<RouteTable>,
    discovered: Mutex<HashMap<usize, Arc<[Model]>>>,
    /// Backends without configured models, whose lists come from the model cache.
    discovering: Vec<usize>,
    pub(crate) caches: Arc<Caches>,
    /// Each backend's name as a response header value, built once.
    pub(crate) backend_headers: Vec<HeaderValue>,
    /// `routing.consistent_hash.header` as a header name, parsed once (`None` if it is
    /// not a valid one: no request can carry it).
    pub(crate) session_header: Option<HeaderName>,
    request_ids: Arc<RequestIds>,
    /// When the first state of this router was built (uptime in `/api/health`; kept
    /// across reloads).
    pub(crate) started: std::time::Instant,
    /// Client, admin and metrics credentials.
    pub(crate) auth: Auth,
    /// Rate-limit buckets (carried across reloads that do not change them).
    pub(crate) limits: Arc<RateLimiter>,
    /// Metric handles per backend, by index into `spec.backends`.
    pub(crate) backend_metrics: Box<[BackendMetrics]>,
}

/// Request ids: a per-process random prefix and a counter. Unique, cheap, not secret.
struct RequestIds {
    prefix: u32,
    next: AtomicU64,
}

impl Default for ServerSettings {
    fn default() -> Self {
        ServerSettings {
            bind_address: SocketAddr::from(([127, 0, 0, 1], 8080)),
            max_request_size: 10 * 1024 * 1024,
            header_read_timeout: Duration::from_secs(10),
            body_read_timeout: Duration::from_secs(30),
            keepalive_timeout: Duration::from_secs(75),
            shutdown_grace_period: Duration::from_secs(30),
            max_connections: 10_000,
            retry: RetrySettings::default(),
            health: HealthSettings::default(),
            routing: StrategySettings::default(),
            cache: CacheSettings::default(),
            auth: AuthSettings::default(),
            rate_limit: RateLimitConfig::default(),
            metrics: MetricsConfig::default(),
            admin: AdminConfig::default(),
            tls: None,
            expose_overhead_header: false,
        }
    }
}

impl AppState {
    pub(crate) fn new(settings: ServerSettings, spec: RouterSpec) -> crate::Result<Self> {
        AppState::build(settings, spec, None)
    }

    /// The state for a reloaded configuration, carrying over what outlives a reload:
    /// health of backends that stay, strategy statistics, and the caches, retry budget
    /// and rate-limit buckets when their settings did not change.
    pub(crate) fn next(&self, settings: ServerSettings, spec: RouterSpec) -> crate::Result<Self> {
        AppState::build(settings, spec, Some(self))
    }

    fn build(
        settings: ServerSettings,
        spec: RouterSpec,
        previous: Option<&AppState>,
    ) -> crate::Result<Self> {
        let config_error = |e: &dyn std::fmt::Display| crate::Error::Config(e.to_string());
        let ids = spec.backends.iter().map(|b| b.backend.id().clone());
        let health = match previous {
            Some(old) => old.health.reconfigure(&settings.health, ids),
            None => HealthRegistry::new(&settings.health, ids),
        }
        .map_err(|e| config_error(&e))?;
        let budget = match previous {
            Some(old) if old.settings.retry.budget == settings.retry.budget => old.budget.clone(),
            _ => Arc::new(RetryBudget::new(&settings.retry.budget)),
        };
        let stats = previous.map_or_else(StatsRegistry::new, |old| old.stats.clone());
        // Validates the strategy settings against the whole backend set (weight keys).
        Selector::new(&settings.routing, &spec.strategy_specs(), &stats)
            .map_err(|e| config_error(&e))?;
        let caches =
            match previous {
                Some(old) if old.settings.cache == settings.cache => {
                    // Model lists of backends that left or were rebuilt are stale.
                    for gone in old.spec.backends.iter().filter(|b| {
                        !spec.backends.iter().any(|n| Arc::ptr_eq(&n.backend, &b.backend))
                    }) {
                        old.caches.models.invalidate(gone.backend.id());
                    }
                    old.caches.clone()
                }
                _ => Arc::new(Caches::new(&settings.cache).map_err(|e| config_error(&e))?),
            };
        let auth = Auth::new(&settings.auth, &settings.metrics.auth)?;
        let names: Vec<Arc<str>> =
            spec.backends.iter().map(|b| Arc::from(b.backend.id().as_str())).collect();
        let limits = match previous {
            Some(old) if old.limits.same_as(&settings.rate_limit, auth.key_count(), &names) => {
                old.limits.clone()
            }
            _ => Arc::new(RateLimiter::new(&settings.rate_limit, auth.key_count(), &names)?),
        };
        let backend_metrics = names.iter().map(|name| BackendMetrics::new(name)).collect();
        let request_ids =
            previous.map_or_else(|| Arc::new(RequestIds::new()), |old| old.request_ids.clone());
        let discovering = spec
            .backends
            .iter()
            .enumerate()
            .filter(|(_, b)| b.models.is_empty())
            .map(|(i, _)| i)
            .collect();
        let spec_headers = spec
            .backends
            .iter()
            .map(|b| {
                HeaderValue::from_str(b.backend.id().as_str())
                    .unwrap_or_else(|_| HeaderValue::from_static("(unprintable)"))
            })
            .collect();
        let session_header =
            HeaderName::from_bytes(settings.routing.consistent_hash.header.as_bytes()).ok();
        let discovered = HashMap::new();
        let routing = Routing { health: &health, stats: &stats, strategy: &settings.routing };
        let table = RouteTable::build(&spec, &routing, &discovered)
            .map_err(|e| crate::Error::Config(e.to_string()))?;
        Ok(AppState {
            settings,
            spec,
            health,
            budget,
            stats,
            table: ArcSwap::from_pointee(table),
            discovered: Mutex::new(discovered),
            discovering,
            caches,
            backend_headers: spec_headers,
            session_header,
            request_ids,
            started: previous.map_or_else(std::time::Instant::now, |old| old.started),
            auth,
            limits,
            backend_metrics,
        })
    }

    /// The current route table.
    pub(crate) fn table(&self) -> Arc<RouteTable> {
        self.table.load_full()
    }

    /// Ask every backend without configured models for its list, concurrently, and
    /// rebuild the table. A backend that fails keeps its last good list.
    pub(crate) async fn discover_models(&self) {
        if self.discovering.is_empty() {
            return;
        }
        let backends: Vec<Arc<dyn Backend>> =
            self.discovering.iter().map(|&i| self.spec.backends[i].backend.clone()).collect();
        let lists = self.caches.models.lookup(&backends).await;
        let mut found: HashMap<usize, Arc<[Model]>> = HashMap::with_capacity(lists.len());
        for list in lists {
            if let Some(&index) = self
                .discovering
                .iter()
                .find(|&&i| *self.spec.backends[i].backend.id() == list.backend)
            {
                found.insert(index, list.models);
            }
        }
        {
            let mut discovered = self.discovered.lock();
            let same = discovered.len() == found.len()
                && found.iter().all(|(i, models)| {
                    discovered.get(i).is_some_and(|old| Arc::ptr_eq(old, models) || old == models)
                });
            if same {
                return;
            }
            *discovered = found.clone();
        }
        let routing =
            Routing { health: &self.health, stats: &self.stats, strategy: &self.settings.routing };
        match RouteTable::build(&self.spec, &routing, &found) {
            Ok(table) => self.table.store(Arc::new(table)),
            Err(error) => {
                tracing::error!(%error, "cannot rebuild the route table; keeping the old one")
            }
        }
    }

    /// The `/v1/models` body: the merged list, without models no healthy backend serves.
    #[allow(dead_code)] // reason: the unfiltered list, for listings that are not per key
    pub(crate) fn models_json(&self) -> Bytes {
        self.models_json_for(None)
    }

    /// The `/v1/models` body for a client key limited to `allowed` models (by name or
    /// by what an alias resolves to); `None`: every model.
    pub(crate) fn models_json_for(
        &self,
        allowed: Option<&std::collections::HashSet<String>>,
    ) -> Bytes {
        let table = self.table();
        let data: Vec<Model> = table
            .listing()
            .iter()
            .filter(|model| {
                self.permits(allowed, &model.id) && table.is_served(&self.spec, &model.id)
            })
            .cloned()
            .collect();
        serde_json::to_vec(&ModelList::new(data)).map(Bytes::from).unwrap_or_default()
    }

    /// Whether a caller limited to `allowed` models (`None`: no limit) may see `id`,
    /// by its own name or the name it is an alias of.
    pub(crate) fn permits(
        &self,
        allowed: Option<&std::collections::HashSet<String>>,
        id: &str,
    ) -> bool {
        allowed.is_none_or(|a| a.contains(id) || a.contains(self.spec.resolve_alias(id)))
    }

    /// A request id header value: the client's own if it sent a sane one.
    pub(crate) fn request_id(&self, from_client: Option<&HeaderValue>) -> HeaderValue {
        if let Some(value) = from_client {
            let bytes = value.as_bytes();
            if !bytes.is_empty() && bytes.len() <= 128 && bytes.iter().all(|b| b.is_ascii_graphic())
            {
                return value.clone();
            }
        }
        self.request_ids.next()
    }
}

impl RequestIds {
    fn new() -> Self {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos() ^ (d.as_secs() as u32))
            .unwrap_or(0);
        let prefix = switchyard_core::fnv1a(
            &[nanos.to_le_bytes(), std::process::id().to_le_bytes()].concat(),
        );
        RequestIds { prefix: prefix as u32, next: AtomicU64::new(1) }
    }

    /// `req-` and 20 hex digits (prefix, counter), written without `format!`: this runs
    /// on every request.
    fn next(&self) -> HeaderValue {
        const HEX: &[u8; 16] = b"0123456789abcdef";
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        let mut id = *b"req-00000000000000000000";
        for (i, slot) in id[4..12].iter_mut().enumerate() {
            *slot = HEX[((self.prefix >> (28 - 4 * i)) & 0xf) as usize];
        }
        for (i, slot) in id[12..].iter_mut().enumerate() {
            *slot = HEX[((n >> (44 - 4 * i)) & 0xf) as usize];
        }
        HeaderValue::from_bytes(&id).unwrap_or_else(|_| HeaderValue::from_static("req-unknown"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_ids_are_unique_and_client_ids_are_kept_when_sane() {
        let state = AppState::new(ServerSettings::default(), RouterSpec::default()).unwrap();
        let a = state.request_id(None);
        let b = state.request_id(None);
        assert_ne!(a, b);
        assert!(a.to_str().unwrap().starts_with("req-"));
        assert_eq!(a.len(), 24);
        let (a, b) = (a.to_str().unwrap(), b.to_str().unwrap());
        assert_eq!(a[..12], b[..12], "same process prefix");
        assert_eq!(
            u64::from_str_radix(&b[12..], 16).unwrap(),
            u64::from_str_radix(&a[12..], 16).unwrap() + 1
        );
        let client = HeaderValue::from_static("abc-123");
        assert_eq!(state.request_id(Some(&client)), client);
        let weird = HeaderValue::from_static("has space");
        assert_ne!(state.request_id(Some(&weird)), weird);
    }
}
