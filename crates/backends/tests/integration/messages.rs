//! The inbound Anthropic Messages API the way the server serves it from an
//! OpenAI-compatible backend: translate the request, send it through
//! `OpenAiBackend` to the OpenAI mock over a socket, translate the answer back.

use http::StatusCode;
use serde_json::{Value, json};
use switchyard_backends::{
    ClientFactory, MessagesStreamOptions, OpenAiBackend, OpenAiSettings,
    chat_completion_to_message, chat_error_to_messages, chat_stream_to_messages,
    estimate_message_tokens, messages_error_event, messages_to_chat_request,
};
use switchyard_core::{Backend, BackendRequest, Endpoint, RequestMeta, ResponseBody};
use switchyard_test_support::{MockUpstream, Script};

use crate::util::{collect, parse_events};

fn backend(mock: &MockUpstream) -> OpenAiBackend {
    let settings =
        OpenAiSettings { name: "vllm".into(), url: mock.v1_url(), ..OpenAiSettings::default() };
    OpenAiBackend::new(&settings, &ClientFactory::default()).unwrap()
}

/// What the server does for a backend without native Messages support.
async fn serve(
    backend: &OpenAiBackend,
    anthropic: &Value,
) -> (StatusCode, Vec<Value>, Option<Value>) {
    let original = anthropic.to_string();
    let meta = RequestMeta::parse(Endpoint::AnthropicMessages, original.as_bytes()).unwrap();
    let chat = messages_to_chat_request(original.as_bytes()).unwrap();
    let request = BackendRequest {
        endpoint: Endpoint::ChatCompletions,
        meta: RequestMeta::parse(Endpoint::ChatCompletions, &chat).unwrap(),
        body: chat,
        upstream_model: None,
        headers: http::HeaderMap::new(),
    };
    let response = backend.send(request).await.unwrap();
    let status = response.status;
    match response.body {
        ResponseBody::Full(body) if !status.is_success() => (
            status,
            Vec::new(),
            Some(serde_json::from_slice(&chat_error_to_messages(status, &body)).unwrap()),
        ),
        ResponseBody::Full(body) => (
            status,
            Vec::new(),
            Some(serde_json::from_slice(&chat_completion_to_message(&body).unwrap()).unwrap()),
        ),
        ResponseBody::Stream(stream) => {
            let options = MessagesStreamOptions {
                model: meta.model,
                input_tokens: estimate_message_tokens(original.as_bytes()).unwrap(),
            };
            let (mut bytes, error) =
                collect(ResponseBody::Stream(chat_stream_to_messages(stream, options))).await;
            if let Some(error) = error {
                bytes.extend_from_slice(&messages_error_event(&error));
            }
            (status, parse_events(&bytes), None)
        }
    }
}

fn request(stream: bool) -> Value {
    json!({
        "model": "claude-sonnet-4",
        "max_tokens": 256,
        "system": "be brief",
        "stream": stream,
        "messages": [{"role": "user", "content": [{"type": "text", "text": "hi"}]}],
    })
}

#[tokio::test]
async fn a_message_is_served_from_an_openai_backend() {
    let mock = MockUpstream::start(Script::ok()).await.unwrap();
    let (status, _, message) = serve(&backend(&mock), &request(false)).await;
    assert_eq!(status, StatusCode::OK);
    let message = message.unwrap();
    assert_eq!(message["type"], "message");
    assert_eq!(message["content"], json!([{"type": "text", "text": "chunk 0 chunk 1 chunk 2 "}]));
    assert_eq!(message["stop_reason"], "end_turn");
    assert!(message["usage"]["input_tokens"].as_u64().unwrap() > 0);
    let sent = mock.last_request().unwrap().json().unwrap();
    assert_eq!(
        sent["messages"],
        json!([{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"}])
    );
    assert_eq!(sent["max_tokens"], 256);
}

#[tokio::test]
async fn a_streamed_message_has_anthropic_events_with_usage() {
    let mock = MockUpstream::start(Script::ok().chunks(4)).await.unwrap();
    let (status, events, _) = serve(&backend(&mock), &request(true)).await;
    assert_eq!(status, StatusCode::OK);
    let names: Vec<&str> = events.iter().map(|e| e["event"].as_str().unwrap()).collect();
    assert_eq!(
        names,
        [
            "message_start",
            "content_block_start",
            "content_block_delta",
            "content_block_delta",
            "content_block_delta",
            "content_block_delta",
            "content_block_stop",
            "message_delta",
            "message_stop"
        ]
    );
    assert_eq!(events[0]["data"]["message"]["model"], "claude-sonnet-4");
    let text: String = events.iter().filter_map(|e| e["data"]["delta"]["text"].as_str()).collect();
    assert_eq!(text, "chunk 0 chunk 1 chunk 2 chunk 3 ");
    // The translated request asked for usage, so message_delta carries the mock's counts.
    assert_eq!(
        mock.last_request().unwrap().json().unwrap()["stream_options"],
        json!({"include_usage": true})
    );
    assert_eq!(events[7]["data"]["usage"]["output_tokens"], 4);
}

#[tokio::test]
async fn a_tool_call_round_trips_as_tool_use() {
    let input = json!({"location": "San Francisco, CA"});
    let mock = MockUpstream::start(Script::ok().chunks(3).tool_call("get_weather", input.clone()))
        .await
        .unwrap();
    let mut anthropic = request(false);
    anthropic["tools"] = json!([{"name": "get_weather", "input_schema": {"type": "object"}}]);
    let (_, _, message) = serve(&backend(&mock), &anthropic).await;
    let message = message.unwrap();
    assert_eq!(message["stop_reason"], "tool_use");
    assert_eq!(message["content"][0]["type"], "tool_use");
    assert_eq!(message["content"][0]["input"], input);

    anthropic["stream"] = json!(true);
    let (_, events, _) = serve(&backend(&mock), &anthropic).await;
    let json: String =
        events.iter().filter_map(|e| e["data"]["delta"]["partial_json"].as_str()).collect();
    assert_eq!(serde_json::from_str::<Value>(&json).unwrap(), input);
    assert_eq!(events[1]["data"]["content_block"]["name"], "get_weather");
    let delta = events.iter().find(|e| e["event"] == "message_delta").unwrap();
    assert_eq!(delta["data"]["delta"]["stop_reason"], "tool_use");
}

#[tokio::test]
async fn errors_reach_anthropic_clients_in_their_shape() {
    let mock = MockUpstream::start(Script::error(400, "bad temperature")).await.unwrap();
    let (status, _, body) = serve(&backend(&mock), &request(false)).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(
        body.unwrap(),
        json!({"type": "error", "error": {"type": "invalid_request_error", "message": "bad temperature"}})
    );

    // A backend that fails mid-stream: complete events, then one error event.
    mock.set_script(Script::ok().chunks(5).error_after(2));
    let (_, events, _) = serve(&backend(&mock), &request(true)).await;
    let last = events.last().unwrap();
    assert_eq!(last["event"], "error");
    assert_eq!(last["data"]["type"], "error");
    assert!(!events.iter().any(|e| e["event"] == "message_stop"));
}
