//! Operations through the built binary: the canary (no secret in any log line, metric,
//! admin answer or response, whatever goes wrong), `/metrics` from the installed
//! exporter, and reload by `SIGHUP` and by file watch.

#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::time::{Duration, Instant};

use switchyard_test_support::{MockUpstream, Script, ms};

const PROVIDER_KEY: &str = "sk-canary-provider-7f3a0c";
const INLINE_PROVIDER_KEY: &str = "sk-canary-inline-provider-19ab";
const CLIENT_KEY: &str = "sk-canary-client-91b2e4";
const LIMITED_KEY: &str = "sk-canary-limited-4c1d77";
const ADMIN_KEY: &str = "sk-canary-admin-22e8f0";
const METRICS_PASSWORD: &str = "canary-metrics-pw-5d9e31";
const CANARIES: [&str; 6] =
    [PROVIDER_KEY, INLINE_PROVIDER_KEY, CLIENT_KEY, LIMITED_KEY, ADMIN_KEY, METRICS_PASSWORD];

mod common;

use common::{Running, TempDir, free_port, request as http};

fn temp_dir(tag: &str) -> TempDir {
    TempDir::new(&format!("ops-{tag}"))
}

async fn start(dir: TempDir, config: &str, env: &[(&str, &str)]) -> Running {
    common::start(dir, config, env, Duration::from_secs(20)).await
}

fn chat(model: &str, stream: bool) -> String {
    format!(
        r#"{{"model":"{model}","stream":{stream},"messages":[{{"role":"user","content":"hello there"}}]}}"#
    )
}

fn basic(user: &str, password: &str) -> String {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let input = format!("{user}:{password}");
    let mut out = String::from("Basic ");
    for chunk in input.as_bytes().chunks(3) {
        let b = [chunk[0], *chunk.get(1).unwrap_or(&0), *chunk.get(2).unwrap_or(&0)];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ALPHABET[(n >> (18 - 6 * i)) as usize & 63] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

fn assert_no_canary(what: &str, text: &str) {
    for canary in CANARIES {
        assert!(!text.contains(canary), "{what} contains the secret {canary:?}:\n{text}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn canary_no_secret_leaks_into_logs_metrics_admin_output_or_responses() {
    let good =
        MockUpstream::start(Script::ok().chunks(4).require_api_key(PROVIDER_KEY)).await.unwrap();
    let broken = MockUpstream::start(Script::error(500, "boom")).await.unwrap();
    broken.set_probe_script(Some(Script::ok()));
    let cut = MockUpstream::start(Script::ok().chunks(6).error_after(2)).await.unwrap();
    let hang = MockUpstream::start(Script::never_answer()).await.unwrap();
    let wrong_key =
        MockUpstream::start(Script::ok().require_api_key("sk-someone-else")).await.unwrap();
    wrong_key.set_probe_script(Some(Script::ok()));
    let closed = free_port();
    let config = |extra: &str| {
        format!(
            r#"
logging: {{ level: info }}
health_checks: {{ interval: 1s, timeout: 500ms }}
backends:
  - {{ name: good, url: "{good}", api_key: "${{CANARY_PROVIDER_KEY}}", models: [good, stream-model] }}
  - {{ name: broken, url: "{broken}", api_key: "{INLINE_PROVIDER_KEY}", models: [broken],
      headers: {{ X-Extra-Secret: "{INLINE_PROVIDER_KEY}" }} }}
  - {{ name: cut, url: "{cut}", api_key: "{INLINE_PROVIDER_KEY}", models: [cut] }}
  - {{ name: refused, url: "http://127.0.0.1:{closed}", api_key: "{INLINE_PROVIDER_KEY}", models: [refused],
      health_check: {{ enabled: false }} }}
  - {{ name: slow, url: "{hang}", api_key: "{INLINE_PROVIDER_KEY}", models: [slow],
      timeouts: {{ first_byte: 300ms }}, health_check: {{ enabled: false }} }}
  - {{ name: wrongkey, url: "{wrong}", api_key: "${{CANARY_PROVIDER_KEY}}", models: [wrongkey] }}
request: {{ max_retries: 0 }}
auth:
  api_keys:
    - {{ key: "{CLIENT_KEY}", name: main-client }}
    - {{ key: "{LIMITED_KEY}", name: limited-client, models: [good] }}
  admin_api_key: "{ADMIN_KEY}"
metrics:
  auth: {{ enabled: true, username: prom, password: "{METRICS_PASSWORD}" }}
rate_limit: {{ enabled: true, per_key: {{ requests_per_minute: 60, burst: 30 }} }}
{extra}"#,
            good = good.url(),
            broken = broken.url(),
            cut = cut.url(),
            hang = hang.url(),
            wrong = wrong_key.url(),
        )
    };
    let router =
        start(temp_dir("canary"), &config(""), &[("CANARY_PROVIDER_KEY", PROVIDER_KEY)]).await;
    let port = router.port;
    let client = format!("Bearer {CLIENT_KEY}");
    let auth = [("Authorization", client.as_str())];
    let mut transcript = String::new();
    let t = &mut transcript;

    // Success, streamed and not, then every error path.
    exchange(t, port, "POST", "/v1/chat/completions", &auth, &chat("good", false), 200).await;
    let stream =
        exchange(t, port, "POST", "/v1/chat/completions", &auth, &chat("stream-model", true), 200)
            .await;
    assert!(stream.contains("data: [DONE]"), "{stream}");
    let cut_stream =
        exchange(t, port, "POST", "/v1/chat/completions", &auth, &chat("cut", true), 200).await;
    assert!(cut_stream.contains("\"error\"") && !cut_stream.contains("[DONE]"), "{cut_stream}");
    exchange(t, port, "POST", "/v1/chat/completions", &[], &chat("good", false), 401).await;
    exchange(
        t,
        port,
        "POST",
        "/v1/chat/completions",
        &[("Authorization", "Bearer sk-canary-client")],
        &chat("good", false),
        401,
    )
    .await;
    exchange(
        t,
        port,
        "POST",
        "/v1/chat/completions",
        &[("x-api-key", LIMITED_KEY)],
        &chat("broken", false),
        403,
    )
    .await;
    exchange(t, port, "POST", "/v1/chat/completions", &auth, &chat("no-such-model", false), 404)
        .await;
    exchange(t, port, "GET", "/v1/no/such/path", &auth, "", 404).await;
    exchange(t, port, "POST", "/v1/chat/completions", &auth, &chat("broken", false), 500).await;
    exchange(t, port, "POST", "/v1/chat/completions", &auth, &chat("refused", false), 502).await;
    exchange(t, port, "POST", "/v1/chat/completions", &auth, &chat("slow", false), 504).await;
    exchange(t, port, "POST", "/v1/chat/completions", &auth, &chat("wrongkey", false), 401).await;
    exchange(t, port, "POST", "/v1/chat/completions", &auth, "{not json", 400).await;
    let mut limited = 0;
    for _ in 0..35 {
        let (status, text) = http(
            port,
            "POST",
            "/v1/chat/completions",
            &[("x-api-key", LIMITED_KEY)],
            &chat("good", false),
        )
        .await
        .unwrap();
        t.push_str(&text);
        limited += usize::from(status == 429);
    }
    assert!(limited > 0, "the per-key limit never refused");
    exchange(t, port, "GET", "/metrics", &[], "", 401).await;
    exchange(t, port, "GET", "/metrics", &[("Authorization", &basic("prom", "wrong"))], "", 401)
        .await;
    exchange(t, port, "GET", "/admin/config", &auth, "", 401).await;
    exchange(t, port, "GET", "/admin/health", &[("x-api-key", "sk-canary-admin")], "", 401).await;

    // Reload errors: by the admin API, by SIGHUP and by the file watch. The invalid
    // value below is the provider key itself, which the validation message would echo.
    let admin = [("x-api-key", ADMIN_KEY)];
    std::fs::write(
        router.config_path(),
        config("server: { workers: \"${CANARY_PROVIDER_KEY}\" }\n"),
    )
    .unwrap();
    let refused = exchange(t, port, "POST", "/admin/config/reload", &admin, "", 400).await;
    assert!(refused.contains("server.workers"), "{refused}");
    std::fs::write(router.config_path(), config("routing: { strategy: [unclosed\n")).unwrap();
    router.signal("-HUP");
    tokio::time::sleep(ms(1500)).await;
    std::fs::write(
        router.config_path(),
        config(&format!("metrics: {{ pasword: \"{METRICS_PASSWORD}\" }}\n")),
    )
    .unwrap();
    tokio::time::sleep(ms(1500)).await;

    // What an operator reads.
    let metrics_auth = basic("prom", METRICS_PASSWORD);
    let metrics =
        exchange(t, port, "GET", "/metrics", &[("Authorization", &metrics_auth)], "", 200).await;
    assert!(metrics.contains("http_requests_total{"), "{metrics}");
    assert!(metrics.contains("switchyard_config_reloads_total{result=\"failed\"}"), "{metrics}");
    assert!(metrics.contains("switchyard_auth_failures_total"), "{metrics}");
    let status = exchange(t, port, "GET", "/admin/config", &admin, "", 200).await;
    assert!(status.contains("\"last_result\":\"failed\""), "{status}");
    assert!(status.contains("main-client"), "{status}");
    exchange(t, port, "GET", "/admin/health", &admin, "", 200).await;
    exchange(t, port, "GET", "/admin/backends", &admin, "", 200).await;
    exchange(t, port, "GET", "/v1/models", &auth, "", 200).await;

    // Give the access log of the last requests a moment, then stop the process.
    tokio::time::sleep(ms(200)).await;
    router.signal("-TERM");
    tokio::time::sleep(ms(500)).await;
    let logs = router.logs();
    assert!(logs.contains("request_id="), "no access log:\n{logs}");
    assert!(logs.contains("key=\"main-client\"") || logs.contains("key=main-client"), "{logs}");
    assert!(logs.contains("configuration reload failed"), "{logs}");
    assert!(logs.contains("status=504") && logs.contains("status=429"), "{logs}");
    assert_no_canary("the log", &logs);
    assert_no_canary("the responses", &transcript);
    assert!(
        !logs.contains("hello there") && !transcript.contains("hello there"),
        "prompt text leaked"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn sighup_and_file_changes_reload_the_binary_and_restart_only_keys_are_reported() {
    let mock = MockUpstream::start(Script::ok()).await.unwrap();
    let config = |extra: &str| {
        format!("backends:\n  - {{ name: a, url: \"{}\", models: [m] }}\n{extra}", mock.url())
    };
    let router = start(temp_dir("sighup"), &config(""), &[]).await;
    let port = router.port;
    let (status, _) =
        http(port, "POST", "/v1/chat/completions", &[], &chat("fast", false)).await.unwrap();
    assert_eq!(status, 404);

    // Written by rename (as editors and deployment tools do), then SIGHUP.
    let staging = router.dir.0.join("next.yaml");
    std::fs::write(&staging, config("routing: { model_aliases: { fast: m } }\n")).unwrap();
    std::fs::rename(&staging, router.config_path()).unwrap();
    router.signal("-HUP");
    assert!(wait_status(port, "fast", 200).await, "{}", router.logs());

    // In place, no signal: the watcher sees it.
    std::fs::write(
        router.config_path(),
        config("routing: { model_aliases: { fast: m, quick: m } }\nserver: { workers: 3 }\n"),
    )
    .unwrap();
    assert!(wait_status(port, "quick", 200).await, "{}", router.logs());
    let (_, status) = http(port, "GET", "/admin/config", &[], "").await.unwrap();
    assert!(status.contains("\"restart_required\":[\"server.workers\"]"), "{status}");
    let logs = router.logs();
    assert!(logs.contains("only a restart applies"), "{logs}");
    let (status, metrics) = http(port, "GET", "/metrics", &[], "").await.unwrap();
    assert_eq!(status, 200);
    assert!(metrics.contains("switchyard_config_reloads_total{result=\"applied\"}"), "{metrics}");
    assert!(metrics.contains("# TYPE http_request_duration_seconds histogram"), "{metrics}");
    assert!(metrics.contains("process_resident_memory_bytes") || !cfg!(target_os = "linux"));
}

/// One exchange that must answer `expect`; its text is added to the transcript.
async fn exchange(
    transcript: &mut String,
    port: u16,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
    expect: u16,
) -> String {
    let (status, text) = http(port, method, path, headers, body).await.unwrap();
    assert_eq!(status, expect, "{method} {path}: {text}");
    transcript.push_str(&text);
    text
}

async fn wait_status(port: u16, model: &str, expected: u16) -> bool {
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline {
        let (status, _) =
            http(port, "POST", "/v1/chat/completions", &[], &chat(model, false)).await.unwrap();
        if status == expected {
            return true;
        }
        tokio::time::sleep(ms(50)).await;
    }
    false
}
