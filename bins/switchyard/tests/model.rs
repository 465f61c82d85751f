//! The built binary serving the real default model (SmolLM2-135M-Instruct, fetched once
//! into the cache by scripts/test.sh): greedy answers, stream/non-stream agreement, the
//! Simple API, concurrency with a bounded queue, the Anthropic SDK, and a clear error
//! when the model is missing.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stderr, missing_docs)]

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use serde_json::{Value, json};

mod common;

const MODEL: &str = switchyard_inference::DEFAULT_MODEL_ID;
use common::BIN;

/// The default model, or `None` when the run says it has none (see `model_or_skip`).
fn model_path() -> Option<PathBuf> {
    switchyard_test_support::model_or_skip(
        switchyard_inference::default_model_path(),
        switchyard_inference::FETCH_COMMAND,
    )
}

async fn start(
    tag: &str,
    model: &std::path::Path,
    concurrent: usize,
    queue: usize,
) -> common::Running {
    let config = format!(
        "backends: [{{ name: local, type: local }}]\n\
         inference: {{ model_path: \"{}\", threads: 1, max_concurrent: {concurrent}, max_queue: {queue} }}\n",
        model.display()
    );
    let dir = common::TempDir::new(&format!("model-{tag}"));
    common::start(dir, &config, &[], Duration::from_secs(60)).await
}

/// One raw HTTP/1.1 exchange: status, headers text, body text (de-chunked).
async fn request(
    port: u16,
    method: &str,
    path: &str,
    body: Option<&Value>,
) -> std::io::Result<(u16, String, String)> {
    let body = body.map(Value::to_string).unwrap_or_default();
    let (status, text) = common::request(port, method, path, &[], &body).await?;
    let (head, body) = common::split(&text);
    Ok((status, head.to_owned(), dechunk(head, body)))
}

fn dechunk(head: &str, body: &str) -> String {
    if !head.to_ascii_lowercase().contains("transfer-encoding: chunked") {
        return body.to_owned();
    }
    let mut out = String::new();
    let mut rest = body;
    while let Some((size, after)) = rest.split_once("\r\n") {
        let size = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
        if size == 0 {
            break;
        }
        out.push_str(&after[..size]);
        rest = &after[size + 2..];
    }
    out
}

fn greedy(stream: bool) -> Value {
    json!({
        "model": MODEL,
        "temperature": 0,
        "max_tokens": 24,
        "stream": stream,
        "messages": [{"role": "user", "content": "What is the capital of France?"}]
    })
}

fn streamed_text(body: &str) -> String {
    body.split("\n\n")
        .filter_map(|event| event.strip_prefix("data: "))
        .filter(|data| *data != "[DONE]")
        .filter_map(|data| serde_json::from_str::<Value>(data).ok())
        .filter_map(|chunk| chunk["choices"][0]["delta"]["content"].as_str().map(str::to_owned))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_embedded_model_answers_paris_streamed_or_not_and_through_the_simple_api() {
    let Some(model) = model_path() else { return };
    let router = start("paris", &model, 2, 8).await;

    let (status, _, body) =
        request(router.port, "POST", "/v1/chat/completions", Some(&greedy(false))).await.unwrap();
    assert_eq!(status, 200, "{body}");
    let json: Value = serde_json::from_str(&body).unwrap();
    let text = json["choices"][0]["message"]["content"].as_str().unwrap().to_owned();
    assert!(text.contains("Paris"), "{text}");
    assert!(json["usage"]["completion_tokens"].as_u64().unwrap() > 0);

    let (status, head, body) =
        request(router.port, "POST", "/v1/chat/completions", Some(&greedy(true))).await.unwrap();
    assert_eq!(status, 200);
    assert!(head.to_ascii_lowercase().contains("content-type: text/event-stream"), "{head}");
    assert!(body.ends_with("data: [DONE]\n\n"), "{body}");
    assert_eq!(streamed_text(&body), text, "streamed and non-streamed answers differ");

    let quick = json!({"prompt": "What is the capital of France?", "max_tokens": 24});
    let (status, _, body) = request(router.port, "POST", "/api/quick", Some(&quick)).await.unwrap();
    assert_eq!(status, 200, "{body}");
    let json: Value = serde_json::from_str(&body).unwrap();
    assert!(json["text"].as_str().unwrap().contains("Paris"), "{json}");
    assert!(json["tokens"].as_u64().unwrap() > 0, "{json}");
    assert!(json["latency"].as_u64().is_some(), "{json}");
    assert_eq!(json["model"], MODEL);

    let (_, _, body) = request(router.port, "GET", "/v1/models", None).await.unwrap();
    assert!(body.contains(MODEL), "{body}");
    let (_, _, body) = request(router.port, "GET", "/api/models", None).await.unwrap();
    assert!(body.contains(MODEL), "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn eight_concurrent_requests_complete_and_beyond_the_queue_is_a_clear_503() {
    let Some(model) = model_path() else { return };
    // Two sequences at a time, six waiting: eight fit.
    let router = start("queue", &model, 2, 6).await;
    let port = router.port;
    let mut request_body = greedy(false);
    request_body["max_tokens"] = json!(12);
    // Distinct prompts: identical greedy requests would share one generation.
    let distinct = |i: usize, body: &Value| {
        let mut body = body.clone();
        body["messages"][0]["content"] =
            json!(format!("Question {i}: what is the capital of France?"));
        body
    };
    let tasks: Vec<_> = (0..8)
        .map(|i| {
            let body = distinct(i, &request_body);
            tokio::spawn(async move {
                request(port, "POST", "/v1/chat/completions", Some(&body)).await.unwrap()
            })
        })
        .collect();
    for task in tasks {
        let (status, _, body) = task.await.unwrap();
        assert_eq!(status, 200, "{body}");
    }

    // Twenty at once overflow the queue: the rest get 503 with Retry-After, none hangs.
    request_body["max_tokens"] = json!(48);
    let tasks: Vec<_> = (0..20)
        .map(|i| {
            let body = distinct(100 + i, &request_body);
            tokio::spawn(async move {
                request(port, "POST", "/v1/chat/completions", Some(&body)).await.unwrap()
            })
        })
        .collect();
    let (mut ok, mut overloaded) = (0, 0);
    for task in tasks {
        let (status, head, body) = task.await.unwrap();
        match status {
            200 => ok += 1,
            503 => {
                overloaded += 1;
                assert!(head.to_ascii_lowercase().contains("retry-after:"), "{head}");
                assert!(body.contains("\"code\":\"overloaded\""), "{body}");
            }
            other => panic!("unexpected status {other}: {body}"),
        }
    }
    assert!(ok >= 8, "{ok} completed");
    assert!(overloaded >= 1, "the queue never overflowed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_anthropic_sdk_talks_to_the_local_model() {
    let Some(model) = model_path() else { return };
    let have_sdk = Command::new("python3")
        .args(["-c", "import anthropic"])
        .status()
        .is_ok_and(|s| s.success());
    if !have_sdk {
        assert!(
            std::env::var_os("SWITCHYARD_SKIP_PYTHON").is_some(),
            "the `anthropic` Python package is missing: run scripts/test.sh"
        );
        return;
    }
    let router = start("anthropic", &model, 2, 8).await;
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/python/anthropic_sdk.py");
    let base = format!("http://127.0.0.1:{}", router.port);
    let output = tokio::process::Command::new("python3")
        .arg(script)
        .args([&base, MODEL, "Paris"])
        .output()
        .await
        .unwrap();
    assert!(
        output.status.success(),
        "{}\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

#[test]
fn a_missing_model_says_which_command_fetches_it() {
    let output = Command::new(BIN)
        .args(["serve", "--bind", "127.0.0.1:0", "--model", "/nonexistent/model.gguf"])
        .env_remove("SWITCHYARD_CONFIG")
        .current_dir(std::env::temp_dir())
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("/nonexistent/model.gguf"), "{stderr}");
    assert!(stderr.contains(switchyard_inference::FETCH_COMMAND), "{stderr}");
}
