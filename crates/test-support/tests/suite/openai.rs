//! OpenAI endpoints: shapes, byte-for-byte agreement with `Script::render`, recording.

use std::time::Duration;

use http::{Method, StatusCode};
use serde_json::Value;
use switchyard_core::sse::SseParser;
use switchyard_test_support::{MockUpstream, Script, ms};

use crate::util::{chat, send, send_with};

fn sse_data(body: &[u8]) -> Vec<String> {
    let mut parser = SseParser::new();
    let events = parser.feed(body);
    assert!(!parser.finish(), "stream ends on an event boundary");
    events.into_iter().map(|e| e.data).collect()
}

#[tokio::test]
async fn chat_non_stream_matches_render_and_echoes_model() {
    let mock = MockUpstream::start(Script::ok().chunks(4)).await.unwrap();
    let body = chat(false);
    let (status, headers, got) = send(mock.addr(), "POST", "/v1/chat/completions", &body).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(headers["content-type"], "application/json");
    assert_eq!(headers["content-length"], got.len().to_string().as_str());
    assert_eq!(got, Script::ok().chunks(4).expected_body("/v1/chat/completions", &body));
    let json: Value = serde_json::from_slice(&got).unwrap();
    assert_eq!(json["object"], "chat.completion");
    assert_eq!(json["model"], "gpt-test");
    assert_eq!(json["choices"][0]["message"]["content"], "chunk 0 chunk 1 chunk 2 chunk 3 ");
    assert_eq!(json["choices"][0]["finish_reason"], "stop");
    assert_eq!(json["usage"]["completion_tokens"], 4);
    // It parses as the router's own wire type.
    let _: switchyard_core::openai::ChatCompletion = serde_json::from_slice(&got).unwrap();
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
    assert_eq!(expected.frames.len(), 7, "5 content chunks, finish, [DONE]");
    let data = sse_data(&got);
    assert_eq!(data.last().unwrap(), "[DONE]");
    let mut text = String::new();
    for event in &data[..data.len() - 1] {
        let chunk: switchyard_core::openai::ChatCompletionChunk =
            serde_json::from_str(event).unwrap();
        assert_eq!(chunk.model, "gpt-test");
        assert!(chunk.usage.is_none());
        text.push_str(chunk.choices[0].delta.content.as_deref().unwrap_or(""));
    }
    assert_eq!(text, "chunk 0 chunk 1 chunk 2 chunk 3 chunk 4 ");
    let raw = String::from_utf8(got.to_vec()).unwrap();
    assert!(raw.contains(r#""delta":{"role":"assistant","content":"chunk 0 "}"#));
    assert!(mock.wait_for(Duration::from_secs(1), |s| s.streams_completed == 1).await);
    assert_eq!(mock.stats().streams_cancelled, 0);
}

#[tokio::test]
async fn include_usage_adds_a_final_usage_chunk() {
    let mock = MockUpstream::start(Script::ok().chunks(2)).await.unwrap();
    let body =
        br#"{"model":"m","stream":true,"stream_options":{"include_usage":true},"messages":[]}"#;
    let (_, _, got) = send(mock.addr(), "POST", "/v1/chat/completions", body).await;
    let data = sse_data(&got);
    assert_eq!(data.len(), 5, "2 content, finish, usage, [DONE]");
    let usage: Value = serde_json::from_str(&data[3]).unwrap();
    assert_eq!(usage["choices"], Value::Array(vec![]));
    assert_eq!(usage["usage"]["completion_tokens"], 2);
    assert_eq!(usage["usage"]["prompt_tokens"], body.len() / 4);
    let first: Value = serde_json::from_str(&data[0]).unwrap();
    assert_eq!(first["usage"], Value::Null);
    assert!(first.as_object().unwrap().contains_key("usage"));
}

#[tokio::test]
async fn tool_call_streams_arguments_in_pieces() {
    let args = serde_json::json!({"city": "Zürich", "unit": "celsius"});
    let script = Script::ok().chunks(4).tool_call("get_weather", args.clone());
    let mock = MockUpstream::start(script).await.unwrap();
    let (_, _, got) = send(mock.addr(), "POST", "/v1/chat/completions", &chat(true)).await;
    let data = sse_data(&got);
    let mut arguments = String::new();
    for event in &data[..4] {
        let chunk: Value = serde_json::from_str(event).unwrap();
        arguments.push_str(
            chunk["choices"][0]["delta"]["tool_calls"][0]["function"]["arguments"]
                .as_str()
                .unwrap(),
        );
    }
    assert_eq!(serde_json::from_str::<Value>(&arguments).unwrap(), args);
    let finish: Value = serde_json::from_str(&data[4]).unwrap();
    assert_eq!(finish["choices"][0]["finish_reason"], "tool_calls");
    let first: Value = serde_json::from_str(&data[0]).unwrap();
    assert_eq!(first["choices"][0]["delta"]["tool_calls"][0]["function"]["name"], "get_weather");

    let (_, _, whole) = send(mock.addr(), "POST", "/v1/chat/completions", &chat(false)).await;
    let whole: Value = serde_json::from_slice(&whole).unwrap();
    let call = &whole["choices"][0]["message"]["tool_calls"][0];
    assert_eq!(call["function"]["name"], "get_weather");
    assert_eq!(
        serde_json::from_str::<Value>(call["function"]["arguments"].as_str().unwrap()).unwrap(),
        args
    );
}

#[tokio::test]
async fn completions_and_embeddings() {
    let mock = MockUpstream::start(Script::ok().chunks(3).embedding_dims(4)).await.unwrap();
    let prompt = br#"{"model":"text-m","prompt":"say","stream":false}"#;
    let (status, _, got) = send(mock.addr(), "POST", "/v1/completions", prompt).await;
    assert_eq!(status, StatusCode::OK);
    let json: Value = serde_json::from_slice(&got).unwrap();
    assert_eq!(json["object"], "text_completion");
    assert_eq!(json["choices"][0]["text"], "chunk 0 chunk 1 chunk 2 ");

    let prompt = br#"{"model":"text-m","prompt":"say","stream":true}"#;
    let (_, _, got) = send(mock.addr(), "POST", "/v1/completions", prompt).await;
    let data = sse_data(&got);
    assert_eq!(data.len(), 5);
    assert_eq!(data[4], "[DONE]");
    let first: Value = serde_json::from_str(&data[0]).unwrap();
    assert_eq!(first["choices"][0]["text"], "chunk 0 ");

    let input = br#"{"model":"emb","input":["a","b"]}"#;
    let (_, _, got) = send(mock.addr(), "POST", "/v1/embeddings", input).await;
    let json: switchyard_core::openai::EmbeddingResponse = serde_json::from_slice(&got).unwrap();
    assert_eq!(json.data.len(), 2);
    let again = send(mock.addr(), "POST", "/v1/embeddings", input).await.2;
    assert_eq!(got, again, "embeddings are deterministic");
    let raw: Value = serde_json::from_slice(&got).unwrap();
    assert_eq!(raw["data"][0]["embedding"].as_array().unwrap().len(), 4);
    assert_ne!(raw["data"][0]["embedding"], raw["data"][1]["embedding"]);
}

#[tokio::test]
async fn models_health_and_recording() {
    let mock = MockUpstream::start(Script::ok().models(["a", "b"])).await.unwrap();
    let (status, _, got) = send(mock.addr(), "GET", "/v1/models", b"").await;
    assert_eq!(status, StatusCode::OK);
    let list: switchyard_core::openai::ModelList = serde_json::from_slice(&got).unwrap();
    let ids: Vec<&str> = list.data.iter().map(|m| m.id.as_str()).collect();
    assert_eq!(ids, ["a", "b"]);
    assert_eq!(send(mock.addr(), "GET", "/v1/models/b", b"").await.0, StatusCode::OK);
    assert_eq!(send(mock.addr(), "GET", "/v1/models/zz", b"").await.0, StatusCode::NOT_FOUND);
    let (status, _, _) = send(mock.addr(), "GET", "/health", b"").await;
    assert_eq!(status, StatusCode::OK);
    let body = chat(false);
    send_with(
        mock.addr(),
        "POST",
        "/v1/chat/completions?x=1",
        &body,
        &[("authorization", "Bearer sk-test")],
    )
    .await;
    assert_eq!(mock.request_count(), 5);
    assert_eq!(mock.stats().requests, 5);
    assert_eq!(mock.request_count_for("/v1/models"), 1);
    assert_eq!(mock.request_count_for("/v1/chat/completions"), 1);
    assert_eq!(mock.counts_by_path()["/health"], 1);
    let last = mock.last_request().unwrap();
    assert_eq!(last.method, Method::POST);
    assert_eq!(last.query.as_deref(), Some("x=1"));
    assert_eq!(last.path_and_query(), "/v1/chat/completions?x=1");
    assert_eq!(last.body.as_ref(), body.as_slice());
    assert_eq!(last.model().as_deref(), Some("gpt-test"));
    assert_eq!(last.api_key().as_deref(), Some("sk-test"));
    assert_eq!(last.header("content-type"), Some("application/json"));
    let requests = mock.requests();
    assert!(requests.windows(2).all(|w| w[0].received_at <= w[1].received_at));
    assert_eq!(mock.requests_for("/v1/chat/completions").len(), 1);
    // A probe after the call: the last request is the probe, the last POST the call.
    send(mock.addr(), "GET", "/health", b"").await;
    assert_eq!(mock.last_request().unwrap().path, "/health");
    assert_eq!(mock.last_post().unwrap().path_and_query(), "/v1/chat/completions?x=1");
    mock.clear_requests();
    assert!(mock.last_post().is_none());
    assert_eq!(mock.request_count(), 0);
    assert_eq!(mock.stats().requests, 6);
}

#[tokio::test]
async fn unknown_path_wrong_method_and_bad_json_get_openai_errors() {
    let mock = MockUpstream::start(Script::ok()).await.unwrap();
    let (status, _, got) = send(mock.addr(), "POST", "/v1/nope", b"{}").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let _: switchyard_core::openai::ErrorBody = serde_json::from_slice(&got).unwrap();
    let (status, _, _) = send(mock.addr(), "GET", "/v1/chat/completions", b"").await;
    assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED);
    let (status, _, got) = send(mock.addr(), "POST", "/v1/chat/completions", b"{not json").await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let json: Value = serde_json::from_slice(&got).unwrap();
    assert!(json["error"]["message"].as_str().unwrap().starts_with("invalid json body"));
}

#[tokio::test]
async fn ids_are_a_pure_function_of_the_body() {
    let mock = MockUpstream::start(Script::ok()).await.unwrap();
    let a = send(mock.addr(), "POST", "/v1/chat/completions", &chat(false)).await.2;
    let b = send(mock.addr(), "POST", "/v1/chat/completions", &chat(false)).await.2;
    assert_eq!(a, b);
    let other = br#"{"model":"gpt-test","messages":[{"role":"user","content":"other"}]}"#;
    let c = send(mock.addr(), "POST", "/v1/chat/completions", other).await.2;
    let id = |bytes: &[u8]| serde_json::from_slice::<Value>(bytes).unwrap()["id"].clone();
    assert_ne!(id(&a), id(&c));
    assert!(id(&a).as_str().unwrap().starts_with("chatcmpl-"));
}

#[tokio::test]
async fn h2c_prior_knowledge_is_served() {
    use http_body_util::{BodyExt, Full};
    use hyper_util::rt::{TokioExecutor, TokioIo};

    let mock = MockUpstream::start(Script::ok().chunks(2)).await.unwrap();
    let stream = tokio::net::TcpStream::connect(mock.addr()).await.unwrap();
    let (mut sender, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
            .await
            .unwrap();
    tokio::spawn(conn);
    let body = chat(true);
    let request = http::Request::post(format!("{}/v1/chat/completions", mock.url()))
        .body(Full::new(bytes::Bytes::from(body.clone())))
        .unwrap();
    let response = sender.send_request(request).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let got = response.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(got, Script::ok().chunks(2).expected_body("/v1/chat/completions", &body));
    assert_eq!(mock.last_request().unwrap().version, http::Version::HTTP_2);
}
