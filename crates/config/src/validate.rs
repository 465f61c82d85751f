//! Rules that span fields or need more than a type: a backend needs a url, names are
//! unique, weights and fallbacks name things that exist, thresholds are not 0 ...
//!
//! [`check`] returns every problem with its key path; it never stops at the first.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use crate::path::{KeyPath, kp};
use crate::schema::{AuthMode, BackendType, Config, Http2Mode, RateLimitRule};
use crate::secret::Secret;
use crate::suggest;

/// Paths the public API reserves; `metrics.endpoint` may not shadow them.
const RESERVED_PATHS: &[&str] = &["/v1", "/api", "/admin", "/health"];
/// Valid `logging.level` words.
const LOG_LEVELS: &[&str] = &["trace", "debug", "info", "warn", "error", "off"];

type Found = Vec<(KeyPath, String)>;

/// Tidy values that mean "not set" in a friendlier spelling: an empty secret (from
/// `${VAR:-}`) is no secret.
pub(crate) fn normalize(config: &mut Config) {
    fn clear(secret: &mut Option<Secret>) {
        if secret.as_ref().is_some_and(Secret::is_empty) {
            *secret = None;
        }
    }
    for backend in &mut config.backends {
        clear(&mut backend.api_key);
        if backend.url.as_deref().is_some_and(|u| u.trim().is_empty()) {
            backend.url = None;
        }
    }
    clear(&mut config.cache.redis.url);
    clear(&mut config.rate_limit.redis.url);
    clear(&mut config.auth.admin_api_key);
    clear(&mut config.metrics.auth.password);
}

/// Renders a path that a message refers to (`also backends[0]`) in the indices the
/// user wrote, which differ from the config's when the loader dropped a bad element.
pub(crate) type Name<'a> = &'a dyn Fn(KeyPath) -> String;

/// Every rule, every problem.
pub(crate) fn check(config: &Config, name: Name<'_>) -> Found {
    let mut found = Found::new();
    server(config, &mut found);
    backends(config, name, &mut found);
    routing(config, &mut found);
    request(config, &mut found);
    health(config, &mut found);
    cache(config, &mut found);
    observability(config, &mut found);
    inference(config, &mut found);
    auth(config, name, &mut found);
    rate_limit(config, &mut found);
    found
}

fn positive(found: &mut Found, at: KeyPath, value: u64) {
    if value == 0 {
        found.push((at, "must be greater than 0".into()));
    }
}

fn nonzero_duration(found: &mut Found, at: KeyPath, value: Duration) {
    if value.is_zero() {
        found.push((at, "must be longer than 0s".into()));
    }
}

fn fraction(found: &mut Found, at: KeyPath, value: f64, low: f64, high: f64) {
    if !(value.is_finite() && value >= low && value <= high) {
        found.push((at, format!("must be between {low} and {high}, got {value}")));
    }
}

fn to_u64(n: usize) -> u64 {
    u64::try_from(n).unwrap_or(u64::MAX)
}

fn server(config: &Config, found: &mut Found) {
    let s = &config.server;
    positive(found, kp!["server", "connection_pool_size"], to_u64(s.connection_pool_size));
    positive(found, kp!["server", "max_connections"], to_u64(s.max_connections));
    positive(found, kp!["server", "max_request_size"], s.max_request_size);
    nonzero_duration(found, kp!["server", "header_read_timeout"], s.header_read_timeout);
    if let Some(tls) = &s.tls {
        let (cert, key) = (tls.cert.as_os_str().is_empty(), tls.key.as_os_str().is_empty());
        match (cert, key) {
            (true, true) => found.push((
                kp!["server", "tls"],
                "needs cert and key (remove the section to serve plain HTTP)".into(),
            )),
            (false, true) => found
                .push((kp!["server", "tls", "key"], "tls.cert is set but tls.key is not".into())),
            (true, false) => found
                .push((kp!["server", "tls", "cert"], "tls.key is set but tls.cert is not".into())),
            (false, false) => {}
        }
    }
}

fn backends(config: &Config, name: Name<'_>, found: &mut Found) {
    if config.backends.is_empty() {
        found.push((
            kp!["backends"],
            "at least one backend is required (leave the key out to serve the embedded model)"
                .into(),
        ));
    }
    let mut seen_names: BTreeMap<&str, usize> = BTreeMap::new();
    let mut local: Option<usize> = None;
    for (i, b) in config.backends.iter().enumerate() {
        let at = kp!["backends", i];
        let label = if b.name.is_empty() { format!("#{i}") } else { format!("{:?}", b.name) };
        if b.name.is_empty() {
            found.push((at.join("name"), "a backend needs a name".into()));
        } else if !b.name.chars().all(|c| c.is_ascii_alphanumeric() || "-_.:".contains(c)) {
            found.push((
                at.join("name"),
                format!("{:?} may only contain letters, digits, '-', '_', '.' and ':'", b.name),
            ));
        } else if let Some(first) = seen_names.insert(&b.name, i) {
            found.push((
                at.join("name"),
                format!(
                    "duplicate backend name {:?} (also {})",
                    b.name,
                    name(kp!["backends", first])
                ),
            ));
        }
        if b.kind == BackendType::Local {
            if let Some(first) = local.replace(i) {
                found.push((
                    at.join("type"),
                    format!(
                        "only one local backend is allowed ({} is one): the embedded model is loaded once",
                        name(kp!["backends", first])
                    ),
                ));
            }
            if b.url.is_some() {
                found.push((
                    at.join("url"),
                    format!("backend {label} is type local and takes no url (it serves the embedded model; see inference)"),
                ));
            }
            if !b.models.is_empty() {
                found.push((
                    at.join("models"),
                    "a local backend serves one model: name it with inference.model_id".into(),
                ));
            }
        } else {
            match &b.url {
                None => found.push((at.join("url"), format!("backend {label} needs a url"))),
                Some(url) => match check_http_url(url) {
                    Err(why) => found.push((at.join("url"), why)),
                    Ok(https) => {
                        if https && b.http2 == Http2Mode::H2c {
                            found.push((
                                at.join("http2"),
                                "h2c is HTTP/2 over cleartext but this backend's url is https (use auto: HTTP/2 is negotiated by ALPN)".into(),
                            ));
                        }
                    }
                },
            }
        }
        let mut seen_models = BTreeSet::new();
        for (m, model) in b.models.iter().enumerate() {
            if model.trim().is_empty() {
                found.push((at.join("models").join(m), "empty model id".into()));
            } else if !seen_models.insert(model) {
                found.push((at.join("models").join(m), format!("model {model:?} is listed twice")));
            }
        }
        for (name, value) in &b.headers {
            let at = at.join("headers").join(name);
            if name.is_empty() || !name.bytes().all(is_tchar) {
                found.push((at, format!("{name:?} is not a valid header name")));
            } else if value.expose().bytes().any(|c| c == b'\r' || c == b'\n' || c == 0) {
                found.push((at, "header value contains a line break or NUL".into()));
            }
        }
        let t = &b.timeouts;
        for (key, value) in [
            ("connect", t.connect),
            ("first_byte", t.first_byte),
            ("total", t.total),
            ("idle", t.idle),
        ] {
            if let Some(value) = value {
                nonzero_duration(found, at.join("timeouts").join(key), value);
            }
        }
        let h = &b.health_check;
        for (key, value) in [("interval", h.interval), ("timeout", h.timeout)] {
            if let Some(value) = value {
                nonzero_duration(found, at.join("health_check").join(key), value);
            }
        }
        for (key, value) in [
            ("unhealthy_threshold", h.unhealthy_threshold),
            ("healthy_threshold", h.healthy_threshold),
        ] {
            if let Some(value) = value {
                positive(found, at.join("health_check").join(key), u64::from(value));
            }
        }
        if let Some(path) = &h.path
            && !path.starts_with('/')
        {
            found.push((
                at.join("health_check").join("path"),
                format!("{path:?} must start with '/'"),
            ));
        }
        if let Some(max) = b.max_connections {
            positive(found, at.join("max_connections"), to_u64(max));
        }
        if b.kind == BackendType::Anthropic && b.anthropic_version.trim().is_empty() {
            found.push((at.join("anthropic_version"), "must not be empty".into()));
        }
    }
}

fn routing(config: &Config, found: &mut Found) {
    let r = &config.routing;
    let names: Vec<&str> = config.backends.iter().map(|b| b.name.as_str()).collect();
    let urls: Vec<&str> = config.backends.iter().filter_map(|b| b.url.as_deref()).collect();
    let same_url = |a: &str, b: &str| a.trim_end_matches('/') == b.trim_end_matches('/');
    for key in r.weights.keys() {
        let known = names.contains(&key.as_str()) || urls.iter().any(|u| same_url(u, key));
        if !known {
            let hint = suggest::closest(key, names.iter().copied().chain(urls.iter().copied()))
                .map(|s| format!(" (did you mean {s:?}?)"))
                .unwrap_or_default();
            found.push((
                kp!["routing", "weights", key],
                format!("no backend is named {key:?} or has that url{hint}"),
            ));
        }
    }

    let ch = &r.consistent_hash;
    positive(
        found,
        kp!["routing", "consistent_hash", "virtual_nodes"],
        u64::from(ch.virtual_nodes),
    );
    if !(ch.load_factor.is_finite() && ch.load_factor > 0.0) {
        found.push((
            kp!["routing", "consistent_hash", "load_factor"],
            format!("must be greater than 0, got {}", ch.load_factor),
        ));
    }
    if ch.header.is_empty() || !ch.header.bytes().all(is_tchar) {
        found.push((
            kp!["routing", "consistent_hash", "header"],
            format!("{:?} is not a valid header name", ch.header),
        ));
    }
    nonzero_duration(found, kp!["routing", "least_latency", "decay"], r.least_latency.decay);
    fraction(
        found,
        kp!["routing", "least_latency", "exploration"],
        r.least_latency.exploration,
        0.0,
        1.0,
    );

    // Which models exist is known only when no backend discovers its list.
    let known: Option<BTreeSet<&str>> = {
        let mut known = BTreeSet::new();
        let mut complete = true;
        for b in &config.backends {
            if b.kind == BackendType::Local {
                match &config.inference.model_id {
                    Some(id) => {
                        known.insert(id.as_str());
                    }
                    None => complete = false,
                }
            } else if b.models.is_empty() {
                complete = false;
            } else {
                known.extend(b.models.iter().map(String::as_str));
            }
        }
        known.extend(r.model_aliases.keys().map(String::as_str));
        complete.then_some(known)
    };
    let unknown = |model: &str| known.as_ref().is_some_and(|k| !k.contains(model));
    let served_hint = |model: &str| {
        known
            .as_ref()
            .and_then(|k| suggest::closest(model, k.iter().copied()))
            .map(|s| format!(" (did you mean {s:?}?)"))
            .unwrap_or_default()
    };

    for (alias, target) in &r.model_aliases {
        let at = kp!["routing", "model_aliases", alias];
        if target.trim().is_empty() {
            found.push((at, "empty target model".into()));
        } else if unknown(target) {
            found.push((
                at,
                format!(
                    "target model {target:?} is not served by any backend{}",
                    served_hint(target)
                ),
            ));
        }
    }
    for (model, chain) in &r.fallbacks {
        let at = kp!["routing", "fallbacks", model];
        if unknown(model) {
            found.push((
                at.clone(),
                format!("model {model:?} is not served by any backend{}", served_hint(model)),
            ));
        }
        let mut seen = BTreeSet::new();
        for (i, next) in chain.iter().enumerate() {
            if unknown(next) {
                found.push((
                    at.join(i),
                    format!("model {next:?} is not served by any backend{}", served_hint(next)),
                ));
            }
            if !seen.insert(next) {
                found.push((at.join(i), format!("model {next:?} is listed twice")));
            }
        }
    }
    cycles(config, found);
}

/// Cycles through aliases and fallbacks together (an alias is followed before a
/// fallback chain, so a loop may mix both). Each cycle is reported once, at the key
/// where it closes when walked from its alphabetically first model.
fn cycles(config: &Config, found: &mut Found) {
    let r = &config.routing;
    // model -> [(next, path of the edge)]
    let mut edges: BTreeMap<&str, Vec<(&str, KeyPath)>> = BTreeMap::new();
    for (alias, target) in &r.model_aliases {
        edges.entry(alias).or_default().push((target, kp!["routing", "model_aliases", alias]));
    }
    for (model, chain) in &r.fallbacks {
        for (i, next) in chain.iter().enumerate() {
            edges.entry(model).or_default().push((next, kp!["routing", "fallbacks", model, i]));
        }
    }
    let mut reported: BTreeSet<BTreeSet<&str>> = BTreeSet::new();
    let mut done: BTreeSet<&str> = BTreeSet::new();
    for &start in edges.keys() {
        let mut stack: Vec<&str> = Vec::new();
        walk(start, &edges, &mut stack, &mut done, &mut reported, found);
    }
}

fn walk<'a>(
    node: &'a str,
    edges: &BTreeMap<&'a str, Vec<(&'a str, KeyPath)>>,
    stack: &mut Vec<&'a str>,
    done: &mut BTreeSet<&'a str>,
    reported: &mut BTreeSet<BTreeSet<&'a str>>,
    found: &mut Found,
) {
    if done.contains(node) {
        return;
    }
    stack.push(node);
    for (next, at) in edges.get(node).map(Vec::as_slice).unwrap_or_default() {
        if let Some(pos) = stack.iter().position(|n| n == next) {
            let members: BTreeSet<&str> = stack[pos..].iter().copied().collect();
            if reported.insert(members) {
                let mut chain: Vec<&str> = stack[pos..].to_vec();
                chain.push(next);
                found.push((at.clone(), format!("routing cycle: {}", chain.join(" -> "))));
            }
        } else {
            walk(next, edges, stack, done, reported, found);
        }
    }
    stack.pop();
    done.insert(node);
}

fn request(config: &Config, found: &mut Found) {
    let r = &config.request;
    for (key, value) in [
        ("timeout", r.timeout),
        ("streaming_timeout", r.streaming_timeout),
        ("connect_timeout", r.connect_timeout),
        ("first_byte_timeout", r.first_byte_timeout),
        ("stream_idle_timeout", r.stream_idle_timeout),
    ] {
        nonzero_duration(found, kp!["request", key], value);
    }
    let b = &r.retry_backoff;
    if b.initial > b.max {
        found.push((
            kp!["request", "retry_backoff", "initial"],
            format!(
                "{} is longer than retry_backoff.max ({})",
                crate::units::format_duration(b.initial),
                crate::units::format_duration(b.max)
            ),
        ));
    }
    if !(b.multiplier.is_finite() && b.multiplier >= 1.0) {
        found.push((
            kp!["request", "retry_backoff", "multiplier"],
            format!("must be at least 1, got {}", b.multiplier),
        ));
    }
    fraction(found, kp!["request", "retry_budget", "ratio"], r.retry_budget.ratio, 0.0, 1.0);
}

fn health(config: &Config, found: &mut Found) {
    let h = &config.health_checks;
    nonzero_duration(found, kp!["health_checks", "interval"], h.interval);
    nonzero_duration(found, kp!["health_checks", "timeout"], h.timeout);
    nonzero_duration(found, kp!["health_checks", "warmup_interval"], h.warmup_interval);
    positive(found, kp!["health_checks", "unhealthy_threshold"], u64::from(h.unhealthy_threshold));
    positive(found, kp!["health_checks", "healthy_threshold"], u64::from(h.healthy_threshold));
    let cb = &h.circuit_breaker;
    positive(
        found,
        kp!["health_checks", "circuit_breaker", "failure_threshold"],
        u64::from(cb.failure_threshold),
    );
    nonzero_duration(
        found,
        kp!["health_checks", "circuit_breaker", "open_duration"],
        cb.open_duration,
    );
    if cb.max_open_duration < cb.open_duration {
        found.push((
            kp!["health_checks", "circuit_breaker", "max_open_duration"],
            "must not be shorter than circuit_breaker.open_duration".into(),
        ));
    }
    if h.max_ejection_percent > 100 {
        found.push((
            kp!["health_checks", "max_ejection_percent"],
            format!("must be between 0 and 100, got {}", h.max_ejection_percent),
        ));
    }
}

fn cache(config: &Config, found: &mut Found) {
    let c = &config.cache;
    if c.response.enabled {
        positive(found, kp!["cache", "response", "max_bytes"], c.response.max_bytes);
        nonzero_duration(found, kp!["cache", "response", "ttl"], c.response.ttl);
    }
    if let Some(url) = &c.redis.url
        && let Err(why) = check_redis_url(url.expose())
    {
        found.push((kp!["cache", "redis", "url"], why));
    }
    nonzero_duration(found, kp!["cache", "redis", "timeout"], c.redis.timeout);
}

fn observability(config: &Config, found: &mut Found) {
    let m = &config.metrics;
    if !m.endpoint.starts_with('/') {
        found.push((kp!["metrics", "endpoint"], format!("{:?} must start with '/'", m.endpoint)));
    } else if let Some(reserved) = RESERVED_PATHS
        .iter()
        .find(|p| m.endpoint == **p || m.endpoint.starts_with(&format!("{p}/")))
    {
        found.push((
            kp!["metrics", "endpoint"],
            format!("{:?} is under {reserved}, which the router's API uses", m.endpoint),
        ));
    }
    if m.auth.enabled {
        if m.auth.username.is_empty() {
            found.push((
                kp!["metrics", "auth", "username"],
                "required when metrics.auth is enabled".into(),
            ));
        }
        if m.auth.password.is_none() {
            found.push((
                kp!["metrics", "auth", "password"],
                "required when metrics.auth is enabled".into(),
            ));
        }
    }
    if let Err(why) = check_log_level(&config.logging.level) {
        found.push((kp!["logging", "level"], why));
    }
}

fn inference(config: &Config, found: &mut Found) {
    let i = &config.inference;
    positive(found, kp!["inference", "batch_size"], to_u64(i.batch_size));
    positive(found, kp!["inference", "context_size"], to_u64(i.context_size));
    positive(found, kp!["inference", "max_concurrent"], to_u64(i.max_concurrent));
    if i.model_id.as_deref().is_some_and(|id| id.trim().is_empty()) {
        found.push((kp!["inference", "model_id"], "must not be empty".into()));
    }
    if i.model_path.as_ref().is_some_and(|p| p.as_os_str().is_empty()) {
        found.push((kp!["inference", "model_path"], "must not be empty".into()));
    }
}

fn auth(config: &Config, name: Name<'_>, found: &mut Found) {
    let a = &config.auth;
    let mut key_names: BTreeMap<&str, usize> = BTreeMap::new();
    for (i, key) in a.api_keys.iter().enumerate() {
        let at = kp!["auth", "api_keys", i];
        if key.key.is_empty() {
            found.push((at.join("key"), "a key is required".into()));
        } else if let Some(first) = a.api_keys[..i].iter().position(|k| k.key == key.key) {
            // Never print the key itself.
            found.push((
                at.join("key"),
                format!("same key as {}", name(kp!["auth", "api_keys", first])),
            ));
        }
        if key.name.is_empty() {
            found.push((
                at.join("name"),
                "a key needs a name (used in logs and metrics instead of the key)".into(),
            ));
        } else if let Some(first) = key_names.insert(&key.name, i) {
            found.push((
                at.join("name"),
                format!("duplicate key name {:?} (also auth.api_keys[{first}])", key.name),
            ));
        }
    }
    if a.mode == AuthMode::Blocking && a.api_keys.is_empty() && a.api_keys_file.is_none() {
        found.push((
            kp!["auth", "mode"],
            "blocking needs keys in auth.api_keys or auth.api_keys_file (otherwise every request is refused)".into(),
        ));
    }
    if let Some(admin) = &a.admin_api_key
        && a.api_keys.iter().any(|k| &k.key == admin)
    {
        found.push((kp!["auth", "admin_api_key"], "must differ from every client key".into()));
    }
}

fn rate_limit(config: &Config, found: &mut Found) {
    let r = &config.rate_limit;
    let rules: [(&str, &Option<RateLimitRule>); 4] = [
        ("per_key", &r.per_key),
        ("per_ip", &r.per_ip),
        ("per_backend", &r.per_backend),
        ("global", &r.global),
    ];
    for (key, rule) in rules {
        if let Some(rule) = rule {
            positive(
                found,
                kp!["rate_limit", key, "requests_per_minute"],
                u64::from(rule.requests_per_minute),
            );
            if rule.burst == Some(0) {
                found.push((kp!["rate_limit", key, "burst"], "must be greater than 0".into()));
            }
        }
    }
    if r.enabled && rules.iter().all(|(_, rule)| rule.is_none()) {
        found.push((
            kp!["rate_limit", "enabled"],
            "rate limiting is enabled but no limit is set (per_key, per_ip, per_backend or global)"
                .into(),
        ));
    }
    if let Some(url) = &r.redis.url
        && let Err(why) = check_redis_url(url.expose())
    {
        found.push((kp!["rate_limit", "redis", "url"], why));
    }
    nonzero_duration(found, kp!["rate_limit", "redis", "timeout"], r.redis.timeout);
}

/// RFC 9110 token characters (header names).
fn is_tchar(c: u8) -> bool {
    c.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&c)
}

/// Check an `http(s)://host[:port][/path]` base URL; `Ok(true)` when it is https.
pub(crate) fn check_http_url(url: &str) -> Result<bool, String> {
    let bad = |why: &str| format!("{url:?} is not a valid backend url: {why}");
    if url.chars().any(char::is_whitespace) {
        return Err(bad("it contains whitespace"));
    }
    let (scheme, rest) =
        url.split_once("://").ok_or_else(|| bad("expected http:// or https://"))?;
    let https = match scheme.to_ascii_lowercase().as_str() {
        "http" => false,
        "https" => true,
        _ => return Err(bad(&format!("unsupported scheme {scheme:?} (use http or https)"))),
    };
    if rest.contains(['?', '#']) {
        return Err(bad("a base url takes no query or fragment"));
    }
    let authority = rest.split('/').next().unwrap_or_default();
    if authority.contains('@') {
        return Err(bad("credentials do not belong in the url; use api_key or headers"));
    }
    let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
        let (host, after) = v6.split_once(']').ok_or_else(|| bad("unclosed '[' in the host"))?;
        if host.parse::<std::net::Ipv6Addr>().is_err() {
            return Err(bad("invalid IPv6 address"));
        }
        match after {
            "" => (host, None),
            _ => (host, Some(after.strip_prefix(':').ok_or_else(|| bad("junk after ']'"))?)),
        }
    } else {
        match authority.rsplit_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (authority, None),
        }
    };
    if host.is_empty() {
        return Err(bad("no host"));
    }
    if !host.chars().all(|c| c.is_ascii_alphanumeric() || "-._:".contains(c)) {
        return Err(bad("invalid characters in the host"));
    }
    if let Some(port) = port
        && port.parse::<u16>().ok().filter(|p| *p > 0).is_none()
    {
        return Err(bad(&format!("port {port:?} is not a number from 1 to 65535")));
    }
    Ok(https)
}

/// Check a Redis URL's scheme. The error never includes the URL (it may hold a password).
fn check_redis_url(url: &str) -> Result<(), String> {
    let scheme = url.split_once("://").map(|(s, _)| s.to_ascii_lowercase());
    match scheme.as_deref() {
        Some("redis" | "rediss" | "redis+unix" | "unix") => Ok(()),
        _ => Err("expected a redis://, rediss:// or unix:// url".into()),
    }
}

/// A level word, or comma-separated `target=level` directives with at most one bare level.
fn check_log_level(level: &str) -> Result<(), String> {
    let bad_level = |word: &str| {
        let hint = suggest::closest(word, LOG_LEVELS.iter().copied())
            .map(|s| format!(" (did you mean {s:?}?)"))
            .unwrap_or_default();
        format!(
            "unknown log level {word:?}{hint}; valid: {}, or target=level directives",
            LOG_LEVELS.join(", ")
        )
    };
    if level.trim().is_empty() {
        return Err("must not be empty".into());
    }
    for directive in level.split(',').map(str::trim).filter(|d| !d.is_empty()) {
        let word = directive.rsplit_once('=').map_or(directive, |(_, lvl)| lvl).trim();
        if !LOG_LEVELS.contains(&word.to_ascii_lowercase().as_str()) {
            return Err(bad_level(word));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backend_urls() {
        assert_eq!(check_http_url("http://10.0.0.5:8000/v1"), Ok(false));
        assert_eq!(check_http_url("https://api.openai.com/v1"), Ok(true));
        assert_eq!(check_http_url("http://[::1]:8080"), Ok(false));
        assert_eq!(check_http_url("http://localhost"), Ok(false));
        for (url, needle) in [
            ("ftp://x", "unsupported scheme"),
            ("localhost:8000", "expected http://"),
            ("http://:80", "no host"),
            ("http://h:99999", "port \"99999\""),
            ("http://h:0", "port \"0\""),
            ("http://user:pw@h", "credentials"),
            ("http://h/v1?x=1", "no query"),
            ("http://[::1", "unclosed"),
            ("http://a b", "whitespace"),
        ] {
            let err = check_http_url(url).unwrap_err();
            assert!(err.contains(needle), "{url}: {err}");
        }
    }

    #[test]
    fn log_levels() {
        assert!(check_log_level("info").is_ok());
        assert!(check_log_level("warn,switchyard=debug,hyper=off").is_ok());
        assert!(check_log_level("inof").unwrap_err().contains("did you mean \"info\"?"));
        assert!(check_log_level("switchyard=loud").is_err());
    }

    #[test]
    fn redis_urls_never_echo() {
        assert!(check_redis_url("redis://:pw@h:6379/0").is_ok());
        let err = check_redis_url("http://:secretpw@h").unwrap_err();
        assert!(!err.contains("secretpw"));
    }
}
