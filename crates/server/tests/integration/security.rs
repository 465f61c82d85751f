//! Operations and security through the running router: Prometheus metrics and their
//! basic auth, client keys in both modes, per-key models, the admin credential, cache
//! tenants, rate limits (local and shared through a real Redis), TLS with HTTP/2 by
//! ALPN, and the overhead header.

use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use http::Request;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde_json::{Value, json};
use switchyard_config::Config;
use switchyard_server::Options;
use switchyard_test_support::{MockUpstream, Script, ms};

use crate::util::{Redis, Router, chat, parse_prometheus, recorder, sample};

const CHAT: &str = "/v1/chat/completions";

fn config(yaml: &str) -> Config {
    Config::from_yaml_str(yaml).unwrap_or_else(|e| panic!("{e}\n{yaml}"))
}

fn backend(name: &str, mock: &MockUpstream, models: &str) -> String {
    format!("  - {{ name: {name}, url: \"{}\", models: [{models}] }}\n", mock.url())
}

async fn router(yaml: &str) -> Router {
    Router::from_config(config(yaml), Options { metrics: Some(recorder()), ..Options::default() })
        .await
}

fn greedy(model: &str) -> Value {
    json!({"model": model, "temperature": 0, "messages": [{"role": "user", "content": "2+2?"}]})
}

fn bearer(key: &str) -> String {
    format!("Bearer {key}")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_parse_as_prometheus_text_and_counters_move() {
    let mock = MockUpstream::start(Script::ok().chunks(3)).await.unwrap();
    let yaml = format!(
        "server: {{ bind_address: \"127.0.0.1:0\" }}\nbackends:\n{}",
        backend("metrics-a", &mock, "metrics-model")
    );
    let router = router(&yaml).await;
    let scrape = |router: &Router| {
        let url = router.url("/metrics");
        async move {
            let response = Client::builder(TokioExecutor::new())
                .build_http::<Full<Bytes>>()
                .request(Request::get(url).body(Full::new(Bytes::new())).unwrap())
                .await
                .unwrap();
            assert_eq!(response.status(), 200);
            assert!(response.headers()["content-type"].to_str().unwrap().starts_with("text/plain"));
            let text = response.into_body().collect().await.unwrap().to_bytes();
            parse_prometheus(std::str::from_utf8(&text).unwrap())
        }
    };
    let ok = [("method", "POST"), ("path", CHAT), ("status", "200")];
    let before = scrape(&router).await;
    let requests = sample(&before, "http_requests_total", &ok);

    assert_eq!(router.post(CHAT, &chat("metrics-model", false)).await.status, 200);
    let mut streaming = chat("metrics-model", true);
    streaming["stream_options"] = json!({"include_usage": true});
    let reply = router.post(CHAT, &streaming).await;
    assert_eq!(reply.status, 200);
    assert!(reply.text().ends_with("data: [DONE]\n\n"));
    router.post(CHAT, &chat("no-such-model", false)).await.assert_error(404, "model_not_found");
    router.get("/v1/no/such/path").await.assert_error(404, "not_found");

    let after = scrape(&router).await;
    assert_eq!(sample(&after, "http_requests_total", &ok) - requests, 2.0);
    let not_found = [("path", CHAT), ("status", "404")];
    assert!(sample(&after, "http_requests_total", &not_found) >= 1.0);
    assert!(sample(&after, "http_requests_total", &[("path", "other"), ("status", "404")]) >= 1.0);
    // Bounded labels: no series names an unknown model or an arbitrary path.
    for s in &after {
        assert!(
            !s.labels.values().any(|v| v.contains("no-such-model") || v.contains("/no/such")),
            "{s:?}"
        );
    }
    let duration = [("path", CHAT), ("le", "+Inf")];
    assert!(sample(&after, "http_request_duration_seconds_bucket", &duration) >= 2.0);
    let backend = [("backend", "metrics-a")];
    assert!(sample(&after, "backend_request_duration_seconds_count", &backend) >= 2.0);
    assert!(
        sample(
            &after,
            "switchyard_backend_requests_total",
            &[("backend", "metrics-a"), ("result", "ok")]
        ) >= 2.0
    );
    assert_eq!(sample(&after, "backend_health_status", &backend), 1.0);
    assert!(sample(&after, "router_overhead_seconds_count", &[]) >= 2.0);
    assert!(sample(&after, "switchyard_streams_total", &[("outcome", "completed")]) >= 1.0);
    let model = [("model", "metrics-model")];
    assert!(sample(&after, "switchyard_time_to_first_token_seconds_count", &model) >= 1.0);
    assert!(
        sample(
            &after,
            "switchyard_tokens_total",
            &[("model", "metrics-model"), ("kind", "completion")]
        ) > 0.0
    );
    assert!(after.iter().any(|s| s.name == "active_connections"));
    if cfg!(target_os = "linux") {
        assert!(sample(&after, "process_resident_memory_bytes", &[]) > 1e6);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_or_missing_metrics_credentials_get_401() {
    let mock = MockUpstream::start(Script::ok()).await.unwrap();
    let yaml = format!(
        "server: {{ bind_address: \"127.0.0.1:0\" }}\nbackends:\n{}metrics:\n  endpoint: /prom\n  auth: {{ enabled: true, username: prom, password: \"s3cret-pw\" }}\n",
        backend("a", &mock, "m")
    );
    let router = router(&yaml).await;
    let missing = router.get("/prom").await;
    missing.assert_error(401, "invalid_api_key");
    assert!(missing.headers["www-authenticate"].to_str().unwrap().starts_with("Basic realm="));
    // prom:wrong, and the right password for another user.
    for wrong in ["Basic cHJvbTp3cm9uZw==", "Basic YWRtaW46czNjcmV0LXB3", "Bearer s3cret-pw"] {
        let reply = router.get_with("/prom", &[("authorization", wrong)]).await;
        reply.assert_error(401, "invalid_api_key");
        assert!(!reply.text().contains("s3cret"));
    }
    // prom:s3cret-pw
    let ok = router.get_with("/prom", &[("authorization", "Basic cHJvbTpzM2NyZXQtcHc=")]).await;
    assert_eq!(ok.status, 200);
    assert!(ok.text().contains("http_requests_total"));
    // The default path is not served when another endpoint is configured.
    assert_eq!(router.get("/metrics").await.status, 404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn permissive_auth_requires_a_valid_key_once_keys_exist_and_calls_no_upstream_without() {
    let mock = MockUpstream::start(Script::ok()).await.unwrap();
    let yaml = format!(
        r#"server: {{ bind_address: "127.0.0.1:0" }}
backends:
{}routing: {{ model_aliases: {{ fast: m1 }} }}
auth:
  api_keys:
    - {{ key: "sk-alice-key", name: alice }}
    - {{ key: "sk-bob-key", name: bob, models: [fast] }}
  admin_api_key: "sk-admin-key"
"#,
        backend("a", &mock, "m1, m2")
    );
    let router = router(&yaml).await;
    let before = mock.request_count_for(CHAT);
    router.post(CHAT, &chat("m1", false)).await.assert_error(401, "invalid_api_key");
    let wrong =
        router.post_with(CHAT, &chat("m1", false), &[("authorization", "Bearer sk-guess")]).await;
    wrong.assert_error(401, "invalid_api_key");
    assert!(!wrong.text().contains("sk-guess"));
    assert_eq!(wrong.json()["error"]["type"], "authentication_error");
    assert_eq!(mock.request_count_for(CHAT), before, "no upstream call without a valid key");

    let alice = bearer("sk-alice-key");
    let ok = router.post_with(CHAT, &chat("m2", false), &[("authorization", &alice)]).await;
    assert_eq!(ok.status, 200, "{}", ok.text());
    let ok = router.post_with(CHAT, &chat("fast", false), &[("x-api-key", "sk-bob-key")]).await;
    assert_eq!(ok.status, 200, "bob may use his alias: {}", ok.text());
    let forbidden =
        router.post_with(CHAT, &chat("m2", false), &[("x-api-key", "sk-bob-key")]).await;
    forbidden.assert_error(403, "forbidden");
    assert_eq!(mock.request_count_for(CHAT), before + 2);
    // The client key never goes upstream.
    assert!(mock.requests_for(CHAT).iter().all(|r| r.header("x-api-key").is_none()
        && r.header("authorization").is_none_or(|a| !a.contains("sk-"))));

    // Bob sees only what he may use.
    let models = router.get_with("/v1/models", &[("x-api-key", "sk-bob-key")]).await.json();
    let ids: Vec<&str> =
        models["data"].as_array().unwrap().iter().map(|m| m["id"].as_str().unwrap()).collect();
    assert_eq!(ids, ["fast"]);
    router.get("/v1/models").await.assert_error(401, "invalid_api_key");
    // Liveness stays open.
    assert_eq!(router.get("/health").await.status, 200);

    // Admin: only the admin key, never a client key.
    router.get("/admin/health").await.assert_error(401, "invalid_api_key");
    router
        .get_with("/admin/health", &[("authorization", &alice)])
        .await
        .assert_error(401, "invalid_api_key");
    let admin = router.get_with("/admin/config", &[("x-api-key", "sk-admin-key")]).await;
    assert_eq!(admin.status, 200);
    let text = admin.text();
    assert!(!text.contains("sk-alice-key") && !text.contains("sk-admin-key"), "{text}");
    let json = admin.json();
    assert_eq!(json["api_keys"][1]["name"], "bob");
    assert_eq!(json["config"]["auth"]["api_keys"][0]["key"], "***");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blocking_auth_with_an_empty_key_file_refuses_everyone_and_admin_can_be_off() {
    let mock = MockUpstream::start(Script::ok()).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let keys = dir.path().join("keys.yaml");
    std::fs::write(&keys, "[]\n").unwrap();
    let yaml = format!(
        "server: {{ bind_address: \"127.0.0.1:0\" }}\nbackends:\n{}auth: {{ mode: blocking, api_keys_file: \"{}\" }}\nadmin: {{ enabled: false }}\n",
        backend("a", &mock, "m"),
        keys.display()
    );
    let router = router(&yaml).await;
    for key in ["", "sk-anything"] {
        let reply = router.post_with(CHAT, &chat("m", false), &[("x-api-key", key)]).await;
        reply.assert_error(401, "invalid_api_key");
    }
    assert_eq!(mock.request_count_for(CHAT), 0);
    router.get("/admin/health").await.assert_error(404, "not_found");

    // Permissive and no key at all: open.
    let open = format!(
        "server: {{ bind_address: \"127.0.0.1:0\" }}\nbackends:\n{}",
        backend("a", &mock, "m")
    );
    let open = self::router(&open).await;
    assert_eq!(open.post(CHAT, &chat("m", false)).await.status, 200);
    assert_eq!(open.get("/admin/backends").await.status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tenant_a_cached_answer_is_never_served_to_tenant_b() {
    let mock = MockUpstream::start(Script::ok()).await.unwrap();
    let yaml = format!(
        r#"server: {{ bind_address: "127.0.0.1:0" }}
backends:
{}cache: {{ response: {{ enabled: true }} }}
auth:
  api_keys: [{{ key: "sk-tenant-a", name: a }}, {{ key: "sk-tenant-b", name: b }}]
"#,
        backend("up", &mock, "m")
    );
    let router = router(&yaml).await;
    let a = [("authorization", "Bearer sk-tenant-a")];
    let b = [("authorization", "Bearer sk-tenant-b")];
    let first = router.post_with(CHAT, &greedy("m"), &a).await;
    assert_eq!(first.headers["x-switchyard-cache-status"], "miss");
    let again = router.post_with(CHAT, &greedy("m"), &a).await;
    assert_eq!(again.headers["x-switchyard-cache-status"], "hit");
    assert_eq!(mock.request_count_for(CHAT), 1);
    let other = router.post_with(CHAT, &greedy("m"), &b).await;
    assert_eq!(other.status, 200);
    assert_eq!(other.headers["x-switchyard-cache-status"], "miss", "b must not get a's answer");
    assert_eq!(mock.request_count_for(CHAT), 2);
    // The tenant is the authenticated key, whichever header carried it.
    let a_again = router.post_with(CHAT, &greedy("m"), &[("x-api-key", "sk-tenant-a")]).await;
    assert_eq!(a_again.headers["x-switchyard-cache-status"], "hit");
    let b_again = router.post_with(CHAT, &greedy("m"), &[("x-api-key", "sk-tenant-b")]).await;
    assert_eq!(b_again.headers["x-switchyard-cache-status"], "hit");
    // A wrong key is refused before the cache is consulted: no answer, no upstream call.
    let stranger = router.post_with(CHAT, &greedy("m"), &[("x-api-key", "sk-tenant-c")]).await;
    stranger.assert_error(401, "invalid_api_key");
    assert!(!stranger.text().contains("chatcmpl"), "{}", stranger.text());
    assert_eq!(mock.request_count_for(CHAT), 2);
}

/// Send `n` concurrent requests over one HTTP/2 connection; the statuses and the 429s.
async fn burst(
    router: &Router,
    n: usize,
    headers: &'static [(&'static str, &'static str)],
) -> (Vec<u16>, Vec<(Value, String)>) {
    let client: Client<HttpConnector, Full<Bytes>> =
        Client::builder(TokioExecutor::new()).http2_only(true).build_http();
    // One request first (`/health`: no key, no limit), so the connection has the
    // server's SETTINGS before the burst: until then an HTTP/2 client may open any
    // number of streams, and the server refuses those past its limit (200 in hyper)
    // with REFUSED_STREAM, which on a busy machine failed this test.
    let health = Request::get(router.url("/health")).body(Full::new(Bytes::new())).unwrap();
    let warm = client.request(health).await.unwrap();
    assert_eq!(warm.status(), 200);
    warm.into_body().collect().await.unwrap();
    let url = router.url(CHAT);
    let tasks: Vec<_> = (0..n)
        .map(|i| {
            let (client, url) = (client.clone(), url.clone());
            tokio::spawn(async move {
                let mut body = chat("m", false);
                body["messages"][0]["content"] = json!(format!("request {i}"));
                let mut request = Request::post(url)
                    .header("content-type", "application/json")
                    .body(Full::new(Bytes::from(serde_json::to_vec(&body).unwrap())))
                    .unwrap();
                for (k, v) in headers {
                    request.headers_mut().insert(*k, v.parse().unwrap());
                }
                let response = client.request(request).await.unwrap();
                let status = response.status().as_u16();
                let retry =
                    response.headers().get("retry-after").map(|v| v.to_str().unwrap().to_owned());
                let body = response.into_body().collect().await.unwrap().to_bytes();
                (status, retry, body)
            })
        })
        .collect();
    let mut statuses = Vec::new();
    let mut limited = Vec::new();
    for task in tasks {
        let (status, retry, body) = task.await.unwrap();
        statuses.push(status);
        if status == 429 {
            limited
                .push((serde_json::from_slice(&body).unwrap(), retry.expect("Retry-After on 429")));
        }
    }
    (statuses, limited)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_limit_of_n_per_minute_admits_at_most_n_of_a_thousand_concurrent_requests() {
    const N: f64 = 20.0;
    let mock = MockUpstream::start(Script::ok()).await.unwrap();
    let yaml = format!(
        r#"server: {{ bind_address: "127.0.0.1:0" }}
backends:
{}auth: {{ api_keys: [{{ key: "sk-load", name: load }}] }}
rate_limit: {{ enabled: true, per_key: {{ requests_per_minute: 20 }} }}
"#,
        backend("a", &mock, "m")
    );
    let router = router(&yaml).await;
    let started = Instant::now();
    let (statuses, limited) = burst(&router, 1000, &[("x-api-key", "sk-load")]).await;
    let elapsed = started.elapsed().as_secs_f64();
    let admitted = statuses.iter().filter(|s| **s == 200).count() as f64;
    // The bucket holds N and refills N per minute: during the burst, at most that refill.
    let refill = (elapsed * N / 60.0).floor();
    assert!(admitted >= N && admitted <= N + refill, "admitted {admitted} in {elapsed:.1}s");
    assert_eq!(statuses.iter().filter(|s| **s == 429).count() as f64, 1000.0 - admitted);
    assert_eq!(
        mock.request_count_for(CHAT) as f64,
        admitted,
        "a refused request never goes upstream"
    );
    let (json, retry) = &limited[0];
    assert_eq!(json["error"]["code"], "rate_limit_exceeded");
    assert_eq!(json["error"]["type"], "rate_limit_error");
    let retry: u64 = retry.parse().unwrap();
    assert!((1..=3).contains(&retry), "{retry}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn per_ip_limits_believe_forwarded_for_only_from_trusted_proxies() {
    let mock = MockUpstream::start(Script::ok()).await.unwrap();
    let limits = "rate_limit: { enabled: true, per_ip: { requests_per_minute: 2 }, trusted_proxies: [127.0.0.1] }\n";
    let yaml = format!(
        "server: {{ bind_address: \"127.0.0.1:0\" }}\nbackends:\n{}{limits}",
        backend("a", &mock, "m")
    );
    let router = router(&yaml).await;
    let from = |ip: &'static str| [("x-forwarded-for", ip)];
    for ip in ["1.1.1.1", "2.2.2.2"] {
        for _ in 0..2 {
            assert_eq!(router.post_with(CHAT, &chat("m", false), &from(ip)).await.status, 200);
        }
        router
            .post_with(CHAT, &chat("m", false), &from(ip))
            .await
            .assert_error(429, "rate_limit_exceeded");
    }
    // A client cannot pick its address when the peer is not trusted.
    let untrusted = limits.replace("127.0.0.1]", "10.0.0.0/8]");
    let yaml = format!(
        "server: {{ bind_address: \"127.0.0.1:0\" }}\nbackends:\n{}{untrusted}",
        backend("a", &mock, "m")
    );
    let router = self::router(&yaml).await;
    assert_eq!(router.post_with(CHAT, &chat("m", false), &from("3.3.3.3")).await.status, 200);
    assert_eq!(router.post_with(CHAT, &chat("m", false), &from("4.4.4.4")).await.status, 200);
    router
        .post_with(CHAT, &chat("m", false), &from("5.5.5.5"))
        .await
        .assert_error(429, "rate_limit_exceeded");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn per_backend_limits_move_traffic_on_then_refuse_with_retry_after() {
    let a = MockUpstream::start(Script::ok()).await.unwrap();
    let b = MockUpstream::start(Script::ok()).await.unwrap();
    let yaml = format!(
        "server: {{ bind_address: \"127.0.0.1:0\" }}\nbackends:\n{}{}rate_limit: {{ enabled: true, per_backend: {{ requests_per_minute: 1 }} }}\n",
        backend("a", &a, "m"),
        backend("b", &b, "m")
    );
    let router = router(&yaml).await;
    let mut backends = Vec::new();
    for _ in 0..2 {
        let reply = router.post(CHAT, &chat("m", false)).await;
        assert_eq!(reply.status, 200);
        backends.push(reply.headers["x-switchyard-backend"].to_str().unwrap().to_owned());
    }
    backends.sort();
    assert_eq!(backends, ["a", "b"]);
    let refused = router.post(CHAT, &chat("m", false)).await;
    refused.assert_error(429, "rate_limit_exceeded");
    let retry: u64 = refused.headers["retry-after"].to_str().unwrap().parse().unwrap();
    assert!((50..=60).contains(&retry), "{retry}");
    assert_eq!(a.request_count_for(CHAT) + b.request_count_for(CHAT), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_routers_share_one_limit_through_redis_and_survive_its_loss() {
    let Some(mut redis) = Redis::start() else { return };
    redis.wait_ready().await;
    let mock = MockUpstream::start(Script::ok()).await.unwrap();
    let yaml = format!(
        r#"server: {{ bind_address: "127.0.0.1:0" }}
backends:
{}rate_limit:
  enabled: true
  global: {{ requests_per_minute: 10 }}
  redis: {{ url: "redis://127.0.0.1:{}", key_prefix: "test-{}:", timeout: 200ms }}
"#,
        backend("a", &mock, "m"),
        redis.port,
        std::process::id()
    );
    let one = router(&yaml).await;
    let two = router(&yaml).await;
    // Both connect to Redis in the background.
    tokio::time::sleep(ms(500)).await;
    let started = Instant::now();
    let mut admitted = 0;
    for i in 0..40 {
        let router = if i % 2 == 0 { &one } else { &two };
        let reply = router.post(CHAT, &chat("m", false)).await;
        match reply.status.as_u16() {
            200 => admitted += 1,
            429 => assert!(reply.headers.contains_key("retry-after")),
            other => panic!("{other}: {}", reply.text()),
        }
    }
    let refill = (started.elapsed().as_secs_f64() * 10.0 / 60.0).floor() as i32;
    assert!(admitted >= 10 && admitted <= 10 + refill, "the fleet admitted {admitted}, not 10");

    // Redis goes away: requests are decided by each router's own buckets, none fails
    // for it (each still enforces the limit on its own).
    redis.stop();
    let mut statuses = Vec::new();
    for router in [&one, &two] {
        for _ in 0..12 {
            statuses.push(router.post(CHAT, &chat("m", false)).await.status.as_u16());
        }
    }
    assert!(statuses.iter().all(|s| *s == 200 || *s == 429), "{statuses:?}");
    let ok = statuses.iter().filter(|s| **s == 200).count();
    assert!((10..=24).contains(&ok), "local buckets admit up to the limit each: {statuses:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_terminates_with_http2_by_alpn_and_http1_too() {
    let dir = tempfile::tempdir().unwrap();
    let certified = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
    let (cert, key) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
    std::fs::write(&cert, certified.cert.pem()).unwrap();
    std::fs::write(&key, certified.key_pair.serialize_pem()).unwrap();
    let mock = MockUpstream::start(Script::ok().chunks(3)).await.unwrap();
    let yaml = format!(
        "server: {{ bind_address: \"127.0.0.1:0\", tls: {{ cert: \"{}\", key: \"{}\" }} }}\nbackends:\n{}",
        cert.display(),
        key.display(),
        backend("a", &mock, "m")
    );
    let router = router(&yaml).await;

    let mut roots = rustls::RootCertStore::empty();
    roots.add(certified.cert.der().clone()).unwrap();
    let connect = |alpn: &[&[u8]], versions: &[&'static rustls::SupportedProtocolVersion]| {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = rustls::ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(versions)
            .unwrap()
            .with_root_certificates(roots.clone())
            .with_no_client_auth();
        config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
        let addr = router.addr;
        async move {
            let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
            let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
            connector.connect(name, tcp).await
        }
    };
    let body = || Full::new(Bytes::from(serde_json::to_vec(&chat("m", true)).unwrap()));
    let request = || {
        Request::post("https://localhost/v1/chat/completions")
            .header("content-type", "application/json")
            .body(body())
            .unwrap()
    };

    // HTTP/2, negotiated by ALPN, TLS 1.3.
    let tls = connect(&[b"h2", b"http/1.1"], &[&rustls::version::TLS13]).await.unwrap();
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    let (mut sender, connection) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tls))
            .await
            .unwrap();
    tokio::spawn(connection);
    let response = sender.send_request(request()).await.unwrap();
    assert_eq!(response.version(), http::Version::HTTP_2);
    assert_eq!(response.status(), 200);
    let text = response.into_body().collect().await.unwrap().to_bytes();
    assert!(text.ends_with(b"data: [DONE]\n\n"));

    // HTTP/1.1 over TLS 1.2.
    let tls = connect(&[b"http/1.1"], &[&rustls::version::TLS12]).await.unwrap();
    assert_eq!(tls.get_ref().1.protocol_version(), Some(rustls::ProtocolVersion::TLSv1_2));
    let (mut sender, connection) =
        hyper::client::conn::http1::handshake(TokioIo::new(tls)).await.unwrap();
    tokio::spawn(connection);
    let response = sender.send_request(request()).await.unwrap();
    assert_eq!(response.status(), 200);

    // Plain HTTP on the TLS port gets no HTTP answer.
    let plain = Client::builder(TokioExecutor::new())
        .build_http::<Full<Bytes>>()
        .request(Request::get(router.url("/health")).body(Full::new(Bytes::new())).unwrap())
        .await;
    assert!(plain.is_err(), "{plain:?}");
    // A client that does not trust the certificate is refused.
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let strict = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(rustls::RootCertStore::empty())
        .with_no_client_auth();
    let tcp = tokio::net::TcpStream::connect(router.addr).await.unwrap();
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    assert!(tokio_rustls::TlsConnector::from(Arc::new(strict)).connect(name, tcp).await.is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_overhead_header_is_opt_in_and_excludes_the_upstream() {
    let mock = MockUpstream::start(Script::ok().delay(ms(200))).await.unwrap();
    let yaml = format!(
        "server: {{ bind_address: \"127.0.0.1:0\", expose_overhead_header: true }}\nbackends:\n{}",
        backend("a", &mock, "m")
    );
    let router = router(&yaml).await;
    let started = Instant::now();
    let reply = router.post(CHAT, &chat("m", false)).await;
    let total = started.elapsed();
    assert_eq!(reply.status, 200);
    let overhead: u64 =
        reply.headers["x-switchyard-overhead-us"].to_str().unwrap().parse().unwrap();
    assert!(total.as_micros() as u64 > 200_000);
    assert!(overhead < 200_000, "the 200 ms upstream delay is not router time: {overhead} us");
    // Router-only answers carry it too; without the option nobody does.
    let missing = router.post(CHAT, &chat("nope", false)).await;
    assert!(missing.headers.contains_key("x-switchyard-overhead-us"));
    let plain = format!(
        "server: {{ bind_address: \"127.0.0.1:0\" }}\nbackends:\n{}",
        backend("a", &mock, "m")
    );
    let plain = self::router(&plain).await;
    assert!(
        !plain.post(CHAT, &chat("m", false)).await.headers.contains_key("x-switchyard-overhead-us")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn per_key_models_also_bind_the_messages_and_simple_apis() {
    let mock = MockUpstream::start(Script::ok()).await.unwrap();
    let yaml = format!(
        r#"server: {{ bind_address: "127.0.0.1:0" }}
backends:
{}auth:
  api_keys: [{{ key: "sk-narrow-key", name: narrow, models: [m1] }}]
"#,
        backend("a", &mock, "m1, m2")
    );
    let router = router(&yaml).await;
    let key = [("x-api-key", "sk-narrow-key")];
    let messages = |model: &str| json!({"model": model, "max_tokens": 8, "messages": [{"role": "user", "content": "hi"}]});
    for path in ["/v1/messages", "/v1/messages/count_tokens"] {
        let refused = router.post_with(path, &messages("m2"), &key).await;
        assert_eq!(refused.status, 403, "{path}: {}", refused.text());
        let anonymous = router.post(path, &messages("m1")).await;
        assert_eq!(anonymous.status, 401, "{path}: {}", anonymous.text());
    }
    let quick = router.post_with("/api/quick", &json!({"prompt": "hi", "model": "m2"}), &key).await;
    quick.assert_error(403, "forbidden");
    assert_eq!(mock.request_count_for(CHAT), 0, "nothing refused reached the upstream");

    let allowed = router.post_with("/v1/messages", &messages("m1"), &key).await;
    assert_eq!(allowed.status, 200, "{}", allowed.text());
    let quick = router.post_with("/api/quick", &json!({"prompt": "hi", "model": "m1"}), &key).await;
    assert_eq!(quick.status, 200, "{}", quick.text());
    assert_eq!(mock.request_count_for(CHAT), 2);

    // Both model listings show the key only what it may use.
    let listed = router.get_with("/v1/models", &key).await.json();
    let ids: Vec<&str> =
        listed["data"].as_array().unwrap().iter().map(|m| m["id"].as_str().unwrap()).collect();
    assert_eq!(ids, ["m1"]);
    let simple = router.get_with("/api/models", &key).await.json();
    let ids: Vec<&str> =
        simple["models"].as_array().unwrap().iter().map(|m| m["id"].as_str().unwrap()).collect();
    assert_eq!(ids, ["m1"]);
    assert_eq!(simple["count"], 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_tls_verifies_certificates_and_trusts_a_backend_ca_file() {
    // The upstream is a second router terminating TLS with a self-signed certificate
    // (in front of a plain mock): unknown to the webpki roots, known through `ca_file`.
    let dir = tempfile::tempdir().unwrap();
    let certified =
        rcgen::generate_simple_self_signed(vec!["localhost".to_owned(), "127.0.0.1".to_owned()])
            .unwrap();
    let (cert, key) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
    std::fs::write(&cert, certified.cert.pem()).unwrap();
    std::fs::write(&key, certified.key_pair.serialize_pem()).unwrap();
    let mock = MockUpstream::start(Script::ok()).await.unwrap();
    let upstream = router(&format!(
        "server: {{ bind_address: \"127.0.0.1:0\", tls: {{ cert: \"{}\", key: \"{}\" }} }}\nbackends:\n{}",
        cert.display(),
        key.display(),
        backend("plain", &mock, "m")
    ))
    .await;
    let https = format!("https://127.0.0.1:{}", upstream.addr.port());
    let front = |ca_file: &str| {
        format!(
            "server: {{ bind_address: \"127.0.0.1:0\" }}\nrequest: {{ max_retries: 0 }}\nbackends:\n  - {{ name: tls, url: \"{https}\", models: [m], health_check: {{ enabled: false }}{ca_file} }}\n"
        )
    };

    let unverified = router(&front("")).await;
    let refused = unverified.post(CHAT, &chat("m", false)).await;
    assert!([502, 503].contains(&refused.status.as_u16()), "{} {}", refused.status, refused.text());
    assert_eq!(mock.request_count_for(CHAT), 0, "nothing went through an unverified connection");

    let trusted = router(&front(&format!(", ca_file: \"{}\"", cert.display()))).await;
    let ok = trusted.post(CHAT, &chat("m", false)).await;
    assert_eq!(ok.status, 200, "{}", ok.text());
    assert_eq!(mock.request_count_for(CHAT), 1);
}
