//! Schema to settings: turn a validated `switchyard_config::Config` into the server's
//! settings and the library crates' settings structs. The only place that knows both.

use std::collections::HashMap;
use std::sync::Arc;

use switchyard_backends::{
    AnthropicBackend, AnthropicSettings, ClientFactory, ClientSettings, GeminiBackend,
    GeminiSettings, HttpVersion, OpenAiBackend, OpenAiSettings, Timeouts,
};
use switchyard_cache::{
    CacheSettings, DedupMode, DedupSettings, RedisSettings, ResponseCacheSettings,
};
use switchyard_config::{BackendConfig, BackendType, Config, Http2Mode};
use switchyard_core::Backend;
use switchyard_health::{
    BackoffSettings, BreakerSettings, CheckOverride, CheckSettings, HealthSettings,
    RetryBudgetSettings, RetrySettings,
};
use switchyard_inference::{InferenceSettings, LocalBackend};
use switchyard_strategy::{
    ConsistentHashSettings, LeastLatencySettings, StrategyKind, StrategySettings,
};

use crate::error::{Error, Result};
use crate::routes::{BackendSpec, RouterSpec};
use crate::state::ServerSettings;

/// The server settings of a configuration.
pub fn server_settings(config: &Config) -> ServerSettings {
    let server = &config.server;
    ServerSettings {
        bind_address: server.bind_address,
        max_request_size: usize::try_from(server.max_request_size).unwrap_or(usize::MAX),
        header_read_timeout: server.header_read_timeout,
        body_read_timeout: config.request.timeout.max(server.header_read_timeout),
        keepalive_timeout: server.keepalive_timeout,
        shutdown_grace_period: server.shutdown_grace_period,
        max_connections: server.max_connections,
        retry: retry_settings(config),
        health: health_settings(config),
        routing: strategy_settings(config),
        cache: cache_settings(config),
        auth: crate::auth::AuthSettings {
            mode: config.auth.mode,
            api_keys: config.auth.api_keys.clone(),
            admin_api_key: config.auth.admin_api_key.clone(),
        },
        rate_limit: config.rate_limit.clone(),
        metrics: config.metrics.clone(),
        admin: config.admin.clone(),
        tls: server.tls.clone(),
        expose_overhead_header: server.expose_overhead_header,
    }
}

/// [`server_settings`] plus the keys of `auth.api_keys_file`, read now: what start-up
/// and every reload use.
pub(crate) fn load_settings(config: &Config) -> Result<ServerSettings> {
    let mut settings = server_settings(config);
    if let Some(file) = &config.auth.api_keys_file {
        let keys = switchyard_config::ApiKeyConfig::load_file(file)
            .map_err(|e| Error::Config(format!("auth.api_keys_file: {e}")))?;
        settings.auth.api_keys.extend(keys);
    }
    Ok(settings)
}

/// Model-list cache, de-duplication, response cache and Redis (`cache.*`).
pub(crate) fn cache_settings(config: &Config) -> CacheSettings {
    let cache = &config.cache;
    let dedup = &cache.deduplication;
    let default_mode =
        if dedup.deterministic_only { DedupMode::Deterministic } else { DedupMode::Always };
    let defaults = CacheSettings::default();
    CacheSettings {
        model_cache_ttl: cache.model_cache_ttl,
        model_cache_max_stale: cache.model_cache_max_stale,
        // A model list is a zero-token call: give it the probe's time limit.
        model_fetch_timeout: config.health_checks.timeout.max(std::time::Duration::from_secs(1)),
        deduplication: DedupSettings {
            enabled: dedup.enabled,
            ttl: dedup.ttl,
            mode: default_mode,
            // `true` shares a model's identical requests even when sampling is random;
            // `false` never shares them.
            models: dedup
                .models
                .iter()
                .map(|(model, on)| {
                    (model.clone(), if *on { DedupMode::Always } else { DedupMode::Off })
                })
                .collect(),
            ..defaults.deduplication
        },
        response: ResponseCacheSettings {
            enabled: cache.response.enabled,
            ttl: cache.response.ttl,
            max_bytes: usize::try_from(cache.response.max_bytes).unwrap_or(usize::MAX),
            models: cache.response.models.clone(),
        },
        redis: RedisSettings {
            url: cache.redis.url.as_ref().map(|url| url.expose().to_owned()),
            key_prefix: cache.redis.key_prefix.clone(),
            timeout: cache.redis.timeout,
        },
    }
}

/// The load-balancing strategy (`routing.*`). Weights are resolved per backend by
/// `RoutingConfig::weight_for` (name, then url), so the map is not passed on.
pub(crate) fn strategy_settings(config: &Config) -> StrategySettings {
    let routing = &config.routing;
    // The config crate validated the names against the same list.
    let kind = |name: String| name.parse::<StrategyKind>().unwrap_or(StrategyKind::RoundRobin);
    StrategySettings {
        strategy: kind(routing.strategy.to_string()),
        fallback_strategy: kind(routing.fallback_strategy.to_string()),
        weights: Default::default(),
        consistent_hash: ConsistentHashSettings {
            header: routing.consistent_hash.header.clone(),
            virtual_nodes: routing.consistent_hash.virtual_nodes,
            load_factor: routing.consistent_hash.load_factor,
        },
        least_latency: LeastLatencySettings {
            decay: routing.least_latency.decay,
            exploration: routing.least_latency.exploration,
        },
    }
}

/// Retry count, backoff and budget (`request.*`).
pub(crate) fn retry_settings(config: &Config) -> RetrySettings {
    let request = &config.request;
    RetrySettings {
        max_retries: request.max_retries,
        backoff: BackoffSettings {
            initial: request.retry_backoff.initial,
            max: request.retry_backoff.max,
            multiplier: request.retry_backoff.multiplier,
            jitter: request.retry_backoff.jitter,
        },
        budget: RetryBudgetSettings {
            ratio: request.retry_budget.ratio,
            min_per_second: request.retry_budget.min_per_second,
            ..RetryBudgetSettings::default()
        },
    }
}

/// Active checks (with per-backend overrides) and the circuit breaker (`health_checks`).
pub(crate) fn health_settings(config: &Config) -> HealthSettings {
    let checks = &config.health_checks;
    let overrides = config
        .backends
        .iter()
        .map(|backend| {
            let own = &backend.health_check;
            let over = CheckOverride {
                enabled: own.enabled,
                interval: own.interval,
                timeout: own.timeout,
                unhealthy_threshold: own.unhealthy_threshold,
                healthy_threshold: own.healthy_threshold,
                ..CheckOverride::default()
            };
            (backend.name.clone(), over)
        })
        .collect();
    let breaker = &checks.circuit_breaker;
    HealthSettings {
        checks: CheckSettings {
            enabled: checks.enabled,
            interval: checks.interval,
            timeout: checks.timeout,
            unhealthy_threshold: checks.unhealthy_threshold,
            healthy_threshold: checks.healthy_threshold,
            warmup_interval: checks.warmup_interval,
            overrides,
        },
        breaker: BreakerSettings {
            enabled: breaker.enabled,
            consecutive_failures: breaker.failure_threshold,
            base_open: breaker.open_duration,
            max_open: breaker.max_open_duration,
            max_ejection_percent: checks.max_ejection_percent,
            ..BreakerSettings::default()
        },
    }
}

/// The upstream connection-pool settings of a configuration.
pub fn client_settings(config: &Config) -> ClientSettings {
    let http = &config.http_client;
    ClientSettings {
        pool_idle_timeout: http.pool_idle_timeout,
        pool_max_idle_per_host: http.pool_max_idle_per_host,
        tcp_keepalive: (!http.tcp_keepalive.is_zero()).then_some(http.tcp_keepalive),
        http2_keep_alive_interval: (!http.http2_keep_alive_interval.is_zero())
            .then_some(http.http2_keep_alive_interval),
    }
}

/// Build every configured backend and the routing spec.
pub fn router_spec(config: &Config, factory: &ClientFactory) -> Result<RouterSpec> {
    router_spec_reusing(config, factory, None)
}

/// [`router_spec`] for a reloaded configuration: a backend whose configuration is the
/// same as in the running one (`previous`: the running configuration and its spec) is
/// reused as it is — its connection pool, its state, the embedded model — instead of
/// being built again.
pub(crate) fn router_spec_reusing(
    config: &Config,
    factory: &ClientFactory,
    previous: Option<(&Config, &RouterSpec)>,
) -> Result<RouterSpec> {
    let mut backends = Vec::with_capacity(config.backends.len());
    for backend in &config.backends {
        let reused = previous.and_then(|(old, spec)| {
            let unchanged = old.request == config.request
                && old.server.connection_pool_size == config.server.connection_pool_size
                && old.inference == config.inference
                && old.backends.iter().any(|b| b == backend);
            let found = spec.backends.iter().find(|b| b.backend.id().as_str() == backend.name);
            found.filter(|_| unchanged).map(|b| b.backend.clone())
        });
        let built = match reused {
            Some(backend) => backend,
            None => build_backend(config, backend, factory)?,
        };
        let weight = config.routing.weight_for(backend);
        backends.push(BackendSpec {
            backend: built,
            models: backend.models.clone(),
            weight,
            url: backend.url.clone(),
            kind: backend.kind.to_string(),
        });
    }
    Ok(RouterSpec {
        backends,
        aliases: config.routing.model_aliases.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
        fallbacks: config
            .routing
            .fallbacks
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect::<HashMap<_, _>>(),
    })
}

fn build_backend(
    config: &Config,
    backend: &BackendConfig,
    factory: &ClientFactory,
) -> Result<Arc<dyn Backend>> {
    let timeouts = backend.effective_timeouts(&config.request);
    let timeouts = Timeouts {
        connect: timeouts.connect,
        first_byte: timeouts.first_byte,
        total: timeouts.total,
        idle: timeouts.idle,
        streaming_total: timeouts.streaming_total,
    };
    match backend.kind {
        kind if kind.is_openai_compatible() => {
            let settings = OpenAiSettings {
                name: backend.name.clone(),
                url: backend.url.clone().unwrap_or_default(),
                api_key: backend.api_key.as_ref().map(|key| key.expose().to_owned()),
                headers: headers(backend),
                http: http_version(backend.http2),
                timeouts,
                max_connections: backend.effective_max_connections(&config.server),
                health_path: backend.health_check.path.clone(),
                ca_file: backend.ca_file.clone(),
            };
            Ok(Arc::new(OpenAiBackend::new(&settings, factory)?))
        }
        BackendType::Anthropic => {
            let settings = AnthropicSettings {
                name: backend.name.clone(),
                url: backend.url.clone().unwrap_or_default(),
                api_key: backend.api_key.as_ref().map(|key| key.expose().to_owned()),
                anthropic_version: backend.anthropic_version.clone(),
                headers: headers(backend),
                http: http_version(backend.http2),
                timeouts,
                max_connections: backend.effective_max_connections(&config.server),
                health_path: backend.health_check.path.clone(),
                ca_file: backend.ca_file.clone(),
                ..AnthropicSettings::default()
            };
            Ok(Arc::new(AnthropicBackend::new(&settings, factory)?))
        }
        BackendType::Gemini => {
            let settings = GeminiSettings {
                name: backend.name.clone(),
                url: backend.url.clone().unwrap_or_default(),
                api_key: backend.api_key.as_ref().map(|key| key.expose().to_owned()),
                headers: headers(backend),
                http: http_version(backend.http2),
                timeouts,
                max_connections: backend.effective_max_connections(&config.server),
                health_path: backend.health_check.path.clone(),
                ca_file: backend.ca_file.clone(),
            };
            Ok(Arc::new(GeminiBackend::new(&settings, factory)?))
        }
        BackendType::Local => Ok(Arc::new(local_backend(config, &backend.name)?)),
        other => Err(Error::Config(format!(
            "backend `{}`: type `{other}` is not supported",
            backend.name
        ))),
    }
}

fn headers(backend: &BackendConfig) -> Vec<(String, String)> {
    backend.headers.iter().map(|(k, v)| (k.clone(), v.expose().to_owned())).collect()
}

/// The embedded model's settings (`inference.*`), with the default model path filled in.
pub(crate) fn inference_settings(config: &Config) -> InferenceSettings {
    let inference = &config.inference;
    InferenceSettings {
        model_path: Some(
            inference.model_path.clone().unwrap_or_else(switchyard_inference::default_model_path),
        ),
        model_id: inference.model_id.clone(),
        threads: inference.threads,
        batch_size: inference.batch_size,
        context_size: inference.context_size,
        max_concurrent: inference.max_concurrent,
        max_queue: inference.max_queue,
        compact_q4_1: inference.compact_q4_1,
        ..InferenceSettings::default()
    }
}

/// Load the embedded model (blocking: run it off the async runtime). A missing model
/// file is an error that says exactly how to get it.
fn local_backend(config: &Config, name: &str) -> Result<LocalBackend> {
    let settings = inference_settings(config);
    let path = settings.model_path.clone().unwrap_or_default();
    if !path.exists() {
        return Err(Error::Model(format!(
            "the embedded model is missing: {} does not exist. Fetch the default model with \
             `{}` (or point --model / inference.model_path at any GGUF file)",
            path.display(),
            switchyard_inference::FETCH_COMMAND
        )));
    }
    let started = std::time::Instant::now();
    let backend = LocalBackend::load(name, &settings)
        .map_err(|e| Error::Model(format!("cannot load {}: {e}", path.display())))?;
    tracing::info!(model = backend.model_id(), path = %path.display(), load_ms = started.elapsed().as_millis() as u64, "embedded model loaded");
    Ok(backend)
}

fn http_version(mode: Http2Mode) -> HttpVersion {
    match mode {
        Http2Mode::H2c => HttpVersion::H2c,
        Http2Mode::Http1 => HttpVersion::Http1,
        _ => HttpVersion::Auto,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn converts_a_fleet_config() {
        let config = Config::from_yaml_str(
            r#"
server: { bind_address: "0.0.0.0:9000", max_request_size: 1MiB }
backends:
  - { name: a, type: vllm, url: "http://10.0.0.1:8000", models: [m1], weight: 2 }
  - { name: b, url: "http://10.0.0.2:8000/v1", http2: h2c }
routing:
  weights: { "http://10.0.0.2:8000/v1": 5 }
  model_aliases: { fast: m1 }
  fallbacks: { m1: [m2] }
request: { max_retries: 4 }
"#,
        )
        .unwrap();
        let settings = server_settings(&config);
        assert_eq!(settings.bind_address.port(), 9000);
        assert_eq!(settings.max_request_size, 1024 * 1024);
        assert_eq!(settings.retry.max_retries, 4);
        let spec = router_spec(&config, &ClientFactory::default()).unwrap();
        let weights: Vec<u32> = spec.backends.iter().map(|b| b.weight).collect();
        assert_eq!(weights, [2, 5]);
        assert_eq!(spec.backends[0].kind, "vllm");
        assert_eq!(spec.aliases["fast"], "m1");
        assert_eq!(spec.fallbacks["m1"], ["m2"]);
    }

    #[test]
    fn inference_keys_reach_the_engine_settings() {
        let config = Config::from_yaml_str(
            "inference: { threads: 3, max_concurrent: 2, max_queue: 5, compact_q4_1: true }\n",
        )
        .unwrap();
        let settings = inference_settings(&config);
        assert_eq!((settings.threads, settings.max_concurrent, settings.max_queue), (3, 2, 5));
        assert!(settings.compact_q4_1);
        assert!(!inference_settings(&Config::default()).compact_q4_1);
        assert!(settings.model_path.is_some(), "the default model path is filled in");
    }
}
