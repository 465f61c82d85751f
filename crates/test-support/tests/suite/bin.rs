//! The `switchyard-mock` benchmark binary, run as a process.

use std::process::Stdio;

use http::StatusCode;
use serde_json::Value;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::Command;

use crate::util::{chat, send};

#[tokio::test]
async fn switchyard_mock_serves_chat_stream_models_and_health() {
    let mut child = Command::new(env!("CARGO_BIN_EXE_switchyard-mock"))
        .args(["--port", "0", "--chunks", "4", "--chunk-delay-ms", "1", "--body-bytes", "40"])
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let line = lines.next_line().await.unwrap().unwrap();
    let addr = line.strip_prefix("listening on http://").unwrap().parse().unwrap();

    let (status, headers, body) = send(addr, "POST", "/v1/chat/completions", &chat(false)).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(headers["content-length"], body.len().to_string().as_str());
    let json: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(json["choices"][0]["message"]["content"].as_str().unwrap().len(), 40);

    let (_, headers, body) = send(addr, "POST", "/v1/chat/completions", &chat(true)).await;
    assert_eq!(headers["content-type"], "text/event-stream");
    let mut parser = switchyard_core::sse::SseParser::new();
    let events = parser.feed(&body);
    assert_eq!(events.len(), 6, "4 content chunks, finish, [DONE]");
    assert!(events[5].is_done());

    let (status, _, body) = send(addr, "GET", "/v1/models", b"").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(serde_json::from_slice::<Value>(&body).unwrap()["data"][0]["id"], "mock-model");
    assert_eq!(send(addr, "GET", "/health", b"").await.0, StatusCode::OK);
    assert_eq!(send(addr, "GET", "/nope", b"").await.0, StatusCode::NOT_FOUND);
    child.kill().await.unwrap();
}
