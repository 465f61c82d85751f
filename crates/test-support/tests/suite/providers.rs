//! Anthropic Messages and Gemini shapes, auth headers, flavour routing.

use http::{Method, StatusCode};
use serde_json::{Value, json};
use switchyard_core::sse::SseParser;
use switchyard_test_support::{Flavor, MockUpstream, Script};

use crate::util::{send, send_with};

const MESSAGES: &str = "/v1/messages";

fn anthropic_request(stream: bool) -> Vec<u8> {
    json!({
        "model": "claude-test",
        "max_tokens": 64,
        "stream": stream,
        "messages": [{"role": "user", "content": "hi"}],
    })
    .to_string()
    .into_bytes()
}

fn parse_events(body: &[u8]) -> Vec<(String, Value)> {
    let mut parser = SseParser::new();
    let events = parser.feed(body);
    assert!(!parser.finish(), "stream ends on an event boundary");
    events
        .into_iter()
        .map(|e| (e.event.unwrap_or_default(), serde_json::from_str(&e.data).unwrap()))
        .collect()
}

#[tokio::test]
async fn anthropic_message_and_event_stream() {
    let script = Script::ok().anthropic().chunks(3);
    let mock = MockUpstream::start(script.clone()).await.unwrap();
    let (status, _, got) = send(mock.addr(), "POST", MESSAGES, &anthropic_request(false)).await;
    assert_eq!(status, StatusCode::OK);
    let message: Value = serde_json::from_slice(&got).unwrap();
    assert_eq!(message["type"], "message");
    assert_eq!(message["model"], "claude-test");
    assert_eq!(message["content"][0]["text"], "chunk 0 chunk 1 chunk 2 ");
    assert_eq!(message["stop_reason"], "end_turn");
    assert_eq!(message["usage"]["output_tokens"], 3);

    let body = anthropic_request(true);
    let (_, headers, got) = send(mock.addr(), "POST", MESSAGES, &body).await;
    assert_eq!(headers["content-type"], "text/event-stream");
    assert_eq!(got, script.expected_body(MESSAGES, &body));
    let events = parse_events(&got);
    let names: Vec<&str> = events.iter().map(|(name, _)| name.as_str()).collect();
    assert_eq!(
        names,
        [
            "message_start",
            "content_block_start",
            "ping",
            "content_block_delta",
            "content_block_delta",
            "content_block_delta",
            "content_block_stop",
            "message_delta",
            "message_stop"
        ]
    );
    for (name, data) in &events {
        assert_eq!(&data["type"], name.as_str(), "the event name matches the data type");
    }
    assert_eq!(events[0].1["message"]["model"], "claude-test");
    assert_eq!(events[3].1["delta"], json!({"type": "text_delta", "text": "chunk 0 "}));
    assert_eq!(events[7].1["delta"]["stop_reason"], "end_turn");
    assert_eq!(events[7].1["usage"]["output_tokens"], 3);
}

#[tokio::test]
async fn anthropic_tool_use_streams_input_json_deltas() {
    let input = json!({"location": "San Francisco, CA", "unit": "fahrenheit"});
    let script = Script::ok().anthropic().chunks(3).tool_call("get_weather", input.clone());
    let body = anthropic_request(true);
    let events = parse_events(&script.expected_body(MESSAGES, &body));
    assert_eq!(events[1].1["content_block"]["type"], "tool_use");
    assert_eq!(events[1].1["content_block"]["name"], "get_weather");
    let partial: String = events
        .iter()
        .filter(|(name, _)| name == "content_block_delta")
        .map(|(_, data)| {
            assert_eq!(data["delta"]["type"], "input_json_delta");
            data["delta"]["partial_json"].as_str().unwrap().to_owned()
        })
        .collect();
    assert_eq!(serde_json::from_str::<Value>(&partial).unwrap(), input);
    let stop = events.iter().find(|(name, _)| name == "message_delta").unwrap();
    assert_eq!(stop.1["delta"]["stop_reason"], "tool_use");

    let whole = script.expected_body(MESSAGES, &anthropic_request(false));
    let whole: Value = serde_json::from_slice(&whole).unwrap();
    assert_eq!(whole["content"][0]["type"], "tool_use");
    assert_eq!(whole["content"][0]["input"], input);
}

#[tokio::test]
async fn anthropic_errors_and_error_events() {
    let body = anthropic_request(true);
    let rendered =
        Script::ok().anthropic().chunks(5).error_after(0).render(&Method::POST, MESSAGES, &body);
    let events = parse_events(&rendered.body());
    let names: Vec<&str> = events.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names, ["message_start", "content_block_start", "ping", "error"]);
    assert_eq!(events[3].1["error"]["type"], "overloaded_error");

    let mock = MockUpstream::start(Script::status(529).anthropic()).await.unwrap();
    let (status, _, got) = send(mock.addr(), "POST", MESSAGES, &body).await;
    assert_eq!(status.as_u16(), 529);
    let error: Value = serde_json::from_slice(&got).unwrap();
    assert_eq!(
        error,
        json!({"type": "error", "error": {"type": "overloaded_error", "message": "mock upstream error 529"}})
    );

    mock.set_script(Script::ok().anthropic());
    let (status, _, got) = send(mock.addr(), "POST", "/v1/chat/completions", &body).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "an Anthropic mock does not speak OpenAI");
    assert_eq!(serde_json::from_slice::<Value>(&got).unwrap()["error"]["type"], "not_found_error");
    let (_, _, got) = send(mock.addr(), "POST", "/v1/messages/count_tokens", &body).await;
    assert_eq!(serde_json::from_slice::<Value>(&got).unwrap()["input_tokens"], body.len() / 4);
    let (_, _, got) = send(mock.addr(), "GET", "/v1/models", b"").await;
    let models: Value = serde_json::from_slice(&got).unwrap();
    assert_eq!(models["data"][0]["type"], "model");
    assert_eq!(models["data"][0]["created_at"], "2023-11-14T22:13:20Z");
    assert_eq!(models["has_more"], false);
}

#[tokio::test]
async fn api_keys_are_recorded_and_can_be_required() {
    let mock =
        MockUpstream::start(Script::ok().anthropic().require_api_key("sk-ant")).await.unwrap();
    let body = anthropic_request(false);
    let (status, _, got) = send(mock.addr(), "POST", MESSAGES, &body).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(
        serde_json::from_slice::<Value>(&got).unwrap()["error"]["type"],
        "authentication_error"
    );
    let headers = [("x-api-key", "sk-ant"), ("anthropic-version", "2023-06-01")];
    let (status, _, _) = send_with(mock.addr(), "POST", MESSAGES, &body, &headers).await;
    assert_eq!(status, StatusCode::OK);
    let last = mock.last_request().unwrap();
    assert_eq!(last.api_key().as_deref(), Some("sk-ant"));
    assert_eq!(last.header("anthropic-version"), Some("2023-06-01"));
    assert_eq!(mock.requests()[0].api_key(), None);
}

#[tokio::test]
async fn gemini_generate_and_sse_stream() {
    let script = Script::ok().gemini().chunks(3).models(["gemini-test"]);
    let mock = MockUpstream::start(script.clone()).await.unwrap();
    let body = br#"{"contents":[{"role":"user","parts":[{"text":"hi"}]}]}"#;
    let path = "/v1beta/models/gemini-test:generateContent";
    let headers = [("x-goog-api-key", "g-key")];
    let (status, _, got) = send_with(mock.addr(), "POST", path, body, &headers).await;
    assert_eq!(status, StatusCode::OK);
    let json: Value = serde_json::from_slice(&got).unwrap();
    assert_eq!(json["candidates"][0]["content"]["parts"][0]["text"], "chunk 0 chunk 1 chunk 2 ");
    assert_eq!(json["candidates"][0]["content"]["role"], "model");
    assert_eq!(json["candidates"][0]["finishReason"], "STOP");
    assert_eq!(json["modelVersion"], "gemini-test");
    assert_eq!(json["usageMetadata"]["candidatesTokenCount"], 3);
    assert_eq!(mock.last_request().unwrap().api_key().as_deref(), Some("g-key"));

    let path = "/v1beta/models/gemini-test:streamGenerateContent?alt=sse";
    let (_, headers, got) = send(mock.addr(), "POST", path, body).await;
    assert_eq!(headers["content-type"], "text/event-stream");
    assert_eq!(got, script.expected_body(path, body));
    assert!(got.ends_with(b"\r\n\r\n"), "Gemini frames events with CRLF");
    let events = parse_events(&got);
    assert_eq!(events.len(), 3);
    assert!(events[0].1["candidates"][0].get("finishReason").is_none());
    assert_eq!(events[2].1["candidates"][0]["finishReason"], "STOP");
    assert_eq!(mock.last_request().unwrap().query.as_deref(), Some("alt=sse"));

    let (_, _, got) =
        send(mock.addr(), "POST", "/v1beta/models/gemini-test:streamGenerateContent", body).await;
    assert_eq!(serde_json::from_slice::<Value>(&got).unwrap().as_array().unwrap().len(), 3);

    let (_, _, got) = send(mock.addr(), "GET", "/v1beta/models", b"").await;
    let models: Value = serde_json::from_slice(&got).unwrap();
    assert_eq!(models["models"][0]["name"], "models/gemini-test");
}

#[tokio::test]
async fn gemini_model_comes_from_the_decoded_path_and_tools_and_errors() {
    let args = json!({"city": "Paris"});
    let script = Script::ok().flavor(Flavor::Gemini).tool_call("get_weather", args.clone());
    let body = br#"{"contents":[]}"#;
    let path = "/v1beta/models/my%2Fmodel:streamGenerateContent?alt=sse";
    let rendered = script.render(&Method::POST, path, body);
    assert_eq!(rendered.frames.len(), 1, "a function call arrives whole");
    let events = parse_events(&rendered.body());
    assert_eq!(events[0].1["modelVersion"], "my/model");
    assert_eq!(events[0].1["candidates"][0]["content"]["parts"][0]["functionCall"]["args"], args);

    let dotdot =
        Script::ok().gemini().render(&Method::POST, "/v1beta/models/../x:generateContent", body);
    assert_eq!(dotdot.status, StatusCode::NOT_FOUND);

    let mock = MockUpstream::start(Script::status(429).gemini()).await.unwrap();
    let (status, _, got) =
        send(mock.addr(), "POST", "/v1beta/models/g:generateContent", body).await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS);
    let error: Value = serde_json::from_slice(&got).unwrap();
    assert_eq!(error["error"]["status"], "RESOURCE_EXHAUSTED");
    assert_eq!(error["error"]["code"], 429);

    let cut = Script::ok().gemini().chunks(4).error_after(2).render(&Method::POST, path, body);
    let events = parse_events(&cut.body());
    assert_eq!(events.len(), 3);
    assert_eq!(events[2].1["error"]["status"], "INTERNAL");
}
