//! What a hot reload cannot apply.

use crate::schema::Config;

/// The keys that differ between `old` and `new` but only take effect after a restart
/// (the listener, the runtime, the loaded model, process-wide logging and the metrics
/// exporter), in a fixed order. Empty when a reload can apply everything.
///
/// Issue 8's reload keeps serving with such keys at their old values and reports this
/// list (log, admin API). Everything not listed (backends, routing, timeouts, retries,
/// health checks, caches, auth keys, rate limits) applies on reload.
pub fn restart_required(old: &Config, new: &Config) -> Vec<&'static str> {
    let (o, n) = (old, new);
    let checks: [(&'static str, bool); 18] = [
        ("server.bind_address", o.server.bind_address != n.server.bind_address),
        ("server.workers", o.server.workers != n.server.workers),
        ("server.tls", o.server.tls != n.server.tls),
        ("server.max_connections", o.server.max_connections != n.server.max_connections),
        ("http_client", o.http_client != n.http_client),
        ("metrics.enabled", o.metrics.enabled != n.metrics.enabled),
        ("logging.level", o.logging.level != n.logging.level),
        ("logging.format", o.logging.format != n.logging.format),
        ("inference.model_path", o.inference.model_path != n.inference.model_path),
        ("inference.model_id", o.inference.model_id != n.inference.model_id),
        ("inference.threads", o.inference.threads != n.inference.threads),
        ("inference.batch_size", o.inference.batch_size != n.inference.batch_size),
        ("inference.context_size", o.inference.context_size != n.inference.context_size),
        ("inference.max_concurrent", o.inference.max_concurrent != n.inference.max_concurrent),
        ("inference.max_queue", o.inference.max_queue != n.inference.max_queue),
        ("inference.compact_q4_1", o.inference.compact_q4_1 != n.inference.compact_q4_1),
        ("cache.redis.url", o.cache.redis.url != n.cache.redis.url),
        ("rate_limit.redis.url", o.rate_limit.redis.url != n.rate_limit.redis.url),
    ];
    checks.into_iter().filter(|(_, changed)| *changed).map(|(key, _)| key).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::schema::TlsConfig;

    #[test]
    fn lists_only_changed_restart_keys() {
        let old = Config::default();
        let mut new = old.clone();
        assert!(restart_required(&old, &new).is_empty());
        new.request.max_retries = 7;
        new.backends.clear();
        new.routing.weights.insert("x".into(), 2);
        assert!(restart_required(&old, &new).is_empty(), "live keys need no restart");
        new.server.bind_address = "0.0.0.0:9000".parse().unwrap();
        new.server.tls = Some(TlsConfig { cert: "c.pem".into(), key: "k.pem".into() });
        new.inference.threads = 3;
        assert_eq!(
            restart_required(&old, &new),
            vec!["server.bind_address", "server.tls", "inference.threads"]
        );
    }
}
