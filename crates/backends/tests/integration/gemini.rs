//! `GeminiBackend` against the Gemini-flavoured mock, over real sockets.

use http::{Method, StatusCode};
use serde_json::{Value, json};
use switchyard_backends::{ClientFactory, GeminiBackend, GeminiSettings};
use switchyard_core::{Backend, Endpoint, ErrorCode};
use switchyard_test_support::{MockUpstream, Script};

use crate::util::{assemble, chat_request, collect, parse_events};

const KEY: &str = "AIza-test-key";

fn backend(mock: &MockUpstream, key: &str) -> GeminiBackend {
    let settings = GeminiSettings {
        name: "gemini".into(),
        url: mock.url(),
        api_key: Some(key.to_owned()),
        ..GeminiSettings::default()
    };
    GeminiBackend::new(&settings, &ClientFactory::default()).unwrap()
}

fn chat(model: &str, stream: bool) -> Value {
    let mut body = json!({
        "model": model,
        "messages": [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"}],
        "temperature": 0.2,
    });
    if stream {
        body["stream"] = json!(true);
        body["stream_options"] = json!({"include_usage": true});
    }
    body
}

/// Every request the mock saw carried the key in the header and never in the URL.
fn assert_key_only_in_header(mock: &MockUpstream) {
    for request in mock.requests() {
        assert_eq!(request.header("x-goog-api-key"), Some(KEY));
        let target = request.path_and_query();
        assert!(!target.contains(KEY) && !target.contains("key="), "{target}");
    }
}

#[tokio::test]
async fn non_streaming_chat_goes_to_generate_content() {
    let mock = MockUpstream::start(Script::ok().gemini().require_api_key(KEY)).await.unwrap();
    let backend = backend(&mock, KEY);
    let response = backend
        .send(chat_request(&chat("gemini-2.0-flash", false), Endpoint::ChatCompletions))
        .await
        .unwrap();
    assert_eq!(response.status, StatusCode::OK);
    let (bytes, _) = collect(response.body).await;
    let completion: Value = serde_json::from_slice(&bytes).unwrap();
    assert_eq!(completion["object"], "chat.completion");
    assert_eq!(completion["choices"][0]["message"]["content"], "chunk 0 chunk 1 chunk 2 ");
    assert_eq!(completion["choices"][0]["finish_reason"], "stop");
    assert_eq!(completion["model"], "gemini-2.0-flash");
    assert_eq!(completion["usage"]["completion_tokens"], 3);

    let sent = mock.last_request().unwrap();
    assert_eq!(sent.path, "/v1beta/models/gemini-2.0-flash:generateContent");
    assert_eq!(sent.query, None);
    let upstream = sent.json().unwrap();
    assert_eq!(upstream["systemInstruction"], json!({"parts": [{"text": "be brief"}]}));
    assert_eq!(upstream["contents"], json!([{"role": "user", "parts": [{"text": "hi"}]}]));
    assert_eq!(upstream["generationConfig"], json!({"temperature": 0.2}));
    assert!(upstream.get("model").is_none());
    assert_key_only_in_header(&mock);
}

#[tokio::test]
async fn streaming_chat_uses_sse_and_ends_with_usage_and_done() {
    let mock = MockUpstream::start(Script::ok().gemini().chunks(4)).await.unwrap();
    let backend = backend(&mock, KEY);
    let response = backend
        .send(chat_request(&chat("gemini-2.0-flash", true), Endpoint::ChatCompletions))
        .await
        .unwrap();
    assert_eq!(response.headers["content-type"], "text/event-stream");
    let (bytes, error) = collect(response.body).await;
    assert!(error.is_none(), "{error:?}");
    let assembled = assemble(&parse_events(&bytes));
    assert!(assembled.role_first);
    assert_eq!(assembled.content, "chunk 0 chunk 1 chunk 2 chunk 3 ");
    assert_eq!(assembled.finish_reason.as_deref(), Some("stop"));
    assert_eq!(assembled.usage.unwrap()["completion_tokens"], 4);
    assert!(assembled.done);
    let sent = mock.last_request().unwrap();
    assert_eq!(
        sent.path_and_query(),
        "/v1beta/models/gemini-2.0-flash:streamGenerateContent?alt=sse"
    );
    assert_key_only_in_header(&mock);
}

#[tokio::test]
async fn function_calls_become_tool_calls() {
    let args = json!({"location": "Mountain View, CA", "movie": "Barbie"});
    let mock = MockUpstream::start(Script::ok().gemini().tool_call("find_theaters", args.clone()))
        .await
        .unwrap();
    let backend = backend(&mock, KEY);
    let mut body = chat("gemini-1.5-pro", false);
    body["tools"] = json!([{"type": "function", "function": {"name": "find_theaters",
        "parameters": {"type": "object", "properties": {"location": {"type": "string"}}}}}]);
    let response = backend.send(chat_request(&body, Endpoint::ChatCompletions)).await.unwrap();
    let (bytes, _) = collect(response.body).await;
    let completion: Value = serde_json::from_slice(&bytes).unwrap();
    let call = &completion["choices"][0]["message"]["tool_calls"][0];
    assert_eq!(call["function"]["name"], "find_theaters");
    assert_eq!(
        serde_json::from_str::<Value>(call["function"]["arguments"].as_str().unwrap()).unwrap(),
        args
    );
    assert!(call["id"].as_str().unwrap().starts_with("call_"));
    assert_eq!(completion["choices"][0]["finish_reason"], "tool_calls");
    let sent = mock.last_request().unwrap().json().unwrap();
    assert_eq!(sent["tools"][0]["functionDeclarations"][0]["name"], "find_theaters");

    body["stream"] = json!(true);
    let response = backend.send(chat_request(&body, Endpoint::ChatCompletions)).await.unwrap();
    let (bytes, error) = collect(response.body).await;
    assert!(error.is_none());
    let assembled = assemble(&parse_events(&bytes));
    assert_eq!(assembled.tool_name.as_deref(), Some("find_theaters"));
    assert_eq!(serde_json::from_str::<Value>(&assembled.tool_arguments).unwrap(), args);
    assert_eq!(assembled.finish_reason.as_deref(), Some("tool_calls"));
}

#[tokio::test]
async fn a_hostile_model_name_stays_in_its_path_segment() {
    let mock = MockUpstream::start(Script::ok().gemini()).await.unwrap();
    let backend = backend(&mock, KEY);
    for (model, stream) in
        [("../x?y", false), ("../../v1beta/files#frag", true), ("a/b:c%2F", false)]
    {
        let response = backend
            .send(chat_request(&chat(model, stream), Endpoint::ChatCompletions))
            .await
            .unwrap();
        // The mock routes only `/v1beta/models/{one segment}:action`: a 200 proves the
        // name stayed in its segment, and it decodes back to the name.
        assert_eq!(response.status, StatusCode::OK, "{model}");
        let sent = mock.last_request().unwrap();
        let segment = sent.path.strip_prefix("/v1beta/models/").unwrap();
        assert!(
            !segment.contains('/') && !segment.contains('?') && !segment.contains('#'),
            "{segment}"
        );
        let action = if stream { ":streamGenerateContent" } else { ":generateContent" };
        assert!(segment.ends_with(action), "{segment}");
        assert_eq!(sent.query.as_deref(), stream.then_some("alt=sse"));
        let (bytes, _) = collect(response.body).await;
        assert!(!bytes.is_empty());
    }
    assert_eq!(mock.last_request().unwrap().path, "/v1beta/models/a%2Fb%3Ac%252F:generateContent");
    assert_key_only_in_header(&mock);
}

#[tokio::test]
async fn errors_translate_and_mid_stream_errors_end_the_stream() {
    let mock = MockUpstream::start(Script::error(429, "quota exceeded").gemini().retry_after(7))
        .await
        .unwrap();
    let backend = backend(&mock, KEY);
    let response =
        backend.send(chat_request(&chat("g", false), Endpoint::ChatCompletions)).await.unwrap();
    assert_eq!(response.status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(response.headers["retry-after"], "7");
    let (bytes, _) = collect(response.body).await;
    let body: Value = serde_json::from_slice(&bytes).unwrap();
    assert_eq!(body["error"]["message"], "quota exceeded");
    assert_eq!(body["error"]["code"], "rate_limit_exceeded");

    mock.set_script(Script::ok().gemini().require_api_key("another-key"));
    let response =
        backend.send(chat_request(&chat("g", true), Endpoint::ChatCompletions)).await.unwrap();
    assert_eq!(response.status, StatusCode::UNAUTHORIZED);
    let (bytes, _) = collect(response.body).await;
    assert_eq!(
        serde_json::from_slice::<Value>(&bytes).unwrap()["error"]["code"],
        "invalid_api_key"
    );

    mock.set_script(Script::ok().gemini().chunks(4).error_after(2));
    let response =
        backend.send(chat_request(&chat("g", true), Endpoint::ChatCompletions)).await.unwrap();
    assert_eq!(response.status, StatusCode::OK);
    let (bytes, error) = collect(response.body).await;
    assert_eq!(error.unwrap().code, ErrorCode::UpstreamStatus);
    let assembled = assemble(&parse_events(&bytes));
    assert_eq!(assembled.content, "chunk 0 chunk 1 ");
    assert!(!assembled.done);
}

#[tokio::test]
async fn models_and_probe_use_the_header_key() {
    let mock = MockUpstream::start(
        Script::ok().gemini().models(["gemini-2.0-flash", "gemini-1.5-pro"]).require_api_key(KEY),
    )
    .await
    .unwrap();
    let backend = backend(&mock, KEY);
    let ids: Vec<String> = backend.models().await.unwrap().into_iter().map(|m| m.id).collect();
    assert_eq!(ids, ["gemini-2.0-flash", "gemini-1.5-pro"]);
    backend.probe().await.unwrap();
    let sent = mock.last_request().unwrap();
    assert_eq!((&sent.method, sent.path.as_str()), (&Method::GET, "/v1beta/models"));
    assert_key_only_in_header(&mock);
    assert!(!backend.supports(Endpoint::AnthropicMessages));
    let error = backend
        .send(chat_request(
            &json!({"model": "g", "max_tokens": 5, "messages": [{"role": "user", "content": "x"}]}),
            Endpoint::AnthropicMessages,
        ))
        .await
        .unwrap_err();
    assert_eq!(error.code, ErrorCode::Unsupported);
}
