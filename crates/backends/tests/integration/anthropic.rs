//! `AnthropicBackend` against the Anthropic-flavoured mock, over real sockets.

use http::{Method, StatusCode};
use serde_json::{Value, json};
use switchyard_backends::{AnthropicBackend, AnthropicSettings, ClientFactory};
use switchyard_core::{Backend, Endpoint, ErrorCode};
use switchyard_test_support::{MockUpstream, Script};

use crate::util::{assemble, chat_request, collect, parse_events};

const KEY: &str = "sk-ant-test-key";

fn backend(mock: &MockUpstream, key: Option<&str>) -> AnthropicBackend {
    let settings = AnthropicSettings {
        name: "claude".into(),
        url: mock.url(),
        api_key: key.map(str::to_owned),
        ..AnthropicSettings::default()
    };
    AnthropicBackend::new(&settings, &ClientFactory::default()).unwrap()
}

fn chat(stream: bool) -> Value {
    let mut body = json!({
        "model": "claude-sonnet-4",
        "messages": [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"}],
    });
    if stream {
        body["stream"] = json!(true);
        body["stream_options"] = json!({"include_usage": true});
    }
    body
}

#[tokio::test]
async fn non_streaming_chat_is_translated_both_ways_with_the_key_header() {
    let mock = MockUpstream::start(Script::ok().anthropic().require_api_key(KEY)).await.unwrap();
    let backend = backend(&mock, Some(KEY));
    let response =
        backend.send(chat_request(&chat(false), Endpoint::ChatCompletions)).await.unwrap();
    assert_eq!(response.status, StatusCode::OK);
    assert_eq!(response.headers["content-type"], "application/json");
    let (body, _) = collect(response.body).await;
    let completion: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(completion["object"], "chat.completion");
    assert_eq!(completion["model"], "claude-sonnet-4");
    assert_eq!(completion["choices"][0]["message"]["content"], "chunk 0 chunk 1 chunk 2 ");
    assert_eq!(completion["choices"][0]["finish_reason"], "stop");
    assert_eq!(completion["usage"]["completion_tokens"], 3);
    assert!(completion["id"].as_str().unwrap().starts_with("msg_"));

    let sent = mock.last_request().unwrap();
    assert_eq!(sent.path, "/v1/messages");
    assert_eq!(sent.header("x-api-key"), Some(KEY));
    assert_eq!(sent.header("anthropic-version"), Some("2023-06-01"));
    assert_eq!(sent.header("authorization"), None);
    let upstream = sent.json().unwrap();
    assert_eq!(upstream["system"], "be brief");
    assert_eq!(upstream["messages"], json!([{"role": "user", "content": "hi"}]));
    assert_eq!(upstream["max_tokens"], 4096);
    // The prompt-token count the mock reports is derived from what it received.
    let expected = Script::ok().anthropic().render(&Method::POST, "/v1/messages", &sent.body);
    let message: Value = serde_json::from_slice(&expected.body()).unwrap();
    assert_eq!(completion["usage"]["prompt_tokens"], message["usage"]["input_tokens"]);
}

#[tokio::test]
async fn streaming_chat_becomes_openai_chunks_with_usage_and_done() {
    let mock = MockUpstream::start(Script::ok().anthropic().chunks(5)).await.unwrap();
    let backend = backend(&mock, Some(KEY));
    let response =
        backend.send(chat_request(&chat(true), Endpoint::ChatCompletions)).await.unwrap();
    assert_eq!(response.status, StatusCode::OK);
    assert_eq!(response.headers["content-type"], "text/event-stream");
    let (body, error) = collect(response.body).await;
    assert!(error.is_none(), "{error:?}");
    let assembled = assemble(&parse_events(&body));
    assert!(assembled.role_first);
    assert_eq!(assembled.content, "chunk 0 chunk 1 chunk 2 chunk 3 chunk 4 ");
    assert_eq!(assembled.finish_reason.as_deref(), Some("stop"));
    assert_eq!(assembled.usage.unwrap()["completion_tokens"], 5);
    assert!(assembled.done);
    assert_eq!(mock.last_request().unwrap().json().unwrap()["stream"], true);
}

#[tokio::test]
async fn tool_calls_come_back_whole_and_streamed() {
    let arguments = json!({"city": "Zürich", "unit": "celsius"});
    let mock = MockUpstream::start(
        Script::ok().anthropic().chunks(4).tool_call("get_weather", arguments.clone()),
    )
    .await
    .unwrap();
    let backend = backend(&mock, None);
    let mut body = chat(false);
    body["tools"] = json!([{"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}]);
    body["tool_choice"] = json!("required");
    let response = backend.send(chat_request(&body, Endpoint::ChatCompletions)).await.unwrap();
    let (bytes, _) = collect(response.body).await;
    let completion: Value = serde_json::from_slice(&bytes).unwrap();
    let call = &completion["choices"][0]["message"]["tool_calls"][0];
    assert_eq!(call["function"]["name"], "get_weather");
    assert_eq!(
        serde_json::from_str::<Value>(call["function"]["arguments"].as_str().unwrap()).unwrap(),
        arguments
    );
    assert_eq!(completion["choices"][0]["finish_reason"], "tool_calls");
    assert_eq!(completion["choices"][0]["message"]["content"], Value::Null);
    let sent = mock.last_request().unwrap().json().unwrap();
    assert_eq!(sent["tool_choice"], json!({"type": "any"}));
    assert_eq!(sent["tools"][0]["input_schema"], json!({"type": "object"}));

    body["stream"] = json!(true);
    let response = backend.send(chat_request(&body, Endpoint::ChatCompletions)).await.unwrap();
    let (bytes, error) = collect(response.body).await;
    assert!(error.is_none());
    let assembled = assemble(&parse_events(&bytes));
    assert_eq!(assembled.tool_name.as_deref(), Some("get_weather"));
    assert_eq!(serde_json::from_str::<Value>(&assembled.tool_arguments).unwrap(), arguments);
    assert_eq!(assembled.finish_reason.as_deref(), Some("tool_calls"));
    assert!(assembled.done && assembled.usage.is_none());
}

#[tokio::test]
async fn provider_errors_become_openai_errors_with_fitting_statuses() {
    let mock = MockUpstream::start(Script::error(529, "Overloaded").anthropic().retry_after(3))
        .await
        .unwrap();
    let backend = backend(&mock, Some(KEY));
    let response =
        backend.send(chat_request(&chat(false), Endpoint::ChatCompletions)).await.unwrap();
    assert_eq!(response.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(response.headers["retry-after"], "3");
    let (bytes, _) = collect(response.body).await;
    let body: Value = serde_json::from_slice(&bytes).unwrap();
    assert_eq!(body["error"]["message"], "Overloaded");
    assert_eq!(body["error"]["code"], "overloaded");

    // A stream request that is refused gets the same treatment.
    mock.set_script(Script::ok().anthropic().require_api_key(KEY));
    let backend = backend_with_wrong_key(&mock);
    let response =
        backend.send(chat_request(&chat(true), Endpoint::ChatCompletions)).await.unwrap();
    assert_eq!(response.status, StatusCode::UNAUTHORIZED);
    let (bytes, _) = collect(response.body).await;
    let body: Value = serde_json::from_slice(&bytes).unwrap();
    assert_eq!(body["error"]["type"], "authentication_error");
    assert_eq!(body["error"]["code"], "invalid_api_key");
}

fn backend_with_wrong_key(mock: &MockUpstream) -> AnthropicBackend {
    backend(mock, Some("sk-ant-wrong"))
}

#[tokio::test]
async fn an_error_event_mid_stream_ends_the_stream_with_an_err() {
    let mock =
        MockUpstream::start(Script::ok().anthropic().chunks(5).error_after(2)).await.unwrap();
    let backend = backend(&mock, Some(KEY));
    let response =
        backend.send(chat_request(&chat(true), Endpoint::ChatCompletions)).await.unwrap();
    assert_eq!(response.status, StatusCode::OK);
    let (bytes, error) = collect(response.body).await;
    let error = error.expect("the stream fails");
    assert_eq!(error.code, ErrorCode::Overloaded);
    let assembled = assemble(&parse_events(&bytes));
    assert_eq!(assembled.content, "chunk 0 chunk 1 ");
    assert!(!assembled.done);

    // An error before any content yields nothing first, so the router may retry.
    mock.set_script(Script::ok().anthropic().error_after(0));
    let response =
        backend.send(chat_request(&chat(true), Endpoint::ChatCompletions)).await.unwrap();
    let (bytes, error) = collect(response.body).await;
    assert!(bytes.is_empty(), "{}", String::from_utf8_lossy(&bytes));
    assert_eq!(error.unwrap().code, ErrorCode::Overloaded);
}

#[tokio::test]
async fn anthropic_messages_pass_through_untouched() {
    let script = Script::ok().anthropic().chunks(3);
    let mock = MockUpstream::start(script.clone()).await.unwrap();
    let backend = backend(&mock, Some(KEY));
    assert!(backend.supports(Endpoint::AnthropicMessages));
    let body = json!({"model": "claude-sonnet-4", "max_tokens": 64, "stream": true,
                      "messages": [{"role": "user", "content": "hi"}]});
    let mut request = chat_request(&body, Endpoint::AnthropicMessages);
    request.headers.insert("anthropic-beta", "prompt-caching-2024-07-31".parse().unwrap());
    let response = backend.send(request).await.unwrap();
    assert_eq!(response.status, StatusCode::OK);
    let (bytes, error) = collect(response.body).await;
    assert!(error.is_none());
    let sent = mock.last_request().unwrap();
    assert_eq!(&sent.body[..], body.to_string().as_bytes(), "the body is forwarded as is");
    assert_eq!(sent.header("anthropic-beta"), Some("prompt-caching-2024-07-31"));
    assert_eq!(bytes, script.expected_body("/v1/messages", &sent.body).to_vec());

    // With an alias resolved to another upstream name, only `model` changes.
    let mut request = chat_request(
        &json!({"model": "alias", "max_tokens": 8, "messages": [{"role": "user", "content": "x"}]}),
        Endpoint::AnthropicMessages,
    );
    request.upstream_model = Some("claude-real".into());
    let response = backend.send(request).await.unwrap();
    let (bytes, _) = collect(response.body).await;
    assert_eq!(mock.last_request().unwrap().model().as_deref(), Some("claude-real"));
    assert_eq!(serde_json::from_slice::<Value>(&bytes).unwrap()["type"], "message");

    // Errors pass through in Anthropic's shape; 529 is reported as 503.
    mock.set_script(Script::error(529, "Overloaded").anthropic());
    let response = backend.send(chat_request(&body, Endpoint::AnthropicMessages)).await.unwrap();
    assert_eq!(response.status, StatusCode::SERVICE_UNAVAILABLE);
    let (bytes, _) = collect(response.body).await;
    assert_eq!(
        serde_json::from_slice::<Value>(&bytes).unwrap()["error"]["type"],
        "overloaded_error"
    );
}

#[tokio::test]
async fn models_probe_and_unsupported_endpoints() {
    let mock = MockUpstream::start(
        Script::ok().anthropic().models(["claude-a", "claude-b"]).require_api_key(KEY),
    )
    .await
    .unwrap();
    let backend = backend(&mock, Some(KEY));
    let models = backend.models().await.unwrap();
    let ids: Vec<&str> = models.iter().map(|m| m.id.as_str()).collect();
    assert_eq!(ids, ["claude-a", "claude-b"]);
    assert_eq!(models[0].created, 1_700_000_000);
    backend.probe().await.unwrap();
    let sent = mock.last_request().unwrap();
    assert_eq!((&sent.method, sent.path.as_str()), (&Method::GET, "/v1/models"));
    assert_eq!(sent.header("x-api-key"), Some(KEY));

    let error = backend_with_wrong_key(&mock).probe().await.unwrap_err();
    assert!(error.message.contains("api key"), "{}", error.message);

    let body = json!({"model": "claude-a", "input": "x"});
    let error = backend.send(chat_request(&body, Endpoint::Embeddings)).await.unwrap_err();
    assert_eq!(error.code, ErrorCode::Unsupported);
    assert!(!backend.supports(Endpoint::Completions));
}

#[tokio::test]
async fn untranslatable_requests_fail_before_any_upstream_call() {
    let mock = MockUpstream::start(Script::ok().anthropic()).await.unwrap();
    let backend = backend(&mock, Some(KEY));
    let body = json!({"model": "c", "n": 3, "messages": [{"role": "user", "content": "x"}]});
    let error = backend.send(chat_request(&body, Endpoint::ChatCompletions)).await.unwrap_err();
    assert_eq!(error.code, ErrorCode::Unsupported);
    assert_eq!(mock.request_count(), 0);
}
