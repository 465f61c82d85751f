//! Mixed providers behind one endpoint: OpenAI-format requests to Anthropic and Gemini
//! backends, the Anthropic Messages API inbound (passed through or translated), and the
//! Simple API.

use std::sync::Arc;

use serde_json::{Value, json};
use switchyard_backends::{
    AnthropicBackend, AnthropicSettings, ClientFactory, GeminiBackend, GeminiSettings,
};
use switchyard_core::sse::SseParser;
use switchyard_server::BackendSpec;
use switchyard_test_support::{MockUpstream, Script};

use crate::util::{Router, chat, openai, spec};

const CHAT: &str = "/v1/chat/completions";
const MESSAGES: &str = "/v1/messages";

fn anthropic(name: &str, mock: &MockUpstream, models: &[&str]) -> BackendSpec {
    let settings = AnthropicSettings {
        name: name.into(),
        url: mock.url(),
        api_key: Some("sk-ant-test".into()),
        ..AnthropicSettings::default()
    };
    let backend = AnthropicBackend::new(&settings, &ClientFactory::default()).unwrap();
    let mut spec =
        BackendSpec::new(Arc::new(backend), models.iter().map(|m| m.to_string()).collect());
    spec.kind = "anthropic".into();
    spec
}

fn gemini(name: &str, mock: &MockUpstream, models: &[&str]) -> BackendSpec {
    let settings = GeminiSettings {
        name: name.into(),
        url: mock.url(),
        api_key: Some("gm-test".into()),
        ..GeminiSettings::default()
    };
    let backend = GeminiBackend::new(&settings, &ClientFactory::default()).unwrap();
    let mut spec =
        BackendSpec::new(Arc::new(backend), models.iter().map(|m| m.to_string()).collect());
    spec.kind = "gemini".into();
    spec
}

fn events(text: &str) -> Vec<(Option<String>, Value)> {
    let mut parser = SseParser::new();
    parser
        .feed(text.as_bytes())
        .into_iter()
        .filter(|e| !e.is_done())
        .map(|e| (e.event, serde_json::from_str(&e.data).unwrap()))
        .collect()
}

fn messages_request(model: &str, stream: bool) -> Value {
    json!({
        "model": model,
        "max_tokens": 64,
        "stream": stream,
        "system": "Be brief.",
        "messages": [{"role": "user", "content": "Say hello"}]
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openai_requests_reach_anthropic_and_gemini_backends_translated() {
    let claude =
        MockUpstream::start(Script::ok().anthropic().models(["claude-sonnet"])).await.unwrap();
    let gem = MockUpstream::start(Script::ok().gemini().models(["gemini-flash"])).await.unwrap();
    let router = Router::start(spec(vec![
        anthropic("claude", &claude, &["claude-sonnet"]),
        gemini("gemini", &gem, &["gemini-flash"]),
    ]))
    .await;
    for (model, mock) in [("claude-sonnet", &claude), ("gemini-flash", &gem)] {
        let reply = router.post(CHAT, &chat(model, false)).await;
        assert_eq!(reply.status, 200, "{model}: {}", reply.text());
        let json = reply.json();
        assert_eq!(json["object"], "chat.completion");
        assert_eq!(json["choices"][0]["message"]["content"], "chunk 0 chunk 1 chunk 2 ", "{json}");
        assert_eq!(json["choices"][0]["finish_reason"], "stop");
        let reply = router.post(CHAT, &chat(model, true)).await;
        let chunks = events(&reply.text());
        let text: String = chunks
            .iter()
            .filter_map(|(_, c)| c["choices"][0]["delta"]["content"].as_str())
            .collect();
        assert_eq!(text, "chunk 0 chunk 1 chunk 2 ", "{model}");
        assert!(reply.text().ends_with("data: [DONE]\n\n"));
        // Provider credentials went in the provider's header; the URL carries no key.
        let seen = mock.last_post().unwrap();
        assert!(seen.api_key().is_some());
        assert!(!seen.path_and_query().contains("key="), "{}", seen.path_and_query());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_api_passes_through_to_anthropic_byte_for_byte() {
    let claude = MockUpstream::start(Script::ok().anthropic()).await.unwrap();
    let router = Router::start(spec(vec![anthropic("claude", &claude, &["claude-sonnet"])])).await;
    let body = serde_json::to_vec(&messages_request("claude-sonnet", false)).unwrap();
    let reply =
        router.post_raw(MESSAGES, body.clone(), &[("anthropic-beta", "tools-2024-05-16")]).await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    assert_eq!(reply.body, Script::ok().anthropic().expected_body(MESSAGES, &body));
    let seen = claude.last_post().unwrap();
    assert_eq!(seen.body, body);
    assert_eq!(seen.header("anthropic-beta"), Some("tools-2024-05-16"));
    let reply = router.post(MESSAGES, &messages_request("claude-sonnet", true)).await;
    assert!(reply.text().contains("event: message_stop"), "{}", reply.text());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_api_is_translated_for_openai_backends() {
    let mock = MockUpstream::start(Script::ok()).await.unwrap();
    let router = Router::start(spec(vec![openai("a", &mock.url(), &["m"])])).await;

    let reply = router.post(MESSAGES, &messages_request("m", false)).await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    let json = reply.json();
    assert_eq!(json["type"], "message");
    assert_eq!(json["role"], "assistant");
    assert_eq!(json["content"][0]["text"], "chunk 0 chunk 1 chunk 2 ");
    assert_eq!(json["stop_reason"], "end_turn");
    // The upstream received an OpenAI chat request with the system prompt first.
    let sent = mock.last_post().unwrap().json().unwrap();
    assert_eq!(sent["messages"][0]["role"], "system");
    assert_eq!(sent["messages"][0]["content"], "Be brief.");

    let reply = router.post(MESSAGES, &messages_request("m", true)).await;
    assert_eq!(reply.headers["content-type"], "text/event-stream");
    let kinds: Vec<String> = events(&reply.text()).into_iter().filter_map(|(e, _)| e).collect();
    assert_eq!(kinds.first().map(String::as_str), Some("message_start"));
    assert_eq!(kinds.last().map(String::as_str), Some("message_stop"));
    assert!(kinds.iter().any(|k| k == "content_block_delta"), "{kinds:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_errors_are_anthropic_shaped_and_cut_streams_end_with_an_error_event() {
    let mock = MockUpstream::start(Script::ok().chunks(10)).await.unwrap();
    let router = Router::start(spec(vec![openai("a", &mock.url(), &["m"])])).await;
    let reply = router.post(MESSAGES, &messages_request("nope", false)).await;
    assert_eq!(reply.status, 404);
    let json = reply.json();
    assert_eq!(json["type"], "error");
    assert_eq!(json["error"]["type"], "not_found_error", "{json}");
    let reply = router.post_raw(MESSAGES, "{broken", &[]).await;
    assert_eq!(reply.status, 400);
    assert_eq!(reply.json()["error"]["type"], "invalid_request_error");

    mock.set_script(Script::ok().chunks(10).error_after(5));
    let reply = router.post(MESSAGES, &messages_request("m", true)).await;
    let text = reply.text();
    assert!(text.contains("event: error"), "{text}");
    assert!(!text.contains("message_stop"), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn count_tokens_estimates_for_remote_backends() {
    let mock = MockUpstream::start(Script::ok()).await.unwrap();
    let router = Router::start(spec(vec![openai("a", &mock.url(), &["m"])])).await;
    let reply = router.post("/v1/messages/count_tokens", &messages_request("m", false)).await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    let tokens = reply.json()["input_tokens"].as_u64().unwrap();
    assert!((3..50).contains(&tokens), "{tokens}");
    assert_eq!(mock.request_count_for(CHAT), 0, "counting must not call the backend");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_simple_api_answers_quick_prompts() {
    let mock = MockUpstream::start(Script::ok()).await.unwrap();
    let router = Router::start(spec(vec![openai("a", &mock.url(), &["m"])])).await;
    let reply = router
        .post("/api/quick", &json!({"prompt": "What is the capital of France?", "max_tokens": 8}))
        .await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    let json = reply.json();
    assert_eq!(json["text"], "chunk 0 chunk 1 chunk 2 ");
    assert_eq!(json["tokens"], 3);
    assert_eq!(json["model"], "m");
    assert!(json["latency"].as_u64().is_some());
    let sent = mock.last_post().unwrap().json().unwrap();
    assert_eq!(sent["max_tokens"], 8);
    assert_eq!(sent["messages"][0]["content"], "What is the capital of France?");

    let health = router.get("/api/health").await.json();
    assert_eq!(health["status"], "healthy");
    let models = router.get("/api/models").await.json();
    assert_eq!(models["models"][0]["id"], "m");
    router.post("/api/quick", &json!({"prompt": ""})).await.assert_error(400, "invalid_request");
    router.post("/api/quick", &json!({"text": "x"})).await.assert_error(400, "invalid_request");
}
