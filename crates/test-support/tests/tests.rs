//! The mock upstream, driven by a real hyper client over real sockets.

#![allow(clippy::unwrap_used, reason = "test helpers panic on setup failures")]

mod util;

use std::time::Duration;

use http::{Method, StatusCode};
use serde_json::Value;
use switchyard_test_support::{MockUpstream, Script, ms};

use util::{chat, send};

#[tokio::test]
async fn chat_non_stream_matches_render_and_echoes_model() {
    let mock = MockUpstream::start(Script::ok().chunks(4)).await.unwrap();
    let body = chat(false);
    let (status, headers, got) = send(mock.addr(), "POST", "/v1/chat/completions", &body).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(headers["content-type"], "application/json");
    assert_eq!(got, Script::ok().chunks(4).expected_body("/v1/chat/completions", &body));
    let json: Value = serde_json::from_slice(&got).unwrap();
    assert_eq!(json["model"], "gpt-test");
    assert_eq!(json["choices"][0]["message"]["content"], "chunk 0 chunk 1 chunk 2 chunk 3 ");
    assert_eq!(headers["content-length"], got.len().to_string().as_str());
}

#[tokio::test]
async fn chat_stream_matches_render_and_ends_with_done() {
    let script = Script::ok().chunks(5).chunk_delay(ms(1));
    let mock = MockUpstream::start(script.clone()).await.unwrap();
    let body = chat(true);
    let (status, headers, got) = send(mock.addr(), "POST", "/v1/chat/completions", &body).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(headers["content-type"], "text/event-stream");
    let expected = script.render(&Method::POST, "/v1/chat/completions", &body);
    assert_eq!(got, expected.body());
    assert_eq!(expected.frames.len(), 7);
    assert!(got.ends_with(b"data: [DONE]\n\n"));
    let text = String::from_utf8(got.to_vec()).unwrap();
    assert!(text.contains(r#""delta":{"role":"assistant","content":"chunk 0 "}"#));
    assert!(text.contains(r#""finish_reason":"stop""#));
    assert!(mock.wait_for(Duration::from_secs(1), |s| s.streams_completed == 1).await);
}

#[tokio::test]
async fn models_and_health_and_recording() {
    let mock = MockUpstream::start(Script::ok().models(["a", "b"])).await.unwrap();
    let (status, _, got) = send(mock.addr(), "GET", "/v1/models", b"").await;
    assert_eq!(status, StatusCode::OK);
    let json: Value = serde_json::from_slice(&got).unwrap();
    let ids: Vec<&str> =
        json["data"].as_array().unwrap().iter().map(|m| m["id"].as_str().unwrap()).collect();
    assert_eq!(ids, ["a", "b"]);
    let (status, _, _) = send(mock.addr(), "GET", "/health", b"").await;
    assert_eq!(status, StatusCode::OK);
    let body = chat(false);
    send(mock.addr(), "POST", "/v1/chat/completions?x=1", &body).await;
    assert_eq!(mock.request_count(), 3);
    assert_eq!(mock.request_count_for("/v1/models"), 1);
    assert_eq!(mock.request_count_for("/v1/chat/completions"), 1);
    let last = mock.last_request().unwrap();
    assert_eq!(last.method, Method::POST);
    assert_eq!(last.query.as_deref(), Some("x=1"));
    assert_eq!(last.body.as_ref(), body.as_slice());
    assert_eq!(last.model().as_deref(), Some("gpt-test"));
    assert_eq!(last.header("content-type"), Some("application/json"));
    assert_eq!(mock.counts_by_path()["/health"], 1);
}
