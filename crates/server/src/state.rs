//! Shared state of a running router: settings, the routing spec, the route table that
//! discovery keeps current, and request ids.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use arc_swap::ArcSwap;
use bytes::Bytes;
use futures_util::future::join_all;
use http::HeaderValue;
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use switchyard_core::openai::{Model, ModelList};
use switchyard_health::{HealthRegistry, HealthSettings, RetryBudget, RetrySettings};
use switchyard_strategy::{Selector, StatsRegistry, StrategySettings};

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
    /// How often backend model lists are refreshed. Default 300 s.
    pub model_refresh_interval: Duration,
    /// Time a backend has to answer a model-list request. Default 5 s.
    pub discovery_timeout: Duration,
}

/// Everything a request handler needs.
pub(crate) struct AppState {
    pub(crate) settings: ServerSettings,
    pub(crate) spec: RouterSpec,
    pub(crate) health: HealthRegistry,
    pub(crate) budget: RetryBudget,
    pub(crate) stats: StatsRegistry,
    table: ArcSwap<TableWithListing>,
    discovered: Mutex<HashMap<usize, Vec<Model>>>,
    request_ids: RequestIds,
}

/// A route table and its `/v1/models` body, serialised once per rebuild.
pub(crate) struct TableWithListing {
    pub(crate) table: RouteTable,
    pub(crate) models_json: Bytes,
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
            model_refresh_interval: Duration::from_secs(300),
            discovery_timeout: Duration::from_secs(5),
        }
    }
}

impl AppState {
    pub(crate) fn new(settings: ServerSettings, spec: RouterSpec) -> crate::Result<Self> {
        let ids = spec.backends.iter().map(|b| b.backend.id().clone());
        let health = HealthRegistry::new(&settings.health, ids)
            .map_err(|e| crate::Error::Config(e.to_string()))?;
        let budget = RetryBudget::new(&settings.retry.budget);
        let stats = StatsRegistry::new();
        // Validates the strategy settings against the whole backend set (weight keys).
        Selector::new(&settings.routing, &spec.strategy_specs(), &stats)
            .map_err(|e| crate::Error::Config(e.to_string()))?;
        let discovered = HashMap::new();
        let routing = Routing { health: &health, stats: &stats, strategy: &settings.routing };
        let table = TableWithListing::build(&spec, &routing, &discovered)
            .map_err(|e| crate::Error::Config(e.to_string()))?;
        Ok(AppState {
            settings,
            spec,
            health,
            budget,
            stats,
            table: ArcSwap::from_pointee(table),
            discovered: Mutex::new(discovered),
            request_ids: RequestIds::new(),
        })
    }

    /// The current route table.
    pub(crate) fn table(&self) -> Arc<TableWithListing> {
        self.table.load_full()
    }

    /// Ask every backend without configured models for its list, concurrently, and
    /// rebuild the table. A backend that fails keeps its last good list.
    pub(crate) async fn discover_models(&self) {
        let timeout = self.settings.discovery_timeout;
        let asks = self.spec.backends.iter().enumerate().filter(|(_, b)| b.models.is_empty()).map(
            |(index, spec)| async move {
                let result = tokio::time::timeout(timeout, spec.backend.models()).await;
                (index, spec.backend.id().clone(), result)
            },
        );
        let results = join_all(asks).await;
        if results.is_empty() {
            return;
        }
        let snapshot = {
            let mut discovered = self.discovered.lock();
            for (index, id, result) in results {
                match result {
                    Ok(Ok(models)) => {
                        tracing::debug!(backend = %id, models = models.len(), "discovered models");
                        discovered.insert(index, models);
                    }
                    Ok(Err(error)) => {
                        tracing::warn!(backend = %id, %error, "model discovery failed");
                    }
                    Err(_) => tracing::warn!(backend = %id, "model discovery timed out"),
                }
            }
            discovered.clone()
        };
        let routing =
            Routing { health: &self.health, stats: &self.stats, strategy: &self.settings.routing };
        match TableWithListing::build(&self.spec, &routing, &snapshot) {
            Ok(table) => self.table.store(Arc::new(table)),
            Err(error) => {
                tracing::error!(%error, "cannot rebuild the route table; keeping the old one")
            }
        }
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

impl TableWithListing {
    fn build(
        spec: &RouterSpec,
        routing: &Routing<'_>,
        discovered: &HashMap<usize, Vec<Model>>,
    ) -> Result<Self, switchyard_strategy::Error> {
        let table = RouteTable::build(spec, routing, discovered)?;
        let list = ModelList::new(table.listing().to_vec());
        let models_json = serde_json::to_vec(&list).map(Bytes::from).unwrap_or_default();
        Ok(TableWithListing { table, models_json })
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

    fn next(&self) -> HeaderValue {
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        let id = format!("req-{:08x}{:012x}", self.prefix, n);
        HeaderValue::from_str(&id).unwrap_or_else(|_| HeaderValue::from_static("req-unknown"))
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
        let client = HeaderValue::from_static("abc-123");
        assert_eq!(state.request_id(Some(&client)), client);
        let weird = HeaderValue::from_static("has space");
        assert_ne!(state.request_id(Some(&weird)), weird);
    }
}
