//! switchyard-config, end to end: layering, environment, references, formats and every
//! validation rule, as data-driven tables; plus discovery, the example files, the
//! starter file and secret masking.

mod util;

use std::path::Path;

use switchyard_config::{
    ApiKeyConfig, Config, ConfigError, ConfigSource, Environment, Overrides, starter_config,
};
use util::{Case, Cli, Expect, NO_ENV, run};

fn ok(
    name: &'static str,
    yaml: Option<&'static str>,
    env: &'static [(&'static str, &'static str)],
    values: &'static [(&'static str, &'static str)],
) -> Case {
    Case { name, yaml, env, cli: Cli::default(), expect: Expect::Values(values) }
}

fn err(name: &'static str, yaml: &'static str, errors: &'static [&'static str]) -> Case {
    Case {
        name,
        yaml: Some(yaml),
        env: NO_ENV,
        cli: Cli::default(),
        expect: Expect::Errors(errors),
    }
}

#[test]
fn defaults_and_layer_precedence() {
    run(&[
        ok(
            "no file: the embedded-model defaults",
            None,
            NO_ENV,
            &[
                ("server.bind_address", "127.0.0.1:8080"),
                ("server.connection_pool_size", "500"),
                ("server.keepalive_timeout", "1m15s"),
                ("server.max_request_size", "10MiB"),
                ("backends[0].name", "local"),
                ("backends[0].type", "local"),
                ("routing.strategy", "RoundRobin"),
                ("request.timeout", "30s"),
                ("request.streaming_timeout", "5m"),
                ("request.retry_backoff.initial", "50ms"),
                ("health_checks.circuit_breaker.max_open_duration", "5m"),
                ("cache.response.max_bytes", "64MiB"),
                ("cache.redis.timeout", "250ms"),
                ("inference.batch_size", "512"),
                ("auth.mode", "permissive"),
                ("logging.format", "text"),
            ],
        ),
        ok(
            "a file overrides defaults and keeps the rest",
            Some("server:\n  workers: 2\nrequest:\n  max_retries: 0\n"),
            NO_ENV,
            &[("server.workers", "2"), ("request.max_retries", "0"), ("request.timeout", "30s")],
        ),
        ok(
            "listing backends replaces the local default",
            Some("backends:\n  - { name: a, url: 'http://a:1/v1' }\n"),
            NO_ENV,
            &[
                ("backends[0].name", "a"),
                ("backends[0].type", "openai"),
                ("backends[0].weight", "1"),
            ],
        ),
        ok(
            "SWITCHYARD_* beats the file",
            Some("server:\n  workers: 2\n  bind_address: 0.0.0.0:1\n"),
            &[("SWITCHYARD_SERVER__WORKERS", "4")],
            &[("server.workers", "4"), ("server.bind_address", "0.0.0.0:1")],
        ),
        Case {
            name: "the command line beats env and file",
            yaml: Some("server:\n  bind_address: 0.0.0.0:1\nlogging: { level: warn }\n"),
            env: &[
                ("SWITCHYARD_SERVER__BIND_ADDRESS", "0.0.0.0:2"),
                ("SWITCHYARD_LOGGING__LEVEL", "error"),
            ],
            cli: Cli {
                bind: Some("0.0.0.0:3"),
                model: Some("/m/tiny.gguf"),
                log_level: Some("debug"),
            },
            expect: Expect::Values(&[
                ("server.bind_address", "0.0.0.0:3"),
                ("inference.model_path", "/m/tiny.gguf"),
                ("logging.level", "debug"),
            ]),
        },
        ok(
            "env nests with __ at any depth and is typed by the schema",
            None,
            &[
                ("SWITCHYARD_REQUEST__MAX_RETRIES", "5"),
                ("SWITCHYARD_REQUEST__RETRY_BACKOFF__INITIAL", "100ms"),
                ("SWITCHYARD_REQUEST__RETRY_BACKOFF__JITTER", "false"),
                ("SWITCHYARD_HEALTH_CHECKS__CIRCUIT_BREAKER__FAILURE_THRESHOLD", "9"),
                ("SWITCHYARD_SERVER__BIND_ADDRESS", "[::1]:9000"),
                ("SWITCHYARD_ROUTING__STRATEGY", "least_connections"),
                ("SWITCHYARD_REQUEST__TIMEOUT", "45"),
            ],
            &[
                ("request.max_retries", "5"),
                ("request.retry_backoff.initial", "100ms"),
                ("request.retry_backoff.jitter", "false"),
                ("health_checks.circuit_breaker.failure_threshold", "9"),
                ("server.bind_address", "[::1]:9000"),
                ("routing.strategy", "LeastConnections"),
                ("request.timeout", "45s"),
            ],
        ),
        ok(
            "env lists of scalars use [a, b]",
            None,
            &[
                ("SWITCHYARD_RATE_LIMIT__TRUSTED_PROXIES", "[10.0.0.0/8, 192.168.1.10]"),
                ("SWITCHYARD_CACHE__RESPONSE__MODELS", "[gpt-4o, llama-3.1-8b]"),
            ],
            &[
                ("rate_limit.trusted_proxies[0]", "10.0.0.0/8"),
                ("rate_limit.trusted_proxies[1]", "192.168.1.10/32"),
                ("cache.response.models[1]", "llama-3.1-8b"),
            ],
        ),
        ok(
            "SWITCHYARD_ vars without __ are not keys",
            None,
            &[("SWITCHYARD_MODEL_DIR", "/models"), ("SWITCHYARD_LOG", "x")],
            &[("server.workers", "0")],
        ),
        ok(
            "LLM_* aliases set inference and beat the file",
            Some("inference:\n  threads: 1\n  batch_size: 64\n"),
            &[("LLM_MAX_THREADS", "2"), ("LLM_BATCH_SIZE", "8"), ("LLM_CONTEXT_SIZE", "4096")],
            &[
                ("inference.threads", "2"),
                ("inference.batch_size", "8"),
                ("inference.context_size", "4096"),
            ],
        ),
        ok(
            "SWITCHYARD_INFERENCE__* beats LLM_*",
            None,
            &[("LLM_MAX_THREADS", "2"), ("SWITCHYARD_INFERENCE__THREADS", "3")],
            &[("inference.threads", "3")],
        ),
        ok(
            "an empty file is the defaults",
            Some("# nothing yet\n"),
            NO_ENV,
            &[("backends[0].type", "local")],
        ),
        ok(
            "a key with no value is unset",
            Some("server:\n  tls:\nbackends:\n  - name: l\n    type: local\n    url:\n"),
            NO_ENV,
            &[("server.tls", "null"), ("backends[0].url", "null")],
        ),
    ]);
}

#[test]
fn references_and_formats() {
    run(&[
        ok(
            "${VAR} and ${VAR:-default} expand; secrets are masked",
            Some(concat!(
                "backends:\n",
                "  - name: a\n",
                "    url: ${BASE:-http://fallback:8000}/v1\n",
                "    api_key: ${KEY}\n",
                "    headers: { X-Team: '${TEAM:-core}', X-Literal: '$${NOT_A_REF}' }\n",
                "metrics: { endpoint: '${METRICS_PATH:-/metrics}' }\n",
            )),
            &[("KEY", "sk-secret")],
            &[
                ("backends[0].url", "http://fallback:8000/v1"),
                ("backends[0].api_key", "***"),
                ("backends[0].headers.X-Team", "***"),
                ("metrics.endpoint", "/metrics"),
            ],
        ),
        ok(
            "references can feed typed values",
            Some("request: { timeout: '${T:-1m30s}' }\nserver: { bind_address: '${ADDR}' }\n"),
            &[("ADDR", "0.0.0.0:7000")],
            &[("request.timeout", "1m30s"), ("server.bind_address", "0.0.0.0:7000")],
        ),
        ok(
            "an empty ${VAR:-} secret means no secret",
            Some("backends: [{ name: a, url: 'http://a', api_key: '${NOKEY:-}' }]\n"),
            NO_ENV,
            &[("backends[0].api_key", "null")],
        ),
        ok(
            "duration forms",
            Some(concat!(
                "request:\n",
                "  timeout: 1m30s\n",
                "  streaming_timeout: 600\n",
                "  connect_timeout: 1.5\n",
                "  first_byte_timeout: 500ms\n",
                "  stream_idle_timeout: '45'\n",
                "cache: { model_cache_ttl: 1h, model_cache_max_stale: 2d }\n",
            )),
            NO_ENV,
            &[
                ("request.timeout", "1m30s"),
                ("request.streaming_timeout", "10m"),
                ("request.connect_timeout", "1s500ms"),
                ("request.first_byte_timeout", "500ms"),
                ("request.stream_idle_timeout", "45s"),
                ("cache.model_cache_ttl", "1h"),
                ("cache.model_cache_max_stale", "2d"),
            ],
        ),
        ok(
            "byte-size forms",
            Some(
                "server: { max_request_size: 512KB }\ncache: { response: { max_bytes: 1048576 } }\n",
            ),
            NO_ENV,
            &[("server.max_request_size", "500KiB"), ("cache.response.max_bytes", "1MiB")],
        ),
        ok(
            "names are read case-insensitively and in snake_case",
            Some(concat!(
                "routing: { strategy: weighted_round_robin, fallback_strategy: POWER_OF_TWO_CHOICES }\n",
                "backends: [{ name: a, type: LlamaCpp, url: 'http://a', http2: H2C }]\n",
                "logging: { format: JSON }\nauth: { mode: Permissive }\n",
            )),
            NO_ENV,
            &[
                ("routing.strategy", "WeightedRoundRobin"),
                ("routing.fallback_strategy", "PowerOfTwoChoices"),
                ("backends[0].type", "llamacpp"),
                ("backends[0].http2", "h2c"),
                ("logging.format", "json"),
            ],
        ),
        ok(
            "weights by backend name or url",
            Some(concat!(
                "backends:\n",
                "  - { name: a, url: 'http://backend1:11434' }\n",
                "  - { name: b, url: 'http://backend2:11434/' }\n",
                "routing:\n",
                "  strategy: WeightedRoundRobin\n",
                "  weights: { a: 3, 'http://backend2:11434': 1 }\n",
            )),
            NO_ENV,
            &[("routing.weights.a", "3")],
        ),
        ok(
            "aliases and fallbacks over known models",
            Some(concat!(
                "backends:\n",
                "  - { name: oai, url: 'https://api.openai.com/v1', models: [gpt-4o] }\n",
                "  - { name: claude, type: anthropic, url: 'https://api.anthropic.com/v1', models: [claude-sonnet] }\n",
                "  - { name: local, type: local }\n",
                "inference: { model_id: local-model }\n",
                "routing:\n",
                "  model_aliases: { smart: gpt-4o, best: smart }\n",
                "  fallbacks: { gpt-4o: [claude-sonnet, local-model], smart: [local-model] }\n",
            )),
            NO_ENV,
            &[
                ("routing.fallbacks.gpt-4o[1]", "local-model"),
                ("routing.model_aliases.best", "smart"),
            ],
        ),
        ok(
            "unknown models are not checked while a backend discovers its list",
            Some(concat!(
                "backends: [{ name: a, url: 'http://a' }]\n",
                "routing: { model_aliases: { x: whatever }, fallbacks: { m: [n] } }\n",
            )),
            NO_ENV,
            &[("routing.model_aliases.x", "whatever")],
        ),
    ]);
}

#[test]
fn every_rule_names_its_key() {
    run(&[
        err(
            "unknown key with a suggestion",
            "server:\n  bind_adress: 0.0.0.0:80\n",
            &["server.bind_adress: unknown key \"bind_adress\" (did you mean \"bind_address\"?)"],
        ),
        err(
            "unknown key without a close match lists the valid ones",
            "health_checks:\n  colour: red\n",
            &[
                "health_checks.colour: unknown key \"colour\" (valid keys here: enabled, interval, timeout, unhealthy_threshold, healthy_threshold, warmup_interval, circuit_breaker, max_ejection_percent)",
            ],
        ),
        err(
            "unknown section",
            "rooting:\n  strategy: Random\n",
            &["rooting: unknown key \"rooting\" (did you mean \"routing\"?)"],
        ),
        err(
            "unknown key inside a backend",
            "backends: [{ name: a, url: 'http://a', modles: [x] }]\n",
            &["backends[0].modles: unknown key \"modles\" (did you mean \"models\"?)"],
        ),
        err(
            "bad type",
            "server: { workers: many }\n",
            &["server.workers: expected a non-negative integer, found string \"many\""],
        ),
        err(
            "bad duration",
            "request: { timeout: 5x }\n",
            &[
                "request.timeout: invalid duration \"5x\": unknown unit \"x\" (use a number with ns, us, ms, s, m, h or d, e.g. \"30s\", \"500ms\", \"1m30s\", or a plain number of seconds)",
            ],
        ),
        err(
            "negative duration",
            "request: { timeout: -3 }\n",
            &["request.timeout: invalid duration -3: must not be negative"],
        ),
        err(
            "bad byte size",
            "server: { max_request_size: 10XB }\n",
            &[
                "server.max_request_size: invalid byte size \"10XB\": unknown unit \"xb\" (use a number with B, KB, MB, GB, KiB, MiB or GiB, e.g. \"10MiB\", or a plain number of bytes)",
            ],
        ),
        err(
            "backend without url",
            "backends:\n  - { name: local, type: local }\n  - { name: vllm-a, type: vllm }\n",
            &["backends[1].url: backend \"vllm-a\" needs a url"],
        ),
        err(
            "local backend with a url or models",
            "backends: [{ name: l, type: local, url: 'http://x', models: [m] }]\n",
            &[
                "backends[0].models: a local backend serves one model: name it with inference.model_id",
                "backends[0].url: backend \"l\" is type local and takes no url (it serves the embedded model; see inference)",
            ],
        ),
        err(
            "two local backends",
            "backends: [{ name: l1, type: local }, { name: l2, type: local }]\n",
            &[
                "backends[1].type: only one local backend is allowed (backends[0] is one): the embedded model is loaded once",
            ],
        ),
        err(
            "backend without a name",
            "backends: [{ url: 'http://a' }]\n",
            &["backends[0].name: a backend needs a name"],
        ),
        err(
            "duplicate backend names",
            "backends:\n  - { name: a, url: 'http://a' }\n  - { name: a, url: 'http://b' }\n",
            &["backends[1].name: duplicate backend name \"a\" (also backends[0])"],
        ),
        err(
            "unparseable backend url and port",
            "backends:\n  - { name: a, url: 'localhost:8000' }\n  - { name: b, url: 'http://b:99999/v1' }\n",
            &[
                "backends[0].url: \"localhost:8000\" is not a valid backend url: expected http:// or https://",
                "backends[1].url: \"http://b:99999/v1\" is not a valid backend url: port \"99999\" is not a number from 1 to 65535",
            ],
        ),
        err(
            "h2c over https",
            "backends: [{ name: a, url: 'https://a', http2: h2c }]\n",
            &[
                "backends[0].http2: h2c is HTTP/2 over cleartext but this backend's url is https (use auto: HTTP/2 is negotiated by ALPN)",
            ],
        ),
        err(
            "unknown backend type",
            "backends: [{ name: a, type: openia, url: 'http://a' }]\n",
            &[
                "backends[0].type: unknown backend type \"openia\" (did you mean \"openai\"?); valid: openai, vllm, ollama, llamacpp, lmstudio, localai, anthropic, gemini, local",
            ],
        ),
        err(
            "unknown strategy lists the valid ones",
            "routing: { strategy: Fastest }\n",
            &[
                "routing.strategy: unknown strategy \"Fastest\"; valid: RoundRobin, WeightedRoundRobin, LeastLatency, Random, ConsistentHash, LeastConnections, PowerOfTwoChoices",
            ],
        ),
        err(
            "weights naming an unknown backend",
            "backends: [{ name: vllm-a, url: 'http://a' }]\nrouting: { weights: { vllm-b: 2, 'http://nowhere': 1 } }\n",
            &[
                "routing.weights.\"http://nowhere\": no backend is named \"http://nowhere\" or has that url",
                "routing.weights.vllm-b: no backend is named \"vllm-b\" or has that url (did you mean \"vllm-a\"?)",
            ],
        ),
        err(
            "aliases and fallbacks naming unknown models",
            concat!(
                "backends: [{ name: a, url: 'http://a', models: [gpt-4o, gpt-4o-mini] }]\n",
                "routing:\n",
                "  model_aliases: { fast: gpt-4o-mni }\n",
                "  fallbacks: { gpt-4o: [claude], llama: [gpt-4o] }\n",
            ),
            &[
                "routing.fallbacks.gpt-4o[0]: model \"claude\" is not served by any backend",
                "routing.fallbacks.llama: model \"llama\" is not served by any backend",
                "routing.model_aliases.fast: target model \"gpt-4o-mni\" is not served by any backend (did you mean \"gpt-4o-mini\"?)",
            ],
        ),
        err(
            "alias cycle",
            "routing: { model_aliases: { a: b, b: c, c: a } }\n",
            &["routing.model_aliases.c: routing cycle: a -> b -> c -> a"],
        ),
        err(
            "fallback cycle, through an alias too",
            "routing:\n  model_aliases: { fast: m1 }\n  fallbacks: { m1: [m2], m2: [fast] }\n",
            &["routing.fallbacks.m2[0]: routing cycle: fast -> m1 -> m2 -> fast"],
        ),
        err(
            "a model falling back to itself",
            "routing: { fallbacks: { m: [m] } }\n",
            &["routing.fallbacks.m[0]: routing cycle: m -> m"],
        ),
        err(
            "thresholds of 0",
            concat!(
                "health_checks:\n",
                "  unhealthy_threshold: 0\n",
                "  healthy_threshold: 0\n",
                "  circuit_breaker: { failure_threshold: 0 }\n",
                "backends: [{ name: a, url: 'http://a', health_check: { healthy_threshold: 0 } }]\n",
                "routing: { consistent_hash: { virtual_nodes: 0 } }\n",
            ),
            &[
                "backends[0].health_check.healthy_threshold: must be greater than 0",
                "health_checks.circuit_breaker.failure_threshold: must be greater than 0",
                "health_checks.healthy_threshold: must be greater than 0",
                "health_checks.unhealthy_threshold: must be greater than 0",
                "routing.consistent_hash.virtual_nodes: must be greater than 0",
            ],
        ),
        err(
            "zero timeouts and intervals",
            "request: { timeout: 0s }\nhealth_checks: { interval: 0 }\nbackends: [{ name: a, url: 'http://a', timeouts: { idle: 0ms } }]\n",
            &[
                "backends[0].timeouts.idle: must be longer than 0s",
                "health_checks.interval: must be longer than 0s",
                "request.timeout: must be longer than 0s",
            ],
        ),
        err(
            "addresses that do not parse",
            "server: { bind_address: '0.0.0.0' }\n",
            &[
                "server.bind_address: invalid address \"0.0.0.0\": expected IP:PORT, e.g. \"127.0.0.1:8080\", \"0.0.0.0:8080\" or \"[::1]:8080\"",
            ],
        ),
        err(
            "tls cert without key",
            "server: { tls: { cert: /etc/cert.pem } }\n",
            &["server.tls.key: tls.cert is set but tls.key is not"],
        ),
        err(
            "trusted proxy that is not a network",
            "rate_limit: { trusted_proxies: [10.0.0.0/8, proxy.local] }\n",
            &[
                "rate_limit.trusted_proxies[1]: \"proxy.local\" is not an IP address or CIDR network (e.g. \"10.0.0.0/8\", \"192.168.1.10\", \"fd00::/8\")",
            ],
        ),
        err(
            "ranges and cross-field rules",
            concat!(
                "routing: { least_latency: { exploration: 1.5 }, consistent_hash: { load_factor: 0 } }\n",
                "request: { retry_backoff: { initial: 5s, max: 1s, multiplier: 0.5 }, retry_budget: { ratio: 2 } }\n",
                "health_checks: { max_ejection_percent: 150 }\n",
                "metrics: { endpoint: /v1/metrics, auth: { enabled: true } }\n",
                "logging: { level: verbose }\n",
            ),
            &[
                "health_checks.max_ejection_percent: must be between 0 and 100, got 150",
                "logging.level: unknown log level \"verbose\"; valid: trace, debug, info, warn, error, off, or target=level directives",
                "metrics.auth.password: required when metrics.auth is enabled",
                "metrics.auth.username: required when metrics.auth is enabled",
                "metrics.endpoint: \"/v1/metrics\" is under /v1, which the router's API uses",
                "request.retry_backoff.initial: 5s is longer than retry_backoff.max (1s)",
                "request.retry_backoff.multiplier: must be at least 1, got 0.5",
                "request.retry_budget.ratio: must be between 0 and 1, got 2",
                "routing.consistent_hash.load_factor: must be greater than 0, got 0",
                "routing.least_latency.exploration: must be between 0 and 1, got 1.5",
            ],
        ),
        err(
            "auth and rate-limit rules",
            concat!(
                "auth:\n",
                "  mode: blocking\n",
                "  api_keys: [{ name: a, key: k1 }, { name: a, key: k1 }, { key: k2 }]\n",
                "  admin_api_key: k2\n",
                "rate_limit: { enabled: true, per_ip: { requests_per_minute: 0, burst: 0 } }\n",
            ),
            &[
                "auth.admin_api_key: must differ from every client key",
                "auth.api_keys[1].key: same key as auth.api_keys[0]",
                "auth.api_keys[1].name: duplicate key name \"a\" (also auth.api_keys[0])",
                "auth.api_keys[2].name: a key needs a name (used in logs and metrics instead of the key)",
                "rate_limit.per_ip.burst: must be greater than 0",
                "rate_limit.per_ip.requests_per_minute: must be greater than 0",
            ],
        ),
        err(
            "blocking auth with no keys",
            "auth: { mode: blocking }\nrate_limit: { enabled: true }\n",
            &[
                "auth.mode: blocking needs keys in auth.api_keys or auth.api_keys_file (otherwise every request is refused)",
                "rate_limit.enabled: rate limiting is enabled but no limit is set (per_key, per_ip, per_backend or global)",
            ],
        ),
        err(
            "an empty backend list",
            "backends: []\n",
            &[
                "backends: at least one backend is required (leave the key out to serve the embedded model)",
            ],
        ),
        err(
            "a missing variable names the key and the variable",
            "backends: [{ name: a, url: 'http://a', api_key: '${OPENAI_API_KEY}' }]\n",
            &[
                "backends[0].api_key: environment variable OPENAI_API_KEY is not set (referenced as ${OPENAI_API_KEY}; write ${OPENAI_API_KEY:-default} to fall back to a default)",
            ],
        ),
        err(
            "a section written as a list",
            "server: [1, 2]\n",
            &["server: expected a mapping, found sequence"],
        ),
    ]);
}

#[test]
fn all_errors_are_collected_with_original_indices() {
    run(&[
        err(
            "many problems at once, across layers of the tree",
            concat!(
                "server: { bind_adress: x, workers: many }\n",
                "backends:\n",
                "  - not-a-mapping\n",
                "  - { name: vllm-a, type: vllm }\n",
                "  - { name: vllm-a, url: 'http://b', api_key: '${MISSING}' }\n",
                "  - { name: c, type: nope, url: 'http://c' }\n",
                "  - { name: d }\n",
                "routing: { strategy: LeastLatncy, weights: { zz: 1 } }\n",
                "request: { timeout: soon }\n",
            ),
            &[
                "backends[0]: expected a mapping, found string \"not-a-mapping\"",
                "backends[1].url: backend \"vllm-a\" needs a url",
                "backends[2].api_key: environment variable MISSING is not set (referenced as ${MISSING}; write ${MISSING:-default} to fall back to a default)",
                "backends[2].name: duplicate backend name \"vllm-a\" (also backends[1])",
                "backends[3].type: unknown backend type \"nope\"; valid: openai, vllm, ollama, llamacpp, lmstudio, localai, anthropic, gemini, local",
                "backends[4].url: backend \"d\" needs a url",
                "request.timeout: invalid duration \"soon\": expected a number (use a number with ns, us, ms, s, m, h or d, e.g. \"30s\", \"500ms\", \"1m30s\", or a plain number of seconds)",
                "routing.strategy: unknown strategy \"LeastLatncy\" (did you mean \"LeastLatency\"?); valid: RoundRobin, WeightedRoundRobin, LeastLatency, Random, ConsistentHash, LeastConnections, PowerOfTwoChoices",
                "routing.weights.zz: no backend is named \"zz\" or has that url",
                "server.bind_adress: unknown key \"bind_adress\" (did you mean \"bind_address\"?)",
                "server.workers: expected a non-negative integer, found string \"many\"",
            ],
        ),
        err(
            "several bad list elements keep their written positions",
            "backends:\n  - 1\n  - { name: a }\n  - 2\n  - { name: b, url: 'http://b', models: [ok, 3, ''] }\n",
            &[
                "backends[0]: expected a mapping, found unsigned int `1`",
                "backends[1].url: backend \"a\" needs a url",
                "backends[2]: expected a mapping, found unsigned int `2`",
                "backends[3].models[1]: expected a string, found unsigned int `3`",
                "backends[3].models[2]: empty model id",
            ],
        ),
        Case {
            name: "errors from env and the command line say where they came from",
            yaml: None,
            env: &[
                ("SWITCHYARD_SERVER__WORKERS", "lots"),
                ("SWITCHYARD_SERVER__BIND_ADRESS", "x"),
                ("LLM_BATCH_SIZE", "big"),
            ],
            cli: Cli { bind: Some("nowhere"), ..Cli::default() },
            expect: Expect::Errors(&[
                "inference.batch_size: expected a non-negative integer, found string \"big\" (from env LLM_BATCH_SIZE)",
                "server.bind_address: invalid address \"nowhere\": expected IP:PORT, e.g. \"127.0.0.1:8080\", \"0.0.0.0:8080\" or \"[::1]:8080\" (from the command line: --bind)",
                "server.bind_adress: unknown key \"bind_adress\" (did you mean \"bind_address\"?) (from env SWITCHYARD_SERVER__BIND_ADRESS)",
                "server.workers: expected a non-negative integer, found string \"lots\" (from env SWITCHYARD_SERVER__WORKERS)",
            ]),
        },
    ]);
}

#[test]
fn syntax_errors_name_the_file_and_line() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.yaml");
    std::fs::write(&path, "server:\n  workers: [1\n").unwrap();
    let overrides = Overrides { config_path: Some(path.clone()), ..Overrides::default() };
    let err = Config::load_with(&overrides, &Environment::empty()).unwrap_err();
    let text = err.to_string();
    assert!(matches!(err, ConfigError::Parse { .. }), "{err:?}");
    assert!(text.starts_with(&format!("{} is not valid YAML", path.display())), "{text}");
    assert!(text.contains("line 3"), "{text}");

    let err = Config::from_yaml_str("server: {}\nserver: {}\n").unwrap_err();
    assert!(err.to_string().contains("duplicate"), "{err}");
    let err = Config::from_yaml_str("- a\n- b\n").unwrap_err();
    assert_eq!(
        err.to_string(),
        "the config text must be a mapping of sections (server:, backends:, ...), not sequence"
    );
}

#[test]
fn discovery_order_and_source() {
    let dir = tempfile::tempdir().unwrap();
    let cwd_file = dir.path().join("cwd.yaml");
    let user_file = dir.path().join("user.yaml");
    let env = Environment::empty().with_search_path(&cwd_file).with_search_path(&user_file);

    let (config, source) = Config::load_with(&Overrides::default(), &env).unwrap();
    assert_eq!(source, ConfigSource::Defaults);
    assert_eq!(source.path(), None);
    assert_eq!(config, Config::default());

    std::fs::write(&user_file, "server: { workers: 2 }\n").unwrap();
    let (config, source) = Config::load_with(&Overrides::default(), &env).unwrap();
    assert_eq!((config.server.workers, source), (2, ConfigSource::Discovered(user_file.clone())));

    std::fs::write(&cwd_file, "server: { workers: 3 }\n").unwrap();
    let (config, source) = Config::load_with(&Overrides::default(), &env).unwrap();
    assert_eq!((config.server.workers, source), (3, ConfigSource::Discovered(cwd_file.clone())));

    let named = dir.path().join("named.yaml");
    std::fs::write(&named, "server: { workers: 4 }\n").unwrap();
    let overrides = Overrides { config_path: Some(named.clone()), ..Overrides::default() };
    let (config, source) = Config::load_with(&overrides, &env).unwrap();
    assert_eq!((config.server.workers, source.path()), (4, Some(named.as_path())));

    let via_env = env.clone().with_var("SWITCHYARD_CONFIG", named.display().to_string());
    let (_, source) = Config::load_with(&Overrides::default(), &via_env).unwrap();
    assert_eq!(source, ConfigSource::Explicit(named.clone()));

    let missing = dir.path().join("missing.yaml");
    let overrides = Overrides { config_path: Some(missing.clone()), ..Overrides::default() };
    let err = Config::load_with(&overrides, &env).unwrap_err();
    assert!(matches!(&err, ConfigError::NotFound { path } if *path == missing), "{err:?}");
    assert_eq!(err.to_string(), format!("config file {} does not exist", missing.display()));
    assert_eq!(ConfigError::EXIT_CODE, 64);
}

/// Every `${VAR}` without a default that an example file references, each set to its
/// own harmless value.
fn example_environment(text: &str) -> Environment {
    let mut env = Environment::empty();
    for part in text.split("${").skip(1) {
        let name: String =
            part.chars().take_while(|c| c.is_ascii_alphanumeric() || *c == '_').collect();
        if !part[name.len()..].starts_with(":-") {
            env = env.with_var(name.clone(), format!("example-{name}"));
        }
    }
    env
}

#[test]
fn every_example_config_loads() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/configs");
    let mut loaded = Vec::new();
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().and_then(|e| e.to_str()) != Some("yaml") {
            continue;
        }
        let text = std::fs::read_to_string(&path).unwrap();
        let overrides = Overrides { config_path: Some(path.clone()), ..Overrides::default() };
        let result = Config::load_with(&overrides, &example_environment(&text));
        let (config, _) = result.unwrap_or_else(|e| panic!("{}:\n{e}", path.display()));
        // `config print` output loads back to the same config (secrets aside).
        if !text.contains("${") {
            let reloaded = Config::from_yaml_str(&config.to_masked_yaml()).unwrap();
            assert_eq!(reloaded, config, "{}", path.display());
        }
        loaded.push(path.file_name().unwrap().to_string_lossy().into_owned());
    }
    loaded.sort();
    assert!(loaded.len() >= 5, "examples found: {loaded:?}");
    for expected in ["openai.yaml", "mixed-fleet.yaml", "low-latency.yaml", "low-memory.yaml"] {
        assert!(loaded.iter().any(|l| l == expected), "{expected} missing from {loaded:?}");
    }
}

#[test]
fn starter_config_loads_and_is_commented() {
    let starter = starter_config();
    let config = Config::from_yaml_str(starter).unwrap();
    assert_eq!(config.backends.len(), 1);
    assert_eq!(config.server.bind_address.to_string(), "127.0.0.1:8080");
    // It spells out the defaults, so it means the same as no file at all.
    assert_eq!(config, Config::default());
    assert!(starter.lines().filter(|l| l.trim_start().starts_with('#')).count() > 20);

    // The commented-out examples are valid too once uncommented.
    let uncommented: String = starter
        .lines()
        .map(|line| match line.strip_prefix("  # ") {
            Some(rest) if !rest.starts_with(' ') && !rest.starts_with('#') => format!("  {rest}"),
            _ => line.to_owned(),
        })
        .map(|line| line.strip_prefix("  #   ").map_or(line.clone(), |rest| format!("    {rest}")))
        .collect::<Vec<_>>()
        .join("\n");
    let env = Environment::empty()
        .with_var("OPENAI_API_KEY", "sk-x")
        .with_var("ANTHROPIC_API_KEY", "sk-y");
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("s.yaml");
    std::fs::write(&path, &uncommented).unwrap();
    let overrides = Overrides { config_path: Some(path), ..Overrides::default() };
    let (config, _) = Config::load_with(&overrides, &env)
        .unwrap_or_else(|e| panic!("uncommented starter:\n{uncommented}\n{e}"));
    assert_eq!(config.backends.len(), 4);
    assert!(config.server.tls.is_some());
}

#[test]
fn secrets_never_leak() {
    const CANARY: &str = "sk-canary-7f3a";
    let yaml = concat!(
        "backends:\n",
        "  - name: a\n",
        "    url: http://a\n",
        "    api_key: ${KEY}\n",
        "    headers: { X-Token: '${KEY}' }\n",
        "auth: { api_keys: [{ name: c, key: '${KEY}' }, { name: d, key: '${KEY}' }], admin_api_key: '${KEY}' }\n",
        "metrics: { auth: { enabled: true, username: u, password: '${KEY}' } }\n",
        "cache: { redis: { url: 'http://user:${KEY}@h' } }\n",
    );
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("s.yaml");
    std::fs::write(&path, yaml).unwrap();
    let overrides = Overrides { config_path: Some(path), ..Overrides::default() };
    let env = Environment::empty().with_var("KEY", CANARY);
    let err = Config::load_with(&overrides, &env).unwrap_err();
    let text = format!("{err}\n{err:?}");
    assert!(text.contains("same key as auth.api_keys[0]"), "{text}");
    assert!(text.contains("cache.redis.url: expected a redis://"), "{text}");
    assert!(!text.contains(CANARY), "secret in error: {text}");
    assert!(!format!("{env:?}").contains(CANARY));

    let ok = Config::from_yaml_str(
        "backends: [{ name: a, url: 'http://a', api_key: sk-canary-7f3a, headers: { X-T: sk-canary-7f3a } }]\n",
    )
    .unwrap();
    assert!(!ok.to_masked_yaml().contains(CANARY));
    assert!(!format!("{ok:?}").contains(CANARY));
    assert_eq!(ok.backends[0].api_key.as_ref().unwrap().expose(), CANARY);
    assert_eq!(ok.backends[0].headers["X-T"].expose(), CANARY);
}

#[test]
fn check_file_validates_a_file() {
    let dir = tempfile::tempdir().unwrap();
    let good = dir.path().join("good.yaml");
    std::fs::write(&good, "routing: { strategy: Random }\n").unwrap();
    assert_eq!(
        Config::check_file(&good).unwrap().routing.strategy,
        switchyard_config::Strategy::Random
    );
    let bad = dir.path().join("bad.yaml");
    std::fs::write(&bad, "routing: { stratgy: Random }\n").unwrap();
    let err = Config::check_file(&bad).unwrap_err();
    assert_eq!(err.issues()[0].path, "routing.stratgy");
    assert!(Config::check_file(&dir.path().join("nope.yaml")).is_err());
}

#[test]
fn api_keys_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("keys.yaml");
    std::fs::write(&path, "- { name: a, key: k1, models: [m] }\n- { name: b, key: k2 }\n").unwrap();
    let keys = ApiKeyConfig::load_file(&path).unwrap();
    assert_eq!(keys.len(), 2);
    assert_eq!((keys[0].name.as_str(), keys[0].key.expose(), keys[0].models.len()), ("a", "k1", 1));

    let json = dir.path().join("keys.json");
    std::fs::write(
        &json,
        r#"[{"name": "a", "key": "k1"}, {"name": "a", "key": "k1", "modles": []}]"#,
    )
    .unwrap();
    let err = ApiKeyConfig::load_file(&json).unwrap_err();
    let shown = json.display().to_string();
    assert_eq!(
        err.to_string(),
        format!(
            "{shown}[1].key: same key as {shown}[0]\n{shown}[1].modles: unknown key \"modles\" (did you mean \"models\"?)\n{shown}[1].name: duplicate key name \"a\" (also {shown}[0])"
        )
    );
}

#[test]
fn the_documented_full_example_loads() {
    let docs = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs/configuration.md");
    let text = std::fs::read_to_string(docs).unwrap();
    let example = text.split("## A full example").nth(1).unwrap();
    let yaml = example.split("```yaml\n").nth(1).unwrap().split("```").next().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("full.yaml");
    std::fs::write(&path, yaml).unwrap();
    let overrides = Overrides { config_path: Some(path), ..Overrides::default() };
    let (config, _) = Config::load_with(&overrides, &example_environment(yaml))
        .unwrap_or_else(|e| panic!("docs/configuration.md full example:\n{e}"));
    assert_eq!(config.backends.len(), 4);
    assert_eq!(config.routing.resolve_alias("fast"), "gpt-4o-mini");
    assert_eq!(config.routing.weight_for(&config.backends[0]), 3);
}
