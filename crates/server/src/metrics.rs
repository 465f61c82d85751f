//! Metrics: the names the server itself emits (as consts, described in [`describe`]),
//! the handles the request path uses (registered once, then only atomics), bounded label
//! values, process metrics, and [`MetricsRender`], the hook `/metrics` renders through.
//!
//! Everything goes through the `metrics` facade. The server never installs a recorder:
//! the binary installs the Prometheus exporter and passes its render function in (tests
//! do the same with their own recorder). Handles are registered against whatever
//! recorder is installed when they are first used, so install it before serving.
//!
//! Label values are bounded: `path` comes from a fixed list ([`Route`]), `method` is one
//! of four, `status` is a number, `backend` a configured name, `model` one of at most
//! [`MAX_MODEL_LABELS`] served names (later ones are `other`). No label ever holds an API
//! key, a key's secret, a client address or prompt text.

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use arc_swap::ArcSwap;
use http::Method;
use metrics::{
    Counter, Gauge, Histogram, Unit, counter, describe_counter, describe_gauge, describe_histogram,
    gauge, histogram,
};
use parking_lot::Mutex;

/// Renders every metric of the process as Prometheus text (the exporter's handle, wrapped
/// by whoever installed it). `/metrics` answers with what it returns.
pub type MetricsRender = Arc<dyn Fn() -> String + Send + Sync>;

/// Counter, labels `method`, `path`, `status`: requests answered.
pub const HTTP_REQUESTS_TOTAL: &str = "http_requests_total";
/// Histogram, labels `method`, `path`: seconds from the request's arrival to the end of
/// its response (the end of the stream for streams).
pub const HTTP_REQUEST_DURATION_SECONDS: &str = "http_request_duration_seconds";
/// Histogram, label `backend`: seconds one upstream attempt took, to the end of its
/// response (streams included).
pub const BACKEND_REQUEST_DURATION_SECONDS: &str = "backend_request_duration_seconds";
/// Counter, labels `backend`, `result` (`ok`, `error_status`, `failed`): upstream attempts.
pub const BACKEND_REQUESTS_TOTAL: &str = "switchyard_backend_requests_total";
/// Gauge: client connections open now.
pub const ACTIVE_CONNECTIONS: &str = "active_connections";
/// Histogram: seconds the router itself spent on a proxied request before its response
/// head left (parsing, auth, routing, relaying), excluding the time spent waiting for
/// upstreams and retry backoff.
pub const ROUTER_OVERHEAD_SECONDS: &str = "router_overhead_seconds";
/// Histogram, label `model`: seconds from a streaming request's arrival to its first
/// event (any backend; the local model also reports its own in
/// `switchyard_inference_time_to_first_token_seconds`).
pub const TIME_TO_FIRST_TOKEN_SECONDS: &str = "switchyard_time_to_first_token_seconds";
/// Counter, labels `model`, `kind` (`prompt`, `completion`): tokens reported in the
/// `usage` of answers.
pub const TOKENS_TOTAL: &str = "switchyard_tokens_total";
/// Counter, label `outcome` (`completed`, `failed`, `client_gone`): streamed responses.
pub const STREAMS_TOTAL: &str = "switchyard_streams_total";
/// Counter, labels `scope` (`client`, `admin`, `metrics`) and `reason` (`missing`,
/// `invalid`, `model_not_allowed`): refused credentials.
pub const AUTH_FAILURES_TOTAL: &str = "switchyard_auth_failures_total";
/// Counter, label `scope` (`key`, `ip`, `backend`, `global`): requests a rate limit
/// refused (for `backend`: attempts that skipped a backend).
pub const RATE_LIMITED_TOTAL: &str = "switchyard_rate_limited_total";
/// Counter: rate-limit decisions Redis could not make (down, slow, error); the local
/// buckets decided instead.
pub const RATE_LIMIT_REDIS_ERRORS_TOTAL: &str = "switchyard_rate_limit_redis_errors_total";
/// Counter, label `result` (`applied`, `unchanged`, `failed`): configuration reloads.
pub const CONFIG_RELOADS_TOTAL: &str = "switchyard_config_reloads_total";
/// Gauge: 1 if the last reload attempt succeeded (or none was made), 0 if it failed.
pub const CONFIG_LAST_RELOAD_SUCCESSFUL: &str = "switchyard_config_last_reload_successful";
/// Gauge: Unix time of the last successful (re)load.
pub const CONFIG_LAST_RELOAD_SUCCESS_TIMESTAMP_SECONDS: &str =
    "switchyard_config_last_reload_success_timestamp_seconds";
/// Gauge: configuration keys changed in the file that wait for a restart.
pub const CONFIG_RESTART_REQUIRED: &str = "switchyard_config_restart_required";
/// Gauge: resident memory, bytes (Linux).
pub const PROCESS_RESIDENT_MEMORY_BYTES: &str = "process_resident_memory_bytes";
/// Gauge: virtual memory, bytes (Linux).
pub const PROCESS_VIRTUAL_MEMORY_BYTES: &str = "process_virtual_memory_bytes";
/// Gauge (monotonic, so `rate()` applies): user + system CPU time, seconds (Linux).
/// A gauge because the facade's counters are integers.
pub const PROCESS_CPU_SECONDS_TOTAL: &str = "process_cpu_seconds_total";
/// Gauge: open file descriptors (Linux).
pub const PROCESS_OPEN_FDS: &str = "process_open_fds";
/// Gauge: OS threads (Linux).
pub const PROCESS_THREADS: &str = "process_threads";
/// Gauge: Unix time the process started (Linux).
pub const PROCESS_START_TIME_SECONDS: &str = "process_start_time_seconds";

/// Most distinct `model` label values; later models are counted as `other`.
pub const MAX_MODEL_LABELS: usize = 64;

/// Describe every metric the router emits (this crate's and the libraries' it composes)
/// to the installed recorder. Call once, right after installing it.
pub fn describe() {
    describe_counter!(
        HTTP_REQUESTS_TOTAL,
        Unit::Count,
        "requests answered, by method, path and status"
    );
    describe_histogram!(
        HTTP_REQUEST_DURATION_SECONDS,
        Unit::Seconds,
        "request duration to the end of the response (streams: to the end of the stream)"
    );
    describe_histogram!(
        BACKEND_REQUEST_DURATION_SECONDS,
        Unit::Seconds,
        "upstream attempt duration to the end of its response, by backend"
    );
    describe_counter!(
        BACKEND_REQUESTS_TOTAL,
        Unit::Count,
        "upstream attempts by backend and result"
    );
    describe_gauge!(ACTIVE_CONNECTIONS, Unit::Count, "client connections open");
    describe_histogram!(
        ROUTER_OVERHEAD_SECONDS,
        Unit::Seconds,
        "time the router spent on a proxied request, excluding upstream waits"
    );
    describe_histogram!(
        TIME_TO_FIRST_TOKEN_SECONDS,
        Unit::Seconds,
        "time from a streaming request's arrival to its first event, by model"
    );
    describe_counter!(
        TOKENS_TOTAL,
        Unit::Count,
        "tokens reported in answers' usage, by model and kind"
    );
    describe_counter!(STREAMS_TOTAL, Unit::Count, "streamed responses by outcome");
    describe_counter!(AUTH_FAILURES_TOTAL, Unit::Count, "refused credentials by scope and reason");
    describe_counter!(
        RATE_LIMITED_TOTAL,
        Unit::Count,
        "requests refused by a rate limit, by scope"
    );
    describe_counter!(
        RATE_LIMIT_REDIS_ERRORS_TOTAL,
        Unit::Count,
        "rate-limit decisions made locally because redis failed"
    );
    describe_counter!(CONFIG_RELOADS_TOTAL, Unit::Count, "configuration reloads by result");
    describe_gauge!(CONFIG_LAST_RELOAD_SUCCESSFUL, "1 if the last configuration reload succeeded");
    describe_gauge!(
        CONFIG_LAST_RELOAD_SUCCESS_TIMESTAMP_SECONDS,
        Unit::Seconds,
        "unix time of the last successful configuration load"
    );
    describe_gauge!(
        CONFIG_RESTART_REQUIRED,
        Unit::Count,
        "changed configuration keys waiting for a restart"
    );
    describe_gauge!(PROCESS_RESIDENT_MEMORY_BYTES, Unit::Bytes, "resident memory size");
    describe_gauge!(PROCESS_VIRTUAL_MEMORY_BYTES, Unit::Bytes, "virtual memory size");
    describe_gauge!(PROCESS_CPU_SECONDS_TOTAL, Unit::Seconds, "user and system CPU time");
    describe_gauge!(PROCESS_OPEN_FDS, Unit::Count, "open file descriptors");
    describe_gauge!(PROCESS_THREADS, Unit::Count, "OS threads");
    describe_gauge!(PROCESS_START_TIME_SECONDS, Unit::Seconds, "unix time the process started");
    switchyard_health::metrics::describe_metrics();
    switchyard_cache::metrics::describe();
    switchyard_inference::metrics::describe();
}

/// The `path` label: a fixed list, so arbitrary request paths never become labels.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Route(u8);

impl Route {
    const LABELS: [&'static str; 15] = [
        "/v1/chat/completions",
        "/v1/completions",
        "/v1/embeddings",
        "/v1/models",
        "/v1/messages",
        "/health",
        "/api/health",
        "/api/models",
        "/api/quick",
        "/admin/health",
        "/admin/backends",
        "/admin/config",
        "/admin/config/reload",
        "/metrics",
        "other",
    ];
    const COUNT: usize = Self::LABELS.len();
    pub(crate) const METRICS: Route = Route(13);
    pub(crate) const OTHER: Route = Route(14);

    /// The label of `path` (with or without the `/v1` prefix); `metrics_endpoint` is the
    /// configured metrics path, labelled `/metrics` whatever it is.
    pub(crate) fn of(path: &str, metrics_endpoint: &str) -> Route {
        if path == metrics_endpoint {
            return Route::METRICS;
        }
        let short = path.strip_prefix("/v1").filter(|rest| rest.starts_with('/'));
        let index = match short.unwrap_or(path) {
            "/chat/completions" => 0,
            "/completions" => 1,
            "/embeddings" => 2,
            "/models" => 3,
            "/messages" => 4,
            _ => match path {
                "/health" => 5,
                "/api/health" => 6,
                "/api/models" => 7,
                "/api/quick" => 8,
                "/admin/health" => 9,
                "/admin/backends" => 10,
                "/admin/config" => 11,
                "/admin/config/reload" => 12,
                _ => 14,
            },
        };
        Route(index)
    }

    /// Whether the route proxies to a backend (its answers carry usage and tokens).
    pub(crate) fn is_inference(self) -> bool {
        matches!(self.0, 0 | 1 | 2 | 4 | 8)
    }

    pub(crate) fn label(self) -> &'static str {
        Self::LABELS[usize::from(self.0)]
    }
}

/// The `method` label.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct MethodLabel(u8);

impl MethodLabel {
    const LABELS: [&'static str; 4] = ["GET", "POST", "HEAD", "other"];
    const COUNT: usize = Self::LABELS.len();

    pub(crate) fn of(method: &Method) -> MethodLabel {
        MethodLabel(match *method {
            Method::GET => 0,
            Method::POST => 1,
            Method::HEAD => 2,
            _ => 3,
        })
    }

    pub(crate) fn label(self) -> &'static str {
        Self::LABELS[usize::from(self.0)]
    }
}

/// Statuses with a cached counter; any other status takes the (allocating) slow path.
const STATUSES: [(u16, &str); 19] = [
    (200, "200"),
    (201, "201"),
    (204, "204"),
    (400, "400"),
    (401, "401"),
    (403, "403"),
    (404, "404"),
    (405, "405"),
    (408, "408"),
    (409, "409"),
    (413, "413"),
    (415, "415"),
    (422, "422"),
    (429, "429"),
    (500, "500"),
    (501, "501"),
    (502, "502"),
    (503, "503"),
    (504, "504"),
];

/// How a streamed response ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum StreamOutcome {
    Completed,
    Failed,
    ClientGone,
}

/// Why a credential was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum AuthFailure {
    Missing,
    Invalid,
    ModelNotAllowed,
}

/// Which credential was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum AuthScope {
    Client,
    Admin,
    Metrics,
}

/// Which rate limit refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum LimitScope {
    Key,
    Ip,
    Backend,
    Global,
}

/// The process-wide handles of the request path (see [`metrics`]).
pub(crate) struct Metrics {
    requests: Box<[OnceLock<Counter>]>,
    durations: Box<[OnceLock<Histogram>]>,
    pub(crate) overhead: Histogram,
    pub(crate) active_connections: Gauge,
    streams: [Counter; 3],
    auth_failures: [Counter; 9],
    rate_limited: [Counter; 4],
    pub(crate) rate_limit_redis_errors: Counter,
    models: ModelLabels,
}

/// The handles labelled with one model.
pub(crate) struct ModelMetrics {
    pub(crate) time_to_first_token: Histogram,
    pub(crate) prompt_tokens: Counter,
    pub(crate) completion_tokens: Counter,
}

/// Interned `model` labels: a copy-on-write map read without a lock.
struct ModelLabels {
    /// Read on every request; its keys are route names (at most `MAX_MODEL_LABELS`).
    map: ArcSwap<foldhash::HashMap<Arc<str>, Arc<ModelMetrics>>>,
    insert: Mutex<()>,
    other: Arc<ModelMetrics>,
}

/// The handles labelled with one backend.
pub(crate) struct BackendMetrics {
    pub(crate) duration: Histogram,
    pub(crate) ok: Counter,
    pub(crate) error_status: Counter,
    pub(crate) failed: Counter,
}

impl Metrics {
    pub(crate) fn new() -> Metrics {
        let slots = Route::COUNT * MethodLabel::COUNT;
        let scopes = ["client", "admin", "metrics"];
        let reasons = ["missing", "invalid", "model_not_allowed"];
        Metrics {
            requests: (0..slots * STATUSES.len()).map(|_| OnceLock::new()).collect(),
            durations: (0..slots).map(|_| OnceLock::new()).collect(),
            overhead: histogram!(ROUTER_OVERHEAD_SECONDS),
            active_connections: gauge!(ACTIVE_CONNECTIONS),
            streams: ["completed", "failed", "client_gone"]
                .map(|outcome| counter!(STREAMS_TOTAL, "outcome" => outcome)),
            auth_failures: std::array::from_fn(
                |i| counter!(AUTH_FAILURES_TOTAL, "scope" => scopes[i / 3], "reason" => reasons[i % 3]),
            ),
            rate_limited: ["key", "ip", "backend", "global"]
                .map(|scope| counter!(RATE_LIMITED_TOTAL, "scope" => scope)),
            rate_limit_redis_errors: counter!(RATE_LIMIT_REDIS_ERRORS_TOTAL),
            models: ModelLabels::new(),
        }
    }

    /// Count one answered request.
    pub(crate) fn request(&self, method: MethodLabel, route: Route, status: u16) {
        let slot = usize::from(route.0) * MethodLabel::COUNT + usize::from(method.0);
        match STATUSES.iter().position(|(s, _)| *s == status) {
            Some(i) => self.requests[slot * STATUSES.len() + i]
                .get_or_init(|| {
                    counter!(HTTP_REQUESTS_TOTAL, "method" => method.label(), "path" => route.label(), "status" => STATUSES[i].1)
                })
                .increment(1),
            None => counter!(
                HTTP_REQUESTS_TOTAL,
                "method" => method.label(),
                "path" => route.label(),
                "status" => status.to_string()
            )
            .increment(1),
        }
    }

    /// Record one request's duration.
    pub(crate) fn duration(&self, method: MethodLabel, route: Route, elapsed: Duration) {
        let slot = usize::from(route.0) * MethodLabel::COUNT + usize::from(method.0);
        self.durations[slot]
            .get_or_init(|| {
                histogram!(HTTP_REQUEST_DURATION_SECONDS, "method" => method.label(), "path" => route.label())
            })
            .record(elapsed.as_secs_f64());
    }

    pub(crate) fn stream(&self, outcome: StreamOutcome) {
        self.streams[outcome as usize].increment(1);
    }

    pub(crate) fn auth_failure(&self, scope: AuthScope, reason: AuthFailure) {
        self.auth_failures[scope as usize * 3 + reason as usize].increment(1);
    }

    pub(crate) fn rate_limited(&self, scope: LimitScope) {
        self.rate_limited[scope as usize].increment(1);
    }

    /// The handles of `model` (an interned label, or `other` past the cap).
    pub(crate) fn model(&self, model: &str) -> Arc<ModelMetrics> {
        self.models.get(model)
    }
}

/// The handles of the request path, registered on first use against the recorder
/// installed then (so install it before serving): one set per process, like the
/// facade's recorder itself.
pub(crate) fn metrics() -> &'static Metrics {
    static METRICS: OnceLock<Metrics> = OnceLock::new();
    METRICS.get_or_init(Metrics::new)
}

/// Render through `render` after refreshing the process metrics.
pub(crate) fn render(render: &MetricsRender) -> String {
    process::refresh();
    render()
}

impl ModelLabels {
    fn new() -> ModelLabels {
        ModelLabels {
            map: ArcSwap::from_pointee(foldhash::HashMap::default()),
            insert: Mutex::new(()),
            other: Arc::new(ModelMetrics::labelled("other")),
        }
    }

    fn get(&self, model: &str) -> Arc<ModelMetrics> {
        if let Some(found) = self.map.load().get(model) {
            return found.clone();
        }
        let _writer = self.insert.lock();
        let current = self.map.load_full();
        if let Some(found) = current.get(model) {
            return found.clone();
        }
        if current.len() >= MAX_MODEL_LABELS {
            return self.other.clone();
        }
        let handles = Arc::new(ModelMetrics::labelled(model));
        let mut next = foldhash::HashMap::clone(&current);
        next.insert(Arc::from(model), handles.clone());
        self.map.store(Arc::new(next));
        handles
    }
}

impl ModelMetrics {
    fn labelled(model: &str) -> ModelMetrics {
        let model = model.to_owned();
        ModelMetrics {
            time_to_first_token: histogram!(TIME_TO_FIRST_TOKEN_SECONDS, "model" => model.clone()),
            prompt_tokens: counter!(TOKENS_TOTAL, "model" => model.clone(), "kind" => "prompt"),
            completion_tokens: counter!(TOKENS_TOTAL, "model" => model, "kind" => "completion"),
        }
    }
}

impl BackendMetrics {
    pub(crate) fn new(backend: &str) -> BackendMetrics {
        let name = backend.to_owned();
        BackendMetrics {
            duration: histogram!(BACKEND_REQUEST_DURATION_SECONDS, "backend" => name.clone()),
            ok: counter!(BACKEND_REQUESTS_TOTAL, "backend" => name.clone(), "result" => "ok"),
            error_status: counter!(BACKEND_REQUESTS_TOTAL, "backend" => name.clone(), "result" => "error_status"),
            failed: counter!(BACKEND_REQUESTS_TOTAL, "backend" => name, "result" => "failed"),
        }
    }
}

/// Process metrics, read from `/proc` at scrape time (Linux only; elsewhere nothing).
mod process {
    #[cfg(target_os = "linux")]
    pub(super) fn refresh() {
        use super::*;
        // USER_HZ is 100 on every Linux ABI.
        const TICKS_PER_SECOND: f64 = 100.0;
        if let Ok(status) = std::fs::read_to_string("/proc/self/status") {
            for line in status.lines() {
                let mut parts = line.split_whitespace();
                let (Some(name), Some(value)) = (parts.next(), parts.next()) else { continue };
                let Ok(value) = value.parse::<f64>() else { continue };
                match name {
                    "VmRSS:" => gauge!(PROCESS_RESIDENT_MEMORY_BYTES).set(value * 1024.0),
                    "VmSize:" => gauge!(PROCESS_VIRTUAL_MEMORY_BYTES).set(value * 1024.0),
                    "Threads:" => gauge!(PROCESS_THREADS).set(value),
                    _ => {}
                }
            }
        }
        if let Ok(stat) = std::fs::read_to_string("/proc/self/stat") {
            // Fields after the command name, which is in parentheses and may hold spaces.
            let fields: Vec<&str> = stat
                .rsplit_once(')')
                .map(|(_, rest)| rest.split_whitespace().collect())
                .unwrap_or_default();
            // utime, stime and starttime are fields 14, 15 and 22 of the whole line.
            let field = |n: usize| fields.get(n - 3).and_then(|v| v.parse::<f64>().ok());
            if let (Some(user), Some(system)) = (field(14), field(15)) {
                let seconds = (user + system) / TICKS_PER_SECOND;
                gauge!(PROCESS_CPU_SECONDS_TOTAL).set(seconds);
            }
            let boot = std::fs::read_to_string("/proc/stat").ok().and_then(|s| {
                s.lines()
                    .find_map(|l| l.strip_prefix("btime "))
                    .and_then(|v| v.trim().parse::<f64>().ok())
            });
            if let (Some(start), Some(boot)) = (field(22), boot) {
                gauge!(PROCESS_START_TIME_SECONDS).set(boot + start / TICKS_PER_SECOND);
            }
        }
        if let Ok(fds) = std::fs::read_dir("/proc/self/fd") {
            gauge!(PROCESS_OPEN_FDS).set(fds.count() as f64);
        }
    }

    #[cfg(not(target_os = "linux"))]
    pub(super) fn refresh() {}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_are_a_fixed_list() {
        assert_eq!(Route::of("/v1/chat/completions", "/metrics").label(), "/v1/chat/completions");
        assert_eq!(Route::of("/chat/completions", "/metrics").label(), "/v1/chat/completions");
        assert_eq!(Route::of("/v1/models", "/metrics").label(), "/v1/models");
        assert_eq!(Route::of("/prom", "/prom"), Route::METRICS);
        assert_eq!(Route::of("/metrics", "/prom"), Route::OTHER);
        assert_eq!(Route::of("/v1/../../etc/passwd", "/metrics"), Route::OTHER);
        assert_eq!(Route::of("/v1", "/metrics"), Route::OTHER);
        assert_eq!(Route::of("/admin/config/reload", "/metrics").label(), "/admin/config/reload");
        assert!(Route::of("/v1/messages", "/m").is_inference());
        assert!(!Route::of("/v1/models", "/m").is_inference());
        assert_eq!(MethodLabel::of(&Method::DELETE).label(), "other");
    }

    #[test]
    fn model_labels_are_capped() {
        let labels = ModelLabels::new();
        let first = labels.get("m0");
        assert!(Arc::ptr_eq(&first, &labels.get("m0")), "interned");
        for i in 1..MAX_MODEL_LABELS {
            labels.get(&format!("m{i}"));
        }
        let late = labels.get("one-too-many");
        assert!(Arc::ptr_eq(&late, &labels.other));
        assert_eq!(labels.map.load().len(), MAX_MODEL_LABELS);
    }

    #[test]
    fn every_status_slot_is_distinct() {
        let mut seen: Vec<u16> = STATUSES.iter().map(|(s, _)| *s).collect();
        seen.dedup();
        assert_eq!(seen.len(), STATUSES.len());
        for (status, label) in STATUSES {
            assert_eq!(status.to_string(), label);
        }
    }
}
