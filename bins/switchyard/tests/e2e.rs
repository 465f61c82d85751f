//! The built `switchyard` binary, driven like users drive it: the official `openai`
//! Python SDK, curl-like raw HTTP, `config check`, and SIGTERM while a stream runs.

#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use switchyard_test_support::{MockUpstream, Script, ms};

mod common;

use common::{BIN, TempDir};

async fn start(tag: &str, config: &str) -> common::Running {
    common::start(TempDir::new(&format!("e2e-{tag}")), config, &[], Duration::from_secs(20)).await
}

/// A raw HTTP/1.1 exchange (what curl does), returning status and body text.
async fn http(port: u16, request: &str) -> std::io::Result<(u16, String)> {
    common::send(port, request).await
}

fn post(path: &str, body: &str) -> String {
    format!(
        "POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
}

fn config_for(mock: &MockUpstream) -> String {
    format!(
        "backends:\n  - name: mock\n    type: openai\n    url: \"{}\"\n    api_key: \"sk-provider\"\n",
        mock.url()
    )
}

fn python_with_openai() -> Option<&'static str> {
    python_with("openai")
}

/// `python3` if it can import `module`; without it the test fails with the command
/// that installs it, unless SWITCHYARD_SKIP_PYTHON is set.
fn python_with(module: &str) -> Option<&'static str> {
    let ok = Command::new("python3")
        .args(["-c", &format!("import {module}")])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if ok {
        return Some("python3");
    }
    assert!(
        std::env::var_os("SWITCHYARD_SKIP_PYTHON").is_some(),
        "the `{module}` Python package is missing: run scripts/test.sh (it installs it), \
         `python3 -m pip install {module}`, or set SWITCHYARD_SKIP_PYTHON=1"
    );
    None
}

#[tokio::test(flavor = "multi_thread")]
async fn openai_python_sdk_against_the_binary() {
    let Some(python) = python_with_openai() else { return };
    let mock = MockUpstream::start(Script::ok().chunks(5)).await.unwrap();
    let router = start("sdk", &config_for(&mock)).await;
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/python/openai_sdk.py");
    let base = format!("http://127.0.0.1:{}/v1", router.port);
    let output = tokio::process::Command::new(python)
        .arg(script)
        .args([&base, "mock-model"])
        .output()
        .await
        .unwrap();
    assert!(
        output.status.success(),
        "{}\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    // The SDK's key never reached the upstream; the provider key did.
    for request in mock.requests() {
        assert_eq!(request.header("authorization"), Some("Bearer sk-provider"));
    }
}

async fn run_python(python: &str, script: &str, args: &[&str]) {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/python").join(script);
    let output =
        tokio::process::Command::new(python).arg(script).args(args).output().await.unwrap();
    assert!(
        output.status.success(),
        "{}\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn openai_sdk_against_anthropic_and_gemini_backends_with_tool_calls() {
    let Some(python) = python_with_openai() else { return };
    let weather = serde_json::json!({"city": "Paris"});
    let claude_text = MockUpstream::start(Script::ok().anthropic()).await.unwrap();
    let claude_tool =
        MockUpstream::start(Script::ok().anthropic().tool_call("get_weather", weather.clone()))
            .await
            .unwrap();
    let gemini_text = MockUpstream::start(Script::ok().gemini()).await.unwrap();
    let gemini_tool =
        MockUpstream::start(Script::ok().gemini().tool_call("get_weather", weather)).await.unwrap();
    let config = format!(
        "backends:\n\
         - {{ name: claude-text, type: anthropic, url: \"{}\", api_key: k, models: [claude-text] }}\n\
         - {{ name: claude-tool, type: anthropic, url: \"{}\", api_key: k, models: [claude-tool] }}\n\
         - {{ name: gemini-text, type: gemini, url: \"{}\", api_key: k, models: [gemini-text] }}\n\
         - {{ name: gemini-tool, type: gemini, url: \"{}\", api_key: k, models: [gemini-tool] }}\n",
        claude_text.url(),
        claude_tool.url(),
        gemini_text.url(),
        gemini_tool.url()
    );
    let router = start("providers", &config).await;
    let base = format!("http://127.0.0.1:{}/v1", router.port);
    run_python(python, "openai_tools.py", &[&base, "claude-text", "claude-tool"]).await;
    run_python(python, "openai_tools.py", &[&base, "gemini-text", "gemini-tool"]).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn anthropic_sdk_against_an_openai_compatible_backend() {
    let Some(python) = python_with("anthropic") else { return };
    let mock = MockUpstream::start(Script::ok().texts(["The capital of France ", "is Paris."]))
        .await
        .unwrap();
    let router = start("anthropic-sdk", &config_for(&mock)).await;
    let base = format!("http://127.0.0.1:{}", router.port);
    run_python(python, "anthropic_sdk.py", &[&base, "mock-model", "Paris"]).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn raw_http_like_curl() {
    let mock = MockUpstream::start(Script::ok()).await.unwrap();
    let router = start("curl", &config_for(&mock)).await;
    let body = r#"{"model":"mock-model","messages":[{"role":"user","content":"hi"}]}"#;
    let (status, text) = http(router.port, &post("/v1/chat/completions", body)).await.unwrap();
    assert_eq!(status, 200, "{text}");
    assert!(text.contains("chunk 0"), "{text}");
    let (status, text) = http(router.port, &post("/v1/chat/completions", "{oops")).await.unwrap();
    assert_eq!(status, 400, "{text}");
    assert!(text.contains("\"type\":\"invalid_request_error\""), "{text}");
}

#[tokio::test(flavor = "multi_thread")]
async fn sigterm_drains_an_in_flight_stream_then_exits_cleanly() {
    let mock = MockUpstream::start(Script::ok().chunks(30).chunk_delay(ms(30))).await.unwrap();
    let mut router = start("sigterm", &config_for(&mock)).await;
    let port = router.port;
    let body =
        r#"{"model":"mock-model","stream":true,"messages":[{"role":"user","content":"hi"}]}"#;
    let stream = tokio::spawn(async move { http(port, &post("/v1/chat/completions", body)).await });
    assert!(mock.wait_requests(1, Duration::from_secs(5)).await);
    tokio::time::sleep(ms(100)).await;
    let pid = router.child.id().to_string();
    assert!(Command::new("kill").args(["-TERM", &pid]).status().unwrap().success());

    let (status, text) = stream.await.unwrap().unwrap();
    assert_eq!(status, 200);
    assert_eq!(text.matches("chunk ").count(), 30, "{text}");
    assert!(text.contains("data: [DONE]"), "{text}");
    let deadline = Instant::now() + Duration::from_secs(10);
    let exit = loop {
        if let Some(status) = router.child.try_wait().unwrap() {
            break status;
        }
        assert!(Instant::now() < deadline, "switchyard did not exit after draining");
        tokio::time::sleep(ms(50)).await;
    };
    assert!(exit.success(), "{exit:?}");
}

#[test]
fn config_check_reports_every_problem_with_exit_64() {
    let dir = TempDir::new("e2e-check");
    let good = dir.write("good.yaml", "backends:\n  - { name: a, url: \"http://127.0.0.1:1\" }\n");
    let bad = dir.write(
        "bad.yaml",
        "server: { bind_adress: x }\nbackends:\n  - { name: a }\n  - { name: a, url: \"http://h\" }\nrouting: { strategy: Fastest }\n",
    );
    let out = Command::new(BIN).args(["config", "check"]).arg(&good).output().unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    let out = Command::new(BIN).args(["config", "check"]).arg(&bad).output().unwrap();
    assert_eq!(out.status.code(), Some(64));
    let stderr = String::from_utf8_lossy(&out.stderr);
    for expected in
        ["server.bind_adress", "bind_address", "backends[0].url", "duplicate", "routing.strategy"]
    {
        assert!(stderr.contains(expected), "missing {expected:?} in:\n{stderr}");
    }
    let out = Command::new(BIN).args(["serve", "--config"]).arg(&bad).output().unwrap();
    assert_eq!(out.status.code(), Some(64));
}

#[test]
fn config_generate_output_passes_config_check_and_print_masks_secrets() {
    let dir = TempDir::new("e2e-generate");
    let out = Command::new(BIN).args(["config", "generate"]).output().unwrap();
    assert!(out.status.success());
    let starter = dir.write("starter.yaml", &String::from_utf8(out.stdout).unwrap());
    let out = Command::new(BIN).args(["config", "check"]).arg(&starter).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));

    let secret = dir.write(
        "secret.yaml",
        "backends:\n  - { name: a, url: \"http://127.0.0.1:1\", api_key: \"sk-do-not-print\" }\n",
    );
    let out =
        Command::new(BIN).args(["config", "print", "--config"]).arg(&secret).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let printed = String::from_utf8(out.stdout).unwrap();
    assert!(printed.contains("bind_address"), "{printed}");
    assert!(!printed.contains("sk-do-not-print"), "{printed}");
}
