//! The configuration of Switchyard, an LLM router: the YAML file schema, how it is
//! layered and loaded, and validation that names the offending key.
//!
//! What this crate owns:
//!
//! - the **file schema** ([`Config`] and one struct per section), typed with real types
//!   (`Duration`, byte sizes as `u64`, `SocketAddr`, `PathBuf`, enums, [`Secret`]) and
//!   the documented defaults (`Config::default()` is the zero-config embedded-model
//!   setup);
//! - **loading**: discovery (`--config`, then `./switchyard.yaml`, then
//!   `<user config dir>/switchyard/switchyard.yaml`, else defaults only), layering with
//!   figment (defaults < file < `LLM_*` env < `SWITCHYARD_*` env < command line),
//!   `${VAR}` / `${VAR:-default}` expansion;
//! - **validation** that collects every problem and reports each as
//!   `key.path: what is wrong` ([`ConfigError::Invalid`]).
//!
//! What it does not do: it builds no library settings (the server converts this schema
//! into each crate's own settings struct), watches no files and opens no sockets. It is
//! the one crate that reads environment variables for configuration, and even that goes
//! through an [`Environment`] value so tests never touch the process environment.
//!
//! Why this shape: a typo in a router's config should fail loudly at start-up with
//! every mistake listed at once, not be silently ignored or surface as a 502 an hour
//! later; so every section denies unknown keys, and loading keeps going after an error
//! (dropping the bad value) to find the next one.
//!
//! # Example
//!
//! ```
//! use std::time::Duration;
//! use switchyard_config::{BackendType, Config, Environment, Overrides, Strategy};
//!
//! let config = Config::from_yaml_str(r#"
//! backends:
//!   - { name: vllm-a, type: vllm, url: "http://10.0.0.5:8000/v1", models: [llama-3-8b] }
//! routing: { strategy: least_latency }
//! request: { timeout: 1m30s }
//! "#)?;
//! assert_eq!(config.backends[0].kind, BackendType::Vllm);
//! assert_eq!(config.routing.strategy, Strategy::LeastLatency);
//! assert_eq!(config.request.timeout, Duration::from_secs(90));
//!
//! // Mistakes are all reported, each naming its key.
//! let err = Config::from_yaml_str("server: { bind_adress: x }\nbackends: [{ name: a }]")
//!     .unwrap_err();
//! assert_eq!(err.to_string(), "backends[0].url: backend \"a\" needs a url\n\
//!     server.bind_adress: unknown key \"bind_adress\" (did you mean \"bind_address\"?)");
//!
//! // The environment layer, injected rather than read from the process.
//! let env = Environment::empty().with_var("SWITCHYARD_SERVER__WORKERS", "2")
//!     .with_var("LLM_MAX_THREADS", "1");
//! let (config, _source) = Config::load_with(&Overrides::default(), &env)?;
//! assert_eq!((config.server.workers, config.inference.threads), (2, 1));
//! # Ok::<(), switchyard_config::ConfigError>(())
//! ```

mod cidr;
mod env;
mod error;
mod load;
mod path;
mod reload;
mod schema;
mod secret;
mod suggest;
mod units;
mod validate;

pub use cidr::Cidr;
pub use env::Environment;
pub use error::{ConfigError, Issue, Result};
pub use load::{ConfigSource, Overrides};
pub use reload::restart_required;
pub use schema::{
    AdminConfig, ApiKeyConfig, AuthConfig, AuthMode, BackendConfig, BackendHealthCheck,
    BackendTimeouts, BackendType, CacheConfig, CircuitBreakerConfig, Config, ConsistentHashConfig,
    DeduplicationConfig, EffectiveHealthCheck, EffectiveTimeouts, HealthChecksConfig, Http2Mode,
    HttpClientConfig, InferenceConfig, LeastLatencyConfig, LogFormat, LoggingConfig,
    MetricsAuthConfig, MetricsConfig, RateLimitConfig, RateLimitRedisConfig, RateLimitRule,
    RedisConfig, RequestConfig, ResponseCacheConfig, RetryBackoffConfig, RetryBudgetConfig,
    RoutingConfig, ServerConfig, Strategy, TlsConfig,
};
pub use secret::Secret;
pub use units::{format_byte_size, format_duration, parse_byte_size, parse_duration};

/// A commented starter file (`switchyard config generate`): the zero-config setup
/// spelled out, with remote backends as commented examples.
pub fn starter_config() -> &'static str {
    include_str!("starter.yaml")
}
