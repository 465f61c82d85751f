//! The typed configuration: one struct per YAML section, with the defaults a
//! configuration-free `switchyard serve` runs with.
//!
//! Every struct denies unknown fields (typos are errors, not silently ignored) and
//! defaults every field, so a file only states what differs. Values use real types:
//! [`Duration`] (written `"30s"`, `"1m30s"`, `"500ms"` or plain seconds), `u64` byte sizes
//! (written `"10MiB"`, `"512KB"` or plain bytes), [`SocketAddr`], [`PathBuf`], enums and
//! [`Secret`]. Rules that span fields (a backend needs a url, names are unique, weights
//! name known backends ...) are checked by validation after deserialisation; a
//! [`Config`] returned by the loader has passed them.
//!
//! Later features add keys here; they never rename or remove one.

use std::collections::BTreeMap;
use std::fmt;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::cidr::Cidr;
use crate::secret::Secret;
use crate::suggest;
use crate::units::{byte_size, duration, socket_addr};

/// Declares a closed set of names read case-insensitively, ignoring `_`, `-` and `.`
/// (`least_latency` == `LeastLatency`), written back in its canonical spelling.
macro_rules! name_enum {
    (
        $(#[$meta:meta])*
        pub enum $name:ident ($what:literal) {
            $( $(#[$vmeta:meta])* $variant:ident = $canonical:literal $(| $alias:literal)* ),+ $(,)?
        }
    ) => {
        $(#[$meta])*
        #[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
        #[non_exhaustive]
        pub enum $name {
            $( $(#[$vmeta])* $variant ),+
        }

        impl $name {
            /// Every valid name, in its canonical spelling.
            pub const NAMES: &'static [&'static str] = &[$($canonical),+];

            /// The canonical name, as written in the config file.
            pub const fn as_str(self) -> &'static str {
                match self {
                    $( $name::$variant => $canonical ),+
                }
            }
        }

        impl FromStr for $name {
            type Err = String;

            fn from_str(s: &str) -> Result<Self, Self::Err> {
                let wanted = suggest::normalize(s);
                $(
                    if wanted == suggest::normalize($canonical)
                        $( || wanted == suggest::normalize($alias) )*
                    {
                        return Ok($name::$variant);
                    }
                )+
                Err(unknown_name($what, s, Self::NAMES))
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl Serialize for $name {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str(self.as_str())
            }
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let text = String::deserialize(d)?;
                text.parse().map_err(serde::de::Error::custom)
            }
        }
    };
}

/// `unknown strategy "x" (did you mean "y"?); valid: a, b, c`.
fn unknown_name(what: &str, got: &str, valid: &[&str]) -> String {
    let hint = suggest::closest(got, valid.iter().copied())
        .map(|s| format!(" (did you mean {s:?}?)"))
        .unwrap_or_default();
    format!("unknown {what} {got:?}{hint}; valid: {}", valid.join(", "))
}

// ---------------------------------------------------------------------------------------
// The root.
// ---------------------------------------------------------------------------------------

/// The whole configuration: the YAML file's top-level sections.
///
/// `Config::default()` is what `switchyard serve` runs with when no file is found:
/// the embedded model as the single backend, on `127.0.0.1:8080`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// The listening side: address, limits, timeouts, TLS.
    pub server: ServerConfig,
    /// The upstreams. Default (when no layer sets `backends`): one `type: local`
    /// backend named `local`, the embedded model. A listed set replaces the default.
    pub backends: Vec<BackendConfig>,
    /// Backend selection, weights, model aliases and fallback chains.
    pub routing: RoutingConfig,
    /// Upstream request timeouts and retries.
    pub request: RequestConfig,
    /// Active health checks and the circuit breaker.
    pub health_checks: HealthChecksConfig,
    /// Model-list cache, de-duplication, response cache, Redis L2.
    pub cache: CacheConfig,
    /// The pooled upstream HTTP client.
    pub http_client: HttpClientConfig,
    /// The Prometheus endpoint.
    pub metrics: MetricsConfig,
    /// Log level and format.
    pub logging: LoggingConfig,
    /// The embedded CPU model.
    pub inference: InferenceConfig,
    /// Client API keys.
    pub auth: AuthConfig,
    /// Token-bucket rate limits.
    pub rate_limit: RateLimitConfig,
    /// The `/admin` API.
    pub admin: AdminConfig,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            server: ServerConfig::default(),
            backends: vec![BackendConfig::local()],
            routing: RoutingConfig::default(),
            request: RequestConfig::default(),
            health_checks: HealthChecksConfig::default(),
            cache: CacheConfig::default(),
            http_client: HttpClientConfig::default(),
            metrics: MetricsConfig::default(),
            logging: LoggingConfig::default(),
            inference: InferenceConfig::default(),
            auth: AuthConfig::default(),
            rate_limit: RateLimitConfig::default(),
            admin: AdminConfig::default(),
        }
    }
}

// ---------------------------------------------------------------------------------------
// server
// ---------------------------------------------------------------------------------------

/// `server`: the listening side.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ServerConfig {
    /// Address to listen on, `IP:PORT` (`localhost:PORT` is read as `127.0.0.1:PORT`).
    /// Default `127.0.0.1:8080`.
    #[serde(with = "socket_addr")]
    pub bind_address: SocketAddr,
    /// Runtime worker threads; 0 = one per core. Default 0.
    pub workers: usize,
    /// Maximum connections per backend (the upstream pool size); a backend's
    /// `max_connections` overrides it. Default 500.
    pub connection_pool_size: usize,
    /// How long an idle client keep-alive connection stays open. Default 75s.
    #[serde(with = "duration")]
    pub keepalive_timeout: Duration,
    /// Largest accepted request body; larger gets 413. Default 10MiB.
    #[serde(with = "byte_size")]
    pub max_request_size: u64,
    /// Time allowed to receive a request's headers (slowloris guard). Default 10s.
    #[serde(with = "duration")]
    pub header_read_timeout: Duration,
    /// On SIGTERM/SIGINT, how long in-flight requests may finish. Default 30s.
    #[serde(with = "duration")]
    pub shutdown_grace_period: Duration,
    /// Maximum concurrent client connections. Default 10000.
    pub max_connections: usize,
    /// TLS termination; absent = plain HTTP (HTTP/1.1 and h2c). Default absent.
    pub tls: Option<TlsConfig>,
    /// Add an `x-switchyard-overhead-us` header with the router's own time. Default false.
    pub expose_overhead_header: bool,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            bind_address: SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::LOCALHOST, 8080)),
            workers: 0,
            connection_pool_size: 500,
            keepalive_timeout: Duration::from_secs(75),
            max_request_size: 10 << 20,
            header_read_timeout: Duration::from_secs(10),
            shutdown_grace_period: Duration::from_secs(30),
            max_connections: 10_000,
            tls: None,
            expose_overhead_header: false,
        }
    }
}

/// `server.tls`: certificate chain and private key, PEM files. Validation guarantees
/// both are set when the section is present.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TlsConfig {
    /// PEM certificate chain.
    pub cert: PathBuf,
    /// PEM private key.
    pub key: PathBuf,
}

// ---------------------------------------------------------------------------------------
// backends
// ---------------------------------------------------------------------------------------

name_enum! {
    /// `backends[].type`: which protocol the backend speaks.
    pub enum BackendType ("backend type") {
        /// OpenAI's API, or any OpenAI-compatible server.
        #[default]
        OpenAi = "openai",
        /// vLLM's OpenAI-compatible server.
        Vllm = "vllm",
        /// Ollama (its `/v1` OpenAI-compatible API).
        Ollama = "ollama",
        /// llama.cpp's `llama-server`.
        LlamaCpp = "llamacpp" | "llama-server",
        /// LM Studio's server.
        LmStudio = "lmstudio",
        /// LocalAI.
        LocalAi = "localai",
        /// Anthropic's Messages API (translated).
        Anthropic = "anthropic",
        /// Google Gemini (translated).
        Gemini = "gemini",
        /// The embedded CPU model (see `inference`); takes no url.
        Local = "local",
    }
}

impl BackendType {
    /// Whether the backend speaks the OpenAI wire format, so bodies pass through untouched.
    pub const fn is_openai_compatible(self) -> bool {
        matches!(
            self,
            BackendType::OpenAi
                | BackendType::Vllm
                | BackendType::Ollama
                | BackendType::LlamaCpp
                | BackendType::LmStudio
                | BackendType::LocalAi
        )
    }
}

name_enum! {
    /// `backends[].http2`: how to speak HTTP/2 to a backend.
    pub enum Http2Mode ("http2 mode") {
        /// HTTP/2 when TLS ALPN negotiates it, HTTP/1.1 over cleartext.
        #[default]
        Auto = "auto",
        /// HTTP/2 with prior knowledge over cleartext (`http://` backends that speak h2c).
        H2c = "h2c",
        /// Always HTTP/1.1.
        Http1 = "http1" | "http1.1",
    }
}

/// One entry of `backends`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BackendConfig {
    /// Unique name, used in logs, metrics, `routing.weights` and `/admin`. Required.
    pub name: String,
    /// Protocol. Default `openai`.
    #[serde(rename = "type")]
    pub kind: BackendType,
    /// Base URL, e.g. `https://api.openai.com/v1` or `http://10.0.0.5:8000/v1`.
    /// Required unless `type: local`.
    pub url: Option<String>,
    /// Provider API key (sent as `Authorization: Bearer`, `x-api-key` or Gemini's
    /// header as the type requires). Usually `${ENV_VAR}`.
    pub api_key: Option<Secret>,
    /// Model ids served. Empty = discover them from the backend's model list.
    pub models: Vec<String>,
    /// Weight for `WeightedRoundRobin` (a `routing.weights` entry wins). Default 1.
    pub weight: u32,
    /// HTTP/2 use. Default `auto`.
    pub http2: Http2Mode,
    /// Extra static headers sent with every request (values may be secrets).
    pub headers: BTreeMap<String, Secret>,
    /// Per-backend timeouts overriding `request.*`.
    pub timeouts: BackendTimeouts,
    /// Per-backend health-check settings overriding `health_checks.*`.
    pub health_check: BackendHealthCheck,
    /// Extra CA certificate (PEM) trusted for this backend, beside the webpki roots.
    pub ca_file: Option<PathBuf>,
    /// `anthropic-version` header value (anthropic backends only). Default `2023-06-01`.
    pub anthropic_version: String,
    /// Connection limit for this backend, overriding `server.connection_pool_size`.
    pub max_connections: Option<usize>,
}

impl BackendConfig {
    /// The default backend: the embedded model, named `local`.
    pub fn local() -> Self {
        BackendConfig { name: "local".into(), kind: BackendType::Local, ..Self::default() }
    }

    /// This backend's timeouts with `request.*` filled in where it sets none.
    pub fn effective_timeouts(&self, request: &RequestConfig) -> EffectiveTimeouts {
        EffectiveTimeouts {
            connect: self.timeouts.connect.unwrap_or(request.connect_timeout),
            first_byte: self.timeouts.first_byte.unwrap_or(request.first_byte_timeout),
            total: self.timeouts.total.unwrap_or(request.timeout),
            streaming_total: request.streaming_timeout,
            idle: self.timeouts.idle.unwrap_or(request.stream_idle_timeout),
        }
    }

    /// This backend's health-check settings with `health_checks.*` filled in.
    /// `path` stays `None` when not set: the default probe depends on the type.
    pub fn effective_health_check(&self, global: &HealthChecksConfig) -> EffectiveHealthCheck {
        let own = &self.health_check;
        EffectiveHealthCheck {
            enabled: own.enabled.unwrap_or(global.enabled),
            interval: own.interval.unwrap_or(global.interval),
            timeout: own.timeout.unwrap_or(global.timeout),
            path: own.path.clone(),
            unhealthy_threshold: own.unhealthy_threshold.unwrap_or(global.unhealthy_threshold),
            healthy_threshold: own.healthy_threshold.unwrap_or(global.healthy_threshold),
        }
    }

    /// This backend's connection limit (`max_connections`, else
    /// `server.connection_pool_size`).
    pub fn effective_max_connections(&self, server: &ServerConfig) -> usize {
        self.max_connections.unwrap_or(server.connection_pool_size)
    }
}

impl Default for BackendConfig {
    fn default() -> Self {
        BackendConfig {
            name: String::new(),
            kind: BackendType::OpenAi,
            url: None,
            api_key: None,
            models: Vec::new(),
            weight: 1,
            http2: Http2Mode::Auto,
            headers: BTreeMap::new(),
            timeouts: BackendTimeouts::default(),
            health_check: BackendHealthCheck::default(),
            ca_file: None,
            anthropic_version: "2023-06-01".into(),
            max_connections: None,
        }
    }
}

/// `backends[].timeouts`: each unset field falls back to `request.*`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BackendTimeouts {
    /// TCP (+TLS) connect; falls back to `request.connect_timeout`.
    #[serde(with = "duration::option")]
    pub connect: Option<Duration>,
    /// Until response headers; falls back to `request.first_byte_timeout`.
    #[serde(with = "duration::option")]
    pub first_byte: Option<Duration>,
    /// Whole non-streaming request; falls back to `request.timeout`.
    #[serde(with = "duration::option")]
    pub total: Option<Duration>,
    /// Longest gap between stream chunks; falls back to `request.stream_idle_timeout`.
    #[serde(with = "duration::option")]
    pub idle: Option<Duration>,
}

/// A backend's timeouts after defaults are applied ([`BackendConfig::effective_timeouts`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EffectiveTimeouts {
    /// Connect timeout.
    pub connect: Duration,
    /// Time to response headers.
    pub first_byte: Duration,
    /// Total for a non-streaming request.
    pub total: Duration,
    /// Total for a streaming request (`request.streaming_timeout`).
    pub streaming_total: Duration,
    /// Longest gap between chunks of a stream.
    pub idle: Duration,
}

/// `backends[].health_check`: each unset field falls back to `health_checks.*`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BackendHealthCheck {
    /// Whether to probe this backend.
    pub enabled: Option<bool>,
    /// Time between probes.
    #[serde(with = "duration::option")]
    pub interval: Option<Duration>,
    /// Probe timeout.
    #[serde(with = "duration::option")]
    pub timeout: Option<Duration>,
    /// Path probed (relative to the url). Default depends on the type (`/models` for
    /// OpenAI-compatible servers).
    pub path: Option<String>,
    /// Consecutive failures before the backend is marked unhealthy.
    pub unhealthy_threshold: Option<u32>,
    /// Consecutive successes before it is marked healthy again.
    pub healthy_threshold: Option<u32>,
}

/// A backend's health-check settings after defaults are applied.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EffectiveHealthCheck {
    /// Whether to probe.
    pub enabled: bool,
    /// Time between probes.
    pub interval: Duration,
    /// Probe timeout.
    pub timeout: Duration,
    /// Probe path, when the backend sets one.
    pub path: Option<String>,
    /// Consecutive failures before unhealthy.
    pub unhealthy_threshold: u32,
    /// Consecutive successes before healthy.
    pub healthy_threshold: u32,
}

// ---------------------------------------------------------------------------------------
// routing
// ---------------------------------------------------------------------------------------

name_enum! {
    /// `routing.strategy` / `routing.fallback_strategy`.
    pub enum Strategy ("strategy") {
        /// Each backend in turn.
        #[default]
        RoundRobin = "RoundRobin",
        /// Smooth weighted round-robin over `weight` / `routing.weights`.
        WeightedRoundRobin = "WeightedRoundRobin",
        /// Lowest EWMA latency, with a little exploration.
        LeastLatency = "LeastLatency",
        /// Uniformly random.
        Random = "Random",
        /// Ring hash of a session key, with bounded load.
        ConsistentHash = "ConsistentHash",
        /// Fewest in-flight requests.
        LeastConnections = "LeastConnections",
        /// Two random candidates, the less loaded wins.
        PowerOfTwoChoices = "PowerOfTwoChoices" | "p2c",
    }
}

/// `routing`: how a backend is picked for a request.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RoutingConfig {
    /// Primary strategy. Default `RoundRobin`.
    pub strategy: Strategy,
    /// Orders candidates when the primary cannot decide (no latency data yet, all
    /// weights zero). Default `RoundRobin`.
    pub fallback_strategy: Strategy,
    /// Weights keyed by backend name or backend url; override `backends[].weight`.
    pub weights: BTreeMap<String, u32>,
    /// Alias -> model: a client asking for the alias is routed as the target, and the
    /// target name is sent upstream. Aliases may chain; cycles are rejected.
    pub model_aliases: BTreeMap<String, String>,
    /// Model -> ordered models to try when no backend for it is available
    /// (e.g. `gpt-4o: [claude-sonnet, local-model]`). Followed transitively, each model
    /// at most once; cycles are rejected.
    pub fallbacks: BTreeMap<String, Vec<String>>,
    /// `ConsistentHash` settings.
    pub consistent_hash: ConsistentHashConfig,
    /// `LeastLatency` settings.
    pub least_latency: LeastLatencyConfig,
}

impl RoutingConfig {
    /// A backend's weight: its `routing.weights` entry by name, else by url (a trailing
    /// `/` ignored, as validation does), else its own `weight`.
    pub fn weight_for(&self, backend: &BackendConfig) -> u32 {
        if let Some(weight) = self.weights.get(&backend.name) {
            return *weight;
        }
        let url = backend.url.as_deref().map(|u| u.trim_end_matches('/'));
        self.weights
            .iter()
            .find(|(key, _)| Some(key.trim_end_matches('/')) == url)
            .map_or(backend.weight, |(_, weight)| *weight)
    }

    /// The model a requested name stands for, following alias chains to the end
    /// (validation rejects cycles; a cycle here stops after one pass over the aliases).
    pub fn resolve_alias<'a>(&'a self, model: &'a str) -> &'a str {
        let mut current = model;
        for _ in 0..=self.model_aliases.len() {
            match self.model_aliases.get(current) {
                Some(target) => current = target,
                None => break,
            }
        }
        current
    }
}

impl Default for RoutingConfig {
    fn default() -> Self {
        RoutingConfig {
            strategy: Strategy::RoundRobin,
            fallback_strategy: Strategy::RoundRobin,
            weights: BTreeMap::new(),
            model_aliases: BTreeMap::new(),
            fallbacks: BTreeMap::new(),
            consistent_hash: ConsistentHashConfig::default(),
            least_latency: LeastLatencyConfig::default(),
        }
    }
}

/// `routing.consistent_hash`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ConsistentHashConfig {
    /// Request header holding the session key (then the OpenAI `user` field, then a
    /// hash of the prompt prefix). Default `x-session-id`.
    pub header: String,
    /// Virtual nodes per backend on the ring. Default 160.
    pub virtual_nodes: u32,
    /// Bounded-load epsilon: no backend takes more than `(1 + load_factor)` times the
    /// mean in-flight load. Default 0.25.
    pub load_factor: f64,
}

impl Default for ConsistentHashConfig {
    fn default() -> Self {
        ConsistentHashConfig {
            header: "x-session-id".into(),
            virtual_nodes: 160,
            load_factor: 0.25,
        }
    }
}

/// `routing.least_latency`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LeastLatencyConfig {
    /// EWMA decay time constant. Default 10s.
    #[serde(with = "duration")]
    pub decay: Duration,
    /// Share of requests sent to a random other backend, so a recovered one is seen.
    /// Default 0.05.
    pub exploration: f64,
}

impl Default for LeastLatencyConfig {
    fn default() -> Self {
        LeastLatencyConfig { decay: Duration::from_secs(10), exploration: 0.05 }
    }
}

// ---------------------------------------------------------------------------------------
// request
// ---------------------------------------------------------------------------------------

/// `request`: upstream timeouts and retries.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RequestConfig {
    /// Total time for a non-streaming request. Default 30s.
    #[serde(with = "duration")]
    pub timeout: Duration,
    /// Total time for a streaming request. Default 300s.
    #[serde(with = "duration")]
    pub streaming_timeout: Duration,
    /// TCP (+TLS) connect. Default 5s.
    #[serde(with = "duration")]
    pub connect_timeout: Duration,
    /// Until the upstream's response headers. Default 30s.
    #[serde(with = "duration")]
    pub first_byte_timeout: Duration,
    /// Longest gap between two chunks of a stream. Default 60s.
    #[serde(with = "duration")]
    pub stream_idle_timeout: Duration,
    /// Retries on another candidate (connect error, 5xx, timeout before the first
    /// byte reached the client). Default 2.
    pub max_retries: u32,
    /// Backoff between retries.
    pub retry_backoff: RetryBackoffConfig,
    /// Cap on retries relative to traffic.
    pub retry_budget: RetryBudgetConfig,
}

impl Default for RequestConfig {
    fn default() -> Self {
        RequestConfig {
            timeout: Duration::from_secs(30),
            streaming_timeout: Duration::from_secs(300),
            connect_timeout: Duration::from_secs(5),
            first_byte_timeout: Duration::from_secs(30),
            stream_idle_timeout: Duration::from_secs(60),
            max_retries: 2,
            retry_backoff: RetryBackoffConfig::default(),
            retry_budget: RetryBudgetConfig::default(),
        }
    }
}

/// `request.retry_backoff`: exponential backoff.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RetryBackoffConfig {
    /// First delay. Default 50ms.
    #[serde(with = "duration")]
    pub initial: Duration,
    /// Largest delay. Default 2s.
    #[serde(with = "duration")]
    pub max: Duration,
    /// Growth per attempt (>= 1). Default 2.0.
    pub multiplier: f64,
    /// Randomise each delay (full jitter). Default true.
    pub jitter: bool,
}

impl Default for RetryBackoffConfig {
    fn default() -> Self {
        RetryBackoffConfig {
            initial: Duration::from_millis(50),
            max: Duration::from_secs(2),
            multiplier: 2.0,
            jitter: true,
        }
    }
}

/// `request.retry_budget`: retries may add at most `ratio` of recent requests, plus
/// `min_per_second`, so failures never multiply load.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RetryBudgetConfig {
    /// Retries allowed per request, on average (0..=1). Default 0.2.
    pub ratio: f64,
    /// Retries always allowed per second regardless of traffic. Default 10.
    pub min_per_second: u32,
}

impl Default for RetryBudgetConfig {
    fn default() -> Self {
        RetryBudgetConfig { ratio: 0.2, min_per_second: 3 }
    }
}

// ---------------------------------------------------------------------------------------
// health_checks
// ---------------------------------------------------------------------------------------

/// `health_checks`: active probes and the circuit breaker.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HealthChecksConfig {
    /// Run active probes. Default true.
    pub enabled: bool,
    /// Time between probes. Default 30s.
    #[serde(with = "duration")]
    pub interval: Duration,
    /// Probe timeout. Default 5s.
    #[serde(with = "duration")]
    pub timeout: Duration,
    /// Consecutive failures before a backend is unhealthy. Default 3.
    pub unhealthy_threshold: u32,
    /// Consecutive successes before it is healthy again. Default 2.
    pub healthy_threshold: u32,
    /// Probe interval while a backend answers 503 (warming up). Default 2s.
    #[serde(with = "duration")]
    pub warmup_interval: Duration,
    /// Passive failure detection per backend.
    pub circuit_breaker: CircuitBreakerConfig,
    /// Never eject more than this percentage of a model's backends (0..=100). Default 50.
    pub max_ejection_percent: u8,
}

impl Default for HealthChecksConfig {
    fn default() -> Self {
        HealthChecksConfig {
            enabled: true,
            interval: Duration::from_secs(30),
            timeout: Duration::from_secs(5),
            unhealthy_threshold: 3,
            healthy_threshold: 2,
            warmup_interval: Duration::from_secs(2),
            circuit_breaker: CircuitBreakerConfig::default(),
            max_ejection_percent: 50,
        }
    }
}

/// `health_checks.circuit_breaker`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CircuitBreakerConfig {
    /// Default true.
    pub enabled: bool,
    /// Consecutive failures (5xx, connect errors, timeouts) that open the circuit.
    /// Default 5.
    pub failure_threshold: u32,
    /// First open period before half-open. Default 30s.
    #[serde(with = "duration")]
    pub open_duration: Duration,
    /// Longest open period (the period doubles on each failed probe). Default 5m.
    #[serde(with = "duration")]
    pub max_open_duration: Duration,
}

impl Default for CircuitBreakerConfig {
    fn default() -> Self {
        CircuitBreakerConfig {
            enabled: true,
            failure_threshold: 5,
            open_duration: Duration::from_secs(30),
            max_open_duration: Duration::from_secs(300),
        }
    }
}

// ---------------------------------------------------------------------------------------
// cache
// ---------------------------------------------------------------------------------------

/// `cache`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CacheConfig {
    /// How long a backend's model list is fresh. Default 300s.
    #[serde(with = "duration")]
    pub model_cache_ttl: Duration,
    /// How long a stale model list is still served while its backend is down. Default 1h.
    #[serde(with = "duration")]
    pub model_cache_max_stale: Duration,
    /// Single-flight de-duplication of identical concurrent requests.
    pub deduplication: DeduplicationConfig,
    /// Exact-match response cache.
    pub response: ResponseCacheConfig,
    /// Redis L2 shared by a fleet.
    pub redis: RedisConfig,
}

impl Default for CacheConfig {
    fn default() -> Self {
        CacheConfig {
            model_cache_ttl: Duration::from_secs(300),
            model_cache_max_stale: Duration::from_secs(3600),
            deduplication: DeduplicationConfig::default(),
            response: ResponseCacheConfig::default(),
            redis: RedisConfig::default(),
        }
    }
}

/// `cache.deduplication`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DeduplicationConfig {
    /// Default true.
    pub enabled: bool,
    /// How long a completed result answers identical requests. Default 60s.
    #[serde(with = "duration")]
    pub ttl: Duration,
    /// Only de-duplicate deterministic requests (temperature 0 or a seed). Default true.
    pub deterministic_only: bool,
    /// Per-model override of `enabled`.
    pub models: BTreeMap<String, bool>,
}

impl Default for DeduplicationConfig {
    fn default() -> Self {
        DeduplicationConfig {
            enabled: true,
            ttl: Duration::from_secs(60),
            deterministic_only: true,
            models: BTreeMap::new(),
        }
    }
}

/// `cache.response`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ResponseCacheConfig {
    /// Default false.
    pub enabled: bool,
    /// Entry lifetime. Default 300s.
    #[serde(with = "duration")]
    pub ttl: Duration,
    /// Memory bound for all entries. Default 64MiB.
    #[serde(with = "byte_size")]
    pub max_bytes: u64,
    /// Models cached; empty = all (when enabled).
    pub models: Vec<String>,
}

impl Default for ResponseCacheConfig {
    fn default() -> Self {
        ResponseCacheConfig {
            enabled: false,
            ttl: Duration::from_secs(300),
            max_bytes: 64 << 20,
            models: Vec::new(),
        }
    }
}

/// `cache.redis`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RedisConfig {
    /// `redis://` / `rediss://` URL; absent = no L2. May hold a password.
    pub url: Option<Secret>,
    /// Prefix of every key. Default `switchyard:`.
    pub key_prefix: String,
    /// Per-operation timeout; slower = cache bypassed. Default 250ms.
    #[serde(with = "duration")]
    pub timeout: Duration,
}

impl Default for RedisConfig {
    fn default() -> Self {
        RedisConfig {
            url: None,
            key_prefix: "switchyard:".into(),
            timeout: Duration::from_millis(250),
        }
    }
}

// ---------------------------------------------------------------------------------------
// http_client
// ---------------------------------------------------------------------------------------

/// `http_client`: the pooled upstream client.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HttpClientConfig {
    /// Idle pooled connections are closed after this. Default 90s.
    #[serde(with = "duration")]
    pub pool_idle_timeout: Duration,
    /// Idle connections kept per host. Default 100.
    pub pool_max_idle_per_host: usize,
    /// TCP keepalive on upstream sockets; 0 = off. Default 60s.
    #[serde(with = "duration")]
    pub tcp_keepalive: Duration,
    /// HTTP/2 PING interval on upstream connections; 0 = off. Default 30s.
    #[serde(with = "duration")]
    pub http2_keep_alive_interval: Duration,
}

impl Default for HttpClientConfig {
    fn default() -> Self {
        HttpClientConfig {
            pool_idle_timeout: Duration::from_secs(90),
            pool_max_idle_per_host: 100,
            tcp_keepalive: Duration::from_secs(60),
            http2_keep_alive_interval: Duration::from_secs(30),
        }
    }
}

// ---------------------------------------------------------------------------------------
// metrics, logging
// ---------------------------------------------------------------------------------------

/// `metrics`: the Prometheus endpoint.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MetricsConfig {
    /// Default true.
    pub enabled: bool,
    /// Path served. Default `/metrics`.
    pub endpoint: String,
    /// Optional basic auth.
    pub auth: MetricsAuthConfig,
}

impl Default for MetricsConfig {
    fn default() -> Self {
        MetricsConfig {
            enabled: true,
            endpoint: "/metrics".into(),
            auth: MetricsAuthConfig::default(),
        }
    }
}

/// `metrics.auth`: HTTP basic auth. When enabled, both fields are required.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MetricsAuthConfig {
    /// Default false.
    pub enabled: bool,
    /// Basic-auth user name.
    pub username: String,
    /// Basic-auth password.
    pub password: Option<Secret>,
}

name_enum! {
    /// `logging.format`.
    pub enum LogFormat ("log format") {
        /// Human-readable lines.
        #[default]
        Text = "text" | "pretty",
        /// One JSON object per line.
        Json = "json",
    }
}

/// `logging`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LoggingConfig {
    /// A level (`trace`, `debug`, `info`, `warn`, `error`, `off`), or comma-separated
    /// directives `level,target=level` (tracing `EnvFilter` syntax). Default `info`.
    pub level: String,
    /// Default `text`.
    pub format: LogFormat,
}

impl Default for LoggingConfig {
    fn default() -> Self {
        LoggingConfig { level: "info".into(), format: LogFormat::Text }
    }
}

// ---------------------------------------------------------------------------------------
// inference
// ---------------------------------------------------------------------------------------

/// `inference`: the embedded CPU model, served by `type: local` backends.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct InferenceConfig {
    /// GGUF file; absent = the default model in the model cache (resolved by the server).
    pub model_path: Option<PathBuf>,
    /// Name the model is served as; absent = derived by the server from the file.
    pub model_id: Option<String>,
    /// Generation threads; 0 = all cores but one (at least one). Env `LLM_MAX_THREADS`.
    /// Default 0.
    pub threads: usize,
    /// Prompt-processing batch, in tokens. Env `LLM_BATCH_SIZE`. Default 512.
    pub batch_size: usize,
    /// Context window, in tokens. Env `LLM_CONTEXT_SIZE`. Default 2048.
    pub context_size: usize,
    /// Sequences generated concurrently. Default 4.
    pub max_concurrent: usize,
    /// Requests waiting for a slot; beyond it, 503 with Retry-After. Default 32.
    pub max_queue: usize,
    /// Keep Q4_1 weights 4-bit in memory instead of widening them to Q8_0 at load: the
    /// same output, ~40% less memory for those weights, slower decode. Default false.
    pub compact_q4_1: bool,
}

impl Default for InferenceConfig {
    fn default() -> Self {
        InferenceConfig {
            model_path: None,
            model_id: None,
            threads: 0,
            batch_size: 512,
            context_size: 2048,
            max_concurrent: 4,
            max_queue: 32,
            compact_q4_1: false,
        }
    }
}

// ---------------------------------------------------------------------------------------
// auth, rate_limit, admin
// ---------------------------------------------------------------------------------------

name_enum! {
    /// `auth.mode`.
    pub enum AuthMode ("auth mode") {
        /// Keys are required once at least one is configured (inline or in
        /// `api_keys_file`); with none configured every request is admitted.
        #[default]
        Permissive = "permissive",
        /// A valid key is always required; with no keys configured every request is
        /// refused (fail closed, e.g. when `api_keys_file` is empty).
        Blocking = "blocking",
    }
}

/// `auth`: client API keys (`Authorization: Bearer KEY` or `x-api-key: KEY`).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AuthConfig {
    /// Default `permissive`.
    pub mode: AuthMode,
    /// Inline keys.
    pub api_keys: Vec<ApiKeyConfig>,
    /// A YAML or JSON file holding a list of the same entries, read by the server
    /// (and re-read on reload); see [`ApiKeyConfig::load_file`].
    pub api_keys_file: Option<PathBuf>,
    /// Credential for `/admin/*`. When absent, admin endpoints are open only while
    /// client auth is off (permissive with no keys); otherwise they answer 401.
    pub admin_api_key: Option<Secret>,
}

/// One client API key.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ApiKeyConfig {
    /// The key. Required.
    pub key: Secret,
    /// A name for logs, metrics and rate limits (never the key itself). Required.
    pub name: String,
    /// Models this key may use; empty = all.
    pub models: Vec<String>,
}

/// `rate_limit`: token buckets; each scope is off unless set.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RateLimitConfig {
    /// Default false.
    pub enabled: bool,
    /// Per client API key (or per client IP when the request has no key).
    pub per_key: Option<RateLimitRule>,
    /// Per client IP.
    pub per_ip: Option<RateLimitRule>,
    /// Per backend (requests the router sends it).
    pub per_backend: Option<RateLimitRule>,
    /// For the whole router.
    pub global: Option<RateLimitRule>,
    /// Peers whose `X-Forwarded-For` is believed (CIDRs or addresses).
    pub trusted_proxies: Vec<Cidr>,
    /// Redis shared by a fleet, so several routers enforce one limit.
    pub redis: RateLimitRedisConfig,
}

/// One token bucket.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RateLimitRule {
    /// Sustained rate. Required, > 0.
    pub requests_per_minute: u32,
    /// Bucket size; absent = `requests_per_minute`.
    pub burst: Option<u32>,
}

impl RateLimitRule {
    /// The bucket size: `burst`, else `requests_per_minute`.
    pub fn burst(&self) -> u32 {
        self.burst.unwrap_or(self.requests_per_minute)
    }
}

/// `rate_limit.redis`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RateLimitRedisConfig {
    /// `redis://` / `rediss://` URL; absent = limits are per instance.
    pub url: Option<Secret>,
    /// Prefix of every key. Default `switchyard:ratelimit:`.
    pub key_prefix: String,
    /// Per-operation timeout; slower = the local bucket decides. Default 250ms.
    #[serde(with = "duration")]
    pub timeout: Duration,
}

impl Default for RateLimitRedisConfig {
    fn default() -> Self {
        RateLimitRedisConfig {
            url: None,
            key_prefix: "switchyard:ratelimit:".into(),
            timeout: Duration::from_millis(250),
        }
    }
}

/// `admin`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AdminConfig {
    /// Serve `/admin/*`. Default true.
    pub enabled: bool,
}

impl Default for AdminConfig {
    fn default() -> Self {
        AdminConfig { enabled: true }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_read_loosely_and_written_canonically() {
        for text in ["LeastLatency", "least_latency", "leastlatency", "LEAST-LATENCY"] {
            assert_eq!(text.parse::<Strategy>(), Ok(Strategy::LeastLatency), "{text}");
        }
        assert_eq!("p2c".parse::<Strategy>(), Ok(Strategy::PowerOfTwoChoices));
        assert_eq!("llama_cpp".parse::<BackendType>(), Ok(BackendType::LlamaCpp));
        assert_eq!(Strategy::WeightedRoundRobin.to_string(), "WeightedRoundRobin");
        let err = "LeastLatncy".parse::<Strategy>().unwrap_err();
        assert!(err.contains("did you mean \"LeastLatency\"?"), "{err}");
        assert!(err.contains("valid: RoundRobin, WeightedRoundRobin"), "{err}");
    }

    #[test]
    fn weights_and_aliases_resolve() {
        let mut routing = RoutingConfig::default();
        let backend = |name: &str, url: &str, weight| BackendConfig {
            name: name.into(),
            url: Some(url.into()),
            weight,
            ..BackendConfig::default()
        };
        routing.weights.insert("a".into(), 5);
        routing.weights.insert("http://b:1/".into(), 7);
        assert_eq!(routing.weight_for(&backend("a", "http://a:1", 1)), 5);
        assert_eq!(routing.weight_for(&backend("b", "http://b:1", 1)), 7);
        assert_eq!(routing.weight_for(&backend("c", "http://c:1", 2)), 2);

        routing.model_aliases.insert("best".into(), "smart".into());
        routing.model_aliases.insert("smart".into(), "gpt-4o".into());
        assert_eq!(routing.resolve_alias("best"), "gpt-4o");
        assert_eq!(routing.resolve_alias("other"), "other");
        routing.model_aliases.insert("gpt-4o".into(), "best".into());
        let _ = routing.resolve_alias("best"); // a cycle terminates
    }

    #[test]
    fn backend_overrides_fall_back_to_globals() {
        let request = RequestConfig::default();
        let mut backend = BackendConfig::default();
        backend.timeouts.first_byte = Some(Duration::from_secs(3));
        let t = backend.effective_timeouts(&request);
        assert_eq!(t.first_byte, Duration::from_secs(3));
        assert_eq!(t.connect, request.connect_timeout);
        assert_eq!(t.total, request.timeout);
        assert_eq!(t.streaming_total, request.streaming_timeout);

        let health = HealthChecksConfig::default();
        backend.health_check.healthy_threshold = Some(7);
        let h = backend.effective_health_check(&health);
        assert_eq!(h.healthy_threshold, 7);
        assert_eq!(h.unhealthy_threshold, health.unhealthy_threshold);
        assert_eq!(backend.effective_max_connections(&ServerConfig::default()), 500);
    }
}
